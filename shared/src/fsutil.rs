//! File writes: every file the product writes goes through here. A whole file is written to a
//! temp file in its folder, fsynced, then renamed over the target, so readers see the old file or
//! the new one, never a torn one; a journal grows by whole appended records, fsynced.
//!
//! Temp names are unique per call (`tempfile`'s random names, created exclusively), so two threads
//! or processes writing the same path at once each write their own temp file and the last rename
//! wins with one complete content.
use std::io::Write;
use std::path::{Path, PathBuf};

fn folder_and_name(path: &Path) -> std::io::Result<(&Path, String)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: path has no file name", path.display()),
        )
    })?;
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// A temp-file builder for `name`: `.{name}.<random>{suffix}`, created exclusively, with the mode
/// a plain `File::create` gives (0o666 less the umask) rather than tempfile's private 0o600.
fn builder<'a>(prefix: &'a str, suffix: &'a str) -> tempfile::Builder<'a, 'a> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b
}

/// A file being written in place of `dest`: bytes go to a uniquely named temp file beside it;
/// [`AtomicFile::commit`] fsyncs and renames it over `dest`. Dropped without a commit, the temp
/// file is removed and `dest` is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    /// Starts a write of `dest` (its folder is created if missing).
    pub fn create(dest: &Path) -> std::io::Result<AtomicFile> {
        let (dir, name) = folder_and_name(dest)?;
        std::fs::create_dir_all(dir)?;
        let prefix = format!(".{name}.");
        let tmp = builder(&prefix, ".tmp").tempfile_in(dir)?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The file it replaces.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes, fsyncs and renames the temp file over the destination.
    pub fn commit(mut self) -> std::io::Result<()> {
        self.tmp.flush()?;
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.dest).map(drop).map_err(|e| e.error)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// A path for a library that only writes to paths (an image encoder that picks its format from
/// the extension, a serialiser's `save(path)`): a uniquely named temp path beside `dest` ending in
/// `.{extension}`. [`AtomicPath::commit`] fsyncs what was written there and renames it over `dest`;
/// dropped without a commit, whatever was written there is removed.
#[derive(Debug)]
pub struct AtomicPath {
    tmp: tempfile::TempPath,
    dest: PathBuf,
}

impl AtomicPath {
    pub fn create(dest: &Path, extension: &str) -> std::io::Result<AtomicPath> {
        let (dir, name) = folder_and_name(dest)?;
        std::fs::create_dir_all(dir)?;
        let (prefix, suffix) = (format!(".{name}."), format!(".tmp.{extension}"));
        let tmp = builder(&prefix, &suffix).tempfile_in(dir)?.into_temp_path();
        Ok(AtomicPath {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// Where the library writes.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(self) -> std::io::Result<()> {
        std::fs::File::open(&self.tmp)?.sync_all()?;
        self.tmp.persist(&self.dest).map_err(|e| e.error)
    }
}

/// Whether a file name is one of [`AtomicFile`]'s or [`AtomicPath`]'s temp files
/// (`.{name}.<random>.tmp`, `.{name}.<random>.tmp.{extension}`), which a crash mid-write can
/// leave behind: never a finished output.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".tmp."))
}

/// Writes `path` atomically with whatever `write` streams into it; the file appears only if
/// `write` returns `Ok` (its value is returned).
pub fn write_atomic_with<T>(
    path: &Path,
    write: impl FnOnce(&mut AtomicFile) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut f = AtomicFile::create(path)?;
    let value = write(&mut f)?;
    f.commit()?;
    Ok(value)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        serde_json::to_writer_pretty(&mut w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")?;
        w.flush()
    })
}

/// Appends `bytes` to `path` (created with its folder if missing) in one write, then fsyncs: the
/// record is durable once this returns, and a crash mid-write tears at most this record.
pub fn append_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, _) = folder_and_name(path)?;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn temp_names_are_recognised_and_outputs_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = AtomicFile::create(&dir.path().join("results.json")).unwrap();
        let p = AtomicPath::create(&dir.path().join("plot.png"), "png").unwrap();
        for tmp in names(dir.path()) {
            assert!(is_temp_name(tmp.to_str().unwrap()), "{tmp:?}");
        }
        drop((f, p));
        for name in [
            "results.json",
            "plot.png",
            ".sizespec",
            "report.tmpl.html",
            "a.tmp",
        ] {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()).len(), 1, "temp file left behind");
    }

    #[test]
    fn a_failed_streamed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half of the new")?;
            Err::<(), _>(std::io::Error::other("encoder failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "encoder failed");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(&dir.path().join("sub")).len(), 1, "temp file left");
    }

    #[test]
    fn two_threads_writing_the_same_path_both_succeed_with_one_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("same.bin");
        // Large enough that the two writes overlap in time; each content is one repeated byte.
        let contents = [vec![b'a'; 4 << 20], vec![b'b'; 4 << 20]];
        for round in 0..8 {
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                let handles: Vec<_> = contents
                    .iter()
                    .map(|c| {
                        let (p, barrier) = (&p, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            write_atomic_with(p, |f| {
                                for chunk in c.chunks(64 << 10) {
                                    f.write_all(chunk)?;
                                }
                                Ok(())
                            })
                        })
                    })
                    .collect();
                for h in handles {
                    h.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                }
            });
            let got = std::fs::read(&p).unwrap();
            assert!(
                contents.contains(&got),
                "round {round}: a mix of the two writes ({} bytes, first {:?}, last {:?})",
                got.len(),
                got.first(),
                got.last()
            );
            assert_eq!(names(dir.path()).len(), 1, "round {round}: temp file left");
        }
    }

    #[test]
    fn an_atomic_path_keeps_the_extension_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("plot.png");
        let tmp = AtomicPath::create(&dest, "png").unwrap();
        assert!(tmp.path().to_string_lossy().ends_with(".png"));
        std::fs::write(tmp.path(), b"png bytes").unwrap();
        assert!(!dest.exists(), "nothing visible before the commit");
        tmp.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"png bytes");
        let dropped = AtomicPath::create(&dest, "png").unwrap();
        std::fs::write(dropped.path(), b"abandoned").unwrap();
        drop(dropped);
        assert_eq!(std::fs::read(&dest).unwrap(), b"png bytes");
        assert_eq!(names(dir.path()).len(), 1, "abandoned temp path removed");
    }

    #[test]
    fn appends_accumulate_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j").join("log.jsonl");
        append_durable(&p, b"{\"a\":1}\n").unwrap();
        append_durable(&p, b"{\"a\":2}\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
    }
}
