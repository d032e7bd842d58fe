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

#[cfg(test)]
mod tests {
    use super::super::core::*;
    use super::super::tests::{plan, reg, settings};
    use crate::experiment::ExperimentId;
    use shared::task::{AgentId, ProgressEvent, TaskId};
    use std::time::Duration;

    /// The histogram's `(sum, count)` as `/metrics` writes them.
    fn queue_wait(core: &Core) -> (f64, f64) {
        let text = crate::server::metrics::encode_snapshot(&super::snapshot(core));
        let val = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (
            val("sizespec_task_queue_wait_seconds_sum"),
            val("sizespec_task_queue_wait_seconds_count"),
        )
    }

    #[test]
    fn waits_span_declined_offers_and_only_running_tasks_count_as_retries() {
        let s = |secs: f64| Duration::from_secs_f64(secs);
        let t0 = std::time::Instant::now();
        let a = AgentId("a".into());
        let mut core = Core::new(settings());
        let session = core.register(reg("a", 1000), t0).unwrap();
        core.submit(plan(), t0);
        let r = |attempt| TaskRef {
            experiment: ExperimentId("e".into()),
            task: TaskId("finetune:SLM_X".into()),
            attempt,
        };
        // Ready and offered at t0; declined at 1 s; offered again after a heartbeat at 2 s;
        // taken at 3 s: one wait of 3 s, not 1 s.
        let decline = OfferAnswer::Decline {
            reason: "busy".into(),
            free_mib: 1000,
        };
        core.offer_reply(&a, session, &r(1), decline, t0 + s(1.0))
            .unwrap();
        core.heartbeat(&a, session, &[("dev-a".into(), 999)], &[], t0 + s(2.0));
        assert_eq!(core.experiments[0].tasks[0].attempt, 2, "offered again");
        core.offer_reply(&a, session, &r(2), OfferAnswer::Accept, t0 + s(3.0))
            .unwrap();
        assert_eq!(queue_wait(&core), (3.0, 1.0));
        assert_eq!(core.tally.retries.get(), 0, "a declined offer is no retry");

        // A failure with an attempt left: one retry, and a new wait from 4 s to 4.5 s.
        let failed = Outcome::Failed("transient".into());
        core.result(&a, session, &r(2), failed, t0 + s(4.0))
            .unwrap();
        assert_eq!(core.tally.retries.get(), 1);
        core.offer_reply(&a, session, &r(3), OfferAnswer::Accept, t0 + s(4.5))
            .unwrap();
        assert_eq!(queue_wait(&core), (3.5, 2.0));
        // A validation between steps carries no speed: the step's stays reported.
        let step = ProgressEvent::TrainStep {
            epoch: 1,
            step: 1,
            total_steps: 2,
            loss: 1.0,
            lr: 1e-4,
            tokens_per_s: 250.0,
            memory_mib: 1,
        };
        let validation = ProgressEvent::Validation {
            epoch: 1,
            step: 1,
            loss: 1.0,
        };
        core.progress(&a, session, &r(3), step, t0 + s(4.6));
        core.progress(&a, session, &r(3), validation, t0 + s(4.7));
        let rates = super::snapshot(&core).rates;
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].rate, super::Rate::TrainTokensPerS(250.0));

        // Silent past the lease: an expiry, and the last attempt used up fails it (no retry).
        core.tick(t0 + s(10.0));
        assert!(super::snapshot(&core).rates.is_empty(), "no longer running");
        assert_eq!(core.tally.lease_expiries.get(), 1);
        assert_eq!(core.tally.retries.get(), 1);
        let snap = super::snapshot(&core);
        let count = |state: &str| {
            snap.tasks
                .iter()
                .find(|c| c.state == state)
                .map(|c| c.count)
                .unwrap()
        };
        assert_eq!((count("failed"), count("cancelled")), (1, 1));
        assert_eq!(snap.agents, 1);
        assert_eq!(snap.devices[0].free_bytes, 999 << 20);
    }
}
