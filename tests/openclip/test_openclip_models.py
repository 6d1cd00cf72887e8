"""Our towers as open_clip models, in process: registration, transforms, determinism, save/load,
locking, DDP-safety (no unused parameter), grad checkpointing, bf16 autocast, torch.compile.

Parametrised over every tower's nano config (VMamba issue 3, SiMBA issue 4).
"""

from __future__ import annotations

import json
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F
from _utils import subprocess_env

NANOS = ["vmamba-nano", "simba-nano"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE = 64  # any multiple of 32 works for our towers; small keeps CPU tests fast


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return open_clip.create_model(name, force_image_size=SIZE)


def _batch(name: str, n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g)
    texts = open_clip.get_tokenizer(name)([f"a photo of a thing number {i}" for i in range(n)])
    return images, texts


def _clip_loss(model, images, texts):
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(texts), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def test_configs_listed_in_a_fresh_process_without_importing_mamba_clip():
    code = (
        "import sys, json, open_clip\n"
        "names = [m for m in open_clip.list_models() if m.startswith(('vmamba-', 'simba-'))]\n"
        "print(json.dumps({'names': names, 'explicit': 'mamba_clip' in sys.argv}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = json.loads(out.stdout.strip().splitlines()[-1])["names"]
    assert {"vmamba-t220", "vmamba-s", "vmamba-b", "vmamba-nano"} <= set(names)


@pytest.mark.parametrize("name", ["vmamba-t220", "vmamba-s", "vmamba-b", "vmamba-nano"])
def test_vmamba_configs(name):
    cfg = open_clip.get_model_config(name)
    vc = cfg["vision_cfg"]
    assert cfg["embed_dim"] == 512 and cfg["quick_gelu"] is True
    assert vc["timm_model_name"] == name.replace("-", "_")
    assert (vc["timm_pool"], vc["timm_proj"], vc["timm_proj_bias"], vc["image_size"]) == ("avg", "linear", False, 224)
    if name != "vmamba-nano":
        assert cfg["text_cfg"] == {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}


def test_vmamba_s_tower_structure_and_transforms():
    model, _, preprocess = open_clip.create_model_and_transforms("vmamba-s")
    visual = model.visual
    assert type(visual.trunk).__name__ == "VMamba"
    assert sum(p.numel() for p in visual.trunk.parameters()) == 49_378_752
    # pooled by the trunk (classifier.norm + avg pool), one bias-free 768 -> 512 projection
    assert isinstance(visual.trunk.classifier.head, torch.nn.Identity)
    proj = visual.head.proj
    assert (proj.in_features, proj.out_features, proj.bias) == (768, 512, None)
    norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
    assert tuple(norm.mean) == pytest.approx(IMAGENET_MEAN) and tuple(norm.std) == pytest.approx(IMAGENET_STD)
    tok = open_clip.get_tokenizer("vmamba-s")
    assert tok(["a cat"]).shape == (1, 77)


@pytest.mark.parametrize("name", NANOS)
def test_encode_shapes(name):
    model = _model(name).eval()
    images, texts = _batch(name)
    with torch.no_grad():
        assert model.encode_image(images).shape == (3, 512)
        assert model.encode_text(texts).shape == (3, 512)


@pytest.mark.parametrize("name", NANOS)
def test_deterministic_for_a_seed(name):
    a, b = _model(name, seed=7), _model(name, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    images, texts = _batch(name)
    torch.manual_seed(3)
    la = _clip_loss(a.train(), images, texts)
    torch.manual_seed(3)
    lb = _clip_loss(b.train(), images, texts)  # same drop-path draws
    assert torch.equal(la, lb)


@pytest.mark.parametrize("name", NANOS)
def test_save_load_round_trip(name, tmp_path):
    model = _model(name, seed=1).eval()
    with torch.no_grad():  # make the weights differ from any fresh init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    other = _model(name, seed=2).eval()
    open_clip.load_checkpoint(other, str(path))
    images, texts = _batch(name)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), other.encode_image(images))
        assert torch.equal(model.encode_text(texts), other.encode_text(texts))
    reloaded = open_clip.create_model(name, pretrained=str(path), force_image_size=SIZE).eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reloaded.encode_image(images))


@pytest.mark.parametrize("name", NANOS)
def test_every_parameter_gets_a_gradient(name):
    """DDP without find_unused_parameters needs every trainable parameter in the graph."""
    model = _model(name).train()
    _clip_loss(model, *_batch(name)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", NANOS)
def test_lock_image_with_unlocked_groups(name):
    from timm.models import group_parameters

    model = _model(name).train()
    trunk = model.visual.trunk
    groups = group_parameters(trunk, trunk.group_matcher())
    model.lock_image_tower(unlocked_groups=2)
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    expect = {n for g in list(groups.values())[-2:] for n in g}
    assert trainable == expect and len(trainable) < sum(1 for _ in trunk.parameters())
    _clip_loss(model, *_batch(name)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in trunk.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", NANOS)
def test_grad_checkpointing_same_loss_and_grads(name):
    model = _model(name).eval()  # eval: no drop-path randomness, checkpointing still active with grad
    images, texts = _batch(name)
    _clip_loss(model, images, texts).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    _clip_loss(model, images, texts).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", NANOS)
def test_amp_bf16(name):
    model = _model(name).eval()
    images, texts = _batch(name)
    with torch.no_grad():
        ref = model.encode_image(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.encode_image(images)
        loss = _clip_loss(model, images, texts)
    loss.backward()
    assert torch.isfinite(loss)
    assert F.cosine_similarity(out.float(), ref, dim=-1).min() > 0.98
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
@pytest.mark.parametrize("name", NANOS)
def test_torch_compile_matches_eager(name):
    """What ``--torchcompile`` relies on: dynamo + AOT autograd through the tower (``aot_eager`` keeps
    it to tracing; the trainer's default inductor backend also worked, but its C++ build takes minutes
    on this CPU)."""
    model = _model(name).eval()
    images, _ = _batch(name, n=2)
    ref = model.encode_image(images)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.visual.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model.visual, backend="aot_eager")
    out = compiled(images)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for n, p in model.visual.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-3, atol=1e-5, msg=n)
