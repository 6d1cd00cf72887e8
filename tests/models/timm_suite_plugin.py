"""pytest plugin (``-p timm_suite_plugin``) that points timm's own ``tests/test_models.py`` at our models.

timm's test file parametrizes every test over ``timm.list_models(...)`` at import time. This plugin,
loaded before that import, keeps what timm's own filters select (exclude filters, name patterns,
``pretrained=True``...) and intersects it with the models named in ``$MAMBA_CLIP_TIMM_MODELS``. The
tests timm restricts to its own model files (``list_models(module=FEAT_INTER_FILTERS)``:
``forward_intermediates``, ``forward_intermediates_features``, the prune contract) are opened to ours
by ignoring ``module=``. Nothing in timm's tests is changed.
"""

from __future__ import annotations

import os

import timm
import timm.models

_ORIGINAL = timm.list_models
OURS = [m for m in os.environ.get("MAMBA_CLIP_TIMM_MODELS", "").split(",") if m]


def _ours_only(*args, **kwargs):
    kwargs.pop("module", None)
    return [name for name in _ORIGINAL(*args, **kwargs) if name.split(".")[0] in OURS]


timm.list_models = _ours_only
timm.models.list_models = _ours_only
