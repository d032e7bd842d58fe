//! One forward + backward of a batch: the answer-only cross-entropy and the LoRA gradients, either
//! with one autograd graph for the whole model or recomputed layer by layer.
//!
//! Layer-by-layer recomputation (docs/gpu.md): the forward keeps only each layer's input, without a
//! graph; the backward walks the layers in reverse, recomputing one layer's forward with a graph
//! from its saved input and back-propagating the incoming gradient `g` through it (as the gradient
//! of a scalar whose backward hands `g` to `y`: exactly the vector-Jacobian product). Only one
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
    /// The last `n` layers keep their graph from the forward pass (as [`Backward::Plain`]); the
    /// layers below are recomputed (as [`Backward::RecomputeLayers`]). Trades memory, about one
    /// layer's activations per kept layer, for the recomputation of those layers.
    KeepLast(usize),
}

impl Backward {
    /// Layers whose graph is kept from the forward pass, of `n`.
    fn kept(self, n: usize) -> usize {
        match self {
            Backward::Plain => n,
            Backward::RecomputeLayers => 0,
            Backward::KeepLast(k) => k.min(n),
        }
    }
}

/// Estimated activation memory one layer's graph keeps for `tokens` tokens of a model with this
/// hidden and intermediate size, in bytes (`dtype_bytes` per element), plus a quarter for safety.
/// Calibrated on an H100 (llama3b shape, 4,096 tokens, plain minus layer-by-layer peak over 28
/// layers, `bench/RESULTS.md`) on the product's path, the one-op LoRA projection:
/// 20.5 - 9.5 GiB = 0.39 GiB a layer. The composed projection that `SIZESPEC_FUSED_LORA=0` (an A/B
/// switch, [`crate::gpu::switches`]) selects keeps more, 0.87 GiB (34.9 - 10.5 GiB); the estimate
/// does not follow that switch: whoever turns it off accepts the risk of running out of memory
/// ([`Backward::RecomputeLayers`] avoids it).
pub fn layer_graph_bytes(
    tokens: usize,
    hidden: usize,
    intermediate: usize,
    dtype_bytes: usize,
) -> u64 {
    let per_token = 8 * hidden + 4 * intermediate;
    (tokens * per_token * dtype_bytes) as u64 * 5 / 4
}

/// How many of `layers` can keep their graph ([`Backward::KeepLast`]) within `free_bytes` of device
/// memory, after `reserve_bytes` (one recomputed layer, the head's logits and its gradient, slack).
pub fn layers_that_fit(
    layers: usize,
    per_layer: u64,
    free_bytes: u64,
    reserve_bytes: u64,
) -> usize {
    let budget = free_bytes.saturating_sub(reserve_bytes);
    ((budget / per_layer.max(1)) as usize).min(layers)
}

/// The GPU's backward mode for `model` and batches of `tokens` tokens: [`Backward::KeepLast`] with
/// as many layers as `free_bytes` of device memory hold, keeping a reserve for one recomputed
/// layer, the logits and their gradient, and 2 GiB of slack.
pub fn auto_backward(model: &Model, tokens: usize, free_bytes: u64) -> Backward {
    let cfg = model.config();
    let bytes = model.dtype().size_in_bytes();
    let per = layer_graph_bytes(tokens, cfg.hidden_size, cfg.intermediate_size, bytes);
    let logits = (tokens * cfg.vocab_size * bytes * 3) as u64;
    let reserve = 2 * per + logits + (2u64 << 30);
    let kept = layers_that_fit(model.num_layers(), per, free_bytes, reserve);
    tracing::info!(
        "backward: keeping the graph of {kept} of {} layers ({:.1} GiB free, ~{:.2} GiB a layer)",
        model.num_layers(),
        free_bytes as f64 / f64::from(1u32 << 30),
        per as f64 / f64::from(1u32 << 30)
    );
    Backward::KeepLast(kept)
}

/// Most tokens [`auto_batch_tokens`] gives a micro-batch: beyond that the GEMMs of a 3B model are
/// saturated, and a default optimiser step of MedSynth-length examples (16 × ~1,000 tokens) is one
/// micro-batch already.
pub const MAX_AUTO_BATCH_TOKENS: usize = 16_384;

/// The largest micro-batch (tokens) for which all `layers` keep their graph within `free_bytes`
/// ([`auto_backward`]'s reserve included: two layers' graphs, the logits, 2 GiB), given the bytes
/// a token costs in one layer's graph and in the logits; at least `longest` (one full-length
/// example always fits a micro-batch, [`auto_backward`] then recomputes layers that do not fit),
/// at most [`MAX_AUTO_BATCH_TOKENS`], a multiple of 64 when in between.
pub fn batch_tokens_that_fit(
    layers: usize,
    layer_bytes_per_token: u64,
    logits_bytes_per_token: u64,
    free_bytes: u64,
    longest: usize,
) -> usize {
    let per_token = (layers as u64 + 2) * layer_bytes_per_token + logits_bytes_per_token;
    let fit = (free_bytes.saturating_sub(2u64 << 30) / per_token.max(1)) as usize;
    (fit.min(MAX_AUTO_BATCH_TOKENS) / 64 * 64).max(longest)
}

/// The token budget of a length-grouped micro-batch on a GPU: [`batch_tokens_that_fit`] for this
/// model with `free_bytes` of device memory and examples of at most `longest` tokens.
pub fn auto_batch_tokens(model: &Model, longest: usize, free_bytes: u64) -> usize {
    let cfg = model.config();
    let bytes = model.dtype().size_in_bytes();
    let per = layer_graph_bytes(1, cfg.hidden_size, cfg.intermediate_size, bytes);
    let logits = (cfg.vocab_size * bytes * 3) as u64;
    let tokens = batch_tokens_that_fit(model.num_layers(), per, logits, free_bytes, longest);
    tracing::info!(
        "length-grouped micro-batches of at most {tokens} tokens ({:.1} GiB free)",
        free_bytes as f64 / f64::from(1u32 << 30)
    );
    tokens
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
        b => recompute(model, batch, vars, scale, b.kept(model.num_layers())),
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

/// Layer-by-layer recomputation of the first `n - kept` layers; the last `kept` run with their graph.
fn recompute(
    model: &Model,
    batch: &Batch,
    vars: &[Var],
    scale: f64,
    kept: usize,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    use crate::gpu::prof::lap;
    let dev = model.device();
    crate::gpu::prof::start(dev);
    let ctx = model.attn_ctx(&batch.pads, 0, batch.width)?;
    let n = model.num_layers();
    // Forward without keeping graphs: each layer's input and the dropout state it started from
    // (on a GPU too: masks there are hashes of seeds drawn from the same host stream).
    let split = n - kept.min(n);
    let mut inputs = Vec::with_capacity(split + 1);
    let mut rng_states = Vec::with_capacity(split);
    inputs.push(model.embed(&batch.ids)?.detach());
    for i in 0..split {
        rng_states.push(model.dropout_rng().snapshot());
        let y = model.layer_forward(i, &inputs[i], &ctx, None)?.detach();
        inputs.push(y);
    }
    lap(dev, "forward (no graph)");
    // The kept layers: one graph from the split point's input (a leaf) to the loss.
    let top = Var::from_tensor(&inputs[split])?;
    let mut x = top.as_tensor().clone();
    for i in split..n {
        x = model.layer_forward(i, &x, &ctx, None)?;
    }
    lap(dev, "forward (kept layers)");
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

    // Head and loss on top of the kept layers; the gradient reaching the split point's input
    // seeds the recomputed layers below.
    let sum = cross_entropy_sum(&label_logits(model, &x, batch)?, &batch.targets)?;
    let grads = (&sum * scale)?.backward()?;
    // Drop the kept layers' graph before recomputing the others (`sum` and `x` hold it).
    let sum = sum.detach();
    drop(x);
    collect(&grads)?;
    let mut g = grads
        .get(top.as_tensor())
        .cloned()
        .unwrap_or(top.as_tensor().zeros_like()?);
    drop(grads);
    lap(dev, "head + loss + kept layers' backward");

    for i in (0..split).rev() {
        model.dropout_rng().restore(&rng_states[i]);
        let x = Var::from_tensor(&inputs[i])?;
        let y = model.layer_forward(i, x.as_tensor(), &ctx, None)?;
        let surrogate = crate::gpu::fused::vjp_seed(&y, &g)?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn kept_layers_follow_free_memory() {
        use super::{layer_graph_bytes, layers_that_fit};
        let gib = 1u64 << 30;
        // llama3b shape, 8 x 512 tokens, bf16: about 0.55 GiB a layer with the safety margin
        // (above the 0.39 measured with the one-op LoRA projection).
        let per = layer_graph_bytes(4096, 3072, 8192, 2);
        assert!(per > gib / 2 && per < gib * 6 / 10, "{per}");
        assert_eq!(layers_that_fit(28, per, 4 * gib, 8 * gib), 0);
        assert_eq!(layers_that_fit(28, per, 500 * gib, 8 * gib), 28);
        // 8 GiB over the reserve: 14 layers of 0.55 GiB.
        assert_eq!(layers_that_fit(28, per, 16 * gib, 8 * gib), 14);
    }

    #[test]
    fn the_auto_budget_keeps_every_layer_and_stays_in_bounds() {
        use super::{
            MAX_AUTO_BATCH_TOKENS, batch_tokens_that_fit, layer_graph_bytes, layers_that_fit,
        };
        let gib = 1u64 << 30;
        // llama3b shape, bf16, one-op LoRA: ~0.14 MB a token a layer, 0.77 MB of logits reserve.
        let per = layer_graph_bytes(1, 3072, 8192, 2);
        let logits = 128_256 * 2 * 3;
        let t = batch_tokens_that_fit(28, per, logits, 40 * gib, 2048);
        assert!(
            t > 2048 && t < MAX_AUTO_BATCH_TOKENS && t.is_multiple_of(64),
            "{t}"
        );
        // At that budget every layer keeps its graph under auto_backward's reserve.
        let t = t as u64;
        let reserve = 2 * per * t + logits * t + 2 * gib;
        assert_eq!(layers_that_fit(28, per * t, 40 * gib, reserve), 28);
        assert_eq!(
            batch_tokens_that_fit(28, per, logits, 130 * gib, 2048),
            MAX_AUTO_BATCH_TOKENS
        );
        // Too little memory: one full-length example still forms a micro-batch.
        assert_eq!(batch_tokens_that_fit(28, per, logits, 4 * gib, 2048), 2048);
    }
}
