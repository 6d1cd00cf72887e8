"""Test helpers: synthetic release-layout checkpoints and a hand-written CLIP text tower.

The release layout rules are written out here independently of ``mamba_clip.openclip_ext.checkpoints``
(and checked against the shared key lists in ``test_checkpoints.py``), so the converter is tested
against them rather than against itself.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

Layout = Dict[str, Tuple[Tuple[int, ...], torch.dtype]]
_TEXT = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
         "text_projection")


def read_tsv(path: Path) -> Layout:
    """``key<TAB>(shape)<TAB>dtype`` lines of ``shared/reference/checkpoint-keys``."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), getattr(torch, dtype))
    return out


def release_layout(open_clip_shapes: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]) -> Layout:
    """What a reference-code-base checkpoint of this open_clip model holds: ``module.`` prefix,
    online and ``_e`` copies, ``image_projection`` (width, embed) = head.proj.weight transposed,
    one ``logit_scale``."""
    out: Layout = {}
    for e in ("", "_e"):
        for k, (shape, dtype) in open_clip_shapes.items():
            if k.startswith("visual.trunk."):
                out[f"module.visual{e}.{k[len('visual.trunk.'):]}"] = (shape, dtype)
            elif k.startswith("transformer."):
                out[f"module.transformer{e}.{k[len('transformer.'):]}"] = (shape, dtype)
        (emb, width), dtype = open_clip_shapes["visual.head.proj.weight"]
        out[f"module.image_projection{e}"] = ((width, emb), dtype)
        for name in _TEXT:
            mod, _, attr = name.rpartition(".")
            out[f"module.{mod}{e}.{attr}" if mod else f"module.{name}{e}"] = open_clip_shapes[name]
    out["module.logit_scale"] = ((), torch.float32)
    return out


def model_layout(model: torch.nn.Module) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def random_tensor(key: str, shape: Tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Values a forward pass tolerates (positive BatchNorm variances, CLIP's logit scale)."""
    if dtype == torch.int64:
        return torch.randint(0, 1000, shape, generator=gen, dtype=torch.int64)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=gen)
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(1 / 0.07)) + 0.1 * torch.rand(shape, generator=gen)
    if key.rsplit(".", 1)[-1] == "weight" and len(shape) == 1:  # norm scales
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    return (0.05 * torch.randn(shape, generator=gen)).to(dtype)


def random_state_dict(layout: Layout, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: random_tensor(k, shape, dtype, gen) for k, (shape, dtype) in layout.items()}


def training_checkpoint(
    state_dict: Dict[str, torch.Tensor], model: str, with_optimizer: bool = True, max_optim: int = 32
) -> dict:
    """The reference ``main.py`` checkpoint structure around ``state_dict``: AdamW state for (the
    first ``max_optim``, to keep test files small) online parameters (the EMA copies are not
    trained), GradScaler state, args Namespace."""
    online = [k for k in state_dict
              if "_e." not in k and not k.endswith("_e") and state_dict[k].is_floating_point()][:max_optim]
    ckpt = {
        "epoch": 25,
        "state_dict": state_dict,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 17},
        "best_acc": 40.0,
        "args": argparse.Namespace(model=model, dataset="yfcc15m", lr=3e-3, betas=(0.9, 0.98), epochs=25,
                                   momentum_ema=0.996, gpu=0, distributed=True, output_dir="/out"),
    }
    if with_optimizer:
        ckpt["optimizer"] = {
            "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(state_dict[k]),
                          "exp_avg_sq": torch.zeros_like(state_dict[k])} for i, k in enumerate(online)},
            "param_groups": [{"params": list(range(len(online))), "lr": 1e-5, "betas": (0.9, 0.98),
                              "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False}],
        }
    return ckpt


def strip(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module."):]: v for k, v in sd.items()}


# ------------------------------------------------------------------ hand-written CLIP text tower
def reference_encode_text(
    sd: Dict[str, torch.Tensor], tokens: torch.Tensor, *, ema: bool, heads: int
) -> torch.Tensor:
    """CLIP text transformer (Radford et al. 2021; the reference ``models.CLIP.encode_text``) written out
    on the raw release tensors: pre-LN residual blocks, causal multi-head attention, QuickGELU MLP,
    final LayerNorm, feature at the EOT (highest) token, ``@ text_projection``."""
    e = "_e" if ema else ""
    x = sd[f"token_embedding{e}.weight"][tokens] + sd[f"positional_embedding{e}"][: tokens.shape[1]]
    n, L, d = x.shape
    mask = torch.full((L, L), float("-inf")).triu(1)
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith(f"transformer{e}.resblocks.")})
    for i in layers:
        p = f"transformer{e}.resblocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, L, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads) + mask, dim=-1) @ v
        a = a.transpose(1, 2).reshape(n, L, d)
        x = x + a @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (d,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
        h = h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (d,), sd[f"ln_final{e}.weight"], sd[f"ln_final{e}.bias"], eps=1e-5)
    return x[torch.arange(n), tokens.argmax(dim=-1)] @ sd[f"text_projection{e}"]


def ema_twin(key: str) -> str:
    """``module.visual.x`` -> ``module.visual_e.x``, ``module.text_projection`` -> ``..._e``; EMA keys
    and the single ``logit_scale`` map to themselves."""
    body = key[len("module."):]
    head, dot, rest = body.partition(".")
    if head.endswith("_e") or head == "logit_scale":
        return key
    return f"module.{head}_e{dot}{rest}"
