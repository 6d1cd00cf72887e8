"""Write ``docs/demo_results.md`` from a demo run's ``report.json``, so the numbers the docs quote are
the numbers a run produced (they cannot drift from the code).

    python docs/_generate.py [DEMO_OUT]      # default demo_out (what `make demo` writes); `make docs`

Quotes: the command and settings, each step's wall time, training seconds per step, zero-shot top-1
with the number of held-out digits, the OOD images per condition, and the Hessian counts.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

DOCS = Path(__file__).resolve().parent
STEPS = ("scan", "towers", "data", "train", "zeroshot", "ood", "hessian")


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def render(report: Dict, source: str) -> str:
    st = report.get("settings", {})
    quick = bool(st.get("quick"))
    cmd = "mamba-clip demo --quick" if quick else "make demo"
    steps = {s: report[s].get("step_seconds") for s in STEPS if isinstance(report.get(s), dict)}
    total = sum(v for v in steps.values() if v)
    lines: List[str] = [
        "# Demo results (generated)",
        "",
        f"Written by `python docs/_generate.py` from `{source}` on {time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, {platform.system()}); do not edit by hand. Command: `{cmd}` "
        f"(seed {st.get('seed')}, {st.get('epochs')} epochs, {st.get('image_size')} px"
        f"{', a sliver of the data: a smoke test, not the study' if quick else ''}).",
        "",
    ]
    env = report.get("environment")
    if env:
        from mamba_clip.demo.report import REPEATABILITY, environment_line

        lines += [f"Run on {environment_line(env)}. {REPEATABILITY}", ""]
    lines += [
        f"Wall time of the steps: {_minutes(total)} in all ("
        + ", ".join(f"{s} {_minutes(v)}" for s, v in steps.items() if v) + ").",
        "",
    ]
    train = report.get("train", {}).get("models", {})
    zs = report.get("zeroshot", {})
    models = [m for m in st.get("models", []) if m in zs or m in train]
    if models:
        lines += ["| model | image-tower params | s / training step | zero-shot top-1 | held-out digits |",
                  "|---|---|---|---|---|"]
        for m in models:
            t, z = train.get(m, {}), zs.get(m, {})
            params = t.get("params", {}).get("image_tower")
            sps = t.get("seconds_per_step_median")
            acc = z.get("acc1")
            lines.append(f"| {m} | {f'{params / 1e6:.2f}M' if params else '-'} | {f'{sps:.2f}' if sps else '-'} | "
                         f"{f'{acc * 100:.1f}%' if acc is not None else '-'} | {z.get('n_images', '-')} |")
        lines.append("")
    ood = report.get("ood")
    if isinstance(ood, dict) and "n_images" in ood:
        lines += [f"OOD step: {ood['n_images']} held-out digits per condition, manipulations "
                  f"{', '.join(ood.get('datasets', []))}.", ""]
    hs = report.get("hessian", {})
    if isinstance(hs, dict) and "settings" in hs:
        h = hs["settings"]
        parts = [f"{m} {r['negative']} of {len(r['eigenvalues'])} negative" for m, r in hs.items()
                 if isinstance(r, dict) and "eigenvalues" in r]
        lines += [f"Hessian step: top-{h['k']} per batch of {h['batch_size']}, {h['n_samples']} digits; "
                  + "; ".join(parts) + ".", ""]
    findings = report.get("findings") or []
    if findings:
        lines += ["What the report says, computed from these numbers:", ""] + [f"- {f}" for f in findings] + [""]
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    out = Path(argv[0] if argv else "demo_out")
    path = out / "report.json"
    if not path.is_file():
        print(f"error: {path} not found: run `make demo` (or mamba-clip demo --out {out}) first", file=sys.stderr)
        return 2
    target = DOCS / "demo_results.md"
    target.write_text(render(json.loads(path.read_text()), str(out / "report.json")))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
