//! The prediction cache shared across experiments: per-row predictions of zero-shot evaluations
//! stored under `shared::cache`'s keys, so a new experiment that evaluates a model the same way as
//! an earlier one reuses those rows and evaluates only the missing ones.
//!
//! Layout (one folder per evaluation key, written through `shared::fsutil`):
//! `<dir>/<eval key>/meta.json` (what the key stands for, when it was first and last written),
//! `<dir>/<eval key>/rows.jsonl` (one [`StoredRow`] a line, durable appends) and
//! `<dir>/<eval key>/performance.json` (the last run's [`EvalPerformance`], for an evaluation
//! completed wholly from the cache). The key is built from what the coordinator knows before
//! anything runs ([`eval_key_for`]): the hub id + revision, or for a local path a fingerprint of
//! its files (names, sizes, modification times). Evaluations with an adapter are not cached: the
//! adapter's digest exists only after its finetune.
use crate::experiment::{ExperimentPlan, TaskPayload};
use crate::outcome::{EvalPerformance, TaskOutput};
use crate::outputs::OutputsInput;
use serde::{Deserialize, Serialize};
use shared::cache::{CacheKeyParts, eval_key, record_hash};
use shared::task::{PredictionRow, TaskId, TaskKind, TaskSpec, TaskState};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[cfg(test)]
mod tests;

/// One cached prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRow {
    pub record_id: String,
    pub record_hash: String,
    /// Unix seconds when the row was evaluated.
    pub computed_at: u64,
    /// The experiment that evaluated it.
    pub experiment: String,
    pub row: PredictionRow,
}

/// What an evaluation key stands for (for `coordinator cache list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub model: String,
    pub revision: Option<String>,
    pub quantization: String,
    pub max_new_tokens: usize,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

/// The rows an experiment found in the cache for one task when it was planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheHit {
    pub rows: Vec<StoredRow>,
    /// The performance of the run that last wrote this key; used when no row is left to evaluate.
    pub performance: Option<EvalPerformance>,
}

/// The cache as an experiment uses it (carried in its plan, so a restart keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCache {
    pub dir: PathBuf,
    /// The evaluation key of each cacheable task.
    pub keys: BTreeMap<TaskId, String>,
    /// Rows found at planning time, by task.
    pub hits: BTreeMap<TaskId, CacheHit>,
}

impl PlanCache {
    /// The cached rows of `task`, if any.
    pub fn rows(&self, task: &TaskId) -> impl Iterator<Item = &PredictionRow> {
        self.hits
            .get(task)
            .into_iter()
            .flat_map(|h| h.rows.iter().map(|r| &r.row))
    }
}

/// `$SIZESPEC_CACHE`, else `~/.cache/sizespec/predictions` (single-box mode and `cache` commands).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SIZESPEC_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("sizespec").join("predictions")
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("prediction cache {}: {e}", path.display())
}

/// A local model path's fingerprint: each file's name, size and modification time (nanoseconds),
/// sorted by name; the file itself for a `.gguf`. `None` when the path is not on this machine.
pub fn files_fingerprint(path: &Path) -> Option<String> {
    let one = |p: &Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        let mtime = m
            .modified()
            .ok()?
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let name = p.file_name()?.to_string_lossy();
        Some(format!("{name} {} {mtime}", m.len()))
    };
    if path.is_file() {
        return one(path);
    }
    let mut lines: Vec<String> = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| one(&e.path()))
        .collect();
    lines.sort();
    Some(lines.join("\n"))
}

/// The evaluation key of a task, or `None` when it is not cacheable: a finetune, an evaluation
/// with an adapter, or a local model path this machine cannot see (a change there would go
/// unnoticed).
pub fn eval_key_for(spec: &TaskSpec, payload: &TaskPayload) -> Option<String> {
    let TaskPayload::Evaluate(p) = payload else {
        return None;
    };
    if spec.kind != TaskKind::Evaluate || !spec.depends_on.is_empty() || p.adapter.is_some() {
        return None;
    }
    let name = &spec.model.name;
    let files = if hubclient::is_repo_id(name) && !Path::new(name).exists() {
        None
    } else {
        Some(files_fingerprint(Path::new(name))?)
    };
    Some(eval_key(&CacheKeyParts {
        model_id: name,
        revision: spec.model.revision.as_deref(),
        files: files.as_deref(),
        quantization: spec.model.quantization,
        adapter_hash: None,
        prompt: &p.prompt,
        generation: &p.generation,
    }))
}

/// The prediction cache in one folder.
#[derive(Debug, Clone)]
pub struct PredictionCache {
    pub dir: PathBuf,
}

impl PredictionCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PredictionCache { dir: dir.into() }
    }

    fn group(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Every stored row of `key` (the first of duplicates wins); empty when the key is unknown.
    fn read_rows(&self, key: &str) -> Result<Vec<StoredRow>, String> {
        let path = self.group(key).join("rows.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<StoredRow>(line) {
                Ok(r) => rows.push(r),
                // An append cut short by a crash: that row is simply not cached.
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "unreadable cache row skipped")
                }
            }
        }
        Ok(rows)
    }

    /// Looks up every cacheable evaluation of `plan` and records the keys and the rows found in
    /// `plan.cache`. Blocking.
    pub fn attach(&self, plan: &mut ExperimentPlan) -> Result<(), String> {
        let mut keys = BTreeMap::new();
        let mut hits = BTreeMap::new();
        for t in &plan.tasks {
            let Some(key) = eval_key_for(&t.spec, &t.payload) else {
                continue;
            };
            let TaskPayload::Evaluate(p) = &t.payload else {
                continue;
            };
            let stored: HashMap<(String, String), StoredRow> = self
                .read_rows(&key)?
                .into_iter()
                .rev()
                .map(|r| ((r.record_id.clone(), r.record_hash.clone()), r))
                .collect();
            let rows: Vec<StoredRow> = p
                .samples
                .iter()
                .filter_map(|s| stored.get(&(s.id.clone(), record_hash(s))).cloned())
                .collect();
            if !rows.is_empty() {
                let perf_path = self.group(&key).join("performance.json");
                let performance = std::fs::read_to_string(&perf_path)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
                tracing::info!(task = %t.spec.id.0, rows = rows.len(), of = p.samples.len(), "predictions from the cache");
                hits.insert(t.spec.id.clone(), CacheHit { rows, performance });
            }
            keys.insert(t.spec.id.clone(), key);
        }
        plan.cache = Some(PlanCache {
            dir: self.dir.clone(),
            keys,
            hits,
        });
        Ok(())
    }

    /// Stores the rows a finished experiment evaluated itself (not those it took from the cache)
    /// for every succeeded cacheable evaluation; returns how many rows were written. Blocking.
    pub fn store(&self, input: &OutputsInput, now: u64) -> Result<usize, String> {
        let Some(pc) = &input.plan.cache else {
            return Ok(0);
        };
        let mut written = 0;
        for (t, planned) in input.tasks.iter().zip(&input.plan.tasks) {
            let (Some(key), TaskState::Succeeded, TaskPayload::Evaluate(p)) =
                (pc.keys.get(&t.spec.id), &t.state, &planned.payload)
            else {
                continue;
            };
            let cached: std::collections::HashSet<&str> =
                pc.rows(&t.spec.id).map(|r| r.sample_id.as_str()).collect();
            let records: HashMap<&str, &shared::dataset::Record> =
                p.samples.iter().map(|s| (s.id.as_str(), s)).collect();
            let mut lines = String::new();
            let mut n = 0;
            for row in &t.predictions {
                let Some(rec) = records.get(row.sample_id.as_str()) else {
                    continue;
                };
                if cached.contains(row.sample_id.as_str()) {
                    continue;
                }
                let stored = StoredRow {
                    record_id: rec.id.clone(),
                    record_hash: record_hash(rec),
                    computed_at: now,
                    experiment: input.plan.id.0.clone(),
                    row: row.clone(),
                };
                lines.push_str(&serde_json::to_string(&stored).map_err(|e| e.to_string())?);
                lines.push('\n');
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let dir = self.group(key);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let meta_path = dir.join("meta.json");
            let created = std::fs::read_to_string(&meta_path)
                .ok()
                .and_then(|t| serde_json::from_str::<GroupMeta>(&t).ok())
                .map_or(now, |m| m.created);
            let meta = GroupMeta {
                model: t.spec.model.name.clone(),
                revision: t.spec.model.revision.clone(),
                quantization: format!("{:?}", t.spec.model.quantization),
                max_new_tokens: p.generation.max_new_tokens,
                created,
                updated: now,
            };
            let rows_path = dir.join("rows.jsonl");
            shared::fsutil::append_durable(&rows_path, lines.as_bytes())
                .map_err(io_err(&rows_path))?;
            shared::fsutil::write_json_atomic(&meta_path, &meta).map_err(io_err(&meta_path))?;
            if let Some(TaskOutput::Evaluated(perf)) = &t.output {
                let perf_path = dir.join("performance.json");
                shared::fsutil::write_json_atomic(&perf_path, perf).map_err(io_err(&perf_path))?;
            }
            written += n;
        }
        Ok(written)
    }

    /// Every evaluation key with its meta and row count, oldest first.
    pub fn list(&self) -> Result<Vec<(String, GroupMeta, usize)>, String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let key = e.file_name().to_string_lossy().to_string();
            let meta_path = e.path().join("meta.json");
            let Some(meta) = std::fs::read_to_string(&meta_path)
                .ok()
                .and_then(|t| serde_json::from_str::<GroupMeta>(&t).ok())
            else {
                continue;
            };
            let rows = self.read_rows(&key)?.len();
            out.push((key, meta, rows));
        }
        out.sort_by_key(|(k, m, _)| (m.updated, k.clone()));
        Ok(out)
    }

    /// Removes the keys last written before `before` (unix seconds) whose model name contains
    /// `model` (every model when `None`); returns the removed keys.
    pub fn prune(&self, before: u64, model: Option<&str>) -> Result<Vec<String>, String> {
        let mut removed = Vec::new();
        for (key, meta, _) in self.list()? {
            if meta.updated < before && model.is_none_or(|m| meta.model.contains(m)) {
                let dir = self.group(&key);
                std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
                removed.push(key);
            }
        }
        Ok(removed)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of unix seconds.
pub fn rfc3339(secs: u64) -> String {
    crate::outputs::results::rfc3339(secs as i64)
}

/// What `prediction_cache.json` in the output folder says: for each task that took rows from the
/// cache, how many, which experiments computed them and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheUse {
    pub task: String,
    pub key: String,
    pub rows_from_cache: usize,
    pub rows_evaluated: usize,
    pub computed_first: String,
    pub computed_last: String,
    pub computed_by: Vec<String>,
}

/// The cache use of a finished experiment's tasks (empty without hits).
pub fn cache_use(input: &OutputsInput) -> Vec<CacheUse> {
    let Some(pc) = &input.plan.cache else {
        return Vec::new();
    };
    input
        .tasks
        .iter()
        .filter_map(|t| {
            let hit = pc.hits.get(&t.spec.id)?;
            let first = hit.rows.iter().map(|r| r.computed_at).min()?;
            let last = hit.rows.iter().map(|r| r.computed_at).max()?;
            let mut by: Vec<String> = hit.rows.iter().map(|r| r.experiment.clone()).collect();
            by.sort();
            by.dedup();
            Some(CacheUse {
                task: t.spec.id.0.clone(),
                key: pc.keys.get(&t.spec.id).cloned().unwrap_or_default(),
                rows_from_cache: hit.rows.len(),
                rows_evaluated: t.predictions.len().saturating_sub(hit.rows.len()),
                computed_first: rfc3339(first),
                computed_last: rfc3339(last),
                computed_by: by,
            })
        })
        .collect()
}

/// After an experiment's outputs: its evaluated rows into the cache, and `prediction_cache.json`
/// (which results came from the cache, computed when) into its output folder. Failures are
/// logged: the cache never fails an experiment.
pub fn after_outputs(input: &OutputsInput) {
    let Some(pc) = &input.plan.cache else {
        return;
    };
    match PredictionCache::new(&pc.dir).store(input, now_unix()) {
        Ok(n) => tracing::info!(rows = n, dir = %pc.dir.display(), "predictions cached"),
        Err(e) => tracing::warn!(error = %e, "predictions not cached"),
    }
    let used = cache_use(input);
    if !used.is_empty() {
        let path = input.plan.output_dir.join("prediction_cache.json");
        if let Err(e) = shared::fsutil::write_json_atomic(&path, &used) {
            tracing::warn!(path = %path.display(), error = %e, "prediction_cache.json not written");
        }
    }
}
