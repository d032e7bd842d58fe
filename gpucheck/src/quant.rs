//! `gpucheck quant`: what 4-bit loading costs and changes. Loads the model dense (bf16) and 4-bit
//! through the product's quantised cache ([`engine::load::quant`]): peak memory of each (NVML used
//! memory over the pre-load level on CUDA, RSS on the CPU), the time of a cold 4-bit load (quantise +
//! write the cache) and of a second, cached one, and how far the 4-bit logits are from the dense ones
//! on fixed ids (relative error, argmax agreement over every position).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::compare::{Argmax, Check, compare};
use super::hf::{self, TokenizerShadow};
use super::mem::{MemProbe, PeakSampler};
use super::work::random_batch;
use super::{Common, GpucheckError, Result};
use engine::load::ModelSource;
use engine::load::quant::{CacheOutcome, cache_path, load_quantized_cached};
use engine::model::{LoadOptions, Model, WeightFormat};

/// The 4-bit types offered (K-quants need rows that are multiples of 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QType(pub GgmlDType);

impl std::str::FromStr for QType {
    type Err = GpucheckError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(Self(match s {
            "q4_0" => GgmlDType::Q4_0,
            "q4_1" => GgmlDType::Q4_1,
            "q4k" => GgmlDType::Q4K,
            "q8_0" => GgmlDType::Q8_0,
            _ => {
                return Err(GpucheckError::Arg(format!(
                    "qtype `{s}`: expected q4_0, q4_1, q4k or q8_0"
                )));
            }
        }))
    }
}

#[derive(Debug, Clone)]
pub struct QuantOptions {
    pub model: PathBuf,
    pub qtype: QType,
    /// Where the quantised cache goes (the cold load deletes this model's entry first).
    pub cache_dir: PathBuf,
    /// Fixed ids for the logits comparison: `[batch, seq]`.
    pub batch: usize,
    pub seq: usize,
}

/// One load: time, memory and whether it came from the cache.
#[derive(Debug, Clone, Serialize)]
pub struct LoadStat {
    pub load_s: f64,
    /// Peak during load and one forward, over the pre-load level, MiB.
    pub peak_mib: f64,
    /// Still in use after the model was dropped, over the pre-load level, MiB.
    pub after_drop_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantReport {
    pub card: String,
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub qtype: String,
    pub dense: LoadStat,
    pub quant_cold: LoadStat,
    pub quant_cached: LoadStat,
    pub cache_file_mib: f64,
    /// 4-bit (cached load) vs dense logits, every position of the fixed ids.
    pub agreement: Check,
    /// The cached load must give exactly the cold load's logits.
    pub cached_equals_cold: bool,
}

/// Load with `load`, run the fixed ids, drop the model; returns the logits on the CPU and the stats.
fn measure(
    common: &Common,
    probe: &Arc<MemProbe>,
    opts: &QuantOptions,
    load: impl FnOnce() -> Result<(Model, Option<&'static str>)>,
) -> Result<(Tensor, LoadStat)> {
    common.sync()?;
    let before = probe.used_mib()?;
    let sampler = PeakSampler::start(probe.clone());
    let t0 = Instant::now();
    let run = || -> Result<(Tensor, f64, Option<&'static str>)> {
        let (model, cache) = load()?;
        common.sync()?;
        let load_s = t0.elapsed().as_secs_f64();
        let ids = random_batch(&model, opts.batch, opts.seq, 1)?;
        let ctx = model.attn_ctx(&vec![0; opts.batch], 0, opts.seq)?;
        let logits = model.forward(&ids, &ctx, None)?.to_device(&Device::Cpu)?;
        Ok((logits, load_s, cache))
    };
    let res = run();
    common.sync()?;
    let peak = sampler.finish();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = probe.used_mib()?;
    let (logits, load_s, cache) = res?;
    Ok((
        logits,
        LoadStat {
            load_s,
            peak_mib: peak - before,
            after_drop_mib: after - before,
            cache,
        },
    ))
}

/// Load the model of `dir` 4-bit through the product's cache (a placeholder tokenizer stands in).
pub fn load_4bit(
    common: &Common,
    dir: &std::path::Path,
    qtype: GgmlDType,
    cache_dir: &std::path::Path,
) -> Result<(Model, CacheOutcome)> {
    let shadow = TokenizerShadow::new(dir)?;
    let opts = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Quantized(qtype),
    };
    let name = dir.display().to_string();
    let (loaded, outcome) = load_quantized_cached(
        &ModelSource::HfDir(shadow.dir.clone()),
        &name,
        None,
        qtype,
        &opts,
        cache_dir,
    )?;
    Ok((loaded.model, outcome))
}

fn outcome_name(o: CacheOutcome) -> &'static str {
    match o {
        CacheOutcome::Hit => "hit",
        CacheOutcome::Written => "written",
    }
}

pub fn run(common: &Common, opts: &QuantOptions) -> Result<QuantReport> {
    let probe = Arc::new(MemProbe::for_device(common.device_arg)?);
    let qt = opts.qtype.0;
    let dense_opts = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Dense,
    };
    let (dense_logits, dense) = measure(common, &probe, opts, || {
        Ok((hf::load_model(&opts.model, &dense_opts)?, None))
    })?;
    let cache_file = cache_path(
        &opts.cache_dir,
        &opts.model.display().to_string(),
        None,
        qt,
        common.dtype,
    );
    if cache_file.exists() {
        std::fs::remove_file(&cache_file).map_err(|source| GpucheckError::Io {
            path: cache_file.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(|source| GpucheckError::Io {
        path: opts.cache_dir.clone(),
        source,
    })?;
    let load4 = || -> Result<(Model, Option<&'static str>)> {
        let (m, o) = load_4bit(common, &opts.model, qt, &opts.cache_dir)?;
        Ok((m, Some(outcome_name(o))))
    };
    let (cold_logits, quant_cold) = measure(common, &probe, opts, load4)?;
    let (cached_logits, quant_cached) = measure(common, &probe, opts, load4)?;
    let cache_file_mib = std::fs::metadata(&cache_file)
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let agreement = compare(
        "4bit_vs_dense",
        &cached_logits,
        &dense_logits,
        f64::INFINITY,
        Argmax::Rows,
    )?;
    let same = compare(
        "cached_vs_cold",
        &cached_logits,
        &cold_logits,
        0.0,
        Argmax::Skip,
    )?;
    Ok(QuantReport {
        card: probe.card(),
        model: opts.model.display().to_string(),
        device: common.device_arg.to_string(),
        dtype: format!("{:?}", common.dtype).to_lowercase(),
        qtype: format!("{qt:?}"),
        dense,
        quant_cold,
        quant_cached,
        cache_file_mib,
        agreement,
        cached_equals_cold: same.max_abs_diff == 0.0,
    })
}
