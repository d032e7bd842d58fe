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

fn detail(core: &Core, task: usize) -> String {
    super::status::status(core, None).unwrap().experiments[0].tasks[task]
        .detail
        .clone()
}

/// A device large enough by total but never with enough free: the task says why (status), and
/// fails with that reason once `unplaceable_timeout` (30 s here) has passed.
#[test]
fn a_task_starved_of_free_memory_says_why_and_fails_after_the_timeout() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let mut r = reg("a", 1000);
    r.devices[0].free_mib = 60;
    let s = core.register(r, t0).unwrap();
    core.submit(plan(), t0);
    let fx = core.take_effects();
    assert!(offers(&fx).is_empty());
    let why = detail(&core, 0);
    assert!(
        why.contains("needs 100 MiB free") && why.contains("60 MiB of 1000 MiB"),
        "{why}"
    );
    // Heartbeats keep it alive but free no memory; 29 s in it still waits.
    for secs in [10, 20, 29] {
        let at = t0 + Duration::from_secs(secs);
        core.heartbeat(&a, s, &[("dev-a".into(), 61)], &[], at);
        core.tick(at);
    }
    assert_eq!(core.experiments[0].tasks[0].state, TaskState::Ready);
    core.tick(t0 + Duration::from_secs(31));
    let e = &core.experiments[0];
    assert_eq!(e.tasks[0].state, TaskState::Failed);
    let d = &e.tasks[0].detail;
    assert!(
        d.contains("no device freed enough memory in 31 s") && d.contains("61 MiB of 1000 MiB"),
        "{d}"
    );
    core.tick(t0 + Duration::from_secs(32));
    assert_eq!(core.experiments[0].tasks[1].state, TaskState::Cancelled);
    assert_eq!(core.experiments[0].state, ExperimentState::Failed);
}

/// Waiting for a device busy with another task, or for any agent at all, is queueing: it is
/// said, and never times out.
#[test]
fn waiting_for_a_busy_device_or_an_agent_never_times_out() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let mut p = plan();
    p.tasks[1].spec.depends_on.clear();
    core.submit(p, t0);
    assert!(
        detail(&core, 0).contains("none is connected"),
        "{}",
        detail(&core, 0)
    );
    core.tick(t0 + Duration::from_secs(120));
    assert_eq!(core.experiments[0].tasks[0].state, TaskState::Ready);

    let a = AgentId("a".into());
    let s = core
        .register(reg("a", 1000), t0 + Duration::from_secs(120))
        .unwrap();
    let r = finetune_ref(1);
    core.offer_reply(
        &a,
        s,
        &r,
        OfferAnswer::Accept,
        t0 + Duration::from_secs(120),
    )
    .unwrap();
    let mut at = t0 + Duration::from_secs(120);
    for _ in 0..100 {
        at += Duration::from_millis(500);
        core.heartbeat(&a, s, &[], std::slice::from_ref(&r), at);
        core.tick(at);
    }
    let e = &core.experiments[0];
    assert_eq!(e.tasks[0].state, TaskState::Running { agent: a });
    assert_eq!(e.tasks[1].state, TaskState::Ready);
    let why = detail(&core, 1);
    assert!(why.contains("is busy"), "{why}");
}

/// A finished finetune shows no stage: its last one ("saving adapter") is over.
#[test]
fn a_finished_task_shows_no_stage() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    let r = finetune_ref(1);
    core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    let stage = ProgressEvent::Stage {
        name: "saving adapter".into(),
    };
    core.progress(&a, s, &r, stage, t0);
    assert_eq!(detail(&core, 0), "saving adapter");
    let tr = crate::outcome::TrainingOutcome {
        adapter_artifact: "e/ft-a1".into(),
        adapter_hash: "h".into(),
        steps: 1,
        epochs_run: 1,
        final_train_loss: 1.0,
        best_validation_loss: None,
        stopped_early: false,
        train_s: 1.0,
        load_s: 0.0,
        tokens_per_s: 1.0,
        peak_memory_mib: 1,
        device_name: "cpu".into(),
        curve: vec![],
        resumed: None,
    };
    let done = Outcome::Done(crate::outcome::TaskOutput::Finetuned(tr));
    core.result(&a, s, &r, done, t0).unwrap();
    assert_eq!(core.experiments[0].tasks[0].state, TaskState::Succeeded);
    assert_eq!(detail(&core, 0), "");
}

/// A second agent registering with the id of one heard from within a lease is refused with an
/// error naming the id and the first one's host; once the first has been silent for a lease, the
/// registration is its reconnect and takes over.
#[test]
fn a_second_agent_with_a_live_agents_id_is_refused() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let first = core.register(reg("a", 1000), t0).unwrap();
    let mut twin = reg("a", 1000);
    twin.host = "other-host".into();
    let err = core
        .register(twin.clone(), t0 + Duration::from_millis(500))
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::DuplicateAgent { agent, host, .. } if agent == "a" && host == "h"),
        "{err}"
    );
    assert!(err.to_string().contains("already connected"), "{err}");
    assert_eq!(core.agents[&a].session, first, "the first keeps its place");
    // Heartbeats keep the first alive...
    core.heartbeat(&a, first, &[], &[], t0 + Duration::from_millis(900));
    assert!(
        core.register(twin.clone(), t0 + Duration::from_millis(1800))
            .is_err()
    );
    // ...silence for a lease (1 s here) means it is gone.
    let second = core
        .register(twin, t0 + Duration::from_millis(2000))
        .unwrap();
    assert_ne!(second, first);
    assert_eq!(core.agents[&a].reg.host, "other-host");
}
