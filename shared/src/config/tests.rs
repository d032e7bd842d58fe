//! Tests of the experiment config: defaults, layering, error locations, validation.
use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err_text(text: &str) -> String {
    ExperimentConfig::from_toml_str(text, "experiment.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_reproduce_design_models() {
    let c = ExperimentConfig::default();
    let llm: Vec<_> = c
        .llm_models
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.size.as_str(),
                m.label.as_str(),
                m.load_in_4bit,
            )
        })
        .collect();
    assert_eq!(
        llm,
        [
            (
                "meta-llama/Meta-Llama-3.1-8B-Instruct",
                "8B",
                "Llama-8B",
                true
            ),
            (
                "mistralai/Mistral-7B-Instruct-v0.3",
                "7B",
                "Mistral-7B",
                true
            ),
        ]
    );
    let slm: Vec<_> = c
        .slm_models
        .iter()
        .map(|m| (m.name.as_str(), m.size.as_str(), m.label.as_str()))
        .collect();
    assert_eq!(
        slm,
        [
            ("meta-llama/Llama-3.2-3B-Instruct", "3B", "Llama-3B"),
            ("Qwen/Qwen2.5-3B-Instruct", "3B", "Qwen-3B")
        ]
    );
    assert_eq!(c.evaluation.bootstrap_resamples, 1000);
    assert_eq!(c.evaluation.confidence, 0.95);
    assert!(c.evaluation.include_slm_zero_shot);
    assert_eq!(c.dtype.resolve(ComputeBackend::Cuda), TrainDtype::Bf16);
    assert_eq!(c.dtype.resolve(ComputeBackend::Cpu), TrainDtype::F32);
    assert_eq!(
        c.data.source,
        DataSource::MedsynthHub {
            repo: MEDSYNTH_REPO.into(),
            file: MEDSYNTH_FILE.into(),
            revision: None
        }
    );
    assert!(c.problems().is_empty(), "{:?}", c.problems());
    // An empty file is the default experiment.
    assert_eq!(
        ExperimentConfig::from_toml_str("", "empty.toml").unwrap(),
        c
    );
}

#[test]
fn offline_default_is_small_valid_and_uses_smollm_in_both_roles() {
    let c = ExperimentConfig::offline_default();
    assert!(c.problems().is_empty(), "{:?}", c.problems());
    let DataSource::Embedded { codes, per_code } = c.data.source else {
        panic!("the offline default must use the embedded dataset");
    };
    // The caps must fit the splits the subset actually yields, or the run silently shrinks.
    let records = crate::embedded::embedded_subset(codes, per_code);
    let split = crate::split::split(&records, &c.data.split).expect("splits");
    let (eval, train) = (
        c.data.max_eval_samples.expect("capped"),
        c.data.max_train_samples.expect("capped"),
    );
    assert!(eval <= split.test.len(), "{eval} > {}", split.test.len());
    assert!(
        train <= split.train.len(),
        "{train} > {}",
        split.train.len()
    );
    assert!(!split.validation.is_empty());
    // Every code of the subset is seen in training often enough to be learnable.
    let n_codes = codes.expect("a subset");
    assert!(train / n_codes >= 8, "{train} examples for {n_codes} codes");
    assert_eq!(c.generation.max_new_tokens, 12);
    assert_eq!(c.lora.target_modules, crate::config::ALL_PROJECTIONS);
    assert_eq!(c.llm_models.len(), 1);
    assert_eq!(c.slm_models.len(), 1);
    for m in c.llm_models.iter().chain(&c.slm_models) {
        assert_eq!(m.label, "SmolLM2-135M");
        assert!(!m.load_in_4bit);
        assert!(m.name.ends_with(SMOLLM2_GGUF_FILE));
    }
    let mut r = c.clone();
    r.resolve_models_dir(std::path::Path::new("/m"));
    assert_eq!(r.llm_models[0].name, format!("/m/{SMOLLM2_GGUF_FILE}"));
    assert_eq!(r.slm_models[0].name, format!("/m/{SMOLLM2_GGUF_FILE}"));
}

#[test]
fn file_overrides_only_what_it_names() {
    let c = ExperimentConfig::from_toml_str(
        "name = \"pilot\"\ndevice = \"cuda:0,cuda:2\"\n[training]\nlearning_rate = 1e-4\nepochs = 1\n\
         [data]\nmax_eval_samples = 20\n[data.source]\nkind = \"medsynth_csv\"\npath = \"/d/m.csv\"\n\
         [[llm_models]]\nname = \"x/Big-70B\"\nsize = \"70B\"\nlabel = \"Big\"\n",
        "f.toml",
    )
    .unwrap();
    let d = ExperimentConfig::default();
    assert_eq!(c.name, "pilot");
    assert_eq!(c.device, DeviceSelection::Cuda(vec![0, 2]));
    assert_eq!(c.training.learning_rate, 1e-4);
    assert_eq!(c.training.epochs, 1);
    assert_eq!(c.training.batch_size, d.training.batch_size);
    assert_eq!(c.data.max_eval_samples, Some(20));
    assert_eq!(
        c.data.source,
        DataSource::MedsynthCsv {
            path: "/d/m.csv".into()
        }
    );
    assert_eq!(c.llm_models.len(), 1);
    assert!(
        c.llm_models[0].load_in_4bit,
        "load_in_4bit defaults to true"
    );
    assert_eq!(c.slm_models, d.slm_models);
    assert_eq!(c.lora, d.lora);
}

#[test]
fn env_overrides_apply_on_top_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("experiment.toml");
    std::fs::write(&p, "[training]\nlearning_rate = 3e-4\nepochs = 5\n").unwrap();
    let vars = env(&[
        ("SIZESPEC_TRAINING__LEARNING_RATE", "1e-4"),
        ("SIZESPEC_DATA__MAX_EVAL_SAMPLES", "50"),
        ("SIZESPEC_NAME", "123"),
        ("SIZESPEC_LORA__TARGET_MODULES", "[\"q_proj\", \"v_proj\"]"),
        ("SIZESPEC_SLM_MODELS__1__NAME", "/models/qwen"),
        ("SIZESPEC_DEVICE", "cpu"),
        // Not config: no `__` and not a top-level key.
        ("SIZESPEC_MODELS", "/somewhere"),
        ("PATH", "/bin"),
    ]);
    let loaded = ExperimentConfig::load_layered(Some(&p), &vars).unwrap();
    let c = loaded.config;
    assert_eq!(c.training.learning_rate, 1e-4);
    assert_eq!(c.training.epochs, 5, "file value kept where env is silent");
    assert_eq!(c.data.max_eval_samples, Some(50));
    assert_eq!(c.name, "123", "string keys take the value verbatim");
    assert_eq!(c.lora.target_modules, ["q_proj", "v_proj"]);
    assert_eq!(c.slm_models[1].name, "/models/qwen");
    assert_eq!(c.slm_models[1].label, "Qwen-3B");
    assert_eq!(c.device, DeviceSelection::Cpu);
    assert!(loaded.migration.is_none());
}

#[test]
fn env_errors_name_the_variable() {
    let e = ExperimentConfig::load_layered(None, &env(&[("SIZESPEC_TRAINING__LEARNIN_RATE", "1")]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment: unknown key `training.learnin_rate` (SIZESPEC_TRAINING__LEARNIN_RATE)"
    );
    let e = ExperimentConfig::load_layered(None, &env(&[("SIZESPEC_TRAINNG__EPOCHS", "1")]))
        .unwrap_err();
    assert!(
        matches!(&e, ConfigError::UnknownKey { key, .. } if key == "trainng.epochs"),
        "{e}"
    );
    let e = ExperimentConfig::load_layered(None, &env(&[("SIZESPEC_TRAINING__EPOCHS", "many")]))
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("environment: key `training.epochs` (SIZESPEC_TRAINING__EPOCHS): "),
        "{s}"
    );
    let e = ExperimentConfig::load_layered(None, &env(&[("SIZESPEC_LORA__R", "0")])).unwrap_err();
    assert!(
        e.to_string().contains("`lora.r` (SIZESPEC_LORA__R): is 0"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_dotted_key_and_line() {
    let text = "name = \"x\"\n\n[training]\nepochs = 2\nlearnin_rate = 1e-4\n";
    assert_eq!(
        err_text(text),
        "experiment.toml: unknown key `training.learnin_rate` (line 5)"
    );
    let text = "[[slm_models]]\nname = \"a\"\nsize = \"3B\"\nlabel = \"A\"\n[[slm_models]]\nname = \"b\"\nsize = \"3B\"\nlabel = \"B\"\nquant = 4\n";
    assert_eq!(
        err_text(text),
        "experiment.toml: unknown key `slm_models[1].quant` (line 9)"
    );
    let text = "colour = \"red\"\n";
    assert_eq!(
        err_text(text),
        "experiment.toml: unknown key `colour` (line 1)"
    );
    let text = "[data.source]\nkind = \"jsonl\"\npath = \"a.jsonl\"\nrepo = \"x/y\"\n";
    let s = err_text(text);
    assert!(
        s.starts_with("experiment.toml: unknown key `data.source.repo`"),
        "{s}"
    );
}

#[test]
fn type_error_names_key_and_line() {
    let s = err_text("[training]\n\nepochs = \"three\"\n");
    assert!(
        s.starts_with(
            "experiment.toml: key `training.epochs` (line 3): invalid type: string \"three\""
        ),
        "{s}"
    );
    let s = err_text("device = \"gpu\"\n");
    assert!(
        s.contains("key `device` (line 1)") && s.contains("`gpu`"),
        "{s}"
    );
    let s = err_text("[training]\nepochs = \n");
    assert!(
        s.starts_with("experiment.toml: syntax error (line 2)"),
        "{s}"
    );
}

#[test]
fn validation_errors_name_key_and_line() {
    let s = err_text("[training]\nlearning_rate = -1.0\n");
    assert!(
        s.contains("`training.learning_rate` (line 2): is -1; it must be positive"),
        "{s}"
    );
    let s = err_text("[lora]\nr = 0\n");
    assert!(s.contains("`lora.r` (line 2): is 0"), "{s}");
    let s = err_text("[lora]\ntarget_modules = [\"q_proj\", \"qkv\"]\n");
    assert!(
        s.contains("`lora.target_modules[1]` (line 2): unknown projection `qkv`"),
        "{s}"
    );
    let s = err_text("[data.split]\ntrain = 0.8\nvalidation = 0.1\ntest = 0.2\n");
    assert!(
        s.contains("`data.split` (line 1): ") && s.contains("sum to 1"),
        "{s}"
    );
    let s = err_text("llm_models = []\n");
    assert!(s.contains("`llm_models` (line 1): is empty"), "{s}");
    let dup = "[[slm_models]]\nname = \"a\"\nsize = \"3B\"\nlabel = \"A\"\n[[slm_models]]\nname = \"b\"\nsize = \"3B\"\nlabel = \"A\"\n";
    let s = err_text(dup);
    assert!(
        s.contains("`slm_models[1].label` (line 8): `A` is used twice"),
        "{s}"
    );
    let s = err_text("[evaluation]\nconfidence = 1.5\n[generation]\nmax_new_tokens = 0\n");
    assert!(
        s.contains("`evaluation.confidence` (line 2)")
            && s.contains("`generation.max_new_tokens` (line 4)"),
        "{s}"
    );
    let s = err_text("[prompt]\nuser_template = \"no dialogue here\"\n");
    assert!(s.contains("`prompt.user_template` (line 2)"), "{s}");
}

#[test]
fn to_toml_round_trips() {
    for c in [
        ExperimentConfig::default(),
        ExperimentConfig::offline_default(),
    ] {
        let text = c.to_toml().unwrap();
        assert_eq!(
            ExperimentConfig::from_toml_str(&text, "resolved.toml").unwrap(),
            c,
            "{text}"
        );
    }
}

#[test]
fn example_file_parses_and_is_the_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiment.example.toml");
    let loaded = ExperimentConfig::load(&path).unwrap();
    assert_eq!(loaded.config, ExperimentConfig::default());
    // Every key of the resolved default is written out in the example (documented, not implied).
    let text = std::fs::read_to_string(&path).unwrap();
    let resolved: toml::Table =
        toml::from_str(&ExperimentConfig::default().to_toml().unwrap()).unwrap();
    for (section, value) in &resolved {
        if let toml::Value::Table(t) = value {
            for (key, v) in t {
                let written = if v.is_table() {
                    text.contains(&format!("\n[{section}.{key}]"))
                } else {
                    text.contains(&format!("\n{key} =")) || text.contains(&format!("\n# {key} ="))
                };
                assert!(written, "{section}.{key} undocumented");
            }
        }
    }
}

#[test]
fn device_selection_parses_lists_and_rejects_nonsense() {
    assert_eq!(
        "auto".parse::<DeviceSelection>().unwrap(),
        DeviceSelection::Auto
    );
    assert_eq!(
        "cuda".parse::<DeviceSelection>().unwrap(),
        DeviceSelection::AllCuda
    );
    assert_eq!(
        "cuda:1, cuda:0".parse::<DeviceSelection>().unwrap(),
        DeviceSelection::Cuda(vec![1, 0])
    );
    assert!("cuda:0,cuda:0".parse::<DeviceSelection>().is_err());
    assert!("gpu0".parse::<DeviceSelection>().is_err());
    let c = ExperimentConfig::from_toml_str("device = [\"cuda:3\", \"cuda:1\"]\n", "f").unwrap();
    assert_eq!(c.device, DeviceSelection::Cuda(vec![3, 1]));
    assert_eq!(c.device.to_string(), "cuda:3,cuda:1");
}

#[test]
fn config_hash_is_stable_and_follows_the_config() {
    let a = ExperimentConfig::default().config_hash().unwrap();
    assert_eq!(a.len(), 64);
    assert_eq!(a, ExperimentConfig::default().config_hash().unwrap());
    let mut c = ExperimentConfig::default();
    c.training.epochs = 4;
    assert_ne!(c.config_hash().unwrap(), a);
}

#[test]
fn json_config_in_the_new_shape_loads_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("experiment.json");
    std::fs::write(&p, "{\n  \"name\": \"j\",\n  \"lora\": {\"r\": 4}\n}\n").unwrap();
    let c = ExperimentConfig::load(&p).unwrap().config;
    assert_eq!((c.name.as_str(), c.lora.r), ("j", 4));
    std::fs::write(&p, "{\n  \"name\": \"j\",\n  \"lora\": {\"rank\": 4}\n}\n").unwrap();
    let e = ExperimentConfig::load(&p).unwrap_err().to_string();
    assert!(e.ends_with("unknown key `lora.rank` (line 3)"), "{e}");
}

#[test]
fn a_file_can_layer_over_the_offline_default() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.toml");
    std::fs::write(
        &p,
        "[data]\nmax_eval_samples = 20\n[lora]\ntarget_modules = [\"q_proj\"]\n",
    )
    .unwrap();
    let base = ExperimentConfig::offline_default();
    let c = ExperimentConfig::load_layered_over(base.clone(), Some(&p), &BTreeMap::new())
        .unwrap()
        .config;
    assert_eq!(c.data.max_eval_samples, Some(20));
    assert_eq!(
        c.data.max_train_samples, base.data.max_train_samples,
        "offline value kept"
    );
    assert_eq!(
        c.lora.target_modules,
        ["q_proj"],
        "lists are replaced, not merged"
    );
    assert_eq!(c.lora.r, 8);
    assert_eq!(c.llm_models, base.llm_models);
    // Switching the source kind replaces the whole section.
    std::fs::write(&p, "[data.source]\nkind = \"jsonl\"\npath = \"r.jsonl\"\n").unwrap();
    let c = ExperimentConfig::load_layered_over(
        ExperimentConfig::offline_default(),
        Some(&p),
        &BTreeMap::new(),
    )
    .unwrap()
    .config;
    assert_eq!(
        c.data.source,
        DataSource::Jsonl {
            path: "r.jsonl".into()
        }
    );
    // Errors are still located in the file.
    std::fs::write(&p, "[data]\nmax_eval_sample = 20\n").unwrap();
    let e = ExperimentConfig::load_layered_over(
        ExperimentConfig::offline_default(),
        Some(&p),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("unknown key `data.max_eval_sample` (line 2)"),
        "{e}"
    );
}

#[test]
fn env_can_switch_the_data_source_kind() {
    // The default source is the hub (repo, file); switching to a CSV drops those fields.
    let vars = env(&[
        ("SIZESPEC_DATA__SOURCE__PATH", "/d/m.csv"),
        ("SIZESPEC_DATA__SOURCE__KIND", "medsynth_csv"),
    ]);
    let c = ExperimentConfig::load_layered(None, &vars).unwrap().config;
    assert_eq!(
        c.data.source,
        DataSource::MedsynthCsv {
            path: "/d/m.csv".into()
        }
    );
}

#[test]
fn embedded_subset_is_configurable_and_checked() {
    let c = ExperimentConfig::from_toml_str(
        "[data.source]\nkind = \"embedded\"\ncodes = 12\nper_code = 30\n",
        "f.toml",
    )
    .expect("parses");
    assert_eq!(
        c.data.source,
        DataSource::Embedded {
            codes: Some(12),
            per_code: 30
        }
    );
    // Leaving both out is the whole dataset.
    let c = ExperimentConfig::from_toml_str("[data.source]\nkind = \"embedded\"\n", "f.toml")
        .expect("parses");
    assert_eq!(c.data.source, DataSource::embedded());
    for (body, key) in [
        ("codes = 1", "data.source.codes"),
        ("codes = 500", "data.source.codes"),
        ("per_code = 0", "data.source.per_code"),
        ("per_code = 100000", "data.source.per_code"),
    ] {
        let err = ExperimentConfig::from_toml_str(
            &format!("[data.source]\nkind = \"embedded\"\n{body}\n"),
            "f.toml",
        )
        .expect_err(body)
        .to_string();
        // The error names the key and the file's line.
        assert!(err.contains(key) && err.contains("line 3"), "{body}: {err}");
    }
}

#[test]
fn batching_parses_and_a_budget_needs_length_grouping() {
    let c = ExperimentConfig::from_toml_str(
        "[training]\nbatching = \"length_grouped\"\nmax_batch_tokens = 8192\n",
        "f",
    )
    .unwrap();
    assert_eq!(c.training.batching, Batching::LengthGrouped);
    assert_eq!(c.training.max_batch_tokens, 8192);
    assert!(c.problems().is_empty(), "{:?}", c.problems());
    assert_eq!(
        ExperimentConfig::default().training.batching,
        Batching::Auto
    );
    // The loader validates: a budget with fixed batching is reported at its key and line.
    let e = ExperimentConfig::from_toml_str(
        "[training]\nbatching = \"fixed\"\nmax_batch_tokens = 8192\n",
        "f",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("training.max_batch_tokens") && e.contains("line 3"),
        "{e}"
    );
    assert!(ExperimentConfig::from_toml_str("[training]\nbatching = \"grouped\"\n", "f").is_err());
}

#[test]
fn checkpoint_cadence_parses_and_bad_intervals_name_key_and_line() {
    let c = ExperimentConfig::from_toml_str(
        "[training]\ncheckpoint_every_steps = 50\ncheckpoint_every_s = 0\n",
        "f",
    )
    .unwrap();
    assert_eq!(c.training.checkpoint_every_steps, 50);
    assert_eq!(c.training.checkpoint_every_s, 0);
    assert_eq!(
        ExperimentConfig::default().training.checkpoint_every_s,
        DEFAULT_CHECKPOINT_EVERY_S
    );
    for bad in ["3", "86401"] {
        let e = ExperimentConfig::from_toml_str(
            &format!("[training]\nepochs = 1\ncheckpoint_every_s = {bad}\n"),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("training.checkpoint_every_s") && e.contains("line 3") && e.contains(bad),
            "{e}"
        );
    }
    let e = ExperimentConfig::from_toml_str("[training]\ncheckpoint_every_steps = -1\n", "f")
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint_every_steps"), "{e}");
}
