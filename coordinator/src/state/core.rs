//! The coordinator's state and its event handlers. Synchronous and free of I/O: each handler
//! mutates the state and queues effects (messages to agents, journal writes, watcher notices) that
//! the owner task ([`super::spawn`]) carries out. That keeps every decision testable without a network.
pub use super::task::TaskEntry;
pub(super) use super::task::new_task;
pub use super::types::*;
use crate::experiment::{ExperimentId, ExperimentPlan, TaskPayload};
use crate::journal::{ExperimentJournal, Restored, TaskJournal};
use shared::task::{
    AgentId, IllegalTransition, PredictionRow, ProgressEvent, TaskEvent, TaskId, TaskState,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

#[derive(Debug)]
pub struct DeviceSlot {
    pub info: DeviceInfo,
    /// The task placed on it (offered or running): one task per device at a time.
    pub busy: Option<(ExperimentId, TaskId)>,
}

#[derive(Debug)]
pub struct AgentEntry {
    pub reg: Registration,
    /// Increments per connection, so a stale session's disconnect is not mistaken for the new one's.
    pub session: u64,
    pub devices: Vec<DeviceSlot>,
    /// When the session registered or last sent a heartbeat.
    pub last_seen: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub agent: AgentId,
    pub session: u64,
    pub device_uuid: String,
}

#[derive(Debug)]
pub struct ExperimentEntry {
    pub plan: ExperimentPlan,
    pub tasks: Vec<TaskEntry>,
    /// From the tasks: `Running` until every task ended, then whether all succeeded.
    pub state: ExperimentState,
    pub outputs: OutputsState,
}

impl ExperimentEntry {
    fn index(&self, id: &TaskId) -> Option<usize> {
        self.plan.tasks.iter().position(|t| &t.spec.id == id)
    }

    pub fn journal(&self) -> ExperimentJournal {
        ExperimentJournal {
            tasks: self
                .plan
                .tasks
                .iter()
                .zip(&self.tasks)
                .map(|(p, t)| {
                    let tj = TaskJournal {
                        state: t.state.clone(),
                        detail: t.detail.clone(),
                        attempt: t.attempt,
                        output: t.output.clone(),
                        ran_on: t.ran_on.clone(),
                        checkpoint: t.checkpoint.clone(),
                    };
                    (p.spec.id.clone(), tj)
                })
                .collect(),
            finished: matches!(self.outputs, OutputsState::Written { .. }),
            report: matches!(self.outputs, OutputsState::Written { report: true }),
        }
    }

    /// Every task ended and the output folder is written (or writing it failed): watchers have
    /// heard `Finished`, and `results.json` is there if it ever will be.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.outputs,
            OutputsState::Written { .. } | OutputsState::Failed(_)
        )
    }

    /// The state the outside sees: running until finished (outputs included); failed if the
    /// outputs could not be written.
    pub fn reported_state(&self) -> ExperimentState {
        match &self.outputs {
            OutputsState::Pending | OutputsState::Writing => ExperimentState::Running,
            OutputsState::Failed(_) => ExperimentState::Failed,
            OutputsState::Written { .. } => self.state,
        }
    }
}

/// The whole state.
#[derive(Debug, Default)]
pub struct Core {
    pub settings: Settings,
    pub agents: BTreeMap<AgentId, AgentEntry>,
    /// In submission order.
    pub experiments: Vec<ExperimentEntry>,
    next_session: u64,
    pub fx: Effects,
    /// Retries, lease expiries and queue waits since start (`/metrics`).
    pub tally: super::metrics::Tally,
}

/// Why a request from the CLI or an agent was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoreError {
    #[error("unknown experiment `{0}`")]
    UnknownExperiment(String),
    #[error("agent `{0}` registered no device")]
    NoDevices(String),
    /// Another agent with this id is connected and alive: two agents must not share an id.
    #[error(
        "agent id `{agent}` is already connected from host `{host}` (heard from {secs} s ago): a second agent with the same id is refused; give each agent its own --agent-id (SIZESPEC_AGENT_ID)"
    )]
    DuplicateAgent {
        agent: String,
        host: String,
        secs: u64,
    },
    #[error(
        "experiment `{experiment}`, task `{}`: a result for a task in state {state:?} (not running); refused",
        task.0
    )]
    NotRunning {
        experiment: ExperimentId,
        task: TaskId,
        state: TaskState,
    },
    /// The event makes no sense in the task's state: refused, nothing changed.
    #[error("experiment `{experiment}`, task `{}`: {source}; refused", task.0)]
    IllegalTransition {
        experiment: ExperimentId,
        task: TaskId,
        source: IllegalTransition,
    },
}

fn illegal(r: &TaskRef) -> impl FnOnce(IllegalTransition) -> CoreError + '_ {
    move |source| CoreError::IllegalTransition {
        experiment: r.experiment.clone(),
        task: r.task.clone(),
        source,
    }
}

impl Core {
    pub fn new(settings: Settings) -> Core {
        Core {
            settings,
            ..Core::default()
        }
    }

    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }

    pub fn experiment(&self, id: &ExperimentId) -> Option<&ExperimentEntry> {
        self.experiments.iter().find(|e| &e.plan.id == id)
    }

    fn exp_index(&self, id: &ExperimentId) -> Option<usize> {
        self.experiments.iter().position(|e| &e.plan.id == id)
    }

    /// Adds an experiment; an id already known resumes that one (same config and data).
    pub fn submit(&mut self, plan: ExperimentPlan, now: Instant) -> ExperimentId {
        let id = plan.id.clone();
        if self.exp_index(&id).is_some() {
            tracing::info!(experiment = %id, "already known: resuming");
            return id;
        }
        let mut tasks: Vec<TaskEntry> = plan
            .tasks
            .iter()
            .map(|_| new_task(TaskState::Pending, 0, None, None, &self.tally))
            .collect();
        seed_cached(&plan, &mut tasks);
        let entry = ExperimentEntry {
            plan: plan.clone(),
            tasks,
            state: ExperimentState::Running,
            outputs: OutputsState::Pending,
        };
        self.fx.io.push(Io::SavePlan(Box::new(plan)));
        self.fx.io.push(Io::SaveState(id.clone(), entry.journal()));
        self.experiments.push(entry);
        self.schedule(now);
        id
    }

    /// Re-admits a journalled experiment: finished tasks stay finished; tasks that were offered or
    /// running when the coordinator stopped go back to the queue with their predictions kept.
    pub fn restore(&mut self, r: Restored, now: Instant) {
        let mut tasks = Vec::with_capacity(r.plan.tasks.len());
        for t in &r.plan.tasks {
            let j = r.state.tasks.get(&t.spec.id);
            let state = match j.map(|j| &j.state) {
                Some(s) if s.is_terminal() => s.clone(),
                _ => TaskState::Pending,
            };
            let mut entry = new_task(
                state,
                j.map_or(0, |j| j.attempt),
                j.and_then(|j| j.output.clone()),
                j.and_then(|j| j.ran_on.clone()),
                &self.tally,
            );
            entry.detail = j.map(|j| j.detail.clone()).unwrap_or_default();
            entry.checkpoint = j.and_then(|j| j.checkpoint.clone());
            for row in r.predictions.get(&t.spec.id).into_iter().flatten() {
                entry
                    .predictions
                    .entry(row.sample_id.clone())
                    .or_insert_with(|| row.clone());
            }
            tasks.push(entry);
        }
        seed_cached(&r.plan, &mut tasks);
        // Finished means the outputs were written; otherwise `schedule` writes them again once
        // every task has ended (a crash mid-write loses nothing).
        let (state, outputs) = if r.state.finished {
            let report = r.state.report;
            (final_state(&tasks), OutputsState::Written { report })
        } else {
            (ExperimentState::Running, OutputsState::Pending)
        };
        tracing::info!(experiment = %r.plan.id, ?state, "restored from the journal");
        self.experiments.push(ExperimentEntry {
            plan: r.plan,
            tasks,
            state,
            outputs,
        });
        self.schedule(now);
    }

    pub fn register(&mut self, reg: Registration, now: Instant) -> Result<u64, CoreError> {
        if reg.devices.is_empty() {
            return Err(CoreError::NoDevices(reg.agent.0.clone()));
        }
        let id = reg.agent.clone();
        if let Some(old) = self.agents.get(&id) {
            // The first session was heard from within a lease: it is alive, and this is a second
            // agent with its id. Silent longer, it is gone (a half-open connection the coordinator
            // has not noticed yet) and this is its reconnect.
            let silent = now.saturating_duration_since(old.last_seen);
            if silent < self.settings.lease {
                let err = CoreError::DuplicateAgent {
                    agent: id.0.clone(),
                    host: old.reg.host.clone(),
                    secs: silent.as_secs(),
                };
                tracing::error!(agent = %id.0, host = %reg.host, "registration refused: {err}");
                return Err(err);
            }
            tracing::warn!(agent = %id.0, host = %reg.host, silent_s = silent.as_secs(), "agent id taken over: its previous session was silent");
            // A reconnect: whatever the old session was running is lost.
            self.lose_agent_tasks(&id, "the agent reconnected", now);
        }
        self.next_session += 1;
        let session = self.next_session;
        let devices = reg
            .devices
            .iter()
            .map(|d| DeviceSlot {
                info: d.clone(),
                busy: None,
            })
            .collect();
        tracing::info!(agent = %id.0, host = %reg.host, devices = reg.devices.len(), session, "agent registered");
        self.agents.insert(
            id,
            AgentEntry {
                reg,
                session,
                devices,
                last_seen: now,
            },
        );
        self.schedule(now);
        Ok(session)
    }

    pub fn disconnect(&mut self, agent: &AgentId, session: u64, now: Instant) {
        if self.agents.get(agent).is_none_or(|a| a.session != session) {
            return;
        }
        tracing::warn!(agent = %agent.0, "agent disconnected");
        self.lose_agent_tasks(agent, "the agent disconnected", now);
        self.agents.remove(agent);
        self.schedule(now);
    }

    /// Fresh free memory and the agent's running tasks: renews their leases.
    pub fn heartbeat(
        &mut self,
        agent: &AgentId,
        session: u64,
        free: &[(String, u64)],
        running: &[TaskRef],
        now: Instant,
    ) {
        let Some(a) = self.agents.get_mut(agent).filter(|a| a.session == session) else {
            return;
        };
        a.last_seen = now;
        let mut changed = Vec::new();
        for (uuid, mib) in free {
            if let Some(d) = a.devices.iter_mut().find(|d| &d.info.uuid == uuid)
                && d.info.free_mib != *mib
            {
                d.info.free_mib = *mib;
                changed.push(uuid.clone());
            }
        }
        let lease = self.settings.lease;
        for e in &mut self.experiments {
            for t in &mut e.tasks {
                // New memory figures give a device that declined another chance.
                t.declined
                    .retain(|(aid, uuid)| !(aid == agent && changed.contains(uuid)));
            }
        }
        for r in running {
            if let Some((_, t)) = self.task_mut(r, agent, session) {
                t.deadline = Some(now + lease);
            }
        }
        self.schedule(now);
    }

    /// Finds the task a message refers to, if it is still placed on this agent's session at this attempt.
    pub(super) fn task_mut(
        &mut self,
        r: &TaskRef,
        agent: &AgentId,
        session: u64,
    ) -> Option<(usize, &mut TaskEntry)> {
        let ei = self.exp_index(&r.experiment)?;
        let e = &mut self.experiments[ei];
        let ti = e.index(&r.task)?;
        let t = &mut e.tasks[ti];
        let ours = t.attempt == r.attempt
            && t.placed
                .as_ref()
                .is_some_and(|p| &p.agent == agent && p.session == session);
        if !ours {
            tracing::debug!(task = %r.task.0, agent = %agent.0, "ignoring a message for a task this agent no longer holds");
            return None;
        }
        Some((ei, t))
    }

    /// An agent's answer to an offer. Only the agent holding the offer may answer, once: any
    /// other answer is an illegal transition, refused with nothing changed. The one accept that
    /// follows an implied one (`accept.rs`) is expected and changes nothing.
    pub fn offer_reply(
        &mut self,
        agent: &AgentId,
        session: u64,
        r: &TaskRef,
        answer: OfferAnswer,
        now: Instant,
    ) -> Result<(), CoreError> {
        let lease = self.settings.lease;
        let Some((ei, t)) = self.task_mut(r, agent, session) else {
            return Ok(());
        };
        if answer == OfferAnswer::Accept
            && t.accept_implied
            && matches!(&t.state, TaskState::Running { agent: held } if held == agent)
        {
            t.accept_implied = false;
            return Ok(());
        }
        let event = match &answer {
            OfferAnswer::Accept => TaskEvent::Accept {
                agent: agent.clone(),
            },
            OfferAnswer::Decline { .. } => TaskEvent::Decline {
                agent: agent.clone(),
            },
        };
        t.step(event, now).map_err(illegal(r))?;
        let device = t
            .placed
            .as_ref()
            .map(|p| p.device_uuid.clone())
            .unwrap_or_default();
        if let OfferAnswer::Decline { reason, free_mib } = answer {
            tracing::info!(task = %r.task.0, agent = %agent.0, reason, free_mib, "offer declined");
            t.placed = None;
            t.deadline = None;
            t.declined.insert((agent.clone(), device.clone()));
            if let Some(d) = self.device_mut(agent, &device) {
                d.info.free_mib = free_mib;
                d.busy = None;
            }
        } else {
            t.deadline = Some(now + lease);
            t.ran_on = Some(agent.clone());
        }
        self.fx
            .notices
            .push(Notice::Task(r.experiment.clone(), r.task.clone()));
        self.persist(ei);
        self.schedule(now);
        Ok(())
    }

    pub fn progress(
        &mut self,
        agent: &AgentId,
        session: u64,
        r: &TaskRef,
        event: ProgressEvent,
        now: Instant,
    ) {
        let lease = self.settings.lease;
        self.accept_implied(r, agent, session, now);
        let Some((_, t)) = self.task_mut(r, agent, session) else {
            return;
        };
        t.deadline = Some(now + lease);
        match &event {
            ProgressEvent::TrainStep { step, loss, .. } => t.curve.push((*step, Some(*loss), None)),
            ProgressEvent::Validation { step, loss, .. } => {
                t.curve.push((*step, None, Some(*loss)))
            }
            _ => {}
        }
        if let Some(rate) = super::metrics::Rate::of(&event) {
            t.rate = Some(rate);
        }
        t.last_progress = Some(event.clone());
        self.fx.notices.push(Notice::Progress(
            r.experiment.clone(),
            r.task.clone(),
            event,
        ));
    }

    /// Keeps rows for samples of this task not seen before (a re-run or a duplicate batch never
    /// counts twice) and journals them.
    pub fn predictions(
        &mut self,
        agent: &AgentId,
        session: u64,
        r: &TaskRef,
        rows: Vec<PredictionRow>,
        now: Instant,
    ) {
        let lease = self.settings.lease;
        self.accept_implied(r, agent, session, now);
        let Some((ei, t)) = self.task_mut(r, agent, session) else {
            return;
        };
        t.deadline = Some(now + lease);
        let ti = self.experiments[ei].index(&r.task).unwrap_or_default();
        let e = &mut self.experiments[ei];
        let known: HashSet<&str> = match &e.plan.tasks[ti].payload {
            TaskPayload::Evaluate(p) => p.samples.iter().map(|s| s.id.as_str()).collect(),
            TaskPayload::Finetune(_) => HashSet::new(),
        };
        let t = &mut e.tasks[ti];
        let mut fresh = Vec::new();
        for row in rows {
            if known.contains(row.sample_id.as_str()) && !t.predictions.contains_key(&row.sample_id)
            {
                t.predictions.insert(row.sample_id.clone(), row.clone());
                fresh.push(row);
            }
        }
        if !fresh.is_empty() {
            self.fx.io.push(Io::AppendPredictions(
                r.experiment.clone(),
                r.task.clone(),
                fresh,
            ));
        }
    }

    /// The end of a running task as its agent reports it (a report for a task still offered to
    /// this agent implies its accept). A failure a retry would repeat fails the task at once;
    /// other failures re-queue it until its attempts are used up.
    pub fn result(
        &mut self,
        agent: &AgentId,
        session: u64,
        r: &TaskRef,
        outcome: Outcome,
        now: Instant,
    ) -> Result<(), CoreError> {
        let max_attempts = self.settings.max_attempts;
        self.accept_implied(r, agent, session, now);
        let Some((ei, _)) = self.task_mut(r, agent, session) else {
            return Ok(());
        };
        let e = &mut self.experiments[ei];
        let Some(ti) = e.index(&r.task) else {
            return Ok(());
        };
        // An evaluation is done only when every sample's prediction arrived: a report of success
        // with rows missing is treated as a failure, and the retry runs just the missing ones.
        let missing = match &e.plan.tasks[ti].payload {
            TaskPayload::Evaluate(p) => p
                .samples
                .iter()
                .filter(|s| !e.tasks[ti].predictions.contains_key(&s.id))
                .count(),
            TaskPayload::Finetune(_) => 0,
        };
        let outcome = match outcome {
            Outcome::Done(_) if missing > 0 => {
                Outcome::Failed(format!("finished with {missing} predictions missing"))
            }
            o => o,
        };
        let t = &mut e.tasks[ti];
        if !matches!(t.state, TaskState::Running { .. }) {
            return Err(CoreError::NotRunning {
                experiment: r.experiment.clone(),
                task: r.task.clone(),
                state: t.state.clone(),
            });
        }
        let outcome = super::checkpoint::name_resume(outcome, t.resume_offered.as_ref(), agent);
        let by = || agent.clone();
        let event = match &outcome {
            Outcome::Done(_) => TaskEvent::Succeed { agent: by() },
            Outcome::Failed(_) if t.losses + 1 >= max_attempts => TaskEvent::Fail { agent: by() },
            Outcome::Failed(_) => TaskEvent::Requeue,
            Outcome::Rejected(_) => TaskEvent::Fail { agent: by() },
            // Not the task's fault (the agent is shutting down): back to the queue, not counted.
            Outcome::Cancelled(_) => TaskEvent::Requeue,
        };
        t.step(event, now).map_err(illegal(r))?;
        let device = t.placed.take().map(|p| p.device_uuid).unwrap_or_default();
        t.deadline = None;
        match outcome {
            Outcome::Done(out) => t.output = Some(out),
            Outcome::Failed(why) => {
                t.losses += 1;
                if t.state == TaskState::Failed {
                    t.detail = format!("failed {} times; last error: {why}", t.losses);
                } else {
                    tracing::warn!(task = %r.task.0, error = %why, "task failed on the agent; re-queued");
                }
            }
            Outcome::Rejected(why) => {
                t.losses += 1;
                t.detail = format!("failed: {why} (not retried: a retry would fail the same way)");
            }
            Outcome::Cancelled(_) => {}
        }
        self.release_device(agent, &device);
        self.fx
            .notices
            .push(Notice::Task(r.experiment.clone(), r.task.clone()));
        self.persist(ei);
        self.schedule(now);
        Ok(())
    }

    /// The output writer finished an experiment's folder: now it is finished, and watchers hear so.
    pub fn outputs_written(
        &mut self,
        experiment: &ExperimentId,
        result: Result<crate::outputs::Written, String>,
    ) {
        let Some(ei) = self.exp_index(experiment) else {
            return;
        };
        let e = &mut self.experiments[ei];
        e.outputs = match result {
            Ok(w) => OutputsState::Written { report: w.report },
            Err(why) => OutputsState::Failed(why),
        };
        tracing::info!(experiment = %experiment, state = ?e.reported_state(), "experiment finished");
        self.fx
            .notices
            .push(Notice::Finished(experiment.clone(), e.reported_state()));
        self.persist(ei);
    }

    /// Re-queues offers and running tasks whose lease ran out.
    pub fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for e in &self.experiments {
            for (p, t) in e.plan.tasks.iter().zip(&e.tasks) {
                if let (Some(d), Some(pl)) = (t.deadline, &t.placed)
                    && d <= now
                {
                    expired.push((e.plan.id.clone(), p.spec.id.clone(), t.attempt, pl.clone()));
                }
            }
        }
        for (exp, task, attempt, pl) in expired {
            tracing::warn!(task = %task.0, agent = %pl.agent.0, "lease expired: re-queueing");
            self.tally.lease_expiries.inc();
            let r = TaskRef {
                experiment: exp,
                task,
                attempt,
            };
            if let Err(e) = self.lose_task(&r, "lease expired (no heartbeat or progress)", now) {
                tracing::error!(error = %e, "lease expiry");
                continue;
            }
            self.fx.to_agents.push((
                pl.agent.clone(),
                pl.session,
                ToAgent::Cancel {
                    task: r,
                    reason: "lease expired".into(),
                },
            ));
            self.release_device(&pl.agent, &pl.device_uuid);
        }
        self.schedule(now);
    }

    fn lose_agent_tasks(&mut self, agent: &AgentId, why: &str, now: Instant) {
        let mut lost = Vec::new();
        for e in &self.experiments {
            for (p, t) in e.plan.tasks.iter().zip(&e.tasks) {
                if t.placed.as_ref().is_some_and(|pl| &pl.agent == agent) {
                    lost.push(TaskRef {
                        experiment: e.plan.id.clone(),
                        task: p.spec.id.clone(),
                        attempt: t.attempt,
                    });
                }
            }
        }
        for r in lost {
            if let Err(e) = self.lose_task(&r, why, now) {
                tracing::error!(error = %e, "losing an agent's task");
            }
        }
        if let Some(a) = self.agents.get_mut(agent) {
            for d in &mut a.devices {
                d.busy = None;
            }
        }
    }

    /// A placed task lost its agent: back to the queue, or failed once attempts are used up.
    fn lose_task(&mut self, r: &TaskRef, why: &str, now: Instant) -> Result<(), CoreError> {
        let max_attempts = self.settings.max_attempts;
        let Some(ei) = self.exp_index(&r.experiment) else {
            return Ok(());
        };
        let Some(ti) = self.experiments[ei].index(&r.task) else {
            return Ok(());
        };
        let t = &mut self.experiments[ei].tasks[ti];
        // A running task's loss counts against its attempts; an unanswered offer's does not.
        let counted = t
            .state
            .agent()
            .filter(|_| matches!(t.state, TaskState::Running { .. }));
        let event = match counted {
            Some(agent) if t.losses + 1 >= max_attempts => TaskEvent::Fail {
                agent: agent.clone(),
            },
            _ => TaskEvent::Requeue,
        };
        let counted = counted.is_some();
        t.step(event, now).map_err(illegal(r))?;
        t.placed = None;
        t.deadline = None;
        if counted {
            t.losses += 1;
        }
        if t.state == TaskState::Failed {
            t.detail = format!("lost {} times; last: {why}", t.losses);
        }
        self.fx
            .notices
            .push(Notice::Task(r.experiment.clone(), r.task.clone()));
        self.persist(ei);
        Ok(())
    }

    fn device_mut(&mut self, agent: &AgentId, uuid: &str) -> Option<&mut DeviceSlot> {
        self.agents
            .get_mut(agent)?
            .devices
            .iter_mut()
            .find(|d| d.info.uuid == uuid)
    }

    fn release_device(&mut self, agent: &AgentId, uuid: &str) {
        if let Some(d) = self.device_mut(agent, uuid) {
            d.busy = None;
        }
    }

    pub(super) fn persist(&mut self, ei: usize) {
        let e = &self.experiments[ei];
        self.fx
            .io
            .push(Io::SaveState(e.plan.id.clone(), e.journal()));
    }
}

/// Rows the plan found in the prediction cache count as received predictions (they are in the
/// journalled plan, so a restart seeds them again).
fn seed_cached(plan: &ExperimentPlan, tasks: &mut [TaskEntry]) {
    let Some(c) = &plan.cache else {
        return;
    };
    for (p, t) in plan.tasks.iter().zip(tasks) {
        for row in c.rows(&p.spec.id) {
            t.predictions
                .entry(row.sample_id.clone())
                .or_insert_with(|| row.clone());
        }
    }
}

pub(super) fn final_state(tasks: &[TaskEntry]) -> ExperimentState {
    if tasks.iter().all(|t| t.state == TaskState::Succeeded) {
        ExperimentState::Succeeded
    } else if tasks.iter().all(|t| t.state.is_terminal()) {
        ExperimentState::Failed
    } else {
        ExperimentState::Running
    }
}
