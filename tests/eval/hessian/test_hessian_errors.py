"""Clear errors: create_graph through the first-order-only scan backends names double_backward();
inside double_backward() a whole model is twice differentiable; argument errors of the Hessian API."""

from __future__ import annotations

import pytest
import torch

from mamba_clip.ops import double_backward, selective_scan
from mamba_clip.ops.first_order import FirstOrderGuard, FirstOrderOnlyError


def _inputs(requires_u=True):
    torch.manual_seed(0)
    b, d, L, n = 2, 4, 9, 1
    u = torch.randn(b, d, L, requires_grad=requires_u)
    delta = torch.rand(b, d, L, requires_grad=True)
    A = (-torch.rand(d, n)).requires_grad_()
    B, C = torch.randn(b, n, L), torch.randn(b, n, L)
    return u, delta, A, B, C


def _cpu_backend_or_skip():
    from mamba_clip.ops.selective_scan import _cpu_available

    if not _cpu_available():
        pytest.skip("the fused CPU kernel is unavailable here")


def test_cpu_backend_create_graph_is_exact_without_double_backward():
    """Since issue 17 the fused "cpu" kernel's create_graph backward is exact (no FirstOrderOnlyError):
    the double backward runs on the fused linear-recurrence kernel."""
    _cpu_backend_or_skip()
    u, delta, A, B, C = _inputs()

    def hess(backend):
        y = selective_scan(u, delta, A, B, C, backend=backend)
        gu, gA = torch.autograd.grad(y.pow(2).sum(), (u, A), create_graph=True)
        return torch.autograd.grad(gu.sum() + gA.sum(), (u, A))

    for got, want in zip(hess("cpu"), hess("ref")):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    # first-order backward is untouched
    y = selective_scan(u, delta, A, B, C, backend="cpu")
    gu, gA = torch.autograd.grad(y.pow(2).sum(), (u, A))
    assert torch.isfinite(gu).all() and torch.isfinite(gA).all()


def test_auto_backend_inside_double_backward_is_twice_differentiable():
    u, delta, A, B, C = _inputs()
    with double_backward():
        y = selective_scan(u, delta, A, B, C)
        (gA,) = torch.autograd.grad(y.pow(2).sum(), A, create_graph=True)
        (hA,) = torch.autograd.grad(gA.sum(), A)
    assert torch.isfinite(hA).all() and hA.abs().sum() > 0


@pytest.mark.parametrize("n", [1, 4])
def test_double_backward_wrt_scan_parameters_only(n):
    """Hessians w.r.t. a parameter subset: u and B/C are constants, only A and delta require grad
    (the "torch" scan's create_graph backward must not try to differentiate the constants)."""
    torch.manual_seed(0)
    b, d, L = 2, 4, 9
    u, B, C = torch.randn(b, d, L), torch.randn(b, n, L), torch.randn(b, n, L)
    delta = torch.rand(b, d, L)
    A = (-torch.rand(d, n)).requires_grad_()
    Dp = torch.randn(d, requires_grad=True)

    def hess_row(backend):
        y = selective_scan(u, delta, A, B, C, Dp, backend=backend)
        (gA,) = torch.autograd.grad(y.pow(2).sum(), A, create_graph=True)
        return torch.autograd.grad(gA.sum(), (A, Dp))

    with double_backward():
        got = hess_row("auto")
    want = hess_row("ref")
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_cuda_guard_raises_under_create_graph_and_passes_first_order():
    """The guard the "cuda" adapter puts on mamba-ssm's outputs (testable without CUDA)."""
    from mamba_clip.ops.scan_cuda import guard_first_order

    x = torch.randn(5, requires_grad=True)
    y = guard_first_order(x * 2)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x)  # first order: unchanged gradient
    assert torch.allclose(g, 8 * x.detach())
    y = guard_first_order((x * 2, x * 3))
    with pytest.raises(FirstOrderOnlyError, match=r"double_backward\(\)") as ei:
        torch.autograd.grad((y[0] * y[1]).sum(), x, create_graph=True)
    assert "'cuda'" in str(ei.value)
    with torch.no_grad():
        z = guard_first_order(x * 2)
    assert z.grad_fn is None
    assert FirstOrderGuard.apply(x, "cuda").grad_fn is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and mamba-ssm")
def test_cuda_backend_create_graph_raises_clear_error():
    pytest.importorskip("mamba_ssm")
    u, delta, A, B, C = (t.detach().cuda().requires_grad_(t.requires_grad) for t in _inputs())
    y = selective_scan(u, delta, A, B, C, backend="cuda")
    with pytest.raises(FirstOrderOnlyError, match=r"double_backward\(\)"):
        torch.autograd.grad(y.pow(2).sum(), u, create_graph=True)


def test_hessian_api_argument_errors():
    from mamba_clip.eval.hessian import hessian_top_eigenvalues, select_parameters

    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)

    def loss_fn(m, batch):
        return m(batch).pow(2).mean()

    with pytest.raises(ValueError, match="method"):
        hessian_top_eigenvalues(model, loss_fn, x, method="arnoldi")
    with pytest.raises(ValueError, match="k=9 eigenvalues requested"):
        hessian_top_eigenvalues(model, loss_fn, x, k=9, method="lanczos")
    with pytest.raises(ValueError, match="no parameters matching"):
        select_parameters(model, "A_logs")
    with pytest.raises(ValueError, match="scalar tensor"):
        hessian_top_eigenvalues(model, lambda m, b: m(b), x, method="lanczos")
    with pytest.raises(ValueError, match="float32"):
        hessian_top_eigenvalues(torch.nn.Linear(3, 2).half(), loss_fn, x.half())
    assert model.weight.requires_grad and model.bias.requires_grad


def test_zeroshot_loss_with_text_params_only_says_why():
    """Frozen class prototypes: the zero-shot loss does not depend on the text tower."""
    import open_clip

    import mamba_clip  # noqa: F401
    from mamba_clip.eval.hessian import ZeroShotLoss, class_prototypes, hessian_top_eigenvalues

    model = open_clip.create_model("vit-nano", force_image_size=32)
    loss_fn = ZeroShotLoss(class_prototypes(model, ["cat", "dog"], templates=["a {}"]), 10.0)
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    for method in ("lanczos", "power"):
        with pytest.raises(ValueError, match="does not depend on the selected parameters"):
            hessian_top_eigenvalues(model, loss_fn, batch, params="text", method=method)
