//! Planning with the hub, against the fake hub of `hubclient`: MedSynth from a dataset repository
//! (the commit and sha256 reach the results' meta; the cache is reused offline) and the error
//! messages for a gated repository, a missing repository / revision / file and an offline cache
//! miss; a hub model's memory estimate from its real `config.json`.
use std::path::Path;
use std::time::Duration;

use coordinator::outputs::OutputsInput;
use coordinator::prepare::prepare;
use hubclient::fake::{FakeFile, FakeHub};
use hubclient::{HubAccess, HubSettings, RepoKind, Retries};
use sha2::{Digest, Sha256};
use shared::config::{DataSource, ExperimentConfig, ModelEntry};

const REPO: &str = "Ahmad0067/MedSynth";
const FILE: &str = "MedSynth_huggingface_final.csv";

/// A MedSynth-shaped CSV (the hub file's header, with its leading space) of `n` rows.
fn medsynth_csv(n: usize) -> String {
    let codes = [
        ("J45.909", "Unspecified asthma, uncomplicated"),
        ("R05.9", "Cough, unspecified"),
        ("J02.9", "Acute pharyngitis, unspecified"),
        ("R51.9", "Headache, unspecified"),
        ("M54.50", "Low back pain, unspecified"),
    ];
    let mut s = String::from(" Note,Dialogue,ICD10,ICD10_desc\n");
    for i in 0..n {
        let (code, desc) = codes[i % codes.len()];
        s.push_str(&format!(
            "\"Note {i}\",\"Doctor: What brings you in?\nPatient: Case {i}, {desc}.\",{code},\"{desc}\"\n"
        ));
    }
    s
}

fn settings(hub: &FakeHub, cache: &Path) -> HubSettings {
    let mut s = HubSettings::new(cache);
    s.endpoint = Some(hub.endpoint());
    s.retries = Retries {
        attempts: 2,
        first_delay: Duration::from_millis(5),
    };
    s
}

fn offline(s: &HubSettings) -> HubSettings {
    let mut s = s.clone();
    s.access = HubAccess::Offline;
    s
}

/// The offline experiment (local model names, no hub) reading MedSynth from the hub.
fn config(revision: Option<&str>, file: &str) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::offline_default();
    cfg.resolve_models_dir(Path::new("/nonexistent/models"));
    cfg.data.source = DataSource::MedsynthHub {
        repo: REPO.into(),
        file: file.into(),
        revision: revision.map(str::to_string),
    };
    cfg
}

#[test]
fn medsynth_from_the_hub_is_planned_with_its_commit_and_sha256_then_reused_offline() {
    let hub = FakeHub::start();
    let csv = medsynth_csv(60);
    let commit = hub.commit(
        RepoKind::Dataset,
        REPO,
        "main",
        &[FakeFile::lfs(FILE, csv.clone())],
    );
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let plan = prepare(&config(None, FILE), &s).unwrap();
    let ds = plan.dataset.clone().expect("hub provenance");
    assert_eq!(
        (ds.repo.as_str(), ds.file.as_str(), ds.revision.as_str()),
        (REPO, FILE, "main")
    );
    assert_eq!(ds.commit, commit);
    assert_eq!(ds.sha256, hex::encode(Sha256::digest(csv.as_bytes())));
    assert_eq!(plan.train_code_counts.values().sum::<usize>(), 36);
    // The file sits where huggingface_hub puts it.
    assert!(
        cache
            .path()
            .join("datasets--Ahmad0067--MedSynth/snapshots")
            .join(&commit)
            .join(FILE)
            .is_file()
    );

    // results.json's meta carries it.
    let results = coordinator::outputs::results::build(
        &OutputsInput {
            plan: plan.clone(),
            tasks: Vec::new(),
        },
        None,
    );
    assert_eq!(results.meta.unwrap().dataset, Some(ds.clone()));

    // Offline: the same plan from the cache, without a request.
    hub.clear_log();
    let again = prepare(&config(None, FILE), &offline(&s)).unwrap();
    assert_eq!(again.id, plan.id);
    assert_eq!(again.dataset, Some(ds.clone()));
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    // Pinned to the recorded commit: the same bytes.
    let pinned = prepare(&config(Some(&commit), FILE), &offline(&s)).unwrap();
    assert_eq!(pinned.split_hash, plan.split_hash);
    assert_eq!(pinned.dataset.unwrap().sha256, ds.sha256);
}

#[test]
fn a_gated_dataset_without_a_token_says_to_set_hf_token() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        REPO,
        "main",
        &[FakeFile::lfs(FILE, medsynth_csv(20))],
    );
    hub.gate(RepoKind::Dataset, REPO, "hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let mut s = settings(&hub, cache.path());
    let e = prepare(&config(None, FILE), &s).unwrap_err().to_string();
    for part in [
        "medsynth_hub",
        REPO,
        FILE,
        "`main`",
        "HF_TOKEN",
        "401",
        "licence",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    s.token = Some("hf_secret".into());
    assert!(prepare(&config(None, FILE), &s).unwrap().dataset.is_some());
}

#[test]
fn not_found_says_which_of_repo_revision_and_file_is_missing() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Dataset,
        REPO,
        "main",
        &[FakeFile::lfs(FILE, medsynth_csv(20))],
    );
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let e = prepare(&config(None, "MedSynth.csv"), &s)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no file `MedSynth.csv` at revision `main`"),
        "{e}"
    );
    let e = prepare(&config(Some("v2"), FILE), &s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the revision `v2` does not exist"), "{e}");
    let mut other = config(None, FILE);
    other.data.source = DataSource::MedsynthHub {
        repo: "someone/Nothing".into(),
        file: FILE.into(),
        revision: None,
    };
    let e = prepare(&other, &s).unwrap_err().to_string();
    assert!(
        e.contains("check the repository id `someone/Nothing`") && e.contains("HF_TOKEN"),
        "{e}"
    );
}

#[test]
fn an_offline_miss_names_the_cache_path_it_looked_in() {
    let cache = tempfile::tempdir().unwrap();
    let mut s = HubSettings::new(cache.path());
    s.access = HubAccess::Offline;
    let e = prepare(&config(None, FILE), &s).unwrap_err().to_string();
    let looked = cache.path().join("datasets--Ahmad0067--MedSynth/refs/main");
    assert!(
        e.contains(&looked.display().to_string()) && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    assert!(e.contains(REPO) && e.contains(FILE), "{e}");
}

/// A small Llama-shaped `config.json` (~3 M parameters).
fn tiny_config() -> String {
    serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    })
    .to_string()
}

#[test]
fn a_hub_model_is_planned_from_its_config_json_not_its_size_label() {
    let hub = FakeHub::start();
    hub.commit(
        RepoKind::Model,
        "org/tiny-llama",
        "main",
        &[FakeFile::regular("config.json", tiny_config())],
    );
    let mut cfg = ExperimentConfig::offline_default();
    cfg.resolve_models_dir(Path::new("/nonexistent/models"));
    cfg.slm_models = vec![ModelEntry {
        name: "org/tiny-llama".into(),
        revision: None,
        size: "3B".into(),
        label: "Tiny".into(),
        description: String::new(),
        load_in_4bit: false,
    }];
    let finetune_mib = |plan: &coordinator::experiment::ExperimentPlan| {
        plan.tasks
            .iter()
            .find(|t| t.spec.id.0.starts_with("finetune:"))
            .expect("a finetune task")
            .spec
            .estimate_mib
    };
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let real = finetune_mib(&prepare(&cfg, &s).unwrap());
    // The config was asked for once, though the plan needs the shape for several tasks.
    let asked: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.ends_with("/config.json"))
        .collect();
    assert_eq!(asked.len(), 2, "one HEAD, one GET: {asked:?}");
    // Offline with the cache: the same estimate; with an empty cache: the size label's.
    assert_eq!(finetune_mib(&prepare(&cfg, &offline(&s)).unwrap()), real);
    let empty = tempfile::tempdir().unwrap();
    let from_label =
        finetune_mib(&prepare(&cfg, &offline(&HubSettings::new(empty.path()))).unwrap());
    assert!(
        real * 10 < from_label,
        "config.json: {real} MiB, label \"3B\": {from_label} MiB"
    );
    assert!(real < 2048, "{real} MiB for ~3 M parameters");
}
