"""A toy captioned-shapes data set, drawn on the fly: for CPU demos and tests that need real images with
real captions and nothing downloaded.

Each image is a coloured shape on a textured background; its caption names colour and shape
(``"a photo of a red circle."``), and ``label`` is the shape index, so a CLIP model trained on the
captions can be scored zero-shot on the shapes.
"""

from __future__ import annotations

import csv
import math
import os
import random
from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}


def draw_shape(shape: str, colour: str, size: int = 64, seed: int = 0) -> Image.Image:
    """One RGB image (size x size) of ``shape`` in ``colour`` at a random position and scale."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {colour!r}")
    rng = random.Random(seed)
    grey = rng.randint(90, 160)
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # background clutter so the task is not trivial
        x, y = rng.randrange(size), rng.randrange(size)
        g = rng.randint(60, 200)
        draw.line((x, y, rng.randrange(size), rng.randrange(size)), fill=(g, g, g), width=1)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=fill)
    else:  # cross
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    return img


def samples(n: int, size: int = 64, seed: int = 0) -> List[Tuple[Image.Image, str, int]]:
    """``n`` (image, caption, shape label) triples, balanced over shapes, reproducible from ``seed``."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    out = []
    colours = list(COLOURS)
    for i in range(n):
        label = i % len(SHAPES)
        colour = rng.choice(colours)
        img = draw_shape(SHAPES[label], colour, size=size, seed=rng.randrange(1 << 30))
        out.append((img, f"a photo of a {colour} {SHAPES[label]}.", label))
    return out


def write_csv_dataset(root: os.PathLike, n: int, size: int = 64, seed: int = 0,
                      sep: str = "\t") -> Path:
    """Write ``n`` images and a CSV (``filepath``, ``title`` columns, open_clip_train's default names)
    under ``root``; returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    csv_path = root / "data.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(["filepath", "title"])
        for i, (img, caption, _) in enumerate(samples(n, size=size, seed=seed)):
            path = root / "images" / f"{i:05d}.png"
            img.save(path)
            writer.writerow([str(path), caption])
    return csv_path


def classnames() -> Sequence[str]:
    return SHAPES
