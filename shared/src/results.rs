//! The `results.json` types (the seed's flat map of model keys) and the converter from the old shape.
//!
//! `results.json` is the seed's structure: a flat JSON object from keys like `LLM_Llama-8B_untrained`
//! or `SLM_Qwen-3B_finetuned` to one [`ResultEntry`] each. The run's provenance sits beside them
//! under the one reserved key `meta` ([`ResultsMeta`]); `meta` can never be a model key (those
//! start with `LLM_` or `SLM_`), so readers that iterate model keys skip it by [`parse_result_key`].
//! Metrics are [`EvalMetrics`] as computed from the predictions, fractions in [0, 1].
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::EvalMetrics;
use crate::task::ModelRole;

mod convert;
#[cfg(test)]
mod tests;

pub use convert::{convert_old, is_old_shape};

/// `"LLM"` or `"SLM"` in a results entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelType {
    #[serde(rename = "LLM")]
    Llm,
    #[serde(rename = "SLM")]
    Slm,
}

impl From<ModelRole> for ModelType {
    fn from(r: ModelRole) -> Self {
        match r {
            ModelRole::Llm => ModelType::Llm,
            ModelRole::Slm => ModelType::Slm,
        }
    }
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llm => "LLM",
            ModelType::Slm => "SLM",
        }
    }
}

/// Whether the evaluated model had been finetuned (`"untrained"` / `"finetuned"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainingStatus {
    Untrained,
    Finetuned,
}

impl TrainingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingStatus::Untrained => "untrained",
            TrainingStatus::Finetuned => "finetuned",
        }
    }
}

/// `LLM_Llama-8B`, `SLM_Qwen-3B`: the model part of a key (also [`crate::task::ModelSpec::key`]).
pub fn model_key(role: ModelRole, label: &str) -> String {
    format!("{}_{label}", ModelType::from(role).as_str())
}

/// `LLM_Llama-8B_untrained`, `SLM_Qwen-3B_finetuned`: a key of `results.json`.
pub fn result_key(role: ModelRole, label: &str, training: TrainingStatus) -> String {
    format!("{}_{}", model_key(role, label), training.as_str())
}

/// `LLM_Llama-8B_untrained` → (LLM, `Llama-8B`, untrained); `None` for anything else (`meta`).
pub fn parse_result_key(key: &str) -> Option<(ModelType, &str, TrainingStatus)> {
    let (kind, rest) = key.split_once('_')?;
    let model_type = match kind {
        "LLM" => ModelType::Llm,
        "SLM" => ModelType::Slm,
        _ => return None,
    };
    let (label, training) = rest.rsplit_once('_')?;
    let training = match training {
        "untrained" => TrainingStatus::Untrained,
        "finetuned" => TrainingStatus::Finetuned,
        _ => return None,
    };
    (!label.is_empty()).then_some((model_type, label, training))
}

/// How fast and how big an evaluation was. `None` where the figure was not measured (a converted
/// old file); a fresh run fills every field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Performance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_time_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_time_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_s: Option<f64>,
    /// Generated tokens (no prompt, no padding) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// One point of the training curve (a validation point has both losses, a plain step only one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurvePoint {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
}

/// How a finetune went (finetuned entries only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_time_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_validation_loss: Option<f64>,
    /// Epochs run (fractional when stopped mid-epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs_run: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<bool>,
    /// Training tokens (prompt + answer, no padding) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CurvePoint>,
    /// The finetune lost its agent and resumed from a checkpoint on another attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumed>,
}

/// Where a resumed finetune picked up: the checkpoint's step and who wrote and who resumed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// Optimiser steps done at the checkpoint (the run did the rest).
    pub resumed_from_step: u64,
    /// The agent that resumed and finished the run.
    pub resumed_on_agent: String,
    /// The agent whose checkpoint it was.
    pub checkpoint_by_agent: String,
}

/// One evaluated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultEntry {
    pub model_type: ModelType,
    /// "8B", "3B".
    pub size: String,
    pub training: TrainingStatus,
    /// Hub id, folder or `.gguf` path.
    pub model_name: String,
    pub metrics: EvalMetrics,
    /// Metrics the source did not have (a converted old file); they read 0 in `metrics` and must
    /// not be shown as measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_metrics: Vec<String>,
    #[serde(default)]
    pub performance: Performance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_metrics: Option<TrainingMetrics>,
    /// Numbers from a converted old file that have no field here, by their old (dotted) name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// Where a `results.json` came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsMeta {
    /// The experiment's `name`.
    pub experiment: String,
    /// SHA-256 of the resolved config TOML ([`crate::config::ExperimentConfig::config_hash`]);
    /// `None` only in a file converted from the old shape, which did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Hash of the dataset split every model was evaluated on (`None`: converted, unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_hash: Option<String>,
    /// RFC 3339 UTC time the file was written (the caller formats it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `sizespec <version>` of the writer.
    pub tool_version: String,
    /// `true` when the entries were converted from the old shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub converted_from_old: bool,
    /// The hub file the dataset was read from (`[data.source] kind = "medsynth_hub"`); `None` for
    /// the embedded dataset and local files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<HubDataset>,
    /// Planned models that have no entry because a task failed for good (the model's own
    /// evaluation, or a task it depends on such as its finetune): the results are partial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedModel>,
}

/// A planned model missing from the results, with the task at fault and its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedModel {
    /// The key the model would have had (`SLM_Qwen-3B_finetuned`).
    pub model: String,
    /// The task that failed (`finetune:SLM_Qwen-3B`).
    pub task: String,
    pub error: String,
}

/// Which hub file, at which commit, with which content, a run's dataset came from: enough to
/// fetch exactly the same bytes again (`revision = "<commit>"`) and to check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubDataset {
    /// `owner/name` of the dataset repository.
    pub repo: String,
    /// The file's path in the repository.
    pub file: String,
    /// The revision asked for (branch, tag or commit).
    pub revision: String,
    /// The commit that revision resolved to.
    pub commit: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// The whole `results.json`: model entries by key, and `meta`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Results {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ResultsMeta>,
    #[serde(flatten)]
    pub entries: BTreeMap<String, ResultEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not a results file: {message}")]
    Parse { origin: String, message: String },
    #[error(
        "{origin}: key `{key}` is not a model key like `LLM_<label>_untrained` or `SLM_<label>_finetuned`"
    )]
    BadKey { origin: String, key: String },
    #[error("{origin}: entry `{key}` says {field} = {found}, but its key says {expected}")]
    KeyMismatch {
        origin: String,
        key: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("old results: {0}")]
    Old(String),
}

/// The version string written in `meta.tool_version`.
pub fn tool_version() -> String {
    format!("sizespec {}", env!("CARGO_PKG_VERSION"))
}

impl Results {
    /// Parses and checks a `results.json` text: every key but `meta` is a model key that agrees
    /// with its entry's `model_type` and `training`.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Results, ResultsError> {
        let r: Results = serde_json::from_str(text).map_err(|e| ResultsError::Parse {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        r.check(origin)?;
        Ok(r)
    }

    fn check(&self, origin: &str) -> Result<(), ResultsError> {
        for (key, e) in &self.entries {
            let (model_type, _, training) =
                parse_result_key(key).ok_or_else(|| ResultsError::BadKey {
                    origin: origin.into(),
                    key: key.clone(),
                })?;
            let mismatch = |field, found: &str, expected: &str| ResultsError::KeyMismatch {
                origin: origin.into(),
                key: key.clone(),
                field,
                found: found.into(),
                expected: expected.into(),
            };
            if e.model_type != model_type {
                return Err(mismatch(
                    "model_type",
                    e.model_type.as_str(),
                    model_type.as_str(),
                ));
            }
            if e.training != training {
                return Err(mismatch("training", e.training.as_str(), training.as_str()));
            }
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Results, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Writes atomically as pretty JSON (keys in sorted order, `meta` among them).
    pub fn write(&self, path: &Path) -> Result<(), ResultsError> {
        crate::fsutil::write_json_atomic(path, self).map_err(|source| ResultsError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
