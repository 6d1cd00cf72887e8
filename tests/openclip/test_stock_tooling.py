"""The unmodified open_clip trainer, torchrun/DDP and the clip_benchmark CLI on our towers (CPU).

Every run is a real subprocess of the installed tools on a tiny dataset of PIL-drawn coloured shapes
(``_utils``); the models are found through the install hook only. Parametrised over the nano
configs of all towers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _utils import (
    CLASSNAMES,
    assert_ok,
    run_clip_benchmark,
    run_trainer,
    subprocess_env,
    write_shapes_csv,
    write_shapes_wds,
)

pytestmark = pytest.mark.slow

NANOS = ["vmamba-nano", "simba-nano"]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_csv(root / "train", n=48)
    write_shapes_wds(root / "wds", n=18)
    return root


@pytest.fixture(scope="module", params=NANOS)
def trained(request, data_dir, tmp_path_factory):
    """2 epochs of the stock trainer (batch 4, 48 images, val = train set) -> (model, TrainRun)."""
    logs = tmp_path_factory.mktemp("logs")
    run = run_trainer(logs, "base", request.param, data_dir / "train" / "train.csv", epochs=2, batch_size=4)
    return request.param, run, logs


def test_train_two_epochs_loss_goes_down(trained):
    _, run, _ = trained
    assert_ok(run, "open_clip_train.main")
    assert [c.name for c in run.checkpoints] == ["epoch_1.pt", "epoch_2.pt"]
    assert all(math.isfinite(v) for _, v in run.train_losses)
    assert run.epoch_mean_loss(1) < run.epoch_mean_loss(0)
    # val = the train set in eval mode, scored in batches of 4: after 24 steps it sits near chance (ln 4)
    # and moves in the 6th digit, so only check both epochs were scored and nothing diverged
    val = [r["clip_val_loss"] for r in run.val]
    assert len(val) == 2 and all(math.isfinite(v) and v < math.log(4) + 0.05 for v in val), val


def test_resume_continues_from_checkpoint(trained):
    model, run, logs = trained
    assert_ok(run, "open_clip_train.main")
    ckpt = run.checkpoints[-1]
    resumed = run_trainer(logs, "resumed", model, _csv_of(run), "--resume", str(ckpt), epochs=3, batch_size=4,
                          val=False)
    assert_ok(resumed, "open_clip_train.main --resume")
    assert "resuming checkpoint" in (resumed.log_dir / "out.log").read_text()
    epochs = sorted({e for e, _ in resumed.train_losses})
    assert epochs == [2], f"expected only epoch index 2 after resuming from epoch 2, got {epochs}"
    assert [c.name for c in resumed.checkpoints] == ["epoch_3.pt"]
    state = torch.load(resumed.checkpoints[0], map_location="cpu", weights_only=False)
    prev = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == 3
    # started from the trained weights (resumed optimizer state too), not from a fresh init
    assert "optimizer" in state and prev["optimizer"]["state"]
    # loss right after resuming is already at the level reached in epoch 2, not back at chance
    assert resumed.epoch_mean_loss(2) < run.epoch_mean_loss(0)


def _csv_of(run) -> Path:
    params = (run.log_dir / "params.txt").read_text()
    for line in params.splitlines():
        if line.startswith("train_data:"):
            return Path(line.split(":", 1)[1].strip())
    raise AssertionError("train_data not found in params.txt")


def test_clip_benchmark_cli_on_trained_checkpoint(trained, data_dir, tmp_path):
    import open_clip

    model, run, _ = trained
    assert_ok(run, "open_clip_train.main")
    ckpt = run.checkpoints[-1]
    out = tmp_path / "result.json"
    proc = run_clip_benchmark(model, str(ckpt), data_dir / "wds", out)
    assert_ok(proc, "clip_benchmark eval")
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) >= {"acc1", "acc5", "mean_per_class_recall"}  # acc5: the top-k path (numpy < 2.4)

    # the CLI evaluated exactly our trained weights with our preprocessing: redo it in process
    clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=str(ckpt))
    clip.eval()
    tok = open_clip.get_tokenizer(model)
    templates = (data_dir / "wds" / "zeroshot_classification_templates.txt").read_text().split("\n")
    templates = [t for t in templates if t]
    import io
    import tarfile

    from PIL import Image

    images, labels = [], []
    with tarfile.open(data_dir / "wds" / "test" / "0.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for key in sorted({n.rsplit(".", 1)[0] for n in members}):
        images.append(preprocess(Image.open(io.BytesIO(members[key + ".png"])).convert("RGB")))
        labels.append(int(members[key + ".cls"]))
    with torch.no_grad():
        class_emb = []
        for c in CLASSNAMES:
            e = clip.encode_text(tok([t.format(c=c) for t in templates]))
            e = torch.nn.functional.normalize(e, dim=-1).mean(0)
            class_emb.append(e / e.norm())
        w = torch.stack(class_emb, dim=1)
        img = torch.nn.functional.normalize(clip.encode_image(torch.stack(images)), dim=-1)
        pred = (img @ w).argmax(-1)
    acc1 = (pred == torch.tensor(labels)).float().mean().item()
    assert metrics["acc1"] == pytest.approx(acc1, abs=1e-6)


@pytest.mark.parametrize("model", NANOS)
def test_trainer_flags_grad_checkpointing_lock_image_amp_bf16(model, data_dir, tmp_path):
    run = run_trainer(
        tmp_path, "flags", model, data_dir / "train" / "train.csv",
        "--grad-checkpointing", "--lock-image", "--lock-image-unlocked-groups", "2", "--precision", "amp_bf16",
        epochs=1, batch_size=8, val=False,
    )
    assert_ok(run, "open_clip_train.main with --grad-checkpointing --lock-image ... --precision amp_bf16")
    assert run.train_losses and all(math.isfinite(v) for _, v in run.train_losses)
    sd = torch.load(run.checkpoints[0], map_location="cpu", weights_only=False)["state_dict"]
    # the locked stem did not move; compare with a model built the way the trainer builds it
    import re

    import open_clip
    from open_clip_train.main import random_seed

    random_seed(0, 0)
    clip = open_clip.create_model(model, force_image_size=64)
    fresh = {k: p.detach() for k, p in clip.named_parameters()}  # parameters only: BN stats may move
    stem_re = re.compile(clip.visual.trunk.group_matcher()["stem"])
    stem = [k for k in fresh if k.startswith("visual.trunk.") and stem_re.match(k[len("visual.trunk."):])]
    assert stem, "no stem parameters found"
    assert all(torch.equal(sd[k], fresh[k]) for k in stem)
    assert any(not torch.equal(sd[k], fresh[k]) for k in fresh if k.startswith("text") or k == "text_projection")


@pytest.mark.parametrize("model", NANOS)
def test_ddp_two_processes_identical_weights(model, tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "_ddp_worker.py"), "--model", model, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env(1), cwd=str(tmp_path))
    assert_ok(proc, "torch.distributed.run _ddp_worker.py")
    res = json.loads(out.read_text())
    assert res["world"] == 2
    assert res["moved"] > 0
    assert res["max_abs_diff"] == 0.0


CPU_DDP_UPSTREAM_ERROR = "DistributedDataParallel device_ids and output_device arguments only work with"


@pytest.mark.parametrize("model", NANOS[:1])
def test_torchrun_stock_trainer_two_processes(model, data_dir, tmp_path):
    """``torchrun -m open_clip_train.main --model <ours>`` finds and builds our model on every rank.

    open_clip_train 3.3 always wraps the model as ``DDP(model, device_ids=[device])``, which torch
    rejects for CPU modules, so on a CPU-only machine the stock trainer cannot train with more than
    one process whatever the model (on GPUs this argument is right). When that upstream error is what
    stops the run, the test still requires every rank to have built our model first; the DDP step
    itself is covered by test_ddp_two_processes_identical_weights.
    """
    run = run_trainer(tmp_path, "ddp", model, data_dir / "train" / "train.csv", epochs=1, batch_size=4, val=False,
                      nproc=2)
    params = (run.log_dir / "params.txt").read_text()
    assert "world_size: 2" in params and f"model: {model}" in params
    log = (run.log_dir / "out.log").read_text()
    assert f"Loaded built-in {model} model config" in log or model in log
    if run.returncode == 0:
        assert run.train_losses and [c.name for c in run.checkpoints] == ["epoch_1.pt"]
    else:
        for rank in (0, 1):  # both ranks got as far as wrapping the built model
            assert f"[rank{rank}]: ValueError: {CPU_DDP_UPSTREAM_ERROR}" in run.output, run.output[-4000:]
        assert "Traceback" not in log


@pytest.mark.parametrize("model", NANOS)
def test_trainer_torchcompile(model, data_dir, tmp_path):
    """``--torchcompile``: the stock trainer compiles our CLIP model with inductor (the scan kernels
    are opaque custom ops to it) and trains one epoch with finite losses and a checkpoint."""
    run = run_trainer(tmp_path, "compile", model, data_dir / "train" / "train.csv", "--torchcompile",
                      epochs=1, batch_size=8, val=False, timeout=1500)
    assert_ok(run, "open_clip_train.main --torchcompile")
    assert "Compiling model" in run.output, run.output[-3000:]
    losses = [v for _, v in run.train_losses]
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses)
    assert run.checkpoints and run.checkpoints[-1].name == "epoch_1.pt"
