//! The real engine behind the session: [`crate::worker::Worker`] (one compute thread per device)
//! adapted to [`TaskRunner`].
use super::runner::{EvalReport, FinetuneReport, RunEvent, RunJob, TaskRunner};
use crate::worker::{DeviceSpec, Job, JobOutput, Worker, WorkerEvent};
use engine::train::{CurveKind, CurvePoint};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct WorkerRunner {
    worker: Worker,
}

impl WorkerRunner {
    /// Starts the device's compute thread (fails if the device cannot be opened).
    pub fn spawn(device: DeviceSpec) -> engine::error::Result<WorkerRunner> {
        Ok(WorkerRunner {
            worker: Worker::spawn(device)?,
        })
    }
}

/// Train and validation points of the same step become one `(step, train, validation)` row.
fn curve(points: &[CurvePoint]) -> Vec<(u64, Option<f64>, Option<f64>)> {
    let mut by_step: BTreeMap<u64, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for p in points {
        let e = by_step.entry(p.step).or_default();
        match p.kind {
            CurveKind::Train => e.0 = Some(p.loss),
            CurveKind::Validation => e.1 = Some(p.loss),
        }
    }
    by_step.into_iter().map(|(s, (t, v))| (s, t, v)).collect()
}

impl TaskRunner for WorkerRunner {
    fn run(&self, job: RunJob, cancel: CancellationToken) -> mpsc::Receiver<RunEvent> {
        let job = match job {
            RunJob::Evaluate {
                task,
                payload,
                adapter_dir,
            } => Job::Evaluate {
                task,
                payload,
                adapter_dir,
            },
            RunJob::Finetune {
                task,
                payload,
                out_dir,
            } => Job::Finetune {
                task,
                payload,
                out_dir,
            },
        };
        let mut events = self.worker.submit(job, cancel.clone());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let out = match ev {
                    WorkerEvent::Progress(p) => RunEvent::Progress(p),
                    WorkerEvent::Predictions(rows) => RunEvent::Predictions(rows),
                    WorkerEvent::Checkpoint { dir, step, epoch } => {
                        RunEvent::Checkpoint { dir, step, epoch }
                    }
                    WorkerEvent::Finished(JobOutput::Evaluated(p)) => {
                        RunEvent::Evaluated(EvalReport {
                            load_s: p.load_s,
                            eval_s: p.eval_s,
                            samples_per_s: p.samples_per_s,
                            tokens_per_s: p.tokens_per_s,
                            peak_memory_mib: p.peak_mem_mib,
                            device_name: p.device_name,
                        })
                    }
                    WorkerEvent::Finished(JobOutput::Finetuned(s)) => {
                        RunEvent::Finetuned(FinetuneReport {
                            curve: curve(&s.curve),
                            adapter_dir: s.adapter_dir,
                            adapter_hash: s.adapter_hash,
                            steps: s.steps,
                            epochs_run: s.epochs,
                            final_train_loss: s.final_train_loss.unwrap_or(f64::NAN),
                            best_validation_loss: s.best_val_loss,
                            stopped_early: s.early_stopped,
                            train_s: s.train_s,
                            load_s: s.load_s,
                            tokens_per_s: s.tokens_per_s,
                            peak_memory_mib: s.peak_mem_mib,
                            device_name: s.device_name,
                            resumed_from_step: s.resumed_from_step,
                        })
                    }
                    // The worker reports a cancelled job as a failure; say which it was.
                    WorkerEvent::Failed(_) if cancel.is_cancelled() => RunEvent::Cancelled,
                    WorkerEvent::Failed(why) => RunEvent::Failed(why),
                    WorkerEvent::Rejected(why) => RunEvent::Rejected(why),
                };
                if tx.send(out).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_merges_points_of_a_step() {
        let p = |step, loss, kind| CurvePoint {
            epoch: 1,
            step,
            loss,
            kind,
        };
        let c = curve(&[
            p(1, 2.0, CurveKind::Train),
            p(2, 1.5, CurveKind::Train),
            p(2, 1.7, CurveKind::Validation),
        ]);
        assert_eq!(c, vec![(1, Some(2.0), None), (2, Some(1.5), Some(1.7))]);
    }
}
