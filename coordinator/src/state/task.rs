//! One task's entry in the state: its state (changed only through [`TaskEntry::step`]), where it
//! is placed, what it has produced, and why it waits.
use super::core::Placement;
use super::metrics::{Rate, Tally};
use super::types::CheckpointRef;
use crate::outcome::TaskOutput;
use shared::task::{
    AgentId, IllegalTransition, PredictionRow, ProgressEvent, TaskEvent, TaskState,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

#[derive(Debug)]
pub struct TaskEntry {
    pub state: TaskState,
    /// Why it failed or was cancelled (empty otherwise).
    pub detail: String,
    /// Offer sequence number (the wire `attempt`).
    pub attempt: u32,
    /// Times the task was lost or failed on an agent.
    pub losses: u32,
    pub placed: Option<Placement>,
    pub deadline: Option<Instant>,
    /// (agent, device) pairs that declined the current offer round.
    pub declined: HashSet<(AgentId, String)>,
    /// Received predictions by sample id (persisted before they count).
    pub predictions: BTreeMap<String, PredictionRow>,
    pub output: Option<TaskOutput>,
    pub ran_on: Option<AgentId>,
    /// A finetune's latest checkpoint, and the one offered to the current attempt (`checkpoint.rs`).
    pub checkpoint: Option<CheckpointRef>,
    pub resume_offered: Option<CheckpointRef>,
    pub last_progress: Option<ProgressEvent>,
    /// Loss points of a running or finished finetune, `(step, train, validation)`, for the live page.
    pub curve: Vec<(u64, Option<f64>, Option<f64>)>,
    /// Why it is ready but not placed (`None` once placed).
    pub wait: Option<super::wait::Wait>,
    /// The current attempt runs because a message about it came before its accept; that accept,
    /// when it arrives, is expected and changes nothing.
    pub accept_implied: bool,
    /// When it last became ready (not counting a declined or unanswered offer), until an agent
    /// takes it.
    pub ready_since: Option<Instant>,
    /// The current attempt's last reported speed (`None` once it stops running). Kept apart from
    /// `last_progress`, which a stage or validation event (no speed) replaces between steps.
    pub rate: Option<Rate>,
    /// The owner's event counts (shared).
    pub tally: Tally,
}

impl TaskEntry {
    /// Moves the task to the state `event` leads to (`TaskState::transition`, the one place states
    /// change); an illegal event leaves the entry as it was. Counts retries and queue waits.
    pub(super) fn step(&mut self, event: TaskEvent, now: Instant) -> Result<(), IllegalTransition> {
        let next = self.state.clone().transition(event)?;
        match (&self.state, &next) {
            // A declined or unanswered offer: the wait goes on from when it became ready.
            (TaskState::Offered { .. }, TaskState::Ready) => {}
            (TaskState::Running { .. }, TaskState::Ready) => {
                self.tally.retries.inc();
                self.ready_since = Some(now);
            }
            (_, TaskState::Ready) => self.ready_since = Some(now),
            (_, TaskState::Running { .. }) => {
                if let Some(since) = self.ready_since.take() {
                    let waited = now.saturating_duration_since(since);
                    self.tally.queue_wait.observe(waited.as_secs_f64());
                }
            }
            _ => {}
        }
        if !matches!(next, TaskState::Running { .. }) {
            self.rate = None;
        }
        self.state = next;
        Ok(())
    }
}

pub(super) fn new_task(
    state: TaskState,
    attempt: u32,
    output: Option<TaskOutput>,
    ran_on: Option<AgentId>,
    tally: &Tally,
) -> TaskEntry {
    TaskEntry {
        state,
        detail: String::new(),
        attempt,
        losses: 0,
        placed: None,
        deadline: None,
        declined: HashSet::new(),
        predictions: BTreeMap::new(),
        output,
        ran_on,
        checkpoint: None,
        resume_offered: None,
        last_progress: None,
        curve: Vec::new(),
        wait: None,
        accept_implied: false,
        ready_since: None,
        rate: None,
        tally: tally.clone(),
    }
}
