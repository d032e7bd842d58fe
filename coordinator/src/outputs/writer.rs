//! The output writer: a task beside the state owner that writes finished experiments' folders one
//! at a time on the blocking pool and reports each one back, so the owner keeps serving heartbeats,
//! status and watchers while results, predictions, plots and the report are written.
use super::{OutputsInput, Written};
use crate::experiment::ExperimentId;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Writes one experiment's output folder (blocking). [`super::write_outputs`] in the product;
/// tests pass their own to observe or hold the writing.
pub type WriteFn = Arc<dyn Fn(&OutputsInput) -> Result<Written, String> + Send + Sync>;

/// The product's writer: the output folder, then the prediction cache ([`crate::cache`]).
pub fn default_write() -> WriteFn {
    Arc::new(|input: &OutputsInput| {
        let written = super::write_outputs(input).map_err(|e| e.to_string());
        crate::cache::after_outputs(input);
        written
    })
}

/// One finished folder (or why it could not be written).
#[derive(Debug)]
pub struct Done {
    pub experiment: ExperimentId,
    pub result: Result<Written, String>,
}

/// Starts the writer: jobs in, completions out. It stops when the job sender is dropped (after the
/// job in hand).
pub fn spawn(
    write: WriteFn,
) -> (
    mpsc::UnboundedSender<Box<OutputsInput>>,
    mpsc::UnboundedReceiver<Done>,
) {
    let (job_tx, mut jobs) = mpsc::unbounded_channel::<Box<OutputsInput>>();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let experiment = job.plan.id.clone();
            let write = write.clone();
            let result = tokio::task::spawn_blocking(move || write(&job))
                .await
                .unwrap_or_else(|e| Err(format!("the output writer panicked: {e}")));
            if let Err(e) = &result {
                tracing::error!(experiment = %experiment, error = %e, "outputs not written");
            }
            if done_tx.send(Done { experiment, result }).is_err() {
                break;
            }
        }
    });
    (job_tx, done_rx)
}
