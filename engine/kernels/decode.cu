// Attention for one query per row (a decode step), split over the keys, and the merge of the splits.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#include "attention.cuh"
#endif

// ---- Decode step: one query per row (TQ = 1), split over the keys -------------------------------
// Block (split s, KV head, row b); its 4 warps stream keys s * chunk .. (s + 1) * chunk, four keys per
// warp at a time (the next four loading meanwhile) (lane l holds features l E .. l E + E - 1, one vector load: each K / V row is read
// coalesced, once, for every
// query head of the group), with an online softmax per head in registers. The warps' partials are
// merged in shared memory; with one split the block writes o and lse, else (m, l, acc) go to
// `part` and attn_decode_combine merges the splits. Memory-bound: K and V are read once per step.
#define DEC_MAXR 8
// E consecutive elements as f32 in one vector load (E = 2 or 4; 4-byte / 8-byte aligned rows).
template <int E> DEV void ldv(const float* p, float* o) {
    if (E == 4) { float4 v = *(const float4*)p; o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w; }
    else { float2 v = *(const float2*)p; o[0] = v.x; o[1] = v.y; }
}
template <int E> DEV void ldv(const bf16_t* p, float* o) {
    if (E == 4) {
        uint2 v = *(const uint2*)p;
        o[0] = __uint_as_float(v.x << 16); o[1] = __uint_as_float(v.x & 0xffff0000u);
        o[2] = __uint_as_float(v.y << 16); o[3] = __uint_as_float(v.y & 0xffff0000u);
    } else {
        unsigned v = *(const unsigned*)p;
        o[0] = __uint_as_float(v << 16); o[1] = __uint_as_float(v & 0xffff0000u);
    }
}
template <typename T, int D, int R>
DEV void attn_decode(const T* q, const T* k, const T* v, T* o, float* lse, float* part, const unsigned* pads,
                     int H, int KV, int TK, int TKS, int off, int win, float scale, int chunk, float* sm) {
    constexpr int E = D / 32, U = 4;
    float (*qs)[D] = (float (*)[D])sm;                              // [R][D]
    float (*wm)[DEC_MAXR] = (float (*)[DEC_MAXR])(sm + DEC_MAXR * D);  // [4][R]
    float (*wl)[DEC_MAXR] = wm + 4;                                 // [4][R]
    float (*wacc)[DEC_MAXR][D] = (float (*)[DEC_MAXR][D])(sm + DEC_MAXR * D + 8 * DEC_MAXR);  // [4][R][D]
    const int s = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, S = gridDim.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pad = pads[b], c = off;
    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
        int r = e / D, d = e % D;
        qs[r][d] = ldf(q, (u64)(b * H + kvh * R + r) * D + d) * scale;
    }
    __syncthreads();
    float qr[R][E], acc[R][E], m[R], l[R];
    #pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY; l[r] = 0.0f;
        #pragma unroll
        for (int i = 0; i < E; i++) { qr[r][i] = qs[r][lane * E + i]; acc[r][i] = 0.0f; }
    }
    const u64 kb = ((u64)(b * KV + kvh) * TKS) * D;  // TKS >= TK: the cache buffer's columns
    int j0 = max(s * chunk, min(pad, c));
    if (win > 0) j0 = max(j0, c - win);
    const int j1 = min(TK, (s + 1) * chunk);
    // U keys per warp per step; the next step's rows are loaded while this step's are used.
    float kx[U][E], vx[U][E];
    int j = j0 + warp * U;
    #pragma unroll
    for (int u = 0; u < U; u++) {
        const int jj = max(0, min(j + u, j1 - 1));
        ldv<E>(k + kb + (u64)jj * D + lane * E, kx[u]);
        ldv<E>(v + kb + (u64)jj * D + lane * E, vx[u]);
    }
    for (; j < j1; j += 4 * U) {
        float kn[U][E], vn[U][E];
        #pragma unroll
        for (int u = 0; u < U; u++) {
            const int jj = max(0, min(j + 4 * U + u, j1 - 1));
            ldv<E>(k + kb + (u64)jj * D + lane * E, kn[u]);
            ldv<E>(v + kb + (u64)jj * D + lane * E, vn[u]);
        }
        float d[U][R];
        #pragma unroll
        for (int u = 0; u < U; u++)
            #pragma unroll
            for (int r = 0; r < R; r++) {
                float x = 0.0f;
                #pragma unroll
                for (int i = 0; i < E; i++) x = fmaf(qr[r][i], kx[u][i], x);
                d[u][r] = x;
            }
        #pragma unroll
        for (int w = 16; w > 0; w >>= 1)
            #pragma unroll
            for (int u = 0; u < U; u++)
                #pragma unroll
                for (int r = 0; r < R; r++) d[u][r] += __shfl_xor_sync(0xffffffffu, d[u][r], w);
        bool vis[U];
        #pragma unroll
        for (int u = 0; u < U; u++) vis[u] = j + u < j1 && visible(c, j + u, pad, win);
        #pragma unroll
        for (int r = 0; r < R; r++) {
            float mx = -INFINITY;
            #pragma unroll
            for (int u = 0; u < U; u++) if (vis[u]) mx = fmaxf(mx, d[u][r]);
            if (mx == -INFINITY) continue;
            const float mn = fmaxf(m[r], mx), corr = __expf(m[r] - mn);
            float p[U], ps = 0.0f;
            #pragma unroll
            for (int u = 0; u < U; u++) { p[u] = vis[u] ? __expf(d[u][r] - mn) : 0.0f; ps += p[u]; }
            l[r] = l[r] * corr + ps;
            #pragma unroll
            for (int i = 0; i < E; i++) {
                float a = acc[r][i] * corr;
                #pragma unroll
                for (int u = 0; u < U; u++) a = fmaf(p[u], vx[u][i], a);
                acc[r][i] = a;
            }
            m[r] = mn;
        }
        #pragma unroll
        for (int u = 0; u < U; u++)
            #pragma unroll
            for (int i = 0; i < E; i++) { kx[u][i] = kn[u][i]; vx[u][i] = vn[u][i]; }
    }
    #pragma unroll
    for (int r = 0; r < R; r++) {
        if (lane == 0) { wm[warp][r] = m[r]; wl[warp][r] = l[r]; }
        #pragma unroll
        for (int i = 0; i < E; i++) wacc[warp][r][lane * E + i] = acc[r][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
        int r = e / D, d = e % D, h = kvh * R + r;
        float M = fmaxf(fmaxf(wm[0][r], wm[1][r]), fmaxf(wm[2][r], wm[3][r]));
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY) {
            #pragma unroll
            for (int w = 0; w < 4; w++) {
                float f = __expf(wm[w][r] - M);
                L += wl[w][r] * f;
                A += wacc[w][r][d] * f;
            }
        }
        const u64 row = (u64)(b * H + h);
        if (S == 1) {
            stf(o, row * D + d, L > 0.0f ? A / L : 0.0f);
            if (d == 0) lse[row] = M + logf(L);
        } else {
            float* pp = part + (row * S + s) * (D + 2);
            pp[d] = A;
            if (d == 0) { pp[D] = M; pp[D + 1] = L; }
        }
    }
}
// The group size as a compile-time constant: the U x R dot products reduce interleaved.
template <typename T, int D>
DEV void attn_decode_any(const T* q, const T* k, const T* v, T* o, float* lse, float* part, const unsigned* pads,
                         int H, int KV, int TK, int TKS, int off, int win, float scale, int chunk) {
    // One shared buffer for every instantiation (each would otherwise get its own).
    __shared__ float sm[DEC_MAXR * D + 8 * DEC_MAXR + 4 * DEC_MAXR * D];
    switch (H / KV) {
        case 1: attn_decode<T, D, 1>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 2: attn_decode<T, D, 2>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 3: attn_decode<T, D, 3>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 4: attn_decode<T, D, 4>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 5: attn_decode<T, D, 5>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 6: attn_decode<T, D, 6>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        case 7: attn_decode<T, D, 7>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
        default: attn_decode<T, D, 8>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk, sm); break;
    }
}
// Merge the splits of attn_decode: block = one (row, head), D threads.
template <typename T>
DEV void attn_decode_combine(const float* part, T* o, float* lse, int S, int D) {
    const u64 row = blockIdx.x;
    const int d = threadIdx.x;
    const float* pp = part + row * S * (D + 2);
    float M = -INFINITY;
    for (int s = 0; s < S; s++) M = fmaxf(M, pp[s * (D + 2) + D]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY)
        for (int s = 0; s < S; s++) {
            float f = __expf(pp[s * (D + 2) + D] - M);
            L += pp[s * (D + 2) + D + 1] * f;
            A += pp[s * (D + 2) + d] * f;
        }
    stf(o, row * D + d, L > 0.0f ? A / L : 0.0f);
    if (d == 0) lse[row] = M + logf(L);
}
#define ATTN_DEC(T, TN, D) \
extern "C" __global__ void attn_decode_##TN##_##D(const T* q, const T* k, const T* v, T* o, float* lse, float* part, const unsigned* pads, int H, int KV, int TK, int TKS, int off, int win, float scale, int chunk) \
    { attn_decode_any<T, D>(q, k, v, o, lse, part, pads, H, KV, TK, TKS, off, win, scale, chunk); }
ATTN_DEC(float, f32, 64)
ATTN_DEC(float, f32, 128)
ATTN_DEC(bf16_t, bf16, 64)
ATTN_DEC(bf16_t, bf16, 128)
extern "C" __global__ void attn_decode_combine_f32(const float* part, float* o, float* lse, int S, int D) { attn_decode_combine(part, o, lse, S, D); }
extern "C" __global__ void attn_decode_combine_bf16(const float* part, bf16_t* o, float* lse, int S, int D) { attn_decode_combine(part, o, lse, S, D); }
