//! Dataset records and their loaders: the MedSynth CSV ([`load_medsynth`]) and a simple JSONL
//! format for users' own data ([`load_jsonl`]), both reporting what they kept and dropped.
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod jsonl;
mod medsynth;

pub use jsonl::load_jsonl;
pub use medsynth::load_medsynth;

/// One example: a doctor–patient dialogue and its ICD-10-CM code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id: `medsynth-<row>` for MedSynth (1-based data row), `embedded-<n>` for the default set.
    pub id: String,
    /// The dialogue text (model input for the honest task).
    pub dialogue: String,
    /// The clinical note (may state the diagnosis; not used as model input by default).
    pub note: String,
    /// The reference code, normalised by [`crate::icd10::normalize`] (upper case, no dot).
    pub code: String,
    /// The code's description as given by the source.
    pub description: String,
}

/// The invalid-code policy is a config value; its one definition lives in the config.
pub use crate::config::InvalidCodePolicy;

/// Loader options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub invalid_codes: InvalidCodePolicy,
}

/// The loaded records and what happened on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDataset {
    pub records: Vec<Record>,
    pub report: LoadReport,
}

/// How many examples of invalid codes a [`LoadReport`] keeps.
pub const MAX_INVALID_EXAMPLES: usize = 10;

/// One invalid code as found in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidCodeExample {
    /// Spreadsheet row for CSV (header = row 1), line number for JSONL.
    pub row: u64,
    /// The code as written in the file.
    pub raw: String,
}

/// Counts from one load; `Display` prints a short multi-line summary for the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub source: PathBuf,
    /// Data rows (CSV) or non-blank lines (JSONL) read.
    pub rows_read: usize,
    /// Records returned.
    pub kept: usize,
    /// Rows dropped because the dialogue was empty or whitespace.
    pub empty_dialogues_dropped: usize,
    /// Rows whose code is not in the ICD-10-CM release (among rows with a dialogue).
    pub invalid_codes_seen: usize,
    /// Of those, dropped under [`InvalidCodePolicy::Drop`].
    pub invalid_codes_dropped: usize,
    /// Up to [`MAX_INVALID_EXAMPLES`] distinct invalid codes (first occurrence of each), in file order.
    pub invalid_code_examples: Vec<InvalidCodeExample>,
    /// Kept rows whose code is valid but not billable (a category or subcategory heading).
    pub non_billable_codes: usize,
    /// Distinct normalised codes among the kept records.
    pub distinct_codes: usize,
    /// Rows whose code was written with a dot (`U07.1`).
    pub dotted_codes_seen: usize,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset {}", self.source.display())?;
        writeln!(f, "  rows read:               {}", self.rows_read)?;
        writeln!(
            f,
            "  records kept:            {} ({} distinct codes)",
            self.kept, self.distinct_codes
        )?;
        writeln!(
            f,
            "  empty dialogues dropped: {}",
            self.empty_dialogues_dropped
        )?;
        writeln!(
            f,
            "  invalid codes:           {} seen, {} dropped",
            self.invalid_codes_seen, self.invalid_codes_dropped
        )?;
        if !self.invalid_code_examples.is_empty() {
            let examples: Vec<String> = self
                .invalid_code_examples
                .iter()
                .map(|e| format!("{} (row {})", e.raw, e.row))
                .collect();
            writeln!(f, "    e.g. {}", examples.join(", "))?;
        }
        writeln!(f, "  non-billable codes kept: {}", self.non_billable_codes)?;
        write!(f, "  codes written dotted:    {}", self.dotted_codes_seen)
    }
}

/// A load that failed; every message names the file and, where there is one, the row and column.
#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the file is empty (expected a header line: ` Note`, `Dialogue`, `ICD10`, `ICD10_desc`)"
    )]
    EmptyFile { path: PathBuf },
    #[error("{path}: the file has a header but no data rows")]
    HeaderOnly { path: PathBuf },
    #[error("{path}: no column `{column}` in the header (columns found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        found: String,
    },
    #[error("{path}: header column {index} is not valid UTF-8")]
    HeaderUtf8 { path: PathBuf, index: usize },
    #[error(
        "{path}: row {row} (line {line}): column `{column}` is not valid UTF-8 (re-save the file as UTF-8)"
    )]
    BadUtf8 {
        path: PathBuf,
        row: u64,
        line: u64,
        column: String,
    },
    #[error(
        "{path}: row {row} (line {line}) has {found} fields but the header has {expected} (an unquoted comma or quote?)"
    )]
    Ragged {
        path: PathBuf,
        row: u64,
        line: u64,
        expected: u64,
        found: u64,
    },
    #[error("{path}: row {row} (line {line}): column `{column}` is empty")]
    EmptyField {
        path: PathBuf,
        row: u64,
        line: u64,
        column: String,
    },
    #[error("{path}: row {row} (line {line}): cannot read the CSV: {source}")]
    Csv {
        path: PathBuf,
        row: u64,
        line: u64,
        source: csv::Error,
    },
    #[error("{path}: the file has no records (expected one JSON object per line)")]
    EmptyJsonl { path: PathBuf },
    #[error("{path}: line {line} is not valid UTF-8")]
    JsonlUtf8 { path: PathBuf, line: u64 },
    #[error("{path}: line {line}: {message}")]
    JsonlLine {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: line {line}: field `{field}` is empty")]
    JsonlEmptyField {
        path: PathBuf,
        line: u64,
        field: &'static str,
    },
    #[error(
        "{path}: line {line}: id `{id}` was already used on line {first_line}; ids must be unique"
    )]
    DuplicateId {
        path: PathBuf,
        line: u64,
        id: String,
        first_line: u64,
    },
    #[error(
        "{path}: no records left after dropping {dropped} rows (empty dialogues / invalid codes)"
    )]
    NothingKept { path: PathBuf, dropped: usize },
    #[error("{path}: unknown dataset format (expected a `.csv` MedSynth file or a `.jsonl` file)")]
    UnknownFormat { path: PathBuf },
}

/// Loads a dataset by file extension: `.csv` as MedSynth, `.jsonl` / `.ndjson` as JSONL.
pub fn load_path(path: &Path, opts: &LoadOptions) -> Result<LoadedDataset, DatasetError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => load_medsynth(path, opts),
        Some("jsonl" | "ndjson") => load_jsonl(path, opts),
        _ => Err(DatasetError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// The code cell without control and zero-width characters (U+200B-U+200D, U+2060, U+FEFF), which
/// spreadsheet exports leave behind and which would otherwise make a valid code look invalid.
fn clean_code(raw: &str) -> String {
    raw.chars()
        .filter(|&c| {
            !c.is_control() && !matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}')
        })
        .collect()
}

/// Whether a code cell holds no code at all once cleaned and normalised.
fn code_is_empty(raw: &str) -> bool {
    crate::icd10::normalize(&clean_code(raw)).is_empty()
}

/// What a loader found in one row, before the policy decides.
struct Candidate {
    row: u64,
    id: String,
    dialogue: String,
    note: String,
    raw_code: String,
    description: String,
}

/// The checks and counts both loaders share: empty dialogues are dropped, codes normalised and
/// validated, the policy applied.
struct Collector {
    opts: LoadOptions,
    records: Vec<Record>,
    report: LoadReport,
}

impl Collector {
    fn new(path: &Path, opts: &LoadOptions) -> Self {
        Self {
            opts: *opts,
            records: Vec::new(),
            report: LoadReport {
                source: path.to_path_buf(),
                rows_read: 0,
                kept: 0,
                empty_dialogues_dropped: 0,
                invalid_codes_seen: 0,
                invalid_codes_dropped: 0,
                invalid_code_examples: Vec::new(),
                non_billable_codes: 0,
                distinct_codes: 0,
                dotted_codes_seen: 0,
            },
        }
    }

    /// The caller has already rejected an empty code (an error, not a drop).
    fn push(&mut self, c: Candidate) {
        self.report.rows_read += 1;
        let dialogue = c.dialogue.trim();
        if dialogue.is_empty() {
            self.report.empty_dialogues_dropped += 1;
            return;
        }
        let raw_code = clean_code(&c.raw_code);
        let raw_code = raw_code.trim();
        self.report.dotted_codes_seen += usize::from(raw_code.contains('.'));
        let code = crate::icd10::normalize(raw_code);
        if !crate::icd10::is_valid(&code) {
            self.report.invalid_codes_seen += 1;
            let examples = &self.report.invalid_code_examples;
            if examples.len() < MAX_INVALID_EXAMPLES && !examples.iter().any(|e| e.raw == raw_code)
            {
                self.report.invalid_code_examples.push(InvalidCodeExample {
                    row: c.row,
                    raw: raw_code.to_string(),
                });
            }
            if self.opts.invalid_codes == InvalidCodePolicy::Drop {
                self.report.invalid_codes_dropped += 1;
                return;
            }
        } else if !crate::icd10::is_billable(&code) {
            self.report.non_billable_codes += 1;
        }
        self.records.push(Record {
            id: c.id,
            dialogue: dialogue.to_string(),
            note: c.note.trim().to_string(),
            code,
            description: c.description.trim().to_string(),
        });
    }

    fn finish(mut self) -> Result<LoadedDataset, DatasetError> {
        if self.records.is_empty() {
            return Err(DatasetError::NothingKept {
                path: self.report.source.clone(),
                dropped: self.report.rows_read,
            });
        }
        self.report.kept = self.records.len();
        self.report.distinct_codes = self
            .records
            .iter()
            .map(|r| r.code.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        Ok(LoadedDataset {
            records: self.records,
            report: self.report,
        })
    }
}

#[cfg(test)]
mod tests;
