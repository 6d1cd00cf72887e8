"""Triton kernels of the "triton" backend: the selective scan (Gu & Dao 2023, "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces", Sec. 3 and Alg. 2) and VMamba's four-direction
cross-scan / cross-merge (Liu et al. 2024, "VMamba: Visual State Space Model", Sec. 3 "2D-Selective-Scan").

Kernels only, no torch glue: :mod:`mamba_clip.ops.scan_triton` and :mod:`mamba_clip.ops.cross_scan_triton`
load this file as a module (once compiled for the GPU, once under Triton's interpreter when
``TRITON_INTERPRET=1`` and the tensors are on the CPU), because ``triton.jit`` decides between the two
when it decorates a function.

Selective scan. One program owns one batch row and ``BLOCK_D`` channels that share their B/C group, and
walks the sequence in chunks of ``BLOCK_T`` steps, the state ``h`` (BLOCK_D, BLOCK_N) in registers. In a
chunk the recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t`` is a first-order linear recurrence, so
``tl.associative_scan`` over the chunk's time axis with the operator
``(a1, b1) . (a2, b2) = (a1 a2, b1 a2 + b2)`` gives every ``h_t`` of the chunk from the carried state
(loads are coalesced along L, the scan is log-depth). Positions past L get ``dt = 0`` (identity steps),
so nothing needs the length of the last chunk. The forward optionally saves the state at the end of
every chunk (``states``, (batch, D, n_chunks, N) float32) for the backward.

The backward walks the chunks in reverse. It rebuilds ``h_{t-1}`` for the chunk with one scan over the
inputs shifted by one step, whose first element is (0, saved state before the chunk), then
``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``; the state adjoint ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}``
is one reverse scan (carry: the adjoint entering from the next chunk, or d last_state). With ``h_{t-1}``,
``h_t`` and ``g_t`` every gradient is elementwise plus reductions: dB, dC are summed over the block's
channels and added atomically into float32 (batch, G, N, L) buffers; dA, dD and d delta_bias are
accumulated over time in registers and written as per-batch-row partials (summed by the caller).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum spelled with tl.reduce: triton's own @jit helpers (tl.sum, tl.sigmoid, tl.cdiv, tl.zeros) are
    decorated when triton is imported, so under the interpreter they only work if TRITON_INTERPRET
    was set before that import; these kernels call only builtins and their own helpers."""
    return tl.reduce(x, axis, _add)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _first_order(a1, b1, a2, b2):
    """Composition of the affine maps h -> a1 h + b1, then h -> a2 h + b2."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _dt(delta_ptr, off, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias) (each optional) and the softplus derivative; 0 where masked."""
    x = tl.load(delta_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias[:, None]
    if SOFTPLUS:
        e = tl.exp(tl.minimum(x, 20.0))
        # log1p(e) without libdevice (not in the interpreter): its series where 1 + e would round
        lp = tl.where(e < 1e-3, e * (1.0 - e * (0.5 - e * (1.0 / 3.0))), tl.log(1.0 + e))
        dt = tl.where(x > 20.0, x, lp)
        dsp = e / (1.0 + e)
    else:
        dt = x
        dsp = tl.full(x.shape, 1.0, tl.float32)
    dt = tl.where(mask, dt, 0.0)
    return dt, dsp


@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, states_ptr,
    dim, L, N, n_chunks, G_B, G_C, dpg_B, dpg_C,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = pid_b * dim + offs_d  # (BD,) rows of the (batch * D, L) views
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0.0).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d).to(tl.float32)
    Dv = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d).to(tl.float32)
    B_base = B_ptr + (pid_b * G_B + d0 // dpg_B) * N * L
    C_base = C_ptr + (pid_b * G_C + d0 // dpg_C) * N * L
    loc_t = tl.arange(0, BLOCK_T)
    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for c in range(n_chunks):
        offs_t = c * BLOCK_T + loc_t
        mask_t = offs_t < L
        off = rows[:, None] * L + offs_t[None, :]  # (BD, BT)
        m2 = (offs_d[:, None] >= 0) & mask_t[None, :]
        dt, _ = _dt(delta_ptr, off, m2, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        bc_off = offs_n[None, :] * L + offs_t[:, None]  # (BT, BN)
        bc_mask = mask_t[:, None] & mask_n[None, :]
        Bt = tl.load(B_base + bc_off, mask=bc_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + bc_off, mask=bc_mask, other=0.0).to(tl.float32)
        dA = tl.exp(dt[:, :, None] * A[:, None, :])  # (BD, BT, BN)
        dBu = (dt * u)[:, :, None] * Bt[None, :, :]
        aa, bb = tl.associative_scan((dA, dBu), 1, _first_order)
        hs = aa * h[:, None, :] + bb
        y = _sum(hs * Ct[None, :, :], axis=2)  # (BD, BT)
        h = _sum(tl.where((loc_t == BLOCK_T - 1)[None, :, None], hs, 0.0), axis=1)
        if HAS_D:
            y = y + u * Dv[:, None]
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            y = y * z * _sigmoid(z)
        tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=m2)
        if SAVE:
            st = states_ptr + (rows[:, None] * n_chunks + c) * N + offs_n[None, :]
            tl.store(st, h, mask=mask_n[None, :])
    tl.store(last_ptr + rows[:, None] * N + offs_n[None, :], h, mask=mask_n[None, :])


@triton.jit
def scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    dim, L, N, n_chunks, G_B, G_C, dpg_B, dpg_C,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = pid_b * dim + offs_d
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0.0).to(tl.float32)
    A3 = A[:, None, :]
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d).to(tl.float32)
    Dv = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d).to(tl.float32)
    gB = pid_b * G_B + d0 // dpg_B
    gC = pid_b * G_C + d0 // dpg_C
    B_base = B_ptr + gB * N * L
    C_base = C_ptr + gC * N * L
    dB_base = dB_ptr + gB * N * L
    dC_base = dC_ptr + gC * N * L
    loc_t = tl.arange(0, BLOCK_T)
    first = (loc_t == 0)[None, :, None]
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + rows[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0.0)
        carry = carry.to(tl.float32)
    else:
        carry = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    dA_acc = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    dD_acc = tl.full((BLOCK_D,), 0.0, tl.float32)
    dbias_acc = tl.full((BLOCK_D,), 0.0, tl.float32)
    bc_row = offs_n[None, :] * L
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        offs_t = c * BLOCK_T + loc_t
        mask_t = offs_t < L
        off = rows[:, None] * L + offs_t[None, :]
        m2 = (offs_d[:, None] >= 0) & mask_t[None, :]
        bc_mask = mask_t[:, None] & mask_n[None, :]
        # this chunk: h_t = dA_t h_{t-1} + dBu_t
        dt, dsp = _dt(delta_ptr, off, m2, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + bc_row + offs_t[:, None], mask=bc_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + bc_row + offs_t[:, None], mask=bc_mask, other=0.0).to(tl.float32)
        dA = tl.exp(dt[:, :, None] * A3)
        # h_{t-1}: scan over the inputs one step back, the first element replaced by the saved state
        tm = offs_t - 1
        mm = (tm >= 0) & (tm < L)
        off_m = rows[:, None] * L + tm[None, :]
        m2m = (offs_d[:, None] >= 0) & mm[None, :]
        dt_m, _ = _dt(delta_ptr, off_m, m2m, bias, HAS_BIAS, SOFTPLUS)
        u_m = tl.load(u_ptr + off_m, mask=m2m, other=0.0).to(tl.float32)
        B_m = tl.load(B_base + bc_row + tm[:, None], mask=mm[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        h0 = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
        if c > 0:
            h0 = tl.load(states_ptr + (rows[:, None] * n_chunks + c - 1) * N + offs_n[None, :],
                         mask=mask_n[None, :], other=0.0)
        a_s = tl.where(first, 0.0, tl.exp(dt_m[:, :, None] * A3))
        b_s = tl.where(first, h0[:, None, :], (dt_m * u_m)[:, :, None] * B_m[None, :, :])
        _, h_prev = tl.associative_scan((a_s, b_s), 1, _first_order)
        hs = dA * h_prev + (dt * u)[:, :, None] * Bt[None, :, :]
        # output side: out = (C.h + D u) * silu(z)
        dout = tl.load(dout_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            sz = _sigmoid(z)
            y = _sum(hs * Ct[None, :, :], axis=2)
            if HAS_D:
                y = y + u * Dv[:, None]
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dy = dout * z * sz
        else:
            dy = dout
        du = dy * Dv[:, None]
        dD_acc += _sum(dy * u, axis=1)
        dC = _sum(dy[:, :, None] * hs, axis=0)  # (BT, BN)
        tl.atomic_add(dC_base + bc_row + offs_t[:, None], dC, mask=bc_mask)
        # state adjoint: g_t = C_t dy_t + dA_{t+1} g_{t+1}, entering from the next chunk as `carry`
        tp = offs_t + 1
        mp = tp < L
        off_p = rows[:, None] * L + tp[None, :]
        dt_p, _ = _dt(delta_ptr, off_p, (offs_d[:, None] >= 0) & mp[None, :], bias, HAS_BIAS, SOFTPLUS)
        a_g = tl.where(mp[None, :, None], tl.exp(dt_p[:, :, None] * A3), 1.0)
        b_g = dy[:, :, None] * Ct[None, :, :]
        ga, gb = tl.associative_scan((a_g, b_g), 1, _first_order, reverse=True)
        g = gb + ga * carry[:, None, :]
        carry = _sum(tl.where(first, g, 0.0), axis=1)
        # gradients of dA_t = exp(dt_t A) and dBu_t = dt_t u_t B_t
        gdA = g * h_prev * dA  # d loss / d (dt_t A)
        gB = _sum(g * Bt[None, :, :], axis=2)  # (BD, BT)
        ddt = _sum(gdA * A3, axis=2) + gB * u
        du += gB * dt
        dA_acc += _sum(gdA * dt[:, :, None], axis=1)
        dB = _sum(g * (dt * u)[:, :, None], axis=0)
        tl.atomic_add(dB_base + bc_row + offs_t[:, None], dB, mask=bc_mask)
        ddelta = tl.where(m2, ddt * dsp, 0.0)
        dbias_acc += _sum(ddelta, axis=1)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + off, ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)
    tl.store(dA_ptr + rows[:, None] * N + offs_n[None, :], dA_acc, mask=mask_n[None, :])
    tl.store(dD_ptr + rows, dD_acc)
    tl.store(dbias_ptr + rows, dbias_acc)


@triton.jit
def cross_scan_kernel(
    x_ptr, out_ptr, C, H, W, sxb, sxc, sxh, sxw,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """x (B, C, H, W) with any strides -> out (B, 4, C, H*W) contiguous: row-major, column-major and
    both reversed. Each element of x is read once and written to its four places."""
    pid_b = tl.program_id(0).to(tl.int64)
    nwb = (W + BLOCK_W - 1) // BLOCK_W
    hb = tl.program_id(1) // nwb
    wb = tl.program_id(1) % nwb
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    h3 = offs_h[:, None, None]
    w3 = offs_w[None, :, None]
    c3 = offs_c[None, None, :]
    mask = (h3 < H) & (w3 < W) & (c3 < C)
    x = tl.load(x_ptr + pid_b * sxb + c3 * sxc + h3 * sxh + w3 * sxw, mask=mask)
    L = H * W
    base = out_ptr + pid_b * 4 * C * L + c3 * L
    rm = h3 * W + w3
    cm = w3 * H + h3
    tl.store(base + rm, x, mask=mask)
    tl.store(base + C * L + cm, x, mask=mask)
    tl.store(base + 2 * C * L + (L - 1 - rm), x, mask=mask)
    tl.store(base + 3 * C * L + (L - 1 - cm), x, mask=mask)


@triton.jit
def cross_merge_kernel(
    ys_ptr, out_ptr, C, H, W, sob, soc, soh, sow,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """ys (B, 4, C, H*W) contiguous -> out (B, C, H, W) with any strides: the sum of the four
    directions put back on the grid (adjoint of cross_scan_kernel), accumulated in float32."""
    pid_b = tl.program_id(0).to(tl.int64)
    nwb = (W + BLOCK_W - 1) // BLOCK_W
    hb = tl.program_id(1) // nwb
    wb = tl.program_id(1) % nwb
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    h3 = offs_h[:, None, None]
    w3 = offs_w[None, :, None]
    c3 = offs_c[None, None, :]
    mask = (h3 < H) & (w3 < W) & (c3 < C)
    L = H * W
    base = ys_ptr + pid_b * 4 * C * L + c3 * L
    rm = h3 * W + w3
    cm = w3 * H + h3
    acc = tl.load(base + rm, mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(base + C * L + cm, mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(base + 2 * C * L + (L - 1 - rm), mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(base + 3 * C * L + (L - 1 - cm), mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_b * sob + c3 * soc + h3 * soh + w3 * sow, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def linrec_kernel(a_ptr, x_ptr, h_ptr, R, L, n_chunks, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_T: tl.constexpr):
    """Linear recurrence along the last axis of (R, L) rows (the primitive of the twice-differentiable
    path, :mod:`mamba_clip.ops.linear_recurrence`); ``a_t`` links steps t-1 and t:
    forward ``h_t = a_t h_{t-1} + x_t`` (h_{-1} = 0), reverse ``h_t = a_{t+1} h_{t+1} + x_t`` (h_L = 0).
    One program owns BLOCK_R rows and walks the chunks of BLOCK_T steps (backwards when REVERSE), one
    ``tl.associative_scan`` per chunk from the carried state."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < R
    loc_t = tl.arange(0, BLOCK_T)
    carry = tl.full((BLOCK_R,), 0.0, tl.float32)
    for i in range(n_chunks):
        if REVERSE:
            c = n_chunks - 1 - i
        else:
            c = i
        offs_t = c * BLOCK_T + loc_t
        mask_t = offs_t < L
        m2 = mask_r[:, None] & mask_t[None, :]
        off = rows[:, None] * L + offs_t[None, :]
        x = tl.load(x_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if REVERSE:
            ma = mask_r[:, None] & (offs_t + 1 < L)[None, :]
            a = tl.load(a_ptr + off + 1, mask=ma, other=0.0).to(tl.float32)
            aa, bb = tl.associative_scan((a, x), 1, _first_order, reverse=True)
            hs = bb + aa * carry[:, None]
            carry = _sum(tl.where((loc_t == 0)[None, :], hs, 0.0), axis=1)
        else:
            ma = m2 & (offs_t > 0)[None, :]
            a = tl.load(a_ptr + off, mask=ma, other=0.0).to(tl.float32)
            aa, bb = tl.associative_scan((a, x), 1, _first_order)
            hs = bb + aa * carry[:, None]
            carry = _sum(tl.where((loc_t == BLOCK_T - 1)[None, :], hs, 0.0), axis=1)
        tl.store(h_ptr + off, hs.to(h_ptr.dtype.element_ty), mask=m2)
