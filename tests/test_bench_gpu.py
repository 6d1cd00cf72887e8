"""benchmarks/bench_gpu.py off the GPU: its bytes accounting, target checks, --help, and the clear
refusal on a machine without CUDA (the timing runs themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scan_bytes(bench):
    # batch 2, D 3, N 4, L 5, G 1, fp32: u/delta/y/z slabs 120 B each, B + C 320 B
    assert bench.scan_bytes(2, 3, 4, 5, 1, z=False, backward=False) == 3 * 120 + 320
    assert bench.scan_bytes(2, 3, 4, 5, 1, z=True, backward=False) == 4 * 120 + 320
    # backward re-reads u, delta, B, C, (z) and dy, writes du, ddelta, dB, dC, (dz)
    assert bench.scan_bytes(2, 3, 4, 5, 1, z=True) == (4 * 120 + 320) + (4 * 120 + 320) + (3 * 120 + 320)
    assert bench.scan_bytes(2, 3, 4, 5, 1, z=False, elem=2) * 2 == bench.scan_bytes(2, 3, 4, 5, 1, z=False)
    s1 = bench.SCAN_SHAPES["S1"]
    assert s1["batch"] == 64 and bench.scan_bytes(**s1) == 64 * 768 * 3136 * 4 * 8 + 2 * 64 * 4 * 3136 * 4 * 3


def test_check_targets(bench):
    res = {"scan": {"S1": {"triton_vs_torch_fwd_bwd": 6.0, "triton_fraction_of_copy_bw": 0.4},
                    "S2": {"triton_vs_torch_fwd_bwd": 4.0}},
           "train": {"vmamba-s": {"img_per_s": 900.0}, "ViT-B-16": {"img_per_s": 1000.0}}}
    assert bench.check_targets(res) == {"S1_triton_vs_torch_fwd_bwd": True, "S2_triton_vs_torch_fwd_bwd": False,
                                        "S1_copy_bw": False, "vmamba_s_vs_vit_b16": False,
                                        "triton_matches_ref_on_gpu": None, "vmamba-nano_hvp_ratio": None,
                                        "simba-nano_hvp_ratio": None, "vmamba-t220_hvp_ratio": None}
    res["hvp"] = {"vmamba-nano": {"hvp_ratio": 2.5}, "simba-nano": {"hvp_ratio": 3.5}}
    got = bench.check_targets(res)
    assert (got["vmamba-nano_hvp_ratio"], got["simba-nano_hvp_ratio"], got["vmamba-t220_hvp_ratio"]) == \
        (True, False, None)
    assert set(bench.check_targets({}).values()) == {None}


def test_help_and_no_cuda_refusal(bench):
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--quick" in out.stdout
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--quick", "--out", "/nonexistent/bench_gpu.json"])


def test_bench_hvp_runs_on_cpu_tiny(bench):
    """The GPU HVP timing (issue 17) is device-agnostic: a tiny run on the CPU checks its logic."""
    import mamba_clip

    mamba_clip.register()
    res = bench.bench_hvp("vmamba-nano", batch=2, rounds=1, device="cpu", image_size=32)
    assert res["backend"] == "cpu" and res["hvp_s"] > 0 and res["fwd_bwd_s"] > 0
    assert res["hvp_ratio"] == pytest.approx(res["hvp_s"] / res["fwd_bwd_s"])
    assert len(res["raw"]["hvp_s"]) == 1 and set(bench.HVP_MODELS) == {"vmamba-nano", "simba-nano", "vmamba-t220"}
