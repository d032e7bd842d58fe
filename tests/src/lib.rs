//! sizespec end-to-end test helpers: start a coordinator and N agents in one process on loopback.
//!
//! Each agent runs on its own single-threaded tokio runtime on its own thread, so a test can
//! *kill* one (drop the runtime: connections close mid-task, nothing is sent) as well as stop it
//! gracefully. [`FakeRunner`] is a deterministic stand-in for the engine, for protocol tests only:
//! its predictions depend on the sample, the model and the adapter's bytes, never on timing or on
//! which agent ran it, so any placement must give byte-identical outputs.
use agent::probe::{DeviceChoice, DeviceReport, Probe, ProbeError};
use agent::rpc::runner::{EvalReport, FinetuneReport, RunEvent, RunJob, TaskRunner};
use agent::rpc::session::AgentConfig;
use agent::rpc::{Connection, session};
use coordinator::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use coordinator::server::{Planner, Running, ServeOptions};
use coordinator::state::core::Settings;
use proto::auth::Token;
use sha2::{Digest, Sha256};
use shared::config::{GenerationConfig, LoraConfig, PromptConfig, TrainingConfig};
use shared::dataset::Record;
use shared::task::{
    AgentId, EvalPayload, FinetunePayload, ModelRole, ModelSpec, PredictionRow, ProgressEvent,
    Quantization, TaskId, TaskKind, TaskSpec,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Short heartbeats and leases so failure tests finish in seconds.
pub fn fast_settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(100),
        lease: Duration::from_millis(1500),
        max_attempts: 3,
        unplaceable_timeout: Duration::from_secs(600),
    }
}

/// A probe whose free memory a test controls. `at_offer_mib` is what the agent reads right
/// before accepting an offer: set it low to model memory taken by another process between the
/// last heartbeat and the offer.
pub struct FakeProbe {
    pub total_mib: u64,
    pub free_mib: Arc<AtomicU64>,
    pub at_offer_mib: Arc<AtomicU64>,
    pub uuid: String,
}

impl FakeProbe {
    pub fn new(uuid: &str, total_mib: u64) -> FakeProbe {
        FakeProbe {
            total_mib,
            free_mib: Arc::new(AtomicU64::new(total_mib)),
            at_offer_mib: Arc::new(AtomicU64::new(total_mib)),
            uuid: uuid.into(),
        }
    }
}

impl Probe for FakeProbe {
    fn device(&self) -> Result<DeviceReport, ProbeError> {
        Ok(DeviceReport {
            choice: DeviceChoice::Cpu,
            uuid: self.uuid.clone(),
            name: "fake device".into(),
            total_mib: self.total_mib,
            free_mib: self.free_mib.load(Ordering::SeqCst),
            driver: String::new(),
        })
    }

    fn free_mib(&self) -> Result<u64, ProbeError> {
        Ok(self.at_offer_mib.load(Ordering::SeqCst))
    }
}

/// Counts of what a fake runner did (shared across agents in a test).
#[derive(Default)]
pub struct RunCounts {
    pub evaluated_samples: AtomicUsize,
    pub finetunes: AtomicUsize,
    pub jobs_started: AtomicUsize,
}

/// Deterministic stand-in for the engine.
pub struct FakeRunner {
    /// Sleep between prediction batches (so a test can kill an agent mid-task).
    pub batch_delay: Duration,
    pub batch_size: usize,
    pub counts: Arc<RunCounts>,
}

fn h(parts: &[&str]) -> u64 {
    let d = Sha256::digest(parts.join("\u{1f}").as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The fake's prediction: right for ~1/2 of samples zero-shot, ~3/4 with an adapter.
pub fn fake_prediction(model: &str, adapter_hash: Option<&str>, s: &Record) -> PredictionRow {
    let x = h(&[model, adapter_hash.unwrap_or("-"), &s.id]);
    let right = if adapter_hash.is_some() {
        !x.is_multiple_of(4)
    } else {
        x.is_multiple_of(2)
    };
    let extracted = if right {
        Some(s.code.clone())
    } else {
        Some("R69".to_string())
    };
    PredictionRow {
        sample_id: s.id.clone(),
        reference: s.code.clone(),
        raw_output: format!("Code: {}", extracted.clone().unwrap_or_default()),
        correct: extracted.as_deref() == Some(s.code.as_str()),
        extracted,
        latency_ms: 10.0,
        generated_tokens: 4,
        prompt_tokens: 100,
    }
}

impl TaskRunner for FakeRunner {
    fn run(&self, job: RunJob, cancel: CancellationToken) -> mpsc::Receiver<RunEvent> {
        let (tx, rx) = mpsc::channel(16);
        let (delay, batch, counts) = (
            self.batch_delay,
            self.batch_size.max(1),
            self.counts.clone(),
        );
        counts.jobs_started.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = tx
                .send(RunEvent::Progress(ProgressEvent::Stage {
                    name: "loading".into(),
                }))
                .await;
            match job {
                RunJob::Evaluate {
                    task,
                    payload,
                    adapter_dir,
                } => {
                    let adapter_hash = match &adapter_dir {
                        None => None,
                        Some(dir) => match std::fs::read(dir.join("adapter_model.safetensors")) {
                            Ok(b) => Some(hex::encode(Sha256::digest(&b))),
                            Err(e) => {
                                let _ = tx
                                    .send(RunEvent::Failed(format!(
                                        "adapter {}: {e}",
                                        dir.display()
                                    )))
                                    .await;
                                return;
                            }
                        },
                    };
                    let total = payload.samples.len() as u64;
                    for (i, chunk) in payload.samples.chunks(batch).enumerate() {
                        tokio::time::sleep(delay).await;
                        if cancel.is_cancelled() {
                            let _ = tx.send(RunEvent::Cancelled).await;
                            return;
                        }
                        let rows: Vec<_> = chunk
                            .iter()
                            .map(|s| fake_prediction(&task.model.name, adapter_hash.as_deref(), s))
                            .collect();
                        counts
                            .evaluated_samples
                            .fetch_add(rows.len(), Ordering::SeqCst);
                        let _ = tx.send(RunEvent::Predictions(rows)).await;
                        let done = ((i + 1) * batch).min(total as usize) as u64;
                        let p = ProgressEvent::EvalProgress {
                            done,
                            total,
                            samples_per_s: 1.0,
                            tokens_per_s: 4.0,
                            memory_mib: 1,
                        };
                        let _ = tx.send(RunEvent::Progress(p)).await;
                    }
                    let rep = EvalReport {
                        load_s: 0.5,
                        eval_s: 2.0,
                        samples_per_s: 1.0,
                        tokens_per_s: 4.0,
                        peak_memory_mib: 100,
                        device_name: "fake device".into(),
                    };
                    let _ = tx.send(RunEvent::Evaluated(rep)).await;
                }
                RunJob::Finetune {
                    task,
                    payload,
                    out_dir,
                } => {
                    for step in 1..=3u64 {
                        tokio::time::sleep(delay).await;
                        if cancel.is_cancelled() {
                            let _ = tx.send(RunEvent::Cancelled).await;
                            return;
                        }
                        let p = ProgressEvent::TrainStep {
                            epoch: 1,
                            step,
                            total_steps: 3,
                            loss: 2.0 / step as f64,
                            lr: 1e-4,
                            tokens_per_s: 10.0,
                            memory_mib: 1,
                        };
                        let _ = tx.send(RunEvent::Progress(p)).await;
                    }
                    // Adapter bytes depend only on the model and the training data.
                    let ids: Vec<&str> = payload.train.iter().map(|r| r.id.as_str()).collect();
                    let weights = format!("fake-lora:{}:{}", task.model.name, ids.join(","));
                    let config = format!(
                        "{{\"peft_type\":\"LORA\",\"base_model_name_or_path\":\"{}\"}}",
                        task.model.name
                    );
                    let write = std::fs::create_dir_all(&out_dir)
                        .and_then(|_| {
                            std::fs::write(
                                out_dir.join("adapter_model.safetensors"),
                                weights.as_bytes(),
                            )
                        })
                        .and_then(|_| {
                            std::fs::write(out_dir.join("adapter_config.json"), config.as_bytes())
                        });
                    if let Err(e) = write {
                        let _ = tx
                            .send(RunEvent::Failed(format!("writing the adapter: {e}")))
                            .await;
                        return;
                    }
                    counts.finetunes.fetch_add(1, Ordering::SeqCst);
                    let rep = FinetuneReport {
                        adapter_dir: out_dir,
                        adapter_hash: hex::encode(Sha256::digest(weights.as_bytes())),
                        steps: 3,
                        epochs_run: 1,
                        final_train_loss: 2.0 / 3.0,
                        best_validation_loss: Some(0.9),
                        stopped_early: false,
                        train_s: 1.0,
                        load_s: 0.5,
                        tokens_per_s: 10.0,
                        peak_memory_mib: 100,
                        device_name: "fake device".into(),
                        curve: vec![(1, Some(2.0), None), (3, Some(2.0 / 3.0), Some(0.9))],
                        resumed_from_step: None,
                    };
                    let _ = tx.send(RunEvent::Finetuned(rep)).await;
                }
            }
        });
        rx
    }
}

/// A planner that returns a fixed plan whatever TOML it is given (tests set the estimates).
pub struct StaticPlanner(pub ExperimentPlan);

impl Planner for StaticPlanner {
    fn plan(&self, _config_toml: &str) -> Result<ExperimentPlan, String> {
        Ok(self.0.clone())
    }
}

/// `n` synthetic records with a few repeated codes.
pub fn records(prefix: &str, n: usize) -> Vec<Record> {
    let codes = ["J069", "E119", "I10", "M25562", "K219"];
    (0..n)
        .map(|i| Record {
            id: format!("{prefix}-{i}"),
            dialogue: format!("Doctor: what brings you in? Patient: complaint number {i}."),
            note: String::new(),
            code: codes[i % codes.len()].into(),
            description: String::new(),
        })
        .collect()
}

fn model(key: &str, role: ModelRole) -> ModelSpec {
    ModelSpec {
        key: key.into(),
        name: format!("fake/{key}"),
        revision: None,
        label: key.split_once('_').map_or(key, |(_, l)| l).into(),
        size: if role == ModelRole::Llm {
            "8B".into()
        } else {
            "3B".into()
        },
        role,
        quantization: if role == ModelRole::Llm {
            Quantization::Q4
        } else {
            Quantization::None
        },
    }
}

/// A plan in DESIGN's shape: 2 LLM evals, then for 1 SLM finetune → eval (4 tasks), `eval_n`
/// test samples each, every task estimated at `estimate_mib`.
pub fn demo_plan(id: &str, out: &Path, eval_n: usize, estimate_mib: u64) -> ExperimentPlan {
    let samples = records("test", eval_n);
    let eval = |m: ModelSpec, deps: Vec<TaskId>| PlannedTask {
        spec: TaskSpec {
            id: TaskId(format!("eval:{}", m.key)),
            kind: TaskKind::Evaluate,
            model: m,
            depends_on: deps,
            estimate_mib,
        },
        payload: TaskPayload::Evaluate(EvalPayload {
            samples: samples.clone(),
            prompt: PromptConfig::default(),
            generation: GenerationConfig::default(),
            adapter: None,
        }),
    };
    let slm = model("SLM_Qwen-3B", ModelRole::Slm);
    let ft = PlannedTask {
        spec: TaskSpec {
            id: TaskId("finetune:SLM_Qwen-3B".into()),
            kind: TaskKind::Finetune,
            model: slm.clone(),
            depends_on: vec![],
            estimate_mib,
        },
        payload: TaskPayload::Finetune(FinetunePayload {
            train: records("train", 12),
            validation: records("val", 3),
            prompt: PromptConfig::default(),
            lora: LoraConfig::default(),
            training: TrainingConfig::default(),
        }),
    };
    let tasks = vec![
        eval(model("LLM_Llama-8B", ModelRole::Llm), vec![]),
        eval(model("LLM_Mistral-7B", ModelRole::Llm), vec![]),
        ft,
        eval(slm, vec![TaskId("finetune:SLM_Qwen-3B".into())]),
    ];
    let result_keys: BTreeMap<TaskId, String> = [
        ("eval:LLM_Llama-8B", "LLM_Llama-8B_untrained"),
        ("eval:LLM_Mistral-7B", "LLM_Mistral-7B_untrained"),
        ("eval:SLM_Qwen-3B", "SLM_Qwen-3B_finetuned"),
    ]
    .into_iter()
    .map(|(t, k)| (TaskId(t.into()), k.to_string()))
    .collect();
    ExperimentPlan {
        id: ExperimentId(id.into()),
        name: id.into(),
        config_toml: "name = \"fake\"\n".into(),
        output_dir: out.to_path_buf(),
        split_hash: "fake-split".into(),
        train_code_counts: BTreeMap::from([("J069".to_string(), 3)]),
        result_keys,
        tasks,
        dataset: None,
        cache: None,
    }
}

/// Starts a coordinator on 127.0.0.1:0 with [`fast_settings`].
pub async fn start_coordinator(
    data_dir: &Path,
    plan: ExperimentPlan,
    token: Option<Token>,
    shutdown: CancellationToken,
) -> Running {
    start_coordinator_with(data_dir, plan, token, fast_settings(), shutdown).await
}

/// Starts a coordinator on 127.0.0.1:0.
pub async fn start_coordinator_with(
    data_dir: &Path,
    plan: ExperimentPlan,
    token: Option<Token>,
    settings: Settings,
    shutdown: CancellationToken,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let mut opts = ServeOptions::new(data_dir.to_path_buf(), Arc::new(StaticPlanner(plan)));
    opts.settings = settings;
    opts.token = token;
    coordinator::server::start(listener, opts, shutdown)
        .await
        .expect("coordinator starts")
}

/// An agent on its own runtime and thread.
pub struct AgentHandle {
    pub id: String,
    pub free_mib: Arc<AtomicU64>,
    pub at_offer_mib: Arc<AtomicU64>,
    shutdown: CancellationToken,
    /// Drops the agent's future mid-flight (no goodbye), unlike `shutdown`.
    kill_switch: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentHandle {
    /// Kills the agent: its session future is dropped where it stands and its runtime (with the
    /// job it was running) shut down; connections close, nothing more is sent.
    pub fn kill(mut self) {
        self.kill_switch.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Graceful stop (the running job is cancelled and reported).
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.kill_switch.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts an agent with a fake probe (`total_mib`) and the given runner.
pub fn start_agent(
    url: &str,
    id: &str,
    total_mib: u64,
    runner: Arc<dyn TaskRunner>,
    token: Option<Token>,
    work: &Path,
) -> AgentHandle {
    let conn = Connection {
        url: url.into(),
        token,
        tls: None,
    };
    start_agent_on(conn, id, total_mib, runner, work)
}

/// [`start_agent`] with a full connection (TLS).
pub fn start_agent_on(
    connection: Connection,
    id: &str,
    total_mib: u64,
    runner: Arc<dyn TaskRunner>,
    work: &Path,
) -> AgentHandle {
    let probe = FakeProbe::new(&format!("dev-{id}"), total_mib);
    let (free, at_offer) = (probe.free_mib.clone(), probe.at_offer_mib.clone());
    let shutdown = CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("agent runtime");
    let cfg = AgentConfig {
        agent_id: AgentId(id.into()),
        host: "localhost".into(),
        connection,
        work_dir: work.join(id),
    };
    let kill_switch = CancellationToken::new();
    let (sd, ks, handle) = (
        shutdown.clone(),
        kill_switch.clone(),
        runtime.handle().clone(),
    );
    let probe: Arc<dyn Probe> = Arc::new(probe);
    let thread = std::thread::spawn(move || {
        handle.block_on(async move {
            tokio::select! {
                _ = session::run(cfg, probe, runner, sd) => {}
                _ = ks.cancelled() => {}
            }
        });
    });
    AgentHandle {
        id: id.into(),
        free_mib: free,
        at_offer_mib: at_offer,
        shutdown,
        kill_switch,
        runtime: Some(runtime),
        thread: Some(thread),
    }
}

/// Reads every output file of an experiment folder except the timestamped `results.json` meta
/// and the adapter's artifact name,
/// keyed by relative path (for byte-for-byte comparisons between runs).
pub fn output_files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for sub in ["predictions", "training"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let p = e.path();
                let mut text = std::fs::read_to_string(&p).unwrap_or_default();
                // The adapter's artifact name carries the attempt number, which differs between
                // an interrupted run and a clean one; the adapter's content hash stays.
                if sub == "training" {
                    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("adapter_artifact");
                    }
                    text = v.to_string();
                }
                out.insert(PathBuf::from(sub).join(e.file_name()), text);
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("results.json")) {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(m) = v.get_mut("meta").and_then(|m| m.as_object_mut()) {
            m.remove("created");
        }
        out.insert(PathBuf::from("results.json"), v.to_string());
    }
    out
}

/// A control-plane client with the token attached.
pub async fn control(
    url: &str,
    token: Option<Token>,
) -> proto::pb::control_service_client::ControlServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        proto::auth::AttachToken,
    >,
> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    proto::pb::control_service_client::ControlServiceClient::with_interceptor(
        ch,
        proto::auth::AttachToken(token),
    )
}

/// Submits (any TOML: the planner is static) and watches until the experiment finishes; returns
/// the final state and every event seen.
pub async fn submit_and_wait(
    url: &str,
    token: Option<Token>,
    limit: Duration,
) -> (String, i32, Vec<proto::pb::ExperimentEvent>) {
    use proto::pb;
    let mut c = control(url, token).await;
    let id = c
        .submit(pb::SubmitRequest {
            config_toml: "name = \"x\"".into(),
            no_cache: false,
        })
        .await
        .expect("submit")
        .into_inner()
        .experiment_id;
    let mut stream = c
        .watch(pb::WatchRequest {
            experiment_id: id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    let state = tokio::time::timeout(limit, async {
        while let Some(ev) = stream.message().await.expect("watch stream") {
            let fin = match ev.event {
                Some(pb::experiment_event::Event::Finished(s)) => Some(s),
                _ => None,
            };
            events.push(ev);
            if let Some(s) = fin {
                return s;
            }
        }
        panic!("watch ended without `finished`");
    })
    .await
    .expect("experiment finished in time");
    (id, state, events)
}

/// `GET path` over a plain socket (one request, `Connection: close`): the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
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

/// Serves the live experiment page of `c` on a free loopback port until `stop`; returns its address.
pub async fn serve_live_page(c: &Running, stop: &CancellationToken) -> std::net::SocketAddr {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(coordinator::server::live_http::serve_live(
        http,
        c.state.clone(),
        stop.clone(),
    ));
    addr
}
