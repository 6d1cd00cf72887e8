"""Reading and writing trial CSVs in model-vs-human's raw-data format (no torch).

Layout: ``<root>/<dataset>/<dataset>_<subject>_session-<n>.csv``, one row per trial with the columns
``subj,session,trial,rt,object_response,category,condition,imagename`` (human files spell the second
column ``Session``; column names are compared case-insensitively, as model-vs-human does). Human
observers are the subjects named ``subject-*``; everything else is a model. Conditions are mapped to
their canonical names (:meth:`DatasetSpec.canonical_condition`) and every trial gets an ``image_id``
(:func:`short_imagename`) that pairs the trials of different observers on the same image.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from mamba_clip import fileio

from .protocol import DATASETS, get_spec, is_human, short_imagename

COLUMNS = ("subj", "session", "trial", "rt", "object_response", "category", "condition", "imagename")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Trial:
    """One row of a raw-data CSV (condition canonicalised, plus the derived ``image_id``)."""

    dataset: str
    subj: str
    session: str
    trial: int
    rt: str
    object_response: str
    category: str
    condition: str
    imagename: str
    image_id: str

    @property
    def correct(self) -> bool:
        return self.object_response == self.category


def subject_file_name(dataset: str, subj: str, session: int = 1) -> str:
    """model-vs-human's file name for a model's trials: ``<dataset>_<subj with _ -> ->_session-<n>.csv``."""
    return f"{dataset}_{subj.replace('_', '-')}_session-{session}.csv"


def safe_subject_name(name: str) -> str:
    """A model name usable as ``subj`` and in file names: ``vmamba-s:yfcc15m`` -> ``vmamba-s_yfcc15m``.

    Raises ``ValueError`` for names that would be taken for a human observer (``subject-*``)."""
    subj = re.sub(r"[^A-Za-z0-9.+\-_]", "_", str(name)).strip("_")
    if not subj:
        raise ValueError(f"model name {name!r} gives an empty subject name")
    if is_human(subj):
        raise ValueError(f"model name {name!r} must not start with 'subject-' (reserved for humans)")
    return subj


def read_trials(path: PathLike, dataset: Optional[str] = None) -> List[Trial]:
    """Read one raw-data CSV. ``dataset`` defaults to the name of the folder holding the file.

    Raises ``ValueError`` naming the file when a column is missing or a condition is unknown.
    """
    path = Path(path)
    dataset = get_spec(dataset or path.parent.name).name
    spec = DATASETS[dataset]
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected the header {','.join(COLUMNS)}") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a raw-data CSV has {list(COLUMNS)}")
        col = {c: header.index(c) for c in COLUMNS}
        trials = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise ValueError(f"{path}:{lineno}: {len(row)} field(s), the header has {len(header)} "
                                 "(a truncated file?)")
            try:
                condition = spec.canonical_condition(row[col["condition"]])
                trial = int(float(row[col["trial"]]))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            imagename = row[col["imagename"]]
            trials.append(
                Trial(
                    dataset=dataset,
                    subj=row[col["subj"]],
                    session=row[col["session"]],
                    trial=trial,
                    rt=row[col["rt"]],
                    object_response=row[col["object_response"]],
                    category=row[col["category"]],
                    condition=condition,
                    imagename=imagename,
                    image_id=short_imagename(imagename),
                )
            )
    return trials


def read_raw_data(
    root: PathLike,
    datasets: Optional[Sequence[str]] = None,
    subjects: Optional[Iterable[str]] = None,
) -> Dict[str, List[Trial]]:
    """Read every ``<root>/<dataset>/*.csv`` of the known datasets (``performances/`` and unknown
    folders are skipped). ``datasets`` restricts the datasets, ``subjects`` the observers (exact
    ``subj`` names, ``-``/``_`` treated alike). Returns ``{dataset: trials}`` for the datasets found.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"raw-data folder {str(root)!r} does not exist")
    wanted = None if datasets is None else {get_spec(d).name for d in datasets}
    keep = None if subjects is None else {_norm(s) for s in subjects}
    out: Dict[str, List[Trial]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name not in DATASETS or (wanted is not None and sub.name not in wanted):
            continue
        trials: List[Trial] = []
        for f in sorted(sub.glob("*.csv")):
            rows = read_trials(f, sub.name)
            if keep is not None:
                rows = [t for t in rows if _norm(t.subj) in keep]
            trials.extend(rows)
        if trials:
            out[sub.name] = trials
    return out


def _norm(name: str) -> str:
    return str(name).replace("-", "_")


def write_trials(path: PathLike, rows: Iterable[Sequence[object]]) -> Path:
    """Atomically write a raw-data CSV (header :data:`COLUMNS`, then ``rows`` in that column order)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        if len(row) != len(COLUMNS):
            raise ValueError(f"a trial row needs {len(COLUMNS)} values {COLUMNS}, got {list(row)}")
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())
    return path


def atomic_write_text(path: PathLike, text: str) -> None:
    """Atomic CSV/JSON text write (no newline translation)."""
    fileio.atomic_write_text(path, text, newline="")


def split_subjects(trials: Iterable[Trial]):
    """(humans, models): sorted subject names, by model-vs-human's ``subject-*`` rule."""
    names = sorted({t.subj for t in trials})
    return [s for s in names if is_human(s)], [s for s in names if not is_human(s)]
