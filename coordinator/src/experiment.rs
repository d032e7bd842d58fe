//! An experiment as the coordinator runs it: the planned tasks with their payloads (the coordinator
//! owns the data and the split, so every agent sees the same examples) and where outputs go.
use serde::{Deserialize, Serialize};
use shared::task::{EvalPayload, FinetunePayload, TaskSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// An experiment's id: `<name>-<first 8 hex of the config+split hash>`, so resubmitting the same
/// config resumes it rather than starting over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExperimentId(pub String);

impl std::fmt::Display for ExperimentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task needs besides its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPayload {
    Evaluate(EvalPayload),
    Finetune(FinetunePayload),
}

/// One task with its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub spec: TaskSpec,
    pub payload: TaskPayload,
}

/// Everything needed to run (and resume) an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentPlan {
    pub id: ExperimentId,
    pub name: String,
    /// The resolved config, written as `config.resolved.toml`.
    pub config_toml: String,
    pub output_dir: PathBuf,
    pub split_hash: String,
    /// Per reference code, its count in the train split (`train_code_counts.json`, for the report).
    pub train_code_counts: BTreeMap<String, usize>,
    /// The `results.json` key each evaluation task fills (from `shared::plan`).
    #[serde(default)]
    pub result_keys: BTreeMap<shared::task::TaskId, String>,
    /// In loading order (`shared::plan`): LLM evals, then each SLM's finetune → eval.
    pub tasks: Vec<PlannedTask>,
    /// The hub file the dataset came from (commit and sha256), for `results.json`'s meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<shared::results::HubDataset>,
    /// The prediction cache this experiment reads and fills (`None`: `--no-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::PlanCache>,
}
