"""``mamba-clip convert`` both ways, its errors, and the stock ``clip_benchmark`` CLI on a converted file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamba_clip.cli import main
from mamba_clip.openclip_ext import checkpoints as ck


def test_convert_both_directions(nano_release, tmp_path, capsys):
    ema = tmp_path / "ema.safetensors"
    assert main(["convert", str(nano_release.path), "-o", str(ema), "--model", nano_release.name]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["to"] == "open_clip" and report["towers"] == "ema" and report["model"] == nano_release.name
    online = tmp_path / "online.safetensors"
    assert main(["convert", str(nano_release.path), "-o", str(online), "--towers", "online",
                 "--model", nano_release.name]) == 0
    capsys.readouterr()
    for path, towers in ((ema, "ema"), (online, "online")):
        loaded = ck.load_checkpoint_file(str(path))
        assert loaded.meta["towers"] == towers and loaded.meta["model"] == nano_release.name
        expected = nano_release.tower(towers)
        assert set(loaded.state_dict) == set(expected)
        assert all(torch.equal(loaded.state_dict[k], v.reshape(loaded.state_dict[k].shape))
                   for k, v in expected.items())
    back = tmp_path / "back.pt"
    assert main(["convert", str(online), "-o", str(back)]) == 0  # direction from the file: export
    report = json.loads(capsys.readouterr().out)
    assert report["to"] == "original" and report["model"] == nano_release.name
    again = ck.to_open_clip(ck.load_checkpoint_file(str(back)), towers="ema", target=nano_release.name)
    for k, v in nano_release.tower("online").items():
        assert torch.equal(again[k], v.reshape(again[k].shape)), k


def test_convert_errors(nano_release, tmp_path, capsys):
    other = "simba-nano" if nano_release.name != "simba-nano" else "vmamba-nano"
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(nano_release.path), "-o", str(out), "--model", other]) == 2
    err = capsys.readouterr().err
    assert "error: checkpoint is for" in err and other in err
    assert not out.exists()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(nano_release.path.read_bytes()[:4096])
    assert main(["convert", str(bad), "-o", str(out)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["convert", str(nano_release.path), "-o", str(out), "--model", "no-such-model"]) == 2
    assert "not an open_clip model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_stock_clip_benchmark_cli_on_converted_file(nano_release, tmp_path):
    """The unmodified ``clip_benchmark`` console script (fresh process, our models found through the
    autoload hook) evaluates a converted nano checkpoint."""
    conv = tmp_path / f"{nano_release.name}.safetensors"
    ck.convert_file(str(nano_release.path), str(conv), model_name=nano_release.name)
    exe = Path(sys.executable).with_name("clip_benchmark")
    out = tmp_path / "result.json"
    cmd = [str(exe), "eval", "--model", nano_release.name, "--pretrained", str(conv), "--dataset", "dummy",
           "--output", str(out), "--batch_size", "1", "--num_workers", "0", "--no_amp"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == nano_release.name and result["pretrained"] == str(conv)
    assert set(result["metrics"]) >= {"acc1", "mean_per_class_recall"}


@pytest.mark.slow
def test_convert_release_example_writes_both_towers(nano_release, tmp_path):
    """``examples/convert_release.sh`` as a user runs it: the release file into two safetensors files
    holding the EMA and the online towers."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", str(repo / "examples" / "convert_release.sh"), str(nano_release.path),
                           nano_release.name, str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for towers in ("ema", "online"):
        loaded = ck.load_checkpoint_file(str(tmp_path / "out" / f"{nano_release.name}-{towers}.safetensors"))
        assert loaded.meta["towers"] == towers
        for k, v in nano_release.tower(towers).items():
            assert torch.equal(loaded.state_dict[k], v.reshape(loaded.state_dict[k].shape)), k


def test_convert_output_name_must_fit_the_format_and_model_is_inferred(nano_release, tmp_path, capsys):
    """Exporting to a ``.safetensors`` name fails (it would be a torch zip); without --model the exported
    file records the model identified from the shapes, not ``CLIP_None``; files follow the umask."""
    conv = tmp_path / "conv.safetensors"
    assert main(["convert", str(nano_release.path), "-o", str(conv), "--model", nano_release.name]) == 0
    capsys.readouterr()
    wrong = tmp_path / "export.safetensors"
    assert main(["convert", str(conv), "-o", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "error: --output" in err and "export.safetensors" in err and ".pt" in err and not wrong.exists()
    assert main(["convert", str(nano_release.path), "-o", str(tmp_path / "x.pt"), "--to", "open_clip"]) == 2
    assert ".safetensors" in capsys.readouterr().err

    plain = {k: v for k, v in ck.load_checkpoint_file(str(conv)).state_dict.items()}
    bare = tmp_path / "bare.safetensors"
    ck.save_safetensors(plain, str(bare), {})  # no recorded model name
    old = os.umask(0o022)
    try:
        back = tmp_path / "back.pt"
        assert main(["convert", str(bare), "-o", str(back)]) == 0
    finally:
        os.umask(old)
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == nano_release.name and report["source"] != "CLIP_None"
    assert torch.load(back, weights_only=False)["args"].open_clip_model == nano_release.name
    assert (back.stat().st_mode & 0o777) == 0o644
