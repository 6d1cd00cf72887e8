"""One check for the numbers the evaluations compute: a NaN or infinity raises :class:`NonFiniteError`
naming what held it, never a silently wrong accuracy or eigenvalue (argmax of a NaN row is class 0)."""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A model output or loss holds NaN or infinity."""


def require_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged when every value is finite; else NonFiniteError naming ``what``, e.g.
    ``"vmamba-s image embeddings of batch 3 of wds/cars"``, and how many values are NaN / inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise NonFiniteError(f"{what} hold non-finite values ({n_nan} NaN, {n_inf} inf of {t.numel()}): the "
                             "weights or the inputs give numbers out of range (try float32, without --amp)")
    return t
