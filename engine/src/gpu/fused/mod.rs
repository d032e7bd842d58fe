//! Fused CUDA ops **with a backward pass** for the training path (candle's fused kernels have
//! none): RMSNorm ([`norm`]), RoPE ([`rope`]), SwiGLU ([`swiglu`]), attention ([`attention`]: flash
//! style, the score matrix never reaches memory; and the decode step), the vocabulary cross-entropy
//! ([`cross_entropy`]), the LoRA projection as one op ([`lora`]) and the optimiser over all LoRA
//! tensors in one launch ([`adamw`]). Each replaces a chain of 5-30 elementwise kernels, each a
//! full pass over memory, with one or two (on an H100 a 3B LoRA step spent most of its time in those
//! chains, not in matrix products).
//!
//! All take contiguous f32 or bf16 tensors on a CUDA device ([`supported`]); the model falls back to
//! its basic-ops path elsewhere. Kernels: [`super::nvrtc`]; what every op's CUDA side shares: the
//! `kernel` module. The A/B switches that turn ops off are [`super::switches`]'. Without the `cuda`
//! feature every op is declared all the same and fails with one error ([`gpu_only`]).
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::switches::switches;

/// Declares ops that run only in a CUDA build: with the `cuda` feature each calls its namesake in
/// the declaring file's `cuda` module; without it each fails with [`gpu_only`]'s error.
macro_rules! gpu_ops {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
    )+) => {$(
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(feature = "cuda")]
            {
                cuda::$name($($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = ($($arg,)*);
                Err($crate::gpu::fused::gpu_only(stringify!($name)))
            }
        }
    )+};
}

#[cfg(feature = "cuda")]
mod kernel;

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod lora;
pub mod norm;
pub mod rope;
pub mod swiglu;

pub use adamw::{adamw_multi, multi_supported, sum_squares};
pub use attention::{
    attention, attention_thd, attention_with_pads, flash_kernel_for, flash_supported, pads_tensor,
};
pub use cross_entropy::cross_entropy;
pub use lora::{LoraDropout, lora_linear, lora_op_enabled, lora_supported};
pub use norm::{rms_norm, rms_norm_fwd};
pub use rope::{rope, rope_thd};
pub use swiglu::swiglu;

/// The error of a fused op asked to run where it cannot: on the CPU, or in a build without the
/// `cuda` feature. `op` names it.
pub fn gpu_only(op: &str) -> candle_core::Error {
    let build = if cfg!(feature = "cuda") {
        ""
    } else {
        " (and this build has no `cuda` feature)"
    };
    candle_core::Error::Msg(format!("fused op {op}: runs on a CUDA device only{build}"))
}

/// Whether the fused ops can run on `t` (CUDA build, CUDA tensor, f32 or bf16, not switched off).
pub fn supported(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::BF16)
        && switches().fused
}

/// Hands back a precomputed output on forward and `bwd(grad)` on backward: how an output computed
/// without a graph (by a candle kernel that has no backward) is attached to its input.
pub struct Attach {
    out: Mutex<Option<Tensor>>,
    #[allow(clippy::type_complexity)]
    bwd: Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>,
}

impl Attach {
    /// `y` (computed from `x` without a graph) as an op on `x` whose backward is `bwd(grad)`.
    pub fn apply(
        x: &Tensor,
        y: Tensor,
        bwd: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        if !x.track_op() {
            return Ok(y);
        }
        x.apply_op1(Attach {
            out: Mutex::new(Some(y)),
            bwd: Box::new(bwd),
        })
    }

    fn take(&self) -> Result<Tensor> {
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("attach: forward ran twice".into()))?
            .contiguous()
    }
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "attach"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.take()?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            candle_core::Storage::Cpu(s) => Ok((s.try_clone(l)?, y.shape().clone())),
            _ => candle_core::bail!("attach: output is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let y = self.take()?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            candle_core::Storage::Cuda(s) => Ok((s.try_clone(l)?, y.shape().clone())),
            _ => candle_core::bail!("attach: output is not on the GPU"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        (self.bwd)(grad_res).map(Some)
    }
}

/// The scalar whose backward hands `g` to `y` unchanged: `seed(y, g).backward()` computes the
/// vector-Jacobian product `gᵀ·∂y/∂…` (layer recomputation's step) without the `sum(y ⊙ g)`
/// surrogate's elementwise product and full reduction (its value is never read; it is 0).
pub fn vjp_seed(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if y.shape() != g.shape() {
        candle_core::bail!("vjp seed: y {:?}, g {:?}", y.shape(), g.shape());
    }
    y.apply_op1(Seed(g.clone()))
}

struct Seed(Tensor);

impl CustomOp1 for Seed {
    fn name(&self) -> &'static str {
        "vjp-seed"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = s.device().clone();
        let z = dev.alloc_zeros::<f32>(1)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(z, dev),
            Shape::from(()),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, _grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn ops_fail_on_the_cpu_with_one_error_naming_the_op() {
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = super::swiglu(&x, &x).unwrap_err().to_string();
        assert!(
            err.contains("fused op swiglu: runs on a CUDA device only"),
            "{err}"
        );
        let err = super::cross_entropy(&x, &x).unwrap_err().to_string();
        assert!(
            err.contains("fused op cross_entropy: runs on a CUDA device only"),
            "{err}"
        );
    }
}
