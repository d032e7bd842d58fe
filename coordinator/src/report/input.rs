//! Reads an experiment's output folder into what the report needs, from files alone.
//!
//! Files (all but `predictions/` optional; a missing one drops its section with a note):
//! - `predictions/<model key>.jsonl`: one `shared::task::PredictionRow` per line — the source of
//!   every accuracy number and CI in the report;
//! - `results.json` (`shared::results::Results`): per model key the metrics, performance and, for
//!   finetuned models, training figures, and `meta` (split hash, experiment, creation time). A file
//!   still in the old shape is converted in memory with `shared::results::convert_old`. A model
//!   with metrics here but no predictions file is reported with point estimates only (no CIs);
//! - `training/<model key>.json`: the coordinator's finetune summary (`train_s`, `tokens_per_s`,
//!   `peak_memory_mib`, ..., `curve` of `{step, train_loss, validation_loss}`), read by field name
//!   with aliases; it fills what `results.json` lacks;
//! - `train_code_counts.json`: `{code: count in the train split}` (frequency breakdown);
//! - `config.resolved.toml`: shown verbatim.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shared::metrics::EvalMetrics;
use shared::results::{ResultEntry, Results, convert_old, is_old_shape};
use shared::task::{ModelRole, PredictionRow};

use super::ReportError;

/// Whether a model was used as published or after LoRA finetuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Training {
    Untrained,
    Finetuned,
}

/// A parsed results key: `LLM_Llama-8B_untrained`, `SLM_Qwen-3B_finetuned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    pub key: String,
    pub role: ModelRole,
    pub label: String,
    pub training: Training,
}

impl ModelKey {
    pub fn parse(key: &str) -> Option<ModelKey> {
        let (role, rest) = key.split_once('_')?;
        let role = match role {
            "LLM" => ModelRole::Llm,
            "SLM" => ModelRole::Slm,
            _ => return None,
        };
        let (label, training) = rest.rsplit_once('_')?;
        let training = match training {
            "untrained" => Training::Untrained,
            "finetuned" => Training::Finetuned,
            _ => return None,
        };
        (!label.is_empty()).then(|| ModelKey {
            key: key.to_string(),
            role,
            label: label.to_string(),
            training,
        })
    }

    /// How the model is named in sentences: "Qwen-3B LoRA", "Llama-8B zero-shot".
    pub fn display(&self) -> String {
        match self.training {
            Training::Finetuned => format!("{} LoRA", self.label),
            Training::Untrained => format!("{} zero-shot", self.label),
        }
    }

    /// Report order: LLMs first, then SLMs zero-shot, then SLMs finetuned; by label within.
    fn order(&self) -> (u8, Training, String) {
        let role = match self.role {
            ModelRole::Llm => 0,
            ModelRole::Slm => 1,
        };
        (role, self.training, self.label.clone())
    }
}

/// Performance figures of one model (any may be missing from the inputs).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Perf {
    pub load_s: Option<f64>,
    pub eval_s: Option<f64>,
    pub samples_per_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub peak_memory_mib: Option<f64>,
    pub device: Option<String>,
    pub train_s: Option<f64>,
    pub train_tokens_per_s: Option<f64>,
    pub train_peak_memory_mib: Option<f64>,
    pub train_steps: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub best_validation_loss: Option<f64>,
    /// The finetune resumed from another agent's checkpoint (results.json `training_metrics.resumed`).
    pub resumed: Option<shared::results::Resumed>,
}

/// One point of a training curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    pub step: u64,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
}

/// Everything known about one model.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub key: ModelKey,
    pub model_name: Option<String>,
    pub size: Option<String>,
    pub rows: Vec<PredictionRow>,
    /// The metrics `results.json` records (used when there are no predictions).
    pub metrics: Option<EvalMetrics>,
    /// Metric names `results.json` marks as not measured (a converted old file).
    pub missing_metrics: Vec<String>,
    pub perf: Perf,
    pub curve: Vec<CurvePoint>,
}

/// The whole folder, parsed.
#[derive(Debug, Clone)]
pub struct ReportInput {
    pub dir: PathBuf,
    /// In report order (see [`ModelKey`]).
    pub models: Vec<ModelInput>,
    pub train_code_counts: Option<BTreeMap<String, u64>>,
    pub config_toml: Option<String>,
    pub data_hash: Option<String>,
    pub experiment: Option<String>,
    pub created: Option<String>,
    /// `results.json` was in the old shape (converted in memory) or says it was converted.
    pub converted_from_old: bool,
    /// Planned models with no results because a task failed for good (`meta.failed`).
    pub failed: Vec<shared::results::FailedModel>,
}

fn read_optional(path: &Path) -> Result<Option<String>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReportError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_json(path: &Path, text: &str) -> Result<Value, ReportError> {
    serde_json::from_str(text).map_err(|source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `predictions/*.jsonl`, keyed by file stem, in name order.
fn read_predictions(dir: &Path) -> Result<BTreeMap<String, Vec<PredictionRow>>, ReportError> {
    let pdir = dir.join("predictions");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&pdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(ReportError::Io { path: pdir, source }),
    };
    for entry in entries {
        let path = entry
            .map_err(|source| ReportError::Io {
                path: pdir.clone(),
                source,
            })?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        let Some(stem) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: PredictionRow =
                serde_json::from_str(line).map_err(|source| ReportError::PredictionLine {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })?;
            rows.push(row);
        }
        out.insert(stem, rows);
    }
    Ok(out)
}

/// A top-level number of the training file, by the first of `names` present.
fn num(v: Option<&Value>, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| v?.get(*n)?.as_f64())
}

/// Performance from the typed results entry; training figures from it, else from the training file.
fn perf_from(entry: Option<&ResultEntry>, training: Option<&Value>) -> Perf {
    let tnum = |names: &[&str]| num(training, names);
    let p = entry.map(|e| e.performance.clone()).unwrap_or_default();
    let tm = entry
        .and_then(|e| e.training_metrics.clone())
        .unwrap_or_default();
    Perf {
        load_s: p.load_time_s,
        eval_s: p.eval_time_s,
        samples_per_s: p.samples_per_s,
        tokens_per_s: p.tokens_per_s,
        peak_memory_mib: p.peak_memory_mib,
        device: p
            .device_name
            .or_else(|| training?.get("device_name")?.as_str().map(str::to_string)),
        train_s: tm
            .train_time_s
            .or_else(|| tnum(&["train_s", "train_time_s", "training_time_s"])),
        train_tokens_per_s: tm.tokens_per_s.or_else(|| tnum(&["tokens_per_s"])),
        train_peak_memory_mib: tm
            .peak_memory_mib
            .or_else(|| tnum(&["peak_memory_mib", "peak_vram_mib"])),
        train_steps: tm
            .steps
            .map(|s| s as f64)
            .or_else(|| tnum(&["steps", "total_steps"])),
        final_train_loss: tm.final_train_loss.or_else(|| tnum(&["final_train_loss"])),
        best_validation_loss: tm
            .best_validation_loss
            .or_else(|| tnum(&["best_validation_loss", "best_val_loss"])),
        resumed: tm.resumed,
    }
}

/// The curve: from `results.json`'s training metrics, else the training file's `curve`.
fn curve_from(entry: Option<&ResultEntry>, training: Option<&Value>) -> Vec<CurvePoint> {
    let typed: Vec<CurvePoint> = entry
        .and_then(|e| e.training_metrics.as_ref())
        .map(|t| {
            t.curve
                .iter()
                .map(|p| CurvePoint {
                    step: p.step,
                    train_loss: p.train_loss,
                    validation_loss: p.validation_loss,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut pts = if typed.is_empty() {
        curve_from_value(training)
    } else {
        typed
    };
    pts.sort_by_key(|p| p.step);
    pts
}

fn curve_from_value(training: Option<&Value>) -> Vec<CurvePoint> {
    let arr = training.and_then(|v| {
        v.get("curve")
            .or_else(|| v.get("points"))
            .and_then(Value::as_array)
    });
    let f =
        |p: &Value, names: &[&str]| names.iter().find_map(|n| p.get(*n).and_then(Value::as_f64));
    arr.into_iter()
        .flatten()
        .filter_map(|p| {
            Some(CurvePoint {
                step: p.get("step")?.as_u64()?,
                train_loss: f(p, &["train_loss", "loss"]),
                validation_loss: f(p, &["validation_loss", "val_loss", "eval_loss"]),
            })
        })
        .collect()
}

/// `results.json`, typed; an old-shape file is converted in memory.
fn read_results(path: &Path) -> Result<Option<(Results, bool)>, ReportError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let value = parse_json(path, &text)?;
    if is_old_shape(&value) {
        let r = convert_old(value).map_err(|source| ReportError::Results {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        return Ok(Some((r, true)));
    }
    let r = Results::from_json_str(&text, &path.display().to_string()).map_err(|source| {
        ReportError::Results {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    let converted = r.meta.as_ref().is_some_and(|m| m.converted_from_old);
    Ok(Some((r, converted)))
}

/// Reads the folder. Fails when it has neither predictions nor results entries, or a file is malformed.
pub fn load(dir: &Path) -> Result<ReportInput, ReportError> {
    let predictions = read_predictions(dir)?;
    let results_path = dir.join("results.json");
    let (results, converted_from_old) = match read_results(&results_path)? {
        Some((r, c)) => (Some(r), c),
        None => (None, false),
    };
    let entry_of = |key: &str| results.as_ref().and_then(|r| r.entries.get(key));

    let mut keys: Vec<String> = predictions.keys().cloned().collect();
    if let Some(r) = &results {
        keys.extend(r.entries.keys().cloned());
    }
    keys.sort();
    keys.dedup();

    let mut models = Vec::new();
    for k in keys {
        let key = ModelKey::parse(&k).ok_or_else(|| ReportError::BadModelKey { key: k.clone() })?;
        let tpath = dir.join("training").join(format!("{k}.json"));
        let training = match read_optional(&tpath)? {
            Some(t) => Some(parse_json(&tpath, &t)?),
            None => None,
        };
        let entry = entry_of(&k);
        models.push(ModelInput {
            model_name: entry.map(|e| e.model_name.clone()),
            size: entry.map(|e| e.size.clone()),
            rows: predictions.get(&k).cloned().unwrap_or_default(),
            metrics: entry.map(|e| e.metrics.clone()),
            missing_metrics: entry.map(|e| e.missing_metrics.clone()).unwrap_or_default(),
            perf: perf_from(entry, training.as_ref()),
            curve: curve_from(entry, training.as_ref()),
            key,
        });
    }
    if models
        .iter()
        .all(|m| m.rows.is_empty() && m.metrics.is_none())
    {
        return Err(ReportError::NoPredictions {
            dir: dir.to_path_buf(),
        });
    }
    models.sort_by_key(|m| m.key.order());

    let counts_path = dir.join("train_code_counts.json");
    let train_code_counts =
        match read_optional(&counts_path)? {
            Some(t) => Some(serde_json::from_str::<BTreeMap<String, u64>>(&t).map_err(
                |source| ReportError::Json {
                    path: counts_path.clone(),
                    source,
                },
            )?),
            None => None,
        };
    let meta = results.as_ref().and_then(|r| r.meta.clone());
    Ok(ReportInput {
        dir: dir.to_path_buf(),
        models,
        train_code_counts,
        config_toml: read_optional(&dir.join("config.resolved.toml"))?,
        data_hash: meta.as_ref().and_then(|m| m.split_hash.clone()),
        experiment: meta.as_ref().map(|m| m.experiment.clone()),
        created: meta.as_ref().and_then(|m| m.created.clone()),
        converted_from_old,
        failed: meta.map(|m| m.failed).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_keys() {
        let k = ModelKey::parse("SLM_Qwen-3B_finetuned").unwrap();
        assert_eq!(
            (k.role, k.label.as_str(), k.training),
            (ModelRole::Slm, "Qwen-3B", Training::Finetuned)
        );
        assert_eq!(k.display(), "Qwen-3B LoRA");
        let k = ModelKey::parse("LLM_Some_Model-8B_untrained").unwrap();
        assert_eq!(k.label, "Some_Model-8B");
        assert_eq!(k.display(), "Some_Model-8B zero-shot");
        assert!(ModelKey::parse("meta").is_none());
        assert!(ModelKey::parse("XLM_a_untrained").is_none());
        assert!(ModelKey::parse("LLM__untrained").is_none());
    }

    #[test]
    fn training_file_fills_what_results_lack() {
        let t = serde_json::json!({"train_s": 100.0, "tokens_per_s": 900.0, "peak_memory_mib": 9000, "steps": 40,
                                   "curve": [{"step": 20, "train_loss": 1.0}, {"step": 10, "loss": 2.0, "val_loss": 2.5}]});
        let p = perf_from(None, Some(&t));
        assert_eq!(
            (p.train_s, p.train_tokens_per_s, p.train_peak_memory_mib),
            (Some(100.0), Some(900.0), Some(9000.0))
        );
        assert_eq!(p.train_steps, Some(40.0));
        let c = curve_from(None, Some(&t));
        assert_eq!(c.iter().map(|p| p.step).collect::<Vec<_>>(), vec![10, 20]);
        assert_eq!(
            (c[0].train_loss, c[0].validation_loss),
            (Some(2.0), Some(2.5))
        );
    }
}
