//! Task, event and prediction types every crate speaks (the coordinator, the agent, the wire edge).
use serde::{Deserialize, Serialize};

/// A task's id, unique within an experiment: e.g. `eval:LLM_Llama-8B`, `finetune:SLM_Qwen-3B`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub String);

/// An agent's id as it registered (stable across reconnects of the same agent process).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId(pub String);

/// Which side of the question a model is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// Large model, zero-shot.
    Llm,
    /// Small model, LoRA-finetuned.
    Slm,
}

/// How a model's weights are held for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Full precision in the task's dtype.
    None,
    /// 4-bit weights (quantised at load, or a 4-bit GGUF as shipped).
    Q4,
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// LoRA-finetune an SLM; produces an adapter artifact.
    Finetune,
    /// Generate predictions on the test split (zero-shot, or with an adapter).
    Evaluate,
}

/// One model prediction on one sample, as persisted in `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    pub sample_id: String,
    /// Reference code, normalised.
    pub reference: String,
    /// The model's raw generated text.
    pub raw_output: String,
    /// The first valid ICD-10-CM code found in `raw_output`, normalised.
    pub extracted: Option<String>,
    /// `extracted == Some(reference)`.
    pub correct: bool,
    /// Wall time from the batch's start to this sample's last token, in milliseconds.
    pub latency_ms: f64,
    /// Generated tokens (no padding, no prompt), including the stop token if one was produced.
    pub generated_tokens: u32,
    /// Prompt tokens (no padding).
    pub prompt_tokens: u32,
}

/// A progress report from a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProgressEvent {
    /// A training optimiser step.
    TrainStep {
        epoch: u32,
        step: u64,
        total_steps: u64,
        loss: f64,
        lr: f64,
        tokens_per_s: f64,
        memory_mib: u64,
    },
    /// A validation pass during training.
    Validation { epoch: u32, step: u64, loss: f64 },
    /// Evaluation progress.
    EvalProgress { done: u64, total: u64, samples_per_s: f64, tokens_per_s: f64, memory_mib: u64 },
    /// Free-form stage change ("loading", "quantising", "saving adapter", ...).
    Stage { name: String },
}

/// A model as a task sees it (resolved from the config by the planner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Results key stem: `LLM_Llama-8B`, `SLM_Qwen-3B`.
    pub key: String,
    /// Hub id, local HF folder, or `.gguf` path.
    pub name: String,
    pub revision: Option<String>,
    /// "Llama-8B", "Qwen-3B".
    pub label: String,
    /// "8B", "3B".
    pub size: String,
    pub role: ModelRole,
    pub quantization: Quantization,
}

/// What an evaluation task needs besides the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPayload {
    pub samples: Vec<crate::dataset::Record>,
    pub prompt: crate::config::PromptConfig,
    pub generation: crate::config::GenerationConfig,
    /// Artifact name of the PEFT adapter to apply, for a finetuned SLM.
    pub adapter: Option<String>,
}

/// What a finetuning task needs besides the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetunePayload {
    pub train: Vec<crate::dataset::Record>,
    pub validation: Vec<crate::dataset::Record>,
    pub prompt: crate::config::PromptConfig,
    pub lora: crate::config::LoraConfig,
    pub training: crate::config::TrainingConfig,
}

/// A task as handed to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub kind: TaskKind,
    pub model: ModelSpec,
    pub depends_on: Vec<TaskId>,
    /// Estimated peak device memory, MiB (see `plan`).
    pub estimate_mib: u64,
}
