"""Batches for :func:`~.spectrum.hessian_spectrum`: what ``data`` may be, and how batches are formed.

Accepted ``data``:

1. a folder path: an ImageFolder (one sub-folder per class; class names are the folder names with
   ``_`` read as a space), or a file path: an open_clip CSV/TSV (columns ``filepath`` and ``title``, or
   the first two columns; relative paths are relative to the file; tab-separated when the header
   has a tab). Images are read with ``transform`` (default: the model's validation transform);
2. a map-style ``torch.utils.data.Dataset`` of ``(image tensor, target)`` samples;
3. a pair ``(images, targets)`` of an (N, 3, H, W) tensor and N targets;
4. any other iterable (e.g. a ``DataLoader``) of ready batches ``(images, targets)``, used in its own
   order and batch sizes (``batch_size`` is then ignored), until ``n_samples`` images are taken.

A target is an int class label, a caption string, or a token tensor (context_length,). For 1-3 a
seeded random permutation (``seed``) picks ``n_samples`` samples (all when fewer) and cuts it into
batches of ``batch_size`` (the last one may be smaller); the same seed gives the same batches, which
is what resuming relies on. For 4 the iterable must yield the same batches on every pass.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class Batch:
    index: int
    images: Tensor
    targets: object  # LongTensor labels (B,), list of str captions, or LongTensor tokens (B, ctx)
    first: int  # position of the first sample in the sample order (caption templates cycle with it)


class FileDataset(torch.utils.data.Dataset):
    """(path, target) pairs read with a PIL transform; ``classnames`` when targets are labels."""

    def __init__(self, items: List[Tuple[str, object]], transform: Callable, classnames=None, source=""):
        self.items = items
        self.transform = transform
        self.classnames = classnames
        self.source = source

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, target = self.items[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - name the file; finished batches stay saved
            raise ValueError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc
        return self.transform(image), target


def image_folder(root: os.PathLike, transform: Callable) -> FileDataset:
    """ImageFolder layout; class names from the sorted sub-folder names."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected an ImageFolder: <root>/<class>/<image>)")
    items = []
    for label, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                items.append((str(f), label))
    if not items:
        raise ValueError(f"{root}: no images with extensions {IMAGE_EXTENSIONS} in the class folders")
    return FileDataset(items, transform, [c.replace("_", " ") for c in classes], str(root))


def caption_csv(path: os.PathLike, transform: Callable, img_key: str = "filepath",
                caption_key: str = "title") -> FileDataset:
    """open_clip's CSV/TSV of (image path, caption)."""
    path = Path(path)
    with open(path, newline="") as f:
        head = f.readline()
        f.seek(0)
        rows = list(csv.reader(f, delimiter="\t" if "\t" in head else ","))
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header and at least one row of (image path, caption)")
    header = [h.strip() for h in rows[0]]
    ki = header.index(img_key) if img_key in header else 0
    kc = header.index(caption_key) if caption_key in header else 1
    if len(header) < 2:
        raise ValueError(f"{path}: expected two columns ({img_key}, {caption_key}), got header {header}")
    items = []
    for r in rows[1:]:
        if not r:
            continue
        p = Path(r[ki])
        items.append((str(p if p.is_absolute() else path.parent / p), r[kc]))
    return FileDataset(items, transform, None, str(path))


def default_transform(model) -> Callable:
    """open_clip's validation transform for ``model`` (its image size, mean and std)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    pp = PreprocessCfg(**{**cfg, "size": size})
    return image_transform_v2(pp, is_train=False)


def as_dataset(data, transform: Optional[Callable], model) -> Optional[torch.utils.data.Dataset]:
    """A map-style dataset for forms 1-3 (see the module docstring), None for a batch iterable."""
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.exists():
            raise FileNotFoundError(f"data: {p} does not exist (expected an ImageFolder or a CSV file)")
        transform = transform or default_transform(model)
        return image_folder(p, transform) if p.is_dir() else caption_csv(p, transform)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor) and data[0].dim() == 4:
        images, targets = data
        if len(targets) != len(images):
            raise ValueError(f"data: {len(images)} images but {len(targets)} targets")
        return _PairDataset(images, targets)
    if hasattr(data, "__iter__"):
        return None
    raise TypeError(f"data: unsupported type {type(data).__name__}; see mamba_clip.eval.hessian.data")


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, targets):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def _collate_targets(ts: Sequence) -> object:
    if all(isinstance(t, str) for t in ts):
        return list(ts)
    if all(isinstance(t, Tensor) and t.dim() == 1 for t in ts):
        return torch.stack(list(ts))
    return torch.as_tensor([int(t) for t in ts], dtype=torch.long)


def sample_order(n_total: int, n_samples: int, seed: int) -> List[int]:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=g)[: min(n_samples, n_total)].tolist()


def plan_batches(dataset, n_samples: int, batch_size: int, seed: int) -> List[List[int]]:
    order = sample_order(len(dataset), n_samples, seed)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iter_batches(data, dataset, n_samples: int, batch_size: int, seed: int,
                 skip: Callable[[int], bool] = lambda i: False) -> Iterator[Batch]:
    """Yield the batches in order; batches with ``skip(index)`` true are not loaded (resume)."""
    if dataset is not None:
        pos = 0
        for bi, idx in enumerate(plan_batches(dataset, n_samples, batch_size, seed)):
            if not skip(bi):
                samples = [dataset[i] for i in idx]
                yield Batch(bi, torch.stack([s[0] for s in samples]), _collate_targets([s[1] for s in samples]),
                            pos)
            pos += len(idx)
        return
    taken = 0
    for bi, item in enumerate(data):
        if taken >= n_samples:
            break
        images, targets = item[0], item[1]
        room = n_samples - taken
        if len(images) > room:
            images, targets = images[:room], targets[:room]
        if not skip(bi):
            if not isinstance(targets, (Tensor, list)):
                targets = list(targets)
            yield Batch(bi, images, targets if isinstance(targets, Tensor) else _collate_targets(targets), taken)
        taken += len(images)


def count_batches(data, dataset, n_samples: int, batch_size: int) -> Optional[int]:
    if dataset is not None:
        n = min(n_samples, len(dataset))
        return -(-n // batch_size)
    return None
