"""Adapter to mamba-ssm's fused CUDA ``selective_scan_fn`` (Gu & Dao 2023).

Only imported when the "cuda" backend is used; ``mamba_ssm`` is an optional dependency
(``pip install 'open-clip-mamba[cuda]'``). The CUDA kernel wants A, D and delta_bias in float32 and
delta, z (and B, C unless float32) in the dtype of u; this adapter casts accordingly.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["selective_scan_cuda"]


def selective_scan_cuda(
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
    """Call ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (shapes as ``selective_scan``)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if u.dtype == torch.float64:
        raise ValueError("selective_scan: backend 'cuda' accepts u of dtype float16, bfloat16 or float32, "
                         "got float64; use backend 'torch' or 'ref' for float64")
    dt = u.dtype

    def bc(M: Tensor) -> Tensor:
        return M if M.dtype in (dt, torch.float32) else M.to(dt)

    return selective_scan_fn(
        u,
        delta.to(dt),
        A.float(),
        bc(B),
        bc(C),
        None if D is None else D.float(),
        None if z is None else z.to(dt),
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
        return_last_state,
    )
