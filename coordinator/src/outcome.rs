//! What a finished task produced, as the coordinator journals it (decoded from the wire at the edge).
use serde::{Deserialize, Serialize};

/// Performance of one evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPerformance {
    pub load_s: f64,
    pub eval_s: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub peak_memory_mib: u64,
    pub device_name: String,
}

/// One point of a training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
}

/// Summary of one finetune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingOutcome {
    /// Artifact folder name of the uploaded PEFT adapter.
    pub adapter_artifact: String,
    pub adapter_hash: String,
    pub steps: u64,
    pub epochs_run: u32,
    pub final_train_loss: f64,
    pub best_validation_loss: Option<f64>,
    pub stopped_early: bool,
    pub train_s: f64,
    pub load_s: f64,
    pub tokens_per_s: f64,
    pub peak_memory_mib: u64,
    pub device_name: String,
    pub curve: Vec<CurvePoint>,
    /// The run resumed from a checkpoint of an earlier attempt (agents filled in by the state
    /// owner when the result arrives).
    #[serde(default)]
    pub resumed: Option<shared::results::Resumed>,
}

/// A task's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutput {
    Evaluated(EvalPerformance),
    Finetuned(TrainingOutcome),
}
