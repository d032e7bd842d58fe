//! sizespec shared domain: pure logic and types, no candle, no tonic, no I/O beyond files.
//!
//! Layout tour:
//! - [`config`] the experiment config (TOML + `SIZESPEC_*` env), [`migrate`] from the old shape;
//! - [`dataset`] records and the MedSynth CSV loader, [`split`] the seeded split and its hash,
//!   [`embedded`] the offline default dataset generated from public-domain ICD-10-CM;
//! - [`icd10`] normalise / extract / validate codes, category, chapter;
//! - [`prompt`] the task's chat messages (same at training and inference);
//! - [`metrics`] exact / category / chapter match, F1 averages, latency and throughput;
//! - [`results`] the `results.json` types (+ converter from the old shape);
//! - [`cache`] stable prediction cache keys; [`plan`] experiment → task DAG with VRAM estimates;
//! - [`task`] the task / event / prediction types every crate speaks; [`fsutil`] atomic writes.
pub mod cache;
pub mod config;
pub mod dataset;
pub mod embedded;
pub mod fsutil;
pub mod icd10;
pub mod metrics;
pub mod migrate;
pub mod plan;
pub mod prompt;
pub mod results;
pub mod split;
pub mod task;
