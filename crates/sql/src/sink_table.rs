//! A sink table (`CREATE TABLE` without columns): where it publishes, and its
//! detector and alert lifecycle.

use forewarn_connect::ConnectorConfig;

use crate::error::err;
use crate::lifecycle::lifecycle_options;
use crate::table::{topic_template, Table};
use crate::SqlErrorKind;
use crate::{QuerySet, SinkDecl, SqlError};

impl QuerySet {
    /// Adds `t` as a sink, published on `topic` through the connector `config`.
    pub(crate) fn add_sink(
        &mut self,
        t: &Table,
        topic: String,
        format: String,
        config: ConnectorConfig,
    ) -> Result<(), SqlError> {
        let &Table {
            file,
            text,
            loc,
            name,
            wm,
            ref map,
            ..
        } = t;
        let get = |k: &str| map.get(k).map(|(v, _)| v.clone());
        if wm.is_some() {
            return Err(err(
                file,
                text,
                loc,
                "a sink table has no columns and no WATERMARK",
            ));
        }
        if let Some(t) = topic_template(file, text, map, "topic")? {
            if t.as_str().split('/').any(|l| l == "+" || l == "#") {
                return Err(err(
                    file,
                    text,
                    map["topic"].1,
                    format!("a sink publishes on topic '{}': it cannot contain the wildcards '+' or '#' (use {{column}} levels)", t.as_str()),
                ).with_kind(SqlErrorKind::Option));
            }
        }
        let values = map
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let online = crate::detector::online_options(&values)
            .map_err(|(k, m)| err(file, text, map[k].1, m))?;
        let false_alerts = crate::detector::calibrated_rate(&values)
            .map_err(|(k, m)| err(file, text, map[k].1, m))?;
        let lifecycle =
            lifecycle_options(file, text, map, online.is_some() || false_alerts.is_some())?;
        self.sinks.insert(
            name.to_string(),
            SinkDecl {
                name: name.to_string(),
                topic,
                format,
                lifecycle,
                online,
                false_alerts,
                device_column: get("device_column"),
                connector: config,
                file: file.to_string(),
                option_at: map
                    .iter()
                    .map(|(k, (_, at))| (k.clone(), (at.line, at.column)))
                    .collect(),
            },
        );
        Ok(())
    }
}
