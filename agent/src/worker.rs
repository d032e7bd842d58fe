//! The execution model: one dedicated compute thread per device, fed by a channel.
//!
//! No tensor op runs on a tokio worker. [`Worker::spawn`] starts the thread for one device;
//! [`Worker::submit`] hands it a [`Job`] and returns a bounded tokio channel of [`WorkerEvent`]s
//! (progress, prediction batches, then exactly one `Finished`, `Failed` or `Rejected`). Jobs run one at a time
//! in submission order; each job ([`engine::job::run`]) checks its `CancellationToken` between
//! steps (decode steps, optimiser steps). After a job, everything the model owned is dropped before
//! the next starts.
//!
//! Contract used by the gRPC session: `DeviceSpec`, `Job`, `WorkerEvent`, `JobOutput`,
//! `EvalPerf`, `TrainSummary`, `Worker::{spawn, submit}`.
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use candle_core::Device;
use engine::error::{EngineError, Result};
use engine::job::JobSink;
use shared::task::{PredictionRow, ProgressEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use engine::job::{DeviceSpec, EvalPerf, Job, JobConfig, JobOutput, TrainSummary};

/// Events buffered per job before the compute thread waits for the consumer.
const EVENT_BUFFER: usize = 256;

/// What a job reports, in order: any number of `Progress` / `Predictions`, then one terminal
/// `Finished`, `Failed` or `Rejected`.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Progress(ProgressEvent),
    /// A batch of predictions, sent as soon as its generation batch is done.
    Predictions(Vec<PredictionRow>),
    /// A finetune checkpoint, staged for upload in `dir` ([`crate::checkpoint::stage`]'s layout;
    /// the folder is the receiver's to remove).
    Checkpoint {
        dir: PathBuf,
        step: u64,
        epoch: u32,
    },
    Finished(JobOutput),
    /// The job failed or was cancelled (the message says which and why).
    Failed(String),
    /// The job cannot run with these inputs (a missing or malformed model file, an unsupported
    /// architecture): a retry would fail the same way.
    Rejected(String),
}

/// One queued job with its cancellation token and the channel its events go to.
struct Envelope {
    /// Boxed: jobs carry their samples, and the channel moves envelopes by value.
    job: Box<Job>,
    cancel: CancellationToken,
    events: mpsc::Sender<WorkerEvent>,
}

/// A compute thread bound to one device.
pub struct Worker {
    device: DeviceSpec,
    tx: Option<std_mpsc::Sender<Envelope>>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("device", &self.device)
            .finish()
    }
}

impl Worker {
    /// Starts the compute thread and opens the device on it (an error here means the device could
    /// not be opened).
    pub fn spawn(device: DeviceSpec) -> Result<Worker> {
        Self::spawn_with(device, JobConfig::default())
    }

    /// [`Worker::spawn`] with an explicit configuration.
    pub fn spawn_with(device: DeviceSpec, config: JobConfig) -> Result<Worker> {
        engine::alloc::keep_freed_memory();
        let (tx, rx) = std_mpsc::channel::<Envelope>();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<()>>();
        let handle = std::thread::Builder::new()
            .name(format!("sizespec-compute-{device}"))
            .spawn(move || {
                let dev = match device.open() {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok(()));
                        d
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Runs until every sender (the Worker) is gone.
                while let Ok(env) = rx.recv() {
                    run_one(&dev, device, &config, env);
                }
            })
            .map_err(|e| EngineError::io("compute thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker {
                device,
                tx: Some(tx),
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(EngineError::Generation(format!(
                "compute thread for {device} died while starting"
            ))),
        }
    }

    /// The device this worker computes on.
    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// Queues `job`; its events arrive on the returned channel. Cancelling `cancel` stops the job
    /// at the next step boundary (it then ends with `Failed("cancelled ...")`). Never blocks.
    pub fn submit(&self, job: Job, cancel: CancellationToken) -> mpsc::Receiver<WorkerEvent> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let env = Envelope {
            job: Box::new(job),
            cancel,
            events,
        };
        let sent = self.tx.as_ref().map(|tx| tx.send(env));
        if let Some(Err(std_mpsc::SendError(env))) = sent {
            let _ = env.events.try_send(WorkerEvent::Failed(format!(
                "the compute thread for {} has stopped",
                self.device
            )));
        }
        rx
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after the running job.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs one job on the compute thread and sends its terminal event. A panic inside the job is
/// caught and reported as `Failed`, so one bad job does not take the device's thread down.
fn run_one(dev: &Device, spec: DeviceSpec, config: &JobConfig, env: Envelope) {
    let Envelope {
        job,
        cancel,
        events,
    } = env;
    // A child token: the job may cancel itself (consumer gone) without touching the caller's token.
    let cancel = cancel.child_token();
    let sink = ChannelSink {
        events: events.clone(),
        cancel: cancel.clone(),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine::job::run(*job, dev, spec, config, &sink, &cancel)
    }));
    let terminal = match outcome {
        Ok(Ok(out)) => WorkerEvent::Finished(out),
        Ok(Err(e)) if e.is_permanent() => WorkerEvent::Rejected(e.to_string()),
        Ok(Err(e)) => WorkerEvent::Failed(e.to_string()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            WorkerEvent::Failed(format!("compute thread panicked: {msg}"))
        }
    };
    // The model and every tensor of the job are dropped by now (they lived inside `job::run`):
    // give the memory pool's cache back so the next task (or another process) sees it free.
    if let Err(e) = engine::gpu::release_cached(dev) {
        tracing::warn!("could not release cached device memory on {spec}: {e}");
    }
    let _ = events.blocking_send(terminal);
}

/// The job's outbound side: its events channel and its own (child) cancellation token.
struct ChannelSink {
    events: mpsc::Sender<WorkerEvent>,
    cancel: CancellationToken,
}

impl ChannelSink {
    /// Sends an event, waiting while the consumer's buffer is full (this is the compute thread, not
    /// a tokio worker, so blocking is fine). When the consumer went away nobody can use the job's
    /// result: the job is cancelled (its own child token, never the caller's).
    fn send(&self, e: WorkerEvent) {
        if self.events.blocking_send(e).is_err() {
            self.cancel.cancel();
        }
    }
}

impl JobSink for ChannelSink {
    fn progress(&self, event: ProgressEvent) {
        self.send(WorkerEvent::Progress(event));
    }

    fn predictions(&self, rows: Vec<PredictionRow>) {
        self.send(WorkerEvent::Predictions(rows));
    }

    /// Stages the checkpoint beside its folder (`checkpoint-uploads/step-<N>`), so the upload
    /// reads this checkpoint's bytes while training goes on. A checkpoint that cannot be staged is
    /// logged and skipped: training does not stop for it.
    fn checkpoint(&self, dir: &Path, state: &engine::train::TrainerState) {
        let step = state.global_step;
        let to = dir
            .parent()
            .unwrap_or(dir)
            .join("checkpoint-uploads")
            .join(format!("step-{step}"));
        match crate::checkpoint::stage(dir, &to) {
            Ok(_) => self.send(WorkerEvent::Checkpoint {
                dir: to,
                step,
                epoch: state.epochs_completed,
            }),
            Err(e) => tracing::warn!(step, error = %e, "could not stage the checkpoint for upload"),
        }
    }
}
