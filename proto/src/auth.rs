//! The shared-token scheme: every RPC carries `authorization: Bearer <token>`.
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

/// Server side: rejects requests without the expected token (`Unauthenticated`).
/// With no token configured every request passes (a loopback-only deployment).
#[derive(Clone, Debug, Default)]
pub struct RequireToken(pub Option<Token>);

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(req);
        };
        match req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(presented) if expected.matches(presented) => Ok(req),
            Some(_) => Err(Status::unauthenticated(
                "wrong token in `authorization` metadata",
            )),
            None => Err(Status::unauthenticated(
                "missing `authorization` metadata: set SIZESPEC_TOKEN or --token-file to the coordinator's token",
            )),
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
        let mut require = RequireToken(Some(tok));
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
}
