//! Finetune checkpoints to and from the coordinator's artifact store, as PEFT-layout folders moved
//! by [`super::artifacts`] (the layout is [`crate::checkpoint`]'s).
use super::{RpcError, artifacts};
use crate::checkpoint::{ADAPTER_PART, BEST_PART, TRAINER_PART};
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
    let mut parts = vec![ADAPTER_PART];
    if tokio::fs::try_exists(staged.join(BEST_PART))
        .await
        .map_err(io(staged))?
    {
        parts.push(BEST_PART);
    }
    parts.push(TRAINER_PART);
    for part in parts {
        artifacts::upload_adapter(client, &format!("{artifact}/{part}"), &staged.join(part))
            .await?;
    }
    Ok(())
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
    for p in [TRAINER_PART, ADAPTER_PART] {
        let (name, to) = part(p);
        artifacts::download_adapter(client, &name, &to).await?;
    }
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
