#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The commit of a durable cross-runtime send: awaited as a future (no blocked executor
//! thread), and ordered with whatever else moves the channel's outbound chain (rotation,
//! reset, close). Storage is the held store of `common::manual_store`, whose batches wait
//! until the test completes them; the transport records what it is handed.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use common::cfg;
use common::manual_store::ManualStore;
use common::recorder::{self, Recorder, Side};
use common::watchdog::{Watchdog, held};
use mfp_core::State;
use mfp_core::bilateral::BilateralState;
use mfp_runtime::remote::{Chains, Ingested, RemoteEnd};
use mfp_runtime::{AgentHandle, ChannelId, ChannelStatus, RuntimeConfig, RuntimeId};

fn config(name: &[u8]) -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"remote-commit-test".to_vec();
    c.instance_id = name.to_vec();
    c
}

fn chain(label: u8, a: &RuntimeId, b: &RuntimeId) -> BilateralState {
    BilateralState::ceremonial(&State::from_bytes([label; 32]), a, b)
}

fn side(name: &[u8], store: Option<ManualStore>) -> Side {
    recorder::side(config(name), store)
}

/// Side A (durable, on a held store) and side B (in memory), joined by one channel; the
/// store commits nothing by itself from here on.
fn pair(store: &ManualStore) -> (Side, Side, ChannelId) {
    store.set_auto(true);
    let a = side(b"a", Some(store.clone()));
    let b = side(b"b", None);
    let (ia, ib) = (a.rt.identity(), b.rt.identity());
    let ch = ChannelId::from_bytes([9; 16]);
    let (a_to_b, b_to_a) = (chain(1, &ia, &ib), chain(2, &ib, &ia));
    a.rt.remote_handle()
        .establish(
            a.agent.id(),
            RemoteEnd::new(ib, b.agent.id()),
            ch,
            4,
            Chains::Split { tx: a_to_b.clone(), rx: b_to_a.clone() },
        )
        .unwrap();
    b.rt.remote_handle()
        .establish(b.agent.id(), RemoteEnd::new(ia, a.agent.id()), ch, 4, Chains::Split { tx: b_to_a, rx: a_to_b })
        .unwrap();
    store.set_auto(false);
    (a, b, ch)
}

/// Polls `fut` once.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Storage and memory agree on the outbound chain of `ch`.
fn agree(store: &ManualStore, a: &Side, ch: &ChannelId) {
    let stored = store.remote_tx_of(ch).unwrap();
    let point = a.rt.remote_handle().recovery_point(ch).unwrap();
    assert_eq!(stored.step, point.tx_next, "stored and in-memory outbound steps differ");
    assert_eq!(stored.state_hash(), point.tx_hash, "stored and in-memory outbound chains differ");
}

/// While an async durable send's commit is held, the rest of its task (a future joined
/// with it) and another task of the same runtime run; then the commit completes and the
/// receipt arrives.
async fn a_held_commit_blocks_nothing() {
    let store = ManualStore::default();
    let (a, b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let send = a.agent.send_async(ch, b"held");
    let other = async {
        held(&store, 1, &dog).await;
        let before_commit = !dog.fired();
        // Another task of this runtime runs meanwhile, too.
        let task = tokio::spawn(async { 7 }).await.unwrap();
        let nothing_out = a.wire.sent().is_empty();
        if !dog.fired() {
            store.complete_next(true);
        }
        (before_commit, task, nothing_out)
    };
    let (receipt, (before_commit, task, nothing_out)) = tokio::join!(send, other);
    assert!(before_commit, "the send blocked its thread until the commit completed");
    assert_eq!(task, 7);
    assert!(nothing_out, "nothing is handed over before its commit");
    let receipt = receipt.unwrap();
    assert_eq!(receipt.step, 0);
    let sent = a.wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].step, 0);
    assert_eq!(store.outbound_of(&ch), vec![0]);
    agree(&store, &a, &ch);
    // The message opens on the peer.
    let h = b.rt.remote_handle();
    assert_eq!(
        h.ingest_async(&a.rt.identity(), &sent[0].wire).await.unwrap(),
        Ingested::Delivered { channel: ch, step: 0 }
    );
    let inbox = b.inbox.clone();
    let got = tokio::task::spawn_blocking(move || inbox.wait_for(1)).await.unwrap();
    assert_eq!(got[0].payload, b"held");
    assert_eq!(got[0].message_id, receipt.message_id);
}

#[tokio::test(flavor = "current_thread")]
async fn a_held_remote_commit_blocks_nothing_on_a_current_thread_runtime() {
    a_held_commit_blocks_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_held_remote_commit_blocks_nothing_on_one_worker() {
    a_held_commit_blocks_nothing().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_rotation_requested_during_a_send_commit_applies_after_it() {
    let store = ManualStore::default();
    let (a, b, ch) = pair(&store);
    let secret = State::from_bytes([0x5a; 32]);
    b.rt.remote_handle().accept_rotation_async(&ch, secret.clone()).await.unwrap();
    let dog = Watchdog::start(&store);
    let ha = a.rt.remote_handle();
    let send = a.agent.send_async(ch, b"old chain");
    let rotate = ha.rotate_outbound_async(&ch, &secret);
    let drive = async {
        held(&store, 1, &dog).await;
        // Every future of the join has been polled again: the rotation has asked for the
        // turn by now.
        tokio::task::yield_now().await;
        let waited = store.pending();
        if !dog.fired() {
            store.complete_next(true);
        }
        // The send's hand-over lets the rotation submit its own batch.
        held(&store, 1, &dog).await;
        if !dog.fired() {
            store.complete_next(true);
        }
        waited
    };
    let (receipt, rotated, waited) = tokio::join!(send, rotate, drive);
    assert!(!dog.fired(), "the send blocked its thread until the commit completed");
    assert_eq!(waited, 1, "the rotation submitted nothing while the send's commit was pending");
    assert_eq!(receipt.unwrap().step, 0);
    assert_eq!(rotated.unwrap(), 1, "the rotation applies after the pending send");
    agree(&store, &a, &ch);
    // The pending message was sealed under the old chain and opens under it on the peer;
    // the next one opens only under the rotated chain.
    let hb = b.rt.remote_handle();
    let from = a.rt.identity();
    let sent = a.wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(hb.ingest_async(&from, &sent[0].wire).await.unwrap(), Ingested::Delivered { channel: ch, step: 0 });
    assert_eq!(b.rt.metrics().remote_rotations.get(), 0);
    store.set_auto(true);
    assert_eq!(a.agent.send_async(ch, b"new chain").await.unwrap().step, 1);
    let sent = a.wire.sent();
    assert_eq!(hb.ingest_async(&from, &sent[1].wire).await.unwrap(), Ingested::Delivered { channel: ch, step: 1 });
    assert_eq!(b.rt.metrics().remote_rotations.get(), 1);
    assert_eq!(store.outbound_of(&ch), vec![0, 1]);
    agree(&store, &a, &ch);
}

#[tokio::test(flavor = "current_thread")]
async fn a_reset_requested_during_a_send_commit_applies_after_it() {
    let store = ManualStore::default();
    let (a, b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let (ia, ib) = (a.rt.identity(), b.rt.identity());
    let (new_tx, new_rx) = (chain(11, &ia, &ib), chain(12, &ib, &ia));
    let ha = a.rt.remote_handle();
    let send = a.agent.send_async(ch, b"before the reset");
    let reset = ha.reset_chains_async(&ch, new_tx.clone(), new_rx, [0x5e; 16]);
    let drive = async {
        held(&store, 1, &dog).await;
        tokio::task::yield_now().await;
        let waited = store.pending();
        if !dog.fired() {
            store.complete_next(true);
        }
        held(&store, 1, &dog).await;
        if !dog.fired() {
            store.complete_next(true);
        }
        waited
    };
    let (receipt, outcome, waited) = tokio::join!(send, reset, drive);
    assert!(!dog.fired(), "the send blocked its thread until the commit completed");
    assert_eq!(waited, 1, "the reset submitted nothing while the send's commit was pending");
    assert_eq!(receipt.unwrap().step, 0);
    // The send was handed over first (on the old chain), then the reset discarded it.
    assert_eq!(a.wire.sent().len(), 1);
    assert_eq!(outcome.unwrap().discarded, 1);
    assert!(store.outbound_of(&ch).is_empty());
    let point = ha.recovery_point(&ch).unwrap();
    assert_eq!((point.tx_next, point.tx_hash), (0, new_tx.state_hash()));
    assert_eq!(point.status, ChannelStatus::Active);
    agree(&store, &a, &ch);
}

#[tokio::test(flavor = "current_thread")]
async fn a_close_requested_during_a_send_commit_applies_after_it() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let send = a.agent.send_async(ch, b"last");
    let close = a.rt.close_channel_async(&ch);
    let drive = async {
        held(&store, 1, &dog).await;
        tokio::task::yield_now().await;
        let waited = store.pending();
        if !dog.fired() {
            store.complete_next(true);
        }
        held(&store, 1, &dog).await;
        if !dog.fired() {
            store.complete_next(true);
        }
        waited
    };
    let (receipt, closed, waited) = tokio::join!(send, close, drive);
    assert!(!dog.fired(), "the send blocked its thread until the commit completed");
    assert_eq!(waited, 1, "the close submitted nothing while the send's commit was pending");
    assert_eq!(receipt.unwrap().step, 0);
    closed.unwrap();
    assert_eq!(a.wire.sent().len(), 1, "the committed message was handed over before the close");
    assert!(store.remote_tx_of(&ch).is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_send_whose_batch_commits_is_still_handed_over() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    {
        let send = a.agent.send_async(ch, b"cancelled");
        tokio::pin!(send);
        assert!(poll_once(send.as_mut()).await.is_pending());
        // Dropped here, with its batch submitted.
    }
    assert!(!dog.fired(), "the send blocked its thread until the commit completed");
    assert_eq!(store.pending(), 1);
    assert!(a.wire.sent().is_empty());
    store.complete_next(true);
    // A thread finishes the cancelled send: the chain moves on, the message goes out.
    let wire = a.wire.clone();
    let sent = tokio::task::spawn_blocking(move || wire.wait_for(1)).await.unwrap();
    assert_eq!(sent[0].step, 0);
    store.set_auto(true);
    assert_eq!(a.agent.send_async(ch, b"next").await.unwrap().step, 1, "no step is sealed twice");
    assert_eq!(store.outbound_of(&ch), vec![0, 1]);
    agree(&store, &a, &ch);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_remote_commit_moves_nothing_and_the_next_send_reuses_its_step() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let send = a.agent.send_async(ch, b"lost");
    let drive = async {
        held(&store, 1, &dog).await;
        if !dog.fired() {
            store.complete_next(false);
        }
    };
    let (r, ()) = tokio::join!(send, drive);
    assert!(!dog.fired(), "the send blocked its thread until the commit completed");
    assert!(matches!(r.unwrap_err(), mfp_runtime::Error::Storage(_)));
    assert!(a.wire.sent().is_empty());
    store.set_auto(true);
    assert_eq!(a.agent.send_async(ch, b"kept").await.unwrap().step, 0);
    assert_eq!(store.outbound_of(&ch), vec![0]);
    agree(&store, &a, &ch);
}

/// The blocking `send` on the thread that drives a current-thread runtime: it may wait
/// for its own commit (storage completes it from elsewhere), not behind another send
/// of the channel whose task needs this very thread.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_remote_send_on_the_driver_is_refused_behind_a_pending_send() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let first = a.agent.send_async(ch, b"first");
    tokio::pin!(first);
    assert!(poll_once(first.as_mut()).await.is_pending());
    assert_eq!(store.pending(), 1);
    let err = a.agent.send(ch, b"second").unwrap_err();
    assert!(matches!(err, mfp_runtime::Error::WouldBlock { .. }), "{err:?}");
    assert_eq!(store.pending(), 1, "the refused send submitted nothing");
    store.complete_next(true);
    assert_eq!(first.await.unwrap().step, 0);
    // With the turn free, a blocking send on the driver works (its own commit completes
    // from the store's side: here, from a helper thread).
    let s = store.clone();
    let completer = std::thread::spawn(move || s.complete_next(true));
    assert_eq!(a.agent.send(ch, b"third").unwrap().step, 1);
    completer.join().unwrap();
    assert!(!dog.fired());
    agree(&store, &a, &ch);
}

// ---- pipelined sends --------------------------------------------------------------------

/// Yields until every task in `tasks` finished (or the watchdog fired).
async fn all_finished<T>(tasks: &[tokio::task::JoinHandle<T>], dog: &Watchdog) {
    while !tasks.iter().all(tokio::task::JoinHandle::is_finished) && !dog.fired() {
        tokio::task::yield_now().await;
    }
}

/// Sends `payloads` on `ch`, each from its own task.
fn spawn_sends(
    agent: &AgentHandle,
    ch: ChannelId,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<Result<mfp_runtime::Receipt, mfp_runtime::Error>>> {
    payloads
        .into_iter()
        .map(|p| {
            let agent = agent.clone();
            tokio::spawn(async move { agent.send_async(ch, &p).await })
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn several_sends_of_one_channel_are_in_flight_and_handed_over_in_step_order() {
    let store = ManualStore::default();
    let (a, b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let sends = spawn_sends(&a.agent, ch, (0..4u8).map(|i| vec![i]));
    held(&store, 4, &dog).await;
    assert!(!dog.fired(), "a channel's sends were not in flight together");
    assert_eq!(store.pending(), 4);
    // The second commit seen first: nothing leaves before the first is settled.
    store.complete_nth(1, true);
    tokio::task::yield_now().await;
    assert!(a.wire.sent().is_empty(), "a message left before an earlier one of its channel");
    store.complete_next(true);
    held_sent(&a.wire, 2, &dog).await;
    assert_eq!(a.wire.sent().iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1]);
    store.complete_all();
    all_finished(&sends, &dog).await;
    let mut steps = Vec::new();
    for s in sends {
        steps.push(s.await.unwrap().unwrap().step);
    }
    assert_eq!(steps, [0, 1, 2, 3], "each send has its own step, in send order");
    let sent = a.wire.sent();
    assert_eq!(sent.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(store.outbound_of(&ch), [0, 1, 2, 3]);
    agree(&store, &a, &ch);
    let hb = b.rt.remote_handle();
    for m in &sent {
        assert!(matches!(hb.ingest_async(&a.rt.identity(), &m.wire).await.unwrap(), Ingested::Delivered { .. }));
    }
}

/// Yields until `n` messages were handed over (or the watchdog fired).
async fn held_sent(wire: &Recorder, n: usize, dog: &Watchdog) {
    while wire.sent().len() < n && !dog.fired() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_batch_in_the_middle_fails_it_and_every_later_one() {
    let store = ManualStore::default();
    let (a, b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let sends = spawn_sends(&a.agent, ch, (0..4u8).map(|i| vec![i]));
    held(&store, 4, &dog).await;
    assert!(!dog.fired(), "a channel's sends were not in flight together");
    store.complete_next(true); // step 0
    store.complete_next(false); // step 1 fails
    // Steps 2 and 3 commit in storage, but they were sealed on top of step 1.
    store.complete_next(true);
    store.complete_next(true);
    all_finished(&sends, &dog).await;
    let mut results = Vec::new();
    for s in sends {
        results.push(s.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap().step, 0);
    for r in &results[1..] {
        assert!(matches!(r, Err(mfp_runtime::Error::Storage(_))), "{r:?}");
    }
    assert_eq!(a.wire.sent().iter().map(|m| m.step).collect::<Vec<_>>(), [0], "nothing after the failure left");
    // The compensating batch puts storage back.
    assert_eq!(store.pending(), 1);
    assert_eq!(store.outbound_of(&ch), [0, 2, 3], "before the compensation");
    store.complete_next(true);
    assert_eq!(store.outbound_of(&ch), [0]);
    agree(&store, &a, &ch);
    // The next send reuses the failed step, and the peer sees contiguous steps.
    store.set_auto(true);
    assert_eq!(a.agent.send_async(ch, b"again").await.unwrap().step, 1);
    let sent = a.wire.sent();
    assert_eq!(sent.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(store.outbound_of(&ch), [0, 1]);
    agree(&store, &a, &ch);
    let hb = b.rt.remote_handle();
    for m in &sent {
        assert!(matches!(hb.ingest_async(&a.rt.identity(), &m.wire).await.unwrap(), Ingested::Delivered { .. }));
    }
    let inbox = b.inbox.clone();
    let got = tokio::task::spawn_blocking(move || inbox.wait_for(2)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), [vec![0u8], b"again".to_vec()]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_compensation_is_made_good_by_the_next_send() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let sends = spawn_sends(&a.agent, ch, (0..3u8).map(|i| vec![i]));
    held(&store, 3, &dog).await;
    store.complete_next(false); // step 0 fails
    store.complete_next(true); // steps 1 and 2 commit in storage
    store.complete_next(true);
    all_finished(&sends, &dog).await;
    assert!(!dog.fired());
    for s in sends {
        assert!(s.await.unwrap().is_err());
    }
    store.complete_next(false); // the compensation fails too
    assert_eq!(store.outbound_of(&ch), [1, 2]);
    store.set_auto(true);
    assert_eq!(a.agent.send_async(ch, b"repairs").await.unwrap().step, 0);
    assert_eq!(store.outbound_of(&ch), [0], "the next send's batch removed what was taken back");
    agree(&store, &a, &ch);
}

/// Many senders on one channel, batches failing at random (compensations too): every
/// message that got a receipt is handed to the transport exactly once, the transport sees
/// the channel's steps contiguously and in order, a failed send's message never leaves, and
/// storage ends where memory is.
#[tokio::test(flavor = "current_thread")]
async fn random_commit_failures_keep_the_hand_over_contiguous_and_exactly_once() {
    random_commit_failures(1..=6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_commit_failures_on_two_workers() {
    random_commit_failures(7..=12).await;
}

async fn random_commit_failures(seeds: std::ops::RangeInclusive<u64>) {
    for seed in seeds {
        let store = ManualStore::default();
        let (a, b, ch) = pair(&store);
        let dog = Watchdog::start(&store);
        // SplitMix64, for a reproducible schedule.
        let mut rng = mfp_core::testing::SplitMix64(seed);
        let (senders, per_sender) = (6u8, 20u8);
        let tasks: Vec<_> = (0..senders)
            .map(|t| {
                let agent = a.agent.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0..per_sender {
                        out.push((vec![t, i], agent.send_async(ch, &[t, i]).await));
                    }
                    out
                })
            })
            .collect();
        let mut most_in_flight = 0;
        // Rounds since the number of pending batches last changed: a batch is completed
        // once another joined it, or once none has for a while (the senders' tasks run on
        // other threads, so the first may otherwise be completed before any other comes).
        let (mut quiet, mut last) = (0u32, 0usize);
        while !tasks.iter().all(tokio::task::JoinHandle::is_finished) && !dog.fired() {
            let pending = store.pending();
            most_in_flight = most_in_flight.max(pending);
            quiet = if pending == last { quiet + 1 } else { 0 };
            last = pending;
            if pending > 0 && (pending > 1 || quiet > 1_000) && rng.next_u64().is_multiple_of(3) {
                store.complete_next(!rng.next_u64().is_multiple_of(5));
            } else {
                tokio::task::yield_now().await;
            }
        }
        assert!(!dog.fired(), "seed {seed}: the sends stalled");
        assert!(most_in_flight > 1, "seed {seed}: the channel's sends never shared the store's queue");
        let mut ok = Vec::new();
        let mut failed = 0;
        for t in tasks {
            for (payload, r) in t.await.unwrap() {
                match r {
                    Ok(receipt) => ok.push((receipt, payload)),
                    Err(mfp_runtime::Error::Storage(_)) => failed += 1,
                    Err(e) => panic!("seed {seed}: unexpected error {e:?}"),
                }
            }
        }
        assert!(failed > 0 && !ok.is_empty(), "seed {seed}: the schedule should mix outcomes");
        // What is left (compensations) commits; then one more send, which also makes good
        // a compensation that failed.
        store.set_auto(true);
        store.complete_all();
        let last = a.agent.send_async(ch, b"last").await.unwrap();
        ok.push((last, b"last".to_vec()));
        ok.sort_by_key(|(r, _)| r.step);
        let sent = a.wire.sent();
        assert_eq!(
            sent.iter().map(|m| m.step).collect::<Vec<_>>(),
            (0..sent.len() as u64).collect::<Vec<_>>(),
            "seed {seed}: steps handed over contiguously, in order, once each"
        );
        assert_eq!(
            ok.iter().map(|(r, _)| r.step).collect::<Vec<_>>(),
            sent.iter().map(|m| m.step).collect::<Vec<_>>(),
            "seed {seed}: exactly the receipted messages were handed over"
        );
        assert_eq!(store.outbound_of(&ch), (0..sent.len() as u64).collect::<Vec<_>>(), "seed {seed}");
        agree(&store, &a, &ch);
        // The peer opens every one of them, in order, with the receipted payloads.
        let hb = b.rt.remote_handle();
        for m in &sent {
            let r = hb.ingest_async(&a.rt.identity(), &m.wire).await;
            assert!(matches!(r, Ok(Ingested::Delivered { .. })), "seed {seed}: {r:?}");
        }
        let inbox = b.inbox.clone();
        let n = sent.len();
        let got = tokio::task::spawn_blocking(move || inbox.wait_for(n)).await.unwrap();
        for (m, (receipt, payload)) in got.iter().zip(&ok) {
            assert_eq!(&m.payload, payload, "seed {seed}");
            assert_eq!(m.message_id, receipt.message_id, "seed {seed}");
        }
        // Each sender's messages keep their order.
        for t in 0..senders {
            let mine: Vec<u8> = got
                .iter()
                .filter(|m| m.payload.first() == Some(&t) && m.payload.len() == 2)
                .map(|m| m.payload[1])
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "seed {seed}: sender {t} out of order");
        }
    }
}

/// The blocking rotation on the thread that drives a current-thread runtime: refused at
/// once while a send of the channel is queued (its task needs this thread to settle), and
/// done once the channel is idle.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_rotation_on_the_driver_is_refused_while_sends_are_queued() {
    let store = ManualStore::default();
    let (a, _b, ch) = pair(&store);
    let dog = Watchdog::start(&store);
    let secret = State::from_bytes([0x44; 32]);
    let ha = a.rt.remote_handle();
    let send = a.agent.send_async(ch, b"queued");
    tokio::pin!(send);
    assert!(poll_once(send.as_mut()).await.is_pending());
    let err = ha.rotate_outbound(&ch, &secret).unwrap_err();
    assert!(matches!(err, mfp_runtime::Error::WouldBlock { .. }), "{err:?}");
    assert_eq!(store.pending(), 1, "the refused rotation submitted nothing");
    store.complete_next(true);
    assert_eq!(send.await.unwrap().step, 0);
    let s = store.clone();
    let completer = std::thread::spawn(move || s.complete_next(true));
    assert_eq!(ha.rotate_outbound(&ch, &secret).unwrap(), 1);
    completer.join().unwrap();
    assert!(!dog.fired());
    agree(&store, &a, &ch);
}
