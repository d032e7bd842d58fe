//! The verdict: statistics over per-sample predictions, plots, and the self-contained report.
//!
//! [`build`] reads an experiment's output folder ([`input`]), computes the statistics
//! ([`analysis`] over [`stats`] and [`mcnemar`]), draws the plots ([`plots`]) and writes
//! `report.html` (self-contained: inline CSS and SVG) and `report.md` ([`render`]). The outputs are
//! a pure function of the input files: rebuilding gives byte-identical files.
pub mod analysis;
pub mod input;
pub mod live;
pub mod mcnemar;
pub mod plots;
pub mod render;
pub mod stats;

use std::path::{Path, PathBuf};

use shared::config::ExperimentConfig;
use shared::fsutil::write_atomic;

use stats::BootstrapConfig;

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
    #[error("{path}: {source}")]
    Results {
        path: PathBuf,
        // Boxed: the variant would otherwise make every `Result` here several hundred bytes.
        source: Box<shared::results::ResultsError>,
    },
    #[error("model key `{key}` is not `LLM|SLM_<label>_untrained|finetuned`")]
    BadModelKey { key: String },
    #[error(
        "{dir}: nothing to report on: no `predictions/<model key>.jsonl` and no model in `results.json`"
    )]
    NoPredictions { dir: PathBuf },
    #[error("plot `{plot}`: {message}")]
    Plot { plot: &'static str, message: String },
    #[error("report template: {source}")]
    Template { source: minijinja::Error },
}

/// The files [`build`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub html: PathBuf,
    pub markdown: PathBuf,
    /// `plots/<name>.png` and `.svg`.
    pub plots: Vec<PathBuf>,
}

/// Fewer bootstrap resamples than this make the percentile interval's ends noisy: the report
/// uses what the config asks and says so.
pub const MIN_RESAMPLES: usize = 1000;

/// Bootstrap settings from `config.resolved.toml`'s `[evaluation]` when it parses, else defaults
/// (1000 resamples, 95%, seed 42 — the config's own defaults). `bootstrap_resamples = 0` means no
/// intervals.
fn bootstrap_config(input: &input::ReportInput) -> BootstrapConfig {
    let cfg = input
        .config_toml
        .as_deref()
        .and_then(|t| ExperimentConfig::from_toml_str(t, "config.resolved.toml").ok())
        .map(|c| c.evaluation)
        .unwrap_or_default();
    BootstrapConfig {
        resamples: cfg.bootstrap_resamples as usize,
        confidence: cfg.confidence,
        seed: cfg.bootstrap_seed,
    }
}

/// Builds `report.html`, `report.md` and `plots/` inside `results_dir` from the files there.
pub fn build(results_dir: &Path) -> Result<ReportPaths, ReportError> {
    let input = input::load(results_dir)?;
    let cfg = bootstrap_config(&input);
    let analysis = analysis::analyse(&input, &cfg);
    let plots = plots::draw_all(&input, &analysis, &results_dir.join("plots"))?;
    let (html, markdown) = render::render(&input, &analysis, &plots)?;
    let paths = ReportPaths {
        html: results_dir.join("report.html"),
        markdown: results_dir.join("report.md"),
        plots: plots
            .iter()
            .flat_map(|p| [results_dir.join(&p.png_file), results_dir.join(&p.svg_file)])
            .collect(),
    };
    for (path, text) in [(&paths.html, html), (&paths.markdown, markdown)] {
        write_atomic(path, text.as_bytes()).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}
