//! Session windows: the per-key state machine that gives each row a session id,
//! merges the sessions a row bridges, and decides when a session may fire.
//!
//! A session's rows are aggregated in the ordinary time panes, with the window columns
//! set to the row's session id instead of the pane's bounds; when the session fires,
//! its state rows are picked out of the closed panes by id (see
//! [`crate::panes::Panes::take_rows_of`]).

use std::collections::{BTreeSet, HashMap};

use datafusion::arrow::array::{Array, StringArray};
use forewarn_core::{Millis, Pane};

/// One open session of one key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Session {
    key: String,
    /// Ids the session's rows were tagged with (several after two sessions merged).
    pub(crate) ids: Vec<Millis>,
    pub(crate) start: Millis,
    last: Millis,
    fire_at: Millis,
}

/// Per-key session state: open sessions, the keys' session lists and the firing order.
/// Checkpointed as is (field names are part of the checkpoint format).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sessions {
    gap: Millis,
    max_length: Millis,
    pane_width: Millis,
    next_id: Millis,
    open: HashMap<Millis, Session>,
    by_key: HashMap<String, Vec<Millis>>,
    by_fire: BTreeSet<(Millis, Millis)>,
}

impl Sessions {
    /// No sessions yet, for `session(gap, max_length)` over panes of `pane_width`.
    pub(crate) fn new(gap: Millis, max_length: Millis, pane_width: Millis) -> Self {
        Sessions {
            gap,
            max_length,
            pane_width,
            ..Default::default()
        }
    }

    /// Sessions open now.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    fn fire_at(&self, start: Millis, last: Millis) -> Millis {
        // A session cut at its maximum length still waits for the pane holding its last row.
        let end = (last + self.gap).min(start + self.max_length);
        let pane_end = (last.div_euclid(self.pane_width) + 1) * self.pane_width;
        end.max(pane_end)
    }

    /// A session's end: `gap` after its last row, or `max_length` after its start.
    fn end_of(&self, s: &Session) -> Millis {
        (s.last + self.gap).min(s.start + self.max_length)
    }

    /// The session id a row of `key` at `t` belongs to, merging sessions it bridges;
    /// `None` when it would form a new session that has already closed (late).
    pub(crate) fn assign(
        &mut self,
        key: &str,
        t: Millis,
        closed_until: Option<Millis>,
    ) -> Option<Millis> {
        // Per row: no allocation unless a session opens or two sessions merge.
        let (first, others) = {
            let (gap, max_length, open) = (self.gap, self.max_length, &self.open);
            let ids: &[Millis] = self.by_key.get(key).map_or(&[], Vec::as_slice);
            let mut hits = ids.iter().copied().filter(|id| {
                let s = &open[id];
                t > s.start - gap && t < s.last + gap && t.max(s.last) - t.min(s.start) < max_length
            });
            (hits.next(), hits.collect::<Vec<Millis>>())
        };
        let Some(first) = first else {
            if closed_until.is_some_and(|c| (t + self.gap).min(t + self.max_length) <= c) {
                return None;
            }
            let id = self.next_id;
            self.next_id += 1;
            let fire = self.fire_at(t, t);
            self.open.insert(
                id,
                Session {
                    key: key.to_string(),
                    ids: vec![id],
                    start: t,
                    last: t,
                    fire_at: fire,
                },
            );
            self.by_key.entry(key.to_string()).or_default().push(id);
            self.by_fire.insert((fire, id));
            return Some(id);
        };
        // The oldest session absorbs any others the row bridges.
        let keep = others.iter().copied().fold(first, Millis::min);
        let mut merged = self.open.remove(&keep).expect("open");
        self.by_fire.remove(&(merged.fire_at, keep));
        for other in std::iter::once(first).chain(others.iter().copied()) {
            if other == keep {
                continue;
            }
            let s = self.open.remove(&other).expect("open");
            self.by_fire.remove(&(s.fire_at, other));
            merged.start = merged.start.min(s.start);
            merged.last = merged.last.max(s.last);
            merged.ids.extend(s.ids);
            if let Some(v) = self.by_key.get_mut(key) {
                v.retain(|id| *id != other);
            }
        }
        merged.start = merged.start.min(t);
        merged.last = merged.last.max(t);
        merged.fire_at = self.fire_at(merged.start, merged.last);
        self.by_fire.insert((merged.fire_at, keep));
        self.open.insert(keep, merged);
        Some(keep)
    }

    /// Removes and returns the sessions that may fire at watermark `wm`.
    pub(crate) fn take_ready(&mut self, wm: Millis) -> Vec<Session> {
        let mut out = Vec::new();
        while let Some(&(fire, id)) = self.by_fire.first() {
            if fire > wm {
                break;
            }
            self.by_fire.pop_first();
            let s = self.open.remove(&id).expect("open");
            if let Some(v) = self.by_key.get_mut(&s.key) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_key.remove(&s.key);
                }
            }
            out.push(s);
        }
        out
    }

    /// The bounds of each of `ready`'s sessions, by every id its rows were tagged with.
    pub(crate) fn bounds_by_id(&self, ready: &[Session]) -> HashMap<Millis, Pane> {
        let mut bounds: HashMap<Millis, Pane> = Default::default();
        for s in ready {
            let p = Pane {
                start: s.start,
                end: self.end_of(s),
            };
            for id in &s.ids {
                bounds.insert(*id, p);
            }
        }
        bounds
    }
}

/// Row `r`'s session key: the key column's value itself, or for several key columns
/// their values joined in `buf` (reused across rows, so no allocation per row).
pub(crate) fn session_key<'a>(cols: &'a [StringArray], r: usize, buf: &'a mut String) -> &'a str {
    let cell = |c: &'a StringArray| if c.is_null(r) { "\0" } else { c.value(r) };
    if let [c] = cols {
        return cell(c);
    }
    buf.clear();
    for (n, c) in cols.iter().enumerate() {
        if n > 0 {
            buf.push('\u{1f}');
        }
        buf.push_str(cell(c));
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gap 10, max length 100 (panes are a gap wide).
    fn sessions() -> Sessions {
        Sessions::new(10, 100, 10)
    }

    /// (start, end, ids) of the sessions ready at `wm`, sorted by start.
    fn fire(s: &mut Sessions, wm: Millis) -> Vec<(Millis, Millis, Vec<Millis>)> {
        let ready = s.take_ready(wm);
        let mut v: Vec<_> = ready
            .iter()
            .map(|x| (x.start, s.end_of(x), x.ids.clone()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rows_within_the_gap_share_a_session_and_keys_are_separate() {
        let mut s = sessions();
        assert_eq!(s.assign("a", 100, None), Some(0));
        assert_eq!(s.assign("a", 109, None), Some(0), "9 after the last row");
        assert_eq!(s.assign("b", 105, None), Some(1), "another key");
        assert_eq!(s.assign("a", 119, None), Some(2), "exactly a gap after 109");
        assert_eq!(s.assign("a", 90, None), Some(3), "exactly a gap before 100");
        assert_eq!(s.open_count(), 4);
    }

    #[test]
    fn a_row_bridging_two_sessions_merges_them_into_the_older() {
        let mut s = sessions();
        assert_eq!(s.assign("a", 100, None), Some(0));
        assert_eq!(s.assign("a", 115, None), Some(1));
        assert_eq!(s.open_count(), 2);
        // 108 is within the gap of both 100 and 115.
        assert_eq!(s.assign("a", 108, None), Some(0));
        assert_eq!(s.open_count(), 1);
        // Later rows of the second session go to the merged one.
        assert_eq!(s.assign("a", 120, None), Some(0));
        // Ends a gap after its last row, 120; both ids' rows belong to it.
        assert_eq!(fire(&mut s, 129), vec![]);
        assert_eq!(fire(&mut s, 130), vec![(100, 130, vec![0, 1])]);
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn a_session_cut_at_its_maximum_length_waits_for_its_last_pane() {
        let mut s = Sessions::new(10, 95, 10);
        let mut t = 0;
        assert_eq!(s.assign("a", t, None), Some(0));
        while t + 9 < 95 {
            t += 9;
            assert_eq!(s.assign("a", t, None), Some(0), "row at {t}");
        }
        assert_eq!(t, 90);
        // 95 would make the session 95 long: a new one.
        assert_eq!(s.assign("a", 95, None), Some(1));
        // The first ends at start + max length (95), not a gap after 90 (100), but only
        // fires once the pane holding its last row (90..100) has closed.
        assert_eq!(fire(&mut s, 99), vec![]);
        assert_eq!(fire(&mut s, 100), vec![(0, 95, vec![0])]);
        assert_eq!(fire(&mut s, 104), vec![]);
        assert_eq!(fire(&mut s, 105), vec![(95, 105, vec![1])]);
    }

    #[test]
    fn sessions_fire_a_gap_after_their_last_row_and_keys_start_afresh() {
        let mut s = sessions();
        s.assign("a", 12, None);
        s.assign("b", 14, None);
        assert_eq!(fire(&mut s, 21), vec![]);
        assert_eq!(fire(&mut s, 22), vec![(12, 22, vec![0])]);
        assert_eq!(fire(&mut s, 24), vec![(14, 24, vec![1])]);
        // A fired session's key starts afresh.
        assert_eq!(s.assign("a", 25, None), Some(2));
    }

    #[test]
    fn a_new_session_that_would_already_have_closed_is_late() {
        let mut s = sessions();
        // A session of a row at 100 ends at 110.
        assert_eq!(s.assign("a", 100, Some(110)), None);
        assert_eq!(s.assign("a", 100, Some(109)), Some(0));
        // An open session still takes rows whatever the watermark.
        assert_eq!(s.assign("a", 95, Some(500)), Some(0));
        assert_eq!(s.open_count(), 1);
    }

    #[test]
    fn bounds_cover_every_id_of_a_merged_session() {
        let mut s = sessions();
        s.assign("a", 100, None);
        s.assign("a", 115, None);
        s.assign("a", 108, None);
        s.assign("b", 300, None);
        let ready = s.take_ready(1_000);
        let b = s.bounds_by_id(&ready);
        let p = Pane {
            start: 100,
            end: 125,
        };
        let q = Pane {
            start: 300,
            end: 310,
        };
        assert_eq!(b, HashMap::from([(0, p), (1, p), (2, q)]));
    }

    #[test]
    fn session_keys_join_several_columns() {
        let a = StringArray::from(vec![Some("x"), None]);
        let b = StringArray::from(vec![Some("y"), Some("z")]);
        let mut buf = String::new();
        assert_eq!(session_key(std::slice::from_ref(&a), 0, &mut buf), "x");
        assert_eq!(session_key(std::slice::from_ref(&a), 1, &mut buf), "\0");
        let cols = [a, b];
        assert_eq!(session_key(&cols, 0, &mut buf), "x\u{1f}y");
        assert_eq!(session_key(&cols, 1, &mut buf), "\0\u{1f}z");
    }
}
