//! Readiness: what `/readyz` checks, and how the age of the last checkpoint is known
//! from the counters alone.

use std::time::{Duration, Instant};

use forewarn_engine::EngineStats;
use serde::Serialize;

/// One readiness check and, when it fails, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `queries`, `broker` or `checkpoint`.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// What was found, in words.
    pub detail: String,
}

/// The `/readyz` body: `status` is `ready` when every check passes, else `not_ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Every check, passing or not.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The body for these checks.
    pub fn of(checks: Vec<Check>) -> Self {
        let ready = checks.iter().all(|c| c.ok);
        Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks,
        }
    }

    /// Whether every check passes.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// How many checkpoint intervals input may wait uncovered before the service is not
/// ready.
pub const CHECKPOINT_STALE_INTERVALS: u32 = 3;

/// Follows the checkpoint counters between samples. The engine writes a checkpoint
/// only when something happened since the last, so an idle service with an old
/// checkpoint is healthy: what is not is input that no checkpoint has covered for
/// [`CHECKPOINT_STALE_INTERVALS`] intervals, or a last attempt that failed.
#[derive(Debug)]
pub(crate) struct CheckpointTracker {
    interval: Duration,
    started: Instant,
    checkpoints: u64,
    failures: u64,
    last_written: Option<Instant>,
    failing: bool,
    /// `messages_in` when the last checkpoint was seen.
    covered: u64,
    /// When input beyond `covered` was first seen.
    pending_since: Option<Instant>,
}

impl CheckpointTracker {
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        CheckpointTracker {
            interval,
            started: now,
            checkpoints: 0,
            failures: 0,
            last_written: None,
            failing: false,
            covered: 0,
            pending_since: None,
        }
    }

    /// Takes a snapshot of the counters seen at `now`.
    pub(crate) fn observe(&mut self, s: &EngineStats, now: Instant) {
        if s.checkpoints != self.checkpoints {
            self.checkpoints = s.checkpoints;
            self.last_written = Some(now);
            self.failing = false;
            self.covered = s.messages_in;
            self.pending_since = None;
        } else if s.checkpoint_failures != self.failures {
            self.failing = true;
        }
        self.failures = s.checkpoint_failures;
        if s.messages_in > self.covered && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// Seconds since the last checkpoint written (or since tracking started).
    pub(crate) fn age(&self, now: Instant) -> f64 {
        now.duration_since(self.last_written.unwrap_or(self.started))
            .as_secs_f64()
    }

    /// The `checkpoint` check at `now`.
    pub(crate) fn check(&self, now: Instant) -> Check {
        let limit = self.interval * CHECKPOINT_STALE_INTERVALS;
        let fail = |detail: String| Check {
            name: "checkpoint",
            ok: false,
            detail,
        };
        if self.failing {
            return fail(format!(
                "the last checkpoint attempt failed ({} failures so far; see the log)",
                self.failures
            ));
        }
        if let Some(p) = self.pending_since {
            let waiting = now.duration_since(p);
            if waiting > limit {
                return fail(format!(
                    "input has waited {:.1} s for a checkpoint (limit {:.1} s: {CHECKPOINT_STALE_INTERVALS} x interval)",
                    waiting.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
        let detail = match self.last_written {
            Some(_) => format!("last written {:.1} s ago", self.age(now)),
            None => "none written yet; no input waiting longer than the limit".into(),
        };
        Check {
            name: "checkpoint",
            ok: true,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(messages: u64, checkpoints: u64, failures: u64) -> EngineStats {
        EngineStats {
            messages_in: messages,
            checkpoints,
            checkpoint_failures: failures,
            ..Default::default()
        }
    }

    #[test]
    fn idle_is_ready_uncovered_input_past_three_intervals_and_failures_are_not() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = CheckpointTracker::new(Duration::from_millis(100), t0);
        // Idle for a long time: nothing to checkpoint, ready.
        t.observe(&stats(0, 0, 0), s(10_000));
        assert!(t.check(s(10_000)).ok);
        // Input arrives; within 3 intervals it is fine, beyond it is not.
        t.observe(&stats(5, 0, 0), s(10_050));
        assert!(t.check(s(10_350)).ok);
        let c = t.check(s(10_351));
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "input has waited 0.3 s for a checkpoint (limit 0.3 s: 3 x interval)"
        );
        // A checkpoint covers it: ready, and its age is measured from then.
        t.observe(&stats(5, 1, 0), s(10_400));
        assert!(t.check(s(20_000)).ok);
        assert_eq!(t.age(s(10_900)), 0.5);
        // A failed attempt: not ready until a checkpoint is written again.
        t.observe(&stats(6, 1, 1), s(20_100));
        let c = t.check(s(20_100));
        assert!(!c.ok);
        assert!(c.detail.contains("failed (1 failures"), "{}", c.detail);
        t.observe(&stats(6, 2, 1), s(20_200));
        assert!(t.check(s(20_200)).ok);
    }
}
