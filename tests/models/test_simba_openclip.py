"""SiMBA open_clip models (issue 4): configs, creation, a short real training run."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from mamba_clip.models.simba import MODEL_ARGS
from mamba_clip.openclip_ext.configs import config_dir

TRUNK_WIDTH = {"simba-s": 448, "simba-b": 512, "simba-l": 512, "simba-nano": MODEL_ARGS["simba_nano"]["embed_dims"][-1]}
DROP_PATH = {"simba-s": 0.1, "simba-b": 0.1, "simba-l": 0.3}


def test_listed():
    assert set(TRUNK_WIDTH) <= set(open_clip.list_models())


@pytest.mark.parametrize("name", ["simba-s", "simba-b", "simba-l"])
def test_release_configs(name):
    cfg = json.loads((config_dir() / f"{name}.json").read_text())
    assert cfg == open_clip.get_model_config(name)
    assert cfg["embed_dim"] == 512 and cfg["quick_gelu"] is True
    v = cfg["vision_cfg"]
    assert v["timm_model_name"] == name.replace("-", "_") and v["image_size"] == 224
    assert v["timm_proj"] == "linear" and v["timm_proj_bias"] is False and v["timm_pool"] == "token"
    assert v["timm_drop_path"] == DROP_PATH[name]
    text = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
    assert cfg["text_cfg"] == text


def test_simba_s_projection_from_trunk_width():
    model = open_clip.create_model("simba-s")
    proj = model.visual.head.proj
    assert proj.in_features == TRUNK_WIDTH["simba-s"] and proj.out_features == 512 and proj.bias is None
    assert model.visual.trunk.num_features == 448


def test_nano_create_encode():
    model, _, preprocess = open_clip.create_model_and_transforms("simba-nano")
    tok = open_clip.get_tokenizer("simba-nano")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.randn(2, 3, 224, 224))
        txt = model.encode_text(tok(["a photo of a cat", "a dog"]))
    assert img.shape == (2, 512) and txt.shape == (2, 512)
    assert model.visual.head.proj.in_features == MODEL_ARGS["simba_nano"]["embed_dims"][-1]


def test_nano_short_training_loss_goes_down():
    """A few AdamW steps of the CLIP loss on a fixed batch of 8 image-text pairs (open_clip's ClipLoss,
    the trainer's loss) with the stem BN in train mode: the loss must drop clearly."""
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = open_clip.create_model("simba-nano")
    tok = open_clip.get_tokenizer("simba-nano")
    # 8 distinct images (coloured squares at different places) and captions
    images = torch.zeros(8, 3, 64, 64)
    for i in range(8):
        images[i, i % 3, 8 * (i % 4):8 * (i % 4) + 24, 8 * (i // 4):8 * (i // 4) + 32] = 2.0
    texts = tok([f"picture number {i}" for i in range(8)])
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(8):
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert min(losses[-3:]) < 0.6 * losses[0], losses
