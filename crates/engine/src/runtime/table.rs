//! History rows taken column by column: the clean rows of a [`Table`] go into the
//! micro-batch as slices of its columns, each counted, checked for repeats and admitted
//! exactly as its message would be, without a topic written or a value decoded per row;
//! every other row is taken as its message (`Runtime::on_row`), in file order, so the
//! outputs are those of the messages byte for byte.

use datafusion::arrow::array::{Array, AsArray, StringArray, UInt32Array};
use datafusion::arrow::compute::take;
use forewarn_formats::{Readings, Table, TopicTemplate};

use super::*;

/// Clean rows checked for repeats and admitted in one pass (see `Runtime::admit_block`).
const BLOCK: usize = 1024;

/// What becomes of a clean row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It joins the micro-batch.
    Take,
    /// It repeats a recent message.
    Repeat,
    /// Its device is beyond the source's limit.
    Refuse,
}

/// The device row `row` names: its `{device}` level (column `levels[k]` for
/// `Some(k)`), else all its levels joined with `/`, as [`admission::TopicDevice`]
/// names it from the topic.
fn device_of<'a>(
    levels: &[&'a StringArray],
    device_level: Option<usize>,
    row: usize,
) -> std::borrow::Cow<'a, str> {
    match device_level {
        Some(k) => std::borrow::Cow::Borrowed(levels[k].value(row)),
        None => levels
            .iter()
            .map(|l| l.value(row))
            .collect::<Vec<_>>()
            .join("/")
            .into(),
    }
}

/// Clean rows waiting to join the micro-batch, by position in the table.
#[derive(Default)]
struct Segment {
    rows: Vec<u32>,
}

impl Runtime {
    /// The source that takes every clean row of `table` when no other source takes any
    /// (pushed by name to `to`, or routed by the topics the table's template renders),
    /// and only this engine's plain path applies: `None` otherwise, and each row is
    /// taken as its message.
    pub(super) fn table_source(&self, table: &Table, to: Option<usize>) -> Option<usize> {
        // A checkpoint may fall between any two messages: row by row there.
        if self.ckpt.is_some() {
            return None;
        }
        let s = match to {
            Some(j) => j,
            None => {
                let t = TopicTemplate::parse(table.template()?).ok()?;
                if t.routes_to(&format!("{}#", self.command_prefix)) != Some(false) {
                    return None;
                }
                let mut found = None;
                for (i, src) in self.sources.iter().enumerate() {
                    match src.filter.as_deref().map(|f| t.routes_to(f)) {
                        None | Some(Some(false)) => {}
                        Some(Some(true)) if found.is_none() => found = Some(i),
                        _ => return None,
                    }
                }
                found?
            }
        };
        let src = &self.sources[s];
        let same = src.decoder.schema() == table.schema()
            && src.decoder.template().map(TopicTemplate::as_str) == table.template()
            && !src.processing_time;
        same.then_some(s)
    }

    /// Takes the rows of `rows` (whose [`Readings::table`] is for source `s`, see
    /// [`Self::table_source`]), pushed to `to` or routed by topic.
    pub(super) async fn on_table(
        &mut self,
        rows: &Arc<dyn Readings>,
        s: usize,
        to: Option<usize>,
        fields: &[Option<Vec<Option<usize>>>],
    ) -> Result<(), EngineError> {
        let table = rows.table().expect("a table");
        let max_payload = self.sources[s].decoder.max_payload();
        // Most files cannot hold a row over the limit: then no row needs measuring.
        let all_fit = rows.payload_bound_max().is_some_and(|b| b <= max_payload);
        // The device each clean row's topic names, for the limit on devices.
        let levels: Vec<_> = table
            .captured()
            .iter()
            .map(|&c| table.columns()[c].as_string::<i32>())
            .collect();
        let by_topic = self.sources[s].device_from_topic.is_some();
        let device_level = table
            .captured()
            .iter()
            .position(|&c| table.schema().field(c).name() == "device");
        let mut seg = Segment::default();
        let (mut messages, mut readings) = (0u64, 0u64);
        self.sources[s].last_input = Instant::now();
        let fits = |r: usize| table.clean(r) && (all_fit || rows.payload_bound(r) <= max_payload);
        let mut verdicts = Vec::with_capacity(BLOCK);
        let mut row = 0;
        while row < table.len() {
            if !fits(row) {
                self.stage(s, table, &mut seg);
                self.on_row(rows.as_ref(), row, to, fields).await?;
                row += 1;
                continue;
            }
            let mut end = row + 1;
            while end < table.len() && end - row < BLOCK && fits(end) {
                end += 1;
            }
            let by = by_topic.then_some((levels.as_slice(), device_level));
            self.admit_block(s, table, by, row..end, &mut verdicts);
            for (row, &verdict) in (row..end).zip(&verdicts) {
                messages += 1;
                self.inputs += 1;
                match verdict {
                    Verdict::Take => {}
                    Verdict::Repeat => {
                        let topic = rows.topic(row).to_string();
                        let source = to.map(|j| self.sources[j].name.as_str());
                        let o =
                            outputs::duplicate(&self.config, &topic, source, &rows.payload(row));
                        self.emit(o).await;
                        continue;
                    }
                    Verdict::Refuse => {
                        let device = device_of(&levels, device_level, row);
                        let (topic, payload) = (rows.topic(row), rows.payload(row));
                        self.refuse_device(s, &device, topic, &payload).await;
                        continue;
                    }
                }
                readings += 1;
                self.sources[s].origins.push_row(rows, row);
                seg.rows.push(row as u32);
                let src = &mut self.sources[s];
                if src.pending_since.is_none() {
                    src.pending_since = Some(Instant::now());
                }
                if src.buffered() + seg.rows.len() >= self.config.max_batch_rows {
                    self.count(|st| {
                        st.messages_in += messages;
                        st.readings_in += readings;
                        st.readings_from_columns += readings;
                    });
                    (messages, readings) = (0, 0);
                    self.stage(s, table, &mut seg);
                    self.flush_source(s).await?;
                }
            }
            row = end;
        }
        self.count(|st| {
            st.messages_in += messages;
            st.readings_in += readings;
            st.readings_from_columns += readings;
        });
        self.stage(s, table, &mut seg);
        self.last_input = Instant::now();
        Ok(())
    }

    /// The verdicts of clean rows `block` of `table` (for source `s`), in `out`: each
    /// is checked for a repeat, then (when `by_topic` gives the device columns) its
    /// device admitted, exactly as its message would be. Both checks run over the whole
    /// block before any row is taken: neither table fits in the cache, and in a loop
    /// doing nothing else the processor overlaps one row's lookup with the next; taken
    /// with the rest of each row's work, every lookup waited for its memory alone (a
    /// quarter of a 10,000-device backtest's time). Nothing in between reads either
    /// table, so the outcome is the same as row by row.
    fn admit_block(
        &mut self,
        s: usize,
        table: &Table,
        by_topic: Option<(&[&StringArray], Option<usize>)>,
        block: std::ops::Range<usize>,
        out: &mut Vec<Verdict>,
    ) {
        out.clear();
        if self.recent.enabled() {
            // Rows of one source only, all keyed alike: another form of message could
            // only match by a 64-bit collision.
            // The table's slots for a row a few ahead are asked for while this one is
            // checked.
            const AHEAD: usize = 8;
            let recent = &mut self.recent;
            for r in block.clone() {
                if r + AHEAD < block.end {
                    recent.prefetch(table.key(r + AHEAD), AHEAD);
                }
                out.push(match recent.repeated_key(table.key(r)) {
                    true => Verdict::Repeat,
                    false => Verdict::Take,
                });
            }
        } else {
            out.resize(block.len(), Verdict::Take);
        }
        if let Some((levels, device_level)) = by_topic {
            let devices = &mut self.sources[s].devices;
            for (r, v) in block.zip(out.iter_mut()) {
                if *v == Verdict::Take && !devices.admit(&device_of(levels, device_level, r)) {
                    *v = Verdict::Refuse;
                }
            }
        }
    }

    /// Moves the clean rows in `seg` into source `s`'s micro-batch.
    fn stage(&mut self, s: usize, table: &Table, seg: &mut Segment) {
        let Some(&first) = seg.rows.first() else {
            return;
        };
        let n = seg.rows.len();
        // Rows in a run are slices, shared with the table; others are copied.
        let contiguous = seg.rows[n - 1] as usize - first as usize + 1 == n;
        let idx = (!contiguous).then(|| UInt32Array::from(std::mem::take(&mut seg.rows)));
        let columns = table
            .columns()
            .iter()
            .map(|c| match &idx {
                None => c.slice(first as usize, n),
                Some(idx) => take(c, idx, None).expect("indices within the table"),
            })
            .collect();
        // Clean rows have values wherever the schema requires them.
        let batch = RecordBatch::try_new(table.schema().clone(), columns)
            .expect("clean rows fit the schema");
        seg.rows.clear();
        self.sources[s].stage(batch);
    }
}
