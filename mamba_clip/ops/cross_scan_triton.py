"""Fused four-direction cross-scan and cross-merge of VMamba's SS2D in Triton (Liu et al. 2024,
"VMamba: Visual State Space Model", Sec. 3 "2D-Selective-Scan").

Same contract as :func:`mamba_clip.ops.cross_scan.cross_scan` / :func:`~mamba_clip.ops.cross_scan.cross_merge`
(direction order: row-major, column-major, then both reversed). The unfused versions build the
column-major and reversed copies from the row-major one (several passes over memory); here one kernel
reads each element of the map once and writes its four copies (scan), and one kernel reads the four
scanned sequences once, sums them in float32 and writes the map once (merge), in either layout
(channels-first or channels-last, any input strides).

Both are ``torch.library`` custom ops (``mamba_clip::cross_scan_triton`` / ``cross_merge_triton``)
whose backward is the other op (they are adjoint linear maps), so any order of derivative works and
``torch.compile`` keeps them without graph breaks. CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` (tests). :func:`use_triton` is the rule SS2D uses to pick them.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .scan_triton import check_device, kernels, triton_next_pow2
from .triton_selfcheck import TritonSelfCheckError, check_once, compare, usable_or_warn

__all__ = ["cross_merge_triton", "cross_scan_check_error", "cross_scan_triton", "use_triton"]

_WHAT = "cross_scan (triton)"


def _blocks(h: int, w: int, c: int) -> Tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C): 16 x 16 positions x 16 channels at most (runs of 16 contiguous
    elements along the channels of a channels-last map and along both scan orders)."""
    return min(16, triton_next_pow2(h)), min(16, triton_next_pow2(w)), min(16, triton_next_pow2(c))


def _grid(b: int, h: int, w: int, c: int, bh: int, bw: int, bc: int) -> Tuple[int, int, int]:
    return b, -(-h // bh) * -(-w // bw), -(-c // bc)


def _bchw(x: Tensor, channels_last: bool) -> Tensor:
    return x.permute(0, 3, 1, 2) if channels_last else x


@torch.library.custom_op("mamba_clip::cross_scan_triton", mutates_args=())
def _cross_scan_op(x: Tensor, channels_last: bool) -> Tensor:
    interpret = check_device(x, _WHAT)
    v = _bchw(x, channels_last)
    b, c, h, w = v.shape
    out = x.new_empty((b, 4, c, h * w))
    if out.numel() == 0:
        return out
    bh, bw, bc = _blocks(h, w, c)
    kernels(interpret).cross_scan_kernel[_grid(b, h, w, c, bh, bw, bc)](
        v, out, c, h, w, *v.stride(), BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc, num_warps=4)
    return out


@_cross_scan_op.register_fake
def _(x, channels_last):
    b, c, h, w = _bchw(x, channels_last).shape
    return x.new_empty((b, 4, c, h * w))


@torch.library.custom_op("mamba_clip::cross_merge_triton", mutates_args=())
def _cross_merge_op(ys: Tensor, h: int, w: int, channels_last: bool) -> Tensor:
    interpret = check_device(ys, _WHAT)
    b, _, c, _ = ys.shape
    ys = ys.contiguous()
    out = ys.new_empty((b, h, w, c) if channels_last else (b, c, h, w))
    if out.numel() == 0:
        return out
    v = _bchw(out, channels_last)
    bh, bw, bc = _blocks(h, w, c)
    kernels(interpret).cross_merge_kernel[_grid(b, h, w, c, bh, bw, bc)](
        ys, v, c, h, w, *v.stride(), BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc, num_warps=4)
    return out


@_cross_merge_op.register_fake
def _(ys, h, w, channels_last):
    b, _, c, _ = ys.shape
    return ys.new_empty((b, h, w, c) if channels_last else (b, c, h, w))


def _scan_setup(ctx, inputs, output):
    x, channels_last = inputs
    ctx.hw = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    ctx.channels_last = channels_last


def _scan_backward(ctx, g):
    return _cross_merge_op(g, ctx.hw[0], ctx.hw[1], ctx.channels_last), None


def _merge_setup(ctx, inputs, output):
    ctx.channels_last = inputs[3]


def _merge_backward(ctx, g):
    return _cross_scan_op(g, ctx.channels_last), None, None, None


_cross_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)
_cross_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup)


def cross_scan_triton(x: Tensor, channels_last: bool = False) -> Tensor:
    """Fused :func:`~mamba_clip.ops.cross_scan.cross_scan`: ``(B, C, H, W)`` (or ``(B, H, W, C)`` when
    ``channels_last``) -> ``(B, 4, C, H * W)`` contiguous."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"cross_scan: x: expected a 4-d feature map (B, C, H, W) or (B, H, W, C), got {shape}")
    _raise_if_unchecked(x)
    return _cross_scan_op(x, bool(channels_last))


def cross_merge_triton(ys: Tensor, h: int, w: int, channels_last: bool = False) -> Tensor:
    """Fused :func:`~mamba_clip.ops.cross_scan.cross_merge`: ``(B, 4, C, h * w)`` -> the summed map,
    ``(B, C, h, w)`` or ``(B, h, w, C)``, contiguous."""
    if not isinstance(ys, Tensor) or ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != h * w:
        shape = tuple(ys.shape) if isinstance(ys, Tensor) else type(ys).__name__
        raise ValueError(f"cross_merge: ys must have shape (B, 4, C, h*w={h * w}), got {shape}")
    _raise_if_unchecked(ys)
    return _cross_merge_op(ys, int(h), int(w), bool(channels_last))


def _raise_if_unchecked(t: Tensor) -> None:
    """Explicit calls raise with the reason when the kernels failed their first-use self-check."""
    check_device(t, _WHAT)
    err = cross_scan_check_error(t.device, t.dtype)
    if err:
        raise TritonSelfCheckError(f"{_WHAT} failed its self-check on {t.device} / {t.dtype}: {err}; "
                                   "use mamba_clip.ops.cross_scan instead")


def use_triton(u: Tensor) -> bool:
    """Whether SS2D should use these kernels for scan input ``u``: exactly when its selective scan
    resolves to the "triton" backend (CUDA without mamba-ssm's kernel, or ``scan_backend("triton")``)
    and the fused cross-scan passed its first-use self-check (else a warning, once, and the torch path)."""
    from .selective_scan import resolve_backend

    if resolve_backend("auto", u) != "triton":
        return False
    return usable_or_warn("cross_scan", cross_scan_check_error(u.device, u.dtype), u.device, u.dtype)


def cross_scan_check_error(device: torch.device, dtype: torch.dtype) -> str:
    """Why the fused cross-scan/merge is unusable on ``device`` / ``dtype`` ("" when it passed)."""
    from . import cross_scan as ref

    def check() -> str:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 4, 5, generator=g).to(device=device, dtype=dtype).requires_grad_()
        for channels_last in (False, True):
            xin = x.permute(0, 2, 3, 1) if channels_last else x
            got = _cross_scan_op(xin, channels_last)
            want = ref.cross_scan_ref(xin, channels_last)
            reason = compare(f"cross_scan (channels_last={channels_last})", got, want, dtype)
            if reason:
                return reason
            merged = _cross_merge_op(got, 4, 5, channels_last)
            want_m = ref.cross_merge_ref(want, 4, 5, channels_last)
            reason = compare(f"cross_merge (channels_last={channels_last})", merged, want_m, dtype)
            if reason:
                return reason
            (dx,) = torch.autograd.grad(merged.float().square().sum(), x)
            (dx0,) = torch.autograd.grad(want_m.float().square().sum(), x)
            reason = compare(f"cross_scan+merge backward (channels_last={channels_last})", dx, dx0, dtype)
            if reason:
                return reason
        return ""

    return check_once(("cross_scan", str(device), str(dtype)), check)
