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
    "doctor": "mamba_clip.doctor",
}


class Parser(argparse.ArgumentParser):
    """argparse errors as one line, ``error: ...`` with exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="mamba-clip", description="Mamba vision towers for open_clip: checkpoints, evaluation, demo."
    )
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks on errors (also: MAMBA_CLIP_DEBUG=1)")
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
    _use_help_formatter(parser)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Options' help ends with ``(default: X)`` unless it already names its default or there is none
    (None, False, required); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else "%(default)s"
        if isinstance(action.default, list) and len(action.default) > 6:
            default = f"{' '.join(map(str, action.default[:6]))} ... ({len(action.default)})"
        return f"{text} (default: {default})"


def iter_parsers(parser: argparse.ArgumentParser):
    """``parser`` and all its subcommand parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from iter_parsers(child)


def _use_help_formatter(parser: argparse.ArgumentParser) -> None:
    for p in iter_parsers(parser):
        p.formatter_class = HelpFormatter


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
    from .cli_checks import debug_requested, run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    quiet = bool(getattr(args, "no_progress", False)) or getattr(args, "progress", None) is False
    with no_progress_bars(quiet):
        return run_command(args.func, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
