// SwiGLU forward and backward, elementwise.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

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
