"""The "triton" backend: a fused selective scan written in Triton (Gu & Dao 2023, "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces", Alg. 2), forward and first-order backward.

Triton ships with torch's CUDA wheels, so this path needs no compiler toolchain and no mamba-ssm build.
The kernels live in :mod:`mamba_clip.ops.triton_kernels` (see its docstring for the algorithm: chunked
``tl.associative_scan`` over time, fp32 state in registers, chunk-end states saved for the backward).
Inputs may be float16, bfloat16 or float32 (computed in float32); B/C grouped or not, with separate
group counts; N from 1 (VMamba) to 64 and beyond (SiMBA).

Exposed as two ``torch.library`` custom ops (``mamba_clip::scan_triton_fwd`` / ``scan_triton_bwd``)
with an autograd formula and fake (meta) kernels, so ``torch.compile`` keeps them as single opaque
calls without graph breaks. The hand-written backward is first order; a ``create_graph=True`` backward
returns the gradients of :func:`~mamba_clip.ops.scan_graph.scan_graph` on the triton linear-recurrence
kernel instead (exact to any order), and forward-mode AD / ``torch.func`` transforms run that graph.

On CPU tensors the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` is set (that is
how CI tests them); otherwise the backend needs CUDA tensors.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .backend_names import BACKENDS
from .linear_recurrence import register_kernel
from .scan_graph import create_graph_needed, graph_backward, scan_graph, transform_active

__all__ = [
    "block_sizes",
    "check_device",
    "interpret_requested",
    "is_available",
    "kernels",
    "selective_scan_triton",
    "triton_next_pow2",
    "unavailable_reason",
]

_KERNELS_SRC = Path(__file__).with_name("triton_kernels.py")
_lock = threading.Lock()
_modules: Dict[bool, ModuleType] = {}
_import_error: Optional[str] = None
_checked = False


def is_available() -> bool:
    """Whether ``triton`` imports in this process (cached)."""
    global _checked, _import_error
    if not _checked:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception as e:  # ImportError, or a broken install raising anything else
            _import_error = f"{type(e).__name__}: {e}"
        _checked = True
    return _import_error is None


def unavailable_reason() -> str:
    is_available()
    return _import_error or ""


def interpret_requested() -> bool:
    """``TRITON_INTERPRET`` is set to a true value (Triton's own spelling: 1, true, on, yes)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def kernels(interpret: bool) -> ModuleType:
    """The kernel module, compiled for the GPU (``interpret=False``) or for Triton's interpreter.

    ``triton.jit`` picks the interpreter when it decorates a function, so the kernel file is loaded as
    its own module once per mode, with ``TRITON_INTERPRET`` set accordingly while it executes. Both
    can coexist in one process (CI runs CPU tests next to anything else).
    """
    mod = _modules.get(interpret)
    if mod is not None:
        return mod
    with _lock:
        mod = _modules.get(interpret)
        if mod is None:
            name = "mamba_clip.ops._triton_kernels_" + ("interpreted" if interpret else "compiled")
            spec = importlib.util.spec_from_file_location(name, _KERNELS_SRC)
            mod = importlib.util.module_from_spec(spec)
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
            try:
                spec.loader.exec_module(mod)
            finally:
                if old is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = old
            _modules[interpret] = mod
    return mod


def check_device(t: Tensor, what: str = "selective_scan: backend 'triton'") -> bool:
    """Raise unless the kernels can run on ``t``'s device; return whether they run interpreted."""
    if not is_available():
        raise RuntimeError(f"{what} needs the `triton` package, which does not import here "
                           f"({unavailable_reason()}); it ships with torch's CUDA wheels")
    if t.is_cuda:
        return False
    if t.device.type == "cpu" and interpret_requested():
        return True
    raise RuntimeError(
        f"{what} needs CUDA tensors, got device {t.device}; on the CPU it runs only under Triton's "
        f"interpreter (set TRITON_INTERPRET=1, slow: meant for tests). Accepted backends: {list(BACKENDS)}"
    )


def _pow2_divisor(n: int) -> int:
    """Largest power of two dividing n (n >= 1)."""
    return n & -n


def block_sizes(dim: int, N: int, dpg_B: int, dpg_C: int, backward: bool = False) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_T, BLOCK_N) for a scan: the state padded to a power of two, time chunks of
    128 / 64 / 32 steps for N <= 2 / <= 16 / larger, and channels per program so that one
    (BLOCK_D, BLOCK_T, BLOCK_N) tile holds about 2048 (forward) or 1024 (backward) values, capped by
    the largest power of two dividing both group sizes (a program's channels share their B and C).
    The forward and backward must agree on BLOCK_T (the saved states are per chunk)."""
    block_n = triton_next_pow2(N)
    block_t = 128 if block_n <= 2 else 64 if block_n <= 16 else 32
    target = (1024 if backward else 2048) // (block_t * block_n)
    cap = min(_pow2_divisor(dpg_B), _pow2_divisor(dpg_C), _pow2_divisor(dim))
    block_d = max(1, min(target, cap, 64))
    return block_d, block_t, block_n


def triton_next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _num_warps(tile: int) -> int:
    """Warps per program: 4 up to 1024 tile values, else 8 (the backward keeps about a dozen
    tile-sized temporaries alive; more threads keep them in registers)."""
    return 4 if tile <= 1024 else 8


def _geometry(u: Tensor, A: Tensor, B: Tensor, C: Tensor):
    batch, dim, L = u.shape
    N = A.shape[1]
    G_B, G_C = B.shape[1], C.shape[1]
    return batch, dim, L, N, G_B, G_C, dim // G_B, dim // G_C


def _dummy(u: Tensor) -> Tensor:
    return u.new_empty(1, dtype=torch.float32)


@torch.library.custom_op("mamba_clip::scan_triton_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool,
              save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Contiguous inputs, B and C (batch, G, N, L) -> (out in u.dtype, last state (batch, D, N) float32,
    chunk-end states (batch, D, n_chunks, N) float32, or empty unless ``save``)."""
    interpret = check_device(u)
    batch, dim, L, N, G_B, G_C, dpg_B, dpg_C = _geometry(u, A, B, C)
    bd, bt, bn = block_sizes(dim, N, dpg_B, dpg_C)
    n_chunks = -(-L // bt)
    out = torch.empty_like(u)
    last = u.new_zeros((batch, dim, N), dtype=torch.float32)
    states = u.new_empty((batch, dim, n_chunks, N) if save else (0,), dtype=torch.float32)
    if u.numel() == 0:
        return out, last, states
    k = kernels(interpret)
    dummy = _dummy(u)
    k.scan_fwd_kernel[(batch, dim // bd)](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, out, last, states if save else dummy,
        dim, L, N, n_chunks, G_B, G_C, dpg_B, dpg_C,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE=save, BLOCK_D=bd, BLOCK_T=bt, BLOCK_N=bn, num_warps=_num_warps(bd * bt * bn),
    )
    return out, last, states


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, save):
    batch, dim, L = u.shape
    N = A.shape[1]
    _, bt, _ = block_sizes(dim, N, dim // B.shape[1], dim // C.shape[1])
    n_chunks = -(-L // bt)
    return (torch.empty_like(u), u.new_empty((batch, dim, N), dtype=torch.float32),
            u.new_empty((batch, dim, n_chunks, N) if save else (0,), dtype=torch.float32))


@torch.library.custom_op("mamba_clip::scan_triton_bwd", mutates_args=())
def _scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool, states: Tensor, dout: Tensor,
              dlast: Optional[Tensor]) -> List[Tensor]:
    """Gradients [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias] in the inputs' dtypes; absent inputs
    get empty tensors. ``states``: the forward's chunk-end states."""
    interpret = check_device(u)
    batch, dim, L, N, G_B, G_C, dpg_B, dpg_C = _geometry(u, A, B, C)
    _, bt, bn = block_sizes(dim, N, dpg_B, dpg_C)
    bd, _, _ = block_sizes(dim, N, dpg_B, dpg_C, backward=True)
    n_chunks = -(-L // bt)
    f32 = torch.float32
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    dB = torch.zeros(B.shape, dtype=f32, device=u.device)
    dC = torch.zeros(C.shape, dtype=f32, device=u.device)
    dA_part = u.new_zeros((batch, dim, N), dtype=f32)
    dD_part = u.new_zeros((batch, dim), dtype=f32)
    db_part = u.new_zeros((batch, dim), dtype=f32)
    if u.numel() > 0:
        k = kernels(interpret)
        dummy = _dummy(u)
        k.scan_bwd_kernel[(batch, dim // bd)](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, states, dout,
            dlast if dlast is not None else dummy,
            du, ddelta, dz if z is not None else dummy, dB, dC, dA_part, dD_part, db_part,
            dim, L, N, n_chunks, G_B, G_C, dpg_B, dpg_C,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            HAS_DLAST=dlast is not None, BLOCK_D=bd, BLOCK_T=bt, BLOCK_N=bn, num_warps=_num_warps(bd * bt * bn),
        )
    else:
        du.zero_()
        ddelta.zero_()
        dz.zero_()
    return [du, ddelta, dA_part.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0), dz,
            db_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)]


@_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, states, dout, dlast):
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else u.new_empty(0),
            torch.empty_like(z) if z is not None else u.new_empty(0),
            torch.empty_like(delta_bias) if delta_bias is not None else u.new_empty(0)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, save = inputs
    _, _, states = output
    ctx.mark_non_differentiable(states)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.softplus = softplus
    ctx.save = save


def _backward(ctx, dout, dlast, _):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    if create_graph_needed((u, delta, A, B, C, D, z, delta_bias, dout, dlast)):
        # create_graph=True: gradients of the fused-recurrence graph, exact to any order (issue 17)
        f32 = [None if t is None else t.float() for t in (u, delta, A, B, C, D, z, delta_bias)]
        grads = graph_backward(f32, ctx.softplus, "triton", dout, dlast)
        return (*[None if g is None else g.to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D, z,
                                                                                  delta_bias))], None, None)
    if not ctx.save:
        raise RuntimeError("selective_scan (triton): the forward ran without saving its chunk states "
                           "(no input required grad), so it cannot be differentiated")
    if dout is None:
        dout = torch.zeros_like(u)
    grads = _scan_bwd(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, states, dout.contiguous(),
                      None if dlast is None else dlast.contiguous())
    du, ddelta, dA, dB, dC, dD, dz, ddb = grads
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            ddb if delta_bias is not None else None, None, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Fused Triton selective scan (shapes as ``selective_scan``); float32 compute and state, returns
    ``u.dtype`` and a float32 last state. Gradients flow into every input and the last state."""
    if u.dtype == torch.float64:
        raise ValueError("selective_scan: backend 'triton' computes in float32 and accepts u of dtype "
                         "float16, bfloat16 or float32, got float64; use backend 'torch' or 'ref' for float64")
    check_device(u)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if transform_active((u, delta, A, B, C, D, z, delta_bias)):  # forward AD / torch.func: the graph
        f32 = [None if t is None else t.float() for t in (u, delta, A, B, C, D, z, delta_bias)]
        out, last = scan_graph(*f32, bool(delta_softplus), "triton")
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    out, last, _ = _scan_fwd(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                             _c(D), _c(z), _c(delta_bias), bool(delta_softplus), save)
    return (out, last) if return_last_state else out


def linear_recurrence_triton(a: Tensor, x: Tensor, reverse: bool) -> Tensor:
    """h_t = a_t h_{t-1} + x_t along the last axis (``linrec_kernel``, float32): a, x (..., L) -> h (..., L)."""
    interpret = check_device(x, "linear_recurrence: kernel 'triton'")
    a = a.to(torch.float32).contiguous()
    x = x.to(torch.float32).contiguous()
    h = torch.empty_like(x)
    L = x.shape[-1]
    if h.numel() == 0:
        return h
    R = x.numel() // L
    block_t = 64 if L >= 64 else max(16, 1 << (L - 1).bit_length())
    block_r = 32
    n_chunks = -(-L // block_t)
    kernels(interpret).linrec_kernel[(-(-R // block_r),)](a, x, h, R, L, n_chunks, REVERSE=bool(reverse),
                                                          BLOCK_R=block_r, BLOCK_T=block_t)
    return h


register_kernel("triton", linear_recurrence_triton)
