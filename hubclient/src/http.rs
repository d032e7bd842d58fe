//! The hub's HTTP protocol, as huggingface_hub speaks it:
//! `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` (relative redirects followed, an absolute one — the CDN of an LFS file — not) gives the commit
//! (`X-Repo-Commit`), the blob's name (`X-Linked-Etag`, the sha256 of an LFS file, else `ETag`)
//! and its size (`X-Linked-Size`, else `Content-Length`); `GET` of the same URL at that commit
//! (redirects followed, the token kept only on the hub's own host) transfers it, from byte N with
//! `Range: bytes=N-` when a partial file exists.
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::cache::RepoCache;
use crate::{HubError, HubSettings, RepoRef, Wanted, sha256_file};

pub(crate) struct Client {
    follow: ureq::Agent,
    no_follow: ureq::Agent,
}

/// What the hub says about a file at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub commit: String,
    /// The blob's name in the cache.
    pub etag: String,
    pub size: Option<u64>,
}

/// How one transfer attempt ended, when it did not complete.
enum Step {
    /// Worth another attempt (the network, a 5xx, a cut body).
    Retry(String),
    /// Not (no access, no such file, a local I/O error).
    Fatal(HubError),
}

/// Statuses after which the same request may succeed.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}` (a `/` in the revision encoded, as the hub wants).
pub(crate) fn resolve_url(settings: &HubSettings, repo: &RepoRef, file: &str) -> String {
    format!(
        "{}/{}/resolve/{}/{}",
        settings.endpoint(),
        repo.url_path(),
        encode(repo.effective_revision(), false),
        encode(file, true)
    )
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// An etag as a blob name: quotes and a weak `W/` prefix removed; only `[A-Za-z0-9._-]`.
fn blob_name(etag: &str) -> Option<String> {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
    let ok = !e.is_empty()
        && e.len() <= 256
        && !e.starts_with('.')
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then(|| e.to_string())
}

/// A sha256 etag (an LFS file's), which the transferred bytes must hash to.
fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if known).
fn content_range(v: Option<&str>) -> Option<(u64, Option<u64>)> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

impl Client {
    pub(crate) fn new(_settings: &HubSettings) -> Self {
        let base = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(120))
                .user_agent(concat!("sizespec-hubclient/", env!("CARGO_PKG_VERSION")))
        };
        Self {
            follow: base()
                .redirects(10)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .build(),
            no_follow: base().redirects(0).build(),
        }
    }

    fn request(
        &self,
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        settings: &HubSettings,
    ) -> ureq::Request {
        // `identity`: sizes and ranges are of the stored bytes, never of a compressed body.
        let r = agent
            .request(method, url)
            .set("Accept-Encoding", "identity");
        match &settings.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    fn status_error(
        settings: &HubSettings,
        wanted: &Wanted,
        url: &str,
        status: u16,
        resp: &ureq::Response,
    ) -> HubError {
        HubError::from_status(
            wanted,
            settings.endpoint(),
            url,
            status,
            resp.header("x-error-code"),
            resp.header("x-error-message").map(str::to_string),
            settings.token.is_some(),
        )
    }

    /// The commit, blob name and size of `file` at `repo`'s revision.
    pub(crate) fn metadata(
        &self,
        settings: &HubSettings,
        repo: &RepoRef,
        file: &str,
        wanted: &Wanted,
    ) -> Result<Metadata, HubError> {
        let attempts = settings.retries.attempts.max(1);
        let mut url = resolve_url(settings, repo, file);
        let mut failures = 0u32;
        let mut redirects = 0u32;
        let resp = loop {
            let failed = match self.request(&self.no_follow, "HEAD", &url, settings).call() {
                Ok(resp) if (300..400).contains(&resp.status()) => {
                    match resp.header("location") {
                        // A renamed repository: the hub's own relative redirect.
                        Some(loc) if loc.starts_with('/') && redirects < 10 => {
                            redirects += 1;
                            url = format!("{}{loc}", origin(&url));
                            continue;
                        }
                        _ => break resp,
                    }
                }
                Ok(resp) => break resp,
                Err(ureq::Error::Status(code, resp)) if !retryable(code) => {
                    return Err(Self::status_error(settings, wanted, &url, code, &resp));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    if failures + 1 >= attempts {
                        return Err(Self::status_error(settings, wanted, &url, code, &resp));
                    }
                    format!("HTTP {code}")
                }
                Err(ureq::Error::Transport(t)) => {
                    if failures + 1 >= attempts {
                        return Err(HubError::Unreachable {
                            wanted: Box::new(wanted.clone()),
                            endpoint: settings.endpoint().into(),
                            attempts,
                            reason: t.to_string(),
                            looked_for: Default::default(),
                        });
                    }
                    t.to_string()
                }
            };
            failures += 1;
            tracing::warn!(
                %wanted,
                reason = %failed,
                attempt = failures,
                "asking the hub failed; retrying"
            );
            std::thread::sleep(settings.retries.delay(failures));
        };
        let bad = |reason: &str| HubError::BadResponse {
            wanted: Box::new(wanted.clone()),
            url: url.clone(),
            reason: reason.into(),
        };
        let commit = resp
            .header("x-repo-commit")
            .map(str::trim)
            .filter(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| bad("no X-Repo-Commit header (is HF_ENDPOINT a hub?)"))?
            .to_string();
        let etag = resp
            .header("x-linked-etag")
            .or_else(|| resp.header("etag"))
            .and_then(blob_name)
            .ok_or_else(|| bad("no usable ETag / X-Linked-Etag header"))?;
        let size = resp
            .header("x-linked-size")
            .or_else(|| (resp.status() == 200).then(|| resp.header("content-length"))?)
            .and_then(|s| s.trim().parse().ok());
        Ok(Metadata { commit, etag, size })
    }

    /// Transfers `file` (at `repo`, pinned to `meta.commit`) into `blobs/<etag>`: into
    /// `<etag>.incomplete` first, resumed from its length after an interruption, retried with
    /// backoff, and renamed into place only once its size (and sha256, for an LFS file) is right.
    pub(crate) fn download(
        &self,
        settings: &HubSettings,
        repo: &RepoRef,
        file: &str,
        meta: &Metadata,
        cache: &RepoCache,
        wanted: &Wanted,
    ) -> Result<(), HubError> {
        let url = resolve_url(settings, repo, file);
        let part = cache.incomplete_path(&meta.etag);
        let blob = cache.blob_path(&meta.etag);
        if let Some(d) = part.parent() {
            std::fs::create_dir_all(d).map_err(|e| HubError::io(wanted, d, e))?;
        }
        let sha = is_sha256(&meta.etag).then_some(meta.etag.to_ascii_lowercase());
        let attempts = settings.retries.attempts.max(1);
        let mut expected = meta.size;
        let mut last = String::new();
        let mut corrupt = false;
        tracing::info!(
            %wanted,
            bytes = ?expected,
            resume_from = file_len(&part),
            "downloading from the hub"
        );
        for n in 1..=attempts {
            if n > 1 {
                tracing::warn!(
                    %wanted,
                    reason = %last,
                    attempt = n,
                    have = file_len(&part),
                    "transfer failed; resuming"
                );
                std::thread::sleep(settings.retries.delay(n - 1));
            }
            let total = match self.fetch_into(settings, &url, &part, expected, wanted) {
                Ok(total) => total,
                Err(Step::Fatal(e)) => return Err(e),
                Err(Step::Retry(reason)) => {
                    last = reason;
                    corrupt = false;
                    continue;
                }
            };
            expected = expected.or(total);
            let have = file_len(&part);
            match expected {
                Some(size) if have < size => {
                    last = format!("the transfer ended at byte {have} of {size}");
                    corrupt = false;
                    continue;
                }
                Some(size) if have > size => {
                    let _ = std::fs::remove_file(&part);
                    last = format!("{have} bytes received, {size} expected");
                    corrupt = true;
                    continue;
                }
                _ => {}
            }
            if let Some(want) = &sha {
                let got = sha256_file(&part).map_err(|e| HubError::io(wanted, &part, e))?;
                if got != *want {
                    let _ = std::fs::remove_file(&part);
                    last = format!("its sha256 is {got}, the hub names {want}");
                    corrupt = true;
                    continue;
                }
            }
            std::fs::rename(&part, &blob).map_err(|e| HubError::io(wanted, &blob, e))?;
            tracing::info!(%wanted, bytes = have, "downloaded");
            return Ok(());
        }
        Err(if corrupt {
            HubError::Corrupt {
                wanted: Box::new(wanted.clone()),
                attempts,
                reason: last,
            }
        } else {
            HubError::Interrupted {
                wanted: Box::new(wanted.clone()),
                attempts,
                reason: last,
                have: file_len(&part),
                partial: part,
            }
        })
    }

    /// One transfer attempt, appending to `part` from its current length. Returns the file's
    /// total size when the response states it.
    fn fetch_into(
        &self,
        settings: &HubSettings,
        url: &str,
        part: &Path,
        expected: Option<u64>,
        wanted: &Wanted,
    ) -> Result<Option<u64>, Step> {
        let io = |e| Step::Fatal(HubError::io(wanted, part, e));
        let truncate = || std::fs::File::create(part).map(|_| ()).map_err(io);
        let mut have = file_len(part);
        if let Some(size) = expected {
            if have > size {
                truncate()?;
                have = 0;
            } else if have == size && part.is_file() {
                return Ok(Some(size));
            }
        }
        let mut req = self.request(&self.follow, "GET", url, settings);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) if have > 0 => {
                truncate()?;
                return Err(Step::Retry(format!(
                    "the hub would not resume from byte {have} (HTTP 416); starting over"
                )));
            }
            Err(ureq::Error::Status(code, resp)) if retryable(code) => {
                return Err(Step::Retry(format!("HTTP {code} from {}", resp.get_url())));
            }
            Err(ureq::Error::Status(code, resp)) => {
                return Err(Step::Fatal(Self::status_error(
                    settings,
                    wanted,
                    resp.get_url(),
                    code,
                    &resp,
                )));
            }
            Err(ureq::Error::Transport(t)) => return Err(Step::Retry(t.to_string())),
        };
        let (append, total) = match resp.status() {
            206 => match content_range(resp.header("content-range")) {
                Some((start, total)) if start == have => (true, total),
                other => {
                    truncate()?;
                    return Err(Step::Retry(format!(
                        "asked to resume at byte {have}, the answer's Content-Range is {other:?}"
                    )));
                }
            },
            200 => {
                if have > 0 {
                    tracing::info!(
                        %wanted,
                        "the server sent the whole file instead of the rest; starting over"
                    );
                }
                let total = resp
                    .header("content-length")
                    .and_then(|s| s.trim().parse().ok());
                (false, total)
            }
            s => return Err(Step::Retry(format!("unexpected HTTP {s}"))),
        };
        let mut f = if append {
            std::fs::OpenOptions::new().append(true).open(part)
        } else {
            std::fs::File::create(part)
        }
        .map_err(io)?;
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    f.write_all(&buf[..k]).map_err(io)?;
                    got += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    f.sync_all().map_err(io)?;
                    return Err(Step::Retry(format!(
                        "the connection broke at byte {} ({e})",
                        if append { have + got } else { got }
                    )));
                }
            }
        }
        f.sync_all().map_err(io)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_etags_and_ranges_are_read_as_the_hub_writes_them() {
        let mut s = HubSettings::new("/c");
        s.endpoint = Some("http://127.0.0.1:9/".into());
        let r = RepoRef::dataset("o/n", Some("refs/pr/1")).unwrap();
        assert_eq!(
            resolve_url(&s, &r, "sub dir/a+b.csv"),
            "http://127.0.0.1:9/datasets/o/n/resolve/refs%2Fpr%2F1/sub%20dir/a%2Bb.csv"
        );
        assert_eq!(origin("https://h.co:8/a/b?c"), "https://h.co:8");
        assert_eq!(blob_name("W/\"abc-1\"").as_deref(), Some("abc-1"));
        assert_eq!(blob_name("\"../x\""), None);
        assert_eq!(blob_name("\"\""), None);
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256(&"a".repeat(40)));
        assert_eq!(content_range(Some("bytes 10-19/20")), Some((10, Some(20))));
        assert_eq!(content_range(Some("bytes 10-19/*")), Some((10, None)));
        assert_eq!(content_range(Some("items 1-2/3")), None);
    }
}
