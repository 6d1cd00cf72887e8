"""Argument checks shared by the ``mamba-clip`` subcommands, and the one place errors are reported.

Each subcommand validates its inputs up front with the ``check_*`` helpers (model names, checkpoint
files, data folders, dataset names) and the argparse ``type=`` functions (numeric ranges). They raise
:class:`UsageError` with a message naming the bad value and what is accepted. :func:`run_command`
(called once by ``mamba_clip.cli.main``) turns it into one ``error: ...`` line and exit status 2;
any other failure becomes ``error: <type>: <message>`` and exit status 1. ``--debug`` or
``MAMBA_CLIP_DEBUG=1`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
MAX_MESSAGE_LINES = 4


class UsageError(Exception):
    """Bad command-line input; reported as ``error: <message>`` with exit status 2."""


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """``--debug`` on the command line or ``MAMBA_CLIP_DEBUG`` set to a true value."""
    env = os.environ.get("MAMBA_CLIP_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return env or "--debug" in argv


def _short(message: str) -> str:
    lines = str(message).strip().splitlines() or [""]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES] + [f"  ... ({len(lines) - MAX_MESSAGE_LINES} more lines)"]
    return "\n".join(lines)


def _usage_exceptions() -> tuple:
    """Exceptions that mean 'bad input' wherever they come from (exit 2)."""
    out: List[type] = [UsageError]
    try:
        from mamba_clip.openclip_ext.checkpoints import CheckpointError

        out.append(CheckpointError)
    except ImportError:  # pragma: no cover - torch missing
        pass
    return tuple(out)


def run_command(func: Callable[[argparse.Namespace], Optional[int]], args: argparse.Namespace,
                debug: bool = False) -> int:
    """Run a subcommand; report failures as one ``error:`` line (traceback only when ``debug``)."""
    try:
        return int(func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (finished results are kept)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors are reported
        if debug:
            traceback.print_exc()
        if isinstance(exc, _usage_exceptions()):
            print(f"error: {_short(exc)}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"error: out of GPU memory ({first}); lower --batch-size. Finished results are kept.",
                  file=sys.stderr)
            return 1
        hint = "" if debug else " (run with --debug or MAMBA_CLIP_DEBUG=1 for the traceback)"
        print(f"error: {type(exc).__name__}: {_short(exc)}{hint}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------ argparse types
def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer (accepted: integers >= {minimum})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range (accepted: integers >= {minimum})")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """argparse ``type=``: a float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (accepted: numbers > 0)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range (accepted: numbers > 0)")
    return value


# ------------------------------------------------------------------------------------- checks
def _suggest(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_model(name: str, option: str = "--model") -> str:
    """``name`` must be an open_clip model (ours registered); returns it."""
    import open_clip

    import mamba_clip.openclip_ext.registry as registry

    registry.register_open_clip()
    models = open_clip.list_models()
    if name not in models:
        from mamba_clip.openclip_ext.checkpoints import our_model_names

        raise UsageError(f"{option} {name!r} is not an open_clip model{_suggest(name, models)}; ours: "
                         f"{', '.join(our_model_names())} (all: python -c 'import open_clip; "
                         "print(open_clip.list_models())')")
    return name


def check_image_size(model: str, size: Optional[int], option: str = "--image-size") -> Optional[int]:
    """``model`` built with ``force_image_size=size`` must take ``size`` x ``size`` images: one forward
    pass of the image tower on the meta device (shapes only, no memory, well under a second) runs the
    tower's own input checks (VMamba and SiMBA: multiples of 32). ``None`` keeps the model's size."""
    if size is None:
        return None
    import logging

    import open_clip
    import torch

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip's "no pretrained weights loaded" warning
    try:
        with torch.device("meta"):
            net = open_clip.create_model(model, force_image_size=size, device="meta")
            net.encode_image(torch.empty(1, 3, size, size))
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{option} {size}: {model} cannot take {size}x{size} images ({reason})") from None
    finally:
        root.setLevel(level)
    return size


def check_device(device: str, option: str = "--device") -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` with that GPU present."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {device!r} is not a device (accepted: cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"{option} {device!r}: no CUDA device is available here (accepted: cpu)")
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"{option} {device!r}: only {n} CUDA device(s) (accepted: cuda:0..cuda:{n - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"{option} {device!r} is not supported (accepted: cpu, cuda, cuda:N)")
    return device


def check_pretrained(model: str, pretrained: Optional[str], option: str = "--pretrained",
                     image_size: Optional[int] = None) -> Optional[str]:
    """None / ``none`` (random weights), a pretrained tag of ``model``, or a readable checkpoint file
    of the right model (keys and shapes checked unless ``image_size`` overrides the model's, which can
    change shapes). Returns the value to pass to open_clip (None for random weights)."""
    if pretrained is None or pretrained.strip().lower() in ("", "none", "random"):
        return None
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained in tags:
        return pretrained
    if os.path.exists(pretrained) or os.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin",
                                                                                       ".safetensors"):
        check_checkpoint(pretrained, None if image_size else model, option)
        return pretrained
    accepted = f"its tags: {', '.join(tags)}" if tags else f"{model} has no pretrained tags"
    raise UsageError(f"{option} {pretrained!r} is neither a pretrained tag ({accepted}) nor an existing "
                     "checkpoint file; 'none' means random weights")


def _has_mamba_trunk(model: Optional[str]) -> bool:
    """True for our configs whose image tower is one of our timm trunks (VMamba / SiMBA): their files
    have the release or the ``visual.trunk.*`` layout. False for other models (our ``vit-nano``)."""
    import json

    from mamba_clip.openclip_ext.configs import config_dir, our_model_names

    if model is None or model not in our_model_names():
        return False
    cfg = json.loads((config_dir() / f"{model}.json").read_text())
    return "timm_model_name" in cfg.get("vision_cfg", {})


def check_checkpoint(path: PathLike, model: Optional[str] = None, option: str = "checkpoint") -> None:
    """The file exists, is readable, loads, and (for our models) has ``model``'s keys and shapes."""
    from mamba_clip.openclip_ext import checkpoints as ck

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{option} {path!r}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"{option} {path!r} is a folder, expected a checkpoint file (.pt / .safetensors)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path!r} is not readable (permissions)")
    mamba = _has_mamba_trunk(model)
    try:
        ckpt = ck.load_checkpoint_file(path)
    except ck.CheckpointError as exc:
        if mamba or not isinstance(exc, ck.NotACheckpointError):
            raise UsageError(f"{option} {path!r}: {exc}") from None
        return  # another open_clip model's file (e.g. our vit-nano baseline): open_clip reads it
    if mamba:
        try:
            ck.to_open_clip(ckpt, target=model)
        except ck.CheckpointError as exc:
            raise UsageError(f"{option} {path!r}: {exc}") from None


def image_files(folder: PathLike) -> List[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden names skipped)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def first_bad_image(files: Iterable[Path]) -> Optional[tuple]:
    """(path, reason) of the first file PIL cannot read, else None."""
    from PIL import Image

    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as exc:  # noqa: BLE001 - any decode failure names the file
            return p, f"{type(exc).__name__}: {exc}"
    return None


def check_image_folder(folder: PathLike, option: str, *, classes: bool = False,
                       check_images: bool = True) -> List[Path]:
    """``folder`` exists, holds images (in class sub-folders when ``classes``) and every image decodes;
    returns the image files."""
    p = Path(folder)
    if not p.exists():
        raise UsageError(f"{option} {str(folder)!r}: no such folder")
    if not p.is_dir():
        raise UsageError(f"{option} {str(folder)!r} is a file, expected a folder of images")
    if classes and not any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
        raise UsageError(f"{option} {str(folder)!r} has no class sub-folders (expected <folder>/<class>/<image>)")
    files = image_files(p)
    if not files:
        raise UsageError(f"{option} {str(folder)!r} holds no images (accepted: {' '.join(IMAGE_SUFFIXES)})")
    if check_images:
        bad = first_bad_image(files)
        if bad is not None:
            raise UsageError(f"{option}: image {bad[0].relative_to(p)} in {str(folder)!r} cannot be decoded "
                             f"({bad[1]})")
    return files


def check_folder(folder: PathLike, option: str, *, non_empty: bool = True) -> Path:
    """An existing (and by default non-empty) folder."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {str(folder)!r} is a file, expected a folder")
    if not p.is_dir():
        raise UsageError(f"{option} {str(folder)!r}: no such folder")
    if non_empty and not any(p.iterdir()):
        raise UsageError(f"{option} {str(folder)!r} is empty")
    return p


def check_file(path: PathLike, option: str) -> Path:
    """An existing, readable file."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder, expected a file")
    if not p.is_file():
        raise UsageError(f"{option} {str(path)!r}: no such file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{option} {str(path)!r} is not readable (permissions)")
    return p


def check_choice(value: str, accepted: Sequence[str], option: str) -> str:
    if value not in accepted:
        raise UsageError(f"{option} {value!r} is not accepted{_suggest(value, accepted)}; accepted: "
                         f"{', '.join(accepted)}")
    return value


def check_templates(value: str, option: str = "--templates") -> Union[int, str]:
    """A prompt-template choice: ``simple``, ``openai`` or a count n >= 1 (the first n OpenAI templates)."""
    if value.isdigit():
        if int(value) < 1:
            raise UsageError(f"{option} {value!r}: a number of templates must be >= 1")
        return int(value)
    if value not in ("simple", "openai"):
        raise UsageError(f"{option} {value!r} is not accepted; accepted: simple, openai, or a number n >= 1")
    return value
