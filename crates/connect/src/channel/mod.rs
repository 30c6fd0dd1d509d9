//! `connector = 'channel'`: tables a program embedding Forewarn feeds and reads in
//! memory, without any topic. A channel source receives the readings the program
//! pushes by the table's name (`PipelineHandle::push_to`); a channel sink's outputs
//! arrive on the pipeline's output receiver with the sink table's name as their topic
//! (`Pipeline::sink_of` and `split_by_sink` in `forewarn-engine` tell them apart).
//!
//! There is no running side: the program is it. The service (`forewarn run`) refuses
//! such tables at start ([`Connector::embedded_only`]), since nothing would ever feed
//! or read them; `forewarn check` accepts them.

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The in-memory connector.
#[derive(Debug, Clone, Copy)]
pub struct Channel;

/// A channel table's settings: it has none of its own (every option it takes is one
/// that all sources or sinks share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSettings;

/// Why the service cannot run a channel table.
pub const EMBEDDED_ONLY: &str = "connector 'channel' is for programs embedding Forewarn, which push a channel source's readings by its name (PipelineHandle::push_to) and read a channel sink's outputs from the pipeline's output receiver; `forewarn run` does neither: use connector = 'mqtt'";

impl Connector for Channel {
    fn name(&self) -> &'static str {
        "channel"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Source | Role::Sink => Ok(&[]),
            Role::Table => {
                Err("a channel table is a stream: use connector = 'file' for reference data".into())
            }
        }
    }

    fn configure(&self, _: &TableContext<'_>, _: &Options) -> Result<ConnectorConfig, OptionError> {
        Ok(ConnectorConfig::new("channel", ChannelSettings))
    }

    fn topic_refusal(&self, role: Role) -> Option<&'static str> {
        match role {
            Role::Source => Some(
                "the program pushes its readings by the table's name (PipelineHandle::push_to), so the device comes from a payload column",
            ),
            Role::Sink => Some(
                "its outputs go to the program's output receiver, with the table's name as their topic",
            ),
            Role::Table => None,
        }
    }

    fn sink_needs_topic(&self) -> bool {
        false
    }

    fn embedded_only(&self) -> Option<&'static str> {
        Some(EMBEDDED_ONLY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    #[test]
    fn a_channel_is_a_stream_without_topics_and_only_for_embedding() {
        let r = Registry::builtin();
        let c = r.get("channel").expect("registered");
        assert_eq!(c.options(Role::Source), Ok(&[][..]));
        assert_eq!(c.options(Role::Sink), Ok(&[][..]));
        assert_eq!(
            c.options(Role::Table).unwrap_err(),
            "a channel table is a stream: use connector = 'file' for reference data"
        );
        assert!(c.topic_refusal(Role::Source).is_some());
        assert!(c.topic_refusal(Role::Sink).is_some());
        assert_eq!(c.embedded_only(), Some(EMBEDDED_ONLY));
        // Every other builtin connector is run by the service and has topics.
        for name in ["mqtt", "nats", "webhook"] {
            let other = r.get(name).unwrap();
            assert_eq!(other.embedded_only(), None, "{name}");
            assert_eq!(other.topic_refusal(Role::Source), None, "{name}");
            assert_eq!(other.topic_refusal(Role::Sink), None, "{name}");
        }
    }

    #[test]
    fn its_settings_are_its_own() {
        let o = Options::default();
        let ctx = TableContext {
            name: "readings",
            role: Role::Source,
            event_time: true,
            dir: std::path::Path::new("."),
            columns: &[],
        };
        let cfg = Channel.configure(&ctx, &o).unwrap();
        assert_eq!(cfg.connector(), "channel");
        assert_eq!(cfg.get::<ChannelSettings>(), Some(&ChannelSettings));
    }
}
