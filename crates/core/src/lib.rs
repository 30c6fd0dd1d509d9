//! Event time, window specifications, pane arithmetic and watermarks for Forewarn.
//!
//! This crate does no IO and knows nothing about Arrow or DataFusion: it is the
//! arithmetic every other layer shares, so that the live pipeline, replay and the
//! tests agree on which pane a timestamp belongs to and when a window may close.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

    /// Width of one pane: rows are accumulated per pane; windows are unions of panes.
    pub fn pane_width(&self) -> Millis {
        match self {
            WindowSpec::Tumble { width } => *width,
            WindowSpec::Hop { slide, .. } => *slide,
        }
    }

    /// Width of a window.
    pub fn width(&self) -> Millis {
        match self {
            WindowSpec::Tumble { width } | WindowSpec::Hop { width, .. } => *width,
        }
    }

    /// The pane a timestamp falls into.
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
        }
    }
}

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
}

/// A fixed-delay watermark: `max(event time seen) - delay`, never moving backwards.
///
/// A watermark of `w` promises that no more rows with timestamp `< w` are expected;
/// a pane `[s, e)` may close once `w >= e`.
#[derive(Debug, Clone)]
pub struct Watermark {
    spec: WatermarkSpec,
    max_seen: Option<Millis>,
}

impl Watermark {
    /// A watermark that has seen nothing yet.
    pub fn new(spec: WatermarkSpec) -> Self {
        Watermark {
            spec,
            max_seen: None,
        }
    }

    /// Records the largest event time of a batch.
    pub fn observe(&mut self, ts: Millis) {
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
    }

    /// Current watermark, or `None` before the first row.
    pub fn current(&self) -> Option<Millis> {
        self.max_seen.map(|m| m.saturating_sub(self.spec.delay))
    }

    /// Moves the watermark to the end of time: every open pane may close (end of input).
    pub fn advance_to_end(&mut self) {
        self.max_seen = Some(Millis::MAX);
        self.spec.delay = 0;
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
            max_future: None,
        });
        assert_eq!(wm.current(), None);
        wm.observe(20_000);
        wm.observe(12_000);
        assert_eq!(wm.current(), Some(15_000));
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
