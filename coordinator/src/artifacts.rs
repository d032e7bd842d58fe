//! The artifact store: adapter files uploaded by agents, kept under `<data dir>/artifacts/<name>`.
//! Names are validated (no path traversal) and every file is SHA-256 checked on the way in.
//! Files move in pieces both ways ([`ArtifactWriter`], [`ArtifactReader`]): an artifact of any
//! size costs a chunk of memory, never the whole file.
use sha2::{Digest, Sha256};
use shared::fsutil::AtomicFile;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An artifact problem; messages name the artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact name `{name}` is not allowed: {why}")]
    BadName { name: String, why: &'static str },
    #[error(
        "artifact `{name}`: {size} bytes is over the {max}-byte limit (`coordinator serve --max-artifact-mib`)"
    )]
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

/// An upload being written: bytes go to a temp file beside the artifact (through
/// `shared::fsutil`) and into the checksum as they arrive; [`ArtifactWriter::finish`] makes the
/// artifact visible only if size and checksum match what was announced. Dropped unfinished, the
/// temp file is removed (a torn upload never becomes visible). Blocking I/O: `spawn_blocking`.
#[derive(Debug)]
pub struct ArtifactWriter {
    name: ArtifactName,
    file: AtomicFile,
    hasher: Sha256,
    written: u64,
    want_size: u64,
    want_sha: String,
}

impl ArtifactWriter {
    /// Appends a chunk; refused as soon as the total would pass the announced size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        let got = self.written + bytes.len() as u64;
        if got > self.want_size {
            return Err(ArtifactError::SizeMismatch {
                name: self.name.to_string(),
                got,
                want: self.want_size,
            });
        }
        self.file
            .write_all(bytes)
            .map_err(|source| ArtifactError::Io {
                name: self.name.to_string(),
                source,
            })?;
        self.hasher.update(bytes);
        self.written = got;
        Ok(())
    }

    /// Checks size and checksum, then renames the temp file over the artifact.
    pub fn finish(self) -> Result<(), ArtifactError> {
        if self.written != self.want_size {
            return Err(ArtifactError::SizeMismatch {
                name: self.name.to_string(),
                got: self.written,
                want: self.want_size,
            });
        }
        let got = hex::encode(self.hasher.finalize());
        if !got.eq_ignore_ascii_case(&self.want_sha) {
            return Err(ArtifactError::ChecksumMismatch {
                name: self.name.to_string(),
                got,
                want: self.want_sha,
            });
        }
        self.file.commit().map_err(|source| ArtifactError::Io {
            name: self.name.to_string(),
            source,
        })
    }
}

/// A stored artifact being read for a download: its size and SHA-256 (known before the first
/// chunk), then its bytes chunk by chunk. Blocking I/O: `spawn_blocking`.
#[derive(Debug)]
pub struct ArtifactReader {
    name: ArtifactName,
    file: std::fs::File,
    pub size: u64,
    pub sha256: String,
    read: u64,
}

impl ArtifactReader {
    /// The next at most `max` bytes; `None` at the end. A file cut short since it was hashed is an
    /// error.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, ArtifactError> {
        let left = self.size - self.read;
        if left == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; usize::try_from(left).map_or(max, |l| l.min(max))];
        self.file
            .read_exact(&mut buf)
            .map_err(|source| ArtifactError::Io {
                name: self.name.to_string(),
                source,
            })?;
        self.read += buf.len() as u64;
        Ok(Some(buf))
    }
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

    /// Starts an upload of `name` announced as `want_size` bytes with SHA-256 `want_sha`.
    pub fn begin(
        &self,
        name: &ArtifactName,
        want_size: u64,
        want_sha: &str,
    ) -> Result<ArtifactWriter, ArtifactError> {
        let file = AtomicFile::create(&self.path(name)).map_err(|source| ArtifactError::Io {
            name: name.to_string(),
            source,
        })?;
        Ok(ArtifactWriter {
            name: name.clone(),
            file,
            hasher: Sha256::new(),
            written: 0,
            want_size,
            want_sha: want_sha.to_string(),
        })
    }

    /// Stores a whole artifact (size and checksum checked, written atomically).
    pub fn put(
        &self,
        name: &ArtifactName,
        bytes: &[u8],
        want_size: u64,
        want_sha: &str,
    ) -> Result<(), ArtifactError> {
        let mut w = self.begin(name, want_size, want_sha)?;
        w.write(bytes)?;
        w.finish()
    }

    /// A whole artifact in memory (tests; the service streams with [`ArtifactStore::open`]).
    #[cfg(test)]
    pub fn get(&self, name: &ArtifactName) -> Result<Vec<u8>, ArtifactError> {
        let mut r = self.open(name)?;
        let mut out = Vec::with_capacity(usize::try_from(r.size).unwrap_or(0));
        while let Some(chunk) = r.next_chunk(1 << 20)? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens a stored artifact for a download: hashes it in one pass (for the header), then
    /// reads it from the start in chunks. The open file is the version hashed even if an upload
    /// replaces the artifact meanwhile (the rename gives the new version a new inode).
    pub fn open(&self, name: &ArtifactName) -> Result<ArtifactReader, ArtifactError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ArtifactError::NotFound {
                name: name.to_string(),
            },
            _ => ArtifactError::Io {
                name: name.to_string(),
                source,
            },
        };
        let mut file = std::fs::File::open(self.path(name)).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        file.rewind().map_err(io)?;
        Ok(ArtifactReader {
            name: name.clone(),
            file,
            size,
            sha256: hex::encode(hasher.finalize()),
            read: 0,
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
    fn a_streamed_upload_appears_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path().to_path_buf());
        let name = ArtifactName::parse("e/adapter.safetensors").unwrap();
        let data = b"0123456789";
        let mut w = store.begin(&name, 10, &sha256_hex(data)).unwrap();
        w.write(&data[..4]).unwrap();
        assert!(!store.exists(&name), "nothing visible mid-upload");
        w.write(&data[4..]).unwrap();
        assert!(matches!(
            w.write(b"x"),
            Err(ArtifactError::SizeMismatch {
                got: 11,
                want: 10,
                ..
            })
        ));
        w.finish().unwrap();
        assert_eq!(store.get(&name).unwrap(), data);
        // A short upload is refused and leaves the stored artifact as it was.
        let mut short = store.begin(&name, 10, &sha256_hex(data)).unwrap();
        short.write(b"01").unwrap();
        assert!(matches!(
            short.finish(),
            Err(ArtifactError::SizeMismatch {
                got: 2,
                want: 10,
                ..
            })
        ));
        assert_eq!(store.get(&name).unwrap(), data);
        assert_eq!(std::fs::read_dir(dir.path().join("e")).unwrap().count(), 1);
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
        assert_eq!(
            std::fs::read_dir(dir.path().join("e")).unwrap().count(),
            1,
            "refused uploads leave no temp file"
        );
        assert!(matches!(
            store.get(&ArtifactName::parse("nope").unwrap()),
            Err(ArtifactError::NotFound { .. })
        ));
    }
}
