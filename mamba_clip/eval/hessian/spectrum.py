"""Hessian max-eigenvalue spectra over a data set (Park & Kim 2022, Fig. 3; the report's Figure 3):
``n_samples`` images in batches of ``batch_size``, the top-``k`` eigenvalues of each batch's loss,
pooled into one spectrum per model. :func:`hessian_spectrum` runs it, optionally into a run folder
that makes it resumable:

    RUN/eigenvalues.json   settings, seed, one entry per finished batch (eigenvalues, images, seconds,
                           Hessian-vector products), written atomically after every batch
    RUN/eigenvalues.npz    the same numbers as arrays (eigenvalues (batches, k), batch_index,
                           n_images, seconds, n_hvp), written atomically with it

A rerun with the same settings skips the finished batches; other settings raise an error naming the
differences. Run as several processes (``torchrun``, SLURM; ``mamba_clip.distributed``), the batches are
split over the ranks: each rank writes its batches as ``RUN/parts/batch-<index>.json`` (atomic, tagged
with a digest of the settings), and rank 0 merges the union into ``eigenvalues.json`` / ``.npz`` once all
ranks are done (a rerun with any number of processes also reads the parts, skips their batches and
merges them). Each batch goes through :func:`~.eigen.hessian_top_eigen` (PyHessian power iteration or
our Lanczos, see there); the seed of batch ``i`` is ``seed + i``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from mamba_clip.fileio import atomic_write_bytes

from .data import as_dataset, count_batches, iter_batches
from .eigen import _check_args, hessian_top_eigen
from .losses import (
    LOSSES,
    CLIPLoss,
    ZeroShotLoss,
    class_prototypes,
    default_tokenizer,
    format_template,
    resolve_templates,
)
from .params import describe, select_parameters

FORMAT = "mamba_clip.hessian.eigenvalues/1"
JSON_NAME = "eigenvalues.json"
NPZ_NAME = "eigenvalues.npz"
PARTS_DIR = "parts"
# settings that define the computation: a resumed run must agree on all of them
KEY_SETTINGS = ("loss", "params", "n_params", "k", "max_iter", "tol", "method", "seed", "batch_size",
                "n_samples", "data", "n_data", "image_shape", "classnames", "templates", "logit_scale")


@dataclass
class HessianSpectrum:
    """Per-batch top-k eigenvalues of one model (one run)."""

    label: str
    eigenvalues: np.ndarray  # (n_batches, k) float64, each row by decreasing magnitude
    n_images: np.ndarray  # (n_batches,)
    seconds: np.ndarray  # (n_batches,) wall time per batch
    n_hvp: np.ndarray  # (n_batches,) Hessian-vector products per batch
    batch_index: np.ndarray  # (n_batches,)
    settings: dict = field(default_factory=dict)
    complete: bool = True

    @property
    def values(self) -> np.ndarray:
        """All eigenvalues pooled (the spectrum)."""
        return self.eigenvalues.reshape(-1)

    @property
    def n_negative(self) -> int:
        return int((self.values < 0).sum())

    def summary(self) -> dict:
        v = self.values
        return {"label": self.label, "n_batches": int(len(self.eigenvalues)), "n_values": int(v.size),
                "n_negative": self.n_negative, "max": float(v.max()) if v.size else None,
                "min": float(v.min()) if v.size else None,
                "median_abs": float(np.median(np.abs(v))) if v.size else None,
                "seconds_per_batch": float(np.median(self.seconds)) if v.size else None,
                "complete": self.complete}

    @classmethod
    def load(cls, run: Union[str, os.PathLike]) -> "HessianSpectrum":
        """From a run folder (or its ``eigenvalues.json``)."""
        path = Path(run)
        if path.is_dir():
            path = path / JSON_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no Hessian run here (expected RUN/{JSON_NAME})")
        return _from_record(_read_record(path), str(path))


def _read_record(path: Path) -> dict:
    """The JSON object in ``path``; a file that is not one raises ValueError naming it."""
    try:
        rec = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a Hessian eigenvalue file (not JSON: {e})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: not a Hessian eigenvalue file (a JSON {type(rec).__name__}, not an object)")
    return rec


def _from_record(rec: dict, where: str = "") -> HessianSpectrum:
    if rec.get("format") != FORMAT:
        raise ValueError(f"{where}: not a Hessian eigenvalue file (format {rec.get('format')!r}, "
                         f"expected {FORMAT!r})")
    try:
        return _spectrum(rec, where)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: damaged Hessian eigenvalue file ({type(e).__name__}: {e}); "
                         "rerun the command that wrote it") from None


def _spectrum(rec: dict, where: str) -> HessianSpectrum:
    b = sorted(rec["batches"], key=lambda r: r["index"])
    k = rec["settings"]["k"]
    return HessianSpectrum(
        label=rec.get("label") or Path(where).parent.name,
        eigenvalues=np.array([r["eigenvalues"] for r in b], dtype=np.float64).reshape(len(b), k),
        n_images=np.array([r["n_images"] for r in b], dtype=np.int64),
        seconds=np.array([r["seconds"] for r in b], dtype=np.float64),
        n_hvp=np.array([r["n_hvp"] for r in b], dtype=np.int64),
        batch_index=np.array([r["index"] for r in b], dtype=np.int64),
        settings=rec["settings"], complete=bool(rec.get("complete")))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


class RunStore:
    """The run folder: load, check settings, append one batch at a time (atomic writes)."""

    def __init__(self, out_dir: Union[str, os.PathLike], label: str, settings: dict, parts_only: bool = False):
        self.dir = Path(out_dir)
        self.finished = False  # a complete run found: a rerun that adds nothing leaves the files alone
        self.parts_only = parts_only  # several ranks: each batch to its own part file, rank 0 merges
        self.key = hashlib.sha1(json.dumps({k: settings.get(k) for k in KEY_SETTINGS}, sort_keys=True,
                                           default=str).encode()).hexdigest()[:16]  # fmt: skip
        self.record = {"format": FORMAT, "label": label, "settings": settings, "batches": [], "complete": False}
        path = self.dir / JSON_NAME
        if path.is_file():
            old = _read_record(path)
            if old.get("format") != FORMAT:
                raise ValueError(f"{path}: not a Hessian eigenvalue file; choose another output folder")
            diff = {k: (old["settings"].get(k), settings.get(k)) for k in KEY_SETTINGS
                    if old["settings"].get(k) != settings.get(k) and not _legacy_same(k, old["settings"], settings)}
            if diff:
                lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ValueError(f"{self.dir} holds a run with other settings ({lines}); use another output "
                                 "folder or delete it to start again")
            self.record["batches"] = old["batches"]
            self.finished = bool(old.get("complete")) and old.get("label") == label
        self.added = 0

    def _parts(self) -> Dict[int, dict]:
        """Batches written by the ranks of a multi-process run and not merged yet."""
        found = {}
        for path in sorted((self.dir / PARTS_DIR).glob("batch-*.json")):
            try:
                part = json.loads(path.read_text())
            except (OSError, ValueError):  # pragma: no cover  (atomic writes: never half-written)
                continue
            if part.get("key") != self.key:
                raise ValueError(f"{path} is a batch of a run with other settings; use another output folder "
                                 "or delete it to start again")
            found[part["entry"]["index"]] = part["entry"]
        return found

    def done(self) -> Dict[int, dict]:
        return {**self._parts(), **{r["index"]: r for r in self.record["batches"]}}

    def add(self, entry: dict) -> None:
        if self.parts_only:
            part = {"key": self.key, "entry": entry}
            _atomic_write_bytes(self.dir / PARTS_DIR / f"batch-{entry['index']:06d}.json",
                                (json.dumps(part) + "\n").encode())  # fmt: skip
            return
        self.record["batches"] = [r for r in self.record["batches"] if r["index"] != entry["index"]] + [entry]
        self.record["batches"].sort(key=lambda r: r["index"])
        self.added += 1
        self.save()

    def close(self) -> None:
        """Mark the run complete, unless it was already and nothing changed (files untouched)."""
        if not (self.finished and self.added == 0):
            self.save(complete=True)

    def merge_parts(self, n_planned: Optional[int] = None) -> None:
        """Fold the part files into the record, save it (``complete`` when all ``n_planned`` batches are
        in), then delete the parts (a part that outlives a crash here is merged again, no harm)."""
        parts = self._parts()
        by_index = {**{r["index"]: r for r in self.record["batches"]}, **parts}
        self.record["batches"] = [by_index[i] for i in sorted(by_index)]
        self.save(complete=n_planned is None or len(by_index) >= n_planned)
        for i in parts:
            (self.dir / PARTS_DIR / f"batch-{i:06d}.json").unlink(missing_ok=True)

    def spectrum(self) -> "HessianSpectrum":
        """The union of saved batches and parts (without writing)."""
        rec = dict(self.record, batches=[b for _, b in sorted(self.done().items())])
        return _from_record(rec, str(self.dir / JSON_NAME))

    def save(self, complete: Optional[bool] = None) -> None:
        if complete is not None:
            self.record["complete"] = complete
        self.record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        spec = _from_record(self.record, str(self.dir / JSON_NAME))
        buf = io.BytesIO()
        np.savez(buf, eigenvalues=spec.eigenvalues, batch_index=spec.batch_index, n_images=spec.n_images,
                 seconds=spec.seconds, n_hvp=spec.n_hvp)
        # npz first: a json that lists a batch always has the npz that holds it
        _atomic_write_bytes(self.dir / NPZ_NAME, buf.getvalue())
        _atomic_write_bytes(self.dir / JSON_NAME, (json.dumps(self.record, indent=1) + "\n").encode())


def _template_names(templates) -> list:
    """The template strings (``{}`` for the class name), also for open_clip's lambda templates."""
    return [format_template(t, "{}") for t in templates]


def _legacy_same(key: str, old: dict, new: dict) -> bool:
    """Runs written before the template strings were recorded hold ``'<lambda>'`` per template."""
    a, b = old.get(key), new.get(key)
    return (key == "templates" and isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(t == "<lambda>" for t in a))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def hessian_spectrum(
    model: nn.Module,
    data,
    loss: Union[str, Callable] = "zeroshot",
    n_samples: int = 3000,
    batch_size: int = 15,
    k: int = 5,
    params="image",
    classnames: Optional[Sequence[str]] = None,
    templates=None,
    tokenizer=None,
    seed: int = 0,
    progress: bool = True,
    out_dir: Optional[Union[str, os.PathLike]] = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    method: str = "power",
    label: Optional[str] = None,
    transform: Optional[Callable] = None,
    logit_scale: Optional[float] = None,
    device=None,
    dist=None,
    log: Optional[Callable[[str], None]] = None,
) -> HessianSpectrum:
    """Top-``k`` Hessian eigenvalues of the loss on each of ``ceil(n_samples / batch_size)`` batches.

    Args:
        model: an open_clip CLIP model (float32), on ``device`` (default: where its parameters are).
        data: an ImageFolder path, an open_clip CSV path, a map-style dataset of ``(image, target)``,
            a pair ``(images, targets)``, or an iterable of ready ``(images, targets)`` batches; a
            target is a class label, a caption or a token tensor (details: :mod:`.data`).
        loss: ``"zeroshot"`` (cross-entropy against frozen class prototypes from ``classnames`` x
            ``templates``; needs labels), ``"clip"`` (the contrastive loss on (image, caption) pairs;
            labels become captions ``templates[j % len(templates)].format(classnames[label])`` for the
            j-th sample) or a callable ``loss_fn(model, (images, targets))``.
        params: ``"image"`` (default), ``"text"``, ``"all"``, a regular expression on parameter names,
            or an iterable of parameters. The logit scale is fixed at the model's value
            (``logit_scale`` overrides it).
        classnames: class names for labels (default: the ImageFolder's folder names).
        templates: prompt templates (default: open_clip's 7 "simple" ImageNet templates; "openai" for
            the 80; a list of format strings).
        tokenizer: default open_clip's BPE tokenizer at the model's context length.
        k, max_iter, tol, method, seed: as :func:`~.eigen.hessian_top_eigenvalues` (batch ``i`` uses
            ``seed + i``; ``seed`` also draws the samples).
        out_dir: run folder (resumable, see the module docstring); ``label`` names the model in it
            and in plots. A finished run that is rerun is read back, its files untouched.
        progress: a bar per batch whose postfix counts the Hessian-vector products of the batch.
        log: receives the plan line and, after the first batch, the time estimate (default: written
            beside the bar when ``progress``).
        dist: a :class:`mamba_clip.distributed.Dist` to split the batches over several processes (needs
            ``out_dir``, the meeting point); rank 0 returns the merged spectrum, other ranks their view.

    Returns:
        :class:`HessianSpectrum` (``.eigenvalues`` (batches, k), ``.values`` pooled, ``.n_negative``).
    """
    from tqdm import tqdm

    _check_args(k, max_iter, tol, method)
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dataset = as_dataset(data, transform, model)
    if classnames is None and dataset is not None:
        classnames = getattr(dataset, "classnames", None)
    classnames = list(classnames) if classnames is not None else None
    temps = resolve_templates(templates)
    tokenizer = tokenizer or default_tokenizer(model)
    named = select_parameters(model, params)
    plist = [p for _, p in named]
    scale = None
    if loss == "zeroshot":
        if not classnames:
            raise ValueError("loss='zeroshot' needs class names: pass classnames=... (or an ImageFolder)")
        prototypes = class_prototypes(model, classnames, temps, tokenizer, device)
        scale = float(logit_scale) if logit_scale is not None else None
        loss_fn = ZeroShotLoss(prototypes, scale if scale is not None else CLIPLoss.for_model(model).logit_scale)
        scale = loss_fn.logit_scale
    elif loss == "clip":
        loss_fn = CLIPLoss.for_model(model, logit_scale)
        scale = loss_fn.logit_scale
    else:
        loss_fn = loss
    if label is None:
        label = getattr(model, "name", None) or type(model).__name__
    n_planned = count_batches(data, dataset, n_samples, batch_size)
    settings = {
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss)),
        "params": params if isinstance(params, str) or params is None else "custom",
        "n_params": describe(named)["n_scalars"], "param_names": describe(named)["names"],
        "k": k, "max_iter": max_iter, "tol": tol, "method": method, "seed": seed,
        "batch_size": batch_size if dataset is not None else None, "n_samples": n_samples,
        "data": str(Path(data).resolve()) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        "n_data": len(dataset) if dataset is not None else None, "n_batches": n_planned,
        "image_shape": None, "classnames": classnames, "templates": _template_names(temps),
        "logit_scale": scale, "dtype": str(plist[0].dtype).replace("torch.", ""), "device": str(device),
        "torch": torch.__version__, "host": platform.node(), "threads": torch.get_num_threads(),
    }
    if dataset is not None and len(dataset):
        settings["image_shape"] = list(dataset[0][0].shape)
    several = dist is not None and dist.world_size > 1
    if several and (out_dir is None or n_planned is None):
        raise ValueError("several processes need a run folder (out_dir) and a data set of known size")
    store = RunStore(out_dir, label, settings, parts_only=several) if out_dir is not None else None
    done = store.done() if store is not None else {}
    results = dict(done)
    mine = set(dist.share(list(range(n_planned)), done=lambda i: i in done)) if several else None
    say = log or ((lambda m: tqdm.write(m, file=sys.stderr)) if progress else (lambda m: None))
    per_batch = k * max_iter + 1 if method == "power" else max_iter  # power: + the scale probe
    todo = len(mine) if mine is not None else None if n_planned is None else n_planned - len(done)
    if todo is None or todo > 0:
        plan = "batches from an iterable" if todo is None else f"{todo} of {n_planned} batches to go"
        say(f"Hessian {label}: {plan}{'' if mine is None else ' in this process'}, top-{k} by {method} "
            f"iteration, at most {per_batch} Hessian-vector products per batch")
    first = True
    with tqdm(total=n_planned if mine is None else len(mine), desc=f"Hessian {label}", unit="batch",
              disable=not progress, initial=len(done) if mine is None else 0, file=sys.stderr) as bar:  # fmt: skip
        def on_product(n: int) -> None:
            bar.set_postfix_str(f"products {n}/{per_batch} max")

        skip = (lambda i: i in done) if mine is None else (lambda i: i not in mine)
        for batch in iter_batches(data, dataset, n_samples, batch_size, seed, skip=skip):
            targets = _prepare_targets(batch, loss, classnames, temps, tokenizer)
            images = batch.images.to(device=device, dtype=plist[0].dtype)
            if isinstance(targets, torch.Tensor):
                targets = targets.to(device)
            res = hessian_top_eigen(model, loss_fn, (images, targets), k=k, max_iter=max_iter, tol=tol,
                                    params=plist, seed=seed + batch.index, method=method,
                                    on_product=on_product if progress else None)
            entry = {"index": batch.index, "n_images": int(len(images)),
                     "eigenvalues": [float(v) for v in res.eigenvalues], "seconds": round(res.seconds, 4),
                     "n_hvp": res.n_hvp}
            results[batch.index] = entry
            if store is not None:
                store.add(entry)
            bar.update(1)
            bar.set_postfix(top=f"{entry['eigenvalues'][0]:.3g}")
            if dist is not None:
                dist.item_done()
            left = todo - 1 if todo is not None else 0  # after the first batch; unknown for an iterable
            if first and left > 0:
                rest = "the last batch needs" if left == 1 else f"the {left} batches left need"
                say(f"Hessian {label}: first batch took {_minutes(res.seconds)} ({res.n_hvp} products); {rest} "
                    f"about {_minutes(res.seconds * left)} (estimate)")
            first = False
    if store is not None and several:
        dist.barrier("hessian")
        if not dist.is_main:
            return store.spectrum()
        store.merge_parts(n_planned)
        return HessianSpectrum.load(store.dir)
    if store is not None:
        if (store.dir / PARTS_DIR).is_dir():
            store.merge_parts()  # batches of an earlier multi-process run
        else:
            store.close()  # a finished run that is rerun: files untouched
        return HessianSpectrum.load(store.dir)
    rec = {"format": FORMAT, "label": label, "settings": settings, "complete": True,
           "batches": [results[i] for i in sorted(results)]}
    return _from_record(rec, "")


def _prepare_targets(batch, loss, classnames, templates, tokenizer):
    t = batch.targets
    is_labels = isinstance(t, torch.Tensor) and t.dim() == 1 and not t.is_floating_point()
    if loss == "zeroshot":
        if not is_labels:
            raise ValueError("loss='zeroshot' needs integer class labels as targets, got "
                             f"{type(t).__name__}; use loss='clip' for captions")
        return t.long()
    if loss == "clip":
        if is_labels:
            if not classnames:
                raise ValueError("loss='clip' with labels needs classnames to build captions from templates")
            t = [format_template(templates[(batch.first + j) % len(templates)], classnames[int(y)])
                 for j, y in enumerate(t.tolist())]
        if isinstance(t, list):
            return tokenizer(t)
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            return t.long()
        raise ValueError(f"loss='clip' needs captions, token tensors or labels as targets, got {type(t).__name__}")
    return t


def load_runs(runs: Sequence[Union[str, os.PathLike, HessianSpectrum, dict]]) -> List[HessianSpectrum]:
    out = []
    for r in runs:
        if isinstance(r, HessianSpectrum):
            out.append(r)
        elif isinstance(r, dict):
            out.append(_from_record(r, "<dict>"))
        else:
            out.append(HessianSpectrum.load(r))
    return out
