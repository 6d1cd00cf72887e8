"""Adapter to mamba-ssm's fused CUDA ``selective_scan_fn`` (Gu & Dao 2023).

Only imported when the "cuda" backend is used; ``mamba_ssm`` is an optional dependency
(``pip install 'open-clip-mamba[cuda]'``). The CUDA kernel wants A, D and delta_bias in float32 and
delta, z (and B, C unless float32) in the dtype of u; this adapter casts accordingly.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .first_order import FirstOrderGuard

__all__ = ["guard_first_order", "selective_scan_cuda"]


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

    res = selective_scan_fn(
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
    return guard_first_order(res)


def guard_first_order(res: Union[Tensor, Tuple[Tensor, ...]]) -> Union[Tensor, Tuple[Tensor, ...]]:
    """mamba-ssm's backward is not marked once-differentiable: under ``create_graph=True`` it would
    drop the second-order terms silently. Route the outputs through :class:`FirstOrderGuard`, whose
    backward raises the clear error naming ``double_backward()`` instead."""
    if not torch.is_grad_enabled():
        return res
    if isinstance(res, tuple):
        return tuple(FirstOrderGuard.apply(t, "cuda") if t.requires_grad else t for t in res)
    return FirstOrderGuard.apply(res, "cuda") if res.requires_grad else res
