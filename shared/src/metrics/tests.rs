//! Hand-computed expectations for `shared::metrics` (the arithmetic is in the comments).
use super::*;
use crate::dataset::Record;

fn row(
    reference: &str,
    extracted: Option<&str>,
    latency_ms: f64,
    generated_tokens: u32,
) -> PredictionRow {
    PredictionRow {
        sample_id: format!("s-{reference}-{latency_ms}"),
        reference: reference.to_string(),
        raw_output: extracted.unwrap_or("no idea").to_string(),
        extracted: extracted.map(str::to_string),
        correct: extracted == Some(reference),
        latency_ms,
        generated_tokens,
        prompt_tokens: 100,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn micro_macro_weighted_differ_with_missing_and_prediction_only_labels() {
    // ref → pred:  A→A, A→A, A→A, A→B, B→B, C→(none), C→A, D→E
    // A: TP 3, FP 1 (C→A), FN 1 (A→B)   F1 = 6 / (6+1+1) = 0.75
    // B: TP 1, FP 1 (A→B), FN 0         F1 = 2 / 3
    // C: TP 0, FP 0, FN 2               F1 = 0
    // D: TP 0, FP 0, FN 1               F1 = 0
    // E: TP 0, FP 1, FN 0 (pred only)   F1 = 0
    // micro = 2·TP / (rows + predicted) = 2·4 / (8 + 7) = 8/15
    // macro over refs ∪ preds {A..E} = (0.75 + 2/3) / 5 = 17/60
    // macro over refs {A..D}         = (0.75 + 2/3) / 4 = 17/48
    // weighted by support (A 4, B 1, C 2, D 1; 8 rows) = (4·0.75 + 1·2/3) / 8 = (11/3) / 8 = 11/24
    let pairs = [
        ("A", Some("A")),
        ("A", Some("A")),
        ("A", Some("A")),
        ("A", Some("B")),
        ("B", Some("B")),
        ("C", None),
        ("C", Some("A")),
        ("D", Some("E")),
    ];
    let f1 = f1_scores(pairs);
    assert!(close(f1.micro, 8.0 / 15.0), "{f1:?}");
    assert!(close(f1.macro_occurring, 17.0 / 60.0), "{f1:?}");
    assert_eq!(f1.macro_occurring_labels, 5);
    assert!(close(f1.macro_reference, 17.0 / 48.0), "{f1:?}");
    assert!(close(f1.weighted, 11.0 / 24.0), "{f1:?}");
    assert!(
        f1.micro != f1.macro_occurring
            && f1.macro_occurring != f1.weighted
            && f1.micro != f1.weighted
    );
}

#[test]
fn micro_f1_equals_accuracy_without_missing_predictions() {
    // A→A, A→B, B→B, C→C: accuracy 3/4; micro = 2·3 / (4 + 4) = 3/4.
    // A: 2/(2+0+1) = 2/3; B: 2/(2+1+0) = 2/3; C: 1. macro = (2/3 + 2/3 + 1)/3 = 7/9.
    // weighted = (2·2/3 + 1·2/3 + 1·1)/4 = 3/4.
    let f1 = f1_scores([
        ("A", Some("A")),
        ("A", Some("B")),
        ("B", Some("B")),
        ("C", Some("C")),
    ]);
    assert!(close(f1.micro, 0.75));
    assert!(close(f1.macro_occurring, 7.0 / 9.0));
    assert!(close(f1.weighted, 0.75));
}

#[test]
fn all_missing_predictions_score_zero_not_nan() {
    let f1 = f1_scores([("A", None), ("B", None)]);
    assert_eq!((f1.micro, f1.macro_occurring, f1.weighted), (0.0, 0.0, 0.0));
    assert_eq!(f1.macro_occurring_labels, 2);
    let empty = f1_scores(std::iter::empty());
    assert_eq!(empty.micro, 0.0);
}

#[test]
fn nearest_rank_percentiles_on_a_known_list() {
    // 1..=20 shuffled. Ranks: p50 ⌈10⌉ = 10 → 10; p95 ⌈19⌉ = 19 → 19; p99 ⌈19.8⌉ = 20 → 20.
    let values: Vec<f64> = [
        7, 3, 20, 1, 15, 9, 12, 2, 18, 5, 11, 4, 16, 8, 19, 6, 13, 10, 17, 14,
    ]
    .iter()
    .map(|&v| f64::from(v))
    .collect();
    assert_eq!(percentile_nearest_rank(&values, 50.0), Some(10.0));
    assert_eq!(percentile_nearest_rank(&values, 95.0), Some(19.0));
    assert_eq!(percentile_nearest_rank(&values, 99.0), Some(20.0));
    assert_eq!(percentile_nearest_rank(&values, 100.0), Some(20.0));
    // 5 values: p50 ⌈2.5⌉ = 3 → 30; p95 ⌈4.75⌉ = 5 → 50; p1 ⌈0.05⌉ = 1 → 10.
    let five = [50.0, 10.0, 40.0, 20.0, 30.0];
    assert_eq!(percentile_nearest_rank(&five, 50.0), Some(30.0));
    assert_eq!(percentile_nearest_rank(&five, 95.0), Some(50.0));
    assert_eq!(percentile_nearest_rank(&five, 1.0), Some(10.0));
    assert_eq!(percentile_nearest_rank(&[], 50.0), None);
}

#[test]
fn compute_matches_categories_chapters_and_throughput() {
    // ref → extracted:
    //   E11.9 → E11.9    exact, category E11, chapter 4
    //   E11.9 → E11.65   category E11, chapter 4 (E00-E89)
    //   E11.9 → E66.01   chapter 4 only
    //   I10   → J02.9    nothing (chapter 9 vs 10)
    //   J02.9 → none     invalid, nothing
    // exact 1/5, category 2/5, chapter 3/5, invalid 1/5.
    let rows = vec![
        row("E119", Some("E119"), 100.0, 4),
        row("E119", Some("E1165"), 200.0, 5),
        row("E119", Some("E6601"), 300.0, 6),
        row("I10", Some("J029"), 400.0, 3),
        row("J029", None, 500.0, 16),
    ];
    let m = compute(&rows, 2.0);
    assert_eq!(m.samples, 5);
    assert_eq!(m.valid_predictions, 4);
    assert!(close(m.exact_match, 0.2));
    assert!(close(m.category_match, 0.4));
    assert!(close(m.chapter_match, 0.6));
    assert!(close(m.invalid_code_rate, 0.2));
    // micro = 2·1 / (5 + 4) = 2/9
    assert!(close(m.micro_f1, 2.0 / 9.0));
    // labels E119 (F1 2/(2+0+2) = 1/2), E1165, E6601, I10, J029 (all 0): macro = 0.5/5 = 0.1
    assert!(close(m.macro_f1, 0.1));
    assert_eq!(m.macro_f1_labels, 5);
    // reference labels E119, I10, J029: 0.5/3; weighted = 3·0.5/5 = 0.3
    assert!(close(m.macro_f1_reference_labels, 0.5 / 3.0));
    assert!(close(m.weighted_f1, 0.3));
    // latencies 100..500: mean 300, p50 rank ⌈2.5⌉ = 3 → 300, p95 ⌈4.75⌉ = 5 → 500
    assert!(close(m.latency_ms_mean, 300.0));
    assert_eq!(
        (m.latency_ms_p50, m.latency_ms_p95, m.latency_ms_p99),
        (300.0, 500.0, 500.0)
    );
    // 4+5+6+3+16 = 34 generated tokens over 2 s; prompt tokens (5·100) are not counted.
    assert_eq!(m.generated_tokens, 34);
    assert_eq!(m.prompt_tokens, 500);
    assert!(close(m.generated_tokens_per_s, 17.0));
    assert!(close(m.samples_per_s, 2.5));
}

#[test]
fn compute_normalises_dotted_and_lower_case_codes() {
    // A row written with dotted codes (older files) still counts as exact.
    let rows = vec![
        row("E11.9", Some("e119"), 10.0, 1),
        row("U071", Some("U07.1"), 10.0, 1),
    ];
    let m = compute(&rows, 1.0);
    assert!(close(m.exact_match, 1.0));
    assert!(close(m.micro_f1, 1.0));
    assert!(close(m.macro_f1, 1.0));
}

#[test]
fn compute_on_nothing_is_all_zero_and_serialisable() {
    let m = compute(&[], 0.0);
    assert_eq!(m.samples, 0);
    assert_eq!(
        (m.exact_match, m.micro_f1, m.latency_ms_p95, m.samples_per_s),
        (0.0, 0.0, 0.0, 0.0)
    );
    let json = serde_json::to_string(&m).unwrap();
    let back: EvalMetrics = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert!(json.contains("\"macro_f1_reference_labels\""));
}

#[test]
fn zero_wall_time_gives_zero_throughput_not_infinity() {
    let m = compute(&[row("I10", Some("I10"), 1.0, 3)], 0.0);
    assert_eq!((m.samples_per_s, m.generated_tokens_per_s), (0.0, 0.0));
    assert!(close(m.exact_match, 1.0));
}

#[test]
fn an_extracted_code_outside_the_release_counts_as_invalid() {
    // ZZZ99 is not an ICD-10-CM code: the row is an invalid output, not a wrong prediction.
    let rows = vec![
        row("I10", Some("ZZZ99"), 1.0, 2),
        row("I10", Some("I10"), 1.0, 2),
    ];
    let m = compute(&rows, 1.0);
    assert_eq!(m.valid_predictions, 1);
    assert!(close(m.invalid_code_rate, 0.5));
    // labels: I10 only (TP 1, FN 1) → F1 2/3; no ZZZ99 label enters the macro average.
    assert_eq!(m.macro_f1_labels, 1);
    assert!(close(m.macro_f1, 2.0 / 3.0));
}

#[test]
fn prediction_row_extracts_the_first_valid_code_and_scores_it() {
    let record = Record {
        id: "medsynth-17".into(),
        dialogue: "d".into(),
        note: String::new(),
        code: "J029".into(),
        description: "Acute pharyngitis, unspecified".into(),
    };
    let stats = GenerationStats {
        latency_ms: 12.5,
        generated_tokens: 6,
        prompt_tokens: 140,
    };
    let right = prediction_row(&record, "The code is **J02.9**.", stats);
    assert_eq!(right.sample_id, "medsynth-17");
    assert_eq!(right.reference, "J029");
    assert_eq!(right.extracted.as_deref(), Some("J029"));
    assert!(right.correct);
    assert_eq!(
        (
            right.latency_ms,
            right.generated_tokens,
            right.prompt_tokens
        ),
        (12.5, 6, 140)
    );
    let wrong = prediction_row(&record, "I10", stats);
    assert_eq!(wrong.extracted.as_deref(), Some("I10"));
    assert!(!wrong.correct);
    let none = prediction_row(&record, "I am not sure.", stats);
    assert_eq!(none.extracted, None);
    assert!(!none.correct);
    assert_eq!(none.raw_output, "I am not sure.");
    let m = compute(&[right, wrong, none], 1.0);
    assert!(close(m.exact_match, 1.0 / 3.0));
    assert!(close(m.invalid_code_rate, 1.0 / 3.0));
}
