"""The Mamba block: mamba_ssm.Mamba's parameter layout and init, causality, and equal results on
every selective-scan backend."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _scan_helpers import max_rel_err

from mamba_clip.ops import Mamba, double_backward, scan_backend


def expected_mamba_ssm_layout(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", bias=False,
                              conv_bias=True):
    """Names and shapes of mamba_ssm.modules.mamba_simple.Mamba's state dict, written from its source:
    own parameters (A_log, D) first, then in_proj, conv1d, x_proj, dt_proj, out_proj."""
    d_inner = int(expand * d_model)
    r = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    sd = {"A_log": (d_inner, d_state), "D": (d_inner,), "in_proj.weight": (2 * d_inner, d_model)}
    if bias:
        sd["in_proj.bias"] = (2 * d_inner,)
    sd["conv1d.weight"] = (d_inner, 1, d_conv)
    if conv_bias:
        sd["conv1d.bias"] = (d_inner,)
    sd.update({"x_proj.weight": (r + 2 * d_state, d_inner), "dt_proj.weight": (d_inner, r),
               "dt_proj.bias": (d_inner,), "out_proj.weight": (d_model, d_inner)})
    if bias:
        sd["out_proj.bias"] = (d_model,)
    return sd


@pytest.mark.parametrize("kw", [{}, {"d_state": 1, "expand": 1, "dt_rank": 3}, {"bias": True, "d_conv": 3},
                                {"conv_bias": False, "d_state": 64}])
def test_state_dict_layout_matches_mamba_ssm(kw):
    m = Mamba(40, **kw)
    got = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert got == list(expected_mamba_ssm_layout(40, **kw).items())


def test_init_follows_mamba_ssm():
    m = Mamba(64, d_state=8, dt_min=1e-3, dt_max=0.1)
    assert m.dt_rank == 4 and m.d_inner == 128
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 9, dtype=torch.float32)).repeat(128, 1))
    assert m.A_log.dtype == torch.float32 and torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt.std() > 0.01  # log-uniform spread, not a constant
    assert m.dt_proj.weight.abs().max() <= 4 ** -0.5
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.groups == 128
    assert getattr(m.dt_proj.bias, "_no_reinit", False) and getattr(m.A_log, "_no_weight_decay", False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(16, dt_rank="big")
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(16, dt_init="zeros")
    with pytest.raises(ValueError, match=r"hidden_states has shape \(2, 5\)"):
        Mamba(16)(torch.randn(2, 5))


def test_causal():
    m = Mamba(16, d_state=4)
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, 7] += 1.0
    y, y2 = m(x), m(x2)
    assert torch.allclose(y[:, :7], y2[:, :7], atol=1e-6)
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_forward_backward_matches_ref(backend):
    torch.manual_seed(0)
    m = Mamba(24, d_state=8)
    x = torch.randn(2, 17, 24)
    outs = {}
    for b in ("ref", backend):
        m.zero_grad()
        with scan_backend(b):
            xx = x.clone().requires_grad_()
            y = m(xx)
            (y * torch.linspace(-1, 1, 24)).sum().backward()
        outs[b] = (y.detach(), xx.grad, {k: p.grad.clone() for k, p in m.named_parameters()})
    y_ref, gx_ref, gp_ref = outs["ref"]
    y, gx, gp = outs[backend]
    assert y.shape == (2, 17, 24)
    assert max_rel_err(y, y_ref) <= 1e-4 and max_rel_err(gx, gx_ref) <= 1e-4
    for k in gp_ref:
        assert max_rel_err(gp[k], gp_ref[k]) <= 1e-4, k


def test_backend_attribute_and_hvp():
    m = Mamba(16, d_state=4, backend="torch")
    x = torch.randn(1, 6, 16)
    with double_backward():
        loss = m(x).pow(2).sum()
        params = [p for p in m.parameters()]
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(sum((g * torch.ones_like(g)).sum() for g in grads), params)
    assert all(torch.isfinite(h).all() for h in hv)
    assert any(h.abs().sum() > 0 for h in hv)


def test_fast_path_needs_the_compiled_extension(monkeypatch):
    """mamba_inner_fn is used only when mamba-ssm's compiled extension really imports: packages that
    are present but broken (ABI errors, newer sources built without the Mamba-1 kernel) are not enough."""
    import importlib
    import importlib.util

    mamba_mod = importlib.import_module("mamba_clip.ops.mamba")
    ss_mod = importlib.import_module("mamba_clip.ops.selective_scan")  # the module, not the function

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *a):
        return object() if name in ("mamba_ssm", "causal_conv1d") else real_find_spec(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(ss_mod, "_cuda_ext_error_cache", ["selective_scan_cuda does not import (ImportError)"])
    assert not mamba_mod.mamba_fast_path_available()
    monkeypatch.setattr(ss_mod, "_cuda_ext_error_cache", [""])
    assert mamba_mod.mamba_fast_path_available()
