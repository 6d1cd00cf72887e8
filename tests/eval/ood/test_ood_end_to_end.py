"""End to end on real images: make-datasets, evaluate (CSVs, summary, figures, resume), shape bias of
nano models on the cue-conflict stimuli, and the modelvshuman plug-in."""

from __future__ import annotations

import csv
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from mamba_clip.cli import main
from mamba_clip.eval.ood import metrics
from mamba_clip.eval.ood.datasets import list_samples, load_image, make_datasets
from mamba_clip.eval.ood.manipulations import rgb2grey
from mamba_clip.eval.ood.protocol import CATEGORIES, DATASETS
from mamba_clip.eval.ood.rawdata import read_raw_data, read_trials

# model-vs-human's Experiment.data_conditions (datasets/experiments.py), typed in as test data.
MVH_DATA_CONDITIONS = {
    "contrast": ["c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"],
    "rotation": ["0", "90", "180", "270"],
    "colour": ["cr", "bw"],
}


def mvh_format_reader(path, dataset):
    """A minimal stand-in for model-vs-human's reading of a raw-data CSV (``read_all_csv_files``,
    ``get_experimental_data``, ``InfoMappingWithSessions``), written independently of our reader."""
    with open(path, newline="") as f:
        rows = [{k.lower(): v for k, v in r.items()} for r in csv.DictReader(f)]
    assert rows, path
    assert list(rows[0]) == ["subj", "session", "trial", "rt", "object_response", "category", "condition",
                             "imagename"]  # fmt: skip
    subj = {r["subj"] for r in rows}
    assert len(subj) == 1 and not next(iter(subj)).startswith("subject-")
    assert [int(r["trial"]) for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert r["object_response"] in CATEGORIES and r["category"] in CATEGORIES
        if dataset in MVH_DATA_CONDITIONS:
            assert r["condition"] in MVH_DATA_CONDITIONS[dataset]
            parts = r["imagename"].split("_")
            assert parts[3] == r["condition"] and parts[4] == r["category"]
        r["image_id"] = r["imagename"].split("_")[-1]
    return rows


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.slow
def test_make_datasets_from_silhouettes_and_edges(tmp_path, stimuli_dir, manipulation_dir):
    sil = stimuli_dir / "filled-silhouettes"
    names = ["contrast", "rotation", "power-equalisation", "false-colour", "uniform-noise"]
    counts = make_datasets(sil, tmp_path / "a", datasets=names, mode="split", max_per_category=1,
                           manipulation_data=manipulation_dir, progress=False)  # fmt: skip
    assert counts == {n: 16 for n in names}
    for n in names:
        samples = list_samples(tmp_path / "a" / n)
        assert len(samples) == 16 and sorted(s.category for s in samples) == sorted(CATEGORIES)
        assert {s.condition for s in samples} <= set(DATASETS[n].file_conditions)
        assert all(s.path.parent.name == "session-1" and s.path.parent.parent.name == "dnn" for s in samples)
        with Image.open(samples[0].path) as im:
            assert im.size == (224, 224) and im.mode == "RGB"
    # a rotated stimulus is exactly the rotated greyscale source (up to 8-bit rounding)
    rot = [s for s in list_samples(tmp_path / "a" / "rotation") if s.condition != "0"][0]
    src = load_image(sil / rot.category / (rot.imagename.split("_")[-1]))
    expected = np.rot90(rgb2grey(src), k=int(rot.condition) // 90)
    got = np.asarray(Image.open(rot.path), dtype=np.float64)[..., 0] / 255
    assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-9

    # resume keeps finished files; the same seed reproduces the random stimuli byte for byte
    files = sorted((tmp_path / "a").rglob("*.png"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    make_datasets(sil, tmp_path / "a", datasets=names, mode="split", max_per_category=1,
                  manipulation_data=manipulation_dir, progress=False)  # fmt: skip
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    make_datasets(sil, tmp_path / "b", datasets=["uniform-noise"], mode="split", max_per_category=1,
                  progress=False)  # fmt: skip
    make_datasets(sil, tmp_path / "c", datasets=["uniform-noise"], mode="split", max_per_category=1, seed=1,
                  progress=False)  # fmt: skip
    a = sorted((tmp_path / "a" / "uniform-noise").rglob("*.png"))
    b = sorted((tmp_path / "b" / "uniform-noise").rglob("*.png"))
    c = sorted((tmp_path / "c" / "uniform-noise").rglob("*.png"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]

    # the command line, from the edge images, every image in every condition
    rc = main(["ood", "make-datasets", "--source", str(stimuli_dir / "edges"), "--out", str(tmp_path / "e"),
               "--datasets", "colour", "--max-per-category", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    samples = list_samples(tmp_path / "e" / "colour")
    assert len(samples) == 32 and sorted({s.condition for s in samples}) == ["bw", "cr"]
    with pytest.raises(ValueError, match="parametric"):
        make_datasets(sil, tmp_path / "x", datasets=["sketch"])


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, stimuli_dir, cue_conflict_dir, raw_dir):
    made = tmp_path / "datasets"
    make_datasets(stimuli_dir / "edges", made, datasets=["contrast"], mode="split", max_per_category=2,
                  progress=False)  # fmt: skip
    out = tmp_path / "eval"
    args = ["ood", "evaluate", "--models", "vit-nano", "--datasets", f"contrast={made / 'contrast'}",
            f"cue-conflict={cue_conflict_dir}", "--humans", str(raw_dir), "--templates", "1",
            "--max-images", "32", "--batch-size", "8", "--out", str(out), "--no-progress"]  # fmt: skip
    with pytest.warns(UserWarning, match="consistency left out"):
        assert main(args) == 0

    csvs = sorted((out / "raw-data").rglob("*.csv"))
    names = ["contrast_vit-nano_session-1.csv", "cue-conflict_vit-nano_session-1.csv"]
    assert [p.name for p in csvs] == names
    for p in csvs:
        rows = mvh_format_reader(p, p.parent.name)
        ours = read_trials(p)
        assert len(rows) == len(ours) == 32
        assert [r["object_response"] for r in rows] == [t.object_response for t in ours]

    summary = json.loads((out / "summary.json").read_text())
    m = summary["vit-nano"]
    for key in ("ood_accuracy", "accuracy_difference", "observed_consistency", "error_consistency",
                "shape_bias", "accuracy"):  # fmt: skip
        assert key in m
    raw = read_raw_data(out / "raw-data")
    for d, trials in raw.items():
        assert m["accuracy"][d] == pytest.approx(sum(t.correct for t in trials) / len(trials))
    cc = raw["cue-conflict"]
    assert m["shape_bias"] == pytest.approx(metrics.shape_bias(cc)["shape-bias"])
    # humans come from the shared raw data; re-generated contrast images cannot be paired with theirs
    assert summary["humans"]["shape_bias"] > 0.9
    assert "contrast" in m["datasets"]["accuracy_difference"] and m["datasets"]["consistency"] == []
    assert _png_ok(out / "figure1.png") and _png_ok(out / "figure2.png")

    # resume: nothing is re-evaluated
    mtimes = [p.stat().st_mtime_ns for p in csvs]
    with pytest.warns(UserWarning, match="consistency left out"):
        assert main(args + ["--no-figures"]) == 0
    assert [p.stat().st_mtime_ns for p in csvs] == mtimes


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit-nano", "vmamba-nano"])
def test_shape_bias_of_nano_model_on_cue_conflict(model, cue_conflict_dir, tmp_path):
    from mamba_clip.eval.ood.classifier import CLIPDecisionMaker
    from mamba_clip.eval.ood.evaluate import evaluate_dataset

    torch.manual_seed(0)
    dm = CLIPDecisionMaker.from_spec(model, templates=1)
    path = evaluate_dataset(dm, model, "cue-conflict", cue_conflict_dir, tmp_path, max_images=48,
                            progress=False)  # fmt: skip
    trials = read_trials(path)
    assert len(trials) == 48 and {t.category for t in trials} == set(CATEGORIES)
    shape = texture = 0
    for t in trials:
        parts = t.imagename[: -len(".png")].split("-")
        shape_cat, texture_cat = ("".join(ch for ch in part if ch.isalpha()) for part in parts)
        assert shape_cat == t.category
        if shape_cat != texture_cat:
            shape += t.object_response == shape_cat
            texture += t.object_response == texture_cat
    sb = metrics.shape_bias(trials)["shape-bias"]
    assert shape + texture > 0
    assert sb == pytest.approx(shape / (shape + texture))
    assert 0.0 <= sb <= 1.0


def test_modelvshuman_plugin_with_a_stand_in_package(tmp_path, monkeypatch, stimuli_dir):
    """The plug-in against a minimal package with modelvshuman's model-zoo structure."""
    from mamba_clip.eval.ood import modelvshuman as plugin

    pkg = tmp_path / "modelvshuman"
    (pkg / "models" / "pytorch").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text(
        "from .pytorch import model_zoo as pytorch_model_zoo\nfrom .registry import list_models\n"
    )
    (pkg / "models" / "pytorch" / "__init__.py").write_text("")
    (pkg / "models" / "pytorch" / "model_zoo.py").write_text("")
    (pkg / "models" / "registry.py").write_text(
        textwrap.dedent("""
        from collections import defaultdict
        _model_registry = defaultdict(list)
        def register_model(framework):
            def inner(fn):
                _model_registry[framework].append(fn.__name__)
                return fn
            return inner
        def list_models(framework):
            return list(_model_registry[framework])
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not any(m.startswith("modelvshuman") for m in sys.modules)
    try:
        _check_plugin(plugin, stimuli_dir)
    finally:
        for name in [m for m in sys.modules if m.startswith("modelvshuman")]:
            del sys.modules[name]


def _check_plugin(plugin, stimuli_dir):
    assert plugin.available()
    names = plugin.register_models(["vit-nano"], templates=1)
    assert names == {"vit_nano": "vit-nano"}
    from modelvshuman.models import list_models, pytorch_model_zoo

    assert list_models("pytorch") == ["vit_nano"]
    model = pytorch_model_zoo.vit_nano("vit_nano")
    # model-vs-human hands ImageNet-normalised 224x224 batches
    paths = sorted((stimuli_dir / "edges" / "car").glob("*.png"))[:2]
    x = torch.stack([torch.from_numpy(load_image(p)).permute(2, 0, 1).float() / 255 for p in paths])
    mean = torch.tensor(plugin.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(plugin.IMAGENET_STD).view(1, 3, 1, 1)
    logits = model.forward_batch((x - mean) / std)
    assert logits.shape == (2, 1000)
    probs = model.softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    expected = model.dm.probabilities(model.dm.load(paths)).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_real_edge_stimuli_pair_with_the_human_trials(tmp_path, stimuli_dir, raw_dir):
    """The full edge set is what the observers saw: model trials pair with theirs image by image."""
    from mamba_clip.eval.ood.classifier import CLIPDecisionMaker
    from mamba_clip.eval.ood.evaluate import evaluate_decision_makers

    torch.manual_seed(0)
    dm = CLIPDecisionMaker.from_spec("vit-nano", head="prompts16", templates=1)
    s = evaluate_decision_makers({"nano": dm}, [("edge", stimuli_dir / "edges")], tmp_path, humans=raw_dir,
                                 progress=False, figures=False)  # fmt: skip
    assert s["nano"]["datasets"]["consistency"] == ["edge"]
    mine = {
        t.image_id: t.correct for t in read_trials(tmp_path / "raw-data" / "edge" / "edge_nano_session-1.csv")
    }
    obs = []
    for f in sorted((raw_dir / "edge").glob("edge_subject-*.csv")):
        theirs = {
            r["imagename"].split("_")[-1]: r["object_response"] == r["category"]
            for r in csv.DictReader(open(f))
        }
        assert set(theirs) == set(mine)
        obs.append(sum(mine[k] == theirs[k] for k in mine) / len(mine))
    assert s["nano"]["observed_consistency"] == pytest.approx(sum(obs) / len(obs), abs=1e-12)
