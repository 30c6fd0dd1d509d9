//! The connectors a build knows, by name.

use std::sync::Arc;

use crate::{Connector, Role};

/// The connectors query files may name.
#[derive(Clone)]
pub struct Registry {
    connectors: Vec<Arc<dyn Connector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// Every connector Forewarn ships. A query file naming one whose running side is
    /// not built in (say `nats` in a gateway build) still checks; the service refuses
    /// it at start.
    pub fn builtin() -> Self {
        Registry {
            connectors: vec![
                Arc::new(crate::mqtt::Mqtt),
                Arc::new(crate::nats::Nats),
                Arc::new(crate::file::File),
                Arc::new(crate::webhook::Webhook),
                Arc::new(crate::channel::Channel),
                Arc::new(crate::sparkplug::Sparkplug),
            ],
        }
    }

    /// Adds (or replaces, by name) a connector.
    pub fn with(mut self, c: Arc<dyn Connector>) -> Self {
        self.connectors.retain(|k| k.name() != c.name());
        self.connectors.push(c);
        self
    }

    /// The connector called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.name() == name)
    }

    /// Names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.name()).collect()
    }

    /// Another connector that takes option `key` in `role`, for "'stream' is an option
    /// of connector = 'nats'".
    pub fn owner_of(&self, key: &str, role: Role) -> Option<&'static str> {
        self.connectors
            .iter()
            .find(|c| c.options(role).is_ok_and(|o| o.contains(&key)))
            .map(|c| c.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_connectors_and_their_options() {
        let r = Registry::builtin();
        assert_eq!(
            r.names(),
            ["mqtt", "nats", "file", "webhook", "channel", "sparkplug"]
        );
        assert_eq!(r.owner_of("stream", Role::Source), Some("nats"));
        assert_eq!(r.owner_of("url", Role::Sink), Some("webhook"));
        assert_eq!(r.owner_of("url", Role::Source), None);
        assert!(r.get("nats").unwrap().options(Role::Sink).is_err());
        assert!(r.get("mqtt").unwrap().options(Role::Table).is_err());
        assert!(r.get("kafka").is_none());
    }
}
