// Flash attention on CUDA cores, f32 and bf16: forward, dq, dk / dv. Used where the tensor-core
// kernels (attention_tc.cu) cannot run: f32, GPUs before sm_80, operands not on a 16-byte
// boundary, SIZESPEC_FLASH_TC=0.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#include "attention.cuh"
#endif

// ---- Attention (flash style: scores never leave the chip) ---------------------------------------
// q [B, H, TQ, D], k/v [B, KV, TK, D], o like q, lse [B, H, TQ] (natural log, scaled scores).
// 128 threads; thread (ty = tid / 8, tx = tid % 8) owns query rows 4 ty .. 4 ty + 3 and the
// key / feature columns tx + 8 i (interleaved, so neighbouring threads read neighbouring words).
#define ABQ 64
#define ABK 32
#define ANT 128

template <typename T, int D>
DEV void attn_fwd(const T* q, const T* k, const T* v, T* o, float* lse, const unsigned* pads,
                  int H, int KV, int TQ, int TK, int off, int win, float scale) {
    extern __shared__ float smem[];
    float* Qt = smem;                      // [D][ABQ + 1]
    float* Kt = Qt + D * (ABQ + 1);        // [D][ABK + 1]
    float* Vs = Kt + D * (ABK + 1);        // [ABK][D]
    float* Ps = Vs + ABK * D;              // [ABQ][ABK + 1]
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    const int q0 = blockIdx.x * ABQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qbase = ((u64)(b * H + h) * TQ) * D, kbase = ((u64)(b * KV + kvh) * TK) * D;
    for (int e = tid; e < ABQ * D; e += ANT) {
        int i = e / D, d = e % D;
        Qt[d * (ABQ + 1) + i] = q0 + i < TQ ? ldf(q, qbase + (u64)(q0 + i) * D + d) * scale : 0.0f;
    }
    float acc[4][D / 8], m[4], l[4];
    #pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY; l[r] = 0.0f;
        #pragma unroll
        for (int c = 0; c < D / 8; c++) acc[r][c] = 0.0f;
    }
    const int c_last = off + min(TQ, q0 + ABQ) - 1, c_first = off + q0;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / ABK) * ABK;
    for (int j0 = j_begin; j0 <= c_last && j0 < TK; j0 += ABK) {
        __syncthreads();
        for (int e = tid; e < ABK * D; e += ANT) {
            int j = e / D, d = e % D;
            bool in = j0 + j < TK;
            Kt[d * (ABK + 1) + j] = in ? ldf(k, kbase + (u64)(j0 + j) * D + d) : 0.0f;
            Vs[j * D + d] = in ? ldf(v, kbase + (u64)(j0 + j) * D + d) : 0.0f;
        }
        __syncthreads();
        float s[4][4];
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < 4; c++) s[r][c] = 0.0f;
        #pragma unroll 8
        for (int d = 0; d < D; d++) {
            float a[4], bb[4];
            #pragma unroll
            for (int r = 0; r < 4; r++) a[r] = Qt[d * (ABQ + 1) + 4 * ty + r];
            #pragma unroll
            for (int c = 0; c < 4; c++) bb[c] = Kt[d * (ABK + 1) + tx + 8 * c];
            #pragma unroll
            for (int r = 0; r < 4; r++)
                #pragma unroll
                for (int c = 0; c < 4; c++) s[r][c] = fmaf(a[r], bb[c], s[r][c]);
        }
        #pragma unroll
        for (int r = 0; r < 4; r++) {
            int cq = off + q0 + 4 * ty + r;
            float mx = -INFINITY;
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = j0 + tx + 8 * c;
                if (j >= TK || !visible(cq, j, pad, win)) s[r][c] = -INFINITY;
                mx = fmaxf(mx, s[r][c]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            float mn = fmaxf(m[r], mx);
            float corr = mn == -INFINITY ? 1.0f : __expf(m[r] - mn);
            float sum = 0.0f;
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                float p = mn == -INFINITY ? 0.0f : __expf(s[r][c] - mn);
                Ps[(4 * ty + r) * (ABK + 1) + tx + 8 * c] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            sum += __shfl_xor_sync(0xffffffffu, sum, 4);
            l[r] = l[r] * corr + sum;
            m[r] = mn;
            #pragma unroll
            for (int c = 0; c < D / 8; c++) acc[r][c] *= corr;
        }
        __syncthreads();
        #pragma unroll 4
        for (int j = 0; j < ABK; j++) {
            float p[4];
            #pragma unroll
            for (int r = 0; r < 4; r++) p[r] = Ps[(4 * ty + r) * (ABK + 1) + j];
            #pragma unroll
            for (int c = 0; c < D / 8; c++) {
                float vv = Vs[j * D + tx + 8 * c];
                #pragma unroll
                for (int r = 0; r < 4; r++) acc[r][c] = fmaf(p[r], vv, acc[r][c]);
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 4; r++) {
        int qi = q0 + 4 * ty + r;
        if (qi >= TQ) continue;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        #pragma unroll
        for (int c = 0; c < D / 8; c++) stf(o, qbase + (u64)qi * D + tx + 8 * c, acc[r][c] * inv);
        if (tx == 0) lse[(u64)(b * H + h) * TQ + qi] = m[r] + logf(l[r]);
    }
}

// dq: per query block. P = exp(s - lse); dP = dO V^T; dS = P (dP - Di), Di = rowsum(dO o);
// dq = scale dS K.
template <typename T, int D>
DEV void attn_bwd_dq(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse,
                     T* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale) {
    extern __shared__ float smem[];
    float* Qt = smem;                      // [D][ABQ + 1] (scaled q)
    float* Gt = Qt + D * (ABQ + 1);        // [D][ABQ + 1] dO
    float* Kt = Gt + D * (ABQ + 1);        // [D][ABK + 1]
    float* Vt = Kt + D * (ABK + 1);        // [D][ABK + 1]
    float* Ps = Vt + D * (ABK + 1);        // [ABQ][ABK + 1] dS
    float* Di = Ps + ABQ * (ABK + 1);      // [ABQ]
    float* Ls = Di + ABQ;                  // [ABQ]
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    const int q0 = blockIdx.x * ABQ, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qbase = ((u64)(b * H + h) * TQ) * D, kbase = ((u64)(b * KV + kvh) * TK) * D;
    for (int e = tid; e < ABQ * D; e += ANT) {
        int i = e / D, d = e % D;
        bool in = q0 + i < TQ;
        Qt[d * (ABQ + 1) + i] = in ? ldf(q, qbase + (u64)(q0 + i) * D + d) * scale : 0.0f;
        Gt[d * (ABQ + 1) + i] = in ? ldf(dout, qbase + (u64)(q0 + i) * D + d) : 0.0f;
    }
    // Di: 2 threads per row (tid / 2 is the row, tid % 2 the half of the features).
    {
        int i = tid >> 1, half = tid & 1;
        float sacc = 0.0f;
        if (q0 + i < TQ)
            for (int d = half; d < D; d += 2)
                sacc += ldf(dout, qbase + (u64)(q0 + i) * D + d) * ldf(o, qbase + (u64)(q0 + i) * D + d);
        sacc += __shfl_xor_sync(0xffffffffu, sacc, 1);
        if (half == 0) {
            Di[i] = sacc;
            Ls[i] = q0 + i < TQ ? lse[(u64)(b * H + h) * TQ + q0 + i] : 0.0f;
        }
    }
    float acc[4][D / 8];
    #pragma unroll
    for (int r = 0; r < 4; r++)
        #pragma unroll
        for (int c = 0; c < D / 8; c++) acc[r][c] = 0.0f;
    const int c_last = off + min(TQ, q0 + ABQ) - 1, c_first = off + q0;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / ABK) * ABK;
    for (int j0 = j_begin; j0 <= c_last && j0 < TK; j0 += ABK) {
        __syncthreads();
        for (int e = tid; e < ABK * D; e += ANT) {
            int j = e / D, d = e % D;
            bool in = j0 + j < TK;
            Kt[d * (ABK + 1) + j] = in ? ldf(k, kbase + (u64)(j0 + j) * D + d) : 0.0f;
            Vt[d * (ABK + 1) + j] = in ? ldf(v, kbase + (u64)(j0 + j) * D + d) : 0.0f;
        }
        __syncthreads();
        float s[4][4], dp[4][4];
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < 4; c++) { s[r][c] = 0.0f; dp[r][c] = 0.0f; }
        #pragma unroll 4
        for (int d = 0; d < D; d++) {
            float a[4], g[4], kk[4], vv[4];
            #pragma unroll
            for (int r = 0; r < 4; r++) { a[r] = Qt[d * (ABQ + 1) + 4 * ty + r]; g[r] = Gt[d * (ABQ + 1) + 4 * ty + r]; }
            #pragma unroll
            for (int c = 0; c < 4; c++) { kk[c] = Kt[d * (ABK + 1) + tx + 8 * c]; vv[c] = Vt[d * (ABK + 1) + tx + 8 * c]; }
            #pragma unroll
            for (int r = 0; r < 4; r++)
                #pragma unroll
                for (int c = 0; c < 4; c++) { s[r][c] = fmaf(a[r], kk[c], s[r][c]); dp[r][c] = fmaf(g[r], vv[c], dp[r][c]); }
        }
        #pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = 4 * ty + r, cq = off + q0 + i;
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = j0 + tx + 8 * c;
                bool ok = q0 + i < TQ && j < TK && visible(cq, j, pad, win);
                float p = ok ? __expf(s[r][c] - Ls[i]) : 0.0f;
                Ps[i * (ABK + 1) + tx + 8 * c] = p * (dp[r][c] - Di[i]);
            }
        }
        __syncthreads();
        // dq[i][f] += sum_j dS[i][j] K[j][f]   (K[j][f] = Kt[f][j])
        #pragma unroll 2
        for (int j = 0; j < ABK; j++) {
            float ds[4];
            #pragma unroll
            for (int r = 0; r < 4; r++) ds[r] = Ps[(4 * ty + r) * (ABK + 1) + j];
            #pragma unroll
            for (int c = 0; c < D / 8; c++) {
                float kv = Kt[(tx + 8 * c) * (ABK + 1) + j];
                #pragma unroll
                for (int r = 0; r < 4; r++) acc[r][c] = fmaf(ds[r], kv, acc[r][c]);
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 4; r++) {
        int qi = q0 + 4 * ty + r;
        if (qi >= TQ) continue;
        #pragma unroll
        for (int c = 0; c < D / 8; c++) stf(dq, qbase + (u64)qi * D + tx + 8 * c, acc[r][c] * scale);
    }
}

// dk, dv: per key block of one KV head, over every query head of its group and every query block
// (query tiles of 32 here: the smaller footprint lets two blocks share an SM).
// dv = P^T dO; dk = scale dS^T q. Thread (ty = tid / 8, tx) owns key rows 2 ty, 2 ty + 1 and features
// tx + 8 c; for the 32 x 32 score tile it owns query rows 2 ty, 2 ty + 1 and keys tx + 8 c.
#define ABQ2 32
template <typename T, int D>
DEV void attn_bwd_dkdv(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse,
                       T* dk, T* dv, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win,
                       float scale) {
    extern __shared__ float smem[];
    float* Qt = smem;                      // [D][ABQ2 + 1] (scaled q)
    float* Gt = Qt + D * (ABQ2 + 1);       // [D][ABQ2 + 1] dO
    float* Kt = Gt + D * (ABQ2 + 1);       // [D][ABK + 1]
    float* Vt = Kt + D * (ABK + 1);        // [D][ABK + 1]
    float* Ps = Vt + D * (ABK + 1);        // [ABQ2][ABK + 1] P
    float* Ss = Ps + ABQ2 * (ABK + 1);     // [ABQ2][ABK + 1] dS
    float* Di = Ss + ABQ2 * (ABK + 1);     // [ABQ2]
    float* Ls = Di + ABQ2;                 // [ABQ2]
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    const int j0 = blockIdx.x * ABK, kvh = blockIdx.y, b = blockIdx.z, rep = H / KV;
    const int pad = pads[b];
    const u64 kbase = ((u64)(b * KV + kvh) * TK) * D;
    for (int e = tid; e < ABK * D; e += ANT) {
        int j = e / D, d = e % D;
        bool in = j0 + j < TK;
        Kt[d * (ABK + 1) + j] = in ? ldf(k, kbase + (u64)(j0 + j) * D + d) : 0.0f;
        Vt[d * (ABK + 1) + j] = in ? ldf(v, kbase + (u64)(j0 + j) * D + d) : 0.0f;
    }
    float ak[2][D / 8], av[2][D / 8];
    #pragma unroll
    for (int r = 0; r < 2; r++)
        #pragma unroll
        for (int c = 0; c < D / 8; c++) { ak[r][c] = 0.0f; av[r][c] = 0.0f; }
    // Queries that can see a key of this block: column c >= j0 (causal; the diagonal of a padded
    // query is such a column too), and c <= j_last + win.
    const int j_last = min(TK, j0 + ABK) - 1;
    int qi_begin = max(0, j0 - off);
    qi_begin = (qi_begin / ABQ2) * ABQ2;
    int qi_end = TQ;
    if (win > 0) qi_end = min(TQ, j_last + win - off + 1);
    for (int hh = 0; hh < rep; hh++) {
        const int h = kvh * rep + hh;
        const u64 qbase = ((u64)(b * H + h) * TQ) * D;
        for (int q0 = qi_begin; q0 < qi_end; q0 += ABQ2) {
            __syncthreads();
            for (int e = tid; e < ABQ2 * D; e += ANT) {
                int i = e / D, d = e % D;
                bool in = q0 + i < TQ;
                Qt[d * (ABQ2 + 1) + i] = in ? ldf(q, qbase + (u64)(q0 + i) * D + d) * scale : 0.0f;
                Gt[d * (ABQ2 + 1) + i] = in ? ldf(dout, qbase + (u64)(q0 + i) * D + d) : 0.0f;
            }
            {
                // Di: 4 threads per row.
                int i = tid >> 2, part = tid & 3;
                float sacc = 0.0f;
                if (q0 + i < TQ)
                    for (int d = part; d < D; d += 4)
                        sacc += ldf(dout, qbase + (u64)(q0 + i) * D + d) * ldf(o, qbase + (u64)(q0 + i) * D + d);
                sacc += __shfl_xor_sync(0xffffffffu, sacc, 1);
                sacc += __shfl_xor_sync(0xffffffffu, sacc, 2);
                if (part == 0) {
                    Di[i] = sacc;
                    Ls[i] = q0 + i < TQ ? lse[(u64)(b * H + h) * TQ + q0 + i] : 0.0f;
                }
            }
            __syncthreads();
            float s[2][4], dp[2][4];
            #pragma unroll
            for (int r = 0; r < 2; r++)
                #pragma unroll
                for (int c = 0; c < 4; c++) { s[r][c] = 0.0f; dp[r][c] = 0.0f; }
            #pragma unroll 4
            for (int d = 0; d < D; d++) {
                float a[2], g[2], kk[4], vv[4];
                #pragma unroll
                for (int r = 0; r < 2; r++) { a[r] = Qt[d * (ABQ2 + 1) + 2 * ty + r]; g[r] = Gt[d * (ABQ2 + 1) + 2 * ty + r]; }
                #pragma unroll
                for (int c = 0; c < 4; c++) { kk[c] = Kt[d * (ABK + 1) + tx + 8 * c]; vv[c] = Vt[d * (ABK + 1) + tx + 8 * c]; }
                #pragma unroll
                for (int r = 0; r < 2; r++)
                    #pragma unroll
                    for (int c = 0; c < 4; c++) { s[r][c] = fmaf(a[r], kk[c], s[r][c]); dp[r][c] = fmaf(g[r], vv[c], dp[r][c]); }
            }
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                int i = 2 * ty + r, cq = off + q0 + i;
                #pragma unroll
                for (int c = 0; c < 4; c++) {
                    int j = j0 + tx + 8 * c;
                    bool ok = q0 + i < TQ && j < TK && visible(cq, j, pad, win);
                    float p = ok ? __expf(s[r][c] - Ls[i]) : 0.0f;
                    Ps[i * (ABK + 1) + tx + 8 * c] = p;
                    Ss[i * (ABK + 1) + tx + 8 * c] = p * (dp[r][c] - Di[i]);
                }
            }
            __syncthreads();
            // dv[j][f] += sum_i P[i][j] dO[i][f]; dk[j][f] += sum_i dS[i][j] q[i][f].
            #pragma unroll 2
            for (int i = 0; i < ABQ2; i++) {
                float p[2], ds[2];
                #pragma unroll
                for (int r = 0; r < 2; r++) { p[r] = Ps[i * (ABK + 1) + 2 * ty + r]; ds[r] = Ss[i * (ABK + 1) + 2 * ty + r]; }
                #pragma unroll
                for (int c = 0; c < D / 8; c++) {
                    float g = Gt[(tx + 8 * c) * (ABQ2 + 1) + i], qq = Qt[(tx + 8 * c) * (ABQ2 + 1) + i];
                    #pragma unroll
                    for (int r = 0; r < 2; r++) { av[r][c] = fmaf(p[r], g, av[r][c]); ak[r][c] = fmaf(ds[r], qq, ak[r][c]); }
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = j0 + 2 * ty + r;
        if (j >= TK) continue;
        #pragma unroll
        for (int c = 0; c < D / 8; c++) {
            stf(dk, kbase + (u64)j * D + tx + 8 * c, ak[r][c]);  // q was pre-scaled
            stf(dv, kbase + (u64)j * D + tx + 8 * c, av[r][c]);
        }
    }
}

#define ATTN(T, TN, D) \
extern "C" __global__ void attn_fwd_##TN##_##D(const T* q, const T* k, const T* v, T* o, float* lse, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale) \
    { attn_fwd<T, D>(q, k, v, o, lse, pads, H, KV, TQ, TK, off, win, scale); } \
extern "C" __global__ void attn_bwd_dq_##TN##_##D(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse, T* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale) \
    { attn_bwd_dq<T, D>(q, k, v, o, dout, lse, dq, pads, H, KV, TQ, TK, off, win, scale); } \
extern "C" __global__ void attn_bwd_dkdv_##TN##_##D(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse, T* dk, T* dv, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale) \
    { attn_bwd_dkdv<T, D>(q, k, v, o, dout, lse, dk, dv, pads, H, KV, TQ, TK, off, win, scale); }
ATTN(float, f32, 64)
ATTN(float, f32, 128)
ATTN(bf16_t, bf16, 64)
ATTN(bf16_t, bf16, 128)
