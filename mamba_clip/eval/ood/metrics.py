"""model-vs-human's benchmark metrics on raw-data trials (no torch).

Definitions follow bethgelab/model-vs-human (``plotting/analyses.py`` and ``plotting/plot.py``;
Geirhos et al., NeurIPS 2021, and Geirhos, Meding & Wichmann, NeurIPS 2020 for error consistency):

* accuracy: fraction of trials with ``object_response == category``;
* OOD accuracy: per dataset the accuracy of all of the observer's trials in the *included* conditions
  (:attr:`DatasetSpec.excluded` removed), then the mean over datasets;
* accuracy difference: per (dataset, condition, human) the squared difference between the model's and
  the human's accuracy; averaged over conditions, then over humans, then over datasets;
* observed consistency: fraction of images on which model and human are both right or both wrong
  (trials paired by ``image_id`` after sorting);
* error consistency: Cohen's kappa ``(c_obs - c_exp) / (1 - c_exp)`` with
  ``c_exp = p1 p2 + (1 - p1)(1 - p2)`` (``1`` when ``c_obs == 1``); aggregated like the accuracy
  difference;
* the human reference row: the same pairwise metrics over all human pairs, averaged over conditions,
  then over pairs, then over datasets; OOD accuracy of all human trials pooled;
* shape bias (Geirhos et al., ICLR 2019): on cue-conflict, among images whose shape and texture
  categories differ, ``shape / (shape + texture)`` decisions, overall and per shape category.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .protocol import BENCHMARK_DATASETS, CATEGORIES, get_spec, is_human, texture_category
from .rawdata import Trial

Metric = Dict[str, float]


def accuracy(trials: Sequence[Trial]) -> float:
    """Fraction of correct trials. Raises ``ValueError`` on no trials."""
    if not trials:
        raise ValueError("accuracy of an empty set of trials is undefined")
    return sum(t.correct for t in trials) / len(trials)


def _select(trials: Iterable[Trial], subjects=None, conditions=None) -> List[Trial]:
    subj = None if subjects is None else set(subjects)
    cond = None if conditions is None else set(conditions)
    return [t for t in trials if (subj is None or t.subj in subj) and (cond is None or t.condition in cond)]


def accuracy_by_condition(trials: Sequence[Trial], dataset: str, subjects=None) -> Dict[str, float]:
    """{condition: accuracy} of ``subjects`` (all when None) in the dataset's condition order."""
    spec = get_spec(dataset)
    rows = _select(trials, subjects)
    if not spec.parametric:
        return {"all": accuracy(rows)} if rows else {}
    out = {}
    for c in spec.conditions:
        sel = [t for t in rows if t.condition == c]
        if sel:
            out[c] = accuracy(sel)
    return out


def ood_accuracy_for_dataset(trials: Sequence[Trial], dataset: str, subjects) -> float:
    """Accuracy of ``subjects``' pooled trials in the dataset's included conditions."""
    spec = get_spec(dataset)
    conds = spec.included if spec.parametric else None
    rows = _select(trials, subjects, conds)
    if not rows:
        raise ValueError(f"no trials of {sorted(subjects)} in the included conditions of {dataset!r}")
    return accuracy(rows)


def error_consistency(trials1: Sequence[Trial], trials2: Sequence[Trial]) -> Metric:
    """Expected, observed and error consistency (Cohen's kappa) of two observers on the same images.

    Trials are paired by ``image_id`` after sorting both lists; ``ValueError`` if the two observers
    did not see the same images.
    """
    if not trials1 or not trials2:
        raise ValueError("error consistency needs trials of both observers")
    if len(trials1) != len(trials2):
        raise ValueError(f"observers saw different numbers of images ({len(trials1)} vs {len(trials2)})")
    a = sorted(trials1, key=lambda t: t.image_id)
    b = sorted(trials2, key=lambda t: t.image_id)
    if any(x.image_id != y.image_id for x, y in zip(a, b)):
        raise ValueError("observers did not see the same images (image ids differ)")
    p1, p2 = accuracy(a), accuracy(b)
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    observed = sum(x.correct == y.correct for x, y in zip(a, b)) / len(a)
    kappa = 1.0 if observed == 1.0 else (observed - expected) / (1.0 - expected)
    return {"expected-consistency": expected, "observed-consistency": observed, "error-consistency": kappa}


def _conditions(dataset: str) -> List[Optional[str]]:
    spec = get_spec(dataset)
    return list(spec.included) if spec.parametric else [None]


def _index(trials: Sequence[Trial]) -> Dict[Tuple[str, Optional[str]], List[Trial]]:
    idx: Dict[Tuple[str, Optional[str]], List[Trial]] = defaultdict(list)
    spec_parametric = bool(trials) and get_spec(trials[0].dataset).parametric
    for t in trials:
        idx[(t.subj, t.condition if spec_parametric else None)].append(t)
    return idx


def pair_metrics(trials: Sequence[Trial], dataset: str, subj1: str, subj2: str) -> Dict[str, Optional[float]]:
    """Accuracy difference, observed and error consistency of two observers on one dataset, each
    averaged over the included conditions. Consistencies are ``None`` when the two observers did not
    see the same images (e.g. a model evaluated on re-generated stimuli against the human data)."""
    idx = _index(trials)
    diffs, obs, err = [], [], []
    same_images = True
    for c in _conditions(dataset):
        t1, t2 = idx.get((subj1, c), []), idx.get((subj2, c), [])
        if not t1 or not t2:
            raise ValueError(f"{dataset!r}: condition {c!r} has no trials of {subj1!r} or {subj2!r}")
        diffs.append((accuracy(t1) - accuracy(t2)) ** 2)
        if same_images:
            try:
                r = error_consistency(t1, t2)
            except ValueError:
                same_images = False
                continue
            obs.append(r["observed-consistency"])
            err.append(r["error-consistency"])
    return {
        "accuracy_difference": _mean(diffs),
        "observed_consistency": _mean(obs) if same_images else None,
        "error_consistency": _mean(err) if same_images else None,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def shape_bias(trials: Sequence[Trial]) -> Metric:
    """Shape bias on cue-conflict trials (``category`` = shape, texture from the image name).

    Fractions are relative to all trials (as model-vs-human reports them); the bias itself only uses
    images whose shape and texture differ. ``shape-bias`` is NaN when no decision matched either cue.
    """
    if not trials:
        raise ValueError("shape bias of an empty set of trials is undefined")
    conflict = [t for t in trials if t.category != texture_category(t.imagename)]
    shape = sum(t.object_response == t.category for t in conflict) / len(trials)
    texture = sum(t.object_response == texture_category(t.imagename) for t in conflict) / len(trials)
    bias = shape / (shape + texture) if shape + texture > 0 else math.nan
    return {"fraction-correct-shape": shape, "fraction-correct-texture": texture, "shape-bias": bias}


def shape_bias_by_category(trials: Sequence[Trial]) -> Dict[str, float]:
    """{shape category: shape bias} over the categories present."""
    by_cat: Dict[str, List[Trial]] = defaultdict(list)
    for t in trials:
        by_cat[t.category].append(t)
    return {c: shape_bias(by_cat[c])["shape-bias"] for c in CATEGORIES if c in by_cat}


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def summarize(
    raw: Dict[str, List[Trial]],
    models: Optional[Sequence[str]] = None,
    humans: Optional[Dict[str, List[Trial]]] = None,
    datasets: Sequence[str] = BENCHMARK_DATASETS,
    include_humans: bool = True,
) -> Dict[str, dict]:
    """The benchmark summary ``{model: {"ood_accuracy", "accuracy_difference", "observed_consistency",
    "error_consistency", "shape_bias", "accuracy": {dataset: value}, ...}}``.

    ``raw`` holds the trials (``{dataset: trials}``, e.g. from :func:`read_raw_data`); human
    observers are taken from ``humans`` when given (their trials replace any human trials in
    ``raw``), else from ``raw``. ``models`` selects model subjects (default: every non-human
    subject). Averages run over the datasets of ``datasets`` available for the model; the lists
    actually used are reported under ``"datasets"``. Extra keys: ``ood_accuracy_by_dataset``,
    ``accuracy_by_condition``, ``shape_bias_by_category``. With ``include_humans`` a ``"humans"``
    entry holds the human reference values (pairwise metrics over human pairs).
    """
    data: Dict[str, List[Trial]] = {}
    for d in datasets:
        d = get_spec(d).name
        rows = list(raw.get(d, []))
        if humans is not None:
            rows = [t for t in rows if not is_human(t.subj)] + [
                t for t in humans.get(d, []) if is_human(t.subj)
            ]
        if rows:
            data[d] = rows
    all_models = sorted({t.subj for rows in data.values() for t in rows if not is_human(t.subj)})
    if models is None:
        chosen = all_models
    else:
        lookup = {m.replace("-", "_"): m for m in all_models}
        chosen = []
        for m in models:
            key = str(m).replace("-", "_")
            if key not in lookup:
                raise ValueError(f"model {m!r} not found in the raw data; available: {all_models}")
            chosen.append(lookup[key])

    human_names = {d: sorted({t.subj for t in rows if is_human(t.subj)}) for d, rows in data.items()}
    result: Dict[str, dict] = {}
    for m in chosen:
        result[m] = _summarize_observer(data, [m], human_names, model=m)
    if include_humans and any(human_names.values()):
        result["humans"] = _summarize_humans(data, human_names)
    return result


def _summarize_observer(data, subjects, human_names, model):
    acc, ood, by_cond = {}, {}, {}
    per_ds = {"accuracy_difference": {}, "observed_consistency": {}, "error_consistency": {}}
    for d, rows in data.items():
        mine = _select(rows, subjects)
        if not mine:
            continue
        acc[d] = accuracy(mine)
        by_cond[d] = accuracy_by_condition(rows, d, subjects)
        try:
            ood[d] = ood_accuracy_for_dataset(rows, d, subjects)
        except ValueError as exc:
            warnings.warn(f"{model}: {d} left out of the OOD accuracy: {exc}", stacklevel=2)
            continue
        hs = human_names.get(d, [])
        if not hs:
            continue
        try:
            vals = [pair_metrics(rows, d, model, h) for h in hs]
        except ValueError as exc:
            warnings.warn(f"{model}: {d} left out of the human comparison: {exc}", stacklevel=2)
            continue
        for key in per_ds:
            v = [x[key] for x in vals]
            if all(x is not None for x in v):
                per_ds[key][d] = _mean(v)
    sb = sb_cat = None
    if "cue-conflict" in data:
        cc = _select(data["cue-conflict"], subjects)
        if cc:
            sb = shape_bias(cc)["shape-bias"]
            sb_cat = shape_bias_by_category(cc)
    return _package(acc, ood, by_cond, per_ds, sb, sb_cat)


def _summarize_humans(data, human_names):
    acc, ood, by_cond = {}, {}, {}
    per_ds = {"accuracy_difference": {}, "observed_consistency": {}, "error_consistency": {}}
    for d, rows in data.items():
        hs = human_names.get(d, [])
        if not hs:
            continue
        acc[d] = accuracy(_select(rows, hs))
        ood[d] = ood_accuracy_for_dataset(rows, d, hs)
        by_cond[d] = accuracy_by_condition(rows, d, hs)
        pairs = [pair_metrics(rows, d, a, b) for i, a in enumerate(hs) for b in hs[i + 1 :]]
        for key in per_ds:
            v = [x[key] for x in pairs]
            if v and all(x is not None for x in v):
                per_ds[key][d] = _mean(v)
    sb = sb_cat = None
    if "cue-conflict" in data and human_names.get("cue-conflict"):
        cc = _select(data["cue-conflict"], human_names["cue-conflict"])
        sb = shape_bias(cc)["shape-bias"]
        sb_cat = shape_bias_by_category(cc)
    return _package(acc, ood, by_cond, per_ds, sb, sb_cat)


def _package(acc, ood, by_cond, per_ds, sb, sb_cat):
    out = {
        "ood_accuracy": _mean(list(ood.values())) if ood else None,
        "accuracy_difference": _mean(list(per_ds["accuracy_difference"].values()))
        if per_ds["accuracy_difference"]
        else None,
        "observed_consistency": _mean(list(per_ds["observed_consistency"].values()))
        if per_ds["observed_consistency"]
        else None,
        "error_consistency": _mean(list(per_ds["error_consistency"].values()))
        if per_ds["error_consistency"]
        else None,
        "shape_bias": _nan_to_none(sb),
        "accuracy": acc,
        "ood_accuracy_by_dataset": ood,
        "accuracy_by_condition": by_cond,
        "shape_bias_by_category": None if sb_cat is None else {k: _nan_to_none(v) for k, v in sb_cat.items()},
        "datasets": {
            "ood_accuracy": sorted(ood),
            "accuracy_difference": sorted(per_ds["accuracy_difference"]),
            "consistency": sorted(per_ds["error_consistency"]),
        },
    }
    missing = [d for d in ood if d not in per_ds["error_consistency"] and d in per_ds["accuracy_difference"]]
    if missing:
        warnings.warn(
            f"observed/error consistency left out for {missing}: the observers did not see the same "
            "images (re-generated stimuli)",
            stacklevel=3,
        )
    return out


def read_performances(path) -> Dict[Tuple[str, str], float]:
    """model-vs-human's ``performances/<model>.csv``: ``{(dataset, metric_name): value}``."""
    import csv

    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[(row["dataset_name"], row["metric_name"])] = float(row["performance"])
    return out
