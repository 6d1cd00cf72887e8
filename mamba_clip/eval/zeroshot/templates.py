"""Prompt templates, class names and the zero-shot head (class embeddings).

``reference``: the reference evaluation's ``templates.json`` and ``labels.json`` of the CLIP-Mamba report
(shipped in ``data/``). A class may have several names (``[["happy", "smiling"], ...]``); its embedding
is then the mean over every template *and* every name of the L2-normalised text embeddings,
re-normalised. With one name per class this is exactly clip_benchmark's ``zero_shot_classifier`` (mean of
normalised template embeddings, re-normalised).

Templates use ``{}`` (reference) or ``{c}`` (clip_benchmark); both are filled by plain substitution.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Dict, List, Optional, Sequence, Union

ClassNames = List[List[str]]  # per class, one or more names


def _data_text(name: str) -> str:
    return resources.files("mamba_clip.eval.zeroshot").joinpath("data", name).read_text(encoding="utf-8")


@cache
def reference_templates() -> Dict[str, List[str]]:
    return json.loads(_data_text("templates.json"))


@cache
def reference_labels() -> Dict[str, list]:
    return json.loads(_data_text("labels.json"))


def as_name_lists(classnames: Sequence[Union[str, Sequence[str]]]) -> ClassNames:
    out = []
    for c in classnames:
        names = [c] if isinstance(c, str) else [str(x) for x in c]
        if not names:
            raise ValueError("a class has no name")
        out.append(names)
    return out


def fill(template: str, name: str) -> str:
    """Put ``name`` into a template written with ``{c}`` (clip_benchmark) or ``{}`` (reference, CLIP)."""
    if "{c}" in template:
        return template.replace("{c}", name)
    if "{}" in template:
        return template.replace("{}", name)
    raise ValueError(f"template {template!r} has no '{{}}' or '{{c}}' placeholder")


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-/]+", " ", s.strip().lower())


def align_to_dataset(names: ClassNames, dataset_classes: Optional[Sequence[str]]) -> ClassNames:
    """Order reference class names like the dataset's labels.

    The reference evaluation read ImageFolder trees (classes in sorted folder order); a clip_benchmark
    builder may order them otherwise (e.g. Oxford pets: torchvision sorts case-insensitively). When
    every dataset class name matches exactly one reference name after lower-casing and collapsing
    ``_ - /`` and spaces, the reference names are permuted into the dataset's order; otherwise (names
    that differ, as for GTSRB's descriptive names) the order is taken as it is. The class count must
    agree either way.
    """
    if dataset_classes is None:
        return names
    if len(dataset_classes) != len(names):
        raise ValueError(
            f"the dataset has {len(dataset_classes)} classes but the reference class names list {len(names)}"
        )
    index = {}
    for i, ns in enumerate(names):
        for n in ns:
            index.setdefault(_norm(n), set()).add(i)
    perm = []
    for c in dataset_classes:
        hit = index.get(_norm(str(c)))
        if not hit or len(hit) != 1:
            return names
        perm.append(next(iter(hit)))
    if len(set(perm)) != len(perm):
        return names
    return [names[i] for i in perm]


def prompts(names: ClassNames, templates: Sequence[str]) -> List[List[str]]:
    """For each class, every template filled with every one of its names."""
    return [[fill(t, n) for n in ns for t in templates] for ns in names]


def class_embeddings(model, tokenizer, names: ClassNames, templates: Sequence[str], device="cpu",
                     amp: bool = False, batch_size: int = 256):  # fmt: skip
    """(D, C) zero-shot head: per class, the mean of the L2-normalised text embeddings of all its prompts
    (every template x every name), re-normalised. Prompts are encoded in batches across classes."""
    import torch
    import torch.nn.functional as F

    from mamba_clip.finite import require_finite

    per_class = prompts(names, templates)
    flat = [p for ps in per_class for p in ps]
    feats = []
    dev_type = torch.device(device).type
    with torch.inference_mode(), torch.autocast(dev_type, enabled=amp):
        for i in range(0, len(flat), batch_size):
            tokens = tokenizer(flat[i : i + batch_size]).to(device)
            emb = require_finite(model.encode_text(tokens).float(), f"text embeddings of prompts {i}..")
            feats.append(F.normalize(emb, dim=-1))
    feats = torch.cat(feats)
    out, start = [], 0
    for ps in per_class:
        e = feats[start : start + len(ps)].mean(dim=0)
        out.append(e / e.norm())
        start += len(ps)
    return torch.stack(out, dim=1)
