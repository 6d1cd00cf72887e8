"""Fixtures for the OOD tests: the model-vs-human raw data in ``../shared/data`` (tests skip cleanly
without it) and the manipulation data shipped with the package. ``stimuli_dir`` is in ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def raw_dir(shared_dir) -> Path:
    return shared_dir / "data" / "model-vs-human" / "raw-data"


@pytest.fixture(scope="session")
def manipulation_dir() -> Path:
    """The manipulation data shipped with the package (no ../shared needed)."""
    from mamba_clip.eval.ood.manipulations import PACKAGE_DATA

    return PACKAGE_DATA
