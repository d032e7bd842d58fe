//! One forward + backward of a batch: the answer-only cross-entropy and the LoRA gradients, either
//! with one autograd graph for the whole model or recomputed layer by layer.
//!
//! Layer-by-layer recomputation (GPU.md): the forward keeps only each layer's input, without a
//! graph; the backward walks the layers in reverse, recomputing one layer's forward with a graph
//! from its saved input and back-propagating the incoming gradient `g` through it (as the gradient
//! of the surrogate `sum(y · g)`, whose gradient is exactly the vector-Jacobian product). Only one
//! layer's graph is alive at a time. The dropout stream is rewound to each layer's start so the
//! recomputed forward draws the same masks as the first one.
use candle_core::{D, DType, Tensor, Var};

use super::batch::Batch;
use crate::error::Result;
use crate::model::Model;

/// How gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backward {
    /// One graph for the whole forward pass (fastest, most memory).
    #[default]
    Plain,
    /// Keep only layer inputs and recompute each layer's graph during the backward pass.
    RecomputeLayers,
}

/// Sum over rows of `-log softmax(logits)[target]`, from ops that all have a backward pass
/// (candle's fused softmax has none). `logits: [n, vocab]` f32, `targets: [n]` u32.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if crate::gpu::fused::supported(logits) {
        // One pass over the logits in their own dtype, one pass back (GPU).
        return crate::gpu::fused::cross_entropy(logits, targets)?.sum_all();
    }
    let logits = logits.to_dtype(DType::F32)?;
    // The max shift only keeps exp() finite; log-sum-exp's gradient does not depend on it.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.sum_all()?.neg()
}

/// Logits at the batch's label positions only (`[n, vocab]`): the head runs on a handful of
/// answer positions instead of every prompt position.
fn label_logits(model: &Model, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let rows = hidden
        .reshape((b * t, h))?
        .index_select(&batch.positions, 0)?;
    Ok(model.head_logits(&rows.unsqueeze(0)?)?.squeeze(0)?)
}

/// The summed cross-entropy over the batch's labels (no gradients).
pub fn loss_sum(model: &Model, batch: &Batch) -> Result<f64> {
    let ctx = model.attn_ctx(&batch.pads, 0, batch.width)?;
    let mut x = model.embed(&batch.ids)?;
    for i in 0..model.num_layers() {
        x = model.layer_forward(i, &x, &ctx, None)?.detach();
    }
    let loss = cross_entropy_sum(&label_logits(model, &x, batch)?, &batch.targets)?;
    Ok(f64::from(loss.to_scalar::<f32>()?))
}

/// Forward and backward of one batch. The loss that is differentiated is `sum_ce · scale` (pass
/// `1 / label tokens of the whole optimiser step`, so accumulated micro-batches average over
/// tokens); returns the unscaled summed cross-entropy and `scale ·` gradient for each of `vars`
/// (`None` for a var the loss does not reach).
pub fn loss_and_grads(
    model: &Model,
    batch: &Batch,
    vars: &[Var],
    scale: f64,
    backward: Backward,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    match backward {
        Backward::Plain => plain(model, batch, vars, scale),
        Backward::RecomputeLayers => recompute(model, batch, vars, scale),
    }
}

fn plain(
    model: &Model,
    batch: &Batch,
    vars: &[Var],
    scale: f64,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    let ctx = model.attn_ctx(&batch.pads, 0, batch.width)?;
    let mut x = model.embed(&batch.ids)?;
    for i in 0..model.num_layers() {
        x = model.layer_forward(i, &x, &ctx, None)?;
    }
    let sum = cross_entropy_sum(&label_logits(model, &x, batch)?, &batch.targets)?;
    let grads = (&sum * scale)?.backward()?;
    let out = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).cloned())
        .collect();
    Ok((f64::from(sum.to_scalar::<f32>()?), out))
}

fn recompute(
    model: &Model,
    batch: &Batch,
    vars: &[Var],
    scale: f64,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    use crate::gpu::prof::lap;
    let dev = model.device();
    crate::gpu::prof::start(dev);
    let ctx = model.attn_ctx(&batch.pads, 0, batch.width)?;
    let n = model.num_layers();
    // Forward without keeping graphs: each layer's input and the dropout state it started from
    // (on a GPU too: masks there are hashes of seeds drawn from the same host stream).
    let mut inputs = Vec::with_capacity(n + 1);
    let mut rng_states = Vec::with_capacity(n);
    inputs.push(model.embed(&batch.ids)?.detach());
    for i in 0..n {
        rng_states.push(model.dropout_rng().snapshot());
        let y = model.layer_forward(i, &inputs[i], &ctx, None)?.detach();
        inputs.push(y);
    }
    lap(dev, "forward (no graph)");
    let end_state = model.dropout_rng().snapshot();

    let mut out: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut collect = |grads: &candle_core::backprop::GradStore| -> candle_core::Result<()> {
        for (slot, v) in out.iter_mut().zip(vars) {
            if let Some(g) = grads.get(v.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    };

    // Head and loss, with the last hidden state as a leaf so its gradient can be read.
    let last = Var::from_tensor(&inputs[n])?;
    let sum = cross_entropy_sum(
        &label_logits(model, last.as_tensor(), batch)?,
        &batch.targets,
    )?;
    let grads = (&sum * scale)?.backward()?;
    collect(&grads)?;
    let mut g = grads
        .get(last.as_tensor())
        .cloned()
        .unwrap_or(last.as_tensor().zeros_like()?);
    drop(grads);
    lap(dev, "head + loss + backward");

    for i in (0..n).rev() {
        model.dropout_rng().restore(&rng_states[i]);
        let x = Var::from_tensor(&inputs[i])?;
        let y = model.layer_forward(i, x.as_tensor(), &ctx, None)?;
        let surrogate = (y * &g)?.sum_all()?;
        lap(dev, "layer recompute");
        let grads = surrogate.backward()?;
        lap(dev, "layer backward");
        collect(&grads)?;
        lap(dev, "collect grads");
        if i > 0 {
            g = grads
                .get(x.as_tensor())
                .cloned()
                .unwrap_or(x.as_tensor().zeros_like()?);
        }
    }
    // Leave the stream where a plain forward would have left it.
    model.dropout_rng().restore(&end_state);
    Ok((f64::from(sum.to_scalar::<f32>()?), out))
}
