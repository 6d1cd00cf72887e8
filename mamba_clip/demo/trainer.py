"""The stock open_clip trainer (``python -m open_clip_train.main``) as one resumable demo step.

Runs the trainer in a subprocess on a CSV of image paths and captions, streams its log into a
progress bar, and parses the per-step records of its ``out.log`` (loss, logit scale, learning rate,
seconds per step). An interrupted run is picked up with the trainer's own ``--resume latest``; the
finished run is reduced to a weights-only checkpoint that ``open_clip.create_model(...,
pretrained=PATH)`` loads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# "Train Epoch: 3 [ 704/1347 (52%)] Data (t): 0.007 Batch (t): 3.059, ... LR: 0.001640 Logit Scale: 13.802
#  Contrastive_loss: 2.1054 (2.1266) Loss: 2.1054 (2.1266)"
_RECORD = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) .*?Batch \(t\): (?P<batch_t>[\d.]+).*?"
    r"LR: (?P<lr>[\d.e+-]+)\s+Logit Scale: (?P<scale>[\d.]+).*?\bLoss: (?P<loss>[\d.naif]+)"
)


@dataclass
class TrainConfig:
    """The settings every model of the demo is trained with (same budget, schedule and seed)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    wd: float = 0.1
    warmup: int = 20
    image_size: int = 32
    seed: int = 0
    workers: int = 1
    threads: int = 2

    def args(self) -> List[str]:
        return [
            "--epochs", str(self.epochs), "--batch-size", str(self.batch_size), "--lr", str(self.lr),
            "--wd", str(self.wd), "--warmup", str(self.warmup), "--force-image-size", str(self.image_size),
            "--seed", str(self.seed), "--workers", str(self.workers), "--precision", "fp32", "--device", "cpu",
        ]  # fmt: skip


def parse_log(path: os.PathLike, batch_size: int) -> List[Dict[str, float]]:
    """Per-step records of an open_clip_train ``out.log`` (logged every step), one per global step;
    a step logged twice (a resumed run) keeps its last record."""
    steps: Dict[int, Dict[str, float]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _RECORD.search(line)
        if not m:
            continue
        total = int(m["total"])
        per_epoch = max(1, total // batch_size)  # the trainer's loader drops the last partial batch
        batch = -(-int(m["seen"]) // batch_size) - 1
        step = int(m["epoch"]) * per_epoch + batch
        steps[step] = {
            "step": step, "epoch": int(m["epoch"]), "loss": float(m["loss"]), "lr": float(m["lr"]),
            "logit_scale": float(m["scale"]), "seconds": float(m["batch_t"]),
        }  # fmt: skip
    return [steps[k] for k in sorted(steps)]


def run_stock_trainer(
    model: str,
    train_csv: os.PathLike,
    logs: os.PathLike,
    config: TrainConfig,
    extra: Sequence[str] = (),
    progress: bool = True,
) -> Dict:
    """Train ``model`` with ``python -m open_clip_train.main`` under ``logs/<model>``.

    Returns ``{"checkpoint": weights-only file, "records": per-step records, "log": out.log}``.
    A finished run (its weights-only checkpoint present) is not repeated; an unfinished one resumes
    from its latest epoch. Raises ``RuntimeError`` with the log's tail when the trainer fails.
    """
    logs = Path(logs).resolve()  # the trainer runs with logs as its working directory
    logs.mkdir(parents=True, exist_ok=True)
    run_dir = logs / model
    final = run_dir / f"{model}-final.pt"
    log_file = run_dir / "out.log"
    if not final.is_file():
        _train(model, Path(train_csv).resolve(), logs, config, extra, progress)
        _strip_checkpoint(run_dir / "checkpoints" / f"epoch_{config.epochs}.pt", final)
    records = parse_log(log_file, config.batch_size)
    if not records:
        raise RuntimeError(f"no training records in {log_file}")
    return {"checkpoint": str(final), "records": records, "log": str(log_file)}


def _train(model: str, csv: Path, logs: Path, config: TrainConfig, extra: Sequence[str], progress: bool) -> None:
    from tqdm import tqdm

    cmd = [
        sys.executable, "-m", "open_clip_train.main", "--model", model, "--train-data", str(csv),
        "--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", "\t",
        *config.args(), "--logs", str(logs), "--name", model, "--resume", "latest", "--save-most-recent",
        "--save-frequency", str(config.epochs), "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--log-every-n-steps", "1", "--report-to", "", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(config.threads), PYTHONUNBUFFERED="1")
    n_rows = sum(1 for _ in open(csv)) - 1
    if n_rows < config.batch_size:
        raise ValueError(f"{csv} has {n_rows} rows, fewer than one batch of {config.batch_size}")
    total = config.epochs * (n_rows // config.batch_size)
    tail: List[str] = []
    bar = tqdm(total=total, desc=f"train {model}", unit="step", disable=not progress, leave=False)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=str(logs)) as proc:  # fmt: skip
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            m = _RECORD.search(line)
            if m:
                per_epoch = max(1, int(m["total"]) // config.batch_size)
                step = int(m["epoch"]) * per_epoch + -(-int(m["seen"]) // config.batch_size)
                bar.update(max(0, step - bar.n))
                bar.set_postfix(loss=m["loss"])
    bar.close()
    if proc.returncode != 0:
        raise RuntimeError(
            f"open_clip_train.main failed for {model} (exit {proc.returncode}); command:\n  {' '.join(cmd)}\n"
            "last lines:\n  " + "\n  ".join(tail)
        )


def _strip_checkpoint(src: Path, dst: Path) -> None:
    """Keep only the model weights of a trainer checkpoint (written atomically), drop the optimizer
    state of the run's checkpoints."""
    import torch

    if not src.is_file():
        raise RuntimeError(f"the trainer finished without writing {src}")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    tmp = dst.with_suffix(".tmp")
    torch.save({"state_dict": state, "epoch": ckpt.get("epoch")}, tmp)
    os.replace(tmp, dst)
    for p in src.parent.glob("*.pt"):
        p.unlink()


def training_summary(records: List[Dict[str, float]], tail: int = 10) -> Dict[str, Optional[float]]:
    """First / last losses (means over ``tail`` steps) and the median seconds per step."""
    import statistics

    losses = [r["loss"] for r in records]
    secs = [r["seconds"] for r in records[1:]] or [r["seconds"] for r in records]
    n = min(tail, len(losses))
    return {
        "steps": len(records), "loss_first": sum(losses[:n]) / n, "loss_last": sum(losses[-n:]) / n,
        "seconds_per_step_median": statistics.median(secs), "seconds_total": sum(r["seconds"] for r in records),
    }  # fmt: skip
