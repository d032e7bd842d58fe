//! RMSNorm on our kernels (`engine/kernels/norm.cu`): forward one block per row on element pairs,
//! backward the input gradient only (the norm weight is frozen).
use candle_core::{Result, Tensor};

use super::Attach;

/// RMSNorm `x · (mean(x²) + eps)^-½ · w` over the last dimension: our kernels forward
/// ([`rms_norm_fwd`]) and backward (input gradient only: the norm weight is frozen).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = rms_norm_fwd(&x.detach(), w, eps)?;
    let (xd, w) = (x.detach(), w.clone());
    Attach::apply(&x, y, move |g| rms_bwd(&xd, &w, &g.contiguous()?, eps))
}

/// RMSNorm forward without a graph: our kernel (one block per row, element pairs), candle's when
/// the row length or an offset is odd.
pub fn rms_norm_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    match rms_fwd(x, w, eps)? {
        Some(y) => Ok(y),
        None => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32),
    }
}

gpu_ops! {
    /// The input gradient of [`rms_norm`] for `dy`.
    fn rms_bwd(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor>;
    /// RMSNorm forward without a graph (our kernel: one block per row, pairs of elements), or
    /// `None` when the row length or an offset is odd.
    fn rms_fwd(x: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::{Result, Tensor};

    use crate::gpu::fused::kernel::{Raw, alloc, by_dtype, emit, launch, rows_cfg, suffix};

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
}
