"""The model-vs-human benchmark protocol as data (no torch, no numpy).

Follows Geirhos et al., "Partial success in closing the gap between human and machine vision",
NeurIPS 2021 (bethgelab/model-vs-human): its 17 datasets, the 16 entry-level categories, the
condition names used in its raw-data CSVs, the conditions its benchmark excludes ("not OOD" control
conditions and conditions where mean human accuracy is below 0.2) and the plotting labels of its
accuracy-vs-condition figures. The manipulation parameters behind the 12 parametric datasets are
those of Geirhos et al., "Generalisation in humans and deep neural networks", NeurIPS 2018
(rgeirhos/generalisation-humans-DNNs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

CATEGORIES: Tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)  # fmt: skip
"""The 16 entry-level categories, sorted (model-vs-human's order)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset.

    ``conditions`` are the canonical condition names (model-vs-human's ``data_conditions``, i.e. the
    CSV values after pandas' type inference and ``str()``), ``file_conditions`` the spelling used in
    the raw-data CSVs and image file names, ``excluded`` the conditions the benchmark leaves out.
    Non-parametric datasets have no conditions.
    """

    name: str
    abbr: str = ""
    code: str = "00"  # the field after the category in model-vs-human's image names
    conditions: Tuple[str, ...] = ()
    file_conditions: Tuple[str, ...] = ()
    plotting_conditions: Tuple[str, ...] = ()
    xlabel: str = "Condition"
    excluded: Tuple[str, ...] = ()
    layout: str = (
        "sessions"  # "sessions": <name>/dnn/session-1/<files>; "categories": <name>/<category>/<files>
    )
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def parametric(self) -> bool:
        return bool(self.conditions)

    @property
    def included(self) -> Tuple[str, ...]:
        return tuple(c for c in self.conditions if c not in self.excluded)

    def canonical_condition(self, raw: object) -> str:
        """Map a CSV / file-name condition to its canonical name (``"3"`` -> ``"3.0"`` for high-pass,
        ``"true"`` -> ``"True"``, ``"0.60"`` -> ``"0.6"``). Non-parametric datasets return ``str(raw)``.

        Raises ``ValueError`` for a condition the dataset does not have.
        """
        text = str(raw).strip()
        if not self.parametric:
            return text
        if text in self.conditions:
            return text
        if text in self.file_conditions:
            return self.conditions[self.file_conditions.index(text)]
        if text.lower() in ("true", "false") and text.capitalize() in self.conditions:
            return text.capitalize()
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is not None:
            for c in self.conditions:
                try:
                    if math.isclose(float(c), value, rel_tol=1e-9, abs_tol=1e-12) or (
                        math.isinf(value) and math.isinf(float(c))
                    ):
                        return c
                except ValueError:
                    continue
        raise ValueError(
            f"condition {text!r} is not a condition of dataset {self.name!r}; "
            f"accepted: {list(self.file_conditions)} (canonical {list(self.conditions)})"
        )

    def file_condition(self, condition: str) -> str:
        """Canonical condition -> the spelling used in file names and CSVs."""
        return self.file_conditions[self.conditions.index(self.canonical_condition(condition))]


def _eidolon(name: str, coherence: str, excluded_reaches: Tuple[int, ...]) -> DatasetSpec:
    reaches = (1, 2, 4, 8, 16, 32, 64, 128)
    conds = tuple(f"{r}-{coherence}-10" for r in reaches)
    return DatasetSpec(
        name=name, abbr="eid", code="10", conditions=conds, file_conditions=conds,
        plotting_conditions=tuple(str(i) for i in range(8)),
        xlabel="log2 of 'reach' parameter",
        excluded=tuple(f"{r}-{coherence}-10" for r in excluded_reaches),
        extra={"coherence": int(coherence) / 10.0, "grain": 10.0},
    )  # fmt: skip


_SPECS: List[DatasetSpec] = [
    DatasetSpec(
        name="colour",
        abbr="cl",
        code="40",
        conditions=("cr", "bw"),
        file_conditions=("cr", "bw"),
        plotting_conditions=("colour", "greyscale"),
        xlabel="Colour",
        excluded=("cr",),
    ),
    DatasetSpec(
        name="contrast",
        abbr="cop",
        code="10",
        conditions=("c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"),
        file_conditions=("c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"),
        plotting_conditions=("100", "50", "30", "15", "10", "5", "3", "1"),
        xlabel="Contrast in percent",
        excluded=("c100", "c03", "c01"),
    ),
    DatasetSpec(
        name="high-pass",
        abbr="hp",
        code="10",
        conditions=("inf", "3.0", "1.5", "1.0", "0.7", "0.55", "0.45", "0.4"),
        file_conditions=("inf", "3", "1.5", "1", "0.7", "0.55", "0.45", "0.4"),
        plotting_conditions=("inf", "3.0", "1.5", "1.0", ".7", ".55", ".45", ".4"),
        xlabel="Filter standard deviation",
        excluded=("inf", "0.55", "0.45", "0.4"),
    ),
    DatasetSpec(
        name="low-pass",
        abbr="lp",
        code="10",
        conditions=("0", "1", "3", "5", "7", "10", "15", "40"),
        file_conditions=("0", "1", "3", "5", "7", "10", "15", "40"),
        plotting_conditions=("0", "1", "3", "5", "7", "10", "15", "40"),
        xlabel="Filter standard deviation",
        excluded=("0", "15", "40"),
    ),
    DatasetSpec(
        name="phase-scrambling",
        abbr="ps",
        code="10",
        conditions=("0", "30", "60", "90", "120", "150", "180"),
        file_conditions=("0", "30", "60", "90", "120", "150", "180"),
        plotting_conditions=("0", "30", "60", "90", "120", "150", "180"),
        xlabel="Phase noise width [deg]",
        excluded=("0", "150", "180"),
    ),
    DatasetSpec(
        name="power-equalisation",
        abbr="pow",
        code="35",
        conditions=("0", "pow"),
        file_conditions=("0", "pow"),
        plotting_conditions=("original", "equalised"),
        xlabel="Power spectrum",
        excluded=("0",),
    ),
    DatasetSpec(
        name="false-colour",
        abbr="fc",
        code="35",
        conditions=("True", "False"),
        file_conditions=("true", "false"),
        plotting_conditions=("true", "opponent"),
        xlabel="Colour",
        excluded=("True",),
    ),
    DatasetSpec(
        name="rotation",
        abbr="rot",
        code="20",
        conditions=("0", "90", "180", "270"),
        file_conditions=("0", "90", "180", "270"),
        plotting_conditions=("0", "90", "180", "270"),
        xlabel="Rotation angle [deg]",
        excluded=("0",),
    ),
    _eidolon("eidolonI", "10", (1, 64, 128)),
    _eidolon("eidolonII", "3", (1, 32, 64, 128)),
    _eidolon("eidolonIII", "0", (1, 16, 32, 64, 128)),
    DatasetSpec(
        name="uniform-noise",
        abbr="nse",
        code="10",
        conditions=("0.0", "0.03", "0.05", "0.1", "0.2", "0.35", "0.6", "0.9"),
        file_conditions=("0.00", "0.03", "0.05", "0.10", "0.20", "0.35", "0.60", "0.90"),
        plotting_conditions=("0.0", ".03", ".05", ".1", ".2", ".35", ".6", ".9"),
        xlabel="Uniform noise width",
        excluded=("0.0", "0.6", "0.9"),
    ),
    DatasetSpec(name="sketch", abbr="ske"),
    DatasetSpec(name="stylized", abbr="sty"),
    DatasetSpec(name="edge", abbr="edg", layout="categories"),
    DatasetSpec(name="silhouette", abbr="sif", layout="categories"),
    DatasetSpec(name="cue-conflict", abbr="s5n", layout="categories"),
]

DATASETS: Dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
PARAMETRIC_DATASETS: Tuple[str, ...] = tuple(s.name for s in _SPECS if s.parametric)
NONPARAMETRIC_DATASETS: Tuple[str, ...] = ("sketch", "stylized", "edge", "silhouette", "cue-conflict")
# model-vs-human's DEFAULT_DATASETS: the 17 datasets the benchmark averages over.
BENCHMARK_DATASETS: Tuple[str, ...] = (
    ("edge", "silhouette", "cue-conflict")
    + PARAMETRIC_DATASETS
    + (
        "sketch",
        "stylized",
    )
)

# Aliases for folder names people use for the texture-shape stimuli.
ALIASES: Dict[str, str] = {"edges": "edge", "filled-silhouettes": "silhouette", "silhouettes": "silhouette"}


def get_spec(name: str) -> DatasetSpec:
    """Dataset spec by name (aliases such as ``edges`` accepted); ``ValueError`` for unknown names."""
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {sorted(DATASETS)}")
    return DATASETS[key]


def is_human(subj: str) -> bool:
    """model-vs-human's rule: human observers are the subjects named ``subject-*``."""
    return str(subj).startswith("subject-")


def short_imagename(imagename: str) -> str:
    """The image identity behind a trial's file name (model-vs-human's ``get_short_imagename``):
    drop the experiment prefix ``0001_cl_s01_cr_oven_40_``; ImageNet names keep their ``n0..._`` part.

    ``"0001_cl_s01_bw_boat_40_n02951358_5952.png"`` -> ``"n02951358_5952.png"``,
    ``"0002_edg_s01_0_airplane_00_airplane4.png"`` -> ``"airplane4.png"``,
    ``"airplane1-bicycle2.png"`` -> itself.
    """
    parts = str(imagename).split("_")
    if len(parts) == 1:
        return parts[0]
    first, second = parts[-2:]
    return f"{first}_{second}" if first.startswith("n0") else second


def texture_category(imagename: str) -> str:
    """Texture category of a cue-conflict image name: ``"XXX_dog10-bird2.png"`` -> ``"bird"``."""
    stem = str(imagename).split("_")[-1].split(".")[0]
    return "".join(ch for ch in stem.split("-")[-1] if not ch.isdigit())


def session_imagename(
    index: int, spec: DatasetSpec, condition: str, category: str, stem: str, ext: str = ".png"
) -> str:
    """model-vs-human's DNN stimulus name ``NNNN_<abbr>_dnn_<condition>_<category>_<code>_<stem>.png``.

    ``condition`` is written in the CSV spelling; ``stem`` must not contain ``_`` unless it is an
    ImageNet ``n0..._NNN`` name (so :func:`short_imagename` recovers it).
    """
    cond = spec.file_condition(condition) if spec.parametric else str(condition)
    return f"{index:04d}_{spec.abbr}_dnn_{cond}_{category}_{spec.code}_{stem}{ext}"


def parse_session_imagename(name: str) -> Tuple[str, str]:
    """(condition, category) from a session-layout file name (model-vs-human's
    ``InfoMappingWithSessions``: fields 3 and 4 of the ``_``-split name)."""
    parts = name.split("_")
    if len(parts) < 6:
        raise ValueError(
            f"image name {name!r} is not of the form NNNN_<abbr>_dnn_<condition>_<category>_<code>_<name>"
        )
    return parts[3], parts[4]


def excluded_conditions(dataset: str) -> Tuple[str, ...]:
    return get_spec(dataset).excluded


def plotting_label(dataset: str, condition: str) -> Optional[str]:
    spec = get_spec(dataset)
    c = spec.canonical_condition(condition)
    return spec.plotting_conditions[spec.conditions.index(c)] if spec.parametric else None
