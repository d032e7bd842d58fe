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

// y += dropout(t): the LoRA op's input gradient, accumulated in place (mask as above).
template <typename T>
DEV void dropout_acc(const T* t, T* y, u64 n, u64 seed, unsigned threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        if (kept(seed, i, threshold)) stf(y, i, ldf(y, i) + ldf(t, i) * scale);
}
extern "C" __global__ void dropout_acc_f32(const float* t, float* y, u64 n, u64 s, unsigned th, float c) { dropout_acc(t, y, n, s, th, c); }
extern "C" __global__ void dropout_acc_bf16(const bf16_t* t, bf16_t* y, u64 n, u64 s, unsigned th, float c) { dropout_acc(t, y, n, s, th, c); }

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

// Two consecutive elements (i even, the row's base even) as f32 / from f32: one 4- or 8-byte access.
DEV void ld2(const float* p, u64 i, float& a, float& b) { float2 v = *(const float2*)(p + i); a = v.x; b = v.y; }
DEV void ld2(const bf16_t* p, u64 i, float& a, float& b) {
    unsigned v = *(const unsigned*)(p + i);
    a = __uint_as_float(v << 16); b = __uint_as_float(v & 0xffff0000u);
}
DEV void st2(float* p, u64 i, float a, float b) { *(float2*)(p + i) = make_float2(a, b); }
DEV void st2(bf16_t* p, u64 i, float a, float b) {
    *(unsigned*)(p + i) = (unsigned)f32_to_bf16(a) | ((unsigned)f32_to_bf16(b) << 16);
}

// ---- RMSNorm forward: y = x (mean(x^2) + eps)^-1/2 w; one block per row, pairs of elements -----
// (candle's kernel runs 1,024 threads on a row of 3,072 and reached ~0.6 TB/s on an H100).
template <typename T>
DEV void rms_fwd(const T* x, const T* w, T* y, int H, float eps) {
    __shared__ float sh[32];
    const u64 base = (u64)blockIdx.x * H;
    float ss = 0.0f;
    for (int i = 2 * threadIdx.x; i < H; i += 2 * blockDim.x) {
        float a, b;
        ld2(x, base + i, a, b);
        ss += a * a + b * b;
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / H + eps);
    for (int i = 2 * threadIdx.x; i < H; i += 2 * blockDim.x) {
        float a, b, wa, wb;
        ld2(x, base + i, a, b);
        ld2(w, i, wa, wb);
        st2(y, base + i, a * r * wa, b * r * wb);
    }
}
extern "C" __global__ void rms_fwd_f32(const float* x, const float* w, float* y, int H, float eps) { rms_fwd(x, w, y, H, eps); }
extern "C" __global__ void rms_fwd_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int H, float eps) { rms_fwd(x, w, y, H, eps); }

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
// Forward on pairs of elements (n even: the host checks).
template <typename T>
DEV void swiglu_fwd(const T* g, const T* u, T* y, u64 n) {
    for (u64 i = 2 * (blockIdx.x * (u64)blockDim.x + threadIdx.x); i < n; i += 2 * (u64)gridDim.x * blockDim.x) {
        float g0, g1, u0, u1;
        ld2(g, i, g0, g1);
        ld2(u, i, u0, u1);
        st2(y, i, g0 / (1.0f + __expf(-g0)) * u0, g1 / (1.0f + __expf(-g1)) * u1);
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

// ---- Attention on tensor cores (bf16, sm_80+; FlashAttention-2's scheme) -----------------------
// mma.sync m16n8k16 bf16 -> f32. 4 warps; each warp owns 16 rows of the tile it produces. The
// C fragment of one product is reused in registers as the A fragment of the next (P -> P V);
// operands come from shared memory through ldmatrix (.trans where the product needs the
// transpose). Tiles are stored [rows][D + 8] bf16: the 16-byte row skew makes ldmatrix
// conflict-free. Same visibility rule and lse as the kernels above; the layout is given by strides:
// row qi of head h of batch row b of q (o, dO, dq) starts at b H TQ D + h QHS + qi QRS, of k (v,
// dk, dv) at b KV TK D + h KHS + j KRS: [B, H, T, D] is (QHS, QRS) = (TQ D, D), [B, T, H, D] is
// (D, H D) — the projections' own layout, no transposes around attention.
#if __CUDA_ARCH__ >= 800
DEV unsigned ld32(const bf16_t* p) { return *(const unsigned*)p; }
DEV unsigned pack2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
DEV unsigned saddr(const void* p) {
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
DEV void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
DEV void ldsm4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
DEV void ldsm4t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
// A fragment (16 x 16, rows m0.., columns k0..) of a [rows][LD] tile.
template <int LD>
DEV void frag_a(unsigned* r, const bf16_t* s, int m0, int k0, int lane) {
    ldsm4(r, saddr(s + (m0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + k0 + (lane >> 4) * 8));
}
// B fragments of two n-tiles (n0.., n0 + 8..) x k0..k0+15 when the tile is stored [n][k]
// (B = tile^T): r[0], r[1] for n0, r[2], r[3] for n0 + 8.
template <int LD>
DEV void frag_b_nk(unsigned* r, const bf16_t* s, int n0, int k0, int lane) {
    ldsm4(r, saddr(s + (n0 + (lane >> 4) * 8 + (lane & 7)) * LD + k0 + ((lane >> 3) & 1) * 8));
}
// The same when the tile is stored [k][n] (B = tile): columns n0.. and n0 + 8.., rows k0..k0+15.
template <int LD>
DEV void frag_b_kn(unsigned* r, const bf16_t* s, int k0, int n0, int lane) {
    ldsm4t(r, saddr(s + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + n0 + (lane >> 4) * 8));
}
// Rows r0 .. r0 + R - 1 of a matrix of nrows rows of D (row stride rs) into a [R][D + 8] tile;
// rows past the end are 0.
template <int D, int R>
DEV void load_tile(bf16_t* s, const bf16_t* g, int r0, int nrows, int rs) {
    constexpr int C = D / 8;
    for (int e = threadIdx.x; e < R * C; e += 128) {
        int r = e / C, c = e % C;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < nrows) v = *(const uint4*)(g + (u64)(r0 + r) * rs + c * 8);
        *(uint4*)(s + r * (D + 8) + c * 8) = v;
    }
}
// The same with cp.async (16 bytes a copy, zero-filled past the end): the copies run while the
// block computes on the other buffer. Completed by cp_wait + __syncthreads.
template <int D, int R>
DEV void load_tile_async(bf16_t* s, const bf16_t* g, int r0, int nrows, int rs) {
    constexpr int C = D / 8;
    for (int e = threadIdx.x; e < R * C; e += 128) {
        int r = e / C, c = e % C;
        const bool in = r0 + r < nrows;
        const bf16_t* src = g + (u64)(in ? r0 + r : 0) * rs + c * 8;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(saddr(s + r * (D + 8) + c * 8)), "l"(src), "r"(in ? 16 : 0) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
DEV void cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// acc (16 x D, C fragments) += a (16 x 16) . tile[k0 .. k0 + 15][0 .. D - 1], the tile stored [k][n].
template <int D, int LD>
DEV void mma_rows(float (*acc)[4], const unsigned* a, const bf16_t* tile, int k0, int lane) {
    #pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
        unsigned bb[4];
        frag_b_kn<LD>(bb, tile, k0, n * 8, lane);
        mma_bf16(acc[n], a, bb[0], bb[1]);
        mma_bf16(acc[n + 1], a, bb[2], bb[3]);
    }
}
// The C fragments of n-tiles 2 kk, 2 kk + 1 as the A fragment of the next product (k = their columns).
DEV void c_to_a(unsigned* a, const float* c0, const float* c1) {
    a[0] = pack2(c0[0], c0[1]);
    a[1] = pack2(c0[2], c0[3]);
    a[2] = pack2(c1[0], c1[1]);
    a[3] = pack2(c1[2], c1[3]);
}
DEV float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
DEV float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
#endif

// Forward: block = 64 queries of one head (latest blocks first: they have the most keys).
template <int D>
DEV void attn_fwd_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse,
                     const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale,
                     int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int KT = 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    // Two K / V buffers: tile i + 1 streams in (cp.async) while tile i is computed on.
    bf16_t* Kbuf = (bf16_t*)tsm;
    bf16_t* Vbuf = Kbuf + 2 * KT * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * 64, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    const bf16_t* qb = q + qoff;
    const bf16_t* kb = k + koff;
    const bf16_t* vb = v + koff;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[D / 16][4];
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < TQ ? ld32(qb + (u64)r0 * QRS + c) : 0u;
        qa[kk][1] = r1 < TQ ? ld32(qb + (u64)r1 * QRS + c) : 0u;
        qa[kk][2] = r0 < TQ ? ld32(qb + (u64)r0 * QRS + c + 8) : 0u;
        qa[kk][3] = r1 < TQ ? ld32(qb + (u64)r1 * QRS + c + 8) : 0u;
    }
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int c_first = off + q0, c_last = off + min(TQ, q0 + 64) - 1;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / KT) * KT;
    const int j_end = min(c_last + 1, TK);
    if (j_begin < j_end) {
        load_tile_async<D, KT>(Kbuf, kb, j_begin, TK, KRS);
        load_tile_async<D, KT>(Vbuf, vb, j_begin, TK, KRS);
    }
    for (int j0 = j_begin, it = 0; j0 < j_end; j0 += KT, it++) {
        bf16_t* Ks = Kbuf + (it & 1) * KT * LD;
        bf16_t* Vs = Vbuf + (it & 1) * KT * LD;
        if (j0 + KT < j_end) {
            load_tile_async<D, KT>(Kbuf + ((it + 1) & 1) * KT * LD, kb, j0 + KT, TK, KRS);
            load_tile_async<D, KT>(Vbuf + ((it + 1) & 1) * KT * LD, vb, j0 + KT, TK, KRS);
            cp_wait<2>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        float s[KT / 8][4];
        #pragma unroll
        for (int n = 0; n < KT / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            #pragma unroll
            for (int n = 0; n < KT / 8; n += 2) {
                unsigned bb[4];
                frag_b_nk<LD>(bb, Ks, n * 8, kk * 16, lane);
                mma_bf16(s[n], qa[kk], bb[0], bb[1]);
                mma_bf16(s[n + 1], qa[kk], bb[2], bb[3]);
            }
        const bool full = j0 + KT - 1 <= c_first && j0 >= pad && j0 + KT <= TK && (win == 0 || j0 + win >= c_last);
        float mx0 = -INFINITY, mx1 = -INFINITY;
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = j0 + n * 8 + 2 * t + (e & 1);
                float x = s[n][e] * scale;
                if (!full && (j >= TK || !visible(off + (e < 2 ? r0 : r1), j, pad, win))) x = -INFINITY;
                s[n][e] = x;
                if (e < 2) mx0 = fmaxf(mx0, x); else mx1 = fmaxf(mx1, x);
            }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float cr0 = mn0 == -INFINITY ? 1.0f : __expf(m0 - mn0);
        const float cr1 = mn1 == -INFINITY ? 1.0f : __expf(m1 - mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float mn = e < 2 ? mn0 : mn1;
                float p = mn == -INFINITY ? 0.0f : __expf(s[n][e] - mn);
                s[n][e] = p;
                if (e < 2) sum0 += p; else sum1 += p;
            }
        l0 = l0 * cr0 + sum0;
        l1 = l1 * cr1 + sum1;
        m0 = mn0;
        m1 = mn1;
        #pragma unroll
        for (int n = 0; n < D / 8; n++) {
            acc[n][0] *= cr0; acc[n][1] *= cr0;
            acc[n][2] *= cr1; acc[n][3] *= cr1;
        }
        #pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            unsigned pa[4];
            c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            mma_rows<D, LD>(acc, pa, Vs, kk * 16, lane);
        }
        __syncthreads();  // this buffer is the target of the next iteration's copies
    }
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16_t* ob = o + qoff;
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (r0 < TQ) *(unsigned*)(ob + (u64)r0 * QRS + c) = pack2(acc[n][0] * inv0, acc[n][1] * inv0);
        if (r1 < TQ) *(unsigned*)(ob + (u64)r1 * QRS + c) = pack2(acc[n][2] * inv1, acc[n][3] * inv1);
    }
    if (t == 0) {
        if (r0 < TQ) lse[(u64)(b * H + h) * TQ + r0] = m0 + logf(l0);
        if (r1 < TQ) lse[(u64)(b * H + h) * TQ + r1] = m1 + logf(l1);
    }
#endif
}

// Di = rowsum(dO o) for every query row (f32 [B, H, TQ]), one warp per row; o, dO in the layout
// (QHS, QRS) of the tensor-core kernels.
extern "C" __global__ void attn_di_bf16(const bf16_t* o, const bf16_t* dout, float* di, int rows, int D,
                                        int H, int TQ, int QHS, int QRS) {
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int qi = row % TQ, h = (row / TQ) % H, b = row / (TQ * H);
    const u64 base = (u64)b * H * TQ * D + (u64)h * QHS + (u64)qi * QRS;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += bf16_to_f32(o[base + d]) * bf16_to_f32(dout[base + d]);
    for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) di[row] = s;
}

// dq: block = 64 queries of one head; key tiles of KT. P = exp(s - lse), dP = dO V^T,
// dS = P (dP - Di), dq = scale dS K.
template <int D>
DEV void attn_dq_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                    const float* di, bf16_t* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off,
                    int win, float scale, int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int KT = D == 128 ? 32 : 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    bf16_t* Ks = (bf16_t*)tsm;
    bf16_t* Vs = Ks + KT * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * 64, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    const bf16_t* kb = k + koff;
    const bf16_t* vb = v + koff;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[D / 16][4], ga[D / 16][4];
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < TQ ? ld32(q + qoff + (u64)r0 * QRS + c) : 0u;
        qa[kk][1] = r1 < TQ ? ld32(q + qoff + (u64)r1 * QRS + c) : 0u;
        qa[kk][2] = r0 < TQ ? ld32(q + qoff + (u64)r0 * QRS + c + 8) : 0u;
        qa[kk][3] = r1 < TQ ? ld32(q + qoff + (u64)r1 * QRS + c + 8) : 0u;
        ga[kk][0] = r0 < TQ ? ld32(dout + qoff + (u64)r0 * QRS + c) : 0u;
        ga[kk][1] = r1 < TQ ? ld32(dout + qoff + (u64)r1 * QRS + c) : 0u;
        ga[kk][2] = r0 < TQ ? ld32(dout + qoff + (u64)r0 * QRS + c + 8) : 0u;
        ga[kk][3] = r1 < TQ ? ld32(dout + qoff + (u64)r1 * QRS + c + 8) : 0u;
    }
    const u64 roff = (u64)(b * H + h) * TQ;
    const float ls0 = r0 < TQ ? lse[roff + r0] : 0.0f, ls1 = r1 < TQ ? lse[roff + r1] : 0.0f;
    const float d0 = r0 < TQ ? di[roff + r0] : 0.0f, d1 = r1 < TQ ? di[roff + r1] : 0.0f;
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int c_first = off + q0, c_last = off + min(TQ, q0 + 64) - 1;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / KT) * KT;
    for (int j0 = j_begin; j0 <= c_last && j0 < TK; j0 += KT) {
        __syncthreads();
        load_tile<D, KT>(Ks, kb, j0, TK, KRS);
        load_tile<D, KT>(Vs, vb, j0, TK, KRS);
        __syncthreads();
        float s[KT / 8][4], dp[KT / 8][4];
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) { s[n][e] = 0.0f; dp[n][e] = 0.0f; }
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            #pragma unroll
            for (int n = 0; n < KT / 8; n += 2) {
                unsigned bb[4];
                frag_b_nk<LD>(bb, Ks, n * 8, kk * 16, lane);
                mma_bf16(s[n], qa[kk], bb[0], bb[1]);
                mma_bf16(s[n + 1], qa[kk], bb[2], bb[3]);
                frag_b_nk<LD>(bb, Vs, n * 8, kk * 16, lane);
                mma_bf16(dp[n], ga[kk], bb[0], bb[1]);
                mma_bf16(dp[n + 1], ga[kk], bb[2], bb[3]);
            }
        const bool full = j0 + KT - 1 <= c_first && j0 >= pad && j0 + KT <= TK && (win == 0 || j0 + win >= c_last);
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = j0 + n * 8 + 2 * t + (e & 1);
                bool ok = full || (j < TK && visible(off + (e < 2 ? r0 : r1), j, pad, win));
                float p = ok ? __expf(s[n][e] * scale - (e < 2 ? ls0 : ls1)) : 0.0f;
                s[n][e] = p * (dp[n][e] - (e < 2 ? d0 : d1));
            }
        #pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            unsigned sa[4];
            c_to_a(sa, s[2 * kk], s[2 * kk + 1]);
            mma_rows<D, LD>(acc, sa, Ks, kk * 16, lane);
        }
    }
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (r0 < TQ) *(unsigned*)(dq + qoff + (u64)r0 * QRS + c) = pack2(acc[n][0] * scale, acc[n][1] * scale);
        if (r1 < TQ) *(unsigned*)(dq + qoff + (u64)r1 * QRS + c) = pack2(acc[n][2] * scale, acc[n][3] * scale);
    }
#endif
}

// dk, dv: block = 64 keys of one KV head, over every query head of its group and query tiles of QT.
// Computed transposed (keys are the rows): S^T = K q^T, dP^T = V dO^T, dS^T = P^T (dP^T - Di);
// dv = P^T dO, dk = scale dS^T q.
template <int D>
DEV void attn_dkdv_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                      const float* di, bf16_t* dk, bf16_t* dv, const unsigned* pads, int H, int KV, int TQ,
                      int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int QT = D == 128 ? 32 : 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    bf16_t* Ks = (bf16_t*)tsm;
    bf16_t* Vs = Ks + 64 * LD;
    bf16_t* Qs = Vs + 64 * LD;
    bf16_t* Gs = Qs + QT * LD;
    float* Ls = (float*)(Gs + QT * LD);
    float* Ds = Ls + QT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int j0 = blockIdx.x * 64, kvh = blockIdx.y, b = blockIdx.z, rep = H / KV;
    const int pad = pads[b];
    const u64 koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    load_tile<D, 64>(Ks, k + koff, j0, TK, KRS);
    load_tile<D, 64>(Vs, v + koff, j0, TK, KRS);
    const int kr0 = j0 + warp * 16 + g, kr1 = kr0 + 8;
    float ak[D / 8][4], av[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++)
        #pragma unroll
        for (int e = 0; e < 4; e++) { ak[n][e] = 0.0f; av[n][e] = 0.0f; }
    const int j_last = min(TK, j0 + 64) - 1;
    int qi_begin = max(0, j0 - off);
    qi_begin = (qi_begin / QT) * QT;
    int qi_end = TQ;
    if (win > 0) qi_end = min(TQ, j_last + win - off + 1);
    for (int hh = 0; hh < rep; hh++) {
        const int h = kvh * rep + hh;
        const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, roff = (u64)(b * H + h) * TQ;
        for (int q0 = qi_begin; q0 < qi_end; q0 += QT) {
            __syncthreads();
            load_tile<D, QT>(Qs, q + qoff, q0, TQ, QRS);
            load_tile<D, QT>(Gs, dout + qoff, q0, TQ, QRS);
            for (int i = threadIdx.x; i < QT; i += 128) {
                Ls[i] = q0 + i < TQ ? lse[roff + q0 + i] : 0.0f;
                Ds[i] = q0 + i < TQ ? di[roff + q0 + i] : 0.0f;
            }
            __syncthreads();
            float s[QT / 8][4], dp[QT / 8][4];
            #pragma unroll
            for (int n = 0; n < QT / 8; n++)
                #pragma unroll
                for (int e = 0; e < 4; e++) { s[n][e] = 0.0f; dp[n][e] = 0.0f; }
            #pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                unsigned ka[4], va[4];
                frag_a<LD>(ka, Ks, warp * 16, kk * 16, lane);
                frag_a<LD>(va, Vs, warp * 16, kk * 16, lane);
                #pragma unroll
                for (int n = 0; n < QT / 8; n += 2) {
                    unsigned bb[4];
                    frag_b_nk<LD>(bb, Qs, n * 8, kk * 16, lane);
                    mma_bf16(s[n], ka, bb[0], bb[1]);
                    mma_bf16(s[n + 1], ka, bb[2], bb[3]);
                    frag_b_nk<LD>(bb, Gs, n * 8, kk * 16, lane);
                    mma_bf16(dp[n], va, bb[0], bb[1]);
                    mma_bf16(dp[n + 1], va, bb[2], bb[3]);
                }
            }
            const bool full = j0 + 63 <= off + q0 && j0 >= pad && j0 + 64 <= TK && q0 + QT <= TQ &&
                              (win == 0 || j0 + win >= off + q0 + QT - 1);
            #pragma unroll
            for (int n = 0; n < QT / 8; n++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = n * 8 + 2 * t + (e & 1), key = e < 2 ? kr0 : kr1;
                    bool ok = full || (q0 + i < TQ && key < TK && visible(off + q0 + i, key, pad, win));
                    float p = ok ? __expf(s[n][e] * scale - Ls[i]) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - Ds[i]);
                }
            #pragma unroll
            for (int kk = 0; kk < QT / 16; kk++) {
                unsigned pa[4], sa[4];
                c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
                c_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
                // mma_rows for dv and dk, interleaved per column pair (the measured schedule).
                #pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    unsigned bb[4];
                    frag_b_kn<LD>(bb, Gs, kk * 16, n * 8, lane);
                    mma_bf16(av[n], pa, bb[0], bb[1]);
                    mma_bf16(av[n + 1], pa, bb[2], bb[3]);
                    frag_b_kn<LD>(bb, Qs, kk * 16, n * 8, lane);
                    mma_bf16(ak[n], sa, bb[0], bb[1]);
                    mma_bf16(ak[n + 1], sa, bb[2], bb[3]);
                }
            }
        }
    }
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (kr0 < TK) {
            *(unsigned*)(dk + koff + (u64)kr0 * KRS + c) = pack2(ak[n][0] * scale, ak[n][1] * scale);
            *(unsigned*)(dv + koff + (u64)kr0 * KRS + c) = pack2(av[n][0], av[n][1]);
        }
        if (kr1 < TK) {
            *(unsigned*)(dk + koff + (u64)kr1 * KRS + c) = pack2(ak[n][2] * scale, ak[n][3] * scale);
            *(unsigned*)(dv + koff + (u64)kr1 * KRS + c) = pack2(av[n][2], av[n][3]);
        }
    }
#endif
}

#define ATTN_TC(D) \
extern "C" __global__ void attn_fwd_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_fwd_tc<D>(q, k, v, o, lse, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); } \
extern "C" __global__ void attn_dq_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* di, bf16_t* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_dq_tc<D>(q, k, v, dout, lse, di, dq, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); } \
extern "C" __global__ void attn_dkdv_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* di, bf16_t* dk, bf16_t* dv, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_dkdv_tc<D>(q, k, v, dout, lse, di, dk, dv, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); }
ATTN_TC(64)
ATTN_TC(128)

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
static CC: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();

/// The device's compute capability (major, minor), asked once per process (one GPU model per
/// process, as the compiled module assumes).
pub(crate) fn compute_capability(dev: &CudaDevice) -> Result<(i32, i32)> {
    CC.get_or_init(|| {
        dev.cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| format!("compute capability: {e}"))
    })
    .clone()
    .map_err(candle_core::Error::Msg)
}

fn ptx(dev: &CudaDevice) -> Result<&'static str> {
    let compiled = PTX.get_or_init(|| {
        let (major, minor) =
            compute_capability(dev).map_err(|e| format!("compute capability: {e}"))?;
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
