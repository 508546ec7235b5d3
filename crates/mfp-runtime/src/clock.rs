//! Time as an input: the runtime reads the time for rate windows, idempotency windows and
//! the rate-limit wait through a [`Clock`], passed in like entropy
//! ([`crate::RuntimeBuilder::clock`]). The default is the system's monotonic clock;
//! [`ManualClock`] is a virtual clock that moves only when told to, so tests of those
//! windows need no sleeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A boxed, sendable future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    /// The current instant; never earlier than a previous answer.
    fn now(&self) -> Instant;

    /// A future that completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;
}

/// The system's monotonic clock ([`Instant::now`], `tokio::time::sleep`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// A virtual clock for tests: it starts at the moment it is created and moves only by
/// [`ManualClock::advance`]. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualInner>);

#[derive(Debug)]
struct ManualInner {
    base: Instant,
    offset: Mutex<Duration>,
    moved: tokio::sync::Notify,
    /// Sleeps created and not yet dropped.
    sleepers: std::sync::atomic::AtomicUsize,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the current instant.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(ManualInner {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            moved: tokio::sync::Notify::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Moves the clock forward by `by`, waking the sleeps that are due.
    pub fn advance(&self, by: Duration) {
        {
            let mut offset = self.0.offset.lock();
            *offset = offset.saturating_add(by);
        }
        self.0.moved.notify_waiters();
    }

    /// How many sleeps on this clock exist (created by [`Clock::sleep_until`], not yet
    /// dropped): a test can wait until the code under test waits on the clock before it
    /// moves the clock.
    #[must_use]
    pub fn sleepers(&self) -> usize {
        self.0.sleepers.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How far the clock has been advanced since it was created.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        *self.0.offset.lock()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0.base + *self.0.offset.lock()
    }

    fn sleep_until(&self, target: Instant) -> Sleep {
        let clock = self.clone();
        let counted = Sleeper::new(&self.0);
        Box::pin(async move {
            let _counted = counted;
            loop {
                let moved = clock.0.moved.notified();
                let mut moved = std::pin::pin!(moved);
                // Registered before the check, so an advance in between is not missed.
                moved.as_mut().enable();
                if clock.now() >= target {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// Counts one sleep of a [`ManualClock`] while it exists.
struct Sleeper(Arc<ManualInner>);

impl Sleeper {
    fn new(inner: &Arc<ManualInner>) -> Self {
        inner.sleepers.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(Arc::clone(inner))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.0.sleepers.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
