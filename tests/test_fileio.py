"""Atomic writes follow the umask (issue 18: result files and figures used to be 0600 whatever it was)."""

from __future__ import annotations

import os

import pytest

from mamba_clip.fileio import atomic_output, atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_modes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        atomic_write_bytes(tmp_path / "b.npz", b"x")
        with atomic_output(tmp_path / "table1.png", suffix=".png") as tmp:
            assert tmp.suffix == ".png"
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    for name in ("a.json", "b.npz", "table1.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz", "table1.png"]  # no temp files


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not any(tmp_path.iterdir())
