//! Event time, window specifications, pane arithmetic and watermarks for Forewarn.
//!
//! This crate does no IO and knows nothing about Arrow or DataFusion: it is the
//! arithmetic every other layer shares, so that the live pipeline, replay and the
//! tests agree on which pane a timestamp belongs to and when a window may close.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod reason;
mod timestamp;
pub use reason::{Reason, UnknownReason};
pub use timestamp::{BadTimestamp, OutOfRange, Timestamp};

/// Event time in milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// Errors raised by the window and time helpers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// A window width or slide was zero or negative.
    #[error("window {what} must be positive, got {ms} ms")]
    NonPositive {
        /// Which parameter was wrong ("width", "slide", "gap").
        what: &'static str,
        /// The offending value in milliseconds.
        ms: i64,
    },
    /// A hop window's width is not a multiple of its slide.
    #[error("hop width ({width} ms) must be a multiple of its slide ({slide} ms)")]
    NotMultiple {
        /// Width, ms.
        width: i64,
        /// Slide, ms.
        slide: i64,
    },
    /// An interval literal could not be understood.
    #[error("cannot read interval '{0}': expected e.g. '10 seconds', '500 ms', '5 minutes'")]
    BadInterval(String),
}

/// Parses an interval such as `10 seconds`, `500 ms`, `1.5 min`, `2h` into milliseconds.
///
/// `unit` may be given separately (SQL `INTERVAL '5' SECOND`).
pub fn parse_interval(text: &str, unit: Option<&str>) -> Result<Millis, CoreError> {
    let bad = || CoreError::BadInterval(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| bad())?;
    let unit = match unit {
        Some(u) if rest.trim().is_empty() => u.to_string(),
        Some(_) => return Err(bad()),
        None => rest.trim().to_string(),
    };
    let factor = match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return Err(bad()),
    };
    let ms = value * factor;
    if !ms.is_finite() || ms.fract().abs() > 1e-9 {
        return Err(bad());
    }
    Ok(ms as Millis)
}

/// The window a query aggregates over, as written in its `GROUP BY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowSpec {
    /// `tumble(width)`: fixed, non-overlapping windows aligned to the epoch.
    Tumble {
        /// Window width in milliseconds.
        width: Millis,
    },
    /// `hop(slide, width)`: windows of `width` starting every `slide`, aligned to the
    /// epoch; `width` is a multiple of `slide`, so each window is a union of panes.
    Hop {
        /// Distance between window starts, ms (the pane width).
        slide: Millis,
        /// Window width, ms.
        width: Millis,
    },
    /// `session(gap)`: per key, a window that stays open while rows keep arriving
    /// less than `gap` apart, and closes `gap` after the key's last row or when it
    /// reaches `max_length`. Its rows are accumulated in panes of width `gap`.
    Session {
        /// Inactivity that ends a session, ms.
        gap: Millis,
        /// Longest session, ms: a row further than this from the session's first row
        /// starts a new session.
        max_length: Millis,
    },
}

impl WindowSpec {
    /// A tumbling window of the given width.
    pub fn tumble(width: Millis) -> Result<Self, CoreError> {
        if width <= 0 {
            return Err(CoreError::NonPositive {
                what: "width",
                ms: width,
            });
        }
        Ok(WindowSpec::Tumble { width })
    }

    /// A hopping window; `width` must be a positive multiple of `slide`.
    pub fn hop(slide: Millis, width: Millis) -> Result<Self, CoreError> {
        if slide <= 0 {
            return Err(CoreError::NonPositive {
                what: "slide",
                ms: slide,
            });
        }
        if width <= 0 {
            return Err(CoreError::NonPositive {
                what: "width",
                ms: width,
            });
        }
        if width % slide != 0 {
            return Err(CoreError::NotMultiple { width, slide });
        }
        Ok(WindowSpec::Hop { slide, width })
    }

    /// A session window; `max_length` defaults to [`DEFAULT_SESSION_MAX`] when `None`.
    pub fn session(gap: Millis, max_length: Option<Millis>) -> Result<Self, CoreError> {
        if gap <= 0 {
            return Err(CoreError::NonPositive {
                what: "gap",
                ms: gap,
            });
        }
        let max_length = max_length.unwrap_or(DEFAULT_SESSION_MAX.max(gap));
        if max_length <= 0 {
            return Err(CoreError::NonPositive {
                what: "maximum length",
                ms: max_length,
            });
        }
        Ok(WindowSpec::Session { gap, max_length })
    }

    /// Whether windows are per key (sessions) rather than aligned to the epoch.
    pub fn is_session(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// Width of one pane: rows are accumulated per pane; windows are unions of panes.
    #[inline]
    pub fn pane_width(&self) -> Millis {
        match self {
            WindowSpec::Tumble { width } => *width,
            WindowSpec::Hop { slide, .. } => *slide,
            WindowSpec::Session { gap, .. } => *gap,
        }
    }

    /// Width of a window (for sessions: the longest a session can span, plus its gap).
    pub fn width(&self) -> Millis {
        match self {
            WindowSpec::Tumble { width } | WindowSpec::Hop { width, .. } => *width,
            WindowSpec::Session { gap, max_length } => max_length.saturating_add(*gap),
        }
    }

    /// The pane a timestamp falls into.
    #[inline]
    pub fn pane_of(&self, ts: Millis) -> Pane {
        let w = self.pane_width();
        let start = ts.div_euclid(w) * w;
        Pane {
            start,
            end: start + w,
        }
    }

    /// Ends of the windows that contain `pane`, earliest first.
    pub fn window_ends_of(&self, pane: Pane) -> impl Iterator<Item = Millis> {
        let step = self.pane_width() as usize;
        (pane.end..=pane.start + self.width()).step_by(step)
    }

    /// The window that ends at `end`.
    pub fn window_ending_at(&self, end: Millis) -> Pane {
        Pane {
            start: end - self.width(),
            end,
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumble { width } => write!(f, "tumble({width} ms)"),
            WindowSpec::Hop { slide, width } => write!(f, "hop({slide} ms, {width} ms)"),
            WindowSpec::Session { gap, max_length } => {
                write!(f, "session({gap} ms, max {max_length} ms)")
            }
        }
    }
}

/// Longest session when `session(gap)` gives no maximum: one day.
pub const DEFAULT_SESSION_MAX: Millis = 86_400_000;

/// A half-open time interval `[start, end)` in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pane {
    /// Inclusive start, ms since epoch.
    pub start: Millis,
    /// Exclusive end, ms since epoch.
    pub end: Millis,
}

/// How a source's watermark is derived from the event times it has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkSpec {
    /// The watermark trails the largest event time seen by this much (`ts - INTERVAL ...`).
    pub delay: Millis,
    /// Rows whose timestamp is further than this ahead of the current watermark are
    /// clamped out (treated as bad input) instead of dragging the watermark forward.
    pub max_future: Option<Millis>,
    /// Per-key watermarks: `Some(max_skew)` keeps one watermark per key (device) and
    /// lets the source's watermark be the slowest key's, leaving out keys that trail
    /// the fleet's median by more than `max_skew` (a stopped device or a slow clock).
    pub per_key_skew: Option<Millis>,
}

/// A source's watermark: `max(event time seen) - delay`, never moving backwards.
///
/// A watermark of `w` promises that no more rows with timestamp `< w` are expected;
/// a pane `[s, e)` may close once `w >= e`.
///
/// With [`WatermarkSpec::per_key_skew`], each key has its own maximum and the
/// watermark is the smallest key maximum among keys within `max_skew` of the median
/// key, minus `delay`: one device whose clock runs ahead cannot push the whole fleet's
/// rows into lateness, and one that stopped or lags cannot hold every window open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermark {
    spec: WatermarkSpec,
    max_seen: Option<Millis>,
    /// Per-key maxima, and the same ordered by time (per-key mode only).
    keys: HashMap<String, Millis>,
    by_time: std::collections::BTreeSet<(Millis, String)>,
    /// Never report less than this (monotonicity, idle advances, end of input).
    floor: Option<Millis>,
}

impl Watermark {
    /// A watermark that has seen nothing yet.
    pub fn new(spec: WatermarkSpec) -> Self {
        Watermark {
            spec,
            max_seen: None,
            keys: HashMap::new(),
            by_time: Default::default(),
            floor: None,
        }
    }

    /// Records the largest event time of a batch.
    #[inline]
    pub fn observe(&mut self, ts: Millis) {
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
    }

    /// Records the largest event time of one key in a batch (per-key mode).
    pub fn observe_key(&mut self, key: &str, ts: Millis) {
        self.observe(ts);
        match self.keys.get_mut(key) {
            Some(m) if *m >= ts => {}
            Some(m) => {
                self.by_time.remove(&(*m, key.to_string()));
                *m = ts;
                self.by_time.insert((ts, key.to_string()));
            }
            None => {
                self.keys.insert(key.to_string(), ts);
                self.by_time.insert((ts, key.to_string()));
            }
        }
    }

    /// Whether watermarks are kept per key.
    pub fn per_key(&self) -> bool {
        self.spec.per_key_skew.is_some()
    }

    /// Keys tracked (per-key mode); keys that trail the median by more than ten times
    /// the allowed skew are forgotten, so this follows the active fleet.
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// Fixes the watermark after a batch's observations: it never moves backwards.
    pub fn update(&mut self) {
        let computed = match self.spec.per_key_skew {
            None => self.max_seen.map(|m| m.saturating_sub(self.spec.delay)),
            Some(skew) => self.per_key_value(skew),
        };
        self.floor = match (self.floor, computed) {
            (Some(f), Some(c)) => Some(f.max(c)),
            (f, c) => f.or(c),
        };
    }

    fn per_key_value(&mut self, skew: Millis) -> Option<Millis> {
        let n = self.by_time.len();
        let median = self.by_time.iter().nth(n / 2)?.0;
        let cutoff = median.saturating_sub(skew);
        // Forget keys long gone so device churn cannot grow the map without bound.
        let forget = median.saturating_sub(skew.saturating_mul(10));
        while let Some((t, k)) = self.by_time.first().cloned() {
            if t >= forget {
                break;
            }
            self.by_time.pop_first();
            self.keys.remove(&k);
        }
        let slowest = self.by_time.range((cutoff, String::new())..).next()?.0;
        Some(slowest.saturating_sub(self.spec.delay))
    }

    /// Current watermark, or `None` before the first row.
    #[inline]
    pub fn current(&self) -> Option<Millis> {
        match self.spec.per_key_skew {
            None => {
                let c = self.max_seen.map(|m| m.saturating_sub(self.spec.delay));
                match (self.floor, c) {
                    (Some(f), Some(c)) => Some(f.max(c)),
                    (f, c) => f.or(c),
                }
            }
            Some(_) => self.floor,
        }
    }

    /// Moves the watermark forward to at least `t` (an idle source, see the runtime).
    pub fn advance_to(&mut self, t: Millis) {
        self.floor = Some(self.floor.map_or(t, |f| f.max(t)));
    }

    /// Moves the watermark to the end of time: every open pane may close (end of input).
    pub fn advance_to_end(&mut self) {
        self.advance_to(Millis::MAX);
    }

    /// Puts the watermark at `t` (`None`: where it stood before any row), even below
    /// where it stood: after the end of input moved it to the end of time and closed
    /// every window, it rests at the end of the last window closed, so a checkpoint
    /// taken then continues after those windows instead of at the end of time.
    pub fn rest_at(&mut self, t: Option<Millis>) {
        self.floor = t;
    }

    /// The largest event time seen, over all keys.
    #[inline]
    pub fn max_seen(&self) -> Option<Millis> {
        self.max_seen
    }

    /// The watermark's parameters.
    pub fn spec(&self) -> WatermarkSpec {
        self.spec
    }
}

/// Counters every stage keeps, so that nothing disappears silently.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Counts by name (e.g. `rows_in`, `late_rows`, `decode_errors`).
    pub values: HashMap<String, u64>,
}

impl Counters {
    /// Adds `n` to counter `name`.
    pub fn add(&mut self, name: &str, n: u64) {
        *self.values.entry(name.to_string()).or_default() += n;
    }
    /// The value of counter `name` (0 when never touched).
    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }
}

/// Converts a `Duration` to whole milliseconds.
pub fn duration_ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

/// Formats event time as RFC 3339 UTC with milliseconds (`2026-11-21T10:00:00.000Z`).
pub fn format_rfc3339(ms: Millis) -> String {
    if let Some(b) = timestamp::plain_rfc3339(ms) {
        return String::from_utf8_lossy(&b).into_owned();
    }
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// Parses RFC 3339 / ISO 8601 timestamps (`2026-11-21T10:00:00Z`, with optional
/// fraction and offset; a space may replace the `T`; no zone means UTC).
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("10 seconds", None), Ok(10_000));
        assert_eq!(parse_interval("500 ms", None), Ok(500));
        assert_eq!(parse_interval("1.5 min", None), Ok(90_000));
        assert_eq!(parse_interval("5", Some("SECOND")), Ok(5_000));
        assert!(parse_interval("ten seconds", None).is_err());
        assert!(parse_interval("5 fortnights", None).is_err());
    }

    #[test]
    fn panes_align_to_epoch_including_negative_times() {
        let w = WindowSpec::tumble(10_000).unwrap();
        assert_eq!(
            w.pane_of(0),
            Pane {
                start: 0,
                end: 10_000
            }
        );
        assert_eq!(w.pane_of(9_999).start, 0);
        assert_eq!(w.pane_of(10_000).start, 10_000);
        assert_eq!(w.pane_of(-1).start, -10_000);
        assert!(WindowSpec::tumble(0).is_err());
        assert_eq!(
            w.window_ends_of(w.pane_of(5)).collect::<Vec<_>>(),
            vec![10_000]
        );
        let h = WindowSpec::hop(5_000, 15_000).unwrap();
        assert_eq!(
            h.pane_of(12_000),
            Pane {
                start: 10_000,
                end: 15_000
            }
        );
        // Pane [10 s, 15 s) is in the windows ending at 15, 20 and 25 s.
        assert_eq!(
            h.window_ends_of(h.pane_of(12_000)).collect::<Vec<_>>(),
            vec![15_000, 20_000, 25_000]
        );
        assert_eq!(
            h.window_ending_at(20_000),
            Pane {
                start: 5_000,
                end: 20_000
            }
        );
        assert!(WindowSpec::hop(4_000, 10_000).is_err());
    }

    #[test]
    fn watermark_trails_max_and_never_regresses() {
        let mut wm = Watermark::new(WatermarkSpec {
            delay: 5_000,
            ..Default::default()
        });
        assert_eq!(wm.current(), None);
        wm.observe(20_000);
        wm.observe(12_000);
        assert_eq!(wm.current(), Some(15_000));
        wm.advance_to(30_000);
        wm.observe(31_000);
        assert_eq!(wm.current(), Some(30_000));
    }

    #[test]
    fn per_key_watermark_ignores_a_fast_clock_and_leaves_out_a_stopped_key() {
        let mut wm = Watermark::new(WatermarkSpec {
            delay: 1_000,
            max_future: None,
            per_key_skew: Some(60_000),
        });
        for (k, t) in [("a", 100_000), ("b", 101_000), ("c", 99_000)] {
            wm.observe_key(k, t);
        }
        // A device ten minutes ahead: the watermark follows the slowest in-skew key.
        wm.observe_key("fast", 700_000);
        wm.update();
        assert_eq!(wm.current(), Some(98_000));
        // "c" stops reporting; once it trails the median by more than the skew it no
        // longer holds the watermark back.
        for t in [130_000, 170_000] {
            wm.observe_key("a", t);
            wm.observe_key("b", t + 1_000);
            wm.update();
        }
        assert_eq!(wm.current(), Some(169_000));
        // Keys trailing by more than ten times the skew are forgotten.
        for t in [400_000, 800_000] {
            wm.observe_key("a", t);
            wm.observe_key("b", t);
            wm.update();
        }
        assert_eq!(wm.tracked_keys(), 3);
        assert!(!wm.keys.contains_key("c"));
        // Never backwards.
        wm.observe_key("late-joiner", 10_000);
        wm.update();
        assert!(wm.current() >= Some(699_000));
    }

    #[test]
    fn sessions() {
        let s = WindowSpec::session(5_000, None).unwrap();
        assert_eq!(s.pane_width(), 5_000);
        assert_eq!(s.width(), DEFAULT_SESSION_MAX + 5_000);
        assert!(WindowSpec::session(0, None).is_err());
    }

    #[test]
    fn rfc3339_round_trip() {
        for ms in [0, 1_763_719_200_123, -86_400_000, 951_782_400_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2020-03-09 10:14:33"),
            Some(1_583_748_873_000)
        );
        assert_eq!(parse_rfc3339("2020-13-09T10:14:33Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
