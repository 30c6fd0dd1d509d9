//! Point-wise detection metrics (the SKAB definitions) and detection delay; the NAB
//! score ([`nab`]); early-warning metrics for run-to-failure data and fleets ([`fleet`]).

use serde::Serialize;

pub mod fleet;
pub mod nab;

/// Confusion counts and the rates derived from them, pooled over any number of series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Confusion {
    /// Anomalous rows flagged.
    pub tp: usize,
    /// Normal rows flagged.
    pub fp: usize,
    /// Normal rows not flagged.
    pub tn: usize,
    /// Anomalous rows not flagged.
    pub fn_: usize,
}

impl Confusion {
    /// Counts `predicted` against `labels` (true = anomaly), pairwise.
    pub fn count(predicted: &[bool], labels: &[bool]) -> Confusion {
        let mut c = Confusion::default();
        for (p, l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// Adds another series' counts (pooling, as SKAB does over its files).
    pub fn add(&mut self, o: Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.tn += o.tn;
        self.fn_ += o.fn_;
    }

    /// TP / (TP + FP).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (TP + FN).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// TP / (TP + (FP + FN) / 2), SKAB's form of the harmonic mean.
    pub fn f1(&self) -> f64 {
        let d = self.tp as f64 + (self.fp + self.fn_) as f64 / 2.0;
        if d == 0.0 {
            0.0
        } else {
            self.tp as f64 / d
        }
    }

    /// False-alarm rate: FP / (FP + TN), in percent.
    pub fn far(&self) -> f64 {
        100.0 * ratio(self.fp, self.fp + self.tn)
    }

    /// Missed-alarm rate: FN / (FN + TP), in percent.
    pub fn mar(&self) -> f64 {
        100.0 * ratio(self.fn_, self.fn_ + self.tp)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// How quickly labelled anomaly spans were flagged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delays {
    /// Labelled anomaly spans (maximal runs of anomalous rows).
    pub spans: usize,
    /// Spans with at least one flagged row.
    pub detected: usize,
    /// For each detected span, the time from its first row to its first flagged row
    /// (in the units of the times passed).
    pub delays: Vec<i64>,
}

impl Delays {
    /// Delays of `predicted` against the spans of `labels`, with `times` per row.
    pub fn measure(times: &[i64], predicted: &[bool], labels: &[bool]) -> Delays {
        let mut d = Delays::default();
        let mut i = 0;
        while i < labels.len() {
            if !labels[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < labels.len() && labels[i] {
                i += 1;
            }
            d.spans += 1;
            if let Some(j) = (start..i).find(|&j| predicted[j]) {
                d.detected += 1;
                d.delays.push(times[j] - times[start]);
            }
        }
        d
    }

    /// Adds another series' spans.
    pub fn add(&mut self, o: Delays) {
        self.spans += o.spans;
        self.detected += o.detected;
        self.delays.extend(o.delays);
    }

    /// Median delay of the detected spans.
    pub fn median(&self) -> Option<i64> {
        let mut v = self.delays.clone();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    /// Mean delay of the detected spans.
    pub fn mean(&self) -> Option<f64> {
        (!self.delays.is_empty())
            .then(|| self.delays.iter().sum::<i64>() as f64 / self.delays.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skab_formulas() {
        let c = Confusion::count(
            &[true, true, false, false, true],
            &[true, false, false, true, true],
        );
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 1, 1));
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.far() - 50.0).abs() < 1e-12);
        assert!((c.mar() - 100.0 / 3.0).abs() < 1e-12);
        // Flagging everything on SKAB-like balance gives F1 = 2p/(1+p).
        let labels: Vec<bool> = (0..100).map(|i| i < 54).collect();
        let all = Confusion::count(&[true; 100], &labels);
        assert!((all.f1() - 108.0 / 154.0).abs() < 1e-12);
    }

    #[test]
    fn delays_per_span() {
        let t: Vec<i64> = (0..10).collect();
        let l = [
            false, true, true, true, false, false, true, true, false, false,
        ];
        let p = [
            false, false, false, true, false, false, false, false, false, true,
        ];
        let d = Delays::measure(&t, &p, &l);
        assert_eq!((d.spans, d.detected, d.delays.clone()), (2, 1, vec![2]));
    }
}
