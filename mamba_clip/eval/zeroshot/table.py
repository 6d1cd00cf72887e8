"""Table 1 of the CLIP-Mamba report from the suite's result files, beside the published numbers.

Reads every ``OUT/<model>/<dataset>.json`` with ``status: "ok"`` and writes

* ``OUT/table1.csv``: one row per model and kind (``ours``, ``published``, ``diff`` = ours - published),
  columns ``model, row, params_m``, the 26 Table 1 columns in the report's order, any other dataset
  evaluated, ``average`` (over the Table 1 columns that have our score; the published row averages the
  same columns) and ``n_table1``;
* ``OUT/table1.md``: the same as Markdown;
* ``OUT/table1.png``: ours against published per dataset, and average score against trunk parameters
  for every model evaluated (published models as reference).

Scores are in percent (ROC-AUC x 100 for HatefulMemes), as in the report. The published numbers are
``data/table1_zeroshot.csv`` (a copy of ``../shared/paper/table1_zeroshot.csv``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mamba_clip.fileio import atomic_output, atomic_write_text

from .catalog import TABLE1

COLUMNS = [s.display for s in TABLE1]
_BY_NAME = {s.name: s.display for s in TABLE1}


def published() -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """({model: {column: score}}, {model: params_m}) of the published Table 1."""
    text = resources.files("mamba_clip.eval.zeroshot").joinpath("data", "table1_zeroshot.csv").read_text()
    scores, params = {}, {}
    for row in csv.DictReader(io.StringIO(text)):
        m = row.pop("model")
        params[m] = float(row.pop("params_m"))
        scores[m] = {k: float(v) for k, v in row.items()}
    return scores, params


def collect(out) -> Dict[str, Dict]:
    """{model: {"scores": {column: %}, "params_m": float|None}} from the result files under ``out``."""
    models: Dict[str, Dict] = {}
    for f in sorted(Path(out).glob("*/*.json")):
        if f.name.startswith("_"):
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or r.get("status") != "ok" or r.get("metric") is None:
            continue
        m = r.get("model") or f.parent.name
        entry = models.setdefault(m, {"scores": {}, "params_m": None})
        col = r.get("table1_column") or _BY_NAME.get(r.get("dataset")) or r.get("dataset") or f.stem
        entry["scores"][col] = 100.0 * float(r["metric"])
        if r.get("params_m") is not None:
            entry["params_m"] = float(r["params_m"])
    return models


def _mean(xs: List[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def build_rows(out) -> Tuple[List[str], List[Dict]]:
    ours = collect(out)
    pub, pub_params = published()
    extras = sorted({c for e in ours.values() for c in e["scores"] if c not in COLUMNS})
    header = ["model", "row", "params_m"] + COLUMNS + extras + ["average", "n_table1"]
    rows = []
    for m in sorted(ours):
        e = ours[m]
        cols = [c for c in COLUMNS if c in e["scores"]]
        row = {"model": m, "row": "ours", "params_m": e["params_m"], **e["scores"],
               "average": _mean([e["scores"][c] for c in cols]), "n_table1": len(cols)}  # fmt: skip
        rows.append(row)
        if m in pub:
            p = pub[m]
            prow = {"model": m, "row": "published", "params_m": pub_params[m], **p,
                    "average": _mean([p[c] for c in cols]), "n_table1": len(cols)}  # fmt: skip
            drow = {"model": m, "row": "diff", "params_m": None, "n_table1": len(cols)}
            for c in cols:
                drow[c] = e["scores"][c] - p[c]
            if row["average"] is not None:
                drow["average"] = row["average"] - prow["average"]
            rows += [prow, drow]
    return header, rows


def _fmt(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return str(v)


def write_tables(out) -> Dict[str, str]:
    """Write table1.csv, table1.md and table1.png into ``out``; returns their paths (empty if no results)."""
    out = Path(out)
    header, rows = build_rows(out)
    if not rows:
        return {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        signed = r["row"] == "diff"
        w.writerow([_fmt(r.get(h), signed and h not in ("n_table1",)) if h not in ("model", "row") else r[h]
                    for h in header])  # fmt: skip
    atomic_write_text(out / "table1.csv", buf.getvalue())
    md = ["# Zero-shot classification (CLIP-Mamba report, Table 1)", "",
          "Scores in % with the report's metric per dataset (mean per-class accuracy: Aircraft, Pets, "
          "Caltech-101, Flowers; (top-1 + top-5) / 2: Kinetics700; ROC-AUC: HatefulMemes; top-1 otherwise). "
          "`published`: the report's numbers; `diff`: ours - published; `average`: over the Table 1 columns "
          "we evaluated (`n_table1`), the same columns for the published row.", ""]  # fmt: skip
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        signed = r["row"] == "diff"
        cells = [r[h] if h in ("model", "row") else _fmt(r.get(h), signed and h != "n_table1") for h in header]
        md.append("| " + " | ".join(c if c != "" else "-" for c in cells) + " |")
    atomic_write_text(out / "table1.md", "\n".join(md) + "\n")
    plot(out, header, rows)
    return {k: str(out / f"table1.{k}") for k in ("csv", "md", "png")}


def plot(out, header: List[str], rows: List[Dict]) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [h for h in header if h not in ("model", "row", "params_m", "average", "n_table1")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(16, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
    ours = [r for r in rows if r["row"] == "ours"]
    pub = {r["model"]: r for r in rows if r["row"] == "published"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(ours))
    for i, r in enumerate(ours):
        c = colors[i % len(colors)]
        xs = [j + (i - (len(ours) - 1) / 2) * width for j in range(len(cols))]
        a1.scatter(xs, [r.get(k, math.nan) for k in cols], color=c, marker="o", label=f"{r['model']} (ours)", zorder=3)
        if r["model"] in pub:
            p = pub[r["model"]]
            a1.scatter(xs, [p.get(k, math.nan) for k in cols], facecolors="none", edgecolors=c, marker="s",
                       label=f"{r['model']} (published)", zorder=2)  # fmt: skip
    a1.set_xticks(range(len(cols)))
    a1.set_xticklabels(cols, rotation=60, ha="right", fontsize=8)
    a1.set_ylabel("zero-shot score (%)")
    a1.set_title("Per dataset: ours (filled) vs published (hollow)")
    a1.grid(axis="y", alpha=0.3)
    a1.legend(fontsize=7, loc="upper right")
    pub_scores, pub_params = published()
    mid = math.sqrt(min(pub_params.values()) * max(pub_params.values()))  # log-scale middle
    for m, s in pub_scores.items():
        avg = _mean([s[c] for c in COLUMNS])
        a2.scatter(pub_params[m], avg, facecolors="none", edgecolors="grey", marker="s")
        right = pub_params[m] > mid  # labels of the right half point left, so none leaves the axes
        a2.annotate(f"{m} (pub.)", (pub_params[m], avg), fontsize=7, color="grey", xytext=(-4 if right else 4, 3),
                    textcoords="offset points", ha="right" if right else "left")  # fmt: skip
    for i, r in enumerate(ours):
        if r.get("params_m") is None or r.get("average") is None:
            continue
        a2.scatter(r["params_m"], r["average"], color=colors[i % len(colors)], marker="o", zorder=3)
        right = r["params_m"] > mid
        a2.annotate(f"{r['model']} (n={r['n_table1']})", (r["params_m"], r["average"]), fontsize=7,
                    xytext=(-4 if right else 4, -9), textcoords="offset points",
                    ha="right" if right else "left")  # fmt: skip
    a2.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    a2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.xaxis.set_minor_formatter(NullFormatter())
    a2.set_xlabel("image trunk parameters (M)")
    a2.set_ylabel("average score (%)")
    a2.set_title("Average over Table 1 sets vs trunk size")
    a2.grid(alpha=0.3)
    a2.margins(x=0.12)
    fig.tight_layout()
    path = Path(out) / "table1.png"
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
