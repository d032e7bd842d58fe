//! Decoding agent messages into state commands (the coordinator's gRPC edge).
use crate::experiment::ExperimentId;
use crate::outcome::{CurvePoint, EvalPerformance, TaskOutput, TrainingOutcome};
use crate::state::AgentEvent;
use crate::state::core::{DeviceInfo, DeviceKind, OfferAnswer, Outcome, Registration, TaskRef};
use proto::convert::ConvertError;
use proto::pb;
use shared::task::{AgentId, TaskId};

pub fn task_ref(r: Option<pb::TaskRef>) -> Result<TaskRef, ConvertError> {
    let r = r.ok_or(ConvertError::Missing("task"))?;
    Ok(TaskRef {
        experiment: ExperimentId(r.experiment_id),
        task: TaskId(r.task_id),
        attempt: r.attempt,
    })
}

pub fn registration(r: pb::Register) -> Result<Registration, ConvertError> {
    if r.agent_id.is_empty() {
        return Err(ConvertError::Missing("register.agent_id"));
    }
    let devices = r
        .devices
        .into_iter()
        .map(|d| {
            let kind = match pb::DeviceKind::try_from(d.kind) {
                Ok(pb::DeviceKind::Cpu) => DeviceKind::Cpu,
                Ok(pb::DeviceKind::Cuda) => DeviceKind::Cuda,
                _ => {
                    return Err(ConvertError::BadEnum {
                        field: "device.kind",
                        value: d.kind,
                    });
                }
            };
            Ok(DeviceInfo {
                kind,
                index: d.index,
                uuid: d.uuid,
                name: d.name,
                total_mib: d.total_mib,
                free_mib: d.free_mib,
                driver: d.driver,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Registration {
        agent: AgentId(r.agent_id),
        host: r.host,
        version: r.version,
        devices,
    })
}

fn eval_perf(p: pb::EvalPerformance) -> EvalPerformance {
    EvalPerformance {
        load_s: p.load_s,
        eval_s: p.eval_s,
        samples_per_s: p.samples_per_s,
        tokens_per_s: p.tokens_per_s,
        peak_memory_mib: p.peak_memory_mib,
        device_name: p.device_name,
    }
}

fn training(t: pb::TrainingSummary) -> TrainingOutcome {
    TrainingOutcome {
        adapter_artifact: t.adapter_artifact,
        adapter_hash: t.adapter_hash,
        steps: t.steps,
        epochs_run: t.epochs_run,
        final_train_loss: t.final_train_loss,
        best_validation_loss: t.best_validation_loss,
        stopped_early: t.stopped_early,
        train_s: t.train_s,
        load_s: t.load_s,
        tokens_per_s: t.tokens_per_s,
        peak_memory_mib: t.peak_memory_mib,
        device_name: t.device_name,
        // Who wrote the checkpoint and who resumed it: the state owner knows (`Core::result`).
        resumed: t.resumed_from_step.map(|step| shared::results::Resumed {
            resumed_from_step: step,
            resumed_on_agent: String::new(),
            checkpoint_by_agent: String::new(),
        }),
        curve: t
            .curve
            .into_iter()
            .map(|c| CurvePoint {
                step: c.step,
                train_loss: c.train_loss,
                validation_loss: c.validation_loss,
            })
            .collect(),
    }
}

/// An agent's message after `register`; `None` for a second `register` (ignored).
pub fn agent_event(m: pb::AgentMessage) -> Result<Option<AgentEvent>, ConvertError> {
    use pb::agent_message::Msg;
    Ok(Some(
        match m.msg.ok_or(ConvertError::Missing("agent_message.msg"))? {
            Msg::Register(_) => return Ok(None),
            Msg::Heartbeat(h) => AgentEvent::Heartbeat {
                free: h
                    .devices
                    .into_iter()
                    .map(|d| (d.uuid, d.free_mib))
                    .collect(),
                running: h
                    .running
                    .into_iter()
                    .map(|r| TaskRef {
                        experiment: ExperimentId(r.experiment_id),
                        task: TaskId(r.task_id),
                        attempt: r.attempt,
                    })
                    .collect(),
            },
            Msg::OfferReply(r) => AgentEvent::OfferReply {
                task: task_ref(r.task)?,
                answer: if r.accept {
                    OfferAnswer::Accept
                } else {
                    OfferAnswer::Decline {
                        reason: r.reason,
                        free_mib: r.free_mib,
                    }
                },
            },
            Msg::Progress(p) => AgentEvent::Progress {
                task: task_ref(p.task)?,
                event: p
                    .event
                    .ok_or(ConvertError::Missing("progress.event"))?
                    .try_into()?,
            },
            Msg::Predictions(b) if b.rows.len() > proto::limits::MAX_PREDICTION_BATCH => {
                return Err(ConvertError::TooMany {
                    field: "predictions.rows",
                    count: b.rows.len(),
                    max: proto::limits::MAX_PREDICTION_BATCH,
                });
            }
            Msg::Predictions(b) => AgentEvent::Predictions {
                task: task_ref(b.task)?,
                rows: b.rows.into_iter().map(Into::into).collect(),
            },
            Msg::Checkpoint(c) => AgentEvent::Checkpoint {
                task: task_ref(c.task)?,
                checkpoint: crate::state::core::SavedCheckpoint {
                    artifact: crate::artifacts::ArtifactName::parse(&c.artifact)
                        .map_err(|_| ConvertError::Missing("checkpoint.artifact (a valid name)"))?
                        .as_str()
                        .to_string(),
                    step: c.step,
                    epoch: c.epoch,
                },
            },
            Msg::Result(r) => {
                use pb::task_result::Outcome as O;
                let outcome = match r.outcome.ok_or(ConvertError::Missing("result.outcome"))? {
                    O::Evaluated(p) => Outcome::Done(TaskOutput::Evaluated(eval_perf(p))),
                    O::Finetuned(t) => Outcome::Done(TaskOutput::Finetuned(training(t))),
                    O::Failed(why) if r.permanent => Outcome::Rejected(why),
                    O::Failed(why) => Outcome::Failed(why),
                    O::Cancelled(why) => Outcome::Cancelled(why),
                };
                AgentEvent::Result {
                    task: task_ref(r.task)?,
                    outcome,
                }
            }
        },
    ))
}
