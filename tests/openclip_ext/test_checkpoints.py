"""Converter unit tests: full-size release key lists, tower selection, errors, atomic writes."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from _release import ema_twin, random_state_dict, read_tsv, release_layout, training_checkpoint

from mamba_clip.openclip_ext import checkpoints as ck

RELEASES = {
    "vmamba-t220": "CLIP_VMamba_T220",
    "vmamba-s": "CLIP_VMamba_S",
    "vmamba-b": "CLIP_VMamba_B",
    "simba-s": "CLIP_Simba_S",
    "simba-b": "CLIP_Simba_B",
    "simba-l": "CLIP_Simba_L",
}


def _tsv(keys_dir, original):
    return read_tsv(keys_dir / f"{original}.tsv")


def _scalar_state_dict(layout):
    """Full-size tensors at no memory cost: each key is a distinct constant broadcast to its shape."""
    return {
        k: torch.tensor(i, dtype=dtype).expand(shape) if shape else torch.tensor(i, dtype=dtype)
        for i, (k, (shape, dtype)) in enumerate(layout.items())
    }


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_key_lists_match_our_models(checkpoint_keys_dir, name):
    """The release layout of each of our full-size models is exactly the shared key list, and the
    converted EMA and online towers fit the model key for key, shape for shape."""
    layout = _tsv(checkpoint_keys_dir, RELEASES[name])
    shapes = ck.model_state_shapes(name)
    ours = release_layout({k: (s, None) for k, s in shapes.items()})
    assert {k: s for k, (s, _) in ours.items()} == {k: s for k, (s, _) in layout.items()}
    sd = _scalar_state_dict(layout)
    for towers in ck.TOWERS:
        converted = ck.original_to_open_clip(sd, towers)
        assert ck.mismatches(converted, shapes) == []


@pytest.mark.parametrize("original", ["CLIP_VMamba_B", "CLIP_Simba_S"])
@pytest.mark.parametrize("towers", ck.TOWERS)
def test_tower_selection_full_size(checkpoint_keys_dir, original, towers):
    layout = _tsv(checkpoint_keys_dir, original)
    sd = _scalar_state_dict(layout)
    out = ck.original_to_open_clip(sd, towers)
    e = "_e" if towers == "ema" else ""
    n_visual = sum(k.startswith("module.visual.") for k in layout)
    n_text = sum(k.startswith("module.transformer.") for k in layout)
    assert sum(k.startswith("visual.trunk.") for k in out) == n_visual
    assert sum(k.startswith("transformer.") for k in out) == n_text
    for k, v in out.items():
        if k.startswith("visual.trunk."):
            src = f"module.visual{e}." + k[len("visual.trunk."):]
        elif k.startswith("transformer."):
            src = f"module.transformer{e}." + k[len("transformer."):]
        elif k == "visual.head.proj.weight":
            proj = sd[f"module.image_projection{e}"]
            assert v.shape == proj.shape[::-1]
            assert torch.equal(v, proj.t())
            continue
        elif k == "logit_scale":
            src = "module.logit_scale"
        else:
            mod, _, attr = k.rpartition(".")
            src = f"module.{mod}{e}.{attr}" if mod in ("token_embedding", "ln_final") else f"module.{k}{e}"
        assert v is sd[src], (k, src)
        assert v.dtype == layout[src][1]


def test_identify_model_from_shapes(checkpoint_keys_dir):
    sd = _scalar_state_dict(_tsv(checkpoint_keys_dir, "CLIP_Simba_S"))
    assert ck.identify_model(ck._strip_module(sd)) == "simba-s"


def test_other_model_names_both_and_lists_keys(checkpoint_keys_dir):
    sd = _scalar_state_dict(_tsv(checkpoint_keys_dir, "CLIP_Simba_S"))
    loaded = ck.LoadedCheckpoint("x.pt", ck._strip_module(sd), "original", {"source": "CLIP_Simba_S"})
    with pytest.raises(ck.ModelMismatchError) as err:
        ck.to_open_clip(loaded, target="simba-b")
    msg = str(err.value)
    assert "CLIP_Simba_S" in msg and "simba-b" in msg
    # first mismatch lines carry key, checkpoint shape and model shape
    assert "checkpoint (" in msg and "vs model (" in msg
    first = msg.split("\n")[1].strip()
    key = first.split(":")[0]
    assert key in ck.model_state_shapes("simba-b")
    # without a recorded name, the source is recognised from its shapes
    loaded.meta = {}
    with pytest.raises(ck.ModelMismatchError, match="is for simba-s, not for the target model simba-b"):
        ck.to_open_clip(loaded, target="simba-b")


def test_missing_tower_copy(checkpoint_keys_dir):
    sd = _scalar_state_dict(_tsv(checkpoint_keys_dir, "CLIP_Simba_S"))
    no_ema = {k: v for k, v in sd.items() if not k.startswith("module.visual_e.")}
    with pytest.raises(ck.TowerMissingError, match=r"no complete EMA tower copy.*visual_e\.\*.*'online'"):
        ck.original_to_open_clip(no_ema, "ema")
    assert "visual.head.proj.weight" in ck.original_to_open_clip(no_ema, "online")
    no_proj = {k: v for k, v in sd.items() if k != "module.image_projection"}
    with pytest.raises(ck.TowerMissingError, match="image_projection"):
        ck.original_to_open_clip(no_proj, "online")
    with pytest.raises(ValueError, match="towers='best'"):
        ck.original_to_open_clip(sd, "best")


# ------------------------------------------------------------------------------ files on disk
@pytest.fixture
def small_release(tmp_path):
    """A small release-layout file (one block per tower) in the reference training-checkpoint format."""
    shapes = {
        "visual.trunk.stem.weight": ((8, 3, 3, 3), torch.float32),
        "visual.trunk.bn.running_var": ((8,), torch.float32),
        "visual.trunk.bn.num_batches_tracked": ((), torch.int64),
        "visual.head.proj.weight": ((6, 8), torch.float32),
        "transformer.resblocks.0.ln_1.weight": ((4,), torch.float32),
        "token_embedding.weight": ((10, 4), torch.float32),
        "positional_embedding": ((5, 4), torch.float32),
        "ln_final.weight": ((4,), torch.float32),
        "ln_final.bias": ((4,), torch.float32),
        "text_projection": ((4, 6), torch.float32),
        "logit_scale": ((), torch.float32),
    }
    sd = random_state_dict(release_layout(shapes), seed=3)
    path = tmp_path / "release.pt"
    torch.save(training_checkpoint(sd, "CLIP_Tiny"), path)
    return path, sd


@pytest.mark.parametrize("legacy", [False, True])
def test_load_release_file_zip_and_legacy(tmp_path, small_release, legacy):
    path, sd = small_release
    if legacy:
        path = tmp_path / "legacy.pt"
        torch.save(training_checkpoint(sd, "CLIP_Tiny"), path, _use_new_zipfile_serialization=False)
    assert ck.sniff_file_format(str(path)) == ("legacy" if legacy else "zip")
    assert ck.sniff_layout(str(path)) == "original"
    assert ck.is_mamba_clip_file(str(path))
    loaded = ck.load_checkpoint_file(str(path))
    assert loaded.layout == "original"
    assert loaded.meta["source"] == "CLIP_Tiny" and loaded.meta["epoch"] == "25"
    assert all(torch.equal(loaded.state_dict[k[len("module."):]], v) for k, v in sd.items())


def test_convert_file_roundtrip_metadata(tmp_path, small_release):
    path, sd = small_release
    dst = tmp_path / "out" / "tiny.safetensors"
    meta = ck.convert_file(str(path), str(dst), towers="online", model_name=None)
    assert meta["towers"] == "online" and meta["source"] == "CLIP_Tiny"
    loaded = ck.load_checkpoint_file(str(dst))
    assert loaded.layout == "open_clip" and loaded.meta["towers"] == "online"
    assert torch.equal(loaded.state_dict["visual.trunk.stem.weight"], sd["module.visual.stem.weight"])
    assert loaded.state_dict["visual.trunk.bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(loaded.state_dict["visual.head.proj.weight"], sd["module.image_projection"].t())
    assert ck.is_mamba_clip_file(str(dst)) and ck.sniff_layout(str(dst)) == "open_clip"
    assert sorted(os.listdir(dst.parent)) == ["tiny.safetensors"]


def test_truncated_file(tmp_path, small_release):
    path, _ = small_release
    data = path.read_bytes()
    for cut in (len(data) // 2, 200):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(ck.CorruptCheckpointError, match="truncated or corrupt"):
            ck.load_checkpoint_file(str(bad))
    conv = tmp_path / "c.safetensors"
    ck.convert_file(str(path), str(conv))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(conv.read_bytes()[:-50])
    with pytest.raises(ck.CorruptCheckpointError):
        ck.load_checkpoint_file(str(cut))


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all")
    with pytest.raises(ck.NotACheckpointError, match="not a checkpoint"):
        ck.load_checkpoint_file(str(text))
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "weights": [1, 2]}, other)
    with pytest.raises(ck.NotACheckpointError, match="no CLIP state dict"):
        ck.load_checkpoint_file(str(other))
    resnet = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)}, resnet)
    with pytest.raises(ck.NotACheckpointError, match="not a CLIP-Mamba checkpoint"):
        ck.load_checkpoint_file(str(resnet))
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint_file(str(tmp_path / "missing.pt"))


class _Payload:
    """Unpickling this would create a file (it must never happen)."""

    target = None

    def __reduce__(self):
        return (open, (str(_Payload.target), "w"))


def test_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.target = marker
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"module.image_projection": torch.zeros(2, 2)}, "x": _Payload()}, path)
    assert not marker.exists()
    with pytest.raises(ck.UnsafeCheckpointError, match="weights_only=True"):
        ck.load_checkpoint_file(str(path))
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Payload()}, f, protocol=2)
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint_file(str(plain))
    assert not marker.exists()


def test_failed_write_leaves_nothing(tmp_path, small_release, monkeypatch):
    import safetensors.torch

    path, _ = small_release
    out_dir = tmp_path / "cache"

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.convert_file(str(path), str(out_dir / "x.safetensors"))
    assert list(out_dir.iterdir()) == []


def test_export_layout(tmp_path, small_release):
    path, sd = small_release
    conv = tmp_path / "c.safetensors"
    ck.convert_file(str(path), str(conv), towers="ema")
    exported = tmp_path / "export.pt"
    ck.export_file(str(conv), str(exported))
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(exported, weights_only=True)
    assert obj["args"].model == "CLIP_Tiny"
    # no optimizer / scaler: the reference --resume loads them only when present
    assert set(obj) == {"epoch", "state_dict", "best_acc", "args"}
    assert set(obj["state_dict"]) == set(sd)
    for k in sd:  # both copies hold the EMA tower it was converted from
        assert torch.equal(obj["state_dict"][k], sd[ema_twin(k)]), k
