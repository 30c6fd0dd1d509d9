//! Payload decoding for Forewarn: MQTT message bytes → Arrow `RecordBatch`es.
//!
//! A message holds one reading object or an array of them. Fields are matched by
//! name against a declared schema; topic levels can fill columns through a
//! template such as `plant/{site}/{line}/{device}/telemetry`. Every reading that
//! cannot be decoded is rejected with a [`DecodeError`] naming the reason, so the
//! caller can count it and dead-letter it; good readings in the same message are kept.

mod json;
mod readings;
mod topic;

use forewarn_core::Reason;
pub use json::{DecodeOutcome, JsonDecoder, Rejected, Scalar, Table, Typed, DEFAULT_MAX_SAMPLES};
pub use readings::Readings;
pub use topic::{
    filter_matches, filter_problem, unshared_filter, TopicTemplate, TopicTemplateError,
};

/// Why a message or one reading in it was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// The payload is not valid JSON (or not UTF-8, or nested too deeply).
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// The payload is JSON, but neither an object nor an array of objects.
    #[error("expected a reading object or an array of reading objects, got {0}")]
    NotAReading(&'static str),
    /// A required field is absent or null.
    #[error("missing required field '{0}'")]
    Missing(String),
    /// A field has a JSON type the column cannot hold.
    #[error("field '{field}' should be {expected}, got {got}")]
    WrongType {
        /// Field name.
        field: String,
        /// What the column needs.
        expected: &'static str,
        /// What the payload carried.
        got: &'static str,
    },
    /// A numeric field is NaN or infinite (as a string such as "NaN").
    #[error("field '{0}' is not a finite number")]
    NonFinite(String),
    /// The event-time field could not be read as a timestamp.
    #[error("field '{field}' is not a timestamp (epoch milliseconds or RFC 3339): {value}")]
    BadTimestamp {
        /// Field name.
        field: String,
        /// The value as received (truncated).
        value: String,
    },
    /// A waveform holds more samples than the source's `max_samples`.
    #[error("field '{field}' holds more than {limit} samples")]
    TooManySamples {
        /// Field name.
        field: String,
        /// The source's `max_samples`.
        limit: usize,
    },
    /// A waveform cannot be read: an element that is not a number, no samples, or an
    /// encoded object with an unknown encoding, bad base64 or a partial sample.
    #[error("field '{field}' is not a valid waveform: {why}")]
    BadWaveform {
        /// Field name.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The topic does not match the source's topic template.
    #[error("topic '{topic}' does not match template '{template}'")]
    TopicMismatch {
        /// Topic of the message.
        topic: String,
        /// The source's template.
        template: String,
    },
}

impl DecodeError {
    /// Why, as the reason code counters and dead letters carry.
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::TooLarge { .. } => Reason::TooLarge,
            DecodeError::NotJson(_) => Reason::NotJson,
            DecodeError::NotAReading(_) => Reason::NotAReading,
            DecodeError::Missing(_) => Reason::MissingField,
            DecodeError::WrongType { .. } => Reason::WrongType,
            DecodeError::NonFinite(_) => Reason::NonFinite,
            DecodeError::BadTimestamp { .. } => Reason::BadTimestamp,
            DecodeError::TopicMismatch { .. } => Reason::TopicMismatch,
            DecodeError::TooManySamples { .. } => Reason::TooManySamples,
            DecodeError::BadWaveform { .. } => Reason::BadWaveform,
        }
    }

    /// A short, stable reason code for counters and dead-letter messages: the string
    /// of [`Self::reason`].
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }
}

/// Byte equality for short strings (field names, topic levels) without a call to
/// `memcmp`, which costs more than the comparison for a few bytes: this runs for every
/// field of every reading. Two overlapping loads of 8 (or 4) bytes cover every length
/// from 4 to 16; each load is one instruction in an optimised build.
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    #[inline(always)]
    fn word(s: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
    }
    #[inline(always)]
    fn half(s: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"))
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}
