"""Start-up cost of the installed autoload hook (issue 3: < 20 ms added to ``python -c pass``).

Builds the wheel, makes two bare venvs that both see this venv's dependencies, installs the wheel into
one of them only, and times ``python -c pass`` (median of many runs, interleaved) in each. Also times
``python -c "import open_clip"`` both ways to show the registration cost paid only by open_clip users.
Writes ``benchmarks/results/bench_startup.json``.

    python benchmarks/bench_startup.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def make_venv(root: Path, wheel: Path | None) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    py = root / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz_dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        # pip byte-compiles on install; do the same so we time what users get
        subprocess.run([str(py), "-m", "compileall", "-q", site], check=True)
    return py


def time_cmd(py: Path, code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(py), "-c", code], check=True, cwd="/")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS / "bench_startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        str(REPO), "-w", str(tmp / "w")], check=True, capture_output=True, cwd=tmp)
        wheel = next((tmp / "w").glob("*.whl"))
        with_pkg = make_venv(tmp / "with", wheel)
        without_pkg = make_venv(tmp / "without", None)
        result = {}
        for label, code, runs in (("pass", "pass", args.runs), ("import_open_clip", "import open_clip", 5)):
            for py in (with_pkg, without_pkg):  # warm the file cache
                time_cmd(py, code)
            a, b = [], []
            for _ in range(runs):
                a.append(time_cmd(with_pkg, code))
                b.append(time_cmd(without_pkg, code))
            result[label] = {
                "with_package_ms": 1e3 * statistics.median(a),
                "without_package_ms": 1e3 * statistics.median(b),
                "added_ms": 1e3 * (statistics.median(a) - statistics.median(b)),
                "runs": runs,
            }
    result["target"] = {"python -c pass added_ms <": 20.0, "met": result["pass"]["added_ms"] < 20.0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
