"""Pretrained tags: the release table, and the download -> convert -> cache path with the Hub replaced
by local files (huggingface_hub's download function patched, or its real code on an offline cache)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from conftest import ORIGINAL_NANO

from mamba_clip.openclip_ext import checkpoints as ck
from mamba_clip.openclip_ext import registry
from mamba_clip.openclip_ext.pretrained import (
    HF_REPO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RELEASE_FILES,
    pretrained_cfg,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_release_tags_registered():
    import open_clip

    assert set(RELEASE_FILES) <= set(open_clip.list_models())
    for model, filename in RELEASE_FILES.items():
        assert {"yfcc15m", "yfcc15m_online"} <= set(open_clip.list_pretrained_tags_by_model(model))
        for tag, towers in (("yfcc15m", "ema"), ("yfcc15m-online", "online"), ("yfcc15m_online", "online")):
            cfg = open_clip.get_pretrained_cfg(model, tag)
            spec = {"model": model, "towers": towers, "repo": HF_REPO, "filename": filename}
            assert cfg["mamba_clip"] == spec
            assert cfg["hf_hub"] == f"{HF_REPO}/{filename}"
            assert (cfg["mean"], cfg["std"]) == (IMAGENET_MEAN, IMAGENET_STD)
            assert cfg["interpolation"] == "bilinear"
            assert cfg["quick_gelu"] == open_clip.get_model_config(model).get("quick_gelu", False)
    with pytest.raises(ValueError, match="towers='best'"):
        pretrained_cfg("vmamba-s", "best", filename="VMamba_S_clip.pt")


@pytest.fixture
def test_tags(nano_release):
    """Tags ``release-test`` (EMA) / ``release-test-online`` for the nano model, pointing at a file name
    that only the patched / pre-filled Hub knows."""
    import open_clip

    name = nano_release.name
    filename = f"{ORIGINAL_NANO[name]}_clip.pt"
    qg = open_clip.get_model_config(name).get("quick_gelu", False)
    registry.register_pretrained(
        name, "release-test", pretrained_cfg(name, "ema", filename=filename, quick_gelu=qg)
    )
    registry.register_pretrained(
        name, "release-test-online", pretrained_cfg(name, "online", filename=filename, quick_gelu=qg)
    )
    yield filename
    registry.unregister_pretrained(name, "release-test")
    registry.unregister_pretrained(name, "release-test-online")


def _state_equal(model, expected):
    sd = model.state_dict()
    same = all(torch.equal(sd[k], v.reshape(sd[k].shape)) for k, v in expected.items())
    return set(sd) == set(expected) and same


def test_tag_downloads_converts_once_and_caches(nano_release, test_tags, tmp_path, monkeypatch):
    import huggingface_hub
    import open_clip
    from torchvision.transforms import Normalize

    calls = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("cache_dir")))
        return str(nano_release.path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    hub_cache = str(tmp_path / "oc_cache")
    model, _, preprocess = open_clip.create_model_and_transforms(
        nano_release.name, pretrained="release-test", cache_dir=hub_cache
    )
    assert calls == [(HF_REPO, test_tags, hub_cache)]
    assert _state_equal(model, nano_release.tower("ema"))
    norm = next(t for t in preprocess.transforms if isinstance(t, Normalize))
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD
    cached = sorted((tmp_path / "mamba_clip_cache").iterdir())  # $MAMBA_CLIP_CACHE (conftest)
    assert len(cached) == 1 and cached[0].name.startswith(f"{nano_release.name}-ema-")
    assert ck.load_checkpoint_file(str(cached[0])).meta["towers"] == "ema"

    def no_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(ck, "convert_file", no_conversion)
    model2 = open_clip.create_model(nano_release.name, pretrained="release-test", cache_dir=hub_cache)
    assert _state_equal(model2, nano_release.tower("ema"))
    assert sorted((tmp_path / "mamba_clip_cache").iterdir()) == cached


def test_tag_through_real_hub_code_offline(nano_release, test_tags, tmp_path, monkeypatch):
    """huggingface_hub's own hf_hub_download resolves the file from a pre-filled cache (offline mode,
    set in conftest); the converted file goes next to the Hub cache when cache_dir is given."""
    import open_clip

    monkeypatch.delenv("MAMBA_CLIP_CACHE")
    hub = tmp_path / "hub"
    repo_dir = hub / ("models--" + HF_REPO.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    shutil.copy(nano_release.path, repo_dir / "snapshots" / COMMIT / test_tags)
    model = open_clip.create_model(nano_release.name, pretrained="release-test-online", cache_dir=str(hub))
    assert _state_equal(model, nano_release.tower("online"))
    converted = list((hub / "mamba_clip").glob(f"{nano_release.name}-online-*.safetensors"))
    assert len(converted) == 1

    # a file the (offline) Hub does not have: a clear error naming the file and the offline way out
    registry.register_pretrained(
        nano_release.name, "release-test", pretrained_cfg(nano_release.name, "ema", filename="nope.pt")
    )
    with pytest.raises(RuntimeError, match=r"(?s)nope\.pt.*pretrained='/path/to/nope\.pt'"):
        open_clip.create_model(nano_release.name, pretrained="release-test", cache_dir=str(hub))


def test_failed_conversion_leaves_no_cache_file(nano_release, test_tags, tmp_path, monkeypatch):
    import huggingface_hub
    import open_clip

    broken = tmp_path / "broken.pt"
    broken.write_bytes(nano_release.path.read_bytes()[: 1 << 20])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(broken))
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        open_clip.create_model(nano_release.name, pretrained="release-test")
    cache = tmp_path / "mamba_clip_cache"
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.slow
def test_clip_benchmark_with_tag(nano_release, test_tags, tmp_path, monkeypatch):
    """``clip_benchmark eval --model <nano> --pretrained <tag>``, run in-process so the Hub can be
    replaced; the stock subprocess run on a file is in test_convert_cli.py."""
    import huggingface_hub
    from clip_benchmark import cli

    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(nano_release.path)
    )
    out = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", [
        "clip_benchmark", "eval", "--model", nano_release.name, "--pretrained", "release-test",
        "--dataset", "dummy", "--output", str(out), "--batch_size", "1", "--num_workers", "0", "--no_amp",
    ])
    cli.main()
    result = json.loads(out.read_text())
    assert result["model"] == nano_release.name and result["pretrained"] == "release-test"
    assert 0.0 <= result["metrics"]["acc1"] <= 1.0
