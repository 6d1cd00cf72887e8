"""Packaging: a non-editable wheel carries the configs and the autoload hook; `import mamba_clip` is light;
open_clip and timm see our models in a fresh process without the user importing mamba_clip."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(p.stem for p in (REPO / "model_configs").glob("*.json"))


def _run(code: str, python: str = sys.executable, **env) -> str:
    import os

    full_env = {**os.environ, **env}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=full_env, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_light():
    out = _run(
        "import sys, mamba_clip; "
        "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'numpy', 'mamba_ssm') if m in sys.modules))"
    )
    assert out == "[]"


def test_autoload_registers_in_fresh_process():
    names = _run("import json, open_clip; print(json.dumps(open_clip.list_models()))")
    listed = set(json.loads(names))
    assert CONFIG_NAMES, "no model configs found in model_configs/"
    missing = set(CONFIG_NAMES) - listed
    assert not missing, f"open_clip does not list {missing}"


def test_autoload_can_be_disabled():
    names = _run(
        "import json, open_clip; print(json.dumps(open_clip.list_models()))", MAMBA_CLIP_NO_AUTOLOAD="1"
    )
    assert not set(CONFIG_NAMES) & set(json.loads(names))


@pytest.mark.slow
def test_non_editable_wheel_install(tmp_path):
    """`pip install .` path: build the wheel, install it into a fresh venv that sees the dev venv's
    dependencies (but not its editable copy), and check configs + hook work from the installed copy."""
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
         "-w", str(wheel_dir)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("open_clip_mamba-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "mamba_clip_autoload.pth" in names
    for cfg in CONFIG_NAMES:
        assert f"mamba_clip/model_configs/{cfg}.json" in names
    # data the code reads at run time, with the licence and source notes beside it
    for data in ("eval/ood/data/mean_power_spectrum_grey.npy", "eval/ood/data/x_gamma_function.npy",
                 "eval/ood/data/LICENSE.txt", "eval/ood/data/README.md",
                 "openclip_ext/data/checkpoint-keys/CLIP_VMamba_T220.tsv.gz",
                 "openclip_ext/data/checkpoint-keys/CLIP_Simba_L.tsv.gz",
                 "openclip_ext/data/checkpoint-keys/README.md"):
        assert f"mamba_clip/{data}" in names, data

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(_run("import sysconfig; print(sysconfig.get_paths()['purelib'])", python=str(py)))
    # plain directory entry: the dev venv's .pth files (incl. the editable finder) are NOT processed
    (site / "zz_dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    out = _run(
        "import json, open_clip, mamba_clip; "
        "print(json.dumps([mamba_clip.__file__, open_clip.list_models()]))",
        python=str(py),
    )
    location, listed = json.loads(out)
    assert location.startswith(str(site)), location
    assert set(CONFIG_NAMES) <= set(listed)


def test_configs_found_from_uninstalled_source_tree():
    """Running from a checkout on PYTHONPATH (no install, no site-packages) still finds the configs."""
    code = (
        "from mamba_clip.openclip_ext.configs import config_dir; "
        "print(sorted(p.stem for p in config_dir().glob('*.json')))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd="/",
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(CONFIG_NAMES)


def _run_clean(code: str, **env) -> str:
    """``_run`` without the OpenMP wait settings this test process itself inherited or got from the hook."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_autoload_sets_short_openmp_spin_before_torch():
    """Issue 17: libgomp reads its wait policy once, when torch loads it; the hook sets a short spin first,
    unless the user chose a policy or a spin count (or switched the hook off)."""
    code = "import os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run_clean(code) == "1000"
    assert _run_clean(code, OMP_WAIT_POLICY="ACTIVE") == "None"
    assert _run_clean(code, GOMP_SPINCOUNT="5") == "5"
    assert _run_clean(code, MAMBA_CLIP_NO_AUTOLOAD="1") == "None"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_kernel_shares_torchs_openmp_runtime():
    """One OpenMP runtime per process: the C kernel runs on torch's pool, not on a second team."""
    code = (
        "import torch\n"
        "from mamba_clip.ops import scan_cpu\n"
        "if not scan_cpu.is_available(): print('[]'); raise SystemExit\n"
        "import json, os\n"
        "libs = {l.split()[-1] for l in open('/proc/self/maps') if 'omp' in os.path.basename(l.split()[-1])}\n"
        "print(json.dumps(sorted(libs)))\n"
    )
    libs = json.loads(_run_clean(code))
    assert len(libs) <= 1, libs
