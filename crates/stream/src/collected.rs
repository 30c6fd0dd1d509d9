//! Rows of panes too small so far for an aggregate of their own, kept as they came:
//! one leaf batch per input batch (its rows sorted by pane, each row carrying its
//! pane in the window columns), not one batch per pane. Closing panes takes their rows
//! as zero-copy slices of those batches, usually one per input batch, so a pane costs
//! a few bookkeeping entries rather than batches, copies and plans of its own.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use datafusion::arrow::array::{Array, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_core::Millis;

/// Rows a pane collects before it gets a running aggregate of its own.
pub(crate) const BUFFER_ROWS: usize = 16_384;
/// Bytes a pane collects (a row may hold a waveform of thousands of samples).
pub(crate) const BUFFER_BYTES: usize = 4 << 20;
/// Rows and bytes all panes together collect: past either, the pane being fed gets its
/// aggregate.
pub(crate) const BUFFER_ROWS_TOTAL: usize = 65_536;
pub(crate) const BUFFER_BYTES_TOTAL: usize = 16 << 20;

/// Bytes of `b`'s rows: a slice of a larger batch counts its own rows only.
pub(crate) fn slice_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// One input batch's collected rows: a leaf batch whose rows are sorted by pane, and
/// the range of each pane's rows (ascending; a pane moved to an aggregate or closed
/// leaves a gap).
struct Chunk {
    batch: RecordBatch,
    panes: Vec<(Millis, Range<usize>)>,
}

impl Chunk {
    /// Copies the rows still held into a batch of their own once they are under half of
    /// the batch, so that a pane that stays open long (a clock running ahead) does not
    /// keep every batch it had rows in: held memory stays within twice the rows counted.
    fn compact(&mut self) {
        let held: usize = self.panes.iter().map(|(_, r)| r.len()).sum();
        if held * 2 >= self.batch.num_rows() {
            return;
        }
        // A copy (`take`, not a slice, which would keep the buffers).
        let idx: UInt32Array = self
            .panes
            .iter()
            .flat_map(|(_, r)| r.start as u32..r.end as u32)
            .collect();
        // Rows of this batch, so this cannot fail; if it did, keep the batch whole.
        let Ok(batch) = take_record_batch(&self.batch, &idx) else {
            return;
        };
        let mut from = 0;
        for (_, r) in &mut self.panes {
            *r = from..from + r.len();
            from = r.end;
        }
        self.batch = batch;
    }
}

/// The collected rows of every pane, with what each pane holds.
#[derive(Default)]
pub(crate) struct Collected {
    /// In arrival order, so a pane's rows taken chunk by chunk keep their order.
    chunks: VecDeque<Chunk>,
    /// Rows and bytes by pane, and in total.
    per_pane: BTreeMap<Millis, (usize, usize)>,
    total: (usize, usize),
}

impl Collected {
    /// Whether the pane at `start` holds collected rows.
    pub(crate) fn contains(&self, start: Millis) -> bool {
        self.per_pane.contains_key(&start)
    }

    /// Starts of the panes holding collected rows, oldest first.
    pub(crate) fn panes(&self) -> impl Iterator<Item = Millis> + '_ {
        self.per_pane.keys().copied()
    }

    /// Reserves room for `rows` more rows of `bytes` in the pane at `start`: `false`
    /// (nothing reserved) when that would pass a bound, for the pane or for all panes.
    pub(crate) fn reserve(&mut self, start: Millis, rows: usize, bytes: usize) -> bool {
        let (n, held) = self.per_pane.get(&start).copied().unwrap_or_default();
        let (all_rows, all_held) = self.total;
        let fits = n + rows < BUFFER_ROWS
            && held + bytes < BUFFER_BYTES
            && all_rows + rows < BUFFER_ROWS_TOTAL
            && all_held + bytes < BUFFER_BYTES_TOTAL;
        if fits {
            self.per_pane.insert(start, (n + rows, held + bytes));
            self.total = (all_rows + rows, all_held + bytes);
        }
        fits
    }

    /// Keeps `batch`, whose rows in each range belong to that pane (ranges ascending
    /// and reserved before with [`reserve`](Self::reserve)).
    pub(crate) fn push(&mut self, batch: RecordBatch, panes: Vec<(Millis, Range<usize>)>) {
        if !panes.is_empty() {
            self.chunks.push_back(Chunk { batch, panes });
        }
    }

    /// Takes the rows of the panes for which `take` holds, in arrival order: adjacent
    /// panes of one chunk come as one slice.
    pub(crate) fn take(&mut self, mut take: impl FnMut(Millis) -> bool) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for chunk in &mut self.chunks {
            let mut run: Option<Range<usize>> = None;
            chunk.panes.retain(|(start, rows)| {
                if !take(*start) {
                    return true;
                }
                match &mut run {
                    Some(r) if r.end == rows.start => r.end = rows.end,
                    _ => {
                        if let Some(r) = run.replace(rows.clone()) {
                            out.push(chunk.batch.slice(r.start, r.len()));
                        }
                    }
                }
                false
            });
            if let Some(r) = run {
                out.push(chunk.batch.slice(r.start, r.len()));
            }
        }
        self.chunks.retain(|c| !c.panes.is_empty());
        for chunk in &mut self.chunks {
            chunk.compact();
        }
        self.per_pane.retain(|&start, (rows, bytes)| {
            if take(start) {
                self.total.0 -= *rows;
                self.total.1 -= *bytes;
                false
            } else {
                true
            }
        });
        out
    }

    /// Forgets every collected row.
    pub(crate) fn clear(&mut self) {
        *self = Collected::default();
    }

    /// Bytes of the batches holding collected rows (a batch is held whole until its
    /// last pane leaves).
    pub(crate) fn held_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.batch.get_array_memory_size())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn batch(v: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(v.to_vec()))]).unwrap()
    }

    fn values(b: &[RecordBatch]) -> Vec<Vec<i64>> {
        b.iter()
            .map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[test]
    fn panes_are_taken_as_slices_in_arrival_order_and_leave_their_accounting() {
        let mut c = Collected::default();
        for (p, n) in [(0, 2), (10, 1), (20, 1)] {
            assert!(c.reserve(p, n, 8 * n));
        }
        c.push(
            batch(&[1, 2, 3, 4]),
            vec![(0, 0..2), (10, 2..3), (20, 3..4)],
        );
        assert!(c.reserve(10, 2, 16) && c.reserve(30, 1, 8));
        c.push(batch(&[5, 6, 7]), vec![(10, 0..2), (30, 2..3)]);
        assert_eq!(c.panes().collect::<Vec<_>>(), vec![0, 10, 20, 30]);
        assert_eq!(c.total, (7, 56));
        // Pane 10 alone: one slice from each batch, oldest first.
        assert_eq!(values(&c.take(|p| p == 10)), vec![vec![3], vec![5, 6]]);
        assert!(!c.contains(10) && c.contains(0));
        assert_eq!(c.total, (4, 32));
        // Panes 0 and 20 are no longer adjacent in the first batch: two slices.
        assert_eq!(values(&c.take(|p| p < 25)), vec![vec![1, 2], vec![4]]);
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(values(&c.take(|_| true)), vec![vec![7]]);
        assert_eq!((c.total, c.chunks.len(), c.held_bytes()), ((0, 0), 0, 0));
    }

    #[test]
    fn a_pane_left_behind_does_not_keep_its_whole_batch() {
        let mut c = Collected::default();
        let rows: Vec<i64> = (0..1000).collect();
        assert!(c.reserve(0, 999, 999 * 8) && c.reserve(3_600_000, 1, 8));
        c.push(batch(&rows), vec![(0, 0..999), (3_600_000, 999..1000)]);
        let whole = c.held_bytes();
        assert_eq!(
            c.take(|p| p == 0)
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            999
        );
        // The pane an hour ahead keeps its one row, not the thousand of its batch.
        assert!(c.held_bytes() * 10 < whole, "{} of {whole}", c.held_bytes());
        assert_eq!(values(&c.take(|_| true)), vec![vec![999]]);
    }

    #[test]
    fn adjacent_panes_of_a_batch_come_as_one_slice() {
        let mut c = Collected::default();
        for p in [0, 10, 20] {
            assert!(c.reserve(p, 1, 1));
        }
        c.push(batch(&[1, 2, 3]), vec![(0, 0..1), (10, 1..2), (20, 2..3)]);
        assert_eq!(values(&c.take(|p| p < 15)), vec![vec![1, 2]]);
    }

    #[test]
    fn a_pane_collects_up_to_its_bounds_and_all_panes_up_to_theirs() {
        let mut c = Collected::default();
        assert!(c.reserve(0, BUFFER_ROWS - 1, 0));
        assert!(!c.reserve(0, 1, 0), "a pane's rows");
        assert!(!c.reserve(10, 1, BUFFER_BYTES), "a pane's bytes");
        let panes = BUFFER_ROWS_TOTAL / BUFFER_ROWS;
        for p in 1..panes {
            assert!(c.reserve(p as Millis * 10, BUFFER_ROWS - 1, 0));
        }
        assert!(!c.reserve(1000, panes, 0), "all panes' rows");
        assert_eq!(c.total.0, panes * (BUFFER_ROWS - 1));
    }
}
