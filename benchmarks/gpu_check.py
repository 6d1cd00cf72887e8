"""One-shot GPU check (run on a CUDA machine; CI never runs it).

1. Selective scan on CUDA tensors: every CUDA-capable backend ("torch", "triton", "cuda" when mamba-ssm
   is installed) against "ref" on the same device: outputs, last state, gradients of every input; "auto"
   resolution; double backward of "torch" on CUDA (gradgradcheck, float64, tiny shape).
2. The six CLIP-Mamba open_clip models on CUDA: a forward/backward step under bf16 autocast (finite loss,
   every parameter gets a gradient); image-encoder throughput (fp32 and bf16, batch 32) against
   open_clip's ViT-B-16 in the same run.
Writes ``$OUT/gpu_check.json`` (or ``--out``).

    PYTHONPATH=. python benchmarks/gpu_check.py --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import torch

MODELS = ("vmamba-t220", "vmamba-s", "vmamba-b", "simba-s", "simba-b", "simba-l")


def max_rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def check_scan(dev: str) -> dict:
    from mamba_clip.ops import available_backends, resolve_backend, selective_scan

    out = {"available": available_backends(), "auto_on_cuda": None, "cases": []}
    cases = [
        dict(b=2, d=64, n=1, L=300, g=4, softplus=True, z=False, bias=True),
        dict(b=1, d=48, n=16, L=257, g=1, softplus=True, z=True, bias=True),
        dict(b=3, d=32, n=64, L=128, g=2, softplus=False, z=True, bias=False),
    ]
    g = torch.Generator(device="cpu").manual_seed(0)
    for c in cases:
        b, d, n, L, G = c["b"], c["d"], c["n"], c["L"], c["g"]
        mk = lambda *s: torch.randn(*s, generator=g)
        inputs = dict(u=mk(b, d, L), delta=torch.rand(b, d, L, generator=g) * 0.5 - 0.25,
                      A=-torch.rand(d, n, generator=g) - 0.2, B=mk(b, G, n, L), C=mk(b, G, n, L), D=mk(d))
        if c["z"]:
            inputs["z"] = mk(b, d, L)
        if c["bias"]:
            inputs["delta_bias"] = torch.rand(d, generator=g) - 0.5
        inputs = {k: v.to(dev).requires_grad_(True) for k, v in inputs.items()}
        out["auto_on_cuda"] = resolve_backend("auto", inputs["u"])
        results = {}
        for backend in ["ref"] + [x for x in available_backends() if x in ("torch", "cuda", "triton")]:
            for v in inputs.values():
                v.grad = None
            y, last = selective_scan(**inputs, delta_softplus=c["softplus"], return_last_state=True, backend=backend)
            (y * torch.linspace(-1, 1, y.shape[-1], device=dev)).sum().backward()
            results[backend] = (y.detach(), last.detach(), {k: v.grad.detach().clone() for k, v in inputs.items()})
        y0, l0, g0 = results["ref"]
        for backend, (y, last, grads) in results.items():
            if backend == "ref":
                continue
            errs = {"out": max_rel(y, y0), "last_state": max_rel(last, l0)}
            errs.update({f"grad_{k}": max_rel(grads[k], g0[k]) for k in g0})
            out["cases"].append({"case": c, "backend": backend, "max_rel_errors": errs,
                                 "ok": all(e <= 1e-4 for e in errs.values())})
    # double backward through the torch backend on CUDA
    from torch.autograd import gradgradcheck

    from mamba_clip.ops import double_backward

    t = lambda *s: torch.randn(*s, dtype=torch.float64, device=dev, requires_grad=True)
    u, delta, B, C = t(1, 3, 5), t(1, 3, 5), t(1, 2, 5), t(1, 2, 5)
    A = (-torch.rand(3, 2, dtype=torch.float64, device=dev) - 0.5).requires_grad_(True)

    def f(u, delta, A, B, C):
        with double_backward():
            return selective_scan(u, delta, A, B, C, delta_softplus=True)

    out["gradgradcheck_torch_cuda"] = bool(gradgradcheck(f, (u, delta, A, B, C)))
    return out


def bench(fn, x, reps: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(x)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def check_models(dev: str, batch: int) -> dict:
    import open_clip

    res = {}
    x = torch.randn(batch, 3, 224, 224, device=dev)
    text = torch.randint(0, 49407, (batch, 77), device=dev)
    for name in ("ViT-B-16",) + MODELS:
        entry = {}
        try:
            model = open_clip.create_model(name, device=dev)
            if name != "ViT-B-16":
                model.train()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    img, txt, scale = model(x[:8], text[:8])
                    loss = (img @ txt.T * scale).logsumexp(-1).mean()
                loss.backward()
                no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                entry["train_step_loss"] = float(loss)
                entry["train_step_finite"] = bool(torch.isfinite(loss))
                entry["params_without_grad"] = no_grad[:5]
                model.zero_grad(set_to_none=True)
            model.eval()
            enc = model.encode_image
            entry["fp32_img_per_s"] = batch / bench(enc, x, 5)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                entry["bf16_img_per_s"] = batch / bench(enc, x, 5)
            del model
            torch.cuda.empty_cache()
        except Exception as exc:  # record and go on: one broken model should not hide the others
            entry["error"] = repr(exc)
            entry["traceback"] = traceback.format_exc()[-2000:]
        res[name] = entry
        print(name, {k: v for k, v in entry.items() if k != "traceback"}, flush=True)
    base = res["ViT-B-16"].get("fp32_img_per_s")
    for name in MODELS:
        if base and "fp32_img_per_s" in res[name]:
            res[name]["fp32_vs_vit_b16"] = res[name]["fp32_img_per_s"] / base
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--skip-scan", action="store_true", help="only the model checks")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device")
    import mamba_clip

    mamba_clip.register()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        if not args.skip_scan:
            result["scan"] = check_scan("cuda")
    except Exception:
        result["scan_error"] = traceback.format_exc()[-3000:]
    print(json.dumps(result, indent=1)[:4000], flush=True)
    result["models"] = check_models("cuda", args.batch)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
