"""The CLIP decision maker (model-vs-human's CLIP scoring) on a tiny open_clip model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_clip.eval.ood import categories
from mamba_clip.eval.ood.classifier import CLIPDecisionMaker, get_templates, parse_model_spec
from mamba_clip.eval.ood.protocol import CATEGORIES


def test_sixteen_class_mapping():
    idx = [i for c in CATEGORIES for i in categories.IMAGENET_INDICES[c]]
    assert len(idx) == 207 and len(set(idx)) == 207 and max(idx) < 1000
    m = categories.aggregation_matrix()
    np.testing.assert_allclose(m.sum(axis=0), 1.0)
    probs = np.full((2, 1000), 0.5 / 999)
    probs[0, 404], probs[1, 294] = 0.5, 0.5  # airplane; one of bear's 4 indices
    assert categories.decisions(categories.probabilities_to_16(probs)) == ["airplane", "bear"]
    scores = categories.probabilities_to_16(probs)
    assert scores[1, CATEGORIES.index("bear")] == pytest.approx((0.5 + 3 * 0.5 / 999) / 4)
    with pytest.raises(ValueError, match="1000"):
        categories.probabilities_to_16(np.ones((2, 10)))


def test_spec_and_templates():
    assert parse_model_spec("vmamba-s:yfcc15m") == ("vmamba-s", "yfcc15m")
    assert parse_model_spec("vit-nano") == ("vit-nano", None)
    assert parse_model_spec("m:/path/to/ckpt.pt") == ("m", "/path/to/ckpt.pt")
    assert len(get_templates("openai")) == 80 and len(get_templates(3)) == 3
    with pytest.raises(ValueError, match="templates"):
        get_templates("fancy")


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return CLIPDecisionMaker.from_spec("vit-nano", head="imagenet", templates=1)


def test_imagenet_head_matches_manual_computation(nano, stimuli_dir):
    w = nano.text_head()
    assert w.shape == (nano.model.text_projection.shape[1], 1000)  # (embed_dim, classes)
    np.testing.assert_allclose(w.norm(dim=0).numpy(), 1.0, atol=1e-5)
    paths = sorted((stimuli_dir / "edges" / "dog").glob("*.png"))[:3]
    x = nano.load(paths)
    scores = nano.scores16(x)
    with torch.no_grad():
        f = nano.model.encode_image(x)
        f = f / f.norm(dim=-1, keepdim=True)
        probs = torch.softmax(100.0 * f @ w, dim=-1).numpy()
    np.testing.assert_allclose(scores, categories.probabilities_to_16(probs), rtol=1e-4, atol=1e-9)
    assert nano.decide(x) == categories.decisions(scores)


def test_prompt16_head_and_cache(tmp_path, stimuli_dir, monkeypatch):
    import open_clip

    dm = CLIPDecisionMaker.from_spec("vit-nano", head="prompts16", templates=2)
    dm.cache_path = tmp_path / "head.pt"
    w = dm.text_head()
    assert w.shape == (dm.model.text_projection.shape[1], 16) and dm.cache_path.is_file()
    scores = dm.scores16_paths(sorted((stimuli_dir / "edges" / "cat").glob("*.png"))[:2])
    assert scores.shape == (2, 16)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    # a second decision maker with the same cache file does not rebuild the head
    dm2 = CLIPDecisionMaker(dm.model, dm.preprocess, dm.tokenizer, head="prompts16", templates=2,
                            cache_path=dm.cache_path)  # fmt: skip

    def boom(*a, **k):
        raise AssertionError("text head rebuilt despite the cache")

    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", boom)
    assert torch.equal(dm2.text_head(), w)
    with pytest.raises(ValueError, match="head"):
        CLIPDecisionMaker(dm.model, dm.preprocess, dm.tokenizer, head="imagenet21k")


def test_cache_key_depends_on_templates():
    a = CLIPDecisionMaker.from_spec("vit-nano", templates=1)
    b = CLIPDecisionMaker(a.model, a.preprocess, a.tokenizer, templates=2)
    assert a.cache_key("vit-nano", "x") != b.cache_key("vit-nano", "x")
    assert a.cache_key("vit-nano", "x") == a.cache_key("vit-nano", "x")


@pytest.mark.slow
def test_text_head_cost_line_labelled_bar_estimate_and_chunks(capsys):
    import open_clip

    from mamba_clip.cli import build_parser

    dm = CLIPDecisionMaker.from_spec("vit-nano", head="imagenet", templates=3, label="nano")
    w = dm.text_head()  # 1000 classes x 3 templates: chunks of 666 classes
    err = capsys.readouterr().err
    assert "text head of nano: 1000 classes x 3 templates = 3,000 prompts" in err and "(not cached)" in err
    assert "text head nano" in err  # the bar, labelled
    assert "text head of nano: about" in err and "min more (estimate" in err
    with torch.no_grad():
        ref = open_clip.build_zero_shot_classifier(dm.model, dm.tokenizer, dm.classnames()[660:670], dm.templates,
                                                   use_tqdm=False)
    torch.testing.assert_close(w[:, 660:670], ref.float())  # chunking gives open_clip's head
    quiet = CLIPDecisionMaker(dm.model, dm.preprocess, dm.tokenizer, head="prompts16", templates=2, progress=False,
                              label="nano")
    quiet.text_head()
    err = capsys.readouterr().err
    assert "text head of nano: 16 classes x 2 templates" in err and "text head nano" not in err  # no bar
    assert build_parser(["ood"]).parse_args(["ood", "evaluate", "--models", "m", "--out", "o"]).cache_dir is None


def test_cache_dir_honours_environment_and_checkpoint_files(tmp_path, monkeypatch):
    import open_clip

    from mamba_clip.eval.ood.classifier import default_cache_dir

    monkeypatch.setenv("MAMBA_CLIP_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "ood"
    monkeypatch.delenv("MAMBA_CLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mamba_clip" / "ood"
    ckpt = tmp_path / "nano.pt"
    torch.save(open_clip.create_model("vit-nano").state_dict(), ckpt)
    dm = CLIPDecisionMaker.from_spec(f"vit-nano:{ckpt}", cache_dir=default_cache_dir(), head="prompts16",
                                     templates=1, progress=False)
    assert dm.cache_path.parent == tmp_path / "xdg" / "mamba_clip" / "ood"  # a checkpoint file is cached too
    dm.text_head()
    assert dm.cache_path.is_file()
