"""Non-finite numbers raise a clear error naming what held them, in every evaluation (never a silent
accuracy from an argmax over NaN, or a NaN eigenvalue written to disk), and in checkpoint files."""

from __future__ import annotations

import pytest
import torch

from mamba_clip.finite import NonFiniteError, require_finite


class NaNTower(torch.nn.Module):
    """encode_image / encode_text give NaN (a diverged model with finite-looking weights)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def encode_image(self, x):
        return torch.full((x.shape[0], 8), float("nan")) * self.w

    def encode_text(self, t):
        return torch.full((t.shape[0], 8), float("nan")) * self.w


def test_require_finite():
    t = torch.ones(3)
    assert require_finite(t, "x") is t
    assert require_finite(torch.tensor([1, 2]), "ints") is not None
    with pytest.raises(NonFiniteError, match=r"scores hold non-finite values \(1 NaN, 1 inf of 3\)"):
        require_finite(torch.tensor([1.0, float("nan"), float("inf")]), "scores")


def test_ood_classifier_names_the_model():
    from mamba_clip.eval.ood.classifier import CLIPDecisionMaker

    dm = CLIPDecisionMaker(NaNTower(), None, None, templates=1, label="diverged-run", progress=False)
    with pytest.raises(NonFiniteError, match="diverged-run image embeddings"):
        dm.scores16(torch.zeros(2, 3, 8, 8))


def test_zeroshot_classify_names_the_batch():
    from mamba_clip.eval.zeroshot.suite import classify

    loader = [(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))]
    with pytest.raises(NonFiniteError, match=r"image embeddings of batch 0 \(wds/x\)"):
        classify(NaNTower(), loader, torch.eye(8, 2), desc="wds/x")


def test_zeroshot_text_head_refuses_nan():
    from mamba_clip.eval.zeroshot.templates import class_embeddings

    with pytest.raises(NonFiniteError, match="text embeddings"):
        class_embeddings(NaNTower(), lambda texts: torch.zeros(len(texts), 4, dtype=torch.long),
                         [["cat"], ["dog"]], ["a photo of a {}."])


def test_hessian_refuses_a_nan_loss():
    from mamba_clip.eval.hessian.eigen import hessian_top_eigenvalues

    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch):
        return (m(batch) ** 2).sum() * float("nan")

    for method in ("lanczos", "power"):
        with pytest.raises(NonFiniteError, match="loss of this batch is nan"):
            hessian_top_eigenvalues(model, loss_fn, torch.ones(2, 3), k=1, max_iter=3, method=method)


def test_checkpoint_check_finite():
    from mamba_clip.openclip_ext.checkpoints import NonFiniteCheckpointError, check_finite

    check_finite({"w": torch.ones(2), "attn_mask": torch.tensor([0.0, float("-inf")]), "n": torch.tensor(3)})
    with pytest.raises(NonFiniteCheckpointError, match=r"'b' has 0 NaN and 1 inf of 2 values \(2 of 3 entries"):
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([float("nan")])},
                     "run.pt")
    with pytest.raises(NonFiniteCheckpointError, match="attn_mask"):
        check_finite({"attn_mask": torch.tensor([float("nan")])})
