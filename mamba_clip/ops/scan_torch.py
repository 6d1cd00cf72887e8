"""Pure-PyTorch selective scan (vectorised, twice differentiable).

Same maths as :func:`selective_scan_ref` (mamba-ssm ``selective_scan_fn`` semantics; Gu & Dao 2023,
Alg. 2), in one of two schedules. Each is an autograd Function whose first-order backward is written
by hand (the adjoint recurrence ``g_l = dy_l C_l + exp(dt_{l+1} A) g_{l+1}`` plus element-wise
products), so autograd records a handful of nodes per call instead of several per time step. Under
``create_graph`` (Hessian-vector products, ``gradgradcheck``) the backward instead differentiates a
graph of plain differentiable torch ops (:func:`_chunked` / :func:`_stepwise`), so higher
derivatives are exact. Gradients also flow into the last state.

``"chunked"`` (small per-step work; N == 1, VMamba): a two-level scan whose Python loop runs about
``2 * sqrt(L)`` times instead of ``L`` (:class:`_ScanN1`; for N > 1 at this small size the graph of
:func:`_chunked` is differentiated directly):

1. split the (padded) sequence into ``nc`` chunks of ``T`` steps; run ``h_t = a_t h_{t-1} + x_t``
   from a zero state inside every chunk at once (``T`` steps, vectorised over chunks) together with
   the within-chunk decay products ``P_t = a_1 ... a_t`` (each factor <= 1 for A <= 0);
2. propagate the chunk carries sequentially over the ``nc`` chunks;
3. add the carry contribution ``P_t * carry_{c-1}`` and contract with C.

``"stepwise"`` (large per-step work, batch * D * N >= ``STEPWISE_MIN``; SiMBA's N = 64): time runs
in cache-sized blocks, one in-place step per time index on (batch, D, N) slabs; only the block-start
states are saved and the backward recomputes one block at a time (:class:`_ScanSteps`), so no
(batch, D, L, N) tensor is ever held.
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


class _Stack(torch.autograd.Function):
    """``torch.stack(ts, dim)`` whose backward is one ``unbind`` (torch's is one ``select`` per
    input). The graphs below are differentiated with ``create_graph=True`` (double backward): there
    a ``select`` in the first backward becomes a full-size zero-filled ``select_backward`` per step in
    the second (a Hessian-vector product), an ``unbind`` becomes one ``stack``."""

    @staticmethod
    def forward(ctx, dim: int, *ts: Tensor) -> Tensor:
        ctx.dim = dim
        return torch.stack(ts, dim)

    @staticmethod
    def backward(ctx, g: Tensor):
        return (None, *g.unbind(ctx.dim))


def _stack(ts, dim: int) -> Tensor:
    return _Stack.apply(dim, *ts) if torch.is_grad_enabled() else torch.stack(ts, dim)


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
    h = _stack(hs, 0)
    if nc > 1:
        P = torch.exp(torch.cumsum(dA_log, dim=0))  # within-chunk decay products
        end_state, end_decay = hs[-1].unbind(2), P[-1].unbind(2)  # nc x (b, D, N)
        carries = [end_state[0]]
        for c in range(1, nc):
            carries.append(torch.addcmul(end_state[c], end_decay[c], carries[-1]))
        carry_in = _stack([torch.zeros_like(carries[0])] + carries[:-1], 2)  # (b, D, nc, N)
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
    return _stack(ys, -1), h.view(batch, dim, N)


BLOCK_BYTES = 1 << 21  # time-block buffers of the stepwise path: about this many bytes each


def _tm(x: Tensor) -> Tensor:
    """(batch, ..., L) -> contiguous time-major (L, batch, ...)."""
    return x.movedim(-1, 0).contiguous()


class _ScanSteps(torch.autograd.Function):
    """Core scan (y before D/z, and the last state) for large per-step work, with a hand-written
    first-order backward.

    Time runs in blocks of ``Tb`` steps whose (Tb, batch, D, N) buffers stay cache-sized: per block
    the discretisation ``a = exp(dt A)`` (as ``exp2(dt A log2 e)``, the cheaper op), ``x = dt u B`` and
    the contraction with C are a few vectorised ops and the recurrence is one in-place ``addcmul``
    per step, so autograd records nothing per step. Only the states at block starts are saved; the
    backward recomputes one block's states from its start state, runs the adjoint
    ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` backwards in place, and gets every gradient from block-sized
    products: with ``w = g a_t h_{t-1}`` (= dL/d(dt A)), ``dA = sum w dt``,
    ``ddelta = sum_n w A + u sum_n g B``, ``du = dt sum_n g B``, ``dB = sum_d g dt u``,
    ``dC = sum_d dy h``. Under ``create_graph`` the backward differentiates the autograd graph of
    :func:`_stepwise` instead, so higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        batch, dim, L = u.shape
        N, GC = A.shape[1], C.shape[1]
        Tb = max(1, min(L, BLOCK_BYTES // (batch * dim * N * u.element_size())))
        A2 = A * _LOG2E
        dt, du = _tm(delta), _tm(delta * u)  # (L, b, D)
        Bt, Ct = _tm(B), _tm(C)  # (L, b, G, N)
        nb = math.ceil(L / Tb)
        starts = u.new_zeros((nb, batch, dim, N))  # state before each block
        a_buf = u.new_empty((Tb, batch, dim, N))
        h_buf = u.new_empty((Tb, batch, dim, N))
        y = u.new_empty((L, batch, dim))
        for k in range(nb):
            t0, t1 = k * Tb, min(L, (k + 1) * Tb)
            n = t1 - t0
            a, h = a_buf[:n], h_buf[:n]
            _block_a_x(dt[t0:t1], du[t0:t1], A2, Bt[t0:t1], a, h)
            _scan_steps(a, h, starts[k])
            if k + 1 < nb:
                starts[k + 1].copy_(h[n - 1])
            y[t0:t1] = torch.einsum("tbghn,tbgn->tbgh", h.view(n, batch, GC, dim // GC, N),
                                    Ct[t0:t1]).reshape(n, batch, dim)
        last = h_buf[(L - 1) % Tb].clone()
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.Tb = Tb
        return y.permute(1, 2, 0), last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, starts = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the differentiable schedule
            return _graph_backward((u, delta, A, B, C), _stepwise, gy, glast)
        batch, dim, L = u.shape
        N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
        HB, HC, Tb = dim // GB, dim // GC, ctx.Tb
        A2 = A * _LOG2E
        dt, ut = _tm(delta), _tm(u)
        du = dt * ut  # dt u, (L, b, D)
        Bt, Ct = _tm(B), _tm(C)
        gyt = _tm(gy) if gy is not None else None
        a_buf, h_buf, g_buf = (u.new_empty((Tb, batch, dim, N)) for _ in range(3))
        g_next = glast.clone() if glast is not None else u.new_zeros((batch, dim, N))  # a_{t1} g_{t1}
        d_du = u.new_empty((L, batch, dim))  # sum_n g B
        ddelta = u.new_empty((L, batch, dim))
        dBt, dCt = torch.empty_like(Bt), torch.zeros_like(Ct)
        dA = torch.zeros_like(A)
        for k in range(math.ceil(L / Tb) - 1, -1, -1):
            t0, t1 = k * Tb, min(L, (k + 1) * Tb)
            n = t1 - t0
            a, h, g = a_buf[:n], h_buf[:n], g_buf[:n]
            _block_a_x(dt[t0:t1], du[t0:t1], A2, Bt[t0:t1], a, h)
            _scan_steps(a, h, starts[k])
            if gyt is not None:  # g = dy C, then the adjoint recurrence in place
                torch.mul(gyt[t0:t1].view(n, batch, GC, HC, 1), Ct[t0:t1, :, :, None],
                          out=g.view(n, batch, GC, HC, N))
                g[n - 1].add_(g_next)
                torch.matmul(gyt[t0:t1].view(n, batch, GC, 1, HC), h.view(n, batch, GC, HC, N),
                             out=dCt[t0:t1].view(n, batch, GC, 1, N))  # dC = sum_d dy h
            else:
                g.zero_()
                g[n - 1].copy_(g_next)
            a_l, g_l = a.unbind(0), g.unbind(0)
            for t in range(n - 2, -1, -1):
                g_l[t].addcmul_(a_l[t + 1], g_l[t + 1])
            torch.mul(a_l[0], g_l[0], out=g_next)
            torch.matmul(du[t0:t1].view(n, batch, GB, 1, HB), g.view(n, batch, GB, HB, N),
                         out=dBt[t0:t1].view(n, batch, GB, 1, N))  # dB = sum_d g dt u
            d_du[t0:t1] = torch.einsum("tbghn,tbgn->tbgh", g.view(n, batch, GB, HB, N),
                                       Bt[t0:t1]).reshape(n, batch, dim)  # sum_n g B
            # w = g a_t h_{t-1}, in place over a (h shifted by one step, the block's start first)
            a[1:].mul_(h[:-1])
            a[0].mul_(starts[k])
            w = a.mul_(g)
            dA += torch.mul(w, dt[t0:t1, :, :, None], out=h).sum((0, 1))
            torch.sum(w.mul_(A), -1, out=ddelta[t0:t1])
        ddelta.addcmul_(d_du, ut)  # + u sum_n g B
        d_du.mul_(dt)  # du = dt sum_n g B
        return (d_du.permute(1, 2, 0), ddelta.permute(1, 2, 0), dA,
                dBt.permute(1, 2, 3, 0), dCt.permute(1, 2, 3, 0))


_LOG2E = 1.4426950408889634


def _block_a_x(dt: Tensor, du: Tensor, A2: Tensor, Bt: Tensor, a: Tensor, x: Tensor) -> None:
    """One time block: ``a = exp2(dt A2)`` and ``x = dt u B`` into (n, b, D, N) buffers.
    dt, du: (n, b, D); A2 = A log2(e): (D, N); Bt: (n, b, G, N)."""
    n, batch, dim = dt.shape
    G, N = Bt.shape[2], Bt.shape[3]
    torch.mul(dt[..., None], A2, out=a).exp2_()
    torch.mul(du.view(n, batch, G, dim // G, 1), Bt[:, :, :, None], out=x.view(n, batch, G, dim // G, N))


def _scan_steps(a: Tensor, h: Tensor, start: Tensor) -> None:
    """``h_t = a_t h_{t-1} + x_t`` in place over h (holding x) along dim 0, from ``h_{-1} = start``."""
    prev = start
    for a_t, h_t in zip(a.unbind(0), h.unbind(0)):
        h_t.addcmul_(a_t, prev)
        prev = h_t


def _graph_backward(inputs, graph_fn, gy, glast, *extra):
    """Gradients of ``graph_fn(*inputs, *extra) -> (y, last)`` for (gy, glast), with a graph
    (double backward through a hand-written first-order backward)."""
    with torch.enable_grad():
        y, last = graph_fn(*inputs, *extra)
        outs, grads = zip(*[(o, g) for o, g in ((y, gy), (last, glast)) if g is not None])
        # only inputs that require grad can be differentiated (e.g. u is a constant when only the
        # scan's own parameters are: Hessians w.r.t. a parameter subset)
        req = [i for i, x in enumerate(inputs) if x.requires_grad]
        res = [None] * len(inputs)
        if req:
            got = torch.autograd.grad(outs, [inputs[i] for i in req], grads, create_graph=True,
                                      allow_unused=True)
            for i, r in zip(req, got):
                res[i] = r
    return tuple(torch.zeros_like(x) if r is None else r for r, x in zip(res, inputs))


ROWS_PER_BLOCK = 256  # (batch * D) rows per block of the N == 1 path: temporaries stay cache-sized


def _blocks(batch: int, dim: int, G: int):
    """(b, d0, d1) channel blocks of about ROWS_PER_BLOCK rows that stay inside one group."""
    H = dim // G
    step = max(1, min(H, ROWS_PER_BLOCK))
    for b in range(batch):
        for g in range(G):
            for d0 in range(g * H, (g + 1) * H, step):
                yield b, d0, min(d0 + step, (g + 1) * H)


class _ScanN1(torch.autograd.Function):
    """Scan for N == 1 (``y = C . h + D u`` and the last state, with the bias and softplus of delta
    inside) by the two-level chunked schedule, with a hand-written first-order backward.

    The (padded) sequence is cut into ``nc`` chunks of ``T`` steps and each block of channel rows is
    copied once into the layout ``(R, T, nc)`` (row, step inside the chunk, chunk), where one in-place
    op on a ``(R, nc)`` slab advances all chunks of all rows by one step and all other work is
    contiguous, cache-sized and element-wise (bias, softplus and the D skip included, so no full-size
    pass runs outside). Per block: ``a = exp(dt A)``; the local states and the decay products ``P``
    run together as one stacked recurrence (``T`` ops); the chunk carries run over ``nc`` columns;
    ``h = h_local + P carry``. The backward does the same for the adjoint
    ``g_l = dy_l C_l + a_{l+1} g_{l+1}`` (reverse); every gradient is then element-wise: with
    ``w = g a_l h_{l-1}``, ``dA = sum w dt``, ``d dt = w A + g u B``, ``du = g dt B + dy D``,
    ``dB = sum_rows g dt u``, ``dC = sum_rows dy h``, ``dD = sum dy u``, and through the softplus
    ``ddelta = d dt sigmoid(delta + bias)``. dt, u, h and that sigmoid (in the chunk layout) are saved.
    Under ``create_graph`` the backward differentiates the graph of :func:`_chunked` instead, so
    higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, T):
        batch, dim, L = u.shape
        GB, GC = B.shape[1], C.shape[1]
        G = math.lcm(GB, GC)
        nc = math.ceil(L / T)
        pad = nc * T - L
        up, dlp, Bp, Cp = _pad_to((u, delta, B, C), nc * T)
        A2 = A.view(dim) * _LOG2E
        dt_all, u_all, h_all = (torch.empty_like(up) for _ in range(3))  # saved, chunk layout
        sig_all = torch.empty_like(up) if softplus else None  # softplus' derivative, saved
        y = torch.empty_like(up)
        last = u.new_empty((batch, dim, 1))
        rmax = min(dim // G, ROWS_PER_BLOCK)
        steps = _StepMajor(u, T, nc, rmax)
        yq_buf = u.new_empty((rmax, T, nc))
        for b, d0, d1 in _blocks(batch, dim, G):
            R = d1 - d0
            a, hp, ends, carry_in, a_l, hp_l, es_l, ed_l, _, _ = steps.views(R)
            dt = _to_q(dlp[b, d0:d1], dt_all[b, d0:d1].view(R, T, nc))
            if delta_bias is not None:
                dt.add_(delta_bias[d0:d1, None, None])
            if softplus:
                torch.sigmoid(dt, out=sig_all[b, d0:d1].view(R, T, nc))  # d softplus(x) / dx
                torch._C._nn.softplus(dt, 1, 20, out=dt)  # torch's softplus (threshold 20), in place
            if pad:
                dt[:, T - pad:, nc - 1] = 0.0  # padded steps: a = 1, x = 0, state unchanged
            ub = _to_q(up[b, d0:d1], u_all[b, d0:d1].view(R, T, nc))
            torch.mul(dt, A2[d0:d1, None, None], out=a.transpose(0, 1))
            a.exp2_()
            x = hp[:, 0]  # (T, R, nc)
            torch.mul(dt, ub, out=x.transpose(0, 1))
            x.mul_(_rowq(Bp[b, d0 * GB // dim, 0], nc, T).unsqueeze(1))
            hp[0, 1] = a[0]
            hp[1:, 1] = 0.0
            for s in range(1, T):
                hp_l[s].addcmul_(a_l[s], hp_l[s - 1])  # [h, P]_s = a_s [h, P]_{s-1} + [x_s, 0]
            ends.copy_(hp[T - 1])  # (2, R, nc): chunk-end states and decays
            for c in range(1, nc):
                es_l[c].addcmul_(ed_l[c], es_l[c - 1])  # true state at the end of chunk c
            carry_in[:, 1:] = ends[0, :, :-1]  # (R, nc); column 0 stays 0
            h = h_all[b, d0:d1].view(R, T, nc)
            torch.addcmul(x, hp[:, 1], carry_in, out=h.transpose(0, 1))
            yq = torch.mul(h, _rowq(Cp[b, d0 * GC // dim, 0], nc, T), out=yq_buf[:R])
            if D is not None:
                yq.addcmul_(ub, D[d0:d1, None, None])
            _from_q(yq, y[b, d0:d1])
            last[b, d0:d1, 0] = ends[0, :, nc - 1]
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, dt_all, u_all, h_all, sig_all)
        ctx.T, ctx.softplus = T, softplus
        return y[..., :L], last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, D, delta_bias, dt_all, u_all, h_all, sig_all = ctx.saved_tensors
        T, softplus = ctx.T, ctx.softplus
        if torch.is_grad_enabled():  # create_graph: differentiate the differentiable schedule
            return _n1_graph_backward(u, delta, A, B, C, D, delta_bias, softplus, T, gy, glast)
        batch, dim, L = u.shape
        GB, GC = B.shape[1], C.shape[1]
        G = math.lcm(GB, GC)
        nc = math.ceil(L / T)
        Lp = nc * T
        pad = Lp - L
        Bp, Cp = _pad_to((B, C), Lp)
        gyp = _pad_to((gy,), Lp)[0] if gy is not None else None
        A1 = A.view(dim)
        A2 = A1 * _LOG2E
        du, ddelta = u.new_empty((batch, dim, Lp)), u.new_empty((batch, dim, Lp))
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(Bp), torch.zeros_like(Cp)
        dD = torch.zeros_like(D) if D is not None else None
        dbias = torch.zeros_like(delta_bias) if delta_bias is not None else None
        rmax = min(dim // G, ROWS_PER_BLOCK)
        a_buf, g_buf, w_buf, t_buf, y_buf = (u.new_empty((rmax, T, nc)) for _ in range(5))
        steps = _StepMajor(u, T, nc, rmax)  # for the adjoint recurrence
        for b, d0, d1 in _blocks(batch, dim, G):
            R = d1 - d0
            aP, gp, st, carry, a_l, gp_l, gs_l, gq_l, a0_l, carry_l = steps.views(R)
            gb, gc = d0 * GB // dim, d0 * GC // dim
            dt, ub, h = (t[b, d0:d1].view(R, T, nc) for t in (dt_all, u_all, h_all))
            a = torch.mul(dt, A2[d0:d1, None, None], out=a_buf[:R]).exp2_()
            aP.copy_(a.transpose(0, 1))
            tmp = t_buf[:R]
            gP = gp[:, 0]  # (T, R, nc)
            gyq = None
            if gyp is not None:
                gyq = _to_q(gyp[b, d0:d1], y_buf[:R])
                torch.mul(gyq, _rowq(Cp[b, gc, 0], nc, T), out=gP.transpose(0, 1))
                _row_view(dC[b, gc, 0], nc, T).add_(torch.mul(gyq, h, out=tmp).sum(0))  # sum_rows dy h
                if D is not None:
                    dD[d0:d1] += torch.mul(gyq, ub, out=tmp).sum((1, 2))
            else:
                gP.zero_()
            if glast is not None:  # the last state is h at the last (padded) step
                gP[T - 1, :, nc - 1] += glast[b, d0:d1, 0]
            gp[T - 1, 1] = 1.0
            gp[:-1, 1] = 0.0
            for s in range(T - 2, -1, -1):
                gp_l[s].addcmul_(a_l[s + 1], gp_l[s + 1])  # [g, Q]_s = a_{s+1} [g, Q]_{s+1} + [q_s, 0]
            st.copy_(gp[0])  # (2, R, nc): local chunk-start adjoints and decays
            # carry[c]: a at the next chunk's start times that chunk's true start adjoint (0 for the last)
            for c in range(nc - 2, -1, -1):
                torch.mul(a0_l[c + 1], gs_l[c + 1], out=carry_l[c])
                gs_l[c].addcmul_(gq_l[c], carry_l[c])
            gP.addcmul_(gp[:, 1], carry)  # true adjoint
            g = g_buf[:R].copy_(gP.transpose(0, 1))
            w = w_buf[:R]  # w = g a_l h_{l-1}
            torch.mul(a[:, 1:], h[:, :-1], out=w[:, 1:])
            torch.mul(a[:, 0, 1:], h[:, T - 1, :-1], out=w[:, 0, 1:])
            w[:, 0, 0] = 0.0
            w.mul_(g)
            dA[d0:d1, 0] += torch.mul(w, dt, out=tmp).sum((1, 2))
            gB = torch.mul(g, _rowq(Bp[b, gb, 0], nc, T), out=tmp)
            ddt = w.mul_(A1[d0:d1, None, None]).addcmul_(gB, ub)  # d dt = w A + g B u
            duq = gB.mul_(dt)  # g B dt
            if gyq is not None and D is not None:
                duq.addcmul_(gyq, D[d0:d1, None, None])
            _from_q(duq, du[b, d0:d1])
            _row_view(dB[b, gb, 0], nc, T).add_(g.mul_(dt).mul_(ub).sum(0))  # sum_rows g dt u
            if softplus:  # through the softplus: times sigmoid(delta + bias)
                ddt.mul_(sig_all[b, d0:d1].view(R, T, nc))
            if pad:
                ddt[:, T - pad:, nc - 1] = 0.0
            if dbias is not None:
                dbias[d0:d1] += ddt.sum((1, 2))
            _from_q(ddt, ddelta[b, d0:d1])
        return du[..., :L], ddelta[..., :L], dA, dB[..., :L], dC[..., :L], dD, dbias, None, None


class _StepMajor:
    """The reused buffers of one :class:`_ScanN1` recurrence, step-major so that every step is one
    contiguous slab: ``a`` (T, R, nc), the stacked ``[state, decay]`` (T, 2, R, nc), the chunk-edge
    values (2, R, nc) and the chunk carries (R, nc, zero-initialised); :meth:`views` also returns
    their per-step / per-chunk views, built once per row count R (the select ops add up)."""

    def __init__(self, u: Tensor, T: int, nc: int, rmax: int):
        self.T, self.nc = T, nc
        self.a, self.stacked = u.new_empty((T, rmax * nc)), u.new_empty((T, 2, rmax * nc))
        self.edge, self.carry = u.new_empty((2, rmax * nc)), u.new_zeros((rmax, nc))
        self._views = {}

    def views(self, R: int):
        """(a, stacked, edge, carry, a_s (1, R, nc) per step, stacked per step, edge[0] and edge[1]
        per chunk, a[0] per chunk, carry per chunk)."""
        if R not in self._views:
            T, nc = self.T, self.nc
            a = self.a[:, :R * nc].view(T, R, nc)
            st = self.stacked[:, :, :R * nc].view(T, 2, R, nc)
            edge = self.edge[:, :R * nc].view(2, R, nc)
            carry = self.carry[:R]
            self._views[R] = (a, st, edge, carry, a.unsqueeze(1).unbind(0), st.unbind(0), edge[0].unbind(1),
                              edge[1].unbind(1), a[0].unbind(1), carry.unbind(1))
        return self._views[R]


def _n1_graph(u, delta, A, B, C, D, delta_bias, softplus, T):
    """Differentiable (autograd) graph of what :class:`_ScanN1` computes."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if softplus:
        delta = F.softplus(delta)
    y, last = _chunked(u, delta, A, B, C, T)
    return (y if D is None else y + u * D[:, None]), last


def _n1_graph_backward(u, delta, A, B, C, D, delta_bias, softplus, T, gy, glast):
    """Double-backward path of :class:`_ScanN1`: gradients with a graph, ``None`` for absent D/bias."""
    names = [u, delta, A, B, C, D, delta_bias]
    present = [t for t in names if t is not None]

    def fn(*ts):
        it = iter(ts)
        full = [next(it) if t is not None else None for t in names]
        return _n1_graph(*full, softplus, T)

    grads = iter(_graph_backward(tuple(present), fn, gy, glast))
    return (*[next(grads) if t is not None else None for t in names], None, None)


def _pad_to(ts, Lp: int):
    """Zero-pad the last dim of each tensor to ``Lp`` (no copy when it already has that length)."""
    return tuple(t if t.shape[-1] == Lp else F.pad(t, (0, Lp - t.shape[-1])) for t in ts)


def _to_q(rows: Tensor, out: Tensor) -> Tensor:
    """(R, nc * T) contiguous rows -> ``out`` (R, T, nc) contiguous (row, step in chunk, chunk). Written
    as a copy into a channels-last view, torch's fastest transposing copy."""
    R, T, nc = out.shape
    out.unsqueeze(2).permute(0, 3, 1, 2).copy_(rows.view(R, nc, T, 1))
    return out


def _from_q(q: Tensor, rows: Tensor) -> None:
    """Inverse of :func:`_to_q`: (R, T, nc) -> (R, nc * T) contiguous ``rows``."""
    R, T, nc = q.shape
    rows.view(R, nc, T, 1).copy_(q.unsqueeze(2).permute(0, 3, 1, 2))


def _row_view(row: Tensor, nc: int, T: int) -> Tensor:
    """A (nc * T,) sequence shared by all rows -> its (T, nc) view (broadcasts over rows)."""
    return row.view(nc, T).t()


def _rowq(row: Tensor, nc: int, T: int) -> Tensor:
    """:func:`_row_view` as a small contiguous copy (a transposed broadcast operand halves the speed
    of the element-wise op it feeds)."""
    return _row_view(row, nc, T).contiguous()


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
    A = A.to(ct)
    B, C = B.to(ct), C.to(ct)
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    D = None if D is None else D.to(ct)
    delta_bias = None if delta_bias is None else delta_bias.to(ct)
    if L == 0:
        out = u.new_zeros((batch, dim, 0))
        return (out, u_c.new_zeros((batch, dim, N))) if return_last_state else out
    if schedule == "auto":
        schedule = "stepwise" if batch * dim * N >= STEPWISE_MIN else "chunked"
    if schedule == "chunked" and N == 1:  # bias, softplus and the D skip run inside
        T = max(1, min(int(chunk_size) if chunk_size else math.ceil(math.sqrt(L)), L))
        out, last = _ScanN1.apply(u_c, delta, A, B, C, D, delta_bias, bool(delta_softplus), T)
    else:
        if delta_bias is not None:
            delta = delta + delta_bias[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        if schedule == "stepwise":
            y, last = _ScanSteps.apply(u_c, delta, A, B, C)
        else:
            y, last = _chunked(u_c, delta, A, B, C, chunk_size)
        out = y if D is None else y + u_c * D[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out
