"""SiMBA backbones (issue 4): sizes, checkpoint layout, forward/backward, timm surface, BatchNorm modes."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from mamba_clip.models.simba import MODEL_ARGS, EinFFT, SiMBA
from mamba_clip.ops import scan_backend

NANO_DIMS = MODEL_ARGS["simba_nano"]["embed_dims"]  # stage widths of simba_nano
NANO_C = NANO_DIMS[-1]

# The table: hyper-parameters and exact trunk parameter counts (no head).
VARIANTS = {
    "simba_s": dict(stem=32, dims=(64, 128, 320, 448), depths=(3, 4, 6, 3), count=25_693_088, ckpt="S"),
    "simba_b": dict(stem=64, dims=(64, 128, 320, 512), depths=(3, 4, 12, 3), count=39_183_744, ckpt="B"),
    "simba_l": dict(stem=64, dims=(96, 192, 384, 512), depths=(3, 6, 18, 3), count=65_736_512, ckpt="L"),
}
MLP_RATIOS = (8, 8, 4, 4)


@functools.cache
def _big(name: str, channel_mixer: str = "mlp") -> SiMBA:
    return timm.create_model(name, num_classes=0, channel_mixer=channel_mixer)


def _nano(**kw) -> SiMBA:
    return timm.create_model("simba_nano", **kw)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def expected_trunk_params(stem, dims, depths, mlp_ratios, mixer="mlp", d_state=64, d_conv=4, expand=2,
                          einfft_blocks=4):
    """Trunk parameter count from the architecture (written independently of the model code)."""

    def mamba(d):  # mamba_ssm.Mamba: in_proj, conv1d (+bias), x_proj, dt_proj (+bias), A_log, D, out_proj
        di, r = expand * d, math.ceil(d / 16)
        return (2 * di * d + di * d_conv + di + (r + 2 * d_state) * di + di * r + di + di * d_state + di
                + d * di)

    def channel_mixer(d, hidden, dwconv):
        if mixer == "einfft":  # 2 complex block-diagonal weights + 2 complex biases
            bs = d // einfft_blocks
            return 2 * (2 * einfft_blocks * bs * bs) + 2 * (2 * einfft_blocks * bs)
        return (d * hidden + hidden) + (9 * hidden + hidden if dwconv else 0) + (hidden * d + d)

    ln = lambda d: 2 * d
    total = 3 * stem * 49 + 2 * 9 * stem * stem + 3 * 2 * stem  # 7x7 + two 3x3 convs (no bias), 3 BNs
    total += 9 * stem * dims[0] + dims[0] + ln(dims[0])  # stem projection + LayerNorm
    for i, (d, n, r) in enumerate(zip(dims, depths, mlp_ratios)):
        if i:
            total += 9 * dims[i - 1] * d + d + ln(d)  # downsample conv + LayerNorm
        total += n * (ln(d) + ln(d) + mamba(d) + channel_mixer(d, int(d * r), True)) + ln(d)  # blocks, norm_i
    d = dims[-1]
    total += ln(d) + ln(d) + mamba(d) + channel_mixer(d, int(d * mlp_ratios[-1]), False)  # class block
    return total


# ------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", list(VARIANTS))
def test_trunk_parameter_count_exact(name):
    v = VARIANTS[name]
    assert _n_params(_big(name)) == v["count"]
    assert expected_trunk_params(v["stem"], v["dims"], v["depths"], MLP_RATIOS) == v["count"]


@pytest.mark.parametrize("name", ["simba_s", "simba_nano"])
def test_einfft_parameter_count(name):
    if name == "simba_nano":
        model = _nano(num_classes=0, channel_mixer="einfft")
        n = MODEL_ARGS["simba_nano"]
        a = dict(stem=n["stem_hidden_dim"], dims=n["embed_dims"], depths=n["depths"], d_state=n["d_state"])
    else:
        model = _big(name, "einfft")
        v = VARIANTS[name]
        a = dict(stem=v["stem"], dims=v["dims"], depths=v["depths"], d_state=64)
    expected = expected_trunk_params(a["stem"], a["dims"], a["depths"], MLP_RATIOS if name != "simba_nano"
                                     else (4, 4, 4, 4), mixer="einfft", d_state=a["d_state"])
    assert _n_params(model) == expected
    # per block: C**2 + 4 C with 4 blocks
    assert _n_params(EinFFT(448)) == 448 ** 2 + 4 * 448


def test_nano_is_small():
    assert 500_000 < _n_params(_nano(num_classes=0)) < 1_500_000


# ------------------------------------------------------------------------ checkpoint key layout
def _tsv_subtree(path: Path, prefix: str):
    out = {}
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        if key.startswith(prefix):
            out[key[len(prefix):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_matches_release_keys(checkpoint_keys_dir, name):
    tsv = checkpoint_keys_dir / f"CLIP_Simba_{VARIANTS[name]['ckpt']}.tsv"
    ours = {k: tuple(v.shape) for k, v in _big(name).state_dict().items()}
    for prefix in ("module.visual.", "module.visual_e."):
        ref = _tsv_subtree(tsv, prefix)
        assert set(ours) == set(ref), (sorted(set(ours) - set(ref))[:5], sorted(set(ref) - set(ours))[:5])
        bad = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
        assert not bad, list(bad.items())[:5]


# ------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("size", [224, 256])
def test_forward_shapes_nano(size):
    m = _nano(num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, size // 32, size // 32, NANO_C)
        assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
        out = m(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_forward_full_size_s_at_256():
    m = _big("simba_s").eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 256, 256))
    assert y.shape == (1, 448) and torch.isfinite(y).all()


def test_non_square_and_384():
    m = _nano(num_classes=0).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 384, 320)).shape == (1, 12, 10, NANO_C)


@pytest.mark.parametrize("size", [(225, 224), (224, 200), (100, 100)])
def test_size_not_divisible_by_32_raises(size):
    m = _nano(num_classes=0)
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, *size))


def test_bad_arguments_raise():
    with pytest.raises(RuntimeError, match="simba_xl"):
        timm.create_model("simba_xl")
    with pytest.raises(ValueError, match="channel_mixer"):
        _nano(channel_mixer="fft")
    with pytest.raises(ValueError, match="global_pool"):
        _nano(global_pool="avg")
    with pytest.raises(ValueError, match="global_pool"):
        _nano().reset_classifier(0, global_pool="max")


def test_head_pools_the_mean_token_only():
    """The class block sees only the mean of the stage-4 tokens: permuting tokens changes nothing."""
    m = _nano(num_classes=0).eval()
    feats = torch.randn(2, 7, 7, NANO_C)
    perm = torch.randperm(49)
    shuffled = feats.reshape(2, 49, NANO_C)[:, perm].reshape(2, 7, 7, NANO_C)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_head(feats), m.forward_head(shuffled), rtol=1e-5, atol=1e-6)


def test_backends_agree_inside_model():
    m = _nano(num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with scan_backend("ref"):
            ref = m(x)
        with scan_backend("torch"):
            out = m(x)
        out_auto = m(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_auto, ref, rtol=1e-4, atol=1e-5)


def test_deterministic_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(1)
    a = _nano(num_classes=5).eval()
    torch.manual_seed(1)
    b = _nano(num_classes=5).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    path = tmp_path / "simba.pt"
    torch.save(a.state_dict(), path)
    c = _nano(num_classes=5).eval()
    c.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), c(x))
        assert torch.equal(a(x), a(x))


# ---------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mixer,backend", [("mlp", "auto"), ("einfft", "auto"), ("mlp", "torch")])
def test_gradients_reach_every_parameter(mixer, backend):
    """Every parameter gets a gradient (DDP without find_unused_parameters). "torch" is the scan
    backend used on CUDA without mamba-ssm and under ``double_backward()``."""
    m = _nano(num_classes=3, channel_mixer=mixer, drop_path_rate=0.0).train()
    with scan_backend(backend):
        out = m(torch.randn(2, 3, 64, 64))
        out.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.stride() == p.stride(), name  # DDP buckets need equal strides (no copy, no warning)
        if name == "post_network.0.attn.mamba.A_log":
            # The class block runs Mamba over one token from a zero state, so exp(dt A) multiplies zero:
            # A_log is in the graph (DDP-safe) but its gradient is exactly 0 in the released design.
            assert torch.count_nonzero(p.grad) == 0
            continue
        assert p.grad.abs().sum() > 0, name


def test_drop_path_schedule_and_modes():
    m = timm.create_model("simba_s", num_classes=0, depths=(1, 1, 2, 1), drop_path_rate=0.4)
    rates = [getattr(blk.drop_path, "drop_prob", 0.0) for i in range(4) for blk in getattr(m, f"block{i + 1}")]
    assert rates[0] == 0.0 and rates == sorted(rates) and abs(rates[-1] - 0.4) < 1e-6  # linear in depth
    assert not hasattr(m.post_network[0], "drop_path")  # the class block has none
    nano = _nano(num_classes=0, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        nano.eval()
        assert torch.equal(nano(x), nano(x))
        nano.train()
        assert not torch.equal(nano(x), nano(x))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_grad_checkpointing_same_output_and_grads(backend):
    """Same outputs and gradients with checkpointed blocks, also when the forward ran under a
    ``scan_backend`` context that the recomputation (inside backward) is no longer in."""
    torch.manual_seed(0)
    a = _nano(num_classes=3, drop_path_rate=0.0).train()
    b = _nano(num_classes=3, drop_path_rate=0.0).train()
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    with scan_backend(backend):
        ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=n)
    # the stem BatchNorm is outside the checkpointed blocks: stats updated exactly once per step
    for (n, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(ba, bb), n


# ------------------------------------------------------------------------------- timm surface
def test_timm_surface():
    m = _nano()
    assert m.num_features == NANO_C and m.default_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert m.default_cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert m.pretrained_cfg["architecture"] == "simba_nano"
    assert m.get_classifier().out_features == 1000
    m.reset_classifier(7)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, NANO_C)
    m.reset_classifier(0, global_pool="")
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, NANO_C)
    assert set(timm.list_models("simba_*")) >= {"simba_s", "simba_b", "simba_l", "simba_nano"}


def test_forward_intermediates_and_features_only():
    m = _nano(num_classes=0).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, feats = m.forward_intermediates(x)
        assert [f.shape for f in feats] == [(1, c, 128 // s, 128 // s) for c, s in zip(NANO_DIMS, (4, 8, 16, 32))]
        torch.testing.assert_close(final, m.forward_features(x))
        fo = timm.create_model("simba_nano", features_only=True, out_indices=(1, 3)).eval()
        missing, unexpected = fo.model.load_state_dict(m.state_dict(), strict=False)
        # features_only prunes the class-token head (class block, norm4, classifier), as timm does
        assert not missing and unexpected and all(k.startswith(("post_network.", "norm4.")) for k in unexpected)
        outs = fo(x)
    want = [NANO_DIMS[1], NANO_DIMS[3]]
    assert [o.shape[1] for o in outs] == want and fo.feature_info.channels() == want
    torch.testing.assert_close(outs[1], feats[3])


def test_group_matcher_covers_all_in_execution_order():
    from timm.models import group_parameters

    m = _nano(num_classes=4)
    for coarse in (False, True):
        groups = group_parameters(m, m.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in m.named_parameters())
        first, last = groups[min(groups)], groups[max(groups)]
        assert all(n.startswith("patch_embed1.") for n in first)
        assert set(last) == {"head.weight", "head.bias"}
        before_head = groups[max(groups) - 1]
        assert any(n.startswith("post_network.") for n in before_head)
        assert any(n.startswith("norm4.") for n in before_head)
    fine = group_parameters(m, m.group_matcher())
    assert len(fine) == 1 + 5 + 1 + 1  # stem, 5 blocks, class block + norm4, head


# ---------------------------------------------------------------------------- BatchNorm modes
def _bn_buffers(m):
    return {n: b.clone() for n, b in m.named_buffers() if "patch_embed1.conv" in n}


def test_batchnorm_eval_uses_running_stats():
    m = _nano(num_classes=0).eval()
    before = _bn_buffers(m)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batch = m(x)
        single = m(x[:1])
    after = _bn_buffers(m)
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(batch[:1], single, rtol=1e-4, atol=1e-5)


def test_batchnorm_train_updates_stats():
    m = _nano(num_classes=0, drop_path_rate=0.0).train()
    before = _bn_buffers(m)
    m(torch.randn(3, 3, 64, 64))
    after = _bn_buffers(m)
    assert torch.equal(after["patch_embed1.conv.1.num_batches_tracked"], torch.tensor(1))
    key = "patch_embed1.conv.1.running_mean"
    assert not torch.equal(before[key], after[key])


@pytest.mark.parametrize("unlocked_groups", [0, 2])
def test_lock_image_freeze_bn_stats(unlocked_groups):
    """open_clip's --lock-image --lock-image-freeze-bn-stats: the stem BNs become FrozenBatchNorm2d,
    their statistics never change in train mode, and their outputs no longer depend on the batch."""
    import open_clip
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = open_clip.create_model("simba-nano")
    model.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=True)
    trunk = model.visual.trunk
    stem_bns = [trunk.patch_embed1.conv[i] for i in (1, 4, 7)]
    assert all(isinstance(bn, FrozenBatchNorm2d) for bn in stem_bns)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in trunk.modules())
    stats = {n: b.clone() for n, b in trunk.named_buffers()}
    model.train()
    x = torch.randn(3, 3, 64, 64)
    feats = trunk.patch_embed1(x)
    assert all(torch.equal(stats[n], b) for n, b in trunk.named_buffers())
    torch.testing.assert_close(trunk.patch_embed1(x[:1]), feats[:1], rtol=1e-4, atol=1e-5)
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    if unlocked_groups == 0:
        assert not trainable
    else:
        last_groups = ("post_network.", "norm4.", "block4.", "patch_embed4.")
        assert trainable and all(n.startswith(last_groups) for n in trainable)
    # a checkpoint of the frozen model loads into a fresh (unfrozen) one and vice versa
    fresh = open_clip.create_model("simba-nano")
    fresh.load_state_dict(model.state_dict())
    model.load_state_dict(fresh.state_dict())


# ------------------------------------------------------------------- mamba-ssm state-dict exchange
def _mamba_ssm_layout(d_model, d_state=64, d_conv=4, expand=2):
    """Parameter names and shapes of ``mamba_ssm.modules.mamba_simple.Mamba`` (bias=False,
    conv_bias=True), from mamba-ssm's source."""
    di, r = expand * d_model, math.ceil(d_model / 16)
    return {
        "A_log": (di, d_state), "D": (di,),
        "in_proj.weight": (2 * di, d_model),
        "conv1d.weight": (di, 1, d_conv), "conv1d.bias": (di,),
        "x_proj.weight": (r + 2 * d_state, di),
        "dt_proj.weight": (di, r), "dt_proj.bias": (di,),
        "out_proj.weight": (d_model, di),
    }


def _mamba_ssm_forward(sd, x, d_state):
    """mamba-ssm's Mamba forward (the unfused path, ``selective_scan_ref`` semantics), in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    bsz, L, _ = x.shape
    di = sd["D"].shape[0]
    r = sd["dt_proj.weight"].shape[1]
    xz = x @ sd["in_proj.weight"].T
    xi, z = xz[..., :di], xz[..., di:]
    xi = F.conv1d(xi.transpose(1, 2), sd["conv1d.weight"], sd["conv1d.bias"], padding=3, groups=di)[..., :L]
    xi = F.silu(xi).transpose(1, 2)  # (b, L, di)
    dbl = xi @ sd["x_proj.weight"].T
    dt = F.softplus(dbl[..., :r] @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])
    Bm, Cm = dbl[..., r:r + d_state], dbl[..., r + d_state:]
    A = -torch.exp(sd["A_log"])
    h = torch.zeros(bsz, di, d_state, dtype=torch.float64)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bm[:, t, None, :] * xi[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    y = (torch.stack(ys, 1) + xi * sd["D"]) * F.silu(z)
    return y @ sd["out_proj.weight"].T


@pytest.mark.parametrize("name", ["simba_s", "simba_nano"])
def test_token_mixer_has_mamba_ssm_layout(name):
    m = _big(name) if name != "simba_nano" else _nano()
    dims = VARIANTS[name]["dims"] if name != "simba_nano" else NANO_DIMS
    d_state = 64 if name != "simba_nano" else 8
    for i, d in enumerate(dims):
        mixer = getattr(m, f"block{i + 1}")[0].attn.mamba
        assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == _mamba_ssm_layout(d, d_state)
    cls_mixer = m.post_network[0].attn.mamba
    cls_layout = {k: tuple(v.shape) for k, v in cls_mixer.state_dict().items()}
    assert cls_layout == _mamba_ssm_layout(dims[-1], d_state)


def test_mamba_ssm_state_dict_loads_and_computes_the_same():
    """A state dict in mamba_ssm.Mamba's layout loads strictly into our token mixer and gives
    mamba-ssm's output; ours saves back in that layout."""
    m = timm.create_model("simba_s", num_classes=0, depths=(1, 1, 1, 1)).eval()
    mixer = m.block2[0].attn.mamba  # d_model 128, d_state 64
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in _mamba_ssm_layout(128).items()}
    sd["A_log"] = torch.log(torch.arange(1, 65, dtype=torch.float32)).repeat(256, 1)
    sd["dt_proj.bias"] = torch.full((256,), -3.0)
    mixer.load_state_dict(sd, strict=True)
    x = torch.randn(2, 20, 128, generator=g)
    with torch.no_grad():
        ours = mixer(x)
    torch.testing.assert_close(ours.double(), _mamba_ssm_forward(sd, x, 64), rtol=1e-4, atol=1e-5)
    back = mixer.state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


# ------------------------------------------------------------------------------------- EinFFT
def _einfft_released_formula(mod: EinFFT, x: torch.Tensor) -> torch.Tensor:
    """The SiMBA code's EinFFT in real arithmetic: real/imaginary parts of each complex product
    written out, ReLU on both parts after layer 1, soft-shrink, inverse FFT, real part."""
    b, n, c = x.shape
    nb, bs = mod.num_blocks, mod.block_size
    z = torch.fft.fft2(x.reshape(b, n, nb, bs).double(), dim=(1, 2), norm="ortho")
    w1, w2 = mod.complex_weight_1.double(), mod.complex_weight_2.double()
    b1, b2 = mod.complex_bias_1.double(), mod.complex_bias_2.double()
    mul = lambda t, w: torch.einsum("...bd,bdk->...bk", t, w)
    r1 = F.relu(mul(z.real, w1[0]) - mul(z.imag, w1[1]) + b1[0])
    i1 = F.relu(mul(z.real, w1[1]) + mul(z.imag, w1[0]) + b1[1])
    r2 = mul(r1, w2[0]) - mul(i1, w2[1]) + b2[0]
    i2 = mul(r1, w2[1]) + mul(i1, w2[0]) + b2[1]
    lam = mod.sparsity_threshold
    zc = torch.complex(F.softshrink(r2, lam), F.softshrink(i2, lam))
    return torch.fft.ifft2(zc, dim=(1, 2), norm="ortho").real.reshape(b, n, c)


def test_einfft_matches_released_formula():
    mod = EinFFT(32)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 0.3)  # large enough that ReLU and soft-shrink are active
        x = torch.randn(2, 4, 4, 32)
        out = mod(x)
        ref = _einfft_released_formula(mod, x.reshape(2, 16, 32)).reshape(2, 4, 4, 32)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    assert out.shape == x.shape and out.dtype == x.dtype
    with pytest.raises(ValueError, match="divisible"):
        EinFFT(30)


def test_einfft_under_bf16_autocast():
    m = _nano(num_classes=0, channel_mixer="einfft").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 3, 64, 64))
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_fused_inference_path_matches_autograd_path():
    """Under no_grad the channel mixer runs oneDNN's fused depthwise-conv + GELU; same numbers as the
    conv -> GELU path autograd uses."""
    from mamba_clip.models import simba as simba_mod

    m = _nano(num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = m(x)
        assert simba_mod._fused_dwconv_gelu_ok(torch.zeros(1)) == simba_mod._HAS_MKLDNN_POINTWISE
    plain = m(x)
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-5, atol=1e-6)
