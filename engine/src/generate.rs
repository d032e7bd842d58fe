//! Batched greedy generation: length-bucketed, left-padded batches with a KV cache, per-row stop
//! on the tokenizer's stop ids, finished rows dropped from the batch, honest per-sample counts.
//!
//! Prompts are sorted by length and cut into batches of [`GenerationConfig::batch_size`], so rows
//! of one batch need little padding. A row that emits a stop id (or reaches `max_new_tokens`) is
//! removed from the batch and its KV-cache rows are dropped: finished rows cost no more work.
//! Counts exclude padding and prompt (pitfall 7): `generated` holds exactly the tokens the model
//! produced for that row, the stop id included when one was produced.
use std::time::{Duration, Instant};

use candle_core::{D, Tensor};
use shared::config::GenerationConfig;
use tokio_util::sync::CancellationToken;

use crate::error::{EngineError, Result};
use crate::model::Model;

/// Why a row stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced one of the stop ids (it is the last of `generated`).
    StopToken,
    /// `max_new_tokens` were produced without a stop id.
    MaxNewTokens,
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Index of the prompt in the caller's slice.
    pub index: usize,
    /// Generated token ids (no prompt, no padding), the stop id included if one was produced.
    pub generated: Vec<u32>,
    pub stop: StopReason,
    /// Prompt tokens (no padding).
    pub prompt_tokens: usize,
    /// Wall time from the start of this row's batch to this row's last token.
    pub latency: Duration,
}

impl Generation {
    /// The generated tokens without a trailing stop id (what gets decoded to text).
    pub fn content(&self) -> &[u32] {
        match self.stop {
            StopReason::StopToken => &self.generated[..self.generated.len().saturating_sub(1)],
            StopReason::MaxNewTokens => &self.generated,
        }
    }
}

/// Totals of one [`generate`] call, for throughput reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub elapsed: Duration,
    /// Time spent in the prompts' forward passes (each batch's first step); the rest of `elapsed`
    /// is decoding.
    pub prefill: Duration,
}

impl GenerationStats {
    /// Generated tokens per second (padding and prompt never counted).
    pub fn tokens_per_s(&self) -> f64 {
        self.generated_tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The batches [`generate`] will run: prompt indices sorted by length (longest first, so a batch
/// that does not fit in memory fails at once), `batch_size` per batch.
pub fn length_buckets(prompts: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    // Stable sort: equal lengths keep the caller's order, so batching is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Greedy-decodes every prompt. `on_batch` receives each batch's results as soon as the batch is
/// done (for streaming predictions); the return value holds all results in prompt order.
/// Checks `cancel` between decode steps and returns [`EngineError::Cancelled`] when it fires.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    stop_ids: &[u32],
    cfg: &GenerationConfig,
    cancel: &CancellationToken,
    mut on_batch: impl FnMut(&[Generation]),
) -> Result<(Vec<Generation>, GenerationStats)> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(EngineError::Generation(format!(
            "prompt {i} is empty (no tokens)"
        )));
    }
    let start = Instant::now();
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut stats = GenerationStats {
        prompts: prompts.len(),
        ..Default::default()
    };
    for batch in length_buckets(prompts, cfg.batch_size) {
        let (done, prefill) =
            generate_batch(model, prompts, &batch, stop_ids, cfg.max_new_tokens, cancel)?;
        stats.prefill += prefill;
        for g in &done {
            stats.prompt_tokens += g.prompt_tokens;
            stats.generated_tokens += g.generated.len();
        }
        on_batch(&done);
        for g in done {
            let i = g.index;
            out[i] = Some(g);
        }
    }
    stats.elapsed = start.elapsed();
    Ok((
        out.into_iter()
            .map(|g| g.expect("every prompt is in one batch"))
            .collect(),
        stats,
    ))
}

/// One left-padded batch: prefill, then decode one column at a time, dropping finished rows.
fn generate_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    batch: &[usize],
    stop_ids: &[u32],
    max_new_tokens: usize,
    cancel: &CancellationToken,
) -> Result<(Vec<Generation>, Duration)> {
    let start = Instant::now();
    let dev = model.device();
    let width = batch.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let mut results: Vec<Generation> = batch
        .iter()
        .map(|&i| Generation {
            index: i,
            generated: Vec::new(),
            stop: StopReason::MaxNewTokens,
            prompt_tokens: prompts[i].len(),
            latency: Duration::ZERO,
        })
        .collect();
    if max_new_tokens == 0 {
        return Ok((results, Duration::ZERO));
    }
    // Pad id 0: padded columns are masked out of every real query, so their token never matters.
    let mut ids = Vec::with_capacity(batch.len() * width);
    let mut pads = Vec::with_capacity(batch.len());
    for &i in batch {
        let p = width - prompts[i].len();
        pads.push(p);
        ids.extend(std::iter::repeat_n(0u32, p));
        ids.extend_from_slice(&prompts[i]);
    }
    let ids = Tensor::from_vec(ids, (batch.len(), width), dev)?;
    let ctx = model.attn_ctx(&pads, 0, width)?;
    // Every column this batch can reach, preallocated: decode steps write one column each.
    let mut cache = model.new_cache_with_capacity(width + max_new_tokens);
    let mut logits = model.forward_last(&ids, &ctx, Some(&mut cache))?;
    // Reading the logits back waits for the device, so this is the prefill's real duration.
    let mut first: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let prefill = start.elapsed();
    // `active[k]` = position in `results` of the k-th row still in the batch.
    let mut active: Vec<usize> = (0..batch.len()).collect();
    loop {
        let next: Vec<u32> = if first.is_empty() {
            logits.argmax(D::Minus1)?.to_vec1()?
        } else {
            std::mem::take(&mut first)
        };
        let now = start.elapsed();
        let mut keep = Vec::with_capacity(active.len());
        for (k, &tok) in next.iter().enumerate() {
            let r = &mut results[active[k]];
            r.generated.push(tok);
            r.latency = now;
            if stop_ids.contains(&tok) {
                r.stop = StopReason::StopToken;
            } else if r.generated.len() < max_new_tokens {
                keep.push(k);
            }
        }
        if keep.is_empty() {
            break;
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if keep.len() < active.len() {
            cache.select_rows(&keep)?;
            pads = keep.iter().map(|&k| pads[k]).collect();
        }
        let step: Vec<u32> = keep.iter().map(|&k| next[k]).collect();
        active = keep.iter().map(|&k| active[k]).collect();
        let ids = Tensor::from_vec(step, (active.len(), 1), dev)?;
        let ctx = model.attn_ctx(&pads, cache.len(), 1)?;
        logits = model.forward_last(&ids, &ctx, Some(&mut cache))?;
    }
    Ok((results, prefill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sort_longest_first_and_respect_batch_size() {
        let prompts: Vec<Vec<u32>> = [3usize, 1, 5, 3, 2].iter().map(|&n| vec![1; n]).collect();
        let b = length_buckets(&prompts, 2);
        assert_eq!(b, vec![vec![2, 0], vec![3, 4], vec![1]]);
        assert_eq!(
            length_buckets(&prompts, 0).len(),
            5,
            "batch size 0 is treated as 1"
        );
    }

    #[test]
    fn content_drops_only_the_stop_token() {
        let g = Generation {
            index: 0,
            generated: vec![5, 6, 2],
            stop: StopReason::StopToken,
            prompt_tokens: 3,
            latency: Duration::ZERO,
        };
        assert_eq!(g.content(), &[5, 6]);
        let g = Generation {
            stop: StopReason::MaxNewTokens,
            ..g
        };
        assert_eq!(g.content(), &[5, 6, 2]);
    }
}
