//! Single-box mode (`coordinator run`): the coordinator in-process on 127.0.0.1, one `agent`
//! process per local device (a fresh process per agent keeps each model's memory in its own
//! address space), a random token between them, progress bars until the experiment ends.
use crate::experiment::ExperimentPlan;
use crate::prepare::Planner;
use crate::progress::{Display, ProgressView};
use crate::server::ServeOptions;
use crate::state::Command;
use crate::state::core::{ExperimentState, Settings};
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SingleBoxError {
    #[error(
        "agent binary {path}: {source} (build it with `cargo build -p agent`, or pass --agent-bin)"
    )]
    AgentBinary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{bin} --list-devices` failed: {why}")]
    ListDevices { bin: PathBuf, why: String },
    #[error("no CUDA device found (device = \"cuda\"); use `--device cpu` or check the driver")]
    NoCuda,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error("the coordinator stopped before the experiment finished")]
    Stopped,
    #[error("interrupted; the journal in {0} lets `run` resume where it stopped")]
    Interrupted(PathBuf),
}

/// The agent binary beside this executable (`target/<profile>/agent` next to `coordinator`).
pub fn default_agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name(if cfg!(windows) { "agent.exe" } else { "agent" })
}

/// `--device` arguments for the agents: `cpu`, or `cuda:N` per selected GPU.
pub async fn agent_devices(
    selection: &shared::config::DeviceSelection,
    agent_bin: &Path,
) -> Result<Vec<String>, SingleBoxError> {
    use shared::config::DeviceSelection as D;
    let gpus = || async {
        let out = tokio::process::Command::new(agent_bin)
            .arg("--list-devices")
            .output()
            .await
            .map_err(|source| SingleBoxError::AgentBinary {
                path: agent_bin.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            return Err(SingleBoxError::ListDevices {
                bin: agent_bin.to_path_buf(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cuda:"))
            .map(str::to_string)
            .collect::<Vec<_>>())
    };
    Ok(match selection {
        D::Cpu => vec!["cpu".into()],
        D::Cuda(list) => list.iter().map(|n| format!("cuda:{n}")).collect(),
        D::AllCuda => {
            let g = gpus().await?;
            if g.is_empty() {
                return Err(SingleBoxError::NoCuda);
            }
            g
        }
        D::Auto => {
            let g = gpus().await?;
            if g.is_empty() { vec!["cpu".into()] } else { g }
        }
    })
}

/// How `run` goes about it.
pub struct SingleBoxOptions {
    pub agent_bin: PathBuf,
    /// `--device` per agent process.
    pub devices: Vec<String>,
    /// Journal, artifacts, agent work dirs and logs.
    pub data_dir: PathBuf,
    pub display: Display,
    pub settings: Settings,
    /// Serve the live page here while the experiment runs.
    pub http_listen: Option<String>,
}

/// Planning happened before: `Submit` is never called in single-box mode.
struct NoPlanner;

impl Planner for NoPlanner {
    fn plan(&self, _config_toml: &str) -> Result<ExperimentPlan, String> {
        Err("single-box mode runs one experiment; submit to a `coordinator serve` instead".into())
    }
}

/// How a single-box run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub state: ExperimentState,
    /// The tasks that failed, each with its error, in plan order.
    pub failures: Vec<(String, String)>,
}

/// Runs `plan` to the end; returns its final state. Ctrl-C / SIGTERM (`interrupt`) stops the
/// agents gracefully (they checkpoint) and leaves the journal for a resume.
pub async fn run(
    plan: ExperimentPlan,
    opts: SingleBoxOptions,
    interrupt: CancellationToken,
) -> Result<RunOutcome, SingleBoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| SingleBoxError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })?;
    let mut token_bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut token_bytes);
    let token = hex::encode(token_bytes);
    let mut serve = ServeOptions::new(opts.data_dir.clone(), Arc::new(NoPlanner));
    serve.settings = opts.settings.clone();
    serve.token = proto::auth::Token::new(&token);
    let stop = CancellationToken::new();
    let running = crate::server::start(listener, serve, stop.clone()).await?;
    let url = format!("http://{}", running.addr);
    if let Some(addr) = &opts.http_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SingleBoxError::Io {
                path: PathBuf::from(addr),
                source,
            })?;
        tokio::spawn(crate::server::live_http::serve_live(
            l,
            running.state.clone(),
            stop.clone(),
        ));
    }

    let logs = opts.data_dir.join("agents");
    std::fs::create_dir_all(&logs).map_err(|source| SingleBoxError::Io {
        path: logs.clone(),
        source,
    })?;
    let mut children = Vec::new();
    for dev in &opts.devices {
        let name = format!("local-{}", dev.replace(':', ""));
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|source| SingleBoxError::Io {
            path: log_path.clone(),
            source,
        })?;
        let err = log.try_clone().map_err(|source| SingleBoxError::Io {
            path: log_path.clone(),
            source,
        })?;
        let child = tokio::process::Command::new(&opts.agent_bin)
            .args(["--coordinator", &url, "--device", dev, "--agent-id", &name])
            .arg("--work-dir")
            .arg(logs.join(&name))
            .env("SIZESPEC_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SingleBoxError::AgentBinary {
                path: opts.agent_bin.clone(),
                source,
            })?;
        tracing::info!(device = %dev, log = %log_path.display(), "agent started");
        children.push(child);
    }

    let id = running
        .state
        .submit(plan)
        .await
        .map_err(|_| SingleBoxError::Stopped)?;
    let (snapshot, mut rx) = running
        .state
        .ask(|reply| Command::Watch {
            experiment: id,
            reply,
        })
        .await
        .map_err(|_| SingleBoxError::Stopped)?
        .map_err(|_| SingleBoxError::Stopped)?;
    let mut view = ProgressView::new(opts.display);
    let mut outcome = snapshot.iter().find_map(|e| view.apply(e));
    let mut ticks = tokio::time::interval(crate::progress::LINE_INTERVAL);
    while outcome.is_none() {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => outcome = view.apply(&ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = ticks.tick() => view.tick(),
            _ = interrupt.cancelled() => break,
        }
    }
    // Agents first (SIGTERM: they checkpoint and report), then the server.
    for c in &mut children {
        terminate(c).await;
    }
    stop.cancel();
    let _ = running.join.await;
    match outcome {
        Some(state) => Ok(RunOutcome {
            state,
            failures: view.failures(),
        }),
        None if interrupt.is_cancelled() => Err(SingleBoxError::Interrupted(opts.data_dir)),
        None => Err(SingleBoxError::Stopped),
    }
}

/// SIGTERM, a grace period for the checkpoint, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // `kill -TERM` rather than libc: no unsafe code for one signal.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
