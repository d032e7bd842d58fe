//! Our CUDA kernels: one CUDA C source, compiled once per process with NVRTC for the device's
//! compute capability, loaded through candle's custom-module cache.
//!
//! The source (`engine/kernels/*.cu`, see [`SOURCE`]) includes no system headers (NVRTC's built-in
//! header set differs between CUDA versions): bf16 values are handled as their 16-bit patterns.
use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, sys as driver_sys};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::{CudaDevice, Result};

const MODULE: &str = "sizespec_kernels";

/// The kernels' CUDA C, one compilation unit assembled from `engine/kernels/` (each file opens
/// with its `#include`s guarded by `SIZESPEC_COMMON_CUH`, which `common.cuh` defines first, so the
/// includes are skipped here and each file still compiles on its own with nvcc, as CI does).
/// The order is the kernels' order in the compiled module.
pub(crate) const SOURCE: &str = concat!(
    include_str!("../../kernels/common.cuh"),
    include_str!("../../kernels/dropout.cu"),
    include_str!("../../kernels/norm.cu"),
    include_str!("../../kernels/swiglu.cu"),
    include_str!("../../kernels/cross_entropy.cu"),
    include_str!("../../kernels/adamw.cu"),
    include_str!("../../kernels/attention.cuh"),
    include_str!("../../kernels/attention_tc.cu"),
    include_str!("../../kernels/decode.cu"),
    include_str!("../../kernels/attention.cu"),
);

static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
static CC: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();
static SMS: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

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

/// The device's number of multiprocessors, asked once per process (as [`compute_capability`]).
pub(crate) fn multiprocessors(dev: &CudaDevice) -> Result<u32> {
    SMS.get_or_init(|| {
        dev.cuda_stream()
            .context()
            .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as u32)
            .map_err(|e| format!("multiprocessor count: {e}"))
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

/// A grid-stride launch over `n` elements: 256 threads a block, at most 32 blocks a multiprocessor.
pub(crate) fn elementwise(dev: &CudaDevice, n: usize) -> Result<LaunchConfig> {
    let threads = 256u32;
    let cap = multiprocessors(dev)? as usize * 32;
    let blocks = n.div_ceil(threads as usize).clamp(1, cap) as u32;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}
