"""Accuracy under the model-vs-human parametric manipulations on any labelled image set.

The protocol's datasets are fixed 16-category stimuli; this applies the same manipulations
(:func:`~mamba_clip.eval.ood.manipulations.manipulate`, Geirhos et al. 2018 / 2021: contrast, high-pass,
low-pass, uniform noise, phase scrambling, rotation, eidolons, ...) at every condition to a user's own
labelled images, and scores any classifier on them: accuracy against condition per model, the
report's Figure 2 style (:func:`mamba_clip.eval.ood.plots.figure2` draws it).

Images are manipulated at ``work_size`` pixels (default 224, the size the protocol's parameters such
as filter widths in pixels are defined for) and handed to the classifier as PIL images. Noise and
phase scrambling draw from one seeded generator per (dataset, condition), so a rerun is identical.
"""

from __future__ import annotations

import zlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .manipulations import Resources, manipulate
from .protocol import PARAMETRIC_DATASETS, get_spec

# A classifier: a list of RGB PIL images -> predicted class indices (any int sequence).
Classifier = Callable[[List["object"]], Sequence[int]]


def manipulated_images(images: Sequence, dataset: str, condition: str, seed: int = 0, work_size: int = 224,
                       resources: Optional[Resources] = None) -> List:
    """``images`` (PIL images or arrays) manipulated by ``dataset`` at ``condition``, as RGB PIL images
    of ``work_size`` pixels."""
    from PIL import Image

    key = zlib.crc32(f"{dataset}/{condition}".encode())
    rng = np.random.default_rng([int(seed), key])
    out = []
    for img in images:
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        arr = np.asarray(img.convert("RGB").resize((work_size, work_size), Image.BICUBIC))
        res = manipulate(dataset, condition, arr, rng=rng, resources=resources)
        out.append(Image.fromarray(np.clip(np.round(res * 255.0), 0, 255).astype(np.uint8)))
    return out


def accuracy_under_manipulations(
    classifiers: Dict[str, Classifier],
    images: Sequence,
    labels: Sequence[int],
    datasets: Sequence[str] = ("contrast", "high-pass", "low-pass", "uniform-noise", "phase-scrambling", "rotation"),
    conditions: Optional[Dict[str, Sequence[str]]] = None,
    seed: int = 0,
    work_size: int = 224,
    resources: Optional[Resources] = None,
    progress: bool = True,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Top-1 accuracy of every classifier at every condition of every dataset.

    Args:
        classifiers: name -> function mapping a list of PIL images to predicted class indices.
        images, labels: the labelled images (same length, at least one).
        datasets: parametric model-vs-human datasets; every condition of each unless ``conditions``
            names a subset (any spelling the protocol accepts).
    Returns:
        ``{model: {dataset: {canonical condition: accuracy}}}``; the manipulated images are made once
        per condition and shared by all classifiers.
    """
    if len(images) == 0:
        raise ValueError("accuracy_under_manipulations: no images given")
    if len(images) != len(labels):
        raise ValueError(f"accuracy_under_manipulations: {len(images)} images but {len(labels)} labels")
    for d in datasets:
        if d not in PARAMETRIC_DATASETS:
            raise ValueError(f"unknown parametric dataset {d!r}; accepted: {list(PARAMETRIC_DATASETS)}")
    if resources is None and any(d in ("power-equalisation", "false-colour") for d in datasets):
        resources = Resources()
    y = np.asarray(labels, dtype=np.int64)
    jobs = []
    for d in datasets:
        spec = get_spec(d)
        conds = conditions.get(d) if conditions and d in conditions else spec.conditions
        jobs += [(d, spec.canonical_condition(c)) for c in conds]
    from tqdm import tqdm

    result: Dict[str, Dict[str, Dict[str, float]]] = {m: {} for m in classifiers}
    for d, c in tqdm(jobs, desc="manipulations", disable=not progress, leave=False):
        batch = manipulated_images(images, d, c, seed=seed, work_size=work_size, resources=resources)
        for name, classify in classifiers.items():
            pred = np.asarray(list(classify(batch)), dtype=np.int64)
            if pred.shape != y.shape:
                raise ValueError(f"classifier {name!r} returned {pred.shape[0]} predictions for {len(y)} images")
            result[name].setdefault(d, {})[c] = float((pred == y).mean())
    return result
