"""Fixtures: synthetic release checkpoints of the nano models, written once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _release import model_layout, random_state_dict, release_layout, strip, training_checkpoint  # noqa: E402

NANO_MODELS = ("vmamba-nano", "simba-nano")
ORIGINAL_NANO = {"vmamba-nano": "CLIP_VMamba_nano", "simba-nano": "CLIP_Simba_nano"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Converted-weights cache and Hub cache inside the test's tmp dir; never the network."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("MAMBA_CLIP_CACHE", str(tmp_path / "mamba_clip_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    yield


class NanoRelease:
    """A synthetic release checkpoint of a nano model: ``path`` (zip format, with optimizer state),
    ``sd`` (its state dict without ``module.``), ``name`` (open_clip model)."""

    def __init__(self, name: str, path: Path, sd: dict):
        self.name, self.path, self.sd = name, path, sd

    def tower(self, towers: str) -> dict:
        """Expected open_clip state dict for ``towers`` (written out from the layout rules)."""
        e = "_e" if towers == "ema" else ""
        out = {}
        for k, v in self.sd.items():
            if k.startswith(f"visual{e}."):
                out["visual.trunk." + k.split(".", 1)[1]] = v
            elif k.startswith(f"transformer{e}."):
                out["transformer." + k.split(".", 1)[1]] = v
        out["visual.head.proj.weight"] = self.sd[f"image_projection{e}"].t()
        for name in ("token_embedding.weight", "ln_final.weight", "ln_final.bias"):
            mod, attr = name.split(".")
            out[name] = self.sd[f"{mod}{e}.{attr}"]
        for name in ("positional_embedding", "text_projection"):
            out[name] = self.sd[name + e]
        out["logit_scale"] = self.sd["logit_scale"]
        return out


@pytest.fixture(scope="session", params=NANO_MODELS)
def nano_release(request, tmp_path_factory) -> NanoRelease:
    import open_clip

    name = request.param
    model = open_clip.create_model(name)
    sd = random_state_dict(release_layout(model_layout(model)), seed=1234)
    path = tmp_path_factory.mktemp(name) / f"{ORIGINAL_NANO[name]}.pt"
    torch.save(training_checkpoint(sd, ORIGINAL_NANO[name]), path)
    return NanoRelease(name, path, strip(sd))


@pytest.fixture(scope="session")
def text_tokens():
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    return tok(["a photo of a dog.", "a diagram", "two cats on a sofa, drawn in pencil"])


