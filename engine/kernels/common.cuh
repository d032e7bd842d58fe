// Shared by every kernel file: integer and bf16 types (bf16 values as their 16-bit patterns; the
// source includes no headers, since NVRTC's built-in header set differs between CUDA versions),
// f32 loads / stores of either type, and block-wide reductions.
#ifndef SIZESPEC_COMMON_CUH
#define SIZESPEC_COMMON_CUH
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

#define DEV __device__ __forceinline__
DEV float ldf(const float* p, u64 i) { return p[i]; }
DEV float ldf(const bf16_t* p, u64 i) { return bf16_to_f32(p[i]); }
DEV void stf(float* p, u64 i, float v) { p[i] = v; }
DEV void stf(bf16_t* p, u64 i, float v) { p[i] = f32_to_bf16(v); }

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
#endif
