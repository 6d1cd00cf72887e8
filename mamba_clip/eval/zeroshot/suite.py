"""The zero-shot suite: the CLIP-Mamba report's Table 1 protocol over clip_benchmark's datasets.

For each dataset: the class embeddings (``templates.class_embeddings``; clip_benchmark's
``zero_shot_classifier`` generalised to several names per class), images through ``encode_image``, logits
``100 * normalize(f) @ W`` (clip_benchmark's ``run_classification``), the report's metric
(``metrics.score``) and clip_benchmark's fields. Results go to ``OUT/<model>/<dataset>.json`` (atomic
writes); a finished dataset with the same pretrained weights, towers and templates is not recomputed.

Towers (``towers``): ``report`` scores ImageNet with the online towers and every other set with the EMA
towers, as the report did; ``ema`` / ``online`` force one copy. They apply to the release tags
(``yfcc15m`` = EMA, ``yfcc15m-online`` = online; either may be given as ``pretrained``) and to a release
checkpoint file (``VMamba_S_clip.pt``, which holds both copies). Any other source -- an open_clip_train
``.pt``, a converted safetensors file, another open_clip tag, or no weights at all -- holds one set of
towers: ``report`` then uses it for every dataset (recorded as ``towers: "single"``), and asking for
``ema`` or ``online`` explicitly is an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mamba_clip.fileio import atomic_write_text
from mamba_clip.finite import require_finite

from .catalog import METRIC_NAMES, DatasetSpec, resolve_all
from .datasets import DatasetMissing, how_to_get, load_dataset
from .wds import wds_ready

TOWERS_CHOICES = ("report", "ema", "online")
TEMPLATE_CHOICES = ("reference", "clip_benchmark")
RELEASE_TAG = "yfcc15m"


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def model_dirname(model: str) -> str:
    return model.replace("/", "-")


# ------------------------------------------------------------------------------------------- towers
class WeightSource:
    """Which weights to load for which towers."""

    def __init__(self, model: str, pretrained: Optional[str], image_size: Optional[int] = None):
        self.model, self.pretrained = model, pretrained
        # open_clip's force_image_size: for models trained at another resolution than their config's
        self.model_kwargs = {"force_image_size": int(image_size)} if image_size else {}
        self.kind = "none"  # none | tag | release_file | file | other_tag
        if pretrained is None or pretrained == "":
            self.kind = "none"
        elif os.path.isfile(pretrained):
            self.kind = "file"
            try:
                from mamba_clip.openclip_ext.checkpoints import sniff_layout

                if sniff_layout(pretrained) == "original":
                    self.kind = "release_file"
            except Exception:
                pass
        else:
            base = pretrained.replace("_", "-")
            if base in (RELEASE_TAG, f"{RELEASE_TAG}-online") and self._has_release_tag():
                self.kind = "tag"
            else:
                self.kind = "other_tag"

    def _has_release_tag(self) -> bool:
        import open_clip

        import mamba_clip  # noqa: F401  (registers our configs and tags)

        try:
            return RELEASE_TAG in open_clip.list_pretrained_tags_by_model(self.model)
        except Exception:
            return False

    @property
    def switchable(self) -> bool:
        return self.kind in ("tag", "release_file")

    def towers_for(self, spec: DatasetSpec, towers: str) -> str:
        if towers not in TOWERS_CHOICES:
            raise ValueError(f"towers={towers!r}; one of {TOWERS_CHOICES}")
        if not self.switchable:
            if towers != "report":
                raise ValueError(
                    f"--towers {towers}: {self.pretrained!r} holds one set of towers, so EMA and online cannot "
                    f"be chosen; use the release tag ({RELEASE_TAG} / {RELEASE_TAG}-online) or a release "
                    "checkpoint file (both copies), or --towers report to use these weights everywhere"
                )
            return "single"
        if towers == "report":
            return "online" if spec.name == "imagenet" else "ema"
        return towers

    def load(self, towers: str, device: str = "cpu"):
        """(model, preprocess, tokenizer) with the wanted towers, in eval mode on ``device``."""
        import open_clip

        create = functools.partial(open_clip.create_model_and_transforms, self.model, **self.model_kwargs)

        import mamba_clip  # noqa: F401

        if self.kind == "tag":
            tag = RELEASE_TAG if towers == "ema" else f"{RELEASE_TAG}-online"
            model, _, preprocess = create(pretrained=tag)
        elif self.kind == "release_file":
            from mamba_clip.openclip_ext.checkpoints import load_checkpoint_file, to_open_clip

            model, _, preprocess = create(pretrained=None)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            sd = to_open_clip(load_checkpoint_file(self.pretrained), towers=towers, target=self.model,
                              expected=expected)  # fmt: skip
            model.load_state_dict(sd)
        else:
            model, _, preprocess = create(pretrained=self.pretrained or None)
        tokenizer = open_clip.get_tokenizer(self.model)
        return model.to(device).eval(), preprocess, tokenizer


def trunk_params_m(model) -> float:
    visual = model.visual
    trunk = getattr(visual, "trunk", visual)
    return sum(p.numel() for p in trunk.parameters()) / 1e6


# ---------------------------------------------------------------------------------------- the loop
class _ToUint8:
    """PIL image -> uint8 CHW tensor (what ``to_tensor`` does before its float division)."""

    def __call__(self, pic):
        import numpy as np
        import torch

        if isinstance(pic, torch.Tensor):
            return pic
        arr = np.asarray(pic, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class BatchNormalize:
    """``ToTensor`` + ``Normalize`` applied to a uint8 batch: ``x.float() / 255``, then ``(x - mean) / std``,
    the same element-wise operations in the same order as torchvision's per-image transforms (bit-identical
    results), done once per batch in the main process (on the device when it is a GPU)."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, x):
        import torch

        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.to(torch.float32).div_(255).sub_(mean).div_(std)


def split_preprocess(preprocess):
    """Split open_clip's eval transform ``[..., ToTensor, Normalize]`` into a per-image part that ends in a
    uint8 tensor (run in the DataLoader workers; a quarter of the bytes to pass between processes) and a
    ``BatchNormalize`` for the main loop. Any other transform is returned whole, with None."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    if (len(steps) >= 2 and type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor")
            and isinstance(steps[-1], T.Normalize) and not getattr(steps[-1], "inplace", False)):  # fmt: skip
        return T.Compose(steps[:-2] + [_ToUint8()]), BatchNormalize(steps[-1].mean, steps[-1].std)
    return preprocess, None


def classify(model, loader, head, device="cpu", amp: bool = False, progress: bool = False, desc: str = "",
             normalize=None, total: Optional[int] = None):  # fmt: skip
    """Logits (N, C) float32 and targets (N,) of every batch of ``loader``: clip_benchmark's
    ``run_classification`` (100 x cosine similarity to the class embeddings), under inference_mode.
    ``normalize``: applied to each image batch first (``BatchNormalize`` for uint8 batches). ``loader`` may
    be an iterator already started (``total``: its number of batches, for the progress bar)."""
    import torch
    import torch.nn.functional as F

    logits, targets = [], []
    dev_type = torch.device(device).type
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=desc, unit="batch", leave=False, file=sys.stderr, total=total)
    head = head.to(device)
    where = f" ({desc})" if desc else ""
    with torch.inference_mode():
        for images, target in it:
            images = images.to(device, non_blocking=True)
            if normalize is not None:
                images = normalize(images)
            with torch.autocast(dev_type, enabled=amp):
                f = model.encode_image(images)
            f = F.normalize(require_finite(f.float(), f"image embeddings of batch {len(logits)}{where}"), dim=-1)
            logits.append((100.0 * f @ head).cpu())
            targets.append(torch.as_tensor(target).cpu())
    if not logits:
        return torch.zeros(0, head.shape[1]), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def make_loader(dataset, batch_size: int, workers: int, device: str = "cpu"):
    import torch

    n_batches = max(1, math.ceil(len(dataset) / batch_size))
    workers = max(0, min(workers, n_batches))
    kw = {"persistent_workers": False, "prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=torch.device(device).type == "cuda", **kw)  # fmt: skip


def _present(spec: DatasetSpec, root: Path) -> bool:
    path = root / spec.dirname
    return wds_ready(path) if spec.is_wds else path.exists()


def _done(path: Path, want: Dict) -> bool:
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(old.get(k) == v for k, v in want.items())


def _shards(n: int, shard_images: int, batch_size: int) -> List[Tuple[int, int]]:
    """Image ranges ``[lo, hi)`` of a dataset of ``n`` images cut into parts of at most about
    ``shard_images`` (one range when ``n <= shard_images`` or ``shard_images <= 0``). Every boundary is a
    multiple of ``batch_size``, so the batches -- and the logits -- are those of one whole-dataset pass."""
    if shard_images <= 0 or n <= shard_images:
        return [(0, n)]
    k = math.ceil(n / shard_images)
    per = math.ceil(math.ceil(n / k) / batch_size) * batch_size
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


def _count(spec: DatasetSpec, root: Path, rpath: Path, templates: str, split: str) -> Optional[int]:
    """Images in a dataset: from its finished result, else by listing it (None when that fails; the
    evaluation then reports why)."""
    try:
        old = json.loads(rpath.read_text()) if rpath.is_file() else {}
        if old.get("status") == "ok" and old.get("n_images"):
            return int(old["n_images"])
        return len(load_dataset(spec, root, None, templates=templates, split=split).dataset)
    except Exception:
        return None


def _part_path(mdir: Path, spec: DatasetSpec, want: Dict, batch_size: int, split: str, k: int, n: int) -> Path:
    digest = hashlib.sha1(json.dumps([want, batch_size, split], sort_keys=True, default=str).encode()).hexdigest()
    return mdir / ".parts" / spec.file_stem / f"part-{k:04d}-of-{n:04d}-{digest[:12]}.npz"


def run_suite(model: str, pretrained: Union[str, Path, None], dataset_root, output,
              datasets: Optional[Sequence[str]] = None, templates: str = "reference", towers: str = "report",
              batch_size: int = 64, workers: int = 4, device: str = "cpu", amp: bool = False,
              progress: bool = True, tables: bool = True, split: str = "test",
              image_size: Optional[int] = None, shard_images: int = 5000,
              dist=None) -> Dict[str, Dict]:  # fmt: skip
    """Evaluate ``model`` (open_clip name) with ``pretrained`` (tag, checkpoint path or None) on ``datasets``
    (Table 1 names, clip_benchmark names or ``wds/NAME``; default: all 26 of Table 1) found under
    ``dataset_root``. Writes ``output/<model>/<dataset>.json`` and, with ``tables``, ``output/table1.{csv,md,png}``
    over every model in ``output``.

    Returns ``{dataset: result}``: the JSON written (``status: "ok"``, also when taken from an earlier run,
    then with ``resumed: True``), or ``{"status": "missing", "path", "hint"}`` / ``{"status": "failed",
    "error"}``. Missing or failing datasets do not stop the run. Unknown names raise at once
    (catalog.UnknownDatasetError), before anything is loaded. ``image_size`` builds the model at that
    resolution (open_clip's ``force_image_size``), for checkpoints trained at another size than the config's.

    Work items are the datasets, and for a dataset of more than ``shard_images`` images, batch-aligned
    parts of it (their logits go to ``output/<model>/.parts/`` and are merged into the dataset's JSON, so
    the numbers equal one pass; finished parts survive an interruption). ``dist``
    (:class:`mamba_clip.distributed.Dist`) splits the items over several processes, balanced by images;
    then rank 0 merges the parts, writes ``_summary.json`` and the tables after all ranks are done, and
    returns every dataset's result; other ranks return their own items' results.
    """
    if templates not in TEMPLATE_CHOICES:
        raise ValueError(f"templates={templates!r}; one of {TEMPLATE_CHOICES}")
    specs = resolve_all(datasets)
    pretrained = os.fspath(pretrained) if pretrained else None  # a Path is fine; "" means no weights
    root, out = Path(dataset_root), Path(output)
    source = WeightSource(model, pretrained, image_size)
    plan = [(s, source.towers_for(s, towers)) for s in specs]  # raises early for impossible towers
    mdir = out / model_dirname(model)
    several = dist is not None and dist.world_size > 1
    results: Dict[str, Dict] = {}
    items = []  # (spec, towers, want, (lo, hi), part path or None, cost); the same list on every rank
    wants: Dict[str, Dict] = {}
    done_before = set()  # finished by an earlier run: reported as resumed
    for spec, tw in plan:
        want = {"status": "ok", "model": model, "pretrained": pretrained, "towers": tw, "templates": templates,
                "image_size": image_size}
        wants[spec.name] = want
        rpath = mdir / f"{spec.file_stem}.json"
        if not _present(spec, root):
            path = root / spec.dirname
            results[spec.name] = {"status": "missing", "path": str(path), "hint": how_to_get(spec, path)}
            continue
        if _done(rpath, want):
            done_before.add(spec.name)
        n = _count(spec, root, rpath, templates, split) if shard_images > 0 else None
        ranges = _shards(n, shard_images, batch_size) if n else [(0, -1)]
        for k, (lo, hi) in enumerate(ranges):
            part = _part_path(mdir, spec, want, batch_size, split, k, len(ranges)) if len(ranges) > 1 else None
            items.append((spec, tw, want, (lo, hi), part, (hi - lo) if n else 1))

    def finished(item) -> bool:
        spec, _, want, _, part, _ = item
        return _done(mdir / f"{spec.file_stem}.json", want) or (part is not None and part.is_file())

    if several:
        todo = dist.share(items, done=finished, cost=lambda it: it[5])
    else:
        todo = [it for it in items if not finished(it)]
    # one model per towers copy, loaded when first needed; EMA (and single) sets first, ImageNet online last
    todo.sort(key=lambda it: {"single": 0, "ema": 1, "online": 2}[it[1]])
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"zero-shot {model}", unit="item", file=sys.stderr)
    loaded_towers, net, preprocess, tokenizer = None, None, None, None
    heads: Dict = {}
    for spec, tw, _, rng, part, _ in todo:
        if bar is not None:
            bar.set_postfix_str(spec.name if part is None else f"{spec.name} [{rng[0]}:{rng[1]}]")
        rpath = mdir / f"{spec.file_stem}.json"
        try:
            if tw != loaded_towers:
                net = None
                net, preprocess, tokenizer = source.load(tw, device)
                loaded_towers = tw
            r = _evaluate_one(spec, tw, net, preprocess, tokenizer, heads, root, rpath, model=model,
                              pretrained=pretrained, templates=templates, image_size=image_size,
                              batch_size=batch_size, workers=workers, device=device, amp=amp,
                              progress=progress, split=split, images=rng if part is not None else None,
                              part=part)  # fmt: skip
            if part is None:
                results[spec.name] = r
        except DatasetMissing as exc:
            results[spec.name] = {"status": "missing", "path": str(exc.path), "hint": exc.hint, "error": str(exc)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a corrupt image or a broken dataset fails that dataset, not the run
            results[spec.name] = {"status": "failed", "error": _error_text(exc)}
        if bar is not None:
            bar.update(1)
        if dist is not None:
            dist.item_done()
    if bar is not None:
        bar.close()
    if several:
        dist.barrier(f"zeroshot-{model_dirname(model)}")
        if not dist.is_main:
            return {s.name: results[s.name] for s in specs if s.name in results}
    # the final writes (one process, or rank 0 after every rank is done): merge parts, summary, tables
    pending = []
    for spec, _ in plan:
        if spec.name in results and results[spec.name]["status"] in ("missing", "failed"):
            continue
        rpath = mdir / f"{spec.file_stem}.json"
        parts = [it[4] for it in items if it[0] is spec and it[4] is not None]
        if _done(rpath, wants[spec.name]):
            again = {"resumed": True} if spec.name in done_before else {}  # else: another rank's result
            results.setdefault(spec.name, {**json.loads(rpath.read_text()), **again})
        elif parts and all(p.is_file() for p in parts):
            try:
                results[spec.name] = _merge_parts(spec, parts, rpath)
            except Exception as exc:
                results[spec.name] = {"status": "failed", "error": _error_text(exc)}
        else:
            pending.append(spec.name)
            results[spec.name] = {"status": "failed", "error": "not evaluated: the process that had it failed "
                                  "or has not finished (see its output); rerun the command to finish"}
    ordered = {s.name: results[s.name] for s in specs}
    if pending and several and not dist.waits:  # a SLURM array task: the others may still be running
        print(f"{len(pending)} datasets still pending on other tasks; rerun the command once they are done "
              "to write the summary and tables", file=sys.stderr)
        return ordered
    summary = {name: {k: r.get(k) for k in ("status", "metric", "metric_name", "path", "hint", "error")
                      if r.get(k) is not None} for name, r in ordered.items()}  # fmt: skip
    atomic_write_text(mdir / "_summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    if tables:
        from .table import write_tables

        try:
            write_tables(out)
        except Exception as exc:  # tables are a convenience; the per-dataset results are written
            print(f"warning: could not write the Table 1 files: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ordered


def _merge_parts(spec: DatasetSpec, parts: Sequence[Path], rpath: Path) -> Dict:
    """The dataset's JSON from its parts' logits (in image order), written atomically; the parts are then
    deleted."""
    import numpy as np

    lgs, tgs, seconds, info = [], [], 0.0, None
    for p in parts:
        with np.load(p) as z:
            lgs.append(z["logits"])
            tgs.append(z["targets"])
            meta = json.loads(str(z["meta"]))
        seconds += meta.pop("seconds")
        info = info or meta
    result = _record(spec, np.concatenate(lgs), np.concatenate(tgs), info, seconds)
    for p in parts:
        p.unlink(missing_ok=True)
    try:
        parts[0].parent.rmdir()
    except OSError:
        pass
    atomic_write_text(rpath, json.dumps(result, indent=2) + "\n")
    return result


def _error_text(exc: BaseException) -> str:
    """One line: a DataLoader worker's exception comes back with the worker's traceback in its message;
    keep its last line (``module.ErrorType: message``)."""
    text = str(exc)
    if "Original Traceback" in text:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _evaluate_one(spec, tw, net, preprocess, tokenizer, heads, root, rpath, *, model, pretrained, templates,
                  image_size=None, batch_size, workers, device, amp, progress, split, images=None,
                  part=None) -> Dict:  # fmt: skip
    """Evaluate one dataset and write its JSON; or, with ``images=(lo, hi)`` and ``part``, the images
    ``lo:hi`` only, their logits and targets saved to ``part`` (npz, with the fields of the JSON)."""
    import torch

    t0 = time.perf_counter()
    transform, normalize = split_preprocess(preprocess)
    ds = load_dataset(spec, root, transform, templates=templates, split=split)
    data = ds.dataset if images is None else torch.utils.data.Subset(ds.dataset, range(*images))
    key = (tw, tuple(map(tuple, ds.classnames)), tuple(ds.templates))
    loader = make_loader(data, batch_size, workers, device)
    batches = iter(loader)  # workers start decoding now, while the class embeddings are computed
    if key not in heads:  # text embeddings: once per model, towers and class/template set
        from .templates import class_embeddings

        heads[key] = class_embeddings(net, tokenizer, ds.classnames, ds.templates, device=device, amp=amp)
    head = heads[key]
    desc = spec.name if images is None else f"{spec.name} [{images[0]}:{images[1]}]"
    logits, targets = classify(net, batches, head, device=device, amp=amp, progress=progress, desc=desc,
                               normalize=normalize, total=len(loader))  # fmt: skip
    info = {"model": model, "pretrained": pretrained, "towers": tw, "templates": templates,
            "image_size": image_size, "templates_used": ds.names_from, "n_templates": len(ds.templates),
            "data_source": ds.source, "data_path": str(ds.path), "params_m": round(trunk_params_m(net), 3),
            "device": str(device), "amp": bool(amp)}  # fmt: skip
    lg, tg = logits.numpy(), targets.numpy()
    if part is not None:
        import io

        import numpy as np

        from mamba_clip.fileio import atomic_write_bytes

        meta = {**info, "seconds": time.perf_counter() - t0}
        buf = io.BytesIO()
        np.savez(buf, logits=lg, targets=tg, meta=np.array(json.dumps(meta)))
        atomic_write_bytes(part, buf.getvalue())
        return {"status": "part"}
    if len(tg) == 0:
        raise ValueError(f"{spec.name}: no images in {ds.path}")
    result = _record(spec, lg, tg, info, time.perf_counter() - t0)
    atomic_write_text(rpath, json.dumps(result, indent=2) + "\n")
    return result


def _record(spec: DatasetSpec, lg, tg, info: Dict, seconds: float) -> Dict:
    """The dataset's result JSON from its logits (N, C) and targets (N,)."""
    from . import metrics

    if len(tg) == 0:
        raise ValueError(f"{spec.name}: no images in {info['data_path']}")
    if tg.max() >= lg.shape[1] or tg.min() < 0:
        raise ValueError(f"{spec.name}: labels up to {int(tg.max())} but only {lg.shape[1]} class names")
    result = {
        "dataset": spec.name,
        "model": info["model"],
        "pretrained": info["pretrained"],
        "task": "zeroshot_classification",
        "metrics": metrics.clip_benchmark_fields(lg, tg),
        "language": "en",
        "metric": metrics.score(spec.metric, lg, tg),
        "metric_name": spec.metric,
        "metric_description": METRIC_NAMES[spec.metric],
        "n_images": int(len(tg)),
        "n_classes": int(lg.shape[1]),
        "seconds": round(seconds, 3),
        "towers": info["towers"],
        "templates": info["templates"],
        "image_size": info["image_size"],
        "templates_used": info["templates_used"],
        "n_templates": info["n_templates"],
        "table1_column": spec.display or None,
        "data_source": info["data_source"],
        "data_path": info["data_path"],
        "params_m": info["params_m"],
        "device": info["device"],
        "amp": info["amp"],
        "status": "ok",
    }
    return _json_safe(result)


__all__ = ["run_suite", "WeightSource", "classify", "make_loader", "DatasetMissing", "TOWERS_CHOICES",
           "TEMPLATE_CHOICES"]  # fmt: skip
