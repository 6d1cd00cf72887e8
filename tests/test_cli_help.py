"""``--help`` of every subcommand explains every option, with its default (issue 18)."""

from __future__ import annotations

import argparse

import pytest

from mamba_clip.cli import SUBCOMMANDS, build_parser, iter_parsers, main


def _options(parser):
    for a in parser._actions:
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            yield a


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    parsers = list(iter_parsers(parser))
    progs = {p.prog for p in parsers}
    assert {f"mamba-clip {name}" for name in SUBCOMMANDS} <= progs and "mamba-clip ood evaluate" in progs
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in parsers for a in _options(p) if not a.help]
    assert not missing, f"options without help text: {missing}"


def test_help_shows_defaults():
    parser = build_parser()
    undocumented = []
    for p in iter_parsers(parser):
        formatter = p._get_formatter()
        for a in _options(p):
            has_default = a.default is not None and a.default is not False and a.default is not argparse.SUPPRESS
            if a.option_strings and has_default and not a.required:
                if "default" not in formatter._get_help_string(a).lower():
                    undocumented.append(f"{p.prog} {a.option_strings[0]}")
    assert not undocumented, f"options whose help does not give the default: {undocumented}"
    hessian = next(p for p in iter_parsers(parser) if p.prog == "mamba-clip hessian").format_help()
    flat = " ".join(hessian.split())
    assert "samples per Hessian batch (default: 15)" in flat and "probe vectors (default: 0)" in flat


@pytest.mark.parametrize("argv", [["zeroshot", "--help"], ["ood", "evaluate", "--help"], ["convert", "--help"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "(default: " in capsys.readouterr().out
