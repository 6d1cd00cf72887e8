"""PyHessian (Yao, Gholami, Keutzer, Mahoney 2020) as the power-iteration engine, behind one adapter.

Park & Kim (2022, "How do vision transformers work?", Fig. 3/4) computed their Hessian max-eigenvalue
spectra with PyHessian's ``hessian.eigenvalues``: power iteration on Hessian-vector products, each
further eigenvalue after deflation (the iterate is orthonormalised against the eigenvectors found so
far), stopping when the Rayleigh quotient changes by less than ``tol`` (relative) or after ``maxIter``
products. :func:`pyhessian_top_eigenvalues` runs exactly that code (``pyhessian`` 0.1 from PyPI, used
as a library) and absorbs its problems:

* it assumes ``criterion(model(inputs), targets)``: we pass a wrapper module whose forward returns
  ``loss_fn(model, batch)`` and a criterion that returns its input;
* it moves data to CUDA when ``cuda=True`` and draws its vectors on ``"cpu"`` otherwise: we construct it
  with ``cuda=False`` (the batch stays where the caller put it) and then point its ``device`` at the
  parameters' device;
* it takes every parameter that requires grad: the caller's :func:`~.hvp.second_order_mode` makes
  exactly the selected ones require grad; parameters the loss does not use (PyHessian would hand
  the float ``0.`` to ``autograd.grad``) are dropped after construction;
* it calls ``loss.backward(create_graph=True)``, which adds into existing ``.grad`` (a stale gradient
  would be taken as part of the gradient) and leaves a reference cycle through ``.grad``:
  ``second_order_mode`` sets the gradients aside first, we clear them after, and silence torch's
  warning about the cycle;
* it draws its random vectors from the global generator: we seed a forked generator, so a seed gives
  identical results and the caller's random state is untouched;
* it is not scale-free (absolute epsilons in its normalisation and stopping test): we run it on
  a power-of-two multiple of the Hessian of order one and scale back (:func:`_probe_scale`);
* its density estimate calls ``torch.eig`` (removed in torch 2) and its weights would come out
  complex: not used here (this analysis needs the top eigenvalues only).

PyHessian draws float32 vectors, so this path needs float32 parameters.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .hvp import LossFn, check_loss


class _LossAsModel(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``, the shape PyHessian expects of a model."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return check_loss(self.loss_fn(self.model, batch))


def _identity_criterion(loss: Tensor, _targets) -> Tensor:
    return loss


def pyhessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, batch, params: Sequence[Tensor], k: int,
                              max_iter: int, tol: float, seed: int,
                              on_product: Optional[Callable[[int], None]] = None) -> Tuple[Tensor, int]:
    """Top-``k`` eigenvalues (signed, PyHessian's order) and the number of Hessian-vector products.

    Call inside :func:`~.hvp.second_order_mode` (``model``'s selected ``params`` require grad, the
    others do not)."""
    from pyhessian import hessian as PyHessian

    if any(p.dtype != torch.float32 for p in params):
        raise ValueError("method='power' (PyHessian) draws float32 vectors and needs float32 parameters; "
                         "use method='lanczos' for float64")
    wrapper = _LossAsModel(model, loss_fn)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle.*")
        engine = PyHessian(wrapper, _identity_criterion, data=(batch, None), cuda=False)
    for p in params:
        p.grad = None  # break the .grad -> graph -> parameter cycle; gradsH holds its own copies
    used = [i for i, g in enumerate(engine.gradsH) if isinstance(g, Tensor) and g.requires_grad]
    if not used:
        raise ValueError("the loss does not depend on the selected parameters")
    engine.params = [engine.params[i] for i in used]
    engine.gradsH = [engine.gradsH[i] for i in used]
    n = sum(p.numel() for p in engine.params)
    if k > n:
        raise ValueError(f"k={k} eigenvalues requested but the loss depends on only {n} parameters")
    engine.device = engine.params[0].device
    count = [0]

    def _count(grad):
        count[0] += 1
        if on_product is not None:
            on_product(count[0] + 1)  # + the probe product of _probe_scale

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scale = _probe_scale(engine)
        engine.gradsH = [g * scale for g in engine.gradsH]
        handle = engine.gradsH[0].register_hook(_count)
        try:
            values, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        finally:
            handle.remove()
    return torch.tensor(values, dtype=torch.float64) / scale, count[0] + 1


def _probe_scale(engine) -> float:
    """A power of two ``c`` with ``|c H v| ~ 1`` for a random unit ``v`` (one product).

    PyHessian works in absolute terms in two places: it normalises with ``v / (|v| + 1e-6)`` and
    stops when ``|change| / (|eigenvalue| + 1e-6) < tol``. For a Hessian with eigenvalues far below
    1e-6 (an untrained or very flat model) the first leaves its eigenvectors far from unit length, so
    deflation does nothing and the same eigenvalue comes back k times, and the second stops after two
    iterations. Running it on ``c H`` (the gradients scaled by ``c``; a power of two, so exactly) and
    dividing the eigenvalues by ``c`` removes both scale dependencies."""
    v = [torch.randn(p.shape, dtype=p.dtype).to(p.device) for p in engine.params]
    vn = math.sqrt(sum(float((x * x).sum()) for x in v))
    hv = torch.autograd.grad(engine.gradsH, engine.params, grad_outputs=v, retain_graph=True)
    s = math.sqrt(sum(float((x * x).sum()) for x in hv)) / vn
    if not math.isfinite(s) or s == 0.0:
        return 1.0
    return 2.0 ** float(-round(math.log2(s)))
