//! Loading the experiment config: defaults → file (TOML, or JSON; old shape migrated) → `SIZESPEC_*` env.
//!
//! # Environment overrides
//! `SIZESPEC_<KEY>` sets the dotted key `<key>`, with `__` between levels and any case:
//! `SIZESPEC_TRAINING__LEARNING_RATE=1e-4` sets `training.learning_rate`,
//! `SIZESPEC_DATA__MAX_EVAL_SAMPLES=50` sets `data.max_eval_samples`, `SIZESPEC_NAME=pilot` sets `name`,
//! `SIZESPEC_SLM_MODELS__0__NAME=/models/llama-3b` the first SLM's `name` (a number indexes an array).
//! Where the key currently holds a string the value is taken verbatim; otherwise it is read as a TOML
//! value (`1e-4`, `true`, `["q_proj", "v_proj"]`, `[{ name = "…", size = "3B", label = "L" }]`).
//! A variable without `__` whose name is not a top-level key (`SIZESPEC_MODELS`, `SIZESPEC_LOG`) is
//! not config and is left alone; one with `__` under an unknown section is an error, so a typo
//! never goes unnoticed. The CLI applies its flags on top, then calls [`ExperimentConfig::validate`].
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::ExperimentConfig;
use super::validate::Problem;
use crate::migrate::{MigrateError, MigrationReport};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "SIZESPEC_";

/// Top-level keys of [`ExperimentConfig`] (for telling config variables from other `SIZESPEC_*`).
const TOP_LEVEL_KEYS: [&str; 12] = [
    "name",
    "output",
    "device",
    "dtype",
    "data",
    "prompt",
    "lora",
    "training",
    "generation",
    "evaluation",
    "llm_models",
    "slm_models",
];

/// The key that selects a variant of a tagged section (`[data.source] kind = "jsonl"`).
const TAG_KEY: &str = "kind";

/// Origin used for errors in environment overrides.
const ENV_ORIGIN: &str = "environment";

/// A loaded config and, if the file had the old shape, what the migration did.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: ExperimentConfig,
    pub migration: Option<MigrationReport>,
}

/// Everything that can go wrong while loading a config. `origin` is the file name (or
/// `environment`); `location` is `line N` in a file or the environment variable's name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read the config: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: syntax error{}: {message}", at(.location))]
    Syntax {
        origin: String,
        location: Option<String>,
        message: String,
    },
    #[error("{origin}: unknown key `{key}`{}", at(.location))]
    UnknownKey {
        origin: String,
        key: String,
        location: Option<String>,
    },
    #[error("{origin}: key `{key}`{}: {message}", at(.location))]
    BadValue {
        origin: String,
        key: String,
        location: Option<String>,
        message: String,
    },
    #[error("{origin}: invalid config: {}", join(.problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
    #[error("{origin}: cannot migrate the old config shape: {source}")]
    Migration {
        origin: String,
        #[source]
        source: MigrateError,
    },
    #[error("cannot write the config as TOML: {0}")]
    Serialize(String),
}

fn at(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" ({l})"))
        .unwrap_or_default()
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keeps only the `SIZESPEC_*` variables (pass `std::env::vars()` from `main`; tests pass a map).
pub fn env_overrides_from(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// One step of a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn dotted(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

/// Splits `training.learning_rate` / `slm_models[1].label` into segments.
fn parse_dotted(key: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(rest[..b].to_string()));
            }
            rest = &rest[b..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some(end) = r.find(']') else { break };
                if let Ok(i) = r[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &r[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

fn path_segs(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// `unknown field `x`, expected …` → `x` (serde's wording, stable for years).
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line on which `segs` is written in a TOML text, if it is.
fn toml_line(text: &str, segs: &[Seg]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut value: Option<&DeValue> = None;
    let mut span = None;
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if let Some(DeValue::Table(t)) = value {
                    table = t;
                } else if value.is_some() {
                    break;
                }
                let Some((key, v)) = table
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                else {
                    break;
                };
                span = Some(key.span());
                value = Some(v.get_ref());
            }
            Seg::Index(i) => {
                let Some(DeValue::Array(items)) = value else {
                    break;
                };
                let Some(item) = items.get(*i) else { break };
                span = Some(item.span());
                value = Some(item.get_ref());
            }
        }
    }
    span.map(|s| line_of(text, s.start))
}

/// A parsed file: its text (for locating keys) and its format.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Json,
}

impl Source<'_> {
    fn locate(&self, segs: &[Seg]) -> Option<String> {
        // Walk up to the nearest ancestor that is written in the file (a missing key's table).
        (1..=segs.len()).rev().find_map(|n| match self.format {
            Format::Toml => toml_line(self.text, &segs[..n]).map(|l| format!("line {l}")),
            Format::Json => None,
        })
    }
}

impl ExperimentConfig {
    /// Defaults overlaid with a TOML text (new shape only), validated. `origin` names the text in
    /// errors (usually the file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<ExperimentConfig, ConfigError> {
        let src = Source {
            origin,
            text,
            format: Format::Toml,
        };
        let config = parse_new_shape(&src)?;
        check(&config, Some(&src), &BTreeMap::new())?;
        Ok(config)
    }

    /// Loads a file: TOML (or JSON for a `.json` file), new shape or the old one (migrated, with
    /// the report returned and logged), validated. No environment overrides.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Self::load_layered(Some(path), &BTreeMap::new())
    }

    /// Defaults → the file at `path` (if any) → environment overrides from `env` (see the module
    /// doc), validated.
    pub fn load_layered(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigError> {
        Self::load_layered_over(ExperimentConfig::default(), path, env)
    }

    /// Like [`Self::load_layered`] but the file's keys land on `base` instead of the defaults
    /// (e.g. `--offline` with a file that only changes `data.max_eval_samples`). Tables merge key
    /// by key; lists (the model lists, `target_modules`) and a section whose `kind` changes are
    /// replaced whole. An old-shape file is migrated from the defaults, ignoring `base`.
    pub fn load_layered_over(
        base: ExperimentConfig,
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, ConfigError> {
        let Some(path) = path else {
            let (config, env_paths) = apply_env(base, env)?;
            check(&config, None, &env_paths)?;
            return Ok(Loaded {
                config,
                migration: None,
            });
        };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Toml,
        };
        let src = Source {
            origin: &origin,
            text: &text,
            format,
        };
        let (mut config, migration) = parse_any(&src)?;
        if let Some(report) = &migration {
            tracing::warn!(file = %origin, "old config shape migrated:\n{report}");
        } else if base != ExperimentConfig::default() {
            // The file parsed cleanly over the defaults (errors located); now put its keys on `base`.
            config = overlay(base, &src)?;
        }
        let (config, env_paths) = apply_env(config, env)?;
        check(&config, Some(&src), &env_paths)?;
        Ok(Loaded { config, migration })
    }

    /// `env` overrides on top of `self` (not validated: call [`Self::validate`] after
    /// the CLI flags are applied too).
    pub fn with_env_overrides(
        self,
        env: &BTreeMap<String, String>,
    ) -> Result<ExperimentConfig, ConfigError> {
        apply_env(self, env).map(|(c, _)| c)
    }

    /// Checks a config assembled in code or by the CLI.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self, None, &BTreeMap::new())
    }
}

/// Validation, with each problem located in the layer that set its key.
fn check(
    config: &ExperimentConfig,
    src: Option<&Source>,
    env_paths: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let mut problems = config.problems();
    if problems.is_empty() {
        return Ok(());
    }
    for p in &mut problems {
        let segs = parse_dotted(&p.key);
        p.location = env_var_for(&segs, env_paths).or_else(|| src.and_then(|s| s.locate(&segs)));
    }
    let origin = src
        .map(|s| s.origin.to_string())
        .unwrap_or_else(|| "config".into());
    Err(ConfigError::Invalid { origin, problems })
}

/// The env variable that set `segs`, one of its ancestors or one of its descendants.
fn env_var_for(segs: &[Seg], env_paths: &BTreeMap<String, String>) -> Option<String> {
    env_paths.iter().find_map(|(key, var)| {
        let k = parse_dotted(key);
        let n = k.len().min(segs.len());
        (k[..n] == segs[..n]).then(|| var.clone())
    })
}

fn parse_any(src: &Source) -> Result<(ExperimentConfig, Option<MigrationReport>), ConfigError> {
    let json: serde_json::Value = match src.format {
        Format::Json => serde_json::from_str(src.text).map_err(|e| ConfigError::Syntax {
            origin: src.origin.into(),
            location: Some(format!("line {}, column {}", e.line(), e.column())),
            message: e.to_string(),
        })?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(src.text).map_err(|e| syntax(src, &e))?;
            serde_json::to_value(&table).map_err(|e| ConfigError::Syntax {
                origin: src.origin.into(),
                location: None,
                message: e.to_string(),
            })?
        }
    };
    if crate::migrate::is_old_shape(&json) {
        let (config, report) =
            crate::migrate::migrate(&json).map_err(|source| ConfigError::Migration {
                origin: src.origin.into(),
                source,
            })?;
        return Ok((config, Some(report)));
    }
    let config = match src.format {
        Format::Toml => parse_new_shape(src)?,
        Format::Json => {
            // From the text rather than the parsed value, so the error knows its line.
            let mut de = serde_json::Deserializer::from_str(src.text);
            serde_path_to_error::deserialize::<_, ExperimentConfig>(&mut de).map_err(|e| {
                let inner = e.inner();
                let location = (inner.line() > 0).then(|| format!("line {}", inner.line()));
                let message = inner.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message);
                classify(src.origin, path_segs(e.path()), message, location)
            })?
        }
    };
    Ok((config, None))
}

/// `base` with the keys written in the file on top.
fn overlay(base: ExperimentConfig, src: &Source) -> Result<ExperimentConfig, ConfigError> {
    let file: toml::Value = match src.format {
        Format::Toml => toml::from_str(src.text).map_err(|e| syntax(src, &e))?,
        Format::Json => serde_json::from_str(src.text).map_err(|e| ConfigError::Syntax {
            origin: src.origin.into(),
            location: Some(format!("line {}, column {}", e.line(), e.column())),
            message: e.to_string(),
        })?,
    };
    let mut merged =
        toml::Value::try_from(&base).map_err(|e| ConfigError::Serialize(e.to_string()))?;
    merge(&mut merged, file);
    deserialize::<ExperimentConfig, _>(merged, src.origin, |segs| src.locate(segs))
        .map_err(DeFailure::into_config_error)
}

/// Deep merge of TOML values: tables key by key, anything else (lists included) replaced.
fn merge(dst: &mut toml::Value, src: toml::Value) {
    match (dst, src) {
        (toml::Value::Table(d), toml::Value::Table(s)) => {
            if let (Some(old), Some(new)) = (d.get(TAG_KEY), s.get(TAG_KEY))
                && old != new
            {
                d.clear();
            }
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (d, s) => *d = s,
    }
}

fn syntax(src: &Source, e: &toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        origin: src.origin.into(),
        location: e
            .span()
            .map(|s| format!("line {}", line_of(src.text, s.start))),
        message: e.message().trim().to_string(),
    }
}

fn parse_new_shape(src: &Source) -> Result<ExperimentConfig, ConfigError> {
    let de = toml::Deserializer::parse(src.text).map_err(|e| syntax(src, &e))?;
    match serde_path_to_error::deserialize::<_, ExperimentConfig>(de) {
        Ok(c) => Ok(c),
        Err(e) => {
            let segs = path_segs(e.path());
            let inner = e.inner();
            let located = inner
                .span()
                .map(|s| format!("line {}", line_of(src.text, s.start)))
                .or_else(|| src.locate(&segs));
            Err(classify(src.origin, segs, inner.message(), located))
        }
    }
}

/// A deserialisation failure before it is turned into a [`ConfigError`].
struct DeFailure {
    origin: String,
    segs: Vec<Seg>,
    message: String,
    location: Option<String>,
}

impl DeFailure {
    fn into_config_error(self) -> ConfigError {
        classify(&self.origin, self.segs, &self.message, self.location)
    }
}

fn deserialize<T: DeserializeOwned, D>(
    value: D,
    origin: &str,
    locate: impl Fn(&[Seg]) -> Option<String>,
) -> Result<T, DeFailure>
where
    for<'de> D: serde::Deserializer<'de>,
    for<'de> <D as serde::Deserializer<'de>>::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let segs = path_segs(e.path());
        let location = locate(&segs);
        DeFailure {
            origin: origin.into(),
            segs,
            message: e.inner().to_string(),
            location,
        }
    })
}

/// Unknown keys get their own variant (the most common mistake); the key is the full dotted path.
fn classify(
    origin: &str,
    mut segs: Vec<Seg>,
    message: &str,
    location: Option<String>,
) -> ConfigError {
    let message = message.trim();
    if let Some(field) = unknown_field(message) {
        if segs.last() != Some(&Seg::Key(field.to_string())) {
            segs.push(Seg::Key(field.to_string()));
        }
        return ConfigError::UnknownKey {
            origin: origin.into(),
            key: dotted(&segs),
            location,
        };
    }
    ConfigError::BadValue {
        origin: origin.into(),
        key: dotted(&segs),
        location,
        message: message.into(),
    }
}

/// Applies `SIZESPEC_*` overrides; returns the config and which dotted key each variable set.
fn apply_env(
    config: ExperimentConfig,
    env: &BTreeMap<String, String>,
) -> Result<(ExperimentConfig, BTreeMap<String, String>), ConfigError> {
    let mut overrides = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if !TOP_LEVEL_KEYS.contains(&parts[0].as_str()) {
            if parts.len() > 1 {
                return Err(ConfigError::UnknownKey {
                    origin: ENV_ORIGIN.into(),
                    key: parts.join("."),
                    location: Some(var.clone()),
                });
            }
            continue; // not config: another SIZESPEC_* variable (models dir, log level, CLI flags)
        }
        let segs: Vec<Seg> = parts
            .into_iter()
            .map(|p| p.parse::<usize>().map(Seg::Index).unwrap_or(Seg::Key(p)))
            .collect();
        overrides.push((var.clone(), segs, raw.clone()));
    }
    if overrides.is_empty() {
        return Ok((config, BTreeMap::new()));
    }
    // A variant switch (`…__SOURCE__KIND`) clears its table, so it goes before the fields it brings.
    overrides.sort_by_key(|(_, segs, _)| segs.last() != Some(&Seg::Key(TAG_KEY.into())));
    let mut root =
        toml::Value::try_from(&config).map_err(|e| ConfigError::Serialize(e.to_string()))?;
    let mut set_by = BTreeMap::new();
    for (var, segs, raw) in &overrides {
        set_path(&mut root, segs, raw).map_err(|message| ConfigError::BadValue {
            origin: ENV_ORIGIN.into(),
            key: dotted(segs),
            location: Some(var.clone()),
            message,
        })?;
        set_by.insert(dotted(segs), var.clone());
    }
    let located = |segs: &[Seg]| env_var_for(segs, &set_by);
    let config = deserialize::<ExperimentConfig, _>(root, ENV_ORIGIN, located)
        .map_err(DeFailure::into_config_error)?;
    Ok((config, set_by))
}

/// Reads an override's raw text as the type of the value it replaces (see the module doc).
fn coerce(raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    if let Some(toml::Value::String(_)) = existing {
        return toml::Value::String(raw.to_string());
    }
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(root: &mut toml::Value, segs: &[Seg], raw: &str) -> Result<(), String> {
    let (last, parents) = segs.split_last().ok_or("empty key")?;
    let mut cur = root;
    for (i, seg) in parents.iter().enumerate() {
        cur = match (seg, cur) {
            (Seg::Key(k), toml::Value::Table(t)) => t
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            (Seg::Index(n), toml::Value::Array(items)) => {
                let len = items.len();
                items
                    .get_mut(*n)
                    .ok_or_else(|| format!("`{}` has only {len} entries", dotted(&segs[..i])))?
            }
            (_, other) => {
                return Err(format!(
                    "`{}` is a {}, not a table",
                    dotted(&segs[..i]),
                    other.type_str()
                ));
            }
        };
    }
    match (last, cur) {
        (Seg::Key(k), toml::Value::Table(t)) => {
            let v = coerce(raw, t.get(k));
            if k == TAG_KEY && t.get(k).is_some_and(|old| old != &v) {
                t.clear(); // another variant: the old variant's fields would be unknown keys
            }
            t.insert(k.clone(), v);
        }
        (Seg::Index(n), toml::Value::Array(items)) => {
            let len = items.len();
            let slot = items
                .get_mut(*n)
                .ok_or_else(|| format!("the list has only {len} entries"))?;
            *slot = coerce(raw, Some(slot));
        }
        (_, other) => return Err(format!("the parent is a {}, not a table", other.type_str())),
    }
    Ok(())
}
