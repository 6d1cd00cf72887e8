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
