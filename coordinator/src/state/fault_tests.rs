//! The scheduler under faults: messages before an accept, failures a retry would repeat.
use super::core::*;
use super::tests::{offers, plan, reg, settings};
use crate::experiment::ExperimentId;
use shared::task::*;
use std::time::{Duration, Instant};

fn finetune_ref(attempt: u32) -> TaskRef {
    TaskRef {
        experiment: ExperimentId("e".into()),
        task: TaskId("finetune:SLM_X".into()),
        attempt,
    }
}

/// A job that fails within milliseconds may report before its accept is processed: the result
/// counts (the offer is taken as accepted), the late accept changes nothing, and the real error —
/// not "lease expired" — is what the task ends with.
#[test]
fn a_result_before_the_accept_counts_and_keeps_the_real_error() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    core.take_effects();
    let why = "m.bin: a model file must be a `.gguf`; an HF model is a folder";
    for attempt in 1..=settings().max_attempts {
        let r = finetune_ref(attempt);
        let at = t0 + Duration::from_millis(u64::from(attempt) * 10);
        core.result(&a, s, &r, Outcome::Failed(why.into()), at)
            .unwrap();
        core.offer_reply(&a, s, &r, OfferAnswer::Accept, at)
            .unwrap();
    }
    let t = &core.experiments[0].tasks[0];
    assert_eq!(t.state, TaskState::Failed);
    assert!(t.detail.contains(why), "{}", t.detail);
    assert!(!t.detail.contains("lease"), "{}", t.detail);
    assert_eq!(core.experiments[0].state, ExperimentState::Failed);
    // Nothing is left for a lease to expire on.
    core.take_effects();
    core.tick(t0 + Duration::from_secs(60));
    let fx = core.take_effects();
    assert!(fx.to_agents.is_empty(), "{:?}", fx.to_agents);
}

/// Progress before the accept makes the task running; the accept that follows is absorbed once,
/// and a second accept is still an illegal transition.
#[test]
fn progress_before_the_accept_starts_the_task_and_a_second_accept_is_refused() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    let r = finetune_ref(1);
    let stage = ProgressEvent::Stage {
        name: "loading".into(),
    };
    core.progress(&a, s, &r, stage, t0);
    assert_eq!(
        core.experiments[0].tasks[0].state,
        TaskState::Running { agent: a.clone() }
    );
    core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    assert!(matches!(
        core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0),
        Err(CoreError::IllegalTransition { .. })
    ));
}

/// A failure the agent marks permanent (missing model file, unsupported architecture) fails the
/// task on its first attempt, with the message, and is not offered again.
#[test]
fn a_permanent_failure_is_not_retried() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    core.take_effects();
    let r = finetune_ref(1);
    core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    let why = "unsupported model: architecture `GPT2LMHeadModel`";
    core.result(&a, s, &r, Outcome::Rejected(why.into()), t0)
        .unwrap();
    let fx = core.take_effects();
    assert!(offers(&fx).is_empty(), "offered again: {:?}", offers(&fx));
    let e = &core.experiments[0];
    assert_eq!(e.tasks[0].state, TaskState::Failed);
    assert_eq!(e.tasks[0].attempt, 1);
    assert!(e.tasks[0].detail.contains(why), "{}", e.tasks[0].detail);
    assert!(
        e.tasks[0].detail.contains("not retried"),
        "{}",
        e.tasks[0].detail
    );
    assert_eq!(e.tasks[1].state, TaskState::Cancelled);
}
