//! `gpucheck logits`: our prefill and cached-decode logits against `torch_ref.py logits`.
//!
//! The reference holds `ids [b, t]`, `next_ids [b, k]`, `prefill_last [b, vocab]` (logits of the last
//! prompt position) and `decode_{s}` for `s < k` (logits after feeding `next_ids[:, s]` with the
//! KV cache). We run the same sequence through [`Model::forward_last`] with a [`engine::model::KvCache`].
use std::path::PathBuf;
use std::time::Instant;

use candle_core::IndexOp;
use serde::Serialize;

use super::compare::{Argmax, Check, compare};
use super::reference::RefFile;
use super::{Common, Result, hf};
use engine::model::{LoadOptions, Model, WeightFormat};

#[derive(Debug, Clone)]
pub struct LogitsOptions {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub tol: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogitsReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub load_s: f64,
    pub checks: Vec<Check>,
    pub pass: bool,
}

/// Prefill logits then one decode step per column of `next_ids`, as `[b, vocab]` f32 tensors.
pub fn prefill_and_decode(
    model: &Model,
    ids: &candle_core::Tensor,
    next_ids: &candle_core::Tensor,
) -> Result<Vec<candle_core::Tensor>> {
    let (b, t) = ids.dims2()?;
    let pads = vec![0; b];
    // Preallocated, as generation runs it (decode steps read the buffer in place).
    let mut cache = model.new_cache_with_capacity(t + next_ids.dim(1)?);
    let ctx = model.attn_ctx(&pads, 0, t)?;
    let mut out = vec![model.forward_last(ids, &ctx, Some(&mut cache))?];
    for s in 0..next_ids.dim(1)? {
        let x = next_ids.i((.., s..s + 1))?.contiguous()?;
        let ctx = model.attn_ctx(&pads, cache.len(), 1)?;
        out.push(model.forward_last(&x, &ctx, Some(&mut cache))?);
    }
    Ok(out)
}

pub fn run(common: &Common, opts: &LogitsOptions) -> Result<LogitsReport> {
    let reference = RefFile::open(&opts.reference)?;
    let load = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Dense,
    };
    let t0 = Instant::now();
    let model = hf::load_model(&opts.model, &load)?;
    common.sync()?;
    let load_s = t0.elapsed().as_secs_f64();
    let ids = reference.ids("ids", &common.device)?;
    let next_ids = reference.ids("next_ids", &common.device)?;
    let ours = prefill_and_decode(&model, &ids, &next_ids)?;
    let mut checks = Vec::with_capacity(ours.len());
    for (s, logits) in ours.iter().enumerate() {
        let name = if s == 0 {
            "prefill_last".to_string()
        } else {
            format!("decode_{}", s - 1)
        };
        let expected = reference.f32(&name)?;
        checks.push(compare(
            &name,
            &logits.to_device(&candle_core::Device::Cpu)?,
            &expected,
            opts.tol,
            Argmax::Rows,
        )?);
    }
    Ok(LogitsReport {
        model: opts.model.display().to_string(),
        device: common.device_arg.to_string(),
        dtype: format!("{:?}", common.dtype).to_lowercase(),
        load_s,
        pass: checks.iter().all(|c| c.pass),
        checks,
    })
}
