//! `coordinator results ID --download DIR`: receives a finished experiment's output folder
//! (`ControlService.DownloadResults`) into `DIR`. Each file is written through
//! `shared::fsutil::AtomicFile` and committed only once its size and SHA-256 match what the server
//! announced; a path that could land outside `DIR` (absolute, `..`, an empty or `.` component, a
//! backslash, or through a symbolic link already in `DIR`) is refused before anything is written.
//! A failed download leaves the files completed before the failure (each whole) and no partial
//! file; files of the same names already in `DIR` are replaced.
use proto::pb;
use proto::pb::output_chunk::Part;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio_stream::{Stream, StreamExt};

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Relative paths, in the order received.
    pub files: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the coordinator answered: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the coordinator sent the path `{path}`: {why}; refused")]
    BadPath { path: String, why: &'static str },
    #[error("`{path}` was sent twice")]
    Duplicate { path: String },
    #[error("{0}")]
    Protocol(String),
    #[error("`{path}`: {got} bytes received, {expected} announced")]
    Size {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("`{path}`: SHA-256 of the bytes received is {got}, the coordinator sent {expected}")]
    Checksum {
        path: String,
        expected: String,
        got: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `rel` (as sent: `/`-separated) under `dir`, if it stays there.
pub fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, DownloadError> {
    let bad = |why| DownloadError::BadPath {
        path: rel.to_string(),
        why,
    };
    if rel.is_empty() {
        return Err(bad("empty"));
    }
    if rel.starts_with('/') {
        return Err(bad("absolute"));
    }
    if rel.contains('\\') || rel.contains('\0') {
        return Err(bad("a backslash or NUL in a file name"));
    }
    let mut out = dir.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => return Err(bad("an empty or `.` component")),
            ".." => return Err(bad("a `..` component")),
            p => out.push(p),
        }
    }
    Ok(out)
}

/// Refuses to write `path` (under `dir`) through a symbolic link in one of its folders.
fn no_link_between(dir: &Path, path: &Path, rel: &str) -> Result<(), DownloadError> {
    let mut p = path.parent();
    while let Some(folder) = p.filter(|f| f.starts_with(dir) && *f != dir) {
        if std::fs::symlink_metadata(folder).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(DownloadError::BadPath {
                path: rel.to_string(),
                why: "a folder on its way is a symbolic link in the download folder",
            });
        }
        p = folder.parent();
    }
    Ok(())
}

/// The file being received.
struct Current {
    rel: String,
    size: u64,
    got: u64,
    hash: Sha256,
    file: shared::fsutil::AtomicFile,
}

/// Runs `f` on the blocking pool (file writes never block the runtime's workers).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DownloadError> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DownloadError::Protocol(format!("writer task: {e}")))?
}

/// Writes the files of `stream` under `dir` (created if missing).
pub async fn receive<S>(mut stream: S, dir: &Path) -> Result<Downloaded, DownloadError>
where
    S: Stream<Item = Result<pb::OutputChunk, tonic::Status>> + Unpin,
{
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path, source }
    };
    let dir = dir.to_path_buf();
    let d = dir.clone();
    blocking(move || std::fs::create_dir_all(&d).map_err(io(&d))).await?;
    let mut seen = HashSet::new();
    let mut done = Downloaded {
        files: Vec::new(),
        bytes: 0,
    };
    let mut cur: Option<Current> = None;
    while let Some(chunk) = stream.next().await {
        match chunk?.part {
            Some(Part::Start(s)) => {
                if let Some(c) = &cur {
                    return Err(DownloadError::Protocol(format!(
                        "`{}` started before `{}` ended",
                        s.path, c.rel
                    )));
                }
                let path = safe_join(&dir, &s.path)?;
                if !seen.insert(s.path.clone()) {
                    return Err(DownloadError::Duplicate { path: s.path });
                }
                let (d, rel) = (dir.clone(), s.path.clone());
                let file = blocking(move || {
                    no_link_between(&d, &path, &rel)?;
                    shared::fsutil::AtomicFile::create(&path).map_err(io(&path))
                })
                .await?;
                cur = Some(Current {
                    rel: s.path,
                    size: s.size,
                    got: 0,
                    hash: Sha256::new(),
                    file,
                });
            }
            Some(Part::Data(bytes)) => {
                let Some(mut c) = cur.take() else {
                    return Err(DownloadError::Protocol("data before any file".into()));
                };
                c.got += bytes.len() as u64;
                if c.got > c.size {
                    return Err(DownloadError::Size {
                        path: c.rel,
                        expected: c.size,
                        got: c.got,
                    });
                }
                cur = Some(
                    blocking(move || {
                        c.hash.update(&bytes);
                        let dest = c.file.dest().to_path_buf();
                        c.file.write_all(&bytes).map_err(io(&dest))?;
                        Ok(c)
                    })
                    .await?,
                );
            }
            Some(Part::End(e)) => {
                let Some(c) = cur.take() else {
                    return Err(DownloadError::Protocol(
                        "a file end before its start".into(),
                    ));
                };
                if c.got != c.size {
                    return Err(DownloadError::Size {
                        path: c.rel,
                        expected: c.size,
                        got: c.got,
                    });
                }
                let got = hex::encode(c.hash.finalize());
                if !got.eq_ignore_ascii_case(&e.sha256) {
                    return Err(DownloadError::Checksum {
                        path: c.rel,
                        expected: e.sha256,
                        got,
                    });
                }
                let file = c.file;
                blocking(move || {
                    let dest = file.dest().to_path_buf();
                    file.commit().map_err(io(&dest))
                })
                .await?;
                done.bytes += c.size;
                done.files.push(c.rel);
            }
            None => return Err(DownloadError::Protocol("an empty chunk".into())),
        }
    }
    if let Some(c) = cur {
        return Err(DownloadError::Protocol(format!(
            "the stream ended in the middle of `{}`",
            c.rel
        )));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(path: &str, size: u64) -> Result<pb::OutputChunk, tonic::Status> {
        Ok(pb::OutputChunk {
            part: Some(Part::Start(pb::OutputFileStart {
                path: path.into(),
                size,
            })),
        })
    }

    fn data(b: &[u8]) -> Result<pb::OutputChunk, tonic::Status> {
        Ok(pb::OutputChunk {
            part: Some(Part::Data(b.to_vec())),
        })
    }

    fn end(sha: String) -> Result<pb::OutputChunk, tonic::Status> {
        Ok(pb::OutputChunk {
            part: Some(Part::End(pb::OutputFileEnd { sha256: sha })),
        })
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        let d = Path::new("/dl");
        assert_eq!(
            safe_join(d, "plots/a.png").unwrap(),
            Path::new("/dl/plots/a.png")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0b",
        ] {
            let err = safe_join(d, bad).unwrap_err();
            assert!(
                matches!(err, DownloadError::BadPath { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn good_files_are_written_and_a_bad_checksum_or_path_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = vec![
            start("results.json", 2),
            data(b"{}"),
            end(sha(b"{}")),
            start("plots/a.svg", 6),
            data(b"<s"),
            data(b"vg/>"),
            end(sha(b"<svg/>")),
        ];
        let got = receive(tokio_stream::iter(ok), dir.path()).await.unwrap();
        assert_eq!(got.files, ["results.json", "plots/a.svg"]);
        assert_eq!(got.bytes, 8);
        assert_eq!(
            std::fs::read(dir.path().join("plots/a.svg")).unwrap(),
            b"<svg/>"
        );

        let bad_sum = vec![start("x.txt", 3), data(b"abc"), end(sha(b"abd"))];
        let err = receive(tokio_stream::iter(bad_sum), dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
        let short = vec![start("y.txt", 4), data(b"abc"), end(sha(b"abc"))];
        let err = receive(tokio_stream::iter(short), dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Size { .. }), "{err}");
        let escape = vec![start("../z.txt", 1), data(b"z"), end(sha(b"z"))];
        let err = receive(tokio_stream::iter(escape), dir.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        let twice = vec![
            start("results.json", 2),
            data(b"{}"),
            end(sha(b"{}")),
            start("results.json", 2),
        ];
        let err = receive(tokio_stream::iter(twice), dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Duplicate { .. }), "{err}");
        // Only the good files, and no temp file of the refused ones.
        assert_eq!(names(dir.path()), ["plots", "results.json"]);
        assert_eq!(names(&dir.path().join("plots")), ["a.svg"]);
        assert!(!dir.path().parent().unwrap().join("z.txt").exists());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlinked_folder_in_the_download_folder_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (dl, outside) = (dir.path().join("dl"), dir.path().join("outside"));
        std::fs::create_dir_all(&dl).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dl.join("plots")).unwrap();
        let s = vec![start("plots/a.svg", 1), data(b"x"), end(sha(b"x"))];
        let err = receive(tokio_stream::iter(s), &dl).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(names(&outside).is_empty());
    }
}
