"""The ``mamba-clip`` command line. Each subcommand lives in the module that owns the feature and
exposes ``add_parser(subparsers)``; the parser it adds sets ``func`` to a function taking the parsed
arguments. This file only lists them, so ``mamba-clip --help`` stays fast (modules import lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Iterator, Optional, Sequence

# subcommand -> module with add_parser(subparsers)
SUBCOMMANDS = {
    "convert": "mamba_clip.openclip_ext.convert_cli",
    "ood": "mamba_clip.eval.ood.cli",
    "zeroshot": "mamba_clip.eval.zeroshot.cli",
    "make-wds": "mamba_clip.eval.zeroshot.make_wds_cli",
    "hessian": "mamba_clip.eval.hessian.cli",
    "demo": "mamba_clip.demo",
}


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamba-clip", description="Mamba vision towers for open_clip: checkpoints, evaluation, demo."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in SUBCOMMANDS.items():
        if wanted in SUBCOMMANDS and name != wanted:
            sub.add_parser(name, help=f"see 'mamba-clip {name} --help'")
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mamba_clip"):
                continue  # feature not built yet
            raise
        module.add_parser(sub)
    return parser


# set while a command runs with --no-progress, for subprocesses (the demo's stock trainer) and libraries
# imported later: tqdm (>= 4.66) reads TQDM_DISABLE when imported, Hugging Face downloads have their own
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def no_progress_bars(quiet: bool) -> Iterator[None]:
    """With ``quiet``, every progress bar is off inside the block: ours, the libraries' (tqdm's default
    becomes ``disable=True``) and those of subprocesses (environment); all restored after."""
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    patched = None
    if quiet:
        os.environ.update(QUIET_ENV)
        import functools

        import tqdm.std

        patched = tqdm.std.tqdm.__init__
        tqdm.std.tqdm.__init__ = functools.partialmethod(patched, disable=True)
    try:
        yield
    finally:
        if patched is not None:
            import tqdm.std

            tqdm.std.tqdm.__init__ = patched
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    quiet = bool(getattr(args, "no_progress", False)) or getattr(args, "progress", None) is False
    with no_progress_bars(quiet):
        result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
