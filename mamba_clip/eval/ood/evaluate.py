"""Evaluate CLIP models on OOD stimulus folders; write model-vs-human raw-data CSVs, a JSON summary
and the two figures.

Output folder::

    <out>/raw-data/<dataset>/<dataset>_<model>_session-1.csv   per-trial CSVs (model-vs-human format)
    <out>/summary.json                                           metrics (schema of :func:`summarize`)
    <out>/figure1.png                                            OOD accuracy and shape bias
    <out>/figure2.png                                            accuracy against condition

A finished (dataset, model) CSV is skipped on the next run (resume); every file is written
atomically, so an interrupted run leaves no partial CSV. Run as several processes (``torchrun``, SLURM;
``mamba_clip.distributed``), the (model, dataset) pairs are split over the ranks (consecutive blocks, so
each rank loads few models); rank 0 writes the summary and figures once all ranks are done.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .datasets import Sample, list_samples
from .rawdata import atomic_write_text, read_raw_data, safe_subject_name, subject_file_name, write_trials


def subsample(samples: List[Sample], max_images: Optional[int]) -> List[Sample]:
    """At most ``max_images`` samples, evenly spaced over the (sorted) list; deterministic."""
    if max_images is None or max_images >= len(samples):
        return samples
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    idx = np.unique(np.linspace(0, len(samples) - 1, max_images).round().astype(int))
    return [samples[i] for i in idx]


def csv_path(out: os.PathLike, dataset: str, subj: str) -> Path:
    return Path(out) / "raw-data" / dataset / subject_file_name(dataset, subj)


def evaluate_dataset(
    decision_maker,
    subj: str,
    dataset: str,
    folder: os.PathLike,
    out: os.PathLike,
    batch_size: int = 16,
    max_images: Optional[int] = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Classify every stimulus of ``folder`` and write the trial CSV; returns its path.

    ``decision_maker`` needs ``scores16_paths(paths) -> (N, 16)`` (:class:`CLIPDecisionMaker`).
    """
    from tqdm import tqdm

    from .protocol import CATEGORIES

    target = csv_path(out, dataset, subj)
    if resume and target.is_file():
        return target
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    samples = subsample(list_samples(folder), max_images)
    rows = []
    trial = 0
    with tqdm(total=len(samples), desc=f"{subj} / {dataset}", unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            scores = decision_maker.scores16_paths([s.path for s in batch])
            for s, row in zip(batch, scores):
                trial += 1
                rows.append([subj, s.session, trial, "NaN", CATEGORIES[int(np.argmax(row))], s.category,
                             s.condition, s.imagename])  # fmt: skip
            bar.update(len(batch))
    return write_trials(target, rows)


def run_evaluation(
    models: Sequence[str],
    datasets: Sequence[Tuple[str, os.PathLike]],
    out: os.PathLike,
    humans: Optional[os.PathLike] = None,
    head: str = "imagenet",
    templates="openai",
    batch_size: int = 16,
    max_images: Optional[int] = None,
    device: str = "cpu",
    cache_dir: Optional[os.PathLike] = None,
    resume: bool = True,
    progress: bool = True,
    figures: bool = True,
    dist=None,
    labels: Optional[Sequence[str]] = None,
) -> Optional[Dict[str, dict]]:
    """Evaluate ``models`` (``NAME[:PRETRAINED]``) on ``datasets`` ((name, folder) pairs), then write
    ``summary.json`` (humans from ``humans``, a raw-data folder, when given) and the figures.
    Returns the summary. ``dist``: a :class:`mamba_clip.distributed.Dist` splitting the pairs over
    several processes; only rank 0 writes the summary and returns it (None elsewhere, and on rank 0 of a
    SLURM array while other tasks' pairs are still missing). ``labels``: one plot label per model
    (default: a short form of the name)."""
    if labels is not None and len(labels) != len(models):
        raise ValueError(f"{len(labels)} labels for {len(models)} models")
    from .classifier import CLIPDecisionMaker

    out = Path(out)
    subjects = [safe_subject_name(spec) for spec in models]
    pairs = [(spec, subj, d, f) for spec, subj in zip(models, subjects) for d, f in datasets]

    def finished(pair) -> bool:
        return csv_path(out, pair[2], pair[1]).is_file()

    if dist is None or dist.world_size == 1:
        mine = [p for p in pairs if not (resume and finished(p))]
    else:  # --no-resume with several ranks: every pair is evaluated again, once
        mine = dist.share(pairs, done=lambda p: resume and finished(p), contiguous=True)
    loaded, dm = None, None
    for spec, subj, d, folder in mine:
        if spec != loaded:
            dm = None
            dm = CLIPDecisionMaker.from_spec(spec, cache_dir=cache_dir, head=head, templates=templates,
                                             device=device, progress=progress)  # fmt: skip
            dm.text_head()  # first, with its cost line and own bar, not inside the first image bar
            loaded = spec
        evaluate_dataset(dm, subj, d, folder, out, batch_size=batch_size, max_images=max_images,
                         resume=resume, progress=progress)  # fmt: skip
        if dist is not None:
            dist.item_done()
    del dm
    if dist is not None and dist.world_size > 1:
        dist.barrier("ood-evaluate")
        if not dist.is_main:
            return None
        missing = [f"{subj}/{d}" for _, subj, d, _ in pairs if not finished((None, subj, d))]
        if missing:
            print(f"not writing summary.json yet: {len(missing)} (model, dataset) pairs are still being "
                  f"evaluated by other tasks ({', '.join(missing[:4])}...); rerun to finish", file=sys.stderr)
            return None
    names = dict(zip(subjects, labels)) if labels is not None else None
    return write_summary(out, subjects, [d for d, _ in datasets], humans=humans, figures=figures, labels=names)


def evaluate_decision_makers(
    decision_makers: Dict[str, object],
    datasets: Sequence[Tuple[str, os.PathLike]],
    out: os.PathLike,
    humans: Optional[os.PathLike] = None,
    batch_size: int = 16,
    max_images: Optional[int] = None,
    resume: bool = True,
    progress: bool = True,
    figures: bool = True,
) -> Dict[str, dict]:
    """Like :func:`run_evaluation` for models already in memory: ``{name: CLIPDecisionMaker}``
    (e.g. freshly trained ones). Writes the CSVs, ``summary.json`` and the figures; returns the summary."""
    subjects = []
    for name, dm in decision_makers.items():
        subj = safe_subject_name(name)
        subjects.append(subj)
        for d, folder in datasets:
            evaluate_dataset(dm, subj, d, folder, out, batch_size=batch_size, max_images=max_images,
                             resume=resume, progress=progress)  # fmt: skip
    return write_summary(out, subjects, [d for d, _ in datasets], humans=humans, figures=figures)


def write_summary(
    out: os.PathLike,
    subjects: Sequence[str],
    datasets: Sequence[str],
    humans: Optional[os.PathLike] = None,
    figures: bool = True,
    labels: Optional[Dict[str, str]] = None,
) -> Dict[str, dict]:
    """Metrics of ``subjects`` from ``<out>/raw-data`` (+ human data) -> ``summary.json`` and figures
    (``labels``: subject -> plot label)."""
    from .metrics import summarize

    out = Path(out)
    raw = read_raw_data(out / "raw-data", datasets=datasets)
    human_raw = read_raw_data(humans, datasets=datasets) if humans is not None else None
    summary = summarize(raw, models=subjects, humans=human_raw, datasets=datasets)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if figures:
        from .plots import figure1, figure2

        figure1(summary, out / "figure1.png", labels=labels)
        figure2(summary, out / "figure2.png", labels=labels)
    return summary
