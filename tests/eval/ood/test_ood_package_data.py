"""The manipulation data shipped as package data: found without ../shared, checked before any image
is written, identical to the shared copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mamba_clip.cli import main
from mamba_clip.eval.ood import manipulations as M
from mamba_clip.eval.ood.datasets import make_datasets


def test_shipped_data_is_the_default(monkeypatch):
    monkeypatch.delenv("MAMBA_CLIP_MANIPULATION_DATA", raising=False)
    res = M.Resources()
    assert res.directory == M.PACKAGE_DATA
    assert res.mean_spectrum.shape == (224, 224) and res.gamma_table.shape == (256,)
    assert (M.PACKAGE_DATA / "LICENSE.txt").read_text().count("Attribution 4.0 International") >= 1
    assert "rgeirhos/generalisation-humans-DNNs" in (M.PACKAGE_DATA / "README.md").read_text()


def _source(tmp_path):
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(src / "a.png")
    return src.parent


def test_missing_data_fails_before_any_image(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="mean_power_spectrum_grey.npy not found"):
        make_datasets(_source(tmp_path), out, datasets=["contrast", "power-equalisation"],
                      manipulation_data=tmp_path / "empty", progress=False)
    assert not out.exists()  # nothing written: the check comes first
    # the documented command works out of the box (power-equalisation and false-colour need the data)
    rc = main(["ood", "make-datasets", "--source", str(tmp_path / "src"), "--out", str(out), "--datasets",
               "power-equalisation", "false-colour", "--no-progress"])
    assert rc == 0 and len(list(out.rglob("*.png"))) == 4
    assert capsys.readouterr().err == ""


def test_shipped_data_equals_shared_copy(shared_dir):
    for name in ("mean_power_spectrum_grey.npy", "x_gamma_function.npy", "LICENSE.txt"):
        assert (M.PACKAGE_DATA / name).read_bytes() == (shared_dir / "data" / "manipulation" / name).read_bytes()
