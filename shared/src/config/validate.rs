//! Checks on a deserialised experiment config that types alone cannot express.
use std::collections::BTreeSet;
use std::fmt;

use super::{
    ALL_PROJECTIONS, Batching, CHECKPOINT_EVERY_S_RANGE, DataSource, ExperimentConfig, ModelEntry,
};

/// One thing wrong with a config: the dotted key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key: `lora.r`, `slm_models[1].label`.
    pub key: String,
    pub message: String,
    /// Where the value came from (`line 12`, `SIZESPEC_LORA__R`), filled in by the loader.
    pub location: Option<String>,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key)?;
        if let Some(loc) = &self.location {
            write!(f, " ({loc})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ExperimentConfig {
    /// Every problem found (empty = valid). The loader calls this after all layers are applied.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(Problem::new("name", "must not be empty"));
        }
        if self.output.as_os_str().is_empty() {
            out.push(Problem::new("output", "must not be empty"));
        }
        check_models("llm_models", &self.llm_models, &mut out);
        check_models("slm_models", &self.slm_models, &mut out);
        self.check_data(&mut out);
        if let Err(e) = crate::prompt::validate(&self.prompt) {
            // The prompt error names its field as `prompt.<field>`; keep the key alone here.
            let msg = e.to_string();
            let (key, message) = match msg.split_once(": ") {
                Some((k, m)) if k.starts_with("prompt.") => (k.to_string(), m.to_string()),
                _ => ("prompt".to_string(), msg),
            };
            out.push(Problem::new(key, message));
        }
        self.check_lora(&mut out);
        self.check_training(&mut out);
        let g = &self.generation;
        if g.max_new_tokens == 0 {
            out.push(Problem::new(
                "generation.max_new_tokens",
                "must be at least 1",
            ));
        }
        if g.batch_size == 0 {
            out.push(Problem::new("generation.batch_size", "must be at least 1"));
        }
        let e = &self.evaluation;
        if !(e.confidence > 0.0 && e.confidence < 1.0) {
            out.push(Problem::new(
                "evaluation.confidence",
                format!(
                    "is {}; it must be strictly between 0 and 1 (e.g. 0.95)",
                    e.confidence
                ),
            ));
        }
        out
    }

    fn check_data(&self, out: &mut Vec<Problem>) {
        let d = &self.data;
        if d.max_eval_samples == Some(0) {
            out.push(Problem::new(
                "data.max_eval_samples",
                "is 0; leave it out to use the whole test split",
            ));
        }
        if d.max_train_samples == Some(0) {
            out.push(Problem::new(
                "data.max_train_samples",
                "is 0; leave it out to use the whole train split",
            ));
        }
        match &d.source {
            DataSource::MedsynthCsv { path } | DataSource::Jsonl { path }
                if path.as_os_str().is_empty() =>
            {
                out.push(Problem::new("data.source.path", "must not be empty"));
            }
            DataSource::MedsynthHub { repo, file, .. } => {
                if !repo.contains('/') {
                    out.push(Problem::new(
                        "data.source.repo",
                        format!("`{repo}` is not a hub id like `owner/name`"),
                    ));
                }
                if file.trim().is_empty() {
                    out.push(Problem::new("data.source.file", "must not be empty"));
                }
            }
            DataSource::Embedded { codes, per_code } => {
                let available = crate::embedded::embedded_summary().codes;
                if let Some(n) = *codes
                    && !(2..=available).contains(&n)
                {
                    out.push(Problem::new(
                        "data.source.codes",
                        format!("is {n}; the embedded dataset has {available} codes: pick 2 to {available}, or leave it out for all"),
                    ));
                }
                if !(1..=crate::embedded::MAX_PER_CODE).contains(per_code) {
                    out.push(Problem::new(
                        "data.source.per_code",
                        format!(
                            "is {per_code}; it must be 1 to {}",
                            crate::embedded::MAX_PER_CODE
                        ),
                    ));
                }
            }
            _ => {}
        }
        if let Err(e) = d.split.validate() {
            out.push(Problem::new("data.split", e.to_string()));
        }
    }

    fn check_lora(&self, out: &mut Vec<Problem>) {
        let l = &self.lora;
        if l.r == 0 {
            out.push(Problem::new(
                "lora.r",
                "is 0; the adapter rank must be at least 1",
            ));
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            out.push(Problem::new(
                "lora.alpha",
                format!("is {}; it must be positive", l.alpha),
            ));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            out.push(Problem::new(
                "lora.dropout",
                format!("is {}; it must be in [0, 1)", l.dropout),
            ));
        }
        if l.target_modules.is_empty() {
            out.push(Problem::new(
                "lora.target_modules",
                "is empty; name at least one projection",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, m) in l.target_modules.iter().enumerate() {
            if !ALL_PROJECTIONS.contains(&m.as_str()) {
                out.push(Problem::new(
                    format!("lora.target_modules[{i}]"),
                    format!(
                        "unknown projection `{m}`; known: {}",
                        ALL_PROJECTIONS.join(", ")
                    ),
                ));
            } else if !seen.insert(m.as_str()) {
                out.push(Problem::new(
                    format!("lora.target_modules[{i}]"),
                    format!("`{m}` is listed twice"),
                ));
            }
        }
    }

    fn check_training(&self, out: &mut Vec<Problem>) {
        let t = &self.training;
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            out.push(Problem::new(
                "training.learning_rate",
                format!("is {}; it must be positive", t.learning_rate),
            ));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            out.push(Problem::new(
                "training.warmup_ratio",
                format!("is {}; it must be in [0, 1)", t.warmup_ratio),
            ));
        }
        for (key, value) in [
            ("training.epochs", t.epochs as usize),
            ("training.max_length", t.max_length),
            ("training.batch_size", t.batch_size),
            (
                "training.gradient_accumulation_steps",
                t.gradient_accumulation_steps,
            ),
        ] {
            if value == 0 {
                out.push(Problem::new(key, "must be at least 1"));
            }
        }
        if t.max_batch_tokens > 0 && t.batching == Batching::Fixed {
            out.push(Problem::new(
                "training.max_batch_tokens",
                format!(
                    "is {}, but fixed batching cuts micro-batches by batch_size; set batching to \
                     \"length_grouped\" or \"auto\", or max_batch_tokens to 0",
                    t.max_batch_tokens
                ),
            ));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            out.push(Problem::new(
                "training.weight_decay",
                format!("is {}; it must be ≥ 0", t.weight_decay),
            ));
        }
        if t.checkpoint_every_s != 0 && !CHECKPOINT_EVERY_S_RANGE.contains(&t.checkpoint_every_s) {
            out.push(Problem::new(
                "training.checkpoint_every_s",
                format!(
                    "is {}; it must be 0 (no time-based checkpoints) or {} to {} seconds",
                    t.checkpoint_every_s,
                    CHECKPOINT_EVERY_S_RANGE.start(),
                    CHECKPOINT_EVERY_S_RANGE.end()
                ),
            ));
        }
        if !(t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0) {
            out.push(Problem::new(
                "training.max_grad_norm",
                format!("is {}; it must be ≥ 0 (0 = no clipping)", t.max_grad_norm),
            ));
        }
    }
}

/// Labels become result keys and file names: unique within a role, no spaces or path separators.
fn check_models(list: &str, models: &[ModelEntry], out: &mut Vec<Problem>) {
    if models.is_empty() {
        out.push(Problem::new(
            list,
            "is empty; the comparison needs at least one model on each side",
        ));
    }
    let mut labels = BTreeSet::new();
    for (i, m) in models.iter().enumerate() {
        if m.name.trim().is_empty() {
            out.push(Problem::new(
                format!("{list}[{i}].name"),
                "must not be empty",
            ));
        }
        if m.size.trim().is_empty() {
            out.push(Problem::new(
                format!("{list}[{i}].size"),
                "must not be empty (e.g. \"3B\")",
            ));
        }
        let label = &m.label;
        if label.is_empty()
            || label
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '\\')
        {
            out.push(Problem::new(
                format!("{list}[{i}].label"),
                format!("`{label}` must be non-empty, without spaces or slashes (it becomes a result key)"),
            ));
        } else if !labels.insert(label.as_str()) {
            out.push(Problem::new(
                format!("{list}[{i}].label"),
                format!("`{label}` is used twice in `{list}`; result keys would collide"),
            ));
        }
    }
}
