"""hessian_spectrum: batches, seeds, run folders and resume; the plot; the CLI; an end-to-end run on
real stimuli from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mamba_clip  # noqa: F401
from mamba_clip.cli import main as cli_main
from mamba_clip.eval.hessian import HessianSpectrum, hessian_spectrum, plot_spectra
from mamba_clip.eval.hessian import spectrum as spectrum_mod

CLASSES = ["cat", "dog", "car"]
FAST = dict(k=2, max_iter=12, tol=1e-3, method="lanczos", progress=False)


@pytest.fixture(scope="module")
def vit():
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("vit-nano", force_image_size=32)


@pytest.fixture(scope="module")
def tensor_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 32, 32, generator=g), torch.randint(0, 3, (10,), generator=g)


@pytest.mark.slow
def test_spectrum_shapes_and_same_seed(vit, tensor_data):
    a = hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=8, batch_size=3, classnames=CLASSES, **FAST)
    assert a.eigenvalues.shape == (3, 2) and list(a.n_images) == [3, 3, 2]
    assert a.values.shape == (6,) and a.eigenvalues.dtype == np.float64
    assert np.all(np.abs(a.eigenvalues[:, 0]) >= np.abs(a.eigenvalues[:, 1]))
    b = hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=8, batch_size=3, classnames=CLASSES, **FAST)
    assert np.array_equal(a.eigenvalues, b.eigenvalues)
    c = hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=8, batch_size=3, classnames=CLASSES,
                         seed=1, **FAST)
    assert not np.array_equal(a.eigenvalues, c.eigenvalues)  # the seed draws other samples
    # CLIP loss: labels become captions from the templates
    d = hessian_spectrum(vit, tensor_data, loss="clip", n_samples=6, batch_size=3, classnames=CLASSES, **FAST)
    assert d.eigenvalues.shape == (2, 2) and np.isfinite(d.eigenvalues).all()
    with pytest.raises(ValueError, match="class names"):
        hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=3, batch_size=3, **FAST)


def test_interrupted_run_resumes_without_recomputing(vit, tensor_data, tmp_path, monkeypatch):
    kw = dict(loss="zeroshot", n_samples=9, batch_size=3, classnames=CLASSES, **FAST)
    ref = hessian_spectrum(vit, tensor_data, **kw)
    real = spectrum_mod.hessian_top_eigen
    calls = []

    def interrupted(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(k["seed"])
        return real(*a, **k)

    monkeypatch.setattr(spectrum_mod, "hessian_top_eigen", interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hessian_spectrum(vit, tensor_data, out_dir=run, label="vit-nano", **kw)
    saved = json.loads((run / "eigenvalues.json").read_text())
    assert [b["index"] for b in saved["batches"]] == [0, 1] and not saved["complete"]
    assert np.load(run / "eigenvalues.npz")["eigenvalues"].shape == (2, 2)
    assert not list(run.glob("*.tmp"))

    def counting(*a, **k):
        calls.append(k["seed"])
        return real(*a, **k)

    monkeypatch.setattr(spectrum_mod, "hessian_top_eigen", counting)
    calls.clear()
    res = hessian_spectrum(vit, tensor_data, out_dir=run, label="vit-nano", **kw)
    assert calls == [2]  # only the unfinished batch (seed + index)
    assert res.complete and np.array_equal(res.eigenvalues, ref.eigenvalues)
    assert np.array_equal(HessianSpectrum.load(run).eigenvalues, ref.eigenvalues)
    with pytest.raises(ValueError, match="other settings.*k: saved 2, now 3"):
        hessian_spectrum(vit, tensor_data, out_dir=run, **{**kw, "k": 3})


def test_finished_run_rerun_leaves_files_untouched(vit, tensor_data, tmp_path):
    kw = dict(loss="zeroshot", n_samples=6, batch_size=3, classnames=CLASSES, **FAST)
    run = tmp_path / "run"
    first = hessian_spectrum(vit, tensor_data, out_dir=run, label="vit-nano", **kw)
    files = [run / "eigenvalues.json", run / "eigenvalues.npz"]
    before = [(f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    again = hessian_spectrum(vit, tensor_data, out_dir=run, label="vit-nano", **kw)
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before
    assert np.array_equal(again.eigenvalues, first.eigenvalues) and again.complete
    # the templates are recorded as strings, not as '<lambda>' (open_clip's templates are lambdas)
    temps = json.loads(files[0].read_text())["settings"]["templates"]
    assert len(temps) == 7 and temps[0] == "itap of a {}." and not any("lambda" in t for t in temps)


def test_progress_counts_products_and_estimates_after_first_batch(vit, tensor_data, capsys):
    lines = []
    kw = {**FAST, "progress": True}
    spec = hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=9, batch_size=3, classnames=CLASSES,
                            log=lines.append, **kw)
    assert len(lines) == 2, lines
    assert "3 of 3 batches to go" in lines[0] and "at most 12 Hessian-vector products" in lines[0]
    assert "first batch took" in lines[1] and "the 2 batches left need about" in lines[1]
    err = capsys.readouterr().err
    n = int(spec.n_hvp[0])
    assert f"products {n}/12 max" in err and "Hessian" in err  # the bar moves with every product
    hessian_spectrum(vit, tensor_data, loss="zeroshot", n_samples=3, batch_size=3, classnames=CLASSES, **FAST)
    assert capsys.readouterr().err == ""  # progress=False: no bar, no lines


def _fake_run(path: Path, label: str, values) -> Path:
    vals = np.asarray(values, dtype=np.float64)
    rec = {"format": spectrum_mod.FORMAT, "label": label, "complete": True,
           "settings": {"k": vals.shape[1]},
           "batches": [{"index": i, "n_images": 15, "eigenvalues": list(map(float, row)), "seconds": 1.0, "n_hvp": 9}
                       for i, row in enumerate(vals)]}
    path.mkdir(parents=True)
    (path / "eigenvalues.json").write_text(json.dumps(rec))
    return path


def test_plot_redraws_from_saved_runs(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "vmamba-nano", [[50.0, -3.0], [20.0, 2.0], [-0.5, 0.1]])
    b = _fake_run(tmp_path / "b", "vit-nano", [[500.0, 40.0], [300.0, -30.0]])
    out = plot_spectra([a, b], tmp_path / "fig.png")
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    fig2 = tmp_path / "fig2.png"
    assert cli_main(["hessian", "plot", str(a), str(b), "--out", str(fig2)]) == 0
    text = capsys.readouterr().out
    assert fig2.is_file() and "vmamba-nano" in text and "2 negative" in text and "1 negative" in text
    assert cli_main(["hessian", "plot", str(tmp_path / "missing"), "--out", str(fig2)]) == 2
    assert "no Hessian run" in capsys.readouterr().err


def test_cli_parses_both_forms():
    from mamba_clip.cli import build_parser

    args = build_parser(["hessian"]).parse_args(["hessian", "--model", "vit-nano", "--data", "d", "--out", "r",
                                                 "--loss", "clip", "--params", "A_logs|Ds", "--k", "3"])
    assert args.model == "vit-nano" and args.params == "A_logs|Ds" and args.k == 3 and args.runs == []
    args = build_parser(["hessian"]).parse_args(["hessian", "plot", "r1", "r2", "--out", "f.png"])
    assert args.runs == ["plot", "r1", "r2"] and args.out == "f.png"
    assert cli_main(["hessian", "--out", "r"]) == 2  # neither --model/--data nor plot


def test_end_to_end_cli_on_stimuli(stimuli_dir, tmp_path, capsys):
    """vmamba-nano over real edge stimuli (ImageFolder, zero-shot loss), PyHessian power iteration,
    then a resumed no-op rerun and the plot."""
    data = stimuli_dir / "edges"
    run = tmp_path / "vmamba"
    argv = ["hessian", "--model", "vmamba-nano", "--data", str(data), "--out", str(run), "--n-samples", "4",
            "--batch-size", "2", "--k", "2", "--max-iter", "6", "--image-size", "32", "--no-progress"]
    assert cli_main(argv) == 0
    rec = json.loads((run / "eigenvalues.json").read_text())
    assert rec["complete"] and rec["settings"]["loss"] == "zeroshot" and rec["settings"]["method"] == "power"
    assert len(rec["settings"]["classnames"]) == 16 and rec["settings"]["image_shape"] == [3, 32, 32]
    assert [len(b["eigenvalues"]) for b in rec["batches"]] == [2, 2]
    assert all(b["n_hvp"] >= 2 and b["seconds"] > 0 for b in rec["batches"])
    first = rec["batches"]
    assert cli_main(argv) == 0  # resume: nothing left to do, same numbers
    assert json.loads((run / "eigenvalues.json").read_text())["batches"] == first
    assert cli_main(["hessian", "plot", str(run), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").is_file()


def test_csv_data_with_clip_loss(stimuli_dir, vit, tmp_path):
    files = sorted((stimuli_dir / "filled-silhouettes").rglob("*.png"))[::40][:4]
    assert len(files) == 4
    csv = tmp_path / "train.csv"
    csv.write_text("filepath\ttitle\n" + "".join(f"{f}\ta drawing of a {f.parent.name}\n" for f in files))
    spec = hessian_spectrum(vit, csv, loss="clip", n_samples=4, batch_size=2, **FAST)
    assert spec.eigenvalues.shape == (2, 2) and np.isfinite(spec.eigenvalues).all()
    with pytest.raises(ValueError, match="integer class labels"):
        hessian_spectrum(vit, csv, loss="zeroshot", n_samples=2, batch_size=2, classnames=CLASSES, **FAST)


def test_bench_hessian_script_runs_tiny(tmp_path):
    """benchmarks/bench_hessian.py end to end on a tiny setting (logic only, no timing claims)."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_hessian.py"
    spec = importlib.util.spec_from_file_location("bench_hessian_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    common = ["--image-size", "32", "--batch", "2", "--rounds", "1", "--hvp-reps", "1", "--k", "1",
              "--max-iter", "1", "--out", str(out)]
    assert bench.main(["--models", "vit-nano", "simba-nano", *common]) == 0
    assert bench.main(["--models", "vit-nano", "--no-batch", "--update", *common]) == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"vit-nano", "simba-nano"} and res["updates"][0]["models"] == ["vit-nano"]
    e = res["results"]["vit-nano"]
    assert e["hvp_ratio"] == pytest.approx(e["hvp_s"] / e["fwd_bwd_s"], rel=0.02)
    assert e["seconds_per_batch"] > 0 and e["batch_run"]["n_hvp"] >= 1  # kept from the first run
    s = res["results"]["simba-nano"]  # issue 17: before/after ratio, graph size, load beside each round
    assert s["hvp_ratio_old"] == pytest.approx(s["hvp_double_s"] / s["fwd_bwd_s"], rel=0.02)
    assert s["graph_mib"] > 0 and s["hvp_peak_mib"] >= 0 and len(s["raw"]["loadavg"]) == 1
