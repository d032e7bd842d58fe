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
    EvalProgress {
        done: u64,
        total: u64,
        samples_per_s: f64,
        tokens_per_s: f64,
        memory_mib: u64,
    },
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

/// Where a task is in its life. Changed only by [`TaskState::transition`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for the tasks it depends on.
    Pending,
    /// Dependencies done; waiting for an agent with enough free memory.
    Ready,
    /// Offered to this agent, which has not answered yet.
    Offered {
        agent: AgentId,
    },
    /// Accepted and running on this agent.
    Running {
        agent: AgentId,
    },
    Succeeded,
    /// Failed for good (the scheduler requeues instead while retries are left).
    Failed,
    /// Cancelled by the user, or because a task it depends on failed.
    Cancelled,
}

/// Something that happens to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskEvent {
    /// Every task it depends on succeeded.
    DependenciesMet,
    /// A task it depends on failed or was cancelled.
    DependencyFailed,
    /// The scheduler offers it to an agent whose reported free memory fits the estimate.
    Offer { agent: AgentId },
    /// The agent re-read its free memory and took the task.
    Accept { agent: AgentId },
    /// The agent declined (not enough free memory after all, or busy).
    Decline { agent: AgentId },
    /// The agent was lost, its lease expired or it failed transiently, and a retry is left: back
    /// to the queue.
    Requeue,
    /// The agent reported success.
    Succeed { agent: AgentId },
    /// The agent reported a failure and no retry is left.
    Fail { agent: AgentId },
    /// The user cancelled the task or the experiment.
    Cancel,
    /// The user asked to run a failed task again.
    Retry,
    /// No registered device has the total memory the task's estimate needs: it fails at once
    /// instead of waiting forever (raised by the coordinator's scheduler).
    Unplaceable,
    /// Every prediction of a ready evaluation came from the prediction cache: it succeeds without
    /// an agent (raised by the coordinator's scheduler).
    FromCache,
}

/// An event that makes no sense in the task's current state (a stale agent's report, a double
/// offer...). The state is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task event {event:?} is illegal in state {from:?}")]
pub struct IllegalTransition {
    pub from: TaskState,
    pub event: TaskEvent,
}

impl TaskState {
    /// The one place a task's state changes. Events from an agent other than the one holding the
    /// task are illegal, so a late report from an agent that lost its lease cannot change anything.
    pub fn transition(self, event: TaskEvent) -> Result<TaskState, IllegalTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let next = match (&self, &event) {
            (S::Pending, E::DependenciesMet) => S::Ready,
            (S::Pending, E::DependencyFailed) => S::Cancelled,
            (S::Ready, E::Offer { agent }) => S::Offered {
                agent: agent.clone(),
            },
            (S::Offered { agent: held }, E::Accept { agent }) if held == agent => S::Running {
                agent: agent.clone(),
            },
            (S::Offered { agent: held }, E::Decline { agent }) if held == agent => S::Ready,
            (S::Offered { .. } | S::Running { .. }, E::Requeue) => S::Ready,
            (S::Running { agent: held }, E::Succeed { agent }) if held == agent => S::Succeeded,
            (S::Running { agent: held }, E::Fail { agent }) if held == agent => S::Failed,
            (S::Pending | S::Ready | S::Offered { .. } | S::Running { .. }, E::Cancel) => {
                S::Cancelled
            }
            (S::Failed, E::Retry) => S::Ready,
            (S::Pending | S::Ready, E::Unplaceable) => S::Failed,
            (S::Ready, E::FromCache) => S::Succeeded,
            _ => return Err(IllegalTransition { from: self, event }),
        };
        Ok(next)
    }

    /// No event but [`TaskEvent::Retry`] (from `Failed`) leaves a terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The agent holding the task, if one does.
    pub fn agent(&self) -> Option<&AgentId> {
        match self {
            TaskState::Offered { agent } | TaskState::Running { agent } => Some(agent),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: &str) -> AgentId {
        AgentId(n.into())
    }

    /// Every state × every event: the legal ones with their outcome, everything else an error.
    #[test]
    fn transition_table() {
        use TaskEvent as E;
        use TaskState as S;
        let states = [
            S::Pending,
            S::Ready,
            S::Offered { agent: a("x") },
            S::Running { agent: a("x") },
            S::Succeeded,
            S::Failed,
            S::Cancelled,
        ];
        let events = [
            E::DependenciesMet,
            E::DependencyFailed,
            E::Offer { agent: a("x") },
            E::Accept { agent: a("x") },
            E::Accept { agent: a("y") },
            E::Decline { agent: a("x") },
            E::Decline { agent: a("y") },
            E::Requeue,
            E::Succeed { agent: a("x") },
            E::Succeed { agent: a("y") },
            E::Fail { agent: a("x") },
            E::Fail { agent: a("y") },
            E::Cancel,
            E::Retry,
            E::Unplaceable,
            E::FromCache,
        ];
        // Fails to compile when an event is added, so the table cannot silently miss it.
        for e in &events {
            match e {
                E::DependenciesMet
                | E::DependencyFailed
                | E::Offer { .. }
                | E::Accept { .. }
                | E::Decline { .. }
                | E::Requeue
                | E::Succeed { .. }
                | E::Fail { .. }
                | E::Cancel
                | E::Retry
                | E::Unplaceable
                | E::FromCache => {}
            }
        }
        let legal: Vec<(S, E, S)> = vec![
            (S::Pending, E::DependenciesMet, S::Ready),
            (S::Pending, E::Unplaceable, S::Failed),
            (S::Ready, E::Unplaceable, S::Failed),
            (S::Pending, E::DependencyFailed, S::Cancelled),
            (S::Pending, E::Cancel, S::Cancelled),
            (
                S::Ready,
                E::Offer { agent: a("x") },
                S::Offered { agent: a("x") },
            ),
            (S::Ready, E::Cancel, S::Cancelled),
            (
                S::Offered { agent: a("x") },
                E::Accept { agent: a("x") },
                S::Running { agent: a("x") },
            ),
            (
                S::Offered { agent: a("x") },
                E::Decline { agent: a("x") },
                S::Ready,
            ),
            (S::Offered { agent: a("x") }, E::Requeue, S::Ready),
            (S::Offered { agent: a("x") }, E::Cancel, S::Cancelled),
            (S::Running { agent: a("x") }, E::Requeue, S::Ready),
            (
                S::Running { agent: a("x") },
                E::Succeed { agent: a("x") },
                S::Succeeded,
            ),
            (
                S::Running { agent: a("x") },
                E::Fail { agent: a("x") },
                S::Failed,
            ),
            (S::Running { agent: a("x") }, E::Cancel, S::Cancelled),
            (S::Failed, E::Retry, S::Ready),
            (S::Ready, E::FromCache, S::Succeeded),
        ];
        let mut legal_seen = 0;
        for s in &states {
            for e in &events {
                let got = s.clone().transition(e.clone());
                match legal.iter().find(|(ls, le, _)| ls == s && le == e) {
                    Some((_, _, want)) => {
                        assert_eq!(got.as_ref(), Ok(want), "{s:?} + {e:?}");
                        legal_seen += 1;
                    }
                    None => assert_eq!(
                        got,
                        Err(IllegalTransition {
                            from: s.clone(),
                            event: e.clone()
                        }),
                        "{s:?} + {e:?} should be illegal"
                    ),
                }
            }
        }
        assert_eq!(
            legal_seen,
            legal.len(),
            "a legal row names a state or event missing from the lists"
        );
    }

    #[test]
    fn terminal_states_and_holder() {
        assert!(TaskState::Succeeded.is_terminal());
        assert!(TaskState::Cancelled.is_terminal());
        assert!(!TaskState::Ready.is_terminal());
        assert_eq!(TaskState::Running { agent: a("x") }.agent(), Some(&a("x")));
        assert_eq!(TaskState::Ready.agent(), None);
        let e = TaskState::Succeeded
            .transition(TaskEvent::Cancel)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "task event Cancel is illegal in state Succeeded"
        );
    }
}
