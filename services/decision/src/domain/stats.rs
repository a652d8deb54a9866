//! Report statistics: 95% intervals of proportions (Wilson score), of a difference of proportions
//! (Newcombe's hybrid score interval, method 10 of Newcombe 1998, built from the two Wilson intervals), the
//! sample-ratio mismatch test (Pearson chi-square against the configured split) and the inverse
//! propensity scoring estimate with a normal-approximation interval.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The two-sided 95% normal quantile.
pub const Z95: f64 = 1.959_963_984_540_054;

/// An estimate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: i64, n: i64) -> Interval {
    if n <= 0 {
        return Interval { value: 0.0, low: 0.0, high: 1.0 };
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Interval { value: p, low: (centre - half).max(0.0), high: (centre + half).min(1.0) }
}

/// The difference p1 - p2 of two proportions with Newcombe's hybrid score interval.
pub fn difference(k1: i64, n1: i64, k2: i64, n2: i64) -> Interval {
    let a = wilson(k1, n1);
    let b = wilson(k2, n2);
    let d = a.value - b.value;
    Interval {
        value: d,
        low: d - ((a.value - a.low).powi(2) + (b.high - b.value).powi(2)).sqrt(),
        high: d + ((a.high - a.value).powi(2) + (b.value - b.low).powi(2)).sqrt(),
    }
}

/// The p-value of the observed counts against the expected shares `weights` (Pearson chi-square with
/// k - 1 degrees of freedom). 1 when there is nothing to test (fewer than two groups or no observations).
pub fn sample_ratio_p_value(observed: &[i64], weights: &[f64]) -> f64 {
    let total: i64 = observed.iter().sum();
    let weight: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if observed.len() < 2 || observed.len() != weights.len() || total == 0 || weight <= 0.0 {
        return 1.0;
    }
    let mut chi2 = 0.0;
    for (o, w) in observed.iter().zip(weights) {
        let expected = total as f64 * w.max(0.0) / weight;
        if expected > 0.0 {
            chi2 += (*o as f64 - expected).powi(2) / expected;
        } else if *o > 0 {
            return 0.0;
        }
    }
    match ChiSquared::new((observed.len() - 1) as f64) {
        Ok(d) => (1.0 - d.cdf(chi2)).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// The mean of per-decision terms with a normal-approximation 95% interval (mean +- z x sd / sqrt(n)).
pub fn mean_interval(terms: &[f64]) -> Interval {
    let n = terms.len();
    if n == 0 {
        return Interval { value: 0.0, low: 0.0, high: 0.0 };
    }
    let mean = terms.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { terms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let half = Z95 * (var / n as f64).sqrt();
    Interval { value: mean, low: mean - half, high: mean + half }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_and_newcombe_match_published_values() {
        // Newcombe (1998), example: 56/70 vs 48/80; difference 0.2000, 95% CI 0.0524 to 0.3339.
        let d = difference(56, 70, 48, 80);
        assert!((d.value - 0.2).abs() < 1e-9);
        assert!((d.low - 0.0524).abs() < 5e-4, "{d:?}");
        assert!((d.high - 0.3339).abs() < 5e-4, "{d:?}");
        let w = wilson(0, 10);
        assert_eq!(w.low, 0.0);
        assert!((w.high - 0.2775).abs() < 1e-3, "{w:?}");
    }

    #[test]
    fn sample_ratio_mismatch_is_detected() {
        assert!(sample_ratio_p_value(&[5000, 5020], &[1.0, 1.0]) > 0.5);
        assert!(sample_ratio_p_value(&[5000, 5400], &[1.0, 1.0]) < 0.001);
        // 90/10 split observed as intended.
        assert!(sample_ratio_p_value(&[9000, 1000], &[0.9, 0.1]) > 0.9);
        assert_eq!(sample_ratio_p_value(&[10], &[1.0]), 1.0);
    }

    #[test]
    fn the_mean_interval_narrows_with_more_terms() {
        let few = mean_interval(&[0.0, 1.0, 0.0, 1.0]);
        let many: Vec<f64> = (0..400).map(|i| f64::from(i % 2)).collect();
        let many = mean_interval(&many);
        assert!((few.value - 0.5).abs() < 1e-12 && (many.value - 0.5).abs() < 1e-12);
        assert!(many.high - many.low < few.high - few.low);
    }
}
