"""The key lists of the six released CLIP-Mamba checkpoints, shipped as package data
(``data/checkpoint-keys/CLIP_*.tsv.gz``, see the README there): ``key<TAB>(shape)<TAB>dtype`` lines."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, List, Tuple

KEYS_DIR = Path(__file__).resolve().parent / "data" / "checkpoint-keys"
# open_clip model name -> release file stem
RELEASE_FILES = {
    "vmamba-t220": "CLIP_VMamba_T220", "vmamba-s": "CLIP_VMamba_S", "vmamba-b": "CLIP_VMamba_B",
    "simba-s": "CLIP_Simba_S", "simba-b": "CLIP_Simba_B", "simba-l": "CLIP_Simba_L",
}  # fmt: skip


def release_key_text(original: str) -> str:
    """The TSV text of a release (``"CLIP_VMamba_S"`` or an open_clip name such as ``"vmamba-s"``)."""
    stem = RELEASE_FILES.get(original, original)
    path = KEYS_DIR / f"{stem}.tsv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no key list for {original!r} in {KEYS_DIR}; known: {sorted(RELEASE_FILES)}")
    return gzip.decompress(path.read_bytes()).decode()


def release_key_lines(original: str) -> List[str]:
    return [line for line in release_key_text(original).splitlines() if line.strip()]


def release_tower_shapes(original: str, prefix: str = "module.visual.") -> Dict[str, Tuple[int, ...]]:
    """``{key without prefix: shape}`` of the entries under ``prefix`` (default: the online image tower)."""
    out = {}
    for line in release_key_lines(original):
        key, shape = line.split("\t")[:2]
        if key.startswith(prefix):
            out[key[len(prefix):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out
