"""The Figure-3-style plot of Hessian max-eigenvalue spectra (Park & Kim 2022, Fig. 3 / 4).

Two panels sharing the y axis: negative eigenvalues on the left (x = |lambda| on a log scale,
increasing to the left, labelled as negative numbers), positive ones on the right (log scale). Each
model is one row and each eigenvalue one dot (a strip plot, jittered vertically only), so every value
is visible, however close; the count on each side is written at the row's end, and the legend gives
each model's count of negative values (non-convexity) and its largest magnitude (sharpness).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from mamba_clip.fileio import atomic_output

from .spectrum import HessianSpectrum, load_runs


def plot_spectra(runs: Sequence[Union[str, os.PathLike, HessianSpectrum, dict]], out: Union[str, os.PathLike],
                 labels: Optional[Sequence[str]] = None, title: Optional[str] = None, bins: int = 40) -> Path:
    """Draw the spectra of ``runs`` (run folders, ``eigenvalues.json`` files or
    :class:`HessianSpectrum` objects) into ``out`` (PNG, PDF, SVG by extension; written atomically).
    ``bins`` only sets the x range's margin now (kept for callers). Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    specs = load_runs(runs)
    if not specs:
        raise ValueError("plot_spectra: no runs given")
    if labels is not None and len(labels) != len(specs):
        raise ValueError(f"plot_spectra: {len(labels)} labels for {len(specs)} runs")
    names = list(labels) if labels is not None else [s.label for s in specs]
    mags = np.concatenate([np.abs(s.values[s.values != 0]) for s in specs] + [np.zeros(0)])
    if mags.size == 0:
        raise ValueError("plot_spectra: the runs hold no non-zero eigenvalues")
    lo, hi = np.log10(mags.min()), np.log10(mags.max())
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.logspace(lo - 0.15, hi + 0.15, bins + 1)  # x range with room for the end dots

    n_models = len(specs)
    height = 1.6 + 0.7 * n_models  # inches: 0.95 below the rows for ticks and axis labels, 0.5 above
    fig, (axn, axp) = plt.subplots(1, 2, figsize=(9, height), sharey=True, gridspec_kw={"wspace": 0.04})
    fig.subplots_adjust(bottom=0.95 / height, top=1 - 0.5 / height)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)  # vertical jitter only: the x position is the value
    for i, (s, name) in enumerate(zip(specs, names)):
        v = s.values
        c = colors[i % len(colors)]
        y = n_models - 1 - i  # first run on top
        for ax, part in ((axn, -v[v < 0]), (axp, v[v > 0])):
            ax.scatter(part, y + rng.uniform(-0.28, 0.28, part.size), s=16, color=c, alpha=0.65,
                       edgecolors="none", zorder=3)
            ax.text(0.02 if ax is axp else 0.98, y + 0.32, f"{part.size}", transform=ax.get_yaxis_transform(),
                    ha="left" if ax is axp else "right", va="bottom", fontsize=7, color=c)
        peak = v[np.argmax(np.abs(v))] if v.size else float("nan")
        axp.scatter([], [], color=c, s=16, label=f"{name}: {s.n_negative}/{v.size} negative, max |λ| {abs(peak):.3g}")
    for ax in (axn, axp):
        ax.set_xscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.set_ylim(-0.6, n_models - 0.4)
    axn.set_yticks(range(n_models))
    axn.set_yticklabels(names[::-1], fontsize=8)
    axn.invert_xaxis()
    axn.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"$-10^{{{np.log10(x):.0f}}}$"))
    axn.set_xlabel("negative eigenvalues (a dot each; count at the row's end)", fontsize=9)
    axp.set_xlabel("positive eigenvalues", fontsize=9)
    handles, texts = axp.get_legend_handles_labels()
    fig.legend(handles, texts, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(2, len(texts)), frameon=False)  # below the panels: never over the data
    k = specs[0].settings.get("k", "?")
    fig.suptitle(title or f"Hessian max-eigenvalue spectra (top-{k} per batch)", fontsize=10)

    out = Path(out)
    try:
        with atomic_output(out, suffix=out.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out
