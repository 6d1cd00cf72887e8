"""The private open_clip hooks in ``registry.py``: installed once, and everything that is not ours goes
to open_clip's own functions unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_clip.openclip_ext import registry


def test_hooks_installed_once():
    import open_clip
    from open_clip import factory

    registry.install_checkpoint_hooks()
    registry.install_checkpoint_hooks()
    for name in ("download_pretrained", "get_pretrained_cfg", "load_checkpoint"):
        assert getattr(getattr(factory, name), "_mamba_clip_hook", False), name
        assert not getattr(registry._ORIGINALS[name], "_mamba_clip_hook", False), name
    assert open_clip.load_checkpoint is factory.load_checkpoint


@pytest.fixture(scope="module")
def plain_vit(tmp_path_factory):
    """A tiny stock open_clip ViT config (not ours) in its own config folder."""
    import open_clip

    folder = tmp_path_factory.mktemp("configs")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "hooktest-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return "hooktest-vit"


def test_other_models_use_open_clip_loader(plain_vit, tmp_path, monkeypatch):
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN
    from torchvision.transforms import Normalize

    calls = []
    original = registry._ORIGINALS["load_checkpoint"]

    def spy(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setitem(registry._ORIGINALS, "load_checkpoint", spy)
    src = open_clip.create_model(plain_vit)
    path = tmp_path / "vit.pt"
    torch.save(src.state_dict(), path)
    model, _, preprocess = open_clip.create_model_and_transforms(plain_vit, pretrained=str(path))
    assert calls == [str(path)]
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), model.state_dict().values()))
    norm = next(t for t in preprocess.transforms if isinstance(t, Normalize))
    assert tuple(norm.mean) == OPENAI_DATASET_MEAN  # untouched: not a CLIP-Mamba file
    assert registry.our_model_name(model) is None
    assert open_clip.get_pretrained_cfg("RN50", "openai")["url"].endswith("RN50.pt")

    seen = []
    monkeypatch.setitem(registry._ORIGINALS, "download_pretrained", lambda cfg, **kw: seen.append(cfg) or "x")
    from open_clip import factory

    assert factory.download_pretrained({"url": "u"}, cache_dir="c") == "x" and seen == [{"url": "u"}]


def test_open_clip_train_checkpoint_into_our_model(nano_release, tmp_path):
    """An open_clip-layout training checkpoint (``module.`` prefix, optimizer) of our model: loaded by
    our hook (safe load + shape check), with our models' default (ImageNet) preprocessing."""
    import open_clip
    from torchvision.transforms import Normalize

    from mamba_clip.openclip_ext.pretrained import IMAGENET_MEAN

    expected = nano_release.tower("online")
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in expected.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    model, _, preprocess = open_clip.create_model_and_transforms(nano_release.name, pretrained=str(path))
    assert registry.our_model_name(model) == nano_release.name
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v.reshape(sd[k].shape)) for k, v in expected.items())
    norm = next(t for t in preprocess.transforms if isinstance(t, Normalize))
    assert tuple(norm.mean) == tuple(IMAGENET_MEAN)


def test_default_preprocessing_is_imagenet_for_our_models_only():
    import open_clip

    from mamba_clip.openclip_ext.pretrained import IMAGENET_MEAN, IMAGENET_STD

    for name in ("vmamba-nano", "simba-nano"):
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        cfg = model.visual.preprocess_cfg
        assert tuple(cfg["mean"]) == tuple(IMAGENET_MEAN) and tuple(cfg["std"]) == tuple(IMAGENET_STD)
        normalize = preprocess.transforms[-1]
        assert tuple(normalize.mean) == tuple(IMAGENET_MEAN)
    # a caller's explicit mean wins; std keeps our default
    model, _, _ = open_clip.create_model_and_transforms("vmamba-nano", image_mean=(0.5, 0.5, 0.5))
    assert tuple(model.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(model.visual.preprocess_cfg["std"]) == tuple(IMAGENET_STD)
    # stock models are untouched (open_clip's OpenAI defaults)
    stock = open_clip.create_model("vit-nano")
    assert tuple(stock.visual.preprocess_cfg["mean"]) == tuple(open_clip.OPENAI_DATASET_MEAN)


def test_conversion_code_does_not_import_the_registry():
    """The registry (the one module touching open_clip internals) sits on top: the checkpoint
    conversion and pretrained-tag modules import neither it nor open_clip."""
    import subprocess
    import sys

    code = (
        "import sys; import mamba_clip.openclip_ext.checkpoints as ck, mamba_clip.openclip_ext.pretrained; "
        "assert 'vmamba-nano' in ck.our_model_names(); "
        "bad = [m for m in ('mamba_clip.openclip_ext.registry', 'open_clip') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**__import__("os").environ, "MAMBA_CLIP_NO_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
