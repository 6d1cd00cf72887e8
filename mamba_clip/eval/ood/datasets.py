"""Stimulus folders in model-vs-human's layouts, and ``make-datasets`` (numpy + PIL, no torch).

Two layouts are read (model-vs-human's ``datasets/``; the same folders its download provides):

* sessions: ``<dataset>/dnn/session-<n>/NNNN_<abbr>_dnn_<condition>_<category>_<code>_<name>.png``
  (the 12 parametric datasets, sketch, stylized); condition and category come from the file name;
* categories: ``<dataset>/<category>/<name>.png`` (edge, silhouette, cue-conflict, and any
  16-category image folder); condition ``NaN``.

:func:`make_datasets` writes the parametric datasets in the sessions layout from any 16-category
image folder, with the manipulations of :mod:`.manipulations` (seeded per image and condition).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mamba_clip.fileio import default_file_mode

from .protocol import CATEGORIES, PARAMETRIC_DATASETS, get_spec, parse_session_imagename, session_imagename

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_SIZE = 224
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Sample:
    """One stimulus: file, true category, condition (CSV spelling or ``NaN``), CSV image name."""

    path: Path
    category: str
    condition: str
    imagename: str
    session: int = 1


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def detect_layout(folder: PathLike) -> str:
    """``"sessions"`` or ``"categories"``; ``ValueError`` if the folder is neither."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"dataset folder {str(folder)!r} does not exist")
    dnn = folder / "dnn"
    if dnn.is_dir() and any(p.is_dir() and p.name.startswith("session-") for p in dnn.iterdir()):
        return "sessions"
    if any((folder / c).is_dir() for c in CATEGORIES):
        return "categories"
    raise ValueError(
        f"{str(folder)!r} is neither a sessions layout (dnn/session-1/...) nor a categories layout "
        f"(<category>/<image>, categories {list(CATEGORIES)})"
    )


def list_samples(folder: PathLike) -> List[Sample]:
    """All stimuli of a dataset folder, in model-vs-human's evaluation order (sorted paths)."""
    folder = Path(folder)
    layout = detect_layout(folder)
    samples: List[Sample] = []
    if layout == "sessions":
        sessions = sorted(
            p for p in (folder / "dnn").iterdir() if p.is_dir() and p.name.startswith("session-")
        )
        for s in sessions:
            num = int(s.name.split("-")[-1])
            for p in _images(s):
                condition, category = parse_session_imagename(p.name)
                if category not in CATEGORIES:
                    raise ValueError(f"{p}: category {category!r} is not one of {list(CATEGORIES)}")
                samples.append(Sample(p, category, condition, p.name, num))
    else:
        unknown = [p.name for p in folder.iterdir() if p.is_dir() and p.name not in CATEGORIES]
        if unknown:
            raise ValueError(f"{folder}: sub-folders {unknown} are not categories {list(CATEGORIES)}")
        for c in CATEGORIES:
            if (folder / c).is_dir():
                samples.extend(Sample(p, c, "NaN", p.name) for p in _images(folder / c))
    if not samples:
        raise ValueError(f"no images found in {str(folder)!r}")
    return samples


def resolve_dataset(arg: str, data_root: Optional[PathLike] = None) -> Tuple[str, Path]:
    """``"NAME=PATH"`` or ``"NAME"`` (looked up under ``data_root``; ``edge`` also finds ``edges``,
    ``silhouette`` also ``filled-silhouettes``) -> (canonical name, folder)."""
    if "=" in arg:
        name, path = arg.split("=", 1)
        return get_spec(name).name, Path(path)
    spec = get_spec(arg)
    if data_root is None:
        raise ValueError(f"dataset {arg!r} given without a path: use NAME=PATH or --data-root")
    candidates = [arg, spec.name] + {
        "edge": ["edges"],
        "silhouette": ["filled-silhouettes", "silhouettes"],
    }.get(spec.name, [])
    for c in candidates:
        p = Path(data_root) / c
        if p.is_dir():
            return spec.name, p
    raise ValueError(f"dataset {arg!r} not found under {str(data_root)!r} (looked for {candidates})")


# --- make-datasets --------------------------------------------------------------------------------


def load_image(path: PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 ``(size, size, 3)``: shorter side resized to ``size`` (bicubic), centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).copy()


def save_png(path: PathLike, image: np.ndarray) -> None:
    """Atomic 8-bit RGB PNG write of a float [0, 1] (or uint8) image."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_IMAGENET_NAME = re.compile(r"^n\d{8}_\d+$")


def stimulus_stem(path: Path) -> str:
    """File stem usable after the last ``_`` of a stimulus name (ImageNet ``n0..._N`` kept)."""
    stem = path.stem
    return stem if _IMAGENET_NAME.match(stem) else stem.replace("_", "-")


def make_datasets(
    source: PathLike,
    out: PathLike,
    datasets: Sequence[str] = PARAMETRIC_DATASETS,
    seed: int = 0,
    mode: str = "all",
    max_per_category: Optional[int] = None,
    manipulation_data: Optional[PathLike] = None,
    progress: bool = True,
) -> Dict[str, int]:
    """Write the parametric datasets from a 16-category image folder in model-vs-human's layout.

    ``out/<dataset>/dnn/session-1/NNNN_<abbr>_dnn_<condition>_<category>_<code>_<name>.png``,
    224x224 RGB. ``mode="all"`` puts every source image in every condition; ``mode="split"``
    assigns each image one condition, round-robin within its category starting at an offset per
    category (like the human experiments, where every image was seen once). Image ``i`` of
    dataset ``d`` at condition ``c`` uses the seed
    ``SeedSequence([seed, d, c, i])``, so runs are reproducible and resumable (existing files are
    kept). Returns ``{dataset: number of images}``.
    """
    from tqdm import tqdm

    from .manipulations import Resources, manipulate

    if mode not in ("all", "split"):
        raise ValueError(f"mode must be 'all' or 'split', got {mode!r}")
    source = Path(source)
    if detect_layout(source) != "categories":
        raise ValueError(f"--source must be a 16-category image folder (<category>/<image>), got {source}")
    samples = list_samples(source)
    if max_per_category is not None:
        kept: Dict[str, int] = {}
        picked = []
        for s in samples:
            if kept.get(s.category, 0) < max_per_category:
                picked.append(s)
                kept[s.category] = kept.get(s.category, 0) + 1
        samples = picked
    specs = [get_spec(d) for d in datasets]
    for spec in specs:
        if not spec.parametric:
            raise ValueError(f"make-datasets writes parametric datasets only; {spec.name!r} is not one")
    resources = Resources(manipulation_data)
    resources.check([s.name for s in specs])  # a missing data file fails now, not after the other sets
    out = Path(out)
    counts: Dict[str, int] = {}
    for spec in specs:
        jobs = []
        per_cat: Dict[str, int] = {}
        for i, s in enumerate(samples):
            if mode == "all":
                conds = list(range(len(spec.conditions)))
            else:
                k = per_cat.get(s.category, 0)
                per_cat[s.category] = k + 1
                conds = [(k + CATEGORIES.index(s.category)) % len(spec.conditions)]
            jobs.extend((i, s, ci) for ci in conds)
        folder = out / spec.name / "dnn" / "session-1"
        ds_index = list(get_spec(d).name for d in PARAMETRIC_DATASETS).index(spec.name)
        bar = tqdm(jobs, desc=f"make {spec.name}", unit="img", disable=not progress)
        for n, (i, s, ci) in enumerate(bar, start=1):
            cond = spec.conditions[ci]
            name = session_imagename(n, spec, cond, s.category, stimulus_stem(s.path))
            target = folder / name
            if target.exists():
                continue
            rng = np.random.default_rng(np.random.SeedSequence([seed, ds_index, ci, i]))
            image = manipulate(spec.name, cond, load_image(s.path), rng=rng, resources=resources)
            save_png(target, image)
        counts[spec.name] = len(jobs)
    manifest = {
        "source": str(source),
        "datasets": counts,
        "seed": seed,
        "mode": mode,
        "max_per_category": max_per_category,
        "protocol": "model-vs-human (Geirhos et al. 2021) / Geirhos et al. 2018 manipulations",
    }
    _atomic_json(out / "make_datasets.json", manifest)
    return counts


def _atomic_json(path: Path, obj) -> None:
    from .rawdata import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
