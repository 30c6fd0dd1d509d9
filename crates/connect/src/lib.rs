//! Forewarn's connector boundary.
//!
//! A query file names a connector in each table's `WITH (connector = '...', ...)`. The
//! SQL front end reads the options every table of a role shares (a source's `topic`,
//! `topic_template` and watermark options; a sink's `topic` and alert lifecycle) and
//! hands the rest to the connector, which owns them: it says which it takes, reads them
//! into its own typed configuration ([`ConnectorConfig`]) and refuses bad values with
//! the option's position. Adding a connector is one folder here plus one line in
//! [`Registry::builtin`]; see `docs/connectors.md`.
//!
//! This crate does no IO of its own unless a connector's feature is on (`webhook`):
//! the SQL front end and `forewarn check` use it to validate query files anywhere.

mod config;
mod delivery;
mod options;
mod registry;

pub mod channel;
pub mod file;
pub mod mqtt;
pub mod nats;
pub mod sparkplug;
pub mod webhook;

pub use config::ConnectorConfig;
pub use delivery::{Delivering, Outcome, SinkDelivery};
pub use options::{did_you_mean, OptionError, Options, Pos};
pub use registry::Registry;

/// What a table is to the queries that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A stream of readings queries read (`CREATE TABLE t (columns ...)`).
    Source,
    /// Where a query's results or alerts go (`CREATE TABLE t WITH (...)`, no columns).
    Sink,
    /// Static reference data queries join (an asset registry).
    Table,
}

impl Role {
    /// `source`, `sink` or `table`, as error messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
            Role::Table => "table",
        }
    }
}

/// What the connector is told about the table besides its options.
#[derive(Debug, Clone, Copy)]
pub struct TableContext<'a> {
    /// The table's name.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// Whether a source declares event time (`WATERMARK FOR`).
    pub event_time: bool,
    /// The query file's directory (relative paths are resolved against it).
    pub dir: &'a std::path::Path,
    /// The table's declared columns (none for a sink), for options that name them.
    pub columns: &'a [String],
}

/// A kind of connector: the options it owns in each role it plays, read into a typed
/// configuration the running side uses.
pub trait Connector: Send + Sync + 'static {
    /// The name in `connector = '...'`.
    fn name(&self) -> &'static str;

    /// The options this connector adds in `role`, or why it cannot play that role.
    fn options(&self, role: Role) -> Result<&'static [&'static str], String>;

    /// Reads this connector's options (those [`Connector::options`] lists) for a table.
    /// Options not read here are the SQL front end's, already checked.
    fn configure(
        &self,
        table: &TableContext<'_>,
        options: &Options,
    ) -> Result<ConnectorConfig, OptionError>;

    /// Whether a sink of this connector needs `topic = '...'`. Connectors that do not
    /// publish on topics (a webhook) take it as an optional label.
    fn sink_needs_topic(&self) -> bool {
        true
    }

    /// Why tables of this connector in `role` take no `topic` (nor `topic_template`),
    /// or `None` when they have one. The SQL front end refuses those options with this
    /// reason. Such a source is reached only by its name (`PipelineHandle::push_to`);
    /// such a sink's outputs carry the table's name as their topic.
    fn topic_refusal(&self, _role: Role) -> Option<&'static str> {
        None
    }

    /// Why the service (`forewarn run`) cannot run tables of this connector, for a
    /// connector whose running side is the program embedding Forewarn (`channel`);
    /// `None` for the others. The service refuses such a query set at start rather
    /// than leave its sources unfed and its sinks unread.
    fn embedded_only(&self) -> Option<&'static str> {
        None
    }

    /// For a sink that this connector delivers itself (not over the engine's MQTT
    /// connection): its running side, set up from the sink's configuration, or why it
    /// cannot start (a token that cannot be read, support not built in). `None`: the
    /// service's MQTT publisher delivers it.
    fn sink_delivery(
        &self,
        _config: &ConnectorConfig,
    ) -> Option<Result<Box<dyn SinkDelivery>, String>> {
        None
    }
}
