//! `agent` command line: serve one device (`cpu` or `cuda:N`) to a coordinator.
use agent::probe::{DeviceChoice, Probe, SystemProbe};
use agent::rpc::runner::TaskRunner;
use agent::rpc::session::{self, AgentConfig};
use agent::rpc::worker_runner::WorkerRunner;
use agent::rpc::{ClientTls, Connection};
use agent::worker::DeviceSpec;
use anyhow::{Context, Result, bail};
use clap::Parser;
use shared::config::ExperimentConfig;
use shared::task::AgentId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// mimalloc keeping freed pages: candle allocates a buffer per op (`engine::alloc`).
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "sizespec agent: runs finetune and evaluation tasks for a coordinator on one device"
)]
struct Cli {
    /// Coordinator URL (`https://` for TLS).
    #[arg(
        long,
        env = "SIZESPEC_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// The device this agent serves: `cpu` or `cuda:N`.
    #[arg(long, env = "SIZESPEC_AGENT_DEVICE", default_value = "cpu")]
    device: DeviceChoice,
    /// Stable name for this agent (default: `<host>-<device>`).
    #[arg(long, env = "SIZESPEC_AGENT_ID")]
    agent_id: Option<String>,
    /// Where adapters and checkpoints are written.
    #[arg(long, env = "SIZESPEC_WORK_DIR", default_value = "sizespec-agent")]
    work_dir: PathBuf,
    /// Shared token (prefer --token-file: a flag shows up in `ps`).
    #[arg(long, env = "SIZESPEC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "SIZESPEC_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "SIZESPEC_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This agent's certificate and key (PEM) for mutual TLS.
    #[arg(long, env = "SIZESPEC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SIZESPEC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Server name to verify (default: the URL's host).
    #[arg(long, env = "SIZESPEC_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Report at most this much memory (MiB), e.g. a CPU agent sharing its box.
    #[arg(long, env = "SIZESPEC_MEMORY_LIMIT_MIB")]
    memory_limit_mib: Option<u64>,
    /// Print the devices this machine offers (`cpu`, `cuda:N`) one per line and exit.
    #[arg(long)]
    list_devices: bool,
    /// Fetch every model of this experiment config (TOML) into the local hub cache (`HF_HOME` or
    /// `HF_HUB_CACHE`, `HF_TOKEN` for gated models), check that local model paths exist, and exit.
    #[arg(long, value_name = "CONFIG")]
    prefetch: Option<PathBuf>,
    /// With `--prefetch`: the folder that replaces `${SIZESPEC_MODELS}` in model names, as the
    /// coordinator's `--models-dir` (default: `$SIZESPEC_MODELS`, else `~/.cache/sizespec/models`).
    #[arg(long, env = "SIZESPEC_MODELS")]
    models_dir: Option<PathBuf>,
}

/// `--prefetch`: resolves each model of the config the way a task would (a hub id is downloaded
/// into the hub cache unless `HF_HUB_OFFLINE` is set), so agents sharing that cache start warm.
fn prefetch(config: &Path, models_dir: Option<PathBuf>) -> Result<()> {
    let env = shared::config::env_overrides_from(std::env::vars());
    let mut cfg = ExperimentConfig::load_layered(Some(config), &env)?.config;
    let models_dir = models_dir
        .or_else(|| std::env::var_os("SIZESPEC_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("sizespec").join("models")
        });
    cfg.resolve_models_dir(&models_dir);
    // A model in both roles (or listed twice) is fetched once.
    let models: std::collections::BTreeSet<(&str, Option<&str>)> = cfg
        .llm_models
        .iter()
        .chain(&cfg.slm_models)
        .map(|m| (m.name.as_str(), m.revision.as_deref()))
        .collect();
    let mut failed = Vec::new();
    for &(name, rev) in &models {
        match engine::load::resolve(name, rev) {
            Ok(src) => println!("{name}: {}", src.path().display()),
            Err(e) => {
                eprintln!("{name}: {e}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{}: {} of {} models not available: {}",
            config.display(),
            failed.len(),
            models.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Ctrl-C or SIGTERM: the running job checkpoints at its next step and is reported, then exit.
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
        tracing::info!("shutting down: finishing the current step");
        t.cancel();
    });
    token
}

fn main() -> Result<()> {
    // The CUDA driver reads its JIT-cache settings when it initialises: unless the user set them,
    // candle's kernels (PTX, compiled by the driver at first use) are cached in the kernel cache
    // folder with room for every model's kernels (`engine::gpu::kernel_cache`).
    for (name, value) in engine::gpu::kernel_cache::driver_cache_defaults() {
        // SAFETY: no other thread exists yet (the runtime starts below), so nothing reads the
        // environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(name, value)
        };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

/// Opens the CUDA device `ordinal` once more and runs [`engine::gpu::warm_up`] on it: the kernel
/// modules are loaded (compiled, or read from the caches) and cuBLAS initialised before the agent
/// registers, so the first task does not pay for them.
async fn warm_up(ordinal: usize) -> Result<()> {
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        let dev = engine::gpu::open_cuda(ordinal)?;
        engine::gpu::warm_up(&dev)
    })
    .await
    .context("warm-up thread")?
    .with_context(|| format!("warming up cuda:{ordinal}"))?;
    tracing::info!("warm-up took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn run() -> Result<()> {
    engine::alloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIZESPEC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.list_devices {
        println!("cpu");
        for i in agent::probe::list_cuda() {
            println!("cuda:{i}");
        }
        return Ok(());
    }
    if let Some(config) = cli.prefetch {
        let dir = cli.models_dir;
        return tokio::task::spawn_blocking(move || prefetch(&config, dir)).await?;
    }
    let token = proto::auth::load_token(cli.token.as_deref(), cli.token_file.as_deref())?;
    let tls =
        (cli.coordinator.starts_with("https://") || cli.tls_ca.is_some()).then(|| ClientTls {
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
            domain: cli.tls_domain.clone(),
        });
    let host = host_name();
    let device_label = match cli.device {
        DeviceChoice::Cpu => "cpu".to_string(),
        DeviceChoice::Cuda(i) => format!("cuda{i}"),
    };
    let probe: Arc<dyn Probe> = Arc::new(SystemProbe::new(cli.device, cli.memory_limit_mib)?);
    let report = probe.device()?;
    tracing::info!(device = %report.name, total_mib = report.total_mib, free_mib = report.free_mib, "device");
    let spec = match cli.device {
        DeviceChoice::Cpu => DeviceSpec::Cpu,
        DeviceChoice::Cuda(i) => DeviceSpec::Cuda(i as usize),
    };
    let runner: Arc<dyn TaskRunner> = Arc::new(
        WorkerRunner::spawn(spec)
            .with_context(|| format!("opening {spec} (a CUDA device needs the `cuda` build)"))?,
    );
    if let DeviceSpec::Cuda(i) = spec {
        warm_up(i).await?;
    }
    let cfg = AgentConfig {
        agent_id: AgentId(
            cli.agent_id
                .unwrap_or_else(|| format!("{host}-{device_label}")),
        ),
        host,
        connection: Connection {
            url: cli.coordinator,
            token,
            tls,
        },
        work_dir: cli.work_dir,
    };
    session::run(cfg, probe, runner, shutdown_on_signals()).await?;
    Ok(())
}
