"""The stimuli shipped in ``tests/data/stimuli`` are byte-identical to the shared data folder's copies,
so the tests that use them test the same images with or without ``../shared``."""

from __future__ import annotations

from pathlib import Path

TEST_STIMULI = Path(__file__).resolve().parent / "data" / "stimuli"


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_shipped_sets_are_complete():
    for name in ("edges", "filled-silhouettes"):
        files = _files(TEST_STIMULI / name)
        per_class = {}
        for rel in files:
            per_class[rel.split("/")[0]] = per_class.get(rel.split("/")[0], 0) + 1
        assert len(per_class) == 16 and set(per_class.values()) == {10}, name
    assert (TEST_STIMULI / "DATASET_LICENSE").read_text().strip()


def test_shipped_stimuli_equal_shared_copy(shared_dir):
    shared = shared_dir / "data" / "stimuli"
    for name in ("edges", "filled-silhouettes"):
        assert _files(TEST_STIMULI / name) == _files(shared / name), name
    photo = "cat1-airplane1.png"
    assert (TEST_STIMULI / "photo" / photo).read_bytes() == (shared / "cue-conflict" / "cat" / photo).read_bytes()
    assert sorted((shared / "cue-conflict" / "cat").glob("*.png"))[0].name == photo
    assert (TEST_STIMULI / "DATASET_LICENSE").read_bytes() == (shared / "DATASET_LICENSE").read_bytes()
