//! A task's lifecycle in the coordinator, changed only through [`Phase::transition`].
use serde::{Deserialize, Serialize};

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the tasks it depends on.
    Pending,
    /// Can be placed.
    Ready,
    /// Offered to an agent's device; waiting for accept/decline.
    Offered,
    /// Accepted and running under a lease.
    Running,
    Succeeded,
    Failed { reason: String },
    Cancelled { reason: String },
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseEvent {
    DependenciesMet,
    Offer,
    Accept,
    Decline,
    /// The agent went silent, disconnected or the task failed with retries left: back to the queue.
    Requeue,
    Succeed,
    Fail(String),
    Cancel(String),
}

/// A transition the lifecycle does not allow (a bug or a stale message; never applied).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("task cannot go from {from:?} on {event:?}")]
pub struct IllegalTransition {
    pub from: Phase,
    pub event: PhaseEvent,
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed { .. } | Phase::Cancelled { .. })
    }

    /// The one place a task's phase changes.
    pub fn transition(&self, event: PhaseEvent) -> Result<Phase, IllegalTransition> {
        use Phase as P;
        use PhaseEvent as E;
        let next = match (self, &event) {
            (P::Pending, E::DependenciesMet) => P::Ready,
            (P::Ready, E::Offer) => P::Offered,
            (P::Offered, E::Accept) => P::Running,
            (P::Offered, E::Decline) => P::Ready,
            (P::Offered | P::Running, E::Requeue) => P::Ready,
            (P::Running, E::Succeed) => P::Succeeded,
            // A task can fail from any live phase: impossible placement (Ready), retries exhausted.
            (P::Pending | P::Ready | P::Offered | P::Running, E::Fail(r)) => P::Failed { reason: r.clone() },
            (P::Pending | P::Ready | P::Offered | P::Running, E::Cancel(r)) => P::Cancelled { reason: r.clone() },
            _ => return Err(IllegalTransition { from: self.clone(), event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_and_illegal_transitions() {
        use Phase as P;
        use PhaseEvent as E;
        let legal = [
            (P::Pending, E::DependenciesMet, P::Ready),
            (P::Ready, E::Offer, P::Offered),
            (P::Offered, E::Accept, P::Running),
            (P::Offered, E::Decline, P::Ready),
            (P::Running, E::Requeue, P::Ready),
            (P::Running, E::Succeed, P::Succeeded),
            (P::Ready, E::Fail("x".into()), P::Failed { reason: "x".into() }),
            (P::Pending, E::Cancel("y".into()), P::Cancelled { reason: "y".into() }),
        ];
        for (from, ev, to) in legal {
            assert_eq!(from.transition(ev).unwrap(), to);
        }
        let illegal = [
            (P::Pending, E::Offer),
            (P::Ready, E::Succeed),
            (P::Ready, E::Accept),
            (P::Succeeded, E::Requeue),
            (P::Succeeded, E::Fail("late".into())),
            (P::Failed { reason: "a".into() }, E::DependenciesMet),
            (P::Offered, E::Succeed),
        ];
        for (from, ev) in illegal {
            assert!(from.transition(ev).is_err(), "{from:?}");
        }
    }
}
