"""The Mamba block with mamba-ssm's parameter layout (Gu & Dao 2023, ``mamba_ssm.Mamba``).

Parameters (names and shapes identical to ``mamba_ssm.modules.mamba_simple.Mamba``, so state dicts
load either way), with ``d_inner = expand * d_model`` and ``dt_rank = ceil(d_model / 16)`` for "auto":

=================  ===================================  =====================================
in_proj.weight     (2 * d_inner, d_model)               ``in_proj.bias`` only if ``bias=True``
conv1d.weight      (d_inner, 1, d_conv)                 depthwise, causal; ``conv1d.bias`` (d_inner,)
x_proj.weight      (dt_rank + 2 * d_state, d_inner)     no bias
dt_proj.weight     (d_inner, dt_rank)                   ``dt_proj.bias`` (d_inner,)
A_log              (d_inner, d_state)                   log(1..d_state) per channel (S4D-real)
D                  (d_inner,)                           ones
out_proj.weight    (d_model, d_inner)                   ``out_proj.bias`` only if ``bias=True``
=================  ===================================  =====================================

Forward uses mamba-ssm's fused ``mamba_inner_fn`` when mamba-ssm and causal-conv1d are importable and
the input is on CUDA, else ``selective_scan`` (backend per ``backend``, default "auto").
"""

from __future__ import annotations

import importlib.util
import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .selective_scan import in_double_backward, selective_scan

__all__ = ["Mamba", "mamba_fast_path_available"]


@torch.compiler.assume_constant_result
def mamba_fast_path_available() -> bool:
    """True when mamba-ssm's fused ``mamba_inner_fn`` (which needs causal-conv1d) can be used."""
    from .selective_scan import _cuda_ext_error

    # mamba-ssm's compiled extension must really import (see selective_scan._cuda_ext_error)
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("causal_conv1d") is not None
        and _cuda_ext_error() == ""
    )


class Mamba(nn.Module):
    """Selective SSM block: (batch, L, d_model) -> (batch, L, d_model).

    Args follow ``mamba_ssm.Mamba``: d_state, d_conv, expand, dt_rank ("auto" = ceil(d_model/16)),
    dt_min/dt_max (range of the initial softplus(dt_bias), log-uniform), dt_init ("random" or
    "constant"), dt_scale, dt_init_floor, conv_bias, bias, use_fast_path. ``backend`` selects the
    selective-scan backend of the non-fused path.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: Optional[int] = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        if dt_rank == "auto":
            self.dt_rank = math.ceil(d_model / 16)
        elif isinstance(dt_rank, int) and dt_rank > 0:
            self.dt_rank = dt_rank
        else:
            raise ValueError(f"Mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.backend = backend

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **fk)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)

        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, dtype=torch.float32, device=device))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.empty(self.d_inner, dtype=torch.float32, device=device))  # float32
        self.D._no_weight_decay = True
        self._ssm_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()
        self.dt_proj.bias._no_reinit = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba-ssm's init of the SSM parameters (also after ``to_empty()`` of a meta-device build).

        dt_proj weight ~ U(-s, s) (or constant s), s = dt_rank^-0.5 * dt_scale; dt_proj bias =
        softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], floored at dt_init_floor; A_log =
        log(1..d_state) per channel (float32); D = 1.
        """
        dt_init, dt_scale, dt_min, dt_max, dt_init_floor = self._ssm_init
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        dev = self.dt_proj.bias.device
        dt = torch.exp(
            torch.rand(self.d_inner, device=dev) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """hidden_states: (batch, L, d_model) -> (batch, L, d_model)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: hidden_states has shape {tuple(hidden_states.shape)}, expected "
                             f"(batch, L, d_model={self.d_model})")
        batch, seqlen, _ = hidden_states.shape
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2*d_inner, L)
        A = -torch.exp(self.A_log.float())
        # Not inside double_backward(): mamba_inner_fn's backward is first-order only.
        if self.use_fast_path and hidden_states.is_cuda and self.backend in ("auto", "cuda") \
                and not in_double_backward() and mamba_fast_path_available():
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

            from .scan_cuda import guard_first_order

            return guard_first_order(mamba_inner_fn(
                xz.contiguous(), self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, None, None,
                self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            ))
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L), bias added in the scan
        y = selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))
