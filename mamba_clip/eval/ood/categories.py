"""The 16-class ImageNet mapping of model-vs-human (no torch).

Each entry-level category is scored from a 1000-way ImageNet softmax by the *mean* probability over
its ImageNet indices (model-vs-human's ``ImageNetProbabilitiesTo16ClassesMapping`` with the index
lists of ``helper/human_categories.py``; Geirhos et al. 2018/2021). 207 of the 1000 indices belong to
one of the 16 categories; the others are ignored.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .protocol import CATEGORIES

_DOG = (
    list(range(152, 192)) + list(range(193, 204)) + list(range(205, 227)) + list(range(228, 242))
    + list(range(243, 251)) + list(range(252, 258)) + [259] + list(range(261, 264))
    + list(range(265, 269))
)  # fmt: skip

IMAGENET_INDICES: Dict[str, List[int]] = {
    "airplane": [404],
    "bear": [294, 295, 296, 297],
    "bicycle": [444, 671],
    "bird": [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90,
             91, 92, 93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137,
             138, 139, 140, 141, 142, 143, 144, 145],
    "boat": [472, 554, 625, 814, 914],
    "bottle": [440, 720, 737, 898, 899, 901, 907],
    "car": [436, 511, 817],
    "cat": [281, 282, 283, 284, 285, 286],
    "chair": [423, 559, 765, 857],
    "clock": [409, 530, 892],
    "dog": _DOG,
    "elephant": [385, 386],
    "keyboard": [508, 878],
    "knife": [499],
    "oven": [766],
    "truck": [555, 569, 656, 675, 717, 734, 864, 867],
}  # fmt: skip

assert tuple(sorted(IMAGENET_INDICES)) == CATEGORIES


def aggregation_matrix(categories: Sequence[str] = CATEGORIES) -> np.ndarray:
    """(1000, 16) matrix ``M`` with ``probs16 = probs1000 @ M``: column ``k`` averages the ImageNet
    probabilities of category ``k``."""
    m = np.zeros((1000, len(categories)), dtype=np.float64)
    for k, c in enumerate(categories):
        idx = IMAGENET_INDICES[c]
        m[idx, k] = 1.0 / len(idx)
    return m


def probabilities_to_16(probs: np.ndarray) -> np.ndarray:
    """(N, 1000) ImageNet probabilities -> (N, 16) category scores (mean over each category's indices)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ValueError(f"probs must have shape (N, 1000), got {probs.shape}")
    return probs @ aggregation_matrix()


def decisions(scores16: np.ndarray) -> List[str]:
    """(N, 16) category scores -> the top-1 category name per row."""
    scores16 = np.asarray(scores16)
    if scores16.ndim != 2 or scores16.shape[1] != len(CATEGORIES):
        raise ValueError(f"scores16 must have shape (N, 16), got {scores16.shape}")
    return [CATEGORIES[i] for i in np.argmax(scores16, axis=1)]
