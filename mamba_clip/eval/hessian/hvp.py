"""Exact second derivatives through our towers: the graph-building context and our own
Hessian-vector products (reverse-over-reverse, ``torch.autograd.grad(create_graph=True)``).

Everything that is differentiated twice is built inside :func:`second_order_mode`, which

* keeps the selective scan on its default backend: the fused "cpu" and "triton" kernels are exact
  under ``create_graph=True`` (their double backward runs on the fused linear-recurrence kernel,
  issue 17); only mamba-ssm's first-order "cuda" kernel is swapped, for "triton" (or "torch"),
  by :func:`second_order_backend`,
* forces scaled-dot-product attention onto its math backend (the flash / memory-efficient kernels
  have no double backward),
* disables autocast and requires float32 (or float64) parameters,
* puts the model in eval mode (no dropout / drop-path: the loss is a deterministic function of the
  parameters, as in PyHessian, which does the same),
* makes exactly the selected parameters require grad (so no graph is built for the rest, e.g. the
  text tower when only the image tower is analysed) and sets their ``.grad`` aside,

and restores all of it on exit.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mamba_clip.ops import scan_backend
from mamba_clip.ops.selective_scan import available_backends, resolve_backend

LossFn = Callable[[nn.Module, object], Tensor]


@contextlib.contextmanager
def second_order_mode(model: nn.Module, params: Sequence[Tensor]) -> Iterator[None]:
    """The context every Hessian computation of this package runs in (see the module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bad = sorted({str(p.dtype) for p in params if p.dtype not in (torch.float32, torch.float64)})
    if bad:
        raise ValueError(f"Hessian computations run in float32: the selected parameters have dtype {bad}; "
                         "convert the model with model.float() first")
    sel = {id(p) for p in params}
    all_params = list(model.parameters())
    owned = {id(q) for q in all_params}
    extra = [p for p in params if id(p) not in owned]
    flags = [(p, p.requires_grad) for p in all_params + extra]
    grads = [(p, p.grad) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    dev = params[0].device.type
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in sel)
        for p in params:
            p.grad = None
        model.eval()
        with contextlib.ExitStack() as stack:
            backend = second_order_backend(params[0])
            if backend is not None:
                stack.enter_context(scan_backend(backend))
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            stack.enter_context(torch.autocast(device_type=dev if dev in ("cpu", "cuda") else "cpu",
                                               enabled=False))
            stack.enter_context(torch.enable_grad())
            yield
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        for p, g in grads:
            p.grad = g
        for m, t in modes:
            m.training = t


def second_order_backend(like: Tensor):
    """The scan backend to force for second-order work on ``like``'s device, or None to keep the
    default: "auto" resolves to the first-order-only "cuda" kernel (mamba-ssm) -> "triton" if
    available, else "torch"."""
    if resolve_backend("auto", like) != "cuda":
        return None
    return "triton" if "triton" in available_backends() else "torch"


def loss_gradient(model: nn.Module, loss_fn: LossFn, batch, params: Sequence[Tensor]
                  ) -> Tuple[Tensor, List[Tensor], List[int]]:
    """Loss and its gradient with ``create_graph=True`` (call inside :func:`second_order_mode`).

    Returns ``(loss, grads, used)``: ``used`` indexes the parameters the loss depends on (the others
    have a zero Hessian row and column and are left out of the products)."""
    loss = check_loss(loss_fn(model, batch))
    g = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    used = [i for i, gi in enumerate(g) if gi is not None]
    return loss, [g[i] for i in used], used


def check_loss(loss) -> Tensor:
    """A finite scalar tensor that depends on the selected parameters, or a ValueError saying what is wrong."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn(model, batch) must return a scalar tensor, got "
                         f"{type(loss).__name__}{'' if not isinstance(loss, Tensor) else tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on the selected parameters (e.g. the zero-shot loss, "
                         "whose class prototypes are frozen, with text-tower parameters only)")
    if not bool(torch.isfinite(loss.detach())):
        from mamba_clip.finite import NonFiniteError

        raise NonFiniteError(f"the loss of this batch is {float(loss.detach()):g}: its Hessian is not defined "
                             "(the weights or the inputs give numbers out of range)")
    return loss


class HVP:
    """``H v`` for the loss of one batch, our own reverse-over-reverse products.

    The forward and the first backward run once (at construction, inside :func:`second_order_mode`);
    each product is one more backward through the retained graph. Vectors are flat float tensors over
    the used parameters, in parameter order. ``count`` counts the products.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch, params: Sequence[Tensor]):
        self.loss, self.grads, used = loss_gradient(model, loss_fn, batch, params)
        self.params = [params[i] for i in used]
        self.numel = [p.numel() for p in self.params]
        self.n = int(sum(self.numel))
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.count = 0
        self.on_product: Optional[Callable[[int], None]] = None  # called with the count after each product

    def unflatten(self, v: Tensor) -> List[Tensor]:
        return [c.view_as(p) for c, p in zip(torch.split(v, self.numel), self.params)]

    def __call__(self, v: Tensor) -> Tensor:
        vs = self.unflatten(v)
        live = [i for i, g in enumerate(self.grads) if g.requires_grad]  # others: constant gradient
        if not live:
            return torch.zeros_like(v)
        hv = torch.autograd.grad([self.grads[i] for i in live], self.params,
                                 grad_outputs=[vs[i] for i in live], retain_graph=True, allow_unused=True)
        self.count += 1
        if self.on_product is not None:
            self.on_product(self.count)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                          for h, p in zip(hv, self.params)]).detach()
