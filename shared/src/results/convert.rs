//! Conversion of the seed's old `results.json` (`Baseline_LLM_<name>`, `Baseline_SLM`, `Finetuned_SLM`).
//!
//! The old writer's field names are not fixed (it grew by hand), so every figure is looked up by a
//! list of aliases, at any depth of the entry (`metrics.accuracy` and `accuracy` both count).
//! Rates written as percentages are divided by 100: the old writer used one convention per file,
//! so if any rate in the file is above 1, every rate of the file is read as a percentage. Numbers that have no field
//! in the new entry are kept in `extra` under their old dotted name; metrics the old entry did not
//! have are listed in `missing_metrics` (and read 0), never invented.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{
    Performance, ResultEntry, Results, ResultsError, ResultsMeta, TrainingMetrics, TrainingStatus,
    model_key, tool_version,
};
use crate::metrics::EvalMetrics;
use crate::plan::{LLM_MIN_BILLIONS, label_from_name, size_in_billions};
use crate::task::ModelRole;

/// Whether `v` is an old-shape results object (`Baseline_*` / `Finetuned_*` keys).
pub fn is_old_shape(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        m.keys()
            .any(|k| k.starts_with("Baseline_") || k.starts_with("Finetuned_"))
    })
}

/// The numeric and text leaves of an old entry, by dotted path, with the ones used so far.
struct Leaves<'a> {
    all: Vec<(String, &'a Value)>,
    used: BTreeSet<String>,
}

impl<'a> Leaves<'a> {
    fn new(v: &'a Value) -> Self {
        let mut all = Vec::new();
        collect(v, String::new(), &mut all);
        Leaves {
            all,
            used: BTreeSet::new(),
        }
    }

    /// The first leaf whose last path segment is one of `names` (in the order of `names`).
    fn find(&mut self, names: &[&str]) -> Option<&'a Value> {
        for name in names {
            let hit = self.all.iter().find(|(path, _)| {
                let last = path.rsplit('.').next().unwrap_or(path);
                last.eq_ignore_ascii_case(name) && !self.used.contains(path)
            });
            if let Some((path, v)) = hit {
                self.used.insert(path.clone());
                return Some(*v);
            }
        }
        None
    }

    fn num(&mut self, names: &[&str]) -> Option<f64> {
        let before = self.used.clone();
        let v = self.find(names)?;
        match v.as_f64() {
            Some(n) => Some(n),
            None => {
                self.used = before; // not a number: leave it for whoever wants it
                None
            }
        }
    }

    fn text(&mut self, names: &[&str]) -> Option<String> {
        let before = self.used.clone();
        let v = self.find(names)?;
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.used = before;
                None
            }
        }
    }

    /// Unused numbers, for `extra`.
    fn rest(&self) -> BTreeMap<String, f64> {
        self.all
            .iter()
            .filter(|(p, _)| !self.used.contains(p))
            .filter_map(|(p, v)| v.as_f64().map(|n| (p.clone(), n)))
            .collect()
    }
}

fn collect<'a>(v: &'a Value, prefix: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect(child, path, out);
            }
        }
        Value::Array(_) | Value::Null => {}
        leaf => out.push((prefix, leaf)),
    }
}

// Aliases, most specific first.
const EXACT: &[&str] = &[
    "exact_match",
    "exact_match_accuracy",
    "exact_accuracy",
    "accuracy",
    "acc",
    "em",
];
const CATEGORY: &[&str] = &[
    "category_match",
    "category_accuracy",
    "three_char_accuracy",
    "3char_accuracy",
    "category_level_accuracy",
    "partial_match",
    "partial_accuracy",
];
const CHAPTER: &[&str] = &[
    "chapter_match",
    "chapter_accuracy",
    "chapter_level_accuracy",
];
const INVALID: &[&str] = &[
    "invalid_code_rate",
    "invalid_rate",
    "invalid_prediction_rate",
    "invalid_format_rate",
];
const MICRO_F1: &[&str] = &["micro_f1", "f1_micro", "f1"];
const MACRO_F1: &[&str] = &["macro_f1", "f1_macro"];
const WEIGHTED_F1: &[&str] = &["weighted_f1", "f1_weighted"];
const SAMPLES: &[&str] = &[
    "samples",
    "num_samples",
    "n_samples",
    "total_samples",
    "eval_samples",
    "total",
];
const VALID: &[&str] = &["valid_predictions", "num_valid", "valid_codes"];
const LATENCY_MS: &[&str] = &[
    "latency_ms_mean",
    "avg_latency_ms",
    "mean_latency_ms",
    "latency_ms",
];
const LATENCY_S: &[&str] = &[
    "avg_latency",
    "avg_latency_s",
    "mean_latency",
    "avg_inference_time",
    "inference_time_per_sample",
    "latency",
];
const P50_MS: &[&str] = &["latency_ms_p50", "p50_latency_ms", "median_latency_ms"];
const P95_MS: &[&str] = &["latency_ms_p95", "p95_latency_ms"];
const P99_MS: &[&str] = &["latency_ms_p99", "p99_latency_ms"];
const WALL_S: &[&str] = &[
    "wall_seconds",
    "eval_time_s",
    "eval_time",
    "evaluation_time",
    "total_inference_time",
    "inference_time",
    "total_time",
];
const SAMPLES_PER_S: &[&str] = &[
    "samples_per_s",
    "samples_per_second",
    "throughput",
    "throughput_samples_per_sec",
];
const TOKENS_PER_S: &[&str] = &[
    "generated_tokens_per_s",
    "tokens_per_s",
    "tokens_per_second",
    "generation_tokens_per_sec",
];
const GEN_TOKENS: &[&str] = &[
    "generated_tokens",
    "total_generated_tokens",
    "output_tokens",
];
const PROMPT_TOKENS: &[&str] = &["prompt_tokens", "total_prompt_tokens", "input_tokens"];
const LOAD_S: &[&str] = &[
    "load_time_s",
    "load_time",
    "model_load_time",
    "loading_time",
];
const MEM_MIB: &[&str] = &["peak_memory_mib", "memory_mib", "peak_vram_mib"];
const MEM_MB: &[&str] = &["peak_memory_mb", "memory_mb", "gpu_memory_mb", "vram_mb"];
const MEM_GB: &[&str] = &[
    "peak_memory_gb",
    "memory_gb",
    "gpu_memory_gb",
    "vram_gb",
    "memory_usage_gb",
];
const TRAIN_S: &[&str] = &[
    "train_time_s",
    "training_time",
    "train_time",
    "train_runtime",
    "training_time_s",
];
const TRAIN_LOSS: &[&str] = &["final_train_loss", "train_loss", "training_loss"];
const VAL_LOSS: &[&str] = &[
    "best_validation_loss",
    "best_eval_loss",
    "eval_loss",
    "validation_loss",
    "val_loss",
];
const STEPS: &[&str] = &["steps", "train_steps", "global_step", "total_steps"];
const EPOCHS: &[&str] = &["epochs_run", "epoch", "epochs", "num_epochs"];
const TRAIN_TOKENS_PER_S: &[&str] = &["train_tokens_per_s", "train_tokens_per_second"];
const NAME: &[&str] = &["model_name", "model", "model_id", "base_model", "name"];
const SIZE: &[&str] = &["size", "model_size"];
const DEVICE: &[&str] = &["device_name", "device", "gpu"];

/// What an old key says about the entry.
struct OldKey {
    training: TrainingStatus,
    /// The role the old file put it in (used only when the name carries no size).
    hint: ModelRole,
    name: Option<String>,
}

fn parse_old_key(key: &str) -> Option<OldKey> {
    let (training, hint, rest) = if let Some(r) = key.strip_prefix("Baseline_LLM") {
        (TrainingStatus::Untrained, ModelRole::Llm, r)
    } else if let Some(r) = key.strip_prefix("Baseline_SLM") {
        (TrainingStatus::Untrained, ModelRole::Slm, r)
    } else if let Some(r) = key.strip_prefix("Finetuned_SLM") {
        (TrainingStatus::Finetuned, ModelRole::Slm, r)
    } else {
        return None;
    };
    let name = match rest.strip_prefix('_') {
        Some(n) if !n.is_empty() => Some(n.to_string()),
        _ if rest.is_empty() => None,
        _ => return None,
    };
    Some(OldKey {
        training,
        hint,
        name,
    })
}

/// Converts an old-shape results object into the new [`Results`] (see the module doc). Top-level
/// keys that are not model entries are reported in the log and left out; a text `timestamp` or
/// `created` and an `experiment_name` are kept in `meta`.
pub fn convert_old(old: Value) -> Result<Results, ResultsError> {
    let Value::Object(top) = old else {
        return Err(ResultsError::Old(
            "the old results must be a JSON object".into(),
        ));
    };
    let scale = rate_scale(&top);
    let mut results = Results::default();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut experiment = None;
    let mut created = None;
    for (key, value) in &top {
        let Some(old_key) = parse_old_key(key) else {
            match (key.as_str(), value) {
                ("experiment_name" | "experiment", Value::String(s)) => {
                    experiment = Some(s.clone())
                }
                ("timestamp" | "created" | "created_at", Value::String(s)) => {
                    created = Some(s.clone())
                }
                _ => tracing::warn!(key = %key, "old results: not a model entry; left out"),
            }
            continue;
        };
        if !value.is_object() {
            return Err(ResultsError::Old(format!("`{key}` is not an object")));
        }
        let (new_key, entry) = convert_entry(key, old_key, value, scale)?;
        if let Some(first) = sources.insert(new_key.clone(), key.clone()) {
            return Err(ResultsError::Old(format!(
                "`{first}` and `{key}` both become `{new_key}`"
            )));
        }
        results.entries.insert(new_key, entry);
    }
    if results.entries.is_empty() {
        return Err(ResultsError::Old(
            "no `Baseline_*` or `Finetuned_*` entry found".into(),
        ));
    }
    results.meta = Some(ResultsMeta {
        experiment: experiment.unwrap_or_else(|| "converted".into()),
        config_hash: None,
        split_hash: None,
        created,
        tool_version: tool_version(),
        converted_from_old: true,
        dataset: None,
        failed: Vec::new(),
    });
    Ok(results)
}

/// How the old file wrote its rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateScale {
    Fraction,
    Percent,
}

const RATE_ALIASES: [&[&str]; 7] = [
    EXACT,
    CATEGORY,
    CHAPTER,
    INVALID,
    MICRO_F1,
    MACRO_F1,
    WEIGHTED_F1,
];

fn rate_scale(top: &serde_json::Map<String, Value>) -> RateScale {
    let mut leaves = Vec::new();
    for (k, v) in top {
        if parse_old_key(k).is_some() {
            collect(v, String::new(), &mut leaves);
        }
    }
    let above_one = leaves.iter().any(|(path, v)| {
        let last = path.rsplit('.').next().unwrap_or(path);
        RATE_ALIASES
            .iter()
            .any(|names| names.iter().any(|n| n.eq_ignore_ascii_case(last)))
            && v.as_f64().is_some_and(|x| x > 1.0)
    });
    if above_one {
        RateScale::Percent
    } else {
        RateScale::Fraction
    }
}

fn convert_entry(
    key: &str,
    old_key: OldKey,
    value: &Value,
    scale: RateScale,
) -> Result<(String, ResultEntry), ResultsError> {
    let mut l = Leaves::new(value);
    let field_name = l.text(NAME);
    let model_name = old_key.name.clone().or(field_name).ok_or_else(|| {
        ResultsError::Old(format!(
            "`{key}`: no model name in the key or a `model_name` field"
        ))
    })?;
    let parsed = size_in_billions(&model_name);
    let size = l
        .text(SIZE)
        .or_else(|| parsed.as_ref().map(|(_, t)| t.clone()))
        .unwrap_or_else(|| "unknown".into());
    let billions = size_in_billions(&size).or(parsed).map(|(b, _)| b);
    // Only SLMs are finetuned; an untrained model goes where its size puts it (as in the migration).
    let role = match (old_key.training, billions) {
        (TrainingStatus::Finetuned, _) => ModelRole::Slm,
        (_, Some(b)) if b >= LLM_MIN_BILLIONS => ModelRole::Llm,
        (_, Some(_)) => ModelRole::Slm,
        (_, None) => old_key.hint,
    };
    let size_token = (size != "unknown").then_some(size.as_str());
    let label = label_from_name(&model_name, size_token);
    let new_key = format!("{}_{}", model_key(role, &label), old_key.training.as_str());

    let mut missing = Vec::new();
    let mut rates: Vec<(&str, Option<f64>)> = Vec::new();
    for (name, aliases) in [
        ("exact_match", EXACT),
        ("category_match", CATEGORY),
        ("chapter_match", CHAPTER),
        ("invalid_code_rate", INVALID),
        ("micro_f1", MICRO_F1),
        ("macro_f1", MACRO_F1),
        ("weighted_f1", WEIGHTED_F1),
    ] {
        rates.push((name, l.num(aliases)));
    }
    let mut rate = |name: &str| -> f64 {
        match rates.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v) {
            Some(v) if scale == RateScale::Percent => v / 100.0,
            Some(v) => v,
            None => {
                missing.push(name.to_string());
                0.0
            }
        }
    };
    let exact_match = rate("exact_match");
    let category_match = rate("category_match");
    let chapter_match = rate("chapter_match");
    let invalid_code_rate = rate("invalid_code_rate");
    let micro_f1 = rate("micro_f1");
    let macro_f1 = rate("macro_f1");
    let weighted_f1 = rate("weighted_f1");

    let latency_ms_mean = l
        .num(LATENCY_MS)
        .or_else(|| l.num(LATENCY_S).map(|s| s * 1000.0));
    let wall = l.num(WALL_S);
    let samples = l.num(SAMPLES);
    let samples_per_s = l.num(SAMPLES_PER_S);
    let tokens_per_s = l.num(TOKENS_PER_S);
    let mut take = |name: &str, v: Option<f64>| -> f64 {
        v.unwrap_or_else(|| {
            missing.push(name.to_string());
            0.0
        })
    };
    let metrics = EvalMetrics {
        samples: take("samples", samples) as usize,
        valid_predictions: take("valid_predictions", l.num(VALID)) as usize,
        exact_match,
        category_match,
        chapter_match,
        invalid_code_rate,
        micro_f1,
        macro_f1,
        // The old files give no label count: unknown, never guessed.
        macro_f1_labels: take("macro_f1_labels", None) as usize,
        macro_f1_reference_labels: take("macro_f1_reference_labels", None),
        weighted_f1,
        latency_ms_mean: take("latency_ms_mean", latency_ms_mean),
        latency_ms_p50: take("latency_ms_p50", l.num(P50_MS)),
        latency_ms_p95: take("latency_ms_p95", l.num(P95_MS)),
        latency_ms_p99: take("latency_ms_p99", l.num(P99_MS)),
        wall_seconds: take("wall_seconds", wall),
        samples_per_s: take("samples_per_s", samples_per_s),
        generated_tokens: take("generated_tokens", l.num(GEN_TOKENS)) as u64,
        prompt_tokens: take("prompt_tokens", l.num(PROMPT_TOKENS)) as u64,
        generated_tokens_per_s: take("generated_tokens_per_s", tokens_per_s),
    };
    let memory = l
        .num(MEM_MIB)
        .or_else(|| l.num(MEM_MB).map(|mb| mb * 1e6 / 1_048_576.0))
        .or_else(|| l.num(MEM_GB).map(|gb| gb * 1024.0));
    let performance = Performance {
        load_time_s: l.num(LOAD_S),
        eval_time_s: wall,
        samples_per_s,
        tokens_per_s,
        peak_memory_mib: memory,
        device_name: l.text(DEVICE),
    };
    let training_metrics =
        (old_key.training == TrainingStatus::Finetuned).then(|| TrainingMetrics {
            train_time_s: l.num(TRAIN_S),
            steps: l.num(STEPS).map(|s| s as u64),
            final_train_loss: l.num(TRAIN_LOSS),
            best_validation_loss: l.num(VAL_LOSS),
            epochs_run: l.num(EPOCHS),
            stopped_early: None,
            tokens_per_s: l.num(TRAIN_TOKENS_PER_S),
            peak_memory_mib: None,
            resumed: None,
            curve: Vec::new(),
        });
    let entry = ResultEntry {
        model_type: role.into(),
        size,
        training: old_key.training,
        model_name,
        metrics,
        missing_metrics: missing,
        performance,
        training_metrics,
        extra: l.rest(),
    };
    Ok((new_key, entry))
}
