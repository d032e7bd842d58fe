// RMSNorm forward and backward, one block per row.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

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
