//! Loading the experiment config: defaults → file (TOML, or JSON; old shape migrated) → `SIZESPEC_*` env.
//!
//! Errors name the file, the dotted key and its line ([`super::keypath`] finds it); environment
//! overrides are applied by `env` (scheme: [`super::env_overrides_from`]).
use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::ExperimentConfig;
use super::env::{apply_env, env_var_for};
use super::keypath::{Seg, dotted, line_of, parse_dotted, path_segs, toml_line, unknown_field};
use super::validate::Problem;
use crate::migrate::{MigrateError, MigrationReport};

/// The key that selects a variant of a tagged section (`[data.source] kind = "jsonl"`).
pub(super) const TAG_KEY: &str = "kind";

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
pub(super) struct DeFailure {
    origin: String,
    segs: Vec<Seg>,
    message: String,
    location: Option<String>,
}

impl DeFailure {
    pub(super) fn into_config_error(self) -> ConfigError {
        classify(&self.origin, self.segs, &self.message, self.location)
    }
}

pub(super) fn deserialize<T: DeserializeOwned, D>(
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
