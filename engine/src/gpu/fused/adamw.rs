//! The optimiser over every LoRA tensor in one launch (`engine/kernels/adamw.cu`): AdamW's update
//! and the gradient norm's sum of squares, each one kernel for all tensors.
use candle_core::{DType, Result, Tensor};

use crate::gpu::switches::switches;

/// Whether [`adamw_multi`] / [`sum_squares`] can run: every tensor f32 on one CUDA device.
pub fn multi_supported(ts: &[&Tensor]) -> bool {
    cfg!(feature = "cuda")
        && switches().fused
        && switches().fused_adamw
        && !ts.is_empty()
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

gpu_ops! {
    /// `Σ t²` over every tensor in one launch (f32, contiguous); deterministic (no atomics).
    pub fn sum_squares(ts: &[&Tensor]) -> Result<f64>;
    /// One AdamW update of every `(param, grad, m, v)` quadruple in one launch, in place.
    /// `h = [lr, beta1, beta2, eps, weight_decay, bias-correction m, bias-correction v, grad scale]`.
    pub fn adamw_multi(
        params: &[&Tensor],
        grads: &[&Tensor],
        m: &[&Tensor],
        v: &[&Tensor],
        h: [f32; 8],
    ) -> Result<()>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use candle_core::{Result, Storage, Tensor};

    use crate::gpu::fused::kernel::launch;

    /// Device address of a contiguous f32 CUDA tensor's first element.
    fn f32_ptr(t: &Tensor) -> Result<u64> {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        let (st, l) = t.storage_and_layout();
        let Some((start, _)) = l.contiguous_offsets() else {
            candle_core::bail!("multi-tensor op: tensor is not contiguous");
        };
        let Storage::Cuda(s) = &*st else {
            candle_core::bail!("multi-tensor op: tensor is not on the GPU");
        };
        let stream = s.device().cuda_stream();
        let (ptr, _sync) = s.as_cuda_slice::<f32>()?.device_ptr(&stream);
        Ok(ptr + (start * 4) as u64)
    }

    fn multi_cfg(sizes: &[u64]) -> LaunchConfig {
        let largest = sizes.iter().copied().max().unwrap_or(1) as usize;
        LaunchConfig {
            grid_dim: (
                largest.div_ceil(256).clamp(1, 64) as u32,
                sizes.len() as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(super) fn sum_squares(ts: &[&Tensor]) -> Result<f64> {
        let Some(first) = ts.first() else {
            return Ok(0.0);
        };
        let dev = first.device().as_cuda_device()?.clone();
        let ptrs = ts
            .iter()
            .map(|t| f32_ptr(t))
            .collect::<Result<Vec<u64>>>()?;
        let sizes: Vec<u64> = ts.iter().map(|t| t.elem_count() as u64).collect();
        let stream = dev.cuda_stream();
        let ptrs_d = stream.clone_htod(&ptrs).w()?;
        let sizes_d = stream.clone_htod(&sizes).w()?;
        let cfg = multi_cfg(&sizes);
        let out = dev.alloc_zeros::<f32>((cfg.grid_dim.0 * cfg.grid_dim.1) as usize)?;
        launch!(&dev, "sumsq_multi", cfg, &ptrs_d, &sizes_d, &out);
        // Partials added on the host in a fixed order: bit-identical norms run to run.
        let host = stream.clone_dtoh(&out).w()?;
        Ok(host.iter().map(|&p| f64::from(p)).sum())
    }

    pub(super) fn adamw_multi(
        params: &[&Tensor],
        grads: &[&Tensor],
        m: &[&Tensor],
        v: &[&Tensor],
        h: [f32; 8],
    ) -> Result<()> {
        let Some(first) = params.first() else {
            return Ok(());
        };
        let dev = first.device().as_cuda_device()?.clone();
        let mut table = Vec::with_capacity(4 * params.len());
        let mut sizes = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let n = params[i].elem_count();
            if [grads[i], m[i], v[i]].iter().any(|t| t.elem_count() != n) {
                candle_core::bail!("adamw: tensor {i} has mismatched sizes");
            }
            table.extend([
                f32_ptr(params[i])?,
                f32_ptr(grads[i])?,
                f32_ptr(m[i])?,
                f32_ptr(v[i])?,
            ]);
            sizes.push(n as u64);
        }
        let stream = dev.cuda_stream();
        let table_d = stream.clone_htod(&table).w()?;
        let sizes_d = stream.clone_htod(&sizes).w()?;
        let [lr, b1, b2, eps, wd, sm, sv, gs] = h;
        launch!(
            &dev,
            "adamw_multi",
            multi_cfg(&sizes),
            &table_d,
            &sizes_d,
            &lr,
            &b1,
            &b2,
            &eps,
            &wd,
            &sm,
            &sv,
            &gs
        );
        Ok(())
    }
}
