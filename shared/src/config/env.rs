//! `SIZESPEC_*` environment overrides of the experiment config (scheme: see [`env_overrides_from`]).
use std::collections::BTreeMap;

use super::ExperimentConfig;
use super::keypath::{Seg, dotted, parse_dotted};
use super::load::{ConfigError, DeFailure, TAG_KEY, deserialize};

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

/// Origin used for errors in environment overrides.
const ENV_ORIGIN: &str = "environment";

/// Keeps only the `SIZESPEC_*` variables (pass `std::env::vars()` from `main`; tests pass a map).
///
/// `SIZESPEC_<KEY>` sets the dotted key `<key>`, with `__` between levels and any case:
/// `SIZESPEC_TRAINING__LEARNING_RATE=1e-4` sets `training.learning_rate`,
/// `SIZESPEC_DATA__MAX_EVAL_SAMPLES=50` sets `data.max_eval_samples`, `SIZESPEC_NAME=pilot` sets `name`,
/// `SIZESPEC_SLM_MODELS__0__NAME=/models/llama-3b` the first SLM's `name` (a number indexes an array).
/// Where the key currently holds a string the value is taken verbatim; otherwise it is read as a TOML
/// value (`1e-4`, `true`, `["q_proj", "v_proj"]`, `[{ name = "…", size = "3B", label = "L" }]`).
/// A variable without `__` whose name is not a top-level key (`SIZESPEC_MODELS`, `SIZESPEC_LOG`) is
/// not config and is left alone; one with `__` under an unknown section is an error, so a typo
/// never goes unnoticed. The CLI applies its flags on top, then calls [`ExperimentConfig::validate`].
pub fn env_overrides_from(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// The env variable that set `segs`, one of its ancestors or one of its descendants.
pub(super) fn env_var_for(segs: &[Seg], env_paths: &BTreeMap<String, String>) -> Option<String> {
    env_paths.iter().find_map(|(key, var)| {
        let k = parse_dotted(key);
        let n = k.len().min(segs.len());
        (k[..n] == segs[..n]).then(|| var.clone())
    })
}

/// Applies `SIZESPEC_*` overrides; returns the config and which dotted key each variable set.
pub(super) fn apply_env(
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

/// Reads an override's raw text as the type of the value it replaces (see [`env_overrides_from`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_are_the_config_fields() {
        let table = toml::Table::try_from(ExperimentConfig::default()).unwrap();
        let mut fields: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut known = TOP_LEVEL_KEYS.to_vec();
        fields.sort();
        known.sort();
        assert_eq!(
            fields, known,
            "a field was added to ExperimentConfig: add it to TOP_LEVEL_KEYS"
        );
    }
}
