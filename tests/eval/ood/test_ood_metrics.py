"""Metrics against model-vs-human's published numbers and an independent reference computation.

Published values: per-dataset accuracies in ``raw-data/performances/*.csv`` (to 1e-6), and the
benchmark tables of model-vs-human's report (``latex-report/assets/benchmark_table_*.tex``, three
decimals): BagNet-33 OOD accuracy .398, accuracy difference .156, observed consistency .567, error
consistency .137; SimCLR-x1 .596, .080, .667, .179.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict

import pytest

from mamba_clip.eval.ood import metrics
from mamba_clip.eval.ood.protocol import BENCHMARK_DATASETS, get_spec
from mamba_clip.eval.ood.rawdata import Trial, read_raw_data, read_trials

MODELS = {"bagnet33": "bagnet33", "simclr_resnet50x1": "simclr_resnet50x1"}
PUBLISHED = {
    "bagnet33": {"ood_accuracy": 0.398, "accuracy_difference": 0.156, "observed_consistency": 0.567,
                 "error_consistency": 0.137},
    "simclr_resnet50x1": {"ood_accuracy": 0.596, "accuracy_difference": 0.080, "observed_consistency": 0.667,
                          "error_consistency": 0.179},
}  # fmt: skip

# model-vs-human plotting/plot.py EXCLUDE_CONDITIONS, as published (test data, typed in independently).
MVH_EXCLUDE = {
    "colour": ["cr"],
    "contrast": ["c100", "c03", "c01"],
    "high-pass": ["inf", "0.55", "0.45", "0.4"],
    "low-pass": ["0", "15", "40"],
    "phase-scrambling": ["0", "150", "180"],
    "power-equalisation": ["0"],
    "false-colour": ["True"],
    "rotation": ["0"],
    "eidolonI": ["1-10-10", "64-10-10", "128-10-10"],
    "eidolonII": ["1-3-10", "32-3-10", "64-3-10", "128-3-10"],
    "eidolonIII": ["1-0-10", "16-0-10", "32-0-10", "64-0-10", "128-0-10"],
    "uniform-noise": ["0.0", "0.6", "0.9"],
}
NONPARAMETRIC = {"edge", "silhouette", "cue-conflict", "sketch", "stylized"}


@pytest.fixture(scope="module")
def raw(raw_dir):
    return read_raw_data(raw_dir)


@pytest.fixture(scope="module")
def summary(raw):
    return metrics.summarize(raw)


# --- an independent, simple reference: csv module + pandas' type inference, no package code ----------


def _pandas_like(values):
    """What ``pd.read_csv(...).condition.astype(str)`` yields for one file's condition column."""

    def num(v, kind):
        try:
            kind(v)
            return True
        except ValueError:
            return False

    if all(num(v, int) for v in values):
        return [str(int(v)) for v in values]
    if all(num(v, float) for v in values):
        return [str(float(v)) for v in values]
    if all(v.lower() in ("true", "false") for v in values):
        return [v.capitalize() for v in values]
    return list(values)


def _image_id(name):
    parts = name.split("_")
    if len(parts) == 1:
        return name
    return "_".join(parts[-2:]) if parts[-2].startswith("n0") else parts[-1]


def _reference_rows(raw_dir, dataset):
    rows = []
    for f in sorted((raw_dir / dataset).glob("*.csv")):
        with open(f, newline="") as fh:
            data = [{k.lower(): v for k, v in r.items()} for r in csv.DictReader(fh)]
        for r, c in zip(data, _pandas_like([r["condition"] for r in data])):
            rows.append((r["subj"], c, r["object_response"] == r["category"], _image_id(r["imagename"])))
    return rows


def _pick(rows, subj, cond):
    """Correctness of ``subj``'s trials in ``cond``, ordered by image id."""
    sel = [(i, ok) for s, c, ok, i in rows if s == subj and (cond is None or c == cond)]
    return [ok for _, ok in sorted(sel)]


def _reference(raw_dir, model):
    ood, diff, obs, err = [], [], [], []
    for d in BENCHMARK_DATASETS:
        rows = _reference_rows(raw_dir, d)
        excl = set(MVH_EXCLUDE.get(d, []))
        conds = [None] if d in NONPARAMETRIC else sorted({c for _, c, _, _ in rows} - excl)
        keep = [r for r in rows if d in NONPARAMETRIC or r[1] not in excl]
        mine = [ok for s, _, ok, _ in keep if s == model]
        ood.append(sum(mine) / len(mine))
        humans = sorted({s for s, _, _, _ in rows if s.startswith("subject-")})
        per_h = defaultdict(lambda: defaultdict(list))
        for h in humans:
            for c in conds:
                a, b = _pick(keep, model, c), _pick(keep, h, c)
                pa, pb = sum(a) / len(a), sum(b) / len(b)
                o = sum(x == y for x, y in zip(a, b)) / len(a)
                e = pa * pb + (1 - pa) * (1 - pb)
                per_h[h]["diff"].append((pa - pb) ** 2)
                per_h[h]["obs"].append(o)
                per_h[h]["err"].append(1.0 if o == 1 else (o - e) / (1 - e))
        for out, key in ((diff, "diff"), (obs, "obs"), (err, "err")):
            out.append(sum(sum(v[key]) / len(v[key]) for v in per_h.values()) / len(per_h))
    mean = lambda x: sum(x) / len(x)
    return {"ood_accuracy": mean(ood), "accuracy_difference": mean(diff), "observed_consistency": mean(obs),
            "error_consistency": mean(err)}  # fmt: skip


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
def test_per_dataset_accuracy_matches_published_performances(summary, raw_dir, model):
    published = metrics.read_performances(raw_dir / "performances" / f"{MODELS[model]}.csv")
    top1 = {d: v for (d, m), v in published.items() if m == "accuracy (top-1)"}
    assert set(top1) == set(BENCHMARK_DATASETS)
    for d, v in top1.items():
        assert summary[model]["accuracy"][d] == pytest.approx(v, abs=1e-6), d


@pytest.mark.parametrize("model", sorted(MODELS))
def test_benchmark_metrics_match_published_table(summary, model):
    for key, value in PUBLISHED[model].items():
        assert summary[model][key] == pytest.approx(value, abs=5e-4 + 1e-9), key
    assert summary[model]["datasets"]["consistency"] == sorted(BENCHMARK_DATASETS)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_benchmark_metrics_match_independent_reference(summary, raw_dir, model):
    ref = _reference(raw_dir, model)
    for key, value in ref.items():
        assert summary[model][key] == pytest.approx(value, abs=1e-12), key


def test_shape_bias_against_direct_count(raw):
    trials = [t for t in raw["cue-conflict"] if t.subj == "bagnet33"]
    shape = texture = 0
    for t in trials:
        tex = "".join(ch for ch in t.imagename[: -len(".png")].split("-")[1] if ch.isalpha())
        if tex == t.category:
            continue
        shape += t.object_response == t.category
        texture += t.object_response == tex
    sb = metrics.shape_bias(trials)
    assert sb["shape-bias"] == pytest.approx(shape / (shape + texture), abs=1e-12)
    by_cat = metrics.shape_bias_by_category(trials)
    assert len(by_cat) == 16


def test_human_reference_row(summary):
    h = summary["humans"]
    # humans are strongly shape-biased (Geirhos et al. 2019: ~0.96) and beat both models OOD
    assert 0.9 < h["shape_bias"] <= 1.0
    simclr, bagnet = summary["simclr_resnet50x1"], summary["bagnet33"]
    assert h["ood_accuracy"] > simclr["ood_accuracy"] > bagnet["ood_accuracy"]
    assert h["error_consistency"] > summary["simclr_resnet50x1"]["error_consistency"]


def _t(subj, resp, cat="dog", img="a.png", cond="0"):
    return Trial("sketch", subj, "1", 1, "NaN", resp, cat, cond, img, img)


def test_error_consistency_by_hand():
    # model right on images 1-3, wrong on 4; human right on 1, 2, 4, wrong on 3
    a = [_t("m", "dog", img=f"{i}.png") for i in (1, 2, 3)] + [_t("m", "cat", img="4.png")]
    b = [_t("subject-01", "dog", img=f"{i}.png") for i in (4, 2, 1)] + [_t("subject-01", "cat", img="3.png")]
    r = metrics.error_consistency(a, b)
    assert r["observed-consistency"] == pytest.approx(0.5)
    assert r["expected-consistency"] == pytest.approx(0.75 * 0.75 + 0.25 * 0.25)
    assert r["error-consistency"] == pytest.approx((0.5 - 0.625) / (1 - 0.625))
    assert metrics.error_consistency(a, a)["error-consistency"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        metrics.error_consistency(a, [_t("s", "dog", img=f"x{i}.png") for i in range(4)])


def test_condition_canonicalisation_and_bad_values():
    hp = get_spec("high-pass")
    assert [hp.canonical_condition(c) for c in ("3", "1", "inf", "0.7")] == ["3.0", "1.0", "inf", "0.7"]
    assert get_spec("uniform-noise").canonical_condition("0.60") == "0.6"
    assert get_spec("false-colour").canonical_condition("true") == "True"
    with pytest.raises(ValueError, match="accepted"):
        hp.canonical_condition("2.5")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_spec("imagenet-c")


def test_reader_rejects_bad_files(tmp_path):
    d = tmp_path / "colour"
    d.mkdir()
    (d / "colour_x_session-1.csv").write_text("subj,trial,category\nx,1,dog\n")
    with pytest.raises(ValueError, match="missing column"):
        read_trials(d / "colour_x_session-1.csv")
    (d / "colour_x_session-1.csv").write_text(
        "subj,session,trial,rt,object_response,category,condition,imagename\nx,1,1,NaN,dog,dog,sepia,a.png\n"
    )
    with pytest.raises(ValueError, match="sepia"):
        read_trials(d / "colour_x_session-1.csv")


def test_metrics_cli_on_a_copy(raw_dir, tmp_path, capsys):
    from mamba_clip.cli import main

    for d in ("cue-conflict", "contrast"):
        shutil.copytree(raw_dir / d, tmp_path / "raw" / d)
    out = tmp_path / "m.json"
    rc = main(["ood", "metrics", "--raw-data", str(tmp_path / "raw"), "--models", "simclr-resnet50x1",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) == {"simclr_resnet50x1", "humans"}
    keys = {"ood_accuracy", "accuracy_difference", "observed_consistency", "error_consistency", "shape_bias",
            "accuracy"}  # fmt: skip
    assert keys <= set(res["simclr_resnet50x1"])
    assert set(res["simclr_resnet50x1"]["accuracy"]) == {"cue-conflict", "contrast"}
    published = metrics.read_performances(raw_dir / "performances" / "simclr_resnet50x1.csv")
    acc = res["simclr_resnet50x1"]["accuracy"]["contrast"]
    assert acc == pytest.approx(published[("contrast", "accuracy (top-1)")], abs=1e-6)
    rc = main(["ood", "metrics", "--raw-data", str(tmp_path / "raw"), "--models", "resnet50",
               "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "not found" in err and "Traceback" not in err
