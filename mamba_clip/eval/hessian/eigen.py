"""Top Hessian eigenvalues of a loss on one batch: :func:`hessian_top_eigenvalues`.

Two engines, both on exact Hessian-vector products built inside :func:`~.hvp.second_order_mode`
(``mamba_clip.ops.double_backward()``, math attention, float32):

* ``method="power"`` (default): PyHessian's power iteration with deflation, through
  :mod:`.pyhessian_adapter`. It is the method of Park & Kim (2022) whose Figure 3 the report follows;
  ``max_iter`` and ``tol`` mean what they mean there (per eigenvalue; relative change of the Rayleigh
  quotient between two iterations).
* ``method="lanczos"``: our own Lanczos iteration with full reorthogonalisation on our own products
  (:class:`~.hvp.HVP`); ``max_iter`` bounds the total number of products and ``tol`` the relative
  residual ``|beta_m s_mi| / |theta_i|`` of each of the ``k`` Ritz values. PyHessian has no Lanczos
  for eigenvalues (its Lanczos only feeds the density estimate), hence our own. It needs far fewer
  products than power iteration for the same accuracy, in particular when eigenvalues of similar
  magnitude make power iteration crawl, at the price of keeping the Krylov basis (``max_iter``
  vectors of the size of the parameter set) in memory.

Both return eigenvalues of largest magnitude, signed (a negative one is non-convexity), sorted by
decreasing magnitude, and a seed gives identical results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .hvp import HVP, LossFn, second_order_mode
from .params import ParamSpec, select_parameters

METHODS = ("power", "lanczos")


@dataclass
class EigenResult:
    eigenvalues: Tensor  # (k,) float64, decreasing magnitude
    n_hvp: int  # Hessian-vector products used
    seconds: float
    n_params: int  # scalars the loss depends on


def _check_args(k: int, max_iter: int, tol: float, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def _by_magnitude(values: Tensor) -> Tensor:
    values = values.to(torch.float64)
    return values[torch.argsort(values.abs(), descending=True, stable=True)]


def lanczos_top_eigenvalues(hvp: HVP, k: int, max_iter: int, tol: float, seed: int) -> Tensor:
    """Top-``k`` eigenvalues by magnitude of the operator ``hvp`` (Lanczos, full reorthogonalisation).

    The start vector is Gaussian from a generator seeded with ``seed`` (drawn on the CPU, so the same
    on every device). A vanishing residual means the Krylov space is invariant: the Ritz values found
    are exact and the iteration continues from a fresh random vector orthogonal to the basis (so a
    low-rank Hessian still gives ``k`` values, zeros included)."""
    n = hvp.n
    if k > n:
        raise ValueError(f"k={k} eigenvalues requested but the loss depends on only {n} parameters")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def rand() -> Tensor:
        return torch.randn(n, generator=gen, dtype=torch.float64).to(hvp.device, hvp.dtype)

    def orth(w: Tensor, basis) -> Tensor:
        for _ in range(2):  # twice is enough (Kahan / Parlett)
            for q in basis:
                w = w - torch.dot(w, q) * q
        return w

    m_max = min(max_iter, n)
    basis = []
    alphas, betas = [], []  # T: diag alphas, off-diag betas (0 marks a restart)
    q = rand()
    q = q / q.norm()
    scale = 0.0
    for j in range(m_max):
        basis.append(q)
        w = hvp(q)
        alpha = float(torch.dot(w, q))
        w = orth(w, basis)
        beta = float(w.norm())
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        order = torch.argsort(theta.abs(), descending=True)[:k]
        if j + 1 == m_max:
            return _by_magnitude(theta[order])
        eps = torch.finfo(hvp.dtype).eps
        if j + 1 >= k:
            res = beta * S[-1, order].abs()
            if bool((res <= tol * theta[order].abs().clamp_min(eps * scale)).all()):
                return _by_magnitude(theta[order])
        if beta <= 10 * eps * max(scale, 1e-30) * (j + 1):
            w = orth(rand(), basis)  # invariant subspace: restart orthogonally
            w_norm = float(w.norm())
            if w_norm == 0.0:
                return _by_magnitude(theta[order])
            betas.append(0.0)
            q = w / w_norm
        else:
            betas.append(beta)
            q = w / beta
    raise AssertionError("unreachable")


def hessian_top_eigen(model: nn.Module, loss_fn: LossFn, batch, k: int = 5, max_iter: int = 100,
                      tol: float = 1e-3, params: ParamSpec = None, seed: int = 0,
                      method: str = "power", on_product: Optional[Callable[[int], None]] = None) -> EigenResult:
    """:func:`hessian_top_eigenvalues` with the number of products and the time (for run files).
    ``on_product(n)`` is called after each Hessian-vector product (``n`` products so far; progress)."""
    _check_args(k, max_iter, tol, method)
    plist = [p for _, p in select_parameters(model, params)]
    t0 = time.perf_counter()
    with second_order_mode(model, plist):
        if method == "power":
            from .pyhessian_adapter import pyhessian_top_eigenvalues

            values, count = pyhessian_top_eigenvalues(model, loss_fn, batch, plist, k, max_iter, tol, seed,
                                                      on_product=on_product)
            n_params = sum(p.numel() for p in plist if p.requires_grad)
        else:
            hvp = HVP(model, loss_fn, batch, plist)
            hvp.on_product = on_product
            values = lanczos_top_eigenvalues(hvp, k, max_iter, tol, seed)
            count, n_params = hvp.count, hvp.n
            del hvp
    return EigenResult(_by_magnitude(values), int(count), time.perf_counter() - t0, int(n_params))


def hessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, batch, k: int = 5, max_iter: int = 100,
                            tol: float = 1e-3, params: ParamSpec = None, seed: int = 0,
                            method: str = "power") -> Tensor:
    """The ``k`` eigenvalues of largest magnitude of the Hessian of ``loss_fn(model, batch)``.

    Args:
        model: any ``nn.Module`` (float32; its train/eval mode, ``requires_grad`` flags and ``.grad``
            are restored afterwards; the computation runs in eval mode).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (see :mod:`.losses`).
        batch: passed to ``loss_fn`` unchanged (already on the model's device).
        k: number of eigenvalues. max_iter, tol: see ``method``.
        params: the parameters to differentiate with respect to: ``None`` (every parameter that
            requires grad), an iterable of parameters, or a name set / regular expression for
            :func:`~.params.select_parameters` (``"image"``, ``"text"``, ``"all"``, ``"A_logs|Ds"``).
        seed: seeds the random start vectors; the same seed gives identical results.
        method: ``"power"`` (PyHessian power iteration with deflation, Park & Kim's method) or
            ``"lanczos"`` (ours); see the module docstring.

    Returns:
        1-D float64 tensor of ``k`` signed eigenvalues, by decreasing magnitude.
    """
    return hessian_top_eigen(model, loss_fn, batch, k=k, max_iter=max_iter, tol=tol, params=params,
                             seed=seed, method=method).eigenvalues
