"""Fast checks of the benchmark scripts' logic (no timing runs): the tower benchmark's targets, checks
and report layout on synthetic timings, and the scan-share profiler on a tiny tower."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:  # the scripts import each other as top-level modules
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_towers():
    return _load("bench_towers")


@pytest.fixture(scope="module")
def profile_scan():
    return _load("_profile_scan")


def _run(bench_towers, simba_l_seconds: float, scan_profile=None):
    times = {"ViT-B-16": [1.0, 1.1, 0.9], "vmamba-s": [0.7, 0.8, 0.75], "vmamba-t220": [0.45, 0.5, 0.4],
             "simba-s": [0.6, 0.7, 0.65], "simba-l": [simba_l_seconds] * 3, "vmamba-s@448": [3.0, 3.1, 2.9]}
    results, checks = bench_towers.analyse(times, batch=8)
    run = {"results": results, "checks": checks, "missing_towers": [], "env": {"threads": 1}}
    if scan_profile is not None:
        run["scan_profile"] = scan_profile
    return run


def _child_scan_profile():
    entry = {"seconds_per_call": 2.0, "scan_seconds_per_call": 0.5, "scan_share": 0.25, "scan_calls_per_call": 31,
             "top_ops": [{"op": "mamba_clip::scan_cpu_fwd", "self_cpu_s": 0.5, "share": 0.25, "calls": 31}]}
    return {"wrapped_functions": ["mamba_clip.ops.selective_scan.selective_scan"],
            "towers": {"simba-l": entry, "simba-s": dict(entry, scan_share=0.3)}, "not_timed": ["vmamba-s"],
            "method_params": {"rounds": 3, "prefixes": ["ss2d_"], "registered": ["selective_scan"]}}


def test_simba_l_target_checked(bench_towers):
    assert bench_towers.TARGETS["simba-l"] == 0.5
    results, checks = bench_towers.analyse({"ViT-B-16": [1.0], "simba-l": [1.9]}, batch=8)
    assert checks == {"simba-l": True}
    assert results["simba-l"]["target_speedup"] == 0.5
    assert results["simba-l"]["speedup_vs_ViT-B-16"] == pytest.approx(1 / 1.9)
    _, checks = bench_towers.analyse({"ViT-B-16": [1.0], "simba-l": [2.1]}, batch=8)
    assert checks == {"simba-l": False}


def test_report_has_simba_l_check_and_scan_profile(bench_towers):
    runs = {"1:default": _run(bench_towers, 1.5, _child_scan_profile()), "all:default": _run(bench_towers, 2.5)}
    report = bench_towers.make_report(runs, "1:default", batch=8, rounds=3, command="python bench_towers.py")
    assert report["targets"]["simba-l speedup >="] == 0.5
    assert report["checks"]["simba-l"] is True
    assert set(report["checks"]) == {"vmamba-s", "vmamba-t220", "simba-l", "vmamba-s@448/224"}
    # vmamba-s 1/0.75 = 1.33x, vmamba-t220 1/0.45 = 2.2x, simba-l 0.67x, 448/224 time 3.0/0.75 = 4
    assert report["all_pass"] is True
    assert report["modes"]["all:default"]["checks"]["simba-l"] is False  # 0.4x in the other mode
    summary = report["summary"]["1:default"]
    assert summary["simba-l speedup"] == pytest.approx(1 / 1.5, abs=1e-3)
    assert summary["simba-l scan share"] == 0.25
    assert "simba-l scan share" not in report["summary"]["all:default"]

    sp = report["scan_profile"]
    assert sp["mode"] == "1:default" and sp["threads"] == 1 and sp["batch"] == 8
    assert set(sp["towers"]) == {"simba-l", "simba-s"} and sp["not_timed"] == ["vmamba-s"]
    assert sp["towers"]["simba-l"]["top_ops"][0]["op"] == "mamba_clip::scan_cpu_fwd"
    assert "selective_scan" in sp["method"] and "ss2d_*" in sp["method"]
    assert sp["wrapped_functions"] == ["mamba_clip.ops.selective_scan.selective_scan"]
    assert all("scan_profile" not in run for run in report["modes"].values())
    assert "scan_profile" in runs["1:default"]  # the caller's dicts are left alone


def test_report_simba_l_fail_and_skipped_scan_profile(bench_towers):
    report = bench_towers.make_report({"1:default": _run(bench_towers, 2.5)}, "1:default", batch=8, rounds=3,
                                      command="x")
    assert report["checks"]["simba-l"] is False and report["all_pass"] is False
    assert report["scan_profile"]["skipped"] is True and report["scan_profile"]["towers"] == {}
    assert not any(k.endswith("scan share") for k in report["summary"]["1:default"])


def test_scan_share_on_simba_nano(profile_scan):
    import open_clip

    import mamba_clip.ops

    original = mamba_clip.ops.selective_scan
    tower = open_clip.create_model("simba-nano", pretrained=None).visual.eval()
    x = torch.randn(1, 3, 64, 64)
    res = profile_scan.scan_share(lambda: tower(x), rounds=1, warmup=0)
    assert 0.0 < res["scan_share"] < 1.0
    assert res["scan_calls_per_call"] > 0 and res["scan_state_updates_per_call"] > 0
    assert res["scan_backends"]
    assert res["scan_functions"]["mamba_clip.ops.selective_scan.selective_scan"]["calls_per_call"] == \
        res["scan_calls_per_call"]
    assert mamba_clip.ops.selective_scan is original  # unwrapped again
    ops = profile_scan.top_ops(lambda: tower(x), rows=5)
    assert 0 < len(ops) <= 5 and all(0.0 <= o["share"] <= 1.0 for o in ops)


def test_scan_share_times_a_fused_ss2d_function(profile_scan, monkeypatch):
    """A fused path named ``ss2d_*`` in mamba_clip.ops is timed too; when it calls selective_scan
    itself, its time is counted once."""
    import mamba_clip.ops

    def ss2d_fake(u, delta, A, B, C):
        y = torch.zeros_like(u)
        for _ in range(3):
            y = y + mamba_clip.ops.selective_scan(u, delta, A, B, C, backend="torch")
        return y

    ss2d_fake.__module__, ss2d_fake.__qualname__ = "mamba_clip.ops.fake", "ss2d_fake"
    monkeypatch.setattr(mamba_clip.ops, "ss2d_fake", ss2d_fake, raising=False)
    b, d, n, L = 1, 8, 4, 32
    u, delta = torch.randn(b, d, L), torch.rand(b, d, L)
    A, B, C = -torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L)

    def forward():
        y = mamba_clip.ops.ss2d_fake(u, delta, A, B, C)  # looked up at call time, as a model would
        return y * 2

    assert "mamba_clip.ops.fake.ss2d_fake" in profile_scan.scan_functions()
    res = profile_scan.scan_share(forward, rounds=2, warmup=0)
    fns = res["scan_functions"]
    assert fns["mamba_clip.ops.fake.ss2d_fake"]["calls_per_call"] == 1
    assert fns["mamba_clip.ops.selective_scan.selective_scan"]["calls_per_call"] == 3
    assert res["scan_calls_per_call"] == 3
    # nested scans are inside ss2d_fake's time: not counted a second time
    assert fns["mamba_clip.ops.selective_scan.selective_scan"]["seconds_per_call"] == 0.0
    assert 0.0 < res["scan_share"] <= 1.0
    assert mamba_clip.ops.ss2d_fake is ss2d_fake


def test_busy_and_train_checks(bench_towers):
    """Issue 17: quiet against busy figures (keeps, slowdown) and the training-step targets."""
    quiet = {"ViT-B-16": [1.0, 1.0], "vmamba-s": [0.5, 0.5], "simba-l": [2.0, 2.0]}
    busy = {"ViT-B-16": [1.5, 1.5], "vmamba-s": [0.9, 0.9], "simba-l": [7.0, 7.0]}
    times = {"quiet": quiet, "busy": busy}
    out = bench_towers.analyse_busy(times, times, {"quiet": [1.0], "busy": [2.0]}, batch=8, n_busy=1, train=True)
    vs = out["towers"]["vmamba-s"]
    assert vs["keeps"] == pytest.approx((1.5 / 0.9) / (1.0 / 0.5))  # 0.83
    assert vs["slowdown"] == pytest.approx(1.8)
    assert out["checks"] == {"vmamba-s busy keeps": True, "ViT-B-16 busy slowdown": True,
                             "vmamba-s busy slowdown": True, "simba-l busy slowdown": False}
    _, checks = bench_towers.analyse({"ViT-B-16": [1.0], "simba-l": [2.4]}, batch=8, train=True)
    assert checks == {"simba-l": True}  # 0.42x >= 0.4
    _, checks = bench_towers.analyse({"ViT-B-16": [1.0], "simba-l": [2.6]}, batch=8, train=True)
    assert checks == {"simba-l": False}


def test_busy_processes_stop_and_die(bench_towers):
    import os

    with bench_towers.Busy(1) as busy:
        pid = busy.procs[0].pid
        state = lambda: open(f"/proc/{pid}/stat").read().split()[2]  # noqa: E731
        assert state() == "T"  # started stopped
        busy.run(True)
        assert state() in "RS"
    assert busy.procs[0].poll() is not None
    assert not os.path.exists(f"/proc/{pid}/stat") or state() in "ZX"
