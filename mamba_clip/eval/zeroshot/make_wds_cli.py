"""mamba-clip make-wds: an ImageFolder tree -> clip_benchmark's ``wds/`` layout.

    mamba-clip make-wds SRC DST [--templates FILE] [--classnames FILE] [--split test] [--shard-size N]

SRC has one folder per class (folder names are the class names unless --classnames); DST gets
``<split>/0.tar ...``, ``<split>/nshards.txt``, ``classnames.txt`` and
``zeroshot_classification_templates.txt``. Evaluate it with ``mamba-clip zeroshot --datasets wds/NAME
--dataset-root PARENT`` or the stock ``clip_benchmark eval --dataset wds/NAME --dataset_root DST``.
"""

from __future__ import annotations

import argparse

from mamba_clip.cli_checks import positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("make-wds", help="convert an ImageFolder tree to clip_benchmark's wds/ layout",
                              description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("src", help="ImageFolder tree: one sub-folder of images per class")
    p.add_argument("dst", help="output folder")
    p.add_argument("--templates", default=None,
                   help="file of prompt templates, one per line ('{}' or '{c}' for the class name); "
                   "default: 'a photo of a {c}.'")  # fmt: skip
    p.add_argument("--classnames", default=None, help="file of class names, one per line, in sorted-folder order")
    p.add_argument("--split", default="test", help="split folder name under DST")
    p.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per tar shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    from mamba_clip.cli_checks import UsageError, check_file, check_image_folder

    from .wds import check_destination, make_wds

    try:
        check_destination(args.src, args.dst)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_image_folder(args.src, "SRC", classes=True)  # names the first image PIL cannot read
    for option, path in (("--templates", args.templates), ("--classnames", args.classnames)):
        if path is not None:
            check_file(path, option)
    try:
        info = make_wds(args.src, args.dst, templates=args.templates, split=args.split, shard_size=args.shard_size,
                        classnames=args.classnames, progress=not args.no_progress)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {info['n_images']} images of {info['n_classes']} classes in {info['n_shards']} shard(s) "
          f"to {info['dst']}/{info['split']} with {len(info['templates'])} template(s)")  # fmt: skip
    return 0
