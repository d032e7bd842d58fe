//! `coordinator plan` and `run --dry-run`: the arguments, where the devices come from (local ones,
//! or a running coordinator's agents through its status RPC), and the printing.
use crate::{ClientArgs, TokenArgs, client, default_models_dir};
use anyhow::{Context, Result};
use clap::Args;
use coordinator::single_box;
use proto::pb;
use shared::config::{ExperimentConfig, ExperimentScope};
use std::path::PathBuf;

#[derive(Args)]
pub struct PlanArgs {
    /// Experiment config (TOML, or the old shape); defaults apply when omitted.
    config: Option<PathBuf>,
    /// Plan the offline default instead of a file.
    #[arg(long, conflicts_with = "config")]
    offline: bool,
    /// Cap the evaluated test samples (overrides `data.max_eval_samples`).
    #[arg(long)]
    max_eval_samples: Option<usize>,
    /// Devices (overrides `device`), as for `run`.
    #[arg(long)]
    device: Option<String>,
    /// Which tasks run (overrides `experiment`): full, llm or slm.
    #[arg(long)]
    experiment: Option<ExperimentScope>,
    /// Folder that replaces `${SIZESPEC_MODELS}` in model names (as for `run`).
    #[arg(long, env = "SIZESPEC_MODELS")]
    models_dir: Option<PathBuf>,
    /// The agent binary that lists the local devices (as for `run`).
    #[arg(long, env = "SIZESPEC_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Check against the agents of this running coordinator instead of the local devices.
    #[arg(long)]
    coordinator: Option<String>,
    #[command(flatten)]
    token: TokenArgs,
    /// Also estimate for this card kind (e.g. H100, H200); repeatable.
    #[arg(long)]
    card: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

/// The local devices `run` would use; an agent binary that cannot list them leaves the list empty
/// with a note (planning needs no agent).
pub async fn local_target(
    cfg: &ExperimentConfig,
    agent_bin: &std::path::Path,
    cards: Vec<String>,
) -> coordinator::plan::Target {
    let mut notes = Vec::new();
    let devices = match single_box::agent_devices(&cfg.device, agent_bin).await {
        Ok(d) => coordinator::plan::devices::local(&d, &mut notes),
        Err(e) => {
            notes.push(format!("local devices unknown: {e}"));
            Vec::new()
        }
    };
    coordinator::plan::Target {
        devices_from: "local devices (single box)".into(),
        devices,
        cards,
        notes,
    }
}

/// The devices a running coordinator's agents registered (its status RPC).
async fn remote_target(a: &PlanArgs, url: &str) -> Result<coordinator::plan::Target> {
    let ca = ClientArgs {
        coordinator: url.to_string(),
        token: TokenArgs {
            token: a.token.token.clone(),
            token_file: a.token.token_file.clone(),
        },
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        tls_domain: None,
    };
    let s = client(&ca)
        .await?
        .status(pb::StatusRequest {
            experiment_id: String::new(),
        })
        .await
        .with_context(|| format!("status of {url}"))?
        .into_inner();
    let devices = s
        .agents
        .iter()
        .flat_map(|ag| {
            ag.devices
                .iter()
                .map(|d| coordinator::plan::devices::KnownDevice {
                    agent: ag.agent_id.clone(),
                    device: d.uuid.clone(),
                    name: d.name.clone(),
                    total_mib: Some(d.total_mib),
                    free_mib: Some(d.free_mib),
                })
        })
        .collect();
    Ok(coordinator::plan::Target {
        devices_from: format!("agents of {url}"),
        devices,
        cards: a.card.clone(),
        notes: Vec::new(),
    })
}

pub async fn print_plan(
    cfg: ExperimentConfig,
    target: coordinator::plan::Target,
    json: bool,
) -> Result<()> {
    let hub = hubclient::HubSettings::from_env();
    let report =
        tokio::task::spawn_blocking(move || coordinator::plan::build(&cfg, &hub, target)).await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", coordinator::plan::text(&report));
    }
    Ok(())
}

pub async fn plan(a: PlanArgs) -> Result<()> {
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
    let target = match &a.coordinator {
        Some(url) => remote_target(&a, url).await?,
        None => {
            let bin = a
                .agent_bin
                .clone()
                .unwrap_or_else(single_box::default_agent_bin);
            local_target(&cfg, &bin, a.card.clone()).await
        }
    };
    print_plan(cfg, target, a.json).await
}
