//! Hugging Face hub ids: a model's files — `config.json`, `tokenizer.json`, `tokenizer_config.json`
//! and `generation_config.json` when the repository has them, and `model.safetensors` or every
//! shard of `model.safetensors.index.json` — from the standard hub cache or downloaded into it by
//! [`hubclient`] (resumed after an interrupted transfer, verified before it enters the cache;
//! `HF_TOKEN` for gated models; with `HF_HUB_OFFLINE=1` the cache only). All files come from one
//! commit: the one the revision resolved to for `config.json`.
use std::path::{Path, PathBuf};

use hubclient::{Hub, RepoRef};
pub use hubclient::{HubAccess, HubSettings};

use crate::error::{EngineError, Result};

/// Files every HF model folder needs (besides its weights).
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files read when the repository has them.
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

fn hub_error(e: hubclient::HubError) -> EngineError {
    EngineError::Hub(e.to_string())
}

/// The local snapshot folder of `repo_id` at `revision` (branch, tag or commit; `None` = `main`),
/// with every file the loader reads present — from the cache, or downloaded into it when
/// `settings.access` allows.
pub fn snapshot_dir(
    repo_id: &str,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<PathBuf> {
    if !hubclient::is_repo_id(repo_id) {
        return Err(EngineError::Hub(format!(
            "`{repo_id}` is not a local folder, a .gguf file, or a hub id of the form owner/name"
        )));
    }
    let repo = RepoRef::model(repo_id, revision).map_err(hub_error)?;
    let hub = Hub::new(settings.clone());
    let config = hub.get(&repo, REQUIRED[0]).map_err(hub_error)?;
    let repo = repo.at(&config.commit);
    let dir = config.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    for f in &REQUIRED[1..] {
        hub.get(&repo, f).map_err(hub_error)?;
    }
    for f in OPTIONAL {
        hub.get_optional(&repo, f).map_err(hub_error)?;
    }
    if hub
        .get_optional(&repo, "model.safetensors")
        .map_err(hub_error)?
        .is_none()
    {
        hub.get_optional(&repo, "model.safetensors.index.json")
            .map_err(hub_error)?
            .ok_or_else(|| {
                EngineError::Hub(format!(
                    "model `{repo_id}` at revision `{}` (commit {}) has neither \
                     model.safetensors nor model.safetensors.index.json{}",
                    repo.revision,
                    config.commit,
                    match settings.access {
                        HubAccess::Offline => format!(
                            " in the hub cache {} (HF_HUB_OFFLINE is set)",
                            settings.cache_dir.display()
                        ),
                        HubAccess::Online => String::new(),
                    }
                ))
            })?;
        for shard in super::hf::weight_files(&dir)? {
            let name = shard
                .strip_prefix(&dir)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| {
                    EngineError::Hub(format!(
                        "model `{repo_id}`: shard {} is outside the snapshot",
                        shard.display()
                    ))
                })?;
            hub.get(&repo, name).map_err(hub_error)?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// The hub cache layout huggingface_hub writes: refs/<branch> holds the commit, snapshot files.
    fn fake_cache(root: &Path, files: &[&str]) -> PathBuf {
        let repo = root.join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
        let snap = repo.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    fn offline(root: &Path) -> HubSettings {
        let mut s = HubSettings::new(root);
        s.access = HubAccess::Offline;
        s
    }

    #[test]
    fn finds_a_cached_snapshot_by_branch_and_by_commit() {
        let root = tempfile::tempdir().unwrap();
        let all = [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "model.safetensors",
        ];
        let snap = fake_cache(root.path(), &all);
        let s = offline(root.path());
        assert_eq!(snapshot_dir("org/tiny", None, &s).unwrap(), snap);
        assert_eq!(snapshot_dir("org/tiny", Some(COMMIT), &s).unwrap(), snap);
    }

    #[test]
    fn sharded_snapshot_needs_every_shard() {
        let root = tempfile::tempdir().unwrap();
        let snap = fake_cache(
            root.path(),
            &[
                "config.json",
                "tokenizer.json",
                "model-00001-of-00002.safetensors",
            ],
        );
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(snap.join("model.safetensors.index.json"), index).unwrap();
        let s = offline(root.path());
        let e = snapshot_dir("org/tiny", None, &s).unwrap_err().to_string();
        assert!(
            e.contains("model-00002-of-00002.safetensors") && e.contains("HF_HUB_OFFLINE"),
            "{e}"
        );
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "").unwrap();
        assert_eq!(snapshot_dir("org/tiny", None, &s).unwrap(), snap);
    }

    #[test]
    fn a_shard_name_reaching_outside_the_snapshot_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let snap = fake_cache(root.path(), &["config.json", "tokenizer.json"]);
        let index = r#"{"weight_map": {"a": "../../../escape.safetensors"}}"#;
        std::fs::write(snap.join("model.safetensors.index.json"), index).unwrap();
        let e = snapshot_dir("org/tiny", None, &offline(root.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("escape.safetensors"), "{e}");
    }

    #[test]
    fn offline_miss_names_repo_revision_file_and_cache() {
        let root = tempfile::tempdir().unwrap();
        fake_cache(root.path(), &["config.json"]);
        let s = offline(root.path());
        let e = snapshot_dir("org/tiny", None, &s).unwrap_err().to_string();
        assert!(
            e.contains("`org/tiny`") && e.contains("`main`") && e.contains("tokenizer.json"),
            "{e}"
        );
        assert!(e.contains(&root.path().display().to_string()), "{e}");
        let e = snapshot_dir("org/other", Some("v1"), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`org/other`") && e.contains("`v1`") && e.contains("config.json"),
            "{e}"
        );
        assert!(
            e.contains(
                &root
                    .path()
                    .join("models--org--other/refs/v1")
                    .display()
                    .to_string()
            ),
            "{e}"
        );
        let e = snapshot_dir("justaname", None, &s).unwrap_err().to_string();
        assert!(e.contains("owner/name"), "{e}");
    }
}
