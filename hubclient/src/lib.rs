//! Files of Hugging Face hub repositories (models and datasets), from the standard hub cache or
//! downloaded into it.
//!
//! The cache is the one huggingface_hub and the hf-hub crate share (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`): `<kind>s--owner--name/blobs/<etag>`,
//! `snapshots/<commit>/<file>` (a relative link to the blob) and `refs/<revision>` (the commit), so
//! a file fetched by `huggingface-cli`, `datasets` or `transformers` is found, and one fetched here
//! is found by them. A transfer writes `blobs/<etag>.incomplete` (huggingface_hub's name, so either
//! tool resumes the other's partial file), resumes it with an HTTP `Range` request after an
//! interruption, retries with backoff, and checks the size (and the sha256 when the hub names one)
//! before the blob is renamed into place: a corrupt file never reaches the cache.
//!
//! Environment variables are read only by [`HubSettings::from_env`] (the command-line edge);
//! everything else takes explicit settings, so tests in parallel threads never share state.
mod cache;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
mod http;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{HubError, Wanted};

/// The hub's address unless `HF_ENDPOINT` (or [`HubSettings::endpoint`]) names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Whether the hub may be contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAccess {
    /// Ask the hub which commit a revision is (a few hundred bytes), use the cached file when that
    /// commit's file is cached, download it otherwise. If the hub cannot be reached, a cached copy
    /// of the revision is used (with a warning).
    Online,
    /// The cache only (`HF_HUB_OFFLINE=1`); a missing file is an error naming where it was looked
    /// for.
    Offline,
}

/// How often a failed transfer is tried, and the first pause (doubled after each failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
        }
    }
}

impl Retries {
    /// The pause after failed attempt `n` (1-based): `first_delay * 2^(n-1)`, at most 30 s.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.first_delay
            .saturating_mul(factor)
            .min(Duration::from_secs(30))
    }
}

/// Where the cache is, how to authenticate, whether downloads are allowed, which hub.
#[derive(Clone)]
pub struct HubSettings {
    /// The `hub` folder (`models--owner--name/`, `datasets--owner--name/` live inside it).
    pub cache_dir: PathBuf,
    /// Sent as `Authorization: Bearer` (gated and private repositories).
    pub token: Option<String>,
    pub access: HubAccess,
    /// A mirror (`HF_ENDPOINT`); `None` = [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    pub retries: Retries,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("access", &self.access)
            .field("endpoint", &self.endpoint)
            .field("retries", &self.retries)
            .finish()
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_flag(name: &str) -> bool {
    env_var(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl HubSettings {
    /// Online, no token, the default hub, default retries, cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            token: None,
            access: HubAccess::Online,
            endpoint: None,
            retries: Retries::default(),
        }
    }

    /// What huggingface_hub reads: `HF_HUB_CACHE`, else `$HF_HOME/hub` (`HF_HOME` defaulting to
    /// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`); `HF_TOKEN`, else the token file
    /// `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `$HF_HOME/token`); `HF_HUB_OFFLINE`;
    /// `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        let home = env_var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = env_var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env_var("HOME").map(|h| Path::new(&h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = env_var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = env_var("HF_TOKEN").or_else(|| {
            let path = env_var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            cache_dir,
            token,
            access: if env_flag("HF_HUB_OFFLINE") {
                HubAccess::Offline
            } else {
                HubAccess::Online
            },
            endpoint: env_var("HF_ENDPOINT"),
            retries: Retries::default(),
        }
    }

    /// The hub's base URL without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        self.endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
    }
}

/// A model or a dataset repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }

    /// The cache folder's prefix, `models` or `datasets`.
    fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// `owner/name` with both parts made of `[A-Za-z0-9._-]`, neither `.` nor `..`.
pub fn is_repo_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A full commit hash (40 lowercase hex digits), which names a snapshot that never changes.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A repository at a revision (branch, tag or commit), optionally pinned to the commit that
/// revision resolved to (so every file of one model comes from the same commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub kind: RepoKind,
    pub id: String,
    /// As asked for (`main` when none was given).
    pub revision: String,
    /// The commit `revision` resolved to, once known.
    pub pinned: Option<String>,
}

impl RepoRef {
    /// `revision` `None` = `main`.
    pub fn new(kind: RepoKind, id: &str, revision: Option<&str>) -> Result<Self, HubError> {
        if !is_repo_id(id) {
            return Err(HubError::BadRepoId { id: id.into() });
        }
        let revision = revision.map_or("main", str::trim);
        if revision.is_empty() || revision.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(HubError::BadRevision {
                repo: id.into(),
                revision: revision.into(),
            });
        }
        Ok(Self {
            kind,
            id: id.into(),
            revision: revision.into(),
            pinned: None,
        })
    }

    pub fn model(id: &str, revision: Option<&str>) -> Result<Self, HubError> {
        Self::new(RepoKind::Model, id, revision)
    }

    pub fn dataset(id: &str, revision: Option<&str>) -> Result<Self, HubError> {
        Self::new(RepoKind::Dataset, id, revision)
    }

    /// The same repository pinned to `commit`.
    pub fn at(&self, commit: &str) -> Self {
        Self {
            pinned: Some(commit.into()),
            ..self.clone()
        }
    }

    /// The revision requests use: the pinned commit, else the revision asked for.
    pub fn effective_revision(&self) -> &str {
        self.pinned.as_deref().unwrap_or(&self.revision)
    }

    /// `models--owner--name` / `datasets--owner--name`.
    pub fn folder_name(&self) -> String {
        format!("{}--{}", self.kind.plural(), self.id.replace('/', "--"))
    }

    /// The repository's path on the hub: `owner/name` (models) or `datasets/owner/name`.
    pub fn url_path(&self) -> String {
        match self.kind {
            RepoKind::Model => self.id.clone(),
            RepoKind::Dataset => format!("datasets/{}", self.id),
        }
    }
}

/// A file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `snapshots/<commit>/<file>` in the cache.
    pub path: PathBuf,
    /// The commit the file belongs to.
    pub commit: String,
    /// Whether this call transferred it (false: it was in the cache).
    pub downloaded: bool,
}

/// A client of one hub with one cache.
pub struct Hub {
    settings: HubSettings,
    http: http::Client,
}

impl Hub {
    pub fn new(settings: HubSettings) -> Self {
        let http = http::Client::new(&settings);
        Self { settings, http }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// `file` of `repo`: from the cache, or downloaded into it (see [`HubAccess`]).
    pub fn get(&self, repo: &RepoRef, file: &str) -> Result<Fetched, HubError> {
        check_file_name(file)?;
        let wanted = Wanted::new(repo, file);
        let cache = cache::RepoCache::new(&self.settings.cache_dir, repo);
        let revision = repo.effective_revision();
        if self.settings.access == HubAccess::Offline {
            return cache
                .lookup(revision, file)
                .map(|(commit, path)| Fetched {
                    path,
                    commit,
                    downloaded: false,
                })
                .map_err(|looked_for| HubError::OfflineMiss {
                    wanted: Box::new(wanted),
                    looked_for,
                    cache_dir: self.settings.cache_dir.clone(),
                });
        }
        if is_commit(revision)
            && let Ok((commit, path)) = cache.lookup(revision, file)
        {
            // A commit's snapshot never changes: no need to ask the hub.
            return Ok(Fetched {
                path,
                commit,
                downloaded: false,
            });
        }
        let meta = match self.http.metadata(&self.settings, repo, file, &wanted) {
            Ok(m) => m,
            Err(HubError::Unreachable {
                wanted,
                endpoint,
                attempts,
                reason,
                ..
            }) => {
                return match cache.lookup(revision, file) {
                    Ok((commit, path)) => {
                        tracing::warn!(
                            %wanted, %endpoint, %reason,
                            "the hub cannot be reached; using the cached copy of this revision"
                        );
                        Ok(Fetched {
                            path,
                            commit,
                            downloaded: false,
                        })
                    }
                    Err(looked_for) => Err(HubError::Unreachable {
                        wanted,
                        endpoint,
                        attempts,
                        reason,
                        looked_for,
                    }),
                };
            }
            Err(e) => return Err(e),
        };
        let pointer = cache.snapshot_path(&meta.commit, file);
        let mut downloaded = false;
        if !pointer.is_file() {
            let blob = cache.blob_path(&meta.etag);
            if !blob.is_file() {
                let _lock = cache
                    .lock(&meta.etag, &wanted)
                    .map_err(|e| HubError::io(&wanted, &cache.lock_path(&meta.etag), e))?;
                if !blob.is_file() {
                    self.http.download(
                        &self.settings,
                        &repo.at(&meta.commit),
                        file,
                        &meta,
                        &cache,
                        &wanted,
                    )?;
                    downloaded = true;
                }
            }
            cache
                .link(&blob, &pointer)
                .map_err(|e| HubError::io(&wanted, &pointer, e))?;
        }
        if revision != meta.commit {
            cache
                .write_ref(revision, &meta.commit)
                .map_err(|e| HubError::io(&wanted, &cache.ref_path(revision), e))?;
        }
        Ok(Fetched {
            path: pointer,
            commit: meta.commit,
            downloaded,
        })
    }

    /// Like [`Hub::get`], but a file the repository does not have at this revision (or, offline,
    /// one the cache does not have) is `None`. Every other failure (no access, no network) is an
    /// error: an optional file is never a reason to hide one.
    pub fn get_optional(&self, repo: &RepoRef, file: &str) -> Result<Option<Fetched>, HubError> {
        match self.get(repo, file) {
            Ok(f) => Ok(Some(f)),
            Err(HubError::EntryNotFound { .. } | HubError::OfflineMiss { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A path inside a repository: relative, `/`-separated, no empty, `.` or `..` part (a name taken
/// from a downloaded index must not reach outside the snapshot folder).
fn check_file_name(file: &str) -> Result<(), HubError> {
    let bad = file.is_empty()
        || file.contains('\\')
        || file.contains('\0')
        || file
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(HubError::BadFileName { file: file.into() })
    } else {
        Ok(())
    }
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_revisions_and_file_names_are_checked() {
        assert!(is_repo_id("Ahmad0067/MedSynth"));
        assert!(is_repo_id("meta-llama/Llama-3.2-3B-Instruct"));
        for bad in ["gpt2", "a/b/c", "/a", "a/", "../x", "a/..", "a b/c", ""] {
            assert!(!is_repo_id(bad), "{bad}");
            assert!(RepoRef::model(bad, None).is_err(), "{bad}");
        }
        let r = RepoRef::dataset("o/n", None).unwrap();
        assert_eq!(r.revision, "main");
        assert_eq!(r.folder_name(), "datasets--o--n");
        assert_eq!(r.url_path(), "datasets/o/n");
        assert_eq!(
            RepoRef::model("o/n", Some("refs/pr/1"))
                .unwrap()
                .folder_name(),
            "models--o--n"
        );
        assert!(RepoRef::model("o/n", Some("a/../b")).is_err());
        for bad in ["", "/x", "x/", "a//b", "../x", "a/./b", "a\\b"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
        check_file_name("sub/dir/file.json").unwrap();
        assert!(is_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit("main"));
        assert!(!is_commit("0123456789ABCDEF0123456789abcdef01234567"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retries {
            attempts: 5,
            first_delay: Duration::from_millis(100),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(3), Duration::from_millis(400));
        assert_eq!(r.delay(40), Duration::from_secs(30));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let mut s = HubSettings::new("/c");
        s.token = Some("hf_secret".into());
        let d = format!("{s:?}");
        assert!(!d.contains("hf_secret") && d.contains("<set>"), "{d}");
    }
}
