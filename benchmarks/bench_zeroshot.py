"""Zero-shot suite throughput against the bare image encoder on CPU (issue 10, "Speed").

For each model (random weights; speed does not depend on them), in one process, interleaved rounds of

* ``bare``: ``model.encode_image`` over the dataset's images already preprocessed into one tensor
  (same preprocessing, same batch size, ``torch.inference_mode``), nothing else;
* ``suite``: the suite's whole per-dataset step (``mamba_clip.eval.zeroshot.suite._evaluate_one``):
  building the dataset from its ``wds/`` shards, the class embeddings from the templates (recomputed every
  round), the DataLoader (decode + preprocess in ``--workers`` worker processes), ``encode_image``,
  logits, the metrics, and the atomic JSON write.

images/s = images / wall seconds, median over rounds; ``ratio`` = median over rounds of suite / bare within
the round (robust to the load of a shared machine drifting between rounds), ``ratio_of_medians`` also
given. Target: ratio >= 0.85 (data loading, templates and metrics are not the bottleneck). Modes: torch
threads ``all`` (torch's default) and ``1`` (no OpenMP barriers; the worker then decodes on a spare
core), as benchmarks/bench_towers.py. The dataset: ``--per-class`` cue-conflict images per class of
``../shared/data/stimuli`` (16 classes, one template) converted with ``make_wds`` (synthetic images when
``../shared`` is absent).

Writes ``benchmarks/results/bench_zeroshot.json`` (atomically; ``--out`` elsewhere) and prints a summary.

    python benchmarks/bench_zeroshot.py [--models vmamba-nano vmamba-t220] [--rounds 5] [--batch-size 32]
                                        [--workers 1] [--modes all 1] [--per-class 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MAMBA_CLIP_SHARED", REPO.parent / "shared"))
TARGET = 0.85


def make_dataset(tmp: Path, per_class: int, repeat: int = 1) -> Path:
    import shutil

    from mamba_clip.eval.zeroshot.wds import make_wds

    stimuli = SHARED / "data" / "stimuli" / "cue-conflict"
    src = tmp / "src"
    if stimuli.is_dir():
        for c in sorted(p.name for p in stimuli.iterdir() if p.is_dir()):
            (src / c).mkdir(parents=True)
            for f in sorted((stimuli / c).iterdir())[:per_class]:
                for r in range(repeat):  # copies: a longer run, so per-dataset set-up is amortised as in real sets
                    shutil.copy(f, src / c / f"{f.stem}-{r}{f.suffix}")
    else:  # synthetic stand-in: 16 classes of noise PNGs, 224 px
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for c in range(16):
            (src / f"class{c:02d}").mkdir(parents=True)
            for i in range(per_class * repeat):
                pixels = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(src / f"class{c:02d}" / f"{i}.png")
    root = tmp / "data"
    make_wds(src, root / "cue")
    return root


def bench_model(name: str, root: Path, out_dir: Path, rounds: int, batch_size: int, workers: int) -> dict:
    import open_clip
    import torch.nn.functional as F

    import mamba_clip  # noqa: F401
    from mamba_clip.eval.zeroshot.catalog import resolve
    from mamba_clip.eval.zeroshot.suite import _evaluate_one
    from mamba_clip.eval.zeroshot.wds import WdsDataset

    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    ds = WdsDataset(root / "cue", transform=preprocess)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    n = len(images)
    spec = resolve("wds/cue")

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                F.normalize(model.encode_image(images[i : i + batch_size]), dim=-1)
        return time.perf_counter() - t

    def suite() -> float:
        t = time.perf_counter()
        r = _evaluate_one(spec, "single", model, preprocess, tokenizer, {}, root, out_dir / f"{name}.json",
                          model=name, pretrained=None, templates="reference", batch_size=batch_size,
                          workers=workers, device="cpu", amp=False, progress=False, split="test")  # fmt: skip
        assert r["n_images"] == n
        return time.perf_counter() - t

    bare(), suite()  # warm-up (kernels, allocator, worker start-up paths)
    times = {"bare": [], "suite": []}
    for r in range(rounds):
        order = (("bare", bare), ("suite", suite)) if r % 2 == 0 else (("suite", suite), ("bare", bare))
        for key, fn in order:
            times[key].append(fn())
    ips = {k: n / statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(b / s for b, s in zip(times["bare"], times["suite"]))
    return {
        "images": n,
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "ratio": round(ratio, 3),
        "ratio_of_medians": round(ips["suite"] / ips["bare"], 3),
        "target": TARGET,
        "ok": ratio >= TARGET,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vmamba-nano", "vmamba-t220"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["all", "1"], help="torch threads per mode: 'all' or a number")
    p.add_argument("--per-class", type=int, default=4, help="images per class (16 classes)")
    p.add_argument("--repeat", type=int, default=1,
                   help="copies of each image (a longer dataset amortises the per-dataset set-up: worker start, "
                   "shard listing, class embeddings)")
    p.add_argument("--out", default=str(RESULTS / "bench_zeroshot.json"))
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    report = {
        "benchmark": "zero-shot suite loop vs bare encode_image, images/s (CPU, fp32)",
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_default_threads": default_threads, "torch": torch.__version__},
        "settings": {"rounds": args.rounds, "batch_size": args.batch_size, "workers": args.workers,
                     "per_class": args.per_class, "repeat": args.repeat},
        "modes": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_zeroshot_", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = make_dataset(Path(tmp), args.per_class, args.repeat)
        try:
            for mode in args.modes:
                threads = default_threads if mode == "all" else int(mode)
                torch.set_num_threads(threads)
                res = report["modes"][f"threads={mode}"] = {"torch_threads": threads, "models": {}}
                for name in args.models:
                    r = bench_model(name, root, Path(tmp) / "out", args.rounds, args.batch_size, args.workers)
                    res["models"][name] = r
                    print(f"threads={mode:3s} {name:12s} bare {r['images_per_s']['bare']:7.1f} img/s  suite "
                          f"{r['images_per_s']['suite']:7.1f} img/s  ratio {r['ratio']:.3f} "
                          f"({'ok' if r['ok'] else 'below'} target {TARGET})", flush=True)  # fmt: skip
        finally:
            torch.set_num_threads(default_threads)
    report["all_ok"] = all(r["ok"] for m in report["modes"].values() for r in m["models"].values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
