#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Pipelined durable sends: on one channel, a send is framed and submitted while the ones
//! before it commit; messages are settled (delivered, answered) in step order whatever the
//! order their commits are seen in; a failed batch fails only its own message; a cancelled
//! send does not stall the channel; a blocking send on the thread that drives the runtime
//! is never left waiting for others.

#[macro_use]
mod common;

use common::manual_store::ManualStore;
use common::{Inbox, cfg};
use mfp_runtime::{AgentHandle, ChannelId, Error, Runtime, RuntimeConfig};

fn persistent_cfg() -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"inst".to_vec();
    c
}

/// A runtime on a manual store, two agents and a channel between them (committed at
/// once); from then on every batch waits for the test.
fn setup(exec: Option<tokio::runtime::Handle>) -> (ManualStore, Runtime, AgentHandle, ChannelId, Inbox) {
    let store = ManualStore::default();
    store.set_auto(true);
    let mut b = Runtime::builder(persistent_cfg()).storage(store.clone());
    if let Some(h) = exec {
        b = b.tokio_handle(h);
    }
    let rt = b.build().unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    store.set_auto(false);
    (store, rt, a, ch, inbox)
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Starts `n` async sends on `ch`, one after the other, each once the previous one's batch
/// was submitted (so payload `i` is step `i`) — none has committed yet.
fn start_sends(
    tokio: &tokio::runtime::Runtime,
    store: &ManualStore,
    a: &AgentHandle,
    ch: ChannelId,
    n: u8,
) -> Vec<tokio::task::JoinHandle<mfp_runtime::Result<mfp_runtime::Receipt>>> {
    (0..n)
        .map(|i| {
            let a = a.clone();
            let t = tokio.spawn(async move { a.send_async(ch, &[i]).await });
            store.wait_pending(usize::from(i) + 1);
            t
        })
        .collect()
}

#[test]
fn sends_on_one_channel_are_submitted_while_earlier_ones_commit() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let sends = start_sends(&tokio, &store, &a, ch, 8);
    assert_eq!(store.pending(), 8, "eight batches in flight on one channel, none committed");
    store.complete_all();
    for (i, t) in sends.into_iter().enumerate() {
        let r = tokio.block_on(t).unwrap().unwrap();
        assert_eq!(r.step, i as u64);
    }
    let got = inbox.wait_for(8);
    assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), (0..8).collect::<Vec<u8>>());
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), (0..8).collect::<Vec<u64>>());
    assert!(store.consistent());
    rt.shutdown();
}

#[test]
fn messages_are_delivered_in_step_order_whatever_order_commits_are_seen_in() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let sends = start_sends(&tokio, &store, &a, ch, 4);
    // Completions in the order 3, 1, 2, 0 (indices shift as batches leave the queue).
    store.complete_nth(3, true);
    store.complete_nth(1, true);
    store.complete_nth(1, true);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(inbox.wait_for(0).is_empty(), "nothing may be delivered before step 0 committed");
    store.complete_nth(0, true);
    for (i, t) in sends.into_iter().enumerate() {
        assert_eq!(tokio.block_on(t).unwrap().unwrap().step, i as u64);
    }
    let got = inbox.wait_for(4);
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    rt.shutdown();
}

#[test]
fn a_failed_batch_in_the_middle_fails_only_its_own_message() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let sends = start_sends(&tokio, &store, &a, ch, 5);
    for ok in [true, true, false, true, true] {
        store.complete_next(ok);
    }
    let results: Vec<_> = sends.into_iter().map(|t| tokio.block_on(t).unwrap()).collect();
    assert!(matches!(results[2], Err(Error::Storage(_))), "{:?}", results[2]);
    for i in [0, 1, 3, 4] {
        assert_eq!(results[i].as_ref().unwrap().step, i as u64);
    }
    let got = inbox.wait_for(4);
    assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), vec![0, 1, 3, 4]);
    // The chain went on past the failed message: the next send is step 5.
    store.set_auto(true);
    assert_eq!(tokio.block_on(a.send_async(ch, b"next")).unwrap().step, 5);
    assert!(store.consistent());
    rt.shutdown();
}

#[test]
fn when_the_last_queued_batch_fails_the_head_goes_back_to_the_committed_state() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let sends = start_sends(&tokio, &store, &a, ch, 3);
    for ok in [true, false, false] {
        store.complete_next(ok);
    }
    let results: Vec<_> = sends.into_iter().map(|t| tokio.block_on(t).unwrap()).collect();
    assert_eq!(results[0].as_ref().unwrap().step, 0);
    assert!(results[1].is_err() && results[2].is_err());
    let committed = store.state_of(&ch).unwrap();
    // The Sg corrected after the failures is queued; then the next send frames from the
    // committed state, at the step after the last committed message.
    store.set_auto(true);
    store.complete_all();
    assert!(store.consistent(), "the stored Sg must be the root of the stored states");
    let r = tokio.block_on(a.send_async(ch, b"again")).unwrap();
    assert_eq!(r.step, 1);
    assert_ne!(store.state_of(&ch).unwrap(), committed);
    let got = inbox.wait_for(2);
    assert_eq!(
        got.iter().map(|m| (m.step, m.payload.clone())).collect::<Vec<_>>(),
        vec![(0, vec![0]), (1, b"again".to_vec())]
    );
    rt.shutdown();
}

#[test]
fn a_cancelled_send_does_not_stall_its_channel() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    // Send 0 is the first in the queue (it settles the queue's front); send 1 waits behind
    // it. Both are cancelled while their batches are pending; send 2 follows.
    let sends = start_sends(&tokio, &store, &a, ch, 2);
    for t in &sends {
        t.abort();
    }
    for t in sends {
        assert!(tokio.block_on(t).unwrap_err().is_cancelled());
    }
    let a2 = a.clone();
    let third = tokio.spawn(async move { a2.send_async(ch, &[2]).await });
    store.wait_pending(3);
    store.complete_all();
    assert_eq!(tokio.block_on(third).unwrap().unwrap().step, 2);
    // The cancelled sends' messages committed, so they are delivered (they are durable and
    // would be after a restart anyway), in order.
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2]);
    rt.shutdown();
}

#[test]
fn cancelling_the_sender_that_was_just_handed_the_queue_does_not_stall_it() {
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let mut sends = start_sends(&tokio, &store, &a, ch, 3);
    // Send 1 is cancelled while waiting behind send 0; send 0's commit then hands the
    // queue to it — it is gone, so send 0 (or a thread) settles the rest.
    sends[1].abort();
    let s1 = sends.remove(1);
    assert!(tokio.block_on(s1).unwrap_err().is_cancelled());
    store.complete_next(true);
    assert_eq!(tokio.block_on(sends.remove(0)).unwrap().unwrap().step, 0);
    store.complete_all();
    assert_eq!(tokio.block_on(sends.remove(0)).unwrap().unwrap().step, 2);
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), vec![0, 1, 2]);
    rt.shutdown();
}

#[test]
fn a_blocking_send_on_the_driver_thread_waits_only_for_its_own_commit() {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (store, rt, a, ch, inbox) = setup(Some(tokio.handle().clone()));
    let store2 = store.clone();
    let a2 = a.clone();
    tokio.block_on(async move {
        // Alone on the channel: the send is submitted, and waits (on this thread, which
        // drives the runtime) for its commit, which the store completes from elsewhere.
        let committer = std::thread::spawn({
            let store = store2.clone();
            move || store.complete_next(true)
        });
        assert_eq!(a2.send(ch, b"alone").unwrap().step, 0);
        committer.join().unwrap();

        // Behind a queued async send, a blocking send here could only wait for a task this
        // thread runs: refused at once, nothing submitted.
        let a3 = a2.clone();
        let queued = tokio::spawn(async move { a3.send_async(ch, b"queued").await });
        while store2.pending_sends() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(a2.send(ch, b"refused").unwrap_err(), Error::WouldBlock { operation: "AgentHandle::send" });
        assert_eq!(store2.pending_sends(), 1, "the refused send submitted a batch");
        store2.complete_all();
        assert_eq!(queued.await.unwrap().unwrap().step, 1);
        // The delivery workers run on this thread too.
        let deadline = std::time::Instant::now() + common::WAIT;
        while inbox.wait_for(0).len() < 2 {
            assert!(std::time::Instant::now() < deadline, "the two messages were not delivered");
            tokio::task::yield_now().await;
        }
        let got = inbox.wait_for(2);
        assert_eq!(
            got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
            vec![b"alone".to_vec(), b"queued".to_vec()]
        );
        rt.shutdown_async().await;
    });
}

/// Many async senders on one channel, a store that commits from its own thread in
/// submission order and fails some batches at random (seeded): every send answered `Ok` is
/// delivered exactly once, no failed one is, deliveries come in strictly increasing step
/// order, and the stored Sg is the root of the stored states at the end.
#[test]
fn concurrent_senders_with_random_failures_keep_order_and_exactly_once() {
    const TASKS: u32 = 8;
    const SENDS: u32 = 60;
    let tokio = multi_thread();
    let (store, rt, a, ch, inbox) = setup(None);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let (store, stop) = (store.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rng = mfp_core::testing::SplitMix64(0x5eed);
            let mut failed = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if store.pending() == 0 {
                    std::thread::yield_now();
                    continue;
                }
                // One batch in 16 fails.
                let ok = !rng.next_u64().is_multiple_of(16);
                failed += u32::from(!ok);
                store.complete_next(ok);
            }
            store.complete_all();
            failed
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let a = a.clone();
            tokio.spawn(async move {
                let mut out = Vec::new();
                for i in 0..SENDS {
                    let payload = (t * 1000 + i).to_be_bytes();
                    out.push((payload, a.send_async(ch, &payload).await));
                }
                out
            })
        })
        .collect();
    let results: Vec<_> = tasks.into_iter().flat_map(|t| tokio.block_on(t).unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let failed_batches = committer.join().unwrap();
    let ok: std::collections::BTreeMap<u64, [u8; 4]> =
        results.iter().filter_map(|(p, r)| r.as_ref().ok().map(|r| (r.step, *p))).collect();
    let errors = results.iter().filter(|(_, r)| r.is_err()).count();
    assert!(errors > 0 && failed_batches > 0, "the schedule failed no send");
    for (_, r) in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::Storage(_)), "{e}");
        }
    }
    assert_eq!(ok.len() + errors, (TASKS * SENDS) as usize, "two sends answered with the same step");
    inbox.wait_for(ok.len());
    assert!(rt.wait_idle(common::WAIT));
    let got = inbox.wait_for(0);
    assert_eq!(got.len(), ok.len(), "a failed send was delivered");
    assert!(got.windows(2).all(|w| w[0].step < w[1].step), "deliveries out of step order");
    for m in &got {
        assert_eq!(ok.get(&m.step).map(|p| p.as_slice()), Some(m.payload.as_slice()));
    }
    assert!(store.consistent(), "the stored Sg is not the root of the stored states");
    rt.shutdown();
}
