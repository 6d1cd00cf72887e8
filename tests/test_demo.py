"""``mamba-clip demo --quick`` end to end (the README's first command, on a sliver of the data): every
report file exists and is sane, a rerun resumes, and the same seed gives the same numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_clip.demo import MODELS, run_demo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    out = work / "out"
    # a relative --out, as `make demo` passes it; no shared folder: the key lists ship with the package
    proc = subprocess.run([sys.executable, "-m", "mamba_clip", "demo", "--quick", "--out", "out", "--shared",
                           str(work / "no-shared"), "--no-progress"], capture_output=True, text=True, timeout=1200,
                          cwd=str(work))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # --no-progress: no bar anywhere (ours, the libraries', the stock trainer's subprocess)
    assert "it/s]" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]
    return out, proc.stdout


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_quick_demo_report_files(quick_run):
    out, stdout = quick_run
    assert stdout.rstrip().splitlines()[-1] == f"report: {Path('out') / 'report.md'}"
    report = json.loads((out / "report.json").read_text())
    for m in MODELS:
        assert 0.0 <= report["zeroshot"][m]["acc1"] <= 1.0
        assert report["zeroshot"][m]["n_images"] == report["data"]["manifest"]["n_test"]
        eig = report["hessian"][m]["eigenvalues"]
        assert len(eig) == report["hessian"]["settings"]["k"] and all(abs(v) < 1e6 for v in eig)
        assert sorted(map(abs, eig), reverse=True) == list(map(abs, eig))
        tr = report["train"]["models"][m]
        assert tr["steps"] == 4 and tr["loss_first"] > 0 and tr["seconds_per_step_median"] > 0
        assert 5e5 < tr["params"]["image_tower"] < 2e6
        for per in report["ood"]["accuracy"][m].values():
            assert per and all(0.0 <= a <= 1.0 for a in per.values())
    towers = [r for r in report["towers"].values() if isinstance(r, dict) and "release_keys" in r]
    assert len(towers) == 6 and all(r["matching_keys"] == r["release_keys"] for r in towers)
    assert {r["release_keys_source"] for r in towers} == {"package data"}
    for name in ("train_loss.png", "ood_figure2.png", "hessian_spectra.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    for table in ("training", "zeroshot", "hessian"):
        assert [r["model"] for r in _rows(out / f"{table}.csv")] == list(MODELS)
    assert {r["model"] for r in _rows(out / "ood.csv")} == set(MODELS)
    md = (out / "report.md").read_text()
    assert "## What the numbers show" in md
    for m in MODELS:
        assert f"| {m} |" in md
    assert report["findings"] and any(f"{report['zeroshot'][m]['acc1'] * 100:.1f}%" in report["findings"][0]
                                      for m in MODELS)


def test_quick_demo_resumes_and_repeats(quick_run, tmp_path):
    shared_dir = tmp_path / "no-shared"
    out, _ = quick_run
    before = json.loads((out / "report.json").read_text())
    ckpt = Path(before["train"]["models"]["vit-nano"]["checkpoint"])
    mtime = ckpt.stat().st_mtime_ns
    (out / "zeroshot.json").unlink()  # as if interrupted after training
    again = run_demo(out, quick=True, progress=False, shared=str(shared_dir))
    assert ckpt.stat().st_mtime_ns == mtime  # training was not redone
    for m in MODELS:
        assert again["zeroshot"][m]["acc1"] == before["zeroshot"][m]["acc1"]
    with pytest.raises(ValueError, match="seed"):
        run_demo(out, quick=True, seed=1, progress=False, shared=str(shared_dir))
    # same seed, fresh folder: the same numbers
    fresh = run_demo(tmp_path / "again", steps=["data", "train", "zeroshot"], quick=True, progress=False,
                     shared=str(shared_dir))
    for m in MODELS:
        assert fresh["train"]["models"][m]["losses"] == before["train"]["models"][m]["losses"]
        assert fresh["zeroshot"][m]["acc1"] == before["zeroshot"][m]["acc1"]


def test_demo_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="accepted"):
        run_demo(tmp_path, models=["vit-huge"])
    with pytest.raises(ValueError, match="accepted"):
        run_demo(tmp_path, steps=["nope"])
    with pytest.raises(ValueError, match="eidolonI"):
        run_demo(tmp_path, ood_datasets=["blur"])
