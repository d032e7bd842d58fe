// The optimiser's step and the gradient norm, one launch each for every LoRA tensor.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

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
