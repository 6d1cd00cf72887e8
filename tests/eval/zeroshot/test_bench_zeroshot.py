"""The zero-shot speed benchmark script runs end to end (tiny settings, vit-nano) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_zeroshot.py"


def test_bench_zeroshot_smoke(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_zeroshot", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("BENCH_TMP", str(tmp_path))
    monkeypatch.setattr(mod, "SHARED", tmp_path / "no-shared")  # synthetic images: no ../shared needed
    out = tmp_path / "bench.json"
    assert mod.main(["--models", "vit-nano", "--rounds", "1", "--per-class", "1", "--batch-size", "8",
                     "--workers", "0", "--modes", "1", "--out", str(out)]) == 0  # fmt: skip
    r = json.loads(out.read_text())["modes"]["threads=1"]["models"]["vit-nano"]
    assert r["images"] == 16 and r["images_per_s"]["bare"] > 0 and r["images_per_s"]["suite"] > 0
    assert r["ratio"] > 0 and r["target"] == 0.85
