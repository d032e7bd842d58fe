//! Coordinator + agents on loopback with the fake runner: placement, failures, restart, limits.
use coordinator::state::core::Settings;
use proto::pb;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tests::*;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

fn runner(delay_ms: u64, batch: usize, counts: &Arc<RunCounts>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner {
        batch_delay: Duration::from_millis(delay_ms),
        batch_size: batch,
        counts: counts.clone(),
    })
}

fn succeeded() -> i32 {
    pb::ExperimentStateKind::ExperimentStateSucceeded as i32
}

/// Task statuses seen in a watch, in order.
fn task_events(events: &[pb::ExperimentEvent]) -> Vec<pb::TaskStatus> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::experiment_event::Event::Task(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Runs the demo plan on `agents` agents of `mib` each; returns the output files and counts.
async fn run_demo(
    agents: usize,
    eval_n: usize,
) -> (
    std::collections::BTreeMap<std::path::PathBuf, String>,
    Arc<RunCounts>,
) {
    run_demo_on("demo", agents, eval_n).await
}

async fn run_demo_named(
    name: &str,
    eval_n: usize,
) -> (
    std::collections::BTreeMap<std::path::PathBuf, String>,
    Arc<RunCounts>,
) {
    run_demo_on(name, 1, eval_n).await
}

async fn run_demo_on(
    name: &str,
    agents: usize,
    eval_n: usize,
) -> (
    std::collections::BTreeMap<std::path::PathBuf, String>,
    Arc<RunCounts>,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan(name, &out, eval_n, 500),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    let handles: Vec<_> = (0..agents)
        .map(|i| {
            start_agent(
                &url,
                &format!("agent-{i}"),
                1000,
                runner(5, 3, &counts),
                None,
                dir.path(),
            )
        })
        .collect();
    let mut ctl = control(&url, None).await;
    while ctl
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
        .len()
        < agents
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (id, state, events) = submit_and_wait(&url, None, LIMIT).await;
    assert_eq!(state, succeeded(), "events: {events:?}");
    if agents > 1 {
        // Who ran each task (the watch may start after tasks already left `running`).
        let st = ctl
            .status(pb::StatusRequest { experiment_id: id })
            .await
            .unwrap()
            .into_inner();
        let used: std::collections::BTreeSet<String> = st.experiments[0]
            .tasks
            .iter()
            .map(|t| t.agent_id.clone())
            .collect();
        assert!(
            used.len() > 1,
            "work should spread over agents, ran on {used:?}"
        );
    }
    drop(handles);
    stop.cancel();
    (output_files(&out), counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_give_the_same_outputs_as_one() {
    let (one, c1) = run_demo(1, 10).await;
    let (three, c3) = run_demo(3, 10).await;
    let names: Vec<_> = one.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        [
            "predictions/LLM_Llama-8B_untrained.jsonl",
            "predictions/LLM_Mistral-7B_untrained.jsonl",
            "predictions/SLM_Qwen-3B_finetuned.jsonl",
            "results.json",
            "training/SLM_Qwen-3B_finetuned.json"
        ]
    );
    assert_eq!(
        one, three,
        "single-agent and three-agent runs must write identical outputs"
    );
    let results: serde_json::Value =
        serde_json::from_str(&one[std::path::Path::new("results.json")]).unwrap();
    assert_eq!(results["SLM_Qwen-3B_finetuned"]["training"], "finetuned");
    assert_eq!(results["SLM_Qwen-3B_finetuned"]["metrics"]["samples"], 10);
    assert!(results["SLM_Qwen-3B_finetuned"]["training_metrics"]["steps"] == 3);
    for c in [&c1, &c3] {
        assert_eq!(
            c.evaluated_samples.load(Ordering::SeqCst),
            30,
            "3 evals × 10 samples, none twice"
        );
        assert_eq!(c.finetunes.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_loses_its_task_which_finishes_elsewhere_with_the_same_results() {
    let (reference, _) = run_demo(1, 24).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("demo", &out, 24, 500),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    // Slow batches so the kill lands mid-task.
    let victim = start_agent(
        &url,
        "victim",
        1000,
        runner(60, 2, &counts),
        None,
        dir.path(),
    );
    let mut ctl = control(&url, None).await;
    let id = ctl
        .submit(pb::SubmitRequest {
            config_toml: String::new(),
            no_cache: false,
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;
    // Wait until the victim has delivered some predictions of its first task.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let st = ctl
            .status(pb::StatusRequest {
                experiment_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let t = &st.experiments[0].tasks[0];
        if t.predictions >= 4 {
            assert_eq!(t.agent_id, "victim");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no predictions arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill();
    let survivor_counts = Arc::new(RunCounts::default());
    let _survivor = start_agent(
        &url,
        "survivor",
        1000,
        runner(1, 4, &survivor_counts),
        None,
        dir.path(),
    );
    let mut stream = ctl
        .watch(pb::WatchRequest {
            experiment_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let state = tokio::time::timeout(LIMIT, async {
        while let Some(ev) = stream.message().await.unwrap() {
            if let Some(pb::experiment_event::Event::Finished(s)) = ev.event {
                return s;
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(state, succeeded());
    let st = ctl
        .status(pb::StatusRequest {
            experiment_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = &st.experiments[0].tasks[0];
    assert!(
        first.attempt >= 2,
        "the killed task was offered again: {first:?}"
    );
    assert_eq!(first.agent_id, "survivor");
    // The survivor only evaluated what the victim had not delivered: 3 × 24 in all, minus the
    // victim's persisted rows, each counted once.
    let victim_rows = first.predictions as usize; // 24 in the end
    assert_eq!(victim_rows, 24);
    let survivor = survivor_counts.evaluated_samples.load(Ordering::SeqCst);
    assert!(
        (48..72).contains(&survivor),
        "survivor evaluated {survivor} samples"
    );
    assert_eq!(
        output_files(&out),
        reference,
        "outputs equal an uninterrupted run"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_short_of_memory_declines_and_the_task_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("demo", &out, 6, 500),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    // `tight` reports 1000 MiB free in heartbeats but finds only 100 MiB when it re-reads before
    // accepting (another process took the memory).
    let tight = start_agent(&url, "tight", 1000, runner(1, 3, &counts), None, dir.path());
    tight.at_offer_mib.store(100, Ordering::SeqCst);
    let waiter = tokio::spawn({
        let url = url.clone();
        async move { submit_and_wait(&url, None, LIMIT).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        counts.jobs_started.load(Ordering::SeqCst),
        0,
        "the tight agent must not start anything"
    );
    let _roomy = start_agent(&url, "roomy", 1000, runner(1, 3, &counts), None, dir.path());
    let (_, state, events) = waiter.await.unwrap();
    assert_eq!(state, succeeded());
    let tasks = task_events(&events);
    assert!(
        tasks.iter().any(|t| t.state == pb::TaskStateKind::TaskStateOffered as i32 && t.agent_id == "tight"),
        "the tight agent was offered work: {tasks:?}"
    );
    for t in tasks
        .iter()
        .filter(|t| t.state == pb::TaskStateKind::TaskStateRunning as i32)
    {
        assert_eq!(t.agent_id, "roomy", "only the agent with room runs tasks");
    }
    drop(tight);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_device_can_hold_fails_at_once_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("big", &dir.path().join("out"), 4, 81_920),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    let _a = start_agent(
        &url,
        "small",
        24_576,
        runner(1, 3, &counts),
        None,
        dir.path(),
    );
    let t0 = std::time::Instant::now();
    let (id, state, _) = submit_and_wait(&url, None, LIMIT).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "should fail fast, took {:?}",
        t0.elapsed()
    );
    assert_eq!(state, pb::ExperimentStateKind::ExperimentStateFailed as i32);
    let st = control(&url, None)
        .await
        .status(pb::StatusRequest { experiment_id: id })
        .await
        .unwrap()
        .into_inner();
    let first = &st.experiments[0].tasks[0];
    assert_eq!(first.state, pb::TaskStateKind::TaskStateFailed as i32);
    assert_eq!(
        first.detail,
        "task `eval:LLM_Llama-8B` needs 81920 MiB, largest device has 24576 MiB"
    );
    assert_eq!(counts.jobs_started.load(Ordering::SeqCst), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_resumes_without_redoing_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let plan = demo_plan("resume", &out, 8, 500);
    // First life: run until the two LLM evals have succeeded, then stop the coordinator.
    let stop1 = CancellationToken::new();
    let c1 = start_coordinator(&data, plan.clone(), None, stop1.clone()).await;
    let url1 = format!("http://{}", c1.addr);
    let counts1 = Arc::new(RunCounts::default());
    let a1 = start_agent(&url1, "a", 1000, runner(40, 2, &counts1), None, dir.path());
    let mut ctl = control(&url1, None).await;
    let id = ctl
        .submit(pb::SubmitRequest {
            config_toml: String::new(),
            no_cache: false,
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let st = ctl
            .status(pb::StatusRequest {
                experiment_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let done = st.experiments[0]
            .tasks
            .iter()
            .filter(|t| t.state == pb::TaskStateKind::TaskStateSucceeded as i32)
            .count();
        if done >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop1.cancel();
    let _ = c1.join.await;
    a1.kill();
    let before = counts1.evaluated_samples.load(Ordering::SeqCst);
    assert!(before >= 16, "both LLM evals ran in the first life");

    // Second life on the same data dir: the journal brings the experiment back.
    let stop2 = CancellationToken::new();
    let c2 = start_coordinator(&data, plan, None, stop2.clone()).await;
    let url2 = format!("http://{}", c2.addr);
    let counts2 = Arc::new(RunCounts::default());
    let _a2 = start_agent(&url2, "b", 1000, runner(1, 4, &counts2), None, dir.path());
    let (id2, state, _) = submit_and_wait(&url2, None, LIMIT).await;
    assert_eq!(id2, id, "resubmitting the same experiment resumes it");
    assert_eq!(state, succeeded());
    // Only the SLM's finetune and eval (8 samples) remain, minus anything already journalled.
    assert!(
        counts2.evaluated_samples.load(Ordering::SeqCst) <= 8,
        "finished evals were not rerun"
    );
    assert!(
        counts2.finetunes.load(Ordering::SeqCst) <= 1,
        "the finetune runs at most once after the restart"
    );
    let (reference, _) = run_demo_named("resume", 8).await;
    assert_eq!(output_files(&out), reference);
    stop2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_trained_on_one_agent_is_downloaded_by_another_for_its_eval() {
    let (reference, _) = run_demo(1, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut plan = demo_plan("demo", &out, 6, 500);
    // Evals need more memory than the small agent has: they run on the big one, the finetune
    // (which fits both) on the small one, idle from the start.
    for i in [0, 1, 3] {
        plan.tasks[i].spec.estimate_mib = 1500;
    }
    let stop = CancellationToken::new();
    let c = start_coordinator(&dir.path().join("data"), plan, None, stop.clone()).await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    let _small = start_agent(&url, "small", 1000, runner(1, 3, &counts), None, dir.path());
    let _big = start_agent(&url, "big", 2000, runner(1, 3, &counts), None, dir.path());
    let mut ctl = control(&url, None).await;
    while ctl
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
        .len()
        < 2
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (id, state, _) = submit_and_wait(&url, None, LIMIT).await;
    assert_eq!(state, succeeded());
    let st = ctl
        .status(pb::StatusRequest { experiment_id: id })
        .await
        .unwrap()
        .into_inner();
    let agent_of = |task: &str| {
        st.experiments[0]
            .tasks
            .iter()
            .find(|t| t.task_id == task)
            .unwrap()
            .agent_id
            .clone()
    };
    assert_eq!(
        agent_of("finetune:SLM_Qwen-3B"),
        "small",
        "the finetune goes to the idle small agent"
    );
    assert_eq!(agent_of("eval:SLM_Qwen-3B"), "big");
    let downloaded = dir
        .path()
        .join("big/downloads/demo/finetune_SLM_Qwen-3B-a1/adapter_model.safetensors");
    assert!(downloaded.is_file(), "the big agent downloaded the adapter");
    assert_eq!(
        output_files(&out),
        reference,
        "the transferred adapter gives the same predictions"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_agent_hands_its_task_back_without_using_up_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    // One attempt only: a lost task would fail; a handed-back one must not.
    let settings = Settings {
        max_attempts: 1,
        ..fast_settings()
    };
    let c = start_coordinator_with(
        &dir.path().join("data"),
        demo_plan("demo", &out, 12, 500),
        None,
        settings,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let counts = Arc::new(RunCounts::default());
    let leaving = start_agent(
        &url,
        "leaving",
        1000,
        runner(60, 2, &counts),
        None,
        dir.path(),
    );
    let mut ctl = control(&url, None).await;
    let id = ctl
        .submit(pb::SubmitRequest {
            config_toml: String::new(),
            no_cache: false,
        })
        .await
        .unwrap()
        .into_inner()
        .experiment_id;
    loop {
        let st = ctl
            .status(pb::StatusRequest {
                experiment_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if st.experiments[0].tasks[0].predictions >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leaving.stop();
    let _stayer = start_agent(
        &url,
        "stayer",
        1000,
        runner(1, 4, &counts),
        None,
        dir.path(),
    );
    let mut stream = ctl
        .watch(pb::WatchRequest {
            experiment_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let state = tokio::time::timeout(LIMIT, async {
        while let Some(ev) = stream.message().await.unwrap() {
            if let Some(pb::experiment_event::Event::Finished(s)) = ev.event {
                return s;
            }
        }
        0
    })
    .await
    .unwrap();
    let st = ctl
        .status(pb::StatusRequest { experiment_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state, succeeded(), "{:?}", st.experiments[0].tasks);
    assert_eq!(st.experiments[0].tasks[0].agent_id, "stayer");
    assert!(st.experiments[0].tasks[0].attempt >= 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reconnects_to_a_restarted_coordinator_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = demo_plan("again", &dir.path().join("out"), 4, 100);
    let stop1 = CancellationToken::new();
    let c1 = start_coordinator(&data, plan.clone(), None, stop1.clone()).await;
    let addr = c1.addr;
    let url = format!("http://{addr}");
    let counts = Arc::new(RunCounts::default());
    let _agent = start_agent(
        &url,
        "faithful",
        1000,
        runner(1, 2, &counts),
        None,
        dir.path(),
    );
    let wait_for_agent = |url: String| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                let st = pb::control_service_client::ControlServiceClient::new(ch)
                    .status(pb::StatusRequest::default())
                    .await;
                if st.is_ok_and(|s| {
                    s.into_inner()
                        .agents
                        .iter()
                        .any(|a| a.agent_id == "faithful")
                }) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not (re)register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for_agent(url.clone()).await;
    stop1.cancel();
    let _ = c1.join.await;
    // Same address, new process state: the agent's backoff loop finds it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut opts = coordinator::server::ServeOptions::new(data, Arc::new(StaticPlanner(plan)));
    opts.settings = fast_settings();
    let stop2 = CancellationToken::new();
    let _c2 = coordinator::server::start(listener, opts, stop2.clone())
        .await
        .unwrap();
    wait_for_agent(url.clone()).await;
    let (_, state, _) = submit_and_wait(&url, None, LIMIT).await;
    assert_eq!(state, succeeded());
    stop2.cancel();
}
