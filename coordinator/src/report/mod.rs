//! The verdict: statistics over per-sample predictions, plots, and the self-contained report.
//!
//! [`build`] reads an experiment's output folder ([`input`]), computes the statistics
//! ([`analysis`] over [`stats`] and [`mcnemar`]), draws the plots ([`plots`]) and writes
//! `report.html` (self-contained: inline CSS and SVG) and `report.md` ([`render`]). The outputs are
//! a pure function of the input files: rebuilding gives byte-identical files.
pub mod analysis;
pub mod input;
pub mod mcnemar;
pub mod stats;

use std::path::PathBuf;

/// Everything that can go wrong while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON of the expected shape: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} line {line}: not a prediction row: {source}")]
    PredictionLine {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "{path}: results in the old shape (`Baseline_*` keys); convert it with `shared::results::convert_old` first"
    )]
    OldResultsShape { path: PathBuf },
    #[error("model key `{key}` is not `LLM|SLM_<label>_untrained|finetuned`")]
    BadModelKey { key: String },
    #[error("{dir}: no predictions (`<model key>.jsonl`) to report on")]
    NoPredictions { dir: PathBuf },
}
