"""First-use self-check of the Triton kernels (issue 18): on CPU under Triton's interpreter, with a
fault injected (wrong numbers, a compile error), ``auto`` warns once and falls back to the torch path
while an explicit ``backend="triton"`` / ``cross_scan_triton`` raises with the reason."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it ships with torch's CUDA wheels)")

from mamba_clip.ops import cross_scan_triton as cst  # noqa: E402
from mamba_clip.ops import scan_backend, scan_triton, selective_scan, triton_selfcheck  # noqa: E402
from mamba_clip.ops.triton_selfcheck import TritonSelfCheckError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _interpret_and_fresh_cache(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_selfcheck.reset()
    yield
    triton_selfcheck.reset()  # no injected failure leaks into other tests


def _inputs():
    g = torch.Generator().manual_seed(1)
    b, d, n, L = 1, 4, 2, 9
    return (torch.randn(b, d, L, generator=g), torch.rand(b, d, L, generator=g), -torch.rand(d, n, generator=g),
            torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g))


def test_healthy_kernels_pass():
    assert triton_selfcheck.scan_check_error(CPU, torch.float32) == ""
    assert cst.cross_scan_check_error(CPU, torch.float32) == ""
    u = _inputs()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert triton_selfcheck.triton_scan_usable(u)


def test_wrong_numbers_auto_falls_back_explicit_raises(monkeypatch):
    real = scan_triton.selective_scan_triton
    monkeypatch.setattr(scan_triton, "selective_scan_triton", lambda *a, **k: real(*a, **k) * 1.5)
    u = _inputs()[0]
    with pytest.warns(RuntimeWarning, match=r"self-check on cpu / torch.float32 \(forward: max relative error"):
        assert not triton_selfcheck.triton_scan_usable(u)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per device and dtype
        assert not triton_selfcheck.triton_scan_usable(u)
    with pytest.raises(TritonSelfCheckError, match="backend 'triton' failed its self-check.*forward"):
        selective_scan(*_inputs(), backend="triton")
    y = selective_scan(*_inputs(), backend="torch")  # the fallback itself still works
    assert torch.isfinite(y).all()


def test_compile_error_is_the_reason(monkeypatch):
    def broken(interpret):
        raise RuntimeError("CompilationError: injected fault at triton_kernels.py:80")

    monkeypatch.setattr(scan_triton, "kernels", broken)
    assert "injected fault" in triton_selfcheck.scan_check_error(CPU, torch.float32)
    with pytest.raises(TritonSelfCheckError, match="injected fault"):
        selective_scan(*_inputs(), backend="triton")


def test_cross_scan_fault(monkeypatch):
    real = cst._cross_scan_op
    monkeypatch.setattr(cst, "_cross_scan_op", lambda x, cl: real(x, cl).flip(-1))
    x = torch.randn(1, 3, 4, 5)
    with pytest.raises(TritonSelfCheckError, match=r"cross_scan \(triton\) failed its self-check.*cross_scan"):
        cst.cross_scan_triton(x)
    u = torch.randn(1, 4, 20)
    with scan_backend("triton"), pytest.warns(RuntimeWarning, match="cross_scan: the Triton kernels failed"):
        assert not cst.use_triton(u)  # VMamba's SS2D takes the plain PyTorch cross-scan instead
    assert "mamba_clip.ops.triton_selfcheck" in sys.modules
