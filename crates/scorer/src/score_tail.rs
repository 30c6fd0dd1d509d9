//! A trained model's score as a surprise: −log10 of the fraction of training windows
//! that scored at least as high. This puts a trained model's score on the same scale as
//! the online detectors' (1 = one window in ten, 3 = one in a thousand), so a threshold
//! can be stated as an affordable false-alert rate.
//!
//! The training scores give the fraction directly down to about ten windows in the
//! tail; beyond the last of those the tail is extrapolated as an exponential with the
//! mean excess of the training scores over their 99th percentile as its scale (a
//! generalised Pareto tail of shape 0, which the upper tails of likelihood, distance and
//! squared-error scores come close to).

use serde::{Deserialize, Serialize};

use crate::online::MAX_SCORE;

/// Exceedance fractions at which the training scores are kept, while at least
/// [`MIN_TAIL_ROWS`] training windows lie beyond.
const LEVELS: &[f64] = &[
    0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 5e-3, 3e-3, 2e-3, 1e-3, 5e-4, 3e-4, 2e-4, 1e-4,
    5e-5, 3e-5, 2e-5, 1e-5,
];
/// Training windows that must lie beyond a knot for its fraction to be trusted.
const MIN_TAIL_ROWS: f64 = 10.0;
/// Training windows needed for a tail at all.
pub const MIN_ROWS: usize = 50;

/// The upper tail of a model's training scores (raw units).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoreTail {
    /// `[raw score, log10 of the fraction of training windows scoring at least it]`,
    /// scores rising; the first is the lowest training score (fraction 1).
    pub knots: Vec<[f64; 2]>,
    /// Beyond the last knot the fraction falls by a factor e for every `scale` of raw
    /// score: the mean excess of training scores over their 99th percentile (90th with
    /// fewer than 1,000 windows).
    pub scale: f64,
}

impl ScoreTail {
    /// The tail of `raw` training scores; `None` with fewer than [`MIN_ROWS`] finite
    /// scores or none that differ.
    pub fn fit(raw: &[f64]) -> Option<ScoreTail> {
        let mut v: Vec<f64> = raw.iter().copied().filter(|x| x.is_finite()).collect();
        if v.len() < MIN_ROWS {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mut knots = vec![[v[0], 0.0]];
        for &p in LEVELS {
            if p * n < MIN_TAIL_ROWS {
                break;
            }
            let k = (p * n).round() as usize; // training windows at or above the knot
            let s = v[v.len() - k];
            // Ties: the fraction at a score is that of its lowest rank, already kept.
            if s > knots.last().expect("first knot")[0] {
                // All windows scoring s count, not only the k-th from the top.
                let at_least = v.len() - v.partition_point(|x| *x < s);
                knots.push([s, (at_least as f64 / n).log10()]);
            }
        }
        if knots.len() < 2 {
            return None;
        }
        let u = v[((n - 1.0) * if v.len() >= 1000 { 0.99 } else { 0.9 }).round() as usize];
        let excess: Vec<f64> = v.iter().filter(|x| **x > u).map(|x| x - u).collect();
        let mean_excess = excess.iter().sum::<f64>() / excess.len().max(1) as f64;
        let spread = knots.last().expect("knot")[0] - v[0];
        let scale = if mean_excess.is_finite() && mean_excess > 0.0 {
            mean_excess
        } else {
            (spread * 1e-3).max(1e-12)
        };
        Some(ScoreTail { knots, scale })
    }

    /// −log10 of the fraction of training windows scoring at least `raw`, extrapolated
    /// beyond the training scores, capped at [`MAX_SCORE`]; NaN for NaN.
    pub fn surprise(&self, raw: f64) -> f64 {
        if raw.is_nan() {
            return f64::NAN;
        }
        let k = &self.knots;
        let last = k[k.len() - 1];
        let log_p = if raw <= k[0][0] {
            0.0
        } else if raw >= last[0] {
            last[1] - (raw - last[0]) / (self.scale * std::f64::consts::LN_10)
        } else {
            let i = k.partition_point(|kn| kn[0] <= raw); // k[i-1] <= raw < k[i]
            let (a, b) = (k[i - 1], k[i]);
            a[1] + (b[1] - a[1]) * (raw - a[0]) / (b[0] - a[0])
        };
        (-log_p).clamp(0.0, MAX_SCORE)
    }

    /// Checks the knots rise and the scale is positive.
    pub fn check(&self) -> Result<(), String> {
        let rising = self
            .knots
            .windows(2)
            .all(|w| w[0][0] < w[1][0] && w[0][1] >= w[1][1]);
        let finite = self.knots.iter().flatten().all(|x| x.is_finite());
        if self.knots.len() < 2 || !rising || !finite {
            return Err("the score tail's knots must be finite, at least two, with scores rising and fractions falling".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!(
                "the score tail's scale must be above 0, got {}",
                self.scale
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exponential(1) training scores: P(S >= s) = exp(-s), so the surprise of s is
    /// s / ln 10, inside the training range and extrapolated beyond it.
    #[test]
    fn an_exponential_tail_comes_out_as_its_own_probability() {
        let n = 100_000;
        let raw: Vec<f64> = (0..n)
            .map(|i| -((i as f64 + 0.5) / n as f64).ln())
            .collect();
        let t = ScoreTail::fit(&raw).unwrap();
        for s in [0.7, 2.3, 4.6, 6.9, 9.2, 13.8, 23.0] {
            let want = s / std::f64::consts::LN_10;
            let got = t.surprise(s);
            assert!(
                (got - want).abs() < 0.02 * want.max(1.0),
                "s={s}: {got} vs {want}"
            );
        }
        assert_eq!(t.surprise(-1.0), 0.0);
        assert_eq!(t.surprise(1e9), MAX_SCORE);
        assert!(t.surprise(f64::NAN).is_nan());
        t.check().unwrap();
    }

    #[test]
    fn rising_scores_never_get_less_surprising() {
        let raw: Vec<f64> = (0..500).map(|i| ((i * 37) % 101) as f64).collect();
        let t = ScoreTail::fit(&raw).unwrap();
        let mut last = 0.0;
        for i in 0..3000 {
            let s = t.surprise(i as f64 * 0.05 - 5.0);
            assert!(s >= last, "{s} < {last}");
            last = s;
        }
    }

    #[test]
    fn too_few_or_constant_scores_have_no_tail() {
        assert!(ScoreTail::fit(&[1.0; 10]).is_none());
        assert!(ScoreTail::fit(&[1.0; 1000]).is_none());
    }
}
