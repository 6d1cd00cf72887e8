"""``mamba-clip doctor`` (issue 18): versions, the backend "auto" picks, a self-check of every backend
against "ref"; exit 0 when the backends "auto" uses are healthy, 1 otherwise; ``--json``."""

from __future__ import annotations

import json

from mamba_clip.cli import main


def test_doctor_json_on_this_machine(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    v = report["versions"]
    assert v["torch"] and v["open_clip"] and v["timm"] and "clip_benchmark" in v and "mamba-ssm" in v
    assert "selective_scan_cuda" in v and "causal-conv1d" in v
    assert "C compiler" in report["toolchain"] and "cpu kernel cache" in report["toolchain"]
    assert report["auto"]["cpu"] in ("cpu", "torch")
    ok = {(c["device"], c["backend"]) for c in report["checks"] if c["ok"]}
    assert ("cpu", "torch") in ok and ("cpu", report["auto"]["cpu"]) in ok
    assert report["healthy"] is True


def test_doctor_fails_when_a_backend_auto_uses_is_wrong(capsys, monkeypatch):
    import sys

    import mamba_clip.ops.scan_torch as scan_torch

    ss = sys.modules["mamba_clip.ops.selective_scan"]

    real = scan_torch.selective_scan_torch
    wrong = lambda *a, **k: real(*a, **k) + 1.0  # noqa: E731
    monkeypatch.setattr(ss, "selective_scan_torch", wrong)
    monkeypatch.setattr(ss, "_cpu_available", lambda: False)  # so "auto" uses "torch" on the CPU
    monkeypatch.setattr(ss, "_warned_cpu_fallback", True)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "cpu      torch    FAIL max relative error" in out and "NOT healthy" in out
