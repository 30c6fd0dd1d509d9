//! A connector's typed configuration, carried opaquely from the query file to the
//! part of the service that runs the connector.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// What a connector read from a table's options: its name and its own typed settings,
/// which only the connector's running side looks into ([`ConnectorConfig::get`]).
#[derive(Clone)]
pub struct ConnectorConfig {
    connector: &'static str,
    settings: Arc<dyn Any + Send + Sync>,
    describe: String,
}

impl ConnectorConfig {
    /// Settings `s` of connector `connector`.
    pub fn new<T: Any + Send + Sync + fmt::Debug>(connector: &'static str, s: T) -> Self {
        ConnectorConfig {
            connector,
            describe: format!("{s:?}"),
            settings: Arc::new(s),
        }
    }

    /// The connector's name (`mqtt`, `nats`, ...).
    pub fn connector(&self) -> &'static str {
        self.connector
    }

    /// The settings, if they are of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.settings.downcast_ref()
    }
}

impl fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.connector, self.describe)
    }
}
