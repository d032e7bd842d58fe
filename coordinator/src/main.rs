//! `coordinator` command line: `serve | submit | status | watch | results | run | plan | cache`
//! (+ `report`).
mod cache_cli;
mod plan_cli;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use coordinator::progress::{Display, ProgressView};
use coordinator::server::{ServeOptions, TlsFiles};
use coordinator::single_box::{self, SingleBoxOptions};
use coordinator::state::core::{ExperimentState, Settings};
use proto::client::{ClientTls, Connection};
use proto::pb;
use proto::pb::control_service_client::ControlServiceClient;
use shared::config::{ExperimentConfig, ExperimentScope};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "sizespec: can a LoRA-finetuned 3B model beat a 7-8B model zero-shot?"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator for a cluster: agents dial in, the CLI submits experiments.
    Serve(ServeArgs),
    /// Submit an experiment config to a running coordinator.
    Submit {
        config: PathBuf,
        /// Follow its progress until it ends.
        #[arg(long)]
        watch: bool,
        /// Which tasks run (overrides `experiment`): full, llm (only the zero-shot LLM
        /// evaluations) or slm (only the SLMs' finetune and evaluations).
        #[arg(long)]
        experiment: Option<ExperimentScope>,
        /// Evaluate every row: neither read nor fill the coordinator's prediction cache.
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agents, devices and tasks of a running coordinator.
    Status {
        experiment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow an experiment until it ends.
    Watch {
        experiment: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print an experiment's `results.json`, or download its whole output folder.
    Results {
        experiment: String,
        /// Write the finished experiment's whole output folder (results.json, predictions,
        /// plots, report.html, ...) into DIR, each file checked against its SHA-256.
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Single-box mode: coordinator in-process, one agent process per local device.
    Run(RunArgs),
    /// What `run` would do, without loading any model: the data, the split, the tasks, memory
    /// estimates against the devices, token lengths and wall-time estimates.
    Plan(plan_cli::PlanArgs),
    /// The prediction cache shared across experiments (`$SIZESPEC_CACHE`, else
    /// `~/.cache/sizespec/predictions`; a cluster coordinator's is `<data dir>/predictions`).
    Cache {
        #[command(subcommand)]
        command: cache_cli::CacheCmd,
        /// The cache folder.
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
    },
    /// Build report.html, report.md and plots/ from an experiment's output folder.
    Report {
        /// The folder holding results.json and predictions/.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// Coordinator URL.
    #[arg(
        long,
        env = "SIZESPEC_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    #[command(flatten)]
    token: TokenArgs,
    /// CA certificate (PEM) that signed the coordinator's certificate (for https URLs).
    #[arg(long, env = "SIZESPEC_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long, env = "SIZESPEC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SIZESPEC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Server name to verify (default: the URL's host).
    #[arg(long, env = "SIZESPEC_TLS_DOMAIN")]
    tls_domain: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// Shared token (prefer --token-file: a flag shows up in `ps`).
    #[arg(long = "token", env = "SIZESPEC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "SIZESPEC_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl TokenArgs {
    fn load(&self) -> Result<Option<proto::auth::Token>> {
        Ok(proto::auth::load_token(
            self.token.as_deref(),
            self.token_file.as_deref(),
        )?)
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SIZESPEC_LISTEN", default_value = "0.0.0.0:50051")]
    listen: String,
    /// Journal and artifact store.
    #[arg(long, env = "SIZESPEC_DATA_DIR", default_value = "sizespec-data")]
    data_dir: PathBuf,
    /// Folder that replaces `${SIZESPEC_MODELS}` in model names of submitted configs (a config
    /// that uses the placeholder is refused when this is not set).
    #[arg(long, env = "SIZESPEC_MODELS")]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    token: TokenArgs,
    /// Server certificate and key (PEM): serve TLS.
    #[arg(long, env = "SIZESPEC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SIZESPEC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, env = "SIZESPEC_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Also serve the live experiment page, /healthz and Prometheus /metrics (plain HTTP,
    /// unauthenticated) on this address, e.g. 127.0.0.1:8080; a bare port listens on loopback
    /// only.
    #[arg(long, env = "SIZESPEC_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// A host name the live page and /metrics also answer for (repeatable), e.g. the name of a
    /// reverse proxy in front of it or the name Prometheus scrapes. Without it, only localhost, 127.0.0.1, [::1] and the address a request
    /// arrives on are answered (DNS rebinding protection).
    #[arg(
        long = "allowed-host",
        env = "SIZESPEC_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Largest artifact file (an uploaded adapter) accepted, MiB.
    #[arg(long, env = "SIZESPEC_MAX_ARTIFACT_MIB", default_value_t = proto::limits::MAX_ARTIFACT_BYTES >> 20)]
    max_artifact_mib: u64,
    /// Artifact uploads written at once; further ones wait for a slot.
    #[arg(long, env = "SIZESPEC_MAX_UPLOADS", default_value_t = 4)]
    max_uploads: usize,
    #[command(flatten)]
    sched: SchedArgs,
}

/// `--http-listen`: a bare port means loopback only.
fn live_listen_addr(arg: &str) -> String {
    match arg.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => arg.to_string(),
    }
}

#[derive(Args)]
struct SchedArgs {
    /// Agent heartbeat interval, milliseconds.
    #[arg(long, env = "SIZESPEC_HEARTBEAT_MS", default_value_t = 2000)]
    heartbeat_ms: u64,
    /// A running task whose agent is silent this long is re-queued, seconds.
    #[arg(long, env = "SIZESPEC_LEASE_S", default_value_t = 20)]
    lease_s: u64,
    /// Attempts per task before it fails for good.
    #[arg(long, env = "SIZESPEC_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// A ready task fails after this long when every connected device large enough for it is
    /// idle yet none has its estimate free (waiting for a busy device never times out), seconds.
    #[arg(long, env = "SIZESPEC_UNPLACEABLE_TIMEOUT_S", default_value_t = 600)]
    unplaceable_timeout_s: u64,
}

impl SchedArgs {
    fn settings(&self) -> Settings {
        Settings {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms.max(50)),
            lease: Duration::from_secs(self.lease_s.max(1)),
            max_attempts: self.max_attempts.max(1),
            unplaceable_timeout: Duration::from_secs(self.unplaceable_timeout_s),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Experiment config (TOML, or the old shape); defaults apply when omitted.
    config: Option<PathBuf>,
    /// Use the offline default (embedded dataset, SmolLM2-135M in both roles) instead of a file.
    #[arg(long, conflicts_with = "config")]
    offline: bool,
    /// Output folder (overrides `output`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Devices (overrides `device`): auto, cpu, cuda, cuda:0,cuda:1.
    #[arg(long)]
    device: Option<String>,
    /// Cap the evaluated test samples (overrides `data.max_eval_samples`).
    #[arg(long)]
    max_eval_samples: Option<usize>,
    /// Which tasks run (overrides `experiment`): full, llm (only the zero-shot LLM
    /// evaluations) or slm (only the SLMs' finetune and evaluations).
    #[arg(long)]
    experiment: Option<ExperimentScope>,
    /// Folder that replaces `${SIZESPEC_MODELS}` in model names (default:
    /// `~/.cache/sizespec/models`, where `scripts/fetch-smollm2.sh` puts the offline model).
    #[arg(long, env = "SIZESPEC_MODELS")]
    models_dir: Option<PathBuf>,
    /// The agent binary (default: `agent` next to this executable).
    #[arg(long, env = "SIZESPEC_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Do not retry building the HTML/Markdown report at the end if it was not written with the
    /// outputs.
    #[arg(long)]
    no_report: bool,
    /// Serve the live experiment page (unauthenticated) on this address while it runs, e.g.
    /// 127.0.0.1:8080; a bare port listens on loopback only.
    #[arg(long, env = "SIZESPEC_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Evaluate every row: neither read nor fill the prediction cache (`$SIZESPEC_CACHE`, else
    /// `~/.cache/sizespec/predictions`).
    #[arg(long)]
    no_cache: bool,
    /// Print the plan (`coordinator plan`) instead of running.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: the plan as JSON.
    #[arg(long, requires = "dry_run")]
    json: bool,
    /// With --dry-run: also estimate for this card kind (e.g. H100, H200); repeatable.
    #[arg(long, requires = "dry_run")]
    card: Vec<String>,
    #[command(flatten)]
    sched: SchedArgs,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIZESPEC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Ctrl-C or SIGTERM cancels the token.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn client(
    a: &ClientArgs,
) -> Result<
    ControlServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            proto::auth::AttachToken,
        >,
    >,
> {
    let token = a.token.load()?;
    let tls = (a.coordinator.starts_with("https://") || a.tls_ca.is_some()).then(|| ClientTls {
        ca: a.tls_ca.clone(),
        cert: a.tls_cert.clone(),
        key: a.tls_key.clone(),
        domain: a.tls_domain.clone(),
    });
    let conn = Connection {
        url: a.coordinator.clone(),
        token: token.clone(),
        tls,
    };
    let ch = conn.channel().await?;
    Ok(
        ControlServiceClient::with_interceptor(ch, proto::auth::AttachToken(token))
            .max_decoding_message_size(proto::limits::MAX_MESSAGE_BYTES),
    )
}

fn display() -> Display {
    if std::io::stderr().is_terminal() {
        Display::Bars
    } else {
        Display::Lines
    }
}

async fn watch(
    c: &mut ControlServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            proto::auth::AttachToken,
        >,
    >,
    id: &str,
) -> Result<()> {
    let mut stream = c
        .watch(pb::WatchRequest {
            experiment_id: id.to_string(),
        })
        .await?
        .into_inner();
    let mut view = ProgressView::new(display());
    let mut ticks = tokio::time::interval(coordinator::progress::LINE_INTERVAL);
    loop {
        let ev = tokio::select! {
            ev = stream.message() => ev?,
            _ = ticks.tick() => {
                view.tick();
                continue;
            }
        };
        let Some(ev) = ev else { break };
        let ev = coordinator::server::view::event_from_pb(ev)
            .context("the coordinator sent a malformed watch event")?;
        if let Some(state) = view.apply(&ev) {
            println!(
                "experiment {id}: {}",
                coordinator::progress::state_words(state)
            );
            if state != ExperimentState::Succeeded {
                bail!(
                    "experiment {id}: {} (`coordinator status {id}` shows every task)",
                    coordinator::progress::failure_text(state, &view.failures())
                );
            }
            return Ok(());
        }
    }
    bail!("the watch stream ended before the experiment finished")
}

fn print_status(s: &pb::StatusReply) {
    println!("agents:");
    for a in &s.agents {
        for d in &a.devices {
            println!(
                "  {:<20} {:<12} {:<32} {:>7}/{:>7} MiB free",
                a.agent_id, a.host, d.name, d.free_mib, d.total_mib
            );
        }
    }
    for e in &s.experiments {
        let state = pb::ExperimentStateKind::try_from(e.state).map_or("?", |k| k.as_str_name());
        println!(
            "experiment {} ({}) {state} → {}",
            e.experiment_id, e.name, e.output_dir
        );
        for t in &e.tasks {
            let st = pb::TaskStateKind::try_from(t.state).map_or("?", |k| k.as_str_name());
            println!(
                "  {:<32} {:<22} agent={:<16} attempt={} predictions={} est={} MiB {}",
                t.task_id, st, t.agent_id, t.attempt, t.predictions, t.estimate_mib, t.detail
            );
        }
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let env = shared::config::env_overrides_from(std::env::vars());
    let hosts = coordinator::server::live_http::AllowedHosts::new(&a.allowed_hosts)
        .map_err(anyhow::Error::msg)?;
    let planner = coordinator::prepare::ConfigPlanner {
        models_dir: a.models_dir.clone(),
        outputs_root: a.data_dir.join("outputs"),
        env,
        hub: hubclient::HubSettings::from_env(),
        cache: Some(coordinator::cache::PredictionCache::new(
            a.data_dir.join("predictions"),
        )),
    };
    let mut opts = ServeOptions::new(a.data_dir.clone(), std::sync::Arc::new(planner));
    opts.settings = a.sched.settings();
    opts.uploads.max_bytes = a.max_artifact_mib.max(1) << 20;
    opts.uploads.concurrent = a.max_uploads.max(1);
    opts.token = a.token.load()?;
    if opts.token.is_none() {
        tracing::warn!(
            "no token configured (SIZESPEC_TOKEN / --token-file): any client that reaches this port is trusted"
        );
    }
    opts.tls = a
        .tls_cert
        .clone()
        .zip(a.tls_key.clone())
        .map(|(cert, key)| TlsFiles {
            cert,
            key,
            client_ca: a.tls_client_ca.clone(),
        });
    let shutdown = shutdown_on_signals();
    let running = coordinator::server::start(listener, opts, shutdown.clone()).await?;
    if let Some(addr) = a.http_listen.as_deref().map(live_listen_addr) {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tokio::spawn(coordinator::server::live_http::serve_live_allowing(
            l,
            running.state.clone(),
            hosts,
            shutdown.clone(),
        ));
    }
    running.join.await??;
    Ok(())
}

/// Where `scripts/fetch-smollm2.sh` puts models when `SIZESPEC_MODELS` is not set.
fn default_models_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("sizespec").join("models")
}

async fn run(a: RunArgs) -> Result<()> {
    let env = shared::config::env_overrides_from(std::env::vars());
    let mut cfg = if a.offline {
        ExperimentConfig::offline_default().with_env_overrides(&env)?
    } else {
        let loaded = ExperimentConfig::load_layered(a.config.as_deref(), &env)?;
        if let Some(m) = &loaded.migration {
            eprintln!("{m}");
        }
        loaded.config
    };
    if let Some(o) = a.output {
        cfg.output = o;
    }
    if let Some(d) = &a.device {
        cfg.device = d.parse()?;
    }
    if let Some(n) = a.max_eval_samples {
        cfg.data.max_eval_samples = Some(n);
    }
    if let Some(scope) = a.experiment {
        cfg.experiment = scope;
    }
    cfg.validate()?;
    cfg.resolve_models_dir(&a.models_dir.clone().unwrap_or_else(default_models_dir));
    let agent_bin = a.agent_bin.unwrap_or_else(single_box::default_agent_bin);
    if a.dry_run {
        let target = plan_cli::local_target(&cfg, &agent_bin, a.card).await;
        return plan_cli::print_plan(cfg, target, a.json).await;
    }
    let devices = single_box::agent_devices(&cfg.device, &agent_bin).await?;
    let c = cfg.clone();
    let hub = hubclient::HubSettings::from_env();
    let use_cache = !a.no_cache;
    let plan = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut plan = coordinator::prepare::prepare(&c, &hub)?;
        if use_cache {
            coordinator::cache::PredictionCache::new(coordinator::cache::default_dir())
                .attach(&mut plan)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(plan)
    })
    .await??;
    let output = plan.output_dir.clone();
    eprintln!(
        "experiment {} → {} ({} tasks on {})",
        plan.id,
        output.display(),
        plan.tasks.len(),
        devices.join(", ")
    );
    let opts = SingleBoxOptions {
        agent_bin,
        devices,
        data_dir: output.join(".sizespec"),
        display: display(),
        settings: a.sched.settings(),
        http_listen: a.http_listen.as_deref().map(live_listen_addr),
    };
    let outcome = single_box::run(plan, opts, shutdown_on_signals()).await?;
    let state = outcome.state;
    println!("experiment: {}", coordinator::progress::state_words(state));
    let results = output.join("results.json");
    if let Ok(text) = std::fs::read_to_string(&results) {
        let r = shared::results::Results::from_json_str(&text, &results.display().to_string())?;
        println!(
            "{:<32} {:>8} {:>10} {:>10}",
            "model", "exact", "category", "macro-F1"
        );
        for (key, e) in &r.entries {
            println!(
                "{key:<32} {:>7.2}% {:>9.2}% {:>10.4}",
                100.0 * e.metrics.exact_match,
                100.0 * e.metrics.category_match,
                e.metrics.macro_f1
            );
        }
        println!("results: {}", results.display());
    }
    // Written with the outputs when the experiment ended; rebuilt here only if that failed.
    let report = output.join("report.html");
    if report.is_file() {
        println!("report: {}", report.display());
    } else if !a.no_report {
        match coordinator::report::build(&output) {
            Ok(p) => println!("report: {}", p.html.display()),
            Err(e) => eprintln!("report not built: {e}"),
        }
    }
    if state != ExperimentState::Succeeded {
        bail!(
            "{}\nsee {} and the agent logs in {}",
            coordinator::progress::failure_text(state, &outcome.failures),
            results.display(),
            output.join(".sizespec/agents").display()
        );
    }
    Ok(())
}

/// The config text `submit` sends: the file as written, unless it has the old shape (migrated
/// here, the report printed) or `--experiment` overrides its scope. Validation, environment
/// overrides and the models folder are the coordinator's.
fn submitted_config(path: &std::path::Path, scope: Option<ExperimentScope>) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let loaded = ExperimentConfig::load(path)?;
    if let Some(m) = &loaded.migration {
        eprintln!("{m}");
    }
    if loaded.migration.is_none() && scope.is_none() {
        return Ok(text);
    }
    let mut cfg = loaded.config;
    if let Some(scope) = scope {
        cfg.experiment = scope;
    }
    Ok(cfg.to_toml()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    match Cli::parse().command {
        Cmd::Serve(a) => serve(a).await,
        Cmd::Submit {
            config,
            watch: follow,
            experiment,
            no_cache,
            client: ca,
        } => {
            let text = submitted_config(&config, experiment)?;
            let mut c = client(&ca).await?;
            let r = c
                .submit(pb::SubmitRequest {
                    config_toml: text,
                    no_cache,
                })
                .await?
                .into_inner();
            println!("{}", r.experiment_id);
            if follow {
                watch(&mut c, &r.experiment_id).await?;
            }
            Ok(())
        }
        Cmd::Status {
            experiment,
            client: ca,
        } => {
            let s = client(&ca)
                .await?
                .status(pb::StatusRequest {
                    experiment_id: experiment.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_status(&s);
            Ok(())
        }
        Cmd::Watch {
            experiment,
            client: ca,
        } => watch(&mut client(&ca).await?, &experiment).await,
        Cmd::Results {
            experiment,
            download: Some(dir),
            client: ca,
        } => {
            let stream = client(&ca)
                .await?
                .download_results(pb::ResultsRequest {
                    experiment_id: experiment.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("results {experiment}: {}", s.message()))?
                .into_inner();
            let got = coordinator::results_download::receive(stream, &dir)
                .await
                .with_context(|| format!("downloading `{experiment}` into {}", dir.display()))?;
            println!(
                "{} files, {} bytes written to {}",
                got.files.len(),
                got.bytes,
                dir.display()
            );
            if got.files.iter().any(|f| f == "report.html") {
                println!("report: {}", dir.join("report.html").display());
            }
            Ok(())
        }
        Cmd::Results {
            experiment,
            download: None,
            client: ca,
        } => {
            let r = client(&ca)
                .await?
                .results(pb::ResultsRequest {
                    experiment_id: experiment,
                })
                .await?
                .into_inner();
            println!("{}", r.results_json);
            Ok(())
        }
        Cmd::Run(a) => run(a).await,
        Cmd::Plan(a) => plan_cli::plan(a).await,
        Cmd::Cache { command, dir } => cache_cli::cache_cmd(command, dir),
        Cmd::Report { dir } => {
            let paths = coordinator::report::build(&dir)?;
            println!("{}\n{}", paths.html.display(), paths.markdown.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_downloads_into_a_folder_only_when_asked() {
        let cli =
            Cli::try_parse_from(["coordinator", "results", "e1", "--download", "runs/e1"]).unwrap();
        let Cmd::Results {
            experiment,
            download,
            ..
        } = cli.command
        else {
            panic!("results")
        };
        assert_eq!(experiment, "e1");
        assert_eq!(download, Some(PathBuf::from("runs/e1")));
        let cli = Cli::try_parse_from(["coordinator", "results", "e1"]).unwrap();
        assert!(matches!(cli.command, Cmd::Results { download: None, .. }));
    }

    #[test]
    fn run_and_submit_take_the_experiment_scope() {
        let cli = Cli::try_parse_from(["coordinator", "run", "--offline", "--experiment", "llm"])
            .unwrap();
        let Cmd::Run(a) = cli.command else {
            panic!("run")
        };
        assert_eq!(a.experiment, Some(ExperimentScope::Llm));
        let cli = Cli::try_parse_from(["coordinator", "submit", "x.toml", "--experiment", "slm"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Submit {
                experiment: Some(ExperimentScope::Slm),
                ..
            }
        ));
        let err = Cli::try_parse_from(["coordinator", "run", "--experiment", "both"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("full"), "{err}");
    }

    #[test]
    fn submit_migrates_an_old_shape_config_and_applies_the_scope() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.toml");
        std::fs::write(
            &old,
            "baseline_llms = [\"x/Big-8B\"]\nslm_name = \"y/Small-3B\"\nnum_epochs = 2\n",
        )
        .unwrap();
        let text = submitted_config(&old, Some(ExperimentScope::Llm)).unwrap();
        let cfg = ExperimentConfig::from_toml_str(&text, "sent").unwrap();
        assert_eq!(cfg.experiment, ExperimentScope::Llm);
        assert_eq!(cfg.llm_models[0].name, "x/Big-8B");
        assert_eq!(cfg.slm_models[0].name, "y/Small-3B");
        assert_eq!(cfg.training.epochs, 2);
        // A new-shape file without a scope override travels as written.
        let new = dir.path().join("new.toml");
        let written = ExperimentConfig::offline_default().to_toml().unwrap();
        std::fs::write(&new, &written).unwrap();
        assert_eq!(submitted_config(&new, None).unwrap(), written);
    }
}
