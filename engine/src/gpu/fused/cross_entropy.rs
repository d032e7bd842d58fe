//! The vocabulary cross-entropy on our kernels (`engine/kernels/cross_entropy.cu`): logits read in
//! their own dtype, one block per row, one pass forward and one back.
use candle_core::{Result, Tensor};

gpu_ops! {
    /// Per-row `logsumexp(logits[r]) - logits[r, targets[r]]` (f32 `[n]`), reading the logits in
    /// their own dtype: no f32 copy of a `[n, vocab]` matrix, one pass forward and one back.
    pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

    use crate::gpu::fused::kernel::{
        Raw, alloc, by_dtype, emit, launch, range_of, rows_cfg, suffix,
    };

    struct CrossEntropy;

    impl CustomOp2 for CrossEntropy {
        fn name(&self) -> &'static str {
            "fused-cross-entropy"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(crate::gpu::fused::gpu_only("cross_entropy"))
        }
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            t: &CudaStorage,
            tl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (xr, tr) = (range_of(xl)?, range_of(tl)?);
            let (n, v) = xl.shape().dims2()?;
            let dev = x.device().clone();
            let name = format!("ce_fwd_{}", suffix(x.dtype())?);
            let v32 = v as i32;
            let loss = alloc::<f32>(&dev, n)?;
            let tv = t.as_cuda_slice::<u32>()?.slice(tr);
            by_dtype!(x.dtype(), T => {
                launch!(&dev, &name, rows_cfg(n, 1024), &x.as_cuda_slice::<T>()?.slice(xr), &tv, &loss, &v32);
            });
            Ok((CudaStorage::wrap_cuda_slice(loss, dev), Shape::from(n)))
        }
        fn bwd(
            &self,
            x: &Tensor,
            t: &Tensor,
            _res: &Tensor,
            g: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let (n, v) = x.dims2()?;
            let (rx, rt, rg) = (Raw::of(x)?, Raw::of(t)?, Raw::of(&g)?);
            let dev = rx.cuda().device().clone();
            let name = format!("ce_bwd_{}", suffix(x.dtype())?);
            let v32 = v as i32;
            by_dtype!(x.dtype(), T => {
                let dx = alloc::<T>(&dev, n * v)?;
                launch!(&dev, &name, rows_cfg(n, 1024), &rx.view::<T>()?, &rt.view::<u32>()?,
                    &rg.view::<f32>()?, &dx, &v32);
                Ok((Some(emit(x, dx, &dev, x.shape())?), None))
            })
        }
    }

    pub(super) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let targets = targets.to_dtype(DType::U32)?.contiguous()?;
        logits.contiguous()?.apply_op2(&targets, CrossEntropy)
    }
}
