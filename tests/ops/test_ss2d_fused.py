"""Fused SS2D scan-and-merge kernel (mamba_clip.ops.ss2d_fused, VMamba SS2D with d_state 1) against the
unfused composition cross_scan -> dt_proj -> selective_scan("ref") -> cross_merge."""

from __future__ import annotations

import pytest
import torch
from _scan_helpers import max_rel_err

from mamba_clip.ops import double_backward, scan_backend, scan_cpu
from mamba_clip.ops.ss2d_fused import fused_applicable, ss2d_scan_merge_cpu, ss2d_scan_merge_ref

pytestmark = pytest.mark.skipif(not scan_cpu.is_available(), reason="C kernel unavailable")


def _inputs(b, h, w, d, r, seed=0, bias_shift=-2.0, bias_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(b, h, w, d, generator=g),
        x_dbl=torch.randn(b, h, w, 4, r + 2, generator=g),
        dt_projs_weight=torch.randn(4, d, r, generator=g) * r**-0.5,
        dt_projs_bias=torch.randn(4, d, generator=g) * bias_scale + bias_shift,
        A=-torch.exp(torch.randn(4 * d, 1, generator=g) * 0.5),
        Ds=torch.randn(4 * d, generator=g),
    )


def _ref(inp):
    return ss2d_scan_merge_ref(**{k: v.double() for k, v in inp.items()})


# (batch, H, W, D, R): H != W, D a multiple of 16 or not (8-channel blocks, < 8 tails), R = 1 .. 8
SHAPES = [
    (1, 5, 7, 24, 1),
    (3, 5, 7, 40, 2),
    (1, 8, 8, 32, 3),
    (3, 8, 8, 16, 4),
    (1, 14, 14, 48, 5),
    (3, 14, 14, 24, 6),
    (1, 7, 5, 21, 7),
    (2, 3, 2, 5, 8),
    (1, 1, 1, 16, 2),
]


@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_unfused_reference(shape, portable):
    inp = _inputs(*shape)
    y = ss2d_scan_merge_cpu(**inp, portable=portable)
    assert y.shape == shape[:4] and y.dtype == torch.float32 and y.is_contiguous()
    assert max_rel_err(y, _ref(inp)) <= 1e-4


@pytest.mark.parametrize("bias_shift", [-30.0, 25.0], ids=["tiny-dt", "softplus-threshold"])
def test_extreme_dt(bias_shift):
    """dt bias far outside the init range: softplus underflow and torch's x > 20 linear branch."""
    inp = _inputs(2, 6, 5, 24, 3, bias_shift=bias_shift, bias_scale=3.0)
    ref = _ref(inp)
    for portable in (False, True):
        assert max_rel_err(ss2d_scan_merge_cpu(**inp, portable=portable), ref) <= 1e-4


def test_reference_equals_cpu_backend_composition():
    inp = _inputs(2, 5, 7, 24, 3)
    torch.testing.assert_close(ss2d_scan_merge_ref(**inp, backend="cpu"), _ref(inp).float(), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("where", ["u", "x_dbl"])
def test_nan_propagates(where):
    inp = _inputs(2, 5, 7, 24, 3)
    inp[where][1, 2, 3] = float("nan")
    ref = _ref(inp)
    for portable in (False, True):
        y = ss2d_scan_merge_cpu(**inp, portable=portable)
        assert torch.isnan(y[1, 2, 3]).all()
        assert torch.equal(torch.isnan(y), torch.isnan(ref))
        assert not torch.isnan(y[0]).any()  # other images untouched
        assert max_rel_err(y[0], ref[0]) <= 1e-4


def test_non_contiguous_and_other_dtypes_are_converted():
    inp = _inputs(2, 6, 5, 16, 2)
    ref = _ref(inp)
    u_t = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    args = dict(inp, u=u_t, dt_projs_bias=inp["dt_projs_bias"].reshape(-1), Ds=inp["Ds"].double())
    assert max_rel_err(ss2d_scan_merge_cpu(**args), ref) <= 1e-4


def test_thread_count_does_not_change_the_result():
    inp = _inputs(3, 8, 6, 40, 4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = ss2d_scan_merge_cpu(**inp)
        torch.set_num_threads(2)
        y2 = ss2d_scan_merge_cpu(**inp)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)  # each thread owns its channels: no reduction-order effects


def test_shape_errors():
    inp = _inputs(1, 4, 4, 16, 2)
    with pytest.raises(ValueError, match="x_dbl"):
        ss2d_scan_merge_cpu(**dict(inp, x_dbl=inp["x_dbl"][..., :3]))
    with pytest.raises(ValueError, match="dt_projs_weight"):
        ss2d_scan_merge_cpu(**dict(inp, dt_projs_weight=inp["dt_projs_weight"][:, :8]))
    with pytest.raises(ValueError, match="Ds"):
        ss2d_scan_merge_cpu(**dict(inp, Ds=inp["Ds"][:8]))


def test_custom_op_registered_with_fake_impl():
    inp = _inputs(2, 3, 5, 24, 3)
    args = (inp["u"], inp["x_dbl"], inp["dt_projs_weight"], inp["dt_projs_bias"], inp["A"].view(4, 24),
            inp["Ds"].view(4, 24), False)
    torch.library.opcheck(torch.ops.mamba_clip.ss2d_cpu_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_applicable_rule():
    u = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        assert fused_applicable(u, 1)
        assert not fused_applicable(u, 2)
        assert not fused_applicable(u.double(), 1)
        assert not fused_applicable(u.half(), 1)
        with scan_backend("cpu"):
            assert fused_applicable(u, 1)
        for forced in ("torch", "ref"):
            with scan_backend(forced):
                assert not fused_applicable(u, 1)
        with double_backward():
            assert not fused_applicable(u, 1)
    with torch.enable_grad():
        assert not fused_applicable(u, 1)
    with torch.inference_mode():
        assert fused_applicable(u, 1)
