//! The circuit breaker shared by `apply` (admission) and the writer (outcomes).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Normal operation; counts consecutive failed transactions.
    Closed { failures: u32 },
    /// Rejecting everything until the instant.
    Open { until: Instant },
    /// One trial batch admitted; everything else is rejected until its outcome is known.
    HalfOpen,
}

/// Counters of the write path, as reported by [`crate::SqliteStorage::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Transactions committed.
    pub commits: u64,
    /// Batches committed (a commit holds one or more batches).
    pub batches_committed: u64,
    /// Batches that failed on their own (constraint or range violations).
    pub batches_failed: u64,
    /// Transactions that failed (everything in them rolled back).
    pub failed_transactions: u64,
    /// Batches refused because the circuit breaker was open.
    pub rejected: u64,
}

/// Breaker state and write-path counters, shared by `apply` and the writer. All methods are
/// short critical sections or atomics.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
    commits: AtomicU64,
    batches_committed: AtomicU64,
    batches_failed: AtomicU64,
    failed_transactions: AtomicU64,
    rejected: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            threshold: config.failure_threshold.max(1),
            cool_down: config.cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
            commits: AtomicU64::new(0),
            batches_committed: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            failed_transactions: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Counts a committed transaction.
    pub(crate) fn count_commit(&self, ok_batches: u64, failed_batches: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches_committed.fetch_add(ok_batches, Ordering::Relaxed);
        self.batches_failed.fetch_add(failed_batches, Ordering::Relaxed);
    }

    /// Counts a failed transaction.
    pub(crate) fn count_failed_transaction(&self) {
        self.failed_transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts batches refused by the open breaker.
    pub(crate) fn count_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> StorageStats {
        StorageStats {
            commits: self.commits.load(Ordering::Relaxed),
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            failed_transactions: self.failed_transactions.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a new batch may be queued. Moving from open to half-open admits exactly one.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Whether the writer must fail already-queued batches instead of trying them.
    pub(crate) fn rejects_queued(&self, now: Instant) -> bool {
        matches!(*self.lock(), State::Open { until } if now < until)
    }

    /// Records the outcome of one transaction. Returns `true` if this opened the breaker.
    pub(crate) fn record(&self, success: bool, now: Instant) -> bool {
        let mut s = self.lock();
        let next = match (*s, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    State::Open { until: now + self.cool_down }
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen | State::Open { .. }, false) => State::Open { until: now + self.cool_down },
        };
        let opened = matches!(next, State::Open { .. }) && !matches!(*s, State::Open { .. });
        *s = next;
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(BreakerConfig { failure_threshold: 2, cool_down: Duration::from_millis(100) });
        let t0 = Instant::now();
        assert!(b.admit(t0));
        assert!(!b.record(false, t0));
        assert!(b.record(false, t0));
        assert!(!b.admit(t0));
        assert!(b.rejects_queued(t0));
        let later = t0 + Duration::from_millis(150);
        assert!(!b.rejects_queued(later));
        assert!(b.admit(later)); // the trial
        assert!(!b.admit(later)); // only one
        assert!(b.record(false, later)); // trial failed: open again
        assert!(!b.admit(later + Duration::from_millis(50)));
        let much_later = later + Duration::from_millis(200);
        assert!(b.admit(much_later));
        b.record(true, much_later);
        assert!(b.admit(much_later) && b.admit(much_later));
    }
}
