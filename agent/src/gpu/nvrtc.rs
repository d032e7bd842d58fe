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

extern "C" __global__ void dropout_f32_f32(const float* x, float* y, u64 n, u64 seed,
                                           unsigned threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = kept(seed, i, threshold) ? x[i] * scale : 0.0f;
}
extern "C" __global__ void dropout_bf16_f32(const bf16_t* x, float* y, u64 n, u64 seed,
                                            unsigned threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = kept(seed, i, threshold) ? bf16_to_f32(x[i]) * scale : 0.0f;
}
extern "C" __global__ void dropout_f32_bf16(const float* x, bf16_t* y, u64 n, u64 seed,
                                            unsigned threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = f32_to_bf16(kept(seed, i, threshold) ? x[i] * scale : 0.0f);
}
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
