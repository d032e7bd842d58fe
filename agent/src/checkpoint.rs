//! A finetune checkpoint between the engine's folder and the artifact store.
//!
//! A checkpoint travels as three artifact folders (the layout `pb::ResumeFrom` documents):
//! - `adapter/`: the adapter, as the engine wrote it ([`proto::ADAPTER_FILES`]);
//! - `best/`: the best adapter by validation loss, when there is one;
//! - `trainer/`: [`TRAINER_FILES`], the optimiser moments and `trainer_state.json`.
//!
//! [`stage`] lays a checkpoint out that way (hard links where the file system allows: the engine
//! writes every checkpoint file as a new file renamed into place, so a link keeps this
//! checkpoint's bytes after the next one replaces the originals); [`unstage`] turns a downloaded
//! one back into the engine's folder, `trainer_state.json` last (its presence means complete).
use engine::train::checkpoint::{ADAPTER_DIR, BEST_DIR, OPTIMIZER_FILE, STATE_FILE};
use std::io;
use std::path::Path;

/// The transport folder of the adapter.
pub const ADAPTER_PART: &str = ADAPTER_DIR;
/// The transport folder of the best adapter (absent when the run has no validation loss yet).
pub const BEST_PART: &str = BEST_DIR;
/// The transport folder carrying the trainer state and the optimiser moments.
pub const TRAINER_PART: &str = "trainer";
/// `trainer/`'s files, in upload order: the state last, as the engine writes it (its presence
/// means the rest is there).
pub const TRAINER_FILES: [&str; 2] = [OPTIMIZER_FILE, STATE_FILE];

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Links `from` to `to`, copying when the file system cannot link.
fn link(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(|e| ctx(from, e))?;
    }
    Ok(())
}

fn link_adapter(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to).map_err(|e| ctx(to, e))?;
    for f in proto::ADAPTER_FILES {
        link(&from.join(f), &to.join(f))?;
    }
    Ok(())
}

/// Lays the engine's checkpoint in `dir` out for upload in `to` (replaced if present); says
/// whether it has a best adapter.
pub fn stage(dir: &Path, to: &Path) -> io::Result<bool> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| ctx(to, e))?;
    }
    link_adapter(&dir.join(ADAPTER_DIR), &to.join(ADAPTER_PART))?;
    let best = dir.join(BEST_DIR);
    let has_best = best.join(proto::ADAPTER_FILES[0]).exists();
    if has_best {
        link_adapter(&best, &to.join(BEST_PART))?;
    }
    let trainer = to.join(TRAINER_PART);
    std::fs::create_dir_all(&trainer).map_err(|e| ctx(&trainer, e))?;
    for f in TRAINER_FILES {
        link(&dir.join(f), &trainer.join(f))?;
    }
    Ok(has_best)
}

/// Whether a downloaded `trainer/` part's state has a best validation loss (so a `best/` part).
pub fn has_best(staged: &Path) -> io::Result<bool> {
    let path = staged.join(TRAINER_PART).join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ctx(&path, e))?;
    let state: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(state.get("best_val_loss").is_some_and(|b| !b.is_null()))
}

/// Moves a downloaded checkpoint (laid out as [`stage`] does) from `staged` into the engine's
/// checkpoint folder `dir`, which must not hold one yet.
pub fn unstage(staged: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ctx(dir, e))?;
    let mv = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| ctx(from, e));
    mv(&staged.join(ADAPTER_PART), &dir.join(ADAPTER_DIR))?;
    let best = staged.join(BEST_PART);
    if best.exists() {
        mv(&best, &dir.join(BEST_DIR))?;
    }
    let trainer = staged.join(TRAINER_PART);
    for f in TRAINER_FILES {
        mv(&trainer.join(f), &dir.join(f))?;
    }
    let _ = std::fs::remove_dir_all(staged);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_staged_checkpoint_unstages_to_the_same_files_and_outlives_the_next_save() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoint");
        for part in [ADAPTER_DIR, BEST_DIR] {
            for f in proto::ADAPTER_FILES {
                write(&ck.join(part).join(f), &format!("{part}/{f}"));
            }
        }
        write(&ck.join(OPTIMIZER_FILE), "moments");
        write(&ck.join(STATE_FILE), r#"{"best_val_loss": 1.5}"#);
        let staged = d.path().join("staged");
        assert!(stage(&ck, &staged).unwrap());
        assert_eq!(
            std::fs::read_to_string(staged.join("trainer/optimizer.safetensors")).unwrap(),
            "moments"
        );
        // The next checkpoint replaces the file (new file renamed over it): the staged bytes stay.
        write(&ck.join("new"), "moments 2");
        std::fs::rename(ck.join("new"), ck.join(OPTIMIZER_FILE)).unwrap();
        let back = d.path().join("resumed");
        unstage(&staged, &back).unwrap();
        assert_eq!(
            std::fs::read_to_string(back.join(OPTIMIZER_FILE)).unwrap(),
            "moments"
        );
        assert_eq!(
            std::fs::read_to_string(back.join(BEST_DIR).join(proto::ADAPTER_FILES[1])).unwrap(),
            format!("{BEST_DIR}/{}", proto::ADAPTER_FILES[1])
        );
        assert!(back.join(STATE_FILE).exists());
    }
}
