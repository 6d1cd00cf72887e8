"""Sequential reference selective scan: the oracle every other backend is tested against.

Follows mamba-ssm's ``selective_scan_ref`` (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023, Algorithm 2): discretise with ``exp(delta * A)`` and ``delta * B * u``,
then run ``h_l = exp(delta_l A) h_{l-1} + delta_l B_l u_l``, ``y_l = C_l . h_l`` one step at a time.
Real A only. Compute in float32 (float64 when any input is float64), return ``u.dtype``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref", "compute_dtype"]


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (mamba-ssm computes in float32)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _expand_groups(M: Tensor, dim: int) -> Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, D, N, L) by repeating each group D // G times."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    G = M.shape[1]
    return M.repeat_interleave(dim // G, dim=1) if G != dim else M


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Plain sequential selective scan (no argument checks; use :func:`selective_scan` for those).

    Shapes: u, delta, z (batch, D, L); A (D, N); B, C (batch, N, L) or (batch, G, N, L);
    D, delta_bias (D,). Returns y (batch, D, L) in ``u.dtype`` and, if ``return_last_state``,
    the final state (batch, D, N) in the compute dtype.
    """
    dtype_in = u.dtype
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    A = A.to(ct)
    Bx = _expand_groups(B.to(ct), dim)  # (batch, D, N, L)
    Cx = _expand_groups(C.to(ct), dim)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bx, u)
    x = u.new_zeros((batch, dim, A.shape[1]))
    ys = []
    # unbind (not indexing in the loop): its backward is one stack, not L full-size scatters.
    for a_i, bu_i, c_i in zip(deltaA.unbind(2), deltaB_u.unbind(2), Cx.unbind(3)):
        x = a_i * x + bu_i
        ys.append(torch.einsum("bdn,bdn->bd", x, c_i))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros((batch, dim, 0))
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out
