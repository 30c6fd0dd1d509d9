//! Pane bookkeeping: which panes are open, sealed or closed, closing panes the
//! watermark has passed, and which windows (each made of one or more panes) are due.
//!
//! A pane is a slice of event time `pane_width` long. Tumbling windows have one pane
//! each; a hop window of width `w` sliding by `s` is made of the `w / s` panes of
//! width `s` it covers, so each row is aggregated once, into its pane, and a window's
//! result merges its panes' partial state. Session windows tag rows with a session id
//! in the ordinary panes (see [`crate::session`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::datatypes::{DataType, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use forewarn_core::{Millis, Pane, WindowSpec};
use forewarn_sql::CompiledQuery;

use crate::collected::Collected;
use crate::exec::{partial_by_pane, OpenPane};

/// The panes of one operator, by start time. A pane may be both open and sealed.
#[derive(Default)]
pub(crate) struct Panes {
    /// The query whose partial half aggregates the collected rows (`None`: every pane
    /// gets a running aggregate at once).
    query: Option<Arc<CompiledQuery>>,
    /// Panes with a running partial aggregate.
    pub(crate) open: BTreeMap<Millis, OpenPane>,
    /// Leaf rows of panes too small so far for an aggregate of their own (a running
    /// aggregate costs a plan, a task and a drain per pane: with few keys that fixed
    /// cost dominates). Panes closing together aggregate theirs in one run of the
    /// partial half; a pane reaching the bounds of [`Collected`] moves its rows into a
    /// running aggregate, so memory stays bounded, whatever the rows.
    collected: Collected,
    /// Partial state of panes still open, taken out of their aggregates at a checkpoint;
    /// rows arriving later go to a fresh aggregate and both add up when the pane closes.
    pub(crate) sealed: BTreeMap<Millis, Vec<RecordBatch>>,
    /// Partial state of closed panes that later windows still need (hop windows).
    pub(crate) closed: BTreeMap<Millis, Vec<RecordBatch>>,
}

impl Panes {
    /// Panes of `q` that collect the rows of small panes (not for sessions, whose
    /// panes hold rows of several sessions). A query whose rows carry waveforms
    /// collects nothing: its rows are few and costly, and a waveform is kept no longer
    /// than the aggregate needs it.
    pub(crate) fn collecting(q: Arc<CompiledQuery>) -> Panes {
        let waveforms = q.leaf_schema.fields().iter().any(|f| {
            matches!(
                f.data_type(),
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
            )
        });
        Panes {
            query: (!waveforms).then_some(q),
            ..Panes::default()
        }
    }

    /// Panes currently open (with a partial aggregate, collected rows, or sealed
    /// state).
    pub(crate) fn open_count(&self) -> usize {
        let mut starts: Vec<Millis> = self
            .open
            .keys()
            .chain(self.sealed.keys())
            .copied()
            .chain(self.collected.panes())
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts.len()
    }

    /// Whether the pane starting at `start` is open.
    pub(crate) fn is_open(&self, start: Millis) -> bool {
        self.open.contains_key(&start)
            || self.sealed.contains_key(&start)
            || self.collected.contains(start)
    }

    /// Bytes held outside the aggregates: partial state of sealed and closed panes, and
    /// the rows collected for small panes.
    pub(crate) fn held_bytes(&self) -> usize {
        self.sealed
            .values()
            .chain(self.closed.values())
            .flatten()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>()
            + self.collected.held_bytes()
    }

    /// Whether rows of small panes are collected (see [`Self::reserve`]).
    pub(crate) fn collects(&self) -> bool {
        self.query.is_some()
    }

    /// Reserves room among the collected rows for `rows` more rows of `bytes` in the
    /// pane at `start`: `false` when the pane has a running aggregate, the query
    /// collects nothing, or a bound would be passed (the rows then go to
    /// [`feed`](Self::feed)).
    pub(crate) fn reserve(&mut self, start: Millis, rows: usize, bytes: usize) -> bool {
        self.query.is_some()
            && !self.open.contains_key(&start)
            && self.collected.reserve(start, rows, bytes)
    }

    /// Keeps a leaf batch of rows reserved with [`reserve`](Self::reserve): the rows in
    /// each range belong to that pane (ranges ascending).
    pub(crate) fn collect(&mut self, leaf_batch: RecordBatch, panes: Vec<(Millis, Range<usize>)>) {
        self.collected.push(leaf_batch, panes);
    }

    /// Sends `leaf_batch` to the running aggregate of the pane at `start` (started with
    /// `open` if it has none), after the rows the pane collected. `false` when the
    /// aggregate has already stopped (its error surfaces when the pane closes).
    pub(crate) async fn feed(
        &mut self,
        start: Millis,
        leaf_batch: RecordBatch,
        open: impl FnOnce() -> DfResult<OpenPane>,
    ) -> DfResult<bool> {
        let earlier = if self.collected.contains(start) {
            self.collected.take(|p| p == start)
        } else {
            Vec::new()
        };
        let pane = self.aggregate(start, open)?;
        for b in earlier {
            if !pane.send(b).await {
                return Ok(false);
            }
        }
        Ok(pane.send(leaf_batch).await)
    }

    /// Aggregates the rows collected for every pane (see [`Self::aggregate_collected_of`]).
    pub(crate) async fn aggregate_collected(
        &mut self,
    ) -> DfResult<BTreeMap<Millis, Vec<RecordBatch>>> {
        self.aggregate_collected_of(|_| true).await
    }

    /// Forgets the rows collected for every pane.
    pub(crate) fn clear_collected(&mut self) {
        self.collected.clear();
    }

    /// Aggregates the rows collected for the panes for which `take` holds in one run of
    /// the partial half: each pane's state rows, by pane.
    async fn aggregate_collected_of(
        &mut self,
        take: impl FnMut(Millis) -> bool,
    ) -> DfResult<BTreeMap<Millis, Vec<RecordBatch>>> {
        let rows = self.collected.take(take);
        match (&self.query, rows.is_empty()) {
            (Some(q), false) => partial_by_pane(q, rows).await,
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Closed panes kept for windows still to fire.
    pub(crate) fn retained(&self) -> usize {
        self.closed.len()
    }

    /// The running aggregate of the pane at `start`, started with `open` if it has none.
    pub(crate) fn aggregate(
        &mut self,
        start: Millis,
        open: impl FnOnce() -> DfResult<OpenPane>,
    ) -> DfResult<&OpenPane> {
        Ok(match self.open.entry(start) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(open()?),
        })
    }

    /// The oldest open pane that ends at or before `wm`.
    fn next_passed(&self, window: &WindowSpec, wm: Millis) -> Option<Millis> {
        let next = [
            self.open.first_key_value().map(|(&k, _)| k),
            self.sealed.first_key_value().map(|(&k, _)| k),
            self.collected.panes().next(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        (window.pane_of(next).end <= wm).then_some(next)
    }

    /// Closes every pane the watermark `wm` has passed, oldest first; keeps its partial
    /// state until the last window containing it has fired (see [`Self::forget_passed`]).
    pub(crate) async fn close_passed(&mut self, window: &WindowSpec, wm: Millis) -> DfResult<()> {
        let mut collected = self
            .aggregate_collected_of(|s| window.pane_of(s).end <= wm)
            .await?;
        while let Some(next) = self.next_passed(window, wm) {
            let mut state = self.sealed.remove(&next).unwrap_or_default();
            if let Some(open) = self.open.remove(&next) {
                state.extend(open.drain().await?);
            }
            state.extend(collected.remove(&next).unwrap_or_default());
            if !state.is_empty() {
                // A session may reopen a closed pane; its state adds to what was kept.
                self.closed.entry(next).or_default().extend(state);
            }
        }
        // Panes that had only collected rows.
        self.add_closed(collected);
        Ok(())
    }

    /// The collected rows of the panes `wm` has passed, taken, when those panes hold
    /// nothing else (no running aggregate, no sealed state) and no closed pane is kept:
    /// their windows can then be computed straight from the rows: those panes' starts,
    /// oldest first, and their rows. `None` (nothing taken) otherwise, or when no
    /// collected pane has passed.
    pub(crate) fn take_passed_collected_only(
        &mut self,
        window: &WindowSpec,
        wm: Millis,
    ) -> Option<(Vec<Millis>, Vec<RecordBatch>)> {
        // Panes are keyed by start: if the oldest has not passed, none has.
        let passed = |s: &Millis| window.pane_of(*s).end <= wm;
        let alone = self.closed.is_empty()
            && !self.open.keys().next().is_some_and(passed)
            && !self.sealed.keys().next().is_some_and(passed)
            && self.collected.panes().next().is_some_and(|s| passed(&s));
        alone.then(|| {
            let starts = self.collected.panes().take_while(passed).collect();
            (starts, self.collected.take(|s| passed(&s)))
        })
    }

    /// Adds partial state of closed panes, by pane start.
    pub(crate) fn add_closed(&mut self, state: BTreeMap<Millis, Vec<RecordBatch>>) {
        for (start, state) in state {
            self.closed.entry(start).or_default().extend(state);
        }
    }

    /// Windows over closed panes that end at or before `wm` and after `fired_until`
    /// (fired before), oldest first.
    pub(crate) fn windows_due(
        &self,
        window: &WindowSpec,
        wm: Millis,
        fired_until: Option<Millis>,
    ) -> Vec<Pane> {
        let mut ends: Vec<Millis> = self
            .closed
            .keys()
            .flat_map(|&start| window.window_ends_of(window.pane_of(start)))
            .filter(|&end| end <= wm && fired_until.is_none_or(|c| end > c))
            .collect();
        ends.sort_unstable();
        ends.dedup();
        ends.into_iter()
            .map(|end| window.window_ending_at(end))
            .collect()
    }

    /// The partial state of the closed panes within `w`.
    pub(crate) fn state_of(&self, w: Pane) -> Vec<RecordBatch> {
        self.closed
            .range(w.start..w.end)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect()
    }

    /// Drops closed panes that no window ending after `wm` contains (windows `width` long).
    pub(crate) fn forget_passed(&mut self, width: Millis, wm: Millis) {
        self.closed.retain(|&start, _| start + width > wm);
    }

    /// Takes the state rows whose window-start column (`id_col`, holding session ids)
    /// is in `ids` out of the closed panes; closed panes left empty are dropped.
    pub(crate) fn take_rows_of<V>(
        &mut self,
        id_col: usize,
        ids: &HashMap<Millis, V>,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut taken = Vec::new();
        for batches in self.closed.values_mut() {
            let mut kept = Vec::new();
            for b in batches.drain(..) {
                let col = b.column(id_col).as_primitive::<TimestampMillisecondType>();
                let mask: BooleanArray = col
                    .iter()
                    .map(|id| Some(id.is_some_and(|id| ids.contains_key(&id))))
                    .collect();
                let hit = filter_record_batch(&b, &mask)?;
                let rest = filter_record_batch(&b, &not(&mask)?)?;
                if hit.num_rows() > 0 {
                    taken.push(hit);
                }
                if rest.num_rows() > 0 {
                    kept.push(rest);
                }
            }
            *batches = kept;
        }
        self.closed.retain(|_, b| !b.is_empty());
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    /// A state batch: an id/window-start column and a value column.
    fn state(ids: &[Millis], vals: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ids.to_vec())),
                Arc::new(Int64Array::from(vals.to_vec())),
            ],
        )
        .unwrap()
    }

    fn values(b: &[RecordBatch]) -> Vec<i64> {
        b.iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    /// Sealed panes at 0, 10, 20 and 30 (panes of 10), one value each (the start).
    fn sealed(starts: &[Millis]) -> Panes {
        let mut p = Panes::default();
        for &s in starts {
            p.sealed.insert(s, vec![state(&[s], &[s])]);
        }
        p
    }

    #[tokio::test]
    async fn panes_close_oldest_first_once_the_watermark_reaches_their_end() {
        let w = WindowSpec::Tumble { width: 10 };
        let mut p = sealed(&[0, 10, 20, 30]);
        // A pane sealed at a checkpoint but left without groups still closes.
        p.sealed.insert(40, vec![]);
        assert_eq!(p.open_count(), 5);
        p.close_passed(&w, 19).await.unwrap();
        assert_eq!(p.closed.keys().copied().collect::<Vec<_>>(), vec![0]);
        p.close_passed(&w, 30).await.unwrap();
        assert_eq!(
            p.closed.keys().copied().collect::<Vec<_>>(),
            vec![0, 10, 20]
        );
        assert_eq!(p.sealed.keys().copied().collect::<Vec<_>>(), vec![30, 40]);
        assert!(p.is_open(30) && !p.is_open(20));
        assert_eq!(p.open_count(), 2);
        p.close_passed(&w, 1_000).await.unwrap();
        assert_eq!(p.open_count(), 0);
        // The empty pane closed without keeping anything.
        assert_eq!(
            p.closed.keys().copied().collect::<Vec<_>>(),
            vec![0, 10, 20, 30]
        );
        assert_eq!(p.retained(), 4);
    }

    #[test]
    fn a_tumbling_window_is_its_pane() {
        let w = WindowSpec::Tumble { width: 10 };
        let mut p = Panes::default();
        p.closed.insert(0, vec![state(&[0], &[1])]);
        p.closed.insert(20, vec![state(&[20], &[3])]);
        let due = p.windows_due(&w, 30, None);
        assert_eq!(
            due,
            vec![Pane { start: 0, end: 10 }, Pane { start: 20, end: 30 }]
        );
        assert_eq!(values(&p.state_of(due[1])), vec![3]);
        // Fired up to 10 before: only the second is still due.
        assert_eq!(p.windows_due(&w, 30, Some(10)), vec![due[1]]);
        p.forget_passed(w.width(), 30);
        assert_eq!(p.retained(), 0);
    }

    #[test]
    fn hop_windows_are_made_of_their_slide_panes() {
        // Windows 30 wide every 10: each pane is in three windows.
        let w = WindowSpec::Hop {
            slide: 10,
            width: 30,
        };
        let mut p = Panes::default();
        for s in [0, 10, 20] {
            p.closed.insert(s, vec![state(&[s], &[s + 1])]);
        }
        // Windows ending at 10, 20, 30 have passed; 40 and 50 have not.
        let due = p.windows_due(&w, 35, None);
        assert_eq!(
            due,
            vec![
                Pane {
                    start: -20,
                    end: 10
                },
                Pane {
                    start: -10,
                    end: 20
                },
                Pane { start: 0, end: 30 },
            ]
        );
        assert_eq!(values(&p.state_of(due[0])), vec![1]);
        assert_eq!(values(&p.state_of(due[1])), vec![1, 11]);
        assert_eq!(values(&p.state_of(due[2])), vec![1, 11, 21]);
        assert_eq!(
            values(&p.state_of(Pane { start: 10, end: 40 })),
            vec![11, 21]
        );
        // Pane 0 is in no window ending after 30; panes 10 and 20 still are.
        p.forget_passed(w.width(), 30);
        assert_eq!(p.closed.keys().copied().collect::<Vec<_>>(), vec![10, 20]);
        let due = p.windows_due(&w, 50, Some(30));
        assert_eq!(
            due,
            vec![Pane { start: 10, end: 40 }, Pane { start: 20, end: 50 }]
        );
    }

    #[test]
    fn session_rows_are_taken_out_of_closed_panes_by_id() {
        let mut p = Panes::default();
        p.closed.insert(0, vec![state(&[1, 2, 1], &[10, 20, 30])]);
        p.closed
            .insert(10, vec![state(&[1], &[40]), state(&[3], &[50])]);
        let ids: HashMap<Millis, ()> = HashMap::from([(1, ())]);
        let taken = p.take_rows_of(0, &ids).unwrap();
        assert_eq!(values(&taken), vec![10, 30, 40]);
        assert_eq!(values(&p.closed[&0]), vec![20]);
        assert_eq!(values(&p.closed[&10]), vec![50]);
        // Panes left empty are dropped.
        let ids: HashMap<Millis, ()> = HashMap::from([(2, ())]);
        assert_eq!(values(&p.take_rows_of(0, &ids).unwrap()), vec![20]);
        assert_eq!(p.closed.keys().copied().collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn held_bytes_count_sealed_and_closed_state() {
        let mut p = Panes::default();
        assert_eq!(p.held_bytes(), 0);
        let b = state(&[1], &[1]);
        let size = b.get_array_memory_size();
        p.sealed.insert(0, vec![b.clone()]);
        p.closed.insert(10, vec![b.clone(), b]);
        assert_eq!(p.held_bytes(), 3 * size);
    }
}
