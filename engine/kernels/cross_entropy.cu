// Cross-entropy over the vocabulary, forward and backward.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

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
