"""Where our open_clip model configs live. Plain file lookups: no open_clip, no torch.

Both the registry (which hands the folder to open_clip) and the checkpoint conversion code (which
lists the models it can convert to) read from here, so neither needs the other.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List


def config_dir() -> Path:
    """Folder holding ``model_configs/*.json``: the installed package data, or the checkout's
    ``model_configs/`` when running from a source tree that is not installed."""
    try:
        return Path(str(resources.files("mamba_clip.model_configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "model_configs"


def our_model_names() -> List[str]:
    """open_clip names of the configs shipped in ``model_configs/``."""
    return sorted(p.stem for p in config_dir().glob("*.json"))
