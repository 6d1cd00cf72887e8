"""Selective-scan kernels and the Mamba block.

``selective_scan`` has mamba-ssm ``selective_scan_fn`` semantics with backends "cuda" (mamba-ssm),
"cpu" (our fused C kernel), "triton" (our Triton kernels, CUDA), "torch" (vectorised) and "ref"
(sequential oracle); all but mamba-ssm's "cuda" are differentiable to any order, in reverse and forward
mode (:mod:`.linear_recurrence`, :mod:`.scan_graph`);
``"auto"`` picks one. Importing this package never imports mamba-ssm.

    from mamba_clip.ops import selective_scan, Mamba, double_backward
    y = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=db, delta_softplus=True)
    with double_backward():          # only to avoid mamba-ssm's first-order "cuda" kernel
        loss = model(x).sum()
"""

from .mamba import Mamba, mamba_fast_path_available
from .scan_ref import selective_scan_ref
from .scan_torch import selective_scan_torch
from .selective_scan import (
    BACKENDS,
    available_backends,
    check_inputs,
    double_backward,
    resolve_backend,
    scan_backend,
    selective_scan,
)

__all__ = [
    "BACKENDS",
    "Mamba",
    "available_backends",
    "check_inputs",
    "double_backward",
    "mamba_fast_path_available",
    "resolve_backend",
    "scan_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
]
