"""Optional plug-in for the ``modelvshuman`` package (bethgelab/model-vs-human; not on PyPI).

Where it is importable, :func:`register_models` adds open_clip models (ours and stock ones) to its
PyTorch model zoo, so its own ``Evaluate()(models=[...], dataset_names=[...])`` and ``Plot`` run them.
The zoo entry follows model-vs-human's ``ClipPyTorchModel``: its loader hands ImageNet-normalised
224x224 batches; we undo that normalisation, apply the CLIP model's own, and return
``100 * cos(image, class)`` logits of the 1000-class zero-shot head (its 16-class mapping does the
rest).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Dict, List, Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def available() -> bool:
    """Whether the ``modelvshuman`` package can be imported."""
    return importlib.util.find_spec("modelvshuman") is not None


def zoo_name(spec: str) -> str:
    """Python identifier for a model spec (model-vs-human resolves zoo entries by attribute name):
    ``"vmamba-s:yfcc15m"`` -> ``"vmamba_s_yfcc15m"``."""
    ident = re.sub(r"\W+", "_", spec).strip("_")
    return ident if not ident[:1].isdigit() else f"m_{ident}"


class ModelVsHumanCLIP:
    """model-vs-human's PyTorch model interface (``forward_batch``, ``softmax``, ``to_numpy``) around
    a :class:`~mamba_clip.eval.ood.classifier.CLIPDecisionMaker` with the ImageNet head."""

    def __init__(self, decision_maker, model_name: str):
        if decision_maker.head != "imagenet":
            raise ValueError("model-vs-human applies its own 16-class mapping: use head='imagenet'")
        self.dm = decision_maker
        self.model_name = model_name
        mean, std = self._clip_norm()
        self._in_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._in_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._clip_mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._clip_std = torch.tensor(std).view(1, 3, 1, 1)

    def _clip_norm(self):
        visual = getattr(self.dm.model, "visual", None)
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        return tuple(mean), tuple(std)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def softmax(self, logits: np.ndarray) -> np.ndarray:
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @torch.no_grad()
    def forward_batch(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, 224, 224) ImageNet-normalised -> (N, 1000) logits."""
        x = images.detach().cpu().float() * self._in_std + self._in_mean
        size = getattr(getattr(self.dm.model, "visual", None), "image_size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        if size and x.shape[-1] != size:
            # another input size: resize exactly as the model's own preprocessing does (PIL, antialiased),
            # from the 8-bit images model-vs-human loaded
            from PIL import Image

            pix = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            x = torch.stack([self.dm.preprocess(Image.fromarray(p)) for p in pix])
        else:
            x = (x.clamp(0, 1) - self._clip_mean) / self._clip_std
        feats = self.dm.model.encode_image(x.to(self.dm.device))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return self.to_numpy(self.dm.logit_scale * feats.float() @ self.dm.text_head())


def register_models(specs: Sequence[str], **kwargs) -> Dict[str, str]:
    """Register ``NAME[:PRETRAINED]`` specs in modelvshuman's PyTorch zoo; returns {zoo name: spec}.

    ``kwargs`` go to :meth:`CLIPDecisionMaker.from_spec` (``templates``, ``device``, ``cache_dir``).
    Raises ``ImportError`` when ``modelvshuman`` is not installed.
    """
    if not available():
        raise ImportError("modelvshuman is not installed (bethgelab/model-vs-human, install from source)")
    from modelvshuman.models import pytorch_model_zoo
    from modelvshuman.models.registry import list_models, register_model

    from .classifier import CLIPDecisionMaker

    names: Dict[str, str] = {}
    for spec in specs:
        ident = zoo_name(spec)

        def entry(model_name, *args, _spec=spec):
            dm = CLIPDecisionMaker.from_spec(_spec, head="imagenet", **kwargs)
            return ModelVsHumanCLIP(dm, model_name)

        entry.__name__ = ident
        setattr(pytorch_model_zoo, ident, entry)
        if ident not in list_models("pytorch"):
            register_model("pytorch")(entry)
        names[ident] = spec
    return names


def registered_names() -> List[str]:
    from modelvshuman.models.registry import list_models

    return list(list_models("pytorch"))
