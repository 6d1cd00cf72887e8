"""Pure-PyTorch selective scan (vectorised, twice differentiable).

Same maths as :func:`selective_scan_ref` (mamba-ssm ``selective_scan_fn`` semantics), in one of two
schedules; both use only differentiable, out-of-place torch ops, so autograd can differentiate the
graph twice (Hessian-vector products, ``gradgradcheck``). Gradients also flow into the last state.

``"chunked"`` (small per-step work, e.g. N = 1): a two-level scan whose Python loop runs about
``2 * sqrt(L)`` times instead of ``L``:

1. split the (padded) sequence into ``nc`` chunks of ``T`` steps; run ``h_t = a_t h_{t-1} + x_t``
   from a zero state inside every chunk at once (``T`` steps, vectorised over chunks), and the
   within-chunk decay products ``P_t = a_1 ... a_t`` as ``exp(cumsum(delta * A))`` (exponent <= 0 for
   the usual negative A: no overflow, no division);
2. propagate the chunk carries sequentially over the ``nc`` chunks;
3. add the carry contribution ``P_t * carry_{c-1}`` and contract with C.

``"stepwise"`` (large per-step work, batch * D * N >= ``STEPWISE_MIN``): one fused step per time
index on (batch, D, N) tensors that stay in cache, discretising on the fly, so no (batch, D, L, N)
intermediate is built in the forward (autograd still saves the per-step states for the backward).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_ref import compute_dtype

__all__ = ["selective_scan_torch", "STEPWISE_MIN"]

STEPWISE_MIN = 8192  # batch * D * N from which "auto" uses the stepwise schedule


def _to_chunks(x: Tensor, nc: int, T: int) -> Tensor:
    """(..., L) -> contiguous (T, ..., nc): pad L to nc * T with zeros, within-chunk step first."""
    L = x.shape[-1]
    if nc * T != L:
        x = F.pad(x, (0, nc * T - L))
    x = x.reshape(*x.shape[:-1], nc, T)
    return x.movedim(-1, 0).contiguous()


def _chunked(u, delta, A, B, C, T: Optional[int]):
    """y (batch, D, L) before D/z, and the last state, by the two-level chunked scan."""
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    T = max(1, min(int(T) if T else math.ceil(math.sqrt(L)), L))
    nc = math.ceil(L / T)
    # Layout (T, batch, G, H, nc, N). Padded steps have delta = 0: a = 1, x = 0, state unchanged.
    dl = _to_chunks(delta, nc, T)  # (T, b, D, nc)
    dA_log = dl.unsqueeze(-1) * A[:, None, :]  # (T, b, D, nc, N)
    a = torch.exp(dA_log)
    du = _to_chunks(delta * u, nc, T).view(T, batch, GB, dim // GB, nc, 1)
    Bt = _to_chunks(B, nc, T).transpose(-1, -2).unsqueeze(3)  # (T, b, G, 1, nc, N)
    x = (du * Bt).view(T, batch, dim, nc, N)

    a_t, x_t = a.unbind(0), x.unbind(0)  # unbind: its backward is one stack, not T scatters
    # h_0 = a_0 * 0 + x_0: written out when it is the only step, so A stays in the graph (zero grad,
    # not None: an unused parameter breaks DDP, e.g. SiMBA's one-token class block).
    hs = [torch.addcmul(x_t[0], a_t[0], torch.zeros_like(x_t[0])) if T == 1 else x_t[0]]
    for t in range(1, T):
        hs.append(torch.addcmul(x_t[t], a_t[t], hs[-1]))
    h = torch.stack(hs, 0)
    if nc > 1:
        P = torch.exp(torch.cumsum(dA_log, dim=0))  # within-chunk decay products
        end_state, end_decay = hs[-1].unbind(2), P[-1].unbind(2)  # nc x (b, D, N)
        carries = [end_state[0]]
        for c in range(1, nc):
            carries.append(torch.addcmul(end_state[c], end_decay[c], carries[-1]))
        carry_in = torch.stack([torch.zeros_like(carries[0])] + carries[:-1], dim=2)  # (b, D, nc, N)
        h = torch.addcmul(h, P, carry_in)
        last = carries[-1]
    else:
        last = hs[-1][:, :, 0]
    Ct = _to_chunks(C, nc, T).transpose(-1, -2).unsqueeze(3)  # (T, b, G, 1, nc, N)
    y = (h.view(T, batch, GC, dim // GC, nc, N) * Ct).sum(-1)  # (T, b, G, H, nc)
    y = y.reshape(T, batch, dim, nc).permute(1, 2, 3, 0).reshape(batch, dim, nc * T)[..., :L]
    return y, last


def _stepwise(u, delta, A, B, C):
    """y (batch, D, L) before D/z, and the last state, one fused step per time index."""
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    Ag = A.view(GB, dim // GB, N)
    dts = delta.view(batch, GB, dim // GB, L).unbind(-1)
    dus = (delta * u).view(batch, GB, dim // GB, L).unbind(-1)
    Bs = B.unbind(-1)  # L x (b, G, N)
    Cs = C.unbind(-1)
    h = u.new_zeros((batch, GB, dim // GB, N))
    ys = []
    for t in range(L):
        a = torch.exp(dts[t].unsqueeze(-1) * Ag)
        h = torch.addcmul(a * h, dus[t].unsqueeze(-1), Bs[t].unsqueeze(2))
        hc = h.view(batch, GC, dim // GC, N)
        ys.append(torch.matmul(hc, Cs[t].unsqueeze(-1)).view(batch, dim))
    return torch.stack(ys, -1), h.view(batch, dim, N)


ROWS_PER_BLOCK = 256  # (batch * D) rows per block of the N == 1 path: temporaries stay cache-sized


def _scan1(a: Tensor, x: Tensor, T: int, reverse: bool = False, out: Optional[Tensor] = None) -> Tensor:
    """All states of ``h_l = a_l h_{l-1} + x_l`` (``reverse``: ``h_l = a_l h_{l+1} + x_l``), zero
    outside, along the last dim of (R, L) tensors, by the two-level chunked schedule (in-chunk steps
    vectorised over chunks, then the chunk carries), into ``out`` if given. Only for use under no_grad
    (in-place ops)."""
    R, L = x.shape
    nc = math.ceil(L / T)
    if nc * T != L:  # padded steps: a = 1, x = 0 (state unchanged / zero)
        a = F.pad(a, (0, nc * T - L), value=1.0)
        x = F.pad(x, (0, nc * T - L))
    # (T, R, nc): every step below works on one contiguous slice.
    a = a.reshape(R, nc, T).permute(2, 0, 1).contiguous()
    h = x.reshape(R, nc, T).permute(2, 0, 1).contiguous()
    steps = range(T - 2, -1, -1) if reverse else range(1, T)
    for s in steps:  # within chunks, all chunks at once
        h[s].addcmul_(a[s], h[s + 1] if reverse else h[s - 1])
    if nc > 1:
        # decay products from the chunk boundary (each factor <= 1 for A <= 0)
        P = a.flip(0).cumprod(0).flip(0) if reverse else a.cumprod(0)
        carry = (h[0] if reverse else h[T - 1]).clone()  # (R, nc)
        edge = P[0] if reverse else P[T - 1]
        for c in (range(nc - 2, -1, -1) if reverse else range(1, nc)):  # chunk carries
            carry[:, c].addcmul_(edge[:, c], carry[:, c + 1] if reverse else carry[:, c - 1])
        if reverse:
            h[:, :, :-1].addcmul_(P[:, :, :-1], carry[:, 1:])
        else:
            h[:, :, 1:].addcmul_(P[:, :, 1:], carry[:, :-1])
    h = h.permute(1, 2, 0)
    if out is None:
        return h.reshape(R, nc * T)[:, :L]
    if nc * T == L:
        out.view(R, nc, T).copy_(h)
    else:
        out.copy_(h.reshape(R, nc * T)[:, :L])
    return out


def _blocks(batch: int, dim: int, G: int):
    """(b, d0, d1) channel blocks of about ROWS_PER_BLOCK rows that stay inside one group."""
    H = dim // G
    step = max(1, min(H, ROWS_PER_BLOCK))
    for b in range(batch):
        for g in range(G):
            for d0 in range(g * H, (g + 1) * H, step):
                yield b, g, d0, min(d0 + step, (g + 1) * H)


class _ScanN1(torch.autograd.Function):
    """Core scan for N == 1 (y before D/z, and the last state) with a hand-written first-order
    backward: the adjoint ``g_l = dy_l C_l + a_{l+1} g_{l+1}`` is one reverse :func:`_scan1`, every
    other gradient is element-wise, so autograd records nothing per step. Both directions run over
    blocks of channels (one group each), which keeps the temporaries small. Under ``create_graph``
    (double backward) the backward instead rebuilds the differentiable :func:`_chunked` graph from
    the saved inputs and differentiates it, so higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, T):
        batch, dim, L = u.shape
        G = math.lcm(B.shape[1], C.shape[1])  # blocks inside one group of B and of C
        y = torch.empty_like(u)
        h_all = torch.empty_like(u)
        for b, _, d0, d1 in _blocks(batch, dim, G):
            dt = delta[b, d0:d1]
            a = torch.mul(dt, A[d0:d1]).exp_()
            x = torch.mul(dt, u[b, d0:d1]).mul_(B[b, d0 * B.shape[1] // dim, 0])
            h = _scan1(a, x, T, out=h_all[b, d0:d1])
            torch.mul(h, C[b, d0 * C.shape[1] // dim, 0], out=y[b, d0:d1])
        ctx.save_for_backward(u, delta, A, B, C, h_all)
        ctx.T = T
        return y, h_all[..., -1:].clone()

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, h_all = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the differentiable schedule
            with torch.enable_grad():
                y, last = _chunked(u, delta, A, B, C, ctx.T)
                outs, grads = zip(*[(o, g) for o, g in ((y, gy), (last, glast)) if g is not None])
                res = torch.autograd.grad(outs, (u, delta, A, B, C), grads, create_graph=True,
                                          allow_unused=True)
            res = [torch.zeros_like(x) if r is None else r for r, x in zip(res, (u, delta, A, B, C))]
            return (*res, None)
        batch, dim, L = u.shape
        GB, GC = B.shape[1], C.shape[1]
        G = math.lcm(GB, GC)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        for b, _, d0, d1 in _blocks(batch, dim, G):
            gb, gc = d0 * GB // dim, d0 * GC // dim
            Bl, Cl = B[b, gb, 0], C[b, gc, 0]
            dt, ub, h = delta[b, d0:d1], u[b, d0:d1], h_all[b, d0:d1]
            q = gy[b, d0:d1] * Cl if gy is not None else torch.zeros_like(h)
            if glast is not None:
                q[:, -1] += glast[b, d0:d1, 0]
            a = torch.mul(dt, A[d0:d1]).exp_()
            a_next = F.pad(a[:, 1:], (0, 1))
            g = _scan1(a_next, q, T=ctx.T, reverse=True)  # g_l = q_l + a_{l+1} g_{l+1}
            w = F.pad(h[:, :-1], (1, 0)).mul_(a).mul_(g)  # g h_{l-1} a_l = dL/d(delta A)
            dA[d0:d1, 0] += (w * dt).sum(1)
            gB = g * Bl
            torch.mul(gB, dt, out=du[b, d0:d1])  # du = g dt B
            dd = torch.mul(w, A[d0:d1], out=ddelta[b, d0:d1])
            dd.addcmul_(gB, ub)  # ddelta = g h_{l-1} a_l A + g u B
            dB[b, gb, 0] += g.mul_(dt).mul_(ub).sum(0)  # dB = sum over the group of g dt u
            if gy is not None:
                dC[b, gc, 0] += (gy[b, d0:d1] * h).sum(0)
        return du, ddelta, dA, dB, dC, None


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: Optional[int] = None,
    schedule: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Vectorised selective scan. Shapes as :func:`selective_scan` (B/C may be grouped).

    ``schedule``: "auto", "chunked" or "stepwise"; ``chunk_size`` (default ``ceil(sqrt(L))``, chunked
    only). Both change speed, not results.
    """
    if schedule not in ("auto", "chunked", "stepwise"):
        raise ValueError("selective_scan_torch: schedule must be 'auto', 'chunked' or 'stepwise', "
                         f"got {schedule!r}")
    dtype_in = u.dtype
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    N = A.shape[1]
    u_c = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.to(ct)
    C = C.to(ct)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    A = A.to(ct)
    if L == 0:
        out = u.new_zeros((batch, dim, 0))
        return (out, u_c.new_zeros((batch, dim, N))) if return_last_state else out
    if schedule == "auto":
        schedule = "stepwise" if batch * dim * N >= STEPWISE_MIN else "chunked"
    if schedule == "stepwise":
        y, last = _stepwise(u_c, delta, A, B, C)
    elif N == 1:
        T = max(1, min(int(chunk_size) if chunk_size else math.ceil(math.sqrt(L)), L))
        y, last = _ScanN1.apply(u_c, delta, A, B, C, T)
    else:
        y, last = _chunked(u_c, delta, A, B, C, chunk_size)
    out = y if D is None else y + u_c * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out
