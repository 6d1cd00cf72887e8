"""Public selective-scan op: argument checks and backend dispatch.

Semantics are those of mamba-ssm's ``selective_scan_fn`` (Gu & Dao 2023). Backends:

* ``"cuda"``  mamba-ssm's fused kernel (needs ``mamba_ssm`` and CUDA tensors);
* ``"cpu"``   our fused, multi-threaded C kernel (``csrc/selective_scan_cpu.c``, built on first use);
* ``"torch"`` pure-PyTorch chunked scan, twice differentiable;

"cpu" and "triton" are exact under ``create_graph=True``, forward-mode AD and ``torch.func``
transforms too (issue 17; :mod:`.scan_graph`, :mod:`.linear_recurrence`); only "cuda" is first order.
* ``"ref"``   the sequential oracle;
* ``"triton"`` our Triton kernels (CUDA tensors; on CPU only under ``TRITON_INTERPRET=1``, for tests).

``"auto"`` picks, on CUDA tensors, "cuda" when mamba-ssm's compiled ``selective_scan_cuda`` extension
imports, else "triton" when triton imports and its kernels pass a first-use self-check on that device
and dtype (:mod:`~mamba_clip.ops.triton_selfcheck`; on failure a warning and "torch"), else "torch";
on CPU "cpu" (or "torch"); and always
``"torch"`` inside the :func:`double_backward` context manager (use it when building a graph for
Hessian-vector products).
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import warnings
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .backend_names import BACKENDS
from .scan_ref import selective_scan_ref
from .scan_torch import selective_scan_torch

__all__ = [
    "BACKENDS",
    "available_backends",
    "double_backward",
    "resolve_backend",
    "scan_backend",
    "selective_scan",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_state = threading.local()
_warned_cpu_fallback = False


@contextlib.contextmanager
def double_backward() -> Iterator[None]:
    """Within this context ``backend="auto"`` resolves to ``"torch"`` (twice differentiable).

    Kept for old code: since issue 17 the "cpu" and "triton" kernels are exact under
    ``create_graph=True`` themselves, so this is needed only to keep mamba-ssm's first-order "cuda"
    kernel out of a graph that will be differentiated twice. Thread-local, re-entrant.
    """
    prev = getattr(_state, "double_backward", 0)
    _state.double_backward = prev + 1
    try:
        yield
    finally:
        _state.double_backward = prev


# The helpers that read process/thread state are evaluated once when torch.compile traces a call
# (assume_constant_result): the backend choice is baked into the compiled graph.
@torch.compiler.assume_constant_result
def in_double_backward() -> bool:
    return getattr(_state, "double_backward", 0) > 0


@torch.compiler.assume_constant_result
def _forced_backend() -> str:
    return getattr(_state, "forced", None) or "auto"


@contextlib.contextmanager
def scan_backend(name: str) -> Iterator[None]:
    """Within this context ``backend="auto"`` resolves to ``name`` (thread-local), e.g. for tests or
    to compare backends inside a full model: ``with scan_backend("ref"): model(x)``."""
    _check_backend_name(name)
    prev = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = prev


def _check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {name!r}; accepted values: {list(BACKENDS)}")


_cuda_ext_error_cache: List[str] = []


def _cuda_ext_error() -> str:
    """Why mamba-ssm's compiled Mamba-1 kernel is unusable ("" when it imports; cached). Newer mamba-ssm
    sources build without the ``selective_scan_cuda`` extension: the package then imports and the scan
    fails only when called, so the extension itself is imported here."""
    if not _cuda_ext_error_cache:
        err = ""
        if importlib.util.find_spec("mamba_ssm") is None:
            err = "mamba-ssm is not installed"
        else:
            try:
                import selective_scan_cuda  # noqa: F401  (mamba-ssm's compiled extension)
            except Exception as e:  # ImportError, undefined-symbol OSError, ...
                err = f"mamba-ssm's compiled extension selective_scan_cuda does not import ({type(e).__name__}: {e})"
        _cuda_ext_error_cache.append(err)
    return _cuda_ext_error_cache[0]


@torch.compiler.assume_constant_result
def _cuda_available() -> bool:
    return torch.cuda.is_available() and _cuda_ext_error() == ""


@torch.compiler.assume_constant_result
def _triton_available() -> bool:
    """triton imports (it ships with torch's CUDA wheels); the kernels also need CUDA tensors, or the
    interpreter (``TRITON_INTERPRET=1``) for CPU tensors."""
    from .scan_triton import is_available

    return is_available()


@torch.compiler.assume_constant_result
def _cpu_available() -> bool:
    try:
        from . import scan_cpu
    except ImportError:
        return False
    return scan_cpu.is_available()


def _cpu_build_error() -> str:
    try:
        from .scan_cpu import build_error
    except ImportError as e:  # pragma: no cover - only while the module is missing
        return f"cannot import mamba_clip.ops.scan_cpu ({e})"
    return build_error()


def available_backends() -> List[str]:
    """Backends usable in this process (the "cpu" entry builds the C kernel on first call)."""
    out = []
    if _cuda_available():
        out.append("cuda")
    if _cpu_available():
        out.append("cpu")
    out += ["torch", "ref"]
    if _triton_available():
        from .scan_triton import interpret_requested

        if torch.cuda.is_available() or interpret_requested():
            out.append("triton")
    return out


def _backend_fn(name: str) -> Callable:
    if name == "ref":
        return selective_scan_ref
    if name == "torch":
        return selective_scan_torch
    if name == "cpu":
        from .scan_cpu import selective_scan_cpu

        return selective_scan_cpu
    if name == "cuda":
        from .scan_cuda import selective_scan_cuda

        return selective_scan_cuda
    if name == "triton":
        from .scan_triton import selective_scan_triton

        return selective_scan_triton
    raise AssertionError(name)


def resolve_backend(backend: str, u: Tensor) -> str:
    """The concrete backend ``selective_scan`` would use for input ``u`` (raises like it would)."""
    global _warned_cpu_fallback
    _check_backend_name(backend)
    if backend == "auto":
        forced = _forced_backend()
        if forced != "auto":
            backend = forced
        elif in_double_backward():
            return "torch"
        else:
            if u.is_cuda:
                if _cuda_available():
                    return "cuda"
                if _triton_available() and u.dtype != torch.float64:
                    from .triton_selfcheck import triton_scan_usable

                    if triton_scan_usable(u):  # compiled and checked once per device and dtype
                        return "triton"
                return "torch"
            if u.device.type == "cpu" and u.dtype != torch.float64:
                if _cpu_available():
                    return "cpu"
                if not _warned_cpu_fallback:
                    _warned_cpu_fallback = True
                    warnings.warn(
                        "selective_scan: the fused CPU kernel is unavailable, falling back to the "
                        f"'torch' backend (slower). Reason: {_cpu_build_error()}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            return "torch"
    if backend == "cuda":
        if _cuda_ext_error():
            raise RuntimeError(
                "selective_scan: backend 'cuda' needs mamba-ssm's compiled kernel (pip install "
                f"'open-clip-mamba[cuda]' on a CUDA machine): {_cuda_ext_error()}; available backends: "
                + str(available_backends())
            )
        if not u.is_cuda:
            raise RuntimeError(f"selective_scan: backend 'cuda' needs CUDA tensors, got device {u.device}")
    elif backend == "cpu":
        if u.device.type != "cpu":
            raise RuntimeError(f"selective_scan: backend 'cpu' needs CPU tensors, got device {u.device}")
        if u.dtype == torch.float64:
            raise ValueError(
                "selective_scan: backend 'cpu' computes in float32 and accepts u of dtype float16, "
                "bfloat16 or float32, got float64; use backend 'torch' or 'ref' for float64"
            )
        if not _cpu_available():
            raise RuntimeError(f"selective_scan: backend 'cpu' is unavailable: {_cpu_build_error()}")
    elif backend == "triton":
        from .scan_triton import check_device

        check_device(u)  # raises naming the device and the accepted values
        if u.dtype == torch.float64:
            raise ValueError(
                "selective_scan: backend 'triton' computes in float32 and accepts u of dtype float16, "
                "bfloat16 or float32, got float64; use backend 'torch' or 'ref' for float64"
            )
        from .triton_selfcheck import TritonSelfCheckError, scan_check_error

        err = scan_check_error(u.device, u.dtype)
        if err:
            raise TritonSelfCheckError(f"selective_scan: backend 'triton' failed its self-check on {u.device} / "
                                       f"{u.dtype}: {err}; use backend 'torch' (or 'auto', which falls back)")
    return backend


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, t, expected: str, shape_ok: Callable[[Tuple[int, ...]], bool], device) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"selective_scan: argument {name!r} must be a torch.Tensor of shape {expected}, "
                         f"got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"selective_scan: argument {name!r} has dtype {t.dtype}, expected one of "
                         f"{[str(d) for d in _FLOAT_DTYPES]} (complex A is not supported)")
    if t.device != device:
        raise ValueError(f"selective_scan: argument {name!r} is on device {t.device}, expected {device} "
                         "(the device of u)")
    if not shape_ok(_shape(t)):
        raise ValueError(f"selective_scan: argument {name!r} has shape {_shape(t)}, expected {expected}")


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Validate shapes, dtypes and devices; raise ValueError naming the bad argument."""
    if not isinstance(u, Tensor):
        raise ValueError(f"selective_scan: argument 'u' must be a torch.Tensor of shape (batch, D, L), "
                         f"got {type(u).__name__}")
    dev = u.device
    _check_tensor("u", u, "(batch, D, L)", lambda s: len(s) == 3, dev)
    b, d, L = u.shape
    _check_tensor("delta", delta, f"(batch, D, L) = {(b, d, L)}", lambda s: s == (b, d, L), dev)
    _check_tensor("A", A, f"(D, N) = ({d}, N)", lambda s: len(s) == 2 and s[0] == d, dev)
    n = A.shape[1]

    def bc_ok(s):
        if len(s) == 2:
            return s == (d, n)
        if len(s) == 3:
            return s == (b, n, L)
        return len(s) == 4 and s[0] == b and s[2:] == (n, L) and s[1] >= 1 and d % s[1] == 0

    for name, M in (("B", B), ("C", C)):
        _check_tensor(name, M, f"(D, N) = {(d, n)} (constant), (batch, N, L) = {(b, n, L)} or "
                      f"(batch, G, N, L) = ({b}, G, {n}, {L}) with D={d} divisible by G", bc_ok, dev)
    if D is not None:
        _check_tensor("D", D, f"(D,) = ({d},)", lambda s: s == (d,), dev)
    if z is not None:
        _check_tensor("z", z, f"(batch, D, L) = {(b, d, L)}", lambda s: s == (b, d, L), dev)
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, f"(D,) = ({d},)", lambda s: s == (d,), dev)


def _per_channel_bc(B: Tensor, C: Tensor, batch: int, length: int) -> Tuple[Tensor, Tensor]:
    """mamba-ssm's constant (input-independent) B / C of shape (D, N) as the grouped form every backend
    takes: (batch, G=D, N, L), a broadcast view. When one of B, C is constant, the other one is brought
    to the same G = D (some kernels need equal groups). Gradients flow back to the (D, N) tensors."""
    if B.dim() != 2 and C.dim() != 2:
        return B, C

    def per_channel(M: Tensor) -> Tensor:
        if M.dim() == 2:
            return M[None, :, :, None].expand(batch, -1, -1, length)
        d = B.shape[0] if B.dim() == 2 else C.shape[0]
        M = M.unsqueeze(1) if M.dim() == 3 else M
        return M.repeat_interleave(d // M.shape[1], dim=1) if M.shape[1] != d else M

    return per_channel(B), per_channel(C)


def selective_scan(
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
    backend: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan with mamba-ssm ``selective_scan_fn`` semantics.

    Args:
        u, delta: (batch, D, L). A: (D, N), real. B, C: (batch, N, L), grouped (batch, G, N, L) with
            D divisible by G (channel d uses group ``d // (D // G)``), or constant (D, N) (not
            input-dependent; normalised here to the grouped form, so every backend takes it).
            D: (D,) skip. z: (batch, D, L) gate, ``y * silu(z)``. delta_bias: (D,), added to delta
            before the optional softplus.
        backend: one of ``BACKENDS``.

    Returns:
        y (batch, D, L) in ``u.dtype`` (computed in float32, or float64 for float64 inputs); with
        ``return_last_state`` also the final state (batch, D, N) in the compute dtype.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u)
    B, C = _per_channel_bc(B, C, u.shape[0], u.shape[2])
    return _backend_fn(name)(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                             bool(return_last_state))

