//! Wire views of the state: status replies, watcher events, messages to agents (edge code: the
//! only part of the state module that builds `pb::*`).
use super::core::{
    Core, CoreError, DeviceKind, ExperimentEntry, ExperimentState, Notice, TaskEntry, TaskRef,
    ToAgent,
};
use crate::experiment::{ExperimentId, TaskPayload};
use proto::pb;
use shared::task::TaskState;

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
        ToAgent::Offer {
            task,
            spec,
            device_uuid,
            payload,
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
            })
        }
        ToAgent::Cancel { task, reason } => Msg::Cancel(pb::CancelTask {
            task: Some(task_ref(&task)),
            reason,
        }),
    };
    Ok(pb::CoordinatorMessage { msg: Some(msg) })
}

fn state_kind(p: &TaskState) -> pb::TaskStateKind {
    match p {
        TaskState::Pending => pb::TaskStateKind::TaskStatePending,
        TaskState::Ready => pb::TaskStateKind::TaskStateReady,
        TaskState::Offered { .. } => pb::TaskStateKind::TaskStateOffered,
        TaskState::Running { .. } => pb::TaskStateKind::TaskStateRunning,
        TaskState::Succeeded => pb::TaskStateKind::TaskStateSucceeded,
        TaskState::Failed => pb::TaskStateKind::TaskStateFailed,
        TaskState::Cancelled => pb::TaskStateKind::TaskStateCancelled,
    }
}

fn experiment_kind(s: ExperimentState) -> pb::ExperimentStateKind {
    match s {
        ExperimentState::Running => pb::ExperimentStateKind::ExperimentStateRunning,
        ExperimentState::Succeeded => pb::ExperimentStateKind::ExperimentStateSucceeded,
        ExperimentState::Failed => pb::ExperimentStateKind::ExperimentStateFailed,
    }
}

fn task_status(e: &ExperimentEntry, i: usize) -> pb::TaskStatus {
    let spec = &e.plan.tasks[i].spec;
    let t: &TaskEntry = &e.tasks[i];
    let detail = match (&t.state, &t.last_progress) {
        (TaskState::Failed | TaskState::Cancelled, _) => t.detail.clone(),
        (_, Some(shared::task::ProgressEvent::Stage { name })) => name.clone(),
        _ => String::new(),
    };
    pb::TaskStatus {
        task_id: spec.id.0.clone(),
        state: state_kind(&t.state) as i32,
        agent_id: t
            .placed
            .as_ref()
            .map(|p| p.agent.0.clone())
            .or_else(|| t.ran_on.as_ref().map(|a| a.0.clone()))
            .unwrap_or_default(),
        attempt: t.attempt,
        detail,
        predictions: t.predictions.len() as u64,
        estimate_mib: spec.estimate_mib,
    }
}

pub fn status(core: &Core, only: Option<&ExperimentId>) -> Result<pb::StatusReply, CoreError> {
    if let Some(id) = only
        && core.experiment(id).is_none()
    {
        return Err(CoreError::UnknownExperiment(id.0.clone()));
    }
    let experiments = core
        .experiments
        .iter()
        .filter(|e| only.is_none_or(|id| &e.plan.id == id))
        .map(|e| pb::ExperimentStatus {
            experiment_id: e.plan.id.0.clone(),
            name: e.plan.name.clone(),
            state: experiment_kind(e.state) as i32,
            tasks: (0..e.tasks.len()).map(|i| task_status(e, i)).collect(),
            output_dir: e.plan.output_dir.display().to_string(),
        })
        .collect();
    let agents = core
        .agents
        .values()
        .map(|a| pb::AgentStatus {
            agent_id: a.reg.agent.0.clone(),
            host: a.reg.host.clone(),
            devices: a
                .devices
                .iter()
                .map(|d| pb::Device {
                    kind: match d.info.kind {
                        DeviceKind::Cpu => pb::DeviceKind::Cpu,
                        DeviceKind::Cuda => pb::DeviceKind::Cuda,
                    } as i32,
                    index: d.info.index,
                    uuid: d.info.uuid.clone(),
                    name: d.info.name.clone(),
                    total_mib: d.info.total_mib,
                    free_mib: d.info.free_mib,
                    driver: d.info.driver.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(pb::StatusReply {
        experiments,
        agents,
    })
}

/// One event per task with its current state (a watcher's starting point), plus `finished` if so.
pub fn snapshot_events(e: &ExperimentEntry) -> Vec<pb::ExperimentEvent> {
    use pb::experiment_event::Event;
    let id = e.plan.id.0.clone();
    let mut out: Vec<_> = (0..e.tasks.len())
        .map(|i| pb::ExperimentEvent {
            experiment_id: id.clone(),
            event: Some(Event::Task(task_status(e, i))),
        })
        .collect();
    if e.state != ExperimentState::Running {
        out.push(pb::ExperimentEvent {
            experiment_id: id,
            event: Some(Event::Finished(experiment_kind(e.state) as i32)),
        });
    }
    out
}

pub fn notice_event(core: &Core, n: &Notice) -> Option<pb::ExperimentEvent> {
    use pb::experiment_event::Event;
    let (exp, event) = match n {
        Notice::Task(exp, task) => {
            let e = core.experiment(exp)?;
            let i = e.plan.tasks.iter().position(|t| &t.spec.id == task)?;
            (exp, Event::Task(task_status(e, i)))
        }
        Notice::Progress(exp, task, ev) => {
            let e = core.experiment(exp)?;
            let i = e.plan.tasks.iter().position(|t| &t.spec.id == task)?;
            let r = pb::TaskRef {
                experiment_id: exp.0.clone(),
                task_id: task.0.clone(),
                attempt: e.tasks[i].attempt,
            };
            (
                exp,
                Event::Progress(pb::TaskProgress {
                    task: Some(r),
                    event: Some(ev.into()),
                }),
            )
        }
        Notice::Finished(exp, state) => (exp, Event::Finished(experiment_kind(*state) as i32)),
    };
    Some(pb::ExperimentEvent {
        experiment_id: exp.0.clone(),
        event: Some(event),
    })
}
