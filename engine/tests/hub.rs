//! Models from the hub, against the fake hub of `hubclient`: a sharded model (config, tokenizer
//! files, generation config, index, two LFS shards) downloaded into the hub cache, then loaded
//! offline from the cache and generating exactly what the same weights generate from a local
//! folder; an interrupted shard transfer resumed with a `Range` request; revisions pinned to one
//! commit; a gated model's error.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use engine::generate::generate;
use engine::load::{self, ModelSource};
use engine::model::LoadOptions;
use engine::testkit::Tiny;
use hubclient::fake::{FakeFile, FakeHub};
use hubclient::{HubAccess, HubSettings, RepoKind, Retries};
use shared::config::GenerationConfig;
use tokio_util::sync::CancellationToken;

const REPO: &str = "org/tiny-sharded";
const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

fn words() -> Vec<String> {
    [
        "patient", "reports", "cough", "fever", "code", "J45", "R05.9",
    ]
    .map(String::from)
    .to_vec()
}

/// A local HF folder (single `model.safetensors`) and the files of the same model as a sharded
/// hub repository.
fn model_files(local: &Path) -> Vec<FakeFile> {
    let tiny = Tiny {
        tied: false,
        ..Tiny::default()
    };
    tiny.write_hf_dir(local, 7, &words());
    std::fs::write(
        local.join("generation_config.json"),
        r#"{"eos_token_id": [2]}"#,
    )
    .unwrap();
    let tensors = candle_core::safetensors::load(local.join("model.safetensors"), &Device::Cpu)
        .expect("tiny weights");
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    let mut files = Vec::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        let path = local.join(SHARDS[i]);
        candle_core::safetensors::save(&shard, &path).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), SHARDS[i].into());
        }
        files.push(FakeFile::lfs(SHARDS[i], std::fs::read(&path).unwrap()));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    // Beside model.safetensors, which the local loader prefers.
    std::fs::write(
        local.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for f in [
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        files.push(FakeFile::regular(f, std::fs::read(local.join(f)).unwrap()));
    }
    files
}

fn settings(hub: &FakeHub, cache: &Path) -> HubSettings {
    let mut s = HubSettings::new(cache);
    s.endpoint = Some(hub.endpoint());
    s.retries = Retries {
        attempts: 3,
        first_delay: Duration::from_millis(5),
    };
    s
}

/// Greedy continuations of a few prompts.
fn continuations(source: &ModelSource) -> Vec<Vec<u32>> {
    let loaded = load::load(source, &LoadOptions::cpu_f32()).expect("model loads");
    let prompts = vec![vec![3, 5, 7], vec![4, 4, 8, 9, 10], vec![6]];
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        batch_size: 3,
    };
    let (out, _) = generate(
        &loaded.model,
        &prompts,
        &[],
        &cfg,
        &CancellationToken::new(),
        |_| {},
    )
    .unwrap();
    out.into_iter().map(|g| g.generated).collect()
}

#[test]
fn a_sharded_model_is_downloaded_then_loaded_offline_from_the_cache() {
    let hub = FakeHub::start();
    let local = tempfile::tempdir().unwrap();
    let commit = hub.commit(RepoKind::Model, REPO, "main", &model_files(local.path()));
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());

    let source = load::resolve_with(REPO, None, &s).unwrap();
    let snap = cache
        .path()
        .join("models--org--tiny-sharded/snapshots")
        .join(&commit);
    assert_eq!(source, ModelSource::HfDir(snap.clone()));
    for f in SHARDS.iter().chain(&[
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ]) {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(local.path().join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!snap.join("model.safetensors").exists());

    // Offline: the same folder, no request, and the model generates what the local copy does.
    hub.clear_log();
    let mut off = s.clone();
    off.access = HubAccess::Offline;
    let again = load::resolve_with(REPO, None, &off).unwrap();
    assert_eq!(again, source);
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    let from_hub = continuations(&again);
    assert_eq!(
        from_hub,
        continuations(&ModelSource::HfDir(local.path().to_path_buf()))
    );
    assert!(from_hub.iter().all(|g| g.len() == 8), "{from_hub:?}");
    let (tok, _, cfg) = load::load_tokenizer(&again).unwrap();
    assert!(cfg.eos_token_ids.contains(&2), "{:?}", cfg.eos_token_ids);
    assert!(tok.vocab_size() > 6);
}

#[test]
fn an_interrupted_shard_transfer_resumes_with_a_range_request() {
    let hub = FakeHub::start();
    let local = tempfile::tempdir().unwrap();
    hub.commit(RepoKind::Model, REPO, "main", &model_files(local.path()));
    let shard = std::fs::read(local.path().join(SHARDS[1])).unwrap();
    let cut = shard.len() / 3;
    hub.cut_once(SHARDS[1], cut);
    let cache = tempfile::tempdir().unwrap();
    let source = load::resolve_with(REPO, None, &settings(&hub, cache.path())).unwrap();
    let got = std::fs::read(source.path().join(SHARDS[1])).unwrap();
    assert!(got == shard, "the resumed shard is intact");
    let bodies = hub.body_requests(SHARDS[1]);
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0].range, None);
    assert_eq!(
        bodies[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(bodies[1].status, 206);
    // The first shard went through in one transfer.
    assert_eq!(hub.body_requests(SHARDS[0]).len(), 1);
}

#[test]
fn every_file_comes_from_the_commit_the_revision_named() {
    let hub = FakeHub::start();
    let local = tempfile::tempdir().unwrap();
    let files = model_files(local.path());
    let v1 = hub.commit(RepoKind::Model, REPO, "main", &files);
    hub.tag(RepoKind::Model, REPO, "v1", &v1);
    // A later commit on main with another config.
    let mut later = files.clone();
    later.retain(|f| f.name != "config.json");
    let cfg = std::fs::read_to_string(local.path().join("config.json")).unwrap();
    let mut changed: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    changed["rms_norm_eps"] = serde_json::json!(1e-6);
    later.push(FakeFile::regular("config.json", changed.to_string()));
    let main = hub.commit(RepoKind::Model, REPO, "main", &later);
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let at_v1 = load::resolve_with(REPO, Some("v1"), &s).unwrap();
    let at_main = load::resolve_with(REPO, None, &s).unwrap();
    assert!(at_v1.path().ends_with(&v1), "{at_v1:?}");
    assert!(at_main.path().ends_with(&main), "{at_main:?}");
    assert_eq!(
        std::fs::read_to_string(at_v1.path().join("config.json")).unwrap(),
        cfg
    );
    // The shards are the same blobs: transferred once.
    assert_eq!(hub.body_requests(SHARDS[0]).len(), 1);
    let by_commit = load::resolve_with(REPO, Some(&v1), &s).unwrap();
    assert_eq!(by_commit, at_v1);
}

#[test]
fn a_gated_model_asks_for_the_token_and_loads_with_it() {
    let hub = FakeHub::start();
    let local = tempfile::tempdir().unwrap();
    hub.commit(RepoKind::Model, REPO, "main", &model_files(local.path()));
    hub.gate(RepoKind::Model, REPO, "hf_ok");
    let cache = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, cache.path());
    let e = load::resolve_with(REPO, None, &s).unwrap_err().to_string();
    assert!(
        e.contains("HF_TOKEN") && e.contains(REPO) && e.contains("config.json"),
        "{e}"
    );
    s.token = Some("hf_ok".into());
    let source = load::resolve_with(REPO, None, &s).unwrap();
    assert!(source.path().join(SHARDS[1]).is_file());
}
