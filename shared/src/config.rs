//! The experiment config: defaults → TOML file → `SIZESPEC_*` env → CLI; `deny_unknown_fields` everywhere.
//!
//! [`ExperimentConfig`] is the whole experiment; its sections are the types below. Submodules:
//! `load` (files, errors located by dotted key and line), `env` (the `SIZESPEC_*` scheme, see
//! [`env_overrides_from`]), `validate` (checks serde cannot express, [`Problem`]), `offline`
//! ([`ExperimentConfig::offline_default`]), `select` (device and training precision).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::split::SplitConfig;

mod env;
mod keypath;
mod load;
mod offline;
mod select;
mod validate;

#[cfg(test)]
mod tests;

pub use env::{ENV_PREFIX, env_overrides_from};
pub use load::{ConfigError, Loaded};
pub use offline::{MODELS_DIR_PLACEHOLDER, SMOLLM2_GGUF_FILE};
pub use select::{BadScope, ComputeBackend, DeviceSelection, ExperimentScope, TrainDtype};
pub use validate::Problem;

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
pub const ALL_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

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
        Self {
            r: 64,
            alpha: 128.0,
            dropout: 0.1,
            target_modules: ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect(),
        }
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

/// How training examples are cut into micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// `length_grouped` on a GPU, `fixed` on the CPU (whose adapter bytes stay as they were).
    #[default]
    Auto,
    /// `batch_size` examples per micro-batch in the seeded epoch order.
    Fixed,
    /// Examples of similar length share a micro-batch (sorted within windows of the seeded
    /// order, the optimiser steps shuffled after), cut by `max_batch_tokens` when there is a
    /// budget, else by `batch_size`.
    LengthGrouped,
}

/// `training.checkpoint_every_s` by default: ten minutes of work at most is lost with an agent.
pub const DEFAULT_CHECKPOINT_EVERY_S: u64 = 600;
/// Bounds of a non-zero `training.checkpoint_every_s` (below, checkpoint uploads would crowd out
/// training; above a day, the value is likely meant in milliseconds).
pub const CHECKPOINT_EVERY_S_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

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
    /// Examples per micro-batch with fixed batching; with length-grouped batching, an optimiser
    /// step holds `batch_size × gradient_accumulation_steps` examples either way.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub batching: Batching,
    /// Length-grouped batching: most `rows × padded width` tokens in one micro-batch (an example
    /// longer than that gets a micro-batch of its own). 0 = chosen from free device memory on a
    /// GPU, `batch_size` rows per micro-batch on the CPU.
    pub max_batch_tokens: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Save a resumable checkpoint (adapter, optimiser moments, data position, dropout stream)
    /// every this many optimiser steps; 0 = not by step count. Epoch ends always checkpoint.
    pub checkpoint_every_steps: u64,
    /// Save a resumable checkpoint when this many seconds passed since the last one; 0 = not by
    /// time. On a cluster the agent uploads each checkpoint, so a re-queued task resumes from it.
    pub checkpoint_every_s: u64,
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
            batching: Batching::Auto,
            max_batch_tokens: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            checkpoint_every_steps: 0,
            checkpoint_every_s: DEFAULT_CHECKPOINT_EVERY_S,
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
        Self {
            max_new_tokens: 16,
            batch_size: 16,
        }
    }
}

/// What to do with reference codes that are not valid billable ICD-10-CM codes (~5% of MedSynth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidCodePolicy {
    /// Keep the rows: the model is scored against the code as published.
    #[default]
    Keep,
    /// Drop the rows before splitting (the split hash changes accordingly).
    Drop,
}

/// The MedSynth repository on the Hugging Face hub.
pub const MEDSYNTH_REPO: &str = "Ahmad0067/MedSynth";
/// The single CSV file of that repository.
pub const MEDSYNTH_FILE: &str = "MedSynth_huggingface_final.csv";

fn default_medsynth_repo() -> String {
    MEDSYNTH_REPO.into()
}

fn default_medsynth_file() -> String {
    MEDSYNTH_FILE.into()
}

fn default_per_code() -> usize {
    crate::embedded::DEFAULT_PER_CODE
}

impl DataSource {
    /// The whole embedded dataset ([`crate::embedded::embedded_dataset`]).
    pub fn embedded() -> Self {
        DataSource::Embedded {
            codes: None,
            per_code: crate::embedded::DEFAULT_PER_CODE,
        }
    }
}

/// Where the examples come from (`[data.source]`, selected by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// The dataset shipped inside the binary (generated from public-domain ICD-10-CM; offline).
    Embedded {
        /// Use only this many of its codes, picked one chapter at a time so they span as many
        /// chapters as possible ([`crate::embedded::subset_codes`]); `None` = all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        codes: Option<usize>,
        /// Dialogues generated per code.
        #[serde(default = "default_per_code")]
        per_code: usize,
    },
    /// A local copy of the MedSynth CSV (same columns as the hub file).
    MedsynthCsv { path: PathBuf },
    /// MedSynth downloaded from the hub (`HF_TOKEN` is used if the repository is gated).
    MedsynthHub {
        #[serde(default = "default_medsynth_repo")]
        repo: String,
        #[serde(default = "default_medsynth_file")]
        file: String,
        /// Branch, tag or commit; `None` = `main`. Pin a commit for a reproducible verdict.
        #[serde(default)]
        revision: Option<String>,
    },
    /// One JSON object per line with the fields of [`crate::dataset::Record`].
    Jsonl { path: PathBuf },
}

impl Default for DataSource {
    /// The default experiment runs on MedSynth from the hub (`docs/data.md`).
    fn default() -> Self {
        DataSource::MedsynthHub {
            repo: default_medsynth_repo(),
            file: default_medsynth_file(),
            revision: None,
        }
    }
}

/// The dataset, how it is cleaned and split, and how much of it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Caps the test examples every model is evaluated on (the same first N of the test split for
    /// every model); `None` = the whole test split.
    pub max_eval_samples: Option<usize>,
    /// Caps the training examples of each finetune; `None` = the whole train split.
    pub max_train_samples: Option<usize>,
    pub invalid_codes: InvalidCodePolicy,
    pub source: DataSource,
    pub split: SplitConfig,
}

/// How predictions are scored and summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Bootstrap resamples for the confidence intervals of each metric; 0 = no intervals.
    pub bootstrap_resamples: u32,
    /// Two-sided confidence level of those intervals.
    pub confidence: f64,
    /// Seed of the bootstrap resampling (fixed so the report is reproducible).
    pub bootstrap_seed: u64,
    /// Also evaluate each SLM zero-shot before finetuning: the difference is the finetuning effect.
    pub include_slm_zero_shot: bool,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            bootstrap_resamples: 1000,
            confidence: 0.95,
            bootstrap_seed: 42,
            include_slm_zero_shot: true,
        }
    }
}

/// One experiment: which models, which data, how to train and evaluate, where to write.
///
/// Field order matters for [`ExperimentConfig::to_toml`]: plain values before tables before arrays of
/// tables, as TOML requires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    /// Experiment name (shown in the report and recorded in the results' meta).
    pub name: String,
    /// Folder for results, predictions, adapters and the report.
    pub output: PathBuf,
    /// Which devices the single-box mode uses.
    pub device: DeviceSelection,
    /// Precision of the SLMs during LoRA training.
    pub dtype: TrainDtype,
    /// Which tasks run: `full` (default), `llm` (only the zero-shot LLM evaluations) or `slm`
    /// (only the SLMs' tasks). Not written when `full`, so a full experiment's config text (and
    /// with it its id) is the same as before the key existed.
    #[serde(skip_serializing_if = "ExperimentScope::is_full")]
    pub experiment: ExperimentScope,
    pub data: DataConfig,
    pub prompt: PromptConfig,
    pub lora: LoraConfig,
    pub training: TrainingConfig,
    pub generation: GenerationConfig,
    pub evaluation: EvaluationConfig,
    /// Large models, evaluated zero-shot (4-bit unless `load_in_4bit = false`).
    pub llm_models: Vec<ModelEntry>,
    /// Small models, LoRA-finetuned in full precision (`load_in_4bit` is ignored for them).
    pub slm_models: Vec<ModelEntry>,
}

fn entry(name: &str, size: &str, label: &str, description: &str, load_in_4bit: bool) -> ModelEntry {
    ModelEntry {
        name: name.into(),
        revision: None,
        size: size.into(),
        label: label.into(),
        description: description.into(),
        load_in_4bit,
    }
}

impl Default for ExperimentConfig {
    /// The default experiment (README.md, `experiment.example.toml`): two 7-8B LLMs zero-shot in
    /// 4-bit against two 3B SLMs LoRA-finetuned in bf16, on MedSynth.
    fn default() -> Self {
        Self {
            name: "medsynth-icd10".into(),
            output: PathBuf::from("runs/medsynth-icd10"),
            device: DeviceSelection::Auto,
            dtype: TrainDtype::Auto,
            experiment: ExperimentScope::Full,
            data: DataConfig::default(),
            prompt: PromptConfig::default(),
            lora: LoraConfig::default(),
            training: TrainingConfig::default(),
            generation: GenerationConfig::default(),
            evaluation: EvaluationConfig::default(),
            llm_models: vec![
                entry(
                    "meta-llama/Meta-Llama-3.1-8B-Instruct",
                    "8B",
                    "Llama-8B",
                    "Llama 3.1 8B Instruct, zero-shot, 4-bit",
                    true,
                ),
                entry(
                    "mistralai/Mistral-7B-Instruct-v0.3",
                    "7B",
                    "Mistral-7B",
                    "Mistral 7B Instruct v0.3, zero-shot, 4-bit",
                    true,
                ),
            ],
            slm_models: vec![
                entry(
                    "meta-llama/Llama-3.2-3B-Instruct",
                    "3B",
                    "Llama-3B",
                    "Llama 3.2 3B Instruct, LoRA in bf16",
                    false,
                ),
                entry(
                    "Qwen/Qwen2.5-3B-Instruct",
                    "3B",
                    "Qwen-3B",
                    "Qwen 2.5 3B Instruct, LoRA in bf16",
                    false,
                ),
            ],
        }
    }
}

impl ExperimentConfig {
    /// The resolved config as TOML (written next to the results so a run can be repeated exactly).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// Hex SHA-256 of [`Self::to_toml`]: identifies the resolved experiment in the results' meta.
    pub fn config_hash(&self) -> Result<String, ConfigError> {
        use sha2::{Digest, Sha256};
        Ok(hex::encode(Sha256::digest(self.to_toml()?.as_bytes())))
    }

    /// Replaces [`MODELS_DIR_PLACEHOLDER`] in model names by `models_dir` (the CLI knows where the
    /// models folder is; the config stays free of machine-specific paths).
    pub fn resolve_models_dir(&mut self, models_dir: &std::path::Path) {
        let dir = models_dir.to_string_lossy();
        for m in self.llm_models.iter_mut().chain(self.slm_models.iter_mut()) {
            if m.name.contains(MODELS_DIR_PLACEHOLDER) {
                m.name = m.name.replace(MODELS_DIR_PLACEHOLDER, &dir);
            }
        }
    }
}
