//! Dialling the coordinator (agents and the CLI): URL, shared token and optional (mutual) TLS.
use crate::auth::Token;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator URL `{url}`: {source}")]
    BadUrl {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to {url}: {source} (is the coordinator running and reachable?)")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Client-side TLS: the CA that signed the coordinator's certificate, and optionally this
/// agent's own certificate for mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host).
    pub domain: Option<String>,
}

/// How to reach the coordinator.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    pub token: Option<Token>,
    pub tls: Option<ClientTls>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::TlsFile {
        path: path.clone(),
        source,
    })
}

impl Connection {
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let bad = |source| ClientError::BadUrl {
            url: self.url.clone(),
            source,
        };
        let mut ep = Endpoint::from_shared(self.url.clone())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::limits::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::limits::CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca {
                cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(d) = &tls.domain {
                cfg = cfg.domain_name(d.clone());
            }
            ep = ep.tls_config(cfg).map_err(bad)?;
        }
        ep.connect().await.map_err(|source| ClientError::Connect {
            url: self.url.clone(),
            source,
        })
    }
}
