//! Fused CUDA ops **with a backward pass** for the training path (candle's fused kernels have
//! none): RMSNorm, RoPE, SwiGLU, attention (flash style: the score matrix never reaches memory)
//! and the vocabulary cross-entropy. Each replaces a chain of 5-30 elementwise kernels, each a full
//! pass over memory, with one or two (GPU.md: on an H100 a 3B LoRA step spent most of its time in
//! those chains, not in matrix products).
//!
//! All take contiguous f32 or bf16 tensors on a CUDA device ([`supported`]); the model falls back to
//! its basic-ops path elsewhere. Kernels: [`super::nvrtc`]. `SIZESPEC_FUSED=0` turns them all off and
//! `SIZESPEC_FLASH=0` only the attention, `SIZESPEC_FLASH_TC=0` its tensor-core kernels,
//! `SIZESPEC_FLASH_DECODE=0` the decode-step kernel, `SIZESPEC_FUSED_LORA=0` the one-op LoRA
//! projection (for A/B benchmarks).
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Whether the fused ops can run on `t` (CUDA build, CUDA tensor, f32 or bf16, not switched off).
pub fn supported(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::BF16)
        && !off("SIZESPEC_FUSED")
}

/// Whether the flash attention kernel may be used for these queries.
pub fn flash_supported(q: &Tensor) -> bool {
    q.dims()
        .last()
        .is_some_and(|&d| flash_kernel_for(q.device(), q.dtype(), d))
}

/// Whether attention on `device` in `dtype` with heads of `head_dim` runs in the flash kernel
/// (which computes the mask itself: [`crate::model::AttnCtx`] then builds none).
pub fn flash_kernel_for(device: &candle_core::Device, dtype: DType, head_dim: usize) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16)
        && !off("SIZESPEC_FUSED")
        && !off("SIZESPEC_FLASH")
        && matches!(head_dim, 64 | 128)
}

/// Left padding per row as the attention kernel reads it (`u32 [b]` on `device`): built once per
/// batch step, not once per layer.
pub fn pads_tensor(pads: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<u32> = pads.iter().map(|&p| p as u32).collect();
    Tensor::from_vec(v, pads.len(), device)
}

/// Whether the A/B switch `var` is set to `0`. Read once per process: these checks sit on the
/// per-op hot path, and an environment lookup takes a lock and allocates.
fn off(var: &'static str) -> bool {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static SWITCHES: OnceLock<Mutex<HashMap<&'static str, bool>>> = OnceLock::new();
    let mut map = SWITCHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *map.entry(var)
        .or_insert_with(|| std::env::var(var).is_ok_and(|v| v == "0"))
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

/// RMSNorm `x · (mean(x²) + eps)^-½ · w` over the last dimension: our kernels forward
/// ([`rms_norm_fwd`]) and backward (input gradient only: the norm weight is frozen).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = rms_norm_fwd(&x.detach(), w, eps)?;
    let (xd, w) = (x.detach(), w.clone());
    Attach::apply(&x, y, move |g| imp::rms_bwd(&xd, &w, &g.contiguous()?, eps))
}

/// RMSNorm forward without a graph: our kernel (one block per row, element pairs), candle's when
/// the row length or an offset is odd.
pub fn rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    match imp::rms_fwd(x, w, eps)? {
        Some(y) => Ok(y),
        None => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32),
    }
}

/// Rotary embedding, HF "rotate half" layout: candle's fused kernel both ways (the backward is the
/// rotation by the opposite angle: `sin → -sin`). `x: [b, h, t, d]`, `cos`/`sin`: `[b, t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x.detach(), cos, sin)?;
    let (cos, neg_sin) = (cos.clone(), sin.neg()?);
    Attach::apply(&x, y, move |g| {
        candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &neg_sin)
    })
}

/// [`rope`] on `x: [b, t, h, d]` (candle's `rope_thd` kernel both ways).
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope_thd(&x.detach(), cos, sin)?;
    let (cos, neg_sin) = (cos.clone(), sin.neg()?);
    Attach::apply(&x, y, move |g| {
        candle_nn::rotary_emb::rope_thd(&g.contiguous()?, &cos, &neg_sin)
    })
}

pub use imp::{attention, attention_thd, attention_with_pads, cross_entropy, lora_linear, swiglu};

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
    cfg!(feature = "cuda") && !off("SIZESPEC_FUSED") && !off("SIZESPEC_FUSED_LORA")
}

/// Whether [`lora_linear`] can run: the fused ops' conditions, a dense frozen weight of `x`'s
/// dtype on its device, not switched off (`SIZESPEC_FUSED_LORA=0`).
pub fn lora_supported(x: &Tensor, w: &Tensor) -> bool {
    supported(x)
        && lora_op_enabled()
        && w.dtype() == x.dtype()
        && w.device().same_device(x.device())
        && w.rank() == 2
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};

    fn no_cuda<T>() -> Result<T> {
        candle_core::bail!("fused ops need a build with the `cuda` feature")
    }
    pub(super) fn rms_bwd(_: &Tensor, _: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        no_cuda()
    }
    pub(super) fn rms_fwd(_: &Tensor, _: &Tensor, _: f64) -> Result<Option<Tensor>> {
        no_cuda()
    }
    pub fn swiglu(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        no_cuda()
    }
    pub fn cross_entropy(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        no_cuda()
    }
    pub fn attention(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &[usize],
        _: usize,
        _: Option<usize>,
    ) -> Result<Tensor> {
        no_cuda()
    }
    pub fn attention_with_pads(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: usize,
        _: Option<usize>,
    ) -> Result<Tensor> {
        no_cuda()
    }
    pub fn attention_thd(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: usize,
        _: Option<usize>,
    ) -> Result<Tensor> {
        no_cuda()
    }
    pub fn sum_squares(_: &[&Tensor]) -> Result<f64> {
        no_cuda()
    }
    pub fn lora_linear(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: Option<super::LoraDropout>,
    ) -> Result<Tensor> {
        no_cuda()
    }
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_multi(
        _: &[&Tensor],
        _: &[&Tensor],
        _: &[&Tensor],
        _: &[&Tensor],
        _: [f32; 8],
    ) -> Result<()> {
        no_cuda()
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, sys,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, CustomOp2, CustomOp3, Storage};
    use std::sync::Arc;

    use crate::gpu::nvrtc;

    fn suffix(dt: DType) -> Result<&'static str> {
        Ok(match dt {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            d => candle_core::bail!("fused op: dtype {d:?} not supported (f32 or bf16)"),
        })
    }

    /// A contiguous CUDA tensor's storage guard and element range.
    struct Raw<'a> {
        st: candle_core::StorageRef<'a>,
        range: std::ops::Range<usize>,
    }

    impl<'a> Raw<'a> {
        fn of(t: &'a Tensor) -> Result<Self> {
            let (st, l) = t.storage_and_layout();
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("fused op: input is not contiguous");
            };
            if !matches!(&*st, Storage::Cuda(_)) {
                candle_core::bail!("fused op: input is not on the GPU");
            }
            Ok(Self { st, range: a..b })
        }

        fn cuda(&self) -> &CudaStorage {
            match &*self.st {
                Storage::Cuda(s) => s,
                _ => unreachable!("checked in Raw::of"),
            }
        }

        fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
            Ok(self.cuda().as_cuda_slice::<T>()?.slice(self.range.clone()))
        }
    }

    fn range_of(l: &Layout) -> Result<std::ops::Range<usize>> {
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
            candle_core::bail!("emit: GPU only")
        }
        fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| candle_core::Error::Msg("emit: used twice".into()))
        }
    }

    fn emit<T: CudaDType + DeviceRepr>(
        like: &Tensor,
        slice: CudaSlice<T>,
        dev: &CudaDevice,
        shape: &Shape,
    ) -> Result<Tensor> {
        let st = CudaStorage::wrap_cuda_slice(slice, dev.clone());
        like.apply_op1_no_bwd(&Emit(Mutex::new(Some((st, shape.clone())))))
    }

    fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller's kernel writes all `n` elements before anything reads them.
        #[allow(unsafe_code)]
        unsafe {
            dev.alloc::<T>(n)
        }
    }

    fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    macro_rules! launch {
        ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
            let func = nvrtc::function($dev, $name)?;
            let stream = $dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            $( let __a = $arg; b.arg(__a); )+
            // SAFETY: argument types and counts match the kernel's signature in nvrtc::SOURCE and
            // every buffer holds the elements the kernel indexes (checked by the callers).
            #[allow(unsafe_code)]
            unsafe { b.launch($cfg) }.w()?;
        }};
    }

    /// Dispatch on f32 / bf16: binds `$t` to the element type.
    macro_rules! by_dtype {
        ($dt:expr, $t:ident => $body:block) => {
            match $dt {
                DType::F32 => {
                    type $t = f32;
                    $body
                }
                DType::BF16 => {
                    type $t = half::bf16;
                    $body
                }
                d => candle_core::bail!("fused op: dtype {d:?} not supported (f32 or bf16)"),
            }
        };
    }

    mod lora;
    pub use lora::lora_linear;

    pub(super) fn rms_bwd(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
        let h = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / h;
        let (rx, rw, rdy) = (Raw::of(x)?, Raw::of(w)?, Raw::of(dy)?);
        let dev = rx.cuda().device().clone();
        let name = format!("rms_bwd_{}", suffix(x.dtype())?);
        let (h32, eps) = (h as i32, eps as f32);
        by_dtype!(x.dtype(), T => {
            let dx = alloc::<T>(&dev, x.elem_count())?;
            launch!(&dev, &name, rows_cfg(rows, 256), &rx.view::<T>()?, &rw.view::<T>()?,
                &rdy.view::<T>()?, &dx, &h32, &eps);
            emit(x, dx, &dev, x.shape())
        })
    }

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
            candle_core::bail!("fused swiglu: GPU only")
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
                launch!(&dev, &name, nvrtc::elementwise(n / 2),
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
                launch!(&dev, &name, nvrtc::elementwise(n), &rg.view::<T>()?, &ru.view::<T>()?,
                    &rdy.view::<T>()?, &dg, &du, &n64);
                Ok((Some(emit(g, dg, &dev, g.shape())?), Some(emit(u, du, &dev, u.shape())?)))
            })
        }
    }

    /// `silu(g) · u` in one pass (and one pass back).
    pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
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

    /// RMSNorm forward without a graph (our kernel: one block per row, pairs of elements), or
    /// `None` when the row length or an offset is odd.
    pub(super) fn rms_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
        let h = x.dim(candle_core::D::Minus1)?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let even = [h, x.layout().start_offset(), w.layout().start_offset()];
        if !even.iter().all(|v| v.is_multiple_of(2))
            || w.elem_count() != h
            || w.dtype() != x.dtype()
        {
            return Ok(None);
        }
        let rows = x.elem_count() / h.max(1);
        let (rx, rw) = (Raw::of(&x)?, Raw::of(&w)?);
        let dev = rx.cuda().device().clone();
        let name = format!("rms_fwd_{}", suffix(x.dtype())?);
        let (h32, eps) = (h as i32, eps as f32);
        let threads = if h >= 2048 { 256 } else { 128 };
        by_dtype!(x.dtype(), T => {
            let y = alloc::<T>(&dev, x.elem_count())?;
            launch!(&dev, &name, rows_cfg(rows, threads), &rx.view::<T>()?, &rw.view::<T>()?, &y,
                &h32, &eps);
            Ok(Some(emit(&x, y, &dev, x.shape())?))
        })
    }

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
            candle_core::bail!("fused cross-entropy: GPU only")
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

    /// Per-row `logsumexp(logits[r]) - logits[r, targets[r]]` (f32 `[n]`), reading the logits in
    /// their own dtype: no f32 copy of a `[n, vocab]` matrix, one pass forward and one back.
    pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let targets = targets.to_dtype(DType::U32)?.contiguous()?;
        logits.contiguous()?.apply_op2(&targets, CrossEntropy)
    }

    const BQ: usize = 64;
    const BK: usize = 32;
    /// The dk/dv kernel's query tile.
    const BQ2: usize = 32;

    fn smem_bytes(kernel: &str, d: usize) -> u32 {
        let floats = match kernel {
            "fwd" => d * (BQ + 1) + d * (BK + 1) + BK * d + BQ * (BK + 1),
            "dq" => 2 * d * (BQ + 1) + 2 * d * (BK + 1) + BQ * (BK + 1) + 2 * BQ,
            _ => 2 * d * (BQ2 + 1) + 2 * d * (BK + 1) + 2 * BQ2 * (BK + 1) + 2 * BQ2,
        };
        (floats * 4) as u32
    }

    fn attn_func(
        dev: &CudaDevice,
        name: &str,
        smem: u32,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
        let f = nvrtc::function(dev, name)?;
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
        Ok(f)
    }

    struct Geometry {
        b: usize,
        h: usize,
        kv: usize,
        tq: usize,
        tk: usize,
        d: usize,
        /// `[q head stride, q row stride, k head stride, k row stride]` in elements (the
        /// tensor-core kernels' QHS, QRS, KHS, KRS).
        strides: [i32; 4],
    }

    struct FlashAttn {
        pads: Tensor,
        offset: i32,
        window: i32,
        scale: f32,
        lse: Arc<Mutex<Option<CudaSlice<f32>>>>,
        /// Operands in `[b, t, heads, d]` (the projections' layout; tensor-core kernels only)
        /// instead of `[b, heads, t, d]`.
        thd: bool,
    }

    impl FlashAttn {
        fn geometry(&self, ql: &Layout, kl: &Layout) -> Result<Geometry> {
            let (b, h, tq, d, kv, tk, dk) = if self.thd {
                let (b, tq, h, d) = ql.shape().dims4()?;
                let (_, tk, kv, dk) = kl.shape().dims4()?;
                (b, h, tq, d, kv, tk, dk)
            } else {
                let (b, h, tq, d) = ql.shape().dims4()?;
                let (_, kv, tk, dk) = kl.shape().dims4()?;
                (b, h, tq, d, kv, tk, dk)
            };
            if dk != d || kv == 0 || h % kv != 0 {
                candle_core::bail!("flash attention: q {:?}, k {:?}", ql.dims(), kl.dims());
            }
            let strides = if self.thd {
                [d, h * d, d, kv * d]
            } else {
                [tq * d, d, tk * d, d]
            }
            .map(|s| s as i32);
            Ok(Geometry {
                b,
                h,
                kv,
                tq,
                tk,
                d,
                strides,
            })
        }
    }

    /// Whether the tensor-core kernels (`attn_*_tc_*`) can run: bf16, a device of compute
    /// capability 8.0 or newer, every operand starting on a 16-byte boundary (they load rows as
    /// 16-byte vectors), not switched off (`SIZESPEC_FLASH_TC=0`).
    fn tensor_cores(dev: &CudaDevice, dtype: DType, starts: &[usize]) -> bool {
        dtype == DType::BF16
            && !off("SIZESPEC_FLASH_TC")
            && starts.iter().all(|s| s.is_multiple_of(8))
            && nvrtc::compute_capability(dev).is_ok_and(|(major, _)| major >= 8)
    }

    /// Shared memory of the tensor-core kernels (bf16 tiles `[rows][d + 8]`, see nvrtc.rs).
    fn tc_smem_bytes(kernel: &str, d: usize) -> u32 {
        let ld = d + 8;
        let small = if d == 128 { 32 } else { 64 };
        let bytes = match kernel {
            "fwd" => 2 * 2 * 64 * ld * 2,
            "dq" => 2 * small * ld * 2,
            _ => (2 * 64 + 2 * small) * ld * 2 + 2 * small * 4,
        };
        bytes as u32
    }

    /// Query heads per KV head the decode kernel takes (`DEC_MAXR` in nvrtc.rs).
    const DECODE_MAX_GROUP: usize = 8;

    /// Whether the decode kernel runs: one query per row, at most `DECODE_MAX_GROUP` query heads
    /// per KV head, not switched off (`SIZESPEC_FLASH_DECODE=0`).
    fn decode_kernel(tq: usize, h: usize, kv: usize) -> bool {
        tq == 1 && kv > 0 && h / kv <= DECODE_MAX_GROUP && !off("SIZESPEC_FLASH_DECODE")
    }

    /// Whether `t` (`[b, kv, columns, d]`) is contiguous or a view of the first columns of a
    /// contiguous `[b, kv, capacity, d]` KV-cache buffer: what the decode kernel reads in place.
    pub(super) fn cache_layout(l: &Layout) -> bool {
        let (dims, st) = (l.dims(), l.stride());
        dims.len() == 4
            && st[3] == 1
            && st[2] == dims[3]
            && st[1].is_multiple_of(dims[3])
            && st[1] / dims[3] >= dims[2]
            && (dims[0] == 1 || st[0] == dims[1] * st[1])
    }

    /// The element range and columns per (row, head) of a [`cache_layout`] tensor.
    fn cache_rows(l: &Layout, g: &Geometry) -> Result<(std::ops::Range<usize>, usize)> {
        if !cache_layout(l) {
            candle_core::bail!(
                "flash attention: k/v layout {:?} / {:?}",
                l.dims(),
                l.stride()
            );
        }
        let tks = l.stride()[1] / g.d;
        let start = l.start_offset();
        Ok((start..start + g.b * g.kv * tks * g.d, tks))
    }

    impl FlashAttn {
        /// One query per row (a decode step): `attn_decode_*`, the keys split over enough blocks
        /// to fill the GPU (about 512), then `attn_decode_combine_*` when there is more than one split.
        fn decode(
            &self,
            g: &Geometry,
            dev: &CudaDevice,
            (q, qr, ql): (&CudaStorage, std::ops::Range<usize>, &Layout),
            [(k, kr), (v, vr)]: [(&CudaStorage, std::ops::Range<usize>); 2],
            tks: usize,
        ) -> Result<(CudaStorage, Shape)> {
            let splits = (1024usize.div_ceil(g.b * g.kv)).clamp(1, g.tk.div_ceil(32).max(1));
            let chunk = g.tk.div_ceil(splits);
            let sfx = suffix(q.dtype())?;
            let rows = g.b * g.h;
            let lse = alloc::<f32>(dev, rows)?;
            let part = alloc::<f32>(
                dev,
                if splits > 1 {
                    rows * splits * (g.d + 2)
                } else {
                    1
                },
            )?;
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tk as i32,
                tks as i32,
                self.offset,
                self.window,
            ];
            let chunk_i = chunk as i32;
            let cfg = LaunchConfig {
                grid_dim: (splits as u32, g.kv as u32, g.b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let out = by_dtype!(q.dtype(), T => {
                let o = alloc::<T>(dev, rows * g.d)?;
                let func = nvrtc::function(dev, &format!("attn_decode_{sfx}_{}", g.d))?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                let (qv, kv_, vv) = (
                    q.as_cuda_slice::<T>()?.slice(qr),
                    k.as_cuda_slice::<T>()?.slice(kr),
                    v.as_cuda_slice::<T>()?.slice(vr),
                );
                b.arg(&qv).arg(&kv_).arg(&vv).arg(&o).arg(&lse).arg(&part).arg(&pads);
                for i in &ints {
                    b.arg(i);
                }
                b.arg(&self.scale).arg(&chunk_i);
                // SAFETY: shapes checked in `geometry` (tq = 1, h / kv <= DEC_MAXR); `part` holds
                // (d + 2) floats per row, head and split when there are several splits.
                #[allow(unsafe_code)]
                unsafe { b.launch(cfg) }.w()?;
                if splits > 1 {
                    let (s_i, d_i) = (splits as i32, g.d as i32);
                    let ccfg = LaunchConfig {
                        grid_dim: (rows as u32, 1, 1),
                        block_dim: (g.d as u32, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    launch!(dev, &format!("attn_decode_combine_{sfx}"), ccfg, &part, &o, &lse,
                        &s_i, &d_i);
                }
                CudaStorage::wrap_cuda_slice(o, dev.clone())
            });
            *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(lse);
            Ok((out, ql.shape().clone()))
        }

        /// The backward on tensor cores: Di = rowsum(dO o) once, then dq and dk/dv.
        fn bwd_tc(
            &self,
            g: &Geometry,
            dev: &CudaDevice,
            [q, k, v]: [&Tensor; 3],
            [rq, rk, rv, ro, rd]: [&Raw<'_>; 5],
            lse: &CudaSlice<f32>,
            pads: &CudaView<'_, u32>,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            type T = half::bf16;
            let (qv, kv_, vv, ov, dov) = (
                rq.view::<T>()?,
                rk.view::<T>()?,
                rv.view::<T>()?,
                ro.view::<T>()?,
                rd.view::<T>()?,
            );
            let rows = g.b * g.h * g.tq;
            let di = alloc::<f32>(dev, rows)?;
            let (rows_i, d_i) = (rows as i32, g.d as i32);
            let di_cfg = LaunchConfig {
                grid_dim: (rows.div_ceil(8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (h_i, tq_i) = (g.h as i32, g.tq as i32);
            launch!(
                dev,
                "attn_di_bf16",
                di_cfg,
                &ov,
                &dov,
                &di,
                &rows_i,
                &d_i,
                &h_i,
                &tq_i,
                &g.strides[0],
                &g.strides[1]
            );
            let dq = alloc::<T>(dev, g.b * g.h * g.tq * g.d)?;
            let dk = alloc::<T>(dev, g.b * g.kv * g.tk * g.d)?;
            let dv = alloc::<T>(dev, g.b * g.kv * g.tk * g.d)?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let stream = dev.cuda_stream();
            // attn_{dq,dkdv}_tc_D: the same operands, then its outputs, then the same scalars.
            let launch =
                |kernel: &str, grid: (u32, u32, u32), outs: &[&CudaSlice<T>]| -> Result<()> {
                    let smem = tc_smem_bytes(kernel, g.d);
                    let func = attn_func(dev, &format!("attn_{kernel}_tc_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: grid,
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&dov).arg(lse).arg(&di);
                    for o in outs {
                        b.arg(*o);
                    }
                    b.arg(pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    for st in &g.strides {
                        b.arg(st);
                    }
                    // SAFETY: shapes checked in `geometry`; dq has q's size, dk and dv k's and v's,
                    // di one f32 per query row; the argument order is the kernels' signature.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                    Ok(())
                };
            launch(
                "dq",
                (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                &[&dq],
            )?;
            launch(
                "dkdv",
                (g.tk.div_ceil(64) as u32, g.kv as u32, g.b as u32),
                &[&dk, &dv],
            )?;
            Ok((
                Some(emit(q, dq, dev, q.shape())?),
                Some(emit(k, dk, dev, k.shape())?),
                Some(emit(v, dv, dev, v.shape())?),
            ))
        }
    }

    impl CustomOp3 for FlashAttn {
        fn name(&self) -> &'static str {
            "flash-attention"
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
            candle_core::bail!("flash attention: GPU only")
        }
        fn cuda_fwd(
            &self,
            q: &CudaStorage,
            ql: &Layout,
            k: &CudaStorage,
            kl: &Layout,
            v: &CudaStorage,
            vl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let g = self.geometry(ql, kl)?;
            let dev = q.device().clone();
            if !self.thd && decode_kernel(g.tq, g.h, g.kv) {
                let (kr, tks) = cache_rows(kl, &g)?;
                let (vr, vtks) = cache_rows(vl, &g)?;
                if vtks != tks {
                    candle_core::bail!("flash attention: k and v of different cache layouts");
                }
                return self.decode(&g, &dev, (q, range_of(ql)?, ql), [(k, kr), (v, vr)], tks);
            }
            let (qr, kr, vr) = (range_of(ql)?, range_of(kl)?, range_of(vl)?);
            let tc = tensor_cores(&dev, q.dtype(), &[qr.start, kr.start, vr.start]);
            if self.thd && !tc {
                candle_core::bail!(
                    "flash attention: [b, t, h, d] operands need the tensor-core kernels"
                );
            }
            let (name, smem) = if tc {
                (format!("attn_fwd_tc_{}", g.d), tc_smem_bytes("fwd", g.d))
            } else {
                (
                    format!("attn_fwd_{}_{}", suffix(q.dtype())?, g.d),
                    smem_bytes("fwd", g.d),
                )
            };
            let func = attn_func(&dev, &name, smem)?;
            let cfg = LaunchConfig {
                grid_dim: (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: smem,
            };
            let lse = alloc::<f32>(&dev, g.b * g.h * g.tq)?;
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let out = by_dtype!(q.dtype(), T => {
                let o = alloc::<T>(&dev, g.b * g.h * g.tq * g.d)?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                let qv_ = q.as_cuda_slice::<T>()?.slice(qr.clone());
                b.arg(&qv_);
                let kv_ = k.as_cuda_slice::<T>()?.slice(kr.clone());
                let vv_ = v.as_cuda_slice::<T>()?.slice(vr.clone());
                b.arg(&kv_).arg(&vv_).arg(&o).arg(&lse).arg(&pads);
                for i in &ints {
                    b.arg(i);
                }
                b.arg(&self.scale);
                if tc {
                    for st in &g.strides {
                        b.arg(st);
                    }
                }
                // SAFETY: shapes checked in `geometry`; the kernel's signature is attn_fwd_*.
                #[allow(unsafe_code)]
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(o, dev.clone())
            });
            *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(lse);
            Ok((out, ql.shape().clone()))
        }
        fn bwd(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            o: &Tensor,
            dout: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dout = dout.contiguous()?;
            let (rq, rk, rv, ro, rd) = (
                Raw::of(q)?,
                Raw::of(k)?,
                Raw::of(v)?,
                Raw::of(o)?,
                Raw::of(&dout)?,
            );
            let g = self.geometry(q.layout(), k.layout())?;
            let dev = rq.cuda().device().clone();
            let guard = self.lse.lock().unwrap_or_else(|e| e.into_inner());
            let Some(lse) = guard.as_ref() else {
                candle_core::bail!("flash attention backward before its forward");
            };
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let sfx = suffix(q.dtype())?;
            let starts = [
                rq.range.start,
                rk.range.start,
                rv.range.start,
                ro.range.start,
                rd.range.start,
            ];
            if tensor_cores(&dev, q.dtype(), &starts) {
                return self.bwd_tc(&g, &dev, [q, k, v], [&rq, &rk, &rv, &ro, &rd], lse, &pads);
            }
            if self.thd {
                candle_core::bail!(
                    "flash attention: [b, t, h, d] operands need the tensor-core kernels"
                );
            }
            by_dtype!(q.dtype(), T => {
                let (qv, kv_, vv, ov, dv_) = (rq.view::<T>()?, rk.view::<T>()?, rv.view::<T>()?,
                    ro.view::<T>()?, rd.view::<T>()?);
                let dq = alloc::<T>(&dev, q.elem_count())?;
                let dk = alloc::<T>(&dev, k.elem_count())?;
                let dvv = alloc::<T>(&dev, v.elem_count())?;
                let stream = dev.cuda_stream();
                {
                    let smem = smem_bytes("dq", g.d);
                    let func = attn_func(&dev, &format!("attn_bwd_dq_{sfx}_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&ov).arg(&dv_).arg(lse).arg(&dq).arg(&pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    // SAFETY: as the forward; dq has q's size.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                }
                {
                    let smem = smem_bytes("dkdv", g.d);
                    let func = attn_func(&dev, &format!("attn_bwd_dkdv_{sfx}_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: (g.tk.div_ceil(BK) as u32, g.kv as u32, g.b as u32),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&ov).arg(&dv_).arg(lse).arg(&dk).arg(&dvv).arg(&pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    // SAFETY: as the forward; dk, dv have k's and v's sizes.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                }
                Ok((
                    Some(emit(q, dq, &dev, q.shape())?),
                    Some(emit(k, dk, &dev, k.shape())?),
                    Some(emit(v, dvv, &dev, v.shape())?),
                ))
            })
        }
    }

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

    /// `Σ t²` over every tensor in one launch (f32, contiguous); deterministic (no atomics).
    pub fn sum_squares(ts: &[&Tensor]) -> Result<f64> {
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

    /// One AdamW update of every `(param, grad, m, v)` quadruple in one launch, in place.
    /// `h = [lr, beta1, beta2, eps, weight_decay, bias-correction m, bias-correction v, grad scale]`.
    pub fn adamw_multi(
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

    /// Causal attention over a left-padded batch without materialising scores. `q: [b, h, tq, d]`,
    /// `k`, `v`: `[b, kv, tk, d]` (GQA), `pads[r]` padding columns of row `r`, `offset` columns
    /// before this call's first query (the KV cache), `window` Mistral's sliding window.
    /// The visibility rule is [`crate::model::AttnCtx`]'s mask, computed in the kernel.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &[usize],
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        attention_with_pads(q, k, v, &pads_tensor(pads, q.device())?, offset, window)
    }

    /// [`attention`] with the pads already on the device ([`pads_tensor`]).
    pub fn attention_with_pads(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let d = q.dim(3)?;
        if pads.dims() != [q.dim(0)?] || pads.dtype() != DType::U32 {
            candle_core::bail!(
                "flash attention: pads {:?} for q {:?}",
                pads.dims(),
                q.dims()
            );
        }
        // A decode step reads the KV cache in place (a view of its preallocated buffer).
        let decode = decode_kernel(q.dim(2)?, q.dim(1)?, k.dim(1)?);
        // Its rows are read as 8- or 16-byte vectors: the view must start on 4 elements.
        let kv_in_place = |t: &Tensor| -> Result<Tensor> {
            match (
                decode,
                cache_layout(t.layout()),
                t.layout().start_offset().is_multiple_of(4),
            ) {
                (true, true, true) => Ok(t.clone()),
                (true, _, _) => t.force_contiguous(),
                _ => t.contiguous(),
            }
        };
        let op = FlashAttn {
            pads: pads.clone(),
            offset: offset as i32,
            window: window.unwrap_or(0) as i32,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            lse: Arc::new(Mutex::new(None)),
            thd: false,
        };
        q.contiguous()?
            .apply_op3(&kv_in_place(k)?, &kv_in_place(v)?, op)
    }

    /// [`attention_with_pads`] on `[b, t, heads, d]` operands (the projections' own layout), the
    /// output `[b, t, h, d]`: the tensor-core kernels read and write that layout in place, so no
    /// transposed copies are made around attention; elsewhere (f32, older GPUs, unaligned views)
    /// it goes through transposes to the `[b, h, t, d]` kernels.
    pub fn attention_thd(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let starts = [&q, &k, &v].map(|t| t.layout().start_offset());
        let dev = q.device().as_cuda_device()?;
        if !tensor_cores(dev, q.dtype(), &starts) {
            let t = |x: &Tensor| x.transpose(1, 2);
            let y = attention_with_pads(&t(&q)?, &t(&k)?, &t(&v)?, pads, offset, window)?;
            return y.transpose(1, 2)?.contiguous();
        }
        let d = q.dim(3)?;
        if pads.dims() != [q.dim(0)?] || pads.dtype() != DType::U32 {
            candle_core::bail!(
                "flash attention: pads {:?} for q {:?}",
                pads.dims(),
                q.dims()
            );
        }
        let op = FlashAttn {
            pads: pads.clone(),
            offset: offset as i32,
            window: window.unwrap_or(0) as i32,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            lse: Arc::new(Mutex::new(None)),
            thd: true,
        };
        q.apply_op3(&k, &v, op)
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

/// Whether [`adamw_multi`] / [`sum_squares`] can run: every tensor f32 on one CUDA device.
pub fn multi_supported(ts: &[&Tensor]) -> bool {
    cfg!(feature = "cuda")
        && !off("SIZESPEC_FUSED")
        && !off("SIZESPEC_FUSED_ADAMW")
        && !ts.is_empty()
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

pub use imp::{adamw_multi, sum_squares};
