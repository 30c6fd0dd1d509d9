//! Feature rows: what a model's feature query produced, with the labels of the readings
//! behind them. Training, `forewarn eval` and the SKAB protocol all read features
//! through the live query (see `forewarn_sql::feature_query`), so a model is trained
//! and judged on exactly what it will score.

use std::collections::BTreeMap;

use ndarray::Array2;

use forewarn_engine::Output;

/// One window's features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    /// The window's key (device), empty when the query has none.
    pub device: String,
    /// Window end, epoch milliseconds.
    pub window_end: i64,
    /// Feature values in [`FeatureRows::names`] order; NaN where a value was NULL.
    pub values: Vec<f64>,
}

impl FeatureRow {
    /// Whether every feature has a value.
    pub fn complete(&self) -> bool {
        self.values.iter().all(|v| v.is_finite())
    }
}

/// The rows of a feature query, in the order the windows closed.
#[derive(Debug, Clone, Default)]
pub struct FeatureRows {
    /// Feature names, in the model's argument order.
    pub names: Vec<String>,
    /// The rows.
    pub rows: Vec<FeatureRow>,
}

impl FeatureRows {
    /// An empty table of `names`.
    pub fn new(names: Vec<String>) -> Self {
        FeatureRows {
            names,
            rows: Vec::new(),
        }
    }

    /// Takes a pipeline output: a result of the feature query (a window row, or an
    /// alert when the query selects a score) becomes a row, anything else is ignored.
    /// Returns whether it was a row.
    pub fn push(&mut self, o: &Output) -> bool {
        let (device, end, values) = match o {
            Output::Row { row, .. } => {
                (&row.device, row.window_end, row.column_values(&self.names))
            }
            Output::Alert { alert, .. } => (
                &alert.device,
                alert.window_end,
                alert.feature_values(&self.names),
            ),
            _ => return false,
        };
        self.rows.push(FeatureRow {
            device: device.clone(),
            window_end: end.as_millis(),
            values,
        });
        true
    }

    /// The complete rows as a matrix (rows x features).
    pub fn matrix<'a>(&self, rows: impl IntoIterator<Item = &'a FeatureRow>) -> Array2<f64> {
        let mut data = Vec::new();
        let mut n = 0;
        for r in rows.into_iter().filter(|r| r.complete()) {
            data.extend_from_slice(&r.values);
            n += 1;
        }
        Array2::from_shape_vec((n, self.names.len()), data).expect("rows have every feature")
    }
}

/// Labelled readings: per device, (event time, anomalous) in time order.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Readings per device.
    pub by_device: BTreeMap<String, Vec<(i64, bool)>>,
}

impl Labels {
    /// Adds one reading's label.
    pub fn push(&mut self, device: &str, time: i64, anomalous: bool) {
        self.by_device
            .entry(device.to_string())
            .or_default()
            .push((time, anomalous));
    }

    /// Sorts each device's readings by time (call once after the last push).
    pub fn sort(&mut self) {
        for v in self.by_device.values_mut() {
            v.sort_by_key(|r| r.0);
        }
    }

    /// Total labelled readings.
    pub fn len(&self) -> usize {
        self.by_device.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// For each labelled reading of `device`, the index in `rows` of the window that first
/// scored it: the earliest window of that device ending after the reading. `None` when
/// no window covers it (the reading still counts, as not flagged).
pub fn reading_windows(
    readings: &[(i64, bool)],
    rows: &[FeatureRow],
    device: &str,
) -> Vec<Option<usize>> {
    let mut ends: Vec<(i64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.device == device)
        .map(|(i, r)| (r.window_end, i))
        .collect();
    ends.sort_unstable();
    readings
        .iter()
        .map(|(t, _)| {
            let at = ends.partition_point(|(e, _)| e <= t);
            ends.get(at).map(|(_, i)| *i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_map_to_the_first_window_ending_after_them() {
        let row = |d: &str, end| FeatureRow {
            device: d.into(),
            window_end: end,
            values: vec![1.0],
        };
        let rows = vec![
            row("a", 2000),
            row("b", 2000),
            row("a", 1000),
            row("a", 3000),
        ];
        let readings = [
            (0, false),
            (999, true),
            (1000, true),
            (2500, false),
            (3000, false),
        ];
        assert_eq!(
            reading_windows(&readings, &rows, "a"),
            vec![Some(2), Some(2), Some(0), Some(3), None]
        );
    }
}
