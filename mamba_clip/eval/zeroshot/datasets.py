"""Building one dataset of the suite: clip_benchmark's builder, or its ``wds/`` layout, under
``DATASET_ROOT/<name>``; the class names and templates it is scored with; a clear "missing" report.

Class names and templates:

* ``templates="reference"`` and a Table 1 set: the reference evaluation's templates and class names
  (``templates.json`` / ``labels.json``), ordered like the dataset's labels (``templates.align_to_dataset``).
* ``templates="clip_benchmark"``: what clip_benchmark's ``build_dataset`` gives (its own templates and
  class names; for a ``wds/`` folder, the folder's ``classnames.txt`` and templates file).
* a ``wds/NAME`` set outside Table 1: always the folder's class names and templates (clip_benchmark's
  behaviour), whatever ``templates`` says.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .catalog import DatasetSpec
from .templates import ClassNames, align_to_dataset, as_name_lists, reference_labels, reference_templates
from .wds import WdsDataset, wds_ready


class DatasetMissing(FileNotFoundError):
    def __init__(self, spec: DatasetSpec, path: Path, hint: str, detail: str = ""):
        self.spec, self.path, self.hint, self.detail = spec, Path(path), hint, detail
        msg = f"{spec.name}: not found at {path}" + (f" ({detail})" if detail else "") + f". {hint}"
        super().__init__(msg)


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    path: Path
    dataset: object  # map-style dataset of (image tensor, label)
    classnames: ClassNames
    templates: List[str]
    source: str  # "clip_benchmark:<builder>" or "wds"
    names_from: str  # "reference", "clip_benchmark" or "wds_folder"


def how_to_get(spec: DatasetSpec, path: Path) -> str:
    if spec.is_wds:
        return (f"Convert an ImageFolder copy of its test split (one folder per class) with "
                f"`mamba-clip make-wds SRC {path}`; clip_benchmark has no offline builder for it.")  # fmt: skip
    return (
        f"Download it with clip_benchmark's builder: python -c \"from clip_benchmark.datasets.builder import "
        f"build_dataset; build_dataset('{spec.builder}', root='{path}', split='test', download=True)\" "
        f"(or convert your own copy with `mamba-clip make-wds SRC {path}` and run it as wds/{spec.dirname})."
    )


class _Guarded:
    """Wraps a builder's dataset so a failing sample names its file (torchvision keeps the paths in
    ``samples`` / ``imgs`` / ``_image_files`` / ``_samples``)."""

    def __init__(self, ds, name: str):
        self.ds, self.name = ds, name

    def __len__(self):
        return len(self.ds)

    def describe(self, index: int) -> str:
        for attr in ("samples", "imgs", "_image_files", "_samples", "_images"):
            seq = getattr(self.ds, attr, None)
            if seq is not None:
                try:
                    item = seq[index]
                    return str(item[0] if isinstance(item, (tuple, list)) else item)
                except Exception:
                    pass
        return f"{self.name} sample {index}"

    def __getitem__(self, index):
        try:
            return self.ds[index]
        except Exception as exc:
            from .wds import CorruptImageError

            raise CorruptImageError(f"cannot read {self.describe(index)}: {type(exc).__name__}: {exc}") from exc


def load_dataset(spec: DatasetSpec, root, transform, templates: str = "reference",
                 split: str = "test") -> LoadedDataset:
    """Build ``spec`` from ``root/<folder>``. Raises DatasetMissing with the expected path and how to get it."""
    path = Path(root) / spec.dirname
    use_reference = templates == "reference" and spec.reference_key is not None
    if spec.is_wds:
        if not wds_ready(path, split):
            raise DatasetMissing(spec, path, how_to_get(spec, path), f"no {split}/nshards.txt")
        ds = WdsDataset(path, split=split, transform=transform)
        folder_classes, folder_templates = ds.classes, ds.templates
        source = "wds"
    else:
        if not path.exists():
            raise DatasetMissing(spec, path, how_to_get(spec, path))
        from clip_benchmark.datasets.builder import build_dataset

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = build_dataset(spec.builder, root=str(path), transform=transform, split=split, download=False)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise DatasetMissing(spec, path, how_to_get(spec, path), f"{type(exc).__name__}: {exc}") from exc
        folder_classes, folder_templates = list(raw.classes), list(raw.templates)
        ds = _Guarded(raw, spec.name)
        source = f"clip_benchmark:{spec.builder}"
    if use_reference:
        names = as_name_lists(reference_labels()[spec.reference_key])
        names = align_to_dataset(names, folder_classes)
        tpl = list(reference_templates()[spec.reference_key])
        names_from = "reference"
    else:
        if not folder_classes or not folder_templates:
            raise ValueError(
                f"{spec.name}: {path} gives no class names or no templates "
                "(a wds/ folder needs classnames.txt and zeroshot_classification_templates.txt)"
            )
        names = as_name_lists(folder_classes)
        tpl = list(folder_templates)
        names_from = "wds_folder" if spec.is_wds else "clip_benchmark"
    return LoadedDataset(spec, path, ds, names, tpl, source, names_from)


def describe_sample(ds, index: int) -> Optional[str]:
    fn = getattr(ds, "describe", None)
    return fn(index) if fn else None
