//! From an experiment config to a runnable [`ExperimentPlan`]: load the dataset once (a hub dataset
//! through the hub cache, [`crate::hub_data`]), make the seeded split, plan the tasks
//! (`shared::plan`) and attach each task's payload.
use crate::experiment::{ExperimentId, ExperimentPlan, PlannedTask, TaskPayload};
use crate::hub_data::HubDataError;
use hubclient::HubSettings;
use sha2::{Digest, Sha256};
use shared::config::{DataSource, ExperimentConfig, ModelEntry};
use shared::dataset::{LoadOptions, LoadReport, Record};
use shared::plan::{ModelShape, known_shape};
use shared::results::HubDataset;
use shared::task::{EvalPayload, FinetunePayload, TaskKind};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Config(#[from] shared::config::ConfigError),
    #[error(transparent)]
    Dataset(#[from] shared::dataset::DatasetError),
    #[error(transparent)]
    Split(#[from] shared::split::SplitError),
    #[error(transparent)]
    Hub(#[from] HubDataError),
    #[error("the dataset has no records after loading")]
    EmptyDataset,
}

/// The records the config names and what loading them gave.
#[derive(Debug, Clone)]
pub struct LoadedData {
    pub records: Vec<Record>,
    /// The loader's counts (rows kept, skipped and why); `None` for the embedded dataset, which
    /// is generated, not read.
    pub report: Option<LoadReport>,
    /// For a hub dataset: which file, commit and content.
    pub hub: Option<HubDataset>,
}

/// Loads the records the config names, with the loader's report and, for a hub dataset, which
/// file, commit and content.
pub fn load_data(cfg: &ExperimentConfig, hub: &HubSettings) -> Result<LoadedData, PrepareError> {
    let opts = LoadOptions {
        invalid_codes: cfg.data.invalid_codes,
    };
    let mut provenance = None;
    let (records, report) = match &cfg.data.source {
        DataSource::Embedded { codes, per_code } => {
            (shared::embedded::embedded_subset(*codes, *per_code), None)
        }
        DataSource::MedsynthCsv { path } | DataSource::Jsonl { path } => {
            let loaded = shared::dataset::load_path(path, &opts)?;
            tracing::info!(path = %path.display(), kept = loaded.records.len(), "dataset loaded");
            (loaded.records, Some(loaded.report))
        }
        DataSource::MedsynthHub {
            repo,
            file,
            revision,
        } => {
            let (path, from) =
                crate::hub_data::fetch_dataset(repo, file, revision.as_deref(), hub)?;
            let loaded = shared::dataset::load_path(&path, &opts)?;
            tracing::info!(path = %path.display(), kept = loaded.records.len(), "dataset loaded");
            provenance = Some(from);
            (loaded.records, Some(loaded.report))
        }
    };
    if records.is_empty() {
        return Err(PrepareError::EmptyDataset);
    }
    Ok(LoadedData {
        records,
        report,
        hub: provenance,
    })
}

/// A model's shape: its local `config.json` if the name is an HF folder, else the known shapes,
/// else (a hub id) the `config.json` in the hub cache or fetched from the hub.
pub(crate) fn shape_of(entry: &ModelEntry, hub: &HubSettings) -> Option<ModelShape> {
    let cfg = Path::new(&entry.name).join("config.json");
    if let Ok(text) = std::fs::read_to_string(&cfg) {
        match ModelShape::from_hf_config_json(&text, &cfg.display().to_string()) {
            Ok(s) => return Some(s),
            Err(e) => tracing::warn!(error = %e, "falling back to the known shapes"),
        }
    }
    known_shape(&entry.name).or_else(|| crate::hub_data::model_shape(entry, hub))
}

/// `[A-Za-z0-9._-]` only, so the id is safe in paths and artifact names.
fn safe(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if t.is_empty() || t.starts_with('.') {
        format!("x{t}")
    } else {
        t
    }
}

/// The plan for `cfg`. The id hashes the resolved config and the split, so resubmitting the same
/// experiment resumes it. `hub`: where the hub cache is and whether the hub may be contacted (for
/// a hub dataset and the shapes of hub models).
pub fn prepare(cfg: &ExperimentConfig, hub: &HubSettings) -> Result<ExperimentPlan, PrepareError> {
    let data = load_data(cfg, hub)?;
    prepare_loaded(cfg, hub, &data.records, data.hub)
}

/// [`prepare`] on records already loaded (`coordinator plan` loads once and reports on the load).
pub fn prepare_loaded(
    cfg: &ExperimentConfig,
    hub: &HubSettings,
    records: &[Record],
    dataset: Option<HubDataset>,
) -> Result<ExperimentPlan, PrepareError> {
    let config_toml = cfg.to_toml()?;
    let split = shared::split::split(records, &cfg.data.split)?;
    let eval_samples = split.eval_samples(cfg.data.max_eval_samples).to_vec();
    let train: Vec<Record> = match cfg.data.max_train_samples {
        Some(n) => split.train.iter().take(n).cloned().collect(),
        None => split.train.clone(),
    };
    // Each model's shape once (the plan asks per task; a hub model's costs a request).
    let shapes = RefCell::new(BTreeMap::new());
    let planned = shared::plan::plan(cfg, &|e: &ModelEntry| {
        *shapes
            .borrow_mut()
            .entry((e.name.clone(), e.revision.clone()))
            .or_insert_with(|| shape_of(e, hub))
    });
    for note in &planned.notes {
        tracing::warn!(note = %note, "plan");
    }
    let tasks = planned
        .tasks
        .iter()
        .map(|spec| {
            let payload = match spec.kind {
                TaskKind::Evaluate => TaskPayload::Evaluate(EvalPayload {
                    samples: eval_samples.clone(),
                    prompt: cfg.prompt.clone(),
                    generation: cfg.generation.clone(),
                    // Filled in at offer time from the finetune's uploaded adapter.
                    adapter: None,
                }),
                TaskKind::Finetune => TaskPayload::Finetune(FinetunePayload {
                    train: train.clone(),
                    validation: split.validation.clone(),
                    prompt: cfg.prompt.clone(),
                    lora: cfg.lora.clone(),
                    training: cfg.training.clone(),
                }),
            };
            PlannedTask {
                spec: spec.clone(),
                payload,
            }
        })
        .collect();
    let digest = hex::encode(Sha256::digest(
        format!("{config_toml}\n{}", split.hash).as_bytes(),
    ));
    Ok(ExperimentPlan {
        id: ExperimentId(format!("{}-{}", safe(&cfg.name), &digest[..8])),
        name: cfg.name.clone(),
        config_toml,
        output_dir: cfg.output.clone(),
        split_hash: split.hash.clone(),
        train_code_counts: split.train_code_counts(),
        result_keys: planned.result_keys.clone(),
        tasks,
        dataset,
        cache: None,
    })
}

/// Turns an experiment TOML into a plan (loads the data, splits it, plans the tasks). Blocking.
/// `serve` plans each submitted config through one; tests plan a fixed experiment.
pub trait Planner: Send + Sync + 'static {
    fn plan(&self, config_toml: &str) -> Result<ExperimentPlan, String>;

    /// [`Planner::plan`] reading the prediction cache unless `use_cache` is false (`submit
    /// --no-cache`); a planner without a cache plans the same either way.
    fn plan_with_cache(
        &self,
        config_toml: &str,
        use_cache: bool,
    ) -> Result<ExperimentPlan, String> {
        let _ = use_cache;
        self.plan(config_toml)
    }
}

/// The planner `serve` uses for `Submit`: parses the TOML (plus `SIZESPEC_*` overrides taken when
/// the server started) and resolves the models folder placeholder. A submitted config does not
/// choose where outputs go: every experiment writes to `<outputs_root>/<experiment id>` (ids are
/// path-safe and distinct per experiment), whatever its `output` says — a client must not make
/// the coordinator write to `/etc/…` or `../../…`, and two experiments never share a folder.
pub struct ConfigPlanner {
    pub models_dir: Option<PathBuf>,
    /// Parent of every experiment's output folder (`serve`: `<data dir>/outputs`).
    pub outputs_root: PathBuf,
    pub env: std::collections::BTreeMap<String, String>,
    /// The hub settings (`HF_*`) taken when the server started.
    pub hub: HubSettings,
    /// The prediction cache submitted experiments read and fill (`None`: no cache).
    pub cache: Option<crate::cache::PredictionCache>,
}

impl Planner for ConfigPlanner {
    fn plan(&self, config_toml: &str) -> Result<ExperimentPlan, String> {
        self.plan_with_cache(config_toml, true)
    }

    fn plan_with_cache(
        &self,
        config_toml: &str,
        use_cache: bool,
    ) -> Result<ExperimentPlan, String> {
        let cfg = ExperimentConfig::from_toml_str(config_toml, "submitted config")
            .map_err(|e| e.to_string())?;
        let mut cfg = cfg
            .with_env_overrides(&self.env)
            .map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        match &self.models_dir {
            Some(dir) => cfg.resolve_models_dir(dir),
            None => {
                let placeholder = shared::config::MODELS_DIR_PLACEHOLDER;
                if let Some(m) = cfg
                    .llm_models
                    .iter()
                    .chain(&cfg.slm_models)
                    .find(|m| m.name.contains(placeholder))
                {
                    return Err(format!(
                        "model `{}` uses {placeholder}, but this coordinator has no models folder: \
                         start `coordinator serve` with --models-dir DIR (or SIZESPEC_MODELS=DIR), \
                         or name the model by path or hub id",
                        m.name
                    ));
                }
            }
        }
        let requested = cfg.output.clone();
        let mut plan = prepare(&cfg, &self.hub).map_err(|e| e.to_string())?;
        plan.output_dir = self.outputs_root.join(&plan.id.0);
        tracing::info!(
            experiment = %plan.id,
            output = %plan.output_dir.display(),
            config_output = %requested.display(),
            "outputs go under the coordinator's data dir (a submitted config's `output` is not used)"
        );
        if let Some(c) = self.cache.as_ref().filter(|_| use_cache) {
            c.attach(&mut plan)?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty cache that may not be left (these configs need no hub).
    fn no_hub() -> HubSettings {
        let mut h = HubSettings::new("/nonexistent/hub-cache");
        h.access = hubclient::HubAccess::Offline;
        h
    }

    #[test]
    fn the_offline_config_plans_with_payloads_and_a_stable_id() {
        let cfg = ExperimentConfig::offline_default();
        let text = cfg.to_toml().unwrap();
        let planner = ConfigPlanner {
            models_dir: Some(PathBuf::from("/models")),
            outputs_root: PathBuf::from("/data/outputs"),
            env: Default::default(),
            hub: no_hub(),
            cache: None,
        };
        let a = planner.plan(&text).unwrap();
        let b = planner.plan(&text).unwrap();
        assert_eq!(
            a.id, b.id,
            "same config and data → same id (resubmitting resumes)"
        );
        assert!(
            a.id.0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{}",
            a.id
        );
        let kinds: Vec<_> = a
            .tasks
            .iter()
            .map(|t| (t.spec.id.0.as_str(), t.spec.kind))
            .collect();
        assert!(
            kinds.iter().any(|(_, k)| *k == TaskKind::Finetune),
            "{kinds:?}"
        );
        for t in &a.tasks {
            match &t.payload {
                TaskPayload::Evaluate(p) => {
                    assert_eq!(
                        Some(p.samples.len()),
                        cfg.data.max_eval_samples,
                        "{}",
                        t.spec.id.0
                    );
                    assert!(p.adapter.is_none());
                }
                TaskPayload::Finetune(p) => {
                    assert_eq!(Some(p.train.len()), cfg.data.max_train_samples);
                    assert!(!p.validation.is_empty());
                }
            }
            assert!(
                t.spec.model.name.starts_with("/models/"),
                "models placeholder resolved: {}",
                t.spec.model.name
            );
        }
        // The eval and train samples never overlap.
        let eval_ids: std::collections::HashSet<_> = a
            .tasks
            .iter()
            .find_map(|t| match &t.payload {
                TaskPayload::Evaluate(p) => Some(p.samples.iter().map(|s| s.id.clone()).collect()),
                TaskPayload::Finetune(_) => None,
            })
            .unwrap();
        for t in &a.tasks {
            if let TaskPayload::Finetune(p) = &t.payload {
                assert!(p.train.iter().all(|r| !eval_ids.contains(&r.id)));
            }
        }
    }

    #[test]
    fn the_models_placeholder_without_a_models_folder_is_refused() {
        let planner = ConfigPlanner {
            models_dir: None,
            outputs_root: PathBuf::from("/data/outputs"),
            env: Default::default(),
            hub: no_hub(),
            cache: None,
        };
        let text = ExperimentConfig::offline_default().to_toml().unwrap();
        let err = planner.plan(&text).unwrap_err();
        assert!(
            err.contains("${SIZESPEC_MODELS}") && err.contains("--models-dir"),
            "{err}"
        );
    }

    #[test]
    fn the_experiment_scope_selects_the_tasks() {
        let planner = ConfigPlanner {
            models_dir: Some(PathBuf::from("/models")),
            outputs_root: PathBuf::from("/data/outputs"),
            env: Default::default(),
            hub: no_hub(),
            cache: None,
        };
        let ids = |scope: &str| -> Vec<String> {
            let mut cfg = ExperimentConfig::offline_default();
            cfg.experiment = scope.parse().unwrap();
            let plan = planner.plan(&cfg.to_toml().unwrap()).unwrap();
            plan.tasks.iter().map(|t| t.spec.id.0.clone()).collect()
        };
        let full = ids("full");
        let llm = ids("llm");
        let slm = ids("slm");
        assert!(llm.iter().all(|id| id.starts_with("eval:LLM")), "{llm:?}");
        assert!(!llm.is_empty());
        assert!(slm.iter().all(|id| id.contains("SLM")), "{slm:?}");
        assert!(slm.iter().any(|id| id.starts_with("finetune:")), "{slm:?}");
        assert_eq!(full.len(), llm.len() + slm.len(), "{full:?}");
    }

    #[test]
    fn a_bad_config_is_refused_with_its_error() {
        let planner = ConfigPlanner {
            models_dir: None,
            outputs_root: PathBuf::from("/data/outputs"),
            env: Default::default(),
            hub: no_hub(),
            cache: None,
        };
        let err = planner.plan("[training]\nlearnin_rate = 1\n").unwrap_err();
        assert!(err.contains("learnin_rate"), "{err}");
    }

    #[test]
    fn a_submitted_output_path_is_replaced_by_a_folder_per_experiment() {
        let planner = ConfigPlanner {
            models_dir: Some(PathBuf::from("/models")),
            outputs_root: PathBuf::from("/data/outputs"),
            env: Default::default(),
            hub: no_hub(),
            cache: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for output in ["/etc/x", "../../x", "runs/offline-smollm2"] {
            let mut cfg = ExperimentConfig::offline_default();
            cfg.output = PathBuf::from(output);
            let plan = planner.plan(&cfg.to_toml().unwrap()).unwrap();
            assert_eq!(
                plan.output_dir,
                PathBuf::from("/data/outputs").join(&plan.id.0),
                "`output = {output:?}`"
            );
            assert!(
                plan.output_dir.components().all(|c| matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )),
                "{}",
                plan.output_dir.display()
            );
            seen.insert(plan.output_dir);
        }
        assert_eq!(
            seen.len(),
            3,
            "each experiment has its own folder: {seen:?}"
        );
        // The server's own SIZESPEC_OUTPUT does not pick a shared folder either.
        let env_planner = ConfigPlanner {
            env: [("SIZESPEC_OUTPUT".to_string(), "/tmp/shared".to_string())].into(),
            ..planner
        };
        let plan = env_planner
            .plan(&ExperimentConfig::offline_default().to_toml().unwrap())
            .unwrap();
        assert!(
            plan.output_dir.starts_with("/data/outputs"),
            "{}",
            plan.output_dir.display()
        );
    }
}
