//! sizespec coordinator: plans, places and journals model tasks; aggregates results. Never links candle.
//!
//! Layout tour: [`experiment`] the planned tasks of an experiment; [`state`] the single owner of
//! all mutable state (scheduler, leases, retries) fed by a command channel; [`journal`] what
//! survives a restart; [`artifacts`] the adapter store; [`outputs`] the results folder;
//! [`server`] the gRPC services (agent session, artifacts, control, health, reflection);
//! [`prepare`] config → plan, with [`hub_data`] the dataset and model configs from the hub;
//! [`plan`] the dry run (`coordinator plan`); [`cache`] the prediction cache shared across
//! experiments; [`single_box`] `coordinator run`; [`progress`] terminal bars;
//! [`report`] the verdict, plots and HTML; [`results_download`] `results --download` (an output
//! folder streamed into a local one).
pub mod artifacts;
pub mod cache;
pub mod experiment;
pub mod hub_data;
pub mod journal;
pub mod outcome;
pub mod outputs;
pub mod plan;
pub mod prepare;
pub mod progress;
pub mod report;
pub mod results_download;
pub mod server;
pub mod single_box;
pub mod state;
