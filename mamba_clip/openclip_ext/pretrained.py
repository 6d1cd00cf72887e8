"""Pretrained tags for the six released CLIP-Mamba models (Hugging Face ``weiquan/mamba-clip``).

``open_clip.create_model_and_transforms("vmamba-s", pretrained="yfcc15m")`` downloads the release file
through ``huggingface_hub`` (its cache, so offline use and ``HF_HUB_OFFLINE=1`` work once it is there),
converts it once to an open_clip safetensors file and caches that. Tags (trained on YFCC15M, report
Table 1):

* ``yfcc15m``: EMA towers (the report scored its 25 downstream data sets with them),
* ``yfcc15m-online`` (also ``yfcc15m_online``): online towers (the report's ImageNet column).

Preprocessing follows the reference evaluation (``Resize(224)`` bilinear on the short side,
``CenterCrop(224)``, ImageNet mean/std).

Converted files go to ``$MAMBA_CLIP_CACHE``, else ``<cache_dir>/mamba_clip`` when open_clip gets a
``cache_dir``, else ``~/.cache/mamba_clip`` (``$XDG_CACHE_HOME`` honoured), named after the model, the
towers and a hash of the source file, and are written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Optional

HF_REPO = "weiquan/mamba-clip"
RELEASE_FILES = {
    "vmamba-t220": "VMamba_T220_clip.pt",
    "vmamba-s": "VMamba_S_clip.pt",
    "vmamba-b": "VMamba_B_clip.pt",
    "simba-s": "Simba_S_clip.pt",
    "simba-b": "Simba_B_clip.pt",
    "simba-l": "Simba_L_clip.pt",
}
#: open_clip tag (as stored: open_clip normalises "-" to "_") -> towers
RELEASE_TAGS = {"yfcc15m": "ema", "yfcc15m_online": "online"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS = {
    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "resize_mode": "shortest",
}

_log = logging.getLogger(__name__)


def pretrained_cfg(
    model: str, towers: str, *, filename: str, repo: str = HF_REPO, quick_gelu: bool = False
) -> Dict:
    """An open_clip pretrained-config entry. The ``mamba_clip`` key is what our download hook acts
    on; ``hf_hub`` documents the source (open_clip's own downloader never sees this entry)."""
    if towers not in ("ema", "online"):  # checkpoints.TOWERS (not imported here: keeps start-up light)
        raise ValueError(f"towers={towers!r} is not one of ('ema', 'online')")
    return {
        "url": "",
        "hf_hub": f"{repo}/{filename}",
        "quick_gelu": quick_gelu,
        **PREPROCESS,
        "mamba_clip": {"model": model, "towers": towers, "repo": repo, "filename": filename},
    }


def release_cfgs(quick_gelu: Optional[Dict[str, bool]] = None) -> Dict[str, Dict[str, Dict]]:
    """``{model: {tag: cfg}}`` for the six released models."""
    quick_gelu = quick_gelu or {}
    return {
        model: {
            tag: pretrained_cfg(model, towers, filename=fn, quick_gelu=quick_gelu.get(model, False))
            for tag, towers in RELEASE_TAGS.items()
        }
        for model, fn in RELEASE_FILES.items()
    }


def converted_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """Where converted safetensors files live (see module docstring)."""
    if os.environ.get("MAMBA_CLIP_CACHE"):
        return Path(os.environ["MAMBA_CLIP_CACHE"])
    if cache_dir:
        return Path(cache_dir) / "mamba_clip"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mamba_clip"


def _source_id(path: str) -> str:
    """Identity of a downloaded file: the Hub blob path (content-addressed) plus size and mtime."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def download_release(repo: str, filename: str, cache_dir: Optional[str] = None) -> str:
    """The original file through ``huggingface_hub.hf_hub_download`` (resolved at call time)."""
    import huggingface_hub

    try:
        return huggingface_hub.hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir)
    except Exception as exc:
        raise RuntimeError(
            f"could not get {filename} from the Hugging Face Hub repo {repo} ({type(exc).__name__}: {exc}). "
            f"Offline, pass the downloaded file instead: pretrained='/path/to/{filename}'."
        ) from exc


def fetch_converted(spec: Dict, cache_dir: Optional[str] = None) -> str:
    """Download (Hub cache) and convert once; returns the converted safetensors path.

    ``spec``: ``{"model", "towers", "repo", "filename"}`` (the ``mamba_clip`` entry of a tag config).
    """
    from .checkpoints import convert_file

    model, towers = spec["model"], spec["towers"]
    src = download_release(spec["repo"], spec["filename"], cache_dir=cache_dir)
    dst = converted_cache_dir(cache_dir) / f"{model}-{towers}-{_source_id(src)}.safetensors"
    if dst.is_file():
        return str(dst)
    _log.info("converting %s (%s towers) to %s", src, towers, dst)
    convert_file(src, str(dst), towers=towers, model_name=model)
    return str(dst)
