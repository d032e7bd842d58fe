//! Placement: which ready task goes to which idle device. One task per device at a time, only
//! where the reported free memory fits the estimate, an SLM's eval preferably on the agent that
//! finetuned it, and a task no registered device could ever hold fails at once.
use super::core::{
    Core, ExperimentState, Notice, OutputsState, Placement, TaskRef, ToAgent, final_state,
};
use crate::experiment::TaskPayload;
use crate::outcome::TaskOutput;
use crate::outputs::{OutputsInput, TaskResultView};
use shared::task::{AgentId, TaskEvent, TaskId, TaskKind, TaskState};
use std::time::Instant;

impl Core {
    /// Promotes, fails, places and finishes whatever can move now. Called after every event.
    pub fn schedule(&mut self, now: Instant) {
        let largest = self
            .agents
            .values()
            .flat_map(|a| a.devices.iter().map(|d| d.info.total_mib))
            .max();
        for ei in 0..self.experiments.len() {
            if self.experiments[ei].state != ExperimentState::Running {
                continue;
            }
            let mut changed = self.promote(ei, largest, now);
            for ti in 0..self.experiments[ei].tasks.len() {
                if self.experiments[ei].tasks[ti].state == TaskState::Ready
                    && (self.complete_from_cache(ei, ti, now)
                        || self.place(ei, ti, now)
                        || self.note_wait(ei, ti, now))
                {
                    changed = true;
                }
            }
            let state = final_state(&self.experiments[ei].tasks);
            if state != ExperimentState::Running {
                self.finish(ei, state);
                changed = true;
            }
            if changed {
                self.persist(ei);
            }
        }
    }

    /// Pending → Ready when dependencies succeeded, → Cancelled when one did not; tasks larger than
    /// every registered device fail with the numbers.
    fn promote(&mut self, ei: usize, largest: Option<u64>, now: Instant) -> bool {
        let mut changed = false;
        let exp_id = self.experiments[ei].plan.id.clone();
        for ti in 0..self.experiments[ei].tasks.len() {
            let e = &self.experiments[ei];
            let spec = &e.plan.tasks[ti].spec;
            let state = &e.tasks[ti].state;
            if !matches!(state, TaskState::Pending | TaskState::Ready) {
                continue;
            }
            let event = if let Some(max) = largest.filter(|m| spec.estimate_mib > *m) {
                let why = format!(
                    "task `{}` needs {} MiB, largest device has {} MiB",
                    spec.id.0, spec.estimate_mib, max
                );
                Some((TaskEvent::Unplaceable, why))
            } else if *state == TaskState::Pending {
                let dep_states: Vec<(&TaskId, &TaskState)> = spec
                    .depends_on
                    .iter()
                    .map(|d| {
                        (
                            d,
                            e.plan
                                .tasks
                                .iter()
                                .position(|p| &p.spec.id == d)
                                .map(|i| &e.tasks[i].state),
                        )
                    })
                    .map(|(d, p)| (d, p.unwrap_or(&TaskState::Pending)))
                    .collect();
                if let Some((d, _)) = dep_states
                    .iter()
                    .find(|(_, p)| matches!(p, TaskState::Failed | TaskState::Cancelled))
                {
                    Some((
                        TaskEvent::DependencyFailed,
                        format!("dependency `{}` did not succeed", d.0),
                    ))
                } else if dep_states.iter().all(|(_, p)| **p == TaskState::Succeeded) {
                    Some((TaskEvent::DependenciesMet, String::new()))
                } else {
                    None
                }
            } else {
                None
            };
            if let Some((ev, why)) = event {
                let task = self.experiments[ei].plan.tasks[ti].spec.id.clone();
                let t = &mut self.experiments[ei].tasks[ti];
                if let Err(e) = t.step(ev, now) {
                    tracing::error!(experiment = %exp_id, task = %task.0, error = %e, "refused");
                    continue;
                }
                t.detail = why;
                self.fx.notices.push(Notice::Task(exp_id.clone(), task));
                changed = true;
            }
        }
        changed
    }

    /// A ready evaluation whose every sample has a row from the prediction cache succeeds without
    /// an agent, with the performance of the run that computed the rows.
    fn complete_from_cache(&mut self, ei: usize, ti: usize, now: Instant) -> bool {
        let e = &self.experiments[ei];
        let (spec, t) = (&e.plan.tasks[ti].spec, &e.tasks[ti]);
        let TaskPayload::Evaluate(p) = &e.plan.tasks[ti].payload else {
            return false;
        };
        let Some(perf) = e
            .plan
            .cache
            .as_ref()
            .and_then(|c| c.hits.get(&spec.id))
            .and_then(|h| h.performance.clone())
        else {
            return false;
        };
        if p.samples.iter().any(|s| !t.predictions.contains_key(&s.id)) {
            return false;
        }
        let (exp, task) = (e.plan.id.clone(), spec.id.clone());
        let t = &mut self.experiments[ei].tasks[ti];
        if let Err(e) = t.step(TaskEvent::FromCache, now) {
            tracing::error!(task = %task.0, error = %e, "refused");
            return false;
        }
        t.output = Some(TaskOutput::Evaluated(perf));
        t.detail = "every prediction from the prediction cache".into();
        tracing::info!(task = %task.0, "completed from the prediction cache");
        self.fx.notices.push(Notice::Task(exp, task));
        true
    }

    /// Offers task `ti` to the best idle device that fits; false when none does (it waits).
    fn place(&mut self, ei: usize, ti: usize, now: Instant) -> bool {
        let e = &self.experiments[ei];
        let spec = &e.plan.tasks[ti].spec;
        let t = &e.tasks[ti];
        // The agent that trained this eval's adapter still has the base model's files (and the
        // adapter) locally: no transfer, so it wins whenever it fits.
        let trainer: Option<AgentId> = spec
            .depends_on
            .iter()
            .filter_map(|d| e.plan.tasks.iter().position(|p| &p.spec.id == d))
            .filter(|&i| e.plan.tasks[i].spec.kind == TaskKind::Finetune)
            .find_map(|i| e.tasks[i].ran_on.clone());
        let mut best: Option<(bool, u64, AgentId, String, u64)> = None;
        for (aid, a) in &self.agents {
            for d in &a.devices {
                if d.busy.is_some()
                    || d.info.free_mib < spec.estimate_mib
                    || t.declined.contains(&(aid.clone(), d.info.uuid.clone()))
                {
                    continue;
                }
                let preferred = trainer.as_ref() == Some(aid);
                // Preferred first, then best fit (least free memory that still fits) to keep big
                // devices for big tasks.
                let better = match &best {
                    None => true,
                    Some((bp, bfree, ..)) => {
                        (preferred && !bp) || (preferred == *bp && d.info.free_mib < *bfree)
                    }
                };
                if better {
                    best = Some((
                        preferred,
                        d.info.free_mib,
                        aid.clone(),
                        d.info.uuid.clone(),
                        a.session,
                    ));
                }
            }
        }
        let Some((_, _, agent, device_uuid, session)) = best else {
            return false;
        };
        let payload = self.offer_payload(ei, ti);
        let resume = self.experiments[ei].tasks[ti].checkpoint.clone();
        let lease = self.settings.lease;
        let e = &mut self.experiments[ei];
        let spec = e.plan.tasks[ti].spec.clone();
        let t = &mut e.tasks[ti];
        let offer = TaskEvent::Offer {
            agent: agent.clone(),
        };
        if let Err(e) = t.step(offer, now) {
            tracing::error!(task = %spec.id.0, error = %e, "offer refused");
            return false;
        }
        t.attempt += 1;
        t.accept_implied = false;
        t.resume_offered = resume.clone();
        t.wait = None;
        t.placed = Some(Placement {
            agent: agent.clone(),
            session,
            device_uuid: device_uuid.clone(),
        });
        t.deadline = Some(now + lease);
        let r = TaskRef {
            experiment: e.plan.id.clone(),
            task: spec.id.clone(),
            attempt: t.attempt,
        };
        if let Some(d) = self
            .agents
            .get_mut(&agent)
            .and_then(|a| a.devices.iter_mut().find(|d| d.info.uuid == device_uuid))
        {
            d.busy = Some((r.experiment.clone(), r.task.clone()));
        }
        tracing::info!(task = %spec.id.0, agent = %agent.0, device = %device_uuid, attempt = r.attempt, "offering task");
        self.fx
            .notices
            .push(Notice::Task(r.experiment.clone(), r.task.clone()));
        self.fx.to_agents.push((
            agent,
            session,
            ToAgent::Offer {
                task: r,
                spec,
                device_uuid,
                payload: Box::new(payload),
                resume,
            },
        ));
        true
    }

    /// The payload as sent: an eval skips samples whose predictions are already journalled, and
    /// names the adapter its finetune produced.
    fn offer_payload(&self, ei: usize, ti: usize) -> TaskPayload {
        let e = &self.experiments[ei];
        let mut payload = e.plan.tasks[ti].payload.clone();
        if let TaskPayload::Evaluate(p) = &mut payload {
            let done = &e.tasks[ti].predictions;
            p.samples.retain(|s| !done.contains_key(&s.id));
            for d in &e.plan.tasks[ti].spec.depends_on {
                if let Some(i) = e.plan.tasks.iter().position(|x| &x.spec.id == d)
                    && let Some(TaskOutput::Finetuned(tr)) = &e.tasks[i].output
                {
                    p.adapter = Some(tr.adapter_artifact.clone());
                }
            }
        }
        payload
    }

    /// Every task ended: the verdict is known and the output folder goes to the writer; the
    /// experiment is finished (and watchers hear it) once the writer reports back.
    fn finish(&mut self, ei: usize, state: ExperimentState) {
        let e = &mut self.experiments[ei];
        e.state = state;
        e.outputs = OutputsState::Writing;
        tracing::info!(experiment = %e.plan.id, ?state, "every task ended; writing the outputs");
        let tasks = e
            .plan
            .tasks
            .iter()
            .zip(&e.tasks)
            .map(|(p, t)| {
                // Rows in the payload's sample order, so outputs do not depend on arrival order.
                let rows = match &p.payload {
                    TaskPayload::Evaluate(ev) => ev
                        .samples
                        .iter()
                        .filter_map(|s| t.predictions.get(&s.id).cloned())
                        .collect(),
                    TaskPayload::Finetune(_) => Vec::new(),
                };
                TaskResultView {
                    spec: p.spec.clone(),
                    state: t.state.clone(),
                    detail: t.detail.clone(),
                    output: t.output.clone(),
                    predictions: rows,
                }
            })
            .collect();
        self.fx.outputs.push(Box::new(OutputsInput {
            plan: e.plan.clone(),
            tasks,
        }));
    }
}
