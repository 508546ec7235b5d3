//! Group commit: concurrent writers, ordering, and all-or-nothing batches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mfp_runtime::AgentState;
use mfp_runtime::storage::{Storage, StorageError, StorageOp, Ticket};
use mfp_storage::{Durability, SqliteStorage, inspect};

const THREADS: u8 = 8;
const PER_THREAD: u64 = 150;

fn concurrent(durability: Durability) {
    let dir = TempDir::new("group");
    let path = dir.file("g.db");
    let k = key(1);
    let storage = Arc::new(SqliteStorage::open(config(&path, &k).durability(durability)).unwrap());
    // One agent pair and one channel per thread.
    let mut setup = vec![meta(u64::from(THREADS) * 2)];
    for t in 0..THREADS {
        setup.push(put_agent(2 * t + 1, None, AgentState::Active));
        setup.push(put_agent(2 * t + 2, None, AgentState::Active));
        setup.push(put_channel(100 + t, 2 * t + 1, 2 * t + 2));
    }
    storage.apply(setup).wait().unwrap();

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || {
                // Half of the threads queue everything before waiting (many batches per
                // commit, order matters), the other half wait for each ticket.
                if t % 2 == 0 {
                    let tickets: Vec<Ticket> = (1..=PER_THREAD)
                        .map(|step| storage.apply(vec![advance(100 + t, step), StorageOp::Sg(Some(state(step)))]))
                        .collect();
                    for ticket in tickets {
                        ticket.wait().unwrap();
                    }
                } else {
                    for step in 1..=PER_THREAD {
                        storage.apply(vec![advance(100 + t, step), StorageOp::Sg(Some(state(step)))]).wait().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = storage.stats();
    let total = 1 + u64::from(THREADS) * PER_THREAD;
    assert_eq!(stats.batches_committed, total);
    assert_eq!((stats.batches_failed, stats.failed_transactions, stats.rejected), (0, 0, 0));
    assert!(stats.commits < total, "batches were grouped: {stats:?}");
    println!("{durability:?}: {total} batches in {} commits", stats.commits);
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.channels.len(), usize::from(THREADS));
    for (t, c) in s.channels.iter().enumerate() {
        assert_eq!(c.id, channel_id(100 + t as u8));
        assert_eq!(c.step, PER_THREAD, "the last batch of each thread is the one that stays");
        assert_eq!(c.state, state(u64::from(100 + t as u8) * 1000 + PER_THREAD));
    }
    drop(storage);
    let again = SqliteStorage::open(config(&path, &k)).unwrap().load().unwrap().unwrap();
    assert_eq!(again, s);
}

#[test]
fn concurrent_writers_all_complete_in_order_normal() {
    concurrent(Durability::Normal);
}

#[test]
fn concurrent_writers_all_complete_in_order_sync() {
    concurrent(Durability::Sync);
}

#[test]
fn a_failing_batch_in_a_group_fails_alone_and_leaves_nothing() {
    let dir = TempDir::new("isolation");
    let path = dir.file("i.db");
    let storage = SqliteStorage::open(config(&path, &key(2))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();

    // Queue many batches at once so they share transactions; every 7th one is invalid after a
    // valid first op (a new agent, then a channel to an unknown agent).
    let tickets: Vec<(u64, Ticket)> = (1..=60u64)
        .map(|i| {
            let ops = if i % 7 == 0 {
                vec![put_agent(100 + i as u8, None, AgentState::Bound), put_channel(150 + i as u8, 1, 250)]
            } else {
                vec![advance(10, i), StorageOp::Sg(Some(state(i)))]
            };
            (i, storage.apply(ops))
        })
        .collect();
    for (i, t) in tickets {
        let r = t.wait();
        assert_eq!(r.is_err(), i % 7 == 0, "batch {i}: {r:?}");
    }
    let stats = storage.stats();
    assert_eq!((stats.batches_committed, stats.batches_failed), (1 + 52, 8));
    // A constraint fails its batch, not the transaction: the fast path rolls back and the
    // slow path isolates the batch.
    assert_eq!(stats.failed_transactions, 0, "{stats:?}");
    assert!(stats.commits < 50, "{stats:?}");
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.agents.len(), 3, "no agent of a failed batch was stored");
    assert_eq!(s.channels[0].step, 60);
    assert_eq!(s.sg, Some(state(60)));
}

#[test]
fn a_failed_transaction_applies_nothing_and_storage_recovers() {
    let dir = TempDir::new("txfail");
    let path = dir.file("t.db");
    let storage = SqliteStorage::open(config(&path, &key(3)).busy_timeout(Duration::from_millis(50))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let before = storage.load().unwrap();
    {
        let _lock = WriteLock::hold(&path);
        let tickets: Vec<Ticket> = (1..=5)
            .map(|i| storage.apply(vec![put_agent(50 + i, None, AgentState::Bound), advance(10, u64::from(i))]))
            .collect();
        for t in tickets {
            assert!(matches!(t.wait(), Err(StorageError::Backend(_))));
        }
    }
    assert_eq!(storage.load().unwrap(), before);
    storage.apply(vec![advance(10, 1)]).wait().unwrap();
    assert_eq!(storage.load().unwrap().unwrap().channels[0].step, 1);
}

#[test]
fn close_finishes_queued_batches() {
    let dir = TempDir::new("closed");
    let storage = SqliteStorage::open(config(&dir.file("c.db"), &key(4))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let queued = storage.apply(vec![advance(10, 1)]);
    storage.close().unwrap();
    queued.wait().unwrap();
}

#[test]
fn removals_alone_commit_with_the_next_batch_or_before_a_read_or_a_close() {
    let dir = TempDir::new("removals");
    let path = dir.file("r.db");
    let k = key(5);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    for step in 0..4 {
        storage
            .apply(vec![advance(10, step + 1), delivery(10, step, 1, 2, b"m"), StorageOp::Sg(Some(state(step)))])
            .wait()
            .unwrap();
    }
    let ack = |step| vec![StorageOp::AckDelivery { channel: channel_id(10), step }];
    let steps = |s: &SqliteStorage| s.load().unwrap().unwrap().deliveries.iter().map(|d| d.step).collect::<Vec<_>>();

    // Each assertion below holds whenever the writer picks the removal up; the short pauses
    // only make it likely that the removal is already waiting alone when the next request
    // comes (instead of arriving with it), so that the waiting path is the one exercised.
    let pause = || std::thread::sleep(Duration::from_micros(500));

    // Not waited for: a read sees it.
    drop(storage.apply(ack(0)));
    pause();
    assert_eq!(steps(&storage), vec![1, 2, 3]);

    // Followed by another batch: both commit, in order.
    let removal = storage.apply(ack(1));
    pause();
    storage.apply(vec![advance(10, 5), StorageOp::Sg(Some(state(5)))]).wait().unwrap();
    removal.wait().unwrap();
    assert_eq!(steps(&storage), vec![2, 3]);

    // Alone and waited for: it still commits.
    storage.apply(ack(2)).wait().unwrap();
    // Queued before a close: committed by the close.
    drop(storage.apply(ack(3)));
    pause();
    let before = storage.stats();
    assert_eq!((before.batches_failed, before.failed_transactions), (0, 0));
    storage.close().unwrap();
    assert!(inspect(&path, &k).unwrap().snapshot.unwrap().deliveries.is_empty());
}
