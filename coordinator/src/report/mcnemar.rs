//! McNemar's test on paired correct/incorrect outcomes of two models on the same samples.
//!
//! With b = samples only A gets right and c = samples only B gets right (the discordant pairs):
//! - b + c < [`EXACT_BELOW`]: the **exact** two-sided binomial test, p = min(1, 2·P(X ≤ min(b, c)))
//!   with X ~ Binomial(b + c, ½) (the chi-square approximation is poor for few discordant pairs);
//! - otherwise the **chi-square** test with Edwards' continuity correction,
//!   χ² = (|b − c| − 1)² / (b + c), one degree of freedom.
//!
//! b + c = 0 (the models never disagree) gives p = 1.
use serde::Serialize;
use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};

/// Below this many discordant pairs the exact binomial test is used.
pub const EXACT_BELOW: u64 = 25;

/// Which form of the test produced the p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum McNemarMethod {
    ExactBinomial,
    ChiSquareCorrected,
}

impl McNemarMethod {
    pub fn describe(self) -> &'static str {
        match self {
            McNemarMethod::ExactBinomial => "exact binomial",
            McNemarMethod::ChiSquareCorrected => "chi-square, continuity-corrected",
        }
    }
}

/// The test's inputs and result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Samples A gets right and B gets wrong.
    pub only_a: u64,
    /// Samples B gets right and A gets wrong.
    pub only_b: u64,
    pub method: McNemarMethod,
    /// χ² for the chi-square form; `None` for the exact test.
    pub statistic: Option<f64>,
    pub p_value: f64,
}

/// McNemar's test from the paired correctness of A and B (`a[i]`, `b[i]` on the same sample).
pub fn mcnemar(a: &[bool], b: &[bool]) -> McNemar {
    assert_eq!(a.len(), b.len(), "McNemar needs aligned outcomes");
    let only_a = a.iter().zip(b).filter(|(x, y)| **x && !**y).count() as u64;
    let only_b = a.iter().zip(b).filter(|(x, y)| !**x && **y).count() as u64;
    from_counts(only_a, only_b)
}

/// McNemar's test from the discordant counts.
pub fn from_counts(only_a: u64, only_b: u64) -> McNemar {
    let n = only_a + only_b;
    if n < EXACT_BELOW {
        let p_value = if n == 0 {
            1.0
        } else {
            // Binomial::new only fails for p outside [0, 1]; 0.5 is valid.
            let dist = Binomial::new(0.5, n).expect("p = 0.5 is a valid binomial parameter");
            (2.0 * dist.cdf(only_a.min(only_b))).min(1.0)
        };
        McNemar {
            only_a,
            only_b,
            method: McNemarMethod::ExactBinomial,
            statistic: None,
            p_value,
        }
    } else {
        let d = (only_a as f64 - only_b as f64).abs() - 1.0;
        let chi2 = d.max(0.0).powi(2) / n as f64;
        let dist = ChiSquared::new(1.0).expect("1 degree of freedom is valid");
        McNemar {
            only_a,
            only_b,
            method: McNemarMethod::ChiSquareCorrected,
            statistic: Some(chi2),
            p_value: dist.sf(chi2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy 1.x:
    //   from scipy.stats import binomtest, chi2
    //   binomtest(3, 15, 0.5).pvalue                 -> 0.03515625
    //   binomtest(0, 5, 0.5).pvalue                  -> 0.0625
    //   binomtest(12, 24, 0.5).pvalue                -> 1.0
    //   chi2.sf((abs(40-20)-1)**2/60, 1)             -> 0.014171388254012323
    //   chi2.sf((abs(13-12)-1)**2/25, 1)             -> 1.0
    // (statsmodels.stats.contingency_tables.mcnemar(exact=False, correction=True) agrees.)
    #[test]
    fn exact_binomial_matches_scipy() {
        let t = from_counts(3, 12);
        assert_eq!(t.method, McNemarMethod::ExactBinomial);
        assert!((t.p_value - 0.03515625).abs() < 1e-12, "{}", t.p_value);
        assert!((from_counts(5, 0).p_value - 0.0625).abs() < 1e-12);
        assert!((from_counts(12, 12).p_value - 1.0).abs() < 1e-12);
        assert_eq!(from_counts(0, 0).p_value, 1.0);
    }

    #[test]
    fn chi_square_with_continuity_correction_matches_scipy() {
        let t = from_counts(40, 20);
        assert_eq!(t.method, McNemarMethod::ChiSquareCorrected);
        assert!((t.statistic.unwrap() - 361.0 / 60.0).abs() < 1e-12);
        assert!(
            (t.p_value - CHI2_SF_361_OVER_60).abs() < 1e-9,
            "{}",
            t.p_value
        );
        assert!((from_counts(13, 12).p_value - 1.0).abs() < 1e-12);
    }

    const CHI2_SF_361_OVER_60: f64 = 0.014_171_388_254_012_323;

    #[test]
    fn counts_discordant_pairs_from_outcomes() {
        let a = [true, true, false, false, true];
        let b = [true, false, true, false, false];
        let t = mcnemar(&a, &b);
        assert_eq!((t.only_a, t.only_b), (2, 1));
    }
}
