//! Our CUDA kernels: one CUDA C source, compiled once per process with NVRTC for the device's
//! compute capability, loaded through candle's custom-module cache.
//!
//! The source includes no headers (NVRTC's built-in header set differs between CUDA versions):
//! bf16 values are handled as their 16-bit patterns.
use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::{CudaDevice, Result};

const MODULE: &str = "sizespec_kernels";

pub(crate) const SOURCE: &str = r#"
typedef unsigned long long u64;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
typedef unsigned short bf16_t;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((unsigned)h) << 16);
}
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                        // round to nearest even
    return (bf16_t)(u >> 16);
}

// splitmix64's finaliser: the same function as `gpu::dropout::mix` on the host.
__device__ __forceinline__ u64 mix(u64 z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
// Element i is kept when its 24-bit uniform is below keep * 2^24.
__device__ __forceinline__ bool kept(u64 seed, u64 i, unsigned threshold) {
    return (unsigned)(mix(seed ^ mix(i)) >> 40) < threshold;
}


#define DEV __device__ __forceinline__
DEV float ldf(const float* p, u64 i) { return p[i]; }
DEV float ldf(const bf16_t* p, u64 i) { return bf16_to_f32(p[i]); }
DEV void stf(float* p, u64 i, float v) { p[i] = v; }
DEV void stf(bf16_t* p, u64 i, float v) { p[i] = f32_to_bf16(v); }

template <typename TI, typename TO>
DEV void dropout(const TI* x, TO* y, u64 n, u64 seed, unsigned threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        stf(y, i, kept(seed, i, threshold) ? ldf(x, i) * scale : 0.0f);
}
extern "C" __global__ void dropout_f32_f32(const float* x, float* y, u64 n, u64 s, unsigned t, float c) { dropout(x, y, n, s, t, c); }
extern "C" __global__ void dropout_bf16_f32(const bf16_t* x, float* y, u64 n, u64 s, unsigned t, float c) { dropout(x, y, n, s, t, c); }
extern "C" __global__ void dropout_f32_bf16(const float* x, bf16_t* y, u64 n, u64 s, unsigned t, float c) { dropout(x, y, n, s, t, c); }
extern "C" __global__ void dropout_bf16_bf16(const bf16_t* x, bf16_t* y, u64 n, u64 s, unsigned t, float c) { dropout(x, y, n, s, t, c); }

// Sum / max over the block (blockDim.x a multiple of 32); every thread gets the result.
DEV float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = l < nw ? sh[l] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}
DEV float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = l < nw ? sh[l] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
    return t;
}

// ---- RMSNorm backward (input gradient only; the norm weight is frozen) --------------------------
// y = (x r) w with r = (mean(x^2) + eps)^-1/2  =>  dx = r dn - r^3 x mean(dn x), dn = dy w.
template <typename T>
DEV void rms_bwd(const T* x, const T* w, const T* dy, T* dx, int H, float eps) {
    __shared__ float sh[32];
    u64 base = (u64)blockIdx.x * H;
    float ss = 0.0f, sd = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float xv = ldf(x, base + i), dn = ldf(dy, base + i) * ldf(w, i);
        ss += xv * xv;
        sd += dn * xv;
    }
    ss = block_sum(ss, sh);
    sd = block_sum(sd, sh);
    float r = rsqrtf(ss / H + eps);
    float c = r * r * r * sd / H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float xv = ldf(x, base + i), dn = ldf(dy, base + i) * ldf(w, i);
        stf(dx, base + i, r * dn - c * xv);
    }
}
extern "C" __global__ void rms_bwd_f32(const float* x, const float* w, const float* dy, float* dx, int H, float eps) { rms_bwd(x, w, dy, dx, H, eps); }
extern "C" __global__ void rms_bwd_bf16(const bf16_t* x, const bf16_t* w, const bf16_t* dy, bf16_t* dx, int H, float eps) { rms_bwd(x, w, dy, dx, H, eps); }

// ---- SwiGLU: y = silu(g) u ----------------------------------------------------------------------
template <typename T>
DEV void swiglu_fwd(const T* g, const T* u, T* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float gv = ldf(g, i);
        stf(y, i, gv / (1.0f + __expf(-gv)) * ldf(u, i));
    }
}
template <typename T>
DEV void swiglu_bwd(const T* g, const T* u, const T* dy, T* dg, T* du, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float gv = ldf(g, i), uv = ldf(u, i), d = ldf(dy, i);
        float s = 1.0f / (1.0f + __expf(-gv));
        stf(dg, i, d * uv * s * (1.0f + gv * (1.0f - s)));
        stf(du, i, d * gv * s);
    }
}
extern "C" __global__ void swiglu_fwd_f32(const float* g, const float* u, float* y, u64 n) { swiglu_fwd(g, u, y, n); }
extern "C" __global__ void swiglu_fwd_bf16(const bf16_t* g, const bf16_t* u, bf16_t* y, u64 n) { swiglu_fwd(g, u, y, n); }
extern "C" __global__ void swiglu_bwd_f32(const float* g, const float* u, const float* dy, float* dg, float* du, u64 n) { swiglu_bwd(g, u, dy, dg, du, n); }
extern "C" __global__ void swiglu_bwd_bf16(const bf16_t* g, const bf16_t* u, const bf16_t* dy, bf16_t* dg, bf16_t* du, u64 n) { swiglu_bwd(g, u, dy, dg, du, n); }

// ---- Cross-entropy over the vocabulary, one block per row ---------------------------------------
// Forward: loss[r] = logsumexp(x[r]) - x[r, t[r]]. Backward: dx[r, j] = g (softmax(x[r])_j - [j == t[r]]),
// g the (scalar) gradient of the summed loss.
template <typename T>
DEV void ce_fwd(const T* x, const unsigned* t, float* loss, int V) {
    __shared__ float sh[32];
    u64 base = (u64)blockIdx.x * V;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, ldf(x, base + j));
    m = block_max(m, sh);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += __expf(ldf(x, base + j) - m);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) loss[blockIdx.x] = m + logf(s) - ldf(x, base + t[blockIdx.x]);
}
template <typename T>
DEV void ce_bwd(const T* x, const unsigned* t, const float* g, T* dx, int V) {
    __shared__ float sh[32];
    u64 base = (u64)blockIdx.x * V;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, ldf(x, base + j));
    m = block_max(m, sh);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += __expf(ldf(x, base + j) - m);
    s = block_sum(s, sh);
    float gr = g[blockIdx.x], inv = 1.0f / s;
    unsigned tr = t[blockIdx.x];
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        stf(dx, base + j, gr * (__expf(ldf(x, base + j) - m) * inv - (j == (int)tr ? 1.0f : 0.0f)));
}
extern "C" __global__ void ce_fwd_f32(const float* x, const unsigned* t, float* loss, int V) { ce_fwd(x, t, loss, V); }
extern "C" __global__ void ce_fwd_bf16(const bf16_t* x, const unsigned* t, float* loss, int V) { ce_fwd(x, t, loss, V); }
extern "C" __global__ void ce_bwd_f32(const float* x, const unsigned* t, const float* g, float* dx, int V) { ce_bwd(x, t, g, dx, V); }
extern "C" __global__ void ce_bwd_bf16(const bf16_t* x, const unsigned* t, const float* g, bf16_t* dx, int V) { ce_bwd(x, t, g, dx, V); }

// ---- Optimiser: one launch for every LoRA tensor ----------------------------------------------
// table: per tensor four f32 pointers (param, grad, m, v); sizes: elements per tensor; blockIdx.y is
// the tensor. The update is AdamW's, as optim.rs computes it with candle ops.
extern "C" __global__ void adamw_multi(const u64* table, const u64* sizes, float lr, float b1, float b2,
                                       float eps, float wd, float sm, float sv, float gscale) {
    const int t = blockIdx.y;
    const u64 n = sizes[t];
    float* p = (float*)table[4 * t];
    const float* g = (const float*)table[4 * t + 1];
    float* m = (float*)table[4 * t + 2];
    float* v = (float*)table[4 * t + 3];
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * (1.0f - lr * wd) - lr * ((mi * sm) / (sqrtf(vi * sv) + eps));
    }
}
// Sum of squares: block (x, t) writes its partial sum of tensor t to out[t * gridDim.x + x]; the
// host adds the partials in a fixed order, so the result is the same on every run (no atomics).
extern "C" __global__ void sumsq_multi(const u64* ptrs, const u64* sizes, float* out) {
    __shared__ float sh[32];
    const int t = blockIdx.y;
    const u64 n = sizes[t];
    const float* g = (const float*)ptrs[t];
    float acc = 0.0f;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        acc += g[i] * g[i];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) out[(u64)t * gridDim.x + blockIdx.x] = acc;
}

// ---- Attention (flash style: scores never leave the chip) ---------------------------------------
// q [B, H, TQ, D], k/v [B, KV, TK, D], o like q, lse [B, H, TQ] (natural log, scaled scores).
// Query row qi sits at column c = off + qi of the padded layout; key j is visible when
// (j <= c && j + win >= c && j >= pad[b]) || j == c   (win = 0: no window).
// 128 threads; thread (ty = tid / 8, tx = tid % 8) owns query rows 4 ty .. 4 ty + 3 and the
// key / feature columns tx + 8 i (interleaved, so neighbouring threads read neighbouring words).
#define ABQ 64
#define ABK 32
#define ANT 128
DEV bool visible(int c, int j, int pad, int win) {
    return (j <= c && (win == 0 || j + win >= c) && j >= pad) || j == c;
}

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
"#;

static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

fn ptx(dev: &CudaDevice) -> Result<&'static str> {
    let compiled = PTX.get_or_init(|| {
        let (major, minor) = dev
            .cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| format!("compute capability: {e}"))?;
        let opts = CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
            name: Some("sizespec_kernels.cu".into()),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("NVRTC could not compile sizespec's kernels: {e}"))
    });
    compiled
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// A kernel of [`SOURCE`] by name.
pub(crate) fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    let ptx = ptx(dev)?;
    Ok(dev
        .get_or_load_custom_func(name, MODULE, ptx)?
        .into_cuda_function())
}

/// A grid-stride launch over `n` elements.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let threads = 256u32;
    let blocks = n.div_ceil(threads as usize).clamp(1, 132 * 32) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
