"""Mamba vision towers (VMamba, SiMBA) for open_clip.

``import mamba_clip`` is cheap: it imports neither torch nor open_clip. Submodules load on first use::

    import mamba_clip
    mamba_clip.register()            # timm models + open_clip configs (done automatically on import
                                     # of timm / open_clip by the installed autoload hook)
    from mamba_clip.ops import selective_scan, Mamba
"""

from __future__ import annotations

import importlib

from .version import __version__

__all__ = ["__version__", "register", "ops", "models"]

_LAZY_SUBMODULES = {"ops", "models", "openclip_ext", "eval", "cli"}


def register() -> None:
    """Register our timm models and open_clip model configs / pretrained tags. Idempotent."""
    importlib.import_module("mamba_clip.models")
    from .openclip_ext.registry import register_open_clip

    register_open_clip()


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"mamba_clip.{name}")
    raise AttributeError(f"module 'mamba_clip' has no attribute {name!r}")
