//! The per-peer circuit breaker (pymfp's defaults, PROTOCOL §4.12): a send that finds the
//! link down is a failure, one that finds it up a success; open, the breaker refuses sends
//! at once, so a dead peer costs a sender almost nothing.

use std::time::Duration;

use parking_lot::Mutex;

/// Consecutive failures that open a breaker.
const BREAKER_FAILURES: u32 = 5;
/// Trials a half-open breaker lets through.
const BREAKER_TRIALS: u32 = 3;
/// Successful trials that close it.
const BREAKER_SUCCESSES: u32 = 2;

/// Failures of a closed breaker closer together than this count once: a send waiting for
/// the link tries again every few milliseconds, and a reconnect of a few hundred
/// milliseconds must not open the breaker by itself (five failures take four seconds).
const BREAKER_FAILURE_SPACING: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    /// `last`: when the latest failure counted.
    Closed {
        failures: u32,
        last: Option<std::time::Instant>,
    },
    Open {
        until: std::time::Instant,
    },
    HalfOpen {
        trials: u32,
        successes: u32,
    },
}

/// A peer's circuit breaker: a send that finds the link down is a failure, one that finds
/// it up a success; open, it refuses sends at once (no wait) so a dead peer costs a sender
/// almost nothing.
pub(super) struct Breaker {
    cool_down: Duration,
    state: Mutex<BreakerState>,
    /// Closed with no failure counted (kept under `state`'s lock, read without it): a send
    /// then needs neither the clock nor the lock — `admit` would say yes and a success would
    /// change nothing.
    healthy: std::sync::atomic::AtomicBool,
}

impl Breaker {
    pub(super) fn new(cool_down: Duration) -> Self {
        Self {
            cool_down,
            state: Mutex::new(BreakerState::Closed { failures: 0, last: None }),
            healthy: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Closed with no failure counted.
    pub(super) fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a send may try now.
    pub(super) fn admit(&self, now: std::time::Instant) -> bool {
        let mut st = self.state.lock();
        match *st {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::Open { .. } => {
                *st = BreakerState::HalfOpen { trials: 1, successes: 0 };
                true
            }
            BreakerState::HalfOpen { trials, successes } if trials < BREAKER_TRIALS => {
                *st = BreakerState::HalfOpen { trials: trials + 1, successes };
                true
            }
            BreakerState::HalfOpen { .. } => false,
        }
    }

    /// Records what an admitted send found; `true` when this opened the breaker.
    pub(super) fn record(&self, ok: bool, now: std::time::Instant) -> bool {
        let mut st = self.state.lock();
        let open = BreakerState::Open { until: now + self.cool_down };
        let (next, opened) = match (*st, ok) {
            (BreakerState::Closed { .. }, true) => (BreakerState::Closed { failures: 0, last: None }, false),
            (s @ BreakerState::Closed { last: Some(last), .. }, false)
                if now.saturating_duration_since(last) < BREAKER_FAILURE_SPACING =>
            {
                (s, false)
            }
            (BreakerState::Closed { failures, .. }, false) if failures + 1 >= BREAKER_FAILURES => (open, true),
            (BreakerState::Closed { failures, .. }, false) => {
                (BreakerState::Closed { failures: failures + 1, last: Some(now) }, false)
            }
            (BreakerState::HalfOpen { successes, .. }, true) if successes + 1 >= BREAKER_SUCCESSES => {
                (BreakerState::Closed { failures: 0, last: None }, false)
            }
            (BreakerState::HalfOpen { trials, successes }, true) => {
                (BreakerState::HalfOpen { trials, successes: successes + 1 }, false)
            }
            (BreakerState::HalfOpen { .. }, false) => (open, true),
            (s @ BreakerState::Open { .. }, _) => (s, false),
        };
        *st = next;
        self.healthy
            .store(matches!(next, BreakerState::Closed { failures: 0, .. }), std::sync::atomic::Ordering::Relaxed);
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_five_failures_and_closes_after_two_good_trials() {
        let t0 = std::time::Instant::now();
        let b = Breaker::new(Duration::from_secs(30));
        assert!(b.healthy());
        // Failures closer together than the spacing count once.
        for _ in 0..20 {
            assert!(b.admit(t0));
            assert!(!b.record(false, t0 + Duration::from_millis(100)), "retries of one wait open nothing");
        }
        for i in 1..BREAKER_FAILURES {
            let t = t0 + BREAKER_FAILURE_SPACING * (i + 1);
            assert!(b.admit(t));
            assert_eq!(b.record(false, t), i + 1 == BREAKER_FAILURES, "failure {i}");
        }
        let t0 = t0 + BREAKER_FAILURE_SPACING * BREAKER_FAILURES;
        assert!(!b.healthy(), "open");
        assert!(!b.admit(t0 + Duration::from_secs(29)), "open: refused without trying");
        // Half-open after the cool-down: three trials at most.
        let t1 = t0 + Duration::from_secs(30);
        assert!(b.admit(t1));
        assert!(!b.record(true, t1));
        assert!(!b.healthy(), "half-open after one good trial");
        assert!(b.admit(t1));
        assert!(!b.record(true, t1));
        assert!(b.healthy(), "closed, no failure counted");
        // Two successes closed it: admits freely again.
        for _ in 0..10 {
            assert!(b.admit(t1));
        }
        // A success resets the count of consecutive failures.
        for i in 0..BREAKER_FAILURES - 1 {
            b.record(false, t1 + BREAKER_FAILURE_SPACING * i);
        }
        assert!(!b.healthy(), "closed with failures counted: sends must read the clock and record");
        let t2 = t1 + BREAKER_FAILURE_SPACING * BREAKER_FAILURES;
        b.record(true, t2);
        assert!(b.healthy());
        assert!(!b.record(false, t2), "one failure after a success does not open it");
    }

    #[test]
    fn a_failed_trial_reopens_the_breaker() {
        let t0 = std::time::Instant::now();
        let b = Breaker::new(Duration::from_secs(1));
        for i in 0..BREAKER_FAILURES {
            b.record(false, t0 + BREAKER_FAILURE_SPACING * i);
        }
        let t0 = t0 + BREAKER_FAILURE_SPACING * (BREAKER_FAILURES - 1);
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.admit(t1));
        assert!(b.record(false, t1), "the failed trial reopens it");
        assert!(!b.admit(t1 + Duration::from_millis(500)));
        // Only three trials while half-open.
        let t2 = t1 + Duration::from_secs(1);
        assert!(b.admit(t2) && b.admit(t2) && b.admit(t2));
        assert!(!b.admit(t2), "no fourth trial before an outcome closes or reopens it");
    }
}
