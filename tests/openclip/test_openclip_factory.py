"""open_clip factory options on our towers (issue 16): ``device`` / ``precision``, ``output_dict``,
``lock_image`` (fully locked, BatchNorm statistics frozen)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

NANOS = ["vmamba-nano", "simba-nano"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", NANOS + ["vmamba-s"])
def test_create_model_and_transforms_device_bf16(name):
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=DEVICE, precision="bf16")
    trunk = model.visual.trunk
    assert {p.dtype for p in trunk.parameters() if p.dim() > 1} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {DEVICE}
    assert preprocess.transforms[-1].mean == (0.485, 0.456, 0.406)
    images = torch.randn(2, 3, 64, 64, device=DEVICE)
    texts = open_clip.get_tokenizer(name)(["a dog", "a cat"]).to(DEVICE)
    model.eval()
    with torch.no_grad():
        img, txt, scale = model(images.bfloat16(), texts)
        ref = model.float().encode_image(images)
    assert img.dtype == txt.dtype == torch.bfloat16 and img.shape == (2, open_clip.get_model_config(name)["embed_dim"])
    assert torch.isfinite(img.float()).all() and scale.numel() == 1
    assert F.cosine_similarity(img.float(), F.normalize(ref, dim=-1), dim=-1).min() > 0.95


@pytest.mark.parametrize("name", NANOS)
def test_output_dict(name):
    model = open_clip.create_model(name, output_dict=True, force_image_size=64).eval()
    texts = open_clip.get_tokenizer(name)(["a dog"])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), texts)
    assert set(out) >= {"image_features", "text_features", "logit_scale"}
    dim = open_clip.get_model_config(name)["embed_dim"]
    assert out["image_features"].shape == out["text_features"].shape == (1, dim)


@pytest.mark.parametrize("name", NANOS)
def test_lock_image_fully(name):
    model = open_clip.create_model(name, force_image_size=64).train()
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    trunk = model.visual.trunk
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in model.visual.head.parameters())
    bns = [m for m in trunk.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    frozen = [m for m in trunk.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert not bns and (frozen or name.startswith("vmamba"))  # SiMBA's stem BatchNorms are frozen
    texts = open_clip.get_tokenizer(name)(["a dog", "a cat"])
    img, txt, _ = model(torch.randn(2, 3, 64, 64), texts)
    (img @ txt.t()).sum().backward()
    assert all(p.grad is None for p in trunk.parameters())
    assert all(p.grad is not None for p in model.visual.head.parameters())
