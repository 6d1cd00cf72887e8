"""Second-order and forward-mode derivatives of the fused scans (issue 17): the linear-recurrence
primitive against its float64 oracle, and every backend's double backward (create_graph HVPs) and
forward-mode tangents against the sequential "ref" scan, for every scan option."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from _scan_helpers import make_inputs, max_rel_err
from torch.func import hessian, jvp, vmap

from mamba_clip.ops import selective_scan
from mamba_clip.ops.linear_recurrence import linear_recurrence, linear_recurrence_ref
from mamba_clip.ops.selective_scan import _cpu_available


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors run the triton kernels interpreted


def _triton_ok() -> bool:
    from mamba_clip.ops.scan_triton import interpret_requested, is_available

    return is_available() and (torch.cuda.is_available() or interpret_requested())


KERNELS = ["cpu", "triton"]
TOL = 2e-4


def _kernel_or_skip(kernel: str) -> None:
    if kernel == "cpu" and not _cpu_available():
        pytest.skip("the fused CPU kernel did not build here")
    if kernel == "triton" and not _triton_ok():
        pytest.skip("triton does not import here")


# --- the primitive -------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_recurrence_oracle_gradcheck_gradgradcheck_forward_ad(reverse):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 7, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, 3, 7, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda a, x: linear_recurrence(a, x, reverse, "ref")  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, x), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (a, x), check_fwd_over_rev=True)
    h = f(a, x)
    assert torch.allclose(h, linear_recurrence_ref(a, x, reverse))
    # the definition, written out
    t = 3
    want = a[..., t] * h[..., t - 1] + x[..., t] if not reverse else a[..., t + 1] * h[..., t + 1] + x[..., t]
    assert torch.allclose(h[..., t], want)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_recurrence_kernels_match_oracle_to_second_order(kernel, reverse):
    _kernel_or_skip(kernel)
    g = torch.Generator().manual_seed(1)
    shape = (3, 5, 70)  # rows not a multiple of 8 / 32, L over one triton chunk
    a, x, v, ta, tx = (torch.rand(*shape, generator=g) for _ in range(5))

    def hvp(k):
        aa, xx = a.clone().requires_grad_(), x.clone().requires_grad_()
        h = linear_recurrence(aa, xx, reverse, k)
        ga, gx = torch.autograd.grad((h ** 3).sum(), (aa, xx), create_graph=True)
        return (h, *torch.autograd.grad((ga * v).sum() + (gx * v).sum(), (aa, xx)))

    for got, want in zip(hvp(kernel), hvp("ref")):
        assert max_rel_err(got, want) < 1e-5
    _, t_got = jvp(lambda a, x: linear_recurrence(a, x, reverse, kernel), (a, x), (ta, tx))
    _, t_want = jvp(lambda a, x: linear_recurrence(a, x, reverse, "ref"), (a, x), (ta, tx))
    assert max_rel_err(t_got, t_want) < 1e-5


# --- the scan, every option ----------------------------------------------------------------------

CASES = [  # (N, G, z, bias, softplus)
    (1, None, True, True, True),
    (1, 2, False, False, False),
    (3, None, True, False, True),
    (3, 2, False, True, False),
    (4, 4, True, True, True),
]


def _leaves(inp):
    return {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}


def _loss(backend, leaves, inp, softplus):
    args = {k: leaves.get(k, inp[k]) for k in inp}
    y, last = selective_scan(**args, delta_softplus=softplus, return_last_state=True, backend=backend)
    # fixed, non-random output weights (the loss also runs under vmap)
    gy = torch.cos(torch.arange(y.numel(), dtype=y.dtype) * 0.7).view(y.shape)
    gl = torch.sin(torch.arange(last.numel(), dtype=last.dtype) * 1.3).view(last.shape)
    return (y.square() * gy).sum() + (last * gl).sum() + (last.square()).sum()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_create_graph_hvp_matches_ref(kernel, case):
    """A create_graph=True backward through the fused backend is exact: Hessian-vector products over
    all inputs at once (u, delta, A, B, C, D, z, delta_bias) equal the sequential oracle's."""
    _kernel_or_skip(kernel)
    N, G, z, bias, softplus = case
    inp = make_inputs(2, 4, 19, N, G=G, z=z, bias=bias, seed=N)
    vec = {k: torch.randn_like(v) for k, v in inp.items() if v is not None}

    def hvp(backend):
        leaves = _leaves(inp)
        names = list(leaves)
        grads = torch.autograd.grad(_loss(backend, leaves, inp, softplus), [leaves[k] for k in names],
                                    create_graph=True)
        dot = sum((gr * vec[k]).sum() for gr, k in zip(grads, names))
        return grads, torch.autograd.grad(dot, [leaves[k] for k in names])

    (g_got, h_got), (g_want, h_want) = hvp(kernel), hvp("ref")
    for k, a, b in zip(list(vec), g_got + h_got, g_want + h_want):
        assert max_rel_err(a, b) < TOL, k


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_forward_ad_matches_ref(kernel, case):
    """fwAD dual tensors and torch.func.jvp run through the fused backends with exact tangents."""
    _kernel_or_skip(kernel)
    N, G, z, bias, softplus = case
    inp = make_inputs(2, 4, 19, N, G=G, z=z, bias=bias, seed=N)
    tan = {k: torch.randn_like(v) for k, v in inp.items() if v is not None}
    names = list(tan)

    def f(backend):
        def fn(*vals):
            args = dict(inp, **dict(zip(names, vals)))
            return selective_scan(**args, delta_softplus=softplus, return_last_state=True, backend=backend)
        return fn

    prim = tuple(inp[k] for k in names)
    tang = tuple(tan[k] for k in names)
    (y, last), (ty, tl) = jvp(f(kernel), prim, tang)
    (y_r, last_r), (ty_r, tl_r) = jvp(f("ref"), prim, tang)
    for a, b in ((y, y_r), (last, last_r), (ty, ty_r), (tl, tl_r)):
        assert max_rel_err(a, b) < TOL
    with fwAD.dual_level():
        y_d, last_d = f(kernel)(*(fwAD.make_dual(p, t) for p, t in zip(prim, tang)))
        assert max_rel_err(fwAD.unpack_dual(y_d).tangent, ty_r) < TOL
        assert max_rel_err(fwAD.unpack_dual(last_d).tangent, tl_r) < TOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_torch_func_hessian_and_vmapped_hvps(kernel):
    """torch.func.hessian (forward-over-reverse with vmap) composes with the fused backends, and a vmap
    over several vectors gives several HVPs at once."""
    _kernel_or_skip(kernel)
    inp = make_inputs(1, 4, 11, 2, seed=3)

    def f(backend):
        def fn(A):
            return _loss(backend, {}, dict(inp, A=A), True)
        return fn

    H = hessian(f(kernel))(inp["A"])
    H_ref = hessian(f("ref"))(inp["A"])
    assert max_rel_err(H, H_ref) < TOL
    vs = torch.randn(3, *inp["A"].shape)
    hv = vmap(lambda v: jvp(torch.func.grad(f(kernel)), (inp["A"],), (v,))[1])(vs)
    assert max_rel_err(hv, torch.einsum("ijkl,bkl->bij", H_ref, vs)) < TOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_second_derivatives_wrt_a_parameter_subset(kernel):
    """Only A and D require grad (u, B, C constants): the create_graph path differentiates what it must."""
    _kernel_or_skip(kernel)
    inp = make_inputs(2, 4, 9, 3, z=False, bias=False, seed=4)
    A, D = inp["A"].clone().requires_grad_(), inp["D"].clone().requires_grad_()

    def row(backend):
        y = selective_scan(**dict(inp, A=A, D=D), backend=backend)
        (gA,) = torch.autograd.grad(y.pow(2).sum(), A, create_graph=True)
        return torch.autograd.grad(gA.sum(), (A, D))

    for got, want in zip(row(kernel), row("ref")):
        assert max_rel_err(got, want) < TOL
