"""Peak memory of converting a full-size release checkpoint (issue 5, "Memory").

Writes a synthetic VMamba-B release checkpoint with exactly the shared key list's shapes
(``shared/reference/checkpoint-keys/CLIP_VMamba_B.tsv``: online + EMA towers) plus AdamW state for the
online parameters, GradScaler state and an ``args`` Namespace, i.e. the structure and size (~2.4 GB) of
``VMamba_B_clip.pt``. Then, each in a fresh process, measures peak RSS (``ru_maxrss``) of

* ``convert``: ``checkpoints.convert_file`` (EMA towers, checked against ``vmamba-b``; memory-mapped
  read, safetensors write),
* ``baseline``: a plain ``torch.load(weights_only=True)`` of the same file (what open_clip's loader would
  do), for comparison,

each also as the increase over the process's RSS after its imports (torch + open_clip alone take
~0.75 GB). Peak = ``VmHWM`` of the child. Target: convert peak <= 2 x file size.
Writes ``benchmarks/results/bench_convert_memory.json`` atomically and prints it.

    python benchmarks/bench_convert_memory.py [--model vmamba-b] [--legacy] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MAMBA_CLIP_SHARED", REPO.parent / "shared"))
ORIGINAL = {"vmamba-t220": "CLIP_VMamba_T220", "vmamba-s": "CLIP_VMamba_S", "vmamba-b": "CLIP_VMamba_B",
            "simba-s": "CLIP_Simba_S", "simba-b": "CLIP_Simba_B", "simba-l": "CLIP_Simba_L"}

CHILD = r"""
import json, os, sys, time
import torch, open_clip  # noqa: F401  (imports outside the measured part)
from mamba_clip.openclip_ext import checkpoints as ck
mode, src, dst, model = sys.argv[1:5]
ck.model_state_shapes(model)  # building the meta model is not part of the file's cost
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
before = rss()["VmRSS"]
t0 = time.perf_counter()
if mode == "convert":
    ck.convert_file(src, dst, towers="ema", model_name=model)
else:
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(src, map_location="cpu", weights_only=True)
    del obj
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork/exec from the (large) parent
print(json.dumps({"rss_before": before, "peak_rss": rss()["VmHWM"], "seconds": seconds}))
"""


def write_checkpoint(path: Path, model: str, legacy: bool) -> int:
    """Full-size synthetic release file; returns its size in bytes."""
    import argparse as ap

    import torch

    sys.path.insert(0, str(REPO))
    from mamba_clip.openclip_ext.checkpoints import iter_original_keys

    tsv = SHARED / "reference" / "checkpoint-keys" / f"{ORIGINAL[model]}.tsv"
    with open(tsv) as f:
        rows = list(iter_original_keys(f))
    sd = {}
    for i, (k, shape, dtype) in enumerate(rows):
        sd[k] = torch.full(shape, float(i % 97) / 97, dtype=getattr(torch, dtype))
    online = [k for k, _, dt in rows if "_e." not in k and not k.endswith("_e") and dt == "float32"]
    optimizer = {
        "state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(sd[k]),
                      "exp_avg_sq": torch.zeros_like(sd[k])} for i, k in enumerate(online)},
        "param_groups": [{"params": list(range(len(online))), "lr": 1e-5, "betas": (0.9, 0.98), "eps": 1e-8,
                          "weight_decay": 0.1, "amsgrad": False}],
    }
    ckpt = {"epoch": 25, "state_dict": sd, "optimizer": optimizer,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0},
            "best_acc": 38.3, "args": ap.Namespace(model=ORIGINAL[model], betas=(0.9, 0.98), lr=3e-3)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path.stat().st_size


def measure(mode: str, src: Path, dst: Path, model: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(dst), model],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vmamba-b", choices=sorted(ORIGINAL))
    p.add_argument("--legacy", action="store_true", help="write the file in the pre-1.6 (non-zip) format")
    p.add_argument("--keep", default=None, help="folder for the synthetic files (default: temp dir, removed)")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=args.keep) if args.keep is None else None
    folder = Path(args.keep or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / f"{ORIGINAL[args.model]}_synthetic.pt", folder / f"{args.model}.safetensors"
    t0 = time.perf_counter()
    size = write_checkpoint(src, args.model, args.legacy)
    write_s = time.perf_counter() - t0
    runs = {mode: measure(mode, src, dst, args.model) for mode in ("convert", "baseline")}
    for r in runs.values():
        r["delta_rss"] = r["peak_rss"] - r["rss_before"]
        r["peak_over_file"] = round(r["peak_rss"] / size, 3)
        r["delta_over_file"] = round(r["delta_rss"] / size, 3)
    result = {
        "benchmark": "bench_convert_memory",
        "model": args.model,
        "format": "legacy" if args.legacy else "zip",
        "file_bytes": size,
        "converted_bytes": dst.stat().st_size,
        "write_seconds": round(write_s, 1),
        "convert": runs["convert"],
        "baseline_torch_load": runs["baseline"],
        "target": "convert peak_rss <= 2 x file_bytes",
        "pass": runs["convert"]["peak_rss"] <= 2 * size,
        "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    if tmp is not None:
        tmp.cleanup()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_convert_memory" + ("_legacy" if args.legacy else "")
    tmp_json = RESULTS / f"{name}.json.tmp"
    tmp_json.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_json, RESULTS / f"{name}.json")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
