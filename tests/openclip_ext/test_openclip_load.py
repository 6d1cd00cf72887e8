"""End to end through open_clip with the nano models: ``pretrained=<release file | converted file>``,
tower selection, projection orientation, text tower against a hand-written reference, export and
re-import, errors for a checkpoint of another model."""

from __future__ import annotations

import pytest
import torch
from _release import reference_encode_text, training_checkpoint
from conftest import ORIGINAL_NANO

from mamba_clip.openclip_ext import checkpoints as ck
from mamba_clip.openclip_ext.pretrained import IMAGENET_MEAN, IMAGENET_STD


def _create(name, pretrained):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(pretrained))
    return model.eval(), preprocess


def _normalize(preprocess):
    from torchvision.transforms import Normalize

    return next(t for t in preprocess.transforms if isinstance(t, Normalize))


def _assert_state(model, expected):
    sd = model.state_dict()
    assert set(sd) == set(expected)
    for k, v in expected.items():
        assert torch.equal(sd[k], v.reshape(sd[k].shape)), k


@pytest.fixture(scope="module")
def ema_model(nano_release):
    """The nano model loaded from its release file (``pretrained=<path>``: EMA towers)."""
    return _create(nano_release.name, nano_release.path)


def test_release_file_loads_ema_towers(nano_release, ema_model):
    model, preprocess = ema_model
    _assert_state(model, nano_release.tower("ema"))
    norm = _normalize(preprocess)
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD


def test_converted_online_file(nano_release, tmp_path):
    dst = tmp_path / "online.safetensors"
    ck.convert_file(str(nano_release.path), str(dst), towers="online", model_name=nano_release.name)
    model, preprocess = _create(nano_release.name, dst)
    _assert_state(model, nano_release.tower("online"))
    assert tuple(_normalize(preprocess).mean) == IMAGENET_MEAN
    # the two copies differ, so picking the wrong one could not pass
    ema = nano_release.tower("ema")
    assert not torch.equal(ema["visual.head.proj.weight"], model.state_dict()["visual.head.proj.weight"])


def test_projection_orientation_and_text_tower(nano_release, ema_model, text_tokens):
    model, _ = ema_model
    sd = nano_release.sd
    proj = sd["image_projection_e"]  # (width, embed_dim) as the reference multiplies: feats @ P
    assert torch.equal(model.visual.head.proj.weight, proj.t())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = model.visual.trunk(x)
        assert feats.shape == (2, proj.shape[0])
        torch.testing.assert_close(model.encode_image(x), feats @ proj, rtol=1e-5, atol=1e-6)
        got = model.encode_text(text_tokens)
    heads = model.transformer.resblocks[0].attn.num_heads
    want = reference_encode_text(sd, text_tokens, ema=True, heads=heads)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    online = reference_encode_text(sd, text_tokens, ema=False, heads=heads)
    assert not torch.allclose(got, online, atol=1e-3)


def test_export_then_reimport_is_identity(nano_release, ema_model, tmp_path, text_tokens):
    model, _ = ema_model
    conv = tmp_path / "ema.safetensors"
    ck.convert_file(str(nano_release.path), str(conv), towers="ema", model_name=nano_release.name)
    exported = tmp_path / "exported.pt"
    ck.export_file(str(conv), str(exported))
    # both copies of the export hold the model's weights
    reloaded = ck.load_checkpoint_file(str(exported))
    for towers in ck.TOWERS:
        _assert_state(model, ck.to_open_clip(reloaded, towers=towers, target=nano_release.name))
    model2, _ = _create(nano_release.name, exported)  # re-import through open_clip
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model2.encode_image(x), model.encode_image(x))
        assert torch.equal(model2.encode_text(text_tokens), model.encode_text(text_tokens))


def test_checkpoint_of_another_model(nano_release):
    import open_clip

    other = "simba-nano" if nano_release.name != "simba-nano" else "vmamba-nano"
    with pytest.raises(ck.ModelMismatchError) as err:
        open_clip.create_model(other, pretrained=str(nano_release.path))
    msg = str(err.value)
    assert f"is for {ORIGINAL_NANO[nano_release.name]}, not for the target model {other}" in msg
    assert "checkpoint (" in msg or "missing from the checkpoint" in msg


def test_missing_ema_copy_through_open_clip(nano_release, tmp_path):
    import open_clip

    sd = {f"module.{k}": v for k, v in nano_release.sd.items() if not k.startswith("visual_e.")}
    path = tmp_path / "no_ema.pt"
    torch.save(training_checkpoint(sd, "CLIP_x"), path)
    with pytest.raises(ck.TowerMissingError, match="EMA"):
        open_clip.create_model(nano_release.name, pretrained=str(path))
