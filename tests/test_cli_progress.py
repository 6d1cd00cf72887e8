"""``--no-progress`` on every subcommand that draws bars: accepted, and while the command runs no bar of
ours or of a library (tqdm, Hugging Face downloads, subprocesses) is drawn; the environment is
restored after."""

from __future__ import annotations

import os

import pytest

from mamba_clip import cli

COMMANDS = {
    "hessian": ["hessian", "--model", "m", "--data", "d", "--out", "r"],
    "ood make-datasets": ["ood", "make-datasets", "--source", "s", "--out", "o"],
    "ood evaluate": ["ood", "evaluate", "--models", "m", "--out", "o"],
    "zeroshot": ["zeroshot", "--model", "m", "--dataset-root", "d", "--output", "o"],
    "make-wds": ["make-wds", "src", "dst"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_no_progress_silences_every_bar(name, monkeypatch, capsys):
    from tqdm import tqdm

    argv = COMMANDS[name] + ["--no-progress"]
    args = cli.build_parser(argv).parse_args(argv)
    seen = {}

    def fake_command(a):
        seen.update({k: os.environ.get(k) for k in cli.QUIET_ENV})
        for _ in tqdm(range(3), desc="a library's bar"):  # as open_clip's or clip_benchmark's would be
            pass
        return 0

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _Fixed(args, fake_command))
    assert cli.main(argv) == 0
    assert seen == cli.QUIET_ENV and "a library's bar" not in capsys.readouterr().err
    assert "TQDM_DISABLE" not in os.environ  # restored


class _Fixed:
    """A parser stand-in that returns the parsed arguments with ``func`` replaced."""

    def __init__(self, args, func):
        self.args, self.func = args, func

    def parse_args(self, argv):
        self.args.func = self.func
        return self.args


def test_bars_drawn_without_the_flag(monkeypatch, capsys):
    from tqdm import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with cli.no_progress_bars(False):
        for _ in tqdm(range(3), desc="shown"):
            pass
    assert "shown" in capsys.readouterr().err
