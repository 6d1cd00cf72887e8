"""The selective scan as a composition of torch element-wise ops and the differentiable
:func:`~mamba_clip.ops.linear_recurrence.linear_recurrence` primitive (issue 17).

Same maths as :func:`~mamba_clip.ops.scan_ref.selective_scan_ref` (mamba-ssm ``selective_scan_fn``
semantics, Gu & Dao 2023, Alg. 2): ``a = exp(dt A)``, ``x = dt u B`` (batch, D, N, L),
``h = rec(a, x)``, ``y = sum_n C h + D u``, ``out = y silu(z)``. Every derivative of this graph (the
backward's adjoint is a reverse ``rec``, the tangent a forward one) stays on the fused recurrence
kernel, so it is what the "cpu" and "triton" backends differentiate when their hand-written
first-order backward is not enough:

* a ``create_graph=True`` backward (Hessian-vector products, ``gradgradcheck``): the backend's
  backward rebuilds this graph from the saved inputs and returns its gradients with a graph
  (:func:`graph_backward`); the plain first-order backward is unchanged;
* forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp`` / ``jacfwd`` / ``hessian``) and
  ``torch.func`` transforms (:func:`transform_active`): the backend runs this graph directly.

Memory: the graph holds (batch, D, N, L) tensors (a, x, h and their adjoints), as the "torch"
backend's twice-differentiable path does; the first-order kernels never build them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .linear_recurrence import linear_recurrence

__all__ = ["create_graph_needed", "graph_backward", "graph_backward_bt", "scan_graph", "transform_active"]


def scan_graph(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
               z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool, kernel: str
               ) -> Tuple[Tensor, Tensor]:
    """(out (batch, D, L), last state (batch, D, N)) in the compute dtype of the inputs.

    u, delta, z: (batch, D, L); A: (D, N); B, C: (batch, G, N, L) (G divides D); D, delta_bias: (D,).
    ``kernel``: the linear-recurrence kernel ("cpu", "triton" or "ref")."""
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if softplus:
        dt = F.softplus(dt)
    a = torch.exp(dt.unsqueeze(2) * A.unsqueeze(-1))  # (b, D, N, L)
    x = ((dt * u).view(batch, GB, dim // GB, 1, L) * B.unsqueeze(2)).view(batch, dim, N, L)
    h = linear_recurrence(a, x, False, kernel)
    if N == 1:
        y = h.view(batch, GC, dim // GC, L) * C.view(batch, GC, 1, L)
    else:
        y = (h.view(batch, GC, dim // GC, N, L) * C.unsqueeze(2)).sum(3)
    y = y.reshape(batch, dim, L)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h[..., L - 1] if L else h.new_zeros((batch, dim, N))


def graph_backward(inputs: Sequence[Optional[Tensor]], softplus: bool, kernel: str,
                   gy: Optional[Tensor], glast: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`scan_graph` w.r.t. ``inputs = (u, delta, A, B, C, D, z, delta_bias)`` for
    the upstream (gy, glast), with a graph (``create_graph=True``): the double-backward path of the
    fused backends. ``None`` for absent inputs; zeros for present inputs that do not require grad."""
    with torch.enable_grad():
        out, last = scan_graph(*inputs, softplus, kernel)
        pairs = [(o, g) for o, g in ((out, gy), (last, glast)) if g is not None]
        req = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
        res: list = [None] * len(inputs)
        if pairs and req:
            outs, grads = zip(*pairs)
            got = torch.autograd.grad(outs, [inputs[i] for i in req], grads, create_graph=True,
                                      allow_unused=True)
            for i, r in zip(req, got):
                res[i] = r
    return tuple(None if t is None else (torch.zeros_like(t) if r is None else r)
                 for r, t in zip(res, inputs))


def transform_active(tensors: Sequence[Optional[Tensor]]) -> bool:
    """True when a fused backend must run :func:`scan_graph` instead of its custom op: an input is
    a forward-mode dual tensor (``torch.autograd.forward_ad``) or is wrapped by a ``torch.func``
    transform (jvp, jacfwd, hessian, vmap, grad). Always False while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return False
    ts = [t for t in tensors if t is not None]
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts):
        return True
    from torch.autograd import forward_ad

    if getattr(forward_ad, "_current_level", -1) >= 0:
        return any(forward_ad.unpack_dual(t).tangent is not None for t in ts)
    return False


def graph_backward_bt(inputs: Sequence[Optional[Tensor]], softplus: bool, kernel: str, gy: Optional[Tensor],
                      glast: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """:func:`graph_backward` for inputs whose B and C are in the "cpu" kernel layout (batch, G, L, N);
    their gradients come back in that layout."""
    u, delta, A, Bt, Ct, D, z, delta_bias = inputs
    grads = graph_backward((u, delta, A, Bt.transpose(-1, -2), Ct.transpose(-1, -2), D, z, delta_bias),
                           softplus, kernel, gy, glast)
    du, ddelta, dA, dB, dC, dD, dz, ddb = grads
    return du, ddelta, dA, dB.transpose(-1, -2), dC.transpose(-1, -2), dD, dz, ddb


def create_graph_needed(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Inside a backward: whether it must be differentiable (``create_graph=True`` and something
    saved or incoming requires grad), i.e. the first-order kernel would not be exact."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
