"""The "cpu" backend: our fused C selective-scan kernel, built on first use and loaded with ctypes.

``csrc/selective_scan_cpu.c`` is plain C (no torch headers), compiled with the system C compiler
(``$CC``, else ``cc``/``gcc``) into ``$MAMBA_CLIP_CACHE`` (default ``~/.cache/mamba_clip/kernels``),
under a name keyed by a hash of source, flags, compiler version and CPU model. The build writes a
temporary file and ``os.replace``s it, so concurrent processes never see a half-written library.
A failed build raises :class:`KernelBuildError` naming the command and the compiler's stderr;
``backend="auto"`` then falls back to "torch" with a one-time warning.

The kernel is exposed as two ``torch.library`` custom ops (``mamba_clip::scan_cpu_fwd`` and
``mamba_clip::scan_cpu_bwd``) with an autograd formula, so ``torch.compile`` treats it as opaque. The
formula is first order; a ``create_graph=True`` backward returns the gradients of
:func:`~mamba_clip.ops.scan_graph.scan_graph` on the fused linear-recurrence kernel (``ss_linrec``)
instead, and forward-mode AD / ``torch.func`` transforms run that graph (issue 17).
The same library holds the fused VMamba SS2D inference forward for N == 1 (``ss2d_fwd_n1``, op
``mamba_clip::ss2d_cpu_fwd``, no autograd; see :mod:`mamba_clip.ops.ss2d_fused`).
Threads: ``torch.get_num_threads()`` (1 in a fork() child of a process that already used the
kernel's OpenMP pool, which does not survive fork), on torch's own OpenMP pool (see ``_open``; the
wait policy is set in :mod:`mamba_clip._autoload`). Compute dtype float32.

For N == 1 (VMamba) a forward that will be differentiated saves dt and the states, (batch, D, L)
each, so the backward is one reverse sweep without recomputing the forward. On Linux the large
buffers the backend allocates (outputs, gradients, saved buffers) are advised as transparent huge
pages (``madvise(MADV_HUGEPAGE)``) before first touch: with 4 KiB pages, faulting in fresh memory
cost more than the scan itself.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .linear_recurrence import register_kernel
from .scan_graph import create_graph_needed, graph_backward_bt, scan_graph, transform_active

__all__ = [
    "KernelBuildError",
    "build_error",
    "cache_dir",
    "is_available",
    "kernel_path",
    "load_kernel",
    "forward_extra_bytes",
    "scratch_bytes",
    "selective_scan_cpu",
    "ss2d_fwd_cpu",
]

SRC = Path(__file__).with_name("csrc") / "selective_scan_cpu.c"
# Not -ffast-math: it implies -ffinite-math-only (NaN/Inf must propagate) and allows reassociation
# that would undo the Cody-Waite split in exp. `omp simd reduction` vectorises the reductions instead.
CFLAGS: Tuple[str, ...] = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
                           "-shared", "-fPIC", "-std=gnu11")


class KernelBuildError(RuntimeError):
    """The C kernel could not be compiled or loaded."""


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_error: Optional[str] = None
BUILDS = 0  # compilations done by this process (the cache tests read it)
_pool_pid: Optional[int] = None  # the process whose OpenMP thread pool the kernel has started


def _threads() -> int:
    """torch.get_num_threads(), or 1 in a fork() child of a process that already started our
    OpenMP pool: GNU libgomp's pool does not survive fork and reusing it would hang."""
    global _pool_pid
    nt = max(1, torch.get_num_threads())
    pid = os.getpid()
    if _pool_pid is not None and _pool_pid != pid:
        return 1
    if nt > 1:
        _pool_pid = pid
    return nt


def cache_dir() -> Path:
    root = os.environ.get("MAMBA_CLIP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mamba_clip" / "kernels"


def _compiler() -> List[str]:
    cc = os.environ.get("CC")
    if cc:
        return cc.split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise KernelBuildError("no C compiler found (tried $CC, cc, gcc, clang); install gcc to use the "
                           "'cpu' selective-scan backend")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    return line + platform.machine()
    except OSError:
        pass
    return platform.processor() + platform.machine()


def kernel_path() -> Path:
    """Where the library for the current source, flags, compiler and CPU is (or will be) cached."""
    cc = _compiler()
    try:
        ver = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"cannot run the C compiler {cc!r}: {e}") from e
    h = hashlib.sha256()
    for part in (SRC.read_bytes(), " ".join(CFLAGS).encode(), " ".join(cc).encode(), ver.encode(),
                 _cpu_id().encode()):
        h.update(part)
        h.update(b"\0")
    return cache_dir() / f"selective_scan_cpu-{h.hexdigest()[:20]}.so"


def _build(path: Path) -> None:
    global BUILDS
    BUILDS += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    cmd = _compiler() + list(CFLAGS) + ["-o", tmp, str(SRC), "-lm"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise KernelBuildError(f"building the CPU selective-scan kernel failed: `{' '.join(cmd)}` "
                                   f"exited with {res.returncode}:\n{res.stderr.strip()}")
        os.replace(tmp, path)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(
            f"building the CPU selective-scan kernel failed: `{' '.join(cmd)}`: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(path: Path) -> ctypes.CDLL:
    # With pip's torch the kernel's libgomp.so.1 resolves to the runtime torch already loaded (one
    # pool, whose wait policy mamba_clip._autoload set before torch started it). Where torch uses
    # another runtime (libiomp5, ...) the kernel brings its own libgomp, which reads its settings
    # now: give it the same short spin (unless the user chose), restore the environment afterwards.
    from .._autoload import openmp_defaults

    added = openmp_defaults()
    try:
        lib = ctypes.CDLL(str(path))
    finally:
        for k in added:
            os.environ.pop(k, None)
    f, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ss_fwd.argtypes = [f] * 8 + [i32] + [i64] * 5 + [f] * 4 + [i32]
    lib.ss_fwd.restype = i32
    lib.ss_bwd.argtypes = [f] * 8 + [i32] + [f] * 4 + [i64] * 5 + [f] * 8 + [i32]
    lib.ss_bwd.restype = i32
    lib.ss_fwd_scratch_bytes.argtypes = [i64, i64, i32]
    lib.ss_fwd_scratch_bytes.restype = i64
    lib.ss_bwd_scratch_bytes.argtypes = [i64] * 5 + [i32]
    lib.ss_bwd_scratch_bytes.restype = i64
    lib.ss2d_fwd_n1.argtypes = [f] * 6 + [i64] * 5 + [f, i32, i32]
    lib.ss2d_fwd_n1.restype = i32
    return lib


def load_kernel(rebuild: bool = False) -> ctypes.CDLL:
    """Return the loaded kernel library, compiling it first if needed (raises KernelBuildError).

    A cached file that fails to load (truncated, corrupt) is rebuilt once.
    """
    global _lib, _error
    with _lock:
        if _lib is not None and not rebuild:
            return _lib
        try:
            path = kernel_path()
            if rebuild or not path.exists():
                _build(path)
            try:
                lib = _open(path)
            except (OSError, AttributeError):
                _build(path)
                lib = _open(path)
        except KernelBuildError as e:
            _error = str(e)
            raise
        except OSError as e:
            _error = f"loading the CPU selective-scan kernel failed: {e}"
            raise KernelBuildError(_error) from e
        _lib, _error = lib, None
        return lib


def is_available() -> bool:
    """True if the kernel is (or can be) built and loaded. Tries the build once per process."""
    if _lib is not None:
        return True
    if _error is not None:
        return False
    try:
        load_kernel()
    except KernelBuildError:
        return False
    return True


def build_error() -> str:
    """The reason the kernel is unavailable ("" when it is available)."""
    is_available()
    return _error or ""


def scratch_bytes(batch: int, dim: int, L: int, N: int, G: int, backward: bool = False) -> int:
    """Bytes the C kernel itself allocates (per-thread scratch, private dB/dC copies)."""
    lib = load_kernel()
    nt = torch.get_num_threads()
    if backward:
        return int(lib.ss_bwd_scratch_bytes(batch, dim, L, N, G, nt))
    return int(lib.ss_fwd_scratch_bytes(L, N, nt))


def forward_extra_bytes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                        z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None) -> int:
    """Bytes a "cpu" forward allocates for these inputs, by construction: float32 copies of inputs that
    are not float32-contiguous, the (batch, G, L, N) transposes of B and C unless already laid out so,
    the output, the last state and the kernel's scratch."""
    def copy_bytes(t: Optional[Tensor]) -> int:
        if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
            return 0
        return t.numel() * 4

    def bc_bytes(M: Tensor) -> int:
        Mt = (M.unsqueeze(1) if M.dim() == 3 else M).transpose(-1, -2)
        return 0 if (M.dtype == torch.float32 and Mt.is_contiguous()) else M.numel() * 4

    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1] if B.dim() == 4 else 1
    n = sum(copy_bytes(t) for t in (u, delta, A, D, z, delta_bias)) + bc_bytes(B) + bc_bytes(C)
    return n + u.numel() * 4 + batch * dim * N * 4 + scratch_bytes(batch, dim, L, N, G)


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None  # libc madvise (Linux), resolved on first use; False when unavailable


def _advise_huge(t: Tensor) -> Tensor:
    """Ask Linux to back the 2 MiB-aligned interior of a large, not yet touched buffer with
    transparent huge pages (a hint: errors are ignored, other systems are untouched)."""
    global _madvise
    if t.nbytes < 4 * _HUGE_PAGE:
        return t
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):
                pass
    if _madvise:
        p = t.data_ptr()
        start = -(-p // _HUGE_PAGE) * _HUGE_PAGE
        end = (p + t.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)
    return t


def _big_empty_like(t: Tensor) -> Tensor:
    return _advise_huge(torch.empty_like(t))


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def _opt(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None or t.numel() == 0 else t


def _saved_shapes(u: Tensor, N: int, save: bool) -> Tuple[Tuple[int, ...], ...]:
    """Shapes of the (dt, states) buffers the N == 1 forward saves for the backward."""
    if not (save and N == 1 and u.numel() > 0):
        return (0,), (0,)
    return tuple(u.shape), tuple(u.shape)


@torch.library.custom_op("mamba_clip::scan_cpu_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool,
              save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """float32 contiguous inputs in kernel layout (Bt, Ct: (batch, G, L, N)) -> (out, last_state, dt,
    states). With ``save`` and N == 1 the last two are (batch, D, L) buffers (dt after bias and
    softplus, and the states) from which the backward runs without recomputing the forward; otherwise
    they are empty. (For N > 1 the states would be (batch, D, L, N): never saved.)"""
    lib = load_kernel()
    batch, dim, L = u.shape
    N, G = A.shape[1], Bt.shape[1]
    out = _big_empty_like(u)
    last = u.new_empty((batch, dim, N))
    dts, hs = (_advise_huge(u.new_empty(s)) for s in _saved_shapes(u, N, save))
    if out.numel() == 0:
        return out, last.zero_(), dts, hs
    rc = lib.ss_fwd(_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D), _ptr(z), _ptr(delta_bias),
                    int(softplus), batch, dim, L, N, G, _ptr(out), _ptr(last), _ptr(dts), _ptr(hs),
                    _threads())
    if rc != 0:
        raise MemoryError("selective_scan (cpu): the kernel could not allocate its scratch memory")
    return out, last, dts, hs


@_scan_fwd.register_fake
def _(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, save):
    saved = [u.new_empty(s) for s in _saved_shapes(u, A.shape[1], save)]
    return (torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1])), *saved)


@torch.library.custom_op("mamba_clip::scan_cpu_bwd", mutates_args=())
def _scan_bwd(u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool, dout: Tensor,
              dlast: Optional[Tensor], dts: Tensor, hs: Tensor) -> List[Tensor]:
    """Gradients [du, ddelta, dA, dBt, dCt, dD, dz, ddelta_bias]; absent inputs get empty tensors.
    dts, hs: the forward's saved buffers (empty: the kernel recomputes the forward)."""
    lib = load_kernel()
    batch, dim, L = u.shape
    N, G = A.shape[1], Bt.shape[1]
    du, ddelta = _big_empty_like(u), _big_empty_like(u)
    dA = torch.zeros_like(A)
    dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
    dD = torch.zeros_like(D) if D is not None else u.new_empty(0)
    dz = _big_empty_like(z).zero_() if z is not None else u.new_empty(0)
    ddb = torch.zeros_like(delta_bias) if delta_bias is not None else u.new_empty(0)
    if u.numel() == 0:
        return [du.zero_(), ddelta.zero_(), dA, dBt, dCt, dD, dz, ddb]
    rc = lib.ss_bwd(_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D), _ptr(z), _ptr(delta_bias),
                    int(softplus), _ptr(dout), _ptr(dlast), _ptr(dts), _ptr(hs),
                    batch, dim, L, N, G, _ptr(du), _ptr(ddelta),
                    _ptr(dA), _ptr(dBt), _ptr(dCt), _ptr(dD if D is not None else None),
                    _ptr(dz if z is not None else None), _ptr(ddb if delta_bias is not None else None),
                    _threads())
    if rc != 0:
        raise MemoryError("selective_scan (cpu): the kernel could not allocate its scratch memory")
    return [du, ddelta, dA, dBt, dCt, dD, dz, ddb]


@_scan_bwd.register_fake
def _(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, dout, dlast, dts, hs):
    return [torch.empty_like(u), torch.empty_like(u), torch.empty_like(A), torch.empty_like(Bt),
            torch.empty_like(Ct), torch.empty_like(D) if D is not None else u.new_empty(0),
            torch.empty_like(z) if z is not None else u.new_empty(0),
            torch.empty_like(delta_bias) if delta_bias is not None else u.new_empty(0)]


def _setup_context(ctx, inputs, output):
    u, delta, A, Bt, Ct, D, z, delta_bias, softplus, save = inputs
    _, _, dts, hs = output
    ctx.mark_non_differentiable(dts, hs)
    ctx.set_materialize_grads(False)  # no (batch, D, L) zero gradients for the saved buffers
    ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias, dts, hs)
    ctx.softplus = softplus


def _backward(ctx, dout, dlast, *_):
    u, delta, A, Bt, Ct, D, z, delta_bias, dts, hs = ctx.saved_tensors
    if create_graph_needed((u, delta, A, Bt, Ct, D, z, delta_bias, dout, dlast)):
        # create_graph=True: gradients of the fused-recurrence graph, exact to any order (issue 17)
        return (*graph_backward_bt((u, delta, A, Bt, Ct, D, z, delta_bias), ctx.softplus, "cpu", dout,
                                   dlast), None, None)
    if dout is None:
        dout = torch.zeros_like(u)
    grads = _scan_bwd(u, delta, A, Bt, Ct, D, z, delta_bias, ctx.softplus, dout.contiguous(),
                      None if dlast is None else dlast.contiguous(), dts, hs)
    du, ddelta, dA, dBt, dCt, dD, dz, ddb = grads
    return (du, ddelta, dA, dBt, dCt, dD if D is not None else None, dz if z is not None else None,
            ddb if delta_bias is not None else None, None, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def selective_scan_cpu(
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
    """Fused CPU selective scan (shapes as ``selective_scan``); float32 compute, returns u.dtype.

    Unlike mamba-ssm's CUDA op, the gradient of the returned last state is propagated too.
    """
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if B.shape[1] != C.shape[1]:  # the kernel takes one group count: expand both to the common one
        G = math.lcm(B.shape[1], C.shape[1])
        B = B.repeat_interleave(G // B.shape[1], dim=1)
        C = C.repeat_interleave(G // C.shape[1], dim=1)
    if transform_active((u, delta, A, B, C, D, z, delta_bias)):  # forward AD / torch.func: the graph
        out, last = scan_graph(_f32(u), _f32(delta), _f32(A), B.to(torch.float32), C.to(torch.float32),
                               _f32(D), _f32(z), _f32(delta_bias), bool(delta_softplus), "cpu")
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    Bt = B.to(torch.float32).transpose(-1, -2).contiguous()
    Ct = C.to(torch.float32).transpose(-1, -2).contiguous()
    save = A.shape[1] == 1 and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    out, last, _, _ = _scan_fwd(_f32(u), _f32(delta), _f32(A), Bt, Ct, _f32(D), _f32(z),
                                   _f32(delta_bias), bool(delta_softplus), save)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


@torch.library.custom_op("mamba_clip::ss2d_cpu_fwd", mutates_args=())
def ss2d_fwd_cpu(u: Tensor, xd: Tensor, dtw: Tensor, dtb: Tensor, A: Tensor, Ds: Tensor,
                 portable: bool = False) -> Tensor:
    """Fused SS2D scan-and-merge for N == 1 (inference only: no autograd formula).

    float32 contiguous inputs: u (batch, H, W, D) channels-last; xd (batch, H, W, 4, R + 2) the
    x_proj output on the un-scanned map ([dt_0 .. dt_{R-1}, B, C] per direction); dtw (4, D, R);
    dtb, A, Ds (4, D), A = -exp(A_logs). Returns y (batch, H, W, D) = cross_merge of the four
    directions' scans (see ``ss2d_fwd_n1`` in the C source). ``portable`` forces the non-AVX2 path.
    """
    lib = load_kernel()
    batch, h, w, d = u.shape
    r = dtw.shape[2]
    y = _big_empty_like(u)
    if y.numel() == 0:
        return y
    rc = lib.ss2d_fwd_n1(_ptr(u), _ptr(xd), _ptr(dtw), _ptr(dtb), _ptr(A), _ptr(Ds), batch, h, w, d, r,
                         _ptr(y), _threads(), int(portable))
    if rc != 0:
        raise MemoryError("ss2d (cpu): the kernel could not allocate its scratch memory")
    return y


@ss2d_fwd_cpu.register_fake
def _(u, xd, dtw, dtb, A, Ds, portable=False):
    return torch.empty_like(u)


# ---- the "cpu" kernel of the linear-recurrence primitive (``linear_recurrence.py``) ----------------
_linrec_lib = None


def _linrec_kernel() -> ctypes.CDLL:
    global _linrec_lib
    if _linrec_lib is None:
        lib = load_kernel()
        f, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.ss_linrec.argtypes = [f, f, f, i64, i64, i32, i32]
        lib.ss_linrec.restype = i32
        _linrec_lib = lib
    return _linrec_lib


def linear_recurrence_cpu(a: Tensor, x: Tensor, reverse: bool) -> Tensor:
    """h_t = a_t h_{t-1} + x_t along the last axis (``ss_linrec``, float32): a, x (..., L) -> h (..., L)."""
    a = a.to(torch.float32).contiguous()
    x = x.to(torch.float32).contiguous()
    h = torch.empty_like(x)
    L = x.shape[-1]
    if h.numel():
        _linrec_kernel().ss_linrec(a.data_ptr(), x.data_ptr(), h.data_ptr(), x.numel() // L, L, int(reverse),
                                   _threads())
    return h


register_kernel("cpu", linear_recurrence_cpu)
