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
from pathlib import Path

from mamba_clip.cli_checks import positive_int

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
    p.add_argument("--seed", type=int, default=0, help="random seed of the manipulations")
    p.add_argument(
        "--mode",
        choices=("all", "split"),
        default="all",
        help="all: every image in every condition; split: one condition per image",
    )
    p.add_argument("--max-per-category", type=positive_int, default=None,
                   help="at most this many source images per category (default: all)")
    p.add_argument(
        "--manipulation-data",
        default=None,
        help="folder with mean_power_spectrum_grey.npy and x_gamma_function.npy "
        "(default: $MAMBA_CLIP_MANIPULATION_DATA, else the copy shipped with the package)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="one short plot label per --models entry (default: the model name and checkpoint stem)")
    p.add_argument("--out", required=True, help="output folder (trial CSVs, summary.json, figures)")
    p.add_argument(
        "--humans", default=None, help="raw-data folder with the human CSVs (model-vs-human layout)"
    )
    p.add_argument("--head", choices=("imagenet", "prompts16"), default="imagenet",
                   help="imagenet: 1000-class zero-shot head mapped to the 16 categories; prompts16: 16 prompts")
    p.add_argument(
        "--templates",
        default="openai",
        help="'openai' (80), 'simple', or a number n (first n openai templates)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    p.add_argument(
        "--max-images", type=positive_int, default=None,
        help="evenly spaced subset per dataset (quick runs; default: all images)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the 1000-class text heads are kept, one per model and checkpoint (pretrained tag or "
        "file; building one costs minutes on a CPU, an estimate is printed); default $MAMBA_CLIP_CACHE/ood, "
        "else ~/.cache/mamba_clip/ood",
    )
    p.add_argument("--no-resume", action="store_true", help="re-evaluate finished dataset/model CSVs")
    p.add_argument("--no-figures", action="store_true", help="skip figure1.png / figure2.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (text head and images)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("metrics", help="benchmark metrics from a raw-data folder -> JSON")
    p.add_argument(
        "--raw-data", required=True, help="raw-data folder (<dataset>/<dataset>_<subj>_session-1.csv)"
    )
    p.add_argument("--models", nargs="+", default=None, metavar="NAME", help="model subjects (default: all)")
    p.add_argument("--humans", default=None, help="take the human observers from this raw-data folder")
    p.add_argument("--datasets", nargs="+", default=list(BENCHMARK_DATASETS), metavar="NAME",
                   help="datasets to summarize")
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--figures", default=None, help="also write figure1.png / figure2.png into this folder")
    p.set_defaults(func=_metrics)
    return parser


def _make_datasets(args) -> int:
    from mamba_clip.cli_checks import UsageError, check_image_folder

    from .datasets import make_datasets
    from .protocol import get_spec

    for name in args.datasets:
        try:
            get_spec(name)
        except ValueError as exc:
            raise UsageError(f"--datasets: {exc}") from None
    check_image_folder(args.source, "--source", classes=True)

    counts = make_datasets(args.source, args.out, datasets=args.datasets, seed=args.seed, mode=args.mode,
                           max_per_category=args.max_per_category, manipulation_data=args.manipulation_data,
                           progress=not args.no_progress)  # fmt: skip
    for d, n in counts.items():
        print(f"{d}: {n} images")
    return 0


def _evaluate(args) -> int:
    from mamba_clip.cli_checks import (
        UsageError,
        check_device,
        check_folder,
        check_model,
        check_pretrained,
        check_templates,
        first_bad_image,
    )
    from mamba_clip.distributed import Dist

    from .classifier import default_cache_dir, parse_model_spec
    from .datasets import list_samples, resolve_dataset
    from .evaluate import run_evaluation, subsample

    templates = check_templates(args.templates)
    for spec in args.models:
        try:
            name, pretrained = parse_model_spec(spec)
        except ValueError as exc:
            raise UsageError(f"--models: {exc}") from None
        check_model(name, "--models")
        check_pretrained(name, pretrained, f"--models {spec}: pretrained")
    if args.data_root is not None:
        check_folder(args.data_root, "--data-root")
    if args.humans is not None:
        check_folder(args.humans, "--humans")
    datasets = []
    for d in args.datasets:
        try:
            name, folder = resolve_dataset(d, args.data_root)
            samples = subsample(list_samples(folder), args.max_images)
        except ValueError as exc:
            raise UsageError(f"--datasets {d}: {exc}") from None
        bad = first_bad_image(s.path for s in samples)
        if bad is not None:
            raise UsageError(f"--datasets {d}: image {bad[0]} cannot be decoded ({bad[1]})")
        datasets.append((name, folder))
    check_device(args.device)
    dist = Dist.start(args.out)  # several processes (torchrun / SLURM): the pairs are split over them
    try:
        summary = run_evaluation(
            args.models, datasets, args.out, humans=args.humans, head=args.head,
            templates=templates,
            batch_size=args.batch_size, max_images=args.max_images, device=dist.device(args.device),
            cache_dir=args.cache_dir or default_cache_dir(), resume=not args.no_resume,
            progress=not args.no_progress, figures=not args.no_figures, labels=args.labels, dist=dist,
        )  # fmt: skip
    finally:
        dist.close()
    if summary is None:  # another rank writes the summary (or a rerun, after a SLURM array)
        return 0
    _print_table(summary)
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def _metrics(args) -> int:
    from mamba_clip.cli_checks import UsageError, check_folder
    from mamba_clip.fileio import atomic_write_text

    from .metrics import summarize
    from .rawdata import read_raw_data

    check_folder(args.raw_data, "--raw-data")
    if args.humans is not None:
        check_folder(args.humans, "--humans")
    try:  # a damaged CSV names its file and line
        raw = read_raw_data(args.raw_data, datasets=args.datasets)
        humans = read_raw_data(args.humans, datasets=args.datasets) if args.humans else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not raw:
        raise UsageError(f"--raw-data {args.raw_data!r}: no raw-data CSVs found (expected "
                         f"RAW/<dataset>/*.csv for a dataset of: {', '.join(args.datasets)})")
    try:
        summary = summarize(raw, models=args.models, humans=humans, datasets=args.datasets)
    except ValueError as exc:  # e.g. a --models name without trials in --raw-data
        raise UsageError(str(exc)) from None
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
