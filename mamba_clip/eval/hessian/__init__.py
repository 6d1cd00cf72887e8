"""Hessian max-eigenvalue spectra of the training loss (the report's Figure 3, after Park & Kim 2022).

    from mamba_clip.eval.hessian import hessian_top_eigenvalues, hessian_spectrum, plot_spectra, CLIPLoss
    ev = hessian_top_eigenvalues(model, CLIPLoss.for_model(model), (images, tokens), k=5, params="image")
    spec = hessian_spectrum(model, "digits/val", loss="zeroshot", out_dir="runs/vmamba-nano")
    plot_spectra(["runs/vmamba-nano", "runs/vit-nano"], "figure3.png")

Modules: :mod:`.eigen` (top eigenvalues of one batch: PyHessian power iteration through
:mod:`.pyhessian_adapter`, or our Lanczos on :mod:`.hvp` products), :mod:`.hvp` (the
second-order context (default scan backend, math attention, float32) and our Hessian-vector products),
:mod:`.losses` (CLIP and zero-shot losses), :mod:`.params` (parameter sets), :mod:`.data` (what
``data`` may be), :mod:`.spectrum` (batches, run folders, resume), :mod:`.plot` (the figure),
:mod:`.cli` (``mamba-clip hessian``).
"""

import importlib

# name -> submodule; imported on first use so that ``mamba-clip --help`` does not import torch
_EXPORTS = {
    "EigenResult": "eigen", "METHODS": "eigen", "hessian_top_eigen": "eigen",
    "hessian_top_eigenvalues": "eigen", "lanczos_top_eigenvalues": "eigen",
    "HVP": "hvp", "second_order_mode": "hvp",
    "LOSSES": "losses", "CLIPLoss": "losses", "ZeroShotLoss": "losses", "class_prototypes": "losses",
    "PARAM_SETS": "params", "select_parameters": "params",
    "plot_spectra": "plot",
    "HessianSpectrum": "spectrum", "hessian_spectrum": "spectrum", "load_runs": "spectrum",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "EigenResult",
    "HVP",
    "HessianSpectrum",
    "LOSSES",
    "METHODS",
    "PARAM_SETS",
    "CLIPLoss",
    "ZeroShotLoss",
    "class_prototypes",
    "hessian_spectrum",
    "hessian_top_eigen",
    "hessian_top_eigenvalues",
    "lanczos_top_eigenvalues",
    "load_runs",
    "plot_spectra",
    "second_order_mode",
    "select_parameters",
]
