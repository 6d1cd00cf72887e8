"""mamba-clip zeroshot: the CLIP-Mamba report's zero-shot suite (Table 1) over clip_benchmark.

    mamba-clip zeroshot --model vmamba-s [--pretrained yfcc15m] --dataset-root DIR --output OUT
                        [--datasets NAME ...] [--templates reference|clip_benchmark] [--towers report|ema|online]
                        [--batch-size 64] [--workers 4] [--device cpu|cuda] [--amp/--no-amp]
                        [--shard-images 5000]

Several processes (``torchrun --nproc_per_node N mamba-clip zeroshot ...``, SLURM ``srun``): the datasets,
and the parts of large ones, are split over them; rank 0 writes the summary and tables at the end
(docs/distributed.md).

Exit status: 0 when every dataset was evaluated, resumed or is missing (missing ones are listed with
the path expected and how to get them); 1 when some dataset failed (e.g. a corrupt image); 2 for bad
arguments, before anything is loaded: an unknown dataset name (listing the valid names), or a dataset
root holding none of the requested datasets (listing how to get each).
Heavy imports (torch, open_clip) happen inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from mamba_clip.cli_checks import nonnegative_int, positive_int

from .catalog import TABLE1_NAMES, UnknownDatasetError, resolve_all


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification suite (report Table 1) over clip_benchmark",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Table 1 datasets: " + " ".join(TABLE1_NAMES) + ". Also any clip_benchmark classification "
        "dataset name, and wds/NAME (clip_benchmark's wds layout in DATASET_ROOT/NAME, see make-wds).",
    )
    p.add_argument("--model", required=True, help="open_clip model name (vmamba-s, simba-l, vit-nano, ...)")
    p.add_argument("--pretrained", default=None,
                   help="pretrained tag (yfcc15m, yfcc15m-online) or checkpoint path; default: random weights")
    p.add_argument("--dataset-root", required=True, help="folder holding one folder per dataset (DIR/<name>)")
    p.add_argument("--output", required=True, help="output folder (OUT/<model>/<dataset>.json, table1.*)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="default: all 26 of Table 1")
    p.add_argument("--templates", choices=("reference", "clip_benchmark"), default="reference",
                   help="reference: the report's templates and class names; clip_benchmark: its own")
    p.add_argument("--towers", choices=("report", "ema", "online"), default="report",
                   help="report: EMA towers, online towers for ImageNet (as the report); or force one")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast (default: on for CUDA, off on CPU)")
    p.add_argument("--split", default="test", help="dataset split to evaluate")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="build the model at this resolution (for checkpoints trained at another size)")
    p.add_argument("--no-tables", action="store_true", help="skip table1.csv / .md / .png")
    p.add_argument("--shard-images", type=nonnegative_int, default=5000, metavar="N",
                   help="evaluate a dataset of more than N images in parts of about N (batch-aligned; split "
                        "over the processes of a torchrun / SLURM run; resumable); 0: never")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)  # fmt: skip
    return p


def _run(args) -> int:
    from mamba_clip.cli_checks import (
        UsageError,
        check_device,
        check_folder,
        check_image_size,
        check_model,
        check_pretrained,
    )

    try:
        specs = resolve_all(args.datasets)
    except UnknownDatasetError as exc:
        raise UsageError(f"--datasets: {exc}") from None
    check_model(args.model)
    check_image_size(args.model, args.image_size)
    args.pretrained = check_pretrained(args.model, args.pretrained, image_size=args.image_size)
    root = check_folder(args.dataset_root, "--dataset-root", non_empty=False)
    _check_some_present(specs, root)
    check_device(args.device)
    from mamba_clip.distributed import Dist

    from .suite import run_suite

    amp = args.amp if args.amp is not None else args.device.startswith("cuda")
    dist = Dist.start(args.output)  # several processes (torchrun / SLURM): the work items are split
    try:
        results = run_suite(args.model, args.pretrained, args.dataset_root, args.output, datasets=args.datasets,
                            templates=args.templates, towers=args.towers, batch_size=args.batch_size,
                            workers=args.workers, device=dist.device(args.device), amp=amp,
                            progress=not args.no_progress, tables=not args.no_tables, split=args.split,
                            image_size=args.image_size, shard_images=args.shard_images, dist=dist)  # fmt: skip
    except ValueError as exc:  # e.g. towers that the weights cannot provide
        raise UsageError(str(exc)) from None
    finally:
        dist.close()
    if not dist.is_main:  # rank 0 prints the whole table; the others only what failed here
        for name, r in results.items():
            if r["status"] == "failed":
                print(f"rank {dist.rank}: {name} failed: {r.get('error')}", file=sys.stderr)
        return 1 if any(r["status"] == "failed" for r in results.values()) else 0
    print_summary(results)
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


def _check_some_present(specs, root) -> None:
    """At least one requested dataset is under ``root``; else list how to get each, then a usage error
    (before any model is loaded). Some missing: they are listed after the run (exit 0)."""
    from mamba_clip.cli_checks import UsageError

    from .datasets import how_to_get
    from .suite import _present

    if any(_present(spec, root) for spec in specs):
        return
    print("missing datasets:")
    for spec in specs:
        path = root / spec.dirname
        print(f"  {spec.name}: expected at {path}\n    {how_to_get(spec, path)}")
    n = len(specs)
    raise UsageError(f"--dataset-root {str(root)!r} holds none of the {n} requested dataset{'s' * (n > 1)} "
                     "(listed above with how to get each)")


def print_summary(results) -> None:
    n = {s: sum(r["status"] == s for r in results.values()) for s in ("ok", "missing", "failed")}
    print(f"{'dataset':16s} {'status':8s} {'metric':16s} {'score':>7s}  towers")
    for name, r in results.items():
        if r["status"] == "ok":
            tag = " (resumed)" if r.get("resumed") else ""
            print(f"{name:16s} {'ok':8s} {r['metric_name']:16s} {100 * r['metric']:7.2f}  {r['towers']}{tag}")
        else:
            print(f"{name:16s} {r['status']:8s} {r.get('error') or r.get('path', '')}")
    missing = [(k, r) for k, r in results.items() if r["status"] == "missing"]
    if missing:
        print("\nmissing datasets:")
        for k, r in missing:
            print(f"  {k}: expected at {r['path']}\n    {r['hint']}")
    print(f"\n{n['ok']} evaluated, {n['missing']} missing, {n['failed']} failed")
