"""Stimulus-folder layouts of model-vs-human (sessions and categories) and file naming."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mamba_clip.eval.ood.datasets import detect_layout, list_samples, resolve_dataset, stimulus_stem
from mamba_clip.eval.ood.evaluate import subsample
from mamba_clip.eval.ood.protocol import get_spec, parse_session_imagename, session_imagename, short_imagename


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_sessions_layout_with_model_vs_human_names(tmp_path):
    # file names as in model-vs-human's sketch and high-pass datasets
    names = [
        "0001_ske_dnn_0_airplane_00_airplane-0001-sketch-0.png",
        "0002_ske_dnn_0_dog_00_dog-4581-sketch-16.png",
    ]
    for n in names:
        _png(tmp_path / "sketch" / "dnn" / "session-1" / n)
    _png(tmp_path / "high-pass" / "dnn" / "session-1" / "0001_hp_dnn_0.7_boat_10_n03662601_12531.png")
    assert detect_layout(tmp_path / "sketch") == "sessions"
    s = list_samples(tmp_path / "sketch")
    assert [(x.category, x.condition, x.imagename) for x in s] == [
        ("airplane", "0", names[0]),
        ("dog", "0", names[1]),
    ]
    hp = list_samples(tmp_path / "high-pass")[0]
    assert (hp.category, hp.condition) == ("boat", "0.7")
    assert short_imagename(hp.imagename) == "n03662601_12531.png"
    _png(tmp_path / "bad" / "dnn" / "session-1" / "0001_x_dnn_0_zebra_00_z.png")
    with pytest.raises(ValueError, match="zebra"):
        list_samples(tmp_path / "bad")


def test_categories_layout_and_resolution(tmp_path, stimuli_dir, cue_conflict_dir):
    s = list_samples(cue_conflict_dir)
    assert len(s) == 160 and all(x.condition == "NaN" for x in s)
    assert s[0].imagename == s[0].path.name and s[0].category == s[0].path.parent.name
    name, folder = resolve_dataset("edge", stimuli_dir)
    assert name == "edge" and folder.name == "edges"
    assert resolve_dataset("silhouette", stimuli_dir)[1].name == "filled-silhouettes"
    assert resolve_dataset(f"cue-conflict={cue_conflict_dir}") == ("cue-conflict", cue_conflict_dir)
    with pytest.raises(ValueError, match="not found"):
        resolve_dataset("sketch", stimuli_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        detect_layout(tmp_path / "empty")


def test_stimulus_names_round_trip():
    spec = get_spec("uniform-noise")
    name = session_imagename(7, spec, "0.6", "cat", "n02123045_1234")
    assert name == "0007_nse_dnn_0.60_cat_10_n02123045_1234.png"
    assert parse_session_imagename(name) == ("0.60", "cat")
    assert short_imagename(name) == "n02123045_1234.png"
    from pathlib import Path

    assert stimulus_stem(Path("my_cat_photo.jpg")) == "my-cat-photo"
    assert stimulus_stem(Path("n02123045_1234.JPEG")) == "n02123045_1234"


def test_subsample_is_even_and_deterministic():
    items = list(range(100))
    assert subsample(items, 5) == [0, 25, 50, 74, 99]
    assert subsample(items, None) == items and subsample(items, 500) == items
    with pytest.raises(ValueError, match="max_images"):
        subsample(items, 0)
