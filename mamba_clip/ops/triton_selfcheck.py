"""First-use self-checks of the Triton kernels, so a broken GPU path cannot take a run down.

On the first use per (device, dtype), the "triton" selective scan and the fused cross-scan/merge are
compiled and run on a tiny problem, forward and backward, against the "torch" backend / the plain
PyTorch cross-scan (that check lives in :mod:`~mamba_clip.ops.cross_scan_triton`, on the machinery
here). The result is cached for the process. ``backend="auto"`` uses
:func:`triton_scan_usable`: on failure it warns once, with the reason, and the caller uses "torch".
An explicit ``backend="triton"`` (or a direct :func:`cross_scan_triton` call) raises
:class:`TritonSelfCheckError` with the reason instead.
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

__all__ = [
    "TritonSelfCheckError",
    "check_once",
    "compare",
    "reset",
    "scan_check_error",
    "triton_scan_usable",
    "usable_or_warn",
]

_lock = threading.Lock()
_results: Dict[Tuple[str, str, str], str] = {}
_warned: Dict[Tuple[str, str, str], bool] = {}


class TritonSelfCheckError(RuntimeError):
    """The Triton kernels failed their first-use check on this device and dtype."""


def reset() -> None:
    """Forget cached results and warnings (tests)."""
    with _lock:
        _results.clear()
        _warned.clear()


def _tol(dtype: torch.dtype) -> float:
    return 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def compare(name: str, got: Tensor, want: Tensor, dtype: torch.dtype) -> str:
    """"" when ``got`` matches ``want`` within the dtype's tolerance, else what differs."""
    got, want = got.detach().float(), want.detach().float()
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not torch.isfinite(got).all():
        return f"{name}: non-finite values"
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
    return "" if err <= _tol(dtype) else f"{name}: max relative error {err:.3g} > {_tol(dtype):g}"


def check_once(key: Tuple[str, str, str], check: Callable[[], str]) -> str:
    """``check()`` (returning "" or a reason; exceptions become the reason) once per ``key``, cached."""
    if key in _results:
        return _results[key]
    if torch.compiler.is_compiling():  # no side runs while tracing; eager use runs the check
        return ""
    with _lock:
        if key not in _results:
            try:
                with torch.enable_grad():
                    reason = check()
            except Exception as e:  # noqa: BLE001 - compile errors, launch failures, anything
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            _results[key] = reason
    return _results[key]


def _scan_problem(device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 1, 4, 2, 9  # tiny (the CPU interpreter runs it in Python); grouped B/C

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    u, delta, z = r(b, d, L).to(dtype), r(b, d, L, scale=0.5).to(dtype), r(b, d, L).to(dtype)
    A = -torch.rand(d, n, generator=g).add(0.5).to(device)
    B, C = r(b, 2, n, L).to(dtype), r(b, 2, n, L).to(dtype)
    D, bias = r(d), r(d, scale=0.1)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def scan_check_error(device: torch.device, dtype: torch.dtype) -> str:
    """Why the "triton" selective scan is unusable on ``device`` / ``dtype`` ("" when it passed)."""
    from . import scan_triton
    from .scan_torch import selective_scan_torch

    def check() -> str:
        inputs = _scan_problem(device, dtype)
        outs = []
        for fn in (scan_triton.selective_scan_triton, selective_scan_torch):
            y = fn(*inputs, True, False)
            grads = torch.autograd.grad(y.float().square().sum(), inputs)
            outs.append((y, grads))
        (y1, g1), (y0, g0) = outs
        names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
        reasons = [compare("forward", y1, y0, dtype)] + [compare(k, a, b, dtype) for k, a, b in zip(names, g1, g0)]
        return next((r for r in reasons if r), "")

    return check_once(("scan", str(device), str(dtype)), check)


def usable_or_warn(kind: str, err: str, device: torch.device, dtype: torch.dtype) -> bool:
    """False, with one warning per (kind, device, dtype), when ``err`` is a check failure."""
    if not err:
        return True
    key = (kind, str(device), str(dtype))
    if not _warned.get(key):
        _warned[key] = True
        what = "selective_scan" if kind == "scan" else "cross_scan"
        warnings.warn(f"{what}: the Triton kernels failed their self-check on {device} / {dtype} ({err}); "
                      "using the 'torch' path for this process", RuntimeWarning, stacklevel=4)
    return False


def triton_scan_usable(u: Tensor) -> bool:
    """For ``backend="auto"``: whether the "triton" scan passed its check on ``u``'s device and dtype
    (warns once per device and dtype when it did not)."""
    return usable_or_warn("scan", scan_check_error(u.device, u.dtype), u.device, u.dtype)
