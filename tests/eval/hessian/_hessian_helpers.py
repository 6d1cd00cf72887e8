"""Shared pieces of the Hessian tests: the dense-Hessian oracle and tiny CLIP problems."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call


class _LossModule(nn.Module):
    def __init__(self, model, loss_fn, batch):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.batch = batch

    def forward(self):
        return self.loss_fn(self.model, self.batch)


def dense_hessian(model, loss_fn, batch, named_params) -> torch.Tensor:
    """The (n, n) Hessian by ``torch.autograd.functional.hessian`` on a functional call, built
    independently of the code under test: its own math-attention / eval context and the sequential
    "ref" scan (the code under test runs on the default, fused backends)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mamba_clip.ops import scan_backend

    names = [n for n, _ in named_params]
    values = tuple(p.detach().clone() for _, p in named_params)
    wrapper = _LossModule(model, loss_fn, batch)
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as st:
            st.enter_context(scan_backend("ref"))
            st.enter_context(sdpa_kernel(SDPBackend.MATH))

            def f(*vals):
                return functional_call(wrapper, {"model." + n: v for n, v in zip(names, vals)}, ())

            blocks = torch.autograd.functional.hessian(f, values)
    finally:
        model.train(was_training)
    sizes = [v.numel() for v in values]
    return torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(values))], 1)
                      for i in range(len(values))], 0)


def top_by_magnitude(H: torch.Tensor, k: int) -> torch.Tensor:
    ev = torch.linalg.eigvalsh(H.double())
    return ev[torch.argsort(ev.abs(), descending=True)][:k]


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got.double() - want.double()).abs() / want.double().abs()).max())
