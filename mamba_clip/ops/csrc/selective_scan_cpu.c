/*
 * Fused selective scan for CPUs: forward and backward, OpenMP over channels, float32.
 *
 * Semantics of mamba-ssm's selective_scan_fn (Gu & Dao 2023, "Mamba", Alg. 2):
 *   dt_l  = softplus?(delta_l + delta_bias)            (softplus with torch's threshold 20)
 *   h_l   = exp(dt_l * A) * h_{l-1} + dt_l * B_l * u_l  (state of N values per channel)
 *   y_l   = C_l . h_l + D * u_l ;  out_l = y_l * silu(z_l) if z is given
 * Layouts (all contiguous): u, delta, z, out, du, ddelta, dz: (batch, dim, L); A, dA: (dim, N);
 * Bt, Ct, dBt, dCt: (batch, G, L, N) (transposed so the inner loop over N is contiguous);
 * D, delta_bias and their grads: (dim,); last, dlast: (batch, dim, N). Optional pointers may be NULL.
 *
 * No (batch, dim, L, N) tensor is ever built: the forward keeps one state vector per thread; the
 * backward recomputes the states of one channel into a per-thread scratch of 2 * L * N floats and
 * then runs the adjoint recurrence g_l = dy_l C_l + exp(dt_{l+1} A) g_{l+1} backwards.
 * For N == 1 a forward that will be differentiated may save dt and the states (dts, hs: (batch, dim,
 * L), as large as u); the backward then skips the forward recompute and the softplus (its
 * derivative is recomputed from dt as -expm1(-dt)) and runs one reverse sweep.
 * dB/dC are shared by the channels of a group, so each thread accumulates them privately and the
 * copies are summed at the end; dA, dD, d_delta_bias are owned by the thread that owns channel d.
 * exp is a branch-free Cody-Waite + degree-6 polynomial so that gcc vectorises the loops over N.
 * The N > 1 forward (AVX2 + FMA builds) runs the state lanes outside and the time steps inside, with
 * 8-wide output partials and exp2 as a degree-5 polynomial (see fwd_nvec_channel); ~2x the
 * step-outer loop at N = 64. Without AVX2 + FMA the portable step-outer loop is used.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__) || defined(__AVX__)
#include <immintrin.h>
#endif

#define RESTRICT __restrict__

/* exp(x) to ~2 ulp for x in [-87, 88]; NaN propagates (the clamps are compares, not fmin/fmax). */
static inline float fexp(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* log1p(e) for e in [0, 1] as e q(e), q a degree-9 Chebyshev fit of log1p(e)/e on [0, 1] (no
 * division); relative error < 2e-7 in float32. */
static inline float flog1p01(float e) {
    float p = -3.214113414287567e-3f;
    p = p * e + 1.9649622961878777e-2f;
    p = p * e - 5.643612518906593e-2f;
    p = p * e + 1.0533368587493896e-1f;
    p = p * e - 1.5251556038856506e-1f;
    p = p * e + 1.9651539623737335e-1f;
    p = p * e - 2.4947820603847504e-1f;
    p = p * e + 3.332909941673279e-1f;
    p = p * e - 4.999985098838806e-1f;
    p = p * e + 1.0f;
    return e * p;
}

static inline float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }

/* dt[l] = softplus?(delta[l] + bias); sig[l] = d dt / d delta (if sig != NULL).
 * softplus(x) = max(x, 0) + log1p(exp(-|x|)), sigmoid(x) from the same exp; x > 20 -> x (torch). */
static void compute_dt(const float* RESTRICT delta, float bias, int softplus, int64_t L,
                       float* RESTRICT dt, float* RESTRICT sig) {
    if (!softplus) {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) dt[l] = delta[l] + bias;
        if (sig)
            for (int64_t l = 0; l < L; ++l) sig[l] = 1.0f;
        return;
    }
    if (!sig) {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) {
            float x = delta[l] + bias;
            float e = fexp(x < 0.0f ? x : -x);
            float sp = (x > 0.0f ? x : 0.0f) + flog1p01(e);
            dt[l] = x > 20.0f ? x : sp;
        }
        return;
    }
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
        float x = delta[l] + bias;
        float e = fexp(x < 0.0f ? x : -x);
        float sp = (x > 0.0f ? x : 0.0f) + flog1p01(e);
        float r = 1.0f / (1.0f + e);
        dt[l] = x > 20.0f ? x : sp;
        sig[l] = x > 20.0f ? 1.0f : (x >= 0.0f ? r : e * r);
    }
}

/* out[l] = (y[l] + Dd u[l]) * silu(z[l]) in place on y -> out. */
static void finish_out(const float* y, const float* RESTRICT u, float Dd,
                       const float* RESTRICT z, int64_t L, float* out) {
    if (z) {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) {
            float zl = z[l];
            out[l] = (y[l] + Dd * u[l]) * zl * fsigmoid(zl);
        }
    } else {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) out[l] = y[l] + Dd * u[l];
    }
}

/* ---- N == 1 (VMamba): the recurrence is a scalar chain per channel, so CB = 8 channels are scanned
 * together: their per-step values are interleaved ([l][c], an 8 x 8 block transpose) and the chain
 * runs as one 8-wide vector; everything else runs on contiguous rows, vectorised over L. */
#define CB 8

/* dst[l * CB + c] = rows[c][l] for c < CB, l < L (and the inverse with interleave = 0). */
static void interleave8(float* const* rows, float* RESTRICT il, int64_t L, int to_interleaved) {
    int64_t l0 = 0;
#if defined(__AVX2__) || defined(__AVX__)
    for (; l0 + 8 <= L; l0 += 8) {
        __m256 r[8];
        for (int k = 0; k < 8; ++k)
            r[k] = to_interleaved ? _mm256_loadu_ps(rows[k] + l0) : _mm256_loadu_ps(il + (l0 + k) * CB);
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
        r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
        r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
        r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
        r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
        r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
        r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
        r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
        for (int k = 0; k < 8; ++k) {
            if (to_interleaved)
                _mm256_storeu_ps(il + (l0 + k) * CB, r[k]);
            else
                _mm256_storeu_ps(rows[k] + l0, r[k]);
        }
    }
#endif
    for (int64_t l = l0; l < L; ++l)
        for (int c = 0; c < CB; ++c) {
            if (to_interleaved)
                il[l * CB + c] = rows[c][l];
            else
                rows[c][l] = il[l * CB + c];
        }
}

/* h_l = a_l h_{l-1} + w_l for CB interleaved channels from h = 0; states to hv; returns in h. */
static void chain8_fwd(const float* RESTRICT av, const float* RESTRICT wv, float* RESTRICT hv,
                       int64_t L, float* RESTRICT h) {
    float hs[CB];
    for (int c = 0; c < CB; ++c) hs[c] = 0.0f;
    for (int64_t l = 0; l < L; ++l) {
#pragma omp simd
        for (int c = 0; c < CB; ++c) {
            hs[c] = av[l * CB + c] * hs[c] + wv[l * CB + c];
            hv[l * CB + c] = hs[c];
        }
    }
    for (int c = 0; c < CB; ++c) h[c] = hs[c];
}

/* g_l = q_l + a_{l+1} g_{l+1}, g_{L-1} = q_{L-1} + g0, for CB interleaved channels -> gv. */
static void chain8_bwd(const float* RESTRICT qv, const float* RESTRICT av, float* RESTRICT gv,
                       int64_t L, const float* RESTRICT g0) {
    float gs[CB], an[CB];
    for (int c = 0; c < CB; ++c) {
        gs[c] = g0[c];
        an[c] = 1.0f;
    }
    for (int64_t l = L - 1; l >= 0; --l) {
#pragma omp simd
        for (int c = 0; c < CB; ++c) {
            gs[c] = qv[l * CB + c] + an[c] * gs[c];
            gv[l * CB + c] = gs[c];
            an[c] = av[l * CB + c];
        }
    }
}

/* Backward of channels d0 .. d0+cb-1 of batch b (N == 1); accumulates dB/dC into dBacc/dCacc
 * and dA, dD, d_delta_bias of each channel into dAs[c], dDs[c], dbs[c]. ws: 9 * CB * L floats. */
static void bwd_n1_block(const float* u, const float* delta, const float* A, const float* Bt,
                         const float* Ct, const float* Dp, const float* z, const float* dbias,
                         int softplus, const float* dout, const float* dlast, int64_t b, int64_t d0,
                         int cb, int64_t dim, int64_t L, int64_t G, int64_t H, float* du,
                         float* ddelta, float* dBacc, float* dCacc, float* dz, float* dAs, float* dDs,
                         float* dbs, float* ws) {
    float *dtr[CB], *sgr[CB], *er[CB], *hr[CB], *dyr[CB], *qr[CB];
    for (int c = 0; c < CB; ++c) {
        dtr[c] = ws + c * L;
        sgr[c] = ws + (CB + c) * L;
        er[c] = ws + (2 * CB + c) * L;
        hr[c] = ws + (3 * CB + c) * L; /* dt u B, then the states */
        dyr[c] = ws + (4 * CB + c) * L;
        qr[c] = ws + (5 * CB + c) * L; /* dy C, then the adjoint states */
    }
    float* EV = ws + 6 * CB * L;
    float* WV = EV + CB * L;
    float* HV = WV + CB * L;
    for (int c = 0; c < CB; ++c) {
        if (c >= cb) {
            memset(er[c], 0, sizeof(float) * (size_t)L);
            memset(hr[c], 0, sizeof(float) * (size_t)L);
            memset(qr[c], 0, sizeof(float) * (size_t)L);
            continue;
        }
        const int64_t d = d0 + c, bd = b * dim + d, g = d / H;
        float* RESTRICT dt = dtr[c];
        float* RESTRICT e = er[c];
        float* RESTRICT w = hr[c];
        compute_dt(delta + bd * L, dbias ? dbias[d] : 0.0f, softplus, L, dt, sgr[c]);
        const float a0 = A[d];
        const float* RESTRICT ur = u + bd * L;
        const float* RESTRICT Br = Bt + (b * G + g) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) {
            e[l] = fexp(dt[l] * a0);
            w[l] = dt[l] * ur[l] * Br[l];
        }
    }
    interleave8(er, EV, L, 1);
    interleave8(hr, WV, L, 1);
    float hl[CB], g0[CB];
    chain8_fwd(EV, WV, HV, L, hl);
    interleave8(hr, HV, L, 0); /* states -> hr rows */
    for (int c = 0; c < cb; ++c) {
        const int64_t d = d0 + c, bd = b * dim + d, g = d / H;
        const float Dd = Dp ? Dp[d] : 0.0f;
        const float* RESTRICT Cr = Ct + (b * G + g) * L;
        const float* RESTRICT ur = u + bd * L;
        const float* RESTRICT dor = dout + bd * L;
        const float* RESTRICT h = hr[c];
        float* RESTRICT dy = dyr[c];
        float* RESTRICT q = qr[c];
        float dDacc = 0.0f;
        if (z) {
            const float* RESTRICT zr = z + bd * L;
            float* RESTRICT dzr = dz + bd * L;
#pragma omp simd reduction(+ : dDacc)
            for (int64_t l = 0; l < L; ++l) {
                float zl = zr[l], sg = fsigmoid(zl);
                float dyl = dor[l] * zl * sg;
                dzr[l] = dor[l] * (h[l] * Cr[l] + Dd * ur[l]) * sg * (1.0f + zl * (1.0f - sg));
                dy[l] = dyl;
                q[l] = dyl * Cr[l];
                dDacc += dyl * ur[l];
            }
        } else {
#pragma omp simd reduction(+ : dDacc)
            for (int64_t l = 0; l < L; ++l) {
                dy[l] = dor[l];
                q[l] = dor[l] * Cr[l];
                dDacc += dor[l] * ur[l];
            }
        }
        dDs[c] += dDacc;
        g0[c] = dlast ? dlast[bd] : 0.0f;
    }
    for (int c = cb; c < CB; ++c) g0[c] = 0.0f;
    interleave8(qr, WV, L, 1);
    chain8_bwd(WV, EV, HV, L, g0);
    interleave8(qr, HV, L, 0); /* adjoint states -> qr rows */
    for (int c = 0; c < cb; ++c) {
        const int64_t d = d0 + c, bd = b * dim + d, g = d / H;
        const float Dd = Dp ? Dp[d] : 0.0f, a0 = A[d];
        const float* RESTRICT dt = dtr[c];
        const float* RESTRICT sig = sgr[c];
        const float* RESTRICT e = er[c];
        const float* RESTRICT h = hr[c];
        const float* RESTRICT dy = dyr[c];
        const float* RESTRICT gv = qr[c];
        const float* RESTRICT ur = u + bd * L;
        const float* RESTRICT Br = Bt + (b * G + g) * L;
        float* RESTRICT dBg = dBacc + (b * G + g) * L;
        float* RESTRICT dCg = dCacc + (b * G + g) * L;
        float* RESTRICT dur = du + bd * L;
        float* RESTRICT ddr = ddelta + bd * L;
        float dA0 = 0.0f, dbacc = 0.0f;
#pragma omp simd reduction(+ : dA0, dbacc)
        for (int64_t l = 0; l < L; ++l) {
            float hprev = l > 0 ? h[l - 1] : 0.0f;
            float gl = gv[l], dtl = dt[l], ul = ur[l], Bl = Br[l];
            float wgt = gl * hprev * e[l];
            dA0 += wgt * dtl;
            dCg[l] += dy[l] * h[l];
            dBg[l] += gl * dtl * ul;
            dur[l] = dy[l] * Dd + gl * dtl * Bl;
            float dd = (wgt * a0 + gl * ul * Bl) * sig[l];
            ddr[l] = dd;
            dbacc += dd;
        }
        dAs[c] += dA0;
        dbs[c] += dbacc;
    }
}


/* sigmoid(x) = 1 - exp(-softplus(x)) from dt = softplus(x) >= 0, as -expm1(-dt): a Taylor
 * polynomial below 0.35 (no cancellation for small dt), 1 - exp(-dt) above; relative error ~2e-7. */
static inline float sigmoid_from_softplus(float dt) {
    float t = dt;
    float p = -1.0f / 40320.0f;
    p = p * t + 1.0f / 5040.0f;
    p = p * t - 1.0f / 720.0f;
    p = p * t + 1.0f / 120.0f;
    p = p * t - 1.0f / 24.0f;
    p = p * t + 1.0f / 6.0f;
    p = p * t - 0.5f;
    p = p * t + 1.0f;
    float small = p * t;
    float big = 1.0f - fexp(-t);
    return t < 0.35f ? small : big;
}

/* ---- N == 1, tiled over L (up to TLMAX steps at a time: long tiles keep each row a long sequential
 * stream for the hardware prefetchers, which matters more than L1/L2 residency here). The
 * forward can save dt and the states h (each (batch, dim, L), one float per
 * step and channel since N == 1); the backward then needs no forward recompute and runs one reverse
 * sweep over the tiles carrying the adjoint state. */
#define TLMAX 4096
#define TL_OF(L) ((L) < TLMAX ? (L) : TLMAX)

/* Chain with carried state: h = a h + w over n interleaved steps (hs in/out). */
static inline void chain8_fwd_c(const float* RESTRICT av, const float* RESTRICT wv, float* RESTRICT hv,
                                int64_t n, float* RESTRICT hs) {
    for (int64_t l = 0; l < n; ++l) {
#pragma omp simd
        for (int c = 0; c < CB; ++c) {
            hs[c] = av[l * CB + c] * hs[c] + wv[l * CB + c];
            hv[l * CB + c] = hs[c];
        }
    }
}

/* Reverse chain with carried (g, a_next): g_l = q_l + a_{l+1} g_{l+1}. */
static inline void chain8_bwd_c(const float* RESTRICT qv, const float* RESTRICT av, float* RESTRICT gv,
                                int64_t n, float* RESTRICT gs, float* RESTRICT an) {
    for (int64_t l = n - 1; l >= 0; --l) {
#pragma omp simd
        for (int c = 0; c < CB; ++c) {
            gs[c] = qv[l * CB + c] + an[c] * gs[c];
            gv[l * CB + c] = gs[c];
            an[c] = av[l * CB + c];
        }
    }
}

static int64_t fwd_t_ws_floats(int64_t L) { return 5 * CB * TL_OF(L) + 1; }
static int64_t bwd_t_ws_floats(int64_t L) { return 6 * CB * TL_OF(L) + 1; }

/* Forward of channels d0 .. d0+cb-1 of batch b (N == 1), tiled. dts/hs: NULL or (batch, dim, L)
 * arrays to save dt and the states into. ws: fwd_t_ws_floats(). */
static void fwd_n1_tiled(const float* u, const float* delta, const float* A, const float* Bt,
                         const float* Ct, const float* Dp, const float* z, const float* dbias,
                         int softplus, int64_t b, int64_t d0, int cb, int64_t dim, int64_t L,
                         int64_t G, int64_t H, float* out, float* last, float* dts, float* hs,
                         float* ws) {
    const int64_t TL = TL_OF(L);
    float *ar[CB], *wr[CB];
    for (int c = 0; c < CB; ++c) {
        ar[c] = ws + c * TL; /* dt (unless saved), then exp(dt A) */
        wr[c] = ws + (CB + c) * TL; /* dt u B, then the states (unless saved) */
    }
    float* AV = ws + 2 * CB * TL;
    float* WV = AV + CB * TL;
    float* HV = WV + CB * TL;
    float carry[CB];
    for (int c = 0; c < CB; ++c) carry[c] = 0.0f;
    for (int64_t l0 = 0; l0 < L; l0 += TL) {
        const int64_t n = L - l0 < TL ? L - l0 : TL;
        float* hrows[CB];
        for (int c = 0; c < CB; ++c) {
            float* a = ar[c]; /* may alias dt */
            float* RESTRICT w = wr[c];
            if (c >= cb) {
                memset(a, 0, sizeof(float) * (size_t)n);
                memset(w, 0, sizeof(float) * (size_t)n);
                hrows[c] = wr[c];
                continue;
            }
            const int64_t d = d0 + c, bd = b * dim + d;
            float* dt = dts ? dts + bd * L + l0 : a; /* in place: element-wise below */
            compute_dt(delta + bd * L + l0, dbias ? dbias[d] : 0.0f, softplus, n, dt, NULL);
            hrows[c] = hs ? hs + bd * L + l0 : w;
            const float a0 = A[d];
            const float* RESTRICT ur = u + bd * L + l0;
            const float* RESTRICT Br = Bt + (b * G + d / H) * L + l0;
#pragma omp simd
            for (int64_t l = 0; l < n; ++l) {
                float dtl = dt[l];
                w[l] = dtl * ur[l] * Br[l];
                a[l] = fexp(dtl * a0);
            }
        }
        interleave8(ar, AV, n, 1);
        interleave8(wr, WV, n, 1);
        chain8_fwd_c(AV, WV, HV, n, carry);
        interleave8(hrows, HV, n, 0);
        for (int c = 0; c < cb; ++c) {
            const int64_t d = d0 + c, bd = b * dim + d;
            const float* RESTRICT h = hrows[c];
            const float* RESTRICT Cr = Ct + (b * G + d / H) * L + l0;
            const float* RESTRICT ur = u + bd * L + l0;
            const float Dd = Dp ? Dp[d] : 0.0f;
            float* RESTRICT o = out + bd * L + l0;
            if (z) {
                const float* RESTRICT zr = z + bd * L + l0;
#pragma omp simd
                for (int64_t l = 0; l < n; ++l) o[l] = (h[l] * Cr[l] + Dd * ur[l]) * zr[l] * fsigmoid(zr[l]);
            } else {
#pragma omp simd
                for (int64_t l = 0; l < n; ++l) o[l] = h[l] * Cr[l] + Dd * ur[l];
            }
        }
    }
    if (last)
        for (int c = 0; c < cb; ++c) last[b * dim + d0 + c] = carry[c];
}

/* Backward of channels d0 .. d0+cb-1 of batch b (N == 1) from the saved dt and states (softplus'
 * recomputed from dt): one reverse sweep over tiles. ws: bwd_t_ws_floats(). */
static void bwd_n1_tiled(const float* u, const float* A, const float* Bt, const float* Ct,
                         const float* Dp, const float* z, int softplus, const float* dts,
                         const float* hs, const float* dout, const float* dlast, int64_t b, int64_t d0,
                         int cb, int64_t dim, int64_t L, int64_t G, int64_t H, float* du,
                         float* ddelta, float* dBacc, float* dCacc, float* dz, float* dAs, float* dDs,
                         float* dbs, float* ws) {
    const int64_t TL = TL_OF(L);
    float *er[CB], *qr[CB], *dyr[CB];
    for (int c = 0; c < CB; ++c) {
        er[c] = ws + c * TL;
        qr[c] = ws + (CB + c) * TL; /* dy C, then the adjoint states */
        dyr[c] = ws + (2 * CB + c) * TL;
    }
    float* EV = ws + 3 * CB * TL;
    float* QV = EV + CB * TL;
    float* GV = QV + CB * TL;
    float gs[CB], an[CB];
    for (int c = 0; c < CB; ++c) {
        gs[c] = (dlast && c < cb) ? dlast[b * dim + d0 + c] : 0.0f;
        an[c] = 1.0f;
    }
    const int64_t ntile = (L + TL - 1) / TL;
    for (int64_t t = ntile - 1; t >= 0; --t) {
        const int64_t l0 = t * TL;
        const int64_t n = L - l0 < TL ? L - l0 : TL;
        for (int c = 0; c < CB; ++c) {
            if (c >= cb) {
                memset(er[c], 0, sizeof(float) * (size_t)n);
                memset(qr[c], 0, sizeof(float) * (size_t)n);
                continue;
            }
            const int64_t d = d0 + c, bd = b * dim + d;
            const float a0 = A[d], Dd = Dp ? Dp[d] : 0.0f;
            const float* RESTRICT Cr = Ct + (b * G + d / H) * L + l0;
            const float* RESTRICT dt = dts + bd * L + l0;
            const float* RESTRICT dor = dout + bd * L + l0;
            float* RESTRICT e = er[c];
            float* RESTRICT q = qr[c];
            float dDacc = 0.0f;
            if (z) {
                const float* RESTRICT zr = z + bd * L + l0;
                const float* RESTRICT h = hs + bd * L + l0;
                const float* RESTRICT ur = u + bd * L + l0;
                float* RESTRICT dzr = dz + bd * L + l0;
                float* RESTRICT dy = dyr[c];
#pragma omp simd reduction(+ : dDacc)
                for (int64_t l = 0; l < n; ++l) {
                    float zl = zr[l], sg = fsigmoid(zl);
                    float dyl = dor[l] * zl * sg;
                    dzr[l] = dor[l] * (h[l] * Cr[l] + Dd * ur[l]) * sg * (1.0f + zl * (1.0f - sg));
                    dy[l] = dyl;
                    q[l] = dyl * Cr[l];
                    dDacc += dyl * ur[l];
                    e[l] = fexp(dt[l] * a0);
                }
            } else {
                const float* RESTRICT ur = u + bd * L + l0;
#pragma omp simd reduction(+ : dDacc)
                for (int64_t l = 0; l < n; ++l) {
                    q[l] = dor[l] * Cr[l];
                    dDacc += dor[l] * ur[l];
                    e[l] = fexp(dt[l] * a0);
                }
            }
            dDs[c] += dDacc;
        }
        interleave8(er, EV, n, 1);
        interleave8(qr, QV, n, 1);
        chain8_bwd_c(QV, EV, GV, n, gs, an);
        interleave8(qr, GV, n, 0); /* adjoint states -> qr rows */
        for (int c = 0; c < cb; ++c) {
            const int64_t d = d0 + c, bd = b * dim + d;
            const float Dd = Dp ? Dp[d] : 0.0f, a0 = A[d];
            const float* RESTRICT dt = dts + bd * L + l0;
            const float* RESTRICT h = hs + bd * L + l0;
            const float* RESTRICT e = er[c];
            const float* RESTRICT dy = z ? dyr[c] : dout + bd * L + l0;
            const float* RESTRICT gv = qr[c];
            const float* RESTRICT ur = u + bd * L + l0;
            const int64_t bg = (b * G + d / H) * L + l0;
            const float* RESTRICT Br = Bt + bg;
            float* RESTRICT dBg = dBacc + bg;
            float* RESTRICT dCg = dCacc + bg;
            float* RESTRICT dur = du + bd * L + l0;
            float* RESTRICT ddr = ddelta + bd * L + l0;
            float dA0 = 0.0f, dbacc = 0.0f;
            const float hfirst = l0 > 0 ? h[-1] : 0.0f;
            if (softplus) {
#pragma omp simd reduction(+ : dA0, dbacc)
                for (int64_t l = 0; l < n; ++l) {
                    float hprev = l > 0 ? h[l - 1] : hfirst;
                    float gl = gv[l], dtl = dt[l], ul = ur[l], Bl = Br[l];
                    float wgt = gl * hprev * e[l];
                    dA0 += wgt * dtl;
                    dCg[l] += dy[l] * h[l];
                    dBg[l] += gl * dtl * ul;
                    dur[l] = dy[l] * Dd + gl * dtl * Bl;
                    float dd = (wgt * a0 + gl * ul * Bl) * sigmoid_from_softplus(dtl);
                    ddr[l] = dd;
                    dbacc += dd;
                }
            } else {
#pragma omp simd reduction(+ : dA0, dbacc)
                for (int64_t l = 0; l < n; ++l) {
                    float hprev = l > 0 ? h[l - 1] : hfirst;
                    float gl = gv[l], dtl = dt[l], ul = ur[l], Bl = Br[l];
                    float wgt = gl * hprev * e[l];
                    dA0 += wgt * dtl;
                    dCg[l] += dy[l] * h[l];
                    dBg[l] += gl * dtl * ul;
                    dur[l] = dy[l] * Dd + gl * dtl * Bl;
                    float dd = wgt * a0 + gl * ul * Bl;
                    ddr[l] = dd;
                    dbacc += dd;
                }
            }
            dAs[c] += dA0;
            dbs[c] += dbacc;
        }
    }
}


/* ---- N > 1 forward (AVX2 + FMA): the state lanes run in the outer loop, 8 * NVB at a time, and
 * the time steps inside, so the states of a block stay in registers and the output sum of each
 * step is kept as an 8-wide partial (yacc[l], one horizontal sum per step at the very end instead
 * of one per step and block). exp(dt A) = 2^(dt * A log2 e) with a degree-5 polynomial on
 * [-0.5, 0.5] (relative error ~1e-7). */
#if defined(__AVX2__) && defined(__FMA__)
#define SS_VEC_FWD 1
#ifndef NVB
#define NVB 2 /* blocks of 8 lanes per pass: 2 measured best (register pressure beyond) */
#endif

/* 2^t: t clamped to [-126, 127] by one max and one min whose second operand is t, so a NaN t
 * passes through (maxps/minps return the second operand when either is NaN) and stays NaN. */
static inline __m256 vexp2(__m256 t) {
    t = _mm256_max_ps(_mm256_set1_ps(-126.0f), t);
    t = _mm256_min_ps(_mm256_set1_ps(127.0f), t);
    __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, k);
    __m256 p = _mm256_set1_ps(0.0013266970386330741f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.009675459745517631f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.0555074261600254f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24022121753561687f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931469491610631f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000000710296983f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

/* Scan lanes n0 .. n0 + 8 nv - 1 of one channel over all L steps from h = 0; adds C . h per step
 * into yacc (or sets it if first); mask != NULL: a single partial block of 8 (lanes past N are
 * neither loaded nor counted). Final states -> hl (8 nv floats). */
static inline __attribute__((always_inline)) void vscan_block(
    const float* RESTRICT Ar, const float* RESTRICT Bg, const float* RESTRICT Cg,
    const float* RESTRICT dt, const float* RESTRICT du, int64_t L, int64_t N, int64_t n0, int nv,
    int first, const __m256i* mask, __m256* RESTRICT yacc, float* RESTRICT hl) {
    const __m256 log2e = _mm256_set1_ps(1.4426950408889634f);
    __m256 a[NVB], h[NVB];
    for (int j = 0; j < nv; ++j) {
        __m256 av = mask ? _mm256_maskload_ps(Ar + n0, *mask) : _mm256_loadu_ps(Ar + n0 + 8 * j);
        a[j] = _mm256_mul_ps(av, log2e);
        h[j] = _mm256_setzero_ps();
    }
    for (int64_t l = 0; l < L; ++l) {
        const __m256 dtl = _mm256_broadcast_ss(dt + l), dul = _mm256_broadcast_ss(du + l);
        const float* Bl = Bg + l * N + n0;
        const float* Cl = Cg + l * N + n0;
        __m256 y = first ? _mm256_setzero_ps() : yacc[l];
        for (int j = 0; j < nv; ++j) {
            __m256 bb, cc;
            if (mask) {
                bb = _mm256_maskload_ps(Bl, *mask);
                cc = _mm256_maskload_ps(Cl, *mask);
            } else {
                bb = _mm256_loadu_ps(Bl + 8 * j);
                cc = _mm256_loadu_ps(Cl + 8 * j);
            }
            h[j] = _mm256_fmadd_ps(vexp2(_mm256_mul_ps(dtl, a[j])), h[j], _mm256_mul_ps(dul, bb));
            __m256 hc = _mm256_mul_ps(h[j], cc);
            if (mask) hc = _mm256_and_ps(hc, _mm256_castsi256_ps(*mask)); /* 0 * inf lanes */
            y = _mm256_add_ps(y, hc);
        }
        yacc[l] = y;
    }
    for (int j = 0; j < nv; ++j) {
        if (mask)
            _mm256_maskstore_ps(hl, *mask, h[j]);
        else
            _mm256_storeu_ps(hl + 8 * j, h[j]);
    }
}

/* Forward of channel bd (N > 1). ws: 11 L + 16 floats. */
static void fwd_nvec_channel(const float* u, const float* delta, const float* A, const float* Bt,
                             const float* Ct, const float* Dp, const float* z, const float* dbias,
                             int softplus, int64_t bd, int64_t dim, int64_t L, int64_t N, int64_t G,
                             int64_t H, float* out, float* last, float* ws) {
    const int64_t b = bd / dim, d = bd % dim, g = d / H;
    float* dt = ws;
    float* du = ws + L;
    float* y = ws + 2 * L;
    __m256* yacc = (__m256*)(((uintptr_t)(ws + 3 * L) + 31) & ~(uintptr_t)31);
    float hbuf[8 * NVB];
    const float* RESTRICT ur = u + bd * L;
    const float* Ar = A + d * N;
    const float* Bg = Bt + (b * G + g) * L * N;
    const float* Cg = Ct + (b * G + g) * L * N;
    float* lst = last ? last + bd * N : NULL;
    compute_dt(delta + bd * L, dbias ? dbias[d] : 0.0f, softplus, L, dt, NULL);
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) du[l] = dt[l] * ur[l];
    int64_t n0 = 0;
    for (; n0 + 8 * NVB <= N; n0 += 8 * NVB) {
        vscan_block(Ar, Bg, Cg, dt, du, L, N, n0, NVB, n0 == 0, NULL, yacc, hbuf);
        if (lst) memcpy(lst + n0, hbuf, sizeof(float) * 8 * NVB);
    }
    for (; n0 + 8 <= N; n0 += 8) {
        vscan_block(Ar, Bg, Cg, dt, du, L, N, n0, 1, n0 == 0, NULL, yacc, hbuf);
        if (lst) memcpy(lst + n0, hbuf, sizeof(float) * 8);
    }
    if (n0 < N) {
        int32_t mi[8];
        for (int k = 0; k < 8; ++k) mi[k] = n0 + k < N ? -1 : 0;
        const __m256i mask = _mm256_loadu_si256((const __m256i*)mi);
        vscan_block(Ar, Bg, Cg, dt, du, L, N, n0, 1, n0 == 0, &mask, yacc, hbuf);
        if (lst) memcpy(lst + n0, hbuf, sizeof(float) * (size_t)(N - n0));
    }
    for (int64_t l = 0; l < L; ++l) {
        __m256 v = yacc[l];
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        y[l] = _mm_cvtss_f32(s);
    }
    finish_out(y, ur, Dp ? Dp[d] : 0.0f, z ? z + bd * L : NULL, L, out + bd * L);
}
#endif

static int64_t fwd_ws_floats(int64_t L, int64_t N) {
#ifdef SS_VEC_FWD
    return N == 1 ? fwd_t_ws_floats(L) : 11 * L + 16;
#else
    return N == 1 ? fwd_t_ws_floats(L) : 2 * L + N + 1;
#endif
}

static int64_t bwd_ws_floats(int64_t L, int64_t N) {
    return N == 1 ? 9 * CB * L + 1 : 2 * L * N + 4 * L + 3 * N + 1;
}

int64_t ss_fwd_scratch_bytes(int64_t L, int64_t N, int nthreads) {
    return (int64_t)nthreads * (int64_t)sizeof(float) * fwd_ws_floats(L, N);
}

int64_t ss_bwd_scratch_bytes(int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G,
                             int nthreads) {
    (void)dim;
    int64_t acc = (int64_t)(nthreads - 1) * 2 * batch * G * L * N;
    return (int64_t)sizeof(float) * ((int64_t)nthreads * bwd_ws_floats(L, N) + acc);
}

int ss_fwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
           const float* Dp, const float* z, const float* dbias, int softplus,
           int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G,
           float* out, float* last, float* dts, float* hs, int nthreads) {
    const int64_t H = dim / G;
    const int64_t nblk = (dim + CB - 1) / CB;
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float* buf = (float*)malloc(sizeof(float) * (size_t)fwd_ws_floats(L, N));
        if (!buf) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp barrier
        if (!err && N == 1) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t k = 0; k < batch * nblk; ++k) {
                const int64_t b = k / nblk, d0 = (k % nblk) * CB;
                const int cb = (int)(dim - d0 < CB ? dim - d0 : CB);
                fwd_n1_tiled(u, delta, A, Bt, Ct, Dp, z, dbias, softplus, b, d0, cb, dim, L, G, H, out,
                             last, dts, hs, buf);
            }
        } else if (!err) {
#ifdef SS_VEC_FWD
#pragma omp for schedule(dynamic, 1)
            for (int64_t bd = 0; bd < batch * dim; ++bd)
                fwd_nvec_channel(u, delta, A, Bt, Ct, Dp, z, dbias, softplus, bd, dim, L, N, G, H, out,
                                 last, buf);
#else
            float* dt = buf;
            float* y = buf + L;
            float* h = buf + 2 * L;
#pragma omp for schedule(dynamic, 1)
            for (int64_t bd = 0; bd < batch * dim; ++bd) {
                const int64_t b = bd / dim, d = bd % dim, g = d / H;
                const float* ur = u + bd * L;
                const float* Ar = A + d * N;
                const float* Bg = Bt + (b * G + g) * L * N;
                const float* Cg = Ct + (b * G + g) * L * N;
                compute_dt(delta + bd * L, dbias ? dbias[d] : 0.0f, softplus, L, dt, NULL);
                for (int64_t n = 0; n < N; ++n) h[n] = 0.0f;
                for (int64_t l = 0; l < L; ++l) {
                    const float dtl = dt[l], dul = dtl * ur[l];
                    const float* Bl = Bg + l * N;
                    const float* Cl = Cg + l * N;
                    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                    for (int64_t n = 0; n < N; ++n) {
                        float hn = fexp(dtl * Ar[n]) * h[n] + dul * Bl[n];
                        h[n] = hn;
                        acc += hn * Cl[n];
                    }
                    y[l] = acc;
                }
                finish_out(y, ur, Dp ? Dp[d] : 0.0f, z ? z + bd * L : NULL, L, out + bd * L);
                if (last) memcpy(last + bd * N, h, sizeof(float) * (size_t)N);
            }
#endif
        }
        free(buf);
    }
    return err;
}

/* Gradients: du, ddelta (batch, dim, L); dA (dim, N); dBt, dCt (batch, G, L, N), zero on entry;
 * dD, ddbias (dim,) or NULL; dz (batch, dim, L) or NULL; dlast (batch, dim, N) or NULL. */
int ss_bwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
           const float* Dp, const float* z, const float* dbias, int softplus,
           const float* dout, const float* dlast, const float* dts, const float* hs,
           int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G,
           float* du, float* ddelta, float* dA, float* dBt, float* dCt, float* dD, float* dz,
           float* ddbias, int nthreads) {
    const int64_t H = dim / G;
    const int64_t accsz = batch * G * L * N;
    const int64_t nblk = (dim + CB - 1) / CB;
    float* accs = NULL;
    if (nthreads > 1) {
        accs = (float*)calloc((size_t)(nthreads - 1) * 2 * (size_t)accsz, sizeof(float));
        if (!accs) return 1;
    }
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        const int tid = omp_get_thread_num();
        float* dBacc = tid == 0 ? dBt : accs + (size_t)(tid - 1) * 2 * accsz;
        float* dCacc = tid == 0 ? dCt : dBacc + accsz;
        const int64_t wsf = (N == 1 && dts && hs) ? bwd_t_ws_floats(L) : bwd_ws_floats(L, N);
        float* buf = (float*)malloc(sizeof(float) * (size_t)(wsf + 3 * CB));
        if (!buf) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp barrier
        if (!err && N == 1) {
            float* dAs = buf + wsf;
            float* dDs = dAs + CB;
            float* dbs = dDs + CB;
            /* static: each thread owns a fixed set of channel blocks, so its private dB/dC partial sums,
               and the order they are added in, are the same in every run (bitwise-reproducible training) */
#pragma omp for schedule(static, 1)
            for (int64_t k = 0; k < nblk; ++k) {
                const int64_t d0 = k * CB;
                const int cb = (int)(dim - d0 < CB ? dim - d0 : CB);
                for (int c = 0; c < CB; ++c) dAs[c] = dDs[c] = dbs[c] = 0.0f;
                for (int64_t b = 0; b < batch; ++b)
                    if (dts && hs)
                        bwd_n1_tiled(u, A, Bt, Ct, Dp, z, softplus, dts, hs, dout, dlast,
                                     b, d0, cb, dim, L, G, H, du, ddelta, dBacc, dCacc, dz, dAs, dDs,
                                     dbs, buf);
                    else
                        bwd_n1_block(u, delta, A, Bt, Ct, Dp, z, dbias, softplus, dout, dlast, b, d0, cb,
                                 dim, L, G, H, du, ddelta, dBacc, dCacc, dz, dAs, dDs, dbs, buf);
                for (int c = 0; c < cb; ++c) {
                    dA[d0 + c] = dAs[c];
                    if (dD) dD[d0 + c] = dDs[c];
                    if (ddbias) ddbias[d0 + c] = dbs[c];
                }
            }
        } else if (!err) {
            float* Hs = buf;            /* states h_l, (L, N) */
            float* Es = Hs + L * N;     /* decays exp(dt_l A), (L, N) */
            float* dt = Es + L * N;     /* (L) */
            float* sig = dt + L;        /* softplus' (L) */
            float* y = sig + L;         /* pre-gate y (L) */
            float* dy = y + L;          /* (L) */
            float* g = dy + L;          /* adjoint state (N) */
            float* dAacc = g + N;       /* (N) */
            float* zeros = dAacc + N;   /* (N) */
            for (int64_t n = 0; n < N; ++n) zeros[n] = 0.0f;
#pragma omp for schedule(static, 1)
            for (int64_t d = 0; d < dim; ++d) {
                const int64_t gi = d / H;
                const float* Ar = A + d * N;
                const float Dd = Dp ? Dp[d] : 0.0f;
                float dDacc = 0.0f, dbacc = 0.0f;
                for (int64_t n = 0; n < N; ++n) dAacc[n] = 0.0f;
                for (int64_t b = 0; b < batch; ++b) {
                    const int64_t bd = b * dim + d;
                    const float* ur = u + bd * L;
                    const float* Bg = Bt + (b * G + gi) * L * N;
                    const float* Cg = Ct + (b * G + gi) * L * N;
                    float* dBg = dBacc + (b * G + gi) * L * N;
                    float* dCg = dCacc + (b * G + gi) * L * N;
                    const float* zr = z ? z + bd * L : NULL;
                    const float* dor = dout + bd * L;
                    float* dur = du + bd * L;
                    float* ddr = ddelta + bd * L;
                    compute_dt(delta + bd * L, dbias ? dbias[d] : 0.0f, softplus, L, dt, sig);
                    /* forward recompute: states, decays and pre-gate y */
                    const float* hp = zeros;
                    for (int64_t l = 0; l < L; ++l) {
                        const float dtl = dt[l], dul = dtl * ur[l];
                        const float* Bl = Bg + l * N;
                        const float* Cl = Cg + l * N;
                        float* Hl = Hs + l * N;
                        float* El = Es + l * N;
                        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                        for (int64_t n = 0; n < N; ++n) {
                            float e = fexp(dtl * Ar[n]);
                            float hn = e * hp[n] + dul * Bl[n];
                            El[n] = e;
                            Hl[n] = hn;
                            acc += hn * Cl[n];
                        }
                        y[l] = acc;
                        hp = Hl;
                    }
                    /* gate: dy = dout * silu(z); dz = dout * (y + D u) * silu'(z); dD */
                    if (zr) {
                        float* dzr = dz + bd * L;
#pragma omp simd reduction(+ : dDacc)
                        for (int64_t l = 0; l < L; ++l) {
                            float zl = zr[l], s = fsigmoid(zl);
                            float dyl = dor[l] * zl * s;
                            dzr[l] = dor[l] * (y[l] + Dd * ur[l]) * s * (1.0f + zl * (1.0f - s));
                            dy[l] = dyl;
                            dDacc += dyl * ur[l];
                        }
                    } else {
#pragma omp simd reduction(+ : dDacc)
                        for (int64_t l = 0; l < L; ++l) {
                            dy[l] = dor[l];
                            dDacc += dor[l] * ur[l];
                        }
                    }
                    /* reverse: g <- g + dy_l C_l (= dL/dh_l); then g <- g * exp(dt_l A) */
                    for (int64_t n = 0; n < N; ++n) g[n] = dlast ? dlast[bd * N + n] : 0.0f;
                    for (int64_t l = L - 1; l >= 0; --l) {
                        const float dyl = dy[l], dtl = dt[l], ul = ur[l], dul = dtl * ul;
                        const float* Bl = Bg + l * N;
                        const float* Cl = Cg + l * N;
                        const float* Hl = Hs + l * N;
                        const float* El = Es + l * N;
                        const float* hq = l > 0 ? Hs + (l - 1) * N : zeros;
                        float* dBl = dBg + l * N;
                        float* dCl = dCg + l * N;
                        float ddt = 0.0f, dus = 0.0f;
#pragma omp simd reduction(+ : ddt, dus)
                        for (int64_t n = 0; n < N; ++n) {
                            float gn = g[n] + dyl * Cl[n];
                            float w = gn * hq[n] * El[n];
                            dCl[n] += dyl * Hl[n];
                            ddt += w * Ar[n] + gn * ul * Bl[n];
                            dAacc[n] += w * dtl;
                            dus += gn * Bl[n];
                            dBl[n] += gn * dul;
                            g[n] = gn * El[n];
                        }
                        dur[l] = dyl * Dd + dus * dtl;
                        float dd = ddt * sig[l];
                        ddr[l] = dd;
                        dbacc += dd;
                    }
                }
                for (int64_t n = 0; n < N; ++n) dA[d * N + n] = dAacc[n];
                if (dD) dD[d] = dDacc;
                if (ddbias) ddbias[d] = dbacc;
            }
        }
        free(buf);
    }
    if (!err && nthreads > 1) {
        const int nt = nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t i = 0; i < accsz; ++i) {
            float sb = 0.0f, sc = 0.0f;
            for (int t = 1; t < nt; ++t) {
                sb += accs[(size_t)(t - 1) * 2 * accsz + i];
                sc += accs[(size_t)(t - 1) * 2 * accsz + accsz + i];
            }
            dBt[i] += sb;
            dCt[i] += sc;
        }
    }
    free(accs);
    return err;
}


/* ==== Fused SS2D forward for N == 1 (VMamba, Liu et al. 2024, "2D-Selective-Scan"; the scan is
 * Mamba's, Gu & Dao 2023). Cross-scan, dt projection, softplus, selective scan, D skip and
 * cross-merge in one pass, without any (batch, 4, D, L) tensor:
 *   y[b, p, d] = sum_k C_k[l] h_k[l] + Ds[k, d] u[b, p, d],   p = pos_k(l), l = 0 .. L-1,
 *   dt         = softplus(sum_r dtw[k, d, r] xd[b, p, k, r] + dtb[k, d])   (threshold 20, as torch)
 *   h_k[l]     = exp(dt A[k, d]) h_k[l-1] + dt B_k[l] u[b, p, d],   h_k[-1] = 0,
 * with B_k[l] = xd[b, p, k, R], C_k[l] = xd[b, p, k, R + 1] and the scan orders of VMamba's
 * cross-scan: k = 0 row-major (l = i W + j for grid position p = i W + j), k = 1 column-major
 * (l = j H + i), k = 2 and 3 the reverses of 0 and 1.
 * Layouts (contiguous float32): u, y: (batch, L = H W, D) channels-last; xd: (batch, L, 4, R + 2),
 * the x_proj output on the un-scanned map; dtw: (4, D, R); dtb, A, Ds: (4, D).
 * Work items are (batch, block of 16 channels); each owns its channels of y. A block's 16 channels
 * at one position are 64 contiguous bytes of u and y, so the state chain runs directly as two
 * 8-wide vectors (no transposes); the dt projection of 4 steps is computed together (each weight
 * load serves 4 FMAs). Channels past the last multiple of 8 take the portable path. Memory besides
 * y: a shared (4, L) int32 table of scan positions and R * 16 floats of packed weights per thread;
 * no L-sized per-thread scratch (the state is carried in registers). */

/* Scan positions of the four directions, pos[k * L + l] (shared, read-only). */
static void ss2d_positions(int64_t H, int64_t W, int32_t* pos) {
    const int64_t L = H * W;
    for (int64_t l = 0; l < L; ++l) {
        const int32_t col = (int32_t)((l % H) * W + l / H);
        pos[l] = (int32_t)l;
        pos[L + l] = col;
        pos[2 * L + (L - 1 - l)] = (int32_t)l;
        pos[3 * L + (L - 1 - l)] = col;
    }
}

/* Portable path: channels d0 .. d0+cb-1 (cb <= 16) of batch b, all four directions.
 * wpk: R * 16 floats of scratch. */
static void ss2d_block_portable(const float* u, const float* xd, const float* dtw, const float* dtb,
                                const float* A, const float* Ds, const int32_t* pos, int64_t b,
                                int64_t d0, int cb, int64_t L, int64_t D, int64_t R, float* y,
                                float* RESTRICT wpk) {
    const int64_t xs = 4 * (R + 2);
    const float* ub = u + b * L * D + d0;
    float* yb = y + b * L * D + d0;
    const float* xb = xd + b * L * xs;
    float dsum[16], bias[16], a0[16], hs[16];
    for (int c = 0; c < cb; ++c) dsum[c] = Ds[d0 + c] + Ds[D + d0 + c] + Ds[2 * D + d0 + c] + Ds[3 * D + d0 + c];
    for (int k = 0; k < 4; ++k) {
        for (int c = 0; c < cb; ++c) {
            for (int64_t r = 0; r < R; ++r) wpk[r * 16 + c] = dtw[(k * D + d0 + c) * R + r];
            bias[c] = dtb[k * D + d0 + c];
            a0[c] = A[k * D + d0 + c];
            hs[c] = 0.0f;
        }
        const int32_t* pk = pos + k * L;
        const float* xk = xb + k * (R + 2);
        for (int64_t l = 0; l < L; ++l) {
            const int64_t p = pk[l];
            const float* RESTRICT x = xk + p * xs;
            const float* RESTRICT ul = ub + p * D;
            float* RESTRICT yl = yb + p * D;
            const float Bl = x[R], Cl = x[R + 1];
            float acc[16];
            for (int c = 0; c < cb; ++c) acc[c] = bias[c];
            for (int64_t r = 0; r < R; ++r) {
                const float xr = x[r];
                const float* RESTRICT wr = wpk + r * 16;
#pragma omp simd
                for (int c = 0; c < cb; ++c) acc[c] += wr[c] * xr;
            }
#pragma omp simd
            for (int c = 0; c < cb; ++c) {
                const float v = acc[c];
                const float e = fexp(v < 0.0f ? v : -v);
                const float sp = (v > 0.0f ? v : 0.0f) + flog1p01(e);
                const float dt = v > 20.0f ? v : sp;
                const float uc = ul[c];
                hs[c] = fexp(dt * a0[c]) * hs[c] + dt * Bl * uc;
                yl[c] = (k == 0 ? dsum[c] * uc : yl[c]) + Cl * hs[c];
            }
        }
    }
}

#ifdef SS_VEC_FWD
/* The per-step work (softplus, two exps) is a long dependency chain but independent across steps:
 * the M = S * NV vectors of a chunk are evaluated in lock-step (each polynomial stage over all of
 * them), so consecutive instructions are independent and the FMA pipes stay busy; written one
 * vector at a time, the chains exceed the out-of-order window and run ~2x slower. */

/* v[i] = 2^t[i] for t <= 127 (see vexp2; only the lower clamp when hi == 0, i.e. t <= 0 known). */
static inline __attribute__((always_inline)) void vexp2_m(__m256* v, const int M, const int hi) {
    __m256 k[8], f[8], p[8];
    for (int i = 0; i < M; ++i) {
        __m256 t = _mm256_max_ps(_mm256_set1_ps(-126.0f), v[i]); /* NaN passes (second operand) */
        if (hi) t = _mm256_min_ps(_mm256_set1_ps(127.0f), t);
        k[i] = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        f[i] = _mm256_sub_ps(t, k[i]);
        p[i] = _mm256_fmadd_ps(_mm256_set1_ps(0.0013266970386330741f), f[i],
                               _mm256_set1_ps(0.009675459745517631f));
    }
    for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(p[i], f[i], _mm256_set1_ps(0.0555074261600254f));
    for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(p[i], f[i], _mm256_set1_ps(0.24022121753561687f));
    for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(p[i], f[i], _mm256_set1_ps(0.6931469491610631f));
    for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(p[i], f[i], _mm256_set1_ps(1.0000000710296983f));
    for (int i = 0; i < M; ++i) {
        const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k[i]), 23);
        v[i] = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p[i]), e));
    }
}

/* v[i] = softplus(v[i]) = max(x, 0) + log1p(exp(-|x|)), x for x > 20 (torch); NaN propagates.
 * log1p(e), e in (0, 1], is flog1p01's polynomial. */
static inline __attribute__((always_inline)) void vsoftplus_m(__m256* v, const int M) {
    static const float c[10] = {-3.214113414287567e-3f, 1.9649622961878777e-2f, -5.643612518906593e-2f,
                                1.0533368587493896e-1f, -1.5251556038856506e-1f, 1.9651539623737335e-1f,
                                -2.4947820603847504e-1f, 3.332909941673279e-1f, -4.999985098838806e-1f,
                                1.0f};
    __m256 e[8], p[8];
    for (int i = 0; i < M; ++i)
        e[i] = _mm256_mul_ps(_mm256_or_ps(v[i], _mm256_set1_ps(-0.0f)), /* -|x| */
                             _mm256_set1_ps(1.4426950408889634f));
    vexp2_m(e, M, 0);
    for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(_mm256_set1_ps(c[0]), e[i], _mm256_set1_ps(c[1]));
    for (int n = 2; n < 10; ++n)
        for (int i = 0; i < M; ++i) p[i] = _mm256_fmadd_ps(p[i], e[i], _mm256_set1_ps(c[n]));
    for (int i = 0; i < M; ++i) {
        /* max(0, x) returns x when x is NaN (second operand) */
        const __m256 sp = _mm256_fmadd_ps(e[i], p[i], _mm256_max_ps(_mm256_setzero_ps(), v[i]));
        const __m256 big = _mm256_cmp_ps(v[i], _mm256_set1_ps(20.0f), _CMP_GT_OQ);
        v[i] = _mm256_blendv_ps(sp, v[i], big);
    }
}

/* S consecutive steps (S = 4 or 1) of direction k for NV = 1 or 2 vectors of 8 channels;
 * first: this is direction 0 (y is written, with the summed D skip, instead of accumulated). */
static inline __attribute__((always_inline)) void ss2d_steps_avx(
    const float* RESTRICT ub, float* RESTRICT yb, const float* RESTRICT xk, const int32_t* RESTRICT pk,
    const float* RESTRICT wpk, const __m256* bias, const __m256* a2, const __m256* dsum, __m256* h,
    int64_t l, int64_t D, int64_t R, int64_t xs, const int S, const int NV, const int first) {
    const int M = S * NV;
    const float* x[4];
    __m256 dt[8], a[8];
    for (int s = 0; s < S; ++s) {
        x[s] = xk + (int64_t)pk[l + s] * xs;
        for (int j = 0; j < NV; ++j) dt[s * NV + j] = bias[j];
    }
    /* dt projection: each weight load serves S FMAs */
    for (int64_t r = 0; r < R; ++r) {
        __m256 w[2];
        for (int j = 0; j < NV; ++j) w[j] = _mm256_loadu_ps(wpk + r * 16 + 8 * j);
        for (int s = 0; s < S; ++s) {
            const __m256 xr = _mm256_broadcast_ss(x[s] + r);
            for (int j = 0; j < NV; ++j) dt[s * NV + j] = _mm256_fmadd_ps(w[j], xr, dt[s * NV + j]);
        }
    }
    vsoftplus_m(dt, M);
    for (int i = 0; i < M; ++i) a[i] = _mm256_mul_ps(dt[i], a2[i % NV]);
    vexp2_m(a, M, 1);
    for (int s = 0; s < S; ++s) {
        const int64_t p = pk[l + s];
        const __m256 Bl = _mm256_broadcast_ss(x[s] + R), Cl = _mm256_broadcast_ss(x[s] + R + 1);
        for (int j = 0; j < NV; ++j) {
            const int i = s * NV + j;
            const __m256 uc = _mm256_loadu_ps(ub + p * D + 8 * j);
            h[j] = _mm256_fmadd_ps(a[i], h[j], _mm256_mul_ps(_mm256_mul_ps(dt[i], Bl), uc));
            float* yp = yb + p * D + 8 * j;
            const __m256 y0 = first ? _mm256_mul_ps(dsum[j], uc) : _mm256_loadu_ps(yp);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(Cl, h[j], y0));
        }
    }
}

static inline __attribute__((always_inline)) void ss2d_dir_avx(
    const float* ub, float* yb, const float* xk, const int32_t* pk, const float* wpk,
    const __m256* bias, const __m256* a2, const __m256* dsum, int64_t L, int64_t D, int64_t R,
    const int NV, const int first) {
    const int64_t xs = 4 * (R + 2);
    __m256 h[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t l = 0;
    for (; l + 4 <= L; l += 4) ss2d_steps_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, h, l, D, R, xs, 4, NV, first);
    for (; l < L; ++l) ss2d_steps_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, h, l, D, R, xs, 1, NV, first);
}

/* AVX2 path: channels d0 .. d0 + 8 NV - 1 of batch b, all four directions. wpk: R * 16 floats. */
static void ss2d_block_avx(const float* u, const float* xd, const float* dtw, const float* dtb,
                           const float* A, const float* Ds, const int32_t* pos, int64_t b, int64_t d0,
                           const int NV, int64_t L, int64_t D, int64_t R, float* y, float* wpk) {
    const int64_t xs = 4 * (R + 2);
    const float* ub = u + b * L * D + d0;
    float* yb = y + b * L * D + d0;
    const float* xb = xd + b * L * xs;
    const __m256 log2e = _mm256_set1_ps(1.4426950408889634f);
    __m256 dsum[2], bias[2], a2[2];
    for (int j = 0; j < NV; ++j) {
        const float* dj = Ds + d0 + 8 * j;
        dsum[j] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(dj), _mm256_loadu_ps(dj + D)),
                                _mm256_add_ps(_mm256_loadu_ps(dj + 2 * D), _mm256_loadu_ps(dj + 3 * D)));
    }
    for (int k = 0; k < 4; ++k) {
        for (int c = 0; c < 8 * NV; ++c)
            for (int64_t r = 0; r < R; ++r) wpk[r * 16 + c] = dtw[(k * D + d0 + c) * R + r];
        for (int j = 0; j < NV; ++j) {
            bias[j] = _mm256_loadu_ps(dtb + k * D + d0 + 8 * j);
            a2[j] = _mm256_mul_ps(_mm256_loadu_ps(A + k * D + d0 + 8 * j), log2e);
        }
        const int32_t* pk = pos + k * L;
        const float* xk = xb + k * (R + 2);
        if (NV == 2) {
            if (k == 0) ss2d_dir_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, L, D, R, 2, 1);
            else ss2d_dir_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, L, D, R, 2, 0);
        } else {
            if (k == 0) ss2d_dir_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, L, D, R, 1, 1);
            else ss2d_dir_avx(ub, yb, xk, pk, wpk, bias, a2, dsum, L, D, R, 1, 0);
        }
    }
}
#endif

/* Entry point. portable != 0 forces the portable path (tests). Returns 0, or 1 if scratch memory
 * could not be allocated. */
int ss2d_fwd_n1(const float* u, const float* xd, const float* dtw, const float* dtb, const float* A,
                const float* Ds, int64_t batch, int64_t H, int64_t W, int64_t D, int64_t R, float* y,
                int nthreads, int portable) {
    const int64_t L = H * W;
    const int64_t nblk = (D + 15) / 16;
    if (batch <= 0 || L <= 0 || D <= 0) return 0;
    int32_t* pos = (int32_t*)malloc(sizeof(int32_t) * 4 * (size_t)L);
    if (!pos) return 1;
    ss2d_positions(H, W, pos);
    int err = 0;
#ifndef SS_VEC_FWD
    (void)portable; /* no AVX2 + FMA: only the portable path is compiled */
#endif
#pragma omp parallel num_threads(nthreads)
    {
        float* wpk = (float*)malloc(sizeof(float) * (size_t)(16 * (R > 0 ? R : 1)));
        if (!wpk) {
#pragma omp atomic write
            err = 1;
        }
#pragma omp barrier
        if (!err) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < batch * nblk; ++it) {
                const int64_t b = it / nblk, d0 = (it % nblk) * 16;
                const int cb = (int)(D - d0 < 16 ? D - d0 : 16);
                int done = 0;
#ifdef SS_VEC_FWD
                if (!portable && cb >= 8) {
                    const int nv = cb >= 16 ? 2 : 1;
                    if (nv == 2)
                        ss2d_block_avx(u, xd, dtw, dtb, A, Ds, pos, b, d0, 2, L, D, R, y, wpk);
                    else
                        ss2d_block_avx(u, xd, dtw, dtb, A, Ds, pos, b, d0, 1, L, D, R, y, wpk);
                    done = 8 * nv;
                }
#endif
                if (done < cb)
                    ss2d_block_portable(u, xd, dtw, dtb, A, Ds, pos, b, d0 + done, cb - done, L, D, R,
                                        y, wpk);
            }
        }
        free(wpk);
    }
    free(pos);
    return err;
}

/* ------------------------------------------------------------------------------------------------
 * Linear recurrence along the last axis of R contiguous rows of length L: the primitive of the
 * twice-differentiable path (mamba_clip/ops/linear_recurrence.py, issue 17). a_t is the coefficient
 * of the link between steps t-1 and t:
 *   forward  h_t = a_t h_{t-1} + x_t      (h_{-1} = 0, so a_0 is not read)
 *   reverse  h_t = a_{t+1} h_{t+1} + x_t  (h_L = 0: the adjoint of the forward with the same links)
 * Rows run 8 at a time as independent chains (latency hidden), OpenMP over row blocks.
 * ------------------------------------------------------------------------------------------------ */
#define LR_W 8
static void linrec_rows(const float* RESTRICT a, const float* RESTRICT x, float* RESTRICT h, int64_t nr,
                        int64_t L, int reverse) {
    float hv[LR_W], an[LR_W];
    for (int64_t k = 0; k < nr; k++) { hv[k] = 0.0f; an[k] = 0.0f; }
    if (!reverse) {
        for (int64_t k = 0; k < nr; k++) { hv[k] = x[k * L]; h[k * L] = hv[k]; }
        for (int64_t t = 1; t < L; t++)
            for (int64_t k = 0; k < nr; k++) {
                hv[k] = a[k * L + t] * hv[k] + x[k * L + t];
                h[k * L + t] = hv[k];
            }
    } else {
        for (int64_t t = L - 1; t >= 0; t--)
            for (int64_t k = 0; k < nr; k++) {
                hv[k] = an[k] * hv[k] + x[k * L + t];
                h[k * L + t] = hv[k];
                an[k] = a[k * L + t];
            }
    }
}

int ss_linrec(const float* a, const float* x, float* h, int64_t R, int64_t L, int reverse, int nthreads) {
    if (R <= 0 || L <= 0) return 0;
    int64_t nblk = (R + LR_W - 1) / LR_W;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && R * L >= 65536)
    for (int64_t i = 0; i < nblk; i++) {
        int64_t r0 = i * LR_W;
        int64_t nr = R - r0 < LR_W ? R - r0 : LR_W;
        if (nr == LR_W)
            linrec_rows(a + r0 * L, x + r0 * L, h + r0 * L, LR_W, L, reverse);
        else
            linrec_rows(a + r0 * L, x + r0 * L, h + r0 * L, nr, L, reverse);
    }
    return 0;
}
