#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, dead_code)]
//! Helpers shared by the integration tests: short-timeout configurations, a recording
//! inbox that can be waited on, a gate that blocks a handler until released, and a
//! deterministic entropy source.

pub(crate) mod manual_store;
pub(crate) mod recorder;
pub(crate) mod watchdog;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mfp_core::EntropySource;
use mfp_runtime::{AgentHandle, ChannelId, DeliveredMessage, Runtime, RuntimeConfig};

/// A configuration with short timeouts, so a failing test fails fast.
pub(crate) fn cfg() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.agent_timeout = Duration::from_millis(200);
    c.pipeline_timeout = Duration::from_millis(300);
    c
}

/// Upper bound for waiting on something that should happen within milliseconds.
pub(crate) const WAIT: Duration = Duration::from_millis(1500);

/// Messages delivered to one agent, in delivery order.
#[derive(Clone, Default)]
pub(crate) struct Inbox(Arc<(Mutex<Vec<DeliveredMessage>>, Condvar)>);

impl Inbox {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&self, m: DeliveredMessage) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().push(m);
        cv.notify_all();
    }

    /// A handler that records every message.
    pub(crate) fn handler(&self) -> impl Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static {
        let me = self.clone();
        move |_, m| me.push(m)
    }

    /// Waits until at least `n` messages arrived (at most `WAIT`); returns a copy of all.
    pub(crate) fn wait_for(&self, n: usize) -> Vec<DeliveredMessage> {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut g = lock.lock().unwrap();
        while g.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {n} messages, have {}", g.len());
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        g.clone()
    }

    pub(crate) fn all(&self) -> Vec<DeliveredMessage> {
        self.0.0.lock().unwrap().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.0.lock().unwrap().len()
    }

    pub(crate) fn payloads(&self) -> Vec<Vec<u8>> {
        self.all().into_iter().map(|m| m.payload).collect()
    }
}

/// A one-shot gate: `wait` blocks until `open` is called (or `WAIT` passes), and
/// `entered` tells whether some thread reached `wait`.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Gate {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Blocks the caller until the gate is opened.
    pub(crate) fn wait(&self) {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut g = lock.lock().unwrap();
        g.1 += 1;
        cv.notify_all();
        while !g.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits until `n` callers are blocked in (or went through) `wait`.
    pub(crate) fn wait_entered(&self, n: usize) {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut g = lock.lock().unwrap();
        while g.1 < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nobody entered the gate");
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    pub(crate) fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().0 = true;
        cv.notify_all();
    }
}

/// A deterministic entropy source: a splitmix64 stream from `seed`.
pub(crate) fn counter_entropy(seed: u64) -> impl EntropySource + Send + 'static {
    mfp_core::testing::SplitMix64(seed)
}

/// Silences panics raised on purpose by test handlers (their message contains
/// "on purpose"): the default hook would print them, and with `RUST_BACKTRACE` set it
/// would capture a backtrace first, which in a debug build can take longer than the short
/// agent timeouts these tests use. Other panics (failed assertions) still print.
pub(crate) fn quiet_intentional_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !msg.is_some_and(|m| m.contains("on purpose")) {
                default(info);
            }
        }));
    });
}

/// Asserts that `$e` (evaluated once) is `Err` matching `$p`, printing what it was if not.
#[allow(unused_macros)]
macro_rules! assert_err {
    ($e:expr, $p:pat) => {
        match $e {
            Err($p) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($p), other),
        }
    };
}

/// Runs `f` on its own thread and returns its result; fails the test if `f` has not
/// returned within `secs` seconds (a hang) or panicked.
pub(crate) fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the call did not return within {secs} s"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the call panicked"),
    }
}

/// A storage whose tickets complete from another thread, after the batch was applied to
/// an inner [`MemoryStorage`] (as a storage with a writer thread does). `pause` holds
/// completions back until `resume`.
#[derive(Clone)]
pub(crate) struct PendingStorage {
    pub(crate) mem: mfp_runtime::storage::MemoryStorage,
    tx: std::sync::mpsc::Sender<(mfp_runtime::storage::TicketSender, Result<(), mfp_runtime::storage::StorageError>)>,
    paused: Arc<(Mutex<bool>, Condvar)>,
}

impl PendingStorage {
    pub(crate) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(
            mfp_runtime::storage::TicketSender,
            Result<(), mfp_runtime::storage::StorageError>,
        )>();
        let paused: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let gate = Arc::clone(&paused);
        std::thread::spawn(move || {
            while let Ok((sender, result)) = rx.recv() {
                let mut p = gate.0.lock().unwrap();
                while *p {
                    p = gate.1.wait(p).unwrap();
                }
                drop(p);
                sender.complete(result);
            }
        });
        Self { mem: mfp_runtime::storage::MemoryStorage::new(), tx, paused }
    }

    /// Holds back completions.
    pub(crate) fn pause(&self) {
        *self.paused.0.lock().unwrap() = true;
    }

    /// Completes held and further batches again.
    pub(crate) fn resume(&self) {
        *self.paused.0.lock().unwrap() = false;
        self.paused.1.notify_all();
    }
}

impl mfp_runtime::storage::Storage for PendingStorage {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, mfp_runtime::storage::StorageError> {
        self.mem.load()
    }

    fn apply(&self, ops: Vec<mfp_runtime::storage::StorageOp>) -> mfp_runtime::storage::Ticket {
        let result = self.mem.apply(ops).wait();
        let (sender, ticket) = mfp_runtime::storage::Ticket::pending();
        self.tx.send((sender, result)).unwrap();
        ticket
    }
}

/// A recipient whose handler blocks on `gate` for every message until it is opened.
pub(crate) fn gated_pair(rt: &Runtime, gate: &Gate, inbox: &Inbox) -> (AgentHandle, AgentHandle, ChannelId) {
    let a = rt.bind(|_, _| {}).unwrap();
    let (g, i) = (gate.clone(), inbox.clone());
    let b = rt
        .bind(move |_, m| {
            g.wait();
            i.push(m);
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    (a, b, ch)
}
