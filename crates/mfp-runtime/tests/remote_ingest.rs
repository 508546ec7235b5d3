#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The commit of durable inbound cross-runtime messages: a channel's messages are opened
//! while earlier ones of the channel still commit, and are delivered (and answered, so
//! acknowledged) strictly in step order; a failed batch fails it and every later one, and
//! storage is put back. The receiving side's storage is a held store whose batches wait
//! until the test completes them (in submission order); the sending side keeps nothing.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use common::recorder::{self, Side};
use common::watchdog::{HoldsBatches, Watchdog, held};
use common::{Inbox, cfg};
use mfp_core::bilateral::BilateralState;
use mfp_core::{MessageId, State};
use mfp_runtime::remote::{Chains, Ingested, RemoteEnd};
use mfp_runtime::storage::{Storage, StorageError, StorageOp, Ticket, TicketSender};
use mfp_runtime::{ChannelId, RuntimeConfig, RuntimeId};

// ---- a held store with a model of what committed ------------------------------------

#[derive(Default)]
struct Held {
    pending: VecDeque<(Vec<StorageOp>, TicketSender)>,
    /// Committed inbound chains.
    rx: BTreeMap<ChannelId, BilateralState>,
    /// Committed inbox rows (channel, step, message id), in the order stored.
    inbox: Vec<(ChannelId, u64, MessageId)>,
    auto: bool,
}

fn commit(h: &mut Held, ops: Vec<StorageOp>) {
    for op in ops {
        match op {
            StorageOp::PutRemoteChannel(r) => {
                h.rx.insert(r.id, r.rx);
            }
            StorageOp::AdvanceRemoteRx { id, rx, .. } => {
                h.rx.insert(id, rx);
            }
            StorageOp::PutDelivery(d)
                if !h.inbox.iter().any(|(c, s, m)| (*c, *s, *m) == (d.channel, d.step, d.message_id)) =>
            {
                h.inbox.push((d.channel, d.step, d.message_id));
            }
            StorageOp::AckDelivery { channel, step } => {
                if let Some(i) = h.inbox.iter().position(|(c, s, _)| (*c, *s) == (channel, step)) {
                    h.inbox.remove(i);
                }
            }
            StorageOp::RemoveDelivery { channel, step, message_id } => {
                h.inbox.retain(|(c, s, m)| (*c, *s, *m) != (channel, step, message_id));
            }
            _ => {}
        }
    }
}

/// Batches wait until the test completes them, except removals of handled messages (a
/// delivery worker's own batches: their messages committed before they were delivered).
#[derive(Clone, Default)]
struct HeldStore(Arc<Mutex<Held>>);

impl Storage for HeldStore {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, StorageError> {
        Ok(None)
    }

    fn apply(&self, ops: Vec<StorageOp>) -> Ticket {
        let mut h = self.0.lock().unwrap();
        if h.auto || ops.iter().all(|op| matches!(op, StorageOp::AckDelivery { .. })) {
            commit(&mut h, ops);
            return Ticket::ready(Ok(()));
        }
        let (done, ticket) = Ticket::pending();
        h.pending.push_back((ops, done));
        ticket
    }
}

impl HoldsBatches for HeldStore {
    fn pending(&self) -> usize {
        self.0.lock().unwrap().pending.len()
    }

    fn set_auto(&self, auto: bool) {
        self.0.lock().unwrap().auto = auto;
    }

    fn complete_all(&self) {
        while self.pending() > 0 {
            self.complete_next(true);
        }
    }
}

impl HeldStore {
    /// Commits (or fails) the `n`-th oldest pending batch.
    fn complete_nth(&self, n: usize, ok: bool) {
        let (ops, done) = self.0.lock().unwrap().pending.remove(n).unwrap();
        if ok {
            commit(&mut self.0.lock().unwrap(), ops);
            done.complete(Ok(()));
        } else {
            done.complete(Err(StorageError::Backend("injected failure".into())));
        }
    }

    fn complete_next(&self, ok: bool) {
        self.complete_nth(0, ok);
    }

    /// For each pending batch, the step its inbound advance is conditional on (`None`: an
    /// unconditional advance, or none).
    fn conditions(&self) -> Vec<Option<u64>> {
        let h = self.0.lock().unwrap();
        h.pending
            .iter()
            .map(|(ops, _)| {
                ops.iter().find_map(|op| match op {
                    StorageOp::AdvanceRemoteRx { from, .. } => *from,
                    _ => None,
                })
            })
            .collect()
    }

    /// Steps of the committed inbox rows of `ch`.
    fn inbox_of(&self, ch: &ChannelId) -> Vec<u64> {
        let mut v: Vec<u64> =
            self.0.lock().unwrap().inbox.iter().filter(|(c, ..)| c == ch).map(|(_, s, _)| *s).collect();
        v.sort_unstable();
        v
    }
}

// ---- two runtimes -----------------------------------------------------------------------

fn config(name: &[u8]) -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"remote-ingest-test".to_vec();
    c.instance_id = name.to_vec();
    c
}

fn side(name: &[u8], store: Option<HeldStore>) -> Side {
    recorder::side(config(name), store)
}

/// Side A (in memory, the sender) and side B (durable, on a held store), joined by one
/// channel; B's store commits nothing by itself from here on.
fn pair(store: &HeldStore) -> (Side, Side, ChannelId) {
    store.set_auto(true);
    let a = side(b"a", None);
    let b = side(b"b", Some(store.clone()));
    let (ia, ib) = (a.rt.identity(), b.rt.identity());
    let ch = ChannelId::from_bytes([7; 16]);
    let chain =
        |label: u8, x: &RuntimeId, y: &RuntimeId| BilateralState::ceremonial(&State::from_bytes([label; 32]), x, y);
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

/// A sends `n` messages (payload `[i]`); their wire messages, in step order.
fn sent(a: &Side, ch: ChannelId, n: u8) -> Vec<Vec<u8>> {
    for i in 0..n {
        a.agent.send(ch, &[i]).unwrap();
    }
    let wire = a.wire.sent();
    assert_eq!(wire.iter().map(|m| m.step).collect::<Vec<_>>(), (0..u64::from(n)).collect::<Vec<_>>());
    wire.iter().map(|m| m.wire.to_vec()).collect()
}

type IngestTask = tokio::task::JoinHandle<Result<Ingested, mfp_runtime::Error>>;

/// Ingests `wires` on B, each from its own task (spawned in order); each task records
/// the step it was answered `Delivered` for in `answered`, when it is answered. On one
/// thread the tasks take the channel's inbound turn in the order they were spawned.
fn spawn_ingests(b: &Side, from: &RuntimeId, wires: &[Vec<u8>], answered: &Arc<Mutex<Vec<u64>>>) -> Vec<IngestTask> {
    wires
        .iter()
        .map(|w| {
            let (h, w, from, answered) = (b.rt.remote_handle(), w.clone(), *from, Arc::clone(answered));
            tokio::spawn(async move {
                let r = h.ingest_async(&from, &w).await;
                record(&answered, &r);
                r
            })
        })
        .collect()
}

fn record(answered: &Mutex<Vec<u64>>, r: &Result<Ingested, mfp_runtime::Error>) {
    if let Ok(Ingested::Delivered { step, .. }) = r {
        answered.lock().unwrap().push(*step);
    }
}

/// [`spawn_ingests`] for tasks on several threads: each opens its message once the one
/// before has been opened (as a transport does: a channel's messages are opened in the
/// order they came), then awaits its commit and settling.
fn spawn_opened_ingests(
    b: &Side,
    from: &RuntimeId,
    wires: &[Vec<u8>],
    answered: &Arc<Mutex<Vec<u64>>>,
) -> Vec<IngestTask> {
    let mut before: Option<tokio::sync::oneshot::Receiver<()>> = None;
    wires
        .iter()
        .map(|w| {
            let (h, w, from, answered) = (b.rt.remote_handle(), w.clone(), *from, Arc::clone(answered));
            let (opened, next) = tokio::sync::oneshot::channel();
            let wait = before.replace(next);
            tokio::spawn(async move {
                if let Some(rx) = wait {
                    let _ = rx.await;
                }
                let pending = h.open_ingest_async(&from, &w).await;
                let _ = opened.send(());
                let r = match pending {
                    Ok(p) => p.finish().await,
                    Err(e) => Err(e),
                };
                record(&answered, &r);
                r
            })
        })
        .collect()
}

async fn all_finished<T>(tasks: &[tokio::task::JoinHandle<T>], dog: &Watchdog) {
    while !tasks.iter().all(tokio::task::JoinHandle::is_finished) && !dog.fired() {
        tokio::task::yield_now().await;
    }
}

/// Storage and memory agree on B's inbound chain, and no stored inbox row is of a step the
/// chain has not passed (a restart would deliver it, and the peer send it again).
fn consistent(store: &HeldStore, b: &Side, ch: &ChannelId) {
    let stored = store.0.lock().unwrap().rx.get(ch).cloned().unwrap();
    let point = b.rt.remote_handle().recovery_point(ch).unwrap();
    assert_eq!(stored.step, point.rx_next, "stored and in-memory inbound steps differ");
    assert_eq!(stored.state_hash(), point.rx_hash, "stored and in-memory inbound chains differ");
    assert!(store.inbox_of(ch).iter().all(|s| *s < point.rx_next), "an inbox row beyond the chain");
}

async fn delivered(inbox: &Inbox, n: usize) -> Vec<Vec<u8>> {
    let inbox = inbox.clone();
    tokio::task::spawn_blocking(move || inbox.wait_for(n)).await.unwrap().into_iter().map(|m| m.payload).collect()
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn several_inbound_messages_of_one_channel_commit_together_and_are_delivered_in_step_order() {
    let store = HeldStore::default();
    let (a, b, ch) = pair(&store);
    let wires = sent(&a, ch, 4);
    let dog = Watchdog::start(&store);
    let answered = Arc::new(Mutex::new(Vec::new()));
    let tasks = spawn_ingests(&b, &a.rt.identity(), &wires, &answered);
    held(&store, 4, &dog).await;
    assert!(!dog.fired(), "a channel's inbound messages were not in flight together");
    assert_eq!(store.pending(), 4);
    // Each advance is conditional on its own step: storage never commits one past a batch
    // of the channel that failed (even if the runtime stops before its compensation).
    assert_eq!(store.conditions(), [Some(0), Some(1), Some(2), Some(3)]);
    // Later commits seen first: nothing is delivered or answered before step 0 is settled.
    store.complete_nth(2, true);
    store.complete_nth(1, true);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(answered.lock().unwrap().is_empty(), "a message was answered before an earlier one of its channel");
    assert_eq!(b.inbox.len(), 0, "a message was delivered before an earlier one of its channel");
    store.complete_next(true); // step 0
    while answered.lock().unwrap().len() < 3 && !dog.fired() {
        tokio::task::yield_now().await;
    }
    assert_eq!(*answered.lock().unwrap(), [0, 1, 2], "steps 0 to 2 settled, step 3 still committing");
    store.complete_all();
    all_finished(&tasks, &dog).await;
    assert!(!dog.fired());
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), Ingested::Delivered { channel: ch, step: i as u64 });
    }
    assert_eq!(*answered.lock().unwrap(), [0, 1, 2, 3], "answered (so acknowledged) in step order");
    assert_eq!(delivered(&b.inbox, 4).await, [[0u8], [1], [2], [3]]);
    consistent(&store, &b, &ch);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_inbound_batch_in_the_middle_fails_it_and_every_later_one() {
    let store = HeldStore::default();
    let (a, b, ch) = pair(&store);
    let wires = sent(&a, ch, 4);
    let dog = Watchdog::start(&store);
    let answered = Arc::new(Mutex::new(Vec::new()));
    let tasks = spawn_ingests(&b, &a.rt.identity(), &wires, &answered);
    held(&store, 4, &dog).await;
    assert!(!dog.fired(), "a channel's inbound messages were not in flight together");
    store.complete_next(true); // step 0
    store.complete_next(false); // step 1 fails
    // Steps 2 and 3 commit in storage, but they were opened on top of step 1.
    store.complete_next(true);
    store.complete_next(true);
    all_finished(&tasks, &dog).await;
    assert!(!dog.fired());
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap(), &Ingested::Delivered { channel: ch, step: 0 });
    assert!(matches!(results[1], Err(mfp_runtime::Error::Storage(_))), "{:?}", results[1]);
    for r in &results[2..] {
        assert!(matches!(r, Err(mfp_runtime::Error::NotTaken { step: 1, .. })), "{r:?}");
    }
    assert_eq!(*answered.lock().unwrap(), [0], "nothing after the failure answered");
    assert_eq!(b.rt.remote_handle().recovery_point(&ch).unwrap().rx_next, 1, "the peer resends from step 1");
    // The compensating batch puts storage back (the inbox row of step 0 may be gone once
    // its handler ran).
    assert_eq!(store.pending(), 1);
    assert!(store.inbox_of(&ch).ends_with(&[2, 3]), "before the compensation: {:?}", store.inbox_of(&ch));
    store.complete_next(true);
    consistent(&store, &b, &ch);
    // A message sealed after the failed one is not taken (and not counted) until the
    // failed step comes again.
    let r = b.rt.remote_handle().ingest_async(&a.rt.identity(), &wires[3]).await;
    assert!(matches!(r, Err(mfp_runtime::Error::NotTaken { step: 1, .. })), "{r:?}");
    // The resend from the last acknowledged step goes through, in order.
    store.set_auto(true);
    for (i, w) in wires.iter().enumerate().skip(1) {
        let r = b.rt.remote_handle().ingest_async(&a.rt.identity(), w).await.unwrap();
        assert_eq!(r, Ingested::Delivered { channel: ch, step: i as u64 });
    }
    assert_eq!(delivered(&b.inbox, 4).await, [[0u8], [1], [2], [3]], "each message once, in order");
    assert_eq!(b.rt.remote_handle().recovery_point(&ch).unwrap().status, mfp_runtime::ChannelStatus::Active);
    consistent(&store, &b, &ch);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_inbound_compensation_is_made_good_by_the_next_message() {
    let store = HeldStore::default();
    let (a, b, ch) = pair(&store);
    let wires = sent(&a, ch, 3);
    let dog = Watchdog::start(&store);
    let answered = Arc::new(Mutex::new(Vec::new()));
    let tasks = spawn_ingests(&b, &a.rt.identity(), &wires, &answered);
    held(&store, 3, &dog).await;
    assert!(!dog.fired(), "a channel's inbound messages were not in flight together");
    store.complete_next(false); // step 0 fails
    store.complete_next(true); // steps 1 and 2 commit in storage
    store.complete_next(true);
    all_finished(&tasks, &dog).await;
    assert!(!dog.fired());
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    store.complete_next(false); // the compensation fails too
    assert_eq!(store.inbox_of(&ch), [1, 2]);
    store.set_auto(true);
    let r = b.rt.remote_handle().ingest_async(&a.rt.identity(), &wires[0]).await.unwrap();
    assert_eq!(r, Ingested::Delivered { channel: ch, step: 0 });
    assert!(!store.inbox_of(&ch).contains(&1) && !store.inbox_of(&ch).contains(&2), "{:?}", store.inbox_of(&ch));
    consistent(&store, &b, &ch);
}

/// A peer sends a channel's messages; batches fail at random (compensations too); after
/// each round the peer sends again from where the receiver stands, as a transport does on
/// a refusal. Every message is delivered exactly once, in step order, and storage ends
/// where memory is.
#[tokio::test(flavor = "current_thread")]
async fn random_inbound_commit_failures_deliver_exactly_once_in_order() {
    random_failures(1..=5, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_inbound_commit_failures_on_two_workers() {
    random_failures(6..=10, false).await;
}

/// `ordered`: one thread runs the tasks, so they record their answers in the order given.
async fn random_failures(seeds: std::ops::RangeInclusive<u64>, ordered: bool) {
    for seed in seeds {
        let store = HeldStore::default();
        let (a, b, ch) = pair(&store);
        let n = 40u8;
        let wires = sent(&a, ch, n);
        let dog = Watchdog::start(&store);
        // SplitMix64, for a reproducible schedule.
        let mut rng = mfp_core::testing::SplitMix64(seed);
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (mut most_in_flight, mut failed, mut rounds) = (0, 0, 0);
        loop {
            let from = usize::try_from(b.rt.remote_handle().recovery_point(&ch).unwrap().rx_next).unwrap();
            if from == wires.len() {
                break;
            }
            rounds += 1;
            assert!(rounds < 500, "seed {seed}: no progress");
            let tasks = if ordered {
                spawn_ingests(&b, &a.rt.identity(), &wires[from..], &answered)
            } else {
                spawn_opened_ingests(&b, &a.rt.identity(), &wires[from..], &answered)
            };
            let (mut quiet, mut last) = (0u32, 0usize);
            while !tasks.iter().all(tokio::task::JoinHandle::is_finished) && !dog.fired() {
                let pending = store.pending();
                most_in_flight = most_in_flight.max(pending);
                quiet = if pending == last { quiet + 1 } else { 0 };
                last = pending;
                if pending > 0 && (pending > 1 || quiet > 1_000) && rng.next_u64().is_multiple_of(3) {
                    store.complete_next(!rng.next_u64().is_multiple_of(6));
                } else {
                    tokio::task::yield_now().await;
                }
            }
            assert!(!dog.fired(), "seed {seed}: the ingests stalled");
            for t in tasks {
                match t.await.unwrap() {
                    Ok(Ingested::Delivered { .. }) => {}
                    Err(mfp_runtime::Error::Storage(_)) => failed += 1,
                    Err(mfp_runtime::Error::NotTaken { .. }) => {}
                    other => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
            // What is left (compensations) commits or fails too.
            while store.pending() > 0 {
                store.complete_next(!rng.next_u64().is_multiple_of(4));
            }
        }
        // (On several threads a seed's schedule may happen to complete each batch alone.)
        assert!(!ordered || most_in_flight > 1, "seed {seed}: the channel's ingests never shared the store's queue");
        assert!(failed > 0, "seed {seed}: the schedule should fail some");
        // One more message, committed: it also makes good a compensation that failed.
        store.set_auto(true);
        a.agent.send(ch, &[n]).unwrap();
        let last = a.wire.sent().last().unwrap().wire.to_vec();
        let r = b.rt.remote_handle().ingest_async(&a.rt.identity(), &last).await.unwrap();
        assert_eq!(r, Ingested::Delivered { channel: ch, step: u64::from(n) });
        let all: Vec<u64> = (0..=u64::from(n)).collect();
        let mut steps = answered.lock().unwrap().clone();
        if !ordered {
            steps.sort_unstable();
        }
        assert_eq!(steps, all[..usize::from(n)], "seed {seed}: answered once each, in order");
        let got = delivered(&b.inbox, usize::from(n) + 1).await;
        assert_eq!(got, (0..=n).map(|i| vec![i]).collect::<Vec<_>>(), "seed {seed}: delivered once each, in order");
        consistent(&store, &b, &ch);
    }
}
