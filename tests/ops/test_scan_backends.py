"""Every selective-scan backend against the sequential oracle ("ref"): outputs, last state and the
gradient of every input, max relative error <= 1e-4 in float32."""

from __future__ import annotations

import pytest
import torch
from _scan_helpers import make_inputs, max_rel_err
from _scan_helpers import run_with_grads as _run

from mamba_clip.ops import scan_torch, selective_scan

TOL = 1e-4
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

# (batch, dim, L, N, G, z, delta_bias, softplus): covers N in {1, 16, 64}, L in {1, 7, 300}, batch 1
# and 3, grouped (G) and ungrouped (None) B/C, with and without z, delta_bias and softplus.
GRID = [
    (1, 4, 1, 16, None, True, True, True),
    (3, 4, 7, 1, None, False, False, False),
    (3, 6, 300, 16, 2, True, True, True),
    (1, 8, 300, 1, 4, True, False, True),
    (3, 4, 300, 64, None, False, True, False),
    (1, 6, 7, 64, 3, True, False, True),
    (3, 4, 1, 1, 4, False, True, True),
    (1, 4, 300, 16, 1, False, False, False),
]


@pytest.fixture(params=["torch-chunked", "torch-stepwise", "cpu"])
def backend(request, monkeypatch):
    """The fast backends; "torch" in each of its two schedules (STEPWISE_MIN moved to force one)."""
    if request.param.startswith("torch"):
        monkeypatch.setattr(scan_torch, "STEPWISE_MIN", 0 if request.param.endswith("stepwise") else 1 << 62)
        return "torch"
    return request.param


@pytest.mark.parametrize("case", GRID, ids=lambda c: "b{}-d{}-L{}-N{}-G{}-z{:d}-bias{:d}-sp{:d}".format(*c))
def test_backend_matches_ref(backend, case):
    batch, dim, L, N, G, z, bias, sp = case
    inp = make_inputs(batch, dim, L, N, G, z=z, bias=bias)
    y_ref, last_ref, g_ref = _run("ref", inp, sp)
    y, last, g = _run(backend, inp, sp)
    assert y.shape == (batch, dim, L) and y.dtype == torch.float32
    assert last.shape == (batch, dim, N)
    assert max_rel_err(y, y_ref) <= TOL
    assert max_rel_err(last, last_ref) <= TOL
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].shape == inp[k].shape, k
        assert max_rel_err(g[k], g_ref[k]) <= TOL, (k, max_rel_err(g[k], g_ref[k]))


@pytest.mark.parametrize("backend", ["torch", "cpu", "ref"])
def test_bf16_inputs(backend):
    inp = make_inputs(2, 4, 50, 16, 2, dtype=torch.bfloat16)
    y, last, g = _run(backend, inp, True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    # Oracle: the same bf16 values, upcast, computed in float32.
    y32, last32, g32 = _run("ref", {k: (v.float() if v is not None else None) for k, v in inp.items()}, True)
    assert max_rel_err(y, y32) <= 1e-2  # bf16 rounding of the output only
    assert max_rel_err(last, last32) <= 1e-4
    for k, v in g.items():
        assert v.dtype == torch.bfloat16, k
        assert max_rel_err(v, g32[k]) <= 3e-2, k


def test_no_last_state_returns_tensor():
    inp = make_inputs(1, 4, 9, 4)
    for backend in ("ref", "torch", "cpu"):
        y = selective_scan(**inp, backend=backend)
        assert isinstance(y, torch.Tensor) and y.shape == (1, 4, 9)


def test_chunk_size_does_not_change_torch_result():
    from mamba_clip.ops import selective_scan_torch

    inp = make_inputs(2, 4, 37, 8, 2)
    ys = [selective_scan_torch(**inp, delta_softplus=True, chunk_size=c, schedule="chunked")
          for c in (1, 5, 37, 100)]
    ys.append(selective_scan_torch(**inp, delta_softplus=True, schedule="stepwise"))
    for y in ys[1:]:
        assert max_rel_err(y, ys[0]) <= 1e-5
    with pytest.raises(ValueError, match="schedule"):
        selective_scan_torch(**inp, schedule="fast")


def test_cpu_kernel_multithread_equals_single_thread():
    inp = make_inputs(3, 8, 64, 16, 2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, l1, g1 = _run("cpu", inp, True)
        torch.set_num_threads(2)
        y2, l2, g2 = _run("cpu", inp, True)
    finally:
        torch.set_num_threads(old)
    assert max_rel_err(y2, y1) <= 1e-6 and max_rel_err(l2, l1) <= 1e-6
    for k in g1:
        assert max_rel_err(g2[k], g1[k]) <= 1e-5, k


def test_torch_n1_mixed_group_counts_match_ref():
    """B and C with different group counts (4 and 1): the N == 1 path of "torch" works on channel
    blocks that lie inside one group of each."""
    inp = make_inputs(2, 8, 37, 1, 4)
    inp["C"] = inp["C"][:, :1].clone()
    res = {}
    for bk in ("ref", "torch"):
        lv = {k: v.clone().requires_grad_() for k, v in inp.items()}
        y = selective_scan(**lv, delta_softplus=True, backend=bk)
        y.square().sum().backward()
        res[bk] = (y, {k: v.grad for k, v in lv.items()})
    assert max_rel_err(res["torch"][0], res["ref"][0]) <= 1e-4
    for k in inp:
        assert max_rel_err(res["torch"][1][k], res["ref"][1][k]) <= 1e-4, k


@pytest.mark.parametrize("N", [1, 4])
def test_cpu_mixed_group_counts_match_ref(N):
    """B with 4 groups and C with 1: the C kernel takes one group count, so both are expanded."""
    inp = make_inputs(2, 8, 37, N, 4)
    inp["C"] = inp["C"][:, :1].clone()
    res = {}
    for bk in ("ref", "cpu"):
        lv = {k: v.clone().requires_grad_() for k, v in inp.items()}
        y = selective_scan(**lv, delta_softplus=True, backend=bk)
        y.square().sum().backward()
        res[bk] = (y, {k: v.grad for k, v in lv.items()})
    assert max_rel_err(res["cpu"][0], res["ref"][0]) <= 1e-4
    for k in inp:
        assert max_rel_err(res["cpu"][1][k], res["ref"][1][k]) <= 1e-4, k


@pytest.mark.parametrize("L", [1, 2])
def test_every_input_gets_a_gradient(backend, L):
    """No input is left out of the graph (a None grad is an unused parameter to DDP), even for L == 1
    where the first decay multiplies a zero state."""
    inp = make_inputs(1, 4, L, 16, None, z=True, bias=True, seed=3)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    y.sum().backward()
    missing = [k for k, v in leaves.items() if v.grad is None]
    assert not missing, f"no gradient for {missing} (L={L})"


def _torch_matches_ref(inp, **kw):
    """selective_scan_torch(**kw) against "ref": output, last state and every input's gradient."""
    y_ref, last_ref, g_ref = _run("ref", inp, True)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inp.items()}
    y, last = scan_torch.selective_scan_torch(**leaves, delta_softplus=True, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    ((y * gy).sum() + (last * gl).sum()).backward()
    assert max_rel_err(y.detach(), y_ref) <= TOL and max_rel_err(last.detach(), last_ref) <= TOL
    for k, v in leaves.items():
        assert max_rel_err(v.grad, g_ref[k]) <= TOL, k


@pytest.mark.parametrize("rows", [1, 3, 256])
@pytest.mark.parametrize("L,chunk", [(37, 5), (49, 7), (300, None), (8, 1)])
def test_torch_n1_row_blocks_and_padding_match_ref(rows, L, chunk, monkeypatch):
    """The N == 1 path splits channels into row blocks (one row included: an R == 1 block once
    aliased a buffer) and pads L to whole chunks; padded steps must not move the state, the bias
    gradient must not see them, and D / bias / softplus run inside the block loop."""
    monkeypatch.setattr(scan_torch, "ROWS_PER_BLOCK", rows)
    monkeypatch.setattr(scan_torch, "STEPWISE_MIN", 1 << 62)
    _torch_matches_ref(make_inputs(2, 8, L, 1, 4, z=True, bias=True), chunk_size=chunk)


@pytest.mark.parametrize("block_bytes", [1, 4096, 1 << 21])
def test_torch_stepwise_time_blocks_match_ref(block_bytes, monkeypatch):
    """The stepwise path runs time in blocks (one step per block up to the whole sequence), saving
    only block-start states and recomputing each block in the backward."""
    monkeypatch.setattr(scan_torch, "BLOCK_BYTES", block_bytes)
    _torch_matches_ref(make_inputs(2, 6, 41, 16, 3, z=True, bias=True), schedule="stepwise")
