//! Alert messages for Forewarn: the JSON published on `forewarn/alerts/{device}`,
//! with a deterministic id so subscribers can de-duplicate redeliveries.

mod lifecycle;

pub use lifecycle::{
    Acknowledgement, Command, DeviceState, Health, Lifecycle, LifecycleSpec, RuleState, Transition,
    TransitionKind, TransitionMessage, WindowEvidence, TRANSITION_SCHEMA_VERSION,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Version of the alert JSON format (bumped on incompatible changes).
pub const ALERT_SCHEMA_VERSION: u32 = 1;

/// One alert: a closed window whose row passed the query's conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Format version.
    pub schema_version: u32,
    /// `sha256(query, device, window_start)`, 16 hex digits: stable across redeliveries and restarts.
    pub alert_id: String,
    /// Query (rule) that raised it.
    pub query: String,
    /// Device the row belongs to.
    pub device: String,
    /// Window start, RFC 3339 UTC.
    pub window_start: String,
    /// Window end, RFC 3339 UTC.
    pub window_end: String,
    /// The normalised anomaly score (1.0 = threshold), when the query computes `score`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Model that produced the score, when the query calls exactly one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every other column of the result row, by name (feature values and any extra columns).
    pub features: Map<String, Value>,
}

/// The deterministic alert id.
pub fn alert_id(query: &str, device: &str, window_start_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    h.update([0]);
    h.update(window_start_ms.to_le_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Alert {
    /// Builds an alert from a result row (column name → JSON value).
    ///
    /// `device_column` names the key column; `score` and the window columns are lifted
    /// out; everything else goes to `features`.
    pub fn from_row(
        query: &str,
        model: Option<&str>,
        device_column: &str,
        window: (i64, i64),
        mut row: Map<String, Value>,
    ) -> Alert {
        let device = match row.remove(device_column) {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        let score = row.remove("score").and_then(|v| v.as_f64());
        row.remove("window_start");
        row.remove("window_end");
        Alert {
            schema_version: ALERT_SCHEMA_VERSION,
            alert_id: alert_id(query, &device, window.0),
            query: query.to_string(),
            device,
            window_start: forewarn_core::format_rfc3339(window.0),
            window_end: forewarn_core::format_rfc3339(window.1),
            score,
            model: model.map(str::to_string),
            features: row,
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("alerts serialise")
    }

    /// The numeric features named `names`, in that order; NaN where one is missing or
    /// not a number (a model or detector then treats it as missing).
    pub fn feature_values<S: AsRef<str>>(&self, names: &[S]) -> Vec<f64> {
        names
            .iter()
            .map(|f| {
                self.features
                    .get(f.as_ref())
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(alert_id("q", "d", 10), alert_id("q", "d", 10));
        assert_ne!(alert_id("q", "d", 10), alert_id("q", "d", 20));
        assert_ne!(alert_id("q", "d1", 10), alert_id("q", "d", 110));
        assert_eq!(alert_id("q", "d", 10).len(), 16);
    }

    #[test]
    fn row_to_alert() {
        let row = json!({"device": "p1", "score": 1.5, "avg_vibration": 3.0, "window_start": "x"});
        let a = Alert::from_row(
            "pump",
            Some("pump_gmm"),
            "device",
            (0, 10_000),
            row.as_object().unwrap().clone(),
        );
        assert_eq!(a.device, "p1");
        assert_eq!(a.score, Some(1.5));
        assert_eq!(a.window_end, "1970-01-01T00:00:10.000Z");
        assert_eq!(
            a.features,
            *json!({"avg_vibration": 3.0}).as_object().unwrap()
        );
        let v: Value = serde_json::from_slice(&a.to_json()).unwrap();
        assert_eq!(v["model"], "pump_gmm");
    }
}
