"""The end-to-end demo (``mamba-clip demo``, run by ``make demo``): the CLIP-Mamba report's study in
miniature on real data, on a laptop CPU, with nothing downloaded.

Steps (``--steps-only`` picks some; each writes ``OUT/<step>.json`` and is skipped when that exists):

1. ``scan``      every selective-scan backend against the sequential reference;
2. ``towers``    the six released towers built and checked key by key against the release key lists;
3. ``data``      scikit-learn's handwritten digits: captioned training CSV, held-out set (``make-wds``);
4. ``train``     ``vmamba-nano``, ``simba-nano`` and ``vit-nano`` (about 1.1M image-tower parameters
   each) trained by the stock ``open_clip_train.main`` with the same budget, schedule and seed;
5. ``zeroshot``  held-out digits through ``mamba-clip zeroshot`` (prompts the captions never used);
6. ``ood``       accuracy against condition under the model-vs-human manipulations (Figure 2 style);
7. ``hessian``   top-k Hessian eigenvalues of the zero-shot loss per batch (Figure 3 style).

``OUT/report.md`` (with ``report.json`` and the CSVs behind its tables) says what was run and what the
numbers show. ``--quick`` runs every step on a sliver of the data (about 3 minutes on two cores; a smoke test).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from mamba_clip.fileio import atomic_write_json as write_json

from .study import DEFAULTS, MODELS, STEPS, settings

__all__ = ["run_demo", "add_parser", "STEPS", "MODELS"]


def run_demo(out, steps: Optional[Sequence[str]] = None, force: bool = False, **options) -> Dict:
    """Run the demo steps (all by default) into ``out``; returns the report dict.

    ``options`` override :data:`~mamba_clip.demo.study.DEFAULTS` (``quick=True`` first applies the
    quick settings). Finished steps are read back unless ``force``; settings that change results
    (seed, epochs, models, quick...) must match the folder's earlier run, else a ``ValueError`` says
    which differ.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = settings(**options)
    args.out = str(out)
    steps = list(steps or STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown demo step(s) {unknown}; accepted: {list(STEPS)}")
    recorded = {k: v for k, v in vars(args).items() if k not in ("progress", "shared", "out", "threads", "workers")}
    settings_path = out / "settings.json"
    if settings_path.is_file() and not force:
        old = json.loads(settings_path.read_text())
        diff = sorted(k for k in recorded if k in old and old[k] != recorded[k])
        if diff:
            raise ValueError(f"{out} holds a demo run with other settings ({', '.join(diff)}); use another --out "
                             "or --force to start over")
    write_json(settings_path, recorded)
    report: Dict = {"settings": recorded}
    env_path = out / "environment.json"  # where the steps ran: kept when every step is read back
    report["environment"] = json.loads(env_path.read_text()) if env_path.is_file() and not force else None
    ran = False
    t_start = time.perf_counter()
    for i, name in enumerate(steps, 1):
        path = out / f"{name}.json"
        if path.is_file() and not force:
            print(f"[{i}/{len(steps)} {name}] done before, reading {path}")
            report[name] = json.loads(path.read_text())
            continue
        if not ran:  # the first step run here: this machine is where the new numbers come from
            report["environment"] = environment()
            write_json(env_path, report["environment"])
            ran = True
        print(f"[{i}/{len(steps)} {name}]", flush=True)
        t0 = time.perf_counter()
        report[name] = STEPS[name](out, args)
        report[name]["step_seconds"] = time.perf_counter() - t0
        write_json(path, report[name])
    for name in STEPS:  # steps of earlier runs into the same folder belong in the report too
        if name not in report and (out / f"{name}.json").is_file():
            report[name] = json.loads((out / f"{name}.json").read_text())
    report["wall_seconds"] = time.perf_counter() - t_start
    from .report import write_report

    md = write_report(out, report)
    print(f"report: {md}")
    return report


def environment() -> Dict:
    """Where the run happened: the same seed gives the same numbers on one machine, but another CPU (or
    torch build) dispatches other float kernels, and the trained models, hence the accuracies, move a
    little. Also the load at the start, beside the step timings."""
    import torch

    from mamba_clip.doctor import cpu_model
    from mamba_clip.version import __version__

    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "mamba_clip": __version__,
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo (CPU, offline)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--steps-only", nargs="+", metavar="STEP", dest="only", choices=list(STEPS),
                   help=f"run only these steps ({', '.join(STEPS)})")
    p.add_argument("--force", action="store_true", help="redo steps already finished in --out")
    p.add_argument("--quick", action="store_true", help="every step on a sliver of the data (about 3 minutes)")
    p.add_argument("--seed", type=int, default=None, help=f"data split, training and Hessian seed "
                   f"(default {DEFAULTS['seed']})")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS), metavar="MODEL",
                   help=f"models to train and compare (default: {' '.join(MODELS)})")
    p.add_argument("--ood-datasets", nargs="+", default=None, metavar="NAME",
                   help="model-vs-human manipulations for the OOD step (default: contrast high-pass low-pass "
                   "uniform-noise phase-scrambling rotation; eidolonI/II/III also work, slowly)")
    p.add_argument("--shared", default=None, help="the shared data folder with the release key lists")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    p.set_defaults(func=_main)


def _main(args) -> int:
    run_demo(args.out, steps=args.only, force=args.force, quick=args.quick or None, seed=args.seed,
             epochs=args.epochs, models=args.models, shared=args.shared, progress=args.progress,
             ood_datasets=args.ood_datasets)
    return 0
