"""VMamba backbones for timm (Liu et al. 2024, "VMamba: Visual State Space Model", arXiv 2401.10166), as
used by the CLIP-Mamba report (Huang, Shen, Yang 2024).

Architecture facts follow VMamba's public release (``classification/models/vmamba.py``): the two-conv
"v2" patch embed, "v3" 3x3/stride-2 conv downsampling, VSS blocks ``x + SS2D(LN(x))`` then
``x + MLP(LN(x))``, SS2D = in_proj -> depthwise 3x3 conv (no bias) -> SiLU -> 4-direction selective
scan -> out_norm (LayerNorm) [-> * SiLU(z) for "v2"] -> out_proj, and a ``classifier`` made of a final
LayerNorm, global average pool and linear head. Parameter names and shapes equal VMamba's (and the
``visual.`` subtree of the CLIP-Mamba checkpoints), so both load without renaming.

Layout: the block stream is channels-last ``(B, H, W, C)`` (LayerNorm and Linear act on the last dim,
the depthwise conv runs on a channels-last view); only the scan itself uses ``(B, 4*D, L)``. CPU
float32 inference with d_state 1 and the "cpu" scan backend skips even that: one fused kernel
(:mod:`mamba_clip.ops.ss2d_fused`) scans the channels-last map in the four orders and merges in place.

Forward types:
    ``"v2"``                 in_proj to ``2 * d_inner``, output gated by ``SiLU(z)`` (VMamba-T220).
    ``"v3noz"``/``"v05_noz"`` in_proj to ``d_inner``, no gate (VMamba-S/B); the two names are the
                             same function in VMamba (they differ only in CUDA kernel choice).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import Tensor

from mamba_clip.ops.cross_scan import cross_merge, cross_scan, cross_scan_grouped

from ._common import check_image, device_dtype, drop_path_rates, is_proxy

__all__ = ["SS2D", "VMamba", "VSSBlock", "VMAMBA_VARIANTS", "create_vmamba"]

FORWARD_TYPES = ("v2", "v3noz", "v05_noz")
_STRIDE = 32  # patch 4 x three stride-2 downsamples


def _selective_scan():
    # Imported lazily: the ops package is heavier than this module and is not needed to build models.
    from mamba_clip.ops import selective_scan

    return selective_scan


def _ss2d_fused():
    from mamba_clip.ops import ss2d_fused

    return ss2d_fused


def _cross_fns(u: Tensor):
    """(cross_scan, cross_merge) for scan input ``u``: the fused Triton kernels when the selective scan
    resolves to the "triton" backend (CUDA without mamba-ssm), else the torch ones."""
    if u.is_cuda or u.device.type == "cpu" and _forced_triton():
        from mamba_clip.ops import cross_scan_triton as cst

        if cst.use_triton(u):
            return cst.cross_scan_triton, cst.cross_merge_triton
    return cross_scan, cross_merge


def _forced_triton() -> bool:
    from mamba_clip.ops.selective_scan import _forced_backend

    return _forced_backend() == "triton"


def _fp32(t: Tensor) -> Tensor:
    """SSM parameters in at least float32 (VMamba keeps A, D, dt bias in fp32; float64 stays)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (keeps VMamba's ``nn.Sequential`` indices)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return str(self.dims)


@register_notrace_module  # fx leaf: the scan dispatch depends on device, dtype and autograd state
class SS2D(nn.Module):
    """2D selective scan (VMamba SS2D). Input and output ``(B, H, W, d_model)``.

    Parameters (names as VMamba): ``in_proj`` (Linear, no bias), ``conv2d`` (depthwise, ``d_conv``
    square, optional bias), ``x_proj_weight`` (4, R + 2N, D), ``dt_projs_weight`` (4, D, R),
    ``dt_projs_bias`` (4, D), ``A_logs`` (4D, N), ``Ds`` (4D), ``out_norm`` (LayerNorm D),
    ``out_proj`` (Linear, no bias); D = ``d_inner`` = ssm_ratio * d_model, R = dt_rank, N = d_state.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: Union[int, str] = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        forward_type: str = "v2",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if forward_type not in FORWARD_TYPES:
            raise ValueError(f"SS2D: unknown forward_type {forward_type!r}; accepted values: {list(FORWARD_TYPES)}")
        if d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"SS2D: d_conv must be an odd positive kernel size, got {d_conv}")
        k = 4
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        self.dt_rank = dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.forward_type = forward_type
        self.with_z = forward_type == "v2"

        # Parameters owned directly come first in state_dict order, as in VMamba.
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state, **dd))
        self.Ds = nn.Parameter(torch.empty(k * d_inner, **dd))
        self.out_norm = nn.LayerNorm(d_inner, **dd)
        self.in_proj = nn.Linear(d_model, d_inner * (2 if self.with_z else 1), bias=False, **dd)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias, **dd
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False, **dd)
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)
        # set by VMamba; > 0 splits big inference scans by channels (unfused path only: the fused
        # N == 1 CPU path builds no 4x-sized tensors)
        self.inference_chunk_bytes = 0
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba/VMamba init: x_proj like nn.Linear, dt_proj weight U(+-dt_scale/sqrt(R)), dt bias =
        softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], A = -(1..N), D = 1."""
        dt_min, dt_max, dt_init_floor, dt_scale = self._dt_init
        bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        std = dt_scale * self.dt_rank**-0.5
        self.dt_projs_weight.uniform_(-std, std)
        dev = self.dt_projs_bias.device
        dt = torch.exp(
            torch.rand(self.dt_projs_bias.shape, device=dev) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dev)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        k, d, r, n = 4, self.d_inner, self.dt_rank, self.d_state
        length = h * w
        z = None
        if self.with_z:
            # Two GEMMs on weight halves give contiguous x and z (a split view would be strided).
            u = F.linear(x, self.in_proj.weight[:d])
            z = F.linear(x, self.in_proj.weight[d:])
        else:
            u = self.in_proj(x)
        # depthwise conv on the channels-last view; output stays channels-last in memory
        u = F.silu(self.conv2d(u.permute(0, 3, 1, 2)), inplace=not torch.is_grad_enabled())
        u = u.permute(0, 2, 3, 1)  # (B, H, W, D), contiguous

        # x_proj per direction = one GEMM on the un-scanned map, then unroll the small result
        x_dbl = F.linear(u, self.x_proj_weight.view(-1, d)).view(b, h, w, k, r + 2 * n)
        if _ss2d_fused().fused_applicable(u, n):
            # inference, N == 1, "cpu" backend: one kernel walks the four scan orders over u itself
            # and merges in place (no 4x-sized tensors, so no channel splitting either)
            y = _ss2d_fused().ss2d_scan_merge_cpu(
                u, x_dbl, self.dt_projs_weight, self.dt_projs_bias, -torch.exp(self.A_logs), self.Ds)
            return self._finish(y, z)
        x_dbl = cross_scan_grouped(x_dbl)  # (B, 4, R + 2N, L)
        dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
        bs, cs = bs.contiguous(), cs.contiguous()
        del x_dbl

        pieces = 1
        if self.inference_chunk_bytes > 0 and not torch.is_grad_enabled():
            # the scan tensors are 4x the map; split the channels when they would exceed the budget
            pieces = min(d, -(-(b * k * d * length * u.element_size()) // self.inference_chunk_bytes))
        if pieces <= 1:
            y = self._scan_merge(u, dts, bs, cs, 0, d)
        else:
            y = u.new_empty(b, h, w, d)
            step = -(-d // pieces)
            for c0 in range(0, d, step):
                c1 = min(d, c0 + step)
                y[..., c0:c1] = self._scan_merge(u[..., c0:c1], dts, bs, cs, c0, c1)
        return self._finish(y, z)

    def _finish(self, y: Tensor, z: Optional[Tensor]) -> Tensor:
        """out_norm, the SiLU(z) gate ("v2") and out_proj of the merged scan output (B, H, W, D)."""
        y = self.out_norm(y)
        if self.with_z:
            if torch.is_grad_enabled():
                y = y * self.act(z)
            else:
                y *= F.silu(z, inplace=True)
        return self.out_proj(y)

    def _scan_merge(self, u: Tensor, dts: Tensor, bs: Tensor, cs: Tensor, c0: int, c1: int) -> Tensor:
        """Cross-scan, selective scan and cross-merge of channels ``c0:c1``.

        u: (B, H, W, c1-c0) channels-last; dts: (B, 4, R, L) low-rank dt; bs, cs: (B, 4, N, L).
        Returns (B, H, W, c1-c0).
        """
        b, h, w, dc = u.shape
        k, d, length = 4, self.d_inner, h * w
        scan_fn, merge_fn = _cross_fns(u)
        xs = scan_fn(u, channels_last=True)  # (B, 4, dc, L)
        whole = c0 == 0 and c1 == d
        dtw = self.dt_projs_weight if whole else self.dt_projs_weight[:, c0:c1]
        delta = torch.matmul(dtw, dts)  # (B, 4, dc, L)

        def per_channel(p: Tensor) -> Tensor:  # (4 * D, ...) parameter -> rows of channels c0:c1
            return p if whole else p.view(k, d, *p.shape[1:])[:, c0:c1].reshape(k * dc, *p.shape[1:])

        ys = _selective_scan()(
            xs.view(b, k * dc, length),
            delta.view(b, k * dc, length),
            -torch.exp(_fp32(per_channel(self.A_logs))),
            bs,
            cs,
            _fp32(per_channel(self.Ds)),
            delta_bias=_fp32(per_channel(self.dt_projs_bias.reshape(-1))),
            delta_softplus=True,
        )
        del xs, delta  # free the 4x-sized scan inputs before the merge allocates
        return merge_fn(ys.view(b, k, dc, length), h, w, channels_last=True)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the last dim (keys ``fc1``/``fc2`` as VMamba's timm-style Mlp)."""

    def __init__(self, dim: int, hidden: int, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """``x + drop_path(SS2D(norm(x)))`` then ``x + drop_path(MLP(norm2(x)))``; ``(B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        mlp_ratio: float = 4.0,
        norm_layer=nn.LayerNorm,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
        **ssm_kwargs: Any,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = norm_layer(dim, **dd)
        self.op = SS2D(dim, **ssm_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **dd)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and not self.training and not is_proxy(x):
            # inference: same arithmetic, in place where autograd is not watching
            y = self.op(self.norm(x))
            y += x
            x = y
            h = self.mlp.fc1(self.norm2(x))
            torch.ops.aten.gelu_(h)
            y = self.mlp.fc2(h)
            del h
            y += x
            return y
        x = x + self.drop_path(self.op(self.norm(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMambaStage(nn.Module):
    """``blocks`` at one resolution, then ``downsample`` (3x3 stride-2 conv + LayerNorm) or Identity.

    The stage's feature (``feature_info``, ``forward_intermediates``) is the output of ``blocks``, before
    the downsample, as in VMamba's detection backbone; the downsample keeps its released key
    ``layers.{i}.downsample``.
    """

    def __init__(self, dim: int, out_dim: Optional[int], depth: int, drop_path: Sequence[float],
                 device: Optional[Any] = None, dtype: Optional[torch.dtype] = None, **kw: Any):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[VSSBlock(dim, drop_path=drop_path[i], **kw, **dd) for i in range(depth)])
        if out_dim is None:
            self.downsample = nn.Identity()
        else:  # VMamba "v3" downsample; indices 1 and 3 carry the weights
            self.downsample = nn.Sequential(
                Permute(0, 3, 1, 2),
                nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, **dd),
                Permute(0, 2, 3, 1),
                nn.LayerNorm(out_dim, **dd),
            )

    def forward_blocks(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> the stage feature, same shape."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.forward_blocks(x))


class VMamba(nn.Module):
    """VMamba (VSSM) image classifier / feature extractor, channels-last (``output_fmt = "NHWC"``).

    Args:
        depths: blocks per stage.
        dims: width of the first stage (doubled per stage) or one width per stage.
        d_state, ssm_ratio, dt_rank, ssm_conv, ssm_conv_bias, forward_type: SS2D settings.
        mlp_ratio: MLP hidden width / dim.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        in_chans: input image channels.
        num_classes: classifier outputs (0 = no head: ``forward`` returns pooled features).
        global_pool: ``"avg"`` or ``""`` (no pooling; ``forward_head`` returns the normalised
            ``(B, h, w, C)`` map).
        img_size: optional nominal input size, only checked for divisibility by 32.
        device, dtype: factory kwargs of every parameter (timm's ``create_model(device=, dtype=)``).
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: Union[int, Sequence[int]] = 96,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: Union[int, str] = "auto",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = False,
        forward_type: str = "v3noz",
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        patch_size: int = 4,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if forward_type not in FORWARD_TYPES:
            raise ValueError(f"VMamba: unknown forward_type {forward_type!r}; accepted values: {list(FORWARD_TYPES)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"VMamba: global_pool must be 'avg' or '', got {global_pool!r}")
        if patch_size != 4:
            raise ValueError(f"VMamba: only patch_size=4 (the two-conv 'v2' patch embed) works, got {patch_size}")
        if in_chans < 1:
            raise ValueError(f"VMamba: in_chans must be >= 1, got {in_chans}")
        if img_size is not None:
            _check_size(*((img_size, img_size) if isinstance(img_size, int) else img_size))
        n_stages = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(n_stages)]
        dims = list(dims)
        if len(dims) != n_stages:
            raise ValueError(f"VMamba: dims has {len(dims)} entries but depths has {n_stages}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_features = self.head_hidden_size = dims[-1]
        self.dims = dims
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.mlp_ratio = mlp_ratio

        c0 = dims[0]
        self.patch_embed = nn.Sequential(  # VMamba "v2" patch embed; weights at 0, 2, 5, 7
            nn.Conv2d(in_chans, c0 // 2, kernel_size=3, stride=2, padding=1, **dd),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(c0 // 2, **dd),
            Permute(0, 3, 1, 2),
            nn.GELU(),
            nn.Conv2d(c0 // 2, c0, kernel_size=3, stride=2, padding=1, **dd),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(c0, **dd),
        )
        dpr = drop_path_rates(drop_path_rate, depths)
        ssm_kwargs = dict(
            d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=ssm_conv,
            conv_bias=ssm_conv_bias, forward_type=forward_type, mlp_ratio=mlp_ratio,
        )
        self.layers = nn.ModuleList()
        self.feature_info: List[Dict[str, Any]] = []
        for i in range(n_stages):
            self.layers.append(VMambaStage(
                dims[i], dims[i + 1] if i < n_stages - 1 else None, depths[i], dpr[i], **ssm_kwargs, **dd,
            ))
            # the tap is the blocks' output, before the downsample that closes the stage
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"layers.{i}.blocks"))
        self.classifier = nn.Sequential(OrderedDict(
            norm=nn.LayerNorm(self.num_features, **dd),
            permute=Permute(0, 3, 1, 2),
            avgpool=nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
            flatten=nn.Flatten(1) if global_pool else nn.Identity(),
            head=nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity(),
        ))
        self.apply(self._init_weights)  # SS2D initialised its SSM parameters itself
        self.inference_chunk_bytes = 24 * 2**20

    @property
    def inference_chunk_bytes(self) -> int:
        """Largest temporary (bytes) inference aims for; 0 turns the splitting off. See ``_chunked``."""
        return self._inference_chunk_bytes

    @inference_chunk_bytes.setter
    def inference_chunk_bytes(self, value: int) -> None:
        self._inference_chunk_bytes = int(value)
        for m in self.modules():
            if isinstance(m, SS2D):
                m.inference_chunk_bytes = int(value)

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter as a fresh model: e.g. after ``to_empty()`` of a model built on
        the meta device. Uses the global RNG (the values differ from a fresh build with the same seed)."""
        for m in self.modules():
            if isinstance(m, SS2D):
                m.reset_ssm_parameters()
            elif isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm)):
                m.reset_parameters()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm surface -------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=[(r"^layers\.(\d+)", None), (r"^classifier\.norm", (99999,))] if coarse else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99998,)),
                (r"^classifier\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head (``num_classes`` outputs, 0 = none) on the device and in the dtype of the model;
        ``global_pool`` ``"avg"`` or ``""`` (None keeps the current pooling)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"VMamba: global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
            self.classifier.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
            self.classifier.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.num_classes = num_classes
        head = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, **device_dtype(self))
            self._init_weights(head)
        self.classifier.head = head
        self.classifier.train(self.training)

    # ---- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` image -> ``(B, H/32, W/32, num_features)`` channels-last map (the input of
        the head; after ``prune_intermediate_layers`` the last kept stage's feature)."""
        x = self._stem(x)
        for stage in self.layers:
            x = self._chunked(stage, x, lambda t: int(self.mlp_ratio * t[0].numel()))  # MLP hidden map per image
        return x

    def _stem(self, x: Tensor) -> Tensor:
        x = check_image(x, "VMamba", _STRIDE).contiguous(memory_format=torch.channels_last)
        # largest patch-embed map: (C0 / 2) x (H / 2) x (W / 2) per image
        return self._chunked(self.patch_embed, x, lambda t: self.dims[0] // 2 * (t.shape[2] // 2) * (t.shape[3] // 2))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage features (timm API): stage ``i`` -> ``(B, dims[i], H / 2**(i+2), W / 2**(i+2))``.

        Args:
            x: ``(B, C_in, H, W)`` images.
            indices: None = all stages, int n = the last n, or a list of (negative allowed) indices.
            norm: apply the final LayerNorm (``classifier.norm``) to the last stage's feature.
            stop_early: stop after the last requested stage (the returned final map is then that tap).
            output_fmt: ``"NCHW"`` or ``"NHWC"`` for the intermediates.
            intermediates_only: return only the list.

        Returns:
            The intermediates, or ``(final, intermediates)`` with ``final`` = ``forward_features(x)``
            (unless ``stop_early``).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"VMamba.forward_intermediates: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last_idx = len(self.layers) - 1
        stages = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[:max_index + 1]
        x = self._stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                y = self.classifier.norm(x) if norm and i == last_idx else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
            if intermediates_only and i == max_index:
                break
            if i < len(stages) - 1:  # the last stage's downsample is Identity (or pruned)
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last of ``indices`` (and that stage's downsample), the final norm
        (``prune_norm``, or when stages were dropped) and the head (``prune_head``, or when stages were
        dropped). Returns the kept absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[:max_index + 1]
        if prune_end:
            # features end at the last kept tap: its downsample is unused, the head is sized for the end
            self.layers[-1].downsample = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.classifier.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def _chunked(self, module: nn.Module, x: Tensor, per_image_numel: Callable[[Tensor], int]) -> Tensor:
        """Inference memory discipline (no autograd; same result): a module whose largest map
        (``per_image_numel(x)`` elements per image) would exceed ``inference_chunk_bytes`` runs on equal
        micro-batches, and SS2D's unfused path splits its 4x-sized scan tensors by channels the same way
        (the fused N == 1 CPU path has none). glibc maps
        (and this VM page-faults) every fresh block above 32 MiB; at 224 px and up that costs more than
        the arithmetic, and small temporaries stay in cache."""
        budget = self.inference_chunk_bytes
        if torch.is_grad_enabled() or budget <= 0 or is_proxy(x) or x.shape[0] == 1:
            return module(x)
        b = x.shape[0]
        per_image = max(1, per_image_numel(x) * x.element_size())
        n_chunks = -(-b // max(1, budget // per_image))
        if n_chunks <= 1:
            return module(x)
        size = -(-b // n_chunks)
        return torch.cat([module(c) for c in x.split(size)], dim=0)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Final LayerNorm, global average pool, optional dropout and head: ``(B, h, w, C)`` ->
        ``(B, num_classes)`` (``(B, C)`` with ``pre_logits``). ``global_pool=''`` skips the pooling: the
        head acts on every position of the normalised ``(B, h, w, C)`` map."""
        x = self.classifier.norm(x)
        if self.global_pool:
            x = x.mean(dim=(1, 2))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_size(h: int, w: int) -> None:
    if h % _STRIDE or w % _STRIDE or h <= 0 or w <= 0:
        raise ValueError(
            f"VMamba: image height and width must be positive multiples of {_STRIDE} "
            f"(patch 4 x three stride-2 downsamples), got {h}x{w}"
        )


# ---- variants ---------------------------------------------------------------------------------
VMAMBA_VARIANTS: Dict[str, Dict[str, Any]] = {
    # CLIP-Mamba report variants (VMamba release configs vssm_tiny_0220 / small / base)
    "vmamba_t220": dict(depths=(2, 2, 4, 2), dims=96, forward_type="v2", drop_path_rate=0.2),
    "vmamba_s": dict(depths=(2, 2, 15, 2), dims=96, forward_type="v3noz", drop_path_rate=0.3),
    "vmamba_b": dict(depths=(2, 2, 15, 2), dims=128, forward_type="v3noz", drop_path_rate=0.6),
    # small model of the same code, for tests and CPU experiments
    "vmamba_nano": dict(depths=(1, 1, 2, 1), dims=24, forward_type="v3noz", drop_path_rate=0.1),
}
_COMMON = dict(d_state=1, ssm_ratio=2.0, dt_rank="auto", ssm_conv=3, ssm_conv_bias=False, mlp_ratio=4.0)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), min_input_size=(3, _STRIDE, _STRIDE), pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic", fixed_input_size=False, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.0", classifier="classifier.head", license="mit", **kwargs,
    )


default_cfgs = generate_default_cfgs({name: _cfg() for name in VMAMBA_VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VMamba:
    args = dict(_COMMON, **VMAMBA_VARIANTS[variant])
    args.update(kwargs)
    # features_only: FeatureGetterNet over forward_intermediates (NCHW maps), every stage by default
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(len(args["depths"])))),
        **args,
    )


def create_vmamba(variant: str, pretrained: bool = False, **kwargs: Any) -> VMamba:
    """Build a registered variant by name (same as ``timm.create_model(variant, ...)``)."""
    if variant not in VMAMBA_VARIANTS:
        raise ValueError(f"create_vmamba: unknown variant {variant!r}; accepted values: {list(VMAMBA_VARIANTS)}")
    return _create(variant, pretrained, **kwargs)


@register_model
def vmamba_t220(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-T220: depths 2-2-4-2, dim 96, d_state 1, "v2" (SiLU(z) gate); 31.7M trunk params."""
    return _create("vmamba_t220", pretrained, **kwargs)


@register_model
def vmamba_s(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-S: depths 2-2-15-2, dim 96, d_state 1, "v3noz"; 49.4M trunk params."""
    return _create("vmamba_s", pretrained, **kwargs)


@register_model
def vmamba_b(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-B: depths 2-2-15-2, dim 128, d_state 1, "v3noz"; 87.5M trunk params."""
    return _create("vmamba_b", pretrained, **kwargs)


@register_model
def vmamba_nano(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-nano: depths 1-1-2-1, dim 24, about 1.0M parameters (tests / CPU experiments)."""
    return _create("vmamba_nano", pretrained, **kwargs)
