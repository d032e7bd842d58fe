//! The coordinator's journal on disk, so a restarted `serve` resumes unfinished experiments without
//! redoing finished tasks or predictions already received.
//!
//! Layout under the data dir: `experiments/<id>/plan.json` (written once), `state.json` (task
//! phases and outputs, rewritten atomically on every change), `predictions/<task>.jsonl` (appended
//! per received batch; a torn last line from a crash is ignored on load). All methods block: the
//! state owner calls them through `spawn_blocking`.
use crate::experiment::{ExperimentId, ExperimentPlan};
use crate::outcome::TaskOutput;
use serde::{Deserialize, Serialize};
use shared::task::{AgentId, PredictionRow, TaskId, TaskState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal {path}: not valid JSON ({source}); move it away to start that experiment afresh"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A task's persisted progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskJournal {
    pub state: TaskState,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub detail: String,
    pub attempt: u32,
    pub output: Option<TaskOutput>,
    /// The agent that ran a finetune (its eval prefers that agent).
    pub ran_on: Option<AgentId>,
    /// A finetune's latest checkpoint: a re-queued finetune resumes from it.
    #[serde(default)]
    pub checkpoint: Option<crate::state::core::CheckpointRef>,
}

/// All tasks' persisted progress for one experiment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExperimentJournal {
    pub tasks: BTreeMap<TaskId, TaskJournal>,
    /// Set once the outputs were written.
    pub finished: bool,
    /// The report was built with them.
    #[serde(default)]
    pub report: bool,
}

/// One experiment as read back.
#[derive(Debug)]
pub struct Restored {
    pub plan: ExperimentPlan,
    pub state: ExperimentJournal,
    pub predictions: BTreeMap<TaskId, Vec<PredictionRow>>,
}

/// File-name form of a task id (`eval:LLM_Llama-8B` → `eval_LLM_Llama-8B`).
pub fn task_file_stem(id: &TaskId) -> String {
    id.0.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Journal {
    root: PathBuf,
}

impl Journal {
    pub fn new(data_dir: &Path) -> Journal {
        Journal {
            root: data_dir.join("experiments"),
        }
    }

    fn dir(&self, id: &ExperimentId) -> PathBuf {
        self.root.join(&id.0)
    }

    pub fn save_plan(&self, plan: &ExperimentPlan) -> Result<(), JournalError> {
        let path = self.dir(&plan.id).join("plan.json");
        shared::fsutil::write_json_atomic(&path, plan).map_err(io(&path))
    }

    pub fn save_state(
        &self,
        id: &ExperimentId,
        state: &ExperimentJournal,
    ) -> Result<(), JournalError> {
        let path = self.dir(id).join("state.json");
        shared::fsutil::write_json_atomic(&path, state).map_err(io(&path))
    }

    /// Appends one batch as JSON lines in a single write, then fsyncs: a batch is durable once this
    /// returns, and a crash mid-write tears at most the last line.
    pub fn append_predictions(
        &self,
        id: &ExperimentId,
        task: &TaskId,
        rows: &[PredictionRow],
    ) -> Result<(), JournalError> {
        let path = self
            .dir(id)
            .join("predictions")
            .join(format!("{}.jsonl", task_file_stem(task)));
        let mut buf = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut buf, r).map_err(|source| JournalError::Corrupt {
                path: path.clone(),
                source,
            })?;
            buf.push(b'\n');
        }
        shared::fsutil::append_durable(&path, &buf).map_err(io(&path))
    }

    /// Every experiment in the journal.
    pub fn load_all(&self) -> Result<Vec<Restored>, JournalError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(JournalError::Io {
                    path: self.root.clone(),
                    source: e,
                });
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let plan_path = dir.join("plan.json");
            if !plan_path.is_file() {
                continue;
            }
            let plan: ExperimentPlan = read_json(&plan_path)?;
            let state_path = dir.join("state.json");
            let state = if state_path.is_file() {
                read_json(&state_path)?
            } else {
                ExperimentJournal::default()
            };
            let mut predictions = BTreeMap::new();
            for t in &plan.tasks {
                let p = dir
                    .join("predictions")
                    .join(format!("{}.jsonl", task_file_stem(&t.spec.id)));
                if p.is_file() {
                    predictions.insert(t.spec.id.clone(), read_jsonl(&p)?);
                }
            }
            out.push(Restored {
                plan,
                state,
                predictions,
            });
        }
        Ok(out)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, JournalError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads JSON lines; a line that does not parse is only tolerated last (a torn append).
fn read_jsonl(path: &Path) -> Result<Vec<PredictionRow>, JournalError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => rows.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(path = %path.display(), "ignoring a torn last prediction line");
            }
            Err(source) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn row(id: &str) -> PredictionRow {
        PredictionRow {
            sample_id: id.into(),
            reference: "J069".into(),
            raw_output: "J06.9".into(),
            extracted: Some("J069".into()),
            correct: true,
            latency_ms: 1.0,
            generated_tokens: 3,
            prompt_tokens: 10,
        }
    }

    #[test]
    fn predictions_append_and_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let id = ExperimentId("e".into());
        let t = TaskId("eval:LLM_X".into());
        j.append_predictions(&id, &t, &[row("a"), row("b")])
            .unwrap();
        j.append_predictions(&id, &t, &[row("c")]).unwrap();
        let p = dir
            .path()
            .join("experiments/e/predictions/eval_LLM_X.jsonl");
        assert_eq!(read_jsonl(&p).unwrap().len(), 3);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"sample_id\":\"d\",\"refer").unwrap();
        let rows = read_jsonl(&p).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| r.sample_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
