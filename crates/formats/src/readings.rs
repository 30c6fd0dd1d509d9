//! Readings given as values rather than as JSON text: rows of recorded history that
//! the engine takes as the messages their devices would have sent, without writing
//! and parsing JSON for each.

use crate::{Scalar, Table};

/// A batch of readings, one per row, each with the topic it would have been published
/// on and its fields as the JSON values the payload would have carried. The engine
/// routes, checks and decodes each row exactly as it would that message (see
/// `JsonDecoder::decode_values`); [`payload`](Self::payload) is the message itself,
/// written only when a dead letter quotes it.
pub trait Readings: Send + Sync {
    /// Number of rows.
    fn len(&self) -> usize;
    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The field names, one per column; each row's fields are its non-null columns.
    fn columns(&self) -> &[String];
    /// The topic of row `row`.
    fn topic(&self, row: usize) -> &str;
    /// Field `column` of row `row` (`None`: absent from the payload).
    fn value(&self, row: usize, column: usize) -> Option<Scalar<'_>>;
    /// The JSON payload of row `row`, byte for byte as its device would have sent it.
    fn payload(&self, row: usize) -> Vec<u8>;
    /// An upper bound of the length of [`payload`](Self::payload), cheap to compute:
    /// a payload that may be over the size limit is written and measured.
    fn payload_bound(&self, row: usize) -> usize;
    /// An upper bound of [`payload_bound`](Self::payload_bound) over every row, when
    /// one is cheap to know (`None`, the default: the engine asks row by row).
    fn payload_bound_max(&self) -> Option<usize> {
        None
    }
    /// Whether the rows are the readings of one message, the JSON array of their
    /// objects (a connector that turns one message of its own into several readings,
    /// such as Sparkplug B), rather than one message each (the default). The engine then
    /// takes the batch as that array message: counted once, checked for repeats as a
    /// whole, its rejected readings numbered by position (see
    /// `JsonDecoder::decode_array_values`), and quoted by dead letters as `[`, the
    /// rows' payloads joined by `,`, then `]`. The topic is row 0's.
    fn one_message(&self) -> bool {
        false
    }

    /// The rows read column by column into a source's columns ([`Table`], see
    /// `JsonDecoder::read_table`), when the reader has done so: the engine then takes
    /// each clean row from those columns, exactly as it would take its message, and
    /// every other row as its message. `None` (the default): row by row.
    fn table(&self) -> Option<&Table> {
        None
    }
    /// Called once the engine has taken every row. It may keep the readings after
    /// that (a reading's dead letter names its topic), so whatever the sender limits by
    /// readings in flight is released here, not on drop. Does nothing by default.
    fn taken(&self) {}
}
