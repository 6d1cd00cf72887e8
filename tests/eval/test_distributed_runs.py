"""The three evaluation commands under ``torchrun --nproc_per_node 2`` (gloo, CPU, one thread per process)
on nano models and small sets: the results equal a one-process run, and a run whose rank 1 dies after its
first item (the ``MAMBA_CLIP_FAULT_AFTER_ITEMS`` hook) finishes with the same results when rerun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args, nproc: int = 1, env=None, ok: bool = True) -> subprocess.CompletedProcess:
    """``mamba-clip ARGS`` in 1 process, or under torchrun with ``nproc`` processes."""
    env = {**os.environ, **ENV, **(env or {})}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    launcher = [sys.executable, "-m", "mamba_clip"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(nproc), "-m", "mamba_clip"]  # fmt: skip
    r = subprocess.run(launcher + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _subset(src: Path, dst: Path, per_class: int, classes: int = 16) -> Path:
    for c in sorted(p.name for p in src.iterdir() if p.is_dir())[:classes]:
        (dst / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            shutil.copy(f, dst / c / f.name)
    return dst


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import open_clip

    import mamba_clip  # noqa: F401

    tmp = tmp_path_factory.mktemp("ckpt")
    out = {}
    for key, name, kw, seed in (("vmamba-nano", "vmamba-nano", {"force_image_size": 32}, 0),
                                ("vit-nano", "vit-nano", {}, 0), ("vit-nano-b", "vit-nano", {}, 1)):
        torch.manual_seed(seed)
        model, _, _ = open_clip.create_model_and_transforms(name, **kw)
        out[key] = tmp / f"{key}.pt"
        torch.save({"state_dict": model.state_dict(), "epoch": 1}, out[key])
    return out


def _zeroshot_jsons(out: Path) -> dict:
    res = {}
    for p in sorted((out / "vmamba-nano").glob("*.json")):
        r = json.loads(p.read_text())
        if p.name != "_summary.json":
            r.pop("seconds")
        res[p.name] = r
    return res


def test_zeroshot_two_processes_equal_one(tmp_path, stimuli_dir, ckpts):
    root = tmp_path / "data"
    for name, src, per in (("sil3", "filled-silhouettes", 3), ("edges", "edges", 2), ("sil", "filled-silhouettes", 1)):
        _subset(stimuli_dir / src, tmp_path / "src" / name, per)
        _run(["make-wds", tmp_path / "src" / name, root / name, "--shard-size", "20", "--no-progress"])
    common = ["zeroshot", "--model", "vmamba-nano", "--pretrained", ckpts["vmamba-nano"], "--image-size", "32",
              "--dataset-root", root, "--datasets", "wds/sil3", "wds/edges", "wds/sil", "--batch-size", "8",
              "--workers", "0", "--shard-images", "16", "--no-progress"]  # fmt: skip
    _run(common + ["--output", tmp_path / "one", "--shard-images", "0"])  # whole sets, one process
    want = _zeroshot_jsons(tmp_path / "one")
    assert len(want) == 4 and want["wds_sil3.json"]["n_images"] == 48
    table = (tmp_path / "one" / "table1.csv").read_text()

    _run(common + ["--output", tmp_path / "two"], nproc=2)  # sil3 (48 images) in 3 parts, edges in 2
    assert _zeroshot_jsons(tmp_path / "two") == want
    assert (tmp_path / "two" / "table1.csv").read_text() == table
    assert not list((tmp_path / "two" / "vmamba-nano" / ".parts").rglob("*.npz"))  # merged and removed

    # rank 1 dies after its first item; the rerun (same command) finishes, with the same numbers
    r = _run(common + ["--output", tmp_path / "killed"], nproc=2, env={"MAMBA_CLIP_FAULT_AFTER_ITEMS": "1"},
             ok=False)  # fmt: skip
    assert r.returncode != 0 and not (tmp_path / "killed" / "table1.csv").exists()
    _run(common + ["--output", tmp_path / "killed"], nproc=2)
    assert _zeroshot_jsons(tmp_path / "killed") == want
    assert (tmp_path / "killed" / "table1.csv").read_text() == table


def test_hessian_two_processes_equal_one_and_resume_across_world_sizes(tmp_path, stimuli_dir, ckpts):
    common = ["hessian", "--model", "vmamba-nano", "--pretrained", ckpts["vmamba-nano"], "--data",
              stimuli_dir / "edges", "--n-samples", "8", "--batch-size", "2", "--k", "2",
              "--max-iter", "5", "--image-size", "32", "--no-progress", "--label", "nano"]  # fmt: skip

    def eig(run: Path):
        rec = json.loads((run / "eigenvalues.json").read_text())
        assert rec["complete"] and not list((run / "parts").glob("*.json"))
        return [(b["index"], b["eigenvalues"], b["n_hvp"]) for b in rec["batches"]]

    _run(common + ["--out", tmp_path / "one"])
    want = eig(tmp_path / "one")
    assert [b[0] for b in want] == [0, 1, 2, 3]
    _run(common + ["--out", tmp_path / "two"], nproc=2)
    assert eig(tmp_path / "two") == want
    # rank 1 dies after one batch; rerun with ONE process: it keeps the parts and computes the rest
    r = _run(common + ["--out", tmp_path / "killed"], nproc=2, env={"MAMBA_CLIP_FAULT_AFTER_ITEMS": "1"},
             ok=False)  # fmt: skip
    assert r.returncode != 0 and list((tmp_path / "killed" / "parts").glob("batch-*.json"))
    _run(common + ["--out", tmp_path / "killed"])
    assert eig(tmp_path / "killed") == want
    _run(["hessian", "plot", tmp_path / "killed", "--out", tmp_path / "fig.png"])
    assert (tmp_path / "fig.png").is_file()


def test_ood_two_processes_equal_one(tmp_path, shared_dir, ckpts):
    stimuli = shared_dir / "data" / "stimuli"
    common = ["ood", "evaluate", "--models", f"vit-nano:{ckpts['vit-nano']}", f"vit-nano:{ckpts['vit-nano-b']}",
              "--datasets", f"cue-conflict={stimuli / 'cue-conflict'}",
              f"edges={stimuli / 'edges'}", "--templates", "1", "--max-images", "16", "--batch-size", "8",
              "--no-progress"]  # fmt: skip

    def files(out: Path):
        found = {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*.csv"))}
        found["summary"] = json.loads((out / "summary.json").read_text())
        found["figures"] = [(out / f).read_bytes() for f in ("figure1.png", "figure2.png")]
        return found

    _run(common + ["--out", tmp_path / "one"])
    want = files(tmp_path / "one")
    assert len(want) == 6  # 4 CSVs, the summary, the figures
    _run(common + ["--out", tmp_path / "two"], nproc=2)
    assert files(tmp_path / "two") == want
    r = _run(common + ["--out", tmp_path / "killed"], nproc=2, env={"MAMBA_CLIP_FAULT_AFTER_ITEMS": "1"},
             ok=False)  # fmt: skip
    assert r.returncode != 0 and not (tmp_path / "killed" / "summary.json").exists()
    _run(common + ["--out", tmp_path / "killed"], nproc=2)
    assert files(tmp_path / "killed") == want


def test_hessian_srun_style_ranks_meet_through_the_folder(tmp_path, stimuli_dir, ckpts):
    """Two plain processes with SLURM's variables (as ``srun`` starts them, no MASTER_ADDR): no process
    group, the ranks meet through marker files in the run folder; the eigenvalues equal one process."""
    common = ["hessian", "--model", "vmamba-nano", "--pretrained", ckpts["vmamba-nano"], "--data",
              stimuli_dir / "edges", "--n-samples", "6", "--batch-size", "2", "--k", "2",
              "--max-iter", "4", "--image-size", "32", "--no-progress", "--label", "nano"]  # fmt: skip
    _run(common + ["--out", tmp_path / "one"])
    env = {**os.environ, **ENV, "SLURM_NTASKS": "2", "SLURM_JOB_ID": "4242"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    procs = [subprocess.Popen([sys.executable, "-m", "mamba_clip"] + [str(a) for a in common]
                              + ["--out", str(tmp_path / "srun")], env={**env, "SLURM_PROCID": str(r),
                              "SLURM_LOCALID": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "srun" / ".dist" / "4242-w2" / "hessian" / "rank1").is_file()
    one = json.loads((tmp_path / "one" / "eigenvalues.json").read_text())["batches"]
    two = json.loads((tmp_path / "srun" / "eigenvalues.json").read_text())["batches"]
    assert [(b["index"], b["eigenvalues"]) for b in two] == [(b["index"], b["eigenvalues"]) for b in one]
