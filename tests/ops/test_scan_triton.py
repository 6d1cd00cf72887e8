"""The "triton" selective-scan backend against the sequential oracle ("ref"), on CPU under Triton's
interpreter (``TRITON_INTERPRET=1``; CI has no GPU): outputs, last state and the gradient of every
input with the tolerance the other backends meet (1e-4 in float32), bf16/fp16 inputs, dispatch rules,
the create_graph error and torch.compile without graph breaks. Shapes are small (the interpreter
runs every program in Python) but cover N in {1, 16, 64}, several chunks with a ragged last one,
grouped / ungrouped / mixed-group B and C, z, delta_bias, softplus and D."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from _scan_helpers import assert_compiled_matches_eager, make_inputs, max_rel_err
from _scan_helpers import run_with_grads as _run

pytest.importorskip("triton", reason="triton is not installed (it ships with torch's CUDA wheels)")

from mamba_clip.ops import (  # noqa: E402
    double_backward,
    resolve_backend,
    scan_backend,
    scan_triton,
    selective_scan,
    triton_selfcheck,
)

ss_mod = sys.modules["mamba_clip.ops.selective_scan"]
TOL = 1e-4


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# (batch, dim, L, N, G, z, delta_bias, softplus). Time chunks are 128 / 64 / 32 steps for
# N = 1 / 16 / 64, so L = 300, 100 and 45 give 3 or 2 chunks with a ragged last one.
GRID = [
    (1, 4, 1, 16, None, True, True, True),
    (2, 4, 7, 1, None, False, False, False),
    # The slowest cases under the interpreter: left out of make test-quick (N = 64 stays in it below).
    pytest.param((2, 4, 100, 16, 2, True, True, True), marks=pytest.mark.slow),
    (1, 8, 300, 1, 4, True, False, True),
    pytest.param((1, 2, 45, 64, None, False, True, False), marks=pytest.mark.slow),
    (1, 3, 5, 64, 3, True, False, True),
    (2, 4, 1, 1, 4, False, True, True),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: "b{}-d{}-L{}-N{}-G{}-z{:d}-bias{:d}-sp{:d}".format(*c))
def test_triton_matches_ref(case):
    batch, dim, L, N, G, z, bias, sp = case
    inp = make_inputs(batch, dim, L, N, G, z=z, bias=bias)
    y_ref, last_ref, g_ref = _run("ref", inp, sp)
    y, last, g = _run("triton", inp, sp)
    assert y.shape == (batch, dim, L) and y.dtype == torch.float32
    assert last.shape == (batch, dim, N) and last.dtype == torch.float32
    assert max_rel_err(y, y_ref) <= TOL
    assert max_rel_err(last, last_ref) <= TOL
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].shape == inp[k].shape and g[k].dtype == inp[k].dtype, k
        assert max_rel_err(g[k], g_ref[k]) <= TOL, (k, max_rel_err(g[k], g_ref[k]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_half_inputs_float32_state(dtype):
    inp = make_inputs(1, 4, 40, 16, 2, dtype=dtype)
    y, last, g = _run("triton", inp, True)
    assert y.dtype == dtype and last.dtype == torch.float32
    # Oracle: the same half-precision values, upcast, computed in float32.
    y32, last32, g32 = _run("ref", {k: (v.float() if v is not None else None) for k, v in inp.items()}, True)
    assert max_rel_err(y, y32) <= 1e-2  # rounding of the output only
    assert max_rel_err(last, last32) <= 1e-4
    for k, v in g.items():
        assert v.dtype == dtype, k
        assert max_rel_err(v, g32[k]) <= 3e-2, k


def test_mixed_group_counts_and_n1_without_last_state_grad():
    """B with 4 groups and C with 1 (the kernel takes one group count each); only y is used."""
    inp = make_inputs(2, 8, 37, 1, 4)
    inp["C"] = inp["C"][:, :1].clone()
    res = {}
    for bk in ("ref", "triton"):
        lv = {k: v.clone().requires_grad_() for k, v in inp.items()}
        y = selective_scan(**lv, delta_softplus=True, backend=bk)
        assert isinstance(y, torch.Tensor)
        y.square().sum().backward()
        res[bk] = (y, {k: v.grad for k, v in lv.items()})
    assert max_rel_err(res["triton"][0], res["ref"][0]) <= TOL
    for k in inp:
        assert max_rel_err(res["triton"][1][k], res["ref"][1][k]) <= TOL, k


def test_no_grad_forward_and_zero_length():
    inp = make_inputs(1, 4, 9, 4)
    with torch.no_grad():
        y, last = selective_scan(**inp, return_last_state=True, backend="triton")
    y_ref, last_ref = selective_scan(**inp, return_last_state=True, backend="ref")
    assert max_rel_err(y, y_ref) <= TOL and max_rel_err(last, last_ref) <= TOL
    y0, last0 = selective_scan(**make_inputs(2, 4, 0, 3, 2), return_last_state=True, backend="triton")
    assert y0.shape == (2, 4, 0) and last0.shape == (2, 4, 3) and not last0.any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("where,value", [("u", float("nan")), ("delta", float("inf"))])
def test_non_finite_input_stays_causal(where, value):
    inp = make_inputs(1, 2, 20, 2, None)
    inp[where][..., 7] = value
    y = selective_scan(**inp, delta_softplus=True, backend="triton")
    assert not torch.isfinite(y).all()
    assert torch.isfinite(y[..., :7]).all()  # positions before the bad step are untouched by it


def test_block_sizes():
    assert scan_triton.block_sizes(768, 1, 192, 192) == (16, 128, 1)  # VMamba-S stage 1
    assert scan_triton.block_sizes(384, 64, 384, 384) == (1, 32, 64)  # SiMBA-L stage 2
    assert scan_triton.block_sizes(6, 16, 3, 3) == (1, 64, 16)  # odd group size: one channel each
    bd, bt, bn = scan_triton.block_sizes(512, 16, 512, 256, backward=True)
    assert (bd, bt, bn) == (1, 64, 16) and scan_triton.block_sizes(512, 16, 512, 256)[1] == bt


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors, got device cpu.*"
                                           "TRITON_INTERPRET=1.*'auto'.*'triton'"):
        selective_scan(**make_inputs(1, 4, 5, 2), backend="triton")


def test_float64_rejected_with_hint():
    with pytest.raises(ValueError, match="backend 'triton'.*'torch' or 'ref' for float64"):
        selective_scan(**make_inputs(1, 4, 5, 2, dtype=torch.float64), backend="triton")


def test_auto_dispatch_rules(monkeypatch):
    u_cpu = torch.zeros(1, 1, 1)
    assert resolve_backend("auto", u_cpu) in ("cpu", "torch")  # CPU: unchanged, never triton
    cuda_u = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"), dtype=torch.float32)
    monkeypatch.setattr(ss_mod, "_cuda_available", lambda: False)
    monkeypatch.setattr(ss_mod, "_triton_available", lambda: True)
    monkeypatch.setattr(triton_selfcheck, "triton_scan_usable", lambda u: True)
    assert resolve_backend("auto", cuda_u) == "triton"
    monkeypatch.setattr(triton_selfcheck, "triton_scan_usable", lambda u: False)  # failed its self-check
    assert resolve_backend("auto", cuda_u) == "torch"
    monkeypatch.setattr(triton_selfcheck, "triton_scan_usable", lambda u: True)
    with double_backward():
        assert resolve_backend("auto", cuda_u) == "torch"
    monkeypatch.setattr(ss_mod, "_triton_available", lambda: False)
    assert resolve_backend("auto", cuda_u) == "torch"
    monkeypatch.setattr(ss_mod, "_cuda_available", lambda: True)
    assert resolve_backend("auto", cuda_u) == "cuda"
    with scan_backend("triton"):
        assert resolve_backend("auto", u_cpu) == "triton"  # interpreter set by the fixture


def test_cuda_needs_the_compiled_extension_not_just_the_package(tmp_path, monkeypatch):
    """A mamba_ssm package without the selective_scan_cuda extension (newer sources build without it)
    must not make "cuda" available: the extension itself is imported."""
    pkg = tmp_path / "mamba_ssm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)
    monkeypatch.setattr(ss_mod, "_cuda_ext_error_cache", [])
    err = ss_mod._cuda_ext_error()
    assert "selective_scan_cuda does not import" in err
    assert ss_mod._cuda_ext_error() == err  # cached
    with pytest.raises(RuntimeError, match="backend 'cuda' needs mamba-ssm's compiled kernel.*selective_scan_cuda"):
        selective_scan(**make_inputs(1, 4, 5, 2), backend="cuda")


def test_create_graph_backward_is_exact():
    """Since issue 17 a create_graph backward through "triton" is exact (its double backward runs on
    the triton linear-recurrence kernel; tests/ops/test_scan_second_order.py covers every option)."""
    inp = make_inputs(1, 4, 9, 2)

    def hess(backend):
        u = inp["u"].clone().requires_grad_()
        rest = {k: v for k, v in inp.items() if k != "u"}
        y = selective_scan(u, **rest, delta_softplus=True, backend=backend)
        (gu,) = torch.autograd.grad(y.square().sum(), u, create_graph=True)
        return torch.autograd.grad(gu.sum(), u)[0]

    assert max_rel_err(hess("triton"), hess("ref")) <= TOL


def test_custom_ops_registered_with_fake_impls():
    inp = make_inputs(1, 4, 6, 2, 2)
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["delta_bias"], True, True)
    torch.library.opcheck(torch.ops.mamba_clip.scan_triton_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_fullgraph_keeps_the_op():
    inp = make_inputs(1, 4, 9, 2, 2)

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="triton")

    assert_compiled_matches_eager(f, inp)
