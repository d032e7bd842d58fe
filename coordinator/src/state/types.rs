//! The vocabulary of the state owner: settings, registrations, messages to agents, effects.
use crate::experiment::{ExperimentId, ExperimentPlan, TaskPayload};
use crate::journal::ExperimentJournal;
use crate::outcome::TaskOutput;
use crate::outputs::OutputsInput;
use shared::task::{AgentId, PredictionRow, ProgressEvent, TaskId};
use std::time::Duration;

/// Scheduling knobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// A running task whose agent sent nothing for this long is re-queued.
    pub lease: Duration,
    /// A task lost or failed this many times fails for good.
    pub max_attempts: u32,
    /// A ready task that every connected device large enough leaves idle, none with its estimate
    /// free, fails after waiting this long (`state::wait`).
    pub unplaceable_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(20),
            max_attempts: 3,
            unplaceable_timeout: Duration::from_secs(600),
        }
    }
}

/// CPU or a CUDA GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// A device as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_mib: u64,
    pub free_mib: u64,
    pub driver: String,
}

/// An agent's registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub agent: AgentId,
    pub host: String,
    pub version: String,
    pub devices: Vec<DeviceInfo>,
}

/// Identifies one task attempt on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub experiment: ExperimentId,
    pub task: TaskId,
    pub attempt: u32,
}

/// What an agent reported at the end of a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(TaskOutput),
    Failed(String),
    /// A failure a retry would repeat (a missing or malformed model file, an unsupported
    /// architecture): the task fails at once.
    Rejected(String),
    Cancelled(String),
}

/// A finetune checkpoint an agent announced once it was stored in full.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedCheckpoint {
    /// Artifact folder (`agent/src/checkpoint.rs` gives its layout).
    pub artifact: String,
    /// Optimiser steps done.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u32,
}

/// A task's latest checkpoint and the agent that wrote it (journalled with the task).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRef {
    #[serde(flatten)]
    pub saved: SavedCheckpoint,
    pub agent: AgentId,
}

/// An agent's answer to an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferAnswer {
    Accept,
    /// With why, and the device's free memory as the agent re-read it.
    Decline {
        reason: String,
        free_mib: u64,
    },
}

/// A message for an agent.
#[derive(Debug, Clone, PartialEq)]
// Offers are few (one per placement) and move once through a channel: their size costs nothing
// worth a box.
#[allow(clippy::large_enum_variant)]
pub enum ToAgent {
    /// The registration was accepted (always the session's first message).
    Registered {
        agent: AgentId,
        /// How often the agent sends heartbeats.
        heartbeat_interval: Duration,
    },
    Offer {
        task: TaskRef,
        spec: shared::task::TaskSpec,
        device_uuid: String,
        payload: Box<TaskPayload>,
        /// A finetune's latest checkpoint, which the agent resumes from.
        resume: Option<CheckpointRef>,
    },
    Cancel {
        task: TaskRef,
        reason: String,
    },
}

/// A journal write, in order.
#[derive(Debug, Clone)]
pub enum Io {
    SavePlan(Box<ExperimentPlan>),
    SaveState(ExperimentId, ExperimentJournal),
    AppendPredictions(ExperimentId, TaskId, Vec<PredictionRow>),
}

/// Something watchers hear about. `Finished` comes once the output folder is written (or failed).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Task(ExperimentId, TaskId),
    Progress(ExperimentId, TaskId, ProgressEvent),
    Finished(ExperimentId, ExperimentState),
}

/// An experiment's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentState {
    Running,
    Succeeded,
    Failed,
}

/// Where an experiment's output folder stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputsState {
    /// Tasks are still to end.
    Pending,
    /// Every task ended; the output writer has the folder.
    Writing,
    /// Written; `report` says whether the report was built too.
    Written { report: bool },
    /// Writing failed (logged; a restarted coordinator writes them again).
    Failed(String),
}

/// Effects queued by handlers.
#[derive(Debug, Default)]
pub struct Effects {
    pub to_agents: Vec<(AgentId, u64, ToAgent)>,
    pub io: Vec<Io>,
    /// Output folders to write (after this round's journal writes).
    pub outputs: Vec<Box<OutputsInput>>,
    pub notices: Vec<Notice>,
}
