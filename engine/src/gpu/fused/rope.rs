//! Rotary embedding with a backward pass: candle's fused kernels (which have none) both ways, the
//! backward being the rotation by the opposite angle.
use candle_core::{Result, Tensor};

use super::Attach;

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
