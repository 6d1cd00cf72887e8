"""SS2D's fused CPU inference path (d_state 1, mamba_clip.ops.ss2d_fused): taken exactly when it
should be, and equal to the unfused cross_scan -> selective_scan -> cross_merge path."""

from __future__ import annotations

import pytest
import timm
import torch

from mamba_clip.models.vmamba import SS2D, VMamba
from mamba_clip.ops import double_backward, scan_backend, scan_cpu, ss2d_fused

pytestmark = pytest.mark.skipif(not scan_cpu.is_available(), reason="C kernel unavailable")


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused kernel made through SS2D."""
    calls = []
    orig = ss2d_fused.ss2d_scan_merge_cpu

    def spy(u, *args, **kw):
        calls.append(tuple(u.shape))
        return orig(u, *args, **kw)

    monkeypatch.setattr(ss2d_fused, "ss2d_scan_merge_cpu", spy)
    return calls


def _randomise(module: torch.nn.Module) -> None:
    """Non-default SSM parameters so that every direction and term matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SS2D):
                m.A_logs.normal_(0.0, 0.5)
                m.Ds.normal_()
                m.dt_projs_bias.normal_(-2.0, 0.5)
                m.out_norm.weight.normal_()


@pytest.mark.parametrize("forward_type", ["v2", "v3noz"])
def test_ss2d_fused_equals_unfused(forward_type, fused_calls):
    op = SS2D(20, d_state=1, ssm_ratio=2.0, dt_rank=3, forward_type=forward_type).eval()  # D = 40
    _randomise(op)
    x = torch.randn(3, 5, 7, 20)
    with torch.no_grad():
        fused = op(x)
        assert fused_calls == [(3, 5, 7, 40)]
        with scan_backend("ref"):
            ref = op(x)
        with scan_backend("torch"):
            tor = op(x)
    assert len(fused_calls) == 1  # forced backends keep the unfused path
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused, tor, rtol=1e-4, atol=1e-4)


def test_model_forward_fused_equals_unfused(fused_calls):
    model = timm.create_model("vmamba_nano").eval()
    _randomise(model)
    x = torch.randn(2, 3, 96, 128)  # non-square maps: 24x32 ... 3x4
    with torch.no_grad():
        fused = model(x)
        n_ss2d = sum(isinstance(m, SS2D) for m in model.modules())
        assert len(fused_calls) == n_ss2d
        fused_calls.clear()
        with scan_backend("torch"):
            unfused = model(x)
        assert fused_calls == []
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        assert torch.equal(model(x), fused)
    assert len(fused_calls) == n_ss2d


def test_fused_path_not_taken_with_autograd_or_forced_backends(fused_calls):
    model = VMamba(depths=(1, 1, 1, 1), dims=8, drop_path_rate=0.0, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.enable_grad():
        y_grad = model(x)
    assert y_grad.requires_grad and fused_calls == []
    with torch.no_grad():
        for forced in ("ref", "torch"):
            with scan_backend(forced):
                model(x)
        with double_backward():
            model(x)
        assert fused_calls == []
        with scan_backend("cpu"):
            y = model(x)
    assert len(fused_calls) == 4
    torch.testing.assert_close(y, y_grad.detach(), rtol=1e-4, atol=1e-4)


def test_fused_path_not_taken_for_float64_or_larger_state(fused_calls):
    with torch.no_grad():
        op = SS2D(8, d_state=1).double()
        op(torch.randn(1, 3, 4, 8, dtype=torch.float64))
        SS2D(8, d_state=2)(torch.randn(1, 3, 4, 8))
    assert fused_calls == []


def test_fused_path_ignores_channel_chunking(fused_calls):
    """No 4x-sized tensors on the fused path: a tiny inference_chunk_bytes does not split channels."""
    model = timm.create_model("vmamba_nano", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.inference_chunk_bytes = 0
        full = model(x)
        fused_calls.clear()
        model.inference_chunk_bytes = 50_000  # micro-batches of one image; no channel split
        chunked = model(x)
    assert fused_calls[0] == (1, 16, 16, 48)  # one image, all d_inner = 2 x 24 channels
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_torch_compile_keeps_the_fused_op_opaque():
    op = SS2D(16, d_state=1, forward_type="v2").eval()
    x = torch.randn(2, 4, 6, 16)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    with torch.no_grad():
        want = op(x)
        got = torch.compile(op, backend=backend, fullgraph=True)(x)
    assert "mamba_clip.ss2d_cpu_fwd.default" in seen
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
