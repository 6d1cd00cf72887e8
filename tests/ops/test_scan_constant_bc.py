"""Constant (input-independent) B / C of shape (D, N), mamba-ssm ``selective_scan_fn``'s third input
form (issue 16): every available backend against an independent float64 recurrence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _scan_helpers import make_inputs, max_rel_err

from mamba_clip.ops import available_backends, selective_scan

BATCH, DIM, L, N = 2, 4, 7, 3


def _oracle(u, delta, A, B, C, D, z, delta_bias):
    """h_l = exp(dt_l A) h_{l-1} + dt_l B_l u_l, y_l = C_l . h_l (+ D u, * silu(z)), float64, with B / C
    each (D, N) constant or (batch, N, L) / (batch, G, N, L) variable, as mamba-ssm's reference."""
    u, delta, A, D, z, delta_bias = (t.double() for t in (u, delta, A, D, z, delta_bias))
    dt = F.softplus(delta + delta_bias[:, None])

    def at(M, t):  # (batch, D, N) matrix of step t
        M = M.double()
        if M.dim() == 2:
            return M.expand(BATCH, -1, -1)
        if M.dim() == 3:
            return M[:, None, :, t].expand(-1, DIM, -1)
        return M[..., t].repeat_interleave(DIM // M.shape[1], dim=1)

    h = u.new_zeros(BATCH, DIM, N)
    ys = []
    for t in range(L):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * at(B, t)
        ys.append((h * at(C, t)).sum(-1))
    y = (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)
    return y, h


CASES = {
    "B const": lambda g: (torch.randn(DIM, N, generator=g), torch.randn(BATCH, N, L, generator=g)),
    "C const": lambda g: (torch.randn(BATCH, 2, N, L, generator=g), torch.randn(DIM, N, generator=g)),
    "both const": lambda g: (torch.randn(DIM, N, generator=g), torch.randn(DIM, N, generator=g)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", available_backends())
def test_constant_bc_matches_oracle(backend, case):
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        device = "cuda"
    else:
        device = "cpu"
    inp = make_inputs(BATCH, DIM, L, N)
    inp["B"], inp["C"] = CASES[case](torch.Generator().manual_seed(3))
    leaves = {k: v.to(device).clone().requires_grad_() for k, v in inp.items()}
    y, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    y_ref, last_ref = _oracle(**ref_leaves)
    assert max_rel_err(y.cpu(), y_ref) < 1e-4 and max_rel_err(last.cpu(), last_ref) < 1e-4
    g = torch.Generator().manual_seed(5)
    gy, gl = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    ((y * gy.to(device)).sum() + (last * gl.to(device)).sum()).backward()
    ((y_ref * gy.double()).sum() + (last_ref * gl.double()).sum()).backward()
    for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
        assert leaves[k].grad.shape == inp[k].shape, k
        assert max_rel_err(leaves[k].grad.cpu(), ref_leaves[k].grad) < 1e-3, (backend, case, k)


def test_constant_bc_wrong_shape_names_forms():
    inp = make_inputs(BATCH, DIM, L, N)
    inp["B"] = torch.randn(DIM + 1, N)
    with pytest.raises(ValueError, match=r"'B'.*\(D, N\) = \(4, 3\) \(constant\)"):
        selective_scan(**inp, backend="ref")
