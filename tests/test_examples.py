"""Every script in ``examples/`` runs as a user would run it, on nano models and local files: a local
checkpoint stands in for a pretrained tag, nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(REPO / "tests" / "openclip"))
from _utils import subprocess_env, write_shapes_csv  # noqa: E402


def run_example(args, cwd: Path, extra_env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = subprocess_env(threads=2, extra=extra_env)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    """A local vmamba-nano checkpoint (random weights) in open_clip_train's format, at 64 px."""
    import open_clip

    torch.manual_seed(3)
    model = open_clip.create_model("vmamba-nano", force_image_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "vmamba-nano.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_zeroshot_classify_matches_in_process(tmp_path, nano_checkpoint, stimuli_dir):
    import open_clip
    from PIL import Image

    images = sorted((stimuli_dir / "edges" / "cat").glob("*.png"))[:2]
    images += sorted((stimuli_dir / "edges" / "truck").glob("*.png"))[:1]
    classes = ["a cat", "a truck", "a clock"]
    proc = run_example([sys.executable, str(EXAMPLES / "zeroshot_classify.py"), "--model", "vmamba-nano",
                        "--pretrained", str(nano_checkpoint), "--image-size", "64", "--top", "3",
                        "--classes", *classes, "--", *map(str, images)], tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(images)
    model, _, pre = open_clip.create_model_and_transforms("vmamba-nano", pretrained=str(nano_checkpoint),
                                                          force_image_size=64)
    model.eval()
    tok = open_clip.get_tokenizer("vmamba-nano")
    with torch.no_grad():
        t = model.encode_text(tok([f"a photo of {c}." for c in classes]), normalize=True)
        x = torch.stack([pre(Image.open(p).convert("RGB")) for p in images])
        probs = (model.logit_scale.exp() * model.encode_image(x, normalize=True) @ t.T).softmax(-1)
    for line, path, row in zip(lines, images, probs):
        assert line.startswith(f"{path}: ")
        ranked = [part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", ")]
        assert ranked[0][0] == classes[int(row.argmax())]
        assert sum(float(p) for _, p in ranked) == pytest.approx(1.0, abs=0.02)


def test_zeroshot_classify_random_weights_for_a_model_without_tags(tmp_path, monkeypatch, capsys):
    """``--model vmamba-nano`` without ``--pretrained``: random weights with a warning, no traceback
    (in-process: the script run as ``__main__``)."""
    import runpy

    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(img)
    monkeypatch.setattr(sys, "argv", ["zeroshot_classify.py", "--model", "vmamba-nano", "--image-size", "32",
                                      "--classes", "a", "b", "--", str(img)])
    runpy.run_path(str(EXAMPLES / "zeroshot_classify.py"), run_name="__main__")
    cap = capsys.readouterr()
    assert "has no pretrained tag; using random weights" in cap.err
    assert cap.out.startswith(f"{img}: ")


def test_train_csv_trains_a_loadable_checkpoint(tmp_path):
    import open_clip

    csv = write_shapes_csv(tmp_path / "data", n=12, size=32)
    run_example(["bash", str(EXAMPLES / "train_csv.sh"), str(csv), "vmamba-nano", str(tmp_path / "logs")], tmp_path,
                extra_env={"NAME": "run", "BATCH": "4", "EPOCHS": "1", "WORKERS": "0", "PRECISION": "fp32",
                           "EXTRA": "--device cpu --force-image-size 32"})
    ckpt = tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt"
    assert ckpt.is_file()
    model = open_clip.create_model("vmamba-nano", pretrained=str(ckpt), force_image_size=32)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    key = "visual.trunk.patch_embed.0.weight"
    assert torch.equal(model.state_dict()[key], state.get(f"module.{key}", state.get(key)))


def test_zeroshot_suite_on_own_images(tmp_path, nano_checkpoint, stimuli_dir):
    out = tmp_path / "out"
    run_example(["bash", str(EXAMPLES / "zeroshot_suite.sh"), "vmamba-nano", str(nano_checkpoint),
                 str(tmp_path / "root"), str(out)], tmp_path,
                extra_env={"MY_IMAGES": str(stimuli_dir / "edges"), "MY_NAME": "edges16",
                           "WORKERS": "0", "EXTRA": "--image-size 64"})
    r = json.loads((out / "vmamba-nano" / "wds_edges16.json").read_text())
    assert r["status"] == "ok" and r["image_size"] == 64
    assert r["n_images"] == 160 and r["n_classes"] == 16 and 0.0 <= r["metric"] <= 1.0
    assert (out / "table1.csv").is_file()


def test_ood_eval_on_own_images(tmp_path, stimuli_dir):
    out = tmp_path / "ood"
    run_example(["bash", str(EXAMPLES / "ood_eval.sh"), "vit-nano", str(stimuli_dir / "filled-silhouettes"),
                 str(out)], tmp_path,
                extra_env={"DATASETS": "contrast rotation", "MAX_PER_CATEGORY": "1"})
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["vit-nano"]["accuracy_by_condition"]
    assert set(acc) == {"contrast", "rotation"}
    assert all(0.0 <= v <= 1.0 for conds in acc.values() for v in conds.values())


def test_hessian_spectrum_of_two_models(tmp_path, nano_checkpoint, stimuli_dir):
    out = tmp_path / "hess"
    data = stimuli_dir / "edges"
    run_example(["bash", str(EXAMPLES / "hessian_spectrum.sh"), str(data), str(out), f"vmamba-nano:{nano_checkpoint}",
                 "vit-nano"], tmp_path,
                extra_env={"N_SAMPLES": "6", "BATCH": "3", "K": "2", "METHOD": "lanczos",
                           "EXTRA": "--image-size 32 --max-iter 20"})
    for model in ("vmamba-nano", "vit-nano"):
        run = json.loads((out / model / "eigenvalues.json").read_text())
        values = [v for b in run["batches"] for v in b["eigenvalues"]]
        assert len(run["batches"]) == 2 and len(values) == 4
        assert all(abs(v) > 0 for v in values)
    png = (out / "spectra.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000
