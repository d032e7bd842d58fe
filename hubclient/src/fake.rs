//! A fake Hugging Face hub for tests (feature `fake`): an HTTP/1.1 server on 127.0.0.1 that
//! answers `HEAD`/`GET {repo}/resolve/{revision}/{file}` the way huggingface.co does, reached by
//! pointing [`crate::HubSettings::endpoint`] (or `HF_ENDPOINT`) at [`FakeHub::endpoint`].
//!
//! What it reproduces: `X-Repo-Commit`; a regular file answered directly with a git-style `ETag`
//! and `Content-Length`; an LFS file answered with `302 Found` to an absolute CDN URL (this server
//! under the host name `localhost`, so another host to clients), with `X-Linked-Etag` (its sha256)
//! and `X-Linked-Size`; byte ranges (`206` with `Content-Range`, `416` past the end); branches,
//! tags and commit hashes as revisions; a gated repository (`401` + `X-Error-Code: GatedRepo`
//! without a token, `403` with a wrong one); `404` with `X-Error-Code` `RepoNotFound` /
//! `RevisionNotFound` / `EntryNotFound` (a missing repository is `401 RepoNotFound` when no token
//! is sent, as on the hub). [`FakeHub::cut_once`] makes the next body of a file stop after N bytes
//! (an interrupted transfer), [`FakeHub::corrupt_once`] changes its first byte, and
//! [`FakeHub::log`] records every request with its `Range` and `Authorization` headers.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::RepoKind;

/// A file of a fake commit.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub name: String,
    pub bytes: Arc<Vec<u8>>,
    /// Stored in LFS (served through the CDN redirect, etag = sha256).
    pub lfs: bool,
}

impl FakeFile {
    /// A regular (git) file, answered directly.
    pub fn regular(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            bytes: Arc::new(bytes.into()),
            lfs: false,
        }
    }

    /// An LFS file, answered with a redirect to the CDN.
    pub fn lfs(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            lfs: true,
            ..Self::regular(name, bytes)
        }
    }

    /// The sha256 of the content (an LFS file's etag).
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.bytes.as_slice()))
    }

    /// A 40-hex name standing for the git blob id the hub sends as a regular file's `ETag`.
    fn git_oid(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("blob {}\0", self.bytes.len()));
        h.update(self.bytes.as_slice());
        hex::encode(h.finalize())[..40].to_string()
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// The decoded path, e.g. `/datasets/o/n/resolve/main/f.csv` or `/cdn/<sha256>/f.csv`.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct FakeRepo {
    /// Branch and tag names → commit.
    refs: BTreeMap<String, String>,
    commits: BTreeMap<String, BTreeMap<String, FakeFile>>,
    token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Send this many bytes of the body, then close.
    Cut(usize),
    /// Send the body with its first byte changed.
    Flip,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<(RepoKind, String), FakeRepo>,
    blobs: BTreeMap<String, FakeFile>,
    /// File name → what goes wrong with its next body.
    faults: BTreeMap<String, Fault>,
    log: Vec<Logged>,
    commits_made: u64,
}

/// The server; it stops when dropped.
pub struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let endpoint = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, ep) = (state.clone(), stop.clone(), endpoint.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, ep) = (st.clone(), ep.clone());
                std::thread::spawn(move || serve(conn, &st, &ep));
            }
        });
        FakeHub {
            endpoint,
            state,
            stop,
            addr,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Publishes a commit holding exactly `files` and points `branch` at it; returns its hash.
    pub fn commit(&self, kind: RepoKind, repo: &str, branch: &str, files: &[FakeFile]) -> String {
        let mut s = self.state.lock().unwrap();
        s.commits_made += 1;
        let mut h = Sha256::new();
        h.update(format!("{repo}\n{branch}\n{}\n", s.commits_made));
        let mut tree = BTreeMap::new();
        for f in files {
            h.update(format!("{}\n", f.name));
            h.update(f.bytes.as_slice());
            tree.insert(f.name.clone(), f.clone());
            if f.lfs {
                s.blobs.insert(f.sha256(), f.clone());
            }
        }
        let commit = hex::encode(h.finalize())[..40].to_string();
        let r = s.repos.entry((kind, repo.into())).or_default();
        r.commits.insert(commit.clone(), tree);
        r.refs.insert(branch.into(), commit.clone());
        commit
    }

    /// Points the tag or branch `name` at `commit`.
    pub fn tag(&self, kind: RepoKind, repo: &str, name: &str, commit: &str) {
        let mut s = self.state.lock().unwrap();
        let r = s.repos.get_mut(&(kind, repo.into())).expect("repo exists");
        assert!(r.commits.contains_key(commit), "no commit {commit}");
        r.refs.insert(name.into(), commit.into());
    }

    /// Makes the repository gated: only `Authorization: Bearer <token>` may read it.
    pub fn gate(&self, kind: RepoKind, repo: &str, token: &str) {
        let mut s = self.state.lock().unwrap();
        s.repos.entry((kind, repo.into())).or_default().token = Some(token.into());
    }

    /// The next body sent for a file named `file` (any repository) stops after `after` bytes and
    /// the connection closes, though the headers announced the whole length.
    pub fn cut_once(&self, file: &str, after: usize) {
        let mut s = self.state.lock().unwrap();
        s.faults.insert(file.into(), Fault::Cut(after));
    }

    /// The next body sent for a file named `file` has its first byte changed (a corrupt transfer).
    pub fn corrupt_once(&self, file: &str) {
        let mut s = self.state.lock().unwrap();
        s.faults.insert(file.into(), Fault::Flip);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// The `GET`s that transferred bytes of `file` (on the resolve URL or the CDN).
    pub fn body_requests(&self, file: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| {
                l.method == "GET"
                    && matches!(l.status, 200 | 206)
                    && l.path.rsplit('/').next() == Some(file)
            })
            .collect()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Request {
    method: String,
    segments: Vec<String>,
    headers: BTreeMap<String, String>,
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or("");
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request {
        method,
        segments,
        headers,
    })
}

/// What to send back.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Bytes of `body` to send before closing (an interrupted transfer).
    cut: Option<usize>,
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("X-Error-Code", code.into()),
            ("X-Error-Message", message.into()),
            ("Content-Type", "application/json".into()),
        ],
        body: format!("{{\"error\":\"{message}\"}}").into_bytes(),
        cut: None,
    }
}

/// A body answer to a `Range` request (or the whole body without one).
fn ranged(bytes: &[u8], range: Option<&str>, mut headers: Vec<(&'static str, String)>) -> Reply {
    let total = bytes.len() as u64;
    headers.push(("Accept-Ranges", "bytes".into()));
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Reply {
            status: 200,
            headers,
            body: bytes.to_vec(),
            cut: None,
        };
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: u64 = a.trim().parse().unwrap_or(0);
    let end: u64 = b
        .trim()
        .parse()
        .unwrap_or(total.saturating_sub(1))
        .min(total.saturating_sub(1));
    if start >= total || start > end {
        headers.push(("Content-Range", format!("bytes */{total}")));
        return Reply {
            status: 416,
            headers,
            body: Vec::new(),
            cut: None,
        };
    }
    headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
    Reply {
        status: 206,
        headers,
        body: bytes[start as usize..=end as usize].to_vec(),
        cut: None,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, endpoint: &str) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    let range = req.headers.get("range").cloned();
    let auth = req.headers.get("authorization").cloned();
    let mut reply = {
        let mut s = state.lock().unwrap();
        let mut reply = route(&s, &req, endpoint);
        let file = req.segments.last().cloned().unwrap_or_default();
        if req.method == "GET"
            && matches!(reply.status, 200 | 206)
            && let Some(fault) = s.faults.remove(&file)
        {
            match fault {
                Fault::Cut(after) => reply.cut = Some(after),
                Fault::Flip => {
                    if let Some(b) = reply.body.first_mut() {
                        *b ^= 0xff;
                    }
                }
            }
        }
        s.log.push(Logged {
            method: req.method.clone(),
            path: format!("/{}", req.segments.join("/")),
            range,
            authorization: auth,
            status: reply.status,
        });
        reply
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    if req.method != "HEAD" {
        let n = reply
            .cut
            .map_or(reply.body.len(), |c| c.min(reply.body.len()));
        reply.body.truncate(n);
        let _ = conn.write_all(&reply.body);
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn route(s: &State, req: &Request, endpoint: &str) -> Reply {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return error(405, "MethodNotAllowed", "only GET and HEAD");
    }
    let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let range = req.headers.get("range").map(String::as_str);
    if let ["cdn", sha, _name] = seg.as_slice() {
        return match s.blobs.get(*sha) {
            Some(f) => ranged(&f.bytes, range, vec![("ETag", format!("\"{sha}\""))]),
            None => error(404, "EntryNotFound", "no such blob"),
        };
    }
    let (kind, rest) = match seg.as_slice() {
        ["datasets", rest @ ..] => (RepoKind::Dataset, rest),
        rest => (RepoKind::Model, rest),
    };
    let [owner, name, "resolve", revision, file @ ..] = rest else {
        return error(404, "NotFound", "not a resolve URL");
    };
    let (repo_id, file) = (format!("{owner}/{name}"), file.join("/"));
    let token = req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(repo) = s.repos.get(&(kind, repo_id.clone())) else {
        return if token.is_none() {
            error(401, "RepoNotFound", "Repository Not Found")
        } else {
            error(404, "RepoNotFound", "Repository Not Found")
        };
    };
    if let Some(need) = &repo.token {
        match token {
            None => {
                return error(
                    401,
                    "GatedRepo",
                    &format!(
                        "Access to {repo_id} is restricted. You must have access to it and be authenticated to access it."
                    ),
                );
            }
            Some(t) if t != need => {
                return error(
                    403,
                    "GatedRepo",
                    &format!(
                        "Access to {repo_id} is restricted and you are not in the authorized list."
                    ),
                );
            }
            Some(_) => {}
        }
    }
    let commit = match repo.refs.get(*revision) {
        Some(c) => c.clone(),
        None if repo.commits.contains_key(*revision) => revision.to_string(),
        None => {
            return error(
                404,
                "RevisionNotFound",
                &format!("Invalid rev id: {revision}"),
            );
        }
    };
    let Some(f) = repo.commits[&commit].get(&file) else {
        return error(
            404,
            "EntryNotFound",
            &format!("{file} does not exist on \"{revision}\""),
        );
    };
    if f.lfs {
        let sha = f.sha256();
        Reply {
            status: 302,
            headers: vec![
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", f.bytes.len().to_string()),
                ("ETag", format!("\"{}\"", f.git_oid())),
                (
                    "Location",
                    format!(
                        "{}/cdn/{sha}/{}",
                        cdn_origin(endpoint),
                        encode_name(&f.name)
                    ),
                ),
            ],
            body: Vec::new(),
            cut: None,
        }
    } else {
        ranged(
            &f.bytes,
            range,
            vec![
                ("X-Repo-Commit", commit),
                ("ETag", format!("\"{}\"", f.git_oid())),
            ],
        )
    }
}

/// The CDN's origin: the same server under the host name `localhost`, another host to clients
/// (as the hub's CDN is), so they drop the token on the redirect and huggingface_hub reads the
/// metadata from the redirect itself instead of following it.
fn cdn_origin(endpoint: &str) -> String {
    endpoint.replacen("127.0.0.1", "localhost", 1)
}

/// The last path segment of a file name, percent-encoded for the CDN URL.
fn encode_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
