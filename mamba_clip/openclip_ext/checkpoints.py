"""The released CLIP-Mamba checkpoints <-> open_clip state dicts.

The release files (Hugging Face ``weiquan/mamba-clip``) are training checkpoints of the SLIP-style
reference code base (raytrun/mamba-clip ``models.CLIP``, saved by its ``main.py``)::

    {'epoch', 'state_dict', 'optimizer', 'scaler', 'best_acc', 'args'}   # args: argparse.Namespace

``state_dict`` keys carry the DDP ``module.`` prefix and hold two copies of each tower:

=========================  ===========================  ==================================
online                     EMA                          open_clip (``CLIP`` + ``TimmModel``)
=========================  ===========================  ==================================
``visual.<k>``             ``visual_e.<k>``             ``visual.trunk.<k>``
``image_projection`` (W,E) ``image_projection_e``       ``visual.head.proj.weight`` (E,W) = P.T
``transformer.<k>``        ``transformer_e.<k>``        ``transformer.<k>``
``token_embedding.weight`` ``token_embedding_e.weight`` ``token_embedding.weight``
``positional_embedding``   ``positional_embedding_e``   ``positional_embedding``
``ln_final.{weight,bias}`` ``ln_final_e.*``             ``ln_final.*``
``text_projection`` (D,E)  ``text_projection_e``        ``text_projection`` (D,E), same orientation
``logit_scale``            (none: shared)               ``logit_scale``
=========================  ===========================  ==================================

The EMA towers are taken whole, buffers included (BatchNorm statistics of ``visual_e``), exactly as the
reference ``eval_zeroshot.py`` runs them (``encode_image(..., ema=True)``).

Safety: files are read with ``torch.load(weights_only=True)``; the only extra class allowed is
``argparse.Namespace`` (the ``args`` entry), through the ``torch.serialization.safe_globals`` context, so
nothing else is ever unpickled. Zip-format files are memory-mapped (``mmap=True``): the optimizer state
(two thirds of a release file) is never read, so converting needs about the size of the kept tower in RAM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .configs import our_model_names

TOWERS = ("ema", "online")
FORMAT_VERSION = "1"

#: our open_clip model name -> the reference code base's model function (``args.model``)
ORIGINAL_NAMES = {
    "vmamba-t220": "CLIP_VMamba_T220",
    "vmamba-s": "CLIP_VMamba_S",
    "vmamba-b": "CLIP_VMamba_B",
    "simba-s": "CLIP_Simba_S",
    "simba-b": "CLIP_Simba_B",
    "simba-l": "CLIP_Simba_L",
}
OPEN_CLIP_NAMES = {v: k for k, v in ORIGINAL_NAMES.items()}

# text-side keys shared by both layouts (one copy per tower); ``logit_scale`` has no EMA copy
_TEXT_PARAMS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                "text_projection")
_PROJ_KEY = "visual.head.proj.weight"
_META_PREFIX = "mamba_clip."


# ----------------------------------------------------------------------------------------- errors
class CheckpointError(ValueError):
    """Base class: the file cannot be used as a CLIP-Mamba checkpoint."""


class NotACheckpointError(CheckpointError):
    """The file is readable but holds no CLIP state dict."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or damaged."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs a class other than ``argparse.Namespace`` to unpickle; we refuse."""


class TowerMissingError(CheckpointError):
    """The requested tower copy (EMA or online) is absent or incomplete."""


class ModelMismatchError(CheckpointError):
    """The checkpoint belongs to another architecture than the target model."""


class NonFiniteCheckpointError(CheckpointError):
    """A weight holds NaN or infinity (a diverged or damaged run): every number computed from it would
    be meaningless."""


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str = "state dict") -> None:
    """Raise :class:`NonFiniteCheckpointError` naming the first floating-point entry with a NaN or an
    infinity, and how many such entries there are. Entries named ``*mask`` may hold ``-inf`` (additive
    attention masks) but no NaN."""
    bad = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
            continue
        if key.endswith("mask"):
            ok = not bool(torch.isnan(value).any())
        else:
            ok = bool(torch.isfinite(value).all())
        if not ok:
            bad.append(key)
    if bad:
        first = state_dict[bad[0]]
        n_nan = int(torch.isnan(first).sum())
        n_inf = int(torch.isinf(first).sum())
        raise NonFiniteCheckpointError(
            f"{path!r} holds non-finite weights: {bad[0]!r} has {n_nan} NaN and {n_inf} inf of {first.numel()} "
            f"values ({len(bad)} of {len(state_dict)} entries affected); a diverged or damaged run, pick an "
            "earlier checkpoint"
        )


# ------------------------------------------------------------------------------------ file access
@dataclass
class LoadedCheckpoint:
    """A state dict read from disk. ``layout`` is ``"original"`` (release / reference code base) or
    ``"open_clip"``; ``meta`` carries ``source`` (original model function), ``model``, ``towers``,
    ``epoch`` where known."""

    path: str
    state_dict: Dict[str, torch.Tensor]
    layout: str
    meta: Dict[str, str] = field(default_factory=dict)


def sniff_file_format(path: str) -> str:
    """``"zip"`` (torch >= 1.6 ``torch.save``), ``"legacy"`` (older pickle-based ``torch.save``),
    ``"safetensors"`` or ``"unknown"``, from the first bytes only."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 10 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= os.path.getsize(path) - 8:
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "legacy"
    return "unknown"


def _corrupt(path: str, exc: BaseException) -> CorruptCheckpointError:
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"checkpoint {path!r} ({size:,} bytes) is truncated or corrupt and cannot be read: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
        "Download it again (a release file is 1.4-2.4 GB)."
    )


def _torch_load(path: str, fmt: str, mmap: bool):
    """``torch.load`` with ``weights_only=True``, allowing ``argparse.Namespace`` and nothing else."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and fmt == "zip")
    except Exception as exc:  # noqa: BLE001 - classified below
        msg = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if found:
            raise UnsafeCheckpointError(
                f"refusing to load {path!r}: unpickling it needs {found.group(1)}. mamba_clip reads "
                "checkpoints with torch.load(weights_only=True) and allows only argparse.Namespace besides "
                "tensors and plain containers, so a file cannot run code on load."
            ) from exc
        if fmt == "legacy" and "Weights only load failed" in msg:
            raise NotACheckpointError(f"{path!r} is a pickle file but not a torch checkpoint") from exc
        raise _corrupt(path, exc) from exc


def _strip_module(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``"original"`` for the reference code base's keys, ``"open_clip"`` for open_clip's, else None.
    Expects keys without the ``module.`` prefix."""
    keys = state_dict.keys()
    if "image_projection" in keys or "image_projection_e" in keys or any(
        k.startswith("visual_e.") for k in keys
    ):
        return "original"
    if _PROJ_KEY in keys or any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    return None


def _args_meta(args) -> Dict[str, str]:
    meta = {}
    model = getattr(args, "model", None)
    if isinstance(model, str):
        meta["source"] = model
        if model in OPEN_CLIP_NAMES:
            meta["model"] = OPEN_CLIP_NAMES[model]
    return meta


def load_checkpoint_file(path: str, *, mmap: bool = True) -> LoadedCheckpoint:
    """Read an original release checkpoint, a converted safetensors file or an open_clip ``.pt``.

    Raises FileNotFoundError, NotACheckpointError, CorruptCheckpointError, UnsafeCheckpointError,
    NonFiniteCheckpointError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    fmt = sniff_file_format(path)
    if fmt == "unknown":
        raise NotACheckpointError(
            f"{path!r} is not a checkpoint: expected a torch.save file (zip or legacy pickle) or "
            "safetensors, found neither (first bytes do not match)."
        )
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                file_meta = dict(f.metadata() or {})
            sd = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise _corrupt(path, exc) from exc
        meta = {k[len(_META_PREFIX):]: v for k, v in file_meta.items() if k.startswith(_META_PREFIX)}
        obj, sd = None, _strip_module(sd)
    else:
        obj = _torch_load(path, fmt, mmap)
        meta = {}
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            sd = obj["state_dict"]
            meta.update(_args_meta(obj.get("args")))
            if isinstance(obj.get("epoch"), int):
                meta["epoch"] = str(obj["epoch"])
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd = obj  # a bare state dict
        else:
            found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise NotACheckpointError(
                f"{path!r} holds no CLIP state dict: expected a dict with 'state_dict' (release checkpoint) "
                f"or a flat name -> tensor dict, found {found}."
            )
        sd = _strip_module(sd)
    check_finite(sd, path)
    layout = detect_layout(sd)
    if layout is None:
        raise NotACheckpointError(
            f"{path!r} is not a CLIP-Mamba checkpoint: none of its {len(sd)} keys look like the release "
            f"layout (visual.*, visual_e.*, image_projection) or open_clip's (visual.trunk.*); first keys: "
            f"{list(sd)[:5]}"
        )
    return LoadedCheckpoint(path=path, state_dict=sd, layout=layout, meta=meta)


# ------------------------------------------------------------------------------------- conversion
def _check_towers(towers: str) -> str:
    if towers not in TOWERS:
        raise ValueError(f"towers={towers!r} is not one of {TOWERS}")
    return towers


def original_to_open_clip(
    state_dict: Mapping[str, torch.Tensor], towers: str = "ema"
) -> Dict[str, torch.Tensor]:
    """Reference-code-base state dict (``module.`` prefix optional) -> open_clip ``CLIP`` state dict,
    taking the EMA (``"ema"``) or the online (``"online"``) towers. Tensors are not copied except
    the transposed ``image_projection``."""
    _check_towers(towers)
    sd = _strip_module(state_dict)
    e = "_e" if towers == "ema" else ""
    vis_prefix, txt_prefix = f"visual{e}.", f"transformer{e}."
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for k, v in sd.items():
        if k.startswith(vis_prefix):
            out["visual.trunk." + k[len(vis_prefix):]] = v
            used.add(k)
        elif k.startswith(txt_prefix):
            out["transformer." + k[len(txt_prefix):]] = v
            used.add(k)
    wanted = {f"image_projection{e}": _PROJ_KEY}
    for name in _TEXT_PARAMS:
        mod, _, attr = name.rpartition(".")
        wanted[f"{mod}{e}.{attr}" if mod else f"{name}{e}"] = name
    # logit_scale: the reference trains a single one; prefer an EMA copy should a file have one
    wanted["logit_scale_e" if (e and "logit_scale_e" in sd) else "logit_scale"] = "logit_scale"
    missing = [k for k in wanted if k not in sd]
    has_visual = any(k.startswith(vis_prefix) for k in sd)
    has_text = any(k.startswith(txt_prefix) for k in sd)
    if missing or not has_visual or not has_text:
        what = "EMA" if towers == "ema" else "online"
        other = "online" if towers == "ema" else "ema"
        absent = missing + ([vis_prefix + "*"] if not has_visual else []) + (
            [txt_prefix + "*"] if not has_text else [])
        raise TowerMissingError(
            f"the checkpoint has no complete {what} tower copy: missing {absent[:8]}"
            f"{' ...' if len(absent) > 8 else ''}. Choose towers={other!r} if that copy is present."
        )
    for src, dst in wanted.items():
        v = sd[src]
        out[dst] = v.t().contiguous() if dst == _PROJ_KEY else v
        used.add(src)
    # the other tower copy is dropped on purpose; anything else is reported
    other = re.compile(r"(visual|transformer)(_e)?\..*|(image_projection|text_projection|positional_embedding"
                       r"|token_embedding|ln_final|logit_scale)(_e)?(\..*)?")
    leftovers = [k for k in sd if k not in used and not other.fullmatch(k)]
    if leftovers:
        warnings.warn(f"ignoring {len(leftovers)} checkpoint entries outside the CLIP towers: "
                      f"{leftovers[:5]}", stacklevel=2)
    return out


def open_clip_to_original(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state dict -> reference-code-base state dict with the ``module.`` prefix and
    both tower copies (the EMA copy equal to the online one, as the reference code initialises it)."""
    sd = _strip_module(state_dict)
    if _PROJ_KEY not in sd:
        raise NotACheckpointError(f"not an open_clip CLIP-Mamba state dict: {_PROJ_KEY!r} is missing")
    extra_head = [k for k in sd if k.startswith("visual.head.") and k != _PROJ_KEY]
    if extra_head:
        raise ModelMismatchError(
            "the reference code base has a bias-free linear image projection only; "
            f"cannot export {extra_head}"
        )
    out: Dict[str, torch.Tensor] = {}
    for e in ("", "_e"):
        for k, v in sd.items():
            if k.startswith("visual.trunk."):
                out[f"module.visual{e}." + k[len("visual.trunk."):]] = v
            elif k.startswith("transformer."):
                out[f"module.transformer{e}." + k[len("transformer."):]] = v
        out[f"module.image_projection{e}"] = sd[_PROJ_KEY].t().contiguous()
        for name in _TEXT_PARAMS:
            mod, _, attr = name.rpartition(".")
            out[f"module.{mod}{e}.{attr}" if mod else f"module.{name}{e}"] = sd[name]
    out["module.logit_scale"] = sd["logit_scale"].reshape(())
    return out


# ------------------------------------------------------------------------------------- validation
Shapes = Mapping[str, Tuple[int, ...]]


def mismatches(state_dict: Mapping[str, torch.Tensor], expected: Shapes) -> List[str]:
    """Human-readable differences between a state dict and the expected key -> shape table, in the
    model's key order: shape differences, then keys the model lacks, then keys the file lacks."""
    lines = []
    for k, shape in expected.items():
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape):
            lines.append(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(shape)}")
    lines += [f"{k}: missing from the checkpoint (model {tuple(s)})" for k, s in expected.items()
              if k not in state_dict]
    lines += [f"{k}: not in the model (checkpoint {tuple(v.shape)})" for k, v in state_dict.items()
              if k not in expected]
    return lines


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Shapes,
    *,
    target: str,
    source: Optional[str] = None,
    show: int = 8,
) -> None:
    """Raise ModelMismatchError naming both models and the first ``show`` mismatched keys/shapes."""
    bad = mismatches(state_dict, expected)
    if not bad:
        return
    src = source or identify_model(state_dict) or "an unknown model"
    raise ModelMismatchError(
        f"checkpoint is for {src}, not for the target model {target}: {len(bad)} mismatched entries, "
        "first ones:\n  " + "\n  ".join(bad[:show])
    )


@contextlib.contextmanager
def _meta_init():
    """Modules built inside get their parameters and buffers moved to the meta device as they are
    registered, so initialisers cost nothing while constructors still run plain CPU code."""
    nn = torch.nn
    reg_p, reg_b = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(self, name, param):
        reg_p(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)

    def register_buffer(self, name, tensor, persistent=True):
        reg_b(self, name, tensor, persistent)
        b = self._buffers.get(name)
        if b is not None and b.device.type != "meta":
            self._buffers[name] = b.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = reg_p, reg_b


@functools.cache
def _model_shapes_cached(model_name: str) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    import open_clip

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": expected here
    try:
        try:  # shapes without allocating or initialising weights
            with _meta_init():
                model = open_clip.create_model(model_name, device="meta")
        except Exception:  # noqa: BLE001 - a constructor that reads its own weights: build on CPU
            model = open_clip.create_model(model_name)
    finally:
        logging.disable(previous)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def model_state_shapes(model_name: str) -> Dict[str, Tuple[int, ...]]:
    """key -> shape of ``open_clip.create_model(model_name).state_dict()`` (built on the meta device)."""
    return dict(_model_shapes_cached(model_name))


def identify_model(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which of our open_clip models has exactly these keys and shapes (None if none does)."""
    if detect_layout(state_dict) == "original":
        try:
            state_dict = original_to_open_clip(state_dict, "online")
        except CheckpointError:
            return None
    for name in our_model_names():
        try:
            shapes = model_state_shapes(name)
        except Exception:  # noqa: BLE001 - a model still under construction elsewhere
            continue
        if shapes.keys() == state_dict.keys() and all(
            tuple(state_dict[k].shape) == s for k, s in shapes.items()
        ):
            return name
    return None


def to_open_clip(
    ckpt: LoadedCheckpoint,
    *,
    towers: str = "ema",
    target: Optional[str] = None,
    expected: Optional[Shapes] = None,
) -> Dict[str, torch.Tensor]:
    """State dict of a loaded file in open_clip layout, checked against ``expected`` shapes (or those
    of the model ``target``). ``towers`` applies to original checkpoints; a converted file carries the
    towers it was made from."""
    _check_towers(towers)
    if ckpt.layout == "original":
        sd = original_to_open_clip(ckpt.state_dict, towers)
    else:
        sd = dict(ckpt.state_dict)
    if expected is None and target is not None:
        expected = model_state_shapes(target)
    if expected is not None:
        if "logit_scale" in sd and "logit_scale" in expected:
            sd["logit_scale"] = sd["logit_scale"].reshape(expected["logit_scale"])
        source = ckpt.meta.get("model") or ckpt.meta.get("source")
        if source and ckpt.meta.get("source") and source != ckpt.meta["source"]:
            source = f"{source} ({ckpt.meta['source']})"
        check_state_dict(sd, expected, target=target or "the target model", source=source)
    return sd


# ---------------------------------------------------------------------------------------- writing
def _dedupe_shared(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous tensors with no shared storage (safetensors refuses aliasing); copies only where
    needed (release files give each tensor its own storage, also when memory-mapped)."""
    seen = set()
    out = {}
    for k, v in tensors.items():
        v = v.contiguous()
        if v.numel():
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen:
                v = v.clone()
            else:
                seen.add(ptr)
        out[k] = v
    return out


def _atomic_write(dst: str, write) -> None:
    """Call ``write(tmp_path)`` then ``os.replace`` onto ``dst``; on any failure no file is left."""
    from mamba_clip.fileio import atomic_output

    with atomic_output(os.path.abspath(os.fspath(dst))) as tmp:
        write(str(tmp))


def save_safetensors(tensors: Mapping[str, torch.Tensor], dst: str, metadata: Mapping[str, str]) -> None:
    """Atomic safetensors write (temp file + ``os.replace``)."""
    from safetensors.torch import save_file

    tensors = _dedupe_shared(dict(tensors))
    meta = {"format": "pt", **{_META_PREFIX + k: str(v) for k, v in metadata.items()}}
    _atomic_write(dst, lambda tmp: save_file(tensors, tmp, metadata=meta))


def convert_file(
    src: str,
    dst: str,
    *,
    towers: str = "ema",
    model_name: Optional[str] = None,
    check: bool = True,
) -> Dict[str, str]:
    """Release checkpoint ``src`` -> open_clip safetensors ``dst`` (atomic). ``model_name`` defaults
    to the one recorded in the checkpoint (``args.model``); with ``check`` the tensors are verified
    against that model's keys and shapes first. Returns the metadata written."""
    _check_towers(towers)
    ckpt = load_checkpoint_file(src)
    if ckpt.layout != "original":
        raise NotACheckpointError(
            f"{src!r} is already in open_clip layout (converted file?); use it directly or export it"
        )
    model_name = model_name or ckpt.meta.get("model")
    expected = model_state_shapes(model_name) if (check and model_name) else None
    sd = to_open_clip(ckpt, towers=towers, target=model_name, expected=expected)
    meta = {"format_version": FORMAT_VERSION, "towers": towers, "layout": "open_clip"}
    if model_name:
        meta["model"] = model_name
    for k in ("source", "epoch"):
        if k in ckpt.meta:
            meta[k] = ckpt.meta[k]
    save_safetensors(sd, dst, meta)
    return meta


def export_file(
    src: str, dst: str, *, model_name: Optional[str] = None, check: bool = True
) -> Dict[str, str]:
    """open_clip checkpoint ``src`` (safetensors or ``.pt``) -> reference-code-base checkpoint ``dst``
    (atomic ``torch.save``): ``{'epoch': 0, 'state_dict', 'best_acc': 0.0, 'args': Namespace(model=...)}``
    with both tower copies, loadable by the reference ``eval_zeroshot.py`` / ``main.py --resume``."""
    ckpt = load_checkpoint_file(src)
    if ckpt.layout != "open_clip":
        raise NotACheckpointError(f"{src!r} is already in the original layout; nothing to export")
    model_name = model_name or ckpt.meta.get("model") or identify_model(ckpt.state_dict)
    if not model_name and not ckpt.meta.get("source"):  # nothing to record but "CLIP_None"
        raise ModelMismatchError(
            f"{src!r} records no model name and its tensors match none of {our_model_names()}; "
            "name the model with --model (model_name=...)"
        )
    if check and model_name:
        to_open_clip(ckpt, target=model_name)
    sd = {k: v.contiguous() for k, v in open_clip_to_original(ckpt.state_dict).items()}
    source = ORIGINAL_NAMES.get(model_name or "", ckpt.meta.get("source") or f"CLIP_{model_name}")
    payload = {
        "epoch": 0,
        "state_dict": sd,
        "best_acc": 0.0,
        "args": argparse.Namespace(model=source, exported_by="mamba_clip", open_clip_model=model_name),
    }
    _atomic_write(dst, lambda tmp: torch.save(payload, tmp))
    return {"model": model_name or "", "source": source}


# ----------------------------------------------------------------------------------- cheap sniffing
def _header_bytes(path: str, fmt: str) -> bytes:
    """The pickle (torch files) or JSON header (safetensors) of a file, without the tensor data."""
    if fmt == "safetensors":
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(min(n, 100_000_000))
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return zf.read(pkl) if pkl else b""
    if fmt == "legacy":
        with open(path, "rb") as f:
            return f.read(16 << 20)  # keys precede the tensor payload in the legacy format
    return b""


def sniff_layout(path: str) -> Optional[str]:
    """``"original"`` / ``"open_clip"`` judged from the key names in the file header (no tensor is
    read), None when undecided."""
    try:
        fmt = sniff_file_format(path)
        data = _header_bytes(path, fmt)
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return None
    if b"image_projection" in data:
        return "original"
    if _PROJ_KEY.encode() in data or b"visual.trunk." in data:
        return "open_clip"
    return None


def is_mamba_clip_file(path: str) -> bool:
    """True for a release (original-layout) checkpoint or a safetensors file written by
    ``convert_file``, judged from the header without loading tensors."""
    try:
        fmt = sniff_file_format(path)
        if fmt == "safetensors":
            header = json.loads(_header_bytes(path, fmt))
            return any(k.startswith(_META_PREFIX) for k in (header.get("__metadata__") or {}))
    except (OSError, ValueError, struct.error):
        return False
    return sniff_layout(path) == "original"


def iter_original_keys(tsv_lines: Iterable[str]) -> Iterable[Tuple[str, Tuple[int, ...], str]]:
    """Parse the shared ``checkpoint-keys/*.tsv`` lines: ``key<TAB>(shape)<TAB>dtype``."""
    for line in tsv_lines:
        line = line.strip()
        if not line:
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        yield key, dims, dtype


__all__ = [
    "TOWERS", "ORIGINAL_NAMES", "OPEN_CLIP_NAMES", "CheckpointError", "NotACheckpointError",
    "CorruptCheckpointError", "UnsafeCheckpointError", "TowerMissingError", "ModelMismatchError",
    "NonFiniteCheckpointError", "check_finite",
    "LoadedCheckpoint", "sniff_file_format", "load_checkpoint_file", "detect_layout",
    "original_to_open_clip", "open_clip_to_original", "mismatches", "check_state_dict",
    "model_state_shapes", "identify_model", "to_open_clip", "save_safetensors", "convert_file",
    "export_file", "is_mamba_clip_file", "sniff_layout", "iter_original_keys", "our_model_names",
]
