//! A served experiment seen from outside: `/metrics` scraped over HTTP while one (hand-driven)
//! agent runs it through an unanswered offer, a failure and a success; then its output folder
//! downloaded with `DownloadResults` and compared byte for byte with the server's.
use coordinator::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use coordinator::results_download::{DownloadError, receive};
use coordinator::server::{Planner, Running, ServeOptions};
use coordinator::state::core::Settings;
use proto::pb;
use proto::pb::agent_message::Msg;
use proto::pb::agent_service_client::AgentServiceClient;
use proto::pb::control_service_client::ControlServiceClient;
use shared::config::{GenerationConfig, PromptConfig};
use shared::dataset::Record;
use shared::task::{EvalPayload, ModelRole, ModelSpec, Quantization, TaskId, TaskKind, TaskSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

const EXP: &str = "observed";
const TASK: &str = "eval:LLM_X-8B";
const SAMPLES: usize = 4;

fn sample(i: usize) -> Record {
    Record {
        id: format!("s{i}"),
        dialogue: format!("Doctor: what brings you in? Patient: complaint {i}."),
        note: String::new(),
        code: "J069".into(),
        description: String::new(),
    }
}

/// One zero-shot evaluation of four samples.
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
        id: ExperimentId(EXP.into()),
        name: EXP.into(),
        config_toml: format!("name = \"{EXP}\"\n"),
        output_dir: out.to_path_buf(),
        split_hash: "split".into(),
        train_code_counts: BTreeMap::new(),
        result_keys: BTreeMap::from([(TaskId(TASK.into()), "LLM_X-8B_untrained".to_string())]),
        tasks: vec![PlannedTask {
            spec,
            payload: TaskPayload::Evaluate(EvalPayload {
                samples: (0..SAMPLES).map(sample).collect(),
                prompt: PromptConfig::default(),
                generation: GenerationConfig::default(),
                adapter: None,
            }),
        }],
        dataset: None,
        cache: None,
    }
}

/// A hand-driven agent session with one 1000 MiB device reporting 900 MiB free.
struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::CoordinatorMessage>,
}

impl FakeAgent {
    async fn connect(addr: SocketAddr) -> FakeAgent {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, out) = mpsc::channel(16);
        let register = pb::Register {
            agent_id: "a".into(),
            host: "test".into(),
            version: "0".into(),
            devices: vec![pb::Device {
                kind: pb::DeviceKind::Cpu as i32,
                index: 0,
                uuid: "cpu-a".into(),
                name: "cpu".into(),
                total_mib: 1000,
                free_mib: 900,
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

    /// The next offer (cancellations of earlier attempts are skipped).
    async fn offer(&mut self) -> pb::TaskRef {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
                .await
                .expect("an offer in time")
                .unwrap()
                .and_then(|m| m.msg);
            match msg {
                Some(pb::coordinator_message::Msg::Offer(o)) => {
                    return pb::TaskRef {
                        experiment_id: o.experiment_id,
                        task_id: o.task.unwrap().id,
                        attempt: o.attempt,
                    };
                }
                Some(pb::coordinator_message::Msg::Cancel(_)) => {}
                other => panic!("expected an offer, got {other:?}"),
            }
        }
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
            free_mib: 900,
        }))
        .await;
    }

    async fn eval_progress(&self, r: &pb::TaskRef, samples_per_s: f64) {
        let event = pb::progress_event::Event::EvalProgress(pb::EvalProgress {
            done: 1,
            total: SAMPLES as u64,
            samples_per_s,
            tokens_per_s: 40.0,
            memory_mib: 50,
        });
        self.send(Msg::Progress(pb::TaskProgress {
            task: Some(r.clone()),
            event: Some(pb::ProgressEvent { event: Some(event) }),
        }))
        .await;
    }

    async fn fail(&self, r: &pb::TaskRef, why: &str) {
        self.send(Msg::Result(pb::TaskResult {
            task: Some(r.clone()),
            outcome: Some(pb::task_result::Outcome::Failed(why.into())),
            permanent: false,
        }))
        .await;
    }

    /// Every sample's prediction, then success.
    async fn finish(&self, r: &pb::TaskRef) {
        let rows = (0..SAMPLES)
            .map(|i| pb::PredictionRow {
                sample_id: format!("s{i}"),
                reference: "J069".into(),
                raw_output: "J06.9".into(),
                extracted: Some("J069".into()),
                correct: i % 2 == 0,
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
        self.send(Msg::Result(pb::TaskResult {
            task: Some(r.clone()),
            outcome: Some(pb::task_result::Outcome::Evaluated(pb::EvalPerformance {
                load_s: 0.1,
                eval_s: 1.0,
                samples_per_s: 4.0,
                tokens_per_s: 12.0,
                peak_memory_mib: 10,
                device_name: "cpu".into(),
            })),
            permanent: false,
        }))
        .await;
    }
}

/// `GET path` with `Host: host` over a plain socket: the status code and the body.
async fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A scrape parsed: `name{labels}` (labels as the exposition writes them) → value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn take(http: SocketAddr) -> Scrape {
        let (status, body) = get(http, "/metrics", &http.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let mut out = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(
                out.insert(key.to_string(), value).is_none(),
                "twice: {line}"
            );
        }
        Scrape(out)
    }

    fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    fn val(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no `{series}` in {:#?}", self.0))
    }

    fn tasks(&self, state: &str) -> f64 {
        self.val(&format!(
            "sizespec_tasks{{experiment=\"{EXP}\",state=\"{state}\"}}"
        ))
    }
}

/// Scrapes until `ok` holds (the state owner applies agent messages asynchronously).
async fn scrape_until(http: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = Scrape::take(http).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in time; last {:#?}",
            s.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Served {
    c: Running,
    http: SocketAddr,
    stop: CancellationToken,
}

/// A coordinator (lease `lease`) with its HTTP listener on loopback.
async fn serve(data: &Path, lease: Duration) -> Served {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut opts = ServeOptions::new(data.to_path_buf(), Arc::new(NoPlanner));
    opts.settings = Settings {
        heartbeat_interval: Duration::from_millis(100),
        lease,
        max_attempts: 3,
        ..Settings::default()
    };
    let c = coordinator::server::start(listener, opts, stop.clone())
        .await
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = l.local_addr().unwrap();
    tokio::spawn(coordinator::server::live_http::serve_live(
        l,
        c.state.clone(),
        stop.clone(),
    ));
    Served { c, http, stop }
}

async fn wait_for_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.is_file() {
        assert!(Instant::now() < deadline, "no {} in time", p.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tasks_agents_memory_retries_and_lease_expiries() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a slow scrape never outlasts a running task's lease.
    let lease = Duration::from_secs(3);
    let s = serve(&dir.path().join("data"), lease).await;

    let idle = Scrape::take(s.http).await;
    assert_eq!(idle.val("sizespec_agents_connected"), 0.0);
    assert_eq!(idle.val("sizespec_devices_connected"), 0.0);

    let out = dir.path().join("out");
    let mut a = FakeAgent::connect(s.c.addr).await;
    let connected = Scrape::take(s.http).await;
    assert_eq!(connected.val("sizespec_agents_connected"), 1.0);
    assert_eq!(connected.val("sizespec_devices_connected"), 1.0);
    let dev = "{agent=\"a\",device=\"cpu-a\"}";
    let mib = f64::from(1u32 << 20);
    assert_eq!(
        connected.val(&format!("sizespec_device_memory_free_bytes{dev}")),
        900.0 * mib
    );
    assert_eq!(
        connected.val(&format!("sizespec_device_memory_used_bytes{dev}")),
        100.0 * mib
    );
    assert_eq!(
        connected.val(&format!("sizespec_device_memory_total_bytes{dev}")),
        1000.0 * mib
    );
    s.c.state.submit(plan(&out)).await.unwrap();
    let r1 = a.offer().await;
    assert_eq!(r1.attempt, 1);
    let r2 = a.offer().await;
    assert_eq!(r2.attempt, 2, "offered again after the lease expired");
    a.accept(&r2).await;
    a.eval_progress(&r2, 7.5).await;
    let series =
        format!("sizespec_task_eval_samples_per_second{{experiment=\"{EXP}\",task=\"{TASK}\"}}");
    let running = scrape_until(s.http, "a running evaluation's speed", |m| {
        m.get(&series) == Some(7.5)
    })
    .await;
    assert_eq!(running.tasks("running"), 1.0);
    assert_eq!(running.tasks("succeeded"), 0.0);
    assert_eq!(running.val("sizespec_lease_expiries_total"), 1.0);
    assert_eq!(
        running.val("sizespec_task_retries_total"),
        0.0,
        "an unanswered offer is not a retry"
    );
    assert_eq!(running.val("sizespec_task_queue_wait_seconds_count"), 1.0);
    let waited = running.val("sizespec_task_queue_wait_seconds_sum");
    assert!(
        waited >= lease.as_secs_f64(),
        "the wait spans the unanswered offer's lease: {waited} s"
    );

    a.fail(&r2, "transient: out of memory").await;
    let r3 = a.offer().await;
    assert_eq!(r3.attempt, 3);
    let retried = Scrape::take(s.http).await;
    assert_eq!(retried.val("sizespec_task_retries_total"), 1.0);
    assert_eq!(
        retried.get(&series),
        None,
        "a task that stopped running reports no speed"
    );
    a.accept(&r3).await;
    a.finish(&r3).await;
    wait_for_file(&out.join("results.json")).await;

    let done = scrape_until(s.http, "the task succeeded", |m| {
        m.tasks("succeeded") == 1.0
    })
    .await;
    assert_eq!(done.tasks("succeeded"), plan(&out).tasks.len() as f64);
    for state in [
        "pending",
        "ready",
        "offered",
        "running",
        "failed",
        "cancelled",
    ] {
        assert_eq!(done.tasks(state), 0.0, "{state}");
    }
    assert_eq!(done.val("sizespec_task_retries_total"), 1.0);
    assert_eq!(done.val("sizespec_lease_expiries_total"), 1.0);
    assert_eq!(done.val("sizespec_task_queue_wait_seconds_count"), 2.0);
    assert_eq!(done.val("sizespec_agents_connected"), 1.0);

    // The Host rule of the live page holds for /metrics: the arrival address and loopback names
    // are answered, another name is not (DNS rebinding).
    assert_eq!(get(s.http, "/metrics", "localhost").await.0, 200);
    let (status, body) = get(s.http, "/metrics", "evil.example").await;
    assert_eq!(status, 421, "{body}");
    drop(a);
    s.stop.cancel();
}

/// Every regular file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                walk(root, &e.path(), out);
            } else if kind.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

async fn control(addr: SocketAddr) -> ControlServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ControlServiceClient::new(ch)
}

async fn download(addr: SocketAddr, id: &str, to: &Path) -> Result<Vec<String>, DownloadError> {
    let stream = control(addr)
        .await
        .download_results(pb::ResultsRequest {
            experiment_id: id.into(),
        })
        .await?
        .into_inner();
    Ok(receive(stream, to).await?.files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_experiments_output_folder_downloads_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"), Duration::from_secs(20)).await;
    let out: PathBuf = dir.path().join("out");

    // Unknown and running experiments are refused with a clear error, and nothing is written.
    let dl = dir.path().join("dl");
    let err = download(s.c.addr, "no-such-experiment", &dl)
        .await
        .unwrap_err();
    let DownloadError::Rpc(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains("unknown experiment `no-such-experiment`"),
        "{err}"
    );
    let mut a = FakeAgent::connect(s.c.addr).await;
    s.c.state.submit(plan(&out)).await.unwrap();
    let r = a.offer().await;
    let err = download(s.c.addr, EXP, &dl).await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::Rpc(st) if st.code() == tonic::Code::FailedPrecondition),
        "{err}"
    );
    assert!(err.to_string().contains("still running"), "{err}");
    assert!(!dl.exists(), "nothing written for a refused download");

    a.accept(&r).await;
    a.finish(&r).await;
    wait_for_file(&out.join("results.json")).await;
    // Wait for the experiment to be finished (report and plots written too).
    let deadline = Instant::now() + Duration::from_secs(30);
    let files = loop {
        match download(s.c.addr, EXP, &dl).await {
            Ok(f) => break f,
            Err(DownloadError::Rpc(st)) if st.code() == tonic::Code::FailedPrecondition => {
                assert!(Instant::now() < deadline, "not finished in time: {st}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    // A symlink planted in the output folder is neither followed nor sent.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "outside the output folder").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, out.join("planted.txt")).unwrap();
    let dl2 = dir.path().join("dl2");
    let files2 = download(s.c.addr, EXP, &dl2).await.unwrap();
    assert_eq!(files, files2, "the symlink is not sent");

    let server = tree(&out);
    let got = tree(&dl);
    assert!(
        server.contains_key("results.json") && server.contains_key("report.html"),
        "{:?}",
        server.keys()
    );
    assert!(
        server.keys().any(|k| k.starts_with("predictions/")),
        "{:?}",
        server.keys()
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        server.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (rel, bytes) in &server {
        assert!(got[rel] == *bytes, "{rel} differs");
    }
    assert_eq!(files.len(), server.len());
    assert!(!dl2.join("planted.txt").exists());
    drop(a);
    s.stop.cancel();
}
