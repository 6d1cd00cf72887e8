"""A CLIP model as a 16-class decision maker, the way model-vs-human scores CLIP.

model-vs-human (``models/wrappers/pytorch.py::ClipPyTorchModel`` with
``ImageNetProbabilitiesTo16ClassesMapping``): a 1000-class ImageNet zero-shot head from the 80 CLIP
prompt templates (each prompt's text embedding normalised, averaged over templates, renormalised),
logits ``100 * <image embedding, class embedding>`` of the normalised image embedding, softmax over
the 1000 classes, then each of the 16 categories scored by the mean probability over its ImageNet
indices (:mod:`.categories`). ``head="prompts16"`` instead builds a direct 16-class head from the
category names with the same templates. Any open_clip model works (ours and stock ones).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mamba_clip.finite import require_finite

from .categories import aggregation_matrix
from .protocol import CATEGORIES

HEADS = ("imagenet", "prompts16")
LOGIT_SCALE = 100.0  # model-vs-human's fixed CLIP logit scale


def parse_model_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``"NAME[:PRETRAINED]"`` -> (name, pretrained or None). PRETRAINED may be a tag or a file path."""
    name, sep, pretrained = str(spec).partition(":")
    if not name:
        raise ValueError(f"model spec {spec!r} has no model name (expected NAME[:PRETRAINED])")
    return name, (pretrained or None) if sep else None


def get_templates(templates: Union[str, int, Sequence]) -> List[Union[str, Callable]]:
    """``"openai"`` (the 80 CLIP ImageNet templates), ``"simple"``, an int ``n`` (the first n openai
    templates) or an explicit sequence of format strings / callables."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if isinstance(templates, str):
        if templates == "openai":
            return list(OPENAI_IMAGENET_TEMPLATES)
        if templates == "simple":
            return list(SIMPLE_IMAGENET_TEMPLATES)
        raise ValueError(f"templates must be 'openai', 'simple', an int or a list, got {templates!r}")
    if isinstance(templates, (int, np.integer)):
        if not 1 <= templates <= len(OPENAI_IMAGENET_TEMPLATES):
            raise ValueError(
                f"templates count must be in 1..{len(OPENAI_IMAGENET_TEMPLATES)}, got {templates}"
            )
        return list(OPENAI_IMAGENET_TEMPLATES[: int(templates)])
    out = list(templates)
    if not out:
        raise ValueError("templates must not be empty")
    return out


def default_cache_dir() -> Path:
    """Text-head cache: ``$MAMBA_CLIP_CACHE/ood``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)``/mamba_clip/ood``."""
    if os.environ.get("MAMBA_CLIP_CACHE"):
        return Path(os.environ["MAMBA_CLIP_CACHE"]) / "ood"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mamba_clip" / "ood"


def _say(line: str) -> None:
    """A line on stderr, above any progress bar (not into it)."""
    import sys

    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _template_text(t) -> str:
    return t.format("{}") if isinstance(t, str) else t("{}")


class CLIPDecisionMaker:
    """Wraps an open_clip CLIP model: images -> 16-class scores and decisions.

    Args:
        model: an open_clip ``CLIP``-like module with ``encode_image`` / ``encode_text``.
        preprocess: PIL image -> (3, H, W) tensor (open_clip's validation transform).
        tokenizer: open_clip tokenizer for ``model``.
        head: ``"imagenet"`` (1000-way head, 16-class mean-probability mapping) or ``"prompts16"``.
        templates: see :func:`get_templates`.
        logit_scale: softmax temperature; model-vs-human uses 100.
        cache_path: file for the text head (reused when present, written atomically otherwise).
        progress: a labelled bar while the text head is built (its cost and estimate are printed
            to stderr either way).
        label: the model's name in those lines.
    """

    def __init__(
        self,
        model,
        preprocess,
        tokenizer,
        head: str = "imagenet",
        templates: Union[str, int, Sequence] = "openai",
        logit_scale: float = LOGIT_SCALE,
        device: Union[str, torch.device] = "cpu",
        cache_path: Optional[os.PathLike] = None,
        progress: bool = True,
        label: str = "model",
    ):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.head = head
        self.templates = get_templates(templates)
        self.logit_scale = float(logit_scale)
        self.device = torch.device(device)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.progress = progress
        self.label = label
        self._weights: Optional[torch.Tensor] = None
        self._agg = torch.from_numpy(aggregation_matrix()).float()

    @classmethod
    def from_spec(cls, spec: str, cache_dir: Optional[os.PathLike] = None, **kwargs) -> "CLIPDecisionMaker":
        """Build from ``"NAME[:PRETRAINED]"`` with ``open_clip.create_model_and_transforms``.

        Without PRETRAINED the weights are random (tests). The text head is cached under
        ``cache_dir`` for a pretrained tag or a checkpoint file (keyed on its path, size and mtime);
        random weights differ per construction and are not cached.
        """
        import open_clip

        name, pretrained = parse_model_spec(spec)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        tokenizer = open_clip.get_tokenizer(name)
        kwargs.setdefault("label", spec)
        obj = cls(model, preprocess, tokenizer, **kwargs)
        if cache_dir is not None and pretrained is not None:
            obj.cache_path = Path(cache_dir) / f"texthead-{obj.cache_key(name, pretrained)}.pt"
        return obj

    def classnames(self) -> List[str]:
        if self.head == "prompts16":
            return list(CATEGORIES)
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)

    def cache_key(self, name: str, pretrained: str) -> str:
        import open_clip

        ident = {
            "model": name,
            "pretrained": pretrained,
            "head": self.head,
            "templates": [_template_text(t) for t in self.templates],
            "classnames": self.classnames(),
            "open_clip": open_clip.__version__,
        }
        if os.path.isfile(pretrained):
            st = os.stat(pretrained)
            ident["file"] = [os.path.abspath(pretrained), st.st_size, st.st_mtime_ns]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    def text_head(self) -> torch.Tensor:
        """(embed_dim, num_classes) normalised class embeddings (computed once, cached)."""
        if self._weights is not None:
            return self._weights
        if self.cache_path is not None and self.cache_path.is_file():
            self._weights = torch.load(self.cache_path, map_location=self.device)
            return self._weights
        self._weights = self._build_text_head()
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
            torch.save(self._weights.cpu(), tmp)
            try:  # publish without overwriting: of several processes (ranks) only the first writes the file
                os.link(tmp, self.cache_path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        return self._weights

    def _build_text_head(self) -> torch.Tensor:
        """open_clip's ``build_zero_shot_classifier``, a chunk of classes at a time, behind a labelled
        bar, with the cost said first and a time estimate after the first chunk."""
        import time

        import open_clip
        from tqdm import tqdm

        names, nt = self.classnames(), len(self.templates)
        per_batch = max(1, min(len(names), 2000 // nt))
        where = f"; cached in {self.cache_path.parent}" if self.cache_path is not None else " (not cached)"
        _say(f"text head of {self.label}: {len(names)} classes x {nt} templates = {len(names) * nt:,} prompts "
             f"through the text tower, once per checkpoint{where}")
        chunks = []
        t0 = time.perf_counter()
        with torch.no_grad(), tqdm(total=len(names), desc=f"text head {self.label}", unit="class",
                                   disable=not self.progress, leave=False) as bar:
            for start in range(0, len(names), per_batch):
                part = names[start:start + per_batch]
                chunks.append(open_clip.build_zero_shot_classifier(
                    self.model, self.tokenizer, part, self.templates, num_classes_per_batch=per_batch,
                    device=self.device, use_tqdm=False).float())  # fmt: skip
                require_finite(chunks[-1], f"{self.label} class embeddings (text head, classes {start}..)")
                bar.update(len(part))
                if start == 0 and len(part) < len(names):
                    took = time.perf_counter() - t0
                    left = took * (len(names) - len(part)) / len(part)
                    _say(f"text head of {self.label}: about {left / 60:.1f} min more (estimate from the first "
                         f"{len(part)} classes; --templates simple or a small number cuts it)")
        return torch.cat(chunks, dim=1)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, C) softmax over the head's classes."""
        feats = require_finite(self.model.encode_image(images.to(self.device)), f"{self.label} image embeddings")
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = self.logit_scale * feats.float() @ self.text_head()
        return logits.softmax(dim=-1)

    def scores16(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) -> (N, 16) category scores (mean ImageNet probability, or the direct head)."""
        probs = self.probabilities(images).cpu()
        if self.head == "imagenet":
            probs = probs @ self._agg
        return probs.numpy().astype(np.float64)

    def decide(self, images: torch.Tensor) -> List[str]:
        return [CATEGORIES[i] for i in np.argmax(self.scores16(images), axis=1)]

    def load(self, paths: Sequence[os.PathLike]) -> torch.Tensor:
        from PIL import Image

        tensors = []
        for p in paths:
            with Image.open(p) as im:
                tensors.append(self.preprocess(im.convert("RGB")))
        return torch.stack(tensors)

    def scores16_paths(self, paths: Sequence[os.PathLike]) -> np.ndarray:
        return self.scores16(self.load(paths))
