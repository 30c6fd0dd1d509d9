//! Row admission rules that need no more than a row's key and event time: the
//! `max_future` check with its confirmation of real jumps, and the filing of rejected
//! rows by reason. The rest of the verdict (late, too many windows) depends on the
//! operator's panes and sessions and is in [`crate::operator`].

use std::collections::{BTreeMap, HashMap};

use forewarn_core::Millis;

use crate::output::RowRejection;

/// Row indices of one batch that were rejected, by reason code (so in a stable order).
pub(crate) type Rejected = BTreeMap<&'static str, (RowRejection, Vec<u32>)>;

/// Files row `i` under `reason`.
pub(crate) fn record(rejected: &mut Rejected, reason: RowRejection, i: usize) {
    rejected
        .entry(reason.code())
        .or_insert((reason, vec![]))
        .1
        .push(i as u32);
}

/// The later of two optional times.
#[inline]
pub(crate) fn max_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The `max_future` check.
#[derive(Debug, Default)]
pub(crate) struct FutureCheck {
    /// Per watermark key (`""` without one): the time of the last row rejected as too
    /// far ahead, while no row of that key within reach came after it (see
    /// [`Self::ok`]). Not kept in checkpoints: after a restart a jump takes one more row
    /// to confirm.
    jumps: HashMap<String, Millis>,
    /// How many keys have each of those times: which one a row confirms.
    times: BTreeMap<Millis, u32>,
}

impl FutureCheck {
    /// Whether a row at `t` is within `limit` (`max_future`) of `newest`, the newest
    /// event time accepted so far. A row beyond it is refused; but a stream that really
    /// jumped ahead (a plant back after an outage longer than the limit) must not be
    /// refused forever: a second row at or after a refused one, and within `limit` of
    /// it, confirms the jump. The refused row may be of any key: after a fleet-wide stop
    /// the first device back costs one reading, not every device its first. A row
    /// within reach clears its own key's refused row only, so a device still sending
    /// older readings does not keep the others from confirming. One rogue timestamp
    /// among normal readings never confirms itself.
    pub(crate) fn ok(
        &mut self,
        newest: Option<Millis>,
        key: &str,
        t: Millis,
        limit: Millis,
    ) -> bool {
        let Some(newest) = newest else {
            return true;
        };
        if t <= newest.saturating_add(limit) {
            if !self.jumps.is_empty() {
                self.forget(key);
            }
            return true;
        }
        let confirms = self
            .times
            .range(t.saturating_sub(limit)..=t)
            .next()
            .is_some();
        if confirms {
            self.forget(key);
            return true;
        }
        self.forget(key);
        self.jumps.insert(key.to_string(), t);
        *self.times.entry(t).or_default() += 1;
        false
    }

    /// Drops `key`'s refused row.
    fn forget(&mut self, key: &str) {
        if let Some(t) = self.jumps.remove(key) {
            match self.times.get_mut(&t) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.times.remove(&t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_within_reach_pass_and_nothing_passes_before_any_row() {
        let mut f = FutureCheck::default();
        assert!(f.ok(None, "a", 1_000_000, 10), "nothing seen yet");
        assert!(f.ok(Some(100), "a", 110, 10), "exactly at the limit");
        assert!(!f.ok(Some(100), "a", 111, 10), "one past the limit");
    }

    #[test]
    fn a_second_row_near_the_first_confirms_a_jump() {
        let mut f = FutureCheck::default();
        assert!(!f.ok(Some(100), "a", 500, 10));
        // Within 10 of the refused 500 and not before it: the jump is real.
        assert!(f.ok(Some(100), "a", 510, 10));
        // Confirmation is used up: the next far row is refused again.
        assert!(!f.ok(Some(100), "a", 515, 10));
    }

    #[test]
    fn a_jump_is_not_confirmed_by_an_earlier_row_or_after_a_row_within_reach() {
        let mut f = FutureCheck::default();
        assert!(!f.ok(Some(100), "a", 500, 10));
        // Before the refused row: refused, and it becomes a's candidate.
        assert!(!f.ok(Some(100), "a", 499, 10));
        // 511 is 12 past the new candidate 499: too far to confirm; the next candidate.
        assert!(!f.ok(Some(100), "a", 511, 10));
        // A row of key a within reach of the newest time clears a's candidate...
        assert!(f.ok(Some(100), "a", 105, 10));
        // ...so a row right after it, of any key, no longer confirms anything.
        assert!(!f.ok(Some(100), "b", 515, 10));
        // Key b's candidate 515 is there, and a row of another key confirms it.
        assert!(f.ok(Some(100), "c", 520, 10));
    }

    #[test]
    fn after_a_fleet_wide_stop_the_first_device_back_confirms_for_the_others() {
        let mut f = FutureCheck::default();
        // Every device is back an hour later; only the first one's reading is refused.
        assert!(!f.ok(Some(0), "d1", 3_600_000, 600_000));
        for d in ["d2", "d3", "d4"] {
            assert!(f.ok(Some(0), d, 3_600_500, 600_000), "{d}");
        }
        // A device still sending older readings clears only its own candidate.
        let mut f = FutureCheck::default();
        assert!(!f.ok(Some(0), "d1", 3_600_000, 600_000));
        assert!(f.ok(Some(0), "late", 10, 600_000));
        assert!(f.ok(Some(0), "d2", 3_600_500, 600_000));
        // A rogue time is not confirmed by rows before it or far after it, of any key.
        let mut f = FutureCheck::default();
        assert!(!f.ok(Some(0), "rogue", 9_000_000, 600_000));
        assert!(!f.ok(Some(0), "d2", 3_600_000, 600_000));
        assert!(!f.ok(Some(0), "d3", 9_700_000, 600_000));
        assert_eq!(f.times.len(), 3);
        assert!(f.ok(Some(0), "rogue", 50, 600_000));
        assert_eq!(f.times.len(), 2);
    }

    #[test]
    fn rejected_rows_are_filed_by_reason_code() {
        let mut r = Rejected::new();
        record(&mut r, RowRejection::Late, 3);
        record(&mut r, RowRejection::Future, 1);
        record(&mut r, RowRejection::Late, 5);
        let v: Vec<_> = r.into_iter().collect();
        assert_eq!(
            v,
            vec![
                ("future_timestamp", (RowRejection::Future, vec![1])),
                ("late", (RowRejection::Late, vec![3, 5])),
            ]
        );
    }

    #[test]
    fn max_opt_takes_the_later_known_time() {
        assert_eq!(max_opt(None, None), None);
        assert_eq!(max_opt(Some(3), None), Some(3));
        assert_eq!(max_opt(None, Some(4)), Some(4));
        assert_eq!(max_opt(Some(3), Some(-4)), Some(3));
    }
}
