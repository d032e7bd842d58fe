//! A message about a task still offered to an agent is that agent's accept: the task runs, and
//! the accept that follows is absorbed once (`TaskEntry::accept_implied`).
use super::core::{Core, Notice, TaskRef};
use shared::task::{AgentId, TaskEvent, TaskState};
use std::time::Instant;

impl Core {
    /// A message about a task still offered to this agent (progress, predictions, a result) means
    /// the agent took it: the offer becomes running as if its accept had come first. The agent
    /// queues its accept before any other message about the task, but the task's state must not
    /// hang on that order: a result the coordinator dropped would leave the task to its lease.
    pub(super) fn accept_implied(
        &mut self,
        r: &TaskRef,
        agent: &AgentId,
        session: u64,
        now: Instant,
    ) {
        let lease = self.settings.lease;
        let Some((ei, t)) = self.task_mut(r, agent, session) else {
            return;
        };
        if !matches!(&t.state, TaskState::Offered { agent: held } if held == agent) {
            return;
        }
        if let Err(e) = t.step(
            TaskEvent::Accept {
                agent: agent.clone(),
            },
            now,
        ) {
            tracing::error!(task = %r.task.0, error = %e, "implied accept refused");
            return;
        }
        tracing::info!(task = %r.task.0, agent = %agent.0, "a message before the accept: taken as accepted");
        t.deadline = Some(now + lease);
        t.ran_on = Some(agent.clone());
        t.accept_implied = true;
        self.fx
            .notices
            .push(Notice::Task(r.experiment.clone(), r.task.clone()));
        self.persist(ei);
    }
}
