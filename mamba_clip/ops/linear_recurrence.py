"""The linear recurrence ``h_t = a_t h_{t-1} + x_t`` as a differentiable primitive, closed under its
own derivatives (issue 17): the building block of the scan's twice-differentiable, forward-mode and
vmap-able path (:mod:`mamba_clip.ops.scan_graph`).

Along the last axis of ``a`` and ``x`` (all leading axes are independent rows), with ``a_t`` the
coefficient of the link between steps t-1 and t:

* forward: ``h_t = a_t h_{t-1} + x_t`` from ``h_{-1} = 0`` (``a_0`` is never used);
* reverse: ``h_t = a_{t+1} h_{t+1} + x_t`` from ``h_L = 0``.

The adjoint of a recurrence is the recurrence in the other direction with the same links (the
reverse-mode rule of Blelloch-style scans; e.g. Martin & Cundy 2018, "Parallelizing linear recurrent
neural nets over sequence length"): for an upstream gradient ``g``, ``lam = rec(a, g, other
direction)``, ``dx = lam`` and ``da_t = lam_t h_{t-1}`` (forward) / ``lam_{t-1} h_t`` (reverse). The
tangent is the same recurrence with a new input: ``dh = rec(a, dx + da * shifted h)``. Both are
written with this same Function, so second and higher derivatives (double backward, forward-over-
reverse, ``torch.func.hessian``) never leave the kernels. A ``vmap`` rule folds the vmapped axis into
the rows.

Kernels (``kernel`` argument): ``"cpu"`` (``ss_linrec`` in ``csrc/selective_scan_cpu.c``, float32),
``"triton"`` (``linrec_kernel``, float32; CUDA tensors or ``TRITON_INTERPRET=1``) and ``"ref"`` (a
sequential torch loop, any dtype: the oracle).
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["KERNELS", "linear_recurrence", "linear_recurrence_ref"]

KERNELS: Tuple[str, ...] = ("cpu", "triton", "ref")


def linear_recurrence_ref(a: Tensor, x: Tensor, reverse: bool = False) -> Tensor:
    """Sequential oracle (plain torch, any dtype, differentiable by autograd). a, x: (..., L)."""
    L = x.shape[-1]
    hs = [None] * L
    h = torch.zeros_like(x[..., 0])
    steps = range(L - 1, -1, -1) if reverse else range(L)
    prev = None
    for t in steps:
        h = x[..., t] if prev is None else a[..., prev if reverse else t] * h + x[..., t]
        hs[t] = h
        prev = t
    return torch.stack(hs, -1) if L else x.clone()


# kernel name -> run(a, x, reverse) -> h; the "cpu" and "triton" backend modules register theirs on
# import (so this module imports neither of them: no import circle with their graph backwards)
_RUNNERS: Dict[str, Callable[[Tensor, Tensor, bool], Tensor]] = {}
_HOMES = {"cpu": "mamba_clip.ops.scan_cpu", "triton": "mamba_clip.ops.scan_triton"}


def register_kernel(name: str, run: Callable[[Tensor, Tensor, bool], Tensor]) -> None:
    """Make ``run(a, x, reverse) -> h`` (float32, no autograd) the kernel called ``name``."""
    _RUNNERS[name] = run


def _run(kernel: str, a: Tensor, x: Tensor, reverse: bool) -> Tensor:
    if kernel == "ref":
        with torch.no_grad():
            return linear_recurrence_ref(a, x, reverse)
    if kernel not in _RUNNERS:
        importlib.import_module(_HOMES[kernel])  # registers the kernel
    return _RUNNERS[kernel](a, x, reverse)


class _Shifted(torch.autograd.Function):
    """Products of neighbours along the last axis, without padding copies, closed under derivatives:
    ``"sp"``: ``out_t = p_t q_{t-1}`` (t >= 1), ``out_0 = 0``; ``"lsp"``: ``out_t = p_{t+1} q_{t+1}``
    (t <= L-2), ``out_{L-1} = 0``. Their gradients are again "sp" / "lsp" products."""

    @staticmethod
    def forward(p: Tensor, q: Tensor, kind: str) -> Tensor:
        out = torch.empty(torch.broadcast_shapes(p.shape, q.shape), dtype=torch.result_type(p, q),
                          device=p.device)
        if out.shape[-1] == 0:
            return out
        if kind == "sp":
            out[..., 0] = 0
            torch.mul(p[..., 1:], q[..., :-1], out=out[..., 1:])
        else:
            out[..., -1] = 0
            torch.mul(p[..., 1:], q[..., 1:], out=out[..., :-1])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        p, q, kind = inputs
        ctx.kind = kind
        ctx.save_for_backward(p, q)
        ctx.save_for_forward(p, q)

    @staticmethod
    def backward(ctx, g: Tensor):
        p, q = ctx.saved_tensors
        if ctx.kind == "sp":
            gp = _shifted(g, q, "sp") if ctx.needs_input_grad[0] else None
            gq = _shifted(g, p, "lsp") if ctx.needs_input_grad[1] else None
        else:
            gp = _shifted(q, g, "sp") if ctx.needs_input_grad[0] else None
            gq = _shifted(p, g, "sp") if ctx.needs_input_grad[1] else None
        return _sum_to(gp, p), _sum_to(gq, q), None

    @staticmethod
    def jvp(ctx, tp: Optional[Tensor], tq: Optional[Tensor], _kind) -> Tensor:
        p, q = ctx.saved_tensors
        out = None
        if tp is not None:
            out = _shifted(tp, q, ctx.kind)
        if tq is not None:
            t = _shifted(p, tq, ctx.kind)
            out = t if out is None else out + t
        return out if out is not None else p.new_zeros(torch.broadcast_shapes(p.shape, q.shape))

    @staticmethod
    def vmap(info, in_dims, p, q, kind):
        p = p.movedim(in_dims[0], 0) if in_dims[0] is not None else p.unsqueeze(0)
        q = q.movedim(in_dims[1], 0) if in_dims[1] is not None else q.unsqueeze(0)
        shape = (info.batch_size,) + tuple(torch.broadcast_shapes(p.shape, q.shape)[1:])
        return _Shifted.apply(p.expand(shape), q.expand(shape), kind), 0


def _sum_to(g: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    return g if g is None or g.shape == like.shape else g.sum_to_size(like.shape)


def _shifted(p: Tensor, q: Tensor, kind: str) -> Tensor:
    return _Shifted.apply(p, q, kind)


def _prev_times(s: Tensor, h: Tensor, reverse: bool) -> Tensor:
    """``s_t h_{t-1}`` (forward) or ``s_{t-1} h_t`` (reverse) at t >= 1, 0 at t = 0: the gradient of
    the links for ``s`` = the adjoint."""
    return _shifted(h, s, "sp") if reverse else _shifted(s, h, "sp")


class _LinearRecurrence(torch.autograd.Function):
    """``rec(a, x)`` whose backward and jvp are ``rec`` again (see the module docstring)."""

    @staticmethod
    def forward(a: Tensor, x: Tensor, reverse: bool, kernel: str) -> Tensor:
        return _run(kernel, a, x, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, x, reverse, kernel = inputs
        ctx.reverse, ctx.kernel = reverse, kernel
        ctx.save_for_backward(a, output)
        ctx.save_for_forward(a, output)

    @staticmethod
    def backward(ctx, gh: Tensor):
        a, h = ctx.saved_tensors
        lam = linear_recurrence(a, gh, not ctx.reverse, ctx.kernel)
        da = _prev_times(lam, h, ctx.reverse) if ctx.needs_input_grad[0] else None
        return da, lam, None, None

    @staticmethod
    def jvp(ctx, ta: Optional[Tensor], tx: Optional[Tensor], _reverse, _kernel) -> Tensor:
        a, h = ctx.saved_tensors
        rhs = tx
        if ta is not None:
            # forward: ta_t h_{t-1}; reverse: ta_{t+1} h_{t+1}
            th = _shifted(ta, h, "lsp" if ctx.reverse else "sp")
            rhs = th if rhs is None else rhs + th
        if rhs is None:
            return torch.zeros_like(h)
        return linear_recurrence(a, rhs, ctx.reverse, ctx.kernel)

    @staticmethod
    def vmap(info, in_dims, a, x, reverse, kernel):
        da, dx = in_dims[0], in_dims[1]
        a = a.movedim(da, 0) if da is not None else a.unsqueeze(0)
        x = x.movedim(dx, 0) if dx is not None else x.unsqueeze(0)
        shape = torch.broadcast_shapes(a.shape, x.shape)
        shape = (info.batch_size,) + tuple(shape[1:])
        return _LinearRecurrence.apply(a.expand(shape), x.expand(shape), reverse, kernel), 0


def linear_recurrence(a: Tensor, x: Tensor, reverse: bool = False, kernel: str = "ref") -> Tensor:
    """``h`` of the recurrence along the last axis (see the module docstring), differentiable to any
    order in reverse and forward mode, vmap-able.

    Args:
        a, x: (..., L), same shape. reverse: run from the end. kernel: one of ``KERNELS``.
    Returns:
        h (..., L), dtype of ``x`` (float32 for the "cpu" / "triton" kernels).
    """
    if kernel not in KERNELS:
        raise ValueError(f"linear_recurrence: unknown kernel {kernel!r}; accepted: {list(KERNELS)}")
    if a.shape != x.shape:
        shape = torch.broadcast_shapes(a.shape, x.shape)
        a, x = a.expand(shape), x.expand(shape)
    return _LinearRecurrence.apply(a, x, bool(reverse), kernel)
