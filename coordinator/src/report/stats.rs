//! Report statistics: per-sample outcomes, macro-F1, percentile-bootstrap CIs and paired differences.
//!
//! Method (stated once, quoted in the report):
//! - **Bootstrap**: `resamples` resamples of the n samples with replacement (ChaCha8, seeded), the
//!   statistic recomputed on each; the CI is the **percentile** interval — the `(1-c)/2` and
//!   `(1+c)/2` quantiles of the resampled statistics, with linear interpolation between order
//!   statistics (numpy's default `percentile` method).
//! - **Paired bootstrap**: the same resampled indices are applied to both models' outcomes on the
//!   samples they share, and the CI is taken over the difference A − B.
//! - **Macro-F1** is over the codes that occur in the (re)sample's references ∪ predictions; a
//!   sample with no extracted code is a false negative for its reference and predicts no label
//!   (`docs/data.md`, pitfall 8; the same definition as `shared::metrics`).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One model's result on one sample, reduced to what the statistics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleOutcome {
    /// Extracted code equals the reference (`PredictionRow::correct`).
    pub exact: bool,
    /// Extracted code's 3-character category equals the reference's.
    pub category: bool,
    /// Reference code, interned (see [`LabelIndex`]).
    pub reference: u32,
    /// Extracted code, interned; `None` when no valid code was extracted.
    pub predicted: Option<u32>,
}

/// Which statistic of a set of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Metric {
    ExactMatch,
    CategoryMatch,
    MacroF1,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::ExactMatch, Metric::CategoryMatch, Metric::MacroF1];

    /// Human name, as used in the verdict sentences and tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "exact match",
            Metric::CategoryMatch => "category match",
            Metric::MacroF1 => "macro-F1",
        }
    }
}

/// Interns code strings to dense `u32`s so macro-F1 can count in flat arrays.
#[derive(Debug, Default, Clone)]
pub struct LabelIndex {
    ids: std::collections::BTreeMap<String, u32>,
}

impl LabelIndex {
    pub fn intern(&mut self, code: &str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(code.to_string()).or_insert(next)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootstrapConfig {
    pub resamples: usize,
    /// Confidence level, e.g. 0.95.
    pub confidence: f64,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 2000,
            confidence: 0.95,
            seed: 42,
        }
    }
}

/// A point estimate with its bootstrap confidence interval (fractions, not percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub point: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Estimate {
    /// The interval excludes zero (used for differences).
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// Reusable counters for macro-F1 (avoids allocating per resample).
#[derive(Debug, Clone)]
struct F1Scratch {
    tp: Vec<u32>,
    fp: Vec<u32>,
    fneg: Vec<u32>,
    touched: Vec<u32>,
}

impl F1Scratch {
    fn new(labels: usize) -> Self {
        Self {
            tp: vec![0; labels],
            fp: vec![0; labels],
            fneg: vec![0; labels],
            touched: Vec::new(),
        }
    }

    fn touch(&mut self, l: u32) {
        let i = l as usize;
        if self.tp[i] == 0 && self.fp[i] == 0 && self.fneg[i] == 0 {
            self.touched.push(l);
        }
    }

    fn macro_f1(
        &mut self,
        outcomes: &[SampleOutcome],
        idx: &mut dyn Iterator<Item = usize>,
    ) -> f64 {
        for i in idx {
            let o = outcomes[i];
            self.touch(o.reference);
            match o.predicted {
                Some(p) if p == o.reference => self.tp[p as usize] += 1,
                Some(p) => {
                    self.fneg[o.reference as usize] += 1;
                    self.touch(p);
                    self.fp[p as usize] += 1;
                }
                None => self.fneg[o.reference as usize] += 1,
            }
        }
        let n = self.touched.len();
        let mut sum = 0.0;
        for &l in &self.touched {
            let i = l as usize;
            let (tp, fp, fneg) = (self.tp[i] as f64, self.fp[i] as f64, self.fneg[i] as f64);
            // Every touched label has tp + fp + fn > 0, so the denominator is never zero.
            sum += 2.0 * tp / (2.0 * tp + fp + fneg);
            self.tp[i] = 0;
            self.fp[i] = 0;
            self.fneg[i] = 0;
        }
        self.touched.clear();
        if n == 0 { 0.0 } else { sum / n as f64 }
    }
}

fn labels_needed(outcomes: &[SampleOutcome]) -> usize {
    outcomes
        .iter()
        .map(|o| o.reference.max(o.predicted.unwrap_or(0)) as usize + 1)
        .max()
        .unwrap_or(0)
}

fn evaluate(
    metric: Metric,
    outcomes: &[SampleOutcome],
    idx: &[usize],
    scratch: &mut F1Scratch,
) -> f64 {
    if idx.is_empty() {
        return 0.0;
    }
    let n = idx.len() as f64;
    match metric {
        Metric::ExactMatch => idx.iter().filter(|&&i| outcomes[i].exact).count() as f64 / n,
        Metric::CategoryMatch => idx.iter().filter(|&&i| outcomes[i].category).count() as f64 / n,
        Metric::MacroF1 => scratch.macro_f1(outcomes, &mut idx.iter().copied()),
    }
}

/// The statistic on all samples (no resampling).
pub fn point(metric: Metric, outcomes: &[SampleOutcome]) -> f64 {
    let idx: Vec<usize> = (0..outcomes.len()).collect();
    evaluate(
        metric,
        outcomes,
        &idx,
        &mut F1Scratch::new(labels_needed(outcomes)),
    )
}

/// The `q`-quantile (0..=1) of sorted values, linear interpolation between order statistics
/// (numpy `percentile(..., method="linear")`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

fn interval(point: f64, mut values: Vec<f64>, confidence: f64) -> Estimate {
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Estimate {
        point,
        lo: quantile_sorted(&values, tail),
        hi: quantile_sorted(&values, 1.0 - tail),
    }
}

/// Draws the resampled index vectors (each of length `n`) for one bootstrap run.
fn resample_indices(n: usize, cfg: &BootstrapConfig) -> impl Iterator<Item = Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    (0..cfg.resamples).map(move |_| (0..n).map(|_| rng.random_range(0..n)).collect())
}

/// Percentile-bootstrap CIs of every [`Metric`] for one model, in `Metric::ALL` order.
pub fn bootstrap(outcomes: &[SampleOutcome], cfg: &BootstrapConfig) -> [Estimate; 3] {
    let n = outcomes.len();
    let mut scratch = F1Scratch::new(labels_needed(outcomes));
    let mut samples: [Vec<f64>; 3] = Default::default();
    if n > 0 {
        for idx in resample_indices(n, cfg) {
            for (k, m) in Metric::ALL.iter().enumerate() {
                samples[k].push(evaluate(*m, outcomes, &idx, &mut scratch));
            }
        }
    }
    let [a, b, c] = samples;
    [
        interval(point(Metric::ExactMatch, outcomes), a, cfg.confidence),
        interval(point(Metric::CategoryMatch, outcomes), b, cfg.confidence),
        interval(point(Metric::MacroF1, outcomes), c, cfg.confidence),
    ]
}

/// Paired-bootstrap CIs of A − B for every [`Metric`] (`Metric::ALL` order). `a[i]` and `b[i]`
/// must be the two models' outcomes on the same sample.
pub fn paired_bootstrap(
    a: &[SampleOutcome],
    b: &[SampleOutcome],
    cfg: &BootstrapConfig,
) -> [Estimate; 3] {
    assert_eq!(a.len(), b.len(), "paired bootstrap needs aligned outcomes");
    let n = a.len();
    let mut sa = F1Scratch::new(labels_needed(a));
    let mut sb = F1Scratch::new(labels_needed(b));
    let mut samples: [Vec<f64>; 3] = Default::default();
    if n > 0 {
        for idx in resample_indices(n, cfg) {
            for (k, m) in Metric::ALL.iter().enumerate() {
                samples[k].push(evaluate(*m, a, &idx, &mut sa) - evaluate(*m, b, &idx, &mut sb));
            }
        }
    }
    let diff = |m| point(m, a) - point(m, b);
    let [x, y, z] = samples;
    [
        interval(diff(Metric::ExactMatch), x, cfg.confidence),
        interval(diff(Metric::CategoryMatch), y, cfg.confidence),
        interval(diff(Metric::MacroF1), z, cfg.confidence),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(reference: u32, predicted: Option<u32>) -> SampleOutcome {
        SampleOutcome {
            exact: predicted == Some(reference),
            category: false,
            reference,
            predicted,
        }
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        // numpy: np.percentile([1,2,3,4,10], [2.5, 50, 97.5]) -> [1.1, 3.0, 9.4]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((quantile_sorted(&v, 0.025) - 1.1).abs() < 1e-12);
        assert!((quantile_sorted(&v, 0.5) - 3.0).abs() < 1e-12);
        assert!((quantile_sorted(&v, 0.975) - 9.4).abs() < 1e-12);
    }

    #[test]
    fn macro_f1_matches_sklearn_on_labels_in_refs_and_preds() {
        // y_true = [0,0,1,1,2,3], y_pred = [0,1,1,1,None,4]; labels occurring: 0,1,2,3,4.
        // per label F1 = 2tp/(2tp+fp+fn): 0: 2/(2+0+1)=2/3; 1: 4/(4+1+0)=4/5; 2: 0; 3: 0; 4: 0
        // macro = (2/3 + 4/5)/5 = 0.293333...
        // sklearn: f1_score(["a","a","b","b","c","d"], ["a","b","b","b","<none>","e"],
        //   labels=["a","b","c","d","e"], average="macro") -> 0.29333333333333333
        let xs = [
            o(0, Some(0)),
            o(0, Some(1)),
            o(1, Some(1)),
            o(1, Some(1)),
            o(2, None),
            o(3, Some(4)),
        ];
        assert!((point(Metric::MacroF1, &xs) - 0.293_333_333_333_333_3).abs() < 1e-12);
        assert!((point(Metric::ExactMatch, &xs) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn scratch_is_reset_between_resamples() {
        let xs = [o(0, Some(0)), o(1, Some(2))];
        let mut s = F1Scratch::new(3);
        let first = s.macro_f1(&xs, &mut [0usize, 1].into_iter());
        let second = s.macro_f1(&xs, &mut [0usize, 1].into_iter());
        assert_eq!(first, second);
        assert!((first - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_ci_brackets_point_and_has_binomial_width() {
        // 200 samples, 60 correct: p = 0.3; normal-approx 95% half-width 1.96*sqrt(.3*.7/200)=0.0635.
        let xs: Vec<_> = (0..200)
            .map(|i| o(i % 7, if i % 10 < 3 { Some(i % 7) } else { None }))
            .collect();
        let cfg = BootstrapConfig {
            resamples: 2000,
            confidence: 0.95,
            seed: 7,
        };
        let [em, _, f1] = bootstrap(&xs, &cfg);
        assert!((em.point - 0.3).abs() < 1e-12);
        assert!(em.lo < em.point && em.point < em.hi);
        let half = (em.hi - em.lo) / 2.0;
        assert!((half - 0.0635).abs() < 0.008, "half-width {half}");
        assert!(f1.lo <= f1.point && f1.point <= f1.hi);
        // Seeded: the same input gives the same interval.
        assert_eq!(bootstrap(&xs, &cfg)[0], em);
    }

    #[test]
    fn paired_bootstrap_sees_a_real_difference_and_not_a_fake_one() {
        let a: Vec<_> = (0..300)
            .map(|i| o(i % 5, if i % 2 == 0 { Some(i % 5) } else { None }))
            .collect();
        let b: Vec<_> = (0..300)
            .map(|i| o(i % 5, if i % 5 == 0 { Some(i % 5) } else { None }))
            .collect();
        let cfg = BootstrapConfig {
            resamples: 1000,
            confidence: 0.95,
            seed: 1,
        };
        let [d, _, _] = paired_bootstrap(&a, &b, &cfg);
        assert!((d.point - 0.3).abs() < 1e-12, "0.5 - 0.2");
        assert!(d.excludes_zero() && d.lo > 0.2);
        let [same, _, _] = paired_bootstrap(&a, &a, &cfg);
        assert_eq!((same.point, same.lo, same.hi), (0.0, 0.0, 0.0));
        assert!(!same.excludes_zero());
    }
}
