"""Handwritten digits as a small, real CLIP dataset (the demo's data; nothing is downloaded).

The 1797 8x8 greyscale digits bundled with scikit-learn (UCI "Optical Recognition of Handwritten
Digits", Alpaydin & Kaynak 1998) are upscaled, written once as PNGs and split by a fixed, stratified,
seeded draw into

* ``train.csv``: an open_clip CSV (tab-separated ``filepath``, ``title``) whose captions come from
  :data:`CAPTION_TEMPLATES` ("a scan of a handwritten seven", "the digit 7, written by hand", ...);
* ``test/<class name>/*.png``: the held-out images as an ImageFolder (for ``mamba-clip make-wds``,
  the OOD manipulations and the Hessian spectra), scored with :data:`ZEROSHOT_TEMPLATES`, prompts the
  captions never use verbatim.

Everything is a pure function of the seed, so a rerun writes identical files.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from mamba_clip.fileio import atomic_write_text

CLASSNAMES: Tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Training captions: ``{c}`` is the class name ("seven"), ``{d}`` the numeral ("7").
CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a scan of a handwritten {c}",
    "the digit {d}, written by hand",
    "a handwritten {c}",
    "a blurry scan of the number {c}",
    "a small greyscale image of a {c}",
    "someone wrote the digit {c} ({d})",
    "a low resolution {c}",
    "the number {d} in handwriting",
)

# Zero-shot prompts: none of them is a training caption.
ZEROSHOT_TEMPLATES: Tuple[str, ...] = (
    "a photo of the digit {c}.",
    "an image of a handwritten {c}.",
    "a drawing of the number {c}.",
)


def load_digits_images() -> Tuple[np.ndarray, np.ndarray]:
    """The bundled digits as ``(images uint8 [1797, 8, 8] in 0..255, labels int64 [1797])``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices ``(train, test)``: ``test_fraction`` of every class, drawn with ``random.Random(seed)``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    train, test = [], []
    for c in sorted(set(int(v) for v in labels)):
        idx = [i for i, v in enumerate(labels) if int(v) == c]
        rng.shuffle(idx)
        n_test = max(1, round(len(idx) * test_fraction))
        test += sorted(idx[:n_test])
        train += sorted(idx[n_test:])
    return sorted(train), sorted(test)


def _to_image(pixels: np.ndarray, size: int):
    from PIL import Image

    # dark ink on white paper, like a scan; bicubic upscaling smooths the 8x8 grid
    img = Image.fromarray(255 - pixels, mode="L").resize((size, size), Image.BICUBIC)
    return img.convert("RGB")


def write_digits(out: os.PathLike, size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> Dict:
    """Write the split dataset under ``out`` (see the module docstring); returns its manifest.

    A finished folder (``manifest.json`` with the same settings) is reused as it is.
    """
    out = Path(out)
    settings = {"size": int(size), "test_fraction": float(test_fraction), "seed": int(seed), "source": "sklearn digits"}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings:
            return manifest
    images, labels = load_digits_images()
    train, test = stratified_split(labels, test_fraction, seed)
    rng = random.Random(seed + 1)
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    for i in train:
        c = int(labels[i])
        path = out / "train" / f"{i:04d}.png"
        _to_image(images[i], size).save(path)
        caption = rng.choice(CAPTION_TEMPLATES).format(c=CLASSNAMES[c], d=c)
        rows.append(f"{path.resolve()}\t{caption}")
    atomic_write_text(out / "train.csv", "\n".join(rows) + "\n")
    for i in test:
        c = int(labels[i])
        folder = out / "test" / CLASSNAMES[c]
        folder.mkdir(parents=True, exist_ok=True)
        _to_image(images[i], size).save(folder / f"{i:04d}.png")
    atomic_write_text(out / "zeroshot_templates.txt", "\n".join(ZEROSHOT_TEMPLATES) + "\n")
    manifest = {
        "settings": settings, "n_train": len(train), "n_test": len(test), "classnames": list(CLASSNAMES),
        "train_csv": str((out / "train.csv").resolve()), "test_dir": str((out / "test").resolve()),
        "templates_file": str((out / "zeroshot_templates.txt").resolve()),
        "test_counts": {CLASSNAMES[c]: int(sum(1 for i in test if labels[i] == c)) for c in range(10)},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest
