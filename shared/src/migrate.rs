//! Migration from the old config shape (`baseline_llms`, `slm_name`, flat hyper-parameters).
//!
//! The old shape (the Python seed, TOML or JSON) listed its models by role as the author saw it —
//! `baseline_llms = [...]`, `slm_name = "..."` — and its hyper-parameters as flat keys. Roles are
//! re-derived from the size in the model's name (≥ 7B → `llm_models`, zero-shot; smaller →
//! `slm_models`, LoRA), whatever list the model was in: the first public attempt evaluated a 3B
//! model among its "baseline LLMs". Every move and every dropped key is reported.
use std::fmt;

use serde_json::{Map, Value};

use crate::config::{ExperimentConfig, LrSchedule, ModelEntry};
use crate::plan::{LLM_MIN_BILLIONS, label_from_name, size_in_billions};
use crate::task::ModelRole;

/// Keys only the old shape has at its top level.
const OLD_MARKERS: [&str; 9] = [
    "baseline_llms",
    "slm_name",
    "slm_names",
    "slm_load_in_4bit",
    "num_epochs",
    "lora_r",
    "lora_alpha",
    "output_dir",
    "lr_scheduler_type",
];

/// Keys only the new shape has at its top level.
const NEW_MARKERS: [&str; 9] = [
    "llm_models",
    "slm_models",
    "data",
    "prompt",
    "lora",
    "training",
    "generation",
    "evaluation",
    "dtype",
];

/// A model the migration placed, and why there.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMove {
    /// The hub id as written in the old file.
    pub name: String,
    /// The old key it was listed under (`baseline_llms`, `slm_name`).
    pub from: String,
    pub to: ModelRole,
    /// `"3B < 7B"`, or why the size could not be used.
    pub reason: String,
}

/// An old key that has no place in the new shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedKey {
    pub key: String,
    pub reason: String,
}

/// What the migration did, for the user to read (logged by the loader, returned with the config).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationReport {
    pub moves: Vec<ModelMove>,
    /// (old key, new dotted key) for each value carried over.
    pub mapped: Vec<(String, String)>,
    pub dropped: Vec<DroppedKey>,
    /// Defaults the migration kept because the old file said nothing about them.
    pub defaults_kept: Vec<String>,
}

fn list_name(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Llm => "llm_models",
        ModelRole::Slm => "slm_models",
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.moves {
            let short = m.name.rsplit('/').next().unwrap_or(&m.name);
            writeln!(
                f,
                "{short}: {} → {} ({})",
                m.from,
                list_name(m.to),
                m.reason
            )?;
        }
        for (old, new) in &self.mapped {
            writeln!(f, "{old} → {new}")?;
        }
        for d in &self.dropped {
            writeln!(f, "{}: dropped ({})", d.key, d.reason)?;
        }
        for d in &self.defaults_kept {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MigrateError {
    #[error("the old config must be a table / JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("old key `{key}`: expected {expected}, found {found}")]
    BadValue {
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// Whether `value` has the old shape: an old-only key at the top level and no new-only section.
pub fn is_old_shape(value: &Value) -> bool {
    let Some(obj) = value.as_object() else {
        return false;
    };
    OLD_MARKERS.iter().any(|k| obj.contains_key(*k))
        && !NEW_MARKERS.iter().any(|k| obj.contains_key(*k))
}

fn type_name(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn bad(key: &str, expected: &'static str, v: &Value) -> MigrateError {
    MigrateError::BadValue {
        key: key.into(),
        expected,
        found: type_name(v),
    }
}

fn as_f64(key: &str, v: &Value) -> Result<f64, MigrateError> {
    match v {
        Value::Number(n) => n.as_f64(),
        // Python configs sometimes hold "2e-4" as a string.
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| bad(key, "a number", v))
}

fn as_usize(key: &str, v: &Value) -> Result<usize, MigrateError> {
    let f = as_f64(key, v).map_err(|_| bad(key, "a non-negative integer", v))?;
    if f >= 0.0 && f.fract() == 0.0 {
        Ok(f as usize)
    } else {
        Err(bad(key, "a non-negative integer", v))
    }
}

fn as_bool(key: &str, v: &Value) -> Result<bool, MigrateError> {
    v.as_bool().ok_or_else(|| bad(key, "true or false", v))
}

fn as_string(key: &str, v: &Value) -> Result<String, MigrateError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(key, "a string", v))
}

fn as_strings(key: &str, v: &Value) -> Result<Vec<String>, MigrateError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|i| as_string(key, i)).collect(),
        _ => Err(bad(key, "a string or a list of strings", v)),
    }
}

/// Turns an old-shape config into the new one, starting from the defaults for everything the old
/// file does not say. The result is validated by the loader like any other config.
pub fn migrate(old: &Value) -> Result<(ExperimentConfig, MigrationReport), MigrateError> {
    let obj = old.as_object().ok_or(MigrateError::NotAnObject(match old {
        Value::Array(_) => "a list",
        Value::String(_) => "a string",
        _ => "a scalar",
    }))?;
    let mut cfg = ExperimentConfig::default();
    let mut report = MigrationReport::default();
    migrate_models(obj, &mut cfg, &mut report)?;
    for (key, v) in obj {
        if matches!(
            key.as_str(),
            "baseline_llms" | "slm_name" | "slm_names" | "llm_load_in_4bit" | "load_in_4bit"
        ) {
            continue; // handled with the models
        }
        let target = migrate_key(key, v, &mut cfg)?;
        match target {
            Target::Mapped(new) => report.mapped.push((key.clone(), new.into())),
            Target::Dropped(reason) => report.dropped.push(DroppedKey {
                key: key.clone(),
                reason,
            }),
        }
    }
    Ok((cfg, report))
}

enum Target {
    Mapped(&'static str),
    Dropped(String),
}

fn migrate_models(
    obj: &Map<String, Value>,
    cfg: &mut ExperimentConfig,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let mut listed: Vec<(String, &'static str)> = Vec::new();
    for key in ["baseline_llms", "slm_name", "slm_names"] {
        if let Some(v) = obj.get(key) {
            listed.extend(as_strings(key, v)?.into_iter().map(|n| (n, key)));
        }
    }
    if listed.is_empty() {
        return Ok(()); // no models named: the default models stay
    }
    let llm_4bit = match obj
        .get("llm_load_in_4bit")
        .or_else(|| obj.get("load_in_4bit"))
    {
        Some(v) => as_bool("llm_load_in_4bit", v)?,
        None => true,
    };
    let defaults = (
        std::mem::take(&mut cfg.llm_models),
        std::mem::take(&mut cfg.slm_models),
    );
    for (name, from) in listed {
        let size = size_in_billions(&name);
        let (to, reason) = match &size {
            Some((b, tok)) if *b >= LLM_MIN_BILLIONS => (ModelRole::Llm, format!("{tok} ≥ 7B")),
            Some((_, tok)) => (ModelRole::Slm, format!("{tok} < 7B")),
            None => {
                let kept = if from == "baseline_llms" {
                    ModelRole::Llm
                } else {
                    ModelRole::Slm
                };
                (kept, "no size in the name; kept in its old role".into())
            }
        };
        let list = match to {
            ModelRole::Llm => &mut cfg.llm_models,
            ModelRole::Slm => &mut cfg.slm_models,
        };
        let size_tok = size.as_ref().map(|(_, t)| t.as_str());
        let mut label = label_from_name(&name, size_tok);
        let stem = label.clone();
        let mut n = 2;
        while list.iter().any(|m| m.label == label) {
            label = format!("{stem}-{n}");
            n += 1;
        }
        list.push(ModelEntry {
            name: name.clone(),
            revision: None,
            size: size_tok.unwrap_or("unknown").to_string(),
            label,
            description: format!("migrated from the old `{from}`"),
            load_in_4bit: to == ModelRole::Llm && llm_4bit,
        });
        report.moves.push(ModelMove {
            name,
            from: from.into(),
            to,
            reason,
        });
    }
    // A side the old file left empty keeps the default models (the comparison needs both sides),
    // and the report says so: e.g. an old file that named only 3B models.
    for (role, list, default) in [
        (ModelRole::Llm, &mut cfg.llm_models, defaults.0),
        (ModelRole::Slm, &mut cfg.slm_models, defaults.1),
    ] {
        if list.is_empty() {
            let labels: Vec<&str> = default.iter().map(|m| m.label.as_str()).collect();
            report.defaults_kept.push(format!(
                "{}: no model of this size in the old file; the defaults are kept ({})",
                list_name(role),
                labels.join(", ")
            ));
            *list = default;
        }
    }
    if obj.contains_key("llm_load_in_4bit") {
        report.mapped.push((
            "llm_load_in_4bit".into(),
            "llm_models[*].load_in_4bit".into(),
        ));
    } else if obj.contains_key("load_in_4bit") {
        report
            .mapped
            .push(("load_in_4bit".into(), "llm_models[*].load_in_4bit".into()));
    }
    Ok(())
}

fn migrate_key(key: &str, v: &Value, cfg: &mut ExperimentConfig) -> Result<Target, MigrateError> {
    let t = &mut cfg.training;
    let mapped = match key {
        "learning_rate" | "lr" => {
            t.learning_rate = as_f64(key, v)?;
            "training.learning_rate"
        }
        "num_epochs" | "num_train_epochs" | "epochs" => {
            t.epochs = as_usize(key, v)? as u32;
            "training.epochs"
        }
        "max_length" | "max_seq_length" => {
            t.max_length = as_usize(key, v)?;
            "training.max_length"
        }
        "batch_size" | "per_device_train_batch_size" => {
            t.batch_size = as_usize(key, v)?;
            "training.batch_size"
        }
        "gradient_accumulation_steps" => {
            t.gradient_accumulation_steps = as_usize(key, v)?;
            "training.gradient_accumulation_steps"
        }
        "warmup_ratio" => {
            t.warmup_ratio = as_f64(key, v)?;
            "training.warmup_ratio"
        }
        "weight_decay" => {
            t.weight_decay = as_f64(key, v)?;
            "training.weight_decay"
        }
        "max_grad_norm" => {
            t.max_grad_norm = as_f64(key, v)?;
            "training.max_grad_norm"
        }
        "early_stopping_patience" => {
            t.early_stopping_patience = as_usize(key, v)? as u32;
            "training.early_stopping_patience"
        }
        "eval_steps" => {
            t.eval_every_steps = as_usize(key, v)? as u64;
            "training.eval_every_steps"
        }
        "seed" => {
            t.seed = as_usize(key, v)? as u64;
            cfg.data.split.seed = t.seed;
            "training.seed and data.split.seed"
        }
        "lr_scheduler_type" => {
            t.schedule = match as_string(key, v)?.as_str() {
                "cosine" | "cosine_with_restarts" => LrSchedule::Cosine,
                "linear" => LrSchedule::Linear,
                "constant" | "constant_with_warmup" => LrSchedule::Constant,
                _ => return Err(bad(key, "\"cosine\", \"linear\" or \"constant\"", v)),
            };
            "training.schedule"
        }
        "lora_r" => {
            cfg.lora.r = as_usize(key, v)?;
            "lora.r"
        }
        "lora_alpha" => {
            cfg.lora.alpha = as_f64(key, v)?;
            "lora.alpha"
        }
        "lora_dropout" => {
            cfg.lora.dropout = as_f64(key, v)?;
            "lora.dropout"
        }
        "target_modules" | "lora_target_modules" => {
            cfg.lora.target_modules = as_strings(key, v)?;
            "lora.target_modules"
        }
        "max_new_tokens" => {
            cfg.generation.max_new_tokens = as_usize(key, v)?;
            "generation.max_new_tokens"
        }
        "eval_batch_size" | "per_device_eval_batch_size" => {
            cfg.generation.batch_size = as_usize(key, v)?;
            "generation.batch_size"
        }
        "max_eval_samples" => {
            cfg.data.max_eval_samples = Some(as_usize(key, v)?);
            "data.max_eval_samples"
        }
        "max_train_samples" => {
            cfg.data.max_train_samples = Some(as_usize(key, v)?);
            "data.max_train_samples"
        }
        "output_dir" => {
            cfg.output = as_string(key, v)?.into();
            "output"
        }
        "experiment_name" | "name" => {
            cfg.name = as_string(key, v)?;
            "name"
        }
        "slm_load_in_4bit" => {
            let said = as_bool(key, v)?;
            return Ok(Target::Dropped(format!(
                "`{said}` ignored: SLMs are LoRA-trained in full precision (a frozen 4-bit matmul has no \
                 backward pass, so gradients would not reach the earlier layers)"
            )));
        }
        _ => return Ok(Target::Dropped("no equivalent in the new config".into())),
    };
    Ok(Target::Mapped(mapped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_config() -> Value {
        json!({
            "baseline_llms": ["meta-llama/Meta-Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3", "Qwen/Qwen2.5-3B-Instruct"],
            "slm_name": "meta-llama/Llama-3.2-3B-Instruct",
            "slm_load_in_4bit": true,
            "learning_rate": 2e-4,
            "num_epochs": 3,
            "lora_r": 16,
            "lora_alpha": 32,
            "max_length": 1024,
            "batch_size": 2,
            "use_wandb": false
        })
    }

    #[test]
    fn detects_old_shape_only() {
        assert!(is_old_shape(&seed_config()));
        assert!(is_old_shape(&json!({"slm_name": "x/Llama-3B"})));
        assert!(!is_old_shape(
            &json!({"name": "x", "training": {"epochs": 1}})
        ));
        // A new-shape file with a stray old key is a new file with an unknown key, not an old file.
        assert!(!is_old_shape(&json!({"lora_r": 8, "llm_models": []})));
        assert!(!is_old_shape(&json!(["baseline_llms"])));
    }

    #[test]
    fn models_are_placed_by_size_whatever_list_they_were_in() {
        let (cfg, report) = migrate(&seed_config()).unwrap();
        let llms: Vec<_> = cfg
            .llm_models
            .iter()
            .map(|m| (m.label.as_str(), m.size.as_str(), m.load_in_4bit))
            .collect();
        assert_eq!(llms, [("Llama-8B", "8B", true), ("Mistral-7B", "7B", true)]);
        let slms: Vec<_> = cfg
            .slm_models
            .iter()
            .map(|m| (m.label.as_str(), m.name.as_str(), m.load_in_4bit))
            .collect();
        assert_eq!(
            slms,
            [
                ("Qwen-3B", "Qwen/Qwen2.5-3B-Instruct", false),
                ("Llama-3B", "meta-llama/Llama-3.2-3B-Instruct", false)
            ]
        );
        let text = report.to_string();
        assert!(
            text.contains("Qwen2.5-3B-Instruct: baseline_llms → slm_models (3B < 7B)"),
            "{text}"
        );
        assert!(
            text.contains("Meta-Llama-3.1-8B-Instruct: baseline_llms → llm_models (8B ≥ 7B)"),
            "{text}"
        );
        assert!(
            text.contains("Llama-3.2-3B-Instruct: slm_name → slm_models (3B < 7B)"),
            "{text}"
        );
        // A large model named as the SLM moves to the LLM side.
        let (cfg, report) =
            migrate(&json!({"slm_name": "meta-llama/Llama-3.1-70B-Instruct"})).unwrap();
        assert_eq!(cfg.llm_models.len(), 1);
        assert_eq!(
            cfg.slm_models,
            ExperimentConfig::default().slm_models,
            "no SLM named: defaults"
        );
        assert_eq!(report.moves[0].to, ModelRole::Llm);
        assert_eq!(report.moves[0].reason, "70B ≥ 7B");
    }

    #[test]
    fn flat_keys_map_and_the_rest_is_reported_dropped() {
        let (cfg, report) = migrate(&seed_config()).unwrap();
        assert_eq!(cfg.training.learning_rate, 2e-4);
        assert_eq!(cfg.training.epochs, 3);
        assert_eq!(cfg.lora.r, 16);
        assert_eq!(cfg.lora.alpha, 32.0);
        assert_eq!(cfg.training.max_length, 1024);
        assert_eq!(cfg.training.batch_size, 2);
        assert!(report.mapped.contains(&("lora_r".into(), "lora.r".into())));
        assert!(
            report
                .mapped
                .contains(&("num_epochs".into(), "training.epochs".into()))
        );
        let dropped: Vec<_> = report.dropped.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(dropped, ["slm_load_in_4bit", "use_wandb"]);
        assert!(
            report.dropped[0]
                .reason
                .contains("ignored: SLMs are LoRA-trained in full precision")
        );
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    }

    #[test]
    fn every_flat_key_lands_where_the_report_says() {
        let old = json!({
            "slm_name": "a/B-3B",
            "learning_rate": 1e-4, "num_train_epochs": 4, "max_seq_length": 512, "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 0.5,
            "early_stopping_patience": 5, "eval_steps": 50, "seed": 7, "lr_scheduler_type": "linear",
            "lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "lora_target_modules": ["q_proj", "v_proj"],
            "max_new_tokens": 20, "per_device_eval_batch_size": 4, "max_eval_samples": 100,
            "max_train_samples": 1000, "output_dir": "out/x", "experiment_name": "old-run",
            "llm_load_in_4bit": false
        });
        let (c, report) = migrate(&old).unwrap();
        let t = &c.training;
        assert_eq!(
            (t.learning_rate, t.epochs, t.max_length, t.batch_size),
            (1e-4, 4, 512, 8)
        );
        assert_eq!(
            (
                t.gradient_accumulation_steps,
                t.warmup_ratio,
                t.weight_decay,
                t.max_grad_norm
            ),
            (2, 0.1, 0.01, 0.5)
        );
        assert_eq!(
            (t.early_stopping_patience, t.eval_every_steps, t.seed),
            (5, 50, 7)
        );
        assert_eq!(t.schedule, LrSchedule::Linear);
        assert_eq!(c.data.split.seed, 7, "the old seed also seeded the split");
        assert_eq!((c.lora.r, c.lora.alpha, c.lora.dropout), (32, 64.0, 0.05));
        assert_eq!(c.lora.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(
            (c.generation.max_new_tokens, c.generation.batch_size),
            (20, 4)
        );
        assert_eq!(
            (c.data.max_eval_samples, c.data.max_train_samples),
            (Some(100), Some(1000))
        );
        assert_eq!(c.output, std::path::PathBuf::from("out/x"));
        assert_eq!(c.name, "old-run");
        // Every old key is accounted for: mapped, or (models) moved.
        assert!(report.dropped.is_empty(), "{:?}", report.dropped);
        assert_eq!(report.mapped.len(), old.as_object().unwrap().len() - 1);
        // With only an SLM named, the default LLMs stay, and the report says so.
        assert_eq!(c.llm_models, ExperimentConfig::default().llm_models);
        assert_eq!(
            report.defaults_kept,
            [
                "llm_models: no model of this size in the old file; the defaults are kept (Llama-8B, Mistral-7B)"
            ]
        );
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        // llm_load_in_4bit = false reaches the LLM entries.
        let (c, _) =
            migrate(&json!({"baseline_llms": ["x/Big-8B"], "llm_load_in_4bit": false})).unwrap();
        assert!(!c.llm_models[0].load_in_4bit);
    }

    #[test]
    fn string_numbers_are_accepted_and_bad_values_named() {
        let (cfg, _) = migrate(&json!({"slm_name": "a/B-3B", "learning_rate": "1e-4"})).unwrap();
        assert_eq!(cfg.training.learning_rate, 1e-4);
        let e = migrate(&json!({"slm_name": "a/B-3B", "num_epochs": "three"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "old key `num_epochs`: expected a non-negative integer, found \"three\""
        );
        let e = migrate(&json!({"baseline_llms": 7})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("old key `baseline_llms`: expected a string or a list"),
            "{e}"
        );
    }

    #[test]
    fn unsized_names_keep_their_old_role_and_labels_stay_unique() {
        let (cfg, report) =
            migrate(&json!({"baseline_llms": ["org/mystery", "a/Llama-8B-x", "b/Llama-8B-y"], "slm_name": "c/B-3B"})).unwrap();
        assert_eq!(cfg.llm_models[0].label, "mystery");
        assert_eq!(
            report.moves[0].reason,
            "no size in the name; kept in its old role"
        );
        assert_eq!(cfg.llm_models[1].label, "Llama-8B");
        assert_eq!(cfg.llm_models[2].label, "Llama-8B-2");
    }

    #[test]
    fn loader_migrates_old_toml_and_json_files() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("old.toml");
        std::fs::write(
            &toml_path,
            "baseline_llms = [\"meta-llama/Meta-Llama-3.1-8B-Instruct\", \"meta-llama/Llama-3.2-3B-Instruct\"]\n\
             slm_name = \"Qwen/Qwen2.5-3B-Instruct\"\nslm_load_in_4bit = true\nnum_epochs = 2\n",
        )
        .unwrap();
        let loaded = ExperimentConfig::load(&toml_path).unwrap();
        assert_eq!(loaded.config.training.epochs, 2);
        assert_eq!(
            loaded
                .config
                .slm_models
                .iter()
                .map(|m| m.label.as_str())
                .collect::<Vec<_>>(),
            ["Llama-3B", "Qwen-3B"]
        );
        assert_eq!(loaded.migration.unwrap().moves.len(), 3);
        let json_path = dir.path().join("old.json");
        std::fs::write(&json_path, seed_config().to_string()).unwrap();
        let loaded = ExperimentConfig::load(&json_path).unwrap();
        assert_eq!(loaded.config.lora.r, 16);
        assert!(loaded.migration.is_some());
    }
}
