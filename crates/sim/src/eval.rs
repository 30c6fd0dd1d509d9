//! Scoring alerts against the simulator's ground truth.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::Truth;

/// The part of an alert that detection scoring needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    /// Device alerted on.
    pub device: String,
    /// End of the alerting window (the earliest time the alert could exist), epoch ms.
    pub window_end_ms: i64,
}

/// Detection figures for one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Machines simulated.
    pub machines: usize,
    /// Machines that develop a failure.
    pub failing: usize,
    /// Failing machines alerted at or after onset.
    pub detected: usize,
    /// Failing machines never alerted after onset.
    pub missed: usize,
    /// Healthy machines with at least one alert.
    pub false_alert_machines: usize,
    /// Healthy machines.
    pub healthy: usize,
    /// Failing machines also alerted before their onset (counted apart from false alerts).
    pub early_alert_machines: usize,
    /// Median of (first alert's window end − onset) over detected machines, seconds.
    pub median_delay_s: Option<f64>,
    /// Median of (functional failure − first alert's window end), seconds; negative = after failure.
    pub median_lead_time_s: Option<f64>,
    /// Detected before functional failure.
    pub detected_before_failure: usize,
    /// Alerts received in total.
    pub alerts: usize,
    /// Alerts on failing machines: total alerts / failing machines with any.
    pub alerts_per_detected_machine: Option<f64>,
    /// Per failure mode: [failing, detected].
    pub by_mode: BTreeMap<String, [usize; 2]>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Scores `alerts` against `truth`.
pub fn summarize(truth: &Truth, alerts: &[AlertEvent]) -> Summary {
    let mut by_device: HashMap<&str, Vec<i64>> = HashMap::new();
    for a in alerts {
        by_device
            .entry(a.device.as_str())
            .or_default()
            .push(a.window_end_ms);
    }
    for v in by_device.values_mut() {
        v.sort_unstable();
    }
    let (mut failing, mut detected, mut false_alert, mut early, mut before_failure, mut healthy) =
        (0, 0, 0, 0, 0, 0);
    let (mut delays, mut leads) = (vec![], vec![]);
    let mut by_mode: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    let mut alerts_on_failing = 0usize;
    for m in &truth.machines {
        let times = by_device
            .get(m.device.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match &m.failure {
            None => {
                healthy += 1;
                if !times.is_empty() {
                    false_alert += 1;
                }
            }
            Some(f) => {
                failing += 1;
                alerts_on_failing += times.len();
                let mode = serde_json::to_value(f.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let e = by_mode.entry(mode).or_default();
                e[0] += 1;
                if times.iter().any(|t| *t <= f.onset_ms) {
                    early += 1;
                }
                if let Some(first) = times.iter().find(|t| **t > f.onset_ms) {
                    detected += 1;
                    e[1] += 1;
                    delays.push((first - f.onset_ms) as f64 / 1000.0);
                    leads.push((f.failure_ms - first) as f64 / 1000.0);
                    if *first <= f.failure_ms {
                        before_failure += 1;
                    }
                }
            }
        }
    }
    Summary {
        machines: truth.machines.len(),
        failing,
        detected,
        missed: failing - detected,
        false_alert_machines: false_alert,
        healthy,
        early_alert_machines: early,
        median_delay_s: median(delays),
        median_lead_time_s: median(leads),
        detected_before_failure: before_failure,
        alerts: alerts.len(),
        alerts_per_detected_machine: (detected > 0)
            .then(|| alerts_on_failing as f64 / detected as f64),
        by_mode,
    }
}

impl Summary {
    /// The table the demo prints.
    pub fn table(&self) -> String {
        let pct = |a: usize, b: usize| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.0} s"));
        let mut t = String::new();
        t.push_str(&format!(
            "  machines                         {:>6}\n",
            self.machines
        ));
        t.push_str(&format!(
            "  failing machines                 {:>6}\n",
            self.failing
        ));
        t.push_str(&format!(
            "  detected                         {:>6}  ({:.1}%)\n",
            self.detected,
            pct(self.detected, self.failing)
        ));
        t.push_str(&format!(
            "  detected before failure          {:>6}\n",
            self.detected_before_failure
        ));
        t.push_str(&format!(
            "  missed                           {:>6}\n",
            self.missed
        ));
        t.push_str(&format!(
            "  healthy machines falsely alerted {:>6}  ({:.1}% of {})\n",
            self.false_alert_machines,
            pct(self.false_alert_machines, self.healthy),
            self.healthy
        ));
        t.push_str(&format!(
            "  failing machines alerted early   {:>6}  (before onset)\n",
            self.early_alert_machines
        ));
        t.push_str(&format!(
            "  median detection delay           {:>8}  after onset\n",
            secs(self.median_delay_s)
        ));
        t.push_str(&format!(
            "  median warning lead time         {:>8}  before functional failure\n",
            secs(self.median_lead_time_s)
        ));
        for (mode, [n, d]) in &self.by_mode {
            t.push_str(&format!("    {mode:<28} {d:>3} / {n:<3} detected\n"));
        }
        t.push_str(&format!(
            "  alerts received                  {:>6}\n",
            self.alerts
        ));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureMode, FailureTruth, Kind, MachineTruth};

    #[test]
    fn scoring() {
        let m = |d: &str, f: Option<(i64, i64)>| MachineTruth {
            device: d.into(),
            kind: Kind::Pump,
            site: "s".into(),
            line: "l".into(),
            failure: f.map(|(o, e)| FailureTruth {
                mode: FailureMode::BearingWear,
                onset_ms: o,
                failure_ms: e,
            }),
            nuisances: vec![],
        };
        let truth = Truth {
            seed: 0,
            start_ms: 0,
            duration_ms: 100_000,
            period_ms: 1000,
            machines: vec![
                m("a", Some((10_000, 50_000))),
                m("b", Some((10_000, 50_000))),
                m("c", None),
                m("d", None),
            ],
        };
        let ev = |d: &str, t: i64| AlertEvent {
            device: d.into(),
            window_end_ms: t,
        };
        let s = summarize(
            &truth,
            &[
                ev("a", 5_000),
                ev("a", 30_000),
                ev("a", 40_000),
                ev("c", 1_000),
            ],
        );
        assert_eq!(
            (
                s.failing,
                s.detected,
                s.missed,
                s.false_alert_machines,
                s.early_alert_machines
            ),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(s.median_delay_s, Some(20.0));
        assert_eq!(s.median_lead_time_s, Some(20.0));
        assert_eq!(s.alerts_per_detected_machine, Some(3.0));
    }
}
