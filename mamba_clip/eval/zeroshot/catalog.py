"""The one table of the zero-shot suite: the 26 datasets of the CLIP-Mamba report's Table 1.

Each report name (``food101``, ``cifar10``, ..., ``imagenet``) maps to

* ``display``: its column in Table 1 (``../shared/paper/table1_zeroshot.csv``),
* ``reference_key``: its key in the reference evaluation's ``templates.json`` / ``labels.json``,
* ``builder``: the clip_benchmark dataset name that builds it (torchvision underneath), or ``None`` when
  clip_benchmark has no builder that works offline (CUB, UCF101, Kinetics700, HatefulMemes, and the sets
  it only reads through TensorFlow datasets / VTAB: RESISC45, KITTI, CLEVR); those are read in
  clip_benchmark's ``wds/`` format (``mamba-clip make-wds``),
* ``metric``: the report's metric (mean per-class accuracy for aircraft, pets, caltech101, flowers;
  (top-1 + top-5) / 2 for kinetics700; ROC-AUC for hateful_memes; top-1 otherwise).

Every dataset is read from ``DATASET_ROOT/<name>``. Any other clip_benchmark classification dataset
name and ``wds/NAME`` (from ``DATASET_ROOT/NAME``) also resolve, scored with top-1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

METRICS = ("top1", "mean_per_class", "top1_top5", "roc_auc")
METRIC_NAMES = {
    "top1": "top-1 accuracy",
    "mean_per_class": "mean per-class accuracy",
    "top1_top5": "(top-1 + top-5) / 2",
    "roc_auc": "ROC-AUC",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # our name, also the folder under the dataset root and the result file name
    display: str  # Table 1 column ("" for sets outside the table)
    reference_key: Optional[str]  # key in the reference templates.json / labels.json
    builder: Optional[str]  # clip_benchmark dataset name; None: clip_benchmark's wds/ layout
    metric: str = "top1"
    folder: Optional[str] = None  # folder under the dataset root (default: name)

    @property
    def in_table(self) -> bool:
        return bool(self.display)

    @property
    def is_wds(self) -> bool:
        return self.builder is None

    @property
    def dirname(self) -> str:
        return self.folder or self.name

    @property
    def file_stem(self) -> str:
        return self.name.replace("/", "_")


_T = DatasetSpec
#: Table 1 order (the report's columns).
TABLE1: List[DatasetSpec] = [
    _T("food101", "Food-101", "food101", "food101"),
    _T("cifar10", "CIFAR-10", "cifar10", "cifar10"),
    _T("cifar100", "CIFAR-100", "cifar100", "cifar100"),
    _T("cub", "CUB", "cub200", None),
    _T("sun397", "SUN397", "sun397", "sun397"),
    _T("cars", "Cars", "cars", "cars"),
    _T("aircraft", "Aircraft", "aircraft", "fgvc_aircraft", "mean_per_class"),
    _T("dtd", "DTD", "dtd", "dtd"),
    _T("pets", "Pets", "pets", "pets", "mean_per_class"),
    _T("caltech101", "Caltech-101", "caltech101", "caltech101", "mean_per_class"),
    _T("flowers", "Flowers", "flowers", "flowers", "mean_per_class"),
    _T("mnist", "MNIST", "mnist", "mnist"),
    _T("fer2013", "FER-2013", "fer2013", "fer2013"),
    _T("stl10", "STL-10", "stl10", "stl10"),
    _T("eurosat", "EuroSAT", "eurosat", "eurosat"),
    _T("resisc45", "RESISC45", "resisc45", None),
    _T("gtsrb", "GTSRB", "gtsrb", "gtsrb"),
    _T("kitti", "KITTI", "kitti_distance", None),
    _T("country211", "Country211", "country211", "country211"),
    _T("pcam", "PCAM", "patch_camelyon", "pcam"),
    _T("ucf101", "UCF101", "ucf101_frames", None),
    _T("kinetics700", "Kinetics700", "kinetics700_frames", None, "top1_top5"),
    _T("clevr", "CLEVR", "clevr_counts", None),
    _T("hateful_memes", "HatefulMemes", "hateful_memes", None, "roc_auc"),
    _T("sst2", "SST2", "rendered_sst2", "renderedsst2"),
    _T("imagenet", "ImageNet", "imagenet", "imagenet1k"),
]
BY_NAME: Dict[str, DatasetSpec] = {s.name: s for s in TABLE1}
TABLE1_NAMES = [s.name for s in TABLE1]

#: clip_benchmark 1.6 zero-shot classification builders (its datasets/builder.py) usable by name.
CLIP_BENCHMARK_DATASETS = (
    "cifar10", "cifar100", "imagenet1k", "imagenet1k-unverified", "imagenetv2", "imagenet_sketch",
    "imagenet-a", "imagenet-r", "imagenet-o", "objectnet", "voc2007", "food101", "sun397", "cars",
    "fgvc_aircraft", "dtd", "pets", "caltech101", "flowers", "mnist", "stl10", "eurosat", "gtsrb",
    "country211", "pcam", "renderedsst2", "fer2013",
)  # fmt: skip


class UnknownDatasetError(ValueError):
    pass


def valid_names() -> List[str]:
    extra = sorted(set(CLIP_BENCHMARK_DATASETS) - {s.builder for s in TABLE1})
    return TABLE1_NAMES + extra + ["wds/NAME"]


def resolve(name: str) -> DatasetSpec:
    """A dataset name -> its spec. Raises UnknownDatasetError listing the valid names."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith("wds/") and len(name) > 4:
        short = name[4:]
        if short in BY_NAME:  # a Table 1 set given explicitly in wds/ form
            return replace(BY_NAME[short], builder=None)
        return DatasetSpec(name, "", None, None, "top1", folder=short)
    if name in CLIP_BENCHMARK_DATASETS:
        for s in TABLE1:  # clip_benchmark's name of a Table 1 set -> the Table 1 entry
            if s.builder == name:
                return s
        return DatasetSpec(name, "", None, name, "top1")
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; valid names: {', '.join(valid_names())} "
        "(wds/NAME reads clip_benchmark's wds layout from DATASET_ROOT/NAME)"
    )


def resolve_all(names: Optional[Sequence[str]]) -> List[DatasetSpec]:
    """Resolve every name first, so a typo fails before any model is loaded."""
    names = list(names) if names else list(TABLE1_NAMES)
    bad = []
    specs = []
    for n in names:
        try:
            specs.append(resolve(n))
        except UnknownDatasetError:
            bad.append(n)
    if bad:
        raise UnknownDatasetError(
            f"unknown dataset name(s) {', '.join(map(repr, bad))}; valid names: {', '.join(valid_names())} "
            "(wds/NAME reads clip_benchmark's wds layout from DATASET_ROOT/NAME)"
        )
    seen, out = set(), []
    for s in specs:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out
