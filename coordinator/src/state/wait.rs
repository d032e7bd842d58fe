//! Why a ready task is not placed, said out loud: the reason is kept on the task (shown by
//! `status` and the live page), logged every [`LOG_EVERY`] while it holds, and a task starved of
//! free memory — every connected device large enough is idle yet none has the estimate free —
//! fails with that reason once `Settings::unplaceable_timeout` has passed. Waiting for a busy
//! device or for an agent to connect is queueing, not starvation: it never times out.
use super::core::{Core, DeviceSlot, Notice};
use shared::task::{TaskEvent, TaskState};
use std::time::{Duration, Instant};

/// How often a waiting task's reason is logged again.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// What keeps a ready task from being placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCause {
    /// No agent is connected.
    NoAgent,
    /// A device large enough exists but is running another task (or declined this one).
    Busy,
    /// Every device large enough is idle, but none reports the estimate free.
    Memory,
}

/// A ready task's wait, kept while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub cause: WaitCause,
    /// One sentence with the numbers.
    pub reason: String,
    /// Since when the task has been starved of free memory (`cause == Memory` without a break).
    pub starved_since: Option<Instant>,
    pub logged: Option<Instant>,
}

/// The cause and its sentence for a task of `need` MiB on these devices (of `(agent, device)`).
pub fn cause<'a>(
    need: u64,
    devices: impl Iterator<Item = (&'a str, &'a DeviceSlot, bool)>,
) -> (WaitCause, String) {
    let mut any = false;
    let mut busy = 0usize;
    // The large-enough idle device with the most free memory: (free, total, agent, name).
    let mut most: Option<(u64, u64, &str, &str)> = None;
    for (agent, d, declined) in devices {
        any = true;
        if d.info.total_mib < need {
            continue;
        }
        if d.busy.is_some() || declined {
            busy += 1;
        } else if most.is_none_or(|m| d.info.free_mib > m.0) {
            most = Some((d.info.free_mib, d.info.total_mib, agent, &d.info.name));
        }
    }
    if !any {
        return (
            WaitCause::NoAgent,
            format!("waiting for an agent: none is connected (needs {need} MiB)"),
        );
    }
    match most {
        Some((free, total, agent, name)) => (
            WaitCause::Memory,
            format!(
                "needs {need} MiB free; the most any idle device has is {free} MiB of {total} MiB ({name} on agent `{agent}`)"
            ),
        ),
        None => (
            WaitCause::Busy,
            format!(
                "waiting for a device: the {busy} large enough for {need} MiB {} busy",
                if busy == 1 { "is" } else { "are" }
            ),
        ),
    }
}

impl Core {
    /// Records why ready task `ti` of experiment `ei` was not placed; logs it (rate-limited) and
    /// fails it once it has been starved of memory for `unplaceable_timeout`. True when the task
    /// failed.
    pub(super) fn note_wait(&mut self, ei: usize, ti: usize, now: Instant) -> bool {
        let timeout = self.settings.unplaceable_timeout;
        let e = &self.experiments[ei];
        let spec = &e.plan.tasks[ti].spec;
        let t = &e.tasks[ti];
        let devices = self.agents.iter().flat_map(|(aid, a)| {
            a.devices.iter().map(move |d| {
                let declined = t.declined.contains(&(aid.clone(), d.info.uuid.clone()));
                (aid.0.as_str(), d, declined)
            })
        });
        let (cause, reason) = cause(spec.estimate_mib, devices);
        let (exp, task) = (e.plan.id.clone(), spec.id.clone());
        let t = &mut self.experiments[ei].tasks[ti];
        let previous = t.wait.take();
        let changed = previous.as_ref().is_none_or(|w| w.cause != cause);
        let starved_since = match (cause, previous.as_ref().and_then(|w| w.starved_since)) {
            (WaitCause::Memory, Some(since)) => Some(since),
            (WaitCause::Memory, None) => Some(now),
            _ => None,
        };
        let mut logged = previous.and_then(|w| w.logged);
        if changed || logged.is_none_or(|l| now.duration_since(l) >= LOG_EVERY) {
            tracing::warn!(experiment = %exp, task = %task.0, "task waits: {reason}");
            logged = Some(now);
        }
        let waited = starved_since.map(|s| now.duration_since(s));
        if let Some(w) = waited.filter(|w| *w >= timeout) {
            if let Err(err) = t.step(TaskEvent::Unplaceable, now) {
                tracing::error!(experiment = %exp, task = %task.0, error = %err, "refused");
                return false;
            }
            t.detail = format!(
                "no device freed enough memory in {} s: {reason}",
                w.as_secs()
            );
            tracing::error!(experiment = %exp, task = %task.0, "failed: {}", t.detail);
            self.fx.notices.push(Notice::Task(exp, task));
            return true;
        }
        t.wait = Some(Wait {
            cause,
            reason,
            starved_since,
            logged,
        });
        if changed {
            self.fx.notices.push(Notice::Task(exp, task));
        }
        false
    }
}

/// The wait reason `status` and the live page show: only for a task still ready.
pub fn shown(state: &TaskState, wait: Option<&Wait>) -> Option<String> {
    (*state == TaskState::Ready)
        .then(|| wait.map(|w| w.reason.clone()))
        .flatten()
}
