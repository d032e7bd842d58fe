//! Tests of the results types: key naming, serde round trip, checks, conversion of an old file.
use serde_json::json;

use super::*;

fn metrics() -> EvalMetrics {
    EvalMetrics {
        samples: 150,
        valid_predictions: 140,
        exact_match: 0.12,
        category_match: 0.5,
        chapter_match: 0.8,
        invalid_code_rate: 0.0667,
        micro_f1: 0.12,
        macro_f1: 0.08,
        macro_f1_labels: 120,
        macro_f1_reference_labels: 0.09,
        weighted_f1: 0.1,
        latency_ms_mean: 900.0,
        latency_ms_p50: 850.0,
        latency_ms_p95: 1400.0,
        latency_ms_p99: 1600.0,
        wall_seconds: 140.0,
        samples_per_s: 1.07,
        generated_tokens: 1200,
        prompt_tokens: 22_000,
        generated_tokens_per_s: 8.6,
    }
}

fn sample() -> Results {
    let mut r = Results {
        meta: Some(ResultsMeta {
            experiment: "offline-smollm2".into(),
            config_hash: Some("ab".repeat(32)),
            split_hash: Some("cd".repeat(32)),
            created: Some("2026-11-26T01:00:00Z".into()),
            tool_version: tool_version(),
            converted_from_old: false,
            dataset: Some(HubDataset {
                repo: "Ahmad0067/MedSynth".into(),
                file: "MedSynth_huggingface_final.csv".into(),
                revision: "main".into(),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                sha256: "ef".repeat(32),
            }),
            failed: vec![FailedModel {
                model: "LLM_Mistral-7B_untrained".into(),
                task: "eval:LLM_Mistral-7B".into(),
                error: "failed 3 times; last error: out of memory".into(),
            }],
        }),
        entries: Default::default(),
    };
    r.entries.insert(
        result_key(ModelRole::Llm, "Llama-8B", TrainingStatus::Untrained),
        ResultEntry {
            model_type: ModelType::Llm,
            size: "8B".into(),
            training: TrainingStatus::Untrained,
            model_name: "meta-llama/Meta-Llama-3.1-8B-Instruct".into(),
            metrics: metrics(),
            missing_metrics: vec![],
            performance: Performance {
                load_time_s: Some(12.5),
                eval_time_s: Some(140.0),
                samples_per_s: Some(1.07),
                tokens_per_s: Some(8.6),
                peak_memory_mib: Some(9000.0),
                device_name: Some("NVIDIA H100 80GB HBM3".into()),
            },
            training_metrics: None,
            extra: Default::default(),
        },
    );
    r.entries.insert(
        result_key(ModelRole::Slm, "Qwen-3B", TrainingStatus::Finetuned),
        ResultEntry {
            model_type: ModelType::Slm,
            size: "3B".into(),
            training: TrainingStatus::Finetuned,
            model_name: "Qwen/Qwen2.5-3B-Instruct".into(),
            metrics: metrics(),
            missing_metrics: vec![],
            performance: Performance::default(),
            training_metrics: Some(TrainingMetrics {
                train_time_s: Some(3600.0),
                steps: Some(1200),
                final_train_loss: Some(0.4),
                best_validation_loss: Some(0.55),
                epochs_run: Some(2.5),
                stopped_early: Some(true),
                tokens_per_s: Some(5000.0),
                peak_memory_mib: Some(30000.0),
                resumed: Some(Resumed {
                    resumed_from_step: 600,
                    resumed_on_agent: "gpu-b".into(),
                    checkpoint_by_agent: "gpu-a".into(),
                }),
                curve: vec![
                    CurvePoint {
                        step: 10,
                        train_loss: Some(2.0),
                        validation_loss: None,
                    },
                    CurvePoint {
                        step: 100,
                        train_loss: Some(0.9),
                        validation_loss: Some(1.0),
                    },
                ],
            }),
            extra: Default::default(),
        },
    );
    r
}

#[test]
fn keys_are_named_like_the_seed() {
    assert_eq!(
        result_key(ModelRole::Llm, "Llama-8B", TrainingStatus::Untrained),
        "LLM_Llama-8B_untrained"
    );
    assert_eq!(
        result_key(ModelRole::Llm, "Mistral-7B", TrainingStatus::Untrained),
        "LLM_Mistral-7B_untrained"
    );
    assert_eq!(
        result_key(ModelRole::Slm, "Llama-3B", TrainingStatus::Finetuned),
        "SLM_Llama-3B_finetuned"
    );
    assert_eq!(
        result_key(ModelRole::Slm, "Qwen-3B", TrainingStatus::Untrained),
        "SLM_Qwen-3B_untrained"
    );
    assert_eq!(
        parse_result_key("SLM_SmolLM2-135M_finetuned"),
        Some((ModelType::Slm, "SmolLM2-135M", TrainingStatus::Finetuned))
    );
    assert_eq!(parse_result_key("meta"), None);
    assert_eq!(parse_result_key("LLM__untrained"), None);
    assert_eq!(parse_result_key("LLM_x_trained"), None);
}

#[test]
fn serde_round_trip_keeps_a_flat_map_with_meta() {
    let r = sample();
    let text = serde_json::to_string_pretty(&r).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["LLM_Llama-8B_untrained", "SLM_Qwen-3B_finetuned", "meta"]
    );
    let e = &v["SLM_Qwen-3B_finetuned"];
    assert_eq!(e["model_type"], "SLM");
    assert_eq!(e["training"], "finetuned");
    assert_eq!(e["size"], "3B");
    assert_eq!(e["metrics"]["exact_match"], 0.12);
    assert_eq!(e["training_metrics"]["curve"][1]["validation_loss"], 1.0);
    assert_eq!(
        v["LLM_Llama-8B_untrained"]["performance"]["device_name"],
        "NVIDIA H100 80GB HBM3"
    );
    assert!(
        v["LLM_Llama-8B_untrained"]
            .get("training_metrics")
            .is_none()
    );
    // A model that failed for good is named under `meta.failed`, never as a key.
    assert_eq!(v["meta"]["failed"][0]["model"], "LLM_Mistral-7B_untrained");
    assert_eq!(v["meta"]["failed"][0]["task"], "eval:LLM_Mistral-7B");
    assert_eq!(Results::from_json_str(&text, "results.json").unwrap(), r);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    r.write(&path).unwrap();
    assert_eq!(Results::read(&path).unwrap(), r);
}

#[test]
fn checks_keys_against_entries() {
    let mut v = serde_json::to_value(sample()).unwrap();
    let entry = v["LLM_Llama-8B_untrained"].clone();
    v.as_object_mut()
        .unwrap()
        .insert("Llama-8B".into(), entry.clone());
    let e = Results::from_json_str(&v.to_string(), "r.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "r.json: key `Llama-8B` is not a model key like `LLM_<label>_untrained` or `SLM_<label>_finetuned`"
    );
    let mut v = serde_json::to_value(sample()).unwrap();
    v.as_object_mut()
        .unwrap()
        .insert("LLM_Llama-8B_finetuned".into(), entry);
    let e = Results::from_json_str(&v.to_string(), "r.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "r.json: entry `LLM_Llama-8B_finetuned` says training = untrained, but its key says finetuned"
    );
}

/// An old file as the seed wrote it: percentages, seconds, GB, a 3B model among the baselines.
fn old_file() -> serde_json::Value {
    json!({
        "Baseline_LLM_meta-llama/Meta-Llama-3.1-8B-Instruct": {
            "model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct",
            "accuracy": 3.42, "category_accuracy": 24.6, "chapter_accuracy": 61.0,
            "f1": 3.42, "macro_f1": 1.9,
            "num_samples": 1024, "avg_latency": 1.25, "total_time": 1280.0,
            "throughput": 0.8, "tokens_per_second": 9.5, "memory_gb": 6.5, "load_time": 40.2,
            "per_chapter": {"A00-B99": 12.0}
        },
        "Baseline_LLM_mistralai/Mistral-7B-Instruct-v0.3": {
            "metrics": {"accuracy": 2.05, "partial_match": 21.5}, "num_samples": 1024
        },
        "Baseline_LLM_meta-llama/Llama-3.2-3B-Instruct": {"accuracy": 1.0, "num_samples": 1024},
        "Baseline_SLM": {"model_name": "Qwen/Qwen2.5-3B-Instruct", "accuracy": 0.5, "num_samples": 1024},
        "Finetuned_SLM": {
            "model_name": "Qwen/Qwen2.5-3B-Instruct", "accuracy": 0.1, "num_samples": 1024,
            "training_time": 5400.0, "train_loss": 0.35, "eval_loss": 0.6, "global_step": 900, "use_lora": true
        },
        "timestamp": "2025-08-01T10:00:00",
        "notes": ["anything"]
    })
}

#[test]
fn converts_a_realistic_old_file() {
    assert!(is_old_shape(&old_file()));
    assert!(!is_old_shape(&serde_json::to_value(sample()).unwrap()));
    let r = convert_old(old_file()).unwrap();
    let keys: Vec<&str> = r.entries.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "LLM_Llama-8B_untrained",
            "LLM_Mistral-7B_untrained",
            "SLM_Llama-3B_untrained",
            "SLM_Qwen-3B_finetuned",
            "SLM_Qwen-3B_untrained",
        ]
    );
    let llama = &r.entries["LLM_Llama-8B_untrained"];
    assert_eq!(llama.model_type, ModelType::Llm);
    assert_eq!(llama.size, "8B");
    // Percentages became fractions.
    assert!((llama.metrics.exact_match - 0.0342).abs() < 1e-12);
    assert!((llama.metrics.category_match - 0.246).abs() < 1e-12);
    assert!((llama.metrics.micro_f1 - 0.0342).abs() < 1e-12);
    assert_eq!(llama.metrics.samples, 1024);
    assert_eq!(llama.metrics.latency_ms_mean, 1250.0);
    assert_eq!(llama.performance.eval_time_s, Some(1280.0));
    assert_eq!(llama.performance.samples_per_s, Some(0.8));
    assert_eq!(llama.performance.peak_memory_mib, Some(6.5 * 1024.0));
    assert_eq!(llama.performance.load_time_s, Some(40.2));
    // Numbers without a place are kept, metrics without a source are listed, not invented.
    assert_eq!(llama.extra.get("per_chapter.A00-B99"), Some(&12.0));
    assert!(
        llama
            .missing_metrics
            .contains(&"latency_ms_p95".to_string())
    );
    assert!(!llama.missing_metrics.contains(&"exact_match".to_string()));
    // Nested `metrics` and the `partial_match` alias.
    let mistral = &r.entries["LLM_Mistral-7B_untrained"];
    assert!((mistral.metrics.category_match - 0.215).abs() < 1e-12);
    // The 3B model among the old baselines is an SLM evaluated zero-shot.
    assert_eq!(
        r.entries["SLM_Llama-3B_untrained"].model_type,
        ModelType::Slm
    );
    // One convention per file: 1.0 in a percent file is 1%.
    assert_eq!(
        r.entries["SLM_Llama-3B_untrained"].metrics.exact_match,
        0.01
    );
    assert_eq!(
        r.entries["SLM_Qwen-3B_untrained"].metrics.exact_match,
        0.005
    );
    let ft = &r.entries["SLM_Qwen-3B_finetuned"];
    let t = ft.training_metrics.as_ref().unwrap();
    assert_eq!(
        (
            t.train_time_s,
            t.final_train_loss,
            t.best_validation_loss,
            t.steps
        ),
        (Some(5400.0), Some(0.35), Some(0.6), Some(900))
    );
    let meta = r.meta.as_ref().unwrap();
    assert!(meta.converted_from_old);
    assert_eq!(meta.created.as_deref(), Some("2025-08-01T10:00:00"));
    assert_eq!(meta.split_hash, None);
    // The converted file is a valid new file.
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(Results::from_json_str(&text, "converted.json").unwrap(), r);
}

#[test]
fn a_file_of_fractions_stays_fractions() {
    let r = convert_old(json!({
        "Baseline_LLM_x/Big-8B": {"accuracy": 0.0342, "f1": 1.0},
        "Finetuned_SLM": {"model_name": "x/Small-3B", "exact_match": 0.12}
    }))
    .unwrap();
    assert_eq!(
        r.entries["LLM_Big-8B_untrained"].metrics.exact_match,
        0.0342
    );
    assert_eq!(r.entries["LLM_Big-8B_untrained"].metrics.micro_f1, 1.0);
    assert_eq!(
        r.entries["SLM_Small-3B_finetuned"].metrics.exact_match,
        0.12
    );
}

#[test]
fn conversion_errors_name_the_entry() {
    let e = convert_old(json!({"Baseline_SLM": {"accuracy": 0.1}})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "old results: `Baseline_SLM`: no model name in the key or a `model_name` field"
    );
    let e = convert_old(json!({
        "Baseline_SLM": {"model_name": "Qwen/Qwen2.5-3B-Instruct"},
        "Baseline_LLM_Qwen/Qwen2.5-3B-Instruct": {}
    }))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("both become `SLM_Qwen-3B_untrained`"),
        "{e}"
    );
    assert!(convert_old(json!({"LLM_x_untrained": {}})).is_err());
    assert!(convert_old(json!([1])).is_err());
}
