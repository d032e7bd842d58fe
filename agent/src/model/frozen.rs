//! `x·Wᵀ` for a frozen weight whose backward pass computes only the input's gradient.
//!
//! candle's matmul backward always computes the gradient of *both* operands, so every frozen base
//! weight would get a full-size gradient nobody reads (about 40% of a LoRA backward on CPU, see
//! GPU.md). Here the product is computed without a graph and re-attached to `x` through a custom op
//! whose backward returns `grad·W` only.
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x: [..., in]`, `w: [out, in]` → `[..., out]`; gradients flow to `x` only, never to `w`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = plain_matmul(&x.detach(), w)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(Reattach {
        w: w.clone(),
        out: Mutex::new(Some(y)),
    })
}

fn plain_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let out = w.dim(0)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = out;
    x.reshape((rows, inner))?.matmul(&w.t()?)?.reshape(shape)
}

/// Hands back the precomputed product on forward and `grad·W` on backward.
struct Reattach {
    w: Tensor,
    /// Taken on forward so the graph does not keep a second copy of the output alive.
    out: Mutex<Option<Tensor>>,
}

impl Reattach {
    fn take(&self) -> Result<Tensor> {
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("frozen_matmul: forward ran twice".into()))
    }
}

impl CustomOp1 for Reattach {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.take()?.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => candle_core::bail!("frozen_matmul: output is not on the CPU"),
        }
    }

    fn cuda_fwd(&self, _s: &CudaStorage, _l: &Layout) -> Result<(CudaStorage, Shape)> {
        let y = self.take()?.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => candle_core::bail!("frozen_matmul: output is not on the GPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let out = self.w.dim(0)?;
        let rows = grad_res.elem_count() / out.max(1);
        let g = grad_res
            .reshape((rows, out))?
            .matmul(&self.w)?
            .reshape(arg.shape())?;
        Ok(Some(g))
    }
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
