//! The verdict: per-model CIs, SLM-vs-LLM comparisons with one sentence each, and breakdowns by
//! code frequency in the train split and by ICD-10-CM chapter.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use shared::icd10;
use shared::task::{ModelRole, PredictionRow};

use super::input::{ModelInput, ModelKey, ReportInput, Training};
use super::mcnemar::{McNemar, mcnemar};
use super::stats::{
    BootstrapConfig, Estimate, LabelIndex, SampleOutcome, bootstrap, paired_bootstrap,
};

/// A code seen at most this many times in the train split is "rare"; more often, "frequent";
/// never, "unseen". MedSynth has ~5 rows per code (≈4 in an 80% train split) and some with 10
/// (≈8): the threshold separates those two populations.
pub const RARE_MAX_TRAIN_COUNT: u64 = 5;

/// Where a reference code falls by its train-split frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrequencyBand {
    Frequent,
    Rare,
    Unseen,
}

impl FrequencyBand {
    pub fn of(count: u64) -> Self {
        match count {
            0 => FrequencyBand::Unseen,
            c if c <= RARE_MAX_TRAIN_COUNT => FrequencyBand::Rare,
            _ => FrequencyBand::Frequent,
        }
    }

    fn name(self) -> String {
        match self {
            FrequencyBand::Frequent => format!("frequent (> {RARE_MAX_TRAIN_COUNT} in train)"),
            FrequencyBand::Rare => format!("rare (1–{RARE_MAX_TRAIN_COUNT} in train)"),
            FrequencyBand::Unseen => "unseen (0 in train)".to_string(),
        }
    }
}

/// One model's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub key: String,
    pub display: String,
    pub role: ModelRole,
    pub training: Training,
    pub samples: usize,
    /// `Metric::ALL` order: exact match, category match, macro-F1 (fractions).
    /// `None` where `results.json` marks the metric as not measured.
    pub estimates: [Option<Estimate>; 3],
    pub precision: Precision,
    /// Samples with no valid code extracted (fraction).
    pub invalid_rate: Option<f64>,
    /// Mean per-sample latency, ms (from the predictions).
    pub mean_latency_ms: Option<f64>,
}

/// Where a model's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Precision {
    /// Per-sample predictions: bootstrap CIs and paired tests.
    Bootstrap,
    /// Only the aggregate metrics of `results.json` (e.g. converted from the old shape): the
    /// interval is the point itself and the model takes part in no test.
    PointOnly,
}

/// How a comparison came out (decided by the paired-bootstrap CI of the exact-match difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    FirstBetter,
    SecondBetter,
    NoSignificantDifference,
}

/// A paired comparison of two models on the samples both evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub first: String,
    pub second: String,
    pub samples: usize,
    /// first − second, `Metric::ALL` order (fractions).
    pub differences: [Estimate; 3],
    pub mcnemar: McNemar,
    pub outcome: Outcome,
    pub sentence: String,
}

/// A table of exact/category match per group and model.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub title: String,
    pub note: String,
    pub models: Vec<String>,
    pub rows: Vec<BreakdownRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakdownRow {
    pub group: String,
    /// Distinct samples in the group (over all models).
    pub samples: usize,
    /// Per model (same order as `Breakdown::models`): exact match %, or `None` with no samples.
    pub exact_pct: Vec<Option<f64>>,
    pub category_pct: Vec<Option<f64>>,
}

/// Everything the report shows, computed.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub headline: String,
    pub models: Vec<ModelStats>,
    /// The verdict's comparisons: each finetuned SLM (each SLM when none is finetuned) vs each LLM.
    pub comparisons: Vec<Comparison>,
    /// Context: each zero-shot SLM vs each LLM, when finetuned SLMs carry the verdict.
    pub zero_shot_comparisons: Vec<Comparison>,
    /// Each SLM finetuned vs the same SLM zero-shot.
    pub finetuning_effect: Vec<Comparison>,
    pub by_frequency: Option<Breakdown>,
    pub by_chapter: Breakdown,
    pub bootstrap: BootstrapConfig,
}

fn pct(x: f64) -> f64 {
    x * 100.0
}

/// A p-value as written in sentences.
pub fn format_p(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".to_string()
    } else if p < 1e-3 {
        format!("= {p:.4}")
    } else {
        format!("= {p:.3}")
    }
}

/// Scores rows exactly as `shared::metrics::compute` does (so the report's points equal the
/// results' metrics): codes normalised again, and an extracted code outside the ICD-10-CM release
/// counts as no prediction; the rows' own `correct` flags are not trusted.
fn outcomes_of(rows: &[PredictionRow], labels: &mut LabelIndex) -> Vec<SampleOutcome> {
    rows.iter()
        .map(|r| {
            let reference = icd10::normalize(&r.reference);
            let predicted = r
                .extracted
                .as_deref()
                .map(icd10::normalize)
                .filter(|c| icd10::is_valid(c));
            SampleOutcome {
                exact: predicted.as_deref() == Some(reference.as_str()),
                category: predicted
                    .as_deref()
                    .is_some_and(|p| icd10::category(p) == icd10::category(&reference)),
                reference: labels.intern(&reference),
                predicted: predicted.as_deref().map(|p| labels.intern(p)),
            }
        })
        .collect()
}

/// The one-sentence verdict of a comparison (exact match, percentage points).
fn sentence(
    first: &str,
    second: &str,
    d: &Estimate,
    t: &McNemar,
    n: usize,
    conf: f64,
) -> (Outcome, String) {
    let c = (conf * 100.0).round();
    let tail = format!("McNemar p {} (n = {n} paired samples)", format_p(t.p_value));
    if d.lo.is_nan() || d.hi.is_nan() {
        return without_ci(first, second, d.point, t, &tail, conf);
    }
    if !d.excludes_zero() {
        let s = format!(
            "No significant difference between {first} and {second} on exact match: {:+.1} pts, {c}% CI [{:+.1}, {:+.1}], {tail}.",
            pct(d.point),
            pct(d.lo),
            pct(d.hi)
        );
        return (Outcome::NoSignificantDifference, s);
    }
    let (outcome, winner, loser, p, lo, hi) = if d.lo > 0.0 {
        (Outcome::FirstBetter, first, second, d.point, d.lo, d.hi)
    } else {
        (Outcome::SecondBetter, second, first, -d.point, -d.hi, -d.lo)
    };
    let s = format!(
        "{winner} beats {loser} on exact match by {:+.1} pts, {c}% CI [{:+.1}, {:+.1}], {tail}.",
        pct(p),
        pct(lo),
        pct(hi)
    );
    (outcome, s)
}

/// The verdict of a comparison with no bootstrap (`bootstrap_resamples = 0`): McNemar's test at
/// the level `1 − conf` decides.
fn without_ci(
    first: &str,
    second: &str,
    point: f64,
    t: &McNemar,
    tail: &str,
    conf: f64,
) -> (Outcome, String) {
    if t.p_value >= 1.0 - conf || point == 0.0 {
        let s = format!(
            "No significant difference between {first} and {second} on exact match: {:+.1} pts (no bootstrap CI), {tail}.",
            pct(point)
        );
        return (Outcome::NoSignificantDifference, s);
    }
    let (outcome, winner, loser, p) = if point > 0.0 {
        (Outcome::FirstBetter, first, second, point)
    } else {
        (Outcome::SecondBetter, second, first, -point)
    };
    let s = format!(
        "{winner} beats {loser} on exact match by {:+.1} pts (no bootstrap CI), {tail}.",
        pct(p)
    );
    (outcome, s)
}

/// The verdict's opening when planned models failed: the comparisons are partial.
fn partial(failed: &[shared::results::FailedModel], reported: usize) -> Option<String> {
    if failed.is_empty() {
        return None;
    }
    let names: Vec<String> = failed
        .iter()
        .map(|f| ModelKey::parse(&f.model).map_or_else(|| f.model.clone(), |k| k.display()))
        .collect();
    let n = failed.len();
    Some(format!(
        "Partial result: {n} of {} planned models failed and take part in no comparison ({}).",
        n + reported,
        names.join(", ")
    ))
}

struct Scored<'a> {
    model: &'a ModelInput,
    outcomes: Vec<SampleOutcome>,
}

fn compare(a: &Scored, b: &Scored, cfg: &BootstrapConfig) -> Option<Comparison> {
    let pos: HashMap<&str, usize> = b
        .model
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.sample_id.as_str(), i))
        .collect();
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    for (i, r) in a.model.rows.iter().enumerate() {
        if let Some(&j) = pos.get(r.sample_id.as_str()) {
            oa.push(a.outcomes[i]);
            ob.push(b.outcomes[j]);
        }
    }
    if oa.is_empty() {
        return None;
    }
    let differences = paired_bootstrap(&oa, &ob, cfg);
    let ea: Vec<bool> = oa.iter().map(|o| o.exact).collect();
    let eb: Vec<bool> = ob.iter().map(|o| o.exact).collect();
    let test = mcnemar(&ea, &eb);
    let (first, second) = (a.model.key.display(), b.model.key.display());
    let (outcome, sentence) = sentence(
        &first,
        &second,
        &differences[0],
        &test,
        oa.len(),
        cfg.confidence,
    );
    Some(Comparison {
        first,
        second,
        samples: oa.len(),
        differences,
        mcnemar: test,
        outcome,
        sentence,
    })
}

fn breakdown(
    title: &str,
    note: String,
    scored: &[Scored],
    group_of: &dyn Fn(&PredictionRow) -> (String, String),
) -> Breakdown {
    // group sort key → (display name, sample ids, per-model (n, exact, category))
    type Cell = (usize, usize, usize);
    let mut groups: BTreeMap<String, (String, BTreeSet<&str>, Vec<Cell>)> = BTreeMap::new();
    for (m, s) in scored.iter().enumerate() {
        for (r, o) in s.model.rows.iter().zip(&s.outcomes) {
            let (sort, name) = group_of(r);
            let g = groups
                .entry(sort)
                .or_insert_with(|| (name, BTreeSet::new(), vec![(0, 0, 0); scored.len()]));
            g.1.insert(r.sample_id.as_str());
            let cell = &mut g.2[m];
            cell.0 += 1;
            cell.1 += usize::from(o.exact);
            cell.2 += usize::from(o.category);
        }
    }
    let rate = |k: usize, n: usize| (n > 0).then(|| 100.0 * k as f64 / n as f64);
    Breakdown {
        title: title.to_string(),
        note,
        models: scored.iter().map(|s| s.model.key.display()).collect(),
        rows: groups
            .into_values()
            .map(|(group, ids, cells)| BreakdownRow {
                group,
                samples: ids.len(),
                exact_pct: cells.iter().map(|c| rate(c.1, c.0)).collect(),
                category_pct: cells.iter().map(|c| rate(c.2, c.0)).collect(),
            })
            .collect(),
    }
}

fn headline(comparisons: &[Comparison], slm_count: usize, llm_count: usize) -> String {
    if comparisons.is_empty() {
        return "No small-vs-large comparison could be made: the results need at least one SLM and one LLM evaluated on the same samples.".to_string();
    }
    let wins = comparisons
        .iter()
        .filter(|c| c.outcome == Outcome::FirstBetter)
        .count();
    let losses = comparisons
        .iter()
        .filter(|c| c.outcome == Outcome::SecondBetter)
        .count();
    let mut firsts: Vec<&str> = comparisons.iter().map(|c| c.first.as_str()).collect();
    firsts.dedup();
    let beats_all: Vec<&str> = firsts
        .iter()
        .copied()
        .filter(|f| {
            let mine: Vec<_> = comparisons.iter().filter(|c| c.first == *f).collect();
            mine.len() == llm_count && mine.iter().all(|c| c.outcome == Outcome::FirstBetter)
        })
        .collect();
    let n = comparisons.len();
    if !beats_all.is_empty() {
        format!(
            "Yes: {} beat{} every large zero-shot model on exact match (each 95% CI of the difference excludes 0); {wins} of {n} small-vs-large comparisons favour the small model.",
            beats_all.join(" and "),
            if beats_all.len() == 1 { "s" } else { "" }
        )
    } else if losses == n {
        format!(
            "No: every large zero-shot model beats every small model on exact match ({n} of {n} comparisons, {slm_count} small × {llm_count} large)."
        )
    } else {
        let ties = n - wins - losses;
        let verb =
            |k: usize, one: &'static str, many: &'static str| if k == 1 { one } else { many };
        format!(
            "Not clearly: of {n} small-vs-large comparisons on exact match, {wins} {} the small model, {losses} the large zero-shot model, and {ties} {} no significant difference.",
            verb(wins, "favours", "favour"),
            verb(ties, "shows", "show")
        )
    }
}

/// A model known only from `results.json`'s aggregate metrics.
fn point_only(m: &ModelInput) -> Option<ModelStats> {
    let metrics = m.metrics.as_ref()?;
    let known = |name: &str, v: f64| (!m.missing_metrics.iter().any(|x| x == name)).then_some(v);
    let est = |name: &str, v: f64| {
        known(name, v).map(|p| Estimate {
            point: p,
            lo: p,
            hi: p,
        })
    };
    Some(ModelStats {
        key: m.key.key.clone(),
        display: m.key.display(),
        role: m.key.role,
        training: m.key.training,
        samples: metrics.samples,
        estimates: [
            est("exact_match", metrics.exact_match),
            est("category_match", metrics.category_match),
            est("macro_f1", metrics.macro_f1),
        ],
        precision: Precision::PointOnly,
        invalid_rate: known("invalid_code_rate", metrics.invalid_code_rate),
        mean_latency_ms: known("latency_ms_mean", metrics.latency_ms_mean),
    })
}

/// With no paired predictions: the best small and the best large model by point estimate.
fn point_headline(models: &[ModelStats]) -> Option<String> {
    let best = |pick: &dyn Fn(&ModelStats) -> bool| {
        models
            .iter()
            .filter(|m| pick(m))
            .filter_map(|m| Some((m, m.estimates[0]?.point)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let (small, s) = best(&|m| m.role == ModelRole::Slm)?;
    let (large, l) = best(&|m| m.role == ModelRole::Llm)?;
    let verb = if s > l {
        "above"
    } else if s < l {
        "below"
    } else {
        "level with"
    };
    Some(format!(
        "Point estimates only (no per-sample predictions, so no confidence intervals or tests): the best small model, {}, is {verb} the best large model, {}, on exact match ({:.1}% vs {:.1}%).",
        small.display,
        large.display,
        s * 100.0,
        l * 100.0
    ))
}

/// Computes the whole analysis. Models without predictions are left out of the statistics.
pub fn analyse(input: &ReportInput, cfg: &BootstrapConfig) -> Analysis {
    let mut labels = LabelIndex::default();
    let scored: Vec<Scored> = input
        .models
        .iter()
        .filter(|m| !m.rows.is_empty())
        .map(|m| Scored {
            model: m,
            outcomes: outcomes_of(&m.rows, &mut labels),
        })
        .collect();

    let mut models: Vec<ModelStats> = scored
        .iter()
        .map(|s| {
            let n = s.model.rows.len();
            let invalid = s
                .model
                .rows
                .iter()
                .filter(|r| r.extracted.is_none())
                .count();
            ModelStats {
                key: s.model.key.key.clone(),
                display: s.model.key.display(),
                role: s.model.key.role,
                training: s.model.key.training,
                samples: n,
                estimates: bootstrap(&s.outcomes, cfg).map(Some),
                precision: Precision::Bootstrap,
                invalid_rate: Some(invalid as f64 / n as f64),
                mean_latency_ms: Some(
                    s.model.rows.iter().map(|r| r.latency_ms).sum::<f64>() / n as f64,
                ),
            }
        })
        .collect();
    models.extend(
        input
            .models
            .iter()
            .filter(|m| m.rows.is_empty())
            .filter_map(point_only),
    );
    // Keep the input's order (LLMs, SLMs zero-shot, SLMs finetuned) across both kinds.
    models.sort_by_key(|m| input.models.iter().position(|i| i.key.key == m.key));

    let llms: Vec<&Scored> = scored
        .iter()
        .filter(|s| s.model.key.role == ModelRole::Llm)
        .collect();
    let slm = |t: Training| {
        scored
            .iter()
            .filter(move |s| s.model.key.role == ModelRole::Slm && s.model.key.training == t)
    };
    let finetuned: Vec<&Scored> = slm(Training::Finetuned).collect();
    let challengers: Vec<&Scored> = if finetuned.is_empty() {
        slm(Training::Untrained).collect()
    } else {
        finetuned.clone()
    };
    let comparisons: Vec<Comparison> = challengers
        .iter()
        .flat_map(|a| llms.iter().filter_map(|b| compare(a, b, cfg)))
        .collect();
    let headline = match point_headline(&models) {
        Some(h) if comparisons.is_empty() => h,
        _ => headline(&comparisons, challengers.len(), llms.len()),
    };
    let headline = match partial(&input.failed, input.models.len()) {
        Some(p) => format!("{p} {headline}"),
        None => headline,
    };
    let zero_shot_comparisons = if finetuned.is_empty() {
        Vec::new()
    } else {
        slm(Training::Untrained)
            .flat_map(|a| llms.iter().filter_map(|b| compare(a, b, cfg)))
            .collect()
    };
    let finetuning_effect = finetuned
        .iter()
        .filter_map(|f| {
            let base = slm(Training::Untrained).find(|u| u.model.key.label == f.model.key.label)?;
            compare(f, base, cfg)
        })
        .collect();

    let by_frequency = input.train_code_counts.as_ref().map(|counts| {
        breakdown(
            "Exact / category match by the reference code's frequency in the train split",
            format!("Bands: unseen = 0, rare = 1–{RARE_MAX_TRAIN_COUNT}, frequent = more than {RARE_MAX_TRAIN_COUNT} train rows with the code."),
            &scored,
            &|r| {
                let band = FrequencyBand::of(counts.get(&icd10::normalize(&r.reference)).copied().unwrap_or(0));
                (format!("{band:?}"), band.name())
            },
        )
    });
    let by_chapter = breakdown(
        "Exact / category match by ICD-10-CM chapter of the reference code",
        "Chapters of the ICD-10-CM April 2026 release, by category range.".to_string(),
        &scored,
        &|r| match icd10::chapter(&r.reference) {
            Some(ch) => (
                format!("{:02}", ch.number),
                format!("{} ({}–{}) {}", ch.number, ch.first, ch.last, ch.title),
            ),
            None => ("99".to_string(), "no chapter (malformed code)".to_string()),
        },
    );
    Analysis {
        headline,
        models,
        comparisons,
        zero_shot_comparisons,
        finetuning_effect,
        by_frequency,
        by_chapter,
        bootstrap: *cfg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::mcnemar::from_counts;

    #[test]
    fn frequency_bands() {
        assert_eq!(FrequencyBand::of(0), FrequencyBand::Unseen);
        assert_eq!(FrequencyBand::of(1), FrequencyBand::Rare);
        assert_eq!(FrequencyBand::of(RARE_MAX_TRAIN_COUNT), FrequencyBand::Rare);
        assert_eq!(
            FrequencyBand::of(RARE_MAX_TRAIN_COUNT + 1),
            FrequencyBand::Frequent
        );
    }

    #[test]
    fn sentences_name_the_winner_and_orient_the_ci() {
        let t = from_counts(30, 10);
        let d = Estimate {
            point: -0.1,
            lo: -0.15,
            hi: -0.05,
        };
        let (o, s) = sentence("Qwen-3B LoRA", "Llama-8B zero-shot", &d, &t, 200, 0.95);
        assert_eq!(o, Outcome::SecondBetter);
        assert!(s.starts_with("Llama-8B zero-shot beats Qwen-3B LoRA on exact match by +10.0 pts, 95% CI [+5.0, +15.0]"), "{s}");
        let d = Estimate {
            point: 0.01,
            lo: -0.02,
            hi: 0.04,
        };
        let (o, s) = sentence("A", "B", &d, &t, 200, 0.95);
        assert_eq!(o, Outcome::NoSignificantDifference);
        assert!(s.starts_with("No significant difference between A and B on exact match: +1.0 pts, 95% CI [-2.0, +4.0]"), "{s}");
    }

    #[test]
    fn p_values_are_readable() {
        assert_eq!(format_p(0.03515625), "= 0.035");
        assert_eq!(format_p(0.00042), "= 0.0004");
        assert_eq!(format_p(1e-7), "< 0.0001");
    }
}
