//! What the fused ops' CUDA sides share: a contiguous tensor's storage ([`Raw`]), output buffers
//! ([`alloc`]) turned into tensors ([`emit`]), launch configurations, and the [`launch!`] and
//! [`by_dtype!`] macros.
use std::sync::Mutex;

use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape};
use candle_core::{Storage, Tensor};

/// The kernel name suffix of an element type.
pub(super) fn suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        d => candle_core::bail!("fused op: dtype {d:?} not supported (f32 or bf16)"),
    })
}

/// A contiguous CUDA tensor's storage guard and element range.
pub(super) struct Raw<'a> {
    st: candle_core::StorageRef<'a>,
    pub(super) range: std::ops::Range<usize>,
}

impl<'a> Raw<'a> {
    pub(super) fn of(t: &'a Tensor) -> Result<Self> {
        let (st, l) = t.storage_and_layout();
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("fused op: input is not contiguous");
        };
        if !matches!(&*st, Storage::Cuda(_)) {
            candle_core::bail!("fused op: input is not on the GPU");
        }
        Ok(Self { st, range: a..b })
    }

    pub(super) fn cuda(&self) -> &CudaStorage {
        match &*self.st {
            Storage::Cuda(s) => s,
            _ => unreachable!("checked in Raw::of"),
        }
    }

    pub(super) fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        Ok(self.cuda().as_cuda_slice::<T>()?.slice(self.range.clone()))
    }
}

/// The element range of a contiguous layout.
pub(super) fn range_of(l: &Layout) -> Result<std::ops::Range<usize>> {
    l.contiguous_offsets()
        .map(|(a, b)| a..b)
        .ok_or_else(|| candle_core::Error::Msg("fused op: input is not contiguous".into()))
}

/// Turns storage computed outside candle into a tensor (via a no-graph op on `like`).
struct Emit(Mutex<Option<(CudaStorage, Shape)>>);

impl CustomOp1 for Emit {
    fn name(&self) -> &'static str {
        "emit"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(super::gpu_only("emit"))
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("emit: used twice".into()))
    }
}

/// `slice` (of `shape`, on `dev`) as a tensor without a graph.
pub(super) fn emit<T: CudaDType + DeviceRepr>(
    like: &Tensor,
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: &Shape,
) -> Result<Tensor> {
    let st = CudaStorage::wrap_cuda_slice(slice, dev.clone());
    like.apply_op1_no_bwd(&Emit(Mutex::new(Some((st, shape.clone())))))
}

/// An uninitialised buffer of `n` elements, for a kernel to fill.
pub(super) fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller's kernel writes all `n` elements before anything reads them.
    #[allow(unsafe_code)]
    unsafe {
        dev.alloc::<T>(n)
    }
}

/// One block of `threads` per row.
pub(super) fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches kernel `$name` of our module on `$dev`'s stream with `$cfg` and the arguments in order
/// (each a reference to a kernel argument).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $crate::gpu::nvrtc::function($dev, $name)?;
        let stream = $dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        $(
            let __a = $arg;
            candle_core::cuda_backend::cudarc::driver::PushKernelArg::arg(&mut b, __a);
        )+
        // SAFETY: argument types and counts match the kernel's signature in engine/kernels/ and
        // every buffer holds the elements the kernel indexes (checked by the callers).
        #[allow(unsafe_code)]
        let launched = unsafe { b.launch($cfg) };
        candle_core::cuda_backend::WrapErr::w(launched)?;
    }};
}

/// Dispatch on f32 / bf16: binds `$t` to the element type.
macro_rules! by_dtype {
    ($dt:expr, $t:ident => $body:block) => {
        match $dt {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            d => candle_core::bail!("fused op: dtype {d:?} not supported (f32 or bf16)"),
        }
    };
}

pub(super) use {by_dtype, launch};
