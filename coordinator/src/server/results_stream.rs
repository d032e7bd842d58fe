//! `DownloadResults`' stream: an output folder file by file (`OutputFileStart`, `data` chunks,
//! `OutputFileEnd` with the SHA-256 of the bytes sent), read on the blocking pool. Symbolic links
//! are never followed (skipped when listing, refused by `O_NOFOLLOW` when opening), and leftover
//! temp files of an interrupted atomic write are not outputs and are skipped.
use proto::limits::ARTIFACT_CHUNK_BYTES;
use proto::pb;
use proto::pb::output_chunk::Part;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

pub type Chunks = Pin<Box<dyn Stream<Item = Result<pb::OutputChunk, Status>> + Send>>;

/// The regular files under `root` as (`/`-separated relative path, full path), sorted.
pub fn list_files(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %e.path().display(), "output file name is not UTF-8; not sent");
            continue;
        };
        // `file_type` does not follow a symlink: a link is reported as one, and skipped.
        let kind = e.file_type()?;
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if kind.is_symlink() {
            tracing::warn!(path = %e.path().display(), "symbolic link in an output folder; not followed, not sent");
        } else if kind.is_dir() {
            walk(&e.path(), &rel, out)?;
        } else if kind.is_file() && !shared::fsutil::is_temp_name(&name) {
            out.push((rel, e.path()));
        }
    }
    Ok(())
}

fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Streams every file under `root` (which must exist).
pub fn stream_folder(root: PathBuf) -> Chunks {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(status) = send_folder(&root, &tx) {
            let _ = tx.blocking_send(Err(status));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The receiver is gone (the client hung up): stop reading.
struct Gone;

fn send(tx: &mpsc::Sender<Result<pb::OutputChunk, Status>>, part: Part) -> Result<(), Gone> {
    tx.blocking_send(Ok(pb::OutputChunk { part: Some(part) }))
        .map_err(|_| Gone)
}

fn send_folder(
    root: &Path,
    tx: &mpsc::Sender<Result<pb::OutputChunk, Status>>,
) -> Result<(), Status> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Status::internal(format!("{what} {}: {e}", path.display()))
    };
    let files = list_files(root).map_err(|e| io("listing", root, e))?;
    let (mut count, mut bytes) = (0usize, 0u64);
    for (rel, path) in files {
        let mut f = open_no_follow(&path).map_err(|e| io("opening", &path, e))?;
        let size = f.metadata().map_err(|e| io("reading", &path, e))?.len();
        let mut hash = Sha256::new();
        let start = Part::Start(pb::OutputFileStart {
            path: rel.clone(),
            size,
        });
        if send(tx, start).is_err() {
            return Ok(());
        }
        let mut left = size;
        let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
        while left > 0 {
            let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let n = f
                .read(&mut buf[..want])
                .map_err(|e| io("reading", &path, e))?;
            if n == 0 {
                return Err(Status::aborted(format!(
                    "{rel} shrank while being sent ({size} bytes announced)"
                )));
            }
            hash.update(&buf[..n]);
            left -= n as u64;
            if send(tx, Part::Data(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
        let end = Part::End(pb::OutputFileEnd {
            sha256: hex::encode(hash.finalize()),
        });
        if send(tx, end).is_err() {
            return Ok(());
        }
        count += 1;
        bytes += size;
    }
    tracing::info!(folder = %root.display(), files = count, bytes, "output folder sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::list_files;

    #[test]
    fn listing_skips_symlinks_and_temp_files_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("predictions")).unwrap();
        std::fs::write(root.join("results.json"), "{}").unwrap();
        std::fs::write(root.join("predictions/b.jsonl"), "").unwrap();
        std::fs::write(root.join("predictions/a.jsonl"), "").unwrap();
        std::fs::write(root.join(".results.json.x1y2.tmp"), "half").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "not an output").unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, root.join("link.txt")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("linkdir")).unwrap();
        }
        let rels: Vec<String> = list_files(&root)
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            rels,
            ["predictions/a.jsonl", "predictions/b.jsonl", "results.json"]
        );
    }
}
