//! What the state owner tells the outside about experiments and agents, in domain terms: `status`
//! replies, a watcher's starting snapshot and its live events. The gRPC edge turns them into wire
//! messages (`server::view`).
use super::core::{
    AgentEntry, Core, CoreError, DeviceInfo, ExperimentEntry, ExperimentState, Notice, TaskRef,
};
use crate::experiment::ExperimentId;
use shared::task::{AgentId, ProgressEvent, TaskId, TaskState};
use std::path::PathBuf;

/// One task as `status` and watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    pub task: TaskId,
    pub state: TaskState,
    /// The agent holding it, else the agent that ran it.
    pub agent: Option<AgentId>,
    pub attempt: u32,
    /// Why it failed or was cancelled; while it runs, the stage it reported last; while it is
    /// ready but not placed, why it waits.
    pub detail: String,
    /// Predictions received so far.
    pub predictions: u64,
    pub estimate_mib: u64,
}

/// One experiment in a `status` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentStatus {
    pub id: ExperimentId,
    pub name: String,
    pub state: ExperimentState,
    pub tasks: Vec<TaskStatus>,
    pub output_dir: PathBuf,
}

/// One connected agent in a `status` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    pub agent: AgentId,
    pub host: String,
    /// With the free memory last reported.
    pub devices: Vec<DeviceInfo>,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub experiments: Vec<ExperimentStatus>,
    pub agents: Vec<AgentStatus>,
}

/// Something a watcher of one experiment hears.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A task's state (or detail) changed.
    Task(TaskStatus),
    /// A running task reported progress.
    Progress { task: TaskRef, event: ProgressEvent },
    /// Every task ended and the output folder is written (`results.json` is there); always the
    /// last event.
    Finished(ExperimentState),
}

/// A [`WatchEvent`] with the experiment it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentEvent {
    pub experiment: ExperimentId,
    pub event: WatchEvent,
}

impl ExperimentEvent {
    pub fn is_finished(&self) -> bool {
        matches!(self.event, WatchEvent::Finished(_))
    }
}

fn task_status(e: &ExperimentEntry, i: usize) -> TaskStatus {
    let spec = &e.plan.tasks[i].spec;
    let t = &e.tasks[i];
    // A stage is shown only while the task runs: a finished finetune's last stage ("saving
    // adapter") is not what it is doing now.
    let detail = match (&t.state, &t.last_progress) {
        (TaskState::Failed | TaskState::Cancelled, _) => t.detail.clone(),
        (TaskState::Ready, _) => super::wait::shown(&t.state, t.wait.as_ref()).unwrap_or_default(),
        (TaskState::Running { .. }, Some(ProgressEvent::Stage { name })) => name.clone(),
        _ => String::new(),
    };
    TaskStatus {
        task: spec.id.clone(),
        state: t.state.clone(),
        agent: t
            .placed
            .as_ref()
            .map(|p| p.agent.clone())
            .or_else(|| t.ran_on.clone()),
        attempt: t.attempt,
        detail,
        predictions: t.predictions.len() as u64,
        estimate_mib: spec.estimate_mib,
    }
}

fn agent_status(a: &AgentEntry) -> AgentStatus {
    AgentStatus {
        agent: a.reg.agent.clone(),
        host: a.reg.host.clone(),
        devices: a.devices.iter().map(|d| d.info.clone()).collect(),
    }
}

/// Every experiment (or just `only`) and every connected agent.
pub fn status(core: &Core, only: Option<&ExperimentId>) -> Result<StatusReport, CoreError> {
    if let Some(id) = only
        && core.experiment(id).is_none()
    {
        return Err(CoreError::UnknownExperiment(id.0.clone()));
    }
    let experiments = core
        .experiments
        .iter()
        .filter(|e| only.is_none_or(|id| &e.plan.id == id))
        .map(|e| ExperimentStatus {
            id: e.plan.id.clone(),
            name: e.plan.name.clone(),
            state: e.reported_state(),
            tasks: (0..e.tasks.len()).map(|i| task_status(e, i)).collect(),
            output_dir: e.plan.output_dir.clone(),
        })
        .collect();
    Ok(StatusReport {
        experiments,
        agents: core.agents.values().map(agent_status).collect(),
    })
}

/// One event per task with its current state (a watcher's starting point), plus `Finished` if so.
pub fn snapshot_events(e: &ExperimentEntry) -> Vec<ExperimentEvent> {
    let event = |event| ExperimentEvent {
        experiment: e.plan.id.clone(),
        event,
    };
    let mut out: Vec<_> = (0..e.tasks.len())
        .map(|i| event(WatchEvent::Task(task_status(e, i))))
        .collect();
    if e.is_finished() {
        out.push(event(WatchEvent::Finished(e.reported_state())));
    }
    out
}

/// The event a notice becomes for the experiment's watchers (`None` for an unknown task).
pub fn notice_event(core: &Core, n: &Notice) -> Option<ExperimentEvent> {
    let (experiment, event) = match n {
        Notice::Task(exp, task) => {
            let e = core.experiment(exp)?;
            let i = e.plan.tasks.iter().position(|t| &t.spec.id == task)?;
            (exp, WatchEvent::Task(task_status(e, i)))
        }
        Notice::Progress(exp, task, ev) => {
            let e = core.experiment(exp)?;
            let i = e.plan.tasks.iter().position(|t| &t.spec.id == task)?;
            let task = TaskRef {
                experiment: exp.clone(),
                task: task.clone(),
                attempt: e.tasks[i].attempt,
            };
            (
                exp,
                WatchEvent::Progress {
                    task,
                    event: ev.clone(),
                },
            )
        }
        Notice::Finished(exp, state) => (exp, WatchEvent::Finished(*state)),
    };
    Some(ExperimentEvent {
        experiment: experiment.clone(),
        event,
    })
}
