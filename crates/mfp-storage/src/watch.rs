//! Noticing a dead SQLite worker.
//!
//! sqlx runs each SQLite connection on a worker thread of its own. Some damage to a database
//! file (a non-UTF-8 byte in a column's declared type, say) makes that thread panic, and a
//! future waiting on it may then never complete. So every thread of ours that drives sqlx
//! futures names its connections' worker threads `mfp-sqlite-<token>-<n>` (through
//! [`worker_name`], which reads the token of the calling thread), a panic hook (installed
//! once, chaining to the previous hook) records the panics of such threads, and the thread
//! races its work against [`crashed`], which completes as soon as one of its workers has
//! panicked.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

/// Prefix of the worker threads' names.
const PREFIX: &str = "mfp-sqlite-";

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static HOOK: Once = Once::new();
/// Tokens of threads one of whose workers panicked.
static CRASHED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

thread_local! {
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// Gives the calling thread a fresh token (its workers are named after it) and installs the
/// panic hook if needed. Returns the token for [`crashed`].
pub(crate) fn enter() -> u64 {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(token) = std::thread::current().name().and_then(token_of) {
                CRASHED.lock().unwrap_or_else(PoisonError::into_inner).insert(token);
            }
            previous(info);
        }));
    });
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    TOKEN.with(|t| t.set(token));
    token
}

fn token_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// The name of a new worker thread: `mfp-sqlite-<token of the calling thread>-<n>`.
pub(crate) fn worker_name(n: u64) -> String {
    format!("{PREFIX}{}-{n}", TOKEN.with(Cell::get))
}

/// Whether a worker of `token` has panicked.
pub(crate) fn has_crashed(token: u64) -> bool {
    CRASHED.lock().unwrap_or_else(PoisonError::into_inner).contains(&token)
}

/// Completes once a worker of `token` has panicked (checked every 20 ms).
pub(crate) async fn crashed(token: u64) {
    while !has_crashed(token) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Forgets `token` (its thread is done).
pub(crate) fn leave(token: u64) {
    CRASHED.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_token() {
        let token = enter();
        let name = worker_name(7);
        assert_eq!(token_of(&name), Some(token));
        assert_eq!(token_of("sqlx-sqlite-worker-3"), None);
    }

    #[test]
    fn a_panicking_worker_is_noticed_and_only_for_its_token() {
        let token = enter();
        let other = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        assert!(!has_crashed(token));
        let worker = std::thread::Builder::new()
            .name(worker_name(1))
            .spawn(|| panic!("a worker thread panics (expected by this test)"))
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        assert!(worker.join().is_err());
        assert!(has_crashed(token));
        assert!(!has_crashed(other));
        // crashed() completes (the runtime would otherwise wait for ever).
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(crashed(token));
        leave(token);
        assert!(!has_crashed(token));
    }
}
