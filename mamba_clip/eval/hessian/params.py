"""Which parameters the Hessian is taken with respect to.

Named sets for open_clip models: ``"image"`` (everything under ``model.visual``, the default of the
report's analysis), ``"text"`` (every other parameter), ``"all"``; any other string is a regular
expression searched in the parameter names (``"A_logs|Ds|dt_projs"``). The logit scale (and a SigLIP
logit bias) is never included: the losses hold it fixed at the model's value.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

PARAM_SETS = ("image", "text", "all")
FIXED = ("logit_scale", "logit_bias")

ParamSpec = Union[None, str, Iterable[torch.Tensor]]


def _is_fixed(name: str) -> bool:
    return name in FIXED or name.endswith(tuple("." + f for f in FIXED))


def select_parameters(model: nn.Module, spec: ParamSpec = None) -> List[Tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs of ``model`` selected by ``spec``.

    ``None``: every parameter that requires grad (the ``params`` default of
    :func:`~mamba_clip.eval.hessian.hessian_top_eigenvalues`). A string: one of :data:`PARAM_SETS` or a
    regular expression (``re.search`` on the names). An iterable of tensors: those (named when they
    belong to ``model``, ``"param<i>"`` otherwise). Raises ``ValueError`` when nothing is selected.
    """
    named = list(model.named_parameters())
    if spec is None:
        out = [(n, p) for n, p in named if p.requires_grad]
        what = "parameters that require grad"
    elif isinstance(spec, str):
        if spec == "image":
            out = [(n, p) for n, p in named if n.startswith("visual.")]
        elif spec == "text":
            out = [(n, p) for n, p in named if not n.startswith("visual.") and not _is_fixed(n)]
        elif spec == "all":
            out = [(n, p) for n, p in named if not _is_fixed(n)]
        else:
            try:
                rx = re.compile(spec)
            except re.error as e:
                raise ValueError(f"params: {spec!r} is neither one of {PARAM_SETS} nor a valid regular "
                                 f"expression ({e})") from None
            out = [(n, p) for n, p in named if rx.search(n) and not _is_fixed(n)]
        what = f"parameters matching {spec!r}"
    else:
        names = {id(p): n for n, p in named}
        out, seen = [], set()
        for i, p in enumerate(spec):
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"params: expected tensors, got {type(p).__name__} at position {i}")
            if id(p) not in seen:
                seen.add(id(p))
                out.append((names.get(id(p), f"param{i}"), p))
        what = "parameters given"
    if not out:
        examples = ", ".join(n for n, _ in named[:5])
        raise ValueError(f"params: no {what} in {type(model).__name__} (names look like: {examples}, ...); "
                         f"use one of {PARAM_SETS} or a regular expression")
    return out


def describe(params: List[Tuple[str, nn.Parameter]], limit: Optional[int] = 8) -> dict:
    """Summary for run files: count, number of scalars, the first names."""
    names = [n for n, _ in params]
    return {"n_tensors": len(params), "n_scalars": int(sum(p.numel() for _, p in params)),
            "names": names if limit is None or len(names) <= limit else names[:limit] + ["..."]}
