//! The hub client against the fake hub: downloads into the standard cache layout (read back by the
//! hf-hub crate, and the other way round), offline reuse, resumed and corrupt transfers, and the
//! error messages for gated, missing and uncached files.
use std::path::Path;
use std::time::Duration;

use hubclient::fake::{FakeFile, FakeHub};
use hubclient::{Hub, HubAccess, HubError, HubSettings, RepoKind, RepoRef, Retries};

const CSV: &str = "MedSynth_huggingface_final.csv";

fn settings(hub: &FakeHub, cache: &Path) -> HubSettings {
    let mut s = HubSettings::new(cache);
    s.endpoint = Some(hub.endpoint());
    s.retries = Retries {
        attempts: 3,
        first_delay: Duration::from_millis(5),
    };
    s
}

fn offline(s: &HubSettings) -> HubSettings {
    let mut s = s.clone();
    s.access = HubAccess::Offline;
    s
}

/// 200 KB of distinct bytes, so a misplaced range shows.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

#[test]
fn a_dataset_file_lands_in_the_hub_cache_layout_and_is_reused_offline() {
    let hub = FakeHub::start();
    let data = content(200_000);
    let commit = hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::lfs(CSV, data.clone())],
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&hub, dir.path());
    let repo = RepoRef::dataset("o/med", None).unwrap();
    let got = Hub::new(s.clone()).get(&repo, CSV).unwrap();
    assert!(got.downloaded);
    assert_eq!(got.commit, commit);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    // The layout huggingface_hub writes.
    let root = dir.path().join("datasets--o--med");
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        commit
    );
    let sha = FakeFile::lfs(CSV, data.clone()).sha256();
    assert_eq!(got.path, root.join("snapshots").join(&commit).join(CSV));
    assert_eq!(
        std::fs::read_link(&got.path).unwrap(),
        Path::new("../../blobs").join(&sha)
    );
    assert!(root.join("blobs").join(&sha).is_file());
    assert!(
        !root
            .join("blobs")
            .join(format!("{sha}.incomplete"))
            .exists()
    );
    // The hf-hub crate finds it where it looks.
    let cached = hf_hub::Cache::new(dir.path().to_path_buf())
        .repo(hf_hub::Repo::with_revision(
            "o/med".into(),
            hf_hub::RepoType::Dataset,
            "main".into(),
        ))
        .get(CSV);
    assert_eq!(cached.as_deref(), Some(got.path.as_path()));

    // Online again: one metadata request, no transfer.
    hub.clear_log();
    let again = Hub::new(s.clone()).get(&repo, CSV).unwrap();
    assert!(!again.downloaded);
    assert_eq!(again.path, got.path);
    let log = hub.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].method, "HEAD");

    // Offline: no request at all; by branch and by commit.
    hub.clear_log();
    let off = Hub::new(offline(&s));
    assert_eq!(off.get(&repo, CSV).unwrap().path, got.path);
    let pinned = RepoRef::dataset("o/med", Some(&commit)).unwrap();
    assert_eq!(off.get(&pinned, CSV).unwrap().path, got.path);
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn what_the_hf_hub_crate_downloads_from_the_fake_hub_is_found_offline() {
    let hub = FakeHub::start();
    let weights = content(50_000);
    let commit = hub.commit(
        RepoKind::Model,
        "o/m",
        "main",
        &[
            FakeFile::regular("config.json", "{\"a\": 1}"),
            FakeFile::lfs("model.safetensors", weights.clone()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(dir.path().into()))
        .with_endpoint(hub.endpoint())
        .with_progress(false)
        .with_token(None)
        .build()
        .unwrap()
        .repo(hf_hub::Repo::model("o/m".into()));
    let cfg = api.get("config.json").unwrap();
    let st = api.get("model.safetensors").unwrap();
    assert_eq!(std::fs::read(&st).unwrap(), weights);
    let s = offline(&settings(&hub, dir.path()));
    let ours = Hub::new(s);
    let repo = RepoRef::model("o/m", None).unwrap();
    let a = ours.get(&repo, "config.json").unwrap();
    let b = ours.get(&repo, "model.safetensors").unwrap();
    assert_eq!((a.path, b.path), (cfg, st));
    assert_eq!(a.commit, commit);
}

#[test]
fn an_interrupted_transfer_resumes_from_the_partial_file_with_a_range_request() {
    let hub = FakeHub::start();
    let data = content(300_000);
    hub.commit(
        RepoKind::Model,
        "o/m",
        "main",
        &[FakeFile::lfs("model.safetensors", data.clone())],
    );
    hub.cut_once("model.safetensors", 70_000);
    let dir = tempfile::tempdir().unwrap();
    let got = Hub::new(settings(&hub, dir.path()))
        .get(&RepoRef::model("o/m", None).unwrap(), "model.safetensors")
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data, "intact");
    let bodies = hub.body_requests("model.safetensors");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0].range, None);
    assert_eq!(bodies[1].range.as_deref(), Some("bytes=70000-"));
    assert_eq!(bodies[1].status, 206);
}

#[test]
fn a_run_that_gives_up_leaves_only_the_partial_file_and_the_next_run_resumes_it() {
    let hub = FakeHub::start();
    let data = content(120_000);
    hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::regular(CSV, data.clone())],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, dir.path());
    s.retries.attempts = 1;
    let repo = RepoRef::dataset("o/med", None).unwrap();
    hub.cut_once(CSV, 50_000);
    let e = Hub::new(s.clone()).get(&repo, CSV).unwrap_err();
    let HubError::Interrupted { partial, have, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(*have, 50_000);
    assert!(partial.to_string_lossy().ends_with(".incomplete"), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("o/med") && msg.contains(CSV) && msg.contains("main"),
        "{msg}"
    );
    // Nothing usable in the cache: offline it is still a miss.
    assert!(Hub::new(offline(&s)).get(&repo, CSV).is_err());
    let got = Hub::new(s).get(&repo, CSV).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let bodies = hub.body_requests(CSV);
    assert_eq!(
        bodies.last().unwrap().range.as_deref(),
        Some("bytes=50000-")
    );
    assert!(!partial.exists());
}

#[test]
fn a_corrupt_transfer_never_reaches_the_cache() {
    let hub = FakeHub::start();
    let data = content(10_000);
    hub.commit(
        RepoKind::Model,
        "o/m",
        "main",
        &[FakeFile::lfs("model.safetensors", data.clone())],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, dir.path());
    s.retries.attempts = 1;
    let repo = RepoRef::model("o/m", None).unwrap();
    hub.corrupt_once("model.safetensors");
    let e = Hub::new(s.clone())
        .get(&repo, "model.safetensors")
        .unwrap_err();
    assert!(
        matches!(e, HubError::Corrupt { .. }) && e.to_string().contains("sha256"),
        "{e}"
    );
    let blobs = dir.path().join("models--o--m/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // With a retry left, the second transfer is used.
    s.retries.attempts = 2;
    hub.corrupt_once("model.safetensors");
    let got = Hub::new(s).get(&repo, "model.safetensors").unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), data);
}

#[test]
fn a_gated_repository_needs_the_token_and_says_so() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        "o/gated",
        "main",
        &[FakeFile::lfs(CSV, "a,b\n")],
    );
    hub.gate(RepoKind::Dataset, "o/gated", "hf_good");
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, dir.path());
    let repo = RepoRef::dataset("o/gated", None).unwrap();
    let e = Hub::new(s.clone()).get(&repo, CSV).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, HubError::NeedsToken { status: 401, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("HF_TOKEN")
            && msg.contains("o/gated")
            && msg.contains(CSV)
            && msg.contains("`main`")
            && msg.contains(&format!("{}/datasets/o/gated", hub.endpoint())),
        "{msg}"
    );
    s.token = Some("hf_wrong".into());
    let e = Hub::new(s.clone()).get(&repo, CSV).unwrap_err();
    assert!(
        matches!(e, HubError::Forbidden { status: 403, .. }) && e.to_string().contains("licence"),
        "{e}"
    );
    s.token = Some("hf_good".into());
    let got = Hub::new(s).get(&repo, CSV).unwrap();
    assert_eq!(std::fs::read_to_string(got.path).unwrap(), "a,b\n");
    let log = hub.log();
    assert!(
        log.iter()
            .any(|l| l.authorization.as_deref() == Some("Bearer hf_good")),
        "{log:?}"
    );
    // The token stays on the hub: the CDN (another host) never sees it.
    let cdn: Vec<_> = log.iter().filter(|l| l.path.starts_with("/cdn/")).collect();
    assert!(
        !cdn.is_empty() && cdn.iter().all(|l| l.authorization.is_none()),
        "{log:?}"
    );
}

#[test]
fn not_found_names_what_is_missing() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::regular(CSV, "x")],
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&hub, dir.path());
    let h = Hub::new(s.clone());
    let e = h
        .get(&RepoRef::dataset("o/nope", None).unwrap(), CSV)
        .unwrap_err();
    assert!(matches!(e, HubError::RepoNotFoundNoToken { .. }), "{e}");
    assert!(
        e.to_string().contains("check the repository id `o/nope`"),
        "{e}"
    );
    let mut with_token = s.clone();
    with_token.token = Some("t".into());
    let e = Hub::new(with_token)
        .get(&RepoRef::dataset("o/nope", None).unwrap(), CSV)
        .unwrap_err();
    assert!(
        matches!(e, HubError::RepoNotFound { status: 404, .. }),
        "{e}"
    );
    let e = h
        .get(&RepoRef::dataset("o/med", Some("v9")).unwrap(), CSV)
        .unwrap_err();
    assert!(matches!(e, HubError::RevisionNotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("revision `v9` does not exist"),
        "{e}"
    );
    let e = h
        .get(&RepoRef::dataset("o/med", None).unwrap(), "other.csv")
        .unwrap_err();
    assert!(matches!(e, HubError::EntryNotFound { .. }), "{e}");
    assert!(e.to_string().contains("has no file `other.csv`"), "{e}");
    assert!(
        h.get_optional(&RepoRef::dataset("o/med", None).unwrap(), "other.csv")
            .unwrap()
            .is_none()
    );
    // An optional file never hides a missing repository.
    assert!(
        h.get_optional(&RepoRef::dataset("o/nope", None).unwrap(), CSV)
            .is_err()
    );
}

#[test]
fn revisions_resolve_to_their_own_commits() {
    let hub = FakeHub::start();
    let old = hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::lfs(CSV, "old\n")],
    );
    hub.tag(RepoKind::Dataset, "o/med", "v1", &old);
    let new = hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::lfs(CSV, "new\n")],
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&hub, dir.path());
    let h = Hub::new(s.clone());
    let read = |rev: Option<&str>| {
        let f = h
            .get(&RepoRef::dataset("o/med", rev).unwrap(), CSV)
            .unwrap();
        (f.commit, std::fs::read_to_string(f.path).unwrap())
    };
    assert_eq!(read(None), (new.clone(), "new\n".into()));
    assert_eq!(read(Some("v1")), (old.clone(), "old\n".into()));
    assert_eq!(read(Some(&old)), (old.clone(), "old\n".into()));
    // A cached commit is used without asking the hub.
    hub.clear_log();
    assert_eq!(read(Some(&new)).1, "new\n");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    let off = Hub::new(offline(&s));
    let f = off
        .get(&RepoRef::dataset("o/med", Some("v1")).unwrap(), CSV)
        .unwrap();
    assert_eq!(f.commit, old);
}

#[test]
fn an_offline_miss_names_the_path_it_looked_for() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::regular(CSV, "x")],
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&hub, dir.path());
    let off = Hub::new(offline(&s));
    let repo = RepoRef::dataset("o/med", None).unwrap();
    let e = off.get(&repo, CSV).unwrap_err();
    let want = dir.path().join("datasets--o--med/refs/main");
    assert!(
        e.to_string().contains(&want.display().to_string())
            && e.to_string().contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    let commit = Hub::new(s).get(&repo, CSV).unwrap().commit;
    let e = off.get(&repo, "other.csv").unwrap_err();
    let want = dir
        .path()
        .join("datasets--o--med/snapshots")
        .join(&commit)
        .join("other.csv");
    assert!(e.to_string().contains(&want.display().to_string()), "{e}");
    assert!(hub.log().iter().all(|l| !l.path.contains("other.csv")));
}

#[test]
fn an_unreachable_hub_falls_back_to_the_cache_or_says_what_is_missing() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        "o/med",
        "main",
        &[FakeFile::regular(CSV, "x")],
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&hub, dir.path());
    let repo = RepoRef::dataset("o/med", None).unwrap();
    Hub::new(s.clone()).get(&repo, CSV).unwrap();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut down = s.clone();
    down.endpoint = Some(format!("http://{closed}"));
    down.retries.attempts = 2;
    let got = Hub::new(down.clone()).get(&repo, CSV).unwrap();
    assert!(!got.downloaded);
    let e = Hub::new(down)
        .get(&RepoRef::dataset("o/other", None).unwrap(), CSV)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, HubError::Unreachable { attempts: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&closed.to_string()) && msg.contains("datasets--o--other"),
        "{msg}"
    );
}
