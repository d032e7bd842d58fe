//! One job of a compute thread: load the model, evaluate or finetune, report through a [`JobSink`].
//!
//! Everything the model owns lives inside [`run`]'s frame, so it is dropped when the job ends. The
//! engine knows nothing of channels or the network: the caller (the agent's worker) implements
//! [`JobSink`] and decides where progress and predictions go.
use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use shared::config::{Batching, TrainingConfig};
use shared::task::{
    EvalPayload, FinetunePayload, ModelSpec, PredictionRow, ProgressEvent, Quantization, TaskSpec,
};
use tokio_util::sync::CancellationToken;

use crate::error::{EngineError, Result as EngineResult};
use crate::generate::generate;
use crate::gpu::mem::{memory_free_bytes, memory_mib, peak_memory_mib};
use crate::load::{self, LoadedModel};
use crate::model::{LoadOptions, Model, WeightFormat};
use crate::peft::PeftAdapter;
use crate::template::ChatTemplate;
use crate::tokenizer::{ModelTokenizer, SpecialTokens};
use crate::train::examples::ExampleBuilder;
use crate::train::{Backward, CurvePoint, Ending, Layout, Resume, TrainError, TrainOptions};

/// Which device a job computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device (fails on a CUDA ordinal without the `cuda` feature or without that GPU).
    pub fn open(self) -> EngineResult<Device> {
        Ok(match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => crate::gpu::open_cuda(i)?,
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work for a compute thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Generate predictions for `payload.samples` (with the adapter in `adapter_dir`, if any).
    Evaluate {
        task: TaskSpec,
        payload: EvalPayload,
        adapter_dir: Option<PathBuf>,
    },
    /// LoRA-finetune the task's model; the adapter (PEFT layout) and checkpoints go to `out_dir`.
    Finetune {
        task: TaskSpec,
        payload: FinetunePayload,
        out_dir: PathBuf,
    },
}

/// A finished job's result.
#[derive(Debug, Clone)]
pub enum JobOutput {
    Evaluated(EvalPerf),
    Finetuned(TrainSummary),
}

/// Where jobs keep what they derive from models (the quantised-weights cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    pub cache_dir: PathBuf,
}

impl Default for JobConfig {
    /// `$SIZESPEC_CACHE_DIR`, else `~/.cache/sizespec`.
    fn default() -> Self {
        let cache_dir = std::env::var_os("SIZESPEC_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME").map_or_else(
                    || PathBuf::from(".cache/sizespec"),
                    |h| PathBuf::from(h).join(".cache/sizespec"),
                )
            });
        Self { cache_dir }
    }
}

/// Where a running job reports, in order: any number of progress events and prediction batches
/// (the terminal result is [`run`]'s return value). Called on the compute thread, so an
/// implementation may block while its consumer catches up.
pub trait JobSink {
    /// A progress event (stage, training step, evaluation throughput).
    fn progress(&self, event: ProgressEvent);
    /// A batch of predictions, sent as soon as its generation batch is done.
    fn predictions(&self, rows: Vec<PredictionRow>);
    /// A finetune wrote a complete checkpoint into `dir` (its state is `state`). Called on the
    /// compute thread before the next optimiser step: `dir` is overwritten by the next checkpoint,
    /// so an implementation that keeps it (to upload) copies it first. Default: nothing.
    fn checkpoint(&self, dir: &std::path::Path, state: &crate::train::TrainerState) {
        let _ = (dir, state);
    }
    /// The job entered stage `name` ("loading", "training", ...).
    fn stage(&self, name: &str) {
        self.progress(ProgressEvent::Stage {
            name: name.to_string(),
        });
    }
}

/// How an evaluation went, for the results' performance section.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPerf {
    pub load_s: f64,
    pub eval_s: f64,
    pub samples: u64,
    pub samples_per_s: f64,
    /// Generated tokens per second (padding and prompts not counted).
    pub tokens_per_s: f64,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub peak_mem_mib: u64,
    pub device_name: String,
}

/// What a finetuning run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The adapter in PEFT layout (the best by validation loss when there was validation).
    pub adapter_dir: PathBuf,
    /// [`PeftAdapter::content_hash`] of that adapter.
    pub adapter_hash: String,
    pub steps: u64,
    pub epochs: u32,
    pub early_stopped: bool,
    /// Mean train loss of the last optimiser step.
    pub final_train_loss: Option<f64>,
    pub first_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub curve: Vec<CurvePoint>,
    pub load_s: f64,
    pub train_s: f64,
    /// Trained (non-padding) tokens per second.
    pub tokens_per_s: f64,
    pub peak_mem_mib: u64,
    pub device_name: String,
    /// The step of the checkpoint the run resumed from; `None` when it trained from step 0.
    pub resumed_from_step: Option<u64>,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Peft(#[from] crate::peft::PeftError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("task `{task}`: {what}")]
    Task { task: String, what: String },
}

impl JobError {
    /// A retry would fail the same way: the engine's inputs are at fault
    /// ([`EngineError::is_permanent`]), or the task itself is (nothing to evaluate).
    pub fn is_permanent(&self) -> bool {
        match self {
            JobError::Engine(e) => e.is_permanent(),
            JobError::Task { .. } => true,
            JobError::Train(_) | JobError::Peft(_) | JobError::Candle(_) => false,
        }
    }
}

/// A device's name for reports.
pub fn device_name(spec: DeviceSpec) -> String {
    match spec {
        DeviceSpec::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        DeviceSpec::Cuda(i) => format!("cuda:{i}"),
    }
}

/// Runs `job` to completion on `dev`, reporting to `sink`; `cancel` stops it between steps.
pub fn run(
    job: Job,
    dev: &Device,
    spec: DeviceSpec,
    cfg: &JobConfig,
    sink: &dyn JobSink,
    cancel: &CancellationToken,
) -> Result<JobOutput, JobError> {
    match job {
        Job::Evaluate {
            task,
            payload,
            adapter_dir,
        } => {
            sink.stage("loading");
            let t0 = Instant::now();
            let loaded = load_for_task(&task.model, Purpose::Inference, dev, cfg)?;
            let (mut model, tok, template) = (loaded.model, loaded.tokenizer, loaded.template);
            if let Some(dir) = &adapter_dir {
                sink.stage("applying adapter");
                apply_adapter(&mut model, dir)?;
            }
            let load_s = t0.elapsed().as_secs_f64();
            let perf = evaluate(
                &model, &tok, &template, &task, &payload, sink, cancel, spec, load_s,
            )?;
            Ok(JobOutput::Evaluated(perf))
        }
        Job::Finetune {
            task,
            payload,
            out_dir,
        } => {
            sink.stage("loading");
            let t0 = Instant::now();
            let loaded = load_for_task(&task.model, Purpose::Training, dev, cfg)?;
            let (mut model, tok, template) = (loaded.model, loaded.tokenizer, loaded.template);
            let load_s = t0.elapsed().as_secs_f64();
            let s = finetune(
                &mut model, &tok, &template, &task, &payload, &out_dir, sink, cancel, spec, load_s,
            )?;
            Ok(JobOutput::Finetuned(s))
        }
    }
}

/// What a model is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Dense weights (f32 on the CPU, bf16 on a GPU): gradients must flow through every layer.
    Training,
    /// As the task's [`Quantization`] says.
    Inference,
}

/// The dense dtype for a device: f32 on the CPU (fast there, exact), bf16 on a GPU.
pub fn dense_dtype(dev: &Device) -> DType {
    match dev {
        Device::Cpu => DType::F32,
        _ => DType::BF16,
    }
}

/// The 4-bit type for a model's weights: Q4K where every row length is a multiple of 256 (K-quant
/// blocks), else Q4_0. One exception: a GGUF already shipped 4-bit, on the CPU, is converted to Q8_0
/// (docs/data.md: the offline model ships as Q4_1): candle has SIMD kernels for Q8_0, not Q4_1 (~2.4× faster decode), and the
/// 4-bit values survive the conversion nearly exactly.
pub fn quant_type(
    dev: &Device,
    cfg: &crate::model::Config,
    source: &load::ModelSource,
) -> GgmlDType {
    if matches!(dev, Device::Cpu) && matches!(source, load::ModelSource::Gguf(_)) {
        return GgmlDType::Q8_0;
    }
    let rows = [
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads * cfg.head_dim,
    ];
    if rows.iter().all(|r| r % 256 == 0) {
        GgmlDType::Q4K
    } else {
        GgmlDType::Q4_0
    }
}

/// Resolves and loads the task's model (weights, its own tokenizer, its own template).
pub fn load_for_task(
    spec: &ModelSpec,
    purpose: Purpose,
    dev: &Device,
    cfg: &JobConfig,
) -> Result<LoadedModel, JobError> {
    let source = load::resolve(&spec.name, spec.revision.as_deref())?;
    let dense = LoadOptions {
        dtype: dense_dtype(dev),
        device: dev.clone(),
        format: WeightFormat::Dense,
    };
    let quantized = purpose == Purpose::Inference && spec.quantization == Quantization::Q4;
    if !quantized {
        return Ok(load::load(&source, &dense)?);
    }
    let (_, _, model_cfg) = load::load_tokenizer(&source)?;
    let qtype = quant_type(dev, &model_cfg, &source);
    let (loaded, outcome) = load::quant::load_quantized_cached(
        &source,
        &spec.name,
        spec.revision.as_deref(),
        qtype,
        &dense,
        &cfg.cache_dir.join("quantized"),
    )?;
    tracing::info!(model = %spec.name, ?qtype, ?outcome, "loaded quantised");
    Ok(loaded)
}

/// Loads a PEFT adapter from `dir` onto `model` and merges it into the base weights.
pub fn apply_adapter(model: &mut Model, dir: &std::path::Path) -> Result<String, JobError> {
    let adapter = PeftAdapter::load(dir, model.device())?;
    model.add_lora(&adapter.config.lora_config(), 0)?;
    let expected: Vec<(String, Vec<usize>)> = model
        .lora_vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    adapter.check_against(
        expected.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
        &dir.join(crate::peft::WEIGHTS_FILE),
    )?;
    for (name, t) in &adapter.tensors {
        model.set_lora(name, t)?;
    }
    model.merge_lora()?;
    Ok(adapter.content_hash()?)
}

/// Generates an answer for every sample, streaming prediction rows per generation batch.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    tok: &ModelTokenizer,
    template: &ChatTemplate,
    task: &TaskSpec,
    payload: &EvalPayload,
    sink: &dyn JobSink,
    cancel: &CancellationToken,
    spec: DeviceSpec,
    load_s: f64,
) -> Result<EvalPerf, JobError> {
    sink.stage("evaluating");
    let builder = ExampleBuilder {
        tokenizer: tok,
        template,
        prompt: &payload.prompt,
        max_length: usize::MAX,
    };
    let prompts = payload
        .samples
        .iter()
        .map(|r| builder.prompt_ids(&r.dialogue))
        .collect::<Result<Vec<_>, _>>()?;
    if prompts.is_empty() {
        return Err(JobError::Task {
            task: task.id.0.clone(),
            what: "no samples to evaluate".into(),
        });
    }
    let t0 = Instant::now();
    let total = prompts.len() as u64;
    let mut done = 0u64;
    let mut generated = 0u64;
    let mut decode_err: Option<EngineError> = None;
    let (_, stats) = generate(
        model,
        &prompts,
        tok.stop_ids(),
        &payload.generation,
        cancel,
        |batch| {
            let mut rows = Vec::with_capacity(batch.len());
            for g in batch {
                let r = &payload.samples[g.index];
                let raw = match tok.decode(g.content(), SpecialTokens::Omit) {
                    Ok(t) => t,
                    Err(e) => {
                        decode_err.get_or_insert(e);
                        continue;
                    }
                };
                let extracted = shared::icd10::extract(&raw);
                let reference = shared::icd10::normalize(&r.code);
                rows.push(PredictionRow {
                    sample_id: r.id.clone(),
                    correct: extracted.as_deref() == Some(reference.as_str()),
                    reference,
                    raw_output: raw,
                    extracted,
                    latency_ms: g.latency.as_secs_f64() * 1e3,
                    generated_tokens: g.generated.len() as u32,
                    prompt_tokens: g.prompt_tokens as u32,
                });
                generated += g.generated.len() as u64;
            }
            done += batch.len() as u64;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            sink.predictions(rows);
            sink.progress(ProgressEvent::EvalProgress {
                done,
                total,
                samples_per_s: done as f64 / secs,
                tokens_per_s: generated as f64 / secs,
                memory_mib: memory_mib(model.device()),
            });
        },
    )?;
    if let Some(e) = decode_err {
        return Err(e.into());
    }
    let eval_s = stats.elapsed.as_secs_f64();
    Ok(EvalPerf {
        load_s,
        eval_s,
        samples: total,
        samples_per_s: total as f64 / eval_s.max(1e-9),
        tokens_per_s: stats.tokens_per_s(),
        generated_tokens: stats.generated_tokens as u64,
        prompt_tokens: stats.prompt_tokens as u64,
        peak_mem_mib: peak_memory_mib(model.device()),
        device_name: device_name(spec),
    })
}

/// LoRA-finetunes `model` on the payload; the adapter goes to `out_dir/adapter` (PEFT layout) and
/// checkpoints to `out_dir/checkpoint` (a run finding one there resumes from it; the agent puts a
/// downloaded checkpoint there), each reported to `sink` ([`JobSink::checkpoint`]).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: &mut Model,
    tok: &ModelTokenizer,
    template: &ChatTemplate,
    task: &TaskSpec,
    payload: &FinetunePayload,
    out_dir: &std::path::Path,
    sink: &dyn JobSink,
    cancel: &CancellationToken,
    spec: DeviceSpec,
    load_s: f64,
) -> Result<TrainSummary, JobError> {
    sink.stage("tokenizing");
    let builder = ExampleBuilder {
        tokenizer: tok,
        template,
        prompt: &payload.prompt,
        max_length: payload.training.max_length,
    };
    let train = builder.examples(&payload.train)?;
    let val = builder.examples(&payload.validation)?;
    let layout = layout_for(model, &payload.training);
    let opts = TrainOptions {
        backward: match model.device() {
            // On the CPU the plain graph is faster; on a GPU keep as many layers' graphs as the
            // free memory holds and recompute the rest.
            Device::Cpu => Backward::Plain,
            dev => gpu_backward(model, &payload.training, layout, dev),
        },
        layout,
        pad_id: tok.pad_id(),
        checkpoint_dir: Some(out_dir.join(crate::train::checkpoint::CHECKPOINT_DIR)),
        resume: Resume::IfPresent,
        base_model: task.model.name.clone(),
        revision: task.model.revision.clone(),
    };
    sink.stage("training");
    let out = crate::train::train_with(
        model,
        &train,
        &val,
        &payload.training,
        &payload.lora,
        &opts,
        cancel,
        |e| sink.progress(e),
        |dir, state| sink.checkpoint(dir, state),
    )?;
    sink.stage("saving adapter");
    let adapter_dir = out_dir.join("adapter");
    out.adapter.save(&adapter_dir)?;
    Ok(TrainSummary {
        adapter_hash: out.adapter.content_hash()?,
        adapter_dir,
        steps: out.steps,
        epochs: out.epochs_completed,
        early_stopped: out.ending == Ending::EarlyStopped,
        final_train_loss: out
            .curve
            .iter()
            .rev()
            .find(|p| p.kind == crate::train::CurveKind::Train)
            .map(|p| p.loss),
        first_val_loss: out.first_val_loss(),
        best_val_loss: out.best_val_loss,
        tokens_per_s: out.tokens_per_s(),
        curve: out.curve,
        load_s,
        train_s: out.train_seconds,
        peak_mem_mib: peak_memory_mib(model.device()),
        device_name: device_name(spec),
        resumed_from_step: out.resumed_from,
    })
}

/// The micro-batch layout `training.batching` asks for on the model's device: `auto` is
/// length-grouped on a GPU and fixed on the CPU (whose adapters stay byte-identical to fixed
/// batching). A length-grouped run without `max_batch_tokens` gets a budget sized to the GPU's free
/// memory ([`crate::train::step::auto_batch_tokens`]), or `batch_size` rows on the CPU.
pub fn layout_for(model: &Model, t: &TrainingConfig) -> Layout {
    let gpu = !matches!(model.device(), Device::Cpu);
    match t.batching {
        Batching::Fixed => Layout::Fixed,
        Batching::Auto if !gpu => Layout::Fixed,
        Batching::Auto | Batching::LengthGrouped => Layout::LengthGrouped {
            max_tokens: match t.max_batch_tokens {
                0 if gpu => {
                    let free = memory_free_bytes(model.device()).unwrap_or(0);
                    Some(crate::train::step::auto_batch_tokens(
                        model,
                        max_tokens_per_example(model, t),
                        free,
                    ))
                }
                0 => None,
                n => Some(n),
            },
        },
    }
}

/// The longest an example can be: `max_length`, within the model's context.
fn max_tokens_per_example(model: &Model, t: &TrainingConfig) -> usize {
    t.max_length
        .min(model.config().max_position_embeddings.max(1))
}

/// The GPU's backward mode for this model and the largest micro-batch `layout` can form
/// ([`crate::train::step::auto_backward`] on the device's free memory).
fn gpu_backward(model: &Model, t: &TrainingConfig, layout: Layout, dev: &Device) -> Backward {
    let longest = max_tokens_per_example(model, t);
    let tokens = match layout {
        Layout::LengthGrouped {
            max_tokens: Some(budget),
        } => budget.max(longest),
        _ => t.batch_size.max(1) * longest,
    };
    let free = memory_free_bytes(dev).unwrap_or(0);
    crate::train::step::auto_backward(model, tokens, free)
}
