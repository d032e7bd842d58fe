//! A simple local dataset format for users' own data: one JSON object per line,
//! `{"id": "...", "dialogue": "...", "code": "...", "description": "...", "note": "..."}`
//! (`description` and `note` optional; unknown fields are rejected so a typo such as `"icd10"` is
//! reported instead of silently ignored). Blank lines are skipped; line numbers are 1-based.
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{Candidate, Collector, DatasetError, LoadOptions, LoadedDataset};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    dialogue: String,
    code: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    note: String,
}

/// Loads a JSONL dataset with the same checks and counts as [`super::load_medsynth`]; ids must be
/// unique (the split orders by id).
pub fn load_jsonl(path: &Path, opts: &LoadOptions) -> Result<LoadedDataset, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut collector = Collector::new(path, opts);
    let mut first_seen: HashMap<String, u64> = HashMap::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index as u64 + 1;
        let text = std::str::from_utf8(raw).map_err(|_| DatasetError::JsonlUtf8 {
            path: path.to_path_buf(),
            line,
        })?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(text).map_err(|e| DatasetError::JsonlLine {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        let empty = |field| DatasetError::JsonlEmptyField {
            path: path.to_path_buf(),
            line,
            field,
        };
        if parsed.id.trim().is_empty() {
            return Err(empty("id"));
        }
        if !parsed.dialogue.trim().is_empty() && super::code_is_empty(&parsed.code) {
            return Err(empty("code"));
        }
        let id = parsed.id.trim().to_string();
        if let Some(&first_line) = first_seen.get(&id) {
            return Err(DatasetError::DuplicateId {
                path: path.to_path_buf(),
                line,
                id,
                first_line,
            });
        }
        first_seen.insert(id.clone(), line);
        collector.push(Candidate {
            row: line,
            id,
            dialogue: parsed.dialogue,
            note: parsed.note,
            raw_code: parsed.code,
            description: parsed.description,
        });
    }
    if collector.report.rows_read == 0 {
        return Err(DatasetError::EmptyJsonl {
            path: path.to_path_buf(),
        });
    }
    collector.finish()
}
