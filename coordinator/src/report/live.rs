//! The live experiment page: a self-contained HTML + JS page ([`LIVE_PAGE`], no CDN) that polls
//! `GET /api/state` every two seconds and draws agents, devices, tasks, loss curves and evaluation
//! progress, then links the report when the experiment is done.
//!
//! `server::live_http` serves [`LIVE_PAGE`] at `/` and [`state_json`] of a [`LiveState`]
//! snapshot at `/api/state` (`Content-Type: application/json`). The JSON shape, by example:
//!
//! ```json
//! {
//!   "experiment": "default", "phase": "running", "updated": "2026-11-26T01:00:00Z",
//!   "agents": [{"id": "gpu-box-0", "host": "gpu-box", "connected": true,
//!               "devices": [{"uuid": "GPU-1", "name": "NVIDIA H100", "total_mib": 81559, "free_mib": 60000}],
//!               "task": "eval:LLM_Llama-8B"}],
//!   "tasks": [{"id": "eval:LLM_Llama-8B", "kind": "evaluate", "model": "LLM_Llama-8B", "state": "running",
//!              "agent": "gpu-box-0", "estimate_mib": 7000,
//!              "progress": {"done": 40, "total": 150, "unit": "samples", "samples_per_s": 2.1,
//!                           "tokens_per_s": 30.5, "memory_mib": 6800},
//!              "error": null}],
//!   "curves": [{"model": "SLM_Qwen-3B", "points": [{"step": 10, "train_loss": 2.1, "validation_loss": null}]}],
//!   "report": null
//! }
//! ```
//! `report` becomes the report's URL (e.g. `"/report/report.html"`) once it is written.
use serde::Serialize;
use shared::task::{AgentId, TaskId, TaskKind, TaskState};

/// The page, served as is.
pub const LIVE_PAGE: &str = include_str!("../../assets/live.html");

/// Where the experiment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentPhase {
    /// No experiment submitted yet.
    Idle,
    Running,
    /// Every task succeeded and the outputs are written (the report with them, unless building
    /// it failed: then `report` stays empty).
    Done,
    Failed,
}

/// A task's state, flattened for the page (the agent, if any, is in [`LiveTask::agent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveTaskState {
    Pending,
    Ready,
    Offered,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl LiveTaskState {
    /// The page's state and the agent the task is offered to / running on.
    pub fn from_task_state(s: &TaskState) -> (LiveTaskState, Option<AgentId>) {
        match s {
            TaskState::Pending => (LiveTaskState::Pending, None),
            TaskState::Ready => (LiveTaskState::Ready, None),
            TaskState::Offered { agent } => (LiveTaskState::Offered, Some(agent.clone())),
            TaskState::Running { agent } => (LiveTaskState::Running, Some(agent.clone())),
            TaskState::Succeeded => (LiveTaskState::Succeeded, None),
            TaskState::Failed => (LiveTaskState::Failed, None),
            TaskState::Cancelled => (LiveTaskState::Cancelled, None),
        }
    }
}

/// One GPU (or the CPU) of an agent, as last reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveDevice {
    pub uuid: String,
    pub name: String,
    pub total_mib: u64,
    pub free_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveAgent {
    pub id: AgentId,
    pub host: String,
    /// Its session stream is open (a lost agent stays listed until its lease expires).
    pub connected: bool,
    pub devices: Vec<LiveDevice>,
    /// The task it runs now.
    pub task: Option<TaskId>,
}

/// What a progress count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressUnit {
    /// Optimiser steps of a finetune.
    Steps,
    /// Evaluated samples.
    Samples,
}

/// The latest progress of a running task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveProgress {
    pub done: u64,
    pub total: u64,
    pub unit: ProgressUnit,
    pub samples_per_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveTask {
    pub id: TaskId,
    pub kind: TaskKind,
    /// The model key stem (`LLM_Llama-8B`).
    pub model: String,
    pub state: LiveTaskState,
    pub agent: Option<AgentId>,
    pub estimate_mib: u64,
    pub progress: Option<LiveProgress>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why a ready task is not placed yet (no agent, devices busy, not enough free memory).
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LivePoint {
    pub step: u64,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
}

/// The loss curve of one finetune so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveCurve {
    pub model: String,
    pub points: Vec<LivePoint>,
}

/// Everything the page shows: one snapshot of the coordinator's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveState {
    pub experiment: Option<String>,
    pub phase: ExperimentPhase,
    /// When the snapshot was taken (RFC 3339, the server's clock).
    pub updated: String,
    pub agents: Vec<LiveAgent>,
    pub tasks: Vec<LiveTask>,
    pub curves: Vec<LiveCurve>,
    /// URL of `report.html` once written.
    pub report: Option<String>,
}

/// The body of `GET /api/state`.
pub fn state_json(state: &LiveState) -> String {
    // Serialising these plain structs cannot fail (string keys, no maps with non-string keys).
    serde_json::to_string(state).expect("LiveState serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LiveState {
        let agent = AgentId("gpu-box-0".into());
        let (state, on) = LiveTaskState::from_task_state(&TaskState::Running {
            agent: agent.clone(),
        });
        LiveState {
            experiment: Some("default".into()),
            phase: ExperimentPhase::Running,
            updated: "2026-11-26T01:00:00Z".into(),
            agents: vec![LiveAgent {
                id: agent,
                host: "gpu-box".into(),
                connected: true,
                devices: vec![LiveDevice {
                    uuid: "GPU-1".into(),
                    name: "NVIDIA H100".into(),
                    total_mib: 81559,
                    free_mib: 60000,
                }],
                task: Some(TaskId("eval:LLM_Llama-8B".into())),
            }],
            tasks: vec![LiveTask {
                id: TaskId("eval:LLM_Llama-8B".into()),
                kind: TaskKind::Evaluate,
                model: "LLM_Llama-8B".into(),
                state,
                agent: on,
                estimate_mib: 7000,
                progress: Some(LiveProgress {
                    done: 40,
                    total: 150,
                    unit: ProgressUnit::Samples,
                    samples_per_s: Some(2.1),
                    tokens_per_s: Some(30.5),
                    memory_mib: Some(6800),
                }),
                error: None,
                waiting: None,
            }],
            curves: vec![LiveCurve {
                model: "SLM_Qwen-3B".into(),
                points: vec![LivePoint {
                    step: 10,
                    train_loss: Some(2.1),
                    validation_loss: None,
                }],
            }],
            report: None,
        }
    }

    #[test]
    fn state_json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&state_json(&sample())).unwrap();
        assert_eq!(v["phase"], "running");
        assert_eq!(v["agents"][0]["id"], "gpu-box-0");
        assert_eq!(v["agents"][0]["devices"][0]["free_mib"], 60000);
        assert_eq!(v["tasks"][0]["state"], "running");
        assert_eq!(v["tasks"][0]["agent"], "gpu-box-0");
        assert_eq!(v["tasks"][0]["kind"], "evaluate");
        assert_eq!(v["tasks"][0]["progress"]["unit"], "samples");
        assert_eq!(
            v["curves"][0]["points"][0]["validation_loss"],
            serde_json::Value::Null
        );
        assert_eq!(v["report"], serde_json::Value::Null);
    }

    #[test]
    fn the_page_is_self_contained_and_reads_the_documented_fields() {
        assert!(LIVE_PAGE.contains("/api/state"));
        for external in ["http://", "https://", "<script src", "<link"] {
            assert!(
                !LIVE_PAGE.contains(external),
                "the page must load nothing from outside: {external}"
            );
        }
        // Every field the page reads is one the server sends.
        for field in [
            ".experiment",
            ".phase",
            ".updated",
            ".agents",
            ".devices",
            ".free_mib",
            ".total_mib",
            ".connected",
            ".tasks",
            ".state",
            ".progress",
            ".done",
            ".total",
            ".unit",
            ".tokens_per_s",
            ".curves",
            ".points",
            ".train_loss",
            ".validation_loss",
            ".report",
            ".estimate_mib",
            ".error",
            ".waiting",
        ] {
            assert!(LIVE_PAGE.contains(field), "the page never reads {field}");
        }
    }
}
