"""Registration of our model configs and pretrained tags with open_clip.

The only module that touches open_clip internals; everything else goes through its public API. The
private hooks, all installed by ``register_open_clip`` and each a thin wrapper that hands anything
not ours back to the original function:

* ``open_clip.pretrained._PRETRAINED[model][tag]``: our tag entries (``vmamba-s`` / ``yfcc15m`` ...).
* ``open_clip.factory.download_pretrained``: a tag entry carrying a ``mamba_clip`` spec is downloaded
  through huggingface_hub and converted once (``pretrained.fetch_converted``).
* ``open_clip.factory.get_pretrained_cfg``: for our models, ``pretrained=<path>`` of a release or a
  converted file gets the same preprocessing (ImageNet mean/std) as the tags.
* ``open_clip.factory.create_model``: our configs get ImageNet mean/std preprocessing by default
  (open_clip reads no preprocessing from a built-in config, only from tags), without overriding any
  mean/std the caller forces (``image_mean=`` / ``--image-mean``).
* ``open_clip.factory.load_checkpoint`` (and ``open_clip.load_checkpoint``): into our models, files are
  read safely (``weights_only=True``), release checkpoints converted on the fly (EMA towers), and a
  checkpoint of another architecture is reported with both model names and the first mismatches.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from .configs import config_dir

_REGISTERED = False
_ORIGINALS: Dict[str, object] = {}


def register_open_clip() -> None:
    """Add ``model_configs/`` to open_clip's config search path, our pretrained tags and the
    checkpoint hooks. Idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    import open_clip

    import mamba_clip.models  # noqa: F401  (timm entry points the configs refer to)

    open_clip.add_model_config(config_dir())
    install_checkpoint_hooks()
    register_release_tags()
    _REGISTERED = True


# ------------------------------------------------------------------------------- pretrained tags
def clean_tag(tag: str) -> str:
    """open_clip's tag normalisation (``yfcc15m-online`` -> ``yfcc15m_online``)."""
    from open_clip import pretrained as oc_pretrained

    fn = getattr(oc_pretrained, "_clean_tag", None)
    return fn(tag) if fn else tag.lower().replace("-", "_")


def register_pretrained(model: str, tag: str, cfg: Dict) -> None:
    """Add (or replace) the pretrained entry ``model``/``tag`` in open_clip's table."""
    from open_clip import pretrained as oc_pretrained

    oc_pretrained._PRETRAINED.setdefault(model, {})[clean_tag(tag)] = cfg


def unregister_pretrained(model: str, tag: str) -> None:
    from open_clip import pretrained as oc_pretrained

    oc_pretrained._PRETRAINED.get(model, {}).pop(clean_tag(tag), None)


def _quick_gelu(model: str) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(model) or {}
    return bool(cfg.get("quick_gelu", False))


def register_release_tags() -> None:
    """``yfcc15m`` / ``yfcc15m_online`` for each released model whose config is installed."""
    import open_clip

    from .pretrained import release_cfgs

    known = set(open_clip.list_models())
    models = [m for m in release_cfgs() if m in known]
    for model, tags in release_cfgs({m: _quick_gelu(m) for m in models}).items():
        if model in known:
            for tag, cfg in tags.items():
                register_pretrained(model, tag, cfg)


# ------------------------------------------------------------------------------------ model names
def _our_config_names() -> Dict[str, str]:
    """timm model name -> open_clip config name, for our configs."""
    import json

    out = {}
    for p in sorted(config_dir().glob("*.json")):
        with open(p) as f:
            timm_name = json.load(f).get("vision_cfg", {}).get("timm_model_name")
        if timm_name:
            out.setdefault(timm_name, p.stem)
    return out


def our_model_name(model) -> Optional[str]:
    """The open_clip config name of a model whose image tower is one of ours, else None."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not type(trunk).__module__.startswith("mamba_clip."):
        return None
    cfg = getattr(trunk, "pretrained_cfg", None) or getattr(trunk, "default_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    names = _our_config_names()
    if arch in names:
        return names[arch]
    return arch or type(trunk).__name__


def is_our_config(model_name: str) -> bool:
    return (config_dir() / f"{model_name}.json").is_file()


# ----------------------------------------------------------------------------------------- hooks
def _download_pretrained(cfg, prefer_hf_hub=True, cache_dir=None):
    spec = cfg.get("mamba_clip") if isinstance(cfg, dict) else None
    if spec:
        from .pretrained import fetch_converted

        return fetch_converted(spec, cache_dir=cache_dir)
    return _ORIGINALS["download_pretrained"](cfg, prefer_hf_hub=prefer_hf_hub, cache_dir=cache_dir)


def _get_pretrained_cfg(model, tag):
    cfg = _ORIGINALS["get_pretrained_cfg"](model, tag)
    if cfg or not isinstance(tag, (str, os.PathLike)) or not is_our_config(model) or not os.path.isfile(tag):
        return cfg
    from .checkpoints import is_mamba_clip_file
    from .pretrained import PREPROCESS

    if is_mamba_clip_file(os.fspath(tag)):
        # open_clip's download_pretrained returns cfg['file'] as is
        return {"file": os.fspath(tag), "quick_gelu": _quick_gelu(model), **PREPROCESS}
    return cfg


def _load_checkpoint(model, checkpoint_path, strict=True, weights_only=True, device="cpu"):
    name = our_model_name(model)
    if name is None:
        return _ORIGINALS["load_checkpoint"](
            model, checkpoint_path, strict=strict, weights_only=weights_only, device=device
        )
    # weights_only is always True here: see checkpoints.load_checkpoint_file
    from .checkpoints import load_checkpoint_file, to_open_clip

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ckpt = load_checkpoint_file(os.fspath(checkpoint_path))
    sd = to_open_clip(ckpt, towers="ema", target=name, expected=expected if strict else None)
    if "logit_scale" in sd and "logit_scale" in expected:
        sd["logit_scale"] = sd["logit_scale"].reshape(expected["logit_scale"])
    return model.load_state_dict(sd, strict=strict)


def _create_model(model_name, *args, force_preprocess_cfg=None, **kwargs):
    if isinstance(model_name, str) and model_name.replace("/", "-") in _our_config_names().values():
        from .pretrained import PREPROCESS

        force_preprocess_cfg = {**PREPROCESS, **(force_preprocess_cfg or {})}
    return _ORIGINALS["create_model"](model_name, *args, force_preprocess_cfg=force_preprocess_cfg, **kwargs)


def _mark(fn):
    fn._mamba_clip_hook = True
    return fn


def install_checkpoint_hooks() -> None:
    """Wrap open_clip's download / pretrained-cfg / checkpoint-loading functions. Idempotent."""
    import open_clip
    from open_clip import factory

    for name, hook in (
        ("download_pretrained", _download_pretrained),
        ("get_pretrained_cfg", _get_pretrained_cfg),
        ("load_checkpoint", _load_checkpoint),
        ("create_model", _create_model),
    ):
        current = getattr(factory, name)
        if getattr(current, "_mamba_clip_hook", False):
            continue
        _ORIGINALS[name] = current
        setattr(factory, name, _mark(hook))
        if getattr(open_clip, name, None) is current:
            setattr(open_clip, name, hook)
