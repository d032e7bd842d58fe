//! Reads an experiment's output folder into what the report needs, from files alone.
//!
//! Files (all but `predictions/` optional; a missing one drops its section with a note):
//! - `predictions/<model key>.jsonl`: one `shared::task::PredictionRow` per line — the source of
//!   every accuracy number and CI in the report;
//! - `results.json`: per model key, performance (load/eval time, samples/s, tokens/s, peak memory,
//!   device) and, for finetuned models, training figures; a top-level `meta` (data/split hash,
//!   experiment name, creation time). Read as JSON and looked up by field name with aliases, so both
//!   the current writer and a file converted from the old shape are accepted;
//! - `training/<model key>.json`: the finetune summary with its `curve` of
//!   `{step, train_loss, validation_loss}` points;
//! - `train_code_counts.json`: `{code: count in the train split}` (frequency breakdown);
//! - `config.resolved.toml`: shown verbatim.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
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

/// Leaves of a JSON object as (path of keys, value), depth-first in key order.
fn leaves<'a>(v: &'a Value, path: &mut Vec<&'a str>, out: &mut Vec<(Vec<&'a str>, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                path.push(k);
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), v)),
    }
}

/// The first leaf named one of `names` whose ancestors include a key containing one of `sections`
/// (any ancestor when `sections` is empty).
fn find<'a>(
    all: &[(Vec<&'a str>, &'a Value)],
    sections: &[&str],
    names: &[&str],
) -> Option<&'a Value> {
    names.iter().find_map(|name| {
        all.iter()
            .find(|(p, _)| {
                let (Some(last), ancestors) = (p.last(), &p[..p.len().saturating_sub(1)]) else {
                    return false;
                };
                last == name
                    && (sections.is_empty()
                        || ancestors
                            .iter()
                            .any(|a| sections.iter().any(|s| a.to_lowercase().contains(s))))
            })
            .map(|(_, v)| *v)
    })
}

fn num(all: &[(Vec<&str>, &Value)], sections: &[&str], names: &[&str]) -> Option<f64> {
    find(all, sections, names).and_then(Value::as_f64)
}

fn text(all: &[(Vec<&str>, &Value)], sections: &[&str], names: &[&str]) -> Option<String> {
    find(all, sections, names)
        .and_then(Value::as_str)
        .map(str::to_string)
}

const PERF: &[&str] = &["perf", "inference", "eval"];
const TRAIN: &[&str] = &["train"];

fn perf_from(entry: Option<&Value>, training: Option<&Value>) -> Perf {
    let mut a = Vec::new();
    if let Some(e) = entry {
        leaves(e, &mut Vec::new(), &mut a);
    }
    let mut t = Vec::new();
    if let Some(e) = training {
        leaves(e, &mut Vec::new(), &mut t);
    }
    // Training figures: the training file's top level first, then a training section of results.json.
    let tnum = |names: &[&str]| num(&t, &[], names).or_else(|| num(&a, TRAIN, names));
    Perf {
        load_s: num(
            &a,
            PERF,
            &["load_s", "load_time_s", "load_seconds", "model_load_time"],
        ),
        eval_s: num(
            &a,
            PERF,
            &[
                "eval_s",
                "eval_time_s",
                "eval_seconds",
                "inference_time_s",
                "wall_seconds",
            ],
        ),
        samples_per_s: num(&a, PERF, &["samples_per_s", "samples_per_second"])
            .or_else(|| num(&a, &[], &["samples_per_s"])),
        tokens_per_s: num(
            &a,
            PERF,
            &[
                "tokens_per_s",
                "generated_tokens_per_s",
                "tokens_per_second",
            ],
        )
        .or_else(|| num(&a, &[], &["generated_tokens_per_s"])),
        peak_memory_mib: num(
            &a,
            PERF,
            &[
                "peak_memory_mib",
                "peak_vram_mib",
                "peak_mem_mib",
                "memory_mib",
            ],
        ),
        device: text(&a, PERF, &["device_name", "device"])
            .or_else(|| text(&t, &[], &["device_name"])),
        train_s: tnum(&[
            "train_s",
            "train_time_s",
            "training_time_s",
            "train_seconds",
        ]),
        train_tokens_per_s: tnum(&["tokens_per_s", "tokens_per_second"]),
        train_peak_memory_mib: tnum(&["peak_memory_mib", "peak_vram_mib", "peak_mem_mib"]),
        train_steps: tnum(&["steps", "total_steps"]),
        final_train_loss: tnum(&["final_train_loss", "train_loss"]),
        best_validation_loss: tnum(&["best_validation_loss", "best_val_loss"]),
    }
}

/// The curve: the training file's `curve` (or `points`), else one inside the results entry.
fn curve_from(training: Option<&Value>, entry: Option<&Value>) -> Vec<CurvePoint> {
    let arr = [training, entry].into_iter().flatten().find_map(|v| {
        v.get("curve")
            .or_else(|| v.get("points"))
            .or_else(|| v.get("training").and_then(|t| t.get("curve")))
            .and_then(Value::as_array)
            .or_else(|| v.as_array())
    });
    let f =
        |p: &Value, names: &[&str]| names.iter().find_map(|n| p.get(*n).and_then(Value::as_f64));
    let mut pts: Vec<CurvePoint> = arr
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(CurvePoint {
                step: p.get("step")?.as_u64()?,
                train_loss: f(p, &["train_loss", "loss"]),
                validation_loss: f(p, &["validation_loss", "val_loss", "eval_loss"]),
            })
        })
        .collect();
    pts.sort_by_key(|p| p.step);
    pts
}

fn results_old_shape(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        m.keys()
            .any(|k| k.starts_with("Baseline_") || k.starts_with("Finetuned_"))
    })
}

/// Reads the folder. Fails when it has no `predictions/*.jsonl` at all, or a file is malformed.
pub fn load(dir: &Path) -> Result<ReportInput, ReportError> {
    let predictions = read_predictions(dir)?;
    let results_path = dir.join("results.json");
    let results = match read_optional(&results_path)? {
        Some(t) => Some(parse_json(&results_path, &t)?),
        None => None,
    };
    if let Some(r) = &results
        && results_old_shape(r)
    {
        return Err(ReportError::OldResultsShape { path: results_path });
    }
    let entry_of = |key: &str| results.as_ref().and_then(|r| r.get(key));

    let mut keys: Vec<String> = predictions.keys().cloned().collect();
    if let Some(Value::Object(m)) = &results {
        keys.extend(m.keys().filter(|k| ModelKey::parse(k).is_some()).cloned());
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
        let mut a = Vec::new();
        if let Some(e) = entry {
            leaves(e, &mut Vec::new(), &mut a);
        }
        models.push(ModelInput {
            model_name: text(&a, &[], &["model_name", "name"]),
            size: text(&a, &[], &["size"]),
            rows: predictions.get(&k).cloned().unwrap_or_default(),
            perf: perf_from(entry, training.as_ref()),
            curve: curve_from(training.as_ref(), entry),
            key,
        });
    }
    if models.iter().all(|m| m.rows.is_empty()) {
        return Err(ReportError::NoPredictions {
            dir: dir.join("predictions"),
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

    let mut meta = Vec::new();
    if let Some(m) = results
        .as_ref()
        .and_then(|r| r.get("meta").or_else(|| r.get("_meta")))
    {
        leaves(m, &mut Vec::new(), &mut meta);
    }
    Ok(ReportInput {
        dir: dir.to_path_buf(),
        models,
        train_code_counts,
        config_toml: read_optional(&dir.join("config.resolved.toml"))?,
        data_hash: text(&meta, &[], &["split_hash", "data_hash", "dataset_hash"]),
        experiment: text(&meta, &[], &["experiment", "experiment_name", "name"]),
        created: text(&meta, &[], &["created", "created_at", "created_time"]),
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
    fn finds_fields_by_section_and_alias() {
        let entry = serde_json::json!({
            "performance": {"load_time_s": 3.5, "tokens_per_s": 40.0, "peak_memory_mib": 5000},
            "training": {"train_s": 100.0, "tokens_per_s": 900.0, "peak_memory_mib": 9000,
                         "curve": [{"step": 20, "train_loss": 1.0}, {"step": 10, "loss": 2.0, "val_loss": 2.5}]}
        });
        let p = perf_from(Some(&entry), None);
        assert_eq!(
            (p.load_s, p.tokens_per_s, p.peak_memory_mib),
            (Some(3.5), Some(40.0), Some(5000.0))
        );
        assert_eq!(
            (p.train_s, p.train_tokens_per_s, p.train_peak_memory_mib),
            (Some(100.0), Some(900.0), Some(9000.0))
        );
        let c = curve_from(None, Some(&entry));
        assert_eq!(c.iter().map(|p| p.step).collect::<Vec<_>>(), vec![10, 20]);
        assert_eq!(
            (c[0].train_loss, c[0].validation_loss),
            (Some(2.0), Some(2.5))
        );
    }
}
