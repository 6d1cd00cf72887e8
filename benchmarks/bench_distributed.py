"""Wall time of 1 process against N processes under torchrun (issue 19): the zero-shot suite and the
Hessian spectrum, on nano models, each process with one thread (``OMP_NUM_THREADS=1``, gloo on CPU).

Both commands run exactly as a user runs them (``python -m mamba_clip ...`` vs ``python -m
torch.distributed.run --standalone --nproc_per_node N -m mamba_clip ...``), into fresh output folders, so
the times include start-up (imports, model build) of every process: the fixed cost that the split cannot
shrink. The results of the two runs are compared (same JSON numbers / same eigenvalues) and recorded.

* zeroshot: vmamba-nano (random weights saved as a checkpoint, ``--image-size``), ``--sets`` wds sets of
  ``--per-class`` images per class from ``../shared/data/stimuli`` (cue-conflict, edges, silhouettes in
  turn; 16 classes), cut into parts of ``--shard-images``;
* hessian: vmamba-nano on the edge stimuli (ImageFolder, zero-shot loss), ``--n-samples`` / ``--batch-size``
  batches, power iteration with ``--max-iter`` products.

Writes ``benchmarks/results/bench_distributed.json`` (atomically; ``--out`` elsewhere) with the wall times,
the speed-ups and ``os.getloadavg()`` before and after (on a shared machine the figures are noisy).

    python benchmarks/bench_distributed.py [--nproc 2] [--sets 6] [--per-class 10] [--n-samples 24] [--max-iter 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MAMBA_CLIP_SHARED", REPO.parent / "shared"))


def _launch(args, nproc: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "mamba_clip"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "mamba_clip"]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd + [str(a) for a in args])}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return dt


def _zeroshot_numbers(out: Path) -> dict:
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
            for p in sorted(out.glob("vmamba-nano/*.json"))}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--per-class", type=int, default=10, help="zero-shot: images per class and set")
    p.add_argument("--sets", type=int, default=6, help="zero-shot: number of wds sets")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--shard-images", type=int, default=128)
    p.add_argument("--n-samples", type=int, default=24, help="hessian: images (batches of --batch-size)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--out", default=str(RESULTS / "bench_distributed.json"))
    a = p.parse_args(argv)
    import open_clip
    import torch

    import mamba_clip  # noqa: F401
    from mamba_clip.eval.zeroshot.wds import make_wds
    from mamba_clip.fileio import atomic_write_json

    load_before = os.getloadavg()
    report = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__, "nproc": a.nproc,
              "threads_per_process": 1, "args": vars(a), "loadavg_before": load_before}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms("vmamba-nano", force_image_size=a.image_size)
        ckpt = tmp / "nano.pt"
        torch.save({"state_dict": model.state_dict(), "epoch": 1}, ckpt)
        stimuli = SHARED / "data" / "stimuli"
        sources = ["cue-conflict", "edges", "filled-silhouettes"]  # set i: the first --per-class of each class
        names = []
        for i in range(a.sets):
            src = tmp / "src" / f"set{i}"
            base = stimuli / sources[i % len(sources)]
            for c in sorted(q.name for q in base.iterdir() if q.is_dir()):
                (src / c).mkdir(parents=True)
                for f in sorted((base / c).iterdir())[: a.per_class]:
                    shutil.copy(f, src / c / f.name)
            make_wds(src, tmp / "data" / f"set{i}", shard_size=200)
            names.append(f"wds/set{i}")
        zs = ["zeroshot", "--model", "vmamba-nano", "--pretrained", ckpt, "--image-size", a.image_size,
              "--dataset-root", tmp / "data", "--datasets", *names, "--batch-size", "16", "--workers", "0",
              "--shard-images", a.shard_images, "--no-progress", "--no-tables"]  # fmt: skip
        hs = ["hessian", "--model", "vmamba-nano", "--pretrained", ckpt, "--image-size", "32", "--data",
              stimuli / "edges", "--n-samples", a.n_samples, "--batch-size", a.batch_size, "--k", "2",
              "--max-iter", a.max_iter, "--tol", "1e-12", "--no-progress"]  # fmt: skip
        for name, args, numbers in (("zeroshot", zs, lambda o: _zeroshot_numbers(o)),
                                    ("hessian", hs, lambda o: [b["eigenvalues"] for b in json.loads(
                                        (o / "eigenvalues.json").read_text())["batches"]])):  # fmt: skip
            flag = "--output" if name == "zeroshot" else "--out"
            t1 = _launch(args + [flag, tmp / f"{name}-1"], 1)
            tn = _launch(args + [flag, tmp / f"{name}-{a.nproc}"], a.nproc)
            same = numbers(tmp / f"{name}-1") == numbers(tmp / f"{name}-{a.nproc}")
            report[name] = {"seconds_1": round(t1, 2), f"seconds_{a.nproc}": round(tn, 2),
                            "speedup": round(t1 / tn, 3), "identical_results": same}  # fmt: skip
            print(f"{name:9s} 1 process {t1:7.1f} s   {a.nproc} processes {tn:7.1f} s   speed-up {t1 / tn:.2f}x"
                  f"   identical: {same}", flush=True)
    report["loadavg_after"] = os.getloadavg()
    atomic_write_json(a.out, report)
    print(f"load average before {load_before[0]:.2f}, after {report['loadavg_after'][0]:.2f}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
