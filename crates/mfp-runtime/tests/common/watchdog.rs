//! A guard for tests whose storage holds batches until the test completes them: if the test
//! stalls (a send or an ingest waiting on a commit it blocked), the watchdog completes
//! every held batch after a generous bound and says so, so the test fails instead of
//! hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A storage whose batches wait for the test.
pub(crate) trait HoldsBatches: Clone + Send + 'static {
    /// Batches held now.
    fn pending(&self) -> usize;
    /// Commit new batches at once (`true`) or hold them.
    fn set_auto(&self, auto: bool);
    /// Commits every held batch.
    fn complete_all(&self);
}

impl HoldsBatches for super::manual_store::ManualStore {
    fn pending(&self) -> usize {
        Self::pending(self)
    }

    fn set_auto(&self, auto: bool) {
        Self::set_auto(self, auto);
    }

    fn complete_all(&self) {
        Self::complete_all(self);
    }
}

/// A thread that, unless stopped (dropped) within 10 s, commits every held batch, lets
/// later ones through, and records that it fired.
pub(crate) struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(store: &impl HoldsBatches) -> Self {
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let (f, s) = (Arc::clone(&fired), store.clone());
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                f.store(true, Ordering::SeqCst);
                s.set_auto(true);
                s.complete_all();
            }
        });
        Self { fired, stop: Some(stop), thread: Some(thread) }
    }

    /// Whether it fired: the test stalled.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Yields until `n` batches are held (or the watchdog fired).
pub(crate) async fn held(store: &impl HoldsBatches, n: usize, dog: &Watchdog) {
    while store.pending() < n && !dog.fired() {
        tokio::task::yield_now().await;
    }
}
