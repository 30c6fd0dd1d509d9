//! The seasonal channel of an online detector (`season = '1 day'`): each device keeps
//! the mean of every slot of the period (a 5-minute slot of the day, say), and a second
//! detector scores the window's distance from its slot's mean. A value normal for the
//! device but not for the time of day (a night-time plateau at the daytime level, a
//! missing daily peak) stands out there, while the first channel sees nothing.
//!
//! The two channels' surprises are combined as `max(s1, s2) − log10 2`: −log10 of twice
//! the smaller tail probability (Bonferroni), so taking the better of two tests does not
//! double the false alerts.

use serde::{Deserialize, Serialize};

use crate::online::{OnlineSpec, OnlineState, Surprise};

/// Periods of history a slot needs before its mean is used.
pub const WARM_PERIODS: u32 = 5;
/// Once warmed up, a slot's mean averages over about this many periods.
pub const HORIZON_PERIODS: u32 = 10;
/// Slots a period is cut into at most (bounds the state per device).
pub const MAX_SLOTS: i64 = 1440;

/// The period and the slot width, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Season {
    /// The period, e.g. one day.
    pub period_ms: i64,
    /// Slot width: the window slide, or period / [`MAX_SLOTS`] if that is wider.
    pub slot_ms: i64,
}

impl Season {
    /// A period cut into slots of `slide_ms` (at most [`MAX_SLOTS`] of them).
    pub fn new(period_ms: i64, slide_ms: i64) -> Season {
        let slot_ms = slide_ms.max(1).max((period_ms + MAX_SLOTS - 1) / MAX_SLOTS);
        Season { period_ms, slot_ms }
    }

    /// Slots in a period.
    pub fn slots(&self) -> usize {
        ((self.period_ms + self.slot_ms - 1) / self.slot_ms) as usize
    }
}

/// One device's seasonal channel: the slot means, the slot being accumulated, and the
/// detector of the residuals. 8 × (slots × (d + 0.5) + 2d) bytes plus the residual
/// detector's state, for `d` features (about 3.7 KB for one feature in 5-minute slots of a day).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeasonalState {
    /// Per slot and feature (slot-major), the mean of the slot's per-period averages.
    pub mean: Vec<f64>,
    /// Periods each slot has learned.
    pub periods: Vec<u32>,
    /// The slot and period being accumulated, their feature sums and window count.
    pub slot: i64,
    /// See `slot`.
    pub period: i64,
    /// See `slot`.
    pub sum: Vec<f64>,
    /// See `slot`.
    pub count: u32,
    /// The detector of the residuals `x − mean[slot]`.
    pub residuals: OnlineState,
}

impl SeasonalState {
    /// Scores the window starting at `t_ms` with features `x` in the seasonal channel,
    /// given the first channel's surprise `first`, and returns the combined surprise.
    pub fn observe(
        &mut self,
        spec: &OnlineSpec,
        season: Season,
        t_ms: i64,
        x: &[f64],
        first: Surprise,
    ) -> Surprise {
        let d = x.len();
        let ns = season.slots();
        if self.mean.len() != ns * d {
            *self = SeasonalState {
                mean: vec![0.0; ns * d],
                periods: vec![0; ns],
                slot: -1,
                period: -1,
                sum: vec![0.0; d],
                ..SeasonalState::default()
            };
        }
        let slot = t_ms.rem_euclid(season.period_ms) / season.slot_ms;
        let period = t_ms.div_euclid(season.period_ms);
        // The slot-period being accumulated is finished: fold its average into the slot.
        if self.count > 0 && (slot != self.slot || period != self.period) {
            let i = self.slot as usize;
            let n = self.periods[i];
            let a = if n < HORIZON_PERIODS {
                1.0 / f64::from(n + 1)
            } else {
                1.0 / f64::from(HORIZON_PERIODS)
            };
            for j in 0..d {
                let v = self.sum[j] / f64::from(self.count);
                self.mean[i * d + j] += a * (v - self.mean[i * d + j]);
                self.sum[j] = 0.0;
            }
            self.periods[i] += 1;
            self.count = 0;
        }
        self.slot = slot;
        self.period = period;
        for (s, v) in self.sum.iter_mut().zip(x) {
            *s += v;
        }
        self.count += 1;
        let i = slot as usize;
        if self.periods[i] < WARM_PERIODS {
            return first;
        }
        let r: Vec<f64> = (0..d).map(|j| x[j] - self.mean[i * d + j]).collect();
        // The residual channel: the same detector without the new-range rule (a residual
        // outside its range so far is what it scores anyway).
        let spec2 = OnlineSpec {
            new_range: None,
            ..spec.clone()
        };
        let second = self.residuals.observe(&spec2, &r);
        combine(first, second)
    }
}

/// `max(s1, s2) − log10 2`, not below 0; the first channel alone while the second is
/// warming up, nothing while the first is.
fn combine(first: Surprise, second: Surprise) -> Surprise {
    let (Some(s1), Some(s2)) = (first.score, second.score) else {
        return first;
    };
    let better = if s2 > s1 { second } else { first };
    Surprise {
        score: Some((s1.max(s2) - std::f64::consts::LOG10_2).max(0.0)),
        terms: better.terms,
    }
}
