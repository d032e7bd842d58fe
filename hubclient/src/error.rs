//! Hub errors: each names the repository, the file and the revision, and says what to do.
use std::path::{Path, PathBuf};

use crate::RepoRef;

/// The file a request was for, as errors name it: "dataset `owner/name` file `x.csv` at revision
/// `main`" (with the commit when the revision had already resolved to one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub repo: RepoRef,
    pub file: String,
}

impl Wanted {
    pub fn new(repo: &RepoRef, file: &str) -> Self {
        Self {
            repo: repo.clone(),
            file: file.into(),
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} `{}` file `{}` at revision `{}`",
            self.repo.kind.noun(),
            self.repo.id,
            self.file,
            self.repo.revision
        )?;
        match &self.repo.pinned {
            Some(c) if *c != self.repo.revision => write!(f, " (commit {c})"),
            _ => Ok(()),
        }
    }
}

/// ` (hub: <message>)` when the hub sent one.
fn detail(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!("; the hub says: {m}"))
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{id}` is not a hub repository id of the form owner/name")]
    BadRepoId { id: String },
    #[error("`{revision}` is not a revision of `{repo}` (a branch, tag or commit)")]
    BadRevision { repo: String, revision: String },
    #[error(
        "`{file}` is not a file inside a repository (empty, absolute, or with a `.`/`..` part)"
    )]
    BadFileName { file: String },
    #[error(
        "{wanted}: the repository is gated or private and no token was sent (HTTP {status}{}): \
         set HF_TOKEN to a token of an account that has accepted its licence at {page}",
        detail(message)
    )]
    NeedsToken {
        wanted: Box<Wanted>,
        status: u16,
        page: String,
        message: Option<String>,
    },
    #[error(
        "{wanted}: HF_TOKEN is set but its account may not read this repository (HTTP {status}{}): \
         accept the licence at {page} with that account (gated repositories), or use a token of \
         an account that has access",
        detail(message)
    )]
    Forbidden {
        wanted: Box<Wanted>,
        status: u16,
        page: String,
        message: Option<String>,
    },
    #[error(
        "{wanted}: the repository does not exist, or it is private or gated (HTTP 401, no token \
         sent): check the repository id `{}`; if it is private or gated, set HF_TOKEN",
        wanted.repo.id
    )]
    RepoNotFoundNoToken { wanted: Box<Wanted> },
    #[error(
        "{wanted}: the repository `{}` does not exist on {endpoint} (or the token's account cannot \
         see it) (HTTP {status}): check the repository id",
        wanted.repo.id
    )]
    RepoNotFound {
        wanted: Box<Wanted>,
        endpoint: String,
        status: u16,
    },
    #[error(
        "{wanted}: the revision `{}` does not exist in `{}` (HTTP 404): check the revision (a \
         branch, tag or full commit hash)",
        wanted.repo.effective_revision(), wanted.repo.id
    )]
    RevisionNotFound { wanted: Box<Wanted> },
    #[error(
        "{wanted}: `{}` has no file `{}` at revision `{}` (HTTP 404): check the file name",
        wanted.repo.id, wanted.file, wanted.repo.effective_revision()
    )]
    EntryNotFound { wanted: Box<Wanted> },
    #[error(
        "{wanted}: not found (HTTP 404{}): check the repository id, the file name and the revision",
        detail(message)
    )]
    NotFound {
        wanted: Box<Wanted>,
        message: Option<String>,
    },
    #[error("{wanted}: HTTP {status} from {url}{}", detail(message))]
    Http {
        wanted: Box<Wanted>,
        status: u16,
        url: String,
        message: Option<String>,
    },
    #[error(
        "{wanted}: the hub at {endpoint} did not answer ({attempts} attempts; last: {reason}) and \
         the cache has no copy (looked for {}): check the network, a proxy (HTTPS_PROXY) or \
         HF_ENDPOINT, or copy a hub cache holding the file and set HF_HUB_OFFLINE=1",
        looked_for.display()
    )]
    Unreachable {
        wanted: Box<Wanted>,
        endpoint: String,
        attempts: u32,
        reason: String,
        looked_for: PathBuf,
    },
    #[error(
        "{wanted}: the transfer failed {attempts} times (last: {reason}); {} keeps the {have} bytes \
         received so far, and the next run resumes from there",
        partial.display()
    )]
    Interrupted {
        wanted: Box<Wanted>,
        attempts: u32,
        reason: String,
        partial: PathBuf,
        have: u64,
    },
    #[error(
        "{wanted}: every transfer was corrupt ({reason}; {attempts} attempts); nothing was put in \
         the cache: try again, or report it if it persists"
    )]
    Corrupt {
        wanted: Box<Wanted>,
        attempts: u32,
        reason: String,
    },
    #[error("{wanted}: the hub's answer from {url} is not usable: {reason}")]
    BadResponse {
        wanted: Box<Wanted>,
        url: String,
        reason: String,
    },
    #[error(
        "{wanted} is not in the hub cache and the hub is not to be contacted (HF_HUB_OFFLINE): \
         looked for {}; download it where the hub is reachable (without HF_HUB_OFFLINE), or copy a \
         hub cache holding it to {}",
        looked_for.display(), cache_dir.display()
    )]
    OfflineMiss {
        wanted: Box<Wanted>,
        looked_for: PathBuf,
        cache_dir: PathBuf,
    },
    #[error("{wanted}: {}: {source}", path.display())]
    Io {
        wanted: Box<Wanted>,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    pub(crate) fn io(wanted: &Wanted, path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            wanted: Box::new(wanted.clone()),
            path: path.to_path_buf(),
            source,
        }
    }

    /// The error for an HTTP error status of the hub, from the status, the hub's `X-Error-Code`
    /// (`GatedRepo`, `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`.
    pub(crate) fn from_status(
        wanted: &Wanted,
        endpoint: &str,
        url: &str,
        status: u16,
        code: Option<&str>,
        message: Option<String>,
        token_sent: bool,
    ) -> Self {
        let wanted = Box::new(wanted.clone());
        let page = format!("{endpoint}/{}", wanted.repo.url_path());
        match (status, code) {
            (401, Some("RepoNotFound")) if !token_sent => HubError::RepoNotFoundNoToken { wanted },
            (401 | 404, Some("RepoNotFound")) => HubError::RepoNotFound {
                wanted,
                endpoint: endpoint.into(),
                status,
            },
            (401 | 403, _) if token_sent => HubError::Forbidden {
                wanted,
                status,
                page,
                message,
            },
            (401 | 403, _) => HubError::NeedsToken {
                wanted,
                status,
                page,
                message,
            },
            (404, Some("RevisionNotFound")) => HubError::RevisionNotFound { wanted },
            (404, Some("EntryNotFound")) => HubError::EntryNotFound { wanted },
            (404, _) => HubError::NotFound { wanted, message },
            _ => HubError::Http {
                wanted,
                status,
                url: url.into(),
                message,
            },
        }
    }
}
