//! The experiment's output folder, written (atomically, file by file) when its last task ends:
//! `results.json`, `predictions/<model key>.jsonl`, `training/<model key>.json`,
//! `config.resolved.toml`, `train_code_counts.json` (the report's frequency breakdown), then the
//! report (`report.html`, `report.md`, `plots/`). [`results`] builds `results.json`; [`writer`]
//! runs the writing beside the state owner, which hears back when a folder is complete.
pub mod results;
pub mod writer;

use crate::experiment::ExperimentPlan;
use crate::outcome::TaskOutput;
use shared::fsutil::{write_atomic, write_json_atomic};
use shared::task::{PredictionRow, TaskKind, TaskSpec, TaskState};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        source: serde_json::Error,
    },
}

/// One task's final view.
#[derive(Debug, Clone)]
pub struct TaskResultView {
    pub spec: TaskSpec,
    pub state: TaskState,
    pub detail: String,
    pub output: Option<TaskOutput>,
    /// In the payload's sample order.
    pub predictions: Vec<PredictionRow>,
}

/// What [`write_outputs`] needs (a snapshot taken by the state owner).
#[derive(Debug, Clone)]
pub struct OutputsInput {
    pub plan: ExperimentPlan,
    pub tasks: Vec<TaskResultView>,
}

/// Whether a model was used as published or after LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Training {
    Untrained,
    Finetuned,
}

impl Training {
    pub fn as_str(self) -> &'static str {
        match self {
            Training::Untrained => "untrained",
            Training::Finetuned => "finetuned",
        }
    }
}

/// Whether an eval task uses an adapter: it depends on a finetune task of the same plan.
pub fn eval_training(plan: &ExperimentPlan, spec: &TaskSpec) -> Training {
    let finetuned = spec.depends_on.iter().any(|d| {
        plan.tasks
            .iter()
            .any(|t| &t.spec.id == d && t.spec.kind == TaskKind::Finetune)
    });
    if finetuned {
        Training::Finetuned
    } else {
        Training::Untrained
    }
}

/// The results key of a task's model: `LLM_Llama-8B_untrained`, `SLM_Qwen-3B_finetuned`
/// (a finetune task reports under the key of the model it produces). The plan's key wins.
pub fn results_key(plan: &ExperimentPlan, spec: &TaskSpec) -> String {
    if let Some(k) = plan.result_keys.get(&spec.id) {
        return k.clone();
    }
    let training = match spec.kind {
        TaskKind::Finetune => Training::Finetuned,
        TaskKind::Evaluate => eval_training(plan, spec),
    };
    format!("{}_{}", spec.model.key, training.as_str())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputsError + '_ {
    move |source| OutputsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`write_outputs`] wrote besides the results files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// `report.html` (and `report.md`, `plots/`) was built; a report problem is logged, and never
    /// loses the results.
    pub report: bool,
}

/// Writes every output file. Blocking: the state owner runs it through [`writer`], off its loop.
pub fn write_outputs(input: &OutputsInput) -> Result<Written, OutputsError> {
    let dir = &input.plan.output_dir;
    let path = dir.join("config.resolved.toml");
    write_atomic(&path, input.plan.config_toml.as_bytes()).map_err(io(&path))?;
    let path = dir.join("train_code_counts.json");
    write_json_atomic(&path, &input.plan.train_code_counts).map_err(io(&path))?;
    for t in &input.tasks {
        let key = results_key(&input.plan, &t.spec);
        match (t.spec.kind, &t.output) {
            (TaskKind::Evaluate, _) if !t.predictions.is_empty() => {
                let mut buf = Vec::new();
                for r in &t.predictions {
                    serde_json::to_writer(&mut buf, r).map_err(|source| OutputsError::Encode {
                        what: key.clone(),
                        source,
                    })?;
                    buf.push(b'\n');
                }
                let path = dir.join("predictions").join(format!("{key}.jsonl"));
                write_atomic(&path, &buf).map_err(io(&path))?;
            }
            (TaskKind::Finetune, Some(TaskOutput::Finetuned(tr))) => {
                let path = dir.join("training").join(format!("{key}.json"));
                write_json_atomic(&path, tr).map_err(io(&path))?;
            }
            _ => {}
        }
    }
    results::write_results(input)?;
    // The report is derived from the files just written; a report problem never loses results.
    let report = match crate::report::build(dir) {
        Ok(p) => {
            tracing::info!(report = %p.html.display(), "report written");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "report not built");
            false
        }
    };
    Ok(Written { report })
}
