//! Finetune checkpoints to and from the coordinator's artifact store, as folders moved by
//! [`super::artifacts`] (the layout is [`crate::checkpoint`]'s).
use super::{RpcError, artifacts};
use crate::checkpoint::{ADAPTER_PART, BEST_PART, TRAINER_FILES, TRAINER_PART};
use std::path::{Path, PathBuf};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RpcError + '_ {
    move |source| RpcError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Uploads a staged checkpoint (`staged`, laid out by [`crate::checkpoint::stage`]) as the
/// artifact folder `artifact`. The trainer part goes last: a checkpoint is only announced to the
/// coordinator once every part is stored.
pub async fn upload(
    client: &mut artifacts::Client,
    artifact: &str,
    staged: &Path,
) -> Result<(), RpcError> {
    let part = |p: &str| (format!("{artifact}/{p}"), staged.join(p));
    let (name, dir) = part(ADAPTER_PART);
    artifacts::upload_adapter(client, &name, &dir).await?;
    if tokio::fs::try_exists(staged.join(BEST_PART))
        .await
        .map_err(io(staged))?
    {
        let (name, dir) = part(BEST_PART);
        artifacts::upload_adapter(client, &name, &dir).await?;
    }
    let (name, dir) = part(TRAINER_PART);
    artifacts::upload_files(client, &name, &dir, &TRAINER_FILES).await
}

/// Downloads the checkpoint `artifact` into the engine's checkpoint folder `dir` (through
/// `staging`, removed after), so the finetune started next resumes from it.
pub async fn download(
    client: &mut artifacts::Client,
    artifact: &str,
    staging: &Path,
    dir: &Path,
) -> Result<(), RpcError> {
    let part = |p: &str| (format!("{artifact}/{p}"), staging.join(p));
    let (name, to) = part(TRAINER_PART);
    artifacts::download_files(client, &name, &to, &TRAINER_FILES).await?;
    let (name, to) = part(ADAPTER_PART);
    artifacts::download_adapter(client, &name, &to).await?;
    let (staged, target): (PathBuf, PathBuf) = (staging.to_path_buf(), dir.to_path_buf());
    let has_best = {
        let s = staged.clone();
        tokio::task::spawn_blocking(move || crate::checkpoint::has_best(&s))
            .await
            .map_err(|e| io(staging)(std::io::Error::other(e)))?
            .map_err(io(staging))?
    };
    if has_best {
        let (name, to) = part(BEST_PART);
        artifacts::download_adapter(client, &name, &to).await?;
    }
    tokio::task::spawn_blocking(move || crate::checkpoint::unstage(&staged, &target))
        .await
        .map_err(|e| io(dir)(std::io::Error::other(e)))?
        .map_err(io(dir))
}
