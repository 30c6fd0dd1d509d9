//! Where each reading of a source's micro-batch came from, for the dead letter of a
//! reading refused later (late, or from a device over the limit). Kept compact: the
//! rows a history table gives are one run holding the table once and their row numbers,
//! not an origin per row. Each such origin held its own reference to the table, an
//! atomic count per row on a cache line the reading thread shares: 5 % of a
//! backtest's time.

use std::sync::Arc;

use forewarn_formats::Readings;

use crate::outputs::{Origin, OriginTopic};

/// The origins of a micro-batch's rows, in row order.
#[derive(Default)]
pub(crate) struct Origins {
    runs: Vec<Run>,
    /// The first row of each run.
    starts: Vec<usize>,
    len: usize,
}

enum Run {
    /// One row's origin.
    One(Origin),
    /// Rows of one history table, by their row number in it.
    Rows(Arc<dyn Readings>, Vec<u32>),
}

impl Run {
    fn len(&self) -> usize {
        match self {
            Run::One(_) => 1,
            Run::Rows(_, rows) => rows.len(),
        }
    }
}

impl Origins {
    /// Rows recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends the next row's origin.
    pub(crate) fn push(&mut self, o: Origin) {
        self.starts.push(self.len);
        self.runs.push(Run::One(o));
        self.len += 1;
    }

    /// Appends the next row's origin: row `row` of the history table `rows`.
    pub(crate) fn push_row(&mut self, rows: &Arc<dyn Readings>, row: usize) {
        let row = u32::try_from(row).expect("a history table holds under 2^32 rows");
        match self.runs.last_mut() {
            Some(Run::Rows(table, list)) if Arc::ptr_eq(table, rows) => list.push(row),
            _ => {
                self.starts.push(self.len);
                self.runs.push(Run::Rows(rows.clone(), vec![row]));
            }
        }
        self.len += 1;
    }

    /// The origin of row `i`, if recorded.
    pub(crate) fn get(&self, i: usize) -> Option<Origin> {
        if i >= self.len {
            return None;
        }
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        Some(match &self.runs[k] {
            Run::One(o) => o.clone(),
            Run::Rows(table, rows) => Origin {
                topic: OriginTopic::Row(table.clone(), rows[i - self.starts[k]] as usize),
                index: None,
            },
        })
    }

    /// The origins of the rows whose `keep` is true, in order.
    pub(crate) fn filter(self, keep: &[bool]) -> Origins {
        let mut out = Origins::default();
        let mut i = 0;
        for run in self.runs {
            let n = run.len();
            let kept = &keep[i.min(keep.len())..(i + n).min(keep.len())];
            i += n;
            match run {
                Run::One(o) if kept.first() == Some(&true) => out.push(o),
                Run::One(_) => {}
                Run::Rows(table, rows) => {
                    for (row, _) in rows.into_iter().zip(kept).filter(|(_, k)| **k) {
                        out.push_row(&table, row as usize);
                    }
                }
            }
        }
        out
    }
}

impl FromIterator<Origin> for Origins {
    fn from_iter<I: IntoIterator<Item = Origin>>(iter: I) -> Self {
        let mut out = Origins::default();
        iter.into_iter().for_each(|o| out.push(o));
        out
    }
}

impl Extend<Origin> for Origins {
    fn extend<I: IntoIterator<Item = Origin>>(&mut self, iter: I) {
        iter.into_iter().for_each(|o| self.push(o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forewarn_formats::Scalar;

    /// A history table whose row `r` has the topic `{name}/{r}`.
    struct Topics(Vec<String>);

    impl Readings for Topics {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn columns(&self) -> &[String] {
            &[]
        }
        fn topic(&self, row: usize) -> &str {
            &self.0[row]
        }
        fn value(&self, _: usize, _: usize) -> Option<Scalar<'_>> {
            None
        }
        fn payload(&self, _: usize) -> Vec<u8> {
            b"{}".to_vec()
        }
        fn payload_bound(&self, _: usize) -> usize {
            2
        }
    }

    fn table(name: &str) -> Arc<dyn Readings> {
        Arc::new(Topics((0..100).map(|r| format!("{name}/{r}")).collect()))
    }

    fn text(o: &Origin) -> (String, Option<usize>) {
        (o.topic.to_string(), o.index)
    }

    #[test]
    fn rows_of_tables_and_single_origins_read_back_in_order_and_filtered() {
        let (a, b) = (table("a"), table("b"));
        let mut origins = Origins::default();
        let mut want = Vec::new();
        let mut x = 0x9e37_79b9u32;
        let mut next = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let mut stretch = 0;
        for i in 0..500 {
            // Rows come in stretches of one table, now and then one message between.
            if i % 25 == 0 {
                stretch = 1 + next(4);
            }
            match if next(10) == 0 { 0 } else { stretch } {
                0 => {
                    let o = Origin {
                        topic: OriginTopic::Text(format!("m/{i}").into()),
                        index: (i % 2 == 0).then_some(i % 7),
                    };
                    want.push(text(&o));
                    origins.push(o);
                }
                k => {
                    let (t, name) = if k < 3 { (&a, "a") } else { (&b, "b") };
                    let row = next(100) as usize;
                    want.push((format!("{name}/{row}"), None));
                    origins.push_row(t, row);
                }
            }
        }
        let got: Vec<_> = (0..want.len())
            .map(|i| text(&origins.get(i).unwrap()))
            .collect();
        assert_eq!(got, want);
        assert!(origins.get(want.len()).is_none());
        // Runs of one table share it: far fewer runs than rows.
        assert!(origins.runs.len() < 300, "{} runs", origins.runs.len());
        let keep: Vec<bool> = (0..want.len()).map(|_| next(3) != 0).collect();
        let kept = origins.filter(&keep);
        let want: Vec<_> = want
            .into_iter()
            .zip(&keep)
            .filter_map(|(w, k)| k.then_some(w))
            .collect();
        let got: Vec<_> = (0..want.len())
            .map(|i| text(&kept.get(i).unwrap()))
            .collect();
        assert_eq!(got, want);
        assert!(kept.get(want.len()).is_none());
    }
}
