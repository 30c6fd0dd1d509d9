//! Alert messages for Forewarn: the JSON published on `forewarn/alerts/{device}`,
//! with a deterministic id so subscribers can de-duplicate redeliveries.

mod lifecycle;
mod offline;

pub use forewarn_core::Timestamp;
pub use lifecycle::{
    Acknowledgement, Cause, Command, DeviceState, Health, Lifecycle, LifecycleSpec, RuleState,
    Transition, TransitionKind, TransitionMessage, WindowEvidence, TRANSITION_SCHEMA_VERSION,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Version of the alert JSON format (bumped on incompatible changes).
pub const ALERT_SCHEMA_VERSION: u32 = 1;

/// One alert: a closed window's row of an anomaly query (one that computes a `score`
/// or calls a model) whose sink has no lifecycle.
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
    /// Window start (serialised as RFC 3339 UTC).
    pub window_start: Timestamp,
    /// Window end (serialised as RFC 3339 UTC).
    pub window_end: Timestamp,
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
    // Hex by table: a `format!` per byte was 5 % of a backtest that emits every window.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(16);
    for b in &d[..8] {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 0xf)] as char);
    }
    id
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
        let device = take_device(&mut row, device_column);
        let score = row.remove("score").and_then(|v| v.as_f64());
        row.remove("window_start");
        row.remove("window_end");
        Alert {
            schema_version: ALERT_SCHEMA_VERSION,
            alert_id: alert_id(query, &device, window.0),
            query: query.to_string(),
            device,
            window_start: Timestamp::from_millis(window.0),
            window_end: Timestamp::from_millis(window.1),
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
        numbers(&self.features, names)
    }
}

/// The numbers under `names` in `map`, NaN where one is missing or not a number.
fn numbers<S: AsRef<str>>(map: &Map<String, Value>, names: &[S]) -> Vec<f64> {
    names
        .iter()
        .map(|f| {
            map.get(f.as_ref())
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN)
        })
        .collect()
}

/// Appends `s` as a JSON string, as serde_json writes it: as it is between quotes when
/// no byte needs an escape (a quote, a backslash, a control character), else through
/// serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(out, s).expect("strings serialise");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Removes the device column from a result row: its text (JSON text when not a string;
/// empty when null or absent).
fn take_device(row: &mut Map<String, Value>, device_column: &str) -> String {
    WindowRow::device_text(row.remove(device_column))
}

/// One result row of a closed window of a query that is not an anomaly rule (it
/// computes no `score` and calls no model), whose sink has no lifecycle: aggregates
/// to store or forward, not an alert.
///
/// Its JSON, on the sink's topic, is the alert format without `score` and `model`
/// (`docs/schemas/alert.schema.json`): `schema_version`, `alert_id` (the [`id`](Self::id)),
/// `query`, `device`, `window_start`, `window_end`, `features` (the
/// [`columns`](Self::columns)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RowWire")]
pub struct WindowRow {
    /// `sha256(query, device, window_start)`, 16 hex digits (see [`alert_id`]): stable
    /// across redeliveries and restarts.
    pub id: String,
    /// Query that produced it.
    pub query: String,
    /// Device the row belongs to (empty when the device column is null).
    pub device: String,
    /// Window start.
    pub window_start: Timestamp,
    /// Window end.
    pub window_end: Timestamp,
    /// The row's other columns by name (the device and window bounds are lifted out).
    pub columns: Map<String, Value>,
}

/// The published form of a [`WindowRow`], read back (from a checkpoint's unconfirmed
/// outputs): the alert format's field names; `schema_version` is ignored.
#[derive(Deserialize)]
struct RowWire {
    alert_id: String,
    query: String,
    device: String,
    window_start: Timestamp,
    window_end: Timestamp,
    features: Map<String, Value>,
}

impl Serialize for WindowRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Field by field rather than through `RowWire`: no copy of the columns.
        let mut st = s.serialize_struct("WindowRow", 7)?;
        st.serialize_field("schema_version", &ALERT_SCHEMA_VERSION)?;
        st.serialize_field("alert_id", &self.id)?;
        st.serialize_field("query", &self.query)?;
        st.serialize_field("device", &self.device)?;
        st.serialize_field("window_start", &self.window_start)?;
        st.serialize_field("window_end", &self.window_end)?;
        st.serialize_field("features", &self.columns)?;
        st.end()
    }
}

impl From<RowWire> for WindowRow {
    fn from(w: RowWire) -> Self {
        WindowRow {
            id: w.alert_id,
            query: w.query,
            device: w.device,
            window_start: w.window_start,
            window_end: w.window_end,
            columns: w.features,
        }
    }
}

impl WindowRow {
    /// Builds the row from a result row (column name → JSON value): `device_column`
    /// names the key column; it and the window columns are lifted out, everything else
    /// stays in `columns`.
    pub fn from_row(
        query: &str,
        device_column: &str,
        window: (i64, i64),
        mut row: Map<String, Value>,
    ) -> WindowRow {
        let device = take_device(&mut row, device_column);
        row.remove("window_start");
        row.remove("window_end");
        WindowRow::from_parts(query, device, window, row)
    }

    /// The row of `device` (the device column's text, as [`from_row`](Self::from_row)
    /// takes it) with `columns` already without the device and window columns.
    pub fn from_parts(
        query: &str,
        device: String,
        window: (i64, i64),
        columns: Map<String, Value>,
    ) -> WindowRow {
        WindowRow {
            id: alert_id(query, &device, window.0),
            query: query.to_string(),
            device,
            window_start: Timestamp::from_millis(window.0),
            window_end: Timestamp::from_millis(window.1),
            columns,
        }
    }

    /// The device text [`from_row`](Self::from_row) lifts out of a row whose device
    /// column holds `v` (`None`: no such column).
    pub fn device_text(v: Option<Value>) -> String {
        match v {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    }

    /// The JSON payload.
    ///
    /// Written by hand, byte for byte what its `Serialize` gives (serde_json): a
    /// backtest writes one per window result, and serde's path through the fixed keys
    /// and the map was about a seventh of a replay's instructions. Sized for the fixed
    /// keys and a few columns, so most rows are written without growing the buffer.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 48 * self.columns.len());
        self.write_json(&mut out);
        out
    }

    /// Appends [`to_json`](Self::to_json)'s bytes to `out` (a line being written, with
    /// no buffer of its own).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"schema_version\":");
        serde_json::to_writer(&mut *out, &ALERT_SCHEMA_VERSION).expect("numbers serialise");
        out.extend_from_slice(b",\"alert_id\":");
        json_string(out, &self.id);
        out.extend_from_slice(b",\"query\":");
        json_string(out, &self.query);
        out.extend_from_slice(b",\"device\":");
        json_string(out, &self.device);
        out.extend_from_slice(b",\"window_start\":\"");
        self.window_start.write_rfc3339(out);
        out.extend_from_slice(b"\",\"window_end\":\"");
        self.window_end.write_rfc3339(out);
        out.extend_from_slice(b"\",\"features\":{");
        for (i, (k, v)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, k);
            out.push(b':');
            serde_json::to_writer(&mut *out, v).expect("JSON values serialise");
        }
        out.extend_from_slice(b"}}");
    }

    /// The numeric columns named `names`, in that order; NaN where one is missing or
    /// not a number (as [`Alert::feature_values`]).
    pub fn column_values<S: AsRef<str>>(&self, names: &[S]) -> Vec<f64> {
        numbers(&self.columns, names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The hand-written JSON of a window row is what serde_json writes for it, byte
    /// for byte: strings that need escapes and strings that do not, every kind of
    /// value, timestamps inside and outside the years the fast formatter writes.
    #[test]
    fn window_row_json_is_serde_jsons() {
        let texts = [
            "",
            "pump-7",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{1}",
            "\u{1f}",
            " ",
            "\u{7f}",
            "é",
            "日本",
            "\u{1F600}",
            "</script>",
            "a/b+c#",
        ];
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-12),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!("x\"y"),
            json!([1, "a", null]),
            json!({"k": {"n": [1.25]}}),
        ];
        let times = [
            0,
            1_764_547_200_123,
            -1,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_001,
        ];
        let mut n = 0;
        for (i, q) in texts.iter().enumerate() {
            for (j, d) in texts.iter().enumerate() {
                let mut columns = Map::new();
                for (k, v) in values
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| (i + j + k) % 3 != 0)
                {
                    columns.insert(
                        format!("{}{k}", texts[(i * 7 + k) % texts.len()]),
                        v.clone(),
                    );
                }
                let t = times[(i + j) % times.len()];
                let row = WindowRow::from_parts(q, d.to_string(), (t, t + 10_000), columns);
                assert_eq!(
                    String::from_utf8(row.to_json()).unwrap(),
                    serde_json::to_string(&row).unwrap(),
                    "query {q:?} device {d:?}"
                );
                n += 1;
            }
        }
        assert_eq!(n, texts.len() * texts.len());
    }

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
        assert_eq!(a.window_end, Timestamp::from_millis(10_000));
        assert_eq!(
            a.features,
            *json!({"avg_vibration": 3.0}).as_object().unwrap()
        );
        let v: Value = serde_json::from_slice(&a.to_json()).unwrap();
        assert_eq!(v["model"], "pump_gmm");
        assert_eq!(v["window_end"], "1970-01-01T00:00:10.000Z");
    }

    /// A plain window row is published byte for byte as the alert (without score and
    /// model) that it was before it had a type of its own.
    #[test]
    fn a_window_row_is_published_as_the_alert_was() {
        let row = json!({"device": "p1", "window_start": "x", "window_end": "y", "n": 3, "avg_v": 2.5, "site": null});
        let row = row.as_object().unwrap().clone();
        let window = (1_767_247_200_000, 1_767_247_210_000);
        let r = WindowRow::from_row("counts", "device", window, row.clone());
        let a = Alert::from_row("counts", None, "device", window, row);
        assert_eq!(r.to_json(), a.to_json());
        let text = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"schema_version":1,"alert_id":"{}","query":"counts","device":"p1","window_start":"2026-01-01T06:00:00.000Z","window_end":"2026-01-01T06:00:10.000Z","features":{{"avg_v":2.5,"n":3,"site":null}}}}"#,
                alert_id("counts", "p1", 1_767_247_200_000)
            )
        );
        assert_eq!(r.id, a.alert_id);
        assert_eq!(r.column_values(&["n", "site", "nope", "avg_v"])[..1], [3.0]);
        assert!(r
            .column_values(&["site", "nope"])
            .iter()
            .all(|v| v.is_nan()));
        assert_eq!(r.column_values(&["avg_v"]), vec![2.5]);
        assert_eq!(r.window_end.as_millis(), 1_767_247_210_000);
        // And reads back (a checkpoint keeps unconfirmed outputs as JSON).
        let back: WindowRow = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
