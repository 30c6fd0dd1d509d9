//! The engine's part of a configuration file: the `[engine]` and `[checkpoint]`
//! sections, typed, with their defaults, and turned into an [`EngineConfig`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{CheckpointConfig, EngineConfig};

/// `[engine]`: micro-batching, payload and topic settings, and the limits that keep
/// memory bounded. Every key may be left out; its default is [`EngineConfig`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// A micro-batch closes at this many readings...
    pub max_batch_rows: usize,
    /// ...or when its first reading has waited this long (ms)...
    pub max_batch_delay_ms: u64,
    /// ...or as soon as no other message is waiting (low alert latency).
    pub flush_when_idle: bool,
    /// Larger payloads are dead-lettered as `too_large`.
    pub max_payload_bytes: usize,
    /// Prefix of the engine's own topics (`{prefix}/deadletter/...`, `{prefix}/state/...`).
    pub topic_prefix: String,
    /// Distinct devices per source.
    pub max_devices: usize,
    /// Panes open at once per query.
    pub max_open_windows: usize,
    /// Window state above which rows are refused (`state_limit`).
    pub max_state_bytes: usize,
    /// Recent messages remembered to recognise resends (0: off).
    pub duplicate_window: usize,
    /// Threads turning a large window result into outputs (see
    /// [`EngineConfig::output_threads`]).
    pub output_threads: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let c = EngineConfig::default();
        EngineSettings {
            max_batch_rows: c.max_batch_rows,
            max_batch_delay_ms: c.max_batch_delay.as_millis() as u64,
            flush_when_idle: c.flush_when_idle,
            max_payload_bytes: c.max_payload_bytes,
            topic_prefix: c.topic_prefix,
            max_devices: c.max_devices,
            max_open_windows: c.max_open_windows,
            max_state_bytes: c.max_state_bytes,
            duplicate_window: c.duplicate_window,
            output_threads: c.output_threads,
        }
    }
}

/// Why `prefix` cannot prefix the engine's own topics (`{prefix}/deadletter/...`,
/// `{prefix}/late/...`, `{prefix}/state/...`), or `None` when it can: those must be topics
/// a broker accepts for publishing (no wildcard) with no empty level, so that one
/// subscription (`{prefix}/deadletter/#`) finds them.
pub fn topic_prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        Some("it cannot be empty (the default is \"forewarn\")")
    } else if prefix.contains(['+', '#']) {
        Some("'+' and '#' are subscription wildcards: a topic to publish to cannot hold them")
    } else if prefix.contains('\0') {
        Some("a topic cannot hold a NUL character")
    } else if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        Some("a level would be empty: drop the leading, trailing or doubled '/'")
    } else {
        None
    }
}

impl EngineSettings {
    /// The engine configuration these settings give (no checkpoints; see
    /// [`CheckpointSettings::to_config`]).
    pub fn to_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_rows: self.max_batch_rows.max(1),
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            flush_when_idle: self.flush_when_idle,
            max_payload_bytes: self.max_payload_bytes,
            topic_prefix: self.topic_prefix.clone(),
            max_devices: self.max_devices,
            max_open_windows: self.max_open_windows,
            max_state_bytes: self.max_state_bytes,
            duplicate_window: self.duplicate_window,
            output_threads: self.output_threads.max(1),
            ..EngineConfig::default()
        }
    }
}

/// `[checkpoint]`: restart without loss. Checkpoints are on when `dir` is given (in
/// scale-out they live in NATS, and `interval_ms` and `keep` apply to them there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSettings {
    /// The directory checkpoints are written to.
    pub dir: Option<PathBuf>,
    /// A checkpoint this often while input arrives (ms)...
    pub interval_ms: u64,
    /// ...or once this many messages wait for one.
    pub max_unacked: usize,
    /// Files kept; the older ones are the fallback.
    pub keep: usize,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        let c = CheckpointConfig::new("");
        CheckpointSettings {
            dir: None,
            interval_ms: c.interval.as_millis() as u64,
            max_unacked: c.max_unacked,
            keep: c.keep,
        }
    }
}

impl CheckpointSettings {
    /// Whether anything besides `dir` differs from the defaults (settings that mean
    /// nothing without a place to checkpoint to).
    pub fn tuned(&self) -> bool {
        let d = CheckpointSettings::default();
        self.interval_ms != d.interval_ms
            || self.max_unacked != d.max_unacked
            || self.keep != d.keep
    }

    /// Applies the timing and retention to `c`.
    pub fn apply(&self, c: &mut CheckpointConfig) {
        c.interval = Duration::from_millis(self.interval_ms.max(1));
        c.max_unacked = self.max_unacked.max(1);
        c.keep = self.keep.max(1);
    }

    /// Checkpoints in `dir`, if given.
    pub fn to_config(&self) -> Option<CheckpointConfig> {
        let mut c = CheckpointConfig::new(self.dir.clone()?);
        self.apply(&mut c);
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_engine_defaults() {
        let d = EngineConfig::default();
        let s = EngineSettings::default().to_config();
        assert_eq!(s.max_batch_rows, d.max_batch_rows);
        assert_eq!(s.max_batch_delay, d.max_batch_delay);
        assert_eq!(s.max_devices, d.max_devices);
        assert_eq!(s.topic_prefix, d.topic_prefix);
        assert!(CheckpointSettings::default().to_config().is_none());
        assert!(!CheckpointSettings::default().tuned());
    }

    #[test]
    fn a_topic_prefix_must_give_topics_a_broker_accepts() {
        for ok in ["forewarn", "plant7/line-2", "site 4"] {
            assert_eq!(topic_prefix_problem(ok), None, "{ok}");
        }
        for bad in ["", "a/+/b", "#", "plant7/", "/plant7", "a//b", "a\0b"] {
            assert!(topic_prefix_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_builder_refuses_a_topic_prefix_with_a_wildcard() {
        let built = crate::Pipeline::builder()
            .config(EngineConfig {
                topic_prefix: "plant/+".into(),
                ..EngineConfig::default()
            })
            .build()
            .await;
        let Err(e) = built else {
            panic!("a wildcard in the topic prefix was accepted")
        };
        assert!(
            e.to_string()
                .contains("topic_prefix \"plant/+\": '+' and '#'"),
            "{e}"
        );
    }

    #[test]
    fn given_values_reach_the_config() {
        let s = EngineSettings {
            max_batch_rows: 7,
            max_batch_delay_ms: 3,
            topic_prefix: "p".into(),
            ..Default::default()
        }
        .to_config();
        assert_eq!(s.max_batch_rows, 7);
        assert_eq!(s.max_batch_delay, Duration::from_millis(3));
        assert_eq!(s.topic_prefix, "p");
        let c = CheckpointSettings {
            dir: Some("/tmp/x".into()),
            interval_ms: 200,
            ..Default::default()
        };
        assert!(c.tuned());
        let c = c.to_config().unwrap();
        assert_eq!(c.interval, Duration::from_millis(200));
        assert_eq!(c.store.location(), PathBuf::from("/tmp/x"));
    }
}
