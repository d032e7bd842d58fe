//! Inverted dropout with a stateless mask: element `i` of a tensor dropped with seed `s` is kept
//! when the top 24 bits of `mix(s ^ mix(i))` (splitmix64's finaliser) fall below `keep · 2^24`.
//!
//! No generator state lives on the device, so replaying a forward pass (layer recomputation) only
//! needs the same seed, and the backward pass multiplies by the same mask without storing it. The
//! CUDA kernel and the CPU implementation here compute the same function (the GPU check compares
//! them); the output is f32 (the LoRA branch runs in f32), the gradient goes back in the input's dtype.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// splitmix64's finaliser (the same as the kernel's `mix`).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `(x ⊙ mask) / (1 - p)` as f32, the mask a function of `(seed, element index)`.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    dropout_as(x, p, seed, DType::F32)
}

/// [`dropout`] with the result in `out` (f32 or bf16; the gradient returns in `x`'s dtype).
pub fn dropout_as(x: &Tensor, p: f64, seed: u64, out: DType) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} is not in [0, 1)");
    }
    if p == 0.0 {
        return x.to_dtype(out);
    }
    x.contiguous()?.apply_op1(HashDropout::new(p, seed, out))
}

/// A kernel argument of any element type (lets one launch closure take f32 or bf16 views).
#[cfg(feature = "cuda")]
trait PushArg {
    fn push<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>);
}

#[cfg(feature = "cuda")]
impl<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr> PushArg
    for candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>
{
    fn push<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        b.arg(self);
    }
}

#[cfg(feature = "cuda")]
impl<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr> PushArg
    for candle_core::cuda_backend::cudarc::driver::CudaSlice<T>
{
    fn push<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        b.arg(self);
    }
}

#[derive(Debug, Clone, Copy)]
struct HashDropout {
    seed: u64,
    threshold: u32,
    scale: f32,
    p: f64,
    out: DType,
}

/// The kernels' mask parameters for drop probability `p`: keep threshold (of 2^24), `1 / keep`.
pub(crate) fn mask_params(p: f64) -> (u32, f32) {
    let keep = 1.0 - p;
    (
        (keep * f64::from(1u32 << 24)).round() as u32,
        (1.0 / keep) as f32,
    )
}

impl HashDropout {
    fn new(p: f64, seed: u64, out: DType) -> Self {
        let (threshold, scale) = mask_params(p);
        Self {
            seed,
            threshold,
            scale,
            p,
            out,
        }
    }

    fn kept(&self, i: u64) -> bool {
        ((mix(self.seed ^ mix(i)) >> 40) as u32) < self.threshold
    }
}

impl CustomOp1 for HashDropout {
    fn name(&self) -> &'static str {
        "hash-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("hash-dropout: input must be contiguous");
        };
        let xs: Vec<f32> = match s {
            CpuStorage::F32(v) => v[start..end].to_vec(),
            CpuStorage::BF16(v) => v[start..end].iter().map(|h| h.to_f32()).collect(),
            CpuStorage::F16(v) => v[start..end].iter().map(|h| h.to_f32()).collect(),
            other => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("hash-dropout: unsupported dtype {:?}", other.dtype())
            }
        };
        let ys: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if self.kept(i as u64) {
                    x * self.scale
                } else {
                    0.0
                }
            })
            .collect();
        let out = match self.out {
            DType::F32 => CpuStorage::F32(ys),
            DType::BF16 => CpuStorage::BF16(ys.iter().map(|&y| half::bf16::from_f32(y)).collect()),
            DType::F16 => CpuStorage::F16(ys.iter().map(|&y| half::f16::from_f32(y)).collect()),
            d => candle_core::bail!("hash-dropout: unsupported output dtype {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("hash-dropout: input must be contiguous");
        };
        let dev = s.device().clone();
        let n = end - start;
        let name = match (s.dtype(), self.out) {
            (DType::F32, DType::F32) => "dropout_f32_f32",
            (DType::BF16, DType::F32) => "dropout_bf16_f32",
            (DType::F32, DType::BF16) => "dropout_f32_bf16",
            (DType::BF16, DType::BF16) => "dropout_bf16_bf16",
            (a, b) => candle_core::bail!("hash-dropout on the GPU: {a:?} -> {b:?} not supported"),
        };
        let func = super::nvrtc::function(&dev, name)?;
        let stream = dev.cuda_stream();
        let (n64, seed, thr, scale) = (n as u64, self.seed, self.threshold, self.scale);
        let cfg = super::nvrtc::elementwise(&dev, n)?;
        // Input and output as typed views (f32 or bf16 each); the kernel name fixed the pair.
        let launch = |x: &dyn PushArg, y: &dyn PushArg| -> Result<()> {
            let mut b = stream.launch_builder(&func);
            x.push(&mut b);
            y.push(&mut b);
            b.arg(&n64).arg(&seed).arg(&thr).arg(&scale);
            // SAFETY: the kernel reads `n` elements of `x` and writes `n` of `y`, both that long.
            #[allow(unsafe_code)]
            unsafe { b.launch(cfg) }.map_err(candle_core::Error::wrap)?;
            Ok(())
        };
        let out = match (s.dtype(), self.out) {
            (DType::F32, DType::F32) => {
                let x = s.as_cuda_slice::<f32>()?.slice(start..end);
                let y = dev.alloc_zeros::<f32>(n)?;
                launch(&x, &y)?;
                candle_core::CudaStorage::wrap_cuda_slice(y, dev)
            }
            (DType::BF16, DType::F32) => {
                let x = s.as_cuda_slice::<half::bf16>()?.slice(start..end);
                let y = dev.alloc_zeros::<f32>(n)?;
                launch(&x, &y)?;
                candle_core::CudaStorage::wrap_cuda_slice(y, dev)
            }
            (DType::F32, _) => {
                let x = s.as_cuda_slice::<f32>()?.slice(start..end);
                let y = dev.alloc_zeros::<half::bf16>(n)?;
                launch(&x, &y)?;
                candle_core::CudaStorage::wrap_cuda_slice(y, dev)
            }
            _ => {
                let x = s.as_cuda_slice::<half::bf16>()?.slice(start..end);
                let y = dev.alloc_zeros::<half::bf16>(n)?;
                launch(&x, &y)?;
                candle_core::CudaStorage::wrap_cuda_slice(y, dev)
            }
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d/dx of x·m/keep is m/keep: the same mask applied to the incoming gradient.
        let out = match arg.dtype() {
            d @ (DType::F32 | DType::BF16) => d,
            _ => DType::F32,
        };
        let g = match grad_res.dtype() {
            DType::F32 | DType::BF16 => grad_res.contiguous()?,
            _ => grad_res.to_dtype(DType::F32)?.contiguous()?,
        };
        let g = g
            .apply_op1(HashDropout::new(self.p, self.seed, out))?
            .to_dtype(arg.dtype())?;
        Ok(Some(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn keeps_about_one_minus_p_scales_and_replays() {
        let x = Tensor::ones((64, 256), DType::F32, &Device::Cpu).unwrap();
        let y = dropout(&x, 0.25, 7).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&e| e != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 1.0 / 0.75).abs() < 1e-6));
        // The same seed replays the mask; another seed draws another.
        let again: Vec<f32> = dropout(&x, 0.25, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, again);
        let other: Vec<f32> = dropout(&x, 0.25, 8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(v, other);
    }

    #[test]
    fn gradient_is_the_same_mask_in_the_input_dtype() {
        let x = Var::from_tensor(
            &Tensor::arange(1f32, 513., &Device::Cpu)
                .unwrap()
                .reshape((2, 256))
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let y = dropout(x.as_tensor(), 0.5, 3).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::BF16);
        let g: Vec<f32> = g
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (gi, yi) in g.iter().zip(&y) {
            // kept: y = 2x and dy/dx = 2; dropped: both 0.
            assert_eq!(*gi == 0.0, *yi == 0.0);
            if *gi != 0.0 {
                assert_eq!(*gi, 2.0);
            }
        }
    }
}
