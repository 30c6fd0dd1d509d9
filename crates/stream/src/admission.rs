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
    /// far ahead, while no row within reach came after it (see [`Self::ok`]). Not kept
    /// in checkpoints: after a restart a jump takes one more row to confirm.
    jumps: HashMap<String, Millis>,
}

impl FutureCheck {
    /// Whether a row at `t` is within `limit` (`max_future`) of `newest`, the newest
    /// event time accepted so far. A row beyond it is refused; but a stream that really
    /// jumped ahead (a plant back after an outage longer than the limit) must not be
    /// refused forever: a second row of the same key at or after the refused one, and
    /// within `limit` of it, with no row within reach in between, confirms the jump. One
    /// rogue timestamp among normal readings never does.
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
                self.jumps.remove(key);
            }
            return true;
        }
        match self.jumps.get(key) {
            Some(&first) if t >= first && t - first <= limit => {
                self.jumps.remove(key);
                true
            }
            _ => {
                self.jumps.insert(key.to_string(), t);
                false
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
    fn a_jump_is_not_confirmed_by_an_earlier_row_another_key_or_a_row_in_between() {
        let mut f = FutureCheck::default();
        assert!(!f.ok(Some(100), "a", 500, 10));
        // Before the refused row: refused, and it becomes the candidate.
        assert!(!f.ok(Some(100), "a", 499, 10));
        // 511 is 12 past the new candidate 499: too far to confirm.
        assert!(!f.ok(Some(100), "a", 511, 10));
        // Another key's rows have their own candidate.
        assert!(!f.ok(Some(100), "b", 512, 10));
        // A row within reach of the newest time clears key a's candidate...
        assert!(f.ok(Some(100), "a", 105, 10));
        // ...so a row right after it no longer confirms anything.
        assert!(!f.ok(Some(100), "a", 512, 10));
        // Key b's candidate 512 is still there.
        assert!(f.ok(Some(100), "b", 520, 10));
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
