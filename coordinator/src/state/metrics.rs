//! The numbers behind `/metrics` (`server::metrics` encodes them). Gauges are read from the state
//! at scrape time ([`snapshot`]); events that leave no trace in the state — a retry, a lease
//! expiry, how long a task waited before an agent took it — are counted as they happen in a
//! [`Tally`] the state owner keeps.
use super::core::Core;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use shared::task::{ProgressEvent, TaskState};

/// Upper bounds (seconds) of the queue-wait histogram: a task placed at once, one that waited for
/// a busy device during another task (minutes), one behind a whole finetune (hours).
pub const QUEUE_WAIT_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// Event counts since the coordinator started. Cloning shares the counts (each task's entry holds
/// a clone, so `TaskEntry::step`, where every state change happens, counts them).
#[derive(Debug, Clone)]
pub struct Tally {
    /// A running task sent back to the queue to run again: it failed on its agent with attempts
    /// left, its agent was lost or cancelled it, or its lease expired.
    pub retries: Counter,
    /// Leases that ran out (an offer never answered, a running task whose agent went silent).
    pub lease_expiries: Counter,
    /// Seconds from becoming ready (dependencies met, or re-queued) to an agent taking the task;
    /// a declined or unanswered offer does not restart the clock.
    pub queue_wait: Histogram,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            retries: Counter::default(),
            lease_expiries: Counter::default(),
            queue_wait: Histogram::new(QUEUE_WAIT_BUCKETS),
        }
    }
}

/// A running task's last reported speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    TrainTokensPerS(f64),
    EvalSamplesPerS(f64),
}

impl Rate {
    /// The speed a progress event reports (stages and validations report none).
    pub fn of(event: &ProgressEvent) -> Option<Rate> {
        match *event {
            ProgressEvent::TrainStep { tokens_per_s, .. } => {
                Some(Rate::TrainTokensPerS(tokens_per_s))
            }
            ProgressEvent::EvalProgress { samples_per_s, .. } => {
                Some(Rate::EvalSamplesPerS(samples_per_s))
            }
            ProgressEvent::Validation { .. } | ProgressEvent::Stage { .. } => None,
        }
    }
}

/// How many of an experiment's tasks are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCount {
    pub experiment: String,
    pub state: &'static str,
    pub count: u64,
}

/// One connected device's memory as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    pub agent: String,
    /// The device's UUID (unique across agents).
    pub device: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// A running task's speed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRate {
    pub experiment: String,
    pub task: String,
    pub rate: Rate,
}

/// Everything one scrape reports.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// Every experiment × every state, zeros included (a query for `succeeded` finds a series).
    pub tasks: Vec<TaskCount>,
    pub agents: u64,
    pub devices: Vec<DeviceMemory>,
    pub rates: Vec<TaskRate>,
    pub tally: Tally,
}

/// The label `state` takes, one per [`TaskState`] variant.
pub const STATES: [&str; 7] = [
    "pending",
    "ready",
    "offered",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

fn state_label(s: &TaskState) -> &'static str {
    match s {
        TaskState::Pending => STATES[0],
        TaskState::Ready => STATES[1],
        TaskState::Offered { .. } => STATES[2],
        TaskState::Running { .. } => STATES[3],
        TaskState::Succeeded => STATES[4],
        TaskState::Failed => STATES[5],
        TaskState::Cancelled => STATES[6],
    }
}

const MIB: u64 = 1 << 20;

/// The state's numbers now, with the tally's counts.
pub fn snapshot(core: &Core) -> MetricsSnapshot {
    let mut tasks = Vec::new();
    let mut rates = Vec::new();
    for e in &core.experiments {
        let experiment = &e.plan.id.0;
        for state in STATES {
            let count = e.tasks.iter().filter(|t| state_label(&t.state) == state);
            tasks.push(TaskCount {
                experiment: experiment.clone(),
                state,
                count: count.count() as u64,
            });
        }
        for (p, t) in e.plan.tasks.iter().zip(&e.tasks) {
            if let (TaskState::Running { .. }, Some(rate)) = (&t.state, t.rate) {
                rates.push(TaskRate {
                    experiment: experiment.clone(),
                    task: p.spec.id.0.clone(),
                    rate,
                });
            }
        }
    }
    let devices = core
        .agents
        .values()
        .flat_map(|a| {
            a.devices.iter().map(|d| DeviceMemory {
                agent: a.reg.agent.0.clone(),
                device: d.info.uuid.clone(),
                total_bytes: d.info.total_mib.saturating_mul(MIB),
                free_bytes: d.info.free_mib.saturating_mul(MIB),
            })
        })
        .collect();
    MetricsSnapshot {
        tasks,
        agents: core.agents.len() as u64,
        devices,
        rates,
        tally: core.tally.clone(),
    }
}
