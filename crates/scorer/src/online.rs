//! Online detectors: each device's normal is learned from its own windows while they
//! stream, with no training run. Scores are calibrated surprises, −log10 of a tail
//! probability, so one threshold means the same on every device and every data set.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::tail;

/// How an online detector learns and scores, declared on a sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineSpec {
    /// Windows a device is learned from before it is scored (its scores are `None`).
    pub warmup: u32,
    /// After warm-up, how many windows it takes for the old normal to count half:
    /// the rate at which healthy drift is followed.
    pub half_life: f64,
    /// Windows scoring at or above this surprise are not learned from, so a developing
    /// fault is not taken for the new normal.
    pub learn_below: f64,
}

impl Default for OnlineSpec {
    fn default() -> Self {
        OnlineSpec {
            warmup: 30,
            half_life: 500.0,
            learn_below: 3.0,
        }
    }
}

/// One device's learned normal: an exponentially weighted mean and variance per feature.
/// 16 bytes per feature plus 8: a device with six features costs 104 bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnlineState {
    /// Windows learned from.
    pub n: u64,
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature variance.
    pub var: Vec<f64>,
}

/// A scored window.
#[derive(Debug, Clone, PartialEq)]
pub struct Surprise {
    /// −log10 of the probability of a window at least this unusual (0 = typical, 3 =
    /// one in a thousand); `None` while the device is warming up.
    pub score: Option<f64>,
    /// Each feature's share of the statistic (non-negative), for explanations.
    pub terms: Vec<f64>,
}

/// Variance floor relative to the feature's magnitude: a sensor that has been
/// perfectly constant is not infinitely surprised by its last digit changing.
const REL_FLOOR: f64 = 1e-3;
const ABS_FLOOR: f64 = 1e-12;

impl OnlineState {
    fn floor(&self, j: usize) -> f64 {
        let m = self.mean[j].abs() * REL_FLOOR;
        (m * m).max(ABS_FLOOR)
    }

    /// Scores `x` against what this device has learned, then learns from it (unless it
    /// is too surprising, see [`OnlineSpec::learn_below`]). A row with a non-finite
    /// feature is neither scored nor learned.
    pub fn observe(&mut self, spec: &OnlineSpec, x: &[f64]) -> Surprise {
        if x.iter().any(|v| !v.is_finite()) {
            return Surprise {
                score: None,
                terms: vec![],
            };
        }
        if self.mean.len() != x.len() {
            *self = OnlineState {
                n: 0,
                mean: vec![0.0; x.len()],
                var: vec![0.0; x.len()],
            };
        }
        let warm = self.n >= u64::from(spec.warmup.max(2));
        let terms: Vec<f64> = (0..x.len())
            .map(|j| {
                let d = x[j] - self.mean[j];
                d * d / (self.var[j] + self.floor(j))
            })
            .collect();
        let score = warm.then(|| tail::chi2_surprise(terms.iter().sum(), x.len()));
        if score.is_none_or(|s| s < spec.learn_below) {
            self.learn(spec, x);
        }
        Surprise { score, terms }
    }

    fn learn(&mut self, spec: &OnlineSpec, x: &[f64]) {
        self.n += 1;
        // Equal weights while warming up (a plain mean and variance), then exponential.
        let slow = 1.0 - 0.5f64.powf(1.0 / spec.half_life.max(1.0));
        let a = (1.0 / self.n as f64).max(slow);
        for (j, v) in x.iter().enumerate() {
            let d = v - self.mean[j];
            self.mean[j] += a * d;
            self.var[j] = (1.0 - a) * (self.var[j] + a * d * d);
        }
    }
}

/// Every device's online detector for one sink: what the runtime keeps and checkpoints.
#[derive(Debug, Clone)]
pub struct OnlineDetectors {
    spec: OnlineSpec,
    features: Vec<String>,
    devices: HashMap<String, OnlineState>,
}

impl OnlineDetectors {
    /// Detectors learning `features` (in this order) with `spec`.
    pub fn new(spec: OnlineSpec, features: Vec<String>) -> Self {
        OnlineDetectors {
            spec,
            features,
            devices: HashMap::new(),
        }
    }

    /// The feature names, in order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The settings.
    pub fn spec(&self) -> &OnlineSpec {
        &self.spec
    }

    /// Devices learned so far.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Scores and learns one window of `device`; see [`OnlineState::observe`].
    /// Windows must arrive in time order per device.
    pub fn observe(&mut self, device: &str, x: &[f64]) -> Surprise {
        let spec = &self.spec;
        match self.devices.get_mut(device) {
            Some(s) => s.observe(spec, x),
            None => self
                .devices
                .entry(device.to_string())
                .or_default()
                .observe(spec, x),
        }
    }

    /// The (up to three) features with the largest share of a surprise, as text like
    /// `"temperature 81%, load 12%"`.
    pub fn explain(&self, s: &Surprise) -> Option<String> {
        let total: f64 = s.terms.iter().sum();
        if s.score.is_none() || total <= 0.0 || !total.is_finite() {
            return None;
        }
        let mut shares: Vec<(usize, f64)> = s
            .terms
            .iter()
            .enumerate()
            .map(|(j, t)| (j, t / total))
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        Some(
            shares
                .iter()
                .take(3)
                .filter(|(_, s)| *s >= 0.005)
                .map(|(j, s)| format!("{} {:.0}%", self.features[*j], s * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// Every device's learned state, for a checkpoint.
    pub fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.devices).expect("states serialise")
    }

    /// Continues from [`save`](Self::save)d states (replacing the current ones).
    pub fn load(&mut self, v: serde_json::Value) -> Result<(), serde_json::Error> {
        self.devices = serde_json::from_value(v)?;
        Ok(())
    }
}

/// The surprise threshold at which a device raises about `per_month` false alerts a
/// month, when it closes `windows_per_month` windows a month and a raise takes
/// `raise_after` consecutive windows at or above it.
///
/// Healthy windows close together are not independent (neighbouring windows share
/// readings, and a disturbance lasts), so the threshold assumes the worst case, that a
/// run above the threshold is one excursion however long: the probability of a window
/// opening an excursion is at most `per_month / windows_per_month`. `raise_after` then
/// only lowers the rate further; it is not credited.
pub fn threshold_for(per_month: f64, windows_per_month: f64) -> f64 {
    let p = (per_month / windows_per_month.max(1.0)).clamp(1e-300, 1.0);
    -p.log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal from two uniforms (Box–Muller).
    fn normal(seed: &mut u64) -> f64 {
        let (u, v) = (lcg(seed).max(1e-300), lcg(seed));
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    #[test]
    fn warm_up_scores_nothing_then_a_planted_fault_stands_out() {
        let spec = OnlineSpec::default();
        let mut d = OnlineDetectors::new(spec.clone(), vec!["a".into(), "b".into()]);
        let mut seed = 7;
        for i in 0..200 {
            let x = [10.0 + normal(&mut seed), 50.0 + 5.0 * normal(&mut seed)];
            let s = d.observe("p1", &x);
            assert_eq!(s.score.is_none(), i < spec.warmup as usize, "window {i}");
        }
        let s = d.observe("p1", &[10.0, 50.0 + 5.0 * 8.0]);
        assert!(s.score.unwrap() > 10.0, "{s:?}");
        assert_eq!(d.explain(&s).unwrap().split(' ').next(), Some("b"));
        // A typical window is not surprising.
        let s = d.observe("p1", &[10.2, 51.0]);
        assert!(s.score.unwrap() < 1.0, "{s:?}");
    }

    #[test]
    fn slow_healthy_drift_is_followed_and_a_developing_fault_is_not_learned() {
        let spec = OnlineSpec::default();
        let mut d = OnlineDetectors::new(spec, vec!["t".into()]);
        let mut seed = 3;
        let mut loud = 0;
        // Healthy: the level drifts by 3 standard deviations over 5,000 windows.
        for i in 0..5000 {
            let x = 20.0 + 3.0 * i as f64 / 5000.0 + normal(&mut seed);
            if d.observe("p", &[x]).score.is_some_and(|s| s >= 4.0) {
                loud += 1;
            }
        }
        assert!(loud <= 2, "{loud} windows above 4 on a healthy drift");
        // Faulty: the level climbs 0.05 standard deviations per window; it must be seen
        // and stay seen, not learned away.
        let mut last = 0.0;
        for i in 0..400 {
            let x = 23.0 + 0.05 * i as f64 + normal(&mut seed);
            last = d.observe("p", &[x]).score.unwrap();
        }
        assert!(last > 20.0, "{last}");
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let mut a = OnlineDetectors::new(OnlineSpec::default(), vec!["x".into()]);
        let mut seed = 1;
        for _ in 0..100 {
            a.observe("d", &[normal(&mut seed)]);
        }
        let mut b = OnlineDetectors::new(OnlineSpec::default(), vec!["x".into()]);
        b.load(serde_json::from_str(&a.save().to_string()).unwrap())
            .unwrap();
        for _ in 0..20 {
            let x = [normal(&mut seed) * 2.0];
            assert_eq!(a.observe("d", &x), b.observe("d", &x));
        }
    }

    #[test]
    fn threshold_in_false_alerts_per_month() {
        // One-minute windows: 43,200 a month; one false alert a month is p = 2.3e-5.
        let t = threshold_for(1.0, 43_200.0);
        assert!((t - 4.635_483_746_814_912).abs() < 1e-9, "{t}");
    }
}
