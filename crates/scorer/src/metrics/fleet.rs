//! Early-warning metrics for run-to-failure data and fleets.
//!
//! Each device is observed from `start` to `end` and fails at `failures` (none for a
//! healthy machine, several for a machine whose components fail one after another; a
//! failure may lie after `end`, as in C-MAPSS test sets where it is `end + RUL`). The
//! engine raised alerts at `raises` and was in alert during `alert_intervals`.
//!
//! **Which failure a raise warns of.** Failures cut a device's life into segments:
//! the first from `start` to the first failure, then from each failure (exclusive) to
//! the next (inclusive). A raise belongs to the segment it lies in, i.e. to the first
//! failure at or after it (a raise at the failure's own time has lead 0).
//!
//! **Valid and false raises.** A raise with no failure after it is false, and so is a
//! raise that fails any rule set in [`FleetParams`]:
//! * `false_before_fraction` `q`: a raise before `s + q (f - s)` (segment start `s`,
//!   failure `f`) is false. The C-MAPSS protocol uses `q = 0.5`: an engine is healthy
//!   in the first half of its life.
//! * `valid_horizon` `H`: a raise not followed by its failure within `H` is false. A
//!   raise after the last failure but within `H` of the end of the observation cannot be
//!   judged (the failure may come after the observation) and is counted as unresolved,
//!   not false.
//!
//! **Lead time** of a failure: the time from its first valid raise to the failure.
//!
//! Times are in any one unit (ms, cycles...); `device_month` gives the length of a
//! month in that unit for the false-alert rate.

use serde::Serialize;

/// Thirty days in milliseconds: the default device-month.
pub const MONTH_MS: i64 = 30 * 24 * 3600 * 1000;

/// Errors in the input of [`evaluate_fleet`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    /// A device's observation ends before it starts.
    #[error("device {device}: observation ends ({end}) before it starts ({start})")]
    BadObservation {
        /// The device.
        device: String,
        /// Its start.
        start: i64,
        /// Its end.
        end: i64,
    },
    /// An alert interval clears before it is raised.
    #[error(
        "device {device}: alert interval cleared at {cleared} before it was raised at {raised}"
    )]
    BadInterval {
        /// The device.
        device: String,
        /// Raise time.
        raised: i64,
        /// Clear time.
        cleared: i64,
    },
    /// A parameter is out of range.
    #[error("{0}")]
    BadParameter(String),
}

/// One device's history.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DeviceRun {
    /// Device identifier.
    pub device: String,
    /// Start of the observation.
    pub start: i64,
    /// End of the observation (for run-to-failure data, the failure time).
    pub end: i64,
    /// Failure times (any order; none for a healthy device).
    pub failures: Vec<i64>,
    /// Times at which alerts were raised (any order).
    pub raises: Vec<i64>,
    /// Periods in alert: raised to cleared, or `None` when still open at `end`.
    pub alert_intervals: Vec<(i64, Option<i64>)>,
}

impl DeviceRun {
    /// A device whose raises are the starts of its alert intervals.
    pub fn from_intervals(
        device: impl Into<String>,
        start: i64,
        end: i64,
        failures: Vec<i64>,
        alert_intervals: Vec<(i64, Option<i64>)>,
    ) -> DeviceRun {
        DeviceRun {
            device: device.into(),
            start,
            end,
            failures,
            raises: alert_intervals.iter().map(|i| i.0).collect(),
            alert_intervals,
        }
    }
}

/// What counts as a valid warning, and what to report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetParams {
    /// Lead-time horizons to report (same unit as the times).
    pub horizons: Vec<i64>,
    /// A raise before this fraction of its life segment is false (C-MAPSS: 0.5).
    pub false_before_fraction: Option<f64>,
    /// A raise not followed by its failure within this time is false.
    pub valid_horizon: Option<i64>,
    /// Length of a device-month in the time unit (`None`: no per-month rate).
    pub device_month: Option<i64>,
}

impl Default for FleetParams {
    /// No horizons, no fraction or horizon rule, 30-day months in milliseconds.
    fn default() -> Self {
        FleetParams {
            horizons: Vec::new(),
            false_before_fraction: None,
            valid_horizon: None,
            device_month: Some(MONTH_MS),
        }
    }
}

impl FleetParams {
    /// The C-MAPSS protocol: raises in the first half of an engine's life are false;
    /// times are cycles, so no device-month rate.
    pub fn cmapss(horizons: Vec<i64>) -> FleetParams {
        FleetParams {
            horizons,
            false_before_fraction: Some(0.5),
            valid_horizon: None,
            device_month: None,
        }
    }
}

/// How one raise was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RaiseVerdict {
    /// A valid warning of the failure at this time.
    Warns(i64),
    /// A false alert.
    False,
    /// After the last failure, within `valid_horizon` of the end of the observation.
    Unresolved,
}

/// One failure and its warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailureOutcome {
    /// Failure time.
    pub time: i64,
    /// First valid raise before it.
    pub first_warning: Option<i64>,
    /// Last valid raise before it.
    pub last_warning: Option<i64>,
}

impl FailureOutcome {
    /// Lead time of the first valid raise.
    pub fn lead(&self) -> Option<i64> {
        self.first_warning.map(|r| self.time - r)
    }
}

/// One device's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceOutcome {
    /// Device identifier.
    pub device: String,
    /// Its failures in time order.
    pub failures: Vec<FailureOutcome>,
    /// Each raise (in time order) and its verdict.
    pub raises: Vec<(i64, RaiseVerdict)>,
    /// False alerts.
    pub false_alerts: usize,
    /// Unresolved raises.
    pub unresolved: usize,
    /// Observed time (`end - start`).
    pub observed: i64,
    /// Time in alert within the observation.
    pub time_in_alert: i64,
}

/// Counts for one horizon `H`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HorizonStats {
    /// The horizon.
    pub horizon: i64,
    /// Failures whose first valid raise came at least `H` before them.
    pub failures_warned_ahead: usize,
    /// Devices with at least one failure, all warned at least `H` ahead.
    pub devices_warned_ahead: usize,
    /// Failures with a valid raise within the last `H` before them.
    pub failures_raised_within: usize,
}

/// Distribution of lead times (over failures with a valid raise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LeadTimes {
    /// Failures with a valid raise.
    pub count: usize,
    /// Shortest lead.
    pub min: f64,
    /// First quartile (linear interpolation between order statistics).
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Longest lead.
    pub max: f64,
}

impl LeadTimes {
    /// The distribution of `leads`, or `None` when empty.
    pub fn of(leads: &[i64]) -> Option<LeadTimes> {
        let mut v = leads.to_vec();
        v.sort_unstable();
        let q = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            v[lo] as f64 + (pos - lo as f64) * (v[hi] - v[lo]) as f64
        };
        (!v.is_empty()).then(|| LeadTimes {
            count: v.len(),
            min: v[0] as f64,
            q1: q(0.25),
            median: q(0.5),
            q3: q(0.75),
            max: v[v.len() - 1] as f64,
        })
    }
}

/// Early-warning metrics over a fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// Devices.
    pub devices: usize,
    /// Devices with at least one failure.
    pub devices_with_failures: usize,
    /// Failures.
    pub failures: usize,
    /// Failures with at least one valid raise.
    pub failures_warned: usize,
    /// Per horizon, in the order given.
    pub horizons: Vec<HorizonStats>,
    /// Lead times of the first valid raises.
    pub lead_times: Option<LeadTimes>,
    /// Raises.
    pub raises: usize,
    /// Valid raises.
    pub valid_raises: usize,
    /// False alerts.
    pub false_alerts: usize,
    /// Raises that cannot be judged (see [`RaiseVerdict::Unresolved`]).
    pub unresolved_raises: usize,
    /// False alerts per device.
    pub false_alerts_per_device: f64,
    /// Observed time in device-months (when `device_month` is set).
    pub device_months: Option<f64>,
    /// False alerts per device-month.
    pub false_alerts_per_device_month: Option<f64>,
    /// Total observed time.
    pub observed: i64,
    /// Total time in alert.
    pub time_in_alert: i64,
    /// `time_in_alert / observed` (0 when nothing was observed).
    pub alert_time_fraction: f64,
    /// Per device, in the order given.
    pub per_device: Vec<DeviceOutcome>,
}

fn check_params(p: &FleetParams) -> Result<(), FleetError> {
    if let Some(q) = p.false_before_fraction {
        if !(0.0..=1.0).contains(&q) {
            return Err(FleetError::BadParameter(format!(
                "false_before_fraction must be in [0, 1], got {q}"
            )));
        }
    }
    if let Some(h) = p.horizons.iter().chain(&p.valid_horizon).find(|&&h| h < 0) {
        return Err(FleetError::BadParameter(format!(
            "horizons must not be negative, got {h}"
        )));
    }
    if let Some(m) = p.device_month.filter(|&m| m <= 0) {
        return Err(FleetError::BadParameter(format!(
            "device_month must be positive, got {m}"
        )));
    }
    Ok(())
}

/// Time covered by `intervals` within `[start, end]` (overlaps counted once).
fn covered(start: i64, end: i64, intervals: &[(i64, Option<i64>)]) -> i64 {
    let mut spans: Vec<(i64, i64)> = intervals
        .iter()
        .map(|&(a, b)| (a.max(start), b.unwrap_or(end).min(end)))
        .filter(|&(a, b)| b > a)
        .collect();
    spans.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(i64, i64)> = None;
    for (a, b) in spans {
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    total + cur.map_or(0, |(a, b)| b - a)
}

fn evaluate_device(d: &DeviceRun, p: &FleetParams) -> Result<DeviceOutcome, FleetError> {
    if d.end < d.start {
        return Err(FleetError::BadObservation {
            device: d.device.clone(),
            start: d.start,
            end: d.end,
        });
    }
    if let Some(&(raised, Some(cleared))) = d
        .alert_intervals
        .iter()
        .find(|(a, b)| b.is_some_and(|b| b < *a))
    {
        return Err(FleetError::BadInterval {
            device: d.device.clone(),
            raised,
            cleared,
        });
    }
    let mut failures = d.failures.clone();
    failures.sort_unstable();
    let mut raises = d.raises.clone();
    raises.sort_unstable();
    let mut outcomes: Vec<FailureOutcome> = failures
        .iter()
        .map(|&time| FailureOutcome {
            time,
            first_warning: None,
            last_warning: None,
        })
        .collect();
    let mut verdicts = Vec::with_capacity(raises.len());
    for &r in &raises {
        let k = failures.partition_point(|&f| f < r);
        let verdict = match failures.get(k) {
            None => match p.valid_horizon {
                Some(h) if r > d.end.saturating_sub(h) => RaiseVerdict::Unresolved,
                _ => RaiseVerdict::False,
            },
            Some(&f) => {
                let s = if k == 0 { d.start } else { failures[k - 1] };
                let early = p
                    .false_before_fraction
                    .is_some_and(|q| ((r - s) as f64) < q * (f - s) as f64);
                let late = p.valid_horizon.is_some_and(|h| f - r > h);
                if early || late {
                    RaiseVerdict::False
                } else {
                    let o = &mut outcomes[k];
                    o.first_warning.get_or_insert(r);
                    o.last_warning = Some(r);
                    RaiseVerdict::Warns(f)
                }
            }
        };
        verdicts.push((r, verdict));
    }
    let count = |v: RaiseVerdict| verdicts.iter().filter(|x| x.1 == v).count();
    Ok(DeviceOutcome {
        device: d.device.clone(),
        false_alerts: count(RaiseVerdict::False),
        unresolved: count(RaiseVerdict::Unresolved),
        failures: outcomes,
        raises: verdicts,
        observed: d.end - d.start,
        time_in_alert: covered(d.start, d.end, &d.alert_intervals),
    })
}

/// Evaluates a fleet's alerts against its failures.
pub fn evaluate_fleet(
    devices: &[DeviceRun],
    params: &FleetParams,
) -> Result<FleetReport, FleetError> {
    check_params(params)?;
    let per_device = devices
        .iter()
        .map(|d| evaluate_device(d, params))
        .collect::<Result<Vec<_>, _>>()?;
    let all_failures = || per_device.iter().flat_map(|d| &d.failures);
    let leads: Vec<i64> = all_failures().filter_map(FailureOutcome::lead).collect();
    let horizons = params
        .horizons
        .iter()
        .map(|&h| {
            let ahead = |f: &FailureOutcome| f.lead().is_some_and(|l| l >= h);
            HorizonStats {
                horizon: h,
                failures_warned_ahead: all_failures().filter(|f| ahead(f)).count(),
                devices_warned_ahead: per_device
                    .iter()
                    .filter(|d| !d.failures.is_empty() && d.failures.iter().all(ahead))
                    .count(),
                failures_raised_within: all_failures()
                    .filter(|f| f.last_warning.is_some_and(|r| f.time - r <= h))
                    .count(),
            }
        })
        .collect();
    let raises: usize = per_device.iter().map(|d| d.raises.len()).sum();
    let false_alerts: usize = per_device.iter().map(|d| d.false_alerts).sum();
    let unresolved_raises: usize = per_device.iter().map(|d| d.unresolved).sum();
    let observed: i64 = per_device.iter().map(|d| d.observed).sum();
    let time_in_alert: i64 = per_device.iter().map(|d| d.time_in_alert).sum();
    let device_months = params.device_month.map(|m| observed as f64 / m as f64);
    Ok(FleetReport {
        devices: devices.len(),
        devices_with_failures: per_device.iter().filter(|d| !d.failures.is_empty()).count(),
        failures: all_failures().count(),
        failures_warned: leads.len(),
        horizons,
        lead_times: LeadTimes::of(&leads),
        raises,
        valid_raises: raises - false_alerts - unresolved_raises,
        false_alerts,
        unresolved_raises,
        false_alerts_per_device: if devices.is_empty() {
            0.0
        } else {
            false_alerts as f64 / devices.len() as f64
        },
        device_months,
        false_alerts_per_device_month: device_months
            .filter(|&m| m > 0.0)
            .map(|m| false_alerts as f64 / m),
        observed,
        time_in_alert,
        alert_time_fraction: if observed > 0 {
            time_in_alert as f64 / observed as f64
        } else {
            0.0
        },
        per_device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(name: &str, fail: i64, intervals: Vec<(i64, Option<i64>)>) -> DeviceRun {
        DeviceRun::from_intervals(name, 0, fail, vec![fail], intervals)
    }

    #[test]
    fn cmapss_half_life_rule() {
        let fleet = [
            // 30 is before half of 100: false; 60 is the first valid raise (lead 40).
            engine("a", 100, vec![(30, Some(35)), (60, Some(70)), (80, None)]),
            // 150 >= 100: valid, lead 50.
            engine("b", 200, vec![(150, None)]),
            // Never alerted.
            engine("c", 50, vec![]),
        ];
        let mut params = FleetParams::cmapss(vec![10, 45, 60]);
        params.device_month = Some(100);
        let r = evaluate_fleet(&fleet, &params).unwrap();
        assert_eq!((r.devices, r.devices_with_failures, r.failures), (3, 3, 3));
        assert_eq!(r.failures_warned, 2);
        assert_eq!((r.raises, r.valid_raises, r.false_alerts), (4, 3, 1));
        let h: Vec<_> = r
            .horizons
            .iter()
            .map(|h| (h.failures_warned_ahead, h.devices_warned_ahead))
            .collect();
        assert_eq!(h, vec![(2, 2), (1, 1), (0, 0)]);
        // Last valid raises: a at 80 (20 before), b at 150 (50 before).
        let within: Vec<_> = r
            .horizons
            .iter()
            .map(|h| h.failures_raised_within)
            .collect();
        assert_eq!(within, vec![0, 1, 2]);
        let l = r.lead_times.unwrap();
        assert_eq!(
            (l.count, l.min, l.q1, l.median, l.q3, l.max),
            (2, 40.0, 42.5, 45.0, 47.5, 50.0)
        );
        assert!((r.false_alerts_per_device - 1.0 / 3.0).abs() < 1e-12);
        // Observed 350 = 3.5 device-months of 100.
        assert_eq!(r.device_months, Some(3.5));
        assert!((r.false_alerts_per_device_month.unwrap() - 1.0 / 3.5).abs() < 1e-12);
        // In alert: a 5 + 10 + 20, b 50, c 0.
        assert_eq!((r.time_in_alert, r.observed), (85, 350));
        assert!((r.alert_time_fraction - 85.0 / 350.0).abs() < 1e-12);
        assert_eq!(r.per_device[0].failures[0].lead(), Some(40));
        assert_eq!(r.per_device[0].raises[0], (30, RaiseVerdict::False));
    }

    fn machine() -> DeviceRun {
        DeviceRun {
            device: "d".into(),
            start: 0,
            end: 1000,
            failures: vec![700, 300],
            raises: vec![100, 250, 280, 500, 690, 950],
            alert_intervals: vec![],
        }
    }

    #[test]
    fn horizon_rule_with_several_failures_and_a_healthy_machine() {
        let healthy = DeviceRun {
            device: "e".into(),
            start: 0,
            end: 1000,
            raises: vec![950, 100],
            ..Default::default()
        };
        let params = FleetParams {
            horizons: vec![20, 60],
            valid_horizon: Some(100),
            ..Default::default()
        };
        let r = evaluate_fleet(&[machine(), healthy], &params).unwrap();
        // 100 (200 before 300) and 500 (200 before 700) are false; 250, 280 warn of 300;
        // 690 warns of 700; 950 on both machines is within 100 of the end: unresolved.
        assert_eq!(
            r.per_device[0].raises,
            vec![
                (100, RaiseVerdict::False),
                (250, RaiseVerdict::Warns(300)),
                (280, RaiseVerdict::Warns(300)),
                (500, RaiseVerdict::False),
                (690, RaiseVerdict::Warns(700)),
                (950, RaiseVerdict::Unresolved),
            ]
        );
        assert_eq!(
            (
                r.raises,
                r.valid_raises,
                r.false_alerts,
                r.unresolved_raises
            ),
            (8, 3, 3, 2)
        );
        assert_eq!((r.devices, r.devices_with_failures, r.failures), (2, 1, 2));
        let leads: Vec<_> = r.per_device[0].failures.iter().map(|f| f.lead()).collect();
        assert_eq!(leads, vec![Some(50), Some(10)]);
        let h: Vec<_> = r
            .horizons
            .iter()
            .map(|h| {
                (
                    h.failures_warned_ahead,
                    h.devices_warned_ahead,
                    h.failures_raised_within,
                )
            })
            .collect();
        assert_eq!(h, vec![(1, 0, 2), (0, 0, 2)]);
        assert_eq!(r.false_alerts_per_device, 1.5);
        // 2000 ms is a tiny fraction of a 30-day month.
        let m = r.device_months.unwrap();
        assert!((m - 2000.0 / MONTH_MS as f64).abs() < 1e-18);
        assert!((r.false_alerts_per_device_month.unwrap() - 3.0 / m).abs() < 1e-6);
        assert_eq!(r.alert_time_fraction, 0.0);
    }

    #[test]
    fn fraction_rule_per_life_segment() {
        let params = FleetParams {
            false_before_fraction: Some(0.5),
            ..Default::default()
        };
        let r = evaluate_fleet(&[machine()], &params).unwrap();
        // Segment [0, 300]: cutoff 150, so 100 is false. Segment (300, 700]: cutoff 500,
        // and 500 is valid. 950 follows the last failure: false (no horizon rule).
        let v: Vec<_> = r.per_device[0].raises.iter().map(|x| x.1).collect();
        assert_eq!(
            v,
            vec![
                RaiseVerdict::False,
                RaiseVerdict::Warns(300),
                RaiseVerdict::Warns(300),
                RaiseVerdict::Warns(700),
                RaiseVerdict::Warns(700),
                RaiseVerdict::False,
            ]
        );
        let leads: Vec<_> = r.per_device[0].failures.iter().map(|f| f.lead()).collect();
        assert_eq!(leads, vec![Some(50), Some(200)]);
        // Both rules: 500 is 200 before 700, beyond a horizon of 100.
        let both = FleetParams {
            valid_horizon: Some(100),
            ..params
        };
        let r = evaluate_fleet(&[machine()], &both).unwrap();
        assert_eq!(r.per_device[0].failures[1].lead(), Some(10));
    }

    #[test]
    fn raise_at_failure_has_lead_zero_and_failure_may_follow_observation() {
        let d = DeviceRun {
            device: "x".into(),
            start: 0,
            end: 80,
            failures: vec![100],
            raises: vec![100],
            alert_intervals: vec![(-10, Some(10)), (5, Some(20)), (70, None)],
        };
        let r = evaluate_fleet(&[d], &FleetParams::cmapss(vec![0, 1])).unwrap();
        assert_eq!(r.per_device[0].failures[0].lead(), Some(0));
        assert_eq!(r.horizons[0].failures_warned_ahead, 1);
        assert_eq!(r.horizons[1].failures_warned_ahead, 0);
        // Intervals clipped to [0, 80] and merged: [0, 20] and [70, 80].
        assert_eq!(r.time_in_alert, 30);
        assert_eq!(r.device_months, None);
    }

    #[test]
    fn empty_fleet_and_bad_input() {
        let r = evaluate_fleet(&[], &FleetParams::default()).unwrap();
        assert_eq!((r.devices, r.false_alerts_per_device), (0, 0.0));
        assert_eq!(r.lead_times, None);
        assert_eq!(r.false_alerts_per_device_month, None);
        let bad = FleetParams {
            false_before_fraction: Some(1.5),
            ..Default::default()
        };
        assert!(evaluate_fleet(&[], &bad).is_err());
        let bad = FleetParams {
            horizons: vec![-1],
            ..Default::default()
        };
        assert!(evaluate_fleet(&[], &bad).is_err());
        let d = DeviceRun {
            end: -1,
            ..Default::default()
        };
        assert!(matches!(
            evaluate_fleet(&[d], &FleetParams::default()),
            Err(FleetError::BadObservation { .. })
        ));
        let d = DeviceRun::from_intervals("y", 0, 10, vec![], vec![(5, Some(4))]);
        assert!(matches!(
            evaluate_fleet(&[d], &FleetParams::default()),
            Err(FleetError::BadInterval { .. })
        ));
    }

    #[test]
    fn lead_quartiles_interpolate() {
        let l = LeadTimes::of(&[7, 1, 3, 5]).unwrap();
        assert_eq!(
            (l.min, l.q1, l.median, l.q3, l.max),
            (1.0, 2.5, 4.0, 5.5, 7.0)
        );
        let l = LeadTimes::of(&[4]).unwrap();
        assert_eq!((l.q1, l.median, l.q3), (4.0, 4.0, 4.0));
    }
}
