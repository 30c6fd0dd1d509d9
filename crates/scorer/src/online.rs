//! Online detectors: each device's normal is learned from its own windows while they
//! stream, with no training run. Scores are calibrated surprises, −log10 of a tail
//! probability, so one threshold means the same on every device and every data set.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::seasonal::{Season, SeasonalState};
use crate::tail;

/// How an online detector learns and scores, declared on a sink.
///
/// Per window, the detector (1) measures how far the window's features are from the
/// device's learned means, in learned standard deviations, as a chi-square statistic
/// turned into a normal deviate (Wilson–Hilferty); (2) averages that raw score over
/// the last `short` windows; (3) asks how unusual that average is against the
/// device's own history of raw scores (Numenta's "anomaly likelihood", with the spread
/// floored at the raw score's null spread of 1), and reports −log10 of that tail
/// probability, capped at 50; (4) learns from the window unless it scored at or above
/// `learn_below`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineSpec {
    /// Windows that only teach the feature statistics (no score).
    pub warmup_features: u32,
    /// Raw scores then learned by the calibration before the first score.
    pub warmup_calibration: u32,
    /// Once warmed up, the feature statistics average over about this many windows
    /// (learning rate 1 / horizon); until then they are plain running averages.
    pub horizon: f64,
    /// The calibration stays a plain running average for this many raw scores, then
    /// moves at 1 / horizon. The default (the calibration warm-up) keeps a slowly
    /// growing fault from dragging the device's idea of a normal score up with it.
    pub calibration_cumulative: u32,
    /// Raw scores averaged before calibration.
    pub short: usize,
    /// Windows scoring at or above this are not learned from at all, so a developing
    /// fault is not taken for the new normal (`f64::INFINITY`: learn everything).
    pub learn_below: f64,
    /// Nor is a window whose own raw score (before averaging) is at or above this once
    /// the device is warmed up: a sudden step is far out on its first window, while the
    /// averaged score is still catching up, and learning it would widen the device's
    /// normal until the step no longer stands out.
    pub learn_raw_below: f64,
    /// When set, a window with a feature outside the range learned so far by more than
    /// this fraction of the range scores the maximum (a new range is news).
    pub new_range: Option<f64>,
    /// When set, a second channel scores each window against the mean of its slot of
    /// the period (the time of day), see [`crate::seasonal`].
    #[serde(default)]
    pub season: Option<Season>,
}

/// Largest score reported.
pub const MAX_SCORE: f64 = 50.0;

impl Default for OnlineSpec {
    /// The `online` detector: for machines whose faults persist and grow.
    fn default() -> Self {
        OnlineSpec {
            warmup_features: 20,
            warmup_calibration: 40,
            horizon: 1000.0,
            calibration_cumulative: 40,
            short: 10,
            learn_below: 2.0,
            learn_raw_below: 8.0,
            new_range: None,
            season: None,
        }
    }
}

impl OnlineSpec {
    /// The `online-adaptive` detector: for series whose changes become the new normal
    /// (traffic, load, business and IT metrics): learns every window, flags a value
    /// outside the range seen so far, and is meant to alert on a single window.
    pub fn adaptive() -> Self {
        OnlineSpec {
            calibration_cumulative: 1000,
            learn_below: f64::INFINITY,
            learn_raw_below: f64::INFINITY,
            new_range: Some(0.02),
            ..OnlineSpec::default()
        }
    }

    /// Splits a total warm-up of `windows` as the defaults do (a third for the
    /// features, the rest for the calibration).
    pub fn with_warmup(mut self, windows: u32) -> Self {
        let w = windows.max(3);
        self.warmup_features = w / 3;
        self.warmup_calibration = w - w / 3;
        if self.learn_below.is_finite() {
            self.calibration_cumulative = self.warmup_calibration;
        }
        self
    }

    /// Windows before the first score.
    pub fn warmup(&self) -> u32 {
        self.warmup_features + self.warmup_calibration
    }
}

/// One device's learned normal: 168 + 8 × (2d + short) bytes for `d` features (344 for
/// six features with the default `short` of 10), plus 16d with `new_range`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnlineState {
    /// Windows the feature statistics learned.
    pub n: u64,
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature variance.
    pub var: Vec<f64>,
    /// The last raw scores (a ring).
    pub recent: Vec<f64>,
    /// Next slot of the ring, and how many are filled.
    pub at: usize,
    /// Filled slots.
    pub filled: usize,
    /// Mean and variance of the device's raw scores.
    pub cal_mean: f64,
    /// See `cal_mean`.
    pub cal_var: f64,
    /// Raw scores the calibration learned.
    pub cal_n: u64,
    /// Range of each feature over the learned windows (with `new_range`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub low: Vec<f64>,
    /// See `low`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub high: Vec<f64>,
    /// The seasonal channel (with [`OnlineSpec::season`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonal: Option<Box<SeasonalState>>,
}

/// A scored window.
#[derive(Debug, Clone, PartialEq)]
pub struct Surprise {
    /// −log10 of the probability of a window at least this unusual (0 = typical, 3 =
    /// one in a thousand); `None` while the device is warming up.
    pub score: Option<f64>,
    /// Each feature's squared standardised distance (non-negative), for explanations.
    pub terms: Vec<f64>,
}

/// Standard-deviation floor: relative to the feature's magnitude plus a tiny absolute
/// one, so a sensor that never moved is not infinitely surprised by its last digit.
const REL_FLOOR: f64 = 1e-3;
const ABS_FLOOR: f64 = 1e-9;
/// The calibration's spread is at least the raw score's own null spread.
const CAL_FLOOR: f64 = 1.0;

/// −log10 of the standard normal upper tail at `z`.
fn normal_surprise(z: f64) -> f64 {
    if z < 30.0 {
        let p = 0.5 * tail::erfc(z / std::f64::consts::SQRT_2);
        if p > 0.0 {
            -p.log10()
        } else {
            300.0
        }
    } else {
        (0.5 * z * z + z.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln()) / std::f64::consts::LN_10
    }
}

impl OnlineState {
    fn sd(&self, j: usize) -> f64 {
        self.var[j].sqrt() + REL_FLOOR * self.mean[j].abs() + ABS_FLOOR
    }

    /// Scores `x` against what this device has learned, then learns from it (unless it
    /// is too surprising, see [`OnlineSpec::learn_below`]). A window with a non-finite
    /// feature is skipped: no score, nothing learned.
    pub fn observe(&mut self, spec: &OnlineSpec, x: &[f64]) -> Surprise {
        if x.iter().any(|v| !v.is_finite()) {
            return Surprise {
                score: None,
                terms: vec![],
            };
        }
        let d = x.len();
        if self.mean.len() != d {
            // New, or the features changed: start again.
            *self = OnlineState {
                mean: vec![0.0; d],
                var: vec![0.0; d],
                recent: vec![0.0; spec.short.max(1)],
                low: if spec.new_range.is_some() {
                    vec![f64::INFINITY; d]
                } else {
                    vec![]
                },
                high: if spec.new_range.is_some() {
                    vec![f64::NEG_INFINITY; d]
                } else {
                    vec![]
                },
                ..OnlineState::default()
            };
        }
        if self.n < u64::from(spec.warmup_features) {
            self.learn_features(spec, x);
            return Surprise {
                score: None,
                terms: vec![],
            };
        }
        // 1. Raw score: the chi-square statistic over the features that vary (or moved),
        // as a normal deviate.
        let (mut q, mut used) = (0.0, 0usize);
        let mut terms = vec![0.0; d];
        for j in 0..d {
            let dl = x[j] - self.mean[j];
            if self.var[j] > 0.0 || dl != 0.0 {
                used += 1;
                let z = dl / self.sd(j);
                terms[j] = z * z;
                q += z * z;
            }
        }
        let df = used.max(1) as f64;
        let c = 2.0 / (9.0 * df);
        let a = ((q / df).powf(1.0 / 3.0) - (1.0 - c)) / c.sqrt();
        // 2. Its short moving average.
        let k = self.recent.len();
        self.recent[self.at] = a;
        self.at = (self.at + 1) % k;
        self.filled = (self.filled + 1).min(k);
        let m = self.recent[..self.filled].iter().sum::<f64>() / self.filled as f64;
        // 3. Calibrated against the device's own raw scores.
        let mut score = (self.cal_n >= u64::from(spec.warmup_calibration)).then(|| {
            let z = (m - self.cal_mean) / self.cal_var.sqrt().max(CAL_FLOOR);
            normal_surprise(z).min(MAX_SCORE)
        });
        if let (Some(s), Some(tol)) = (score.as_mut(), spec.new_range) {
            let outside = (0..d).any(|j| {
                let r = self.high[j] - self.low[j];
                x[j] > self.high[j] + tol * r || x[j] < self.low[j] - tol * r
            });
            if outside {
                *s = MAX_SCORE;
            }
        }
        // 4. Learn, unless too surprising.
        let step = self.cal_n >= u64::from(spec.warmup_calibration) && a >= spec.learn_raw_below;
        if score.is_none_or(|s| s < spec.learn_below) && !step {
            self.learn_features(spec, x);
            let al = if self.cal_n < u64::from(spec.calibration_cumulative) {
                1.0 / (self.cal_n + 1) as f64
            } else {
                1.0 / spec.horizon.max(1.0)
            };
            let dl = a - self.cal_mean;
            self.cal_mean += al * dl;
            self.cal_var = (1.0 - al) * (self.cal_var + al * dl * dl);
            self.cal_n += 1;
        }
        Surprise { score, terms }
    }

    /// Like [`observe`](Self::observe), for the window starting at `t_ms`: with
    /// [`OnlineSpec::season`], the seasonal channel scores it too and the surprise is
    /// the two channels' combined.
    pub fn observe_at(&mut self, spec: &OnlineSpec, t_ms: i64, x: &[f64]) -> Surprise {
        let first = self.observe(spec, x);
        match spec.season {
            Some(season) if x.iter().all(|v| v.is_finite()) => self
                .seasonal
                .get_or_insert_with(Default::default)
                .observe(spec, season, t_ms, x, first),
            _ => first,
        }
    }

    fn learn_features(&mut self, spec: &OnlineSpec, x: &[f64]) {
        for ((lo, hi), v) in self.low.iter_mut().zip(self.high.iter_mut()).zip(x) {
            *lo = lo.min(*v);
            *hi = hi.max(*v);
        }
        // A plain running average for the first `horizon` windows, then exponential.
        let a = if (self.n as f64) < spec.horizon {
            1.0 / (self.n + 1) as f64
        } else {
            1.0 / spec.horizon
        };
        for (j, v) in x.iter().enumerate() {
            let d = v - self.mean[j];
            self.mean[j] += a * d;
            self.var[j] = (1.0 - a) * (self.var[j] + a * d * d);
        }
        self.n += 1;
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

    /// Like [`observe`](Self::observe), for the window starting at `t_ms` (which the
    /// seasonal channel needs); see [`OnlineState::observe_at`].
    pub fn observe_at(&mut self, device: &str, t_ms: i64, x: &[f64]) -> Surprise {
        let spec = &self.spec;
        match self.devices.get_mut(device) {
            Some(s) => s.observe_at(spec, t_ms, x),
            None => self
                .devices
                .entry(device.to_string())
                .or_default()
                .observe_at(spec, t_ms, x),
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
/// The score is −log10 of a per-window tail probability, so about `per_month /
/// windows_per_month` of healthy windows reach `−log10(per_month / windows_per_month)`.
/// The score is a moving average over several windows, so those windows come in runs,
/// one excursion each: `raise_after` removes isolated blips but is not credited as
/// dividing the rate further.
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
            assert_eq!(s.score.is_none(), i < spec.warmup() as usize, "window {i}");
            if i >= spec.warmup() as usize {
                assert!(s.score.unwrap() < 3.0, "healthy window {i}: {s:?}");
            }
        }
        // A fault that persists: feature b 8 standard deviations up.
        let mut last = None;
        for _ in 0..10 {
            last = Some(d.observe("p1", &[10.0 + normal(&mut seed), 90.0]));
        }
        let s = last.unwrap();
        assert!(s.score.unwrap() > 5.0, "{s:?}");
        assert_eq!(d.explain(&s).unwrap().split(' ').next(), Some("b"));
    }

    /// A sudden step that persists is seen and stays seen: its first windows, while the
    /// averaged score is still low, are not learned (they are far out on their own).
    #[test]
    fn a_step_that_persists_is_not_learned_away() {
        let spec = OnlineSpec::default();
        let mut s = OnlineState::default();
        for i in 0..70 {
            s.observe(&spec, &[20.0 + (i % 3) as f64]);
        }
        let scores: Vec<f64> = (0..30)
            .map(|_| s.observe(&spec, &[35.0]).score.unwrap())
            .collect();
        // Reference implementation: 0.89, 2.16, 3.74, 5.83, 9.01, ... 31.51 from the 10th.
        assert!(
            (scores[0] - 0.89).abs() < 0.01 && (scores[3] - 5.83).abs() < 0.01,
            "{scores:?}"
        );
        assert!(scores[9..].iter().all(|v| *v > 31.0), "{scores:?}");
    }

    /// Scores of the reference implementation the method was chosen with (Python,
    /// kept with the research), window by window: C-MAPSS engine 1 (21 sensors, 10-cycle
    /// means) with `online`, NAB's speed_7578 with `online-adaptive`.
    #[test]
    fn agrees_with_the_reference_implementation() {
        for (file, spec) in [
            ("online_cmapss_unit1.json", OnlineSpec::default()),
            (
                "online_adaptive_nab_speed_7578.json",
                OnlineSpec::adaptive(),
            ),
        ] {
            let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
            let g: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut state = OnlineState::default();
            let (mut scored, mut worst) = (0, 0.0f64);
            for (i, row) in g["rows"].as_array().unwrap().iter().enumerate() {
                let x: Vec<f64> = row[0]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let got = state.observe(&spec, &x).score;
                match (got, row[1].as_f64()) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        scored += 1;
                        worst = worst.max((a - b).abs());
                    }
                    (a, b) => panic!("{file} row {i}: {a:?} vs reference {b:?}"),
                }
            }
            assert!(scored > 100, "{file}: {scored}");
            assert!(worst < 1e-9, "{file}: worst difference {worst}");
        }
    }

    /// The seasonal channel against the Python reference (`seasonal.py`): the NAB
    /// profile (online-adaptive, horizon 8640 windows) with a season of one day in
    /// 5-minute slots, on a daily-periodic series whose anomaly only the time of day
    /// shows, and on an irregular one.
    #[test]
    fn seasonal_channel_matches_the_reference() {
        let mut spec = OnlineSpec::adaptive();
        spec.horizon = 8640.0;
        spec.calibration_cumulative = 8640;
        spec.season = Some(Season::new(86_400_000, 300_000));
        for file in [
            "seasonal_nab_art_daily_jumpsdown.json",
            "seasonal_nab_speed_7578.json",
        ] {
            let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
            let g: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut state = OnlineState::default();
            let (mut scored, mut seasonal, mut worst) = (0, 0, 0.0f64);
            for (i, row) in g["rows"].as_array().unwrap().iter().enumerate() {
                // Window start: the reading's time floored to its 5-minute window.
                let t = (row[0].as_f64().unwrap() * 1000.0) as i64;
                let t = t - t.rem_euclid(300_000);
                let got = state
                    .observe_at(&spec, t, &[row[1].as_f64().unwrap()])
                    .score;
                // The reference reports max(s1, s2) - log10 2 unclamped; ours is not below 0.
                match (got, row[2].as_f64().map(|s| s.max(0.0))) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        scored += 1;
                        seasonal += usize::from(!row[3].is_null());
                        worst = worst.max((a - b).abs());
                    }
                    (a, b) => panic!("{file} row {i}: {a:?} vs reference {b:?}"),
                }
            }
            assert!(
                scored > 100 && seasonal > 100,
                "{file}: {scored}, {seasonal}"
            );
            assert!(worst < 1e-9, "{file}: worst difference {worst}");
        }
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
