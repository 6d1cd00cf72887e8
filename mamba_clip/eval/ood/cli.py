"""mamba-clip ood: model-vs-human OOD evaluation of CLIP models.

Sub-commands::

    mamba-clip ood make-datasets --source IMAGEFOLDER --out DIR [--datasets ...] [--seed 0] [--mode all|split]
    mamba-clip ood evaluate --models NAME[:PRETRAINED] ... --datasets NAME[=PATH] ... --out DIR [--humans DIR]
    mamba-clip ood metrics --raw-data DIR [--models NAME ...] [--humans DIR] --out FILE.json [--figures DIR]

Heavy imports (torch, open_clip, matplotlib) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .protocol import BENCHMARK_DATASETS, PARAMETRIC_DATASETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ood",
        help="OOD robustness and shape bias (model-vs-human protocol)",
        description=__doc__.split("\n")[0],
    )
    sub = parser.add_subparsers(dest="ood_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser(
        "make-datasets", help="write the 12 parametric datasets from a 16-category image folder"
    )
    p.add_argument(
        "--source", required=True, help="folder with one sub-folder per category (airplane, bear, ...)"
    )
    p.add_argument("--out", required=True, help="output folder (model-vs-human datasets layout)")
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(PARAMETRIC_DATASETS),
        metavar="NAME",
        help="parametric datasets to write (default: all 12)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mode",
        choices=("all", "split"),
        default="all",
        help="all: every image in every condition; split: one condition per image",
    )
    p.add_argument("--max-per-category", type=int, default=None)
    p.add_argument(
        "--manipulation-data",
        default=None,
        help="folder with mean_power_spectrum_grey.npy and x_gamma_function.npy "
        "(default: $MAMBA_CLIP_MANIPULATION_DATA or ../shared/data/manipulation)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_make_datasets)

    p = sub.add_parser("evaluate", help="evaluate CLIP models; write trial CSVs, summary.json, figures")
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="NAME[:PRETRAINED]",
        help="open_clip model names, optionally with a pretrained tag or checkpoint path",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(BENCHMARK_DATASETS),
        metavar="NAME[=PATH]",
        help="datasets, found under --data-root or given as NAME=PATH",
    )
    p.add_argument("--data-root", default=None, help="folder holding the dataset folders")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--humans", default=None, help="raw-data folder with the human CSVs (model-vs-human layout)"
    )
    p.add_argument("--head", choices=("imagenet", "prompts16"), default="imagenet")
    p.add_argument(
        "--templates",
        default="openai",
        help="'openai' (80), 'simple', or a number n (first n openai templates)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--max-images", type=int, default=None, help="evenly spaced subset per dataset (quick runs)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "mamba_clip" / "ood"),
        help="text-head cache (pretrained weights only)",
    )
    p.add_argument("--no-resume", action="store_true", help="re-evaluate finished dataset/model CSVs")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("metrics", help="benchmark metrics from a raw-data folder -> JSON")
    p.add_argument(
        "--raw-data", required=True, help="raw-data folder (<dataset>/<dataset>_<subj>_session-1.csv)"
    )
    p.add_argument("--models", nargs="+", default=None, metavar="NAME", help="model subjects (default: all)")
    p.add_argument("--humans", default=None, help="take the human observers from this raw-data folder")
    p.add_argument("--datasets", nargs="+", default=list(BENCHMARK_DATASETS), metavar="NAME")
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--figures", default=None, help="also write figure1.png / figure2.png into this folder")
    p.set_defaults(func=_metrics)
    return parser


def _templates(value: str):
    return int(value) if value.isdigit() else value


def _make_datasets(args) -> int:
    from .datasets import make_datasets

    counts = make_datasets(args.source, args.out, datasets=args.datasets, seed=args.seed, mode=args.mode,
                           max_per_category=args.max_per_category, manipulation_data=args.manipulation_data,
                           progress=not args.no_progress)  # fmt: skip
    for d, n in counts.items():
        print(f"{d}: {n} images")
    return 0


def _evaluate(args) -> int:
    from mamba_clip.distributed import Dist

    from .datasets import resolve_dataset
    from .evaluate import run_evaluation

    datasets = [resolve_dataset(d, args.data_root) for d in args.datasets]
    dist = Dist.start(args.out)  # several processes (torchrun / SLURM): the pairs are split over them
    try:
        summary = run_evaluation(
            args.models, datasets, args.out, humans=args.humans, head=args.head,
            templates=_templates(args.templates),
            batch_size=args.batch_size, max_images=args.max_images, device=dist.device(args.device),
            cache_dir=args.cache_dir, resume=not args.no_resume, progress=not args.no_progress,
            figures=not args.no_figures, dist=dist,
        )  # fmt: skip
    finally:
        dist.close()
    if summary is None:  # another rank writes the summary (or a rerun, after a SLURM array)
        return 0
    _print_table(summary)
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def _metrics(args) -> int:
    from .metrics import summarize
    from .rawdata import atomic_write_text, read_raw_data

    raw = read_raw_data(args.raw_data, datasets=args.datasets)
    if not raw:
        print(f"error: no raw-data CSVs of {args.datasets} found under {args.raw_data}", file=sys.stderr)
        return 2
    humans = read_raw_data(args.humans, datasets=args.datasets) if args.humans else None
    summary = summarize(raw, models=args.models, humans=humans, datasets=args.datasets)
    atomic_write_text(Path(args.out), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if args.figures:
        from .plots import figure1, figure2

        figure1(summary, Path(args.figures) / "figure1.png")
        figure2(summary, Path(args.figures) / "figure2.png")
    _print_table(summary)
    print(f"wrote {args.out}")
    return 0


def _print_table(summary) -> None:
    keys = ("ood_accuracy", "accuracy_difference", "observed_consistency", "error_consistency", "shape_bias")
    print(f"{'model':32s} " + " ".join(f"{k[:14]:>14s}" for k in keys))
    for m, v in summary.items():
        cells = [("-" if v.get(k) is None else f"{v[k]:.3f}") for k in keys]
        print(f"{m:32s} " + " ".join(f"{c:>14s}" for c in cells))
