"""Helpers for the selective-scan tests: random inputs and a robust relative error."""

from __future__ import annotations

import torch


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (0 when both are zero): insensitive to isolated tiny reference entries."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.abs().max().item()
    num = (a - b).abs().max().item() if a.numel() else 0.0
    return num / denom if denom > 0 else num


def make_inputs(batch, dim, L, N, G=None, z=True, bias=True, dtype=torch.float32, seed=0):
    """Random, well-conditioned selective-scan inputs. G=None: ungrouped (batch, N, L) B/C."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(dtype)

    def pos(*s, scale=0.5, shift=0.05):  # positive delta so that scans without softplus stay bounded
        return (torch.rand(*s, generator=g) * scale + shift).to(dtype)

    bc_shape = (batch, N, L) if G is None else (batch, G, N, L)
    return {
        "u": r(batch, dim, L),
        "delta": pos(batch, dim, L),
        "A": -torch.exp(torch.randn(dim, N, generator=g) * 0.5).to(dtype),
        "B": r(*bc_shape),
        "C": r(*bc_shape),
        "D": r(dim),
        "z": r(batch, dim, L) if z else None,
        "delta_bias": pos(dim, scale=0.2, shift=0.0) if bias else None,
    }


def run_with_grads(backend, inp, softplus, seed=1):
    """``selective_scan`` on fresh leaves of ``inp`` (with the last state), backward with seeded random
    output gradients; returns ``(y, last, {input: grad})`` (zeros for inputs the scan did not reach)."""
    from mamba_clip.ops import selective_scan

    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inp.items()}
    y, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(y.dtype)
    gl = torch.randn(last.shape, generator=g).to(last.dtype)
    ((y * gy).sum() + (last * gl).sum()).backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v))
             for k, v in leaves.items() if v is not None}
    return y.detach(), last.detach(), grads


def assert_compiled_matches_eager(f, inp, tol=1e-6):
    """``torch.compile(f, fullgraph=True)`` (aot_eager) gives the eager output and input gradients."""
    torch._dynamo.reset()
    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y = cf(**leaves)
    y.sum().backward()
    leaves2 = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y2 = f(**leaves2)
    y2.sum().backward()
    assert max_rel_err(y, y2) <= tol
    for k in leaves:
        assert max_rel_err(leaves[k].grad, leaves2[k].grad) <= tol, k
