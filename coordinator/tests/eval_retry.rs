//! An evaluation whose agent vanishes mid-stream: the retry is offered only the rows not yet
//! received, and a row received twice (re-sent by the retry) counts once in the outputs.
use coordinator::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use coordinator::server::{Planner, Running, ServeOptions};
use coordinator::state::core::Settings;
use proto::pb;
use proto::pb::agent_message::Msg;
use proto::pb::agent_service_client::AgentServiceClient;
use shared::config::{GenerationConfig, PromptConfig};
use shared::dataset::Record;
use shared::task::{EvalPayload, ModelRole, ModelSpec, Quantization, TaskId, TaskKind, TaskSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct NoPlanner;

impl Planner for NoPlanner {
    fn plan(&self, _config_toml: &str) -> Result<ExperimentPlan, String> {
        Err("this test submits through the state handle".into())
    }
}

const TASK: &str = "eval:LLM_X-8B";
const KEY: &str = "LLM_X-8B_untrained";

fn sample(i: usize) -> Record {
    Record {
        id: format!("s{i}"),
        dialogue: format!("Doctor: what brings you in? Patient: complaint {i}."),
        note: String::new(),
        code: "J069".into(),
        description: String::new(),
    }
}

/// One zero-shot evaluation of ten samples.
fn plan(out: &Path) -> ExperimentPlan {
    let spec = TaskSpec {
        id: TaskId(TASK.into()),
        kind: TaskKind::Evaluate,
        model: ModelSpec {
            key: "LLM_X-8B".into(),
            name: "fake/x".into(),
            revision: None,
            label: "X".into(),
            size: "8B".into(),
            role: ModelRole::Llm,
            quantization: Quantization::Q4,
        },
        depends_on: vec![],
        estimate_mib: 100,
    };
    ExperimentPlan {
        id: ExperimentId("retry".into()),
        name: "retry".into(),
        config_toml: "name = \"retry\"\n".into(),
        output_dir: out.to_path_buf(),
        split_hash: "split".into(),
        train_code_counts: BTreeMap::new(),
        result_keys: BTreeMap::from([(TaskId(TASK.into()), KEY.to_string())]),
        tasks: vec![PlannedTask {
            spec,
            payload: TaskPayload::Evaluate(EvalPayload {
                samples: (0..10).map(sample).collect(),
                prompt: PromptConfig::default(),
                generation: GenerationConfig::default(),
                adapter: None,
            }),
        }],
        dataset: None,
        cache: None,
    }
}

/// A hand-driven agent session: what it sends, and what the coordinator sends it.
struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::CoordinatorMessage>,
}

impl FakeAgent {
    async fn connect(c: &Running, id: &str) -> FakeAgent {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, out) = mpsc::channel(16);
        let register = pb::Register {
            agent_id: id.into(),
            host: "test".into(),
            version: "0".into(),
            devices: vec![pb::Device {
                kind: pb::DeviceKind::Cpu as i32,
                index: 0,
                uuid: format!("cpu-{id}"),
                name: "cpu".into(),
                total_mib: 1000,
                free_mib: 1000,
                driver: String::new(),
            }],
        };
        tx.send(pb::AgentMessage {
            msg: Some(Msg::Register(register)),
        })
        .await
        .unwrap();
        let mut rx = AgentServiceClient::new(ch)
            .session(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        match rx.message().await.unwrap().and_then(|m| m.msg) {
            Some(pb::coordinator_message::Msg::Registered(_)) => {}
            other => panic!("expected `registered`, got {other:?}"),
        }
        FakeAgent { tx, rx }
    }

    /// The next offer: its task reference and the sample ids of its payload.
    async fn offer(&mut self) -> (pb::TaskRef, Vec<String>) {
        let msg = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("an offer in time")
            .unwrap()
            .and_then(|m| m.msg);
        let Some(pb::coordinator_message::Msg::Offer(o)) = msg else {
            panic!("expected an offer, got {msg:?}");
        };
        let payload: serde_json::Value = serde_json::from_slice(&o.payload_json).unwrap();
        let ids = payload["samples"]
            .as_array()
            .expect("an eval payload's samples")
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let r = pb::TaskRef {
            experiment_id: o.experiment_id,
            task_id: o.task.unwrap().id,
            attempt: o.attempt,
        };
        (r, ids)
    }

    async fn send(&self, msg: Msg) {
        self.tx
            .send(pb::AgentMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    async fn accept(&self, r: &pb::TaskRef) {
        self.send(Msg::OfferReply(pb::OfferReply {
            task: Some(r.clone()),
            accept: true,
            reason: String::new(),
            free_mib: 1000,
        }))
        .await;
    }

    /// Predictions for samples `ids`, their raw output naming who sent them.
    async fn rows(&self, r: &pb::TaskRef, ids: impl IntoIterator<Item = usize>, who: &str) {
        let rows = ids
            .into_iter()
            .map(|i| pb::PredictionRow {
                sample_id: format!("s{i}"),
                reference: "J069".into(),
                raw_output: format!("{who}: J06.9"),
                extracted: Some("J069".into()),
                correct: true,
                latency_ms: 1.0,
                generated_tokens: 3,
                prompt_tokens: 20,
            })
            .collect();
        self.send(Msg::Predictions(pb::PredictionBatch {
            task: Some(r.clone()),
            rows,
        }))
        .await;
    }
}

/// Rows the coordinator holds for the task, once it holds five (or after 10 s).
async fn received(c: &Running) -> u64 {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ctl = pb::control_service_client::ControlServiceClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        let st = ctl
            .status(pb::StatusRequest {
                experiment_id: "retry".into(),
            })
            .await
            .unwrap()
            .into_inner();
        last = st.experiments[0].tasks[0].predictions;
        if last >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_evaluation_runs_only_the_missing_rows_and_counts_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut opts = ServeOptions::new(dir.path().join("data"), Arc::new(NoPlanner));
    opts.settings = Settings {
        heartbeat_interval: Duration::from_millis(100),
        lease: Duration::from_secs(5),
        max_attempts: 3,
        unplaceable_timeout: Duration::from_secs(30),
    };
    let c = coordinator::server::start(listener, opts, stop.clone())
        .await
        .unwrap();

    // Agent A takes the task, streams half the rows (one of them twice), then vanishes.
    let mut a = FakeAgent::connect(&c, "a").await;
    c.state.submit(plan(&out)).await.unwrap();
    let (r1, ids1) = a.offer().await;
    assert_eq!((r1.attempt, ids1.len()), (1, 10));
    a.accept(&r1).await;
    a.rows(&r1, [0, 1, 2], "a").await;
    a.rows(&r1, [2, 3, 4], "a").await;
    // Dropping the session resets its stream, losing messages not yet sent: vanish only once
    // the coordinator has the five rows.
    assert_eq!(received(&c).await, 5);
    drop(a);

    // The retry, on agent B, carries only the five rows not received.
    let mut b = FakeAgent::connect(&c, "b").await;
    let (r2, ids2) = b.offer().await;
    assert_eq!(r2.attempt, 2);
    assert_eq!(ids2, ["s5", "s6", "s7", "s8", "s9"]);
    b.accept(&r2).await;
    // A careless agent re-sends rows the coordinator already has: they do not count again.
    b.rows(&r2, 0..10, "b").await;
    b.send(Msg::Result(pb::TaskResult {
        task: Some(r2.clone()),
        outcome: Some(pb::task_result::Outcome::Evaluated(pb::EvalPerformance {
            load_s: 0.1,
            eval_s: 1.0,
            samples_per_s: 5.0,
            tokens_per_s: 15.0,
            peak_memory_mib: 10,
            device_name: "cpu".into(),
        })),
        permanent: false,
    }))
    .await;

    let results = out.join("results.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !results.is_file() {
        assert!(Instant::now() < deadline, "no results.json in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let preds = std::fs::read_to_string(out.join(format!("predictions/{KEY}.jsonl"))).unwrap();
    let rows: Vec<serde_json::Value> = preds
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["sample_id"].as_str().expect("sample_id"))
        .collect();
    assert_eq!(
        ids,
        ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"],
        "each sample once, in plan order"
    );
    for (i, r) in rows.iter().enumerate() {
        let who = if i < 5 { "a" } else { "b" };
        assert_eq!(
            r["raw_output"],
            format!("{who}: J06.9"),
            "the first prediction received for s{i} is the one kept"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(json[KEY]["metrics"]["samples"], 10, "{json}");
    // The journal holds each row once too (a restart restores exactly these).
    let stem = coordinator::journal::task_file_stem(&TaskId(TASK.into()));
    let journal = std::fs::read_to_string(
        dir.path()
            .join("data/experiments/retry/predictions")
            .join(format!("{stem}.jsonl")),
    )
    .unwrap();
    assert_eq!(journal.lines().count(), 10, "{journal}");
    stop.cancel();
}
