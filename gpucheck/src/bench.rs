//! `gpucheck bench`: our numbers for the workloads of `torch_ref.py bench`, under the same JSON keys
//! (`train_r16`/`train_r64` tokens/s + peak GiB, `prefill`, `generate` best batch, `decode`), so
//! `bench/gpu/table.py` can put the two side by side.
//!
//! Timing as on the torch side: warm-up runs first, the device is synchronised before every clock
//! read, the median of the timed runs is kept. Out of memory is a result (`tokens_per_s: 0`,
//! `error: "out of memory"`), not a failure, as on the torch side.
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use super::mem::{MemProbe, PeakSampler};
use super::work::{Trainer, generate_all, prefill, prompt_lengths, random_batch, random_prompts};
use super::{Common, GpucheckError, Result, hf, is_out_of_memory, timed_median};
use engine::model::{LoadOptions, Mode, Model, WeightFormat};
use engine::train::Backward;

/// One benchmark section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Train,
    Prefill,
    Generate,
    Decode,
}

impl std::str::FromStr for What {
    type Err = GpucheckError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Self::Train),
            "prefill" => Ok(Self::Prefill),
            "generate" => Ok(Self::Generate),
            "decode" => Ok(Self::Decode),
            _ => Err(GpucheckError::Arg(format!(
                "bench section `{s}`: expected train, prefill, generate or decode"
            ))),
        }
    }
}

/// Workload sizes; the defaults are `torch_ref.py`'s (tests shrink them).
#[derive(Debug, Clone)]
pub struct Sizes {
    pub train_batch: usize,
    pub train_seq: usize,
    pub train_steps: usize,
    pub ranks: Vec<usize>,
    pub prefill_batch: usize,
    pub prefill_seq: usize,
    pub gen_prompts: usize,
    pub gen_mean_len: usize,
    pub gen_new: usize,
    pub gen_batches: Vec<usize>,
    pub decode_prompt: usize,
    pub decode_new: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            train_batch: 8,
            train_seq: 512,
            train_steps: 3,
            ranks: vec![16, 64],
            prefill_batch: 8,
            prefill_seq: 512,
            gen_prompts: 256,
            gen_mean_len: 1200,
            gen_new: 16,
            gen_batches: vec![8, 16, 32, 64],
            decode_prompt: 256,
            decode_new: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    pub what: Vec<What>,
    /// Label for the `shape` key (`llama3b`, ...); defaults to the folder name.
    pub shape: Option<String>,
    pub backward: Backward,
    /// Load quantised through this cache folder (inference sections only).
    pub quant: Option<(candle_core::quantized::GgmlDType, PathBuf)>,
    pub sizes: Sizes,
}

fn oom_or<T>(r: Result<T>, ok: impl FnOnce(T) -> Value) -> Result<Value> {
    match r {
        Ok(v) => Ok(ok(v)),
        Err(e) if is_out_of_memory(&e) => {
            Ok(json!({"tokens_per_s": 0.0, "peak_gib": null, "error": "out of memory"}))
        }
        Err(e) => Err(e),
    }
}

/// Run the sections asked for; returns the JSON object `torch_ref.py bench` writes, with our keys.
/// `on_section` sees the object so far after each section (so a run cut short keeps its results).
pub fn run(
    common: &Common,
    opts: &BenchOptions,
    mut on_section: impl FnMut(&Value),
) -> Result<Value> {
    let probe = Arc::new(MemProbe::for_device(common.device_arg)?);
    let base_mib = probe.used_mib()?;
    let shape = opts.shape.clone().unwrap_or_else(|| {
        opts.model
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let mut out = serde_json::Map::new();
    out.insert("card".into(), json!(probe.card()));
    out.insert("engine".into(), json!("sizespec (candle 0.11)"));
    out.insert("shape".into(), json!(shape));
    out.insert("device".into(), json!(common.device_arg.to_string()));
    out.insert(
        "dtype".into(),
        json!(format!("{:?}", common.dtype).to_lowercase()),
    );
    let load = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Dense,
    };
    let s = &opts.sizes;
    let mut model: Model = match &opts.quant {
        None => hf::load_model(&opts.model, &load)?,
        Some((q, cache)) => {
            if opts.what.contains(&What::Train) {
                return Err(GpucheckError::Arg(
                    "a quantised model cannot be trained (drop --quant or the train section)"
                        .into(),
                ));
            }
            out.insert("quant".into(), json!(format!("{q:?}").to_lowercase()));
            std::fs::create_dir_all(cache).map_err(|source| GpucheckError::Io {
                path: cache.clone(),
                source,
            })?;
            super::quant::load_4bit(common, &opts.model, *q, cache)?.0
        }
    };
    common.sync()?;
    // `auto`: what the worker would pick on this device, from its free memory now.
    let backward = match opts.backward {
        Backward::KeepLast(usize::MAX) => engine::train::step::auto_backward(
            &model,
            s.train_batch * s.train_seq,
            engine::gpu::mem::memory_free_bytes(&common.device).unwrap_or(0),
        ),
        b => b,
    };
    if opts.what.contains(&What::Train) {
        out.insert(
            "train_backward".into(),
            json!(match backward {
                Backward::Plain => "plain".to_string(),
                Backward::RecomputeLayers => "recompute".to_string(),
                Backward::KeepLast(n) => format!("keep:{n}"),
            }),
        );
        for &r in &s.ranks {
            let sampler = PeakSampler::start(probe.clone());
            let res = (|| -> Result<f64> {
                let mut trainer =
                    Trainer::new(&mut model, r, s.train_batch, s.train_seq, backward)?;
                let t = timed_median(common, 1, s.train_steps, || {
                    trainer.step(&model).map(|_| ())
                })?;
                Ok(t)
            })();
            let peak = sampler.finish();
            let tokens = (s.train_batch * s.train_seq) as f64;
            let v = oom_or(
                res,
                |t| json!({"tokens_per_s": tokens / t, "peak_gib": (peak - base_mib) / 1024.0}),
            )?;
            out.insert(format!("train_r{r}"), v);
        }
        on_section(&Value::Object(out.clone()));
        // Fold the last adapters away so inference runs on plain weights again.
        model.merge_lora()?;
        model.set_mode(Mode::Eval);
    }
    if opts.what.contains(&What::Prefill) {
        let ids = random_batch(&model, s.prefill_batch, s.prefill_seq, 6)?;
        let res = timed_median(common, 2, 5, || prefill(&model, &ids).map(|_| ()));
        let tokens = (s.prefill_batch * s.prefill_seq) as f64;
        out.insert(
            "prefill".into(),
            oom_or(res, |t| json!({"tokens_per_s": tokens / t}))?,
        );
        on_section(&Value::Object(out.clone()));
    }
    if opts.what.contains(&What::Generate) {
        let mean = s.gen_mean_len as f64;
        let lens = prompt_lengths(
            s.gen_prompts,
            mean,
            mean / 4.0,
            s.gen_mean_len / 3,
            s.gen_mean_len * 2,
            8,
        );
        let prompts = random_prompts(model.config().vocab_size, &lens, 100);
        // One tiny untimed pass: the first use of a CUDA kernel loads its module, which must not be
        // charged to the first batch size (the torch side has run its kernels while building).
        generate_all(&model, &prompts[..prompts.len().min(2)], 2, 2)?;
        let mut rows = Vec::new();
        let mut best: Option<Value> = None;
        for &bs in &s.gen_batches {
            let r = common.time(|| generate_all(&model, &prompts, s.gen_new, bs));
            let (sps, prefill_s) = match r {
                Ok((stats, t)) => (s.gen_prompts as f64 / t, stats.prefill.as_secs_f64()),
                Err(e) if is_out_of_memory(&e) => (0.0, 0.0),
                Err(e) => return Err(e),
            };
            // Where the time went: the prompts' forward passes vs the decode steps.
            let row = json!({"batch": bs, "samples_per_s": sps, "prefill_s": prefill_s});
            let better = best
                .as_ref()
                .is_none_or(|b| sps > b["samples_per_s"].as_f64().unwrap_or(0.0));
            if better {
                best = Some(row.clone());
            }
            rows.push(row);
        }
        out.insert("generate".into(), json!({"best": best, "all": rows}));
        on_section(&Value::Object(out.clone()));
    }
    if opts.what.contains(&What::Decode) {
        let prompt = random_prompts(model.config().vocab_size, &[s.decode_prompt], 9);
        let res = timed_median(common, 1, 3, || {
            generate_all(&model, &prompt, s.decode_new, 1).map(|_| ())
        });
        let new = s.decode_new as f64;
        out.insert(
            "decode".into(),
            oom_or(res, |t| json!({"tokens_per_s_incl_prefill": new / t}))?,
        );
    }
    Ok(Value::Object(out))
}
