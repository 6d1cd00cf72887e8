"""Bad inputs to every subcommand fail before any heavy work with one ``error:`` line naming the value,
exit status 2 and no traceback (issue 18). Runs in-process through ``mamba_clip.cli.main``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_clip.cli import main


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG_1PX = _png()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Folders and files shared by the cases: good and corrupt image folders, bad checkpoints."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = root / "good"
    for c in ("cat", "dog"):
        (good / c).mkdir(parents=True)
        for i in range(2):
            (good / c / f"{c}{i}.png").write_bytes(PNG_1PX)
    corrupt = root / "corrupt"
    for c in ("cat", "dog"):
        (corrupt / c).mkdir(parents=True)
        (corrupt / c / f"{c}0.png").write_bytes(PNG_1PX)
    (corrupt / "cat" / "cat1.png").write_bytes(PNG_1PX[:50])  # truncated
    (root / "empty").mkdir()
    (root / "truncated.pt").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "ckpt.safetensors").write_bytes(b"x")  # placeholder for convert's output naming check
    import open_clip
    import torch

    from mamba_clip.openclip_ext.checkpoints import save_safetensors

    other = open_clip.create_model("simba-nano").state_dict()  # the wrong model for vmamba-nano
    save_safetensors(other, str(root / "simba-nano.safetensors"), {"model": "simba-nano"})
    for name in ("vit-nano", "vmamba-nano"):  # diverged runs: one weight tensor all NaN / inf
        sd = open_clip.create_model(name).state_dict()
        key = next(k for k, v in sd.items() if v.is_floating_point() and "visual" in k)
        sd[key] = torch.full_like(sd[key], float("nan") if name == "vit-nano" else float("inf"))
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, root / f"{name}-nan.pt")
    (root / "missing-image.csv").write_text("filepath,title\nnope/cat9.png,a cat\n")
    (root / "damaged-run").mkdir()
    (root / "damaged-run" / "eigenvalues.json").write_text('{"format": "mamba_clip.hessian.eigenvalues/1", "batc')
    with_empty = root / "with-empty-class"
    (with_empty / "cat").mkdir(parents=True)
    (with_empty / "cat" / "cat0.png").write_bytes(PNG_1PX)
    (with_empty / "dog").mkdir()
    raw = root / "raw" / "edge"  # a raw-data CSV cut off mid-row
    raw.mkdir(parents=True)
    (raw / "edge_m_session-1.csv").write_text("subj,session,trial,rt,object_response,category,condition,imagename\n"
                                              "m,1,1,NaN,cat,cat,0,cat1.png\nm,1,2,NaN,d")
    ood = root / "ood"
    (ood / "cue-conflict" / "cat").mkdir(parents=True)
    (ood / "cue-conflict" / "cat" / "cat1-dog1.png").write_bytes(PNG_1PX[:50])
    return root


def _cases(w: Path):
    """(argv, text the error line must contain). Paths are relative to ``w``."""
    g, c, e = str(w / "good"), str(w / "corrupt"), str(w / "empty")
    trunc, notes, out = str(w / "truncated.pt"), str(w / "notes.txt"), str(w / "out")
    zs = ["zeroshot", "--dataset-root", g, "--output", out]
    ood = ["ood", "evaluate", "--out", out, "--data-root", str(w / "ood")]
    hs = ["hessian", "--out", out, "--data", g]
    return [
        (zs + ["--model", "vmamba-nanoo"], "'vmamba-nanoo'"),
        (zs + ["--model", "vmamba-nano", "--datasets", "imagenet-1kk"], "'imagenet-1kk'"),
        (zs + ["--model", "vmamba-nano", "--pretrained", str(w / "missing.pt")], "missing.pt"),
        (zs + ["--model", "vmamba-nano", "--pretrained", "laion9b"], "'laion9b'"),
        (zs + ["--model", "vmamba-nano", "--batch-size", "0"], "--batch-size"),
        (["zeroshot", "--model", "vmamba-nano", "--dataset-root", str(w / "nope"), "--output", out], "nope"),
        (ood + ["--models", "vmamba-nanoo", "--datasets", "cue-conflict"], "'vmamba-nanoo'"),
        (ood + ["--models", f"vmamba-nano:{w / 'missing.pt'}", "--datasets", "cue-conflict"], "missing.pt"),
        (ood + ["--models", f"vmamba-nano:{trunc}", "--datasets", "cue-conflict"], "truncated"),
        (ood + ["--models", "vmamba-nano", "--datasets", "cue-conflictt"], "'cue-conflictt'"),
        (ood + ["--models", "vmamba-nano", "--datasets", "cue-conflict"], "cat1-dog1.png"),
        (ood + ["--models", "vmamba-nano", "--datasets", "cue-conflict", "--max-images", "0"], "--max-images"),
        (ood + ["--models", "vmamba-nano", "--datasets", "cue-conflict", "--templates", "fancy"], "'fancy'"),
        (hs + ["--model", "vmamba-nanoo"], "'vmamba-nanoo'"),
        (["hessian", "--out", out, "--model", "vmamba-nano", "--data", c], "cat/cat1.png"),
        (["hessian", "--out", out, "--model", "vmamba-nano", "--data", e], "empty"),
        (hs + ["--model", "vmamba-nano", "--k", "0"], "--k"),
        (hs + ["--model", "vmamba-nano", "--threads", "-1"], "--threads"),
        (hs + ["--model", "vmamba-nano", "--image-size", "0"], "--image-size"),
        (hs + ["--model", "vmamba-nano", "--pretrained", trunc], "truncated"),
        (hs + ["--model", "vmamba-nano", "--pretrained", str(w / "simba-nano.safetensors")], "simba-nano"),
        (hs + ["--model", "vmamba-nano", "--device", "cuda:7"], "cuda:7"),
        (zs + ["--model", "vit-nano", "--pretrained", str(w / "vit-nano-nan.pt")], "non-finite"),
        (ood + ["--models", f"vit-nano:{w / 'vit-nano-nan.pt'}", "--datasets", "cue-conflict"], "non-finite"),
        (hs + ["--model", "vmamba-nano", "--pretrained", str(w / "vmamba-nano-nan.pt")], "non-finite"),
        (["convert", str(w / "vmamba-nano-nan.pt"), "-o", str(w / "x.pt")], "non-finite"),
        (hs + ["--model", "vmamba-nano", "--image-size", "48"], "--image-size 48"),
        (zs + ["--model", "simba-nano", "--image-size", "40"], "--image-size 40"),
        (["zeroshot", "--model", "vmamba-nano", "--dataset-root", e, "--output", out, "--datasets", "wds/mine"],
         "holds none of the 1 requested dataset"),
        (["hessian", "--out", out, "--model", "vmamba-nano", "--data", str(w / "missing-image.csv")],
         "nope/cat9.png"),
        (["convert", str(w / "missing.pt"), "-o", str(w / "x.safetensors")], "missing.pt"),
        (["convert", notes, "-o", str(w / "x.safetensors")], "notes.txt"),
        (["convert", trunc, "-o", str(w / "x.safetensors")], "truncated"),
        (["convert", trunc, "-o", str(w / "x.safetensors"), "--model", "vmamba-nanoo"], "'vmamba-nanoo'"),
        (["make-wds", c, str(w / "wds")], "cat/cat1.png"),
        (["make-wds", e, str(w / "wds")], "empty"),
        (["make-wds", str(w / "nope"), str(w / "wds")], "nope"),
        (["make-wds", g, str(w / "wds"), "--shard-size", "0"], "--shard-size"),
        (["make-wds", g, str(w / "good" / "wds")], "inside SRC"),
        (["make-wds", str(w / "with-empty-class"), str(w / "wds")], "without images: dog"),
        (["hessian", "plot", str(w / "damaged-run"), "--out", str(w / "out.png")], "eigenvalues.json"),
        (["ood", "metrics", "--raw-data", str(w / "raw"), "--out", str(w / "out.json")], "edge_m_session-1.csv:3"),
    ]


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_bad_inputs_fail_with_one_error_line(work, capsys, monkeypatch):
    monkeypatch.delenv("MAMBA_CLIP_DEBUG", raising=False)
    cases = _cases(work)
    assert len(cases) >= 12
    problems = []
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        text = out + err
        errors = [line for line in text.splitlines() if "error:" in line]
        if rc != 2 or "Traceback" in text or len(errors) != 1 or needle not in errors[0] \
                or len(text.strip().splitlines()) > 8:
            problems.append(f"{' '.join(argv)}\n  -> rc={rc}, output:\n{text}")
    assert not problems, "\n".join(problems)
    for written in ("out", "wds", "good/wds", "out.png", "out.json"):  # nothing written before the checks
        assert not (work / written).exists(), written


def test_debug_shows_traceback(work, capsys, monkeypatch):
    monkeypatch.delenv("MAMBA_CLIP_DEBUG", raising=False)
    argv = ["hessian", "--out", str(work / "out"), "--model", "vmamba-nanoo", "--data", str(work / "good")]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "Traceback" not in err
    rc, _, err = _run(["--debug"] + argv, capsys)
    assert rc == 2 and "Traceback" in err and "UsageError" in err
    monkeypatch.setenv("MAMBA_CLIP_DEBUG", "1")
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "Traceback" in err


def test_unexpected_failure_is_one_line_exit_1(capsys, monkeypatch):
    import argparse

    from mamba_clip.cli_checks import run_command

    def boom(args):
        raise KeyError("spam")

    rc = run_command(boom, argparse.Namespace())
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: KeyError: 'spam'") and "Traceback" not in err and "--debug" in err


def test_console_script_reports_without_traceback(tmp_path):
    """The installed entry point (one subprocess): same one line, exit 2."""
    exe = Path(sys.executable).with_name("mamba-clip")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mamba_clip"]
    env = {k: v for k, v in os.environ.items() if k != "MAMBA_CLIP_DEBUG"}
    p = subprocess.run(cmd + ["make-wds", str(tmp_path / "nope"), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: SRC {str(tmp_path / 'nope')!r}: no such folder"]


def test_hessian_says_when_n_samples_exceeds_the_data(work, capsys, tmp_path):
    argv = ["hessian", "--out", str(tmp_path / "run"), "--model", "vit-nano", "--data", str(work / "good"),
            "--n-samples", "50", "--batch-size", "4", "--k", "1", "--max-iter", "2", "--templates", "1",
            "--image-size", "32", "--no-progress"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, out + err
    assert f"--n-samples 50: {work / 'good'} holds 4 images; using all 4" in err
