// Dropout whose mask is a hash of (seed, element index): see gpu/dropout.rs.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

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
