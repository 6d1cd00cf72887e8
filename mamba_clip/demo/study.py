"""The demo's steps: the CLIP-Mamba report's study in miniature (Huang, Shen & Yang 2024), on real
handwritten digits, with a ViT baseline beside the two Mamba towers.

Each step takes the output folder and the settings, returns a JSON-able dict and is run at most once
per folder (``run_demo`` skips steps whose ``<step>.json`` exists). Steps reuse the package's public
pieces: the stock ``open_clip_train`` trainer, ``mamba_clip.eval.zeroshot`` (``make_wds`` and
``run_suite``), the OOD manipulations (``mamba_clip.eval.ood.robustness``) and
``mamba_clip.eval.hessian``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

TOWERS = ("vmamba-t220", "vmamba-s", "vmamba-b", "simba-s", "simba-b", "simba-l")
RELEASE_KEYS = {
    "vmamba-t220": "CLIP_VMamba_T220.tsv", "vmamba-s": "CLIP_VMamba_S.tsv", "vmamba-b": "CLIP_VMamba_B.tsv",
    "simba-s": "CLIP_Simba_S.tsv", "simba-b": "CLIP_Simba_B.tsv", "simba-l": "CLIP_Simba_L.tsv",
}  # fmt: skip
MODELS = ("vmamba-nano", "simba-nano", "vit-nano")
# The eidolons (eidolonI/II/III) also work but cost about 0.7 s per image and condition on this CPU (numpy,
# one core): about 17 minutes for the demo's 200 images x 8 reaches, so they are not in the default set.
OOD_DATASETS = ("contrast", "high-pass", "low-pass", "uniform-noise", "phase-scrambling", "rotation")


def default_shared() -> Path:
    return Path(os.environ.get("MAMBA_CLIP_SHARED", Path.cwd().parent / "shared"))


def _load_model(name: str, checkpoint: str, image_size: int):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint,
                                                                 force_image_size=image_size)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def _quiet_logging(level: int = logging.ERROR):
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def _test_images(args):
    """Held-out digits as (PIL images, labels, class names) from the data step's ImageFolder."""
    from PIL import Image

    from mamba_clip.digits import CLASSNAMES

    test = Path(args.out) / "data" / "digits" / "test"
    images, labels = [], []
    for c, name in enumerate(CLASSNAMES):
        for p in sorted((test / name).glob("*.png")):
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
            labels.append(c)
    return images, labels, list(CLASSNAMES)


def _every_nth(images, labels, n_max: int):
    """A class-balanced subset of at most ``n_max`` images (every k-th image of the sorted list)."""
    step = max(1, -(-len(images) // n_max))
    return images[::step], labels[::step]


# ------------------------------------------------------------------------------------------- steps
def step_scan(out: Path, args) -> Dict:
    """Every available selective-scan backend against the sequential reference."""
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
    result: Dict[str, Any] = {"shape": {"batch": b, "D": d, "N": n, "L": L}, "backends": {}}
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
    """(shapes of the release's online image tower, where they came from): the key list in ``shared``
    when it has one, else the copy shipped with the package; (None, reason) when neither is there."""
    from mamba_clip.openclip_ext.release_keys import release_tower_shapes

    path = shared / "reference" / "checkpoint-keys" / RELEASE_KEYS[model]
    if path.is_file():
        keys = {}
        for line in path.read_text().splitlines():
            key, shape = line.split("\t")[:2]
            if key.startswith("module.visual."):
                keys[key[len("module.visual."):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        return keys, str(path)
    try:
        return release_tower_shapes(model), "package data"
    except FileNotFoundError as exc:
        return None, f"no release key list: {exc}"


def step_towers(out: Path, args) -> Dict:
    """The six CLIP-Mamba towers built; parameters and a key-by-key check against the release lists."""
    import timm

    result = {}
    for name in TOWERS:
        timm_name = name.replace("-", "_")
        trunk = timm.create_model(timm_name, num_classes=0)
        sd = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
        entry: Dict[str, Any] = {"timm_name": timm_name, "trunk_params": sum(p.numel() for p in trunk.parameters())}
        keys, source = _release_keys(Path(args.shared), name)
        entry["release_keys_source"] = source
        if keys is not None:
            keys = {k: v for k, v in keys.items() if not k.startswith("classifier.head")}
            entry["release_keys"] = len(keys)
            entry["matching_keys"] = sum(1 for k, v in keys.items() if sd.get(k) == v)
            entry["missing_or_mismatched"] = sorted(k for k, v in keys.items() if sd.get(k) != v)[:5]
        result[name] = entry
        match = f"{entry['matching_keys']}/{entry['release_keys']} release keys" if keys is not None else ""
        print(f"  {name:12s} {entry['trunk_params'] / 1e6:7.2f}M trunk params  {match}")
    return result


def step_data(out: Path, args) -> Dict:
    """The bundled handwritten digits: train CSV, held-out ImageFolder, and the held-out set in
    clip_benchmark's ``wds/`` layout (``make_wds``) with prompts the captions never use."""
    from mamba_clip.digits import write_digits
    from mamba_clip.eval.zeroshot import make_wds

    data = (out / "data").resolve()  # absolute, like the trainer's paths: a resume may start from another cwd
    manifest = write_digits(data / "digits", size=args.image_size, test_fraction=args.test_fraction, seed=args.seed)
    train_csv = Path(manifest["train_csv"])
    if args.train_limit:
        rows = train_csv.read_text().splitlines()
        train_csv = data / "train_quick.csv"
        train_csv.write_text("\n".join(rows[: args.train_limit + 1]) + "\n")
    make_wds(manifest["test_dir"], data / "wds" / "digits", templates=manifest["templates_file"])
    print(f"  {manifest['n_train']} training and {manifest['n_test']} held-out digits at {args.image_size} px "
          f"(seed {args.seed}); training CSV {train_csv}")
    return {"manifest": manifest, "train_csv": str(train_csv), "wds_root": str(data / "wds"),
            "n_train_used": sum(1 for _ in open(train_csv)) - 1}


def step_train(out: Path, args) -> Dict:
    """Every model trained by the stock ``open_clip_train.main`` with the same budget, schedule and seed."""
    import open_clip

    from .trainer import TrainConfig, run_stock_trainer, training_summary

    data = _step_result(out, "data")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                      seed=args.seed, workers=args.workers, threads=args.threads)
    result: Dict[str, Any] = {"config": cfg.__dict__, "models": {}}
    for name in args.models:
        with _quiet_logging():  # open_clip warns that the weights are random: they are, until trained
            model = open_clip.create_model(name, force_image_size=args.image_size)
        params = {"image_tower": sum(p.numel() for p in model.visual.parameters()),
                  "total": sum(p.numel() for p in model.parameters())}
        del model
        print(f"  {name:12s} image tower {params['image_tower'] / 1e6:.2f}M parameters, "
              f"whole CLIP model {params['total'] / 1e6:.2f}M")
        t0 = time.perf_counter()
        run = run_stock_trainer(name, data["train_csv"], out / "train", cfg, progress=args.progress)
        summary = training_summary(run["records"])
        result["models"][name] = {"params": params, **summary, "checkpoint": run["checkpoint"], "log": run["log"],
                                  "losses": [r["loss"] for r in run["records"]],
                                  "step_seconds": [r["seconds"] for r in run["records"]],
                                  "wall_seconds": time.perf_counter() - t0}
        print(f"  {name:12s} loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f} in {summary['steps']} "
              f"steps, {summary['seconds_per_step_median']:.2f} s/step")
    from .report import plot_losses

    plot_losses(out / "train_loss.png", {m: r["losses"] for m, r in result["models"].items()})
    return result


def step_zeroshot(out: Path, args) -> Dict:
    """Zero-shot top-1 on the held-out digits through ``mamba_clip.eval.zeroshot.run_suite``."""
    from mamba_clip.eval.zeroshot import run_suite

    data, train = _step_result(out, "data"), _step_result(out, "train")
    result: Dict[str, Any] = {}
    for name in args.models:
        ckpt = train["models"][name]["checkpoint"]
        res = run_suite(name, ckpt, data["wds_root"], out / "zeroshot", datasets=["wds/digits"], batch_size=128,
                        workers=0, progress=args.progress, image_size=args.image_size)["wds/digits"]
        if res.get("status") != "ok":
            raise RuntimeError(f"zero-shot evaluation of {name} failed: {res}")
        m = res["metrics"]
        result[name] = {"acc1": m["acc1"], "acc5": m.get("acc5"),
                        "mean_per_class_recall": m.get("mean_per_class_recall"), "n_images": res["n_images"],
                        "seconds": res["seconds"]}
        print(f"  {name:12s} zero-shot top-1 {m['acc1'] * 100:.1f}% on {res['n_images']} held-out digits")
    return result


def _zero_shot_classifier(name: str, checkpoint: str, args, classnames: List[str]) -> Callable:
    import open_clip
    import torch

    from mamba_clip.digits import ZEROSHOT_TEMPLATES

    model, preprocess, tokenizer = _load_model(name, checkpoint, args.image_size)
    with torch.no_grad():
        head = open_clip.build_zero_shot_classifier(model, tokenizer, classnames,
                                                    [t.replace("{c}", "{}") for t in ZEROSHOT_TEMPLATES])

    @torch.no_grad()
    def classify(images) -> List[int]:
        x = torch.stack([preprocess(im) for im in images])
        feats = model.encode_image(x, normalize=True)
        return (feats @ head).argmax(-1).tolist()

    return classify


def step_ood(out: Path, args) -> Dict:
    """Accuracy against condition under the model-vs-human parametric manipulations (the report's
    Figure 2 style) on held-out digits."""
    from mamba_clip.eval.ood.plots import figure2
    from mamba_clip.eval.ood.robustness import accuracy_under_manipulations

    train = _step_result(out, "train")
    images, labels, classnames = _test_images(args)
    images, labels = _every_nth(images, labels, args.ood_images)
    classifiers = {m: _zero_shot_classifier(m, train["models"][m]["checkpoint"], args, classnames)
                   for m in args.models}  # fmt: skip
    conditions = None
    if args.quick:
        from mamba_clip.eval.ood.protocol import get_spec

        conditions = {d: get_spec(d).conditions[::3] for d in args.ood_datasets}
    acc = accuracy_under_manipulations(classifiers, images, labels, datasets=args.ood_datasets,
                                       conditions=conditions, seed=args.seed, progress=args.progress)
    figure2({m: {"accuracy_by_condition": a} for m, a in acc.items()}, out / "ood_figure2.png",
            title="Held-out digits under the model-vs-human manipulations", chance=1 / len(classnames))
    for m, per in acc.items():
        mean = sum(sum(c.values()) / len(c) for c in per.values()) / len(per)
        print(f"  {m:12s} mean accuracy over {len(per)} manipulations x conditions: {mean * 100:.1f}%")
    return {"n_images": len(images), "datasets": list(args.ood_datasets), "accuracy": acc,
            "figure": "ood_figure2.png"}


def step_hessian(out: Path, args) -> Dict:
    """Top-k Hessian eigenvalues of the zero-shot loss on held-out batches (Park & Kim 2022; the
    report's Figure 3), image-tower parameters, through ``mamba_clip.eval.hessian``. The demo uses the
    module's Lanczos method: the same top-k as PyHessian's power iteration (within its tolerance) for
    about a sixth of the Hessian-vector products on these models."""
    import torch

    from mamba_clip.digits import ZEROSHOT_TEMPLATES
    from mamba_clip.eval.hessian import hessian_spectrum, plot_spectra

    train = _step_result(out, "train")
    images, labels, classnames = _test_images(args)
    images, labels = _every_nth(images, labels, args.hessian_samples)
    result: Dict[str, Any] = {"settings": {"n_samples": len(images), "batch_size": args.hessian_batch,
                                           "k": args.hessian_k, "params": "image", "loss": "zeroshot",
                                           "method": args.hessian_method, "max_iter": args.hessian_iters}}
    runs = []
    templates = [t.replace("{c}", "{}") for t in ZEROSHOT_TEMPLATES]
    for name in args.models:
        model, preprocess, tokenizer = _load_model(name, train["models"][name]["checkpoint"], args.image_size)
        x = torch.stack([preprocess(im) for im in images])
        run_dir = out / "hessian" / name
        spec = hessian_spectrum(model, (x, torch.tensor(labels)), loss="zeroshot", n_samples=len(labels),
                                batch_size=args.hessian_batch, k=args.hessian_k, params="image",
                                classnames=classnames, templates=templates, tokenizer=tokenizer, seed=args.seed,
                                max_iter=args.hessian_iters, method=args.hessian_method, progress=args.progress,
                                out_dir=run_dir, label=name)
        eig = [float(v) for v in spec.values]
        neg = sum(1 for v in eig if v < 0)
        result[name] = {"eigenvalues": eig, "negative": neg, "max_abs": max(abs(v) for v in eig),
                        "run_dir": str(run_dir)}
        runs.append(run_dir)
        print(f"  {name:12s} {len(eig)} eigenvalues, {neg} negative, max |lambda| {max(abs(v) for v in eig):.3g}")
    plot_spectra(runs, out / "hessian_spectra.png")
    result["figure"] = "hessian_spectra.png"
    return result


STEPS: Dict[str, Callable] = {
    "scan": step_scan, "towers": step_towers, "data": step_data, "train": step_train,
    "zeroshot": step_zeroshot, "ood": step_ood, "hessian": step_hessian,
}  # fmt: skip


def _step_result(out: Path, step: str) -> Dict:
    path = out / f"{step}.json"
    if not path.is_file():
        raise RuntimeError(f"the demo step {step!r} has not run in {out}: run it first (or drop --steps-only)")
    return json.loads(path.read_text())


DEFAULTS = dict(
    seed=0, epochs=10, batch_size=64, lr=2e-3, image_size=32, test_fraction=0.25, train_limit=None, workers=1,
    threads=2, models=list(MODELS), ood_datasets=list(OOD_DATASETS), ood_images=200, hessian_samples=60,
    hessian_batch=15, hessian_k=5, hessian_method="lanczos", hessian_iters=60, quick=False, progress=True,
    shared=str(default_shared()),
)  # fmt: skip
# About 3 minutes on two cores (168 s on a quiet machine): a smoke test of every step.
QUICK = dict(epochs=1, train_limit=256, ood_images=40, ood_datasets=["contrast", "uniform-noise", "rotation"],
             hessian_samples=15, hessian_k=2, hessian_iters=20, quick=True)  # fmt: skip


def settings(**options) -> argparse.Namespace:
    """The demo settings: defaults, then ``QUICK`` when ``quick=True``, then explicit options."""
    base = dict(DEFAULTS)
    if options.get("quick"):
        base.update(QUICK)
    base.update({k: v for k, v in options.items() if v is not None})
    unknown = [m for m in base["models"] if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown demo model(s) {unknown}; accepted: {list(MODELS)}")
    from mamba_clip.eval.ood.protocol import PARAMETRIC_DATASETS

    unknown = [d for d in base["ood_datasets"] if d not in PARAMETRIC_DATASETS]
    if unknown:
        raise ValueError(f"unknown OOD manipulation(s) {unknown}; accepted: {list(PARAMETRIC_DATASETS)}")
    return argparse.Namespace(**base)
