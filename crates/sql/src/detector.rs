//! A sink's online detector (`detector = 'online'` and its options): each device's
//! windows are scored against what that device's own earlier windows taught it, and
//! the alert threshold can be stated as an affordable rate of false alerts.

use std::collections::BTreeMap;

use forewarn_alerts::LifecycleSpec;
use forewarn_core::{parse_interval, Millis, WindowSpec};
use forewarn_scorer::OnlineSpec;

/// The options that belong to an online detector.
pub(crate) const DETECTOR_OPTIONS: &[&str] = &[
    "detector",
    "features",
    "warmup",
    "horizon",
    "false_alerts",
    "season",
];

/// Default affordable false alerts per device-month.
pub const DEFAULT_FALSE_ALERTS: f64 = 1.0;
/// Default warm-up: windows before a device's first score.
pub const DEFAULT_WARMUP: Span = Span::Windows(60.0);
/// Default learning horizon: once warmed up, what a device has learned averages over
/// about this many windows.
pub const DEFAULT_HORIZON: Span = Span::Windows(1000.0);

/// Which online detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineKind {
    /// `online`: faults persist and grow; surprising windows are not learned.
    Persistent,
    /// `online-adaptive`: changes become the new normal; every window is learned, a
    /// value outside the range seen so far is news, one window raises.
    Adaptive,
}

impl OnlineKind {
    /// Lifecycle defaults: consecutive windows to raise and to clear, and how far below
    /// the threshold a window must score to count towards a clear.
    fn lifecycle(self) -> (u32, u32, f64) {
        match self {
            OnlineKind::Persistent => (3, 10, 0.5),
            OnlineKind::Adaptive => (1, 5, 1.0),
        }
    }
}

/// A length given either in windows (`'30 windows'`) or in event time (`'6 hours'`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// A number of windows.
    Windows(f64),
    /// A duration, ms; counted in the query's window slide.
    Time(Millis),
}

impl Span {
    fn parse(v: &str) -> Result<Span, String> {
        let t = v.trim();
        let lower = t.to_ascii_lowercase();
        for unit in ["windows", "window"] {
            if let Some(n) = lower.strip_suffix(unit) {
                return n
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 1.0)
                    .map(Span::Windows)
                    .ok_or_else(|| format!("'{v}' is not a number of windows (at least 1)"));
            }
        }
        match parse_interval(t, None) {
            Ok(ms) if ms > 0 => Ok(Span::Time(ms)),
            _ => Err(format!(
                "'{v}' is neither a number of windows ('30 windows') nor a duration ('6 hours')"
            )),
        }
    }

    /// In windows of `slide` ms (`None`: the windows have no fixed slide).
    fn windows(self, slide: Option<Millis>) -> Option<f64> {
        match self {
            Span::Windows(n) => Some(n),
            Span::Time(ms) => slide.map(|s| (ms as f64 / s as f64).max(1.0)),
        }
    }
}

/// `detector = 'online'` as declared on a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineDecl {
    /// `detector = 'online'` or `'online-adaptive'`.
    pub kind: OnlineKind,
    /// `features = 'a, b'`: the result columns it learns; `None`: every numeric column
    /// that is not a window bound, the device or a grouping key.
    pub features: Option<Vec<String>>,
    /// `warmup`: windows learned from before a device is scored.
    pub warmup: Span,
    /// `horizon`: once warmed up, how many recent windows the learned normal averages over.
    pub horizon: Span,
    /// `false_alerts = 'N per device-month'` when the threshold is derived from it
    /// (`None` when `warning_at` is given).
    pub false_alerts: Option<f64>,
    /// `season = '1 day'`: the period of the seasonal channel, ms.
    pub season: Option<Millis>,
}

/// A rate such as `1 per device-month`, `0.5 per device-week`, in false alerts per
/// device per 30 days.
fn rate(v: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "false_alerts = '{v}' is not a rate like '1 per device-month' (per device-day, -week, -month or -year)"
        )
    };
    let lower = v.trim().to_ascii_lowercase();
    let (n, per) = lower.split_once(" per ").ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let days = match per
        .trim()
        .trim_start_matches("device")
        .trim_start_matches(['-', ' '])
    {
        "day" => 1.0,
        "week" => 7.0,
        "month" => 30.0,
        "year" => 365.0,
        _ => return Err(bad()),
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("false_alerts = '{v}': the rate must be above 0"));
    }
    Ok(n * 30.0 / days)
}

/// The detector options of a sink's `WITH (...)`, if `detector` is given. Errors name
/// the option whose value is wrong.
pub(crate) fn online_options(
    map: &BTreeMap<String, String>,
) -> Result<Option<OnlineDecl>, (&'static str, String)> {
    let Some(kind) = map.get("detector") else {
        // false_alerts also sets the threshold on a trained model's surprise.
        if let Some(k) = DETECTOR_OPTIONS
            .iter()
            .filter(|k| **k != "false_alerts")
            .find(|k| map.contains_key(**k))
        {
            return Err((
                k,
                format!(
                    "'{k}' belongs to an online detector: add detector = 'online' (or use a trained model's score with warning_at)"
                ),
            ));
        }
        return Ok(None);
    };
    let kind = match kind.trim().to_ascii_lowercase().as_str() {
        "online" => OnlineKind::Persistent,
        "online-adaptive" => OnlineKind::Adaptive,
        _ => {
            return Err((
                "detector",
                format!("unknown detector '{kind}' (supported: 'online', 'online-adaptive')"),
            ))
        }
    };
    one_threshold(map)?;
    let span = |k: &'static str, default: Span| match map.get(k) {
        None => Ok(default),
        Some(v) => Span::parse(v).map_err(|e| (k, format!("{k} = {e}"))),
    };
    let features = match map.get("features") {
        None => None,
        Some(v) => {
            let f: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if f.is_empty() {
                return Err(("features", "features = '' names no column".into()));
            }
            Some(f)
        }
    };
    let false_alerts = match (map.get("warning_at"), map.get("false_alerts")) {
        (Some(_), _) => None,
        (None, Some(v)) => Some(rate(v).map_err(|e| ("false_alerts", e))?),
        (None, None) => Some(DEFAULT_FALSE_ALERTS),
    };
    let season = match map.get("season") {
        None => None,
        Some(v) => match parse_interval(v, None) {
            Ok(ms) if ms > 0 => Some(ms),
            _ => {
                return Err((
                    "season",
                    format!("season = '{v}' is not a period like '1 day' or '1 week'"),
                ))
            }
        },
    };
    Ok(Some(OnlineDecl {
        kind,
        features,
        warmup: span("warmup", DEFAULT_WARMUP)?,
        horizon: span("horizon", DEFAULT_HORIZON)?,
        false_alerts,
        season,
    }))
}

/// `warning_at` and `false_alerts` both give the threshold: only one may be given.
fn one_threshold(map: &BTreeMap<String, String>) -> Result<(), (&'static str, String)> {
    if map.contains_key("warning_at") && map.contains_key("false_alerts") {
        return Err((
            "false_alerts",
            "give the threshold once: false_alerts (a rate the engine turns into a score) or warning_at (the score itself)".into(),
        ));
    }
    Ok(())
}

/// `false_alerts` on a sink without a detector, in false alerts per device per 30 days:
/// the threshold on a score that is a surprise (`anomaly_surprise`), derived once the
/// query's window is known ([`bind_calibrated`]).
pub(crate) fn calibrated_rate(
    map: &BTreeMap<String, String>,
) -> Result<Option<f64>, (&'static str, String)> {
    if map.contains_key("detector") {
        return Ok(None);
    }
    one_threshold(map)?;
    map.get("false_alerts")
        .map(|v| rate(v).map_err(|e| ("false_alerts", e)))
        .transpose()
}

/// Windows a device closes in 30 days, for windows with a fixed slide.
pub(crate) fn windows_per_month(window: &WindowSpec) -> Option<f64> {
    slide(window).map(|s| 30.0 * 86_400_000.0 / s as f64)
}

/// Fills in the lifecycle options the sink left out with `kind`'s defaults, the
/// threshold from `threshold` when a rate gives it (and clearing below it by the kind's
/// offset), and checks clearing is not above raising. `given`: options the sink set.
fn lifecycle_defaults(
    mut lifecycle: LifecycleSpec,
    kind: OnlineKind,
    threshold: Option<f64>,
    given: &dyn Fn(&str) -> bool,
) -> Result<LifecycleSpec, (&'static str, String)> {
    let (raise_after, clear_after, clear_offset) = kind.lifecycle();
    if !given("raise_after") {
        lifecycle.raise_after = raise_after;
    }
    if !given("clear_after") {
        lifecycle.clear_after = clear_after;
    }
    if let Some(t) = threshold {
        lifecycle.warning_at = t;
    }
    if !given("clear_below") {
        lifecycle.clear_below = lifecycle.warning_at - clear_offset;
    }
    if lifecycle.clear_below > lifecycle.warning_at {
        return Err((
            "clear_below",
            format!(
                "clear_below ({}) must not exceed the threshold false_alerts gives ({:.2})",
                lifecycle.clear_below, lifecycle.warning_at
            ),
        ));
    }
    Ok(lifecycle)
}

/// Resolves the threshold of a lifecycle whose score is a surprise from `rate` (false
/// alerts per device-month) and the query's window slide. Unless `given`, the rest is
/// as for `detector = 'online'`: 3 windows in a row raise, 10 below half a decade under
/// the threshold clear. Errors name the option.
pub(crate) fn bind_calibrated(
    rate: f64,
    window: &WindowSpec,
    lifecycle: LifecycleSpec,
    given: &dyn Fn(&str) -> bool,
) -> Result<(LifecycleSpec, f64), (&'static str, String)> {
    let Some(n) = windows_per_month(window) else {
        return Err((
            "false_alerts",
            "session windows have no fixed rate, so false_alerts cannot be turned into a score: give warning_at (a surprise, e.g. '5')".into(),
        ));
    };
    let threshold = forewarn_scorer::online::threshold_for(rate, n);
    let lifecycle = lifecycle_defaults(lifecycle, OnlineKind::Persistent, Some(threshold), given)?;
    if let Some(a) = lifecycle.alarm_at.filter(|a| *a < lifecycle.warning_at) {
        return Err((
            "alarm_at",
            format!(
                "alarm_at ({a}) must not be below the threshold false_alerts gives ({:.2})",
                lifecycle.warning_at
            ),
        ));
    }
    reachable(&lifecycle, true, given)?;
    Ok((lifecycle, n))
}

/// Checks that a lifecycle over a surprise (0 to [`MAX_SCORE`]) can raise, escalate and
/// clear. `rated`: the threshold came from `false_alerts`; `given`: options the sink set.
pub(crate) fn reachable(
    l: &LifecycleSpec,
    rated: bool,
    given: &dyn Fn(&str) -> bool,
) -> Result<(), (&'static str, String)> {
    use forewarn_scorer::online::MAX_SCORE;
    let threshold = |k: &'static str| -> (&'static str, String) {
        if rated && !given("warning_at") {
            (
                "false_alerts",
                format!("false_alerts gives a threshold of {:.2}", l.warning_at),
            )
        } else {
            (k, format!("warning_at is {}", l.warning_at))
        }
    };
    if l.warning_at > MAX_SCORE {
        let (k, what) = threshold("warning_at");
        return Err((
            k,
            format!(
                "{what}, but a surprise is capped at {MAX_SCORE}: no window could ever raise an alert (state more false alerts, or a lower threshold)"
            ),
        ));
    }
    if let Some(a) = l.alarm_at.filter(|a| *a > MAX_SCORE) {
        return Err((
            "alarm_at",
            format!("alarm_at is {a}, but a surprise is capped at {MAX_SCORE}: no alert could ever escalate"),
        ));
    }
    if l.clear_below <= 0.0 {
        if !given("clear_below") && rated {
            return Err((
                "false_alerts",
                format!(
                    "false_alerts gives a threshold of {:.2}, to clear below {:.2}, but a surprise is never below 0, so an alert could never clear: so many false alerts (a window in {:.0} or more) are no threshold; state fewer",
                    l.warning_at + 0.0, // not "-0.00
                    l.clear_below,
                    10f64.powf(l.warning_at.max(0.0)),
                ),
            ));
        }
        let k = if given("clear_below") {
            "clear_below"
        } else {
            "warning_at"
        };
        return Err((
            k,
            format!(
                "windows must score below {:.2} to clear, but a surprise is never below 0: an alert could never clear",
                l.clear_below
            ),
        ));
    }
    Ok(())
}

/// An online detector bound to the query that feeds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineBinding {
    /// How it learns.
    pub spec: OnlineSpec,
    /// The result columns it learns, in order.
    pub features: Vec<String>,
    /// The lifecycle with its threshold resolved.
    pub lifecycle: LifecycleSpec,
    /// Windows a device closes in 30 days, when the window has a fixed slide.
    pub windows_per_month: Option<f64>,
}

/// The slide of `window` (`None` for sessions, which have none).
pub(crate) fn slide(window: &WindowSpec) -> Option<Millis> {
    match window {
        WindowSpec::Tumble { width } => Some(*width),
        WindowSpec::Hop { slide, .. } => Some(*slide),
        _ => None,
    }
}

/// Resolves `decl` against the query's window: spans in windows, the threshold from the
/// rate. `given` says which lifecycle options the sink set; errors name the option.
pub(crate) fn bind(
    decl: &OnlineDecl,
    window: &WindowSpec,
    lifecycle: LifecycleSpec,
    features: Vec<String>,
    given: &dyn Fn(&str) -> bool,
) -> Result<OnlineBinding, (&'static str, String)> {
    let slide = slide(window);
    let windows_per_month = windows_per_month(window);
    let need_slide = |k: &'static str| {
        (
            k,
            format!(
                "{k} is a duration, but session windows have no fixed length to count it in: give it in windows ('30 windows')"
            ),
        )
    };
    let warmup = decl
        .warmup
        .windows(slide)
        .ok_or_else(|| need_slide("warmup"))?;
    let horizon = decl
        .horizon
        .windows(slide)
        .ok_or_else(|| need_slide("horizon"))?;
    let threshold = match decl.false_alerts {
        None => None,
        Some(rate) => {
            let Some(n) = windows_per_month else {
                let which = if given("false_alerts") {
                    "false_alerts"
                } else {
                    "the default false_alerts ('1 per device-month')"
                };
                return Err((
                "detector",
                format!("session windows have no fixed rate, so {which} cannot be turned into a score: give warning_at (a surprise, e.g. '5')"),
            ));
            };
            Some(forewarn_scorer::online::threshold_for(rate, n))
        }
    };
    let lifecycle = lifecycle_defaults(lifecycle, decl.kind, threshold, given)?;
    reachable(&lifecycle, decl.false_alerts.is_some(), given)?;
    let base = match decl.kind {
        OnlineKind::Persistent => OnlineSpec::default(),
        OnlineKind::Adaptive => OnlineSpec::adaptive(),
    };
    let mut spec = base.with_warmup(warmup.round().min(u32::MAX as f64) as u32);
    spec.horizon = horizon;
    if let Some(period) = decl.season {
        let Some(slide) = slide.filter(|s| period >= 2 * s) else {
            return Err((
                "season",
                "season needs windows with a fixed slide of at most half the period, to cut it into slots of one slide".into(),
            ));
        };
        spec.season = Some(forewarn_scorer::Season::new(period, slide));
    }
    if decl.kind == OnlineKind::Adaptive {
        // Its calibration is a running average over the whole horizon.
        spec.calibration_cumulative = horizon.round().min(u32::MAX as f64) as u32;
    }
    Ok(OnlineBinding {
        spec,
        features,
        lifecycle,
        windows_per_month,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_rates() {
        assert_eq!(Span::parse("30 windows"), Ok(Span::Windows(30.0)));
        assert_eq!(Span::parse("1 window"), Ok(Span::Windows(1.0)));
        assert_eq!(Span::parse("6 hours"), Ok(Span::Time(6 * 3_600_000)));
        assert!(Span::parse("0 windows").is_err() && Span::parse("soon").is_err());
        assert_eq!(Span::Time(3_600_000).windows(Some(60_000)), Some(60.0));
        assert_eq!(Span::Time(3_600_000).windows(None), None);
        assert_eq!(rate("1 per device-month"), Ok(1.0));
        assert_eq!(rate("2 per device-day"), Ok(60.0));
        assert_eq!(rate("7 per device week"), Ok(30.0));
        assert!(rate("1 per month and a bit").is_err());
        assert!(rate("0 per device-month").is_err());
    }
}
