"""SiMBA backbones (Patro & Agneeswaran 2024, arXiv 2403.15360) as the image towers of CLIP-Mamba.

Structure and parameter names follow the released SiMBA code used by the CLIP-Mamba report (Huang,
Shen, Yang 2024), so the ``visual.`` subtree of its checkpoints loads with no renaming:

* ``patch_embed1``: conv stem, 7x7/2 conv + BN + ReLU, two 3x3 convs + BN + ReLU (``conv.0..8``), then a
  3x3/2 projection (``proj``) and LayerNorm (``norm``): stride 4.
* ``patch_embed{2,3,4}``: 3x3/2 conv + LayerNorm.
* ``block{i}.{j}``: ``x + drop_path(attn(x))`` with ``attn`` = LayerNorm + ``Mamba(d_state=64, d_conv=4,
  expand=2)`` over the row-major token sequence, then ``x + drop_path(mlp(norm2(x)))`` with ``mlp`` =
  Linear, depthwise 3x3 conv, GELU, Linear (or the EinFFT channel mixer).
* ``norm{1,2,3}`` after stages 1-3; after stage 4 the mean token is refined by one class block
  (``post_network.0``: Mamba over that single token + MLP, no drop path) and normalised by ``norm4``.

LayerNorm eps is 1e-6 for ``norm2``, ``norm{i}`` and the class block's ``norm2``; the stem,
downsample and pre-Mamba norms keep PyTorch's default 1e-5, as released. Weight init as released
(truncated normal 0.02 for every Linear, the Mamba projections included, zero biases; He-normal
fan-out for Conv2d). Tokens travel channels-last, (B, H, W, C); any input size divisible by 32 works.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mamba_clip.ops import Mamba, resolve_backend, scan_backend

from ._common import check_image, device_dtype, drop_path_rates, is_proxy

__all__ = ["SiMBA", "EinFFT", "SiMBABlock", "ClassBlock", "MODEL_ARGS"]

CHANNEL_MIXERS = ("mlp", "einfft")
GLOBAL_POOLS = ("token", "")


def _init_weights(m: nn.Module) -> None:
    """The released SiMBA init, applied to every sub-module (Mamba's Linears included)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _to_nchw(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) view in channels_last memory (no copy)."""
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: Tensor) -> Tensor:
    """(B, C, H, W) -> contiguous (B, H, W, C); free when ``x`` is channels_last in memory."""
    return x.permute(0, 2, 3, 1).contiguous()


class ConvStem(nn.Module):
    """(B, 3, H, W) -> (B, H/4, W/4, C): three conv-BN-ReLU (the first 7x7/2), 3x3/2 proj, LayerNorm."""

    def __init__(self, in_chans: int, hidden_dim: int, out_dim: int, device: Optional[Any] = None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, out_dim, 3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(out_dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(_to_nhwc(self.proj(self.conv(x))))


class Downsample(nn.Module):
    """(B, H, W, C_in) -> (B, H/2, W/2, C_out): 3x3/2 conv + LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        # channels_last weights: the input is a channels_last view, so are the weight gradients; equal
        # strides keep DDP's gradient buckets copy-free (no "grad strides do not match" warning)
        self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, device=device, dtype=dtype).to(
            memory_format=torch.channels_last)
        self.norm = nn.LayerNorm(out_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(_to_nhwc(self.proj(_to_nchw(x))))


class DWConv(nn.Module):
    """Depthwise 3x3 conv on (B, H, W, C) (key ``dwconv.dwconv``)."""

    def __init__(self, dim: int, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim, bias=True, device=device,
                                dtype=dtype).to(memory_format=torch.channels_last)  # see Downsample

    def forward(self, x: Tensor) -> Tensor:
        return _to_nhwc(self.dwconv(_to_nchw(x)))


class ConvMlp(nn.Module):
    """Channel mixer of the SiMBA blocks (PVTv2 FFN): Linear, depthwise 3x3 conv, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.dwconv = DWConv(hidden_dim, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        h = self.fc1(x)
        if _fused_dwconv_gelu_ok(h):
            conv = self.dwconv.dwconv
            h = _to_nhwc(torch.ops.mkldnn._convolution_pointwise(
                _to_nchw(h), conv.weight, conv.bias, [1, 1], [1, 1], [1, 1], conv.groups, "gelu", [], "none"))
        else:
            h = self.act(self.dwconv(h))
        return self.fc2(h)


def _fused_dwconv_gelu_ok(h: Tensor) -> bool:
    """Inference on CPU in float32: oneDNN's depthwise conv with the exact (erf) GELU fused as a
    post-op (the op torch.compile's CPU backend emits) saves a pass over the 4-8x wide hidden tensor.
    Same numbers as conv then GELU; skipped whenever autograd, another device/dtype, or an older
    torch without the op is involved."""
    return (
        _HAS_MKLDNN_POINTWISE and not is_proxy(h) and h.device.type == "cpu" and h.dtype == torch.float32
        and not torch.is_grad_enabled() and not torch.jit.is_scripting() and not _is_compiling()
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    )


_HAS_MKLDNN_POINTWISE = hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _is_compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


class Mlp(nn.Module):
    """Token-wise MLP of the class block: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int, device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


@register_notrace_module  # fx leaf: autocast and complex FFTs
class EinFFT(nn.Module):
    """EinFFT channel mixer of the SiMBA paper (Sec. 3.2), as in its released code.

    (B, ..., C) tokens, flattened to (B, L, C), channels split into ``num_blocks`` blocks: 2-D FFT
    (ortho) over the (token, block) axes; two complex block-diagonal linear layers (einsum over the
    block's channels, complex bias; ReLU on real and imaginary parts after the first); soft-shrink
    (lambda ``sparsity_threshold``) of real and imaginary parts; inverse FFT; real part.
    Parameters: ``complex_weight_{1,2}`` (2, nb, bs, bs) and ``complex_bias_{1,2}`` (2, nb, bs), index 0
    real, 1 imaginary; ``bs = C / nb``, so ``C**2 * 4 / nb + 4 * C`` parameters. Runs in float32.
    """

    def __init__(self, dim: int, num_blocks: int = 4, sparsity_threshold: float = 0.01, scale: float = 0.02,
                 device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_blocks < 1 or dim % num_blocks != 0:
            raise ValueError(f"EinFFT: dim={dim} must be divisible by num_blocks={num_blocks} (>= 1)")
        self.dim = dim
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        self.scale = scale
        nb, bs = num_blocks, self.block_size
        self.complex_weight_1 = nn.Parameter(torch.empty(2, nb, bs, bs, **dd))
        self.complex_weight_2 = nn.Parameter(torch.empty(2, nb, bs, bs, **dd))
        self.complex_bias_1 = nn.Parameter(torch.empty(2, nb, bs, **dd))
        self.complex_bias_2 = nn.Parameter(torch.empty(2, nb, bs, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Released init: every weight and bias ~ N(0, scale**2)."""
        for p in (self.complex_weight_1, self.complex_weight_2, self.complex_bias_1, self.complex_bias_2):
            p.normal_(0.0, self.scale)

    @staticmethod
    def _complex(p: Tensor) -> Tensor:
        return torch.complex(p[0].float(), p[1].float())

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = x.float().reshape(shape[0], -1, self.num_blocks, self.block_size)
            z = torch.fft.fft2(z, dim=(1, 2), norm="ortho")
            z = torch.einsum("blnd,ndk->blnk", z, self._complex(self.complex_weight_1))
            z = z + self._complex(self.complex_bias_1)
            z = torch.complex(F.relu(z.real), F.relu(z.imag))
            z = torch.einsum("blnd,ndk->blnk", z, self._complex(self.complex_weight_2))
            z = z + self._complex(self.complex_bias_2)
            if self.sparsity_threshold:
                lam = self.sparsity_threshold
                z = torch.complex(F.softshrink(z.real, lam), F.softshrink(z.imag, lam))
            z = torch.fft.ifft2(z, dim=(1, 2), norm="ortho").real
        return z.reshape(shape).to(dtype)


@register_notrace_module  # fx leaf: the scan dispatch depends on device, dtype and autograd state
class MambaLayer(nn.Module):
    """Pre-norm token mixer: LayerNorm then ``mamba_clip.ops.Mamba`` over the row-major tokens."""

    def __init__(self, dim: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 device: Optional[Any] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) or (B, L, C)
        shape = x.shape
        y = self.mamba(self.norm(x).reshape(shape[0], -1, shape[-1]))
        return y.reshape(shape)


def _channel_mixer(kind: str, dim: int, hidden: int, conv: bool, einfft_blocks: int, **dd: Any) -> nn.Module:
    if kind == "einfft":
        return EinFFT(dim, num_blocks=einfft_blocks, **dd)
    return ConvMlp(dim, hidden, **dd) if conv else Mlp(dim, hidden, **dd)


class SiMBABlock(nn.Module):
    """Mamba token mixing + channel mixing on (B, H, W, C), pre-norm residuals with drop path."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
        channel_mixer: str = "mlp",
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        norm_eps: float = 1e-6,
        einfft_blocks: int = 4,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = MambaLayer(dim, d_state, d_conv, expand, **dd)
        self.mlp = _channel_mixer(channel_mixer, dim, int(dim * mlp_ratio), True, einfft_blocks, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassBlock(nn.Module):
    """Refines the class token (B, 1, C): Mamba over that single token, then an MLP (no drop path)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        channel_mixer: str = "mlp",
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        norm_eps: float = 1e-6,
        einfft_blocks: int = 4,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = MambaLayer(dim, d_state, d_conv, expand, **dd)
        self.mlp = _channel_mixer(channel_mixer, dim, int(dim * mlp_ratio), False, einfft_blocks, **dd)

    def forward(self, cls: Tensor) -> Tensor:
        cls = cls + self.attn(cls)
        return cls + self.mlp(self.norm2(cls))


class SiMBA(nn.Module):
    """SiMBA image backbone (timm interface), channels-last (``output_fmt = "NHWC"``).

    ``forward_features``: (B, C_in, H, W) -> stage-4 tokens (B, H/32, W/32, C). ``forward_head``: mean
    token -> class block -> ``norm4`` -> dropout -> ``head``; ``global_pool=""`` skips the pooling
    and returns the stage-4 tokens. ``num_features`` = C = ``embed_dims[-1]``. ``device`` / ``dtype``
    are the factory kwargs of every parameter (the Mamba ``A_log`` / ``D`` stay float32, as mamba-ssm).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        stem_hidden_dim: int = 32,
        embed_dims: Sequence[int] = (64, 128, 320, 448),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        channel_mixer: str = "mlp",
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        einfft_blocks: int = 4,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if channel_mixer not in CHANNEL_MIXERS:
            raise ValueError(f"SiMBA: channel_mixer={channel_mixer!r}; accepted values: "
                             f"{list(CHANNEL_MIXERS)}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"SiMBA: global_pool={global_pool!r}; accepted values: {list(GLOBAL_POOLS)} "
                             "('token' = the released mean-token class block)")
        if in_chans < 1:
            raise ValueError(f"SiMBA: in_chans must be >= 1, got {in_chans}")
        n = len(depths)
        if not (len(embed_dims) == len(mlp_ratios) == n) or n < 1:
            raise ValueError(f"SiMBA: embed_dims {tuple(embed_dims)}, depths {tuple(depths)} and mlp_ratios "
                             f"{tuple(mlp_ratios)} must have the same (non-zero) length")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_stages = n
        self.head_stage = n - 1  # norm{head_stage + 1} is the head's norm, norm1.. before it end stages
        self.depths = tuple(depths)
        self.embed_dims = tuple(embed_dims)
        self.channel_mixer = channel_mixer
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        self.feature_info: List[Dict[str, Any]] = []

        dpr = drop_path_rates(drop_path_rate, depths)
        mixer_kw = dict(channel_mixer=channel_mixer, d_state=d_state, d_conv=d_conv, expand=expand,
                        norm_eps=norm_eps, einfft_blocks=einfft_blocks, **dd)
        for i in range(n):
            if i == 0:
                patch_embed: nn.Module = ConvStem(in_chans, stem_hidden_dim, embed_dims[0], **dd)
            else:
                patch_embed = Downsample(embed_dims[i - 1], embed_dims[i], **dd)
            blocks = nn.ModuleList([
                SiMBABlock(embed_dims[i], mlp_ratios[i], drop_path=dpr[i][j], **mixer_kw)
                for j in range(depths[i])
            ])
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=norm_eps, **dd))
            # the tap is what the next stage sees: after norm{i+1}, except the last (norm{n} is the head's)
            tap = f"norm{i + 1}" if i < n - 1 else f"block{i + 1}"
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=tap))
        self.post_network = nn.ModuleList([ClassBlock(embed_dims[-1], mlp_ratios[-1], **mixer_kw)])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter and buffer as a fresh model (e.g. after ``to_empty()`` of a
        meta-device build): the released init, Mamba's SSM parameters, BatchNorm, EinFFT. Uses the global
        RNG (the values differ from a fresh build with the same seed)."""
        for m in self.modules():
            if isinstance(m, Mamba):
                m.reset_ssm_parameters()
            elif isinstance(m, (EinFFT, nn.BatchNorm2d, nn.Conv1d, nn.Conv2d, nn.Linear, nn.LayerNorm)):
                m.reset_parameters()
        self.apply(_init_weights)

    # ---------------------------------------------------------------- timm surface
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Layer groups in execution order: stem; stages (downsample + blocks + norm); class block +
        final norm; head."""
        n = self.head_stage + 1
        last = n + 1
        if coarse:
            blocks = [(r"^(?:patch_embed|block)(\d+)\.", None), (rf"^norm([1-{n - 1}])\.", (99999,))]
        else:
            blocks = [
                (r"^patch_embed(\d+)\.", (0,)),
                (r"^block(\d+)\.(\d+)\.", None),
                (rf"^norm([1-{n - 1}])\.", (99999,)),
            ]
        blocks += [(r"^post_network\.", (last,)), (rf"^norm{n}\.", (last, 99999))]
        if n == 1:
            blocks = [b for b in blocks if not b[0].startswith("^norm([")]
        return dict(stem=r"^patch_embed1\.", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head (``num_classes`` outputs, 0 = none) on the device and in the dtype of the model;
        ``global_pool`` ``"token"`` or ``""`` (None keeps the current pooling)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"SiMBA.reset_classifier: global_pool={global_pool!r}; accepted values: "
                                 f"{list(GLOBAL_POOLS)}")
            if global_pool == "token" and len(self.post_network) == 0:
                raise ValueError("SiMBA.reset_classifier: global_pool='token' needs the class block, which "
                                 "prune_intermediate_layers removed; use global_pool=''")
            self.global_pool = global_pool
        self.num_classes = num_classes
        head = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, **device_dtype(self))
            _init_weights(head)
        self.head = head.train(self.training)

    # ---------------------------------------------------------------- forward
    def _run_blocks(self, blocks: nn.ModuleList, x: Tensor) -> Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()):
            for blk in blocks:
                x = blk(x)
            return x
        # The recomputation runs inside backward(), outside any ``scan_backend`` / ``double_backward``
        # context of the forward: pin the backend the forward resolved so both passes match.
        backend = resolve_backend("auto", x)
        context_fn = lambda: (contextlib.nullcontext(), scan_backend(backend))
        for blk in blocks:
            x = checkpoint(blk, x, use_reentrant=False, context_fn=context_fn)
        return x

    def _stage(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i`` (0-based): patch embed / downsample, blocks, and the norm that ends stages before
        the head stage. Returns the stage's feature (B, h, w, C)."""
        x = getattr(self, f"patch_embed{i + 1}")(x)
        x = self._run_blocks(getattr(self, f"block{i + 1}"), x)
        if i < self.head_stage:
            x = getattr(self, f"norm{i + 1}")(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, H/32, W/32, C) stage-4 tokens (after ``prune_intermediate_layers``,
        the last kept stage's feature)."""
        x = check_image(x, "SiMBA")
        for i in range(self.num_stages):
            x = self._stage(i, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, h, w, C) tokens -> (B, num_classes), or (B, C) with ``pre_logits``; ``global_pool=''``
        keeps the tokens (the head then acts per token)."""
        if self.global_pool == "token":
            cls = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1, keepdim=True)  # (B, 1, C)
            for blk in self.post_network:
                cls = blk(cls)
            x = getattr(self, f"norm{self.head_stage + 1}")(cls[:, 0])
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage features (timm API): stage ``i`` -> (B, embed_dims[i], H / 2**(i+2), W / 2**(i+2)).

        Args:
            x: (B, C_in, H, W) images.
            indices: None = all stages, int n = the last n, or a list of (negative allowed) indices.
            norm: no effect: stages 1..n-1 end with their norm (what the next stage sees) and the final
                norm (``norm{n}``) belongs to the class-token head.
            stop_early: stop after the last requested stage.
            output_fmt: "NCHW" or "NHWC" for the intermediates.
            intermediates_only: return only the list.

        Returns:
            The intermediates, or ``(final, intermediates)`` with ``final`` = ``forward_features(x)``
            (the last computed stage with ``stop_early``).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"SiMBA.forward_intermediates: output_fmt={output_fmt!r}; accepted: NCHW, NHWC")
        x = check_image(x, "SiMBA")
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if stop_early or intermediates_only else self.num_stages - 1
        intermediates = []
        for i in range(last + 1):
            x = self._stage(i, x)
            if i in take_indices:
                intermediates.append(x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last of ``indices`` and, with ``prune_head`` (or when stages were
        dropped), the class-token head (class block, ``norm{n}``, classifier). ``prune_norm`` has no
        effect (see ``forward_intermediates``). Returns the kept absolute indices."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        prune_end = max_index < self.num_stages - 1
        for j in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{j + 1}", f"block{j + 1}", f"norm{j + 1}"):
                delattr(self, name)
        self.num_stages = max_index + 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.post_network = nn.ModuleList()
            if hasattr(self, f"norm{self.head_stage + 1}"):
                setattr(self, f"norm{self.head_stage + 1}", nn.Identity())
            self.reset_classifier(0, "")
        return take_indices


# -------------------------------------------------------------------- registry
def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "min_input_size": (3, 32, 32), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.conv.0", "classifier": "head", "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "simba_s": _cfg(),
    "simba_b": _cfg(),
    "simba_l": _cfg(),
    "simba_nano": _cfg(),
})

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    "simba_s": dict(stem_hidden_dim=32, embed_dims=(64, 128, 320, 448), depths=(3, 4, 6, 3),
                    mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.1),
    "simba_b": dict(stem_hidden_dim=64, embed_dims=(64, 128, 320, 512), depths=(3, 4, 12, 3),
                    mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.1),
    "simba_l": dict(stem_hidden_dim=64, embed_dims=(96, 192, 384, 512), depths=(3, 6, 18, 3),
                    mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.3),
    # Same code, CPU-sized for tests and demos (~1.1M trunk parameters, like vmamba_nano and vit-nano).
    "simba_nano": dict(stem_hidden_dim=16, embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1),
                       mlp_ratios=(4, 4, 4, 4), d_state=8, drop_path_rate=0.0),
}


def _create_simba(variant: str, pretrained: bool = False, **kwargs) -> SiMBA:
    model_args = dict(MODEL_ARGS[variant], **kwargs)
    # features_only: FeatureGetterNet over forward_intermediates (NCHW maps), every stage by default
    return build_model_with_cfg(
        SiMBA, variant, pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(len(model_args["depths"])))),
        **model_args,
    )


@register_model
def simba_s(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-S: stem 32, dims 64/128/320/448, depths 3/4/6/3 (25.69M trunk parameters)."""
    return _create_simba("simba_s", pretrained, **kwargs)


@register_model
def simba_b(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-B: stem 64, dims 64/128/320/512, depths 3/4/12/3 (39.18M trunk parameters)."""
    return _create_simba("simba_b", pretrained, **kwargs)


@register_model
def simba_l(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-L: stem 64, dims 96/192/384/512, depths 3/6/18/3 (65.74M trunk parameters)."""
    return _create_simba("simba_l", pretrained, **kwargs)


@register_model
def simba_nano(pretrained: bool = False, **kwargs) -> SiMBA:
    """Tiny SiMBA for CPU tests and the demo: stem 16, dims 32/64/96/128, depths 1/1/2/1, d_state 8."""
    return _create_simba("simba_nano", pretrained, **kwargs)
