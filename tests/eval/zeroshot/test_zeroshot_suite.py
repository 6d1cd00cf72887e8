"""The zero-shot suite end to end on vmamba-nano (random weights saved as a local checkpoint) with real
images (edges and filled silhouettes from ``stimuli_dir``: ``../shared`` or ``tests/data``) converted by
``make-wds``: ``mamba-clip zeroshot`` and the stock ``clip_benchmark eval`` give the same metrics; result
JSON, table1.csv/.md/.png; a rerun resumes; a missing dataset is reported and a corrupt image fails only
its dataset; reference templates with synonyms (FER-2013's class names) through the whole loop; vit-nano
as a second model in one table."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from mamba_clip.cli import main as cli_main

pytestmark = pytest.mark.slow
FER_CLASSES = ["airplane", "bear", "bicycle", "bird", "boat", "bottle", "car"]  # 7 folders -> FER's 7 classes


def _subset(src: Path, dst: Path, per_class: int, classes=None):
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):
        if classes is not None and c not in classes:
            continue
        (dst / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            shutil.copy(f, dst / c / f.name)


def _truncate_member(shard: Path, name: str) -> None:
    """Rewrite ``shard`` with member ``name`` cut to 100 bytes (a dataset gone bad on disk)."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    done = False
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            if m.name == name:
                data, done = data[:100], True
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    assert done


def _cli(*args) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory, stimuli_dir):
    import open_clip

    tmp = tmp_path_factory.mktemp("zeroshot")
    root = tmp / "data"
    _subset(stimuli_dir / "filled-silhouettes", tmp / "src" / "sil", 3)
    _subset(stimuli_dir / "edges", tmp / "src" / "edges", 2)
    _subset(stimuli_dir / "filled-silhouettes", tmp / "src" / "fer", 2, classes=FER_CLASSES)
    _subset(stimuli_dir / "edges", tmp / "src" / "broken", 1)
    (tmp / "templates.txt").write_text("a photo of a {}.\na drawing of the {c}.\n")
    for name, sub in (("sil", "sil"), ("edges", "edges"), ("fer2013", "fer"), ("broken", "broken")):
        rc, out, _ = _cli("make-wds", tmp / "src" / sub, root / name, "--templates", tmp / "templates.txt",
                          "--shard-size", "20", "--no-progress")  # fmt: skip
        assert rc == 0, out
    # make-wds refuses corrupt images, so the bear image (sample 1) goes bad after packing
    _truncate_member(root / "broken" / "test" / "0.tar", "s0000001.png")
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("vmamba-nano")
    ckpt = tmp / "nano.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, ckpt)
    out_dir = tmp / "out"
    t0 = time.time()
    run1 = _cli("zeroshot", "--model", "vmamba-nano", "--pretrained", ckpt, "--dataset-root", root,
                "--output", out_dir, "--datasets", "wds/sil", "wds/edges", "wds/fer2013", "cifar10",
                "--batch-size", "16", "--workers", "1")  # fmt: skip
    t1 = time.time()
    return {"tmp": tmp, "root": root, "ckpt": ckpt, "out": out_dir, "run1": run1, "run1_s": t1 - t0}


def test_first_run_results_and_missing(work):
    rc, out, err = work["run1"]
    assert rc == 0, out + err
    mdir = work["out"] / "vmamba-nano"
    sil = json.loads((mdir / "wds_sil.json").read_text())
    for k in ("dataset", "model", "pretrained", "task", "metrics", "metric", "metric_name", "n_images",
              "seconds", "towers", "templates"):  # fmt: skip
        assert k in sil, k
    assert sil["n_images"] == 48 and sil["n_classes"] == 16 and sil["towers"] == "single"
    assert sil["metric_name"] == "top1" and sil["metric"] == sil["metrics"]["acc1"]
    assert sil["templates_used"] == "wds_folder" and sil["n_templates"] == 2  # wds/ set outside Table 1
    assert sil["pretrained"] == str(work["ckpt"]) and sil["model"] == "vmamba-nano"
    # the missing dataset is listed with the path it expected and how to get it; the others still ran
    assert "cifar10" in out and str(work["root"] / "cifar10") in out and "build_dataset('cifar10'" in out
    assert "3 evaluated, 1 missing, 0 failed" in out
    assert not (mdir / "cifar10.json").exists()
    summary = json.loads((mdir / "_summary.json").read_text())
    assert summary["cifar10"]["status"] == "missing"
    assert "zero-shot vmamba-nano" in err  # progress bar over datasets


def test_reference_templates_with_synonyms(work):
    fer = json.loads((work["out"] / "vmamba-nano" / "fer2013.json").read_text())
    # wds/fer2013 is Table 1's FER-2013: reference templates (6) and names (happy/smiling, neutral/bored)
    assert fer["templates_used"] == "reference" and fer["n_templates"] == 6 and fer["n_classes"] == 7
    assert fer["table1_column"] == "FER-2013" and fer["n_images"] == 14


def test_tables_written(work):
    out = work["out"]
    rows = list(csv.DictReader(open(out / "table1.csv")))
    ours = [r for r in rows if r["model"] == "vmamba-nano" and r["row"] == "ours"]
    assert len(ours) == 1
    sil = json.loads((out / "vmamba-nano" / "wds_sil.json").read_text())
    assert float(ours[0]["wds/sil"]) == pytest.approx(100 * sil["metric"], abs=0.051)
    assert ours[0]["FER-2013"] != "" and ours[0]["n_table1"] == "1"
    md = (out / "table1.md").read_text()
    assert "| vmamba-nano | ours |" in md and "FER-2013" in md
    assert (out / "table1.png").stat().st_size > 10_000


def test_rerun_resumes_and_corrupt_image_fails_only_its_dataset(work):
    mdir = work["out"] / "vmamba-nano"
    before = {p.name: p.stat().st_mtime_ns for p in mdir.glob("wds_*.json")}
    rc, out, err = _cli("zeroshot", "--model", "vmamba-nano", "--pretrained", work["ckpt"], "--dataset-root",
                        work["root"], "--output", work["out"], "--datasets", "wds/sil", "wds/edges", "wds/broken",
                        "--batch-size", "16", "--workers", "1", "--no-progress")  # fmt: skip
    assert rc == 1, out + err  # a dataset failed; the run finished
    assert {p.name: p.stat().st_mtime_ns for p in mdir.glob("wds_*.json")} == before  # nothing recomputed
    assert out.count("(resumed)") == 2
    # the shard and member of the bad image, in one line although it failed in a DataLoader worker
    line = next(ln for ln in out.splitlines() if ln.startswith("wds/broken"))
    assert "failed" in line and "CorruptImageError" in line and "0.tar:s0000001.png" in line
    assert not (mdir / "wds_broken.json").exists()
    assert "2 evaluated, 0 missing, 1 failed" in out


def test_stock_clip_benchmark_reads_make_wds_and_agrees(work):
    ours = json.loads((work["out"] / "vmamba-nano" / "wds_sil.json").read_text())["metrics"]
    exe = Path(sys.executable).with_name("clip_benchmark")
    cmd = [str(exe) if exe.exists() else "clip_benchmark", "eval", "--dataset", "wds/sil", "--dataset_root",
           str(work["root"] / "sil"), "--model", "vmamba-nano", "--pretrained", str(work["ckpt"]), "--no_amp",
           "--batch_size", "16", "--num_workers", "0", "--output", str(work["tmp"] / "cb.json")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MAMBA_CLIP_NO_AUTOLOAD"}  # the stock tool needs the hook
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    theirs = json.loads((work["tmp"] / "cb.json").read_text())["metrics"]
    assert 0 < ours["acc5"] < 1  # not a degenerate comparison
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert theirs[k] == pytest.approx(ours[k], abs=1e-9), (k, theirs, ours)


def test_second_model_same_table(work):
    import open_clip

    from mamba_clip.eval.zeroshot import run_suite

    # an open_clip_train-style checkpoint (DDP "module." prefix), given as a Path
    model = open_clip.create_model("vit-nano")
    ckpt = work["tmp"] / "vit_epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               ckpt)  # fmt: skip
    res = run_suite("vit-nano", ckpt, work["root"], work["out"], datasets=["wds/edges"], batch_size=16,
                    workers=0, progress=False)  # fmt: skip
    assert res["wds/edges"]["status"] == "ok" and res["wds/edges"]["n_images"] == 32
    assert res["wds/edges"]["pretrained"] == str(ckpt) and res["wds/edges"]["towers"] == "single"
    rows = list(csv.DictReader(open(work["out"] / "table1.csv")))
    assert {r["model"] for r in rows} == {"vit-nano", "vmamba-nano"}


def test_unknown_dataset_fails_at_once(tmp_path):
    t0 = time.time()
    rc, out, err = _cli("zeroshot", "--model", "vmamba-nano", "--dataset-root", tmp_path, "--output", tmp_path,
                        "--datasets", "cifar10", "imagenet-1k")  # fmt: skip
    assert rc == 2
    assert "'imagenet-1k'" in err and "valid names: food101, cifar10" in err and "wds/NAME" in err
    assert time.time() - t0 < 5 and not any(tmp_path.iterdir())


def test_towers_plan(tmp_path):
    from mamba_clip.eval.zeroshot.catalog import resolve
    from mamba_clip.eval.zeroshot.suite import WeightSource

    tag = WeightSource("vmamba-s", "yfcc15m-online")
    assert tag.kind == "tag"
    assert tag.towers_for(resolve("imagenet"), "report") == "online"
    assert tag.towers_for(resolve("cifar10"), "report") == "ema"
    assert tag.towers_for(resolve("imagenet"), "ema") == "ema"
    f = tmp_path / "w.pt"
    torch.save({"state_dict": {"visual.trunk.x": torch.zeros(1)}}, f)
    single = WeightSource("vmamba-nano", str(f))
    assert single.kind == "file" and single.towers_for(resolve("imagenet"), "report") == "single"
    with pytest.raises(ValueError, match="one set of towers"):
        single.towers_for(resolve("cifar10"), "online")
    assert WeightSource("vmamba-nano", None).towers_for(resolve("cifar10"), "report") == "single"


def test_release_file_towers_switch(tmp_path):
    """A release-layout file holds both copies: 'report' reads the online towers for ImageNet, EMA elsewhere."""
    import open_clip

    from mamba_clip.eval.zeroshot.catalog import resolve
    from mamba_clip.eval.zeroshot.suite import WeightSource
    from mamba_clip.openclip_ext.checkpoints import open_clip_to_original

    sds = {}
    for towers, seed in (("online", 0), ("ema", 1)):
        torch.manual_seed(seed)
        sds[towers] = open_clip.create_model("vmamba-nano").state_dict()

    def is_ema(k):
        return "_e." in k or k.endswith("_e")

    release = {k: v for k, v in open_clip_to_original(sds["online"]).items() if not is_ema(k)}
    release.update({k: v for k, v in open_clip_to_original(sds["ema"]).items() if is_ema(k)})
    path = tmp_path / "VMamba_nano_clip.pt"
    torch.save({"state_dict": release, "epoch": 25}, path)
    src = WeightSource("vmamba-nano", str(path))
    assert src.kind == "release_file"
    assert src.towers_for(resolve("imagenet"), "report") == "online"
    assert src.towers_for(resolve("pets"), "report") == "ema"
    for towers in ("online", "ema"):
        model, _, _ = src.load(towers)
        got = model.state_dict()
        key = "visual.head.proj.weight"
        torch.testing.assert_close(got[key], sds[towers][key])
        torch.testing.assert_close(got["transformer.resblocks.0.attn.in_proj_weight"],
                                   sds[towers]["transformer.resblocks.0.attn.in_proj_weight"])  # fmt: skip
