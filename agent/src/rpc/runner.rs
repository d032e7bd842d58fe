//! What the session asks of the engine: run one job, stream events back, stop between steps when
//! cancelled. The default implementation is the real [`crate::worker::Worker`]; tests of the
//! protocol substitute a deterministic fake.
use shared::task::{EvalPayload, FinetunePayload, PredictionRow, ProgressEvent, TaskSpec};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One job.
#[derive(Debug, Clone)]
pub enum RunJob {
    /// `adapter_dir`: a local PEFT folder (downloaded or left by this agent's finetune).
    Evaluate {
        task: TaskSpec,
        payload: EvalPayload,
        adapter_dir: Option<PathBuf>,
    },
    /// The adapter is written to `out_dir` (PEFT layout).
    Finetune {
        task: TaskSpec,
        payload: FinetunePayload,
        out_dir: PathBuf,
    },
}

/// Performance of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub load_s: f64,
    pub eval_s: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub peak_memory_mib: u64,
    pub device_name: String,
}

/// Summary of a finetune.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneReport {
    pub adapter_dir: PathBuf,
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
    /// `(step, train loss, validation loss)`.
    pub curve: Vec<(u64, Option<f64>, Option<f64>)>,
    /// The step of the checkpoint the run resumed from (`None`: from step 0).
    pub resumed_from_step: Option<u64>,
}

/// What a running job reports. The stream ends after one of the last five.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Progress(ProgressEvent),
    Predictions(Vec<PredictionRow>),
    /// A finetune checkpoint staged for upload in `dir` ([`crate::checkpoint::stage`]'s layout,
    /// the receiver removes it): `step` optimiser steps, `epoch` epochs completed.
    Checkpoint {
        dir: PathBuf,
        step: u64,
        epoch: u32,
    },
    Evaluated(EvalReport),
    Finetuned(FinetuneReport),
    Failed(String),
    /// A failure a retry would repeat (a missing or malformed model file, an unsupported
    /// architecture): the coordinator fails the task at once.
    Rejected(String),
    /// Stopped by the cancellation token (after checkpointing, for a finetune).
    Cancelled,
}

/// Runs jobs on this agent's device, one at a time.
pub trait TaskRunner: Send + Sync + 'static {
    fn run(&self, job: RunJob, cancel: CancellationToken) -> mpsc::Receiver<RunEvent>;
}
