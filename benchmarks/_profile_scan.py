"""How much of an image tower's inference time is spent in the selective scan (issue 4, "Speed").

``scan_share(fn)`` runs ``fn()`` (one inference call) a few times with every ``selective_scan`` that
``mamba_clip`` modules call wrapped by a wall-clock timer (backend-agnostic: "cpu", "torch", "ref",
"cuda"), and returns JSON-ready figures: median seconds per call, median scan seconds per call, their
ratio, the number of scan calls and state updates per call, and the backend used. Functions other
than ``selective_scan`` that do the scan (a fused SS2D path, say) are timed too when registered in
``SCAN_FUNCTIONS`` or named with a prefix in ``SCAN_FUNCTION_PREFIXES`` (``ss2d_*``) in
``mamba_clip.ops``; ``scan_functions`` in the result gives the time and calls per wrapped function. ``top_ops(fn)`` is
the torch.profiler view (self CPU time per op). ``benchmarks/bench_towers.py`` can import both:

    from _profile_scan import scan_share           # benchmarks/ is on sys.path when run as a script
    results["simba-l"]["profile"] = scan_share(lambda: towers["simba-l"](x224))

Standalone: ``python benchmarks/_profile_scan.py [--towers simba-l simba-s] [--batch 8] [--rounds 3]``
times each tower against ViT-B-16 in interleaved rounds (same process) and writes
``benchmarks/results/profile_scan.json`` atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BASELINE = "ViT-B-16"
TARGETS = {"simba-l": 0.5}  # minimum images/s ratio to the baseline


# What counts as "the scan": ``selective_scan`` plus any function registered here, and any function of
# ``mamba_clip.ops`` whose name starts with one of the prefixes (a fused VMamba SS2D inference path that
# bypasses ``selective_scan``, e.g. ``ss2d_scan_merge_cpu``, is then timed too, with whatever it fuses:
# cross-scan, dt projection, merge). Nested calls (a registered function that calls ``selective_scan``)
# are timed once, by the outermost call. SCAN_MODULES are imported first when they exist, so that a
# lazily imported fused path is found even before the model has run.
SCAN_FUNCTIONS: List[str] = ["selective_scan"]
SCAN_FUNCTION_PREFIXES: Tuple[str, ...] = ("ss2d_",)
SCAN_MODULES: List[str] = ["mamba_clip.ops.ss2d_fused"]


def _is_scan_name(name: str) -> bool:
    return name in SCAN_FUNCTIONS or name.startswith(SCAN_FUNCTION_PREFIXES)


def scan_functions() -> Dict[str, Callable]:
    """The functions ``timed_scan`` wraps: registered or prefix-matching callables defined in
    ``mamba_clip.ops`` (looked up in every loaded ``mamba_clip.ops`` module), by qualified name."""
    import mamba_clip.ops  # noqa: F401  (loads the package so its modules are in sys.modules)

    for name in SCAN_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    found: Dict[str, Callable] = {}
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "mamba_clip.ops" or mod_name.startswith("mamba_clip.ops.")):
            continue
        for attr, obj in list(vars(mod).items()):
            if (_is_scan_name(attr) and callable(obj) and not isinstance(obj, type)
                    and str(getattr(obj, "__module__", "")).startswith("mamba_clip.ops")):
                found.setdefault(f"{obj.__module__}.{getattr(obj, '__qualname__', attr)}", obj)
    return found


@contextlib.contextmanager
def timed_scan(stats: Dict[str, Any]) -> Iterator[None]:
    """Wrap the scan functions (``scan_functions()``) wherever a loaded ``mamba_clip`` module refers to
    them; accumulate ``stats['seconds']`` (outermost calls only), ``stats['calls']`` and
    ``stats['updates']`` (batch * D * L * N, ``selective_scan`` calls), the backends used and, in
    ``stats['by_function']``, seconds and calls per function. Restores the originals on exit."""
    from mamba_clip.ops import resolve_backend
    from mamba_clip.ops import selective_scan as scan_original

    originals = scan_functions()
    by_function = stats.setdefault("by_function", {})
    depth = [0]

    def make_wrapper(qualname: str, original: Callable) -> Callable:
        is_scan = original is scan_original

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            entry = by_function.setdefault(qualname, {"seconds": 0.0, "calls": 0})
            entry["calls"] += 1
            if is_scan:
                stats["calls"] += 1
                u, A = args[0], (args[2] if len(args) > 2 else kwargs["A"])
                stats["updates"] += u.numel() * A.shape[-1]
                stats["backends"].add(resolve_backend(kwargs.get("backend", "auto"), u))
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    dt = time.perf_counter() - t0
                    stats["seconds"] += dt
                    entry["seconds"] += dt

        return wrapper

    wrappers = {id(fn): make_wrapper(q, fn) for q, fn in originals.items()}  # originals keep the ids valid
    patched = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("mamba_clip"):
            continue
        for attr, obj in list(vars(mod).items()):
            if id(obj) in wrappers:
                patched.append((mod, attr, obj))
                setattr(mod, attr, wrappers[id(obj)])
    try:
        yield
    finally:
        for mod, attr, obj in patched:
            setattr(mod, attr, obj)


def scan_share(fn: Callable[[], object], rounds: int = 3, warmup: int = 1) -> Dict[str, Any]:
    """Median wall time of ``fn()`` and of the scans inside it (under inference_mode); the scan is
    ``selective_scan`` and any other function ``scan_functions()`` finds (see ``SCAN_FUNCTIONS``)."""
    rounds = max(1, rounds)
    totals: List[float] = []
    scans: List[float] = []
    per_round: List[Dict[str, Dict[str, float]]] = []
    stats: Dict[str, Any] = {"seconds": 0.0, "calls": 0, "updates": 0, "backends": set(), "by_function": {}}
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        with timed_scan(stats):
            for _ in range(rounds):
                stats.update(seconds=0.0, calls=0, updates=0)
                stats["by_function"].clear()
                t0 = time.perf_counter()
                fn()
                totals.append(time.perf_counter() - t0)
                scans.append(stats["seconds"])
                per_round.append({k: dict(v) for k, v in stats["by_function"].items()})
    total, scan = statistics.median(totals), statistics.median(scans)
    names = sorted({k for r in per_round for k in r})
    by_function = {k: {"seconds_per_call": statistics.median(r.get(k, {}).get("seconds", 0.0) for r in per_round),
                       "calls_per_call": per_round[-1].get(k, {}).get("calls", 0)} for k in names}
    return {
        "seconds_per_call": total,
        "scan_seconds_per_call": scan,
        "scan_share": scan / total if total > 0 else 0.0,
        "scan_calls_per_call": stats["calls"],
        "scan_state_updates_per_call": stats["updates"],
        "scan_ns_per_state_update": 1e9 * scan / stats["updates"] if stats["updates"] else None,
        "scan_backends": sorted(stats["backends"]),
        "scan_functions": by_function,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
    }


def top_ops(fn: Callable[[], object], rows: int = 15) -> List[Dict[str, Any]]:
    """torch.profiler self-CPU time per op for one ``fn()`` call, largest first."""
    with torch.inference_mode():
        fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:rows]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--towers", nargs="*", default=["simba-l", "simba-s"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--ops", action="store_true", help="also record a torch.profiler op table")
    parser.add_argument("--out", default=str(RESULTS / "profile_scan.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    names = [BASELINE] + args.towers
    towers = {n: open_clip.create_model(n, pretrained=None).visual.eval() for n in names}
    calls = {n: (lambda m=m: m(x)) for n, m in towers.items()}
    times: Dict[str, List[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for fn in calls.values():
            fn()
        for r in range(args.rounds):
            for n, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items()),
                  file=sys.stderr, flush=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    results: Dict[str, Any] = {}
    for n in names:
        entry: Dict[str, Any] = {"seconds_per_batch": med[n], "images_per_s": args.batch / med[n],
                                 "all_seconds": times[n]}
        if n != BASELINE:
            entry["speedup_vs_" + BASELINE] = med[BASELINE] / med[n]
            if n in TARGETS:
                entry["target_speedup"] = TARGETS[n]
                entry["pass"] = entry["speedup_vs_" + BASELINE] >= TARGETS[n]
            entry["profile"] = scan_share(calls[n], rounds=args.rounds)
            if args.ops:
                entry["top_ops"] = top_ops(calls[n])
        results[n] = entry
    from mamba_clip.ops import available_backends

    report = {
        "benchmark": f"image-tower inference, CPU fp32, batch {args.batch}, {args.size} px; share of time in "
                     "selective_scan",
        "baseline": BASELINE,
        "results": results,
        "checks": {n: results[n]["pass"] for n in TARGETS if n in results},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "loadavg_1min": os.getloadavg()[0], "scan_backends": available_backends()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps({n: {k: v for k, v in e.items() if k not in ("all_seconds", "top_ops")}
                      for n, e in results.items()}, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
