"""Dense-task and factory surface of both families (issue 16): features_only maps, forward_intermediates,
pruning, fx feature extraction, factory device / dtype, meta-device init, reset_classifier placement."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

NANOS = ("vmamba_nano", "simba_nano")


@pytest.mark.parametrize("name,channels", [("vmamba_s", [96, 192, 384, 768]), ("simba_l", [96, 192, 384, 512])])
def test_features_only_big_towers_match_feature_info(name, channels):
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = model(x)
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(m.shape) for m in maps] == [(1, c, 64 // r, 64 // r) for c, r in zip(channels, [4, 8, 16, 32])]


@pytest.mark.parametrize("name", NANOS)
def test_features_only_any_out_indices_equals_forward_intermediates(name):
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, taps = full.forward_intermediates(x)
        torch.testing.assert_close(final, full.forward_features(x))
        for out_indices in [(0,), (1, 3), (-1,), (0, 1, 2, 3)]:
            fo = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
            fo.model.load_state_dict(full.state_dict(), strict=False)
            want = [taps[i] for i in out_indices]
            got = fo(x)
            assert fo.feature_info.channels() == [t.shape[1] for t in want]
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)
        # NHWC, stop_early, the last-n form and the optional final norm
        nhwc = full.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[1], taps[3].permute(0, 2, 3, 1))
        last, early = full.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(early[0], taps[1])
        torch.testing.assert_close(last.permute(0, 3, 1, 2), taps[1])
        normed = full.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        if name.startswith("vmamba"):  # the final LayerNorm; SiMBA's final norm belongs to the token head
            torch.testing.assert_close(normed, full.classifier.norm(taps[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="output_fmt"):
        full.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", NANOS)
def test_pruned_features_train_every_parameter(name):
    """The DDP case: a features_only tower pruned to an early tap has no parameter without a gradient."""
    model = timm.create_model(name, features_only=True, out_indices=(0, 1)).train()
    assert len([m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]) > 0
    sum(f.square().mean() for f in model(torch.randn(2, 3, 64, 64))).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    pruned = copy.deepcopy(timm.create_model(name))
    pruned.prune_intermediate_layers([1], prune_head=True)
    assert pruned.num_features == pruned.feature_info[1]["num_chs"] and pruned.num_classes == 0
    assert pruned(torch.randn(1, 3, 64, 64)).shape[-1] == pruned.num_features


@pytest.mark.parametrize("name", NANOS)
def test_fx_feature_extraction(name):
    """timm's fx feature extractor (``feature_cls="fx"``) traces our forward and returns the taps."""
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    torch.manual_seed(0)  # same init
    fx = timm.create_model(name, features_only=True, feature_cls="fx").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = full.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        got = fx(x)
    got = list(got.values()) if isinstance(got, dict) else got
    assert len(got) == 4
    for g, t in zip(got, taps):
        torch.testing.assert_close(g, t)
    with pytest.raises(ValueError, match="multiples of 32"):  # the input check survives tracing
        fx(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("name", NANOS)
def test_bf16_dtype_from_the_factory_on_cpu(name):
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    torch.manual_seed(0)
    model = timm.create_model(name, dtype=torch.bfloat16).eval()
    assert {p.dtype for n, p in model.named_parameters() if not n.endswith(("A_log", ".D"))} == {torch.bfloat16}
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x.bfloat16())
        y_ref = ref(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert (y.float() - y_ref).abs().max() <= 0.1 * y_ref.abs().max()


@pytest.mark.parametrize("name", NANOS)
def test_meta_build_then_init_weights(name):
    with torch.device("meta"):
        model = timm.create_model(name, in_chans=1, num_classes=5)
    assert all(p.device.type == "meta" for p in model.parameters())
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
        model.init_weights()
        bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not torch.isfinite(t).all()]
        assert not bad
        assert torch.isfinite(model.eval()(torch.randn(1, 1, 64, 64))).all()


@pytest.mark.parametrize("name", NANOS)
def test_reset_classifier_keeps_dtype_and_mode(name):
    model = timm.create_model(name).to(torch.float64).eval()
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.weight.dtype == torch.float64 and not head.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)


def test_factory_device_kwarg():
    model = timm.create_model("vmamba_nano", device="meta")
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    with pytest.raises(TypeError):
        timm.create_model("simba_nano", device="meta", not_a_model_arg=1)
