"""The fused Triton cross-scan / cross-merge against the plain-ops oracles, on CPU under Triton's
interpreter (``TRITON_INTERPRET=1``; CI has no GPU): both layouts, odd grid sizes, strided input, half
precision, gradients (each op's backward is the other), custom-op registration, torch.compile without
graph breaks, and the SS2D wiring (used when the scan backend is "triton")."""

from __future__ import annotations

import pytest
import torch
from _scan_helpers import max_rel_err

pytest.importorskip("triton", reason="triton is not installed (it ships with torch's CUDA wheels)")

from mamba_clip.ops import cross_scan_triton as cst  # noqa: E402
from mamba_clip.ops import scan_backend  # noqa: E402
from mamba_clip.ops.cross_scan import cross_merge_ref, cross_scan_ref  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _map(b, c, h, w, channels_last, dtype=torch.float32):
    x = torch.randn(b, c, h, w).to(dtype)
    return x.permute(0, 2, 3, 1).contiguous() if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("b,c,h,w", [(2, 3, 5, 7), (1, 20, 17, 3), (1, 1, 1, 1)])
def test_scan_and_merge_match_ref(b, c, h, w, channels_last):
    x = _map(b, c, h, w, channels_last)
    xs = cst.cross_scan_triton(x, channels_last=channels_last)
    assert xs.shape == (b, 4, c, h * w) and xs.is_contiguous()
    assert torch.equal(xs, cross_scan_ref(x, channels_last))
    ys = torch.randn(b, 4, c, h * w)
    y = cst.cross_merge_triton(ys, h, w, channels_last=channels_last)
    assert y.shape == x.shape and y.is_contiguous()
    assert max_rel_err(y, cross_merge_ref(ys, h, w, channels_last)) <= 1e-6


def test_strided_input_and_bf16():
    x = torch.randn(2, 6, 9, 4)[:, ::2]  # (2, 3, 9, 4), non-contiguous channels
    assert torch.equal(cst.cross_scan_triton(x), cross_scan_ref(x))
    ys = torch.randn(2, 4, 3, 36).to(torch.bfloat16)
    y = cst.cross_merge_triton(ys, 6, 6, channels_last=True)
    assert y.dtype == torch.bfloat16
    ref = cross_merge_ref(ys.float(), 6, 6, channels_last=True)
    assert max_rel_err(y, ref) <= 1e-2  # summed in float32, rounded once


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_and_double_backward(channels_last):
    """Each op's backward is the other (adjoint linear maps), so second derivatives work too."""
    x = _map(2, 3, 4, 5, channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    gy = torch.randn(2, 4, 3, 20)
    (gx,) = torch.autograd.grad((cst.cross_scan_triton(x, channels_last) * gy).sum(), x, create_graph=True)
    (gx_ref,) = torch.autograd.grad((cross_scan_ref(x_ref, channels_last) * gy).sum(), x_ref)
    assert max_rel_err(gx, gx_ref) <= 1e-6
    ys = torch.randn(2, 4, 3, 20, requires_grad=True)
    ys_ref = ys.detach().clone().requires_grad_()
    g = torch.randn(x.shape)
    (gys,) = torch.autograd.grad((cst.cross_merge_triton(ys, 4, 5, channels_last) * g).sum(), ys)
    (gys_ref,) = torch.autograd.grad((cross_merge_ref(ys_ref, 4, 5, channels_last) * g).sum(), ys_ref)
    assert max_rel_err(gys, gys_ref) <= 1e-6
    # gx = merge(gy) does not depend on x; its graph goes through the merge op's autograd formula
    (ggy,) = torch.autograd.grad((cst.cross_merge_triton(gy.requires_grad_(), 4, 5, channels_last) * g).sum(), gy)
    assert max_rel_err(ggy, cross_scan_ref(g, channels_last)) <= 1e-6


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="4-d feature map"):
        cst.cross_scan_triton(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, C, h\*w=20\)"):
        cst.cross_merge_triton(torch.randn(1, 4, 3, 21), 4, 5)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got device cpu.*TRITON_INTERPRET=1"):
        cst.cross_scan_triton(torch.randn(1, 2, 3, 4))


def test_custom_ops_and_torch_compile():
    x = torch.randn(1, 3, 4, 5)
    ys = torch.randn(1, 4, 3, 20)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.mamba_clip.cross_scan_triton.default, (x, False), test_utils=utils)
    torch.library.opcheck(torch.ops.mamba_clip.cross_merge_triton.default, (ys, 4, 5, True), test_utils=utils)

    def f(x):
        return cst.cross_merge_triton(cst.cross_scan_triton(x, True) * 2.0, 4, 5, True)

    torch._dynamo.reset()
    xl = x.permute(0, 2, 3, 1).contiguous().requires_grad_()
    y = torch.compile(f, backend="aot_eager", fullgraph=True)(xl)
    y.sum().backward()
    assert max_rel_err(y, f(xl)) <= 1e-6 and max_rel_err(y, 8 * xl) <= 1e-6  # merge(scan(x)) = 4 x
    assert max_rel_err(xl.grad, torch.full_like(xl, 8.0)) <= 1e-6


@pytest.mark.slow
def test_ss2d_uses_fused_cross_scan_with_triton_backend(monkeypatch):
    """SS2D under scan_backend("triton") routes its cross-scan/merge through the Triton ops and matches
    the "ref" scan with the torch cross-scan, output and parameter gradients."""
    from mamba_clip.models.vmamba import SS2D

    torch.manual_seed(0)
    m = SS2D(8, d_state=1, ssm_ratio=2.0, forward_type="v3noz")
    x = torch.randn(1, 5, 6, 8)
    calls = []
    real_scan = cst.cross_scan_triton
    monkeypatch.setattr(cst, "cross_scan_triton", lambda *a, **k: calls.append(1) or real_scan(*a, **k))
    out = {}
    for bk in ("ref", "triton"):
        m.zero_grad()
        with scan_backend(bk):
            y = m(x)
        y.square().sum().backward()
        out[bk] = (y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    assert calls, "the Triton cross-scan was not used"
    assert max_rel_err(out["triton"][0], out["ref"][0]) <= 1e-4
    for n, g in out["ref"][1].items():
        assert max_rel_err(out["triton"][1][n], g) <= 1e-4, n


@pytest.mark.slow
def test_ss2d_with_triton_compiles_without_graph_breaks():
    """The whole SS2D layer on the "triton" path (scan and cross-scan/merge custom ops) traces as one
    graph, forward and backward (what the stock trainer's --torchcompile needs)."""
    from mamba_clip.models.vmamba import SS2D

    torch.manual_seed(0)
    m = SS2D(8, d_state=1, ssm_ratio=1.0, forward_type="v3noz")
    x = torch.randn(1, 4, 3, 8)
    with scan_backend("triton"):
        torch._dynamo.reset()
        y = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
        y.sum().backward()
        g = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad()
        y2 = m(x)
        y2.sum().backward()
    torch._dynamo.reset()
    assert max_rel_err(y, y2) <= 1e-6
    for n, p in m.named_parameters():
        assert max_rel_err(g[n], p.grad) <= 1e-6, n
