//! [`Timestamp`]: an instant in event or wall-clock time, for the public output types.
//!
//! The published JSON carries instants as RFC 3339 text (`2026-01-01T06:00:10.000Z`);
//! in Rust they were `String`s, which an embedder had to parse back and which compared
//! as text. A `Timestamp` is the milliseconds, and serialises as that same text, so
//! the wire format is unchanged.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{format_rfc3339, parse_rfc3339, Millis};

/// An instant, in milliseconds since the Unix epoch (UTC).
///
/// Displays and serialises as RFC 3339 UTC with milliseconds, exactly as
/// [`format_rfc3339`] writes it (`2026-01-01T06:00:10.000Z`); parses and deserialises
/// from what [`parse_rfc3339`] reads. Ordering is time order.
///
/// ```
/// use forewarn_core::Timestamp;
/// let t = Timestamp::from_millis(1_767_247_210_000);
/// assert_eq!(t.to_string(), "2026-01-01T06:00:10.000Z");
/// assert_eq!("2026-01-01T06:00:10Z".parse::<Timestamp>(), Ok(t));
/// assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-01-01T06:00:10.000Z\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Millis);

/// Text that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an RFC 3339 timestamp")]
pub struct BadTimestamp(pub String);

/// A [`SystemTime`] too far from the epoch for milliseconds in an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the time is too far from 1970 for an i64 of milliseconds")]
pub struct OutOfRange;

impl Timestamp {
    /// The instant `ms` milliseconds after (negative: before) 1970-01-01T00:00:00Z.
    pub const fn from_millis(ms: Millis) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> Millis {
        self.0
    }

    /// The system time, truncated to whole milliseconds (towards the past).
    pub fn from_system_time(t: SystemTime) -> Result<Self, OutOfRange> {
        let ms = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).map_err(|_| OutOfRange)?,
            Err(e) => {
                // Before 1970: round away from the epoch, so that a time between two
                // milliseconds maps to the earlier one as it does after 1970.
                let d = e.duration();
                let whole = i64::try_from(d.as_millis()).map_err(|_| OutOfRange)?;
                let part = u64::from(d.subsec_nanos() % 1_000_000 != 0) as i64;
                whole
                    .checked_add(part)
                    .and_then(i64::checked_neg)
                    .ok_or(OutOfRange)?
            }
        };
        Ok(Timestamp(ms))
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now()).expect("the clock is within i64 milliseconds")
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        let d = Duration::from_millis(t.0.unsigned_abs());
        if t.0 >= 0 {
            UNIX_EPOCH + d
        } else {
            UNIX_EPOCH - d
        }
    }
}

impl TryFrom<SystemTime> for Timestamp {
    type Error = OutOfRange;
    fn try_from(t: SystemTime) -> Result<Self, OutOfRange> {
        Timestamp::from_system_time(t)
    }
}

impl From<Timestamp> for Millis {
    fn from(t: Timestamp) -> Millis {
        t.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match plain_rfc3339(self.0) {
            Some(b) => f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?),
            None => f.write_str(&format_rfc3339(self.0)),
        }
    }
}

impl Timestamp {
    /// Appends the RFC 3339 text [`Display`](fmt::Display) writes (never a character JSON
    /// escapes), without the formatting machinery: for writers of JSON by hand.
    pub fn write_rfc3339(&self, out: &mut Vec<u8>) {
        match plain_rfc3339(self.0) {
            Some(b) => out.extend_from_slice(&b),
            None => out.extend_from_slice(format_rfc3339(self.0).as_bytes()),
        }
    }
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` when its year is 0 to 9999 (what chrono's
/// `to_rfc3339_opts(Millis, true)` writes for those years), without chrono or an
/// allocation: every published window carries two of these, and chrono's formatter was
/// 2–3 % of a backtest's samples. Days to a civil date by H. Hinnant's algorithm.
pub(crate) fn plain_rfc3339(ms: i64) -> Option<[u8; 24]> {
    // 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;
    if !RANGE.contains(&ms) {
        return None;
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3_600_000);
    put(14, 2, in_day / 60_000 % 60);
    put(17, 2, in_day / 1_000 % 60);
    put(20, 3, in_day % 1_000);
    Some(b)
}

impl FromStr for Timestamp {
    type Err = BadTimestamp;
    fn from_str(s: &str) -> Result<Self, BadTimestamp> {
        if let Some(ms) = parse_rfc3339(s) {
            return Ok(Timestamp(ms));
        }
        // What `format_rfc3339` writes for years before 0 or after 9999 (a signed year,
        // which `parse_rfc3339` does not take as input), so that every `Timestamp`
        // reads back.
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3fZ") {
            return Ok(Timestamp(t.and_utc().timestamp_millis()));
        }
        // And for instants beyond its calendar (over 262,000 years away).
        s.strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .filter(|ms| parse_rfc3339(&format_rfc3339(*ms)).is_none())
            .map(Timestamp)
            .ok_or_else(|| BadTimestamp(s.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(b) = plain_rfc3339(self.0) {
            if let Ok(text) = std::str::from_utf8(&b) {
                return s.serialize_str(text);
            }
        }
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What chrono writes, which the fast formatter must equal.
    fn chrono_text(ms: i64) -> Option<String> {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    #[test]
    fn the_fast_formatter_writes_what_chrono_writes() {
        let first = -62_167_219_200_000i64; // 0000-01-01T00:00:00.000Z
        let last = 253_402_300_799_999i64; // 9999-12-31T23:59:59.999Z
        let mut cases = vec![first, first + 1, last - 1, last, 0, -1, 1, 951_782_400_000];
        // Every day's edges over leap and century years, and a spread of instants.
        for day in (-720_000i64..2_933_000).step_by(997) {
            cases.extend([
                day * 86_400_000,
                day * 86_400_000 - 1,
                day * 86_400_000 + 43_210_987,
            ]);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(first + (x % (last - first + 1) as u64) as i64);
        }
        for ms in cases {
            let fast = plain_rfc3339(ms).map(|b| String::from_utf8(b.to_vec()).unwrap());
            if (first..=last).contains(&ms) {
                assert_eq!(fast, chrono_text(ms), "{ms}");
            } else {
                assert_eq!(fast, None, "{ms}");
            }
        }
        // Outside years 0 to 9999 chrono's signed years are kept.
        for ms in [first - 1, last + 1, i64::MIN, i64::MAX] {
            assert_eq!(plain_rfc3339(ms), None);
            assert_eq!(
                Some(format_rfc3339(ms)).filter(|_| chrono_text(ms).is_some()),
                chrono_text(ms)
            );
        }
    }

    #[test]
    fn displays_exactly_as_format_rfc3339() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_767_247_210_000, "2026-01-01T06:00:10.000Z"),
            (1_767_247_210_123, "2026-01-01T06:00:10.123Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-86_400_000, "1969-12-31T00:00:00.000Z"),
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(t.to_string(), text);
            assert_eq!(t.to_string(), format_rfc3339(ms));
            assert_eq!(text.parse::<Timestamp>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<Timestamp>(&format!("\"{text}\"")).unwrap(),
                t
            );
        }
    }

    #[test]
    fn every_millisecond_value_round_trips() {
        for ms in [
            0,
            1,
            -1,
            951_782_400_000,
            -62_135_596_800_000,
            -62_135_596_800_001,
            253_402_300_800_000,   // year 10000
            8_210_266_876_799_999, // near the end of chrono's calendar
            8_210_266_876_800_000,
            i64::MAX,
            i64::MIN,
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t), "{ms}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t, "{ms}");
        }
        assert_eq!(
            Timestamp::from_millis(253_402_300_800_000).to_string(),
            "+10000-01-01T00:00:00.000Z"
        );
        // Beyond chrono's calendar the text is the milliseconds.
        assert_eq!(
            Timestamp::from_millis(i64::MAX).to_string(),
            format!("{}ms", i64::MAX)
        );
    }

    #[test]
    fn other_rfc3339_forms_parse_and_garbage_does_not() {
        assert_eq!(
            "1970-01-01T01:00:00+01:00".parse::<Timestamp>(),
            Ok(Timestamp::from_millis(0))
        );
        assert_eq!(
            "2020-03-09 10:14:33".parse::<Timestamp>(),
            Ok(Timestamp::from_millis(1_583_748_873_000))
        );
        for bad in ["", "t0", "yesterday", "5ms", "2020-13-09T10:14:33Z"] {
            assert_eq!(bad.parse::<Timestamp>(), Err(BadTimestamp(bad.into())));
        }
        assert!(serde_json::from_str::<Timestamp>("\"t0\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("0").is_err());
    }

    #[test]
    fn orders_by_time_and_converts_to_system_time() {
        let before = Timestamp::from_millis(-1_500);
        let after = Timestamp::from_millis(2_000);
        assert!(before < after);
        assert_eq!(
            SystemTime::from(after),
            UNIX_EPOCH + Duration::from_millis(2_000)
        );
        assert_eq!(
            SystemTime::from(before),
            UNIX_EPOCH - Duration::from_millis(1_500)
        );
        for t in [before, after, Timestamp::from_millis(0)] {
            assert_eq!(Timestamp::try_from(SystemTime::from(t)), Ok(t));
        }
        // Sub-millisecond parts truncate towards the past on both sides of 1970.
        let t = UNIX_EPOCH + Duration::from_micros(2_500);
        assert_eq!(
            Timestamp::from_system_time(t),
            Ok(Timestamp::from_millis(2))
        );
        let t = UNIX_EPOCH - Duration::from_micros(2_500);
        assert_eq!(
            Timestamp::from_system_time(t),
            Ok(Timestamp::from_millis(-3))
        );
        assert_eq!(i64::from(after), 2_000);
        assert_eq!(after.as_millis(), 2_000);
    }
}
