"""Zero-shot suite pieces without a model: metrics on hand-made logits, synonym averaging of class
embeddings, the dataset table, the wds/ writer read back by clip_benchmark, Table 1 files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from mamba_clip.eval.zeroshot import catalog, metrics, table, templates
from mamba_clip.eval.zeroshot.wds import WdsDataset, make_wds


# ---------------------------------------------------------------------------------------------- metrics
def test_topk_and_mix_on_known_logits():
    logits = np.array([
        [9, 1, 2, 3, 4, 5],   # target 0: top-1 hit
        [1, 9, 8, 7, 6, 5],   # target 0: rank 6 -> miss in top-5
        [1, 2, 9, 8, 7, 6],   # target 3: rank 2 -> top-5 hit
        [5, 6, 7, 8, 9, 1],   # target 0: rank 5 -> top-5 hit
    ], dtype=float)  # fmt: skip
    target = np.array([0, 0, 3, 0])
    assert metrics.topk_accuracy(logits, target, 1) == 0.25
    assert metrics.topk_accuracy(logits, target, 5) == 0.75
    assert metrics.score("top1_top5", logits, target) == pytest.approx(0.5)
    assert metrics.score("top1", logits, target) == 0.25


def test_mean_per_class_differs_from_top1():
    # class 0: 3 of 4 right; class 1: 0 of 1 right -> top-1 3/5, mean per class (0.75 + 0) / 2
    logits = np.array([[2, 1], [2, 1], [2, 1], [1, 2], [3, 0]], dtype=float)
    target = np.array([0, 0, 0, 0, 1])
    assert metrics.score("top1", logits, target) == pytest.approx(0.6)
    assert metrics.score("mean_per_class", logits, target) == pytest.approx(0.375)
    from sklearn.metrics import balanced_accuracy_score

    assert metrics.mean_per_class_accuracy(logits, target) == pytest.approx(
        balanced_accuracy_score(target, logits.argmax(1))
    )


def test_roc_auc_known_and_against_sklearn():
    from sklearn.metrics import roc_auc_score

    # perfect ranking, reversed ranking, and a hand-counted case (3 of 4 positive-negative pairs ordered)
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert metrics.roc_auc([0.1, 0.5, 0.4, 0.9], [0, 0, 1, 1]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = np.round(rng.normal(size=200) + 0.7 * y, 1)  # rounding makes ties
        assert metrics.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    logits = rng.normal(size=(50, 2))
    y = rng.integers(0, 2, 50)
    softmax1 = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    assert metrics.score("roc_auc", logits, y) == pytest.approx(roc_auc_score(y, softmax1), abs=1e-12)
    assert math.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="2-class"):
        metrics.score("roc_auc", np.zeros((3, 3)), np.zeros(3, dtype=int))


def test_clip_benchmark_fields_match_clip_benchmark():
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 7)).astype(np.float32)
    y = rng.integers(0, 7, 64)
    f = metrics.clip_benchmark_fields(logits, y)
    a1, a5 = accuracy(torch.from_numpy(logits), torch.from_numpy(y), topk=(1, 5))
    assert f["acc1"] == pytest.approx(a1) and f["acc5"] == pytest.approx(a5)
    assert f["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(1)))
    assert math.isnan(metrics.clip_benchmark_fields(logits[:, :3], y % 3)["acc5"])


# ------------------------------------------------------------------------------------------- templates
class _TableModel:
    """encode_text returns a fixed random vector per prompt string (tokenizer passes strings through)."""

    def __init__(self, dim=8):
        self.dim, self.vecs = dim, {}

    def vec(self, s):
        if s not in self.vecs:
            g = torch.Generator().manual_seed(abs(hash(s)) % (2**31))
            self.vecs[s] = torch.randn(self.dim, generator=g) * (1 + len(s) % 3)  # unnormalised on purpose
        return self.vecs[s]

    def encode_text(self, prompts):
        return torch.stack([self.vec(s) for s in prompts.items])


class _Tok:
    def __init__(self, items):
        self.items = list(items)

    def to(self, device):
        return self


def test_synonym_averaging_against_hand_computation():
    model = _TableModel()
    names = [["happy", "smiling"], ["angry"]]
    tpls = ["a photo of a {} face.", "a {} person."]
    head = templates.class_embeddings(model, _Tok, names, tpls, batch_size=3)
    assert head.shape == (8, 2)

    def unit(v):
        return v / v.norm()

    c0 = [unit(model.vec(t.format(n))) for n in ("happy", "smiling") for t in tpls]
    c1 = [unit(model.vec(t.format("angry"))) for t in tpls]
    e0, e1 = torch.stack(c0).mean(0), torch.stack(c1).mean(0)
    torch.testing.assert_close(head[:, 0], unit(e0))
    torch.testing.assert_close(head[:, 1], unit(e1))
    # not the mean of per-name class embeddings, nor only the first name
    only_first = unit(torch.stack(c0[:2]).mean(0))
    assert not torch.allclose(head[:, 0], only_first, atol=1e-4)


def test_single_names_equal_clip_benchmark_classifier():
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    model = _TableModel()
    names = ["cat", "dog", "car"]
    ours = templates.class_embeddings(model, _Tok, templates.as_name_lists(names), ["a {c}.", "the {c}!"])
    theirs = zero_shot_classifier(model, _Tok, names, ["a {c}.", "the {c}!"], "cpu", amp=False)
    torch.testing.assert_close(ours, theirs)


def test_fill_and_alignment():
    assert templates.fill("a photo of a {}.", "cat") == "a photo of a cat."
    assert templates.fill("a {c} on {c}", "cat") == "a cat on cat"
    with pytest.raises(ValueError):
        templates.fill("no placeholder", "cat")
    ref = [["Abyssinian"], ["Bengal"], ["american bulldog"]]
    # torchvision orders pets case-insensitively: the reference names follow the dataset's order
    assert templates.align_to_dataset(ref, ["Abyssinian", "American Bulldog", "Bengal"]) == [
        ["Abyssinian"], ["american bulldog"], ["Bengal"]]  # fmt: skip
    # names that do not match (descriptive reference names) keep the reference order
    assert templates.align_to_dataset([["red sign"], ["blue sign"]], ["0", "1"]) == [["red sign"], ["blue sign"]]
    with pytest.raises(ValueError, match="2 classes"):
        templates.align_to_dataset(ref, ["a", "b"])


def test_reference_data_shipped_and_complete():
    labels, tpls = templates.reference_labels(), templates.reference_templates()
    for spec in catalog.TABLE1:
        assert spec.reference_key in labels and spec.reference_key in tpls, spec.name
    assert templates.as_name_lists(labels["fer2013"])[3] == ["happy", "smiling"]
    assert len(labels["imagenet"]) == 1000 and len(tpls["imagenet"]) == 7


# ---------------------------------------------------------------------------------------------- catalog
def test_catalog_matches_published_table():
    pub, params = table.published()
    assert list(next(iter(pub.values()))) == [s.display for s in catalog.TABLE1]
    assert len(catalog.TABLE1) == 26 and params["vmamba-s"] == 50
    metric_of = {s.name: s.metric for s in catalog.TABLE1}
    assert {k for k, v in metric_of.items() if v == "mean_per_class"} == {"aircraft", "pets", "caltech101", "flowers"}
    assert metric_of["kinetics700"] == "top1_top5" and metric_of["hateful_memes"] == "roc_auc"
    assert {s.name for s in catalog.TABLE1 if s.is_wds} >= {"cub", "ucf101", "kinetics700", "hateful_memes"}


def test_resolve_names():
    assert catalog.resolve("aircraft").builder == "fgvc_aircraft"
    assert catalog.resolve("fgvc_aircraft").name == "aircraft"  # clip_benchmark's name of a Table 1 set
    w = catalog.resolve("wds/digits")
    assert w.is_wds and w.dirname == "digits" and w.metric == "top1" and not w.in_table
    f = catalog.resolve("wds/fer2013")
    assert f.is_wds and f.reference_key == "fer2013" and f.display == "FER-2013"
    assert catalog.resolve("imagenetv2").builder == "imagenetv2"
    with pytest.raises(catalog.UnknownDatasetError, match="valid names: food101, cifar10") as e:
        catalog.resolve_all(["cifar10", "cifar11", "imagenett"])
    assert "'cifar11'" in str(e.value) and "'imagenett'" in str(e.value)


# -------------------------------------------------------------------------------------------------- wds
def _image_folder(root, classes=("b_cls", "a_cls", "c_cls"), per_class=2):
    from PIL import Image

    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 16), (40 * ci, 10 * i, 200)).save(root / c / f"{i}.png")
        if ci == 0:
            Image.new("L", (8, 8), 7).save(root / c / "gray.bmp")  # converted to PNG
            (root / c / "notes.txt").write_text("not an image")


def test_make_wds_read_by_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    src, dst = tmp_path / "src", tmp_path / "wds" / "toy"
    _image_folder(src)
    (tmp_path / "t.txt").write_text("a photo of a {}.\nitap of the {c}.\n")
    info = make_wds(src, dst, templates=tmp_path / "t.txt", shard_size=3)
    assert info["n_images"] == 7 and info["n_shards"] == 3 and info["classnames"] == ["a_cls", "b_cls", "c_cls"]
    assert (dst / "test" / "nshards.txt").read_text().strip() == "3"
    assert sorted(p.name for p in (dst / "test").glob("*.tar")) == ["0.tar", "1.tar", "2.tar"]
    ds = build_dataset("wds/toy", root=str(dst), transform=lambda im: im.size, split="test")
    assert ds.classes == ["a_cls", "b_cls", "c_cls"]
    assert ds.templates == ["a photo of a {c}.", "itap of the {c}."]
    theirs = [(size, int(label)) for size, label in ds]
    ours = WdsDataset(dst, transform=lambda im: im.size)
    assert [ours[i] for i in range(len(ours))] == theirs
    assert [lab for _, lab in theirs] == [0, 0, 1, 1, 1, 2, 2]  # b_cls holds the converted .bmp
    assert (8, 8) in [s for s, _ in theirs]


def test_make_wds_classnames_and_errors(tmp_path):
    src = tmp_path / "src"
    _image_folder(src, per_class=1)
    info = make_wds(src, tmp_path / "d", classnames=["apple", "banana", "cherry"])
    assert (tmp_path / "d" / "classnames.txt").read_text().splitlines() == ["apple", "banana", "cherry"]
    assert info["templates"] == ["a photo of a {c}."]
    with pytest.raises(ValueError, match="2 class names given but .* has 3 class folders"):
        make_wds(src, tmp_path / "e", classnames=["x", "y"])
    with pytest.raises(FileNotFoundError):
        make_wds(tmp_path / "nope", tmp_path / "f")
    with pytest.raises(ValueError, match="placeholder"):
        make_wds(src, tmp_path / "g", templates=["no class here"])


def test_corrupt_image_names_shard_and_member(tmp_path, monkeypatch):
    from mamba_clip.eval.zeroshot import wds
    from mamba_clip.eval.zeroshot.wds import CorruptImageError

    src = tmp_path / "src"
    _image_folder(src, per_class=1)
    (src / "a_cls" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CorruptImageError, match=r"a_cls/0\.png"):  # packing names the source file
        make_wds(src, tmp_path / "d")
    assert not (tmp_path / "d" / "test" / "nshards.txt").exists()
    monkeypatch.setattr(wds, "_image_bytes", lambda path, name="": ("png", path.read_bytes()))  # pack it anyway
    make_wds(src, tmp_path / "d")
    ds = WdsDataset(tmp_path / "d")
    with pytest.raises(CorruptImageError, match=r"0\.tar:s0000000\.png"):
        ds[0]
    assert ds[1][1] == 1


# ------------------------------------------------------------------------------------------------ table
def _result(out, model, dataset, column, value, params=1.5):
    d = out / model
    d.mkdir(parents=True, exist_ok=True)
    r = {"status": "ok", "model": model, "dataset": dataset, "table1_column": column, "metric": value,
         "params_m": params}  # fmt: skip
    (d / f"{dataset.replace('/', '_')}.json").write_text(json.dumps(r))


def test_tables_with_published_and_diff(tmp_path):
    _result(tmp_path, "vmamba-s", "cifar10", "CIFAR-10", 0.71, params=50)
    _result(tmp_path, "vmamba-s", "imagenet", "ImageNet", 0.395, params=50)
    _result(tmp_path, "vmamba-nano", "wds/edges", None, 0.25)
    (tmp_path / "vmamba-nano" / "_summary.json").write_text("{}")
    paths = table.write_tables(tmp_path)
    assert set(paths) == {"csv", "md", "png"}
    rows = list(csv.DictReader(open(tmp_path / "table1.csv")))
    by = {(r["model"], r["row"]): r for r in rows}
    assert set(by) == {("vmamba-nano", "ours"), ("vmamba-s", "ours"), ("vmamba-s", "published"), ("vmamba-s", "diff")}
    assert by["vmamba-s", "ours"]["CIFAR-10"] == "71.0" and by["vmamba-s", "published"]["CIFAR-10"] == "70.3"
    assert by["vmamba-s", "diff"]["CIFAR-10"] == "+0.7" and by["vmamba-s", "diff"]["ImageNet"] == "-0.5"
    assert by["vmamba-s", "published"]["average"] == "55.1"  # (70.3 + 40.0) / 2: same columns as ours
    assert by["vmamba-nano", "ours"]["wds/edges"] == "25.0" and by["vmamba-nano", "ours"]["n_table1"] == "0"
    md = (tmp_path / "table1.md").read_text()
    assert "| vmamba-s | diff |" in md and "Food-101" in md
    assert (tmp_path / "table1.png").read_bytes()[:4] == b"\x89PNG"
