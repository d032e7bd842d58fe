//! The verdict: statistics over per-sample predictions, plots, and the self-contained report.
pub mod mcnemar;
pub mod stats;
