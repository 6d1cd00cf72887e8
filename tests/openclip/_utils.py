"""Shared helpers for the stock-tooling tests (open_clip_train, clip_benchmark) of every tower.

* :func:`write_shapes_csv` - a tiny real image-caption dataset (coloured shapes drawn with PIL).
* :func:`write_shapes_wds` - a zero-shot classification set in clip_benchmark's local webdataset
  layout (tar shard + ``classnames.txt`` + ``zeroshot_classification_templates.txt``).
* :func:`run_trainer` - ``python -m open_clip_train.main`` in a subprocess, with its results parsed.
* :func:`run_clip_benchmark` - the ``clip_benchmark eval`` console script in a subprocess.

Subprocesses get ``MAMBA_CLIP_NO_AUTOLOAD`` removed (so the installed hook is what makes our models
visible, as for a user) and a small thread count (the CI machine has 2 cores).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")
CLASSNAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


def draw_shape(colour: str, shape: str, size: int = 64, seed: int = 0) -> Image.Image:
    """An RGB image of one coloured shape at a random position / scale on a light noisy background."""
    rng = random.Random(seed)
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        d.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; accepted values: {list(SHAPES)}")
    return img


def _samples(n: int, seed: int) -> List[Tuple[str, str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, shape = CLASSNAMES[i % len(CLASSNAMES)].split()
        out.append((colour, shape, rng.randrange(1 << 30)))
    return out


def write_shapes_csv(root: Path, n: int = 36, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` PNGs and a tab-separated ``train.csv`` (columns ``filepath``, ``title``)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    for i, (colour, shape, s) in enumerate(_samples(n, seed)):
        path = root / "images" / f"{i:04d}.png"
        draw_shape(colour, shape, size, seed=s).save(path)
        rows.append(f"{path}\ta photo of a {colour} {shape}.")
    csv = root / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def write_shapes_wds(root: Path, n: int = 18, size: int = 64, seed: int = 1) -> Path:
    """clip_benchmark ``wds/<name>`` layout under ``root``: ``test/0.tar`` (``<key>.png`` +
    ``<key>.cls``), ``test/nshards.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt``.
    Returns ``root`` (pass it as ``--dataset_root``)."""
    root = Path(root)
    split = root / "test"
    split.mkdir(parents=True, exist_ok=True)
    with tarfile.open(split / "0.tar", "w") as tar:
        for i, (colour, shape, s) in enumerate(_samples(n, seed)):
            buf = io.BytesIO()
            draw_shape(colour, shape, size, seed=s).save(buf, format="png")
            label = CLASSNAMES.index(f"{colour} {shape}")
            for ext, data in (("png", buf.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (split / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def subprocess_env(threads: int = 1, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("MAMBA_CLIP_NO_AUTOLOAD", None)
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


@dataclass
class TrainRun:
    returncode: int
    log_dir: Path
    output: str
    train_losses: List[Tuple[int, float]] = field(default_factory=list)  # (epoch, loss) per logged step
    val: List[dict] = field(default_factory=list)  # results.jsonl rows (one per evaluated epoch)

    @property
    def checkpoints(self) -> List[Path]:
        return sorted((self.log_dir / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))

    def epoch_mean_loss(self, epoch: int) -> float:
        vals = [v for e, v in self.train_losses if e == epoch]
        if not vals:
            raise AssertionError(f"no training loss logged for epoch {epoch}:\n{self.output[-3000:]}")
        return sum(vals) / len(vals)


_LOSS_RE = re.compile(r"Train Epoch: (\d+) \[.*?Contrastive_loss: ([0-9.]+)")


def run_trainer(
    logs: Path,
    name: str,
    model: str,
    train_csv: Path,
    *extra: str,
    epochs: int = 2,
    batch_size: int = 6,
    image_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    val: bool = True,
    timeout: float = 900,
    nproc: int = 1,
    threads: int = 1,
) -> TrainRun:
    """Run the stock trainer on CPU (``torchrun`` with ``nproc`` > 1) and parse its logs."""
    args = [
        "--model", model, "--train-data", str(train_csv), "--dataset-type", "csv",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", "\t",
        "--batch-size", str(batch_size), "--epochs", str(epochs), "--lr", str(lr), "--wd", "0.0",
        "--warmup", "1", "--workers", "0", "--device", "cpu", "--seed", str(seed),
        "--force-image-size", str(image_size), "--name", name,
        "--log-every-n-steps", "1", "--save-frequency", "1", "--zeroshot-frequency", "0", "--report-to", "",
    ]
    if val:
        args += ["--val-data", str(train_csv)]
    args += list(extra)
    logs = Path(logs)
    if nproc > 1:
        # torchrun's own parser rejects "--logs" as an ambiguous abbreviation of its "--logs-specs", so
        # multi-process runs keep open_clip's default "./logs" under cwd
        log_dir = logs / "logs" / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "open_clip_train.main", *args]
    else:
        args += ["--logs", str(logs)]
        log_dir = logs / name
        cmd = [sys.executable, "-m", "open_clip_train.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(threads),
                          cwd=str(logs))
    out = proc.stdout + proc.stderr
    run = TrainRun(proc.returncode, log_dir, out)
    log_file = log_dir / "out.log"
    text = log_file.read_text() if log_file.exists() else out
    run.train_losses = [(int(e), float(v)) for e, v in _LOSS_RE.findall(text)]
    results = log_dir / "checkpoints" / "results.jsonl"
    if results.exists():
        run.val = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return run


def clip_benchmark_exe() -> str:
    exe = Path(sys.executable).with_name("clip_benchmark")
    return str(exe) if exe.exists() else (shutil.which("clip_benchmark") or "clip_benchmark")


def run_clip_benchmark(
    model: str, checkpoint: str, dataset_root: Path, out_json: Path, *extra: str, dataset: str = "wds/shapes",
    timeout: float = 600, threads: int = 1,
) -> subprocess.CompletedProcess:
    """``clip_benchmark eval`` on a local wds dataset (``dataset_root`` from :func:`write_shapes_wds`), fp32
    (``--no_amp``: on CPU clip_benchmark would otherwise autocast to bfloat16)."""
    cmd = [
        clip_benchmark_exe(), "eval", "--dataset", dataset, "--dataset_root", str(dataset_root),
        "--task", "zeroshot_classification", "--model", model, "--pretrained", str(checkpoint),
        "--output", str(out_json), "--batch_size", "6", "--num_workers", "0", "--recall_k", "1", "5", "--no_amp",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(threads),
                          cwd=str(Path(out_json).parent))


def assert_ok(proc_or_run, what: str, tail: int = 4000) -> None:
    out = getattr(proc_or_run, "output", None) or (
        (getattr(proc_or_run, "stdout", "") or "") + (getattr(proc_or_run, "stderr", "") or ""))
    assert proc_or_run.returncode == 0, f"{what} failed with exit code {proc_or_run.returncode}:\n{out[-tail:]}"


__all__: Sequence[str] = (
    "CLASSNAMES", "TrainRun", "assert_ok", "clip_benchmark_exe", "draw_shape", "run_clip_benchmark",
    "run_trainer", "subprocess_env", "write_shapes_csv", "write_shapes_wds",
)
