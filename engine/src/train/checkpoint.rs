//! A training checkpoint, at an epoch end or mid-epoch: adapter (PEFT layout), best adapter so
//! far, optimizer moments, dropout stream, data position (epoch and optimiser steps done in it)
//! and loop counters; `trainer_state.json` is written last, so its presence means the rest is
//! complete.
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::peft::{AdapterConfig, PeftAdapter};

/// The checkpoint folder inside a finetune job's output folder ([`crate::job::finetune`]).
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const ADAPTER_DIR: &str = "adapter";
pub const BEST_DIR: &str = "best";

/// A point of the training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 1-based epoch the point belongs to.
    pub epoch: u32,
    /// Optimiser steps done when it was taken.
    pub step: u64,
    /// Mean cross-entropy per label token of that step's batches, or of the validation set.
    pub loss: f64,
    pub kind: CurveKind,
}

/// Which loss a [`CurvePoint`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveKind {
    Train,
    Validation,
}

/// Loop counters and history saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub epochs_completed: u32,
    pub global_step: u64,
    pub best_val_loss: Option<f64>,
    /// Validations since the best one (early stopping counts these).
    pub bad_validations: u32,
    pub early_stopped: bool,
    pub curve: Vec<CurvePoint>,
    /// Dropout stream position (ChaCha seed and word position), for bit-identical resumes.
    pub dropout_seed: [u8; 32],
    pub dropout_word_pos: u128,
    pub optimizer_steps: u64,
    /// Training seconds spent before this checkpoint (resumed runs add to it).
    pub train_seconds: f64,
    pub trained_tokens: u64,
    /// Forwarded tokens including padding (a checkpoint without the field reads as 0).
    #[serde(default)]
    pub padded_tokens: u64,
    /// Optimiser steps done in epoch `epochs_completed` (0 at an epoch end): the data position in
    /// that epoch's seeded plan, so a resumed run skips exactly those steps.
    #[serde(default)]
    pub steps_in_epoch: u64,
    /// The run's total optimiser steps; a resume whose run plans another number (other data or
    /// settings) is refused. 0 in a checkpoint without the field: not checked.
    #[serde(default)]
    pub total_steps: u64,
}

/// What a checkpoint folder holds, loaded.
pub struct Loaded {
    pub state: TrainerState,
    pub adapter: PeftAdapter,
    pub best: Option<PeftAdapter>,
    pub optimizer: std::collections::HashMap<String, Tensor>,
}

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes a checkpoint into `dir` (created if needed).
pub fn save(
    dir: &Path,
    state: &TrainerState,
    adapter: &PeftAdapter,
    best: Option<&PeftAdapter>,
    optimizer: &[(String, Tensor)],
) -> Result<(), TrainError> {
    // Invalidate first: a crash mid-save must not leave an old state next to new tensors.
    let state_path = dir.join(STATE_FILE);
    if state_path.exists() {
        std::fs::remove_file(&state_path).map_err(|e| ckpt_err(&state_path, e))?;
    }
    adapter.save(&dir.join(ADAPTER_DIR))?;
    if let Some(b) = best {
        b.save(&dir.join(BEST_DIR))?;
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    let cpu: Vec<(String, Tensor)> = optimizer
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| ckpt_err(&opt_path, e))?;
    shared::fsutil::write_atomic(&opt_path, &bytes).map_err(|e| ckpt_err(&opt_path, e))?;
    shared::fsutil::write_json_atomic(&state_path, state).map_err(|e| ckpt_err(&state_path, e))?;
    Ok(())
}

/// Reads a checkpoint from `dir`; `Ok(None)` when there is none (no `trainer_state.json`).
pub fn load(dir: &Path, device: &Device) -> Result<Option<Loaded>, TrainError> {
    let state_path = dir.join(STATE_FILE);
    let text = match std::fs::read(&state_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ckpt_err(&state_path, e)),
    };
    let state: TrainerState =
        serde_json::from_slice(&text).map_err(|e| ckpt_err(&state_path, e))?;
    let adapter = PeftAdapter::load(&dir.join(ADAPTER_DIR), device)?;
    let best_dir = dir.join(BEST_DIR);
    let best = if best_dir.join(crate::peft::CONFIG_FILE).exists() {
        Some(PeftAdapter::load(&best_dir, device)?)
    } else {
        None
    };
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer =
        candle_core::safetensors::load(&opt_path, device).map_err(|e| ckpt_err(&opt_path, e))?;
    Ok(Some(Loaded {
        state,
        adapter,
        best,
        optimizer,
    }))
}

/// The adapter built from the model's current LoRA tensors.
pub fn adapter_of(
    config: &AdapterConfig,
    named: Vec<(String, Tensor)>,
) -> Result<PeftAdapter, TrainError> {
    Ok(PeftAdapter::from_named(config.clone(), named)?)
}

/// `dir/adapter`: where the last checkpoint's adapter lives.
pub fn adapter_dir(dir: &Path) -> PathBuf {
    dir.join(ADAPTER_DIR)
}
