//! The live page's view of the state (`GET /api/state`, shape owned by [`crate::report::live`]).
use super::core::{Core, ExperimentEntry, ExperimentState, OutputsState};
use crate::report::live::{
    ExperimentPhase, LiveAgent, LiveCurve, LiveDevice, LivePoint, LiveProgress, LiveState,
    LiveTask, LiveTaskState, ProgressUnit,
};
use shared::task::{ProgressEvent, TaskKind};
use std::path::PathBuf;

/// The experiment the page follows: the first one not finished, else the latest.
fn followed(core: &Core) -> Option<&ExperimentEntry> {
    core.experiments
        .iter()
        .find(|e| !e.is_finished())
        .or_else(|| core.experiments.last())
}

fn progress(p: &ProgressEvent) -> Option<LiveProgress> {
    match *p {
        ProgressEvent::TrainStep {
            step,
            total_steps,
            tokens_per_s,
            memory_mib,
            ..
        } => Some(LiveProgress {
            done: step,
            total: total_steps,
            unit: ProgressUnit::Steps,
            samples_per_s: None,
            tokens_per_s: Some(tokens_per_s),
            memory_mib: Some(memory_mib),
        }),
        ProgressEvent::EvalProgress {
            done,
            total,
            samples_per_s,
            tokens_per_s,
            memory_mib,
        } => Some(LiveProgress {
            done,
            total,
            unit: ProgressUnit::Samples,
            samples_per_s: Some(samples_per_s),
            tokens_per_s: Some(tokens_per_s),
            memory_mib: Some(memory_mib),
        }),
        ProgressEvent::Validation { .. } | ProgressEvent::Stage { .. } => None,
    }
}

/// A snapshot for the page, and the followed experiment's output folder (for `/report/...`).
pub fn live_state(core: &Core, updated: String) -> (LiveState, Option<PathBuf>) {
    let agents = core
        .agents
        .values()
        .map(|a| LiveAgent {
            id: a.reg.agent.clone(),
            host: a.reg.host.clone(),
            connected: true,
            devices: a
                .devices
                .iter()
                .map(|d| LiveDevice {
                    uuid: d.info.uuid.clone(),
                    name: d.info.name.clone(),
                    total_mib: d.info.total_mib,
                    free_mib: d.info.free_mib,
                })
                .collect(),
            task: a
                .devices
                .iter()
                .find_map(|d| d.busy.as_ref().map(|(_, t)| t.clone())),
        })
        .collect();
    let Some(e) = followed(core) else {
        let idle = LiveState {
            experiment: None,
            phase: ExperimentPhase::Idle,
            updated,
            agents,
            tasks: Vec::new(),
            curves: Vec::new(),
            report: None,
        };
        return (idle, None);
    };
    let report_written = matches!(e.outputs, OutputsState::Written { report: true });
    let phase = match e.reported_state() {
        ExperimentState::Running => ExperimentPhase::Running,
        ExperimentState::Succeeded => ExperimentPhase::Done,
        ExperimentState::Failed => ExperimentPhase::Failed,
    };
    let tasks = e
        .plan
        .tasks
        .iter()
        .zip(&e.tasks)
        .map(|(p, t)| {
            let (state, agent) = LiveTaskState::from_task_state(&t.state);
            LiveTask {
                id: p.spec.id.clone(),
                kind: p.spec.kind,
                model: p.spec.model.key.clone(),
                state,
                agent: agent.or_else(|| t.ran_on.clone()),
                estimate_mib: p.spec.estimate_mib,
                progress: t.last_progress.as_ref().and_then(progress),
                error: (!t.detail.is_empty()).then(|| t.detail.clone()),
                waiting: super::wait::shown(&t.state, t.wait.as_ref()),
            }
        })
        .collect();
    let curves = e
        .plan
        .tasks
        .iter()
        .zip(&e.tasks)
        .filter(|(p, t)| p.spec.kind == TaskKind::Finetune && !t.curve.is_empty())
        .map(|(p, t)| LiveCurve {
            model: p.spec.model.key.clone(),
            points: t
                .curve
                .iter()
                .map(|&(step, train_loss, validation_loss)| LivePoint {
                    step,
                    train_loss,
                    validation_loss,
                })
                .collect(),
        })
        .collect();
    let state = LiveState {
        experiment: Some(e.plan.id.0.clone()),
        phase,
        updated,
        agents,
        tasks,
        curves,
        report: report_written.then(|| "/report/report.html".to_string()),
    };
    (state, Some(e.plan.output_dir.clone()))
}
