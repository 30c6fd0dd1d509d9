//! The options every sink takes, and the alert lifecycle they may give it
//! (`warning_at = ...` and friends): publish state transitions instead of every row.

use forewarn_alerts::LifecycleSpec;
use forewarn_core::parse_interval;

use crate::error::err;
use crate::table::{OptionMap, SINK_OPTIONS};
use crate::SqlError;
use crate::SqlErrorKind;

/// The lifecycle part of [`SINK_OPTIONS`]: what comes after where a sink publishes.
const LIFECYCLE_OPTIONS: &[&str] = SINK_OPTIONS.split_at(4).1;

/// The sink's lifecycle options, if `warning_at` is given or the threshold comes from
/// `false_alerts` (`rated`: an online detector, or a surprise score), once the query's
/// window is known (NaN until then).
pub(crate) fn lifecycle_options(
    file: &str,
    text: &str,
    map: &OptionMap,
    rated: bool,
) -> Result<Option<LifecycleSpec>, SqlError> {
    let online = map.contains_key("detector");
    if !map.contains_key("warning_at") && !rated {
        if let Some(k) = LIFECYCLE_OPTIONS
            .iter()
            .filter(|k| !crate::detector::DETECTOR_OPTIONS.contains(k))
            .find(|k| map.contains_key(**k))
        {
            return Err(err(
                file,
                text,
                map[*k].1,
                format!("'{k}' belongs to an alert lifecycle: add warning_at = '<score>'"),
            )
            .with_kind(SqlErrorKind::Option));
        }
        return Ok(None);
    }
    let num = |k: &str| -> Result<Option<f64>, SqlError> {
        match map.get(k) {
            None => Ok(None),
            Some((v, at)) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    err(file, text, *at, format!("{k} must be a number, got '{v}'"))
                        .with_kind(SqlErrorKind::Option)
                }),
        }
    };
    let count = |k: &str, default: u32| -> Result<u32, SqlError> {
        match map.get(k) {
            None => Ok(default),
            Some((v, at)) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    err(
                        file,
                        text,
                        *at,
                        format!("{k} must be a whole number of windows, at least 1, got '{v}'"),
                    )
                    .with_kind(SqlErrorKind::Option)
                }),
        }
    };
    let warning_at = num("warning_at")?.unwrap_or(f64::NAN);
    let alarm_at = num("alarm_at")?;
    let clear_below = num("clear_below")?.unwrap_or(warning_at);
    if map.contains_key("score") && online {
        return Err(err(
            file,
            text,
            map["score"].1,
            "the online detector computes each window's score itself: leave out score = '...'",
        )
        .with_kind(SqlErrorKind::Option));
    }
    if clear_below > warning_at {
        return Err(err(
            file,
            text,
            map["clear_below"].1,
            format!("clear_below ({clear_below}) must not exceed warning_at ({warning_at})"),
        )
        .with_kind(SqlErrorKind::Option));
    }
    if let Some(a) = alarm_at.filter(|a| *a < warning_at) {
        return Err(err(
            file,
            text,
            map["alarm_at"].1,
            format!("alarm_at ({a}) must not be below warning_at ({warning_at})"),
        )
        .with_kind(SqlErrorKind::Option));
    }
    let cooldown = match map.get("cooldown") {
        None => 0,
        Some((v, at)) => match parse_interval(v, None) {
            Ok(ms) if ms >= 0 => ms,
            Ok(_) => {
                return Err(err(file, text, *at, "cooldown cannot be negative")
                    .with_kind(SqlErrorKind::Option))
            }
            Err(e) => {
                return Err(err(file, text, *at, e.to_string()).with_kind(SqlErrorKind::Option))
            }
        },
    };
    let offline_after = match map.get("offline_after") {
        None => None,
        Some((v, at)) => match parse_interval(v, None) {
            Ok(ms) if ms > 0 => Some(ms),
            Ok(_) => {
                return Err(err(
                    file,
                    text,
                    *at,
                    format!(
                        "offline_after must be a positive interval such as '5 minutes', got '{v}'"
                    ),
                )
                .with_kind(SqlErrorKind::Option))
            }
            Err(e) => {
                return Err(err(file, text, *at, e.to_string()).with_kind(SqlErrorKind::Option))
            }
        },
    };
    Ok(Some(LifecycleSpec {
        score_column: map
            .get("score")
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| "score".into()),
        warning_at,
        alarm_at,
        clear_below,
        raise_after: count("raise_after", 2)?,
        clear_after: count("clear_after", 3)?,
        cooldown,
        severity: map
            .get("severity")
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| "warning".into()),
        offline_after,
    }))
}
