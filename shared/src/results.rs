//! The `results.json` types (the seed's flat map of model keys) and the converter from the old shape.
use serde::{Deserialize, Serialize};

use crate::task::ModelRole;

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
