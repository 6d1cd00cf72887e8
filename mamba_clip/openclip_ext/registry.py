"""Registration of our model configs (and pretrained tags) with open_clip.

The only module that touches open_clip internals; everything else goes through its public API.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_REGISTERED = False


def config_dir() -> Path:
    """Folder holding the installed ``model_configs/*.json``."""
    return Path(str(resources.files("mamba_clip.model_configs")))


def register_open_clip() -> None:
    """Add ``model_configs/`` to open_clip's config search path. Idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    import open_clip

    import mamba_clip.models  # noqa: F401  (timm entry points the configs refer to)

    open_clip.add_model_config(config_dir())
    _REGISTERED = True
