"""Shared fixtures. ``shared_dir`` is the read-only ``../shared`` folder next to the checkout; tests
that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAMBA_CLIP_SHARED", REPO.parent / "shared"))
TEST_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def stimuli_dir() -> Path:
    """Real stimuli: ``../shared/data/stimuli`` when present, else the copies in ``tests/data/stimuli``
    (``edges`` and ``filled-silhouettes``; the cue-conflict set needs ``cue_conflict_dir``)."""
    if SHARED.is_dir():
        return SHARED / "data" / "stimuli"
    return TEST_DATA / "stimuli"


@pytest.fixture(scope="session")
def cue_conflict_dir(shared_dir) -> Path:
    """The 160 cue-conflict images of ``../shared`` (17 MB, not shipped with the tests)."""
    return shared_dir / "data" / "stimuli" / "cue-conflict"


@pytest.fixture(scope="session")
def checkpoint_keys_dir(tmp_path_factory) -> Path:
    """The release key lists (``CLIP_*.tsv``) from the package data, unpacked: no ../shared needed."""
    from mamba_clip.openclip_ext.release_keys import RELEASE_FILES, release_key_text

    folder = tmp_path_factory.mktemp("checkpoint-keys")
    for stem in RELEASE_FILES.values():
        (folder / f"{stem}.tsv").write_text(release_key_text(stem))
    return folder


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end or multi-second test, left out of make test-quick (runs in make test and CI)"
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line saying how many tests skipped because ../shared is missing, and how to get it."""
    skipped = terminalreporter.stats.get("skipped", [])
    no_shared = [r for r in skipped if "shared data folder not found" in str(r.longrepr)]
    if no_shared:
        terminalreporter.write_line(
            f"{len(no_shared)} of {len(skipped)} skipped tests need the shared data folder, not found at {SHARED} "
            "(the cue-conflict set, model-vs-human raw data, reference copies; README.md, 'Two commands', says "
            "where they come from): put it at ../shared beside the checkout or set MAMBA_CLIP_SHARED=/path/to/shared",
            yellow=True)
    other = len(skipped) - len(no_shared)
    if other:
        terminalreporter.write_line(f"{other} other skipped tests: pytest -rs lists why", yellow=True)
