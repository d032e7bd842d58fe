//! `gpucheck memtrace`: the seed experiment's six model tasks in its order on one device and one
//! process — LLM 4-bit eval, LLM 4-bit eval, SLM finetune, SLM eval, SLM finetune, SLM eval — with
//! the used memory before each load, at its peak, and after everything it owned was dropped, and
//! whether it came back to the pre-load level (± a tolerance). docs/gpu.md requires that it does (a GPU holds one model at a time); if
//! candle's CUDA allocator keeps freed memory cached, this shows it, and the fallback is one process
//! per task (the coordinator's single-box mode can do that).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use serde::Serialize;
use shared::config::LoraConfig;

use super::mem::{MemProbe, PeakSampler};
use super::quant::load_4bit;
use super::work::{Trainer, generate_all, random_prompts};
use super::{Common, GpucheckError, Result, hf};
use engine::model::{LoadOptions, PROJECTIONS, WeightFormat};
use engine::train::Backward;

/// What one task does with its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Zero-shot evaluation with 4-bit weights.
    Eval4bit,
    /// LoRA fine-tuning in the model's dtype.
    Finetune,
    /// Evaluation of the fine-tuned model (adapter merged).
    Eval,
}

#[derive(Debug, Clone)]
pub struct MemtraceOptions {
    /// LLM 1, LLM 2, SLM 1, SLM 2 (HF folders).
    pub shapes: Vec<PathBuf>,
    pub ft_steps: usize,
    pub ft_batch: usize,
    pub ft_seq: usize,
    pub ft_rank: usize,
    pub backward: Backward,
    pub eval_prompts: usize,
    pub eval_len: usize,
    pub eval_new: usize,
    pub eval_batch: usize,
    pub qtype: GgmlDType,
    pub cache_dir: PathBuf,
    pub tolerance_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub kind: StepKind,
    pub model: String,
    pub before_mib: f64,
    pub peak_mib: f64,
    pub after_mib: f64,
    pub returned: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemtraceReport {
    pub card: String,
    pub device: String,
    pub tolerance_mib: f64,
    pub steps: Vec<StepReport>,
    pub all_returned: bool,
    /// Used memory after the last task minus before the first (step 1, after the warm-up), MiB:
    /// creep over the whole run.
    pub drift_mib: f64,
}

/// The seed's order for `[llm1, llm2, slm1, slm2]`.
pub fn plan(shapes: &[PathBuf]) -> Result<Vec<(StepKind, PathBuf)>> {
    let [l1, l2, s1, s2] = shapes else {
        return Err(GpucheckError::Arg(format!(
            "--shapes wants four folders (LLM 1, LLM 2, SLM 1, SLM 2), got {}",
            shapes.len()
        )));
    };
    Ok(vec![
        (StepKind::Eval4bit, l1.clone()),
        (StepKind::Eval4bit, l2.clone()),
        (StepKind::Finetune, s1.clone()),
        (StepKind::Eval, s1.clone()),
        (StepKind::Finetune, s2.clone()),
        (StepKind::Eval, s2.clone()),
    ])
}

/// One task, owning its model: everything is dropped when this returns.
fn run_step(common: &Common, opts: &MemtraceOptions, kind: StepKind, dir: &Path) -> Result<()> {
    let dense = LoadOptions {
        dtype: common.dtype,
        device: common.device.clone(),
        format: WeightFormat::Dense,
    };
    let eval = |model: &engine::model::Model| -> Result<()> {
        let lens = vec![opts.eval_len; opts.eval_prompts];
        let prompts = random_prompts(model.config().vocab_size, &lens, 3);
        generate_all(model, &prompts, opts.eval_new, opts.eval_batch)?;
        Ok(())
    };
    match kind {
        StepKind::Eval4bit => {
            let (model, _) = load_4bit(common, dir, opts.qtype, &opts.cache_dir)?;
            eval(&model)
        }
        StepKind::Finetune => {
            let mut model = hf::load_model(dir, &dense)?;
            let mut trainer = Trainer::new(
                &mut model,
                opts.ft_rank,
                opts.ft_batch,
                opts.ft_seq,
                opts.backward,
            )?;
            for _ in 0..opts.ft_steps {
                trainer.step(&model)?;
            }
            Ok(())
        }
        StepKind::Eval => {
            let mut model = hf::load_model(dir, &dense)?;
            let lora = LoraConfig {
                r: opts.ft_rank,
                alpha: 2.0 * opts.ft_rank as f64,
                dropout: 0.0,
                target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            };
            model.add_lora(&lora, 1)?;
            model.merge_lora()?;
            eval(&model)
        }
    }
}

/// Run the plan; `on_step` sees each step's report as soon as it is known.
pub fn run(
    common: &Common,
    opts: &MemtraceOptions,
    mut on_step: impl FnMut(&StepReport),
) -> Result<MemtraceReport> {
    let probe = Arc::new(MemProbe::for_device(common.device_arg)?);
    std::fs::create_dir_all(&opts.cache_dir).map_err(|source| GpucheckError::Io {
        path: opts.cache_dir.clone(),
        source,
    })?;
    let mut steps = Vec::new();
    // Step 0 repeats the first task as a warm-up: the first CUDA work of a process allocates what
    // lives as long as the process (cuBLAS handles and workspace, loaded kernel modules, the
    // memory pool's first slab). It is reported, and kept out of `all_returned` and the drift.
    let mut plan = plan(&opts.shapes)?;
    plan.insert(0, plan[0].clone());
    for (i, (kind, dir)) in plan.into_iter().enumerate() {
        common.sync()?;
        let before = probe.used_mib()?;
        let sampler = PeakSampler::start(probe.clone());
        let t0 = Instant::now();
        let res = run_step(common, opts, kind, &dir);
        common.sync()?;
        let seconds = t0.elapsed().as_secs_f64();
        let peak = sampler.finish();
        // What the worker does after each task: hand the pool's cached memory back.
        engine::gpu::release_cached(&common.device)?;
        // Give asynchronous frees a moment to land before reading.
        std::thread::sleep(Duration::from_millis(300));
        let after = probe.used_mib()?;
        res?;
        let report = StepReport {
            step: i,
            kind,
            model: dir.display().to_string(),
            before_mib: before,
            peak_mib: peak,
            after_mib: after,
            returned: (after - before).abs() <= opts.tolerance_mib,
            seconds,
        };
        on_step(&report);
        steps.push(report);
    }
    Ok(MemtraceReport {
        card: probe.card(),
        device: common.device_arg.to_string(),
        tolerance_mib: opts.tolerance_mib,
        all_returned: steps.iter().filter(|s| s.step > 0).all(|s| s.returned),
        drift_mib: match (steps.iter().find(|s| s.step == 1), steps.last()) {
            (Some(a), Some(b)) => b.after_mib - a.before_mib,
            _ => 0.0,
        },
        steps,
    })
}
