"""Argument checks, backend dispatch and non-finite inputs of ``selective_scan``."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _scan_helpers import make_inputs

from mamba_clip.ops import BACKENDS, available_backends, resolve_backend, scan_backend, selective_scan


def _inp(**kw):
    return make_inputs(2, 4, 5, 3, None, **kw)


@pytest.mark.parametrize(
    "name,bad,expect",
    [
        ("u", torch.randn(2, 4), "(batch, D, L)"),
        ("delta", torch.randn(2, 4, 6), "(2, 4, 5)"),
        ("A", torch.randn(5, 3), "(4, N)"),
        ("B", torch.randn(2, 3, 6), "(2, 3, 5)"),
        ("C", torch.randn(2, 3, 3, 5), "divisible by G"),
        ("D", torch.randn(5), "(4,)"),
        ("z", torch.randn(2, 4), "(2, 4, 5)"),
        ("delta_bias", torch.randn(4, 1), "(4,)"),
    ],
)
def test_bad_shape_names_argument(name, bad, expect):
    inp = _inp()
    inp[name] = bad
    with pytest.raises(ValueError) as e:
        selective_scan(**inp, backend="ref")
    msg = str(e.value)
    assert repr(name) in msg and str(tuple(bad.shape)) in msg and expect in msg


@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "D"])
def test_bad_dtype_names_argument(name):
    inp = _inp()
    inp[name] = inp[name].to(torch.int32)
    with pytest.raises(ValueError, match=f"'{name}'.*int32"):
        selective_scan(**inp)


def test_complex_A_rejected():
    inp = _inp()
    inp["A"] = inp["A"].to(torch.complex64)
    with pytest.raises(ValueError, match="'A'.*complex"):
        selective_scan(**inp)


@pytest.mark.parametrize("name", ["delta", "B", "z"])
def test_bad_device_names_argument(name):
    inp = _inp()
    inp[name] = inp[name].to("meta")
    with pytest.raises(ValueError, match=f"'{name}' is on device meta, expected cpu"):
        selective_scan(**inp)


def test_non_tensor_rejected():
    inp = _inp()
    inp["B"] = inp["B"].tolist()
    with pytest.raises(ValueError, match="'B' must be a torch.Tensor"):
        selective_scan(**inp)


def test_unknown_backend_lists_accepted():
    with pytest.raises(ValueError, match="unknown backend 'fast'.*'auto'.*'cpu'.*'ref'.*'triton'"):
        selective_scan(**_inp(), backend="fast")
    with pytest.raises(ValueError, match="accepted values"):
        with scan_backend("fast"):
            pass


def test_unavailable_cuda_backend_is_runtime_error():
    if importlib.util.find_spec("mamba_ssm") is not None and torch.cuda.is_available():
        pytest.skip("mamba-ssm and CUDA are present: 'cuda' is available here")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        selective_scan(**_inp(), backend="cuda")


def test_cpu_backend_rejects_float64_with_hint():
    with pytest.raises(ValueError, match="'torch' or 'ref' for float64"):
        selective_scan(**_inp(dtype=torch.float64), backend="cpu")


def test_auto_dispatch():
    assert set(available_backends()) >= {"cpu", "torch", "ref"}
    assert BACKENDS == ("auto", "cuda", "cpu", "torch", "ref", "triton")
    u = torch.zeros(1, 1, 1)
    assert resolve_backend("auto", u) == "cpu"
    assert resolve_backend("auto", u.double()) == "torch"
    with scan_backend("ref"):
        assert resolve_backend("auto", u) == "ref"
        assert resolve_backend("torch", u) == "torch"
    assert resolve_backend("auto", u.to("meta")) == "torch"


def test_float64_auto_keeps_precision():
    inp = _inp(dtype=torch.float64)
    y = selective_scan(**inp, delta_softplus=True)
    y_ref = selective_scan(**inp, delta_softplus=True, backend="ref")
    assert y.dtype == torch.float64
    assert (y - y_ref).abs().max().item() <= 1e-12 * y_ref.abs().max().item()


def test_zero_length_sequence():
    inp = make_inputs(2, 4, 0, 3, 2)
    for backend in ("ref", "torch", "cpu"):
        y, last = selective_scan(**inp, return_last_state=True, backend=backend)
        assert y.shape == (2, 4, 0) and last.shape == (2, 4, 3) and not last.any()


@pytest.mark.parametrize("backend", ["ref", "torch", "cpu"])
@pytest.mark.parametrize("where,value", [("u", float("nan")), ("delta", float("inf")), ("B", float("nan")),
                                         ("z", float("-inf")), ("delta", float("nan"))])
def test_non_finite_input_gives_non_finite_output(backend, where, value):
    inp = make_inputs(1, 3, 20, 4, None)
    inp[where][..., 7] = value
    y = selective_scan(**inp, delta_softplus=True, backend=backend)
    assert not torch.isfinite(y).all()
    # Positions before the bad step are untouched by it (causality).
    assert torch.isfinite(y[..., :7]).all()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_non_finite_backward_does_not_crash(backend):
    inp = make_inputs(1, 3, 20, 4, None)
    inp["u"][0, 0, 5] = float("nan")
    leaves = {k: v.requires_grad_() for k, v in inp.items()}
    selective_scan(**leaves, backend=backend).sum().backward()
    # du does not depend on u (the scan is linear in u); dA does, through the states.
    assert torch.isfinite(leaves["u"].grad).all()
    assert not torch.isfinite(leaves["A"].grad).all()


@pytest.mark.slow
def test_import_does_not_pull_mamba_ssm():
    import subprocess
    import sys

    code = "import sys, mamba_clip.ops; assert 'mamba_ssm' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
