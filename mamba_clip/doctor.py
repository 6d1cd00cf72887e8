"""``mamba-clip doctor``: what this machine runs, and whether the scan backends compute correctly.

    mamba-clip doctor [--json]

Prints the versions of torch, CUDA, triton, timm, open_clip, clip_benchmark, mamba-ssm (and whether
its ``selective_scan_cuda`` extension imports), causal-conv1d; the C compiler and the kernel cache
used by the "cpu" backend; the backend ``"auto"`` picks on the CPU and on each CUDA device; then a
self-check of every available backend against "ref" (forward and backward, a tiny problem, seconds).
Exit status 0 when the backends "auto" would use are healthy, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from typing import Dict, List, Optional

DISTRIBUTIONS = {
    "torch": "torch",
    "triton": "triton",
    "timm": "timm",
    "open_clip": "open_clip_torch",
    "clip_benchmark": "clip_benchmark",
    "mamba-ssm": "mamba_ssm",
    "causal-conv1d": "causal_conv1d",
    "mamba_clip": "open-clip-mamba",
}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("doctor", help="versions, compiler, kernel cache, backend choice and self-check",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)
    return p


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    """Installed versions (None when missing), CUDA of the torch build, and mamba-ssm's extension."""
    import torch

    out: Dict[str, Optional[str]] = {k: _version(d) for k, d in DISTRIBUTIONS.items()}
    out["python"] = ".".join(map(str, __import__("sys").version_info[:3]))
    out["cuda (torch build)"] = torch.version.cuda
    out["cuda devices"] = str(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    from mamba_clip.ops.selective_scan import _cuda_ext_error

    out["selective_scan_cuda"] = "imports" if not _cuda_ext_error() else _cuda_ext_error()
    return out


def toolchain() -> Dict[str, Optional[str]]:
    """The C compiler and kernel cache of the "cpu" backend, and the Triton cache folder."""
    from mamba_clip.ops import scan_cpu

    try:
        cc: Optional[str] = " ".join(scan_cpu._compiler())
    except Exception as e:  # noqa: BLE001 - no compiler is a finding
        cc = f"none ({e})"
    info: Dict[str, Optional[str]] = {"C compiler": cc, "cpu kernel cache": str(scan_cpu.cache_dir()),
                                      "cpu kernel file": str(scan_cpu.kernel_path())}
    info["cpu kernel"] = "built" if scan_cpu.is_available() else f"unavailable: {scan_cpu.build_error()}"
    info["triton cache"] = os.environ.get("TRITON_CACHE_DIR") or os.path.expanduser("~/.triton/cache")
    return info


def _problem(device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    b, d, n, L = 2, 8, 4, 40

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    A = -torch.rand(d, n, generator=g).add(0.5).to(device)
    return [r(b, d, L), r(b, d, L, scale=0.5), A, r(b, n, L), r(b, n, L), r(d), r(b, d, L), r(d, scale=0.1)]


def check_backend(backend: str, device: str) -> Dict[str, object]:
    """Selective scan with ``backend`` vs "ref" on a tiny float32 problem, forward and backward."""
    import torch

    from mamba_clip.ops import selective_scan

    t0 = time.perf_counter()
    try:
        outs = []
        for name in (backend, "ref"):
            inputs = [t.clone().requires_grad_() for t in _problem(device)]
            y = selective_scan(*inputs, delta_softplus=True, backend=name)
            grads = torch.autograd.grad(y.square().sum(), inputs)
            outs.append([y, *grads])
        err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(*outs))
        ok = err < 1e-3
        detail = f"max relative error {err:.2e}" + ("" if ok else " (> 1e-3)")
    except Exception as e:  # noqa: BLE001 - a failing backend is the finding, not a crash
        ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return {"backend": backend, "device": device, "ok": ok, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 3)}


def auto_choice(device: str) -> str:
    """The backend ``backend="auto"`` resolves to for float32 inputs on ``device``."""
    import torch

    from mamba_clip.ops.selective_scan import resolve_backend

    return resolve_backend("auto", torch.zeros(1, 1, 1, device=device))


def diagnose() -> Dict[str, object]:
    """The full report (what ``mamba-clip doctor --json`` prints)."""
    import torch

    from mamba_clip.ops.selective_scan import available_backends

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    report: Dict[str, object] = {"versions": versions(), "toolchain": toolchain()}
    auto = {}
    for dev in devices:
        try:
            auto[dev] = auto_choice(dev)
        except Exception as e:  # noqa: BLE001
            auto[dev] = f"error: {type(e).__name__}: {e}"
    report["auto"] = auto
    checks: List[Dict[str, object]] = []
    for dev in devices:
        backends = [b for b in available_backends() if b != "ref"]
        if dev == "cpu":
            backends = [b for b in backends if b in ("cpu", "torch", "triton")]
        else:
            backends = [b for b in backends if b in ("cuda", "torch", "triton")]
        checks += [check_backend(b, dev) for b in backends]
    report["checks"] = checks
    healthy = {(c["device"], c["backend"]) for c in checks if c["ok"]}
    report["healthy"] = all((dev, b) in healthy for dev, b in auto.items())
    return report


def format_report(report: Dict[str, object]) -> str:
    lines = ["versions:"]
    lines += [f"  {k:20s} {v if v is not None else 'not installed'}" for k, v in report["versions"].items()]
    lines.append("toolchain:")
    lines += [f"  {k:20s} {v if v is not None else 'not found'}" for k, v in report["toolchain"].items()]
    lines.append("backend 'auto' picks:")
    lines += [f"  {dev:20s} {b}" for dev, b in report["auto"].items()]
    lines.append("self-check against 'ref' (forward + backward):")
    for c in report["checks"]:
        lines.append(f"  {c['device']:8s} {c['backend']:8s} {'ok  ' if c['ok'] else 'FAIL'} {c['detail']} "
                     f"({c['seconds']:.2f} s)")
    lines.append("healthy: the backends 'auto' uses pass" if report["healthy"]
                 else "NOT healthy: a backend that 'auto' uses fails its check")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = diagnose()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["healthy"] else 1
