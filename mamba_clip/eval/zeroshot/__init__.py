"""Zero-shot classification: the CLIP-Mamba report's 26-dataset suite (Table 1) over clip_benchmark.

Modules (torch is imported only when a model runs):

* ``catalog``   the one table: report name -> Table 1 column, reference key, clip_benchmark name, metric
* ``metrics``   top-k, mean per-class accuracy, (top-1 + top-5) / 2, ROC-AUC
* ``templates`` reference templates and class names (package data), the zero-shot head with synonyms
* ``wds``       clip_benchmark's ``wds/`` layout: ``make_wds`` (ImageFolder -> shards) and a reader
* ``datasets``  building one dataset (clip_benchmark builder or wds), "missing" reports
* ``suite``     ``run_suite``: the evaluation loop, towers, resume, result files
* ``table``     table1.csv / table1.md / table1.png beside the published numbers
* ``cli``       ``mamba-clip zeroshot`` and ``mamba-clip make-wds``

``run_suite`` and ``make_wds`` are importable from here (lazily).
"""

from __future__ import annotations

__all__ = ["run_suite", "make_wds", "write_tables"]


def __getattr__(name):
    if name == "run_suite":
        from .suite import run_suite

        return run_suite
    if name == "make_wds":
        from .wds import make_wds

        return make_wds
    if name == "write_tables":
        from .table import write_tables

        return write_tables
    raise AttributeError(name)
