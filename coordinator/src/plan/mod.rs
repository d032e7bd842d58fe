//! `coordinator plan` (and `run --dry-run`): what a run would do, without loading any model — the
//! data and what loading it gave, the split, the task graph with each task's memory estimate
//! against each known device, token lengths under each model's tokenizer where it is on this
//! machine, and wall-time estimates from measured throughputs ([`throughput`]).
pub mod devices;
mod render;
#[cfg(test)]
mod tests;
pub mod throughput;
pub mod tokens;

use crate::experiment::TaskPayload;
use crate::prepare::{PrepareError, load_data, prepare_loaded, shape_of};
use devices::KnownDevice;
use hubclient::HubSettings;
use serde::Serialize;
use shared::config::{DataSource, ExperimentConfig, ModelEntry};
use shared::dataset::LoadReport;
use shared::plan::MemoryEstimate;
use shared::results::HubDataset;
use shared::task::{ModelRole, Quantization, TaskKind};
use std::collections::{BTreeMap, BTreeSet};
use throughput::{CardEstimate, Work, WorkKind};
use tokens::TokenStats;

pub use render::text;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("{0}")]
    Throughput(String),
}

/// The data as the run would see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataSummary {
    /// The source in words (`embedded: 12 codes × 20 dialogues`, `medsynth_csv: /d/m.csv`).
    pub source: String,
    /// The loader's counts (rows kept, skipped and why, invalid codes); absent for the embedded
    /// dataset, which is generated rather than read.
    pub load: Option<LoadReport>,
    /// The hub file (commit, sha256) for a hub dataset.
    pub hub: Option<HubDataset>,
    pub records: usize,
    pub distinct_codes: usize,
    pub split: SplitSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSummary {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Training examples a finetune gets (`data.max_train_samples` applied).
    pub train_used: usize,
    /// Samples each evaluation gets (`data.max_eval_samples` applied).
    pub eval_samples: usize,
    pub train_codes: usize,
    pub test_codes: usize,
    /// Distinct codes of the test split that never occur in the train split.
    pub test_codes_unseen_in_train: usize,
    /// Evaluated samples whose code never occurs in the train split.
    pub eval_samples_with_unseen_code: usize,
    pub hash: String,
}

/// A task's memory estimate against one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub agent: String,
    pub device: String,
    /// `None` when the device's memory is unknown.
    pub fits_free: Option<bool>,
    pub fits_total: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    pub id: String,
    pub kind: TaskKind,
    pub model: String,
    pub depends_on: Vec<String>,
    pub estimate_mib: u64,
    /// The estimate term by term (absent when the model's shape is unknown).
    pub estimate_terms: Option<MemoryEstimate>,
    /// Samples (evaluation) or training examples (finetune) in its payload.
    pub rows: usize,
    pub fits: Vec<Fit>,
}

/// Everything `plan` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    /// The experiment id a run of this config gets (resubmitting resumes it).
    pub experiment: String,
    pub output_dir: String,
    pub data: DataSummary,
    pub tasks: Vec<TaskSummary>,
    /// Where the devices come from (`local devices (single box)`, `agents of URL`).
    pub devices_from: String,
    pub devices: Vec<KnownDevice>,
    pub tokens: Vec<TokenStats>,
    /// One per distinct device name (and per `--card`).
    pub estimates: Vec<CardEstimate>,
    pub notes: Vec<String>,
}

/// What `plan` is checked against.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub devices_from: String,
    pub devices: Vec<KnownDevice>,
    /// Card kinds named by `--card` (estimated and checked as empty cards of the table's memory).
    pub cards: Vec<String>,
    pub notes: Vec<String>,
}

fn source_words(s: &DataSource) -> String {
    match s {
        DataSource::Embedded { codes, per_code } => format!(
            "embedded: {} codes × {per_code} dialogues",
            codes.map_or_else(|| "all".to_string(), |c| c.to_string())
        ),
        DataSource::MedsynthCsv { path } => format!("medsynth_csv: {}", path.display()),
        DataSource::Jsonl { path } => format!("jsonl: {}", path.display()),
        DataSource::MedsynthHub {
            repo,
            file,
            revision,
        } => format!(
            "medsynth_hub: {repo} {file} @ {}",
            revision.as_deref().unwrap_or("main")
        ),
    }
}

fn fits(estimate: u64, d: &KnownDevice) -> Fit {
    Fit {
        agent: d.agent.clone(),
        device: d.device.clone(),
        fits_free: d.free_mib.map(|f| estimate <= f),
        fits_total: d.total_mib.map(|t| estimate <= t),
    }
}

/// Builds the report for `cfg` (already validated, models folder resolved). Blocking: loads the
/// dataset (a hub dataset through the hub cache) and reads tokenizers; loads no model.
pub fn build(
    cfg: &ExperimentConfig,
    hub: &HubSettings,
    target: Target,
) -> Result<PlanReport, PlanError> {
    let data = load_data(cfg, hub)?;
    let split = shared::split::split(&data.records, &cfg.data.split).map_err(PrepareError::from)?;
    let plan = prepare_loaded(cfg, hub, &data.records, data.hub.clone())?;
    let planned = shared::plan::plan(cfg, &|e: &ModelEntry| shape_of(e, hub));
    let mut notes = target.notes.clone();
    notes.extend(planned.notes.iter().cloned());

    let codes = |rs: &[shared::dataset::Record]| -> BTreeSet<String> {
        rs.iter().map(|r| r.code.clone()).collect()
    };
    let train_codes = codes(&split.train);
    let test_codes = codes(&split.test);
    let eval = split.eval_samples(cfg.data.max_eval_samples);
    let train_used: Vec<_> = match cfg.data.max_train_samples {
        Some(n) => split.train.iter().take(n).cloned().collect(),
        None => split.train.clone(),
    };
    let summary = DataSummary {
        source: source_words(&cfg.data.source),
        load: data.report.clone(),
        hub: data.hub.clone(),
        records: data.records.len(),
        distinct_codes: codes(&data.records).len(),
        split: SplitSummary {
            train: split.train.len(),
            validation: split.validation.len(),
            test: split.test.len(),
            train_used: train_used.len(),
            eval_samples: eval.len(),
            train_codes: train_codes.len(),
            test_codes: test_codes.len(),
            test_codes_unseen_in_train: test_codes.difference(&train_codes).count(),
            eval_samples_with_unseen_code: eval
                .iter()
                .filter(|r| !train_codes.contains(&r.code))
                .count(),
            hash: split.hash.clone(),
        },
    };

    let mut devices = target.devices.clone();
    let table = throughput::table().map_err(PlanError::Throughput)?;
    for c in &target.cards {
        match devices::named_card(&table, c) {
            Some(d) => devices.push(d),
            None => notes.push(format!(
                "--card {c}: unknown card (shared/data/throughput.toml has {})",
                table
                    .card
                    .iter()
                    .map(|c| c.card.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    let tasks: Vec<TaskSummary> = plan
        .tasks
        .iter()
        .map(|t| TaskSummary {
            id: t.spec.id.0.clone(),
            kind: t.spec.kind,
            model: t.spec.model.name.clone(),
            depends_on: t.spec.depends_on.iter().map(|d| d.0.clone()).collect(),
            estimate_mib: t.spec.estimate_mib,
            estimate_terms: planned.estimates.get(&t.spec.id).copied(),
            rows: match &t.payload {
                TaskPayload::Evaluate(p) => p.samples.len(),
                TaskPayload::Finetune(p) => p.train.len(),
            },
            fits: devices
                .iter()
                .map(|d| fits(t.spec.estimate_mib, d))
                .collect(),
        })
        .collect();

    // Token statistics once per model; a model that is finetuned is counted over its examples.
    let mut token_stats: BTreeMap<String, TokenStats> = BTreeMap::new();
    for t in &plan.tasks {
        let Some(entry) = entry_of(cfg, &t.spec.model.name, t.spec.model.role) else {
            continue;
        };
        let finetuned = plan
            .tasks
            .iter()
            .any(|f| f.spec.kind == TaskKind::Finetune && f.spec.model.name == entry.name);
        token_stats.entry(entry.name.clone()).or_insert_with(|| {
            tokens::stats(cfg, entry, hub, finetuned.then_some(&train_used[..]), eval)
        });
    }

    let work: Vec<Work> = plan
        .tasks
        .iter()
        .map(|t| {
            let class = size_billions(cfg, &t.spec.model.name, t.spec.model.role, hub)
                .and_then(throughput::size_class);
            let kind = match &t.payload {
                TaskPayload::Evaluate(p) => WorkKind::Eval {
                    samples: p.samples.len(),
                    q4: t.spec.model.quantization == Quantization::Q4,
                },
                TaskPayload::Finetune(_) => WorkKind::Finetune {
                    epochs: cfg.training.epochs,
                    tokens: token_stats
                        .get(&t.spec.model.name)
                        .and_then(|s| s.train_tokens_per_epoch),
                },
            };
            Work {
                task: t.spec.id.0.clone(),
                class,
                kind,
            }
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for d in &devices {
        if !names.contains(&d.name) {
            names.push(d.name.clone());
        }
    }
    let estimates = names
        .iter()
        .map(|n| throughput::estimate(&table, n, &work))
        .collect();

    Ok(PlanReport {
        experiment: plan.id.0.clone(),
        output_dir: plan.output_dir.display().to_string(),
        data: summary,
        tasks,
        devices_from: target.devices_from,
        devices,
        tokens: token_stats.into_values().collect(),
        estimates,
        notes,
    })
}

fn entry_of<'a>(cfg: &'a ExperimentConfig, name: &str, role: ModelRole) -> Option<&'a ModelEntry> {
    let list = match role {
        ModelRole::Llm => &cfg.llm_models,
        ModelRole::Slm => &cfg.slm_models,
    };
    list.iter().find(|m| m.name == name)
}

/// Parameters in billions: from the model's shape where known, else its size label.
fn size_billions(
    cfg: &ExperimentConfig,
    name: &str,
    role: ModelRole,
    hub: &HubSettings,
) -> Option<f64> {
    let entry = entry_of(cfg, name, role)?;
    match shape_of(entry, hub) {
        Some(s) => Some(s.params() as f64 / 1e9),
        None => shared::plan::size_in_billions(&entry.size).map(|(b, _)| b),
    }
}
