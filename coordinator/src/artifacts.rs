//! The artifact store: adapter files uploaded by agents, kept under `<data dir>/artifacts/<name>`.
//! Names are validated (no path traversal) and every file is SHA-256 checked on the way in.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// An artifact problem; messages name the artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact name `{name}` is not allowed: {why}")]
    BadName { name: String, why: &'static str },
    #[error("artifact `{name}`: {size} bytes is over the {max}-byte limit")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("artifact `{name}`: received {got} bytes, the header announced {want}")]
    SizeMismatch { name: String, got: u64, want: u64 },
    #[error("artifact `{name}`: SHA-256 {got} does not match the announced {want}")]
    ChecksumMismatch {
        name: String,
        got: String,
        want: String,
    },
    #[error("artifact `{name}` not found")]
    NotFound { name: String },
    #[error("artifact `{name}`: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// A validated artifact name: `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactName(String);

impl ArtifactName {
    pub fn parse(name: &str) -> Result<ArtifactName, ArtifactError> {
        let bad = |why| {
            Err(ArtifactError::BadName {
                name: name.to_string(),
                why,
            })
        };
        if name.is_empty() || name.len() > 512 {
            return bad("must be 1 to 512 characters");
        }
        for seg in name.split('/') {
            if seg.is_empty() {
                return bad("empty path segment (leading, trailing or doubled `/`)");
            }
            if seg == "." || seg == ".." {
                return bad("`.` and `..` segments are not allowed");
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return bad("only A-Z a-z 0-9 . _ - and `/` between segments are allowed");
            }
        }
        Ok(ArtifactName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Files under one root folder. Methods do blocking I/O: call them from `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    pub fn new(root: PathBuf) -> ArtifactStore {
        ArtifactStore { root }
    }

    pub fn path(&self, name: &ArtifactName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Checks size and checksum, then writes atomically (a torn upload never becomes visible).
    pub fn put(
        &self,
        name: &ArtifactName,
        bytes: &[u8],
        want_size: u64,
        want_sha: &str,
    ) -> Result<(), ArtifactError> {
        if bytes.len() as u64 != want_size {
            return Err(ArtifactError::SizeMismatch {
                name: name.to_string(),
                got: bytes.len() as u64,
                want: want_size,
            });
        }
        let got = sha256_hex(bytes);
        if !got.eq_ignore_ascii_case(want_sha) {
            return Err(ArtifactError::ChecksumMismatch {
                name: name.to_string(),
                got,
                want: want_sha.to_string(),
            });
        }
        shared::fsutil::write_atomic(&self.path(name), bytes).map_err(|source| ArtifactError::Io {
            name: name.to_string(),
            source,
        })
    }

    pub fn get(&self, name: &ArtifactName) -> Result<Vec<u8>, ArtifactError> {
        std::fs::read(self.path(name)).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ArtifactError::NotFound {
                name: name.to_string(),
            },
            _ => ArtifactError::Io {
                name: name.to_string(),
                source,
            },
        })
    }

    pub fn exists(&self, name: &ArtifactName) -> bool {
        self.path(name).is_file()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_traversal_and_odd_characters() {
        for ok in [
            "exp-1/SLM_Qwen-3B/adapter_model.safetensors",
            "a",
            "a.b/c_d-e",
        ] {
            assert!(ArtifactName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            "a/./b",
            "a b",
            "a\\b",
            "a/b\0",
        ] {
            let err = ArtifactName::parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not allowed"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn put_checks_size_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path().to_path_buf());
        let name = ArtifactName::parse("e/a.bin").unwrap();
        let data = b"adapter bytes";
        let sha = sha256_hex(data);
        assert!(matches!(
            store.put(&name, data, 3, &sha),
            Err(ArtifactError::SizeMismatch { .. })
        ));
        assert!(matches!(
            store.put(&name, data, data.len() as u64, &sha256_hex(b"x")),
            Err(ArtifactError::ChecksumMismatch { .. })
        ));
        assert!(!store.exists(&name));
        store.put(&name, data, data.len() as u64, &sha).unwrap();
        assert_eq!(store.get(&name).unwrap(), data);
        assert!(matches!(
            store.get(&ArtifactName::parse("nope").unwrap()),
            Err(ArtifactError::NotFound { .. })
        ));
    }
}
