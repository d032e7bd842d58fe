//! `x·Wᵀ` for a frozen weight whose backward pass computes only the input's gradient.
//!
//! candle's matmul backward always computes the gradient of *both* operands, so every frozen base
//! weight would get a full-size gradient nobody reads (about 40% of a LoRA backward on CPU, see
//! docs/gpu.md). Here the product is computed without a graph and re-attached to `x`
//! ([`crate::gpu::fused::Attach`]) with a backward that returns `grad·W` only.
use candle_core::{Result, Tensor};

use crate::gpu::fused::Attach;

/// `x: [..., in]`, `w: [out, in]` → `[..., out]`; gradients flow to `x` only, never to `w`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = plain_matmul(&x.detach(), w)?;
    let (w, shape) = (w.clone(), x.shape().clone());
    Attach::apply(x, y, move |g| {
        let out = w.dim(0)?;
        let rows = g.elem_count() / out.max(1);
        g.reshape((rows, out))?.matmul(&w)?.reshape(&shape)
    })
}

/// `x·Wᵀ` as one 2-D product over all leading dimensions (no per-batch broadcast of `w`).
pub(crate) fn plain_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let out = w.dim(0)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = out;
    x.reshape((rows, inner))?.matmul(&w.t()?)?.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn same_values_and_input_gradient_as_matmul_and_no_weight_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 24., &dev)
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap(),
        )
        .unwrap();
        let w = (Tensor::arange(0f32, 20., &dev)
            .unwrap()
            .reshape((5, 4))
            .unwrap()
            * 0.1)
            .unwrap();
        let wt = w.t().unwrap();
        let ours = frozen_matmul(x.as_tensor(), &w).unwrap();
        let reference = x.as_tensor().broadcast_matmul(&wt).unwrap();
        let diff: f32 = (&ours - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
        let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = reference
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = g_ours.get(x.as_tensor()).unwrap();
        let b = g_ref.get(x.as_tensor()).unwrap();
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-3, "input gradient differs by {diff}");
        // The stock matmul computes a gradient for the frozen weight (stored under its transpose);
        // ours computes none: no stored gradient has the weight's size.
        assert!(g_ref.get(&wt).is_some());
        let weight_sized = |g: &candle_core::backprop::GradStore| {
            g.get_ids()
                .filter(|id| {
                    g.get_id(**id)
                        .is_some_and(|t| t.elem_count() == w.elem_count())
                })
                .count()
        };
        assert_eq!(weight_sized(&g_ref), 1);
        assert_eq!(weight_sized(&g_ours), 0);
    }
}
