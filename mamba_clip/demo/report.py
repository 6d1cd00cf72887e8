"""The demo's report: ``report.json``, the CSVs behind its tables, figures, and ``report.md`` with a few
sentences computed from the numbers (nothing in the text is fixed in advance)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, List, Optional

from mamba_clip.fileio import atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(path: Path, curves: Dict[str, List[float]]) -> None:
    """Training loss against step, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("CLIP contrastive loss")
    ax.set_title("Stock open_clip trainer on handwritten digits (CPU)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _csv(rows: List[Dict], header: List[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def hessian_models(report: Dict) -> Dict[str, Dict]:
    return {m: r for m, r in report.get("hessian", {}).items() if isinstance(r, dict) and "eigenvalues" in r}


def zeroshot_models(report: Dict) -> Dict[str, Dict]:
    return {m: r for m, r in report.get("zeroshot", {}).items() if isinstance(r, dict) and "acc1" in r}


def tables(report: Dict) -> Dict[str, List[Dict]]:
    """The report's tables as lists of rows (also written as CSVs)."""
    out: Dict[str, List[Dict]] = {}
    train = report.get("train", {}).get("models", {})
    if train:
        out["training"] = [{
            "model": m, "image_tower_params": r["params"]["image_tower"], "total_params": r["params"]["total"],
            "steps": r["steps"], "loss_first": round(r["loss_first"], 4), "loss_last": round(r["loss_last"], 4),
            "seconds_per_step": round(r["seconds_per_step_median"], 3), "train_seconds": round(r["seconds_total"], 1),
        } for m, r in train.items()]  # fmt: skip
    zs = zeroshot_models(report)
    if zs:
        out["zeroshot"] = [{"model": m, "acc1": round(r["acc1"], 4), "acc5": None if r.get("acc5") is None
                            else round(r["acc5"], 4), "n_images": r["n_images"]} for m, r in zs.items()]
    ood = report.get("ood", {}).get("accuracy", {})
    if ood:
        rows = []
        for m, per in ood.items():
            for d, conds in per.items():
                rows += [{"model": m, "dataset": d, "condition": c, "accuracy": round(a, 4)} for c, a in conds.items()]
        out["ood"] = rows
    hs = hessian_models(report)
    if hs:
        out["hessian"] = [{"model": m, "n_eigenvalues": len(r["eigenvalues"]), "negative": r["negative"],
                           "max_abs": r["max_abs"], "max": max(r["eigenvalues"]), "min": min(r["eigenvalues"])}
                          for m, r in hs.items()]  # fmt: skip
    return out


def findings(report: Dict) -> List[str]:
    """Sentences stating what the numbers show, each computed from them."""
    s: List[str] = []
    zs = zeroshot_models(report)
    if len(zs) == 1:
        (m, r), = zs.items()
        s.append(f"Zero-shot top-1 on the held-out digits: {r['acc1'] * 100:.1f}% for {m}, against 10.0% chance.")
    elif zs:
        ranked = sorted(zs.items(), key=lambda kv: -kv[1]["acc1"])
        best, worst = ranked[0], ranked[-1]
        line = (f"Zero-shot top-1 on the held-out digits ranges from {worst[1]['acc1'] * 100:.1f}% ({worst[0]}) to "
                f"{best[1]['acc1'] * 100:.1f}% ({best[0]}), against 10.0% chance")
        gap = (best[1]["acc1"] - worst[1]["acc1"]) * 100
        line += "; the models are within 2 points of each other." if gap < 2 else f", a gap of {gap:.1f} points."
        s.append(line)
    train = report.get("train", {}).get("models", {})
    if len(train) == 1:
        (m, r), = train.items()
        s.append(f"A training step of {m} ({r['params']['image_tower'] / 1e6:.2f}M image-tower parameters) took "
                 f"{r['seconds_per_step_median']:.2f} s on this CPU.")
    elif train:
        fastest = min(train.items(), key=lambda kv: kv[1]["seconds_per_step_median"])
        slowest = max(train.items(), key=lambda kv: kv[1]["seconds_per_step_median"])
        s.append(f"With image towers of {min(r['params']['image_tower'] for r in train.values()) / 1e6:.2f}M to "
                 f"{max(r['params']['image_tower'] for r in train.values()) / 1e6:.2f}M parameters, a training step "
                 f"took {fastest[1]['seconds_per_step_median']:.2f} s ({fastest[0]}) to "
                 f"{slowest[1]['seconds_per_step_median']:.2f} s ({slowest[0]}) on this CPU.")
    ood = report.get("ood", {}).get("accuracy", {})
    if ood:
        means = {m: sum(sum(c.values()) / len(c) for c in per.values()) / len(per) for m, per in ood.items()}
        rob = max(means, key=means.get)
        others = ", ".join(f"{m} {v * 100:.1f}%" for m, v in means.items() if m != rob)
        s.append(f"Averaged over every manipulation and condition, {rob} keeps the highest accuracy "
                 f"({means[rob] * 100:.1f}%{'; ' + others if others else ''}).")
        for d in next(iter(ood.values())):
            hardest = {m: list(per[d].items())[-1] for m, per in ood.items() if d in per}
            cond = next(iter(hardest.values()))[0]
            worst = min(hardest, key=lambda m: hardest[m][1])
            best = max(hardest, key=lambda m: hardest[m][1])
            if hardest[best][1] - hardest[worst][1] >= 0.1:
                s.append(f"At the strongest {d} condition ({cond}) {best} scores {hardest[best][1] * 100:.0f}% and "
                         f"{worst} {hardest[worst][1] * 100:.0f}%.")
    hs = hessian_models(report)
    if hs:
        parts = [f"{m}: {r['negative']} of {len(r['eigenvalues'])} negative, largest |lambda| {r['max_abs']:.3g}"
                 for m, r in hs.items()]
        sharpest = max(hs, key=lambda m: hs[m]["max_abs"])
        most_neg = max(hs, key=lambda m: hs[m]["negative"] / max(1, len(hs[m]["eigenvalues"])))
        line = "Hessian top eigenvalues of the zero-shot loss (image tower): " + "; ".join(parts) + "."
        if len(hs) > 1:
            line += (f" The sharpest loss surface is {sharpest}'s; the largest share of negative eigenvalues "
                     f"(non-convexity) is {most_neg}'s.")
        s.append(line)
    return s


def _md_table(rows: List[Dict], header: List[str]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = []
        for h in header:
            v = r.get(h)
            cells.append(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


REPEATABILITY = ("The same settings give the same numbers on one machine; another CPU model or torch build "
                 "dispatches other float kernels, so the trained models differ a little: zero-shot accuracies by "
                 "a few tenths of a point, Hessian eigenvalues and timings more.")


def environment_line(env: Dict) -> str:
    """``report["environment"]`` in one line: CPU, its torch kernel level, cores, torch, load."""
    return (f"{env.get('cpu')} ({env.get('machine')}, torch kernels {env.get('cpu_capability')}, "
            f"{env.get('cpu_count')} cores), torch {env.get('torch')}, mamba_clip {env.get('mamba_clip')}, "
            f"load {env.get('loadavg_1min_at_start')} at the start")


def render_markdown(report: Dict, tabs: Optional[Dict[str, List[Dict]]] = None) -> str:
    tabs = tabs if tabs is not None else tables(report)
    settings = report.get("settings", {})
    lines = ["# mamba_clip demo: the CLIP-Mamba study in miniature", ""]
    if settings:
        lines += [f"Settings: seed {settings.get('seed')}, {settings.get('epochs')} epochs, batch "
                  f"{settings.get('batch_size')}, {settings.get('image_size')} px, models "
                  f"{', '.join(settings.get('models', []))}{' (--quick)' if settings.get('quick') else ''}.", ""]
    env = report.get("environment")
    if env:
        lines += [f"Run on: {environment_line(env)}. {REPEATABILITY}", ""]
    found = findings(report)
    if found:
        lines += ["## What the numbers show", ""] + [f"- {x}" for x in found] + [""]
    if "scan" in report:
        lines += ["## Selective-scan backends vs the sequential reference", "",
                  "| backend | max rel. error | ms |", "|---|---|---|"]
        for b, r in report["scan"]["backends"].items():
            lines.append(f"| {b} | {r['max_rel_error_vs_ref']:.1e} | {r['seconds'] * 1e3:.1f} |")
        lines.append("")
    if "towers" in report:
        lines += ["## CLIP-Mamba image towers", "", "| model | trunk params | release keys matched |", "|---|---|---|"]
        reasons = set()
        for m, r in report["towers"].items():
            if isinstance(r, dict) and "trunk_params" in r:
                if "release_keys" in r:
                    keys = f"{r['matching_keys']}/{r['release_keys']}"
                else:
                    keys = "n/a"
                    reasons.add(r.get("release_keys_source") or "no release key list was found (run before the "
                                "key lists shipped with the package: rerun with --force)")
                lines.append(f"| {m} | {r['trunk_params']:,} | {keys} |")
        sources = {r.get("release_keys_source") for r in report["towers"].values() if isinstance(r, dict)
                   and "release_keys" in r}
        if sources:
            lines.append(f"\nKey lists from: {', '.join(sorted(s for s in sources if s))}.")
        for reason in sorted(reasons):
            lines.append(f"\nn/a: {reason}.")
        lines.append("")
    if "data" in report:
        m = report["data"]["manifest"]
        lines += ["## Data", "", f"scikit-learn's handwritten digits: {report['data']['n_train_used']} training "
                  f"images with captions, {m['n_test']} held out (stratified, seed {m['settings']['seed']}), "
                  f"{m['settings']['size']} px.", ""]
    if "training" in tabs:
        lines += ["## Training (stock `open_clip_train.main`, same budget, schedule and seed)", ""]
        lines += _md_table(tabs["training"], list(tabs["training"][0])) + ["", "![loss](train_loss.png)", ""]
    if "zeroshot" in tabs:
        lines += ["## Zero-shot classification of the held-out digits (`mamba-clip zeroshot`)", ""]
        lines += _md_table(tabs["zeroshot"], ["model", "acc1", "acc5", "n_images"]) + [""]
    if "ood" in tabs:
        ood = report["ood"]
        lines += [f"## OOD: model-vs-human manipulations ({ood['n_images']} held-out digits per condition)", ""]
        models = list(ood["accuracy"])
        lines += ["| dataset | condition | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        for d in ood["datasets"]:
            conds = list(ood["accuracy"][models[0]].get(d, {}))
            for c in conds:
                lines.append(f"| {d} | {c} | " + " | ".join(f"{ood['accuracy'][m][d][c]:.3f}" for m in models) + " |")
        lines += ["", "![figure 2](ood_figure2.png)", ""]
    if "hessian" in tabs:
        h = report["hessian"]["settings"]
        lines += [f"## Hessian spectra (top-{h['k']} per batch of {h['batch_size']}, {h['n_samples']} held-out "
                  f"digits, zero-shot loss, image-tower parameters, {h.get('method', 'power')} method)", ""]
        lines += _md_table(tabs["hessian"], ["model", "n_eigenvalues", "negative", "max_abs", "max", "min"])
        lines += ["", "![figure 3](hessian_spectra.png)", ""]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: Dict) -> Path:
    """``report.json``, one CSV per table and ``report.md`` under ``out`` (atomically); returns the .md."""
    import json

    tabs = tables(report)
    for name, rows in tabs.items():
        atomic_write_text(out / f"{name}.csv", _csv(rows, list(rows[0])))
    summary = dict(report)
    summary["findings"] = findings(report)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2))
    md = out / "report.md"
    atomic_write_text(md, render_markdown(report, tabs))
    return md
