//! Finetune checkpoints: an agent announces each one once it is stored in the artifact store; the
//! task keeps the latest (journalled, so it survives a restart), a re-queued finetune's offer
//! carries it (`sched.rs`), and the result of a resumed run names both agents.
use super::core::{CheckpointRef, Core, Outcome, SavedCheckpoint, TaskRef};
use crate::outcome::TaskOutput;
use shared::task::{AgentId, TaskKind};
use std::time::Instant;

impl Core {
    /// Records `saved` as the task's latest checkpoint when it is further on than the one held
    /// (a message for an attempt the agent no longer holds is ignored). The message renews the
    /// lease, as progress does.
    pub fn checkpoint(
        &mut self,
        agent: &AgentId,
        session: u64,
        r: &TaskRef,
        saved: SavedCheckpoint,
        now: Instant,
    ) {
        let lease = self.settings.lease;
        self.accept_implied(r, agent, session, now);
        let finetune = self.experiment(&r.experiment).is_some_and(|e| {
            e.plan
                .tasks
                .iter()
                .any(|p| p.spec.id == r.task && p.spec.kind == TaskKind::Finetune)
        });
        let Some((ei, t)) = self.task_mut(r, agent, session) else {
            return;
        };
        t.deadline = Some(now + lease);
        if !finetune {
            tracing::warn!(task = %r.task.0, agent = %agent.0, "a checkpoint for a task that is not a finetune; ignored");
            return;
        }
        if t.checkpoint
            .as_ref()
            .is_some_and(|c| c.saved.step >= saved.step)
        {
            return;
        }
        tracing::info!(task = %r.task.0, agent = %agent.0, step = saved.step, artifact = %saved.artifact, "checkpoint recorded");
        t.checkpoint = Some(CheckpointRef {
            saved,
            agent: agent.clone(),
        });
        self.persist(ei);
    }
}

/// A finetune that reports it resumed: the result names the agent that finished it and the one
/// whose checkpoint it resumed from.
pub(super) fn name_resume(
    mut outcome: Outcome,
    checkpoint: Option<&CheckpointRef>,
    agent: &AgentId,
) -> Outcome {
    if let Outcome::Done(TaskOutput::Finetuned(tr)) = &mut outcome
        && let Some(r) = &mut tr.resumed
    {
        r.resumed_on_agent = agent.0.clone();
        r.checkpoint_by_agent = checkpoint.map(|c| c.agent.0.clone()).unwrap_or_default();
    }
    outcome
}
