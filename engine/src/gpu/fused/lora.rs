//! The LoRA projection `y = x·Wᵀ + dropout(x)·Aᵀ·Bᵀ` as one op (`B` arrives with `scale` folded
//! in; `A` and `B` in `x`'s dtype, their graphs reaching the f32 master weights).
//!
//! Composed from candle ops, a LoRA projection costs, besides its matrix products, a copy of the
//! frozen product (an `Attach` output must be owned), a `[tokens, out]` add forward, and a
//! `[tokens, in]` gradient add backward, each a full pass over memory; on the 3B shapes those
//! passes took about a quarter of a training step. Here the products are cuBLAS calls on our
//! buffers and the LoRA terms are accumulated into the frozen ones by the GEMM itself (`beta = 1`):
//! forward `y = x·Wᵀ; y += h·Bᵀ` with `h = dropout(x)·Aᵀ`, backward `dh = dy·B`, `dx = dy·W;
//! dx += mask(dh·A)`, `dA = dhᵀ·dropout(x)`, `dB = dyᵀ·h`. The dropout mask is the stateless hash
//! of [`crate::gpu::dropout`] (same seed, same mask), recomputed in the backward instead of stored.
use candle_core::{Result, Tensor};

use crate::gpu::switches::switches;

/// The dropout of a LoRA input in [`lora_linear`]: the hash mask's seed, keep threshold (of
/// 2^24) and `1 / keep` ([`crate::gpu::dropout`]'s definition).
#[derive(Debug, Clone, Copy)]
pub struct LoraDropout {
    pub seed: u64,
    pub threshold: u32,
    pub scale: f32,
}

impl LoraDropout {
    /// `None` when `p` is 0 (the LoRA input is `x` itself).
    pub fn new(p: f64, seed: u64) -> Option<Self> {
        (p > 0.0).then(|| {
            let (threshold, scale) = crate::gpu::dropout::mask_params(p);
            Self {
                seed,
                threshold,
                scale,
            }
        })
    }
}

/// Whether this build runs LoRA projections on a GPU as [`lora_linear`] (not switched off).
pub fn lora_op_enabled() -> bool {
    cfg!(feature = "cuda") && switches().fused && switches().fused_lora
}

/// Whether [`lora_linear`] can run: the fused ops' conditions, a dense frozen weight of `x`'s
/// dtype on its device, not switched off (`SIZESPEC_FUSED_LORA=0`).
pub fn lora_supported(x: &Tensor, w: &Tensor) -> bool {
    super::supported(x)
        && lora_op_enabled()
        && w.dtype() == x.dtype()
        && w.device().same_device(x.device())
        && w.rank() == 2
}

gpu_ops! {
    /// `x·Wᵀ + dropout(x)·Aᵀ·Bᵀ` for `x: [rows, in]`, `w: [out, in]` (frozen: no gradient), `a: [r, in]`,
    /// `b: [out, r]` (scale folded in), all contiguous, one dtype (f32 or bf16), on one CUDA device.
    pub fn lora_linear(
        x: &Tensor,
        w: &Tensor,
        a: &Tensor,
        b: &Tensor,
        drop: Option<LoraDropout>,
    ) -> Result<Tensor>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::Mutex;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::{
        CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t,
    };
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor,
    };

    use super::LoraDropout;
    use crate::gpu::fused::kernel::{Raw, alloc, by_dtype, emit, launch, range_of, suffix};
    use crate::gpu::nvrtc;

    /// `1` and `0` of an element type (cuBLAS's alpha and beta).
    trait Unit: Copy {
        fn unit(v: f32) -> Self;
    }
    impl Unit for f32 {
        fn unit(v: f32) -> Self {
            v
        }
    }
    impl Unit for half::bf16 {
        fn unit(v: f32) -> Self {
            half::bf16::from_f32(v)
        }
    }

    /// Row-major `c[m, n] = op(a)·op(b)` (`+= ` when `acc`). `ta`: `a` is stored `[k, m]` (its
    /// transpose is used), else `[m, k]`; `tb`: `b` is stored `[n, k]`, else `[k, n]`.
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: Unit, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
        blas: &CudaBlas,
        (m, n, k): (usize, usize, usize),
        a: &A,
        ta: bool,
        b: &B,
        tb: bool,
        c: &mut C,
        acc: bool,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        // cuBLAS is column-major: row-major C[m, n] is column-major Cᵀ = op(b)ᵀ·op(a)ᵀ, so `b` is
        // cuBLAS's first operand and `a` its second.
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: T::unit(1.0),
            lda: if tb { k } else { n } as i32,
            ldb: if ta { m } else { k } as i32,
            beta: T::unit(if acc { 1.0 } else { 0.0 }),
            ldc: n as i32,
        };
        // SAFETY: every operand holds the elements its stored shape says (checked by the callers:
        // the op's inputs are contiguous with the dimensions read from their layouts, outputs are
        // allocated here with those sizes).
        #[allow(unsafe_code)]
        unsafe { blas.gemm(cfg, b, a, c) }.w()?;
        Ok(())
    }

    struct LoraOp {
        w: Tensor,
        drop: Option<LoraDropout>,
        /// `h = dropout(x)·Aᵀ` from the forward (`[tokens, r]`, small), for `dB`.
        h: Mutex<Option<CudaStorage>>,
    }

    struct Dims {
        rows: usize,
        inp: usize,
        out: usize,
        r: usize,
    }

    impl LoraOp {
        fn dims(xl: &Layout, al: &Layout, bl: &Layout, w: &Tensor) -> Result<Dims> {
            let (rows, inp) = xl.shape().dims2()?;
            let (r, ain) = al.shape().dims2()?;
            let (out, br) = bl.shape().dims2()?;
            let (wout, win) = w.dims2()?;
            if ain != inp || br != r || wout != out || win != inp {
                candle_core::bail!(
                    "lora op: x {:?}, A {:?}, B {:?}, W {:?}",
                    xl.dims(),
                    al.dims(),
                    bl.dims(),
                    w.dims()
                );
            }
            Ok(Dims { rows, inp, out, r })
        }

        /// `dropout(x)` into a new buffer (`None`: no dropout, use `x`).
        fn dropped<T: CudaDType + DeviceRepr>(
            &self,
            dev: &CudaDevice,
            x: &CudaView<'_, T>,
            n: usize,
            sfx: &str,
        ) -> Result<Option<CudaSlice<T>>> {
            let Some(d) = self.drop else {
                return Ok(None);
            };
            let xd = alloc::<T>(dev, n)?;
            let n64 = n as u64;
            launch!(
                dev,
                &format!("dropout_{sfx}_{sfx}"),
                nvrtc::elementwise(dev, n)?,
                x,
                &xd,
                &n64,
                &d.seed,
                &d.threshold,
                &d.scale
            );
            Ok(Some(xd))
        }
    }

    impl CustomOp3 for LoraOp {
        fn name(&self) -> &'static str {
            "lora-linear"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(crate::gpu::fused::gpu_only("lora_linear"))
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            a: &CudaStorage,
            al: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let d = Self::dims(xl, al, bl, &self.w)?;
            let dev = x.device().clone();
            let blas = dev.cublas_handle();
            let rw = Raw::of(&self.w)?;
            let (xr, ar, br) = (range_of(xl)?, range_of(al)?, range_of(bl)?);
            let (y, h) = by_dtype!(x.dtype(), T => {
                let xv = x.as_cuda_slice::<T>()?.slice(xr);
                let av = a.as_cuda_slice::<T>()?.slice(ar);
                let bv = b.as_cuda_slice::<T>()?.slice(br);
                let wv = rw.view::<T>()?;
                let mut h = alloc::<T>(&dev, d.rows * d.r)?;
                match self.dropped(&dev, &xv, d.rows * d.inp, suffix(x.dtype())?)? {
                    Some(xd) => gemm(&blas, (d.rows, d.r, d.inp), &xd, false, &av, true, &mut h, false)?,
                    None => gemm(&blas, (d.rows, d.r, d.inp), &xv, false, &av, true, &mut h, false)?,
                }
                let mut y = alloc::<T>(&dev, d.rows * d.out)?;
                gemm(&blas, (d.rows, d.out, d.inp), &xv, false, &wv, true, &mut y, false)?;
                gemm(&blas, (d.rows, d.out, d.r), &h, false, &bv, true, &mut y, true)?;
                (
                    CudaStorage::wrap_cuda_slice(y, dev.clone()),
                    CudaStorage::wrap_cuda_slice(h, dev.clone()),
                )
            });
            *self.h.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
            Ok((y, Shape::from((d.rows, d.out))))
        }

        fn bwd(
            &self,
            x: &Tensor,
            a: &Tensor,
            b: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let d = Self::dims(x.layout(), a.layout(), b.layout(), &self.w)?;
            let (rx, ra, rb, rw, rd) = (
                Raw::of(x)?,
                Raw::of(a)?,
                Raw::of(b)?,
                Raw::of(&self.w)?,
                Raw::of(&dy)?,
            );
            let dev = rx.cuda().device().clone();
            let blas = dev.cublas_handle();
            let guard = self.h.lock().unwrap_or_else(|e| e.into_inner());
            let Some(h) = guard.as_ref() else {
                candle_core::bail!("lora op: backward before its forward");
            };
            let sfx = suffix(x.dtype())?;
            by_dtype!(x.dtype(), T => {
                let (xv, av, bv, wv, dyv) = (rx.view::<T>()?, ra.view::<T>()?, rb.view::<T>()?,
                    rw.view::<T>()?, rd.view::<T>()?);
                let hv = h.as_cuda_slice::<T>()?;
                // dh = dy·B, dB = dyᵀ·h
                let mut dh = alloc::<T>(&dev, d.rows * d.r)?;
                gemm(&blas, (d.rows, d.r, d.out), &dyv, false, &bv, false, &mut dh, false)?;
                let mut db = alloc::<T>(&dev, d.out * d.r)?;
                gemm(&blas, (d.out, d.r, d.rows), &dyv, true, hv, false, &mut db, false)?;
                // dx = dy·W (+ mask(dh·A)), dA = dhᵀ·dropout(x)
                let mut dx = alloc::<T>(&dev, d.rows * d.inp)?;
                gemm(&blas, (d.rows, d.inp, d.out), &dyv, false, &wv, false, &mut dx, false)?;
                let mut da = alloc::<T>(&dev, d.r * d.inp)?;
                match (self.drop, self.dropped(&dev, &xv, d.rows * d.inp, sfx)?) {
                    (Some(drop), Some(mut xd)) => {
                        gemm(&blas, (d.r, d.inp, d.rows), &dh, true, &xd, false, &mut da, false)?;
                        // xd is spent: reuse it for dh·A, then add its masked values into dx.
                        gemm(&blas, (d.rows, d.inp, d.r), &dh, false, &av, false, &mut xd, false)?;
                        let n = d.rows * d.inp;
                        let n64 = n as u64;
                        launch!(&dev, &format!("dropout_acc_{sfx}"),
                            nvrtc::elementwise(&dev, n)?, &xd, &dx, &n64, &drop.seed, &drop.threshold, &drop.scale);
                    }
                    _ => {
                        gemm(&blas, (d.r, d.inp, d.rows), &dh, true, &xv, false, &mut da, false)?;
                        gemm(&blas, (d.rows, d.inp, d.r), &dh, false, &av, false, &mut dx, true)?;
                    }
                }
                Ok((
                    Some(emit(x, dx, &dev, x.shape())?),
                    Some(emit(a, da, &dev, a.shape())?),
                    Some(emit(b, db, &dev, b.shape())?),
                ))
            })
        }
    }

    pub(super) fn lora_linear(
        x: &Tensor,
        w: &Tensor,
        a: &Tensor,
        b: &Tensor,
        drop: Option<LoraDropout>,
    ) -> Result<Tensor> {
        if [w, a, b].iter().any(|t| t.dtype() != x.dtype()) {
            candle_core::bail!(
                "lora op: dtypes x {:?}, W {:?}, A {:?}, B {:?}",
                x.dtype(),
                w.dtype(),
                a.dtype(),
                b.dtype()
            );
        }
        let op = LoraOp {
            w: w.contiguous()?,
            drop,
            h: Mutex::new(None),
        };
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
    }
}
