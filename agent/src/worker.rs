//! The execution model: one dedicated compute thread per device, fed by a channel.
//!
//! No tensor op runs on a tokio worker. [`Worker::spawn`] starts the thread for one device;
//! [`Worker::submit`] hands it a [`Job`] and returns a bounded tokio channel of [`WorkerEvent`]s
//! (progress, prediction batches, then exactly one `Finished` or `Failed`). Jobs run one at a time
//! in submission order; each job checks its `CancellationToken` between steps (decode steps,
//! optimiser steps). After a job, everything the model owned is dropped before the next starts.
//!
//! Contract used by the gRPC agent (helper F): `DeviceSpec`, `Job`, `WorkerEvent`, `JobOutput`,
//! `EvalPerf`, `TrainSummary`, `Worker::{spawn, submit}`.
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use candle_core::Device;
use shared::task::{EvalPayload, FinetunePayload, PredictionRow, ProgressEvent, TaskSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{AgentError, Result};

mod jobs;

pub use jobs::{EvalPerf, JobError, Purpose, TrainSummary, apply_adapter, load_for_task};

/// Events buffered per job before the compute thread waits for the consumer.
const EVENT_BUFFER: usize = 256;

/// Which device a worker computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device (fails on a CUDA ordinal without the `cuda` feature or without that GPU).
    pub fn open(self) -> Result<Device> {
        Ok(match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => crate::gpu::open_cuda(i)?,
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work for the compute thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Generate predictions for `payload.samples` (with the adapter in `adapter_dir`, if any).
    Evaluate {
        task: TaskSpec,
        payload: EvalPayload,
        adapter_dir: Option<PathBuf>,
    },
    /// LoRA-finetune the task's model; the adapter (PEFT layout) and checkpoints go to `out_dir`.
    Finetune {
        task: TaskSpec,
        payload: FinetunePayload,
        out_dir: PathBuf,
    },
}

/// What a job reports, in order: any number of `Progress` / `Predictions`, then one terminal
/// `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Progress(ProgressEvent),
    /// A batch of predictions, sent as soon as its generation batch is done.
    Predictions(Vec<PredictionRow>),
    Finished(JobOutput),
    /// The job failed or was cancelled (the message says which and why).
    Failed(String),
}

/// A finished job's result.
#[derive(Debug, Clone)]
pub enum JobOutput {
    Evaluated(EvalPerf),
    Finetuned(TrainSummary),
}

/// Where a worker keeps what it derives from models (the quantised-weights cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    pub cache_dir: PathBuf,
}

impl Default for WorkerConfig {
    /// `$SIZESPEC_CACHE_DIR`, else `~/.cache/sizespec`.
    fn default() -> Self {
        let cache_dir = std::env::var_os("SIZESPEC_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME").map_or_else(
                    || PathBuf::from(".cache/sizespec"),
                    |h| PathBuf::from(h).join(".cache/sizespec"),
                )
            });
        Self { cache_dir }
    }
}

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
        Self::spawn_with(device, WorkerConfig::default())
    }

    /// [`Worker::spawn`] with an explicit configuration.
    pub fn spawn_with(device: DeviceSpec, config: WorkerConfig) -> Result<Worker> {
        crate::alloc::keep_freed_memory();
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
            .map_err(|e| AgentError::io("compute thread", e))?;
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
            Err(_) => Err(AgentError::Generation(format!(
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
fn run_one(dev: &Device, spec: DeviceSpec, config: &WorkerConfig, env: Envelope) {
    let Envelope {
        job,
        cancel,
        events,
    } = env;
    // A child token: the job may cancel itself (consumer gone) without touching the caller's token.
    let sink = jobs::Sink::new(events.clone(), cancel.child_token());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jobs::run(*job, dev, spec, config, &sink)
    }));
    let terminal = match outcome {
        Ok(Ok(out)) => WorkerEvent::Finished(out),
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
    // The model and every tensor of the job are dropped by now (they lived inside `jobs::run`):
    // give the memory pool's cache back so the next task (or another process) sees it free.
    if let Err(e) = crate::gpu::release_cached(dev) {
        tracing::warn!("could not release cached device memory on {spec}: {e}");
    }
    let _ = events.blocking_send(terminal);
}

/// Memory in use, MiB: resident set size of this process on the CPU; used device memory on a GPU.
pub fn memory_mib(device: &Device) -> u64 {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .map(|(free, total)| ((total - free) / (1024 * 1024)) as u64)
            .unwrap_or(0),
        _ => rss_mib("VmRSS:"),
    }
}

/// Free device memory in bytes (`None` on the CPU or when the driver cannot say).
pub fn memory_free_bytes(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        // Through the device's own context (bound to this thread first): the bare driver call
        // answers for whatever context the calling thread happens to have current, or fails.
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        _ => None,
    }
}

/// Peak memory, MiB: the process's peak resident set size on the CPU; current use on a GPU.
pub fn peak_memory_mib(device: &Device) -> u64 {
    match device {
        Device::Cpu => rss_mib("VmHWM:"),
        d => memory_mib(d),
    }
}

fn rss_mib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
