//! Why a reading, message or command was refused: the one list of reason codes.
//!
//! The codes are a public contract: they are the `reason` of every dead letter
//! (`docs/schemas/deadletter.schema.json`) and the keys of the rejection counters. They
//! used to be strings written in three crates; one enum here, in the crate every other
//! one depends on, keeps them from drifting apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stable reason code for a refusal, serialised as its snake_case name (`not_json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The payload is not valid JSON (or not UTF-8, or nested too deeply).
    NotJson,
    /// The payload is JSON, but neither a reading object nor an array of them.
    NotAReading,
    /// A required field of a reading is absent or null (or a required column of a
    /// pushed batch holds nulls).
    MissingField,
    /// A field has a JSON type its column cannot hold.
    WrongType,
    /// A numeric field is NaN or infinite.
    NonFinite,
    /// The event-time field cannot be read as a timestamp.
    BadTimestamp,
    /// The payload is larger than `max_payload_bytes`.
    TooLarge,
    /// The topic does not match the source's topic template.
    TopicMismatch,
    /// No source subscribes to the message's topic.
    UnknownTopic,
    /// The reading's window had already closed (event time behind the watermark).
    Late,
    /// The reading's time is further ahead than the source's `max_future` allows.
    FutureTimestamp,
    /// The reading has no event time when the windows judge it.
    MissingTimestamp,
    /// The same bytes on the same topic arrived among the last `duplicate_window`
    /// messages (a resent publish).
    Duplicate,
    /// The source already has `max_devices` devices and this one is new.
    TooManyDevices,
    /// The reading would open more than `max_open_windows` windows of a query.
    TooManyWindows,
    /// Window state is over `max_state_bytes`; input is refused until windows close.
    StateLimit,
    /// A pushed Arrow batch names a source no query reads.
    UnknownSource,
    /// A pushed Arrow batch's columns differ from its source's.
    SchemaMismatch,
    /// An operator command is not valid JSON of a known action, or its silence has no
    /// usable duration.
    BadCommand,
    /// An operator command names a device no rule with a lifecycle has seen.
    UnknownDevice,
    /// An `acknowledge` command for a device with no open alert.
    NothingToAcknowledge,
    /// A message on a Sparkplug source is not a Sparkplug B topic or protobuf payload.
    NotSparkplug,
    /// Sparkplug data (or a device birth or death) from an edge node or device whose
    /// birth was not seen since its last death: its aliases are unknown. A rebirth is
    /// requested.
    NoBirth,
    /// A Sparkplug metric sent by an alias its birth did not declare. A rebirth is
    /// requested.
    UnknownAlias,
    /// A Sparkplug message whose `seq` is not one after the edge node's previous one
    /// (0–255 wrapping): messages were lost. A rebirth is requested.
    SeqGap,
    /// A Sparkplug NDEATH whose `bdSeq` is not the current birth's: an older
    /// session's will message, ignored.
    StaleDeath,
    /// A waveform field holds more samples than the source's `max_samples`.
    TooManySamples,
    /// A waveform field is not an array of numbers or a valid encoded waveform object.
    BadWaveform,
}

impl Reason {
    /// Every reason, in the order the documentation lists them.
    pub const ALL: [Reason; 28] = [
        Reason::NotJson,
        Reason::NotAReading,
        Reason::MissingField,
        Reason::WrongType,
        Reason::NonFinite,
        Reason::BadTimestamp,
        Reason::TooLarge,
        Reason::TopicMismatch,
        Reason::UnknownTopic,
        Reason::Late,
        Reason::FutureTimestamp,
        Reason::MissingTimestamp,
        Reason::Duplicate,
        Reason::TooManyDevices,
        Reason::TooManyWindows,
        Reason::StateLimit,
        Reason::UnknownSource,
        Reason::SchemaMismatch,
        Reason::BadCommand,
        Reason::UnknownDevice,
        Reason::NothingToAcknowledge,
        Reason::NotSparkplug,
        Reason::NoBirth,
        Reason::UnknownAlias,
        Reason::SeqGap,
        Reason::StaleDeath,
        Reason::TooManySamples,
        Reason::BadWaveform,
    ];

    /// The code as published and counted, e.g. `"not_json"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::NotAReading => "not_a_reading",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::NonFinite => "non_finite",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::TooLarge => "too_large",
            Reason::TopicMismatch => "topic_mismatch",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Late => "late",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::Duplicate => "duplicate",
            Reason::TooManyDevices => "too_many_devices",
            Reason::TooManyWindows => "too_many_windows",
            Reason::StateLimit => "state_limit",
            Reason::UnknownSource => "unknown_source",
            Reason::SchemaMismatch => "schema_mismatch",
            Reason::BadCommand => "bad_command",
            Reason::UnknownDevice => "unknown_device",
            Reason::NothingToAcknowledge => "nothing_to_acknowledge",
            Reason::NotSparkplug => "not_sparkplug",
            Reason::NoBirth => "no_birth",
            Reason::UnknownAlias => "unknown_alias",
            Reason::SeqGap => "seq_gap",
            Reason::StaleDeath => "stale_death",
            Reason::TooManySamples => "too_many_samples",
            Reason::BadWaveform => "bad_waveform",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the reason codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code '{0}'")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(r.to_string(), s);
            assert_eq!(s.parse::<Reason>(), Ok(r));
        }
        assert_eq!(seen.len(), 28);
    }

    #[test]
    fn from_str_refuses_unknown_and_differently_cased_codes() {
        assert_eq!(
            "Late".parse::<Reason>(),
            Err(UnknownReason("Late".to_string()))
        );
        assert_eq!("".parse::<Reason>(), Err(UnknownReason(String::new())));
        assert_eq!(
            "late ".parse::<Reason>(),
            Err(UnknownReason("late ".to_string()))
        );
        assert_eq!(
            UnknownReason("x".into()).to_string(),
            "unknown reason code 'x'"
        );
    }
}
