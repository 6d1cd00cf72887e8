"""The end-to-end demo (``mamba-clip demo``, run by ``make demo``): everything the package does, small
enough for a laptop CPU, with nothing downloaded.

1. ``scan``: every available selective-scan backend against the sequential reference (error, time).
2. ``towers``: the six CLIP-Mamba image towers built, parameter counts and, where ``../shared`` holds
   the release key lists, a key-by-key check against the published checkpoints.
3. ``train``: CLIP training of ``vmamba-nano`` and ``simba-nano`` on a toy captioned-shapes set
   (``mamba_clip.synthetic``), loss curves, zero-shot accuracy before and after.
4. ``ood``: the model-vs-human protocol on the trained models where the stimuli are available: shape
   bias on cue-conflict images and accuracy on manipulated silhouettes, figures like the report's.

Results go to ``OUT/report.json`` and ``OUT/report.md`` plus PNG figures; each step's JSON is written
atomically, and a finished step is skipped on a rerun unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

TOWERS = ("vmamba-t220", "vmamba-s", "vmamba-b", "simba-s", "simba-b", "simba-l")
RELEASE_KEYS = {
    "vmamba-t220": "CLIP_VMamba_T220.tsv", "vmamba-s": "CLIP_VMamba_S.tsv", "vmamba-b": "CLIP_VMamba_B.tsv",
    "simba-s": "CLIP_Simba_S.tsv", "simba-b": "CLIP_Simba_B.tsv", "simba-l": "CLIP_Simba_L.tsv",
}
NANO_MODELS = ("vmamba-nano", "simba-nano")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _default_shared() -> Path:
    return Path(os.environ.get("MAMBA_CLIP_SHARED", Path.cwd().parent / "shared"))


# ------------------------------------------------------------------------------------------- steps
def step_scan(out: Path, args) -> Dict:
    import torch

    from mamba_clip.ops import available_backends, selective_scan

    g = torch.Generator().manual_seed(0)
    b, d, n, L = 1, 64, 16, 256
    u = torch.randn(b, d, L, generator=g)
    delta = torch.rand(b, d, L, generator=g) * 0.1
    A = -torch.rand(d, n, generator=g) - 0.5
    B = torch.randn(b, n, L, generator=g)
    C = torch.randn(b, n, L, generator=g)
    D = torch.randn(d, generator=g)
    ref = selective_scan(u, delta, A, B, C, D, delta_softplus=True, backend="ref")
    result = {"shape": {"batch": b, "D": d, "N": n, "L": L}, "backends": {}}
    for backend in available_backends():
        if backend == "cuda":
            continue
        t0 = time.perf_counter()
        y = selective_scan(u, delta, A, B, C, D, delta_softplus=True, backend=backend)
        dt = time.perf_counter() - t0
        err = float((y - ref).abs().max() / ref.abs().max())
        result["backends"][backend] = {"max_rel_error_vs_ref": err, "seconds": dt}
        print(f"  scan backend {backend:6s} max rel error {err:.2e}  {dt * 1e3:8.1f} ms")
    return result


def _release_keys(shared: Path, model: str):
    path = shared / "reference" / "checkpoint-keys" / RELEASE_KEYS[model]
    if not path.is_file():
        return None
    keys = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")[:2]
        if key.startswith("module.visual."):
            keys[key[len("module.visual."):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


def step_towers(out: Path, args) -> Dict:
    import timm

    result = {}
    for name in TOWERS:
        timm_name = name.replace("-", "_")
        trunk = timm.create_model(timm_name, num_classes=0)
        sd = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
        params = sum(p.numel() for p in trunk.parameters())
        entry: Dict[str, Any] = {"timm_name": timm_name, "trunk_params": params}
        keys = _release_keys(Path(args.shared), name)
        if keys is not None:
            keys = {k: v for k, v in keys.items() if not k.startswith("classifier.head")}
            entry["release_keys"] = len(keys)
            entry["matching_keys"] = sum(1 for k, v in keys.items() if sd.get(k) == v)
            entry["missing_or_mismatched"] = sorted(k for k, v in keys.items() if sd.get(k) != v)[:5]
        result[name] = entry
        match = f"{entry['matching_keys']}/{entry['release_keys']} release keys" if keys is not None else ""
        print(f"  {name:12s} {params / 1e6:7.2f}M trunk params  {match}")
    return result


def _zero_shot_accuracy(model, tokenizer, images, labels, classnames) -> float:
    import torch

    with torch.no_grad():
        text = tokenizer([f"a photo of a {c}." for c in classnames])
        tf = model.encode_text(text, normalize=True)
        imf = model.encode_image(images, normalize=True)
        pred = (imf @ tf.T).argmax(-1)
    return float((pred == labels).float().mean())


def step_train(out: Path, args) -> Dict:
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from mamba_clip import synthetic

    size = args.image_size
    train = synthetic.samples(args.train_samples, size=size, seed=0)
    test = synthetic.samples(args.test_samples, size=size, seed=1)
    result: Dict[str, Any] = {"image_size": size, "steps": args.train_steps, "batch_size": args.batch_size}
    for name in NANO_MODELS:
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(name, force_image_size=size, output_dict=True)
        tokenizer = open_clip.get_tokenizer(name)
        train_x = torch.stack([preprocess(img) for img, _, _ in train])
        train_t = tokenizer([cap for _, cap, _ in train])
        test_x = torch.stack([preprocess(img) for img, _, _ in test])
        test_y = torch.tensor([y for _, _, y in test])
        model.eval()
        before = _zero_shot_accuracy(model, tokenizer, test_x, test_y, synthetic.SHAPES)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
        loss_fn = ClipLoss()
        losses: List[float] = []
        model.train()
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        from tqdm import tqdm

        for _ in tqdm(range(args.train_steps), desc=f"train {name}", leave=False):
            idx = torch.randint(0, len(train), (args.batch_size,), generator=gen)
            out_dict = model(train_x[idx], train_t[idx])
            loss = loss_fn(out_dict["image_features"], out_dict["text_features"], out_dict["logit_scale"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
        model.eval()
        after = _zero_shot_accuracy(model, tokenizer, test_x, test_y, synthetic.SHAPES)
        ckpt = out / f"{name}.pt"
        torch.save({"state_dict": model.state_dict(), "image_size": size}, ckpt)
        result[name] = {
            "loss_first5": sum(losses[:5]) / 5, "loss_last5": sum(losses[-5:]) / 5, "losses": losses,
            "zero_shot_acc_before": before, "zero_shot_acc_after": after, "chance": 1 / len(synthetic.SHAPES),
            "seconds": time.perf_counter() - t0, "checkpoint": str(ckpt),
        }
        print(f"  {name:12s} loss {result[name]['loss_first5']:.3f} -> {result[name]['loss_last5']:.3f}, "
              f"zero-shot shape accuracy {before:.2f} -> {after:.2f} (chance {1 / len(synthetic.SHAPES):.2f})")
    _plot_losses(out / "train_loss.png", {n: result[n]["losses"] for n in NANO_MODELS})
    return result


def _plot_losses(path: Path, curves: Dict[str, List[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, losses in curves.items():
        ax.plot(losses, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("CLIP loss")
    ax.set_title("Toy captioned shapes, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def step_ood(out: Path, args) -> Dict:
    """Model-vs-human protocol on the demo's trained nano models: cue-conflict (shape bias), edges,
    and two manipulated silhouette sets; human reference from the shared raw data."""
    import open_clip
    import torch

    from mamba_clip.eval.ood.classifier import CLIPDecisionMaker
    from mamba_clip.eval.ood.datasets import make_datasets
    from mamba_clip.eval.ood.evaluate import evaluate_decision_makers

    shared = Path(args.shared)
    stimuli = shared / "data" / "stimuli"
    humans = shared / "data" / "model-vs-human" / "raw-data"
    if not (stimuli / "cue-conflict").is_dir():
        print(f"  no stimuli under {stimuli}; skipping the OOD step")
        return {"skipped": f"no stimuli under {stimuli}"}
    ood_dir = out / "ood"
    made = make_datasets(stimuli / "filled-silhouettes", ood_dir / "datasets", datasets=["contrast", "rotation"],
                         mode="split", max_per_category=args.ood_per_category, progress=False)
    datasets = [("cue-conflict", stimuli / "cue-conflict"), ("edge", stimuli / "edges")]
    datasets += [(d, ood_dir / "datasets" / d) for d in made]
    dms = {}
    for name in NANO_MODELS:
        model, _, preprocess = open_clip.create_model_and_transforms(name, force_image_size=args.image_size)
        state = torch.load(out / f"{name}.pt", map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        dms[name] = CLIPDecisionMaker(model, preprocess, open_clip.get_tokenizer(name), templates=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consistency needs the humans' exact images: reported as null
        summary = evaluate_decision_makers(dms, datasets, ood_dir, humans=humans if humans.is_dir() else None,
                                           max_images=args.ood_max_images, batch_size=32)
    for name, row in summary.items():
        if isinstance(row, dict) and "shape_bias" in row:
            sb = row.get("shape_bias")
            print(f"  {name:14s} shape bias {sb if sb is None else round(sb, 3)}  OOD accuracy "
                  f"{row.get('ood_accuracy') if row.get('ood_accuracy') is None else round(row['ood_accuracy'], 3)}")
    return {"summary": summary, "figures": ["ood/figure1.png", "ood/figure2.png"],
            "datasets": [d for d, _ in datasets]}


STEPS: Dict[str, Callable] = {"scan": step_scan, "towers": step_towers, "train": step_train, "ood": step_ood}


def run_demo(out: os.PathLike, steps=None, force: bool = False, **options) -> Dict:
    """Run the demo steps (all by default) into ``out``; returns the report dict."""
    args = argparse.Namespace(**{**DEFAULTS, **options})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = list(steps or STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown demo step(s) {unknown}; accepted: {list(STEPS)}")
    report: Dict[str, Any] = {}
    for name in steps:
        path = out / f"{name}.json"
        if path.is_file() and not force:
            print(f"[{name}] done before, reading {path} (use --force to redo)")
            report[name] = json.loads(path.read_text())
            continue
        print(f"[{name}]")
        t0 = time.perf_counter()
        report[name] = STEPS[name](out, args)
        report[name]["step_seconds"] = time.perf_counter() - t0
        _write_json(path, report[name])
    _write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    print(f"report: {out / 'report.md'}")
    return report


def render_markdown(report: Dict) -> str:
    lines = ["# mamba_clip demo report", ""]
    if "scan" in report:
        lines += ["## Selective-scan backends vs the sequential reference", "",
                  "| backend | max rel. error | ms |", "|---|---|---|"]
        for b, r in report["scan"]["backends"].items():
            lines.append(f"| {b} | {r['max_rel_error_vs_ref']:.1e} | {r['seconds'] * 1e3:.1f} |")
        lines.append("")
    if "towers" in report:
        lines += ["## CLIP-Mamba image towers", "", "| model | trunk params | release keys matched |",
                  "|---|---|---|"]
        for m, r in report["towers"].items():
            if not isinstance(r, dict):
                continue
            keys = f"{r['matching_keys']}/{r['release_keys']}" if "release_keys" in r else "n/a"
            lines.append(f"| {m} | {r['trunk_params']:,} | {keys} |")
        lines.append("")
    if "train" in report:
        t = report["train"]
        lines += [f"## CLIP training on toy captioned shapes ({t['steps']} steps, {t['image_size']} px)", "",
                  "| model | loss start | loss end | zero-shot acc. before | after |", "|---|---|---|---|---|"]
        for m in NANO_MODELS:
            if m in t:
                r = t[m]
                lines.append(f"| {m} | {r['loss_first5']:.3f} | {r['loss_last5']:.3f} | "
                             f"{r['zero_shot_acc_before']:.2f} | {r['zero_shot_acc_after']:.2f} |")
        lines += ["", "![loss](train_loss.png)", ""]
    if "ood" in report and "summary" in report["ood"]:
        lines += ["## Model-vs-human protocol (toy-trained nano models; humans from the shared raw data)", "",
                  "| subject | shape bias | OOD accuracy |", "|---|---|---|"]
        for m, r in report["ood"]["summary"].items():
            if isinstance(r, dict) and "shape_bias" in r:
                fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
                lines.append(f"| {m} | {fmt(r.get('shape_bias'))} | {fmt(r.get('ood_accuracy'))} |")
        lines += ["", "![figure 1](ood/figure1.png)", "", "![figure 2](ood/figure2.png)", ""]
    return "\n".join(lines) + "\n"


DEFAULTS = dict(image_size=32, train_steps=40, batch_size=32, lr=1e-3, train_samples=512, test_samples=128,
                ood_per_category=1, ood_max_images=64,
                shared=str(_default_shared()))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo (CPU, offline)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--steps-only", nargs="+", metavar="STEP", dest="only", choices=list(STEPS),
                   help=f"run only these steps ({', '.join(STEPS)})")
    p.add_argument("--force", action="store_true", help="redo steps already finished in --out")
    p.add_argument("--train-steps", type=int, default=DEFAULTS["train_steps"])
    p.add_argument("--shared", default=DEFAULTS["shared"], help="the shared data folder (key lists, stimuli)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    run_demo(args.out, steps=args.only, force=args.force, train_steps=args.train_steps, shared=args.shared)
    return 0
