//! The circuit breaker opens after N failed transactions, rejects at once, then half-opens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{BreakerConfig, SqliteStorage};

#[test]
fn breaker_opens_after_n_failures_and_recovers() {
    let dir = TempDir::new("breaker");
    let path = dir.file("b.db");
    let cool_down = Duration::from_millis(400);
    let storage = SqliteStorage::open(
        config(&path, &key(1))
            .busy_timeout(Duration::from_millis(30))
            .breaker(BreakerConfig { failure_threshold: 3, cool_down }),
    )
    .unwrap();
    storage.apply(setup_ops()).wait().unwrap();

    let lock = WriteLock::hold(&path);
    // Three real failures (the database is locked by another connection).
    for i in 1..=3 {
        let err = storage.apply(vec![advance(10, i)]).wait().unwrap_err();
        assert!(matches!(err, StorageError::Backend(_)), "{err:?}");
    }
    // Now open: refused at once, without touching the database.
    let t = Instant::now();
    for i in 0..100 {
        assert_eq!(storage.apply(vec![advance(10, 10 + i)]).wait().unwrap_err(), StorageError::CircuitOpen);
    }
    assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
    let stats = storage.stats();
    assert_eq!((stats.failed_transactions, stats.rejected), (3, 100));

    // After the cool-down, one trial; it fails (still locked): open again.
    std::thread::sleep(cool_down + Duration::from_millis(50));
    assert!(matches!(storage.apply(vec![advance(10, 1)]).wait(), Err(StorageError::Backend(_))));
    assert_eq!(storage.apply(vec![advance(10, 1)]).wait().unwrap_err(), StorageError::CircuitOpen);

    // Unlocked: the next trial succeeds and closes the breaker.
    drop(lock);
    std::thread::sleep(cool_down + Duration::from_millis(50));
    storage.apply(vec![advance(10, 1)]).wait().unwrap();
    storage.apply(vec![advance(10, 2)]).wait().unwrap();
    assert_eq!(storage.load().unwrap().unwrap().channels[0].step, 2);
}

#[test]
fn constraint_failures_do_not_open_the_breaker() {
    let dir = TempDir::new("breaker2");
    let storage = SqliteStorage::open(
        config(&dir.file("c.db"), &key(2))
            .breaker(BreakerConfig { failure_threshold: 2, cool_down: Duration::from_secs(60) }),
    )
    .unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    for _ in 0..5 {
        assert!(matches!(storage.apply(vec![put_channel(50, 1, 77)]).wait(), Err(StorageError::Backend(_))));
    }
    storage.apply(vec![advance(10, 1)]).wait().unwrap();
}
