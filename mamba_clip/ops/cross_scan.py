"""Four-direction cross-scan and cross-merge of VMamba's SS2D (Liu et al. 2024, "VMamba: Visual State
Space Model", Sec. 3 "2D-Selective-Scan").

A feature map of ``H x W`` positions is unrolled into four sequences of length ``L = H * W``:

* ``k = 0``: row-major order (``l = h * W + w``);
* ``k = 1``: column-major order (``l = w * H + h``);
* ``k = 2``: ``k = 0`` reversed;
* ``k = 3``: ``k = 1`` reversed.

:func:`cross_scan` maps ``(B, C, H, W)`` to ``(B, 4, C, L)``; :func:`cross_merge` is its adjoint: it
maps the four scanned outputs ``(B, 4, C, L)`` back to the grid and sums them. Both accept / return
either channels-first ``(B, C, H, W)`` or channels-last ``(B, H, W, C)`` maps (``channels_last``),
so a channels-last network pays for one layout change inside the copy it has to make anyway.

Both are linear maps written as autograd Functions whose backward is the other map, so first, second
and higher derivatives all work (Hessian-vector products differentiate through them).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "cross_merge",
    "cross_merge_grouped",
    "cross_merge_ref",
    "cross_scan",
    "cross_scan_grouped",
    "cross_scan_ref",
]


def _as_bchw(x: Tensor, channels_last: bool) -> Tensor:
    """(B, C, H, W) view of a channels-first or channels-last map (no copy)."""
    return x.permute(0, 3, 1, 2) if channels_last else x


def _check_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a 4-d feature map (B, C, H, W) or (B, H, W, C), got {shape}")


def _reversed(t: Tensor, h: int, w: int) -> Tensor:
    """``t[..., ::-1]`` for a last dim of length ``h * w``, as a new tensor. Reversing a sequence is
    flipping both dims of any 2-d factorisation of it; torch's 2-d flip is the fastest reversal."""
    lead = t.shape[:-1]
    return t.reshape(*lead, h, w).flip(-2, -1).view(*lead, h * w)


def _flip_into(src: Tensor, dst: Tensor) -> None:
    """dst <- src flipped in its last two dims (any strides, no overlap). Eagerly ``flip.out`` (no
    temporary); under torch.compile a flip + copy, since dynamo graph-breaks on a non-contiguous
    ``out=`` and the broken-up graphs then recompile with dynamic shapes."""
    if torch.compiler.is_compiling():
        dst.copy_(src.flip(-2, -1))
    else:
        torch.ops.aten.flip.out(src, [-2, -1], out=dst)


def _scan_fwd(x: Tensor) -> Tensor:
    """x: (B, C, H, W) with any strides -> (B, 4, C, H*W) contiguous."""
    b, c, h, w = x.shape
    n = h * w
    xs = x.new_empty((b, 4, c, n))
    xs[:, 0].view(b, c, h, w).copy_(x)
    # per-channel H<->W transpose of the fresh row-major copy (cache-friendlier than re-reading x)
    xs[:, 1].view(b, c, w, h).copy_(xs[:, 0].view(b, c, h, w).transpose(2, 3))
    # reversed directions written in place (flip.out skips flip's temporary)
    _flip_into(xs[:, 0:2].view(b, 2, c, h, w), xs[:, 2:4].view(b, 2, c, h, w))
    return xs


def _merge_fwd(ys: Tensor, h: int, w: int, channels_last: bool) -> Tensor:
    """ys: (B, 4, C, H*W) -> (B, H, W, C) if channels_last else (B, C, H, W), both contiguous."""
    b, _, c, _ = ys.shape
    s = _reversed(ys[:, 2:4], h, w)  # (B, 2, C, L) fresh
    s += ys[:, 0:2]  # rows, cols
    rows = s[:, 0].view(b, c, h, w)
    rows += s[:, 1].view(b, c, w, h).transpose(2, 3)
    if channels_last:
        return rows.permute(0, 2, 3, 1).contiguous()
    return rows.contiguous()


class _CrossScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, channels_last: bool) -> Tensor:
        hw: Tuple[int, int] = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
        ctx.hw = hw
        ctx.channels_last = channels_last
        return _scan_fwd(_as_bchw(x, channels_last))

    @staticmethod
    def backward(ctx, g: Tensor):
        h, w = ctx.hw
        return _CrossMerge.apply(g, h, w, ctx.channels_last), None


class _CrossMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: Tensor, h: int, w: int, channels_last: bool) -> Tensor:
        ctx.channels_last = channels_last
        return _merge_fwd(ys, h, w, channels_last)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _CrossScan.apply(g, ctx.channels_last), None, None, None


def cross_scan(x: Tensor, channels_last: bool = False) -> Tensor:
    """Unroll a feature map along the four VMamba scan directions.

    Args:
        x: ``(B, C, H, W)``, or ``(B, H, W, C)`` when ``channels_last``.
        channels_last: layout of ``x``.
    Returns:
        ``(B, 4, C, H * W)`` contiguous; ``[:, k]`` is direction ``k`` (see module docstring).
    """
    _check_map(x, "cross_scan: x")
    return _CrossScan.apply(x, bool(channels_last))


def cross_merge(ys: Tensor, h: int, w: int, channels_last: bool = False) -> Tensor:
    """Sum four scanned sequences back onto the ``h x w`` grid (adjoint of :func:`cross_scan`).

    Args:
        ys: ``(B, 4, C, h * w)``.
        h, w: grid size.
        channels_last: return ``(B, h, w, C)`` instead of ``(B, C, h, w)``.
    Returns:
        the merged map, contiguous.
    """
    if not isinstance(ys, Tensor) or ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != h * w:
        shape = tuple(ys.shape) if isinstance(ys, Tensor) else type(ys).__name__
        raise ValueError(f"cross_merge: ys must have shape (B, 4, C, h*w={h * w}), got {shape}")
    return _CrossMerge.apply(ys, int(h), int(w), bool(channels_last))


def _dir_view(t: Tensor, k: int, h: int, w: int) -> Tensor:
    """(B, C, L) sequence of direction ``k`` viewed as the (B, C, h, w)-shaped map it unrolls, so that
    ``map.copy_(_dir_view(seq, k))`` undoes the scan (negative steps are emulated by the caller)."""
    b, c, _ = t.shape
    return t.view(b, c, h, w) if k % 2 == 0 else t.view(b, c, w, h).transpose(2, 3)


def _copy_dir(dst: Tensor, src: Tensor, reverse: bool) -> None:
    """dst <- src, or dst <- src reversed in both of its last two dims (= reversed unrolling)."""
    if reverse:
        _flip_into(src, dst)
    else:
        dst.copy_(src)


def _scan_grouped_fwd(x: Tensor) -> Tensor:
    """x: (B, 4, C, H, W) any strides -> (B, 4, C, H*W); group k unrolled along direction k."""
    b, _, c, h, w = x.shape
    xs = x.new_empty((b, 4, c, h * w))
    for k in range(4):
        _copy_dir(_dir_view(xs[:, k], k, h, w), x[:, k], reverse=k >= 2)
    return xs


def _merge_grouped_fwd(ys: Tensor, h: int, w: int) -> Tensor:
    """ys: (B, 4, C, H*W) -> (B, H, W, 4, C) contiguous; group k put back from direction k."""
    b, _, c, _ = ys.shape
    out = ys.new_empty((b, h, w, 4, c))
    o = out.permute(0, 3, 4, 1, 2)  # (B, 4, C, H, W) view
    for k in range(4):
        _copy_dir(o[:, k], _dir_view(ys[:, k], k, h, w), reverse=k >= 2)
    return out


class _CrossScanGrouped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.hw = (x.shape[1], x.shape[2])
        return _scan_grouped_fwd(x.permute(0, 3, 4, 1, 2))

    @staticmethod
    def backward(ctx, g: Tensor):
        return _CrossMergeGrouped.apply(g, *ctx.hw)


class _CrossMergeGrouped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: Tensor, h: int, w: int) -> Tensor:
        return _merge_grouped_fwd(ys, h, w)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _CrossScanGrouped.apply(g), None, None


def cross_scan_grouped(x: Tensor) -> Tensor:
    """Unroll channel group ``k`` of a channels-last map along direction ``k`` only.

    Used for per-direction projections computed once on the un-scanned map (one GEMM instead of
    four on the 4x larger scanned tensor).

    Args:
        x: ``(B, H, W, 4, C)``.
    Returns:
        ``(B, 4, C, H * W)`` contiguous with ``out[:, k] == cross_scan(x[..., k, :], True)[:, k]``.
    """
    if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[3] != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"cross_scan_grouped: x must have shape (B, H, W, 4, C), got {shape}")
    return _CrossScanGrouped.apply(x)


def cross_merge_grouped(ys: Tensor, h: int, w: int) -> Tensor:
    """Adjoint of :func:`cross_scan_grouped`: ``(B, 4, C, h*w)`` -> ``(B, h, w, 4, C)`` (no summing)."""
    if not isinstance(ys, Tensor) or ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != h * w:
        shape = tuple(ys.shape) if isinstance(ys, Tensor) else type(ys).__name__
        raise ValueError(f"cross_merge_grouped: ys must have shape (B, 4, C, h*w={h * w}), got {shape}")
    return _CrossMergeGrouped.apply(ys, int(h), int(w))


def cross_scan_ref(x: Tensor, channels_last: bool = False) -> Tensor:
    """Plain-ops oracle of :func:`cross_scan` (same contract)."""
    x = _as_bchw(x, channels_last)
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge_ref(ys: Tensor, h: int, w: int, channels_last: bool = False) -> Tensor:
    """Plain-ops oracle of :func:`cross_merge` (same contract)."""
    b, _, c, _ = ys.shape
    rows = ys[:, 0] + ys[:, 2].flip(-1)
    cols = ys[:, 1] + ys[:, 3].flip(-1)
    y = rows.view(b, c, h, w) + cols.view(b, c, w, h).transpose(2, 3)
    return y.permute(0, 2, 3, 1) if channels_last else y
