//! Evaluation metrics over [`PredictionRow`]s: exact / 3-char category / chapter match, invalid-code
//! rate, micro / macro / weighted F1 for single-label coding, latency percentiles and throughput.
//!
//! Conventions, stated once (`docs/data.md`, pitfalls 7 and 8):
//! - Each row has exactly one reference label and at most one predicted label (the extracted code).
//!   A row with no valid extracted code is wrong for its reference (a false negative) and predicts
//!   no label (no false positive anywhere).
//! - Per label L: TP = rows with reference L predicted L; FP = rows predicted L with another
//!   reference; FN = rows with reference L not predicted L (including missing predictions);
//!   F1(L) = 2·TP / (2·TP + FP + FN).
//! - Micro-F1 pools TP / FP / FN over all labels: 2·TP / (rows + rows with a prediction). With no
//!   missing predictions it equals exact-match accuracy.
//! - Macro-F1 ([`EvalMetrics::macro_f1`]) is the unweighted mean of F1(L) over the labels that
//!   **occur** in these rows: in the references or in the predictions. Codes of the code system that
//!   occur in neither are not averaged in (counting them as F1 = 0 is the error Edin et al. 2023,
//!   arXiv 2304.10909, found in earlier work). It is the mean of per-label F1 scores, not the F1 of
//!   macro precision and macro recall (Opitz & Burst 2019, arXiv 1911.03347). When every row has a
//!   prediction it equals scikit-learn's `f1_score(average="macro")`.
//!   [`EvalMetrics::macro_f1_reference_labels`] averages over the reference labels only (the labels
//!   of the test set, as Edin et al. do): a prediction of a code absent from the references still
//!   counts as a miss for its row's reference code but adds no zero term of its own.
//! - Weighted-F1 weights F1(L) by L's support (its count among the references), so labels that
//!   only occur as predictions get weight 0.
//! - Latency percentiles use the nearest-rank method: the p-th percentile of n sorted values is the
//!   value at 1-based rank ⌈p/100 · n⌉ (always an observed latency, no interpolation).
//! - Tokens/s counts generated tokens only (no prompt, no padding) over the wall time given.
//!
//! Every rate is a fraction in [0, 1]; with no rows every field is 0.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataset::Record;
use crate::icd10;
use crate::task::PredictionRow;

/// Metrics of one evaluation; every rate is a fraction in [0, 1] (multiply by 100 for percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Rows evaluated.
    pub samples: usize,
    /// Rows where a valid ICD-10-CM code was extracted.
    pub valid_predictions: usize,
    /// Extracted code == reference code (both normalised).
    pub exact_match: f64,
    /// Same 3-character category (`E11.9` vs `E11.65`); a missing prediction never matches.
    pub category_match: f64,
    /// Same ICD-10-CM chapter; a missing prediction, or a code outside every chapter, never matches.
    pub chapter_match: f64,
    /// Rows where no valid code could be extracted from the output.
    pub invalid_code_rate: f64,
    /// Micro-averaged F1 over codes (pooled TP / FP / FN).
    pub micro_f1: f64,
    /// Macro-averaged F1: mean of per-code F1 over codes occurring in references ∪ predictions.
    pub macro_f1: f64,
    /// Number of codes averaged in [`Self::macro_f1`] (|references ∪ predictions|).
    pub macro_f1_labels: usize,
    /// Macro-averaged F1 over the codes occurring in the references only.
    pub macro_f1_reference_labels: f64,
    /// Per-code F1 weighted by reference support.
    pub weighted_f1: f64,
    /// Mean per-sample latency, ms.
    pub latency_ms_mean: f64,
    /// Median latency, ms (nearest-rank).
    pub latency_ms_p50: f64,
    /// 95th percentile latency, ms (nearest-rank).
    pub latency_ms_p95: f64,
    /// 99th percentile latency, ms (nearest-rank).
    pub latency_ms_p99: f64,
    /// Wall time of the whole evaluation, seconds (as passed to [`compute`]).
    pub wall_seconds: f64,
    /// `samples / wall_seconds`.
    pub samples_per_s: f64,
    /// Generated tokens (no prompt, no padding) summed over rows.
    pub generated_tokens: u64,
    /// Prompt tokens (no padding) summed over rows.
    pub prompt_tokens: u64,
    /// `generated_tokens / wall_seconds`.
    pub generated_tokens_per_s: f64,
}

/// F1 averages over single-label predictions (see the module docs for the exact definitions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct F1Scores {
    pub micro: f64,
    /// Over labels in references ∪ predictions.
    pub macro_occurring: f64,
    pub macro_occurring_labels: usize,
    /// Over labels in the references.
    pub macro_reference: f64,
    /// Weighted by reference support.
    pub weighted: f64,
}

#[derive(Default, Clone, Copy)]
struct LabelCounts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl LabelCounts {
    fn f1(self) -> f64 {
        let denom = 2 * self.tp + self.fp + self.fn_;
        if denom == 0 {
            0.0
        } else {
            (2 * self.tp) as f64 / denom as f64
        }
    }

    fn support(self) -> u64 {
        self.tp + self.fn_
    }
}

/// F1 averages over `(reference, prediction)` pairs; `None` is a missing prediction.
/// Labels are compared as given (callers pass normalised codes).
pub fn f1_scores<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> F1Scores {
    // BTreeMap: summation order, hence the last bits of the result, does not depend on hashing.
    let mut labels: BTreeMap<&str, LabelCounts> = BTreeMap::new();
    let (mut rows, mut predicted, mut tp_total) = (0u64, 0u64, 0u64);
    for (reference, prediction) in pairs {
        rows += 1;
        match prediction {
            Some(p) if p == reference => {
                labels.entry(reference).or_default().tp += 1;
                tp_total += 1;
            }
            Some(p) => {
                labels.entry(reference).or_default().fn_ += 1;
                labels.entry(p).or_default().fp += 1;
            }
            None => labels.entry(reference).or_default().fn_ += 1,
        }
        predicted += u64::from(prediction.is_some());
    }
    if rows == 0 {
        return F1Scores {
            micro: 0.0,
            macro_occurring: 0.0,
            macro_occurring_labels: 0,
            macro_reference: 0.0,
            weighted: 0.0,
        };
    }
    let micro = (2 * tp_total) as f64 / (rows + predicted) as f64;
    let macro_occurring = labels.values().map(|c| c.f1()).sum::<f64>() / labels.len() as f64;
    let reference_labels: Vec<LabelCounts> = labels
        .values()
        .copied()
        .filter(|c| c.support() > 0)
        .collect();
    let macro_reference =
        reference_labels.iter().map(|c| c.f1()).sum::<f64>() / reference_labels.len() as f64;
    let weighted = reference_labels
        .iter()
        .map(|c| c.support() as f64 * c.f1())
        .sum::<f64>()
        / rows as f64;
    F1Scores {
        micro,
        macro_occurring,
        macro_occurring_labels: labels.len(),
        macro_reference,
        weighted,
    }
}

/// The nearest-rank percentile (`p` in (0, 100]) of `values`: the value at 1-based rank ⌈p/100 · n⌉
/// of the sorted values; `None` when `values` is empty.
pub fn percentile_nearest_rank(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(nearest_rank_sorted(&sorted, p))
}

fn nearest_rank_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // Multiply before dividing and allow a little float slack, so that e.g. p95 of 20 values is
    // rank 19 and not 20 because 0.95 · 20 came out as 19.000000000000004.
    let rank = ((p.clamp(0.0, 100.0) * n as f64 / 100.0) - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

fn rate(count: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// All metrics of one evaluation. `wall_seconds` is the evaluation's wall time (for samples/s and
/// tokens/s; non-positive gives 0 throughput). The rows' `correct` flags are not trusted: references
/// and extracted codes are normalised again and an extracted code outside the ICD-10-CM release
/// counts as no prediction, so rows from older files or other extractors are scored the same way.
pub fn compute(rows: &[PredictionRow], wall_seconds: f64) -> EvalMetrics {
    let pairs: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                icd10::normalize(&r.reference),
                r.extracted
                    .as_deref()
                    .map(icd10::normalize)
                    .filter(|c| icd10::is_valid(c)),
            )
        })
        .collect();
    let n = rows.len();
    let mut exact = 0;
    let mut category = 0;
    let mut chapter = 0;
    let mut valid = 0;
    for (reference, prediction) in &pairs {
        let Some(prediction) = prediction else {
            continue;
        };
        valid += 1;
        exact += usize::from(prediction == reference);
        category += usize::from(icd10::category(prediction) == icd10::category(reference));
        let same_chapter = match (icd10::chapter(prediction), icd10::chapter(reference)) {
            (Some(a), Some(b)) => a.number == b.number,
            _ => false,
        };
        chapter += usize::from(same_chapter);
    }
    let f1 = f1_scores(pairs.iter().map(|(r, p)| (r.as_str(), p.as_deref())));

    let mut latencies: Vec<f64> = rows.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            nearest_rank_sorted(&latencies, p)
        }
    };
    let latency_ms_mean = if n == 0 {
        0.0
    } else {
        latencies.iter().sum::<f64>() / n as f64
    };
    let generated_tokens: u64 = rows.iter().map(|r| u64::from(r.generated_tokens)).sum();
    let prompt_tokens: u64 = rows.iter().map(|r| u64::from(r.prompt_tokens)).sum();

    EvalMetrics {
        samples: n,
        valid_predictions: valid,
        exact_match: rate(exact, n),
        category_match: rate(category, n),
        chapter_match: rate(chapter, n),
        invalid_code_rate: rate(n - valid, n),
        micro_f1: f1.micro,
        macro_f1: f1.macro_occurring,
        macro_f1_labels: f1.macro_occurring_labels,
        macro_f1_reference_labels: f1.macro_reference,
        weighted_f1: f1.weighted,
        latency_ms_mean,
        latency_ms_p50: pct(50.0),
        latency_ms_p95: pct(95.0),
        latency_ms_p99: pct(99.0),
        wall_seconds,
        samples_per_s: per_second(n as f64, wall_seconds),
        generated_tokens,
        prompt_tokens,
        generated_tokens_per_s: per_second(generated_tokens as f64, wall_seconds),
    }
}

/// Generation measurements of one sample, as the agent's engine reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Wall time from the batch's start to this sample's last token, ms.
    pub latency_ms: f64,
    /// Generated tokens (no padding, no prompt), including the stop token if one was produced.
    pub generated_tokens: u32,
    /// Prompt tokens (no padding).
    pub prompt_tokens: u32,
}

/// The prediction row for one sample's model output: the first valid code is extracted with
/// [`icd10::extract`] and compared with the record's normalised code. Every evaluation builds its
/// rows here so that extraction and `correct` mean the same thing for every model.
pub fn prediction_row(record: &Record, raw_output: &str, stats: GenerationStats) -> PredictionRow {
    let extracted = icd10::extract(raw_output);
    let reference = icd10::normalize(&record.code);
    PredictionRow {
        sample_id: record.id.clone(),
        correct: extracted.as_deref() == Some(reference.as_str()),
        reference,
        raw_output: raw_output.to_string(),
        extracted,
        latency_ms: stats.latency_ms,
        generated_tokens: stats.generated_tokens,
        prompt_tokens: stats.prompt_tokens,
    }
}

#[cfg(test)]
mod tests;
