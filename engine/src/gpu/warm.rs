//! Warm-up of a fresh process's GPU before it takes work: the first use of each CUDA module costs
//! a compile (our kernels: NVRTC, unless the kernel cache has them) or a driver JIT (candle's PTX,
//! unless the driver's JIT cache has it), and cuBLAS initialises on its first GEMM. Paid here, at
//! start-up, instead of inside the first task's time.
use candle_core::{Device, Result};

/// Loads our kernel module on `device` and runs each kernel family once on tiny tensors — RMSNorm,
/// RoPE, SwiGLU, flash attention (tensor cores and CUDA cores, both layouts) with their backward
/// passes, the decode step, cross-entropy, the LoRA projection with dropout, the optimiser — plus
/// candle's matmul (cuBLAS), a quantised matmul and the elementwise, reduction and indexing ops a
/// task uses, then synchronises and releases what it allocated. A no-op on the CPU.
pub fn warm_up(device: &Device) -> Result<()> {
    if !device.is_cuda() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    {
        cuda::warm_up(device)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(super::fused::gpu_only("warm_up"))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{DType, Device, Module, Result, Tensor, Var};

    use crate::gpu::fused;

    /// Backward from the sum of `y` (in f32).
    fn backward(y: &Tensor) -> Result<()> {
        y.to_dtype(DType::F32)?.sum_all()?.backward().map(|_| ())
    }

    fn var(dims: &[usize], dtype: DType, device: &Device) -> Result<Var> {
        Var::from_tensor(&Tensor::randn(0f32, 1f32, dims, device)?.to_dtype(dtype)?)
    }

    pub(super) fn warm_up(device: &Device) -> Result<()> {
        crate::gpu::nvrtc::load(device.as_cuda_device()?)?;
        for dtype in [DType::BF16, DType::F32] {
            let x = var(&[4, 128], dtype, device)?;
            let w = Tensor::ones(128, dtype, device)?;
            backward(&fused::rms_norm(x.as_tensor(), &w, 1e-5)?)?;
            let (g, u) = (
                var(&[4, 128], dtype, device)?,
                var(&[4, 128], dtype, device)?,
            );
            backward(&fused::swiglu(g.as_tensor(), u.as_tensor())?)?;
            let cos = Tensor::ones((16, 32), dtype, device)?;
            let sin = Tensor::zeros((16, 32), dtype, device)?;
            let r = var(&[1, 2, 16, 64], dtype, device)?;
            backward(&fused::rope(r.as_tensor(), &cos, &sin)?)?;
            let r = var(&[1, 16, 2, 64], dtype, device)?;
            backward(&fused::rope_thd(r.as_tensor(), &cos, &sin)?)?;
            // Flash attention forward and backward ([b, h, t, d]; bf16 on tensor cores where the
            // GPU has them), then on the projections' [b, t, h, d] layout.
            let [q, k, v] = [(); 3].map(|_| var(&[1, 2, 16, 64], dtype, device));
            let (q, k, v) = (q?, k?, v?);
            let o = fused::attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &[0], 0, None)?;
            backward(&o)?;
            let pads = fused::pads_tensor(&[0], device)?;
            let t = |x: &Var| x.as_tensor().transpose(1, 2)?.contiguous();
            backward(&fused::attention_thd(
                &t(&q)?,
                &t(&k)?,
                &t(&v)?,
                &pads,
                0,
                None,
            )?)?;
            // A decode step over 64 cached columns: two key splits, then their merge.
            let q1 = Tensor::randn(0f32, 1f32, (1, 2, 1, 64), device)?.to_dtype(dtype)?;
            let kv = Tensor::randn(0f32, 1f32, (1, 2, 64, 64), device)?.to_dtype(dtype)?;
            fused::attention(&q1, &kv, &kv, &[0], 63, None)?;
            let logits = var(&[4, 256], dtype, device)?;
            let targets = Tensor::new(&[1u32, 2, 3, 4], device)?;
            backward(&fused::cross_entropy(logits.as_tensor(), &targets)?)?;
            // The LoRA projection: cuBLAS GEMMs and the dropout kernels both ways.
            let lx = var(&[4, 128], dtype, device)?;
            let lw = Tensor::randn(0f32, 1f32, (64, 128), device)?.to_dtype(dtype)?;
            let (a, b) = (
                var(&[8, 128], dtype, device)?,
                var(&[64, 8], dtype, device)?,
            );
            let drop = fused::LoraDropout::new(0.1, 7);
            let y = fused::lora_linear(lx.as_tensor(), &lw, a.as_tensor(), b.as_tensor(), drop)?;
            backward(&y)?;
            // candle's own kernels: cuBLAS matmul, casts, elementwise, reductions, indexing.
            let m = lx.as_tensor().matmul(&lw.t()?)?;
            let s = candle_nn::ops::softmax_last_dim(&m)?;
            let idx = Tensor::new(&[0u32, 2], device)?;
            let picked = s.index_select(&idx, 0)?.exp()?.silu()?.affine(2.0, 1.0)?;
            let mask = picked.ge(1.0)?;
            let kept = mask.where_cond(&picked, &picked.zeros_like()?)?;
            kept.argmax_keepdim(1)?;
            kept.max_keepdim(1)?;
            candle_nn::ops::rms_norm(&m, &Tensor::ones(64, dtype, device)?, 1e-5)?;
            crate::gpu::dropout::dropout_as(&m, 0.1, 3, dtype)?;
        }
        // The optimiser over f32 tensors, and a quantised matmul (candle's takes f32 activations).
        let ts: Vec<Tensor> = (0..4)
            .map(|_| Tensor::rand(0f32, 1f32, 64, device))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        fused::sum_squares(&refs)?;
        let h = [1e-4, 0.9, 0.999, 1e-8, 0.0, 1.0, 1.0, 1.0];
        fused::adamw_multi(&refs[..1], &refs[1..2], &refs[2..3], &refs[3..], h)?;
        let qw = Tensor::randn(0f32, 1f32, (32, 256), device)?;
        let qm = QMatMul::from_qtensor(QTensor::quantize(&qw, GgmlDType::Q4K)?)?;
        qm.forward(&Tensor::randn(0f32, 1f32, (4, 256), device)?)?;
        device.synchronize()?;
        crate::gpu::release_cached(device)
    }
}
