"""The demo's own pieces, without training: the digits data, the trainer-log parser, the OOD
manipulations on a labelled image set, and the report's sentences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mamba_clip import digits
from mamba_clip.demo import report as demo_report
from mamba_clip.demo.trainer import parse_log, training_summary
from mamba_clip.eval.ood.robustness import accuracy_under_manipulations, manipulated_images


def test_digits_split_is_stratified_seeded_and_written(tmp_path):
    images, labels = digits.load_digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    train, test = digits.stratified_split(labels, 0.25, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    for c in range(10):
        n_c = int((labels == c).sum())
        assert sum(1 for i in test if labels[i] == c) == round(n_c * 0.25)
    assert digits.stratified_split(labels, 0.25, seed=0) == (train, test)
    assert digits.stratified_split(labels, 0.25, seed=1)[1] != test
    with pytest.raises(ValueError, match="test_fraction"):
        digits.stratified_split(labels, 1.5, seed=0)

    m = digits.write_digits(tmp_path / "d", size=24, seed=0)
    assert (m["n_train"], m["n_test"]) == (len(train), len(test))
    rows = (tmp_path / "d" / "train.csv").read_text().splitlines()
    assert rows[0] == "filepath\ttitle" and len(rows) == 1 + len(train)
    captions = [r.split("\t")[1] for r in rows[1:]]
    assert len(set(c.replace(w, "{}") for c in captions for w in digits.CLASSNAMES if w in c)) >= 5
    prompts = [t.format(c=c) for t in digits.ZEROSHOT_TEMPLATES for c in digits.CLASSNAMES]
    assert not set(prompts) & set(captions)  # the zero-shot prompts are never training captions
    first = rows[1].split("\t")[0]
    with Image.open(first) as im:
        assert im.size == (24, 24) and im.mode == "RGB"
    assert sum(m["test_counts"].values()) == len(test)
    assert sorted(p.name for p in (tmp_path / "d" / "test").iterdir()) == sorted(digits.CLASSNAMES)
    assert digits.write_digits(tmp_path / "d", size=24, seed=0) == m  # reused as it is


def _record(epoch: int, seen: int, batch_t: float, lr: float, scale: float, loss: float) -> str:
    """One step's line as open_clip_train 3.3 logs it (total 200 samples)."""
    return (f"2026-12-01,09:22:45 | INFO | Train Epoch: {epoch} [{seen:>3}/200 ({seen / 2:.0f}%)] Data (t): 0.003 "
            f"Batch (t): {batch_t:.3f}, 82.9/s, 82.9/s/gpu LR: {lr:5f} Logit Scale: {scale:.3f} "
            f"Contrastive_loss: {loss:.4f} ({loss:.4f}) Loss: {loss:.4f} ({loss:.4f})")


LOG = "\n".join([
    "2026-12-01,09:22:45 | INFO | Start epoch 0",
    _record(0, 64, 0.7, 6e-4, 14.028, 4.1),
    _record(0, 128, 0.5, 5e-4, 14.02, 3.9),
    _record(0, 192, 0.6, 4e-4, 14.01, 3.5),
    _record(1, 64, 0.9, 3e-4, 14.0, 3.2),
    "2026-12-01,09:30:00 | INFO | Start epoch 1",  # a resumed run logs epoch 1 again
    _record(1, 64, 0.8, 3e-4, 14.0, 3.1),
]) + "\n"


def test_trainer_log_parser_keeps_one_record_per_step(tmp_path):
    path = tmp_path / "out.log"
    path.write_text(LOG)
    recs = parse_log(path, batch_size=64)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]  # 200 // 64 = 3 steps per epoch (last batch dropped)
    assert [r["loss"] for r in recs] == [4.1, 3.9, 3.5, 3.1]  # the resumed run's record wins
    assert recs[1]["lr"] == pytest.approx(5e-4) and recs[0]["logit_scale"] == pytest.approx(14.028)
    s = training_summary(recs, tail=2)
    assert s["loss_first"] == pytest.approx(4.0) and s["loss_last"] == pytest.approx(3.3)
    assert s["seconds_per_step_median"] == pytest.approx(0.6) and s["steps"] == 4


def _blobs(n: int = 12):
    """Images whose class is their brightness (dark = 0, light = 1)."""
    imgs, labels = [], []
    for i in range(n):
        c = i % 2
        arr = np.full((16, 16, 3), 40 if c == 0 else 215, np.uint8)
        imgs.append(Image.fromarray(arr))
        labels.append(c)
    return imgs, labels


def _brightness_classifier(images):
    return [int(np.asarray(im).mean() > 120) for im in images]


def test_accuracy_under_manipulations_scores_each_condition():
    images, labels = _blobs()
    classifiers = {"bright": _brightness_classifier, "zeros": lambda ims: [0] * len(ims)}
    acc = accuracy_under_manipulations(classifiers, images, labels, datasets=["rotation", "contrast"],
                                       work_size=32, progress=False)  # fmt: skip
    assert set(acc) == {"bright", "zeros"} and set(acc["bright"]) == {"rotation", "contrast"}
    assert acc["bright"]["rotation"] == {"0": 1.0, "90": 1.0, "180": 1.0, "270": 1.0}  # rotation keeps brightness
    assert all(v == 0.5 for per in acc["zeros"].values() for v in per.values())
    # contrast 1% squeezes every image to mid-grey: the brightness rule can no longer tell the classes
    assert acc["bright"]["contrast"]["c100"] == 1.0 and acc["bright"]["contrast"]["c01"] == 0.5
    a = manipulated_images(images[:2], "uniform-noise", "0.35", seed=3, work_size=32)
    b = manipulated_images(images[:2], "uniform-noise", "0.35", seed=3, work_size=32)
    c = manipulated_images(images[:2], "uniform-noise", "0.35", seed=4, work_size=32)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (32, 32)


def test_accuracy_under_manipulations_rejects_bad_input():
    images, labels = _blobs(4)
    with pytest.raises(ValueError, match="accepted"):
        accuracy_under_manipulations({"m": _brightness_classifier}, images, labels, datasets=["blur"])
    with pytest.raises(ValueError, match="no images"):
        accuracy_under_manipulations({"m": _brightness_classifier}, [], [], datasets=["rotation"])
    with pytest.raises(ValueError, match="labels"):
        accuracy_under_manipulations({"m": _brightness_classifier}, images, labels[:3], datasets=["rotation"])
    with pytest.raises(ValueError, match="predictions"):
        accuracy_under_manipulations({"m": lambda ims: [0]}, images, labels, datasets=["rotation"], progress=False)


def test_report_sentences_follow_the_numbers():
    rep = {
        "zeroshot": {"a": {"acc1": 0.91, "n_images": 10}, "b": {"acc1": 0.42, "n_images": 10}},
        "hessian": {"settings": {"k": 2, "batch_size": 15, "n_samples": 15},
                    "a": {"eigenvalues": [5.0, -1.0], "negative": 1, "max_abs": 5.0},
                    "b": {"eigenvalues": [50.0, 2.0], "negative": 0, "max_abs": 50.0}},
    }  # fmt: skip
    text = " ".join(demo_report.findings(rep))
    assert "42.0% (b) to 91.0% (a)" in text and "gap of 49.0 points" in text
    assert "sharpest loss surface is b's" in text and "negative eigenvalues (non-convexity) is a's" in text
    rep["zeroshot"]["b"]["acc1"] = 0.905
    assert "within 2 points" in demo_report.findings(rep)[0]
    md = demo_report.render_markdown(rep)
    assert "| a | 2 | 1 |" in md and "| b | 2 | 0 |" in md


def test_release_keys_without_shared_folder_and_report_reason(tmp_path):
    from mamba_clip.demo.study import _release_keys

    keys, source = _release_keys(tmp_path / "no-shared", "vmamba-s")
    assert source == "package data" and keys["patch_embed.0.weight"] == (48, 3, 3, 3)
    rep = {"towers": {"vmamba-s": {"trunk_params": 10, "release_keys": 3, "matching_keys": 3,
                                   "release_keys_source": "package data"},
                      "simba-s": {"trunk_params": 20, "release_keys_source": "no release key list: gone"}}}
    md = demo_report.render_markdown(rep)
    assert "| vmamba-s | 10 | 3/3 |" in md and "Key lists from: package data." in md
    assert "| simba-s | 20 | n/a |" in md and "n/a: no release key list: gone." in md


def test_environment_is_recorded_and_rendered():
    """The report and docs/demo_results.md say which CPU and torch produced the numbers (accuracies
    move a little between CPUs: other float kernels)."""
    import importlib.util
    import os
    from pathlib import Path

    import torch

    from mamba_clip.demo import environment

    env = environment()
    assert env["torch"] == torch.__version__ and env["cpu_count"] == os.cpu_count()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu"]
    md = demo_report.render_markdown({"environment": env})
    assert f"Run on: {env['cpu']} (" in md and f"torch kernels {env['cpu_capability']}" in md
    spec = importlib.util.spec_from_file_location("docs_generate", Path(__file__).parents[1] / "docs" / "_generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    doc = gen.render({"settings": {"seed": 0}, "environment": env}, "demo_out/report.json")
    assert f"Run on {env['cpu']} (" in doc and f"torch {env['torch']}" in doc
    assert "Run on" not in gen.render({"settings": {"seed": 0}}, "old/report.json")  # older reports still render


def test_environment_of_a_resumed_demo_is_where_its_steps_ran(tmp_path, monkeypatch):
    import json

    import mamba_clip.demo as demo

    calls = []
    monkeypatch.setitem(demo.STEPS, "scan", lambda out, args: calls.append(1) or {"ok": True})
    monkeypatch.setattr(demo_report, "write_report", lambda out, report: out / "report.md")
    rep = demo.run_demo(tmp_path, steps=["scan"], quick=True, progress=False)
    assert calls == [1] and rep["environment"]["cpu"] == demo.environment()["cpu"]
    saved = json.loads((tmp_path / "environment.json").read_text())
    saved["cpu"] = "the machine of the first run"
    (tmp_path / "environment.json").write_text(json.dumps(saved))
    rep = demo.run_demo(tmp_path, steps=["scan"], quick=True, progress=False)  # read back: nothing runs
    assert calls == [1] and rep["environment"]["cpu"] == "the machine of the first run"
    rep = demo.run_demo(tmp_path, steps=["scan"], quick=True, progress=False, force=True)  # runs again here
    assert calls == [1, 1] and rep["environment"]["cpu"] == demo.environment()["cpu"]
