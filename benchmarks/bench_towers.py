"""Image-tower inference speed on CPU against open_clip's own ViT-B-16 (issue 3, "Speed").

fp32, batch 8, 224 px, ``torch.inference_mode``; each tower is ``open_clip.create_model(name).visual``
(trunk + projection), timed in interleaved rounds in one process so machine load hits all of them
alike; the figure per tower is the median over rounds. Also times vmamba-s at 448 px against 224 px.
Towers whose config is not installed (e.g. simba-* before issue 4 lands) are reported as missing.

Targets: vmamba-s >= 1.3x and vmamba-t220 >= 2x ViT-B-16's images/s; vmamba-s time(448)/time(224)
<= 4.6. Writes ``benchmarks/results/bench_towers.json`` (atomically) and prints it.

    python benchmarks/bench_towers.py [--rounds 7] [--batch 8] [--threads N] [--profile vmamba-s]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BASELINE = "ViT-B-16"
TOWERS = ["vmamba-s", "vmamba-t220", "simba-s", "simba-l"]
TARGETS = {"vmamba-s": 1.3, "vmamba-t220": 2.0}  # minimum images/s ratio to the baseline
MAX_448_RATIO = 4.6


def build_tower(name: str) -> torch.nn.Module:
    import open_clip

    model = open_clip.create_model(name, pretrained=None)
    return model.visual.eval()


def time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def profile(tower: torch.nn.Module, x: torch.Tensor, rows: int = 25) -> str:
    with torch.inference_mode(), torch.profiler.profile() as prof:
        tower(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--towers", nargs="*", default=TOWERS)
    parser.add_argument("--profile", default="", help="print a torch.profiler table for this tower")
    parser.add_argument("--out", default=str(RESULTS / "bench_towers.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from mamba_clip.ops import available_backends

    known = set(open_clip.list_models())
    names = [BASELINE] + [t for t in args.towers if t in known]
    missing = [t for t in args.towers if t not in known]
    towers = {n: build_tower(n) for n in names}
    x224 = torch.randn(args.batch, 3, 224, 224)
    x448 = torch.randn(args.batch, 3, 448, 448)
    cases: Dict[str, Callable[[], object]] = {n: (lambda m=m: m(x224)) for n, m in towers.items()}
    if "vmamba-s" in towers:
        cases["vmamba-s@448"] = lambda: towers["vmamba-s"](x448)

    times: Dict[str, List[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        for fn in cases.values():
            for _ in range(args.warmup):
                fn()
        for r in range(args.rounds):
            for k, fn in cases.items():
                times[k].append(time_once(fn))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
                  file=sys.stderr, flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / med[k] for k in cases}
    base = ips[BASELINE]
    results: Dict[str, Dict] = {}
    for k in cases:
        entry = {"seconds_per_batch": med[k], "images_per_s": ips[k], "all_seconds": times[k]}
        if k in towers and k != BASELINE:
            entry["speedup_vs_" + BASELINE] = ips[k] / base
            if k in TARGETS:
                entry["target_speedup"] = TARGETS[k]
                entry["pass"] = ips[k] / base >= TARGETS[k]
        results[k] = entry
    checks = {k: results[k]["pass"] for k in TARGETS if k in results}
    if "vmamba-s@448" in med:
        ratio = med["vmamba-s@448"] / med["vmamba-s"]
        results["vmamba-s@448"]["time_ratio_448_vs_224"] = ratio
        results["vmamba-s@448"]["target_max_ratio"] = MAX_448_RATIO
        results["vmamba-s@448"]["pass"] = ratio <= MAX_448_RATIO
        checks["vmamba-s@448/224"] = ratio <= MAX_448_RATIO
    report = {
        "benchmark": "image-tower inference, CPU fp32, batch %d, 224 px (and 448 px for vmamba-s)" % args.batch,
        "baseline": BASELINE,
        "results": results,
        "checks": checks,
        "all_pass": bool(checks) and all(checks.values()),
        "missing_towers": missing,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0],
            "scan_backends": available_backends(),
            "rounds": args.rounds,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: v for k, v in report.items() if k != "results"} | {
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "speedups": {k: round(v["speedup_vs_" + BASELINE], 3) for k, v in results.items()
                     if "speedup_vs_" + BASELINE in v},
    }, indent=2))
    if args.profile and args.profile in towers:
        print(profile(towers[args.profile], x224))
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
