"""VMamba backbones (mamba_clip.models.vmamba): architecture facts, forward semantics, timm surface."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from mamba_clip.models.vmamba import SS2D, VMAMBA_VARIANTS, VMamba, create_vmamba
from mamba_clip.ops import double_backward, scan_backend

TRUNK_PARAMS = {"vmamba_t220": 31_715_904, "vmamba_s": 49_378_752, "vmamba_b": 87_532_800}
KEY_LISTS = {"vmamba_t220": "CLIP_VMamba_T220.tsv", "vmamba_s": "CLIP_VMamba_S.tsv", "vmamba_b": "CLIP_VMamba_B.tsv"}


def _tiny(forward_type="v3noz", **kw):
    args = dict(depths=(1, 1, 1, 1), dims=8, forward_type=forward_type, drop_path_rate=0.0, num_classes=5)
    args.update(kw)
    return VMamba(**args)


# ---------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("name", sorted(TRUNK_PARAMS))
def test_trunk_param_count_and_checkpoint_keys(name, checkpoint_keys_dir):
    model = timm.create_model(name, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == TRUNK_PARAMS[name]
    ref = {}
    for line in (checkpoint_keys_dir / KEY_LISTS[name]).read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith("module.visual."):
            ref[key[len("module.visual."):]] = tuple(eval(shape))  # noqa: S307 - "(a, b)" literals
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert mine == ref
    # with the ImageNet head the only extra entries are VMamba's classifier.head
    full = timm.create_model(name, num_classes=1000)
    extra = {k: tuple(v.shape) for k, v in full.state_dict().items() if k not in ref}
    assert extra == {"classifier.head.weight": (1000, model.num_features), "classifier.head.bias": (1000,)}


def test_variant_settings():
    t220, s, b = (timm.create_model(n, num_classes=0) for n in ("vmamba_t220", "vmamba_s", "vmamba_b"))
    assert [len(st.blocks) for st in t220.layers] == [2, 2, 4, 2]
    assert [len(st.blocks) for st in s.layers] == [2, 2, 15, 2] == [len(st.blocks) for st in b.layers]
    assert (t220.num_features, s.num_features, b.num_features) == (768, 768, 1024)
    op_t, op_s = t220.layers[0].blocks[0].op, s.layers[0].blocks[0].op
    assert op_t.with_z and not op_s.with_z
    assert (op_s.d_state, op_s.d_inner, op_s.dt_rank) == (1, 192, 6)
    assert op_s.conv2d.bias is None and op_s.conv2d.kernel_size == (3, 3)
    # stochastic depth ends at the variant's rate
    assert math.isclose(s.layers[-1].blocks[-1].drop_path.drop_prob, 0.3, rel_tol=1e-6)
    assert math.isclose(b.layers[-1].blocks[-1].drop_path.drop_prob, 0.6, rel_tol=1e-6)
    assert math.isclose(t220.layers[-1].blocks[-1].drop_path.drop_prob, 0.2, rel_tol=1e-6)
    cfg = s.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)


def test_init_follows_vmamba():
    op = SS2D(32, d_state=4, ssm_ratio=2.0)
    dt = F.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(op.A_logs, torch.log(torch.arange(1.0, 5.0)).expand(4 * 64, 4))
    assert torch.all(op.Ds == 1)
    bound = op.dt_rank**-0.5
    assert op.dt_projs_weight.abs().max() <= bound
    model = _tiny()
    lin = model.layers[0].blocks[0].mlp.fc1
    assert torch.all(lin.bias == 0) and lin.weight.std() < 0.05


# ------------------------------------------------------------------------------------ semantics
def _ss2d_oracle(op: SS2D, x: torch.Tensor) -> torch.Tensor:
    """VMamba SS2D written out plainly: explicit scan orders and the sequential recurrence."""
    b, h, w, _ = x.shape
    L, d, r, n = h * w, op.d_inner, op.dt_rank, op.d_state
    xz = x @ op.in_proj.weight.t()
    u, z = (xz[..., :d], xz[..., d:]) if op.with_z else (xz, None)
    u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), op.conv2d.weight, op.conv2d.bias, padding=1, groups=d))
    u = u.reshape(b, d, L)
    row = torch.arange(L)
    col = torch.arange(L).view(h, w).t().reshape(-1)
    orders = [row, col, row.flip(0), col.flip(0)]
    y = torch.zeros(b, d, L, dtype=x.dtype)
    for k, order in enumerate(orders):
        seq = u[:, :, order]
        dbl = torch.einsum("bdl,cd->bcl", seq, op.x_proj_weight[k])
        dtr, bk, ck = dbl[:, :r], dbl[:, r:r + n], dbl[:, r + n:]
        dt = F.softplus(torch.einsum("brl,dr->bdl", dtr, op.dt_projs_weight[k]) + op.dt_projs_bias[k][:, None])
        a = -torch.exp(op.A_logs[k * d:(k + 1) * d])
        dk = op.Ds[k * d:(k + 1) * d]
        state = torch.zeros(b, d, n, dtype=x.dtype)
        out = []
        for i in range(L):
            dti = dt[:, :, i, None]
            state = torch.exp(dti * a) * state + dti * bk[:, None, :, i] * seq[:, :, i, None]
            out.append((state * ck[:, None, :, i]).sum(-1) + dk * seq[:, :, i])
        y[:, :, order] += torch.stack(out, dim=-1)
    y = F.layer_norm(y.view(b, d, h, w).permute(0, 2, 3, 1), (d,), op.out_norm.weight, op.out_norm.bias)
    if z is not None:
        y = y * F.silu(z)
    return y @ op.out_proj.weight.t()


@pytest.mark.parametrize("forward_type", ["v2", "v3noz", "v05_noz"])
def test_ss2d_matches_plain_oracle(forward_type):
    op = SS2D(8, d_state=3, ssm_ratio=2.0, forward_type=forward_type)
    with torch.no_grad():
        op.out_norm.weight.normal_()
        op.out_norm.bias.normal_()
    x = torch.randn(2, 3, 5, 8)  # non-square: any H/W mix-up in the scan orders shows
    with torch.no_grad():
        got = op(x)
        want = _ss2d_oracle(op.double(), x.double()).float()
    op.float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_backends_agree_inside_the_model():
    model = _tiny("v2").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with scan_backend("ref"):
            ref = model(x)
        with scan_backend("torch"):
            tor = model(x)
        auto = model(x)
    torch.testing.assert_close(tor, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(auto, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [224, 256])
def test_forward_shapes(size):
    model = timm.create_model("vmamba_nano").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, size // 32, size // 32, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, 1000)
        assert model(torch.randn(1, 3, size, size + 64)).shape == (1, 1000)  # non-square


def test_t220_forward_224():
    model = timm.create_model("vmamba_t220", num_classes=0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 768) and torch.isfinite(out).all()


def test_micro_batched_inference_equals_full_batch(monkeypatch):
    model = timm.create_model("vmamba_nano", num_classes=0).eval()
    x = torch.randn(5, 3, 96, 96)
    calls = []
    orig = SS2D._scan_merge

    def spy(self, u, *args):
        calls.append(tuple(u.shape))
        return orig(self, u, *args)

    monkeypatch.setattr(SS2D, "_scan_merge", spy)
    # the unfused path (the fused N == 1 CPU path builds no 4x tensors and never splits channels)
    with torch.no_grad(), scan_backend("torch"):
        model.inference_chunk_bytes = 0
        full = model(x)
        assert calls[0] == (5, 24, 24, 48)  # whole batch, all channels (d_inner = 2 x dim 24)
        calls.clear()
        # stage 0: MLP map 4 * 24 * 576 * 4 B = 221 kB per image -> one image per chunk; its scan
        # tensors (4 x 48 x 576 x 4 B = 442 kB) -> two channel halves
        model.inference_chunk_bytes = 300_000
        chunked = model(x)
    assert calls[:2] == [(1, 24, 24, 24), (1, 24, 24, 24)]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("forward_type", ["v2", "v3noz"])
def test_inference_fast_path_matches_autograd_path(forward_type):
    model = _tiny(forward_type).eval()
    x = torch.randn(3, 3, 64, 64)
    with_graph = model(x)  # autograd path (grad enabled)
    with torch.inference_mode():
        fast = model(x)  # in-place inference path, micro-batched
    torch.testing.assert_close(fast, with_graph.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("forward_type", ["v2", "v3noz"])
def test_gradients_reach_every_parameter(forward_type):
    model = _tiny(forward_type).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []


def test_grad_checkpointing_same_result():
    model = _tiny().train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(st.grad_checkpointing for st in model.layers)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_hessian_vector_product_through_the_model():
    torch.manual_seed(0)
    model = _tiny("v2", dims=4, depths=(1, 1, 1, 1), num_classes=3).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)  # last stage 2x2: every A_log matters
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]

    def grads(eps: float):
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(eps * vi)
        g = torch.autograd.grad(model(x).square().sum(), params)
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.sub_(eps * vi)
        return g

    with double_backward():
        g = torch.autograd.grad(model(x).square().sum(), params, create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params, allow_unused=True)
    hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]
    eps = 1e-7  # central differences of the float64 gradient; truncation error ~ eps^2
    gp, gm = grads(eps), grads(-eps)
    fd = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(gp, gm)])
    num = torch.cat([h.flatten() for h in hv])
    assert torch.linalg.norm(fd) > 0
    assert torch.linalg.norm(num - fd) / torch.linalg.norm(fd) < 1e-5


# ----------------------------------------------------------------------------------- timm surface
def test_classifier_reset_and_pooling():
    model = _tiny(num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    # no pooling: the normalised channels-last map (output_fmt NHWC), the head acting per position
    model.reset_classifier(0, global_pool="")
    feats = model.forward_features(x)
    assert model.output_fmt == "NHWC" and feats.shape == (2, 2, 2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model.classifier.norm(feats))
    model.reset_classifier(3, global_pool="")
    assert model.forward_head(feats).shape == (2, 2, 2, 3)
    model.reset_classifier(4, global_pool="avg")
    assert model(x).shape == (2, 4) and model.get_classifier().out_features == 4
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, global_pool="max")


def test_group_matcher_covers_all_parameters_in_order():
    from timm.models import group_parameters

    model = timm.create_model("vmamba_nano")
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    fine = group_parameters(model, model.group_matcher())
    order = list(fine.values())
    assert order[0][0].startswith("patch_embed")
    assert any(n.startswith("classifier.norm") for n in order[-2]) and order[-1][0].startswith("classifier.head")
    # a stage's downsample comes after its blocks and before the next stage
    flat = [n for g in order for n in g]
    assert flat.index("layers.0.downsample.1.weight") > flat.index("layers.0.blocks.0.norm.weight")
    assert flat.index("layers.0.downsample.1.weight") < flat.index("layers.1.blocks.0.norm.weight")


def test_deterministic_for_a_seed():
    torch.manual_seed(123)
    a = timm.create_model("vmamba_nano").eval()
    torch.manual_seed(123)
    b = timm.create_model("vmamba_nano").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown variant"):
        create_vmamba("vmamba_xl")
    with pytest.raises(RuntimeError, match="vmamba_xl"):
        timm.create_model("vmamba_xl")
    model = timm.create_model("vmamba_nano")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match="multiples of 32"):
        timm.create_model("vmamba_nano", img_size=200)
    with pytest.raises(ValueError, match="forward_type"):
        VMamba(forward_type="v9")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 64, 64))


def test_registered_names():
    assert set(VMAMBA_VARIANTS) == {"vmamba_t220", "vmamba_s", "vmamba_b", "vmamba_nano"}
    assert set(VMAMBA_VARIANTS) <= set(timm.list_models("vmamba_*"))
