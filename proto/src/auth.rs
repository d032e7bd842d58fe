//! The shared-token scheme: every RPC carries `authorization: Bearer <token>`. Rejected attempts
//! are logged with the peer's address, at most [`REJECT_LOG_LINES`] lines a minute.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metadata key carrying the token.
pub const AUTH_HEADER: &str = "authorization";

/// A shared secret, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding whitespace, e.g. a file's trailing newline, is dropped).
    pub fn new(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty()).then(|| Token(t.to_string()))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Constant-time comparison, so response timing does not leak the token's prefix.
    fn matches(&self, presented: &str) -> bool {
        let a = self.bearer();
        let (a, b) = (a.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The token from a file (`--token-file`, wins) or from text (`SIZESPEC_TOKEN`); `None` if neither.
pub fn load_token(
    text: Option<&str>,
    file: Option<&std::path::Path>,
) -> std::io::Result<Option<Token>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f).map_err(|e| {
            std::io::Error::new(e.kind(), format!("token file {}: {e}", f.display()))
        })?;
        return match Token::new(&t) {
            Some(t) => Ok(Some(t)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("token file {} is empty", f.display()),
            )),
        };
    }
    Ok(text.and_then(Token::new))
}

/// Client side: adds the token (if any) to every request.
#[derive(Clone, Debug, Default)]
pub struct AttachToken(pub Option<Token>);

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = MetadataValue::try_from(token.bearer()).map_err(|_| {
                Status::invalid_argument("the token contains characters not allowed in a header")
            })?;
            req.metadata_mut().insert(AUTH_HEADER, value);
        }
        Ok(req)
    }
}

/// Most rejected-authentication log lines per [`REJECT_LOG_WINDOW`]; the rest are counted and the
/// count is given with the next line logged (a scan or a misconfigured agent cannot flood the log).
pub const REJECT_LOG_LINES: u32 = 5;
/// The window [`REJECT_LOG_LINES`] applies to.
pub const REJECT_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Rate limit of the rejected-authentication log lines, shared by every clone of an interceptor.
#[derive(Debug)]
pub struct RejectLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    fn new() -> RejectLog {
        RejectLog {
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a rejection at `now` is logged: `Some(n)` with the `n` rejections left unlogged
    /// since the last line, `None` when this one is only counted.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= REJECT_LOG_WINDOW);
        if expired {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < REJECT_LOG_LINES {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Server side: rejects requests without the expected token (`Unauthenticated`) and logs each
/// rejection (rate-limited) with the peer address. With no token configured every request passes
/// (a loopback-only deployment).
#[derive(Clone, Debug)]
pub struct RequireToken {
    expected: Option<Token>,
    log: Arc<Mutex<RejectLog>>,
}

impl RequireToken {
    pub fn new(expected: Option<Token>) -> RequireToken {
        RequireToken {
            expected,
            log: Arc::new(Mutex::new(RejectLog::new())),
        }
    }

    fn reject(&self, peer: Option<SocketAddr>, why: &'static str) {
        let admitted = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        match admitted {
            Some(0) => tracing::warn!(%peer, why, "rejected a request: authentication failed"),
            Some(unlogged) => tracing::warn!(
                %peer,
                why,
                unlogged,
                "rejected a request: authentication failed (`unlogged` more were rejected since the last such line)"
            ),
            None => {}
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        match req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(presented) if expected.matches(presented) => Ok(req),
            Some(_) => {
                self.reject(req.remote_addr(), "wrong token");
                Err(Status::unauthenticated(
                    "wrong token in `authorization` metadata",
                ))
            }
            None => {
                self.reject(req.remote_addr(), "no token");
                Err(Status::unauthenticated(
                    "missing `authorization` metadata: set SIZESPEC_TOKEN or --token-file to the coordinator's token",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_rejections() {
        let tok = Token::new("s3cret\n").unwrap();
        let mut attach = AttachToken(Some(tok.clone()));
        let mut require = RequireToken::new(Some(tok));
        let req = attach.call(Request::new(())).unwrap();
        assert!(require.call(req).is_ok());
        let err = require.call(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let wrong = AttachToken(Token::new("other"))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            require.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Token::new("  \n").is_none());
        assert_eq!(format!("{:?}", Token::new("x").unwrap()), "Token(***)");
    }

    #[test]
    fn rejection_log_lines_are_rate_limited_and_count_the_rest() {
        let t0 = Instant::now();
        let mut log = RejectLog::new();
        let first: Vec<_> = (0..8).map(|_| log.admit(t0)).collect();
        assert_eq!(first[..5], [Some(0); 5]);
        assert_eq!(first[5..], [None; 3]);
        let later = t0 + REJECT_LOG_WINDOW / 2;
        assert_eq!(log.admit(later), None, "same window");
        let next = t0 + REJECT_LOG_WINDOW;
        assert_eq!(
            log.admit(next),
            Some(4),
            "the next window's first line counts the unlogged"
        );
        assert_eq!(log.admit(next), Some(0));
    }

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rejected_attempts_are_logged_with_the_peer() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let from_peer = |token: Option<&str>| {
            let mut req = AttachToken(token.and_then(Token::new))
                .call(Request::new(()))
                .unwrap();
            req.extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(peer),
                });
            req
        };
        tracing::subscriber::with_default(subscriber, || {
            let mut require = RequireToken::new(Token::new("s3cret"));
            // Clones share the rate limit (tonic clones the interceptor per service).
            let mut other = require.clone();
            assert!(require.call(from_peer(Some("s3cret"))).is_ok());
            assert!(require.call(from_peer(Some("wrong"))).is_err());
            assert!(other.call(from_peer(None)).is_err());
            for _ in 0..10 {
                assert!(other.call(from_peer(Some("guess"))).is_err());
            }
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), REJECT_LOG_LINES as usize, "{text}");
        assert!(lines.iter().all(|l| l.contains("WARN")
            && l.contains("authentication failed")
            && l.contains("peer=192.0.2.7:40000")));
        assert!(lines[0].contains("wrong token"), "{}", lines[0]);
        assert!(lines[1].contains("no token"), "{}", lines[1]);
    }
}
