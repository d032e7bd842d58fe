//! The scheduler's decisions without a network: leases, retries, stale messages, preferences.
use super::core::*;
use crate::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use shared::config::{GenerationConfig, LoraConfig, PromptConfig, TrainingConfig};
use shared::task::*;
use std::time::{Duration, Instant};

pub(super) fn spec(id: &str, kind: TaskKind, deps: &[&str], mib: u64) -> TaskSpec {
    TaskSpec {
        id: TaskId(id.into()),
        kind,
        model: ModelSpec {
            key: "SLM_X".into(),
            name: "x".into(),
            revision: None,
            label: "X".into(),
            size: "3B".into(),
            role: ModelRole::Slm,
            quantization: Quantization::None,
        },
        depends_on: deps.iter().map(|d| TaskId(d.to_string())).collect(),
        estimate_mib: mib,
    }
}

pub(super) fn plan() -> ExperimentPlan {
    let eval = |s| PlannedTask {
        spec: s,
        payload: TaskPayload::Evaluate(EvalPayload {
            samples: vec![],
            prompt: PromptConfig::default(),
            generation: GenerationConfig::default(),
            adapter: None,
        }),
    };
    let ft = PlannedTask {
        spec: spec("finetune:SLM_X", TaskKind::Finetune, &[], 100),
        payload: TaskPayload::Finetune(FinetunePayload {
            train: vec![],
            validation: vec![],
            prompt: PromptConfig::default(),
            lora: LoraConfig::default(),
            training: TrainingConfig::default(),
        }),
    };
    ExperimentPlan {
        id: ExperimentId("e".into()),
        name: "e".into(),
        config_toml: String::new(),
        output_dir: "/nonexistent".into(),
        split_hash: String::new(),
        train_code_counts: Default::default(),
        result_keys: Default::default(),
        tasks: vec![
            ft,
            eval(spec(
                "eval:SLM_X",
                TaskKind::Evaluate,
                &["finetune:SLM_X"],
                100,
            )),
        ],
        dataset: None,
        cache: None,
    }
}

pub(super) fn reg(id: &str, mib: u64) -> Registration {
    Registration {
        agent: AgentId(id.into()),
        host: "h".into(),
        version: "0".into(),
        devices: vec![DeviceInfo {
            kind: DeviceKind::Cpu,
            index: 0,
            uuid: format!("dev-{id}"),
            name: "cpu".into(),
            total_mib: mib,
            free_mib: mib,
            driver: String::new(),
        }],
    }
}

pub(super) fn offers(fx: &Effects) -> Vec<(String, String, u32)> {
    fx.to_agents
        .iter()
        .filter_map(|(a, _, m)| match m {
            ToAgent::Offer { task, .. } => Some((a.0.clone(), task.task.0.clone(), task.attempt)),
            _ => None,
        })
        .collect()
}

pub(super) fn settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(100),
        lease: Duration::from_secs(1),
        max_attempts: 2,
        unplaceable_timeout: Duration::from_secs(30),
    }
}

#[test]
fn a_silent_agent_loses_its_task_after_the_lease_and_retries_are_bounded() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    let fx = core.take_effects();
    assert_eq!(
        offers(&fx),
        [("a".to_string(), "finetune:SLM_X".to_string(), 1)]
    );
    let r = TaskRef {
        experiment: ExperimentId("e".into()),
        task: TaskId("finetune:SLM_X".into()),
        attempt: 1,
    };
    core.offer_reply(&AgentId("a".into()), s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    // Heartbeats renew the lease...
    core.heartbeat(
        &AgentId("a".into()),
        s,
        &[],
        std::slice::from_ref(&r),
        t0 + Duration::from_millis(900),
    );
    core.tick(t0 + Duration::from_millis(1500));
    assert!(matches!(
        core.experiments[0].tasks[0].state,
        TaskState::Running { .. }
    ));
    // ...silence does not: re-queued, the agent is told to stop, and it is offered again.
    core.take_effects();
    core.tick(t0 + Duration::from_millis(2000));
    let fx = core.take_effects();
    assert!(
        fx.to_agents
            .iter()
            .any(|(_, _, m)| matches!(m, ToAgent::Cancel { .. }))
    );
    assert_eq!(
        offers(&fx),
        [("a".to_string(), "finetune:SLM_X".to_string(), 2)]
    );
    // A late result of attempt 1 is ignored.
    let out = Outcome::Failed("late".into());
    core.result(
        &AgentId("a".into()),
        s,
        &r,
        out,
        t0 + Duration::from_millis(2001),
    )
    .unwrap();
    assert_eq!(
        core.experiments[0].tasks[0].state,
        TaskState::Offered {
            agent: AgentId("a".into())
        }
    );
    // The second loss uses up the attempts: the task fails, its eval is cancelled.
    let r2 = TaskRef { attempt: 2, ..r };
    core.offer_reply(
        &AgentId("a".into()),
        s,
        &r2,
        OfferAnswer::Accept,
        t0 + Duration::from_millis(2002),
    )
    .unwrap();
    core.result(
        &AgentId("a".into()),
        s,
        &r2,
        Outcome::Failed("out of memory".into()),
        t0 + Duration::from_millis(2003),
    )
    .unwrap();
    let e = &core.experiments[0];
    assert_eq!(e.tasks[0].state, TaskState::Failed);
    assert!(
        e.tasks[0].detail.contains("out of memory"),
        "{}",
        e.tasks[0].detail
    );
    assert_eq!(e.tasks[1].state, TaskState::Cancelled);
    assert_eq!(e.state, ExperimentState::Failed);
}

#[test]
fn an_eval_prefers_the_agent_that_trained_its_adapter() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    // `b` fits more tightly (best fit would pick it), but `a` trains the adapter.
    let sa = core.register(reg("a", 4000), t0).unwrap();
    core.submit(plan(), t0);
    core.take_effects();
    let _sb = core.register(reg("b", 200), t0).unwrap();
    let r = TaskRef {
        experiment: ExperimentId("e".into()),
        task: TaskId("finetune:SLM_X".into()),
        attempt: 1,
    };
    let a = AgentId("a".into());
    core.offer_reply(&a, sa, &r, OfferAnswer::Accept, t0)
        .unwrap();
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
    core.take_effects();
    core.result(
        &a,
        sa,
        &r,
        Outcome::Done(crate::outcome::TaskOutput::Finetuned(tr)),
        t0,
    )
    .unwrap();
    let fx = core.take_effects();
    assert_eq!(
        offers(&fx),
        [("a".to_string(), "eval:SLM_X".to_string(), 1)]
    );
    let payload = fx.to_agents.iter().find_map(|(_, _, m)| match m {
        ToAgent::Offer { payload, .. } => Some(payload.clone()),
        _ => None,
    });
    match payload.as_deref() {
        Some(TaskPayload::Evaluate(p)) => assert_eq!(p.adapter.as_deref(), Some("e/ft-a1")),
        other => panic!("expected an eval payload, got {other:?}"),
    }
}

#[test]
fn an_eval_reported_done_with_rows_missing_is_retried_for_just_those_rows() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let mut p = plan();
    let sample = |id: &str| shared::dataset::Record {
        id: id.into(),
        dialogue: "d".into(),
        note: String::new(),
        code: "J069".into(),
        description: String::new(),
    };
    // Only the eval (no dependency), with two samples.
    let mut eval = p.tasks.pop().unwrap();
    eval.spec.depends_on.clear();
    if let TaskPayload::Evaluate(ev) = &mut eval.payload {
        ev.samples = vec![sample("s1"), sample("s2")];
    }
    p.tasks = vec![eval];
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(p, t0);
    core.take_effects();
    let r = TaskRef {
        experiment: ExperimentId("e".into()),
        task: TaskId("eval:SLM_X".into()),
        attempt: 1,
    };
    core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    let row = PredictionRow {
        sample_id: "s1".into(),
        reference: "J069".into(),
        raw_output: "J06.9".into(),
        extracted: Some("J069".into()),
        correct: true,
        latency_ms: 1.0,
        generated_tokens: 2,
        prompt_tokens: 5,
    };
    // A duplicate and an unknown sample are not counted.
    let stranger = PredictionRow {
        sample_id: "nope".into(),
        ..row.clone()
    };
    core.predictions(&a, s, &r, vec![row.clone(), row, stranger], t0);
    assert_eq!(core.experiments[0].tasks[0].predictions.len(), 1);
    core.take_effects();
    let perf = crate::outcome::EvalPerformance {
        load_s: 0.0,
        eval_s: 1.0,
        samples_per_s: 1.0,
        tokens_per_s: 1.0,
        peak_memory_mib: 1,
        device_name: "cpu".into(),
    };
    core.result(
        &a,
        s,
        &r,
        Outcome::Done(crate::outcome::TaskOutput::Evaluated(perf)),
        t0,
    )
    .unwrap();
    let fx = core.take_effects();
    assert_ne!(core.experiments[0].tasks[0].state, TaskState::Succeeded);
    let retry = fx.to_agents.iter().find_map(|(_, _, m)| match m {
        ToAgent::Offer { task, payload, .. } => Some((task.attempt, payload.clone())),
        _ => None,
    });
    match retry {
        Some((2, p)) => match *p {
            TaskPayload::Evaluate(ev) => assert_eq!(
                ev.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
                ["s2"]
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("expected a second offer, got {other:?}"),
    }
}

#[test]
fn an_illegal_transition_is_refused_and_changes_nothing() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let a = AgentId("a".into());
    let s = core.register(reg("a", 1000), t0).unwrap();
    core.submit(plan(), t0);
    let r = TaskRef {
        experiment: ExperimentId("e".into()),
        task: TaskId("finetune:SLM_X".into()),
        attempt: 1,
    };
    core.offer_reply(&a, s, &r, OfferAnswer::Accept, t0)
        .unwrap();
    core.take_effects();
    let snapshot = |core: &Core| {
        let t = &core.experiments[0].tasks[0];
        let d = &core.agents[&a].devices[0];
        (
            t.state.clone(),
            t.placed.clone(),
            t.deadline,
            t.declined.clone(),
            t.ran_on.clone(),
            t.losses,
            d.busy.clone(),
            d.info.free_mib,
        )
    };
    let before = snapshot(&core);
    assert_eq!(before.0, TaskState::Running { agent: a.clone() });

    // The agent declines an offer it already accepted (Running + Decline): refused.
    let later = t0 + Duration::from_millis(500);
    let err = core
        .offer_reply(
            &a,
            s,
            &r,
            OfferAnswer::Decline {
                reason: "changed its mind".into(),
                free_mib: 1,
            },
            later,
        )
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::IllegalTransition { task, .. } if task.0 == "finetune:SLM_X"),
        "{err}"
    );
    assert!(
        err.to_string().contains("illegal in state Running"),
        "{err}"
    );
    // A second accept (Running + Accept) is refused too: no lease renewal, no re-placement.
    assert!(matches!(
        core.offer_reply(&a, s, &r, OfferAnswer::Accept, later),
        Err(CoreError::IllegalTransition { .. })
    ));
    assert_eq!(
        snapshot(&core),
        before,
        "state, placement, lease and device unchanged"
    );
    let fx = core.take_effects();
    assert!(
        fx.io.is_empty() && fx.notices.is_empty() && fx.to_agents.is_empty(),
        "no effects: {fx:?}"
    );
}

/// An eval-only plan with no samples: done as soon as its agent reports success.
pub(super) fn one_eval_plan(output_dir: &std::path::Path) -> ExperimentPlan {
    let mut p = plan();
    let mut eval = p.tasks.pop().unwrap();
    eval.spec.depends_on.clear();
    p.tasks = vec![eval];
    p.output_dir = output_dir.to_path_buf();
    p
}

#[tokio::test]
async fn the_owner_serves_commands_while_outputs_are_written_and_finishes_after() {
    use super::status::WatchEvent;
    use super::{AgentEvent, Command};
    use std::sync::{Arc, Mutex, mpsc as std_mpsc};
    use tokio::time::timeout;
    let dir = tempfile::tempdir().unwrap();
    // The writer tells when it starts and then holds until released.
    let (started_tx, started_rx) = std_mpsc::channel::<()>();
    let (release_tx, release_rx) = std_mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    let write: crate::outputs::writer::WriteFn = Arc::new(move |_input| {
        started_tx.lock().unwrap().send(()).unwrap();
        release_rx.lock().unwrap().recv().unwrap();
        Ok(crate::outputs::Written { report: true })
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let (state, owner) = super::spawn_with_writer(
        Core::new(settings()),
        crate::journal::Journal::new(dir.path()),
        write,
        stop.clone(),
    );
    let wait = Duration::from_secs(10);
    let a = AgentId("a".into());
    let (tx, mut to_agent) = tokio::sync::mpsc::channel(16);
    let session = state
        .ask(|reply| Command::Register {
            reg: reg("a", 1000),
            tx,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    let id = state
        .submit(one_eval_plan(&dir.path().join("out")))
        .await
        .unwrap();
    let (_, mut events) = state
        .ask(|reply| Command::Watch {
            experiment: id.clone(),
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    let from_agent = |event| Command::FromAgent {
        agent: a.clone(),
        session,
        event,
    };
    let mut offered = None;
    while offered.is_none() {
        match timeout(wait, to_agent.recv()).await.unwrap().unwrap() {
            ToAgent::Offer { task, .. } => offered = Some(task),
            ToAgent::Registered { .. } | ToAgent::Cancel { .. } => {}
        }
    }
    let task = offered.unwrap();
    state
        .send(from_agent(AgentEvent::OfferReply {
            task: task.clone(),
            answer: OfferAnswer::Accept,
        }))
        .await
        .unwrap();
    let perf = crate::outcome::EvalPerformance {
        load_s: 0.0,
        eval_s: 1.0,
        samples_per_s: 1.0,
        tokens_per_s: 1.0,
        peak_memory_mib: 1,
        device_name: "cpu".into(),
    };
    state
        .send(from_agent(AgentEvent::Result {
            task,
            outcome: Outcome::Done(crate::outcome::TaskOutput::Evaluated(perf)),
        }))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the writer started");

    // The writer holds: heartbeats and status are still served, and nothing says finished yet.
    state
        .send(from_agent(AgentEvent::Heartbeat {
            free: vec![("dev-a".into(), 777)],
            running: vec![],
        }))
        .await
        .unwrap();
    let status = timeout(
        wait,
        state.ask(|reply| Command::Status {
            experiment: None,
            reply,
        }),
    )
    .await
    .expect("status answered while outputs are written")
    .unwrap()
    .unwrap();
    assert_eq!(
        status.agents[0].devices[0].free_mib, 777,
        "heartbeat applied"
    );
    assert_eq!(status.experiments[0].state, ExperimentState::Running);
    assert_eq!(status.experiments[0].tasks[0].state, TaskState::Succeeded);
    let (_, finished) = state
        .ask(|reply| Command::Results {
            experiment: id.clone(),
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!finished, "not finished before the outputs are written");
    while let Ok(ev) = events.try_recv() {
        assert!(!ev.is_finished(), "`finished` before the outputs: {ev:?}");
    }

    release_tx.send(()).unwrap();
    let last = loop {
        let ev = timeout(wait, events.recv()).await.unwrap().unwrap();
        if ev.is_finished() {
            break ev.event;
        }
    };
    assert_eq!(last, WatchEvent::Finished(ExperimentState::Succeeded));
    let (_, finished) = state
        .ask(|reply| Command::Results {
            experiment: id,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(finished);
    stop.cancel();
    owner.await.unwrap();
}
