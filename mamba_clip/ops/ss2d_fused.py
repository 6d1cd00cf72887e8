"""Fused SS2D scan-and-merge for inference on CPU, d_state N == 1 (VMamba, Liu et al. 2024, "VMamba:
Visual State Space Model", Sec. 3 "2D-Selective-Scan"; the scan is Mamba's, Gu & Dao 2023, Alg. 2).

SS2D's scan step is, with u the activated map ``(B, H, W, D)`` and ``x_dbl = x_proj(u)``::

    xs = cross_scan(u)                                   # (B, 4, D, L), four scan orders
    delta = dt_projs_weight @ dts                        # (B, 4, D, L)
    ys = selective_scan(xs, delta, A, Bs, Cs, Ds, dt_projs_bias, softplus)
    y = cross_merge(ys)                                  # (B, H, W, D)

:func:`ss2d_scan_merge_cpu` computes the same ``y`` in one C kernel (``ss2d_fwd_n1`` in
``csrc/selective_scan_cpu.c``) that walks the four scan orders over the channels-last map itself,
projects dt inside the scan and accumulates the merge in place: none of the 4x-sized tensors
(``xs``, ``delta``, ``ys``) exist. :func:`ss2d_scan_merge_ref` is the composition above with the
"ref" scan (the oracle). :func:`fused_applicable` is the rule SS2D uses to pick the fused path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cross_scan import cross_merge, cross_scan, cross_scan_grouped
from .selective_scan import _cpu_available, _forced_backend, in_double_backward

__all__ = ["fused_applicable", "ss2d_scan_merge_cpu", "ss2d_scan_merge_ref"]


def _check(u: Tensor, x_dbl: Tensor, dtw: Tensor, dtb: Tensor, A: Tensor, Ds: Tensor) -> None:
    if u.dim() != 4:
        raise ValueError(f"ss2d_scan_merge: u must be (B, H, W, D), got shape {tuple(u.shape)}")
    b, h, w, d = u.shape
    if dtw.dim() != 3 or dtw.shape[:2] != (4, d):
        raise ValueError(f"ss2d_scan_merge: dt_projs_weight must be (4, D={d}, R), got {tuple(dtw.shape)}")
    r = dtw.shape[2]
    if tuple(x_dbl.shape) != (b, h, w, 4, r + 2):
        raise ValueError(f"ss2d_scan_merge: x_dbl must be (B, H, W, 4, R + 2) = {(b, h, w, 4, r + 2)} "
                         f"(d_state 1), got {tuple(x_dbl.shape)}")
    for name, t in (("dt_projs_bias", dtb), ("A", A), ("Ds", Ds)):
        if t.numel() != 4 * d:
            raise ValueError(f"ss2d_scan_merge: {name} must have 4 * D = {4 * d} elements (A: (4D, 1)), "
                             f"got shape {tuple(t.shape)}")


def _f32(t: Tensor, shape) -> Tensor:
    return t.detach().to(torch.float32).contiguous().view(shape)


def ss2d_scan_merge_cpu(u: Tensor, x_dbl: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor,
                        Ds: Tensor, portable: bool = False) -> Tensor:
    """Fused cross-scan + dt projection + selective scan (softplus dt, N == 1) + cross-merge.

    Args:
        u: (B, H, W, D) channels-last scan input.
        x_dbl: (B, H, W, 4, R + 2): per grid position and direction ``[dt_0 .. dt_{R-1}, B, C]``, i.e.
            SS2D's x_proj applied to the un-scanned map.
        dt_projs_weight: (4, D, R). dt_projs_bias: (4, D) or (4D,). A: (4D, 1) (= -exp(A_logs)).
        Ds: (4D,).
        portable: use the kernel's portable (non-AVX2) path (for tests).
    Returns:
        (B, H, W, D) float32 contiguous, equal to :func:`ss2d_scan_merge_ref`. No autograd.
    """
    _check(u, x_dbl, dt_projs_weight, dt_projs_bias, A, Ds)
    from .scan_cpu import ss2d_fwd_cpu

    d, r = u.shape[3], dt_projs_weight.shape[2]
    return ss2d_fwd_cpu(_f32(u, u.shape), _f32(x_dbl, x_dbl.shape), _f32(dt_projs_weight, (4, d, r)),
                        _f32(dt_projs_bias, (4, d)), _f32(A, (4, d)), _f32(Ds, (4, d)), bool(portable))


def ss2d_scan_merge_ref(u: Tensor, x_dbl: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor,
                        Ds: Tensor, backend: str = "ref") -> Tensor:
    """The unfused composition (same contract as :func:`ss2d_scan_merge_cpu`, any N via x_dbl's last
    dim R + 2N): cross_scan -> dt_proj matmul -> selective_scan(backend) -> cross_merge."""
    from .selective_scan import selective_scan

    b, h, w, d = u.shape
    r = dt_projs_weight.shape[2]
    n = (x_dbl.shape[-1] - r) // 2
    dts, bs, cs = torch.split(cross_scan_grouped(x_dbl), [r, n, n], dim=2)  # (B, 4, ., L)
    xs = cross_scan(u, channels_last=True)  # (B, 4, D, L)
    delta = torch.matmul(dt_projs_weight, dts)  # (B, 4, D, L)
    ys = selective_scan(xs.reshape(b, 4 * d, h * w), delta.reshape(b, 4 * d, h * w), A.reshape(4 * d, n),
                        bs.contiguous(), cs.contiguous(), Ds.reshape(4 * d),
                        delta_bias=dt_projs_bias.reshape(4 * d), delta_softplus=True, backend=backend)
    return cross_merge(ys.view(b, 4, d, h * w), h, w, channels_last=True)


def fused_applicable(u: Tensor, d_state: int) -> bool:
    """Whether SS2D may use :func:`ss2d_scan_merge_cpu` for scan input ``u``: no autograd, CPU float32,
    d_state 1, the selective-scan backend would resolve to "cpu" (``scan_backend("torch"/"ref")`` and
    ``double_backward()`` keep the unfused path) and the C kernel is available."""
    return (
        not torch.is_grad_enabled()
        and d_state == 1
        and u.device.type == "cpu"
        and u.dtype == torch.float32
        and _forced_backend() in ("auto", "cpu")
        and not in_double_backward()
        and _cpu_available()
    )
