"""``mamba-clip convert``: release checkpoint <-> open_clip safetensors.

    mamba-clip convert VMamba_S_clip.pt -o vmamba-s.safetensors [--towers ema|online] [--model vmamba-s]
    mamba-clip convert vmamba-s.safetensors -o VMamba_S_export.pt        # inverse export

The direction follows the source file's layout (``--to`` makes it explicit); the output's extension
must fit it (``.safetensors`` for open_clip, ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` for the reference
layout). Exporting without ``--model`` identifies the model from the tensor shapes. Importing a release file
writes an open_clip safetensors file (``open_clip.create_model("vmamba-s", pretrained=DST)``); exporting
writes a checkpoint for the reference code base (both tower copies, ``args.model`` set). Files are
read with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` allowed) and written atomically.
"""

from __future__ import annotations

import argparse
import json
import os

from mamba_clip.cli_checks import UsageError, check_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="release CLIP-Mamba checkpoint <-> open_clip safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="release .pt checkpoint, or an open_clip file (.safetensors / .pt) to export")
    p.add_argument("-o", "--output", required=True, help="destination file")
    p.add_argument("--to", choices=("auto", "open_clip", "original"), default="auto",
                   help="target layout (default: the other one than SRC's)")
    p.add_argument("--towers", choices=("ema", "online"), default="ema",
                   help="which tower copy of a release checkpoint to keep (default: ema)")
    p.add_argument("--model", default=None,
                   help="open_clip model name to check against (default: recorded in the file)")
    p.add_argument("--no-check", action="store_true", help="skip the key/shape check against --model")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import mamba_clip.openclip_ext.registry as registry
    from mamba_clip.openclip_ext import checkpoints as ck

    registry.register_open_clip()
    if args.model is not None:
        import open_clip

        if args.model not in open_clip.list_models():
            raise UsageError(f"--model {args.model!r} is not an open_clip model; ours: {ck.our_model_names()}")
    check_file(args.src, "SRC")
    to = args.to
    if to == "auto":
        layout = ck.sniff_layout(args.src) or ck.load_checkpoint_file(args.src).layout
        to = "open_clip" if layout == "original" else "original"
    _check_output_suffix(args.output, to, args.to)
    if to == "open_clip":
        meta = ck.convert_file(args.src, args.output, towers=args.towers, model_name=args.model,
                               check=not args.no_check)
    else:
        meta = ck.export_file(args.src, args.output, model_name=args.model, check=not args.no_check)
    print(json.dumps({"src": args.src, "output": args.output, "to": to, **meta}))
    return 0


def _check_output_suffix(output: str, to: str, requested: str) -> None:
    """The output name must say the format that will be written (safetensors vs a torch file)."""
    suffix = os.path.splitext(output)[1].lower()
    why = "" if requested != "auto" else " (SRC is in the other layout; --to picks the direction)"
    if to == "open_clip" and suffix != ".safetensors":
        raise UsageError(f"--output {output!r}: the open_clip layout is written as safetensors{why}; "
                         "accepted extension: .safetensors")
    if to == "original" and suffix not in TORCH_SUFFIXES:
        raise UsageError(f"--output {output!r}: the reference layout is written as a torch.save file{why}; "
                         f"accepted extensions: {' '.join(TORCH_SUFFIXES)}")
