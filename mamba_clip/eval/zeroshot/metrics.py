"""Zero-shot classification metrics (numpy only).

The report's metric per dataset (CLIP-Mamba report, Table 1, following CLIP's protocol): mean per-class
accuracy, (top-1 + top-5) / 2, ROC-AUC (binary: the score of class 1 against class 0) or top-1. The
fields clip_benchmark writes (``acc1``, ``acc5``, ``mean_per_class_recall``) are computed the same way
clip_benchmark's ``metrics/zeroshot_classification.py`` does (acc5 is NaN with fewer than 5 classes).
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np

from .catalog import METRICS


def topk_accuracy(logits, targets, k: int = 1) -> float:
    """Fraction of rows whose target is among the k largest logits (ties broken by index, like torch.topk)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets).reshape(-1)
    if len(targets) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == targets[:, None], axis=1)))


def mean_per_class_accuracy(logits, targets) -> float:
    """Mean over the classes present in ``targets`` of each class's top-1 accuracy (recall); equals
    scikit-learn's ``balanced_accuracy_score`` of the argmax predictions."""
    pred = np.argmax(np.asarray(logits), axis=1)
    targets = np.asarray(targets).reshape(-1)
    classes = np.unique(targets)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[targets == c] == c) for c in classes]))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of binary ``labels`` (0/1) ranked by ``scores`` (Mann-Whitney U with
    average ranks for ties). NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over runs of ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_scores(logits) -> np.ndarray:
    """Score of class 1 for a 2-class head: logit(1) - logit(0), a monotone function of its softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"ROC-AUC needs a 2-class head, got logits of shape {logits.shape}")
    return logits[:, 1] - logits[:, 0]


def score(metric: str, logits, targets) -> float:
    """The report's metric ``metric`` (one of catalog.METRICS) on (N, C) logits and (N,) targets."""
    if metric == "top1":
        return topk_accuracy(logits, targets, 1)
    if metric == "mean_per_class":
        return mean_per_class_accuracy(logits, targets)
    if metric == "top1_top5":
        return (topk_accuracy(logits, targets, 1) + topk_accuracy(logits, targets, 5)) / 2.0
    if metric == "roc_auc":
        return roc_auc(binary_scores(logits), targets)
    raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")


def clip_benchmark_fields(logits, targets) -> Dict[str, float]:
    """``acc1``, ``acc5`` (NaN below 5 classes) and ``mean_per_class_recall`` as clip_benchmark reports them."""
    n_classes = np.asarray(logits).shape[1]
    return {
        "acc1": topk_accuracy(logits, targets, 1),
        "acc5": topk_accuracy(logits, targets, 5) if n_classes >= 5 else math.nan,
        "mean_per_class_recall": mean_per_class_accuracy(logits, targets),
    }
