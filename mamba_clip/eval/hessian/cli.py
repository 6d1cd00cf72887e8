"""mamba-clip hessian: Hessian max-eigenvalue spectra of a CLIP model's loss, and their plot.

    mamba-clip hessian --model M [--pretrained P] --data DIR|CSV --out RUN [--loss zeroshot|clip]
                       [--params image|text|all|REGEX] [--n-samples 3000] [--batch-size 15] [--k 5]
                       [--image-size PX] [--method power|lanczos] [--max-iter 100] [--tol 1e-3] [--seed 0]
    mamba-clip hessian plot RUN [RUN ...] --out fig.png [--labels NAME ...] [--title T]

The first form writes RUN/eigenvalues.json and .npz after every batch and resumes from them; the
second draws the Figure-3-style plot from saved runs (write the run folders first, then ``--out``).
Heavy imports (torch, open_clip, matplotlib) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from mamba_clip.cli_checks import UsageError, positive_float, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "hessian",
        help="Hessian max-eigenvalue spectra of the loss (Figure 3); 'hessian plot RUN... --out F' plots them",
        description=__doc__.split("\n")[0],
        epilog="Plot form: mamba-clip hessian plot RUN [RUN ...] --out fig.png [--labels ...] [--title ...]",
    )
    p.add_argument("runs", nargs="*", metavar="plot RUN",
                   help="with the word 'plot' first: run folders to plot (then --out is the figure)")
    p.add_argument("--model", help="open_clip model name (vmamba-nano, simba-s, vit-nano, ...)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path (default: random init)")
    p.add_argument("--data", help="ImageFolder (zero-shot loss; classes from folder names) or open_clip CSV "
                                  "(filepath, title)")
    p.add_argument("--out", required=True, help="run folder (compute) or figure file (plot)")
    p.add_argument("--loss", choices=("zeroshot", "clip"), default=None,
                   help="default: zeroshot for an ImageFolder, clip for a CSV")
    p.add_argument("--params", default="image", help="image (default), text, all, or a regular expression "
                                                     "on parameter names")
    p.add_argument("--n-samples", type=positive_int, default=3000,
                   help="images in all (default 3000, the paper's protocol: 200 batches; on a CPU each batch of "
                        "a full-size model takes minutes, an estimate is printed after the first)")
    p.add_argument("--batch-size", type=positive_int, default=15, help="samples per Hessian batch")
    p.add_argument("--k", type=positive_int, default=5, help="eigenvalues per batch (largest magnitude, signed)")
    p.add_argument("--image-size", type=positive_int, default=None, help="force the model's image size (default: "
                                                                "its config)")
    p.add_argument("--method", choices=("power", "lanczos"), default="power",
                   help="power: PyHessian power iteration (Park & Kim); lanczos: ours, fewer products")
    p.add_argument("--max-iter", type=positive_int, default=100, help="iterations per eigenvalue")
    p.add_argument("--tol", type=positive_float, default=1e-3, help="relative convergence tolerance")
    p.add_argument("--seed", type=int, default=0, help="sample order and probe vectors")
    p.add_argument("--templates", default="simple", help="'simple' (7), 'openai' (80) or a number n")
    p.add_argument("--label", default=None, help="model name in the run file and plots (default: --model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--labels", nargs="+", default=None, help="plot: one label per run")
    p.add_argument("--title", default=None, help="plot: figure title")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the plan and estimate lines "
                                                                 "still go to stderr)")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    if args.runs:
        if args.runs[0] != "plot":
            raise UsageError(f"unexpected argument {args.runs[0]!r}; the only positional form is "
                             "'mamba-clip hessian plot RUN... --out fig.png'")
        return _plot(args)
    missing = [o for o, v in (("--model", args.model), ("--data", args.data)) if not v]
    if missing:
        raise UsageError(f"mamba-clip hessian needs {' and '.join(missing)} (or: hessian plot RUN... --out F)")
    return _run(args)


def _plot(args) -> int:
    from .plot import plot_spectra
    from .spectrum import load_runs

    runs = args.runs[1:]
    if not runs:
        raise UsageError("hessian plot needs at least one run folder")
    try:
        specs = load_runs(runs)
        out = plot_spectra(specs, args.out, labels=args.labels, title=args.title)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    for s in specs:
        m = s.summary()
        print(f"{m['label']:24s} {m['n_values']:6d} eigenvalues, {m['n_negative']:5d} negative, "
              f"max {m['max']:.4g}, min {m['min']:.4g}{'' if m['complete'] else ' (incomplete)'}")
    print(f"wrote {out}")
    return 0


def _check_data(data) -> int:
    """An ImageFolder with decodable images, or an open_clip CSV whose rows name decodable images.
    Returns the number of images."""
    from pathlib import Path

    from mamba_clip.cli_checks import check_file, check_image_folder, first_bad_image

    from .data import caption_csv

    if data.is_dir():
        return len(check_image_folder(data, "--data", classes=True))
    if not data.exists():
        raise UsageError(f"--data {str(data)!r}: no such folder or file (expected an ImageFolder or a CSV file)")
    check_file(data, "--data")
    try:
        items = caption_csv(data, transform=None).items
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--data {exc}") from None
    bad = first_bad_image(Path(p) for p, _ in items)
    if bad is not None:
        raise UsageError(f"--data {str(data)!r}: image {str(bad[0])!r} cannot be read ({bad[1]})")
    return len(items)


def _run(args) -> int:
    from pathlib import Path

    from mamba_clip.cli_checks import (
        check_device,
        check_image_size,
        check_model,
        check_pretrained,
        check_templates,
    )

    data = Path(args.data)
    templates = check_templates(args.templates)
    check_model(args.model)
    check_image_size(args.model, args.image_size)
    pretrained = check_pretrained(args.model, args.pretrained, image_size=args.image_size)
    check_device(args.device)
    n_images = _check_data(data)
    if args.n_samples > n_images:
        print(f"--n-samples {args.n_samples}: {data} holds {n_images} images; using all {n_images}",
              file=sys.stderr)

    import open_clip
    import torch
    from tqdm import tqdm

    from mamba_clip.distributed import Dist

    from .spectrum import hessian_spectrum

    if args.threads:
        torch.set_num_threads(args.threads)
    loss = args.loss or ("zeroshot" if data.is_dir() else "clip")
    kw = {"force_image_size": args.image_size} if args.image_size else {}
    dist = Dist.start(args.out)  # several processes (torchrun / SLURM): the batches are split over them
    device = dist.device(args.device)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=pretrained,
                                                                 device=device, **kw)
    tokenizer = open_clip.get_tokenizer(args.model)
    try:
        spec = hessian_spectrum(
            model, data, loss=loss, n_samples=args.n_samples, batch_size=args.batch_size, k=args.k,
            params=args.params, templates=templates, tokenizer=tokenizer, seed=args.seed,
            progress=not args.no_progress, out_dir=args.out, max_iter=args.max_iter, tol=args.tol,
            method=args.method, label=args.label or args.model, transform=preprocess, device=device, dist=dist,
            log=lambda line: tqdm.write(line, file=sys.stderr),  # above the bar, not into it
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    m = spec.summary()
    print(f"{m['label']}: {m['n_values']} eigenvalues from {m['n_batches']} batches, {m['n_negative']} negative, "
          f"max {m['max']:.4g}, min {m['min']:.4g}, {m['seconds_per_batch']:.2f} s/batch")
    print(f"wrote {Path(args.out) / 'eigenvalues.json'}")
    return 0
