//! The agent's side of the coordinator connection: dial, register, heartbeat, accept or decline
//! offers after re-reading free memory, run tasks through a [`runner::TaskRunner`], stream
//! progress and predictions, move adapters and finetune checkpoints through the artifact service,
//! reconnect with backoff.
pub mod artifacts;
pub mod checkpoints;
pub mod convert;
pub mod runner;
pub mod session;
pub mod worker_runner;

pub use proto::client::{ClientError, ClientTls, Connection};
use std::path::PathBuf;

/// Failures of the agent's RPC layer; messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("coordinator refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact `{name}`: {why}")]
    Artifact { name: String, why: String },
}
