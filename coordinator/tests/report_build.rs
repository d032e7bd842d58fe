//! The report end to end: a synthetic results folder (4 models × 200 samples with known
//! correctness patterns) → report files, verdict direction and numbers, byte-identical rebuilds.
use std::collections::BTreeMap;
use std::path::Path;

use coordinator::report::analysis::{Outcome, analyse};
use coordinator::report::input::load;
use coordinator::report::stats::BootstrapConfig;
use coordinator::report::{ReportError, build};
use shared::results::{
    Performance, ResultEntry, Results, ResultsMeta, TrainingMetrics, TrainingStatus,
    parse_result_key,
};
use shared::task::PredictionRow;

/// Ten reference codes from ten chapters, each with a valid code of the same 3-character
/// category, and a train count that puts it in a known frequency band.
const CODES: [(&str, &str, u64); 10] = [
    ("E119", "E1165", 8),      // endocrine, frequent
    ("I2510", "I259", 8),      // circulatory, frequent
    ("J45909", "J45901", 4),   // respiratory, rare
    ("M25562", "M25561", 4),   // musculoskeletal, rare
    ("K219", "K210", 4),       // digestive, rare
    ("F329", "F321", 8),       // mental, frequent
    ("N390", "N393", 0),       // genitourinary, unseen
    ("R509", "R5081", 4),      // symptoms, rare
    ("S72001A", "S72002A", 8), // injury, frequent
    ("C50911", "C50912", 0),   // neoplasms, unseen
];

/// Sample `i`'s row for a model that is right when `right`; wrong answers alternate between the
/// same-category sibling, another category's code, and no code at all.
fn row(i: usize, right: bool, latency_ms: f64) -> PredictionRow {
    let (reference, sibling, _) = CODES[i % 10];
    let extracted = if right {
        Some(reference.to_string())
    } else {
        match i % 3 {
            0 => Some(sibling.to_string()),
            1 => Some(CODES[(i + 1) % 10].0.to_string()),
            _ => None,
        }
    };
    PredictionRow {
        sample_id: format!("s{i:04}"),
        correct: extracted.as_deref() == Some(reference),
        raw_output: extracted.clone().unwrap_or_else(|| "I am not sure.".into()),
        reference: reference.to_string(),
        extracted,
        latency_ms: latency_ms - 3.0 + (i % 7) as f64,
        generated_tokens: 6,
        prompt_tokens: 900,
    }
}

type Pattern = fn(usize) -> bool;

/// The models and who is right where:
/// - Big-8B: 30% (i % 10 < 3); Small-3B LoRA 60% (i % 10 < 6) is right on a superset of those →
///   60 discordant pairs, all for the small model;
/// - Other-7B: 55% (i % 20 < 11) → vs Small-3B LoRA 50 pairs one way, 40 the other (+5 pts);
/// - Small-3B zero-shot: 10%.
///
/// Each entry: (key, who is right, peak memory MiB, tokens/s, mean latency ms).
const MODELS: [(&str, Pattern, f64, f64, f64); 4] = [
    ("LLM_Big-8B_untrained", |i| i % 10 < 3, 5400.0, 31.0, 220.0),
    (
        "LLM_Other-7B_untrained",
        |i| i % 20 < 11,
        4900.0,
        35.0,
        190.0,
    ),
    ("SLM_Small-3B_finetuned", |i| i % 10 < 6, 6900.0, 70.0, 95.0),
    ("SLM_Small-3B_untrained", |i| i % 10 < 1, 6800.0, 72.0, 90.0),
];

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn synthetic_dir(dir: &Path, with_counts: bool) {
    let mut results = Results {
        meta: Some(ResultsMeta {
            experiment: "synthetic".into(),
            config_hash: None,
            split_hash: Some("abc123".into()),
            created: Some("2026-11-26T00:00:00Z".into()),
            tool_version: "sizespec test".into(),
            converted_from_old: false,
            dataset: None,
            failed: Vec::new(),
        }),
        entries: BTreeMap::new(),
    };
    for (key, right, mem, tps, latency) in MODELS {
        let rows: Vec<PredictionRow> = (0..200).map(|i| row(i, right(i), latency)).collect();
        let lines: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        write(
            &dir.join("predictions").join(format!("{key}.jsonl")),
            &(lines.join("\n") + "\n"),
        );
        let (model_type, _, training) = parse_result_key(key).unwrap();
        let finetuned = training == TrainingStatus::Finetuned;
        results.entries.insert(
            key.into(),
            ResultEntry {
                model_type,
                size: "8B".into(),
                training,
                model_name: key.into(),
                metrics: shared::metrics::compute(&rows, 40.0),
                missing_metrics: vec![],
                performance: Performance {
                    load_time_s: Some(12.5),
                    eval_time_s: Some(40.0),
                    samples_per_s: Some(5.0),
                    tokens_per_s: Some(tps),
                    peak_memory_mib: Some(mem),
                    device_name: Some("NVIDIA H100".into()),
                },
                // The finetuned model's training figures come from training/<key>.json only.
                training_metrics: finetuned.then(TrainingMetrics::default),
                extra: BTreeMap::new(),
            },
        );
    }
    results.write(&dir.join("results.json")).unwrap();
    let curve: Vec<_> = (1..=10)
        .map(|s| {
            let val = (s % 5 == 0).then(|| 1.6 / (s as f64).sqrt());
            serde_json::json!({"step": s * 10, "train_loss": 2.0 / (s as f64).sqrt(), "validation_loss": val})
        })
        .collect();
    write(
        &dir.join("training/SLM_Small-3B_finetuned.json"),
        &serde_json::json!({"train_s": 600.0, "steps": 100, "tokens_per_s": 1500.0, "peak_memory_mib": 21000,
                            "final_train_loss": 0.63, "best_validation_loss": 0.72, "curve": curve})
        .to_string(),
    );
    if with_counts {
        let counts: BTreeMap<&str, u64> = CODES.iter().map(|c| (c.0, c.2)).collect();
        write(
            &dir.join("train_code_counts.json"),
            &serde_json::to_string(&counts).unwrap(),
        );
    }
    write(
        &dir.join("config.resolved.toml"),
        "name = \"synthetic\"\n\n[evaluation]\nbootstrap_resamples = 1500\n",
    );
}

/// The `[a, b]` of "95% CI [a, b]" in a sentence.
fn ci_of(sentence: &str) -> (f64, f64) {
    let start = sentence.find("CI [").unwrap() + 4;
    let end = start + sentence[start..].find(']').unwrap();
    let (a, b) = sentence[start..end].split_once(", ").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn verdict_has_the_expected_direction_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    let input = load(dir.path()).unwrap();
    let a = analyse(
        &input,
        &BootstrapConfig {
            resamples: 1000,
            confidence: 0.95,
            seed: 42,
        },
    );
    assert_eq!(a.comparisons.len(), 2, "the finetuned SLM vs each LLM");

    let big = &a.comparisons[0];
    assert_eq!(
        (big.first.as_str(), big.second.as_str()),
        ("Small-3B LoRA", "Big-8B zero-shot")
    );
    assert_eq!(big.outcome, Outcome::FirstBetter);
    // 60 discordant pairs, all one way: chi-square (|60-0|-1)^2/60 = 58.02, p = 2.6e-14 (scipy).
    assert_eq!((big.mcnemar.only_a, big.mcnemar.only_b), (60, 0));
    assert!(
        big.sentence.starts_with(
            "Small-3B LoRA beats Big-8B zero-shot on exact match by +30.0 pts, 95% CI ["
        ),
        "{}",
        big.sentence
    );
    assert!(
        big.sentence
            .ends_with("McNemar p < 0.0001 (n = 200 paired samples)."),
        "{}",
        big.sentence
    );
    let (lo, hi) = ci_of(&big.sentence);
    assert!(
        lo > 20.0 && lo < 30.0 && hi > 30.0 && hi < 40.0,
        "CI [{lo}, {hi}]"
    );

    let other = &a.comparisons[1];
    assert_eq!(other.outcome, Outcome::NoSignificantDifference);
    // b = 50, c = 40: chi2 = 81/90 = 0.9, scipy chi2.sf(0.9, 1) = 0.34278171114790873.
    assert_eq!((other.mcnemar.only_a, other.mcnemar.only_b), (50, 40));
    assert!((other.mcnemar.p_value - 0.342_781_711_147_908_7).abs() < 1e-9);
    assert!(
        other.sentence.starts_with(
            "No significant difference between Small-3B LoRA and Other-7B zero-shot on exact match: +5.0 pts, 95% CI ["
        ),
        "{}",
        other.sentence
    );
    assert!(
        other.sentence.contains("McNemar p = 0.343"),
        "{}",
        other.sentence
    );
    let (lo, hi) = ci_of(&other.sentence);
    assert!(lo < 0.0 && hi > 0.0);

    assert!(
        a.headline
            .starts_with("Not clearly: of 2 small-vs-large comparisons"),
        "{}",
        a.headline
    );
    assert_eq!(a.finetuning_effect.len(), 1);
    assert_eq!(a.finetuning_effect[0].outcome, Outcome::FirstBetter);
    assert_eq!(a.zero_shot_comparisons.len(), 2);
}

#[test]
fn point_estimates_agree_with_shared_metrics() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    let input = load(dir.path()).unwrap();
    let a = analyse(
        &input,
        &BootstrapConfig {
            resamples: 1000,
            confidence: 0.95,
            seed: 42,
        },
    );
    for (m, s) in input.models.iter().zip(&a.models) {
        let reference = shared::metrics::compute(&m.rows, 1.0);
        let [exact, category, f1] = s.estimates.map(Option::unwrap);
        assert!(
            (exact.point - reference.exact_match).abs() < 1e-12,
            "{}",
            s.key
        );
        assert!(
            (category.point - reference.category_match).abs() < 1e-12,
            "{}",
            s.key
        );
        assert!((f1.point - reference.macro_f1).abs() < 1e-12, "{}", s.key);
        for e in [exact, category, f1] {
            assert!(e.lo <= e.point && e.point <= e.hi, "{}: {e:?}", s.key);
        }
    }
}

#[test]
fn breakdowns_use_train_counts_and_chapters() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    let a = analyse(&load(dir.path()).unwrap(), &BootstrapConfig::default());
    let f = a.by_frequency.expect("train_code_counts.json is present");
    let sizes: Vec<(String, usize)> = f
        .rows
        .iter()
        .map(|r| (r.group.clone(), r.samples))
        .collect();
    // 4 frequent codes, 4 rare, 2 unseen; 20 samples each.
    assert_eq!(
        sizes.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![80, 80, 40],
        "{sizes:?}"
    );
    assert!(sizes[2].0.starts_with("unseen"));
    // Unseen codes N390 (i%10 = 6) and C50911 (9): Small-3B LoRA (right when i%10 < 6) gets none.
    let lora = f.models.iter().position(|m| m == "Small-3B LoRA").unwrap();
    assert_eq!(f.rows[2].exact_pct[lora], Some(0.0));
    assert_eq!(
        a.by_chapter.rows.len(),
        10,
        "one row per chapter of the ten codes"
    );
    assert!(
        a.by_chapter.rows[0]
            .group
            .starts_with("2 (C00–D49) Neoplasms"),
        "{}",
        a.by_chapter.rows[0].group
    );
}

#[test]
fn report_files_exist_are_self_contained_and_rebuild_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    let paths = build(dir.path()).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert_eq!(
        paths.plots.len(),
        8,
        "accuracy, cost, efficiency, training_loss × png, svg"
    );
    for p in &paths.plots {
        assert!(
            std::fs::metadata(p).unwrap().len() > 1000,
            "{}",
            p.display()
        );
    }
    // Verdict first, then the rest; images inline, nothing fetched.
    let verdict = html.find("Small-3B LoRA beats Big-8B zero-shot").unwrap();
    assert!(verdict < html.find("<h2>Metrics</h2>").unwrap());
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(
        !html.contains("src=\"http")
            && !html.contains("href=\"http")
            && !html.contains("<script src")
    );
    assert!(html.contains("abc123") && html.contains("bootstrap_resamples = 1500"));
    assert!(
        html.contains("1500 resamples"),
        "the config's resample count is used"
    );
    assert!(md.contains("![Size vs specialisation](plots/accuracy.png)"));
    assert!(md.contains("| Small-3B LoRA | small, LoRA | 200 | 60.0 ["));

    let before: Vec<Vec<u8>> = [&paths.html, &paths.markdown]
        .into_iter()
        .chain(&paths.plots)
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let again = build(dir.path()).unwrap();
    assert_eq!(again, paths);
    let after: Vec<Vec<u8>> = [&again.html, &again.markdown]
        .into_iter()
        .chain(&again.plots)
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "rebuilding changed a file");

    // For looking at the output by hand: SIZESPEC_REPORT_DEMO=<dir> copies the folder there.
    if let Ok(demo) = std::env::var("SIZESPEC_REPORT_DEMO") {
        let demo = Path::new(&demo);
        synthetic_dir(demo, true);
        build(demo).unwrap();
    }
}

#[test]
fn missing_counts_drop_the_frequency_breakdown_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), false);
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(paths.markdown).unwrap();
    assert!(md.contains("train_code_counts.json is missing"));
    assert!(!md.contains("frequency in the train split"));
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ReportError::NoPredictions { .. })
    ));
    write(
        &dir.path().join("predictions/LLM_X_untrained.jsonl"),
        "{\"sample_id\": 1}\n",
    );
    let e = build(dir.path()).unwrap_err();
    assert!(
        matches!(e, ReportError::PredictionLine { line: 1, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("LLM_X_untrained.jsonl line 1"),
        "{e}"
    );
}

#[test]
fn an_old_shape_results_file_alone_gives_a_point_estimate_report() {
    // The seed's old shape, percent rates (as `shared::results` tests use), no predictions at all.
    let dir = tempfile::tempdir().unwrap();
    let old = serde_json::json!({
        "Baseline_LLM_meta-llama/Meta-Llama-3.1-8B-Instruct": {
            "model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct",
            "accuracy": 3.42, "category_accuracy": 24.6, "macro_f1": 1.9,
            "num_samples": 1024, "avg_latency": 1.25, "tokens_per_second": 9.5, "memory_gb": 6.5, "load_time": 40.2
        },
        "Finetuned_SLM": {
            "model_name": "Qwen/Qwen2.5-3B-Instruct", "accuracy": 11.9, "num_samples": 1024,
            "training_time": 5400.0, "train_loss": 0.35, "eval_loss": 0.6, "global_step": 900
        },
        "timestamp": "2025-08-01T10:00:00"
    });
    write(&dir.path().join("results.json"), &old.to_string());
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("the best small model, Qwen-3B LoRA, is above the best large model, Llama-8B zero-shot, on exact match (11.9% vs 3.4%)"),
        "{md}"
    );
    assert!(md.contains("| Llama-8B zero-shot | large, zero-shot | 1024 | 3.4 (no CI) | 24.6 (no CI) | 1.9 (no CI) |"), "{md}");
    assert!(md.contains("converted from the old results shape"));
    // The finetuned entry recorded no category match: shown as not measured, not as 0.
    assert!(
        md.contains("| Qwen-3B LoRA | small, LoRA | 1024 | 11.9 (no CI) | – |"),
        "{md}"
    );
}

#[test]
fn the_configured_confidence_level_is_used_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    write(
        &dir.path().join("config.resolved.toml"),
        "name = \"synthetic\"\n\n[evaluation]\nconfidence = 0.9\n",
    );
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert!(
        md.contains("exact match % [90% CI]") && !md.contains("95% CI"),
        "{md}"
    );
    assert!(md.contains("by +30.0 pts, 90% CI ["));
    assert!(
        html.contains("accuracy per model (90% CI)"),
        "the plot title follows the config"
    );
}

#[test]
fn the_configured_bootstrap_resamples_are_used_and_a_low_count_is_said() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    write(
        &dir.path().join("config.resolved.toml"),
        "name = \"synthetic\"\n\n[evaluation]\nbootstrap_resamples = 100\n",
    );
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("percentile bootstrap, 100 resamples"), "{md}");
    assert!(
        md.contains("bootstrap_resamples = 100 (as configured) is below 1000"),
        "{md}"
    );
}

#[test]
fn zero_bootstrap_resamples_mean_no_intervals() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    write(
        &dir.path().join("config.resolved.toml"),
        "name = \"synthetic\"\n\n[evaluation]\nbootstrap_resamples = 0\n",
    );
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert!(md.contains("Confidence intervals: none"), "{md}");
    assert!(md.contains("(no CI)"), "{md}");
    assert!(!md.contains("NaN") && !html.contains("NaN"), "{md}");
    // McNemar decides: the synthetic finetuned SLM is 30 points ahead of the 8B model.
    assert!(
        md.contains("beats") && md.contains("(no bootstrap CI), McNemar p"),
        "{md}"
    );
}

#[test]
fn failed_models_are_named_and_the_verdict_says_partial() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_dir(dir.path(), true);
    let path = dir.path().join("results.json");
    let mut r = Results::read(&path).unwrap();
    r.meta.as_mut().unwrap().failed = vec![shared::results::FailedModel {
        model: "LLM_Huge-70B_untrained".into(),
        task: "eval:LLM_Huge-70B".into(),
        error: "failed 3 times; last error: out of memory".into(),
    }];
    r.write(&path).unwrap();
    let paths = build(dir.path()).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert!(
        md.contains("**Partial result: 1 of 5 planned models failed"),
        "{md}"
    );
    let line = "Huge-70B zero-shot: task `eval:LLM_Huge-70B` failed: failed 3 times; last error: out of memory";
    assert!(md.contains(line), "{md}");
    assert!(
        html.contains("Partial result: 1 of 5 planned models failed")
            && html.contains("<code>eval:LLM_Huge-70B</code>"),
        "{html}"
    );
}
