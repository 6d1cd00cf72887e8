"""The release key lists shipped as package data: complete, parsed, identical to the shared copy."""

from __future__ import annotations

import pytest

from mamba_clip.openclip_ext.release_keys import RELEASE_FILES, release_key_lines, release_tower_shapes


def test_every_release_has_a_key_list():
    for name, stem in RELEASE_FILES.items():
        lines = release_key_lines(name)
        assert lines == release_key_lines(stem)
        keys = [ln.split("\t")[0] for ln in lines]
        assert "module.logit_scale" in keys and any(k.startswith("module.visual_e.") for k in keys)
        assert len(release_tower_shapes(name)) == len(release_tower_shapes(name, "module.visual_e."))
    with pytest.raises(FileNotFoundError, match="known"):
        release_key_lines("vmamba-xl")


def test_shipped_key_lists_equal_the_shared_ones(shared_dir):
    from mamba_clip.openclip_ext.release_keys import release_key_text

    for stem in RELEASE_FILES.values():
        assert release_key_text(stem) == (shared_dir / "reference" / "checkpoint-keys" / f"{stem}.tsv").read_text()
