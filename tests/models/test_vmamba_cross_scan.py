"""Cross-scan / cross-merge (mamba_clip.ops.cross_scan): directions, adjointness, derivatives."""

from __future__ import annotations

import pytest
import torch

from mamba_clip.ops.cross_scan import (
    cross_merge,
    cross_merge_grouped,
    cross_merge_ref,
    cross_scan,
    cross_scan_grouped,
    cross_scan_ref,
)


def test_directions_by_hand():
    # 2x3 map with values = row-major position; one channel
    x = torch.arange(6.0).view(1, 1, 2, 3)
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 1, 6)
    assert xs[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # row-major
    assert xs[0, 1, 0].tolist() == [0, 3, 1, 4, 2, 5]  # column-major
    assert xs[0, 2, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[0, 3, 0].tolist() == [5, 2, 4, 1, 3, 0]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_reference(channels_last, dtype):
    x = torch.randn(2, 5, 3, 4, dtype=dtype)  # non-square grid catches H/W mix-ups
    if channels_last:
        h, w, c = 5, 3, 4
    else:
        c, h, w = 5, 3, 4
    torch.testing.assert_close(cross_scan(x, channels_last), cross_scan_ref(x, channels_last), rtol=0, atol=0)
    ys = torch.randn(2, 4, c, h * w, dtype=dtype)
    out = cross_merge(ys, h, w, channels_last)
    assert out.is_contiguous()
    assert out.shape == ((2, h, w, c) if channels_last else (2, c, h, w))
    torch.testing.assert_close(out, cross_merge_ref(ys, h, w, channels_last).contiguous())


def test_strided_input():
    base = torch.randn(2, 6, 5, 8)
    x = base[:, ::2, :, 1:7]  # non-contiguous (B, C, H, W)
    torch.testing.assert_close(cross_scan(x), cross_scan_ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_merge_is_adjoint_of_scan(channels_last):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    h, w = (3, 4) if channels_last else (4, 5)
    c = 5 if channels_last else 3
    ys = torch.randn(2, 4, c, h * w, dtype=torch.float64)
    lhs = (cross_scan(x, channels_last) * ys).sum()
    rhs = (x * cross_merge(ys, h, w, channels_last)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_and_gradgradcheck(channels_last):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cross_scan(t, channels_last), (x,))
    assert torch.autograd.gradgradcheck(lambda t: cross_scan(t, channels_last), (x,))
    h, w = (2, 3) if channels_last else (3, 4)
    c = 4 if channels_last else 2
    ys = torch.randn(1, 4, c, h * w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cross_merge(t, h, w, channels_last), (ys,))
    assert torch.autograd.gradgradcheck(lambda t: cross_merge(t, h, w, channels_last), (ys,))


def test_grouped_matches_per_group_scan_and_inverts():
    x = torch.randn(2, 3, 5, 4, 6)
    out = cross_scan_grouped(x)
    expect = torch.stack([cross_scan_ref(x[..., k, :], True)[:, k] for k in range(4)], dim=1)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    torch.testing.assert_close(cross_merge_grouped(out, 3, 5), x, rtol=0, atol=0)
    xb = x.bfloat16()
    torch.testing.assert_close(cross_scan_grouped(xb), expect.bfloat16(), rtol=0, atol=0)
    xd = torch.randn(1, 2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cross_scan_grouped, (xd,))
    assert torch.autograd.gradgradcheck(cross_scan_grouped, (xd,))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="cross_scan"):
        cross_scan(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="cross_merge"):
        cross_merge(torch.randn(1, 4, 2, 11), 3, 4)
    with pytest.raises(ValueError, match="cross_scan_grouped"):
        cross_scan_grouped(torch.randn(1, 2, 2, 3, 5))


def test_cross_scan_and_merge_compile_without_graph_breaks():
    """Under torch.compile the reversed directions are written without a non-contiguous ``out=``
    (dynamo graph-breaks on one, and the broken-up graphs of a whole VMamba then recompiled with
    dynamic shapes that inductor could not handle: the stock trainer's ``--torchcompile`` failed)."""
    import torch._dynamo

    x = torch.randn(2, 5, 7, 3)

    def fn(t):
        return cross_merge(cross_scan(t, channels_last=True) * 2.0, 5, 7, channels_last=True)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert torch.allclose(torch.compile(fn, backend="eager")(x), fn(x))
