"""GPU benchmark of the "triton" backend (issue 13): one prepared run on a CUDA machine.

0. Correctness of the Triton kernels on this GPU against the oracles (small shapes, fp32 and bf16).
1. Selective scan forward+backward at the S1 and S2 shapes of ``bench_scan.py`` (S1 with batch 64):
   "triton" against "torch" (and "cuda" only if mamba-ssm's compiled kernel imports), median of timed
   runs after warm-up (the first call includes Triton's JIT compile). Achieved bandwidth = the bytes
   the scan must move at least (:func:`scan_bytes`: every input read once per pass, every output and
   gradient written once) / time, against the card's copy bandwidth measured in the same run
   (:func:`copy_bandwidth`: a large device-to-device tensor copy, read + write bytes / time).
2. Training steps of open_clip models (vmamba-s, simba-l, ViT-B-16): bf16 autocast, batch 128, 224 px,
   random images and tokens, open_clip's ``ClipLoss``, AdamW; images/s over timed steps after warm-up
   steps, and peak allocated memory.

3. Hessian-vector products (issue 17): for vmamba-nano, simba-nano (batch 15) and vmamba-t220 (batch 4)
   at 224 px, fp32, image-tower parameters, zero-shot loss, inside ``second_order_mode`` (the "triton"
   scan, exact under create_graph): one forward+backward, the graph build (forward + create_graph
   backward) and one product on the retained graph, medians over rounds, peak memory of the build and
   of one product, and ``hvp_ratio = hvp_s / fwd_bwd_s`` (:func:`bench_hvp`).

Targets: triton >= 5x torch on forward+backward, >= 50% of the copy bandwidth on S1 forward+backward,
vmamba-s training images/s >= ViT-B-16's, HVP <= 3x forward+backward. Writes JSON (default
``benchmarks/results/bench_gpu.json``).

    PYTHONPATH=. python benchmarks/bench_gpu.py --out $OUT/bench_gpu.json          # ~5 min on an H200
    PYTHONPATH=. python benchmarks/bench_gpu.py --quick --out $OUT/bench_gpu.json  # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCAN_SHAPES = {
    # bench_scan.py's S1 (VMamba-S stage 1) at batch 64, and S2 (SiMBA-L stage 2) as there
    "S1": dict(batch=64, dim=768, N=1, L=3136, G=4, softplus=True, z=False),
    "S2": dict(batch=1, dim=384, N=64, L=784, G=1, softplus=False, z=True),
}
MODELS = ("vmamba-s", "simba-l", "ViT-B-16")
HVP_MODELS = {"vmamba-nano": 15, "simba-nano": 15, "vmamba-t220": 4}  # model: batch
TARGETS = {"triton_vs_torch_fwd_bwd": 5.0, "S1_triton_fwd_bwd_fraction_of_copy_bw": 0.5,
           "vmamba_s_vs_vit_b16_train_img_per_s": 1.0, "hvp_ratio_max": 3.0}


def scan_bytes(batch: int, dim: int, N: int, L: int, G: int, z: bool, elem: int = 4,
               backward: bool = True, **_) -> int:
    """Least bytes a fused scan moves through memory (parameters A, D, delta_bias ignored: O(D N)).

    Forward: read u, delta (batch, D, L), B, C (batch, G, N, L) and z; write y. Backward: read the
    same inputs and dy again; write du, ddelta, dB, dC and dz.
    """
    bdl = batch * dim * L * elem
    bc = 2 * batch * G * N * L * elem
    fwd = 2 * bdl + bc + (bdl if z else 0) + bdl
    if not backward:
        return fwd
    bwd_read = 2 * bdl + bc + (bdl if z else 0) + bdl
    bwd_write = 2 * bdl + bc + (bdl if z else 0)
    return fwd + bwd_read + bwd_write


def check_targets(result: Dict[str, object]) -> Dict[str, Optional[bool]]:
    """Pass/fail of each target from the figures in ``result`` (None where a figure is missing)."""
    scan = result.get("scan", {})
    out: Dict[str, Optional[bool]] = {}
    for s in SCAN_SHAPES:
        r = scan.get(s, {}).get("triton_vs_torch_fwd_bwd")
        out[f"{s}_triton_vs_torch_fwd_bwd"] = None if r is None else r >= TARGETS["triton_vs_torch_fwd_bwd"]
    frac = scan.get("S1", {}).get("triton_fraction_of_copy_bw")
    out["S1_copy_bw"] = None if frac is None else frac >= TARGETS["S1_triton_fwd_bwd_fraction_of_copy_bw"]
    train = result.get("train", {})
    v = train.get("vmamba-s", {}).get("img_per_s")
    b = train.get("ViT-B-16", {}).get("img_per_s")
    out["vmamba_s_vs_vit_b16"] = None if not (v and b) else v / b >= TARGETS["vmamba_s_vs_vit_b16_train_img_per_s"]
    hvp = result.get("hvp", {})
    for name in HVP_MODELS:
        r = hvp.get(name, {}).get("hvp_ratio")
        out[f"{name}_hvp_ratio"] = None if r is None else r <= TARGETS["hvp_ratio_max"]
    corr = result.get("correctness", {}).get("ok")
    out["triton_matches_ref_on_gpu"] = corr
    return out


def _time_cuda(fn: Callable[[], None], warmup: int, runs: int) -> List[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return ts


def copy_bandwidth(nbytes: int = 2 << 30, runs: int = 10) -> float:
    """Device copy bandwidth in bytes/s: read + write of one ``nbytes`` float32 tensor."""
    src = torch.empty(nbytes // 4, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ts = _time_cuda(lambda: dst.copy_(src), 3, runs)
    return 2 * nbytes / statistics.median(ts)


def _scan_inputs(batch, dim, N, L, G, z, **_):
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"

    def normal(*s):
        return torch.randn(*s, device=dev, generator=g)

    return {
        "u": normal(batch, dim, L), "delta": torch.rand(batch, dim, L, device=dev, generator=g) * 0.5 + 0.05,
        "A": -torch.exp(normal(dim, N) * 0.5), "B": normal(batch, G, N, L), "C": normal(batch, G, N, L),
        "D": normal(dim), "z": normal(batch, dim, L) if z else None,
        "delta_bias": torch.rand(dim, device=dev, generator=g) * 0.1,
    }


def bench_scan(shape: str, backends: List[str], runs: int, copy_bw: float) -> Dict[str, object]:
    from mamba_clip.ops import selective_scan

    spec = SCAN_SHAPES[shape]
    inp = _scan_inputs(**spec)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inp.items()}
    gy = torch.randn_like(inp["u"])
    res: Dict[str, object] = {"shape": spec, "bytes_fwd_bwd": scan_bytes(**spec),
                              "bytes_fwd": scan_bytes(**spec, backward=False)}
    for b in backends:
        def fwd(b=b):
            with torch.no_grad():
                selective_scan(**inp, delta_softplus=spec["softplus"], backend=b)

        def fwd_bwd(b=b):
            for v in leaves.values():
                if v is not None:
                    v.grad = None
            selective_scan(**leaves, delta_softplus=spec["softplus"], backend=b).backward(gy)

        try:
            t_f = statistics.median(_time_cuda(fwd, 2, runs))
            t_fb = statistics.median(_time_cuda(fwd_bwd, 2, runs))
            res[b] = {"fwd_s": t_f, "fwd_bwd_s": t_fb, "fwd_bytes_per_s": res["bytes_fwd"] / t_f,
                      "fwd_bwd_bytes_per_s": res["bytes_fwd_bwd"] / t_fb}
        except Exception as exc:  # one failing backend must not hide the others
            res[b] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
        print(shape, b, {k: v for k, v in res[b].items() if k != "traceback"}, flush=True)
    tri, tor = res.get("triton", {}), res.get("torch", {})
    if "fwd_bwd_s" in tri and "fwd_bwd_s" in tor:
        res["triton_vs_torch_fwd_bwd"] = tor["fwd_bwd_s"] / tri["fwd_bwd_s"]
        res["triton_vs_torch_fwd"] = tor["fwd_s"] / tri["fwd_s"]
    if "fwd_bwd_bytes_per_s" in tri:
        res["triton_fraction_of_copy_bw"] = tri["fwd_bwd_bytes_per_s"] / copy_bw
        res["triton_fwd_fraction_of_copy_bw"] = tri["fwd_bytes_per_s"] / copy_bw
    return res


def check_correctness() -> Dict[str, object]:
    """The Triton kernels against the oracles on this GPU (small shapes; CI only runs them under the
    interpreter): scan output, last state and every gradient vs "ref", cross-scan/merge vs their refs."""
    from mamba_clip.ops import selective_scan
    from mamba_clip.ops.cross_scan import cross_merge_ref, cross_scan_ref
    from mamba_clip.ops.cross_scan_triton import cross_merge_triton, cross_scan_triton

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))

    cases = []
    for batch, dim, N, L, G, z, dtype in [(2, 64, 1, 300, 4, False, torch.float32),
                                         (2, 48, 16, 257, 2, True, torch.float32),
                                         (1, 32, 64, 130, 1, True, torch.float32),
                                         (2, 64, 16, 200, 4, True, torch.bfloat16)]:
        inp = _scan_inputs(batch, dim, N, L, G, z)
        inp = {k: (v.to(dtype) if v is not None else None) for k, v in inp.items()}
        res = {}
        for b in ("ref", "triton"):
            lv = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inp.items()}
            y, last = selective_scan(**lv, delta_softplus=True, return_last_state=True, backend=b)
            ((y.float() * torch.linspace(-1, 1, L, device="cuda")).sum() + last.sum()).backward()
            res[b] = (y, last, {k: v.grad for k, v in lv.items() if v is not None})
        errs = {"out": rel(res["triton"][0], res["ref"][0]), "last": rel(res["triton"][1], res["ref"][1])}
        errs.update({f"d{k}": rel(g, res["ref"][2][k]) for k, g in res["triton"][2].items()})
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        cases.append({"shape": [batch, dim, N, L, G, z, str(dtype)], "max_rel": errs,
                      "ok": all(e <= tol for e in errs.values())})
    x = torch.randn(2, 14, 9, 40, device="cuda")
    ys = torch.randn(2, 4, 40, 126, device="cuda")
    cross = {"scan_equal": bool(torch.equal(cross_scan_triton(x, True), cross_scan_ref(x, True))),
             "merge_max_rel": rel(cross_merge_triton(ys, 14, 9, True), cross_merge_ref(ys, 14, 9, True))}
    cross["ok"] = cross["scan_equal"] and cross["merge_max_rel"] <= 1e-6
    return {"scan": cases, "cross": cross, "ok": all(c["ok"] for c in cases) and cross["ok"]}


def bench_train(name: str, batch: int, warmup: int, steps: int) -> Dict[str, object]:
    import open_clip

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = open_clip.create_model(name, device="cuda")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = open_clip.loss.ClipLoss()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    text = torch.randint(0, 49407, (batch, 77), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            img, txt, scale = model(x, text)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()

    try:
        ts = _time_cuda(step, warmup, steps)
        out = {"img_per_s": batch * steps / sum(ts), "step_s": ts,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    except torch.cuda.OutOfMemoryError as exc:
        out = {"error": "out of memory: " + str(exc)[:300]}
    return out  # model and optimizer are freed with this frame


def bench_hvp(name: str, batch: int, rounds: int, device: str = "cuda", image_size: int = 224,
              classes: int = 16) -> Dict[str, object]:
    """HVP cost on ``device`` (see the module docstring, item 3): seconds of one forward+backward, the
    graph build and one product (medians of ``rounds``), ``hvp_ratio``, the scan backend used and the
    peak memory (CUDA) above the model's. Runs on CPU too (the tests do, tiny)."""
    import open_clip

    from mamba_clip.eval.hessian import ZeroShotLoss, select_parameters
    from mamba_clip.eval.hessian.hvp import HVP, second_order_mode
    from mamba_clip.ops import resolve_backend

    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = open_clip.create_model(name, force_image_size=image_size).to(device).float().eval()
    with torch.no_grad():
        dim = model.encode_image(torch.randn(1, 3, image_size, image_size, device=device)).shape[-1]
    protos = torch.nn.functional.normalize(torch.randn(dim, classes, device=device), dim=0)
    loss_fn = ZeroShotLoss(protos, 100.0)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(batch, 3, image_size, image_size, generator=g).to(device),
            torch.randint(0, classes, (batch,), generator=g).to(device))
    params = [p for _, p in select_parameters(model, "image")]
    raw: Dict[str, List[float]] = {"fwd_bwd_s": [], "build_s": [], "hvp_s": [], "build_peak_gib": [],
                                   "hvp_peak_gib": []}
    with second_order_mode(model, params):
        backend = resolve_backend("auto", data[0])
        for r in range(rounds + 1):  # round 0: warm-up (Triton JIT)
            sync()
            t0 = time.perf_counter()
            torch.autograd.grad(loss_fn(model, data), params)
            sync()
            fb = time.perf_counter() - t0
            base = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            hvp = HVP(model, loss_fn, data, params)
            sync()
            build = time.perf_counter() - t0
            build_peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else 0.0
            v = torch.randn(hvp.n, generator=torch.Generator().manual_seed(r)).to(device)
            before = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            hvp(v)
            sync()
            hv = time.perf_counter() - t0
            hvp_peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else 0.0
            del hvp
            if r:
                for k, x in zip(raw, (fb, build, hv, build_peak, hvp_peak)):
                    raw[k].append(x)
    med = {k: statistics.median(v) for k, v in raw.items()}
    return {**med, "hvp_ratio": med["hvp_s"] / med["fwd_bwd_s"], "backend": backend, "batch": batch,
            "image_size": image_size, "rounds": rounds, "n_params": int(sum(p.numel() for p in params)),
            "raw": raw}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs, batch 32 training, 1 warm-up + 2 steps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_gpu.json"))
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-hvp", action="store_true", help="skip the Hessian-vector product timings")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "run it through the device tool on a GPU machine")
    import mamba_clip
    from mamba_clip.ops import available_backends, resolve_backend

    mamba_clip.register()
    runs = 3 if args.quick else 10
    t_start = time.perf_counter()
    result: Dict[str, object] = {
        "benchmark": "triton selective scan and training throughput (issue 13)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "quick": args.quick,
        "targets": TARGETS, "available_backends": available_backends(),
        "auto_on_cuda": resolve_backend("auto", torch.zeros(1, 1, 1, device="cuda")),
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    try:
        result["correctness"] = check_correctness()
    except Exception as exc:
        result["correctness"] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
    print("correctness", json.dumps(result["correctness"])[:3000], flush=True)
    bw = copy_bandwidth(runs=runs)
    result["copy_bandwidth_bytes_per_s"] = bw
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    backends = ["triton", "torch"] + (["cuda"] if "cuda" in result["available_backends"] else [])
    result["scan"] = {s: bench_scan(s, backends, runs, bw) for s in SCAN_SHAPES}
    if not args.skip_train:
        batch, warmup, steps = (32, 1, 2) if args.quick else (128, 2, 5)
        result["train"] = {"batch": batch, "warmup_steps": warmup, "timed_steps": steps, "amp": "bf16"}
        for name in MODELS:
            try:
                result["train"][name] = bench_train(name, batch, warmup, steps)
                torch.cuda.empty_cache()
            except Exception as exc:
                result["train"][name] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
            print(name, {k: v for k, v in result["train"][name].items() if k != "traceback"}, flush=True)
    if not args.skip_hvp:
        result["hvp"] = {}
        for name, batch in HVP_MODELS.items():
            try:
                result["hvp"][name] = bench_hvp(name, batch, rounds=2 if args.quick else 3)
                torch.cuda.empty_cache()
            except Exception as exc:
                result["hvp"][name] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
            print("hvp", name, {k: v for k, v in result["hvp"][name].items() if k not in ("traceback", "raw")},
                  flush=True)
    result["checks"] = check_targets(result)
    result["wall_s"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["checks"]), "\nwrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
