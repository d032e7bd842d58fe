//! GPU plumbing that candle does not do for us: opening a CUDA device tuned for one-stream use,
//! releasing the stream-ordered memory pool after a task, and our own kernels (CUDA C compiled at
//! run time with NVRTC, so the build needs no nvcc for them).
//!
//! - [`open_cuda`]: a device on its **own stream** (every thread's ops are ordered on it), with
//!   cudarc's per-tensor event tracking off (it records CUDA events on every launch to order several
//!   streams; with one stream it is pure launch overhead) and the memory pool told to keep freed
//!   memory instead of returning it to the driver at each synchronisation (what PyTorch's caching
//!   allocator does). [`release_cached`] gives it back after a task.
//! - [`mem`]: memory in use and free on a device (process RSS on the CPU), for progress reports
//!   and for choosing how much of the backward graph to keep.
//! - [`dropout`]: inverted dropout whose mask is a hash of `(seed, element index)`: no random state
//!   on the device, so a replayed forward (layer recomputation) gets the same mask from the same seed.
//! - [`fused`]: our ops with a backward pass on our kernels (CUDA C in `engine/kernels/`, compiled
//!   by `nvrtc` to a CUBIN, kept in the on-disk [`kernel_cache`]).
//! - [`warm_up`]: a fresh process's first use of every kernel module and of cuBLAS, paid at start-up.
//! - [`switches`]: the environment switches for A/B benchmarks (`SIZESPEC_FUSED=0`, ...), all read
//!   once per process and documented there.
pub mod dropout;
pub mod fused;
pub mod kernel_cache;
pub mod mem;
#[cfg(feature = "cuda")]
pub(crate) mod nvrtc;
pub mod prof;
pub mod switches;
mod warm;

pub use warm::warm_up;

use candle_core::{Device, Result};

/// Open CUDA device `ordinal` for this engine (see the module docs). Without the `cuda` feature
/// this fails as `Device::new_cuda` does.
pub fn open_cuda(ordinal: usize) -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{result::mem_pool, sys};
        let dev = candle_core::CudaDevice::new_with_stream(ordinal)?;
        if !switches::switches().cuda_events {
            // SAFETY: every op of this device runs on its one stream (`new_with_stream`), so
            // stream order alone keeps uses and frees ordered; this runs before any tensor exists.
            #[allow(unsafe_code)]
            unsafe {
                dev.disable_event_tracking()
            };
        }
        if !switches::switches().cuda_pool_release {
            let pool = default_pool(&dev)?;
            // SAFETY: the pool belongs to the live device; the attribute takes a u64.
            #[allow(unsafe_code)]
            unsafe {
                let mut keep = u64::MAX;
                mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep as *mut u64).cast(),
                )
                .map_err(candle_core::Error::wrap)?;
            }
        }
        Ok(Device::Cuda(dev))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::new_cuda(ordinal)
    }
}

/// Give the memory pool's cached, unused memory back to the driver (after a task, so the next
/// one — or another process — sees it free). A no-op on the CPU.
pub fn release_cached(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use candle_core::backend::BackendDevice;
        use candle_core::cuda_backend::cudarc::driver::result::mem_pool;
        dev.synchronize()?;
        let pool = default_pool(dev)?;
        // SAFETY: the pool belongs to this live device; trimming only releases unused memory.
        #[allow(unsafe_code)]
        unsafe {
            mem_pool::trim_to(pool, 0).map_err(candle_core::Error::wrap)?;
        }
    }
    let _ = device;
    Ok(())
}

/// The device's default stream-ordered memory pool (the one candle's allocations come from).
#[cfg(feature = "cuda")]
fn default_pool(
    dev: &candle_core::CudaDevice,
) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    let cu_dev = dev.cuda_stream().context().cu_device();
    // SAFETY: the device handle comes from the device's live context.
    #[allow(unsafe_code)]
    unsafe {
        candle_core::cuda_backend::cudarc::driver::result::device::get_default_mem_pool(cu_dev)
            .map_err(candle_core::Error::wrap)
    }
}
