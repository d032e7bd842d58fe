//! The decoder's numeric building blocks (RMSNorm, RoPE, attention, SwiGLU) behind small functions,
//! so a fused CUDA kernel can replace one later without touching the model.
//!
//! Each takes an [`OpPath`]: candle's fused `rms_norm`, `rope` and `softmax_last_dim` have **no backward
//! pass** (gradients silently stop there), so on the CPU the trainable path is built from basic ops
//! only. On a CUDA device both paths use [`crate::gpu::fused`]'s kernels, which have a backward pass.
use candle_core::{D, DType, Result, Tensor};

use crate::gpu::fused;

/// Which implementation of an op to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpPath {
    /// candle's fused kernels where they exist: fast, no backward pass (inference only).
    #[default]
    Fused,
    /// Basic ops only, every one with a backward pass (training).
    Differentiable,
}

/// RMSNorm over the last dimension, computed in f32 and cast back to `x`'s dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, path: OpPath) -> Result<Tensor> {
    match path {
        OpPath::Fused if fused::supported(x) => fused::rms_norm_fwd(x, weight, eps),
        OpPath::Fused if x.is_contiguous() => candle_nn::ops::rms_norm(x, weight, eps as f32),
        OpPath::Differentiable if fused::supported(x) => fused::rms_norm(x, weight, eps),
        _ => {
            let dtype = x.dtype();
            let xf = x.to_dtype(DType::F32)?;
            let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
            normed.to_dtype(dtype)?.broadcast_mul(weight)
        }
    }
}

/// Rotary embedding in the HF "rotate half" layout (not interleaved).
/// `x`: `[b, heads, t, head_dim]`; `cos`, `sin`: `[b, t, head_dim / 2]` (per-row positions).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, path: OpPath) -> Result<Tensor> {
    match path {
        OpPath::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
        OpPath::Differentiable if fused::supported(x) => fused::rope(x, cos, sin),
        OpPath::Differentiable => {
            let half = x.dim(D::Minus1)? / 2;
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
        }
    }
}

/// [`rope`] on `x: [b, t, h, d]` (the projections' layout; the GPU's attention path).
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor, path: OpPath) -> Result<Tensor> {
    match path {
        OpPath::Fused => candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin),
        OpPath::Differentiable if fused::supported(x) => fused::rope_thd(x, cos, sin),
        OpPath::Differentiable => rope(&x.transpose(1, 2)?, cos, sin, path)?.transpose(1, 2),
    }
}

/// Scaled dot-product attention with an additive f32 mask (`0` allowed, `-inf` masked): products in
/// the inputs' dtype, mask and softmax in f32.
/// `q`: `[b, h, tq, d]`; `k`, `v`: `[b, kv, tk, d]` (GQA: `h` a multiple of `kv`); `mask`: `[b or 1, 1, tq, tk]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    path: OpPath,
) -> Result<Tensor> {
    attention_limited(q, k, v, mask, path, MAX_SCORE_ELEMENTS)
}

fn attention_limited(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    path: OpPath,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let total = k.dim(2)?;
    // The f32 score matrix is `b * h * t * total` elements. Past 2^31 elements candle's CUDA kernels
    // index out of bounds (seen on the GPU: CUDA_ERROR_ILLEGAL_ADDRESS at batch 64 x 2,400 tokens), and
    // long before that it costs more memory than the weights. Inference splits the queries into chunks
    // that keep it under MAX_SCORE_ELEMENTS; rows are independent, so the result is the same.
    // Training (one layer's graph at a time, shorter batches) keeps one piece so the backward stays simple.
    let per_query = b * h * total;
    if path == OpPath::Fused && per_query * t > max_score_elements && t > 1 {
        let chunk = (max_score_elements / per_query).max(1);
        let mut parts = Vec::with_capacity(t.div_ceil(chunk));
        for start in (0..t).step_by(chunk) {
            let len = chunk.min(t - start);
            let q_part = q.narrow(2, start, len)?;
            let mask_part = match mask {
                Some(m) if m.dim(2)? == t => Some(m.narrow(2, start, len)?),
                Some(m) => Some(m.clone()),
                None => None,
            };
            parts.push(attention_one(&q_part, k, v, mask_part.as_ref(), path)?);
        }
        return Tensor::cat(&parts, 2);
    }
    attention_one(q, k, v, mask, path)
}

/// Largest f32 score matrix one attention call materialises on the inference path (1 GiB).
pub const MAX_SCORE_ELEMENTS: usize = 1 << 28;

fn attention_one(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    path: OpPath,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let (b, h, t, d) = q.dims4()?;
    let (kv, total) = (k.dim(1)?, k.dim(2)?);
    let n_rep = h / kv;
    let scale = 1.0 / (d as f64).sqrt();
    // As transformers' eager attention: both products in the model's dtype (bf16 on a GPU: tensor
    // cores, f32 accumulation inside cuBLAS), the mask and softmax in f32. Products in f32 ran
    // cuBLAS's f32 path, many times slower than bf16 tensor cores.
    // Grouped-query attention without copying K/V per query head: the query heads that share a KV
    // head are adjacent, so `[b, h, t, d]` is viewed as `[b, kv, n_rep * t, d]`.
    let q = q.contiguous()?.reshape((b, kv, n_rep * t, d))?;
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    if let Some(mask) = mask {
        // `[rows, 1, t, total]` applies to every query head of the group.
        let rows = mask.dim(0)?;
        let scores5 = scores.reshape((b, kv, n_rep, t, total))?;
        let mask5 = mask.reshape((rows, 1, 1, t, total))?;
        scores = scores5
            .broadcast_add(&mask5)?
            .reshape((b, kv, n_rep * t, total))?;
    }
    let probs = match path {
        OpPath::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
        OpPath::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
    };
    probs.to_dtype(dtype)?.matmul(&v)?.reshape((b, h, t, d))
}

/// SwiGLU: `silu(gate) * up` (candle's `silu` has a backward pass; on a GPU one fused kernel).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::supported(gate) {
        return fused::swiglu(gate, up);
    }
    gate.silu()? * up
}

/// Attention for a left-padded causal batch described by `(pads, offset, window)` — the rule
/// [`crate::model::AttnCtx`]'s `mask` encodes: the flash kernel on a GPU when `flash_pads` (the
/// pads on the device) is given, for any number of queries (a decode step's one query per row
/// included: one launch instead of the score-matrix chain, and no mask to build), the mask
/// computed inside it; else [`attention`] with `mask`.
#[allow(clippy::too_many_arguments)]
pub fn attention_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    flash_pads: Option<&Tensor>,
    offset: usize,
    window: Option<usize>,
    path: OpPath,
) -> Result<Tensor> {
    if let Some(pads) = flash_pads
        && fused::flash_supported(q)
    {
        return fused::attention_with_pads(q, k, v, pads, offset, window);
    }
    attention(q, k, v, mask, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn chunked_attention_equals_one_piece() {
        // b=2, h=4 (GQA over kv=2), t=7 queries over 7 keys with a causal + left-padding mask.
        let (b, h, kv, t, d) = (2, 4, 2, 7, 8);
        let q = rand(&[b, h, t, d], 1);
        let k = rand(&[b, kv, t, d], 2);
        let v = rand(&[b, kv, t, d], 3);
        let mut m = vec![0f32; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..t {
                    // row 1 has two padded keys at the front
                    if j > i || (r == 1 && j < 2) {
                        m[(r * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // A query whose every key is masked would be NaN: give row 1's padded queries their own key.
        for i in 0..2 {
            m[(t + i) * t + i] = 0.0;
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap();
        let whole = attention_one(&q, &k, &v, Some(&mask), OpPath::Fused).unwrap();
        // b*h*total = 56 score elements per query: a limit of 120 gives chunks of 2 queries (4 pieces).
        let chunked = attention_limited(&q, &k, &v, Some(&mask), OpPath::Fused, 120).unwrap();
        assert_eq!(chunked.dims(), whole.dims());
        assert!(max_diff(&whole, &chunked) < 1e-6);
    }

    #[test]
    fn fused_and_differentiable_paths_agree() {
        let x = rand(&[2, 3, 5, 8], 1);
        let w = rand(&[8], 2);
        let a = rms_norm(&x, &w, 1e-5, OpPath::Fused).unwrap();
        let b = rms_norm(&x, &w, 1e-5, OpPath::Differentiable).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let cos = rand(&[2, 5, 4], 3);
        let sin = rand(&[2, 5, 4], 4);
        let a = rope(&x, &cos, &sin, OpPath::Fused).unwrap();
        let b = rope(&x, &cos, &sin, OpPath::Differentiable).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let k = rand(&[2, 1, 5, 8], 5);
        let a = attention(&x, &k, &k, None, OpPath::Fused).unwrap();
        let b = attention(&x, &k, &k, None, OpPath::Differentiable).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn differentiable_path_passes_gradients() {
        let x = Var::from_tensor(&rand(&[1, 2, 3, 4], 7)).unwrap();
        let w = rand(&[4], 8);
        let cos = rand(&[1, 3, 2], 9);
        let sin = rand(&[1, 3, 2], 10);
        let y = rms_norm(x.as_tensor(), &w, 1e-5, OpPath::Differentiable).unwrap();
        let y = rope(&y, &cos, &sin, OpPath::Differentiable).unwrap();
        let y = attention(&y, &y, &y, None, OpPath::Differentiable).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .expect("gradient reaches the input");
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0);
    }
}
