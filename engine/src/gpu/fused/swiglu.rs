//! SwiGLU `silu(g)·u` on our kernels (`engine/kernels/swiglu.cu`): one pass forward, one back.
use candle_core::{Result, Tensor};

gpu_ops! {
    /// `silu(g) · u` in one pass (and one pass back).
    pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

    use crate::gpu::fused::kernel::{Raw, alloc, by_dtype, emit, launch, range_of, suffix};
    use crate::gpu::nvrtc;

    struct SwiGlu;

    impl CustomOp2 for SwiGlu {
        fn name(&self) -> &'static str {
            "fused-swiglu"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(crate::gpu::fused::gpu_only("swiglu"))
        }
        fn cuda_fwd(
            &self,
            g: &CudaStorage,
            gl: &Layout,
            u: &CudaStorage,
            ul: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (gr, ur) = (range_of(gl)?, range_of(ul)?);
            let dev = g.device().clone();
            let n = gl.shape().elem_count();
            let name = format!("swiglu_fwd_{}", suffix(g.dtype())?);
            let n64 = n as u64;
            by_dtype!(g.dtype(), T => {
                let y = alloc::<T>(&dev, n)?;
                if !(n.is_multiple_of(2) && gr.start.is_multiple_of(2) && ur.start.is_multiple_of(2)) {
                    candle_core::bail!("fused swiglu: odd size or offset (the kernel reads pairs)");
                }
                launch!(&dev, &name, nvrtc::elementwise(&dev, n / 2)?,
                    &g.as_cuda_slice::<T>()?.slice(gr), &u.as_cuda_slice::<T>()?.slice(ur), &y, &n64);
                Ok((CudaStorage::wrap_cuda_slice(y, dev), gl.shape().clone()))
            })
        }
        fn bwd(
            &self,
            g: &Tensor,
            u: &Tensor,
            _res: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let (rg, ru, rdy) = (Raw::of(g)?, Raw::of(u)?, Raw::of(&dy)?);
            let dev = rg.cuda().device().clone();
            let n = g.elem_count();
            let n64 = n as u64;
            let name = format!("swiglu_bwd_{}", suffix(g.dtype())?);
            by_dtype!(g.dtype(), T => {
                let dg = alloc::<T>(&dev, n)?;
                let du = alloc::<T>(&dev, n)?;
                launch!(&dev, &name, nvrtc::elementwise(&dev, n)?, &rg.view::<T>()?,
                    &ru.view::<T>()?, &rdy.view::<T>()?, &dg, &du, &n64);
                Ok((Some(emit(g, dg, &dev, g.shape())?), Some(emit(u, du, &dev, u.shape())?)))
            })
        }
    }

    pub(super) fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
        if g.shape() != u.shape() || g.dtype() != u.dtype() {
            candle_core::bail!("fused swiglu: {:?} vs {:?}", g.shape(), u.shape());
        }
        if !g.elem_count().is_multiple_of(2) {
            return g.silu()? * u;
        }
        // The kernel reads pairs: each operand must start on an even element.
        let even = |t: &Tensor| -> Result<Tensor> {
            let t = t.contiguous()?;
            if t.layout().start_offset().is_multiple_of(2) {
                Ok(t)
            } else {
                t.force_contiguous()
            }
        };
        even(g)?.apply_op2(&even(u)?, SwiGlu)
    }
}
