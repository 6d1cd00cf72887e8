"""Guards for the first-order-only scan backend ("cuda", mamba-ssm).

mamba-ssm's kernel has a hand-written first-order backward. Differentiating it again
(``torch.autograd.grad(..., create_graph=True)`` followed by a second ``grad``: Hessian-vector
products, PyHessian, gradient penalties) would drop the second-order terms silently (its op is a
plain ``autograd.Function`` whose backward calls the extension); the backend calls
:func:`check_first_order` instead, which raises :class:`FirstOrderOnlyError` naming
:func:`mamba_clip.ops.double_backward`. (Our "cpu" and "triton" kernels are exact under
``create_graph`` since issue 17: :mod:`mamba_clip.ops.scan_graph`.)

A backward runs with grad mode enabled exactly when the caller asked for ``create_graph=True``; that
is what the check looks at.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

__all__ = ["FirstOrderOnlyError", "FirstOrderGuard", "check_first_order", "first_order_message"]


class FirstOrderOnlyError(RuntimeError):
    """A first-order-only scan backend was asked for a twice-differentiable backward."""


def first_order_message(backend: str) -> str:
    return (
        f"selective_scan: backend {backend!r} has a first-order backward only, but a create_graph=True "
        "backward (double backward: Hessian-vector products, PyHessian, gradient penalties) went "
        "through it, so second derivatives would be wrong. Build the graph inside "
        "`with mamba_clip.ops.double_backward(): ...` (backend 'auto' then resolves to the twice-"
        "differentiable 'torch' backend), or pass backend='torch'."
    )


def check_first_order(backend: str, tensors: Optional[Iterable[Optional[Tensor]]] = None) -> None:
    """Raise :class:`FirstOrderOnlyError` when called from a ``create_graph=True`` backward.

    ``tensors``: when given, raise only if one of them requires grad (otherwise the first-order
    result is also the exact one: nothing downstream can be differentiated again).
    """
    if not torch.is_grad_enabled():
        return
    if tensors is not None and not any(t is not None and t.requires_grad for t in tensors):
        return
    raise FirstOrderOnlyError(first_order_message(backend))


class FirstOrderGuard(torch.autograd.Function):
    """Identity on a backend's output whose backward raises under ``create_graph=True``.

    Wrap the output of a kernel whose own backward is not twice differentiable and does not say so
    (mamba-ssm's ``selective_scan_fn``): ``y = FirstOrderGuard.apply(y, "cuda")``. Its backward runs
    before the kernel's (it sits downstream of it) and passes the gradient through unchanged.
    """

    @staticmethod
    def forward(ctx, y: Tensor, backend: str) -> Tensor:
        ctx.backend = backend
        return y.view_as(y)

    @staticmethod
    def backward(ctx, gy: Tensor):
        check_first_order(ctx.backend)
        return gy, None
