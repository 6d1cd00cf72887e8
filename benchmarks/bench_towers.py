"""Image-tower inference speed on CPU against open_clip's own ViT-B-16 (issues 3 and 4, "Speed").

fp32, batch 8, 224 px, ``torch.inference_mode``; each tower is ``open_clip.create_model(name).visual``
(trunk + projection), timed in interleaved rounds in one process so machine load hits all of them
alike; the figure per tower is the median over rounds. Also times vmamba-s at 448 px against 224 px.
Towers whose config is not installed are reported as missing.

The measurement runs in child processes, one per mode ``THREADS:ALLOCATOR``:

* THREADS ``1`` or ``all`` (torch's default). On a machine shared with other jobs, every OpenMP
  parallel region of a multi-threaded run can stall for a scheduler tick (8 ms here) waiting for a
  descheduled thread; a model of many short ops (VMamba: ~600 per forward) loses far more to that
  than one of few long GEMMs (ViT), so multi-threaded ratios measure the neighbours' load as much as
  the models. Single-threaded runs have no barriers: that is the per-core throughput, reproducible
  on a busy machine, and the mode the checks use by default (``--check-mode``).
* ALLOCATOR ``default`` (glibc as users get it) or ``steady`` (``MALLOC_MMAP_THRESHOLD_=32 MiB``,
  ``MALLOC_TRIM_THRESHOLD_=16 GiB``: freed memory is reused, never page-faulted in again).

Targets: vmamba-s >= 1.3x, vmamba-t220 >= 2x and simba-l >= 0.5x ViT-B-16's images/s; vmamba-s
time(448)/time(224) <= 4.6.

Scan share (JSON ``scan_profile``): in the check mode's child, after its timing rounds (so the threads
match and the timings are undisturbed), each tower of ``--scan-profile-towers`` (default simba-l,
simba-s, vmamba-s; only those also timed) runs ``--scan-profile-rounds`` more forwards with the scan
functions wrapped by a timer (``benchmarks/_profile_scan.py``: ``mamba_clip.ops.selective_scan``, plus
any function registered there or named ``ss2d_*`` in ``mamba_clip.ops``), giving the share of forward
time spent in the scan, and one forward under torch.profiler for a short op table
(``--scan-profile-ops`` rows). ``--no-scan-profile`` skips it.

Sharing the machine (issue 17), ``--busy N``: the child starts N busy processes of its own
(``while True: pass``) and every round times all towers twice, interleaved: once with them stopped
(SIGSTOP, "quiet") and once running (SIGCONT, "busy"), with ``os.getloadavg()`` recorded beside each
round. JSON ``busy``: per tower the busy and quiet figures and ``keeps`` = busy ratio to ViT-B-16 /
quiet ratio; target vmamba-s keeps >= 0.8 (and, with ``--train``, every tower's busy step time
<= 3x its quiet time). Other load on the machine hits both phases; rerun on a quiet machine.

Training step, ``--train``: each case is one image-tower training step (train mode, zero_grad,
forward, mean-square loss of the embedding, backward; fp32); targets simba-l >= 0.4x ViT-B-16's
steps/s. No 448 px case in this mode.

Writes ``benchmarks/results/bench_towers.json`` (atomically; ``--out`` elsewhere) and prints a summary.

    python benchmarks/bench_towers.py [--rounds 7] [--batch 8] [--towers ...] [--modes 1:default all:default]
                                      [--check-mode 1:default] [--profile vmamba-s]
                                      [--no-scan-profile | --scan-profile-towers simba-l simba-s vmamba-s]
                                      [--scan-profile-rounds 3] [--scan-profile-ops 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BASELINE = "ViT-B-16"
TOWERS = ["vmamba-s", "vmamba-t220", "simba-s", "simba-l"]
TARGETS = {"vmamba-s": 1.3, "vmamba-t220": 2.0, "simba-l": 0.5}  # minimum images/s ratio to the baseline
TRAIN_TARGETS = {"simba-l": 0.4}  # --train: minimum steps/s ratio to the baseline
MAX_448_RATIO = 4.6
BUSY_KEEP_TARGETS = {"vmamba-s": 0.8}  # --busy: minimum (busy ratio to the baseline) / (quiet ratio)
BUSY_MAX_SLOWDOWN_TRAIN = 3.0  # --busy --train: maximum busy / quiet step time, every tower
SCAN_PROFILE_TOWERS = ["simba-l", "simba-s", "vmamba-s"]
SCAN_PROFILE_METHOD = (
    "After the timing rounds, in the check mode's process (same threads, same warm towers): each tower's "
    "forward (batch {batch}, 224 px, inference_mode) is run {rounds} more time(s) with a wall-clock timer "
    "around every call of the scan functions listed in wrapped_functions -- mamba_clip.ops.selective_scan "
    "(whatever its backend), plus any function registered in benchmarks/_profile_scan.py SCAN_FUNCTIONS or "
    "named {prefixes}* in mamba_clip.ops (a fused SS2D path that bypasses selective_scan; its time includes "
    "what it fuses: cross-scan, dt projection, merge); nested calls count once. scan_share = median scan "
    "seconds / median forward seconds over those runs (benchmarks/_profile_scan.py scan_share). top_ops: "
    "torch.profiler self-CPU time per op, one forward (_profile_scan.top_ops); the profiler's overhead makes "
    "its shares approximate."
)


def build_tower(name: str) -> torch.nn.Module:
    import open_clip

    model = open_clip.create_model(name, pretrained=None)
    return model.visual.eval()


def train_step(tower: torch.nn.Module, x: torch.Tensor) -> None:
    """One image-tower training step: train mode, zero_grad, forward, mean-square loss, backward."""
    tower.train()
    tower.zero_grad(set_to_none=True)
    out = tower(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.float().pow(2).mean().backward()


class Busy:
    """N busy child processes (``while True: pass``), started stopped; ``run(True/False)`` continues or
    stops them. A context manager: they are killed on exit."""

    def __init__(self, n: int):
        import signal

        self._sig = signal
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        self.run(False)

    def run(self, on: bool) -> None:
        for p in self.procs:
            os.kill(p.pid, self._sig.SIGCONT if on else self._sig.SIGSTOP)
        if self.procs:
            time.sleep(0.2)  # let the scheduler settle

    def __enter__(self) -> "Busy":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _profile_scan():
    """``benchmarks/_profile_scan.py`` (on sys.path when this file runs as a script; added otherwise)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import _profile_scan

    return _profile_scan


def profile(tower: torch.nn.Module, x: torch.Tensor, rows: int = 25) -> str:
    with torch.inference_mode(), torch.profiler.profile() as prof:
        tower(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


ALLOCATOR_ENV = {
    "default": {},
    "steady": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)},
}


def measure(args) -> Dict:
    """One interleaved measurement of all towers in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from mamba_clip.ops import available_backends

    load_start = os.getloadavg()[0]
    known = set(open_clip.list_models())
    names = [BASELINE] + [t for t in args.towers if t in known]
    missing = [t for t in args.towers if t not in known]
    towers = {n: build_tower(n) for n in names}
    x224 = torch.randn(args.batch, 3, 224, 224)
    if args.train:
        cases: Dict[str, Callable[[], object]] = {n: (lambda m=m: train_step(m, x224)) for n, m in towers.items()}
    else:
        cases = {n: (lambda m=m: m(x224)) for n, m in towers.items()}
        if "vmamba-s" in towers and not args.busy:
            x448 = torch.randn(args.batch, 3, 448, 448)
            cases["vmamba-s@448"] = lambda: towers["vmamba-s"](x448)

    phases = ["quiet", "busy"] if args.busy else ["quiet"]
    ptimes: Dict[str, Dict[str, List[float]]] = {ph: {k: [] for k in cases} for ph in phases}
    cpu: Dict[str, Dict[str, List[float]]] = {ph: {k: [] for k in cases} for ph in phases}
    loads: Dict[str, List[float]] = {ph: [] for ph in phases}
    grad_mode = torch.enable_grad() if args.train else torch.inference_mode()
    with grad_mode, Busy(args.busy) as busy:
        for fn in cases.values():
            for _ in range(args.warmup):
                fn()
        for r in range(args.rounds):
            for ph in phases:
                busy.run(ph == "busy")
                loads[ph].append(os.getloadavg()[0])
                for k, fn in cases.items():
                    c0 = time.process_time()
                    ptimes[ph][k].append(time_once(fn))
                    cpu[ph][k].append(time.process_time() - c0)
                print(f"[{args.mode}] round {r + 1}/{args.rounds} {ph} (load {loads[ph][-1]:.1f}): "
                      + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in ptimes[ph].items()), file=sys.stderr, flush=True)
        busy.run(False)
    times = ptimes["quiet"]
    results, checks = analyse(times, args.batch, train=args.train)
    for k, v in results.items():
        v["cpu_seconds"] = statistics.median(cpu["quiet"][k])
    out = {
        "results": results,
        "checks": checks,
        "missing_towers": missing,
        "env": {
            "threads": torch.get_num_threads(),
            "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
            "scan_backends": available_backends(),
            "malloc_env": {k: os.environ[k] for k in ALLOCATOR_ENV["steady"] if k in os.environ},
            "openmp_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
                           if k in os.environ},
            "loadavg_1min_per_round": loads,
        },
    }
    if args.busy:
        out["busy"] = analyse_busy(ptimes, cpu, loads, args.batch, args.busy, args.train)
        out["checks"].update(out["busy"]["checks"])
    if args.profile and args.profile in towers:
        print(profile(towers[args.profile], x224), file=sys.stderr)
    profiled = [t for t in args.scan_profile_towers if t in towers and t != BASELINE]
    if profiled and not args.no_scan_profile:
        out["scan_profile"] = measure_scan_share({t: cases[t] for t in profiled}, args)
        out["scan_profile"]["not_timed"] = [t for t in args.scan_profile_towers if t not in profiled]
    return out


def measure_scan_share(cases: Dict[str, Callable[[], object]], args) -> Dict:
    """Share of each tower's forward time spent in the scan (``_profile_scan.scan_share``) and a short
    torch.profiler op table (``_profile_scan.top_ops``); run after the timing rounds."""
    ps = _profile_scan()
    towers: Dict[str, Dict] = {}
    for name, fn in cases.items():
        entry = ps.scan_share(fn, rounds=args.scan_profile_rounds, warmup=0)  # the timing rounds warmed up
        if args.scan_profile_ops:
            entry["top_ops"] = ps.top_ops(fn, rows=args.scan_profile_ops)
        towers[name] = entry
        print(f"[{args.mode}] scan profile {name}: scan share {entry['scan_share']:.3f} "
              f"({entry['scan_seconds_per_call']:.3f} s of {entry['seconds_per_call']:.3f} s)",
              file=sys.stderr, flush=True)
    return {"wrapped_functions": sorted(ps.scan_functions()), "towers": towers,
            "method_params": {"rounds": args.scan_profile_rounds, "prefixes": list(ps.SCAN_FUNCTION_PREFIXES),
                              "registered": list(ps.SCAN_FUNCTIONS)}}


def analyse(times: Dict[str, List[float]], batch: int,
            train: bool = False) -> Tuple[Dict[str, Dict], Dict[str, bool]]:
    """Per-case figures (median over rounds) and the target checks, from each case's seconds per round.
    Cases are tower names, the baseline included, and ``"vmamba-s@448"``. ``train``: the cases are
    training steps, checked against TRAIN_TARGETS."""
    targets = TRAIN_TARGETS if train else TARGETS
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch / med[k] for k in times}
    base = ips[BASELINE]
    results: Dict[str, Dict] = {}
    for k in times:
        entry = {"seconds_per_batch": med[k], "images_per_s": ips[k], "all_seconds": times[k]}
        if "@" not in k and k != BASELINE:
            entry["speedup_vs_" + BASELINE] = ips[k] / base
            if k in targets:
                entry["target_speedup"] = targets[k]
                entry["pass"] = ips[k] / base >= targets[k]
        results[k] = entry
    checks = {k: results[k]["pass"] for k in targets if k in results}
    if "vmamba-s@448" in med and "vmamba-s" in med:
        ratio = med["vmamba-s@448"] / med["vmamba-s"]
        results["vmamba-s@448"]["time_ratio_448_vs_224"] = ratio
        results["vmamba-s@448"]["target_max_ratio"] = MAX_448_RATIO
        results["vmamba-s@448"]["pass"] = ratio <= MAX_448_RATIO
        checks["vmamba-s@448/224"] = ratio <= MAX_448_RATIO
    return results, checks


def analyse_busy(times: Dict[str, Dict[str, List[float]]], cpu: Dict[str, Dict[str, List[float]]],
                 loads: Dict[str, List[float]], batch: int, n_busy: int, train: bool) -> Dict:
    """Quiet against busy (``times[phase][case]`` seconds per round): per tower the median seconds and CPU
    seconds in each phase, the ratio to the baseline in each, ``keeps`` = busy ratio / quiet ratio and
    ``slowdown`` = busy / quiet time; checks BUSY_KEEP_TARGETS (and, training, BUSY_MAX_SLOWDOWN_TRAIN)."""
    med = {ph: {k: statistics.median(v) for k, v in t.items()} for ph, t in times.items()}
    towers: Dict[str, Dict] = {}
    checks: Dict[str, bool] = {}
    for k in med["quiet"]:
        e = {f"{ph}_seconds": med[ph][k] for ph in ("quiet", "busy")}
        e.update({f"{ph}_cpu_seconds": statistics.median(cpu[ph][k]) for ph in ("quiet", "busy")})
        e["slowdown"] = med["busy"][k] / med["quiet"][k]
        if k != BASELINE:
            q = med["quiet"][BASELINE] / med["quiet"][k]
            b = med["busy"][BASELINE] / med["busy"][k]
            e.update({"quiet_speedup_vs_" + BASELINE: q, "busy_speedup_vs_" + BASELINE: b, "keeps": b / q})
            if k in BUSY_KEEP_TARGETS:
                e["target_keeps"] = BUSY_KEEP_TARGETS[k]
                checks[f"{k} busy keeps"] = b / q >= BUSY_KEEP_TARGETS[k]
        if train:
            e["target_max_slowdown"] = BUSY_MAX_SLOWDOWN_TRAIN
            checks[f"{k} busy slowdown"] = e["slowdown"] <= BUSY_MAX_SLOWDOWN_TRAIN
        towers[k] = e
    return {"busy_processes": n_busy, "cpu_count": os.cpu_count(), "batch": batch,
            "loadavg_1min_per_round": loads, "towers": towers, "checks": checks}


def summary(run: Dict, scan_profile: Optional[Dict] = None) -> Dict:
    res = run["results"]
    out = {k: round(v["images_per_s"], 2) for k, v in res.items()}
    out.update({f"{k} speedup": round(v["speedup_vs_" + BASELINE], 3) for k, v in res.items()
                if "speedup_vs_" + BASELINE in v})
    if "time_ratio_448_vs_224" in res.get("vmamba-s@448", {}):
        out["vmamba-s 448/224 time"] = round(res["vmamba-s@448"]["time_ratio_448_vs_224"], 3)
    for k, v in ((scan_profile or {}).get("towers") or {}).items():
        out[f"{k} scan share"] = round(v["scan_share"], 3)
    for k, v in (run.get("busy") or {}).get("towers", {}).items():
        out[f"{k} busy slowdown"] = round(v["slowdown"], 3)
        if "keeps" in v:
            out[f"{k} busy keeps"] = round(v["keeps"], 3)
    return out


def make_report(runs: Dict[str, Dict], check_mode: str, batch: int, rounds: int, command: str,
                train: bool = False, busy: int = 0) -> Dict:
    """The JSON report from each mode's child result. The check mode's ``scan_profile`` (if any) moves
    to the top level, with the method spelled out."""
    runs = {mode: dict(run) for mode, run in runs.items()}
    child_profile = runs[check_mode].pop("scan_profile", None)
    for run in runs.values():
        run.pop("scan_profile", None)
    primary = runs[check_mode]
    if child_profile:
        params = child_profile.get("method_params", {})
        scan_profile = {
            "mode": check_mode,
            "threads": primary["env"]["threads"],
            "batch": batch,
            "image_size": 224,
            "method": SCAN_PROFILE_METHOD.format(batch=batch, rounds=params.get("rounds", "?"),
                                                 prefixes="|".join(params.get("prefixes", []))),
            "wrapped_functions": child_profile.get("wrapped_functions", []),
            "towers": child_profile.get("towers", {}),
            "not_timed": child_profile.get("not_timed", []),
        }
    else:
        scan_profile = {"mode": check_mode, "skipped": True, "towers": {},
                        "method": "not measured (--no-scan-profile, or none of --scan-profile-towers was timed)"}
    return {
        "benchmark": (f"image-tower training step, CPU fp32, batch {batch}, 224 px" if train else
                      f"image-tower inference, CPU fp32, batch {batch}, 224 px (and 448 px for vmamba-s); "
                      "share of time in the selective scan")
                     + (f"; quiet against {busy} busy process(es), interleaved" if busy else ""),
        "command": command,
        "baseline": BASELINE,
        "targets": ({f"{k} speedup >=": v for k, v in TRAIN_TARGETS.items()} if train else
                    {**{f"{k} speedup >=": v for k, v in TARGETS.items()}, "vmamba-s 448/224 time <=": MAX_448_RATIO})
                   | ({**{f"{k} busy keeps >=": v for k, v in BUSY_KEEP_TARGETS.items()},
                       **({"busy / quiet step time <=": BUSY_MAX_SLOWDOWN_TRAIN} if train else {})} if busy else {}),
        "checks_from": check_mode,
        "checks": primary["checks"],
        "all_pass": bool(primary["checks"]) and all(primary["checks"].values()),
        "missing_towers": primary["missing_towers"],
        "summary": {mode: summary(run, scan_profile if mode == check_mode else None) for mode, run in runs.items()},
        "scan_profile": scan_profile,
        "modes": runs,
        "env": {
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "rounds": rounds,
        },
    }


def parse_mode(mode: str) -> Tuple[int, str]:
    """``"1:default"`` -> (1, "default"); ``"all:steady"`` -> (0, "steady"); 0 = torch's default."""
    threads, _, alloc = mode.partition(":")
    alloc = alloc or "default"
    if alloc not in ALLOCATOR_ENV or not (threads == "all" or threads.isdigit()):
        raise argparse.ArgumentTypeError(
            f"mode {mode!r}: expected THREADS:ALLOCATOR with THREADS a number or 'all' and ALLOCATOR one of "
            f"{list(ALLOCATOR_ENV)}")
    return (0 if threads == "all" else int(threads)), alloc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--towers", nargs="*", default=TOWERS)
    parser.add_argument("--modes", nargs="*", default=["1:default", "all:default"],
                        help="THREADS:ALLOCATOR, THREADS a number or 'all', ALLOCATOR default|steady")
    parser.add_argument("--check-mode", default="", help="mode whose figures the checks use (default: first)")
    parser.add_argument("--profile", default="", help="print a torch.profiler table for this tower")
    parser.add_argument("--no-scan-profile", action="store_true",
                        help="skip the scan-share profile (JSON scan_profile) after the timing rounds")
    parser.add_argument("--scan-profile-towers", nargs="*", default=SCAN_PROFILE_TOWERS,
                        help="towers whose scan share is measured (those also in --towers)")
    parser.add_argument("--scan-profile-rounds", type=int, default=3, help="forwards per tower for the scan share")
    parser.add_argument("--scan-profile-ops", type=int, default=10,
                        help="rows of the torch.profiler op table per tower (0: none)")
    parser.add_argument("--busy", type=int, default=0,
                        help="start N busy processes and time every round quiet and busy, interleaved")
    parser.add_argument("--train", action="store_true", help="time training steps instead of inference")
    parser.add_argument("--out", default="")
    parser.add_argument("--mode", default="1:default", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_out:  # one measurement, in the mode our parent set up
        Path(args.child_out).write_text(json.dumps(measure(args)))
        return 0

    for mode in args.modes:
        parse_mode(mode)
    check_mode = args.check_mode or args.modes[0]
    if check_mode not in args.modes:
        parser.error(f"--check-mode {check_mode!r} is not one of --modes {args.modes}")
    runs: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(args.modes):
            threads, alloc = parse_mode(mode)
            child_out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--child-out", str(child_out),
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--threads", str(threads), "--busy", str(args.busy), "--towers", *args.towers]
            if args.train:
                cmd += ["--train"]
            if args.profile:
                cmd += ["--profile", args.profile]
            skip = args.no_scan_profile or args.train or args.busy or mode != check_mode
            profiled = [] if skip else args.scan_profile_towers
            cmd += ["--scan-profile-rounds", str(args.scan_profile_rounds), "--scan-profile-ops",
                    str(args.scan_profile_ops), "--scan-profile-towers", *profiled]
            env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV["steady"]}
            env.update(ALLOCATOR_ENV[alloc])
            subprocess.run(cmd, check=True, env=env)
            runs[mode] = json.loads(child_out.read_text())
    report = make_report(runs, check_mode, args.batch, args.rounds,
                         "python benchmarks/bench_towers.py " + " ".join(sys.argv[1:]), train=args.train,
                         busy=args.busy)
    out = Path(args.out or RESULTS / ("bench_towers" + ("_train" if args.train else "")
                                      + (f"_busy{args.busy}" if args.busy else "") + ".json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps({k: report[k] for k in ("checks_from", "checks", "all_pass", "summary", "missing_towers")},
                     indent=2))
    if report["scan_profile"]["towers"]:
        print(f"scan share ({check_mode}, see scan_profile in {out}): "
              + ", ".join(f"{k} {v['scan_share']:.3f}" for k, v in report["scan_profile"]["towers"].items()))
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
