//! The hub cache layout of one repository, as huggingface_hub and the hf-hub crate write it:
//! `<cache>/<kind>s--owner--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
//! refs/<revision>}`, partial transfers in `blobs/<etag>.incomplete`, and huggingface_hub's lock
//! files `<cache>/.locks/<kind>s--owner--name/<etag>.lock` (one download of a blob at a time, across
//! processes and tools).
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::{RepoRef, Wanted, is_commit};

pub(crate) struct RepoCache {
    cache_dir: PathBuf,
    folder: String,
    root: PathBuf,
}

impl RepoCache {
    pub(crate) fn new(cache_dir: &Path, repo: &RepoRef) -> Self {
        let folder = repo.folder_name();
        Self {
            cache_dir: cache_dir.to_path_buf(),
            root: cache_dir.join(&folder),
            folder,
        }
    }

    /// `refs/<revision>` (a revision with `/`, like `refs/pr/1`, is a nested path, as in
    /// huggingface_hub).
    pub(crate) fn ref_path(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    pub(crate) fn snapshot_path(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join("snapshots").join(commit).join(file)
    }

    pub(crate) fn blob_path(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub(crate) fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub(crate) fn lock_path(&self, etag: &str) -> PathBuf {
        self.cache_dir
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }

    /// The commit `revision` names in the cache: itself if it is a commit hash with a snapshot
    /// folder, else the content of `refs/<revision>`.
    fn commit_of(&self, revision: &str) -> Result<String, PathBuf> {
        if is_commit(revision) && self.root.join("snapshots").join(revision).is_dir() {
            return Ok(revision.into());
        }
        let r = self.ref_path(revision);
        match std::fs::read_to_string(&r) {
            Ok(c) if !c.trim().is_empty() => Ok(c.trim().to_string()),
            _ => Err(r),
        }
    }

    /// The cached `file` of `revision`: `(commit, snapshots/<commit>/<file>)`, or the path that was
    /// looked for and is missing (the ref, or the snapshot file).
    pub(crate) fn lookup(&self, revision: &str, file: &str) -> Result<(String, PathBuf), PathBuf> {
        let commit = self.commit_of(revision)?;
        let p = self.snapshot_path(&commit, file);
        // `is_file` follows the link: a snapshot entry whose blob is gone is a miss.
        if p.is_file() { Ok((commit, p)) } else { Err(p) }
    }

    /// Points `refs/<revision>` at `commit` (atomically: a reader sees the old or the new commit).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        let r = self.ref_path(revision);
        if std::fs::read_to_string(&r).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        shared::fsutil::write_atomic(&r, commit.as_bytes())
    }

    /// Makes `pointer` (a snapshot entry) refer to `blob`: a relative link on Unix, as
    /// huggingface_hub makes it, so the cache can be moved or copied whole.
    pub(crate) fn link(&self, blob: &Path, pointer: &Path) -> std::io::Result<()> {
        let dir = pointer
            .parent()
            .ok_or_else(|| std::io::Error::other("a snapshot entry has a parent folder"))?;
        std::fs::create_dir_all(dir)?;
        if pointer.is_file() {
            return Ok(());
        }
        // A dangling link (its blob removed) is replaced.
        if std::fs::symlink_metadata(pointer).is_ok() {
            std::fs::remove_file(pointer)?;
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(relative(blob, dir), pointer)
        }
        #[cfg(not(unix))]
        {
            std::fs::copy(blob, pointer).map(|_| ())
        }
    }

    /// An exclusive lock on the blob `etag` for this process, released when the file is dropped;
    /// waits while another process (or a huggingface_hub download) holds it.
    pub(crate) fn lock(&self, etag: &str, wanted: &Wanted) -> std::io::Result<File> {
        let path = self.lock_path(etag);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        if !flock(&file, false)? {
            tracing::info!(
                %wanted,
                lock = %path.display(),
                "another process is downloading this file; waiting for it"
            );
            flock(&file, true)?;
        }
        Ok(file)
    }
}

/// `flock(LOCK_EX)`: `Ok(false)` when `wait` is false and another holder has it.
#[cfg(unix)]
fn flock(file: &File, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a file descriptor this `File` owns for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock if !wait => return Ok(false),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(not(unix))]
fn flock(_file: &File, _wait: bool) -> std::io::Result<bool> {
    Ok(true)
}

/// `target` relative to the folder `from` (both under the same cache root).
fn relative(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let f: Vec<Component> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_links_are_relative_to_their_folder() {
        assert_eq!(
            relative(
                Path::new("/c/models--o--n/blobs/abc"),
                Path::new("/c/models--o--n/snapshots/123")
            ),
            PathBuf::from("../../blobs/abc")
        );
        assert_eq!(
            relative(
                Path::new("/c/models--o--n/blobs/abc"),
                Path::new("/c/models--o--n/snapshots/123/sub/dir")
            ),
            PathBuf::from("../../../../blobs/abc")
        );
    }

    #[test]
    fn lookup_by_ref_and_by_commit_and_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoRef::dataset("o/n", None).unwrap();
        let c = RepoCache::new(dir.path(), &repo);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        // No ref yet: the miss names the ref file.
        assert_eq!(c.lookup("main", "f.csv"), Err(c.ref_path("main")));
        c.write_ref("main", commit).unwrap();
        assert_eq!(
            c.lookup("main", "f.csv"),
            Err(c.snapshot_path(commit, "f.csv"))
        );
        let blob = c.blob_path("e1");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, "x").unwrap();
        let p = c.snapshot_path(commit, "f.csv");
        c.link(&blob, &p).unwrap();
        assert_eq!(c.lookup("main", "f.csv"), Ok((commit.into(), p.clone())));
        assert_eq!(c.lookup(commit, "f.csv"), Ok((commit.into(), p.clone())));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x");
        // The blob removed: the dangling entry is a miss, and linking again repairs it.
        std::fs::remove_file(&blob).unwrap();
        assert!(c.lookup("main", "f.csv").is_err());
        std::fs::write(&blob, "y").unwrap();
        c.link(&blob, &p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "y");
    }

    #[test]
    fn a_second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoRef::model("o/n", None).unwrap();
        let c = RepoCache::new(dir.path(), &repo);
        let w = Wanted::new(&repo, "f");
        let first = c.lock("e", &w).unwrap();
        let other = std::fs::OpenOptions::new()
            .write(true)
            .open(c.lock_path("e"))
            .unwrap();
        assert!(!flock(&other, false).unwrap(), "held by `first`");
        drop(first);
        assert!(flock(&other, false).unwrap(), "released on drop");
    }
}
