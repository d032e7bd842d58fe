//! The state owner's answers as wire messages: messages to agents, `status` replies, watcher
//! events (and, for the CLI, watcher events decoded back).
use crate::experiment::{ExperimentId, TaskPayload};
use crate::state::core::{DeviceInfo, DeviceKind, ExperimentState, TaskRef, ToAgent};
use crate::state::status::{
    AgentStatus, ExperimentEvent, ExperimentStatus, StatusReport, TaskStatus, WatchEvent,
};
use proto::convert::ConvertError;
use proto::pb;
use shared::task::{AgentId, TaskId, TaskState};

fn task_ref(r: &TaskRef) -> pb::TaskRef {
    pb::TaskRef {
        experiment_id: r.experiment.0.clone(),
        task_id: r.task.0.clone(),
        attempt: r.attempt,
    }
}

/// The message an agent receives.
pub fn to_agent_pb(msg: ToAgent) -> Result<pb::CoordinatorMessage, serde_json::Error> {
    use pb::coordinator_message::Msg;
    let msg = match msg {
        ToAgent::Registered {
            agent,
            heartbeat_interval,
        } => Msg::Registered(pb::Registered {
            agent_id: agent.0,
            heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
        }),
        ToAgent::Offer {
            task,
            spec,
            device_uuid,
            payload,
            resume,
        } => {
            let payload_json = match payload.as_ref() {
                TaskPayload::Evaluate(p) => serde_json::to_vec(p)?,
                TaskPayload::Finetune(p) => serde_json::to_vec(p)?,
            };
            Msg::Offer(pb::TaskOffer {
                experiment_id: task.experiment.0.clone(),
                task: Some((&spec).into()),
                device_uuid,
                attempt: task.attempt,
                payload_json,
                resume: resume.map(|c| pb::ResumeFrom {
                    artifact: c.saved.artifact,
                    step: c.saved.step,
                    agent_id: c.agent.0,
                }),
            })
        }
        ToAgent::Cancel { task, reason } => Msg::Cancel(pb::CancelTask {
            task: Some(task_ref(&task)),
            reason,
        }),
    };
    Ok(pb::CoordinatorMessage { msg: Some(msg) })
}

fn task_state_pb(s: &TaskState) -> pb::TaskStateKind {
    match s {
        TaskState::Pending => pb::TaskStateKind::TaskStatePending,
        TaskState::Ready => pb::TaskStateKind::TaskStateReady,
        TaskState::Offered { .. } => pb::TaskStateKind::TaskStateOffered,
        TaskState::Running { .. } => pb::TaskStateKind::TaskStateRunning,
        TaskState::Succeeded => pb::TaskStateKind::TaskStateSucceeded,
        TaskState::Failed => pb::TaskStateKind::TaskStateFailed,
        TaskState::Cancelled => pb::TaskStateKind::TaskStateCancelled,
    }
}

/// An experiment's state on the wire.
pub fn experiment_state_pb(s: ExperimentState) -> pb::ExperimentStateKind {
    match s {
        ExperimentState::Running => pb::ExperimentStateKind::ExperimentStateRunning,
        ExperimentState::Succeeded => pb::ExperimentStateKind::ExperimentStateSucceeded,
        ExperimentState::Failed => pb::ExperimentStateKind::ExperimentStateFailed,
    }
}

fn task_status_pb(t: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: t.task.0.clone(),
        state: task_state_pb(&t.state) as i32,
        agent_id: t.agent.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
        attempt: t.attempt,
        detail: t.detail.clone(),
        predictions: t.predictions,
        estimate_mib: t.estimate_mib,
    }
}

fn device_pb(d: &DeviceInfo) -> pb::Device {
    pb::Device {
        kind: match d.kind {
            DeviceKind::Cpu => pb::DeviceKind::Cpu,
            DeviceKind::Cuda => pb::DeviceKind::Cuda,
        } as i32,
        index: d.index,
        uuid: d.uuid.clone(),
        name: d.name.clone(),
        total_mib: d.total_mib,
        free_mib: d.free_mib,
        driver: d.driver.clone(),
    }
}

fn experiment_pb(e: &ExperimentStatus) -> pb::ExperimentStatus {
    pb::ExperimentStatus {
        experiment_id: e.id.0.clone(),
        name: e.name.clone(),
        state: experiment_state_pb(e.state) as i32,
        tasks: e.tasks.iter().map(task_status_pb).collect(),
        output_dir: e.output_dir.display().to_string(),
    }
}

fn agent_pb(a: &AgentStatus) -> pb::AgentStatus {
    pb::AgentStatus {
        agent_id: a.agent.0.clone(),
        host: a.host.clone(),
        devices: a.devices.iter().map(device_pb).collect(),
    }
}

pub fn status_pb(s: &StatusReport) -> pb::StatusReply {
    pb::StatusReply {
        experiments: s.experiments.iter().map(experiment_pb).collect(),
        agents: s.agents.iter().map(agent_pb).collect(),
    }
}

pub fn event_pb(ev: &ExperimentEvent) -> pb::ExperimentEvent {
    use pb::experiment_event::Event;
    let event = match &ev.event {
        WatchEvent::Task(t) => Event::Task(task_status_pb(t)),
        WatchEvent::Progress { task, event } => Event::Progress(pb::TaskProgress {
            task: Some(task_ref(task)),
            event: Some(event.into()),
        }),
        WatchEvent::Finished(s) => Event::Finished(experiment_state_pb(*s) as i32),
    };
    pb::ExperimentEvent {
        experiment_id: ev.experiment.0.clone(),
        event: Some(event),
    }
}

fn experiment_state(v: i32) -> Result<ExperimentState, ConvertError> {
    match pb::ExperimentStateKind::try_from(v) {
        Ok(pb::ExperimentStateKind::ExperimentStateRunning) => Ok(ExperimentState::Running),
        Ok(pb::ExperimentStateKind::ExperimentStateSucceeded) => Ok(ExperimentState::Succeeded),
        Ok(pb::ExperimentStateKind::ExperimentStateFailed) => Ok(ExperimentState::Failed),
        _ => Err(ConvertError::BadEnum {
            field: "experiment_event.finished",
            value: v,
        }),
    }
}

fn task_status(t: pb::TaskStatus) -> Result<TaskStatus, ConvertError> {
    let agent = (!t.agent_id.is_empty()).then(|| AgentId(t.agent_id.clone()));
    let holder = || {
        agent
            .clone()
            .ok_or(ConvertError::Missing("task_status.agent_id"))
    };
    let state = match pb::TaskStateKind::try_from(t.state) {
        Ok(pb::TaskStateKind::TaskStatePending) => TaskState::Pending,
        Ok(pb::TaskStateKind::TaskStateReady) => TaskState::Ready,
        Ok(pb::TaskStateKind::TaskStateOffered) => TaskState::Offered { agent: holder()? },
        Ok(pb::TaskStateKind::TaskStateRunning) => TaskState::Running { agent: holder()? },
        Ok(pb::TaskStateKind::TaskStateSucceeded) => TaskState::Succeeded,
        Ok(pb::TaskStateKind::TaskStateFailed) => TaskState::Failed,
        Ok(pb::TaskStateKind::TaskStateCancelled) => TaskState::Cancelled,
        _ => {
            return Err(ConvertError::BadEnum {
                field: "task_status.state",
                value: t.state,
            });
        }
    };
    Ok(TaskStatus {
        task: TaskId(t.task_id),
        state,
        agent,
        attempt: t.attempt,
        detail: t.detail,
        predictions: t.predictions,
        estimate_mib: t.estimate_mib,
    })
}

/// A watcher event as the CLI receives it.
pub fn event_from_pb(ev: pb::ExperimentEvent) -> Result<ExperimentEvent, ConvertError> {
    use pb::experiment_event::Event;
    let event = match ev
        .event
        .ok_or(ConvertError::Missing("experiment_event.event"))?
    {
        Event::Task(t) => WatchEvent::Task(task_status(t)?),
        Event::Progress(p) => WatchEvent::Progress {
            task: super::convert::task_ref(p.task)?,
            event: p
                .event
                .ok_or(ConvertError::Missing("task_progress.event"))?
                .try_into()?,
        },
        Event::Finished(s) => WatchEvent::Finished(experiment_state(s)?),
    };
    Ok(ExperimentEvent {
        experiment: ExperimentId(ev.experiment_id),
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::task::ProgressEvent;

    #[test]
    fn watcher_events_survive_the_wire() {
        let exp = ExperimentId("e-1".into());
        let status = |state, agent: Option<&str>| TaskStatus {
            task: TaskId("eval:SLM_X".into()),
            state,
            agent: agent.map(|a| AgentId(a.into())),
            attempt: 2,
            detail: "loading".into(),
            predictions: 7,
            estimate_mib: 900,
        };
        let events = [
            WatchEvent::Task(status(TaskState::Ready, None)),
            WatchEvent::Task(status(
                TaskState::Running {
                    agent: AgentId("a".into()),
                },
                Some("a"),
            )),
            WatchEvent::Task(status(TaskState::Succeeded, Some("a"))),
            WatchEvent::Progress {
                task: TaskRef {
                    experiment: exp.clone(),
                    task: TaskId("eval:SLM_X".into()),
                    attempt: 2,
                },
                event: ProgressEvent::Stage {
                    name: "loading".into(),
                },
            },
            WatchEvent::Finished(ExperimentState::Failed),
        ];
        for event in events {
            let ev = ExperimentEvent {
                experiment: exp.clone(),
                event,
            };
            assert_eq!(event_from_pb(event_pb(&ev)), Ok(ev.clone()));
        }
        let mut bad = event_pb(&ExperimentEvent {
            experiment: exp,
            event: WatchEvent::Task(status(TaskState::Ready, None)),
        });
        if let Some(pb::experiment_event::Event::Task(t)) = &mut bad.event {
            t.state = pb::TaskStateKind::TaskStateRunning as i32;
        }
        assert_eq!(
            event_from_pb(bad),
            Err(ConvertError::Missing("task_status.agent_id"))
        );
    }
}
