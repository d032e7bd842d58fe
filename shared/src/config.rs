//! The experiment config: defaults → TOML file → `SIZESPEC_*` env; `deny_unknown_fields` everywhere.
//!
//! (Section types first; loading, env overrides and validation are being written.)
use serde::{Deserialize, Serialize};

/// One model of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Hub id (`meta-llama/Llama-3.2-3B-Instruct`), a local HF folder, or a `.gguf` file.
    pub name: String,
    /// Hub revision (branch, tag or commit); `None` = `main`.
    #[serde(default)]
    pub revision: Option<String>,
    /// Size label as reported ("8B", "3B", "135M").
    pub size: String,
    /// Short label used in result keys: `LLM_<label>_untrained`, `SLM_<label>_finetuned`.
    pub label: String,
    #[serde(default)]
    pub description: String,
    /// LLMs only: load the weights 4-bit (default true for LLMs, ignored for SLMs).
    #[serde(default = "default_true")]
    pub load_in_4bit: bool,
}

fn default_true() -> bool {
    true
}

/// How the task is put to the model. The same rendering is used at training and inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// System message.
    pub system: String,
    /// User message; `{dialogue}` is replaced by the dialogue.
    pub user_template: String,
    /// Assistant answer used as the training target; `{code}` is the dotted code, `{description}` its text.
    pub answer_template: String,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            system: "You are a clinical coding assistant. Read the doctor-patient dialogue and answer with the single most specific ICD-10-CM code for the main diagnosis.".into(),
            user_template: "Dialogue:\n{dialogue}\n\nWhat is the ICD-10-CM code for the main diagnosis? Answer with the code only.".into(),
            answer_template: "{code}".into(),
        }
    }
}

/// Which projections carry a LoRA adapter.
pub const ALL_PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// LoRA hyper-parameters (defaults: the seed's r=64, alpha=128, dropout 0.1, all seven projections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 64, alpha: 128.0, dropout: 0.1, target_modules: ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect() }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Cosine,
    Linear,
    Constant,
}

/// LoRA training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub learning_rate: f64,
    pub schedule: LrSchedule,
    /// Fraction of the total optimiser steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    pub epochs: u32,
    /// Stop after this many validations without improvement; 0 = never stop early.
    pub early_stopping_patience: u32,
    /// Validate every this many optimiser steps (and at each epoch end); 0 = epoch ends only.
    pub eval_every_steps: u64,
    /// Sequences longer than this (prompt + answer) are truncated from the dialogue's end.
    pub max_length: usize,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            schedule: LrSchedule::Cosine,
            warmup_ratio: 0.03,
            epochs: 3,
            early_stopping_patience: 3,
            eval_every_steps: 0,
            max_length: 2048,
            batch_size: 4,
            gradient_accumulation_steps: 4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
        }
    }
}

/// Decoding settings (greedy only: the verdict must be reproducible).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Sequences per generation batch (length-bucketed).
    pub batch_size: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { max_new_tokens: 16, batch_size: 16 }
    }
}
