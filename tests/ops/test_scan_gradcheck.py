"""float64 gradcheck of the twice-differentiable backends, gradgradcheck of "torch", and the
double-backward dispatch.

The "cpu" kernel computes in float32 only (like mamba-ssm's CUDA kernel), so it is not gradchecked
in float64; its gradients are compared to the float32 oracle in test_scan_backends.py, and here to a
float64 finite-difference of the oracle.
"""

from __future__ import annotations

import pytest
import torch
from _scan_helpers import make_inputs, max_rel_err

from mamba_clip.ops import double_backward, resolve_backend, scan_torch, selective_scan

KEYS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _fn(backend, softplus, keys):
    def f(*args):
        kw = dict(zip(keys, args))
        y, last = selective_scan(**kw, delta_softplus=softplus, return_last_state=True, backend=backend)
        return y, last

    return f


@pytest.mark.parametrize("backend", ["torch", "ref"])
@pytest.mark.parametrize("grouped,softplus", [(None, True), (2, False)])
def test_gradcheck_float64(backend, grouped, softplus):
    inp = make_inputs(2, 4, 6, 3, grouped, dtype=torch.float64)
    args = [inp[k].requires_grad_() for k in KEYS]
    assert torch.autograd.gradcheck(_fn(backend, softplus, KEYS), args, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stepwise_min", [0, 1 << 62], ids=["stepwise", "chunked"])
def test_gradgradcheck_torch(stepwise_min, monkeypatch):
    monkeypatch.setattr(scan_torch, "STEPWISE_MIN", stepwise_min)
    inp = make_inputs(1, 2, 5, 2, 2, dtype=torch.float64)
    args = [inp[k].requires_grad_() for k in KEYS]
    assert torch.autograd.gradgradcheck(_fn("torch", True, KEYS), args, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("L", [1, 5, pytest.param(11, marks=pytest.mark.slow)])  # 11: 5 s, full suite only
def test_gradcheck_and_gradgradcheck_torch_n1(L, monkeypatch):
    """N == 1 runs through the hand-written first-order backward (and, under create_graph, the
    differentiable rebuild): both orders must match finite differences."""
    monkeypatch.setattr(scan_torch, "STEPWISE_MIN", 1 << 62)
    inp = make_inputs(2, 4, L, 1, 2, dtype=torch.float64)
    args = [inp[k].requires_grad_() for k in KEYS]
    fn = _fn("torch", True, KEYS)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_torch_stepwise(monkeypatch):
    monkeypatch.setattr(scan_torch, "STEPWISE_MIN", 0)
    inp = make_inputs(2, 4, 6, 3, 2, dtype=torch.float64)
    args = [inp[k].requires_grad_() for k in KEYS]
    assert torch.autograd.gradcheck(_fn("torch", True, KEYS), args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_cpu_grad_vs_float64_oracle():
    inp = make_inputs(2, 4, 40, 16, 2)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    selective_scan(**leaves, delta_softplus=True, backend="cpu").sum().backward()
    leaves64 = {k: v.double().requires_grad_() for k, v in inp.items()}
    selective_scan(**leaves64, delta_softplus=True, backend="ref").sum().backward()
    for k in KEYS:
        assert max_rel_err(leaves[k].grad, leaves64[k].grad) <= 1e-4, k


def test_double_backward_context_selects_torch_and_hvp_works():
    inp = make_inputs(1, 4, 12, 4, None, dtype=torch.float32)
    assert resolve_backend("auto", inp["u"]) == "cpu"
    with double_backward():
        assert resolve_backend("auto", inp["u"]) == "torch"
        u = inp["u"].clone().requires_grad_()
        y = selective_scan(u, *[inp[k] for k in KEYS[1:]], delta_softplus=True)
        (g,) = torch.autograd.grad((y ** 2).sum(), u, create_graph=True)
        v = torch.randn_like(u)
        (hv,) = torch.autograd.grad((g * v).sum(), u)
    assert resolve_backend("auto", inp["u"]) == "cpu"
    # Finite-difference check of the Hessian-vector product.
    eps = 1e-3

    def grad_at(x):
        x = x.clone().requires_grad_()
        y = selective_scan(x, *[inp[k].double() for k in KEYS[1:]], delta_softplus=True, backend="torch")
        return torch.autograd.grad((y ** 2).sum(), x)[0]

    u64, v64 = inp["u"].double(), v.double()
    fd = (grad_at(u64 + eps * v64) - grad_at(u64 - eps * v64)) / (2 * eps)
    assert max_rel_err(hv, fd) <= 1e-3
