"""Helpers the VMamba and SiMBA model files share: input checks that survive ``torch.fx`` tracing,
drop-path schedules that build on the meta device, and timm's factory ``device`` / ``dtype`` kwargs."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import register_notrace_function
from torch import Tensor

__all__ = ["check_image", "device_dtype", "drop_path_rates", "is_proxy"]


def is_proxy(x: Any) -> bool:
    """True for a ``torch.fx`` proxy (symbolic tracing), whose shape and device are not concrete."""
    return isinstance(x, torch.fx.Proxy)


@register_notrace_function
def check_image(x: Tensor, who: str, stride: int = 32) -> Tensor:
    """Return ``x`` after checking it is a ``(B, C, H, W)`` batch with H, W positive multiples of ``stride``.

    Raises ValueError naming ``who``. Registered with timm's fx tracer as a leaf function, so a traced
    graph (``features_only=True, feature_cls="fx"``) keeps the check and runs it on real tensors; a
    plain ``torch.fx.symbolic_trace`` (no leaf registration) skips it.
    """
    if is_proxy(x):
        return x
    if x.dim() != 4:
        raise ValueError(f"{who}: expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise ValueError(f"{who}: image height and width must be positive multiples of {stride} "
                         f"(divisible by {stride}, e.g. 224, 256, 384), got {h}x{w}")
    return x


def drop_path_rates(rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``rate`` over all blocks; one list per
    stage. Plain Python, so it also works inside ``with torch.device("meta")``."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out


def device_dtype(module: nn.Module, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None
                 ) -> Dict[str, Any]:
    """Factory kwargs for a new sub-module: explicit values, else those of ``module``'s first parameter."""
    p = next(module.parameters(), None)
    if p is not None:
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
    return {"device": device, "dtype": dtype}
