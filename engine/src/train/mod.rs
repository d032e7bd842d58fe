//! LoRA training: answer-only cross-entropy, AdamW with warmup + cosine/linear/constant schedule,
//! gradient accumulation, global-norm clipping, periodic validation with early stopping,
//! checkpoints (each epoch end, every `checkpoint_every_steps` steps / `checkpoint_every_s`
//! seconds, and on cancellation) that a run resumes from mid-epoch, progress events. Seeded and
//! bit-reproducible on CPU: a resumed run's adapter equals an uninterrupted run's, byte for byte.
//!
//! Layout: [`batch`] examples, labels and padding; [`batching`] which examples form each micro-batch
//! and optimiser step (fixed or length-grouped); [`examples`] records → tokenized examples with the
//! model's own tokenizer and template; [`step`] forward/backward (plain or layer-by-layer
//! recomputation); [`optim`] AdamW and clipping; [`schedule`] learning rates; [`checkpoint`] saving
//! and resuming.
pub mod batch;
pub mod batching;
pub mod checkpoint;
pub mod examples;
pub mod optim;
pub mod schedule;
pub mod step;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Tensor, Var};
use shared::config::{LoraConfig, TrainingConfig};
use shared::task::ProgressEvent;
use tokio_util::sync::CancellationToken;

pub use batch::{Batch, Example, IGNORE, collate};
pub use batching::{Layout, epoch_order};
pub use checkpoint::{CurveKind, CurvePoint, TrainerState};
pub use step::Backward;

use crate::error::EngineError;
use crate::model::{Mode, Model};
use crate::peft::{AdapterConfig, PeftAdapter, PeftError};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] EngineError),
    #[error("training tensors: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("training data: {0}")]
    Data(String),
    #[error("training setting: {0}")]
    Setting(String),
    #[error("training cancelled after {step} optimiser steps")]
    Cancelled { step: u64 },
}

/// Whether a run continues from the checkpoint in its checkpoint folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// Continue from the checkpoint in the checkpoint folder when there is one.
    #[default]
    IfPresent,
    /// Start over, ignoring any checkpoint.
    Fresh,
}

/// How the run is carried out (the hyper-parameters are in [`TrainingConfig`] / [`LoraConfig`]).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub backward: Backward,
    /// How examples become micro-batches (the job resolves `training.batching` for its device).
    pub layout: Layout,
    /// Token id that fills padding columns (never a label).
    pub pad_id: u32,
    /// Where checkpoints go (each overwrites the last); `None` = no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    pub resume: Resume,
    /// `base_model_name_or_path` written into the adapter config.
    pub base_model: String,
    pub revision: Option<String>,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    EarlyStopped,
}

/// What a finished run produced. The model holds the returned adapter (the best by validation
/// loss when there was validation, else the last).
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub adapter: PeftAdapter,
    pub ending: Ending,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs_completed: u32,
    pub best_val_loss: Option<f64>,
    pub curve: Vec<CurvePoint>,
    pub train_seconds: f64,
    /// Real (non-padding) tokens forwarded and back-propagated.
    pub trained_tokens: u64,
    /// Tokens forwarded including padding (`rows × width` summed over micro-batches).
    pub padded_tokens: u64,
    /// The optimiser step of the checkpoint this run resumed from; `None` for a fresh run.
    pub resumed_from: Option<u64>,
}

impl TrainOutcome {
    pub fn first_val_loss(&self) -> Option<f64> {
        self.curve
            .iter()
            .find(|p| p.kind == CurveKind::Validation)
            .map(|p| p.loss)
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.trained_tokens as f64 / self.train_seconds.max(1e-9)
    }
    /// Share of the forwarded tokens that were padding.
    pub fn padding_fraction(&self) -> f64 {
        1.0 - self.trained_tokens as f64 / self.padded_tokens.max(1) as f64
    }
}

/// The mean cross-entropy per label token over `examples` (eval mode: no dropout), in the
/// micro-batches [`batching::eval_batches`] cuts for `layout`.
pub fn mean_loss(
    model: &mut Model,
    examples: &[Example],
    layout: Layout,
    batch_size: usize,
    pad_id: u32,
) -> Result<f64, TrainError> {
    let prev = model.mode();
    model.set_mode(Mode::Eval);
    let mut sum = 0.0;
    let mut labels = 0usize;
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let result = (|| {
        for micro in batching::eval_batches(&lengths, layout, batch_size) {
            let refs: Vec<&Example> = micro.iter().map(|&i| &examples[i]).collect();
            let b = collate(&refs, pad_id, model.device())?;
            sum += step::loss_sum(model, &b)?;
            labels += b.label_tokens;
        }
        Ok::<_, TrainError>(())
    })();
    model.set_mode(prev);
    result?;
    Ok(sum / labels.max(1) as f64)
}

fn check(cfg: &TrainingConfig, train: &[Example]) -> Result<(), TrainError> {
    if train.is_empty() {
        return Err(TrainError::Data("the training set is empty".into()));
    }
    if cfg.batch_size == 0 || cfg.gradient_accumulation_steps == 0 {
        return Err(TrainError::Setting(
            "batch_size and gradient_accumulation_steps must be at least 1".into(),
        ));
    }
    if cfg.epochs == 0 {
        return Err(TrainError::Setting("epochs must be at least 1".into()));
    }
    if let Some(i) = train.iter().position(|e| e.label_count() == 0) {
        return Err(TrainError::Data(format!(
            "training example {i} has no answer tokens"
        )));
    }
    Ok(())
}

fn var_values(vars: &[(String, Var)]) -> candle_core::Result<Vec<(String, Tensor)>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// One validation pass: records the loss, keeps the best adapter values, and says whether early
/// stopping's patience ran out.
#[allow(clippy::too_many_arguments)]
fn validate(
    model: &mut Model,
    val: &[Example],
    cfg: &TrainingConfig,
    opts: &TrainOptions,
    state: &mut TrainerState,
    epoch: u32,
    best: &mut Option<Vec<(String, Tensor)>>,
    on_event: &mut impl FnMut(ProgressEvent),
) -> Result<bool, TrainError> {
    if val.is_empty() {
        return Ok(false);
    }
    let loss = mean_loss(model, val, opts.layout, cfg.batch_size, opts.pad_id)?;
    on_event(ProgressEvent::Validation {
        epoch,
        step: state.global_step,
        loss,
    });
    state.curve.push(CurvePoint {
        epoch,
        step: state.global_step,
        loss,
        kind: CurveKind::Validation,
    });
    if state.best_val_loss.is_none_or(|b| loss < b) {
        state.best_val_loss = Some(loss);
        state.bad_validations = 0;
        *best = Some(var_values(&model.lora_vars())?);
    } else {
        state.bad_validations += 1;
    }
    Ok(cfg.early_stopping_patience > 0 && state.bad_validations >= cfg.early_stopping_patience)
}

/// Writes the run's current point as a checkpoint into `dir` (dropout position, optimiser
/// moments and seconds trained are filled into `state` here).
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    dir: &Path,
    model: &Model,
    opt: &optim::AdamW,
    adapter_cfg: &AdapterConfig,
    state: &mut TrainerState,
    best: Option<&Vec<(String, Tensor)>>,
    trained_seconds: f64,
) -> Result<(), TrainError> {
    let (seed, pos) = model.dropout_rng().position();
    state.dropout_seed = seed;
    state.dropout_word_pos = pos;
    let (opt_state, opt_steps) = opt.state()?;
    state.optimizer_steps = opt_steps;
    state.train_seconds = trained_seconds;
    let adapter = checkpoint::adapter_of(adapter_cfg, var_values(&model.lora_vars())?)?;
    let best_adapter = best
        .map(|b| checkpoint::adapter_of(adapter_cfg, b.clone()))
        .transpose()?;
    checkpoint::save(dir, state, &adapter, best_adapter.as_ref(), &opt_state)
}

/// [`train_with`] without a checkpoint callback.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut Model,
    train: &[Example],
    val: &[Example],
    cfg: &TrainingConfig,
    lora: &LoraConfig,
    opts: &TrainOptions,
    cancel: &CancellationToken,
    on_event: impl FnMut(ProgressEvent),
) -> Result<TrainOutcome, TrainError> {
    train_with(
        model,
        train,
        val,
        cfg,
        lora,
        opts,
        cancel,
        on_event,
        |_, _| {},
    )
}

/// Trains fresh LoRA adapters (attached here, seeded by `cfg.seed`) on `train`, validating on
/// `val`. Emits [`ProgressEvent::TrainStep`] / [`ProgressEvent::Validation`] through `on_event`;
/// checks `cancel` between optimiser steps. With a checkpoint folder, resumes from the checkpoint
/// there ([`Resume::IfPresent`]) and writes one at each epoch end, as `cfg.checkpoint_every_steps`
/// / `cfg.checkpoint_every_s` say, and on cancellation (when steps were done since the last);
/// `on_checkpoint` hears of each once it is complete on disk, before the next step changes it.
/// Leaves the model in eval mode holding the outcome's adapter (not merged).
// Data, hyper-parameters (config sections) and plumbing (options, cancellation, events) stay
// separate arguments on purpose: each comes from a different owner.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    model: &mut Model,
    train: &[Example],
    val: &[Example],
    cfg: &TrainingConfig,
    lora: &LoraConfig,
    opts: &TrainOptions,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(ProgressEvent),
    mut on_checkpoint: impl FnMut(&Path, &TrainerState),
) -> Result<TrainOutcome, TrainError> {
    check(cfg, train)?;
    model.add_lora(lora, cfg.seed)?;
    model.set_mode(Mode::Train);
    let named_vars = model.lora_vars();
    let vars: Vec<Var> = named_vars.iter().map(|(_, v)| v.clone()).collect();
    let adapter_cfg = AdapterConfig::new(lora, &opts.base_model, opts.revision.as_deref());
    let mut opt = optim::AdamW::new(
        vars.clone(),
        optim::AdamWParams {
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    // Every layout gives a step batch_size × accumulation examples (the last takes the rest).
    let steps_per_epoch = train
        .len()
        .div_ceil(cfg.batch_size * cfg.gradient_accumulation_steps)
        as u64;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let total_steps = steps_per_epoch * u64::from(cfg.epochs);
    let sched = schedule::Schedule::new(
        cfg.learning_rate,
        cfg.schedule,
        cfg.warmup_ratio,
        total_steps,
    );

    let mut state = TrainerState {
        epochs_completed: 0,
        global_step: 0,
        best_val_loss: None,
        bad_validations: 0,
        early_stopped: false,
        curve: Vec::new(),
        dropout_seed: [0; 32],
        dropout_word_pos: 0,
        optimizer_steps: 0,
        train_seconds: 0.0,
        trained_tokens: 0,
        padded_tokens: 0,
        steps_in_epoch: 0,
        total_steps,
    };
    let mut resumed_from = None;
    let mut best: Option<Vec<(String, Tensor)>> = None;
    if let (Some(dir), Resume::IfPresent) = (&opts.checkpoint_dir, opts.resume)
        && let Some(loaded) = checkpoint::load(dir, model.device())?
    {
        if loaded.state.total_steps != 0 && loaded.state.total_steps != total_steps {
            return Err(TrainError::Checkpoint {
                path: dir.join(checkpoint::STATE_FILE),
                reason: format!(
                    "written by a run of {} optimiser steps, this run has {total_steps}: other \
                     data or training settings; remove the checkpoint to start over",
                    loaded.state.total_steps
                ),
            });
        }
        let expected: Vec<(String, Vec<usize>)> = named_vars
            .iter()
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        let path = checkpoint::adapter_dir(dir);
        loaded.adapter.check_against(
            expected.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            &path,
        )?;
        for (name, t) in &loaded.adapter.tensors {
            model.set_lora(name, t)?;
        }
        opt.restore(
            |n| loaded.optimizer.get(n).cloned(),
            loaded.state.optimizer_steps,
        )
        .map_err(|reason| TrainError::Checkpoint {
            path: dir.join(checkpoint::OPTIMIZER_FILE),
            reason,
        })?;
        model
            .dropout_rng()
            .restore_position(loaded.state.dropout_seed, loaded.state.dropout_word_pos);
        best = loaded.best.map(|b| b.tensors.into_iter().collect());
        state = loaded.state;
        state.total_steps = total_steps;
        resumed_from = Some(state.global_step);
        tracing::info!(
            epochs = state.epochs_completed,
            step = state.global_step,
            steps_in_epoch = state.steps_in_epoch,
            "resumed from checkpoint"
        );
    }

    let mut ending = if state.early_stopped {
        Ending::EarlyStopped
    } else {
        Ending::Completed
    };
    let started = Instant::now();
    let base_seconds = state.train_seconds;
    // The data position a mid-epoch checkpoint resumes at: steps of its epoch already done.
    let (resume_epoch, resume_skip) = (state.epochs_completed, state.steps_in_epoch as usize);
    let mut last_checkpoint = (Instant::now(), state.global_step);
    let every_s = Duration::from_secs(cfg.checkpoint_every_s);
    'epochs: for epoch in state.epochs_completed..cfg.epochs {
        if ending == Ending::EarlyStopped {
            break;
        }
        let epoch1 = epoch + 1;
        let plan = batching::plan_epoch(
            &lengths,
            opts.layout,
            cfg.batch_size,
            cfg.gradient_accumulation_steps,
            cfg.seed,
            epoch,
        );
        let skip = if epoch == resume_epoch {
            resume_skip
        } else {
            0
        };
        if skip >= plan.len() && skip > 0 {
            return Err(TrainError::Checkpoint {
                path: opts.checkpoint_dir.clone().unwrap_or_default(),
                reason: format!(
                    "{skip} steps of epoch {} done, but the epoch has {} steps",
                    epoch + 1,
                    plan.len()
                ),
            });
        }
        for (i, group) in plan.iter().enumerate().skip(skip) {
            if cancel.is_cancelled() {
                // Steps done since the last checkpoint are kept for a resume.
                if let Some(dir) = &opts.checkpoint_dir
                    && state.global_step > last_checkpoint.1
                {
                    state.steps_in_epoch = i as u64;
                    let secs = base_seconds + started.elapsed().as_secs_f64();
                    save_checkpoint(
                        dir,
                        model,
                        &opt,
                        &adapter_cfg,
                        &mut state,
                        best.as_ref(),
                        secs,
                    )?;
                    on_checkpoint(dir, &state);
                }
                return Err(TrainError::Cancelled {
                    step: state.global_step,
                });
            }
            let t0 = Instant::now();
            let labels: usize = group
                .iter()
                .flat_map(|m| m.iter())
                .map(|&i| train[i].label_count())
                .sum();
            let scale = 1.0 / labels as f64;
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut sum = 0.0;
            let mut tokens = 0usize;
            let mut padded = 0usize;
            for m in group {
                let refs: Vec<&Example> = m.iter().map(|&i| &train[i]).collect();
                let b = collate(&refs, opts.pad_id, model.device())?;
                let (s, g) = step::loss_and_grads(model, &b, &vars, scale, opts.backward)?;
                sum += s;
                tokens += b.real_tokens;
                padded += b.ids.elem_count();
                for (acc, g) in grads.iter_mut().zip(g) {
                    *acc = match (acc.take(), g) {
                        (Some(a), Some(g)) => Some((a + g)?),
                        (a, g) => a.or(g),
                    };
                }
            }
            // Clipping's factor goes into the update (one fused kernel on a GPU) rather than
            // rescaling every gradient tensor first.
            let norm = optim::global_norm(&grads)?;
            let lr = sched.lr(state.global_step);
            opt.step_scaled(&grads, lr, optim::clip_factor(norm, cfg.max_grad_norm))?;
            state.global_step += 1;
            state.trained_tokens += tokens as u64;
            state.padded_tokens += padded as u64;
            let loss = sum / labels as f64;
            if !loss.is_finite() {
                return Err(TrainError::Data(format!(
                    "loss became {loss} at step {} (epoch {epoch1}); lower the learning rate",
                    state.global_step
                )));
            }
            state.curve.push(CurvePoint {
                epoch: epoch1,
                step: state.global_step,
                loss,
                kind: CurveKind::Train,
            });
            on_event(ProgressEvent::TrainStep {
                epoch: epoch1,
                step: state.global_step,
                total_steps,
                loss,
                lr,
                tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                memory_mib: crate::gpu::mem::memory_mib(model.device()),
            });
            if cfg.eval_every_steps > 0
                && state.global_step.is_multiple_of(cfg.eval_every_steps)
                && !state.global_step.is_multiple_of(steps_per_epoch)
                && validate(
                    model,
                    val,
                    cfg,
                    opts,
                    &mut state,
                    epoch1,
                    &mut best,
                    &mut on_event,
                )?
            {
                ending = Ending::EarlyStopped;
                state.early_stopped = true;
                model.set_mode(Mode::Train);
                state.epochs_completed = epoch1;
                break 'epochs;
            }
            model.set_mode(Mode::Train);
            let done = i + 1;
            let due = (cfg.checkpoint_every_steps > 0
                && state.global_step.is_multiple_of(cfg.checkpoint_every_steps))
                || (cfg.checkpoint_every_s > 0 && last_checkpoint.0.elapsed() >= every_s);
            // The epoch's last step is checkpointed at the epoch end, after its validation.
            if let Some(dir) = &opts.checkpoint_dir
                && due
                && done < plan.len()
            {
                state.steps_in_epoch = done as u64;
                let secs = base_seconds + started.elapsed().as_secs_f64();
                save_checkpoint(
                    dir,
                    model,
                    &opt,
                    &adapter_cfg,
                    &mut state,
                    best.as_ref(),
                    secs,
                )?;
                last_checkpoint = (Instant::now(), state.global_step);
                on_checkpoint(dir, &state);
            }
        }
        state.epochs_completed = epoch1;
        state.steps_in_epoch = 0;
        if validate(
            model,
            val,
            cfg,
            opts,
            &mut state,
            epoch1,
            &mut best,
            &mut on_event,
        )? {
            ending = Ending::EarlyStopped;
            state.early_stopped = true;
        }
        model.set_mode(Mode::Train);
        if let Some(dir) = &opts.checkpoint_dir {
            let secs = base_seconds + started.elapsed().as_secs_f64();
            save_checkpoint(
                dir,
                model,
                &opt,
                &adapter_cfg,
                &mut state,
                best.as_ref(),
                secs,
            )?;
            last_checkpoint = (Instant::now(), state.global_step);
            on_checkpoint(dir, &state);
        }
    }
    model.set_mode(Mode::Eval);
    if let Some(b) = &best {
        for (name, t) in b {
            model.set_lora(name, t)?;
        }
    }
    let adapter = checkpoint::adapter_of(&adapter_cfg, var_values(&model.lora_vars())?)?;
    Ok(TrainOutcome {
        adapter,
        ending,
        steps: state.global_step,
        total_steps,
        epochs_completed: state.epochs_completed,
        best_val_loss: state.best_val_loss,
        curve: state.curve,
        train_seconds: base_seconds + started.elapsed().as_secs_f64(),
        trained_tokens: state.trained_tokens,
        padded_tokens: state.padded_tokens,
        resumed_from,
    })
}
