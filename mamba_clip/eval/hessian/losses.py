"""The two training losses whose Hessians the analysis takes, as ``loss_fn(model, batch)`` callables.

* :class:`CLIPLoss` - the symmetric CLIP contrastive loss (Radford et al. 2021, open_clip's
  ``ClipLoss`` on one device) on ``(images, tokens)`` batches: cross-entropy of
  ``s * normalise(f_img) @ normalise(f_txt)^T`` against the diagonal, averaged over both directions.
  The logit scale ``s`` is a constant fixed at the model's value when the loss is built (it is not a
  parameter of the Hessian).
* :class:`ZeroShotLoss` - cross-entropy of ``s * normalise(f_img) @ W`` against integer labels, where
  ``W`` (embed_dim, classes) are frozen class prototypes from the text tower
  (:func:`class_prototypes`: the normalised mean of the normalised prompt embeddings, as in zero-shot
  classification), computed once without grad. Its Hessian is therefore with respect to image-tower
  parameters only.

Both work with any open_clip model that has ``encode_image`` / ``encode_text`` and ``logit_scale``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("clip", "zeroshot")


def model_logit_scale(model: nn.Module) -> float:
    """``exp(model.logit_scale)`` as a float (100 for models without one, CLIP's cap)."""
    ls = getattr(model, "logit_scale", None)
    if ls is None:
        return 100.0
    return float(torch.as_tensor(ls).detach().float().exp())


class CLIPLoss:
    """Symmetric contrastive loss on ``batch = (images, tokens)`` with a fixed logit scale."""

    def __init__(self, logit_scale: float):
        self.logit_scale = float(logit_scale)

    @classmethod
    def for_model(cls, model: nn.Module, logit_scale: Optional[float] = None) -> "CLIPLoss":
        return cls(model_logit_scale(model) if logit_scale is None else logit_scale)

    def __call__(self, model: nn.Module, batch) -> Tensor:
        images, tokens = batch
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = self.logit_scale * img @ txt.t()
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def __repr__(self) -> str:
        return f"CLIPLoss(logit_scale={self.logit_scale:g})"


class ZeroShotLoss:
    """Cross-entropy of zero-shot logits against labels, on ``batch = (images, labels)``.

    ``prototypes``: (embed_dim, num_classes), normalised columns (see :func:`class_prototypes`)."""

    def __init__(self, prototypes: Tensor, logit_scale: float):
        if prototypes.dim() != 2:
            raise ValueError(f"prototypes must be (embed_dim, num_classes), got shape {tuple(prototypes.shape)}")
        self.prototypes = prototypes.detach()
        self.logit_scale = float(logit_scale)

    def __call__(self, model: nn.Module, batch) -> Tensor:
        images, labels = batch
        img = F.normalize(model.encode_image(images), dim=-1)
        logits = self.logit_scale * img @ self.prototypes.to(img.dtype)
        return F.cross_entropy(logits, labels)

    def __repr__(self) -> str:
        return f"ZeroShotLoss(classes={self.prototypes.shape[1]}, logit_scale={self.logit_scale:g})"


def default_tokenizer(model: nn.Module):
    """open_clip's BPE tokenizer at the model's context length (every model config of this package
    uses it; pass ``tokenizer=open_clip.get_tokenizer(name)`` for others)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(getattr(model, "context_length", 77) or 77))


def resolve_templates(templates: Union[None, str, int, Sequence]) -> list:
    """``None`` -> open_clip's 7 "simple" ImageNet templates; else as
    :func:`mamba_clip.eval.ood.classifier.get_templates` (``"openai"``, ``"simple"``, n, a list of
    format strings or callables)."""
    from mamba_clip.eval.ood.classifier import get_templates

    return get_templates("simple" if templates is None else templates)


def format_template(template, classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)


@torch.no_grad()
def class_prototypes(model: nn.Module, classnames: Sequence[str], templates=None, tokenizer=None,
                     device=None) -> Tensor:
    """(embed_dim, num_classes) frozen zero-shot class prototypes from the text tower: per class the
    normalised mean of the normalised embeddings of its prompts; in eval mode, float32."""
    if not classnames:
        raise ValueError("classnames must not be empty")
    tokenizer = tokenizer or default_tokenizer(model)
    temps = resolve_templates(templates)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cols = []
        for name in classnames:
            tokens = tokenizer([format_template(t, name) for t in temps]).to(device)
            emb = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
            cols.append(F.normalize(emb, dim=0))
    finally:
        model.train(was_training)
    return torch.stack(cols, dim=1)
