//! Hugging Face hub ids: found in the local hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) or downloaded into it (`HF_TOKEN` for gated models). With
//! `HF_HUB_OFFLINE=1` only the cache is used and a missing file is an error naming it.
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{EngineError, Result};

/// Whether the hub may be contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAccess {
    /// Use the cache first, download what is missing.
    Online,
    /// Cache only.
    Offline,
}

/// Where the cache is, how to authenticate, and whether downloads are allowed.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The `hub` folder (`models--owner--name/...` lives inside it).
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    pub access: HubAccess,
    /// `HF_ENDPOINT` (a mirror); `None` = huggingface.co.
    pub endpoint: Option<String>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl HubSettings {
    /// From `HF_HUB_CACHE` / `HF_HOME`, `HF_TOKEN` (else the cached login token), `HF_HUB_OFFLINE`,
    /// `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        let cache = match std::env::var_os("HF_HUB_CACHE") {
            Some(p) => Cache::new(PathBuf::from(p)),
            None => Cache::from_env(),
        };
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        Self {
            cache_dir: cache.path().clone(),
            token,
            access: if env_flag("HF_HUB_OFFLINE") {
                HubAccess::Offline
            } else {
                HubAccess::Online
            },
            endpoint: std::env::var("HF_ENDPOINT").ok(),
        }
    }
}

/// Files every HF model folder needs.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files read when present.
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// The local snapshot folder of `repo_id` at `revision` (branch, tag or commit), with every file the
/// loader needs present — from the cache, or downloaded into it when `settings.access` allows.
pub fn snapshot_dir(
    repo_id: &str,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<PathBuf> {
    if !repo_id.contains('/') || repo_id.split('/').any(str::is_empty) {
        return Err(EngineError::Hub(format!(
            "`{repo_id}` is not a local folder, a .gguf file, or a hub id of the form owner/name"
        )));
    }
    let revision = revision.unwrap_or("main");
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let cache = Cache::new(settings.cache_dir.clone());
    let fetcher = Fetcher {
        repo_id,
        revision,
        repo: &repo,
        cache: &cache,
        settings,
    };

    let config = fetcher.get("config.json")?;
    for f in REQUIRED.iter().skip(1) {
        fetcher.get(f)?;
    }
    for f in OPTIONAL {
        fetcher.get_optional(f);
    }
    match fetcher.get_optional("model.safetensors") {
        Some(_) => {}
        None => {
            let index = fetcher.get("model.safetensors.index.json").map_err(|e| {
                EngineError::Hub(format!(
                    "{e} (neither model.safetensors nor a sharded index was found)"
                ))
            })?;
            let dir = index.parent().unwrap_or(Path::new(".")).to_path_buf();
            for shard in super::hf::weight_files(&dir).unwrap_or_default() {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                fetcher.get(&name)?;
            }
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

struct Fetcher<'a> {
    repo_id: &'a str,
    revision: &'a str,
    repo: &'a Repo,
    cache: &'a Cache,
    settings: &'a HubSettings,
}

impl Fetcher<'_> {
    /// A file from the cache: by ref (`refs/<revision>`), or straight from `snapshots/<revision>` when
    /// the revision is a commit hash.
    fn cached(&self, file: &str) -> Option<PathBuf> {
        if let Some(p) = self.cache.repo(self.repo.clone()).get(file) {
            return Some(p);
        }
        let direct = self
            .settings
            .cache_dir
            .join(self.repo.folder_name())
            .join("snapshots")
            .join(self.revision)
            .join(file);
        direct.is_file().then_some(direct)
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(file) {
            return Ok(p);
        }
        match self.settings.access {
            HubAccess::Offline => Err(EngineError::Hub(format!(
                "{}@{}: `{file}` is not in the local hub cache {} and HF_HUB_OFFLINE is set; \
                 download the model where the hub is reachable (or copy the cache) first",
                self.repo_id,
                self.revision,
                self.settings.cache_dir.display()
            ))),
            HubAccess::Online => {
                let mut b = ApiBuilder::from_cache(self.cache.clone())
                    .with_progress(false)
                    .with_token(self.settings.token.clone());
                if let Some(e) = &self.settings.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                let api = b
                    .build()
                    .map_err(|e| EngineError::Hub(format!("cannot start the hub client: {e}")))?;
                api.repo(self.repo.clone()).get(file).map_err(|e| {
                    let hint = if self.settings.token.is_none() {
                        " (gated model? set HF_TOKEN)"
                    } else {
                        ""
                    };
                    EngineError::Hub(format!(
                        "{}@{}: downloading `{file}` failed: {e}{hint}",
                        self.repo_id, self.revision
                    ))
                })
            }
        }
    }

    fn get_optional(&self, file: &str) -> Option<PathBuf> {
        match self.get(file) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(file, error = %e, "optional hub file not available");
                None
            }
        }
    }
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

    fn settings(root: &Path, access: HubAccess) -> HubSettings {
        HubSettings {
            cache_dir: root.to_path_buf(),
            token: None,
            access,
            endpoint: None,
        }
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
        for access in [HubAccess::Offline, HubAccess::Online] {
            // Online too: everything is cached, so nothing is fetched (this machine has no hub).
            assert_eq!(
                snapshot_dir("org/tiny", None, &settings(root.path(), access)).unwrap(),
                snap
            );
        }
        let s = settings(root.path(), HubAccess::Offline);
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
        let s = settings(root.path(), HubAccess::Offline);
        let e = snapshot_dir("org/tiny", None, &s).unwrap_err().to_string();
        assert!(
            e.contains("model-00002-of-00002.safetensors") && e.contains("HF_HUB_OFFLINE"),
            "{e}"
        );
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "").unwrap();
        assert_eq!(snapshot_dir("org/tiny", None, &s).unwrap(), snap);
    }

    #[test]
    fn offline_miss_names_repo_revision_file_and_cache() {
        let root = tempfile::tempdir().unwrap();
        fake_cache(root.path(), &["config.json"]);
        let s = settings(root.path(), HubAccess::Offline);
        let e = snapshot_dir("org/tiny", None, &s).unwrap_err().to_string();
        assert!(
            e.contains("org/tiny@main") && e.contains("tokenizer.json"),
            "{e}"
        );
        assert!(e.contains(&root.path().display().to_string()), "{e}");
        let e = snapshot_dir("org/other", Some("v1"), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("org/other@v1") && e.contains("config.json"),
            "{e}"
        );
        let e = snapshot_dir("justaname", None, &s).unwrap_err().to_string();
        assert!(e.contains("owner/name"), "{e}");
    }
}
