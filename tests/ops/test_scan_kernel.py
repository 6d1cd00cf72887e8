"""The C kernel's build cache, its build-failure path and torch.compile compatibility."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from _scan_helpers import assert_compiled_matches_eager, make_inputs, max_rel_err

from mamba_clip.ops import scan_cpu, selective_scan

ss_mod = importlib.import_module("mamba_clip.ops.selective_scan")

PROBE = r"""
import json, os, torch
from mamba_clip.ops import scan_cpu, selective_scan
lib = scan_cpu.load_kernel()
p = scan_cpu.kernel_path()
u = torch.randn(1, 2, 5); A = -torch.ones(2, 3); B = torch.randn(1, 3, 5)
y_cpu = selective_scan(u, u.abs(), A, B, B, backend="cpu")
err = (y_cpu - selective_scan(u, u.abs(), A, B, B, backend="ref")).abs().max()
print(json.dumps({"builds": scan_cpu.BUILDS, "path": str(p), "mtime": os.stat(p).st_mtime_ns,
                  "err": err.item()}))
"""


def _probe(cache):
    env = dict(os.environ, MAMBA_CLIP_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cache_reused_and_corrupt_cache_rebuilt(tmp_path):
    first = _probe(tmp_path)
    assert first["builds"] == 1 and first["path"].startswith(str(tmp_path)) and first["err"] < 1e-5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic: no temporaries left
    second = _probe(tmp_path)
    assert second["builds"] == 0 and second["mtime"] == first["mtime"] and second["path"] == first["path"]
    with open(first["path"], "wb") as f:
        f.write(b"not an ELF file")
    third = _probe(tmp_path)
    assert third["builds"] == 1 and third["err"] < 1e-5


def test_build_failure_is_clear_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_cpu, "_lib", None)
    monkeypatch.setattr(scan_cpu, "_error", None)
    monkeypatch.setattr(ss_mod, "_warned_cpu_fallback", False)
    monkeypatch.setenv("MAMBA_CLIP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "cc -fno-such-option-for-the-test")
    with pytest.raises(scan_cpu.KernelBuildError, match="-fno-such-option-for-the-test(.|\n)*unrecognized"):
        scan_cpu.load_kernel()
    inp = make_inputs(1, 3, 8, 2)
    with pytest.raises(RuntimeError, match="backend 'cpu' is unavailable.*fno-such-option"):
        selective_scan(**inp, backend="cpu")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = selective_scan(**inp)
        selective_scan(**inp)
    msgs = [str(x.message) for x in w if "falling back to the 'torch' backend" in str(x.message)]
    assert len(msgs) == 1  # warned once
    assert max_rel_err(y, selective_scan(**inp, backend="ref")) <= 1e-5


def test_torch_compile_treats_kernel_as_opaque_op():
    inp = make_inputs(2, 4, 9, 3, 2)

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="cpu")

    assert_compiled_matches_eager(f, inp)


@pytest.mark.parametrize("N, save", [(3, False), (1, False), (1, True)])
def test_custom_ops_registered_with_fake_impls(N, save):
    """Schema, fake (meta) implementation and autograd registration of the forward op, including the
    N == 1 variant that saves (dt, softplus', states) for the backward."""
    torch.library.opcheck(torch.ops.mamba_clip.scan_cpu_fwd.default, _kernel_args(N, save))


def _kernel_args(N=3, save=False):
    inp = make_inputs(2, 4, 6, N, 2)
    Bt = inp["B"].transpose(-1, -2).contiguous()
    Ct = inp["C"].transpose(-1, -2).contiguous()
    return (inp["u"], inp["delta"], inp["A"], Bt, Ct, inp["D"], inp["z"], inp["delta_bias"], True, save)


def test_scratch_accounting_is_small():
    """Forward scratch is per thread, O(L) or O(L + N): it does not grow with batch or D, so no
    (batch, D, L, N) tensor is built."""
    for N in (1, 16):
        small = scan_cpu.scratch_bytes(1, 8, 3136, N, 1)
        assert small == scan_cpu.scratch_bytes(64, 4096, 3136, N, 4)
        assert small <= torch.get_num_threads() * 4 * (41 * 3136 + N)
    # Backward: per-thread O(L * N) recompute scratch plus private dB/dC copies, no batch * D factor.
    assert scan_cpu.scratch_bytes(1, 384, 784, 64, 1, backward=True) == \
        scan_cpu.scratch_bytes(1, 768, 784, 64, 1, backward=True)


def test_fork_child_after_parallel_use_does_not_hang():
    """GNU libgomp's thread pool does not survive fork(); the kernel must run single-threaded in the
    child instead of hanging."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork() on this platform")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inp = make_inputs(2, 16, 64, 1, 4)
        y = selective_scan(**inp, delta_softplus=True, backend="cpu")  # starts the pool
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            y_child = pool.apply_async(_child_scan, (inp,)).get(timeout=120)
    finally:
        torch.set_num_threads(old)
    assert max_rel_err(y_child, y) <= 1e-6


def _child_scan(inp):
    return selective_scan(**inp, delta_softplus=True, backend="cpu")


def test_forward_extra_bytes_accounting():
    inp = make_inputs(2, 8, 50, 1, 4, dtype=torch.float32)
    base = 2 * 8 * 50 * 4 + 2 * 8 * 1 * 4 + scan_cpu.scratch_bytes(2, 8, 50, 1, 4)
    assert scan_cpu.forward_extra_bytes(**inp) == base  # N == 1: no copies of B, C
    inp16 = make_inputs(2, 8, 50, 16, None)
    bc = 2 * 2 * 16 * 50 * 4  # transposed float32 copies of B and C
    expected = bc + 2 * 8 * 50 * 4 + 2 * 8 * 16 * 4 + scan_cpu.scratch_bytes(2, 8, 50, 16, 1)
    assert scan_cpu.forward_extra_bytes(**inp16) == expected


@pytest.mark.parametrize("N", [1, 8])
def test_backward_is_bitwise_reproducible(N):
    """Same inputs, same thread count: bit-identical gradients in every run (the per-thread dB/dC
    partial sums cover a fixed set of channels), so a seeded training run repeats exactly."""
    from mamba_clip.ops import selective_scan

    torch.set_num_threads(2)
    inp = make_inputs(3, 96, 200, N, G=2)
    names = ("u", "delta", "B", "C", "D", "delta_bias")
    grads = []
    for _ in range(6):
        leaf = {k: (v.detach().clone().requires_grad_() if k in names else v) for k, v in inp.items()}
        y = selective_scan(**leaf, delta_softplus=True, backend="cpu")
        y.backward(torch.ones_like(y))
        grads.append([leaf[k].grad.clone() for k in names])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
