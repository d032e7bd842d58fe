//! Agents that misbehave on the wire, played by a raw gRPC client: a result sent before its
//! accept, a failure marked permanent, a second agent registering with a live agent's id.
use agent::rpc::runner::{RunEvent, RunJob, TaskRunner};
use proto::pb;
use proto::pb::agent_message::Msg;
use proto::pb::agent_service_client::AgentServiceClient;
use proto::pb::coordinator_message::Msg as In;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tests::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

/// One session of a hand-driven agent.
struct RawAgent {
    out: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

fn msg(m: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// Registers `id` with one CPU device of 1000 MiB; the coordinator's refusal is the error.
async fn register(url: &str, id: &str) -> Result<RawAgent, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = AgentServiceClient::new(ch);
    let (out, rx) = mpsc::channel(64);
    let device = pb::Device {
        kind: pb::DeviceKind::Cpu as i32,
        index: 0,
        uuid: format!("dev-{id}"),
        name: "raw".into(),
        total_mib: 1000,
        free_mib: 1000,
        driver: String::new(),
    };
    out.send(msg(Msg::Register(pb::Register {
        agent_id: id.into(),
        host: "raw".into(),
        version: "0".into(),
        devices: vec![device],
    })))
    .await
    .expect("queue register");
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|m| m.msg) {
        Some(In::Registered(_)) => Ok(RawAgent { out, inbound }),
        other => panic!("expected `registered`, got {other:?}"),
    }
}

/// The demo plan cut to its first task, one LLM evaluation.
fn one_task_plan(id: &str, out: &Path) -> coordinator::experiment::ExperimentPlan {
    let mut plan = demo_plan(id, out, 4, 100);
    plan.tasks.truncate(1);
    let first = plan.tasks[0].spec.id.clone();
    plan.result_keys.retain(|t, _| *t == first);
    plan
}

/// Answers every offer with a failed result *then* its accept (the order a job failing within
/// milliseconds produced), counting the offers.
fn fail_before_accepting(mut agent: RawAgent, why: &'static str, permanent: bool) -> Offers {
    let offers = Offers::default();
    let count = offers.clone();
    tokio::spawn(async move {
        while let Ok(Some(m)) = agent.inbound.message().await {
            let Some(In::Offer(o)) = m.msg else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let r = pb::TaskRef {
                experiment_id: o.experiment_id.clone(),
                task_id: o.task.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
                attempt: o.attempt,
            };
            let result = pb::TaskResult {
                task: Some(r.clone()),
                outcome: Some(pb::task_result::Outcome::Failed(why.into())),
                permanent,
            };
            let accept = pb::OfferReply {
                task: Some(r),
                accept: true,
                reason: String::new(),
                free_mib: 1000,
            };
            let sent = agent.out.send(msg(Msg::Result(result))).await.is_ok()
                && agent.out.send(msg(Msg::OfferReply(accept))).await.is_ok();
            if !sent {
                break;
            }
        }
    });
    offers
}

type Offers = Arc<AtomicUsize>;

/// The last status the watch reported for each task.
fn final_tasks(events: &[pb::ExperimentEvent]) -> BTreeMap<String, pb::TaskStatus> {
    let mut out = BTreeMap::new();
    for e in events {
        if let Some(pb::experiment_event::Event::Task(t)) = &e.event {
            out.insert(t.task_id.clone(), t.clone());
        }
    }
    out
}

/// Runs the one-task plan against a raw agent that reports failure before accepting.
async fn run_failing(why: &'static str, permanent: bool) -> (pb::TaskStatus, usize) {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let plan = one_task_plan("race", &dir.path().join("out"));
    let c = start_coordinator(&dir.path().join("data"), plan, None, stop.clone()).await;
    let url = format!("http://{}", c.addr);
    let agent = register(&url, "raw-1").await.expect("registered");
    let offers = fail_before_accepting(agent, why, permanent);
    let (_, state, events) = submit_and_wait(&url, None, LIMIT).await;
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateFailed as i32,
        "{events:?}"
    );
    let task = final_tasks(&events)
        .remove("eval:LLM_Llama-8B")
        .expect("the task's status");
    stop.cancel();
    (task, offers.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_before_its_accept_keeps_the_real_error_instead_of_lease_expired() {
    let why = "fake/LLM_Llama-8B: missing from the hub cache and HF_HUB_OFFLINE=1";
    let (task, offers) = run_failing(why, false).await;
    assert_eq!(task.state, pb::TaskStateKind::TaskStateFailed as i32);
    assert!(task.detail.contains(why), "{}", task.detail);
    assert!(!task.detail.contains("lease"), "{}", task.detail);
    // Retried up to the attempts (fast_settings: 3), each attempt's result counted once.
    assert_eq!(offers, 3, "{}", task.detail);
    assert!(task.detail.starts_with("failed 3 times"), "{}", task.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_fails_the_task_at_once_with_its_message() {
    let why = "m.bin: a model file must be a `.gguf`; an HF model is a folder";
    let (task, offers) = run_failing(why, true).await;
    assert_eq!(task.state, pb::TaskStateKind::TaskStateFailed as i32);
    assert!(task.detail.contains(why), "{}", task.detail);
    assert!(task.detail.contains("not retried"), "{}", task.detail);
    assert_eq!((offers, task.attempt), (1, 1), "{}", task.detail);
}

/// The fake engine, except that every finetune fails for good.
struct FinetunesFail(FakeRunner);

impl TaskRunner for FinetunesFail {
    fn run(&self, job: RunJob, cancel: CancellationToken) -> mpsc::Receiver<RunEvent> {
        if let RunJob::Finetune { .. } = job {
            let (tx, rx) = mpsc::channel(1);
            let why = "fake/SLM_Qwen-3B: config.json: unsupported architecture `GPT2LMHeadModel`";
            tx.try_send(RunEvent::Rejected(why.into())).expect("room");
            return rx;
        }
        self.0.run(job, cancel)
    }
}

/// A model whose finetune failed for good: results.json names it under `meta.failed` with the
/// finetune and its error, the other models keep their entries, and the report says it is partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_failed_for_good_is_named_in_the_results_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let c = start_coordinator(
        &dir.path().join("data"),
        demo_plan("partial", &out, 6, 100),
        None,
        stop.clone(),
    )
    .await;
    let url = format!("http://{}", c.addr);
    let runner = FinetunesFail(FakeRunner {
        batch_delay: Duration::from_millis(1),
        batch_size: 3,
        counts: Arc::default(),
    });
    let _agent = start_agent(&url, "a", 1000, Arc::new(runner), None, dir.path());
    let (_, state, events) = submit_and_wait(&url, None, LIMIT).await;
    assert_eq!(
        state,
        pb::ExperimentStateKind::ExperimentStateFailed as i32,
        "{events:?}"
    );
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v.get("LLM_Llama-8B_untrained").is_some(), "{text}");
    assert!(v.get("LLM_Mistral-7B_untrained").is_some(), "{text}");
    assert!(v.get("SLM_Qwen-3B_finetuned").is_none(), "{text}");
    let failed = v["meta"]["failed"].as_array().expect("meta.failed");
    assert_eq!(failed.len(), 1, "{text}");
    assert_eq!(failed[0]["model"], "SLM_Qwen-3B_finetuned");
    assert_eq!(failed[0]["task"], "finetune:SLM_Qwen-3B");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("unsupported architecture"), "{error}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(
        md.contains("Partial result: 1 of 3 planned models failed"),
        "{md}"
    );
    assert!(
        md.contains("Qwen-3B LoRA: task `finetune:SLM_Qwen-3B` failed"),
        "{md}"
    );
    stop.cancel();
}

/// Two agents with one id: the second is refused while the first's session lives, with an error
/// that says so; once the first's stream is gone, the same registration is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_a_connected_agents_id_is_refused_until_the_first_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let plan = one_task_plan("twins", &dir.path().join("out"));
    let c = start_coordinator(&dir.path().join("data"), plan, None, stop.clone()).await;
    let url = format!("http://{}", c.addr);
    let first = register(&url, "twin").await.expect("first registers");
    let Err(refused) = register(&url, "twin").await else {
        panic!("a second agent with the same id was accepted");
    };
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("agent id `twin` is already connected"),
        "{}",
        refused.message()
    );
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match register(&url, "twin").await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the id stayed taken after the first agent left: {e:?}"),
        }
    }
    stop.cancel();
}
