//! The coordinator's gRPC server: agent sessions, artifacts, control, health and reflection, all
//! behind the shared-token interceptor and bounded message sizes, optionally over TLS.
mod agent_svc;
mod artifact_svc;
mod control_svc;
pub mod convert;
pub mod live_http;
pub mod metrics;
mod results_stream;
pub mod view;

pub use crate::prepare::Planner;
pub use artifact_svc::UploadLimits;

use crate::artifacts::{ArtifactError, ArtifactStore};
use crate::journal::Journal;
use crate::state::core::{Core, CoreError, Settings};
use crate::state::{Closed, StateHandle};
use proto::auth::{RequireToken, Token};
use proto::limits::{MAX_CONTROL_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use proto::pb::agent_service_server::AgentServiceServer;
use proto::pb::artifact_service_server::ArtifactServiceServer;
use proto::pb::control_service_server::ControlServiceServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Server-side TLS: PEM files; with `client_ca` set, agents and the CLI must present a client
/// certificate signed by it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Everything `serve` needs.
#[derive(Clone)]
pub struct ServeOptions {
    /// Journal and artifact store root.
    pub data_dir: PathBuf,
    pub settings: Settings,
    pub token: Option<Token>,
    pub tls: Option<TlsFiles>,
    pub planner: Arc<dyn Planner>,
    /// Largest agent/artifact message decoded (control requests are capped lower).
    pub max_message_bytes: usize,
    /// Artifact upload size cap, concurrency bound and timeouts.
    pub uploads: UploadLimits,
}

impl ServeOptions {
    pub fn new(data_dir: PathBuf, planner: Arc<dyn Planner>) -> ServeOptions {
        ServeOptions {
            data_dir,
            settings: Settings::default(),
            token: None,
            tls: None,
            planner,
            max_message_bytes: MAX_MESSAGE_BYTES,
            uploads: UploadLimits::default(),
        }
    }
}

/// Errors of the server module, mapped to `tonic::Status` in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Closed(#[from] Closed),
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        use tonic::Status;
        match &e {
            ServerError::Core(CoreError::UnknownExperiment(_)) => Status::not_found(e.to_string()),
            ServerError::Core(CoreError::NoDevices(_)) => Status::invalid_argument(e.to_string()),
            ServerError::Core(CoreError::DuplicateAgent { .. }) => {
                Status::already_exists(e.to_string())
            }
            ServerError::Artifact(a) => Status::from_artifact(a),
            ServerError::Closed(_) => Status::unavailable(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

trait FromArtifact {
    fn from_artifact(e: &ArtifactError) -> Self;
}

impl FromArtifact for tonic::Status {
    fn from_artifact(e: &ArtifactError) -> Self {
        use tonic::Status;
        match e {
            ArtifactError::BadName { .. }
            | ArtifactError::SizeMismatch { .. }
            | ArtifactError::ChecksumMismatch { .. } => Status::invalid_argument(e.to_string()),
            ArtifactError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            ArtifactError::NotFound { .. } => Status::not_found(e.to_string()),
            ArtifactError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

impl From<ArtifactError> for tonic::Status {
    fn from(e: ArtifactError) -> Self {
        ServerError::Artifact(e).into()
    }
}

/// A started coordinator: its address and the state handle (single-box mode submits through it).
pub struct Running {
    pub addr: SocketAddr,
    pub state: StateHandle,
    pub join: tokio::task::JoinHandle<Result<(), ServerError>>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::TlsFile {
        path: path.clone(),
        source,
    })
}

/// Starts serving on `listener` until `shutdown` fires, then drains: health goes not-serving,
/// the state owner stops (ending agent streams) and in-flight RPCs finish.
pub async fn start(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<Running, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    let (state, owner) = crate::state::spawn(
        Core::new(opts.settings.clone()),
        Journal::new(&opts.data_dir),
        shutdown.clone(),
    );
    let store = ArtifactStore::new(opts.data_dir.join("artifacts"));
    let auth = RequireToken::new(opts.token.clone());
    let max = opts.max_message_bytes;
    let agent = AgentServiceServer::new(agent_svc::AgentSvc {
        state: state.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let artifacts =
        ArtifactServiceServer::new(artifact_svc::ArtifactSvc::new(store, opts.uploads.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let control = ControlServiceServer::new(control_svc::ControlSvc {
        state: state.clone(),
        planner: opts.planner.clone(),
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES.min(max))
    .max_encoding_message_size(max);
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<agent_svc::AgentSvc>>()
        .await;
    health
        .set_serving::<ControlServiceServer<control_svc::ControlSvc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(proto::limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(proto::limits::CONNECTION_WINDOW_BYTES);
    if let Some(tls) = &opts.tls {
        let mut cfg =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(cfg)?;
    }
    // Health and reflection stay open: probes (kubelet) carry no token, and the schema is public.
    let router = builder
        .add_service(InterceptedService::new(agent, auth.clone()))
        .add_service(InterceptedService::new(artifacts, auth.clone()))
        .add_service(InterceptedService::new(control, auth))
        .add_service(health_svc)
        .add_service(reflection);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let join = tokio::spawn(async move {
        let stop = shutdown.clone();
        let drain = async move {
            stop.cancelled().await;
            health
                .set_not_serving::<AgentServiceServer<agent_svc::AgentSvc>>()
                .await;
            health
                .set_not_serving::<ControlServiceServer<control_svc::ControlSvc>>()
                .await;
            // The owner ends every agent stream's sender when it stops.
            let _ = owner.await;
        };
        router.serve_with_incoming_shutdown(incoming, drain).await?;
        Ok(())
    });
    tracing::info!(%addr, tls = opts.tls.is_some(), auth = opts.token.is_some(), "coordinator listening");
    Ok(Running { addr, state, join })
}

/// `serve(listener, shutdown)` in the mini-redis shape: runs until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let running = start(listener, opts, shutdown).await?;
    running
        .join
        .await
        .map_err(|e| ServerError::Listener(std::io::Error::other(e)))?
}
