"""The report's two OOD figures (matplotlib, Agg backend), drawn from a :func:`summarize` result.

* Figure 1 (CLIP-Mamba report, Fig. 1; model-vs-human's benchmark bar plot and shape-bias plot):
  left, OOD accuracy per model; right, shape bias per model (overall marker, per-category dots).
  Humans are drawn as a reference (grey bar / dashed line).
* Figure 2 (report Fig. 2; model-vs-human's accuracy-vs-condition plots): one panel per parametric
  dataset, accuracy against condition, one line per model, humans in black, chance (1/16) dotted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional

from .protocol import PARAMETRIC_DATASETS, get_spec

HUMANS = "humans"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _models(summary: Dict[str, dict]):
    return [m for m in summary if m != HUMANS]


def short_label(subject: str, width: int = 24) -> str:
    """A plot label for a subject name: ``model__path_to_ckpt.pt`` becomes ``model (ckpt)``, and any
    longer name is cut in the middle to ``width`` characters."""
    model, sep, rest = subject.partition("__")
    if sep and rest:
        stem = rest.rsplit("_", 1)[-1]
        for ext in (".pt", ".pth", ".bin", ".safetensors"):
            stem = stem[: -len(ext)] if stem.endswith(ext) else stem
        subject = f"{model} ({stem})"
    if len(subject) <= width:
        return subject
    head = (width - 1) // 2
    return subject[:head] + "…" + subject[-(width - 1 - head):]


def _labeller(labels: Optional[Dict[str, str]]):
    labels = labels or {}
    return lambda m: labels.get(m) or (m if m == HUMANS else short_label(m))


def _save(fig, path: os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def figure1(summary: Dict[str, dict], path: os.PathLike, title: Optional[str] = None,
            labels: Optional[Dict[str, str]] = None) -> Path:
    """OOD accuracy (left) and shape bias (right) per model, humans as reference. ``labels`` maps
    subject names to plot labels (default: :func:`short_label`)."""
    plt = _pyplot()
    models = _models(summary)
    human = summary.get(HUMANS, {})
    lab = _labeller(labels)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(models), 1) + 2.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    # OOD accuracy
    names, values = [], []
    for m in models:
        v = summary[m].get("ood_accuracy")
        if v is not None:
            names.append(m)
            values.append(v)
    if human.get("ood_accuracy") is not None:
        names.append(HUMANS)
        values.append(human["ood_accuracy"])
    order = sorted(range(len(values)), key=lambda i: values[i])
    ax1.barh(
        [lab(names[i]) for i in order],
        [values[i] for i in order],
        color=["0.6" if names[i] == HUMANS else colors[i % len(colors)] for i in order],
    )
    if human.get("ood_accuracy") is not None:
        ax1.axvline(human["ood_accuracy"], color="k", ls="--", lw=1)
    ax1.axvline(1 / 16, color="0.5", ls=":", lw=1)
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("OOD accuracy")
    ax1.set_title("OOD accuracy (mean over datasets)", fontsize=10)

    # Shape bias
    rows = [m for m in models if summary[m].get("shape_bias") is not None]
    for y, m in enumerate(rows):
        cats = summary[m].get("shape_bias_by_category") or {}
        vals = [v for v in cats.values() if v is not None and not math.isnan(v)]
        ax2.scatter(vals, [y] * len(vals), s=12, color="0.7", zorder=2)
        color = colors[models.index(m) % len(colors)]
        ax2.scatter([summary[m]["shape_bias"]], [y], s=80, marker="D", color=color, zorder=3)
    ax2.set_yticks(range(len(rows)))
    ax2.set_yticklabels([lab(m) for m in rows])
    if human.get("shape_bias") is not None:
        ax2.axvline(
            human["shape_bias"], color="k", ls="--", lw=1, label=f"humans ({human['shape_bias']:.2f})"
        )
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_xlim(0, 1)
    ax2.set_ylim(-0.8, max(len(rows), 1) - 0.2)
    ax2.set_xlabel("shape bias  (fraction of shape decisions)")
    ax2.set_title("Shape bias, cue-conflict (dots: categories)", fontsize=10)
    if not rows:
        ax2.text(0.5, 0.5, "no cue-conflict results", ha="center", va="center", transform=ax2.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def figure2(summary: Dict[str, dict], path: os.PathLike, title: Optional[str] = None, chance: float = 1 / 16,
            labels: Optional[Dict[str, str]] = None) -> Path:
    """Accuracy against condition for each parametric dataset, one line per model, humans in black;
    a dotted line at ``chance`` (1/16 for the protocol's 16 categories). ``labels``: as in :func:`figure1`."""
    plt = _pyplot()
    lab = _labeller(labels)
    present = [d for d in PARAMETRIC_DATASETS if any(d in (summary[m].get("accuracy_by_condition") or {})
                                                     for m in summary)]  # fmt: skip
    n = max(len(present), 1)
    ncols = min(4, n)
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = _models(summary)
    for ax, d in zip(axes.flat, present):
        spec = get_spec(d)
        x = list(range(len(spec.conditions)))
        for i, m in enumerate(models + ([HUMANS] if HUMANS in summary else [])):
            acc = (summary[m].get("accuracy_by_condition") or {}).get(d)
            if not acc:
                continue
            xs = [k for k, c in enumerate(spec.conditions) if c in acc]
            ys = [acc[spec.conditions[k]] for k in xs]
            if m == HUMANS:
                style = dict(color="k", lw=2, marker="o")
            else:
                style = dict(color=colors[i % len(colors)], lw=1.2, marker="s", ms=4)
            ax.plot(xs, ys, label=lab(m), **style)
        ax.axhline(chance, color="0.5", ls=":", lw=1)
        ax.set_xticks(x)
        ax.set_xticklabels(spec.plotting_conditions, fontsize=7, rotation=45 if len(x) > 4 else 0)
        ax.set_ylim(0, 1)
        ax.set_title(d, fontsize=10)
        ax.set_xlabel(spec.xlabel, fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    if not present:
        axes.flat[0].text(0.5, 0.5, "no parametric datasets evaluated", ha="center", va="center")
    handles, labels = [], []
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = _save(fig, path)
    plt.close(fig)
    return out
