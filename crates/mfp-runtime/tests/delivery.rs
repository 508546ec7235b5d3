#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Durable delivery through the storage trait, with the in-memory store: a message is stored
//! with its channel advance, removed once its handler has returned, and delivered again
//! (flagged) after a restart if it was not handled.
//!
//! Removals are queued and submitted with the next send or when a worker's mailbox runs
//! empty, so the inbox is checked after `shutdown` (which stops the workers), not right
//! after `wait_idle`.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{Inbox, cfg};
use mfp_runtime::storage::{DeliveryRow, MemoryStorage, Storage, StorageOp};
use mfp_runtime::{Error, Runtime, RuntimeConfig};

fn persistent_cfg() -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"inst".to_vec();
    c
}

/// A copy of `store` as a crash would leave it: everything committed so far.
fn crash_copy(store: &MemoryStorage) -> MemoryStorage {
    let snap = store.load().unwrap().unwrap();
    let copy = MemoryStorage::new();
    let mut ops = vec![StorageOp::Meta(snap.meta.unwrap())];
    ops.extend(snap.agents.into_iter().map(StorageOp::PutAgent));
    ops.extend(snap.channels.into_iter().map(StorageOp::PutChannel));
    ops.push(StorageOp::Sg(snap.sg));
    ops.extend(snap.deliveries.into_iter().map(StorageOp::PutDelivery));
    copy.apply(ops).wait().unwrap();
    copy
}

fn pending_steps(store: &MemoryStorage) -> Vec<u64> {
    store.load().unwrap().unwrap().deliveries.iter().map(|d| d.step).collect()
}

#[test]
fn unhandled_messages_are_delivered_again_after_a_restart_flagged() {
    let store = MemoryStorage::new();
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    // Bob's handler stops on the first message until released.
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_in = Arc::clone(&seen);
    let alice = rt.bind_named("alice", |_, _| {}).unwrap();
    let bob = rt
        .bind_named("bob", move |_, m| {
            seen_in.lock().unwrap().push((m.step, m.redelivered));
            if m.step == 0 {
                entered_tx.send(()).unwrap();
                gate.lock().unwrap().recv_timeout(Duration::from_secs(10)).unwrap();
            }
        })
        .unwrap();
    let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
    let mut ids = Vec::new();
    for i in 0..3u8 {
        ids.push(alice.send(ch, &[i]).unwrap().message_id);
    }
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // Step 0 is being handled, 1 and 2 wait: all three are stored.
    let snap = store.load().unwrap().unwrap();
    assert_eq!(pending_steps(&store), vec![0, 1, 2]);
    let d = &snap.deliveries[1];
    assert_eq!(
        (d.channel, d.recipient, d.sender, d.message_id, &d.payload[..]),
        (ch, bob.id(), alice.id(), ids[1], &[1u8][..])
    );
    assert!(!format!("{d:?}").contains("payload:"), "Debug shows no payload");
    let crashed = crash_copy(&store);

    // Without a crash: each is handled once, unflagged, and leaves the inbox.
    release.send(()).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(10)));
    assert_eq!(*seen.lock().unwrap(), vec![(0, false), (1, false), (2, false)]);
    // Removals are submitted when the worker finds its mailbox empty, at the latest when
    // it stops.
    rt.shutdown();
    assert_eq!(pending_steps(&store), Vec::<u64>::new());

    // After the "crash": the three come again, in order, flagged, once bob is attached.
    let rt = Runtime::builder(persistent_cfg()).storage(crashed.clone()).build().unwrap();
    let alice = rt.attach_named("alice", |_, _| {}).unwrap();
    let inbox = Inbox::new();
    rt.attach_named("bob", inbox.handler()).unwrap();
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| (m.step, m.redelivered)).collect::<Vec<_>>(), vec![(0, true), (1, true), (2, true)]);
    assert_eq!(got.iter().map(|m| m.message_id).collect::<Vec<_>>(), ids);
    assert_eq!(got[2].payload, vec![2u8]);
    // New messages follow, not flagged; the inbox empties.
    assert_eq!(alice.send(ch, b"new").unwrap().step, 3);
    let got = inbox.wait_for(4);
    assert_eq!((got[3].step, got[3].redelivered), (3, false));
    assert!(rt.wait_idle(Duration::from_secs(10)));
    rt.shutdown();
    assert_eq!(pending_steps(&crashed), Vec::<u64>::new());
}

#[test]
fn restore_refuses_more_pending_messages_than_twice_the_mailbox() {
    let store = MemoryStorage::new();
    let config = {
        let mut c = persistent_cfg();
        c.mailbox_capacity = 2;
        c
    };
    let (alice, bob, ch) = {
        let rt = Runtime::builder(config.clone()).storage(store.clone()).build().unwrap();
        let alice = rt.bind_named("alice", |_, _| {}).unwrap().id();
        let bob = rt.bind_named("bob", |_, _| {}).unwrap().id();
        let ch = rt.establish_channel(&alice, &bob).unwrap();
        rt.shutdown();
        (alice, bob, ch)
    };
    let row = |step: u64| DeliveryRow {
        channel: ch,
        step,
        recipient: bob,
        sender: alice,
        message_id: mfp_runtime::MessageId::from_bytes([step as u8; 16]),
        correlation_id: [0; 8],
        payload: vec![1, 2, 3],
    };
    // 2 × 2 + 2 = 6 are taken (and all delivered), 7 are refused.
    store.apply((0..6).map(|s| StorageOp::PutDelivery(row(s))).collect()).wait().unwrap();
    {
        let rt = Runtime::builder(config.clone()).storage(crash_copy(&store)).build().unwrap();
        let inbox = Inbox::new();
        rt.attach(&bob, inbox.handler()).unwrap();
        assert_eq!(inbox.wait_for(6).iter().map(|m| m.step).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
        rt.shutdown();
    }
    store.apply(vec![StorageOp::PutDelivery(row(6))]).wait().unwrap();
    match Runtime::builder(config).storage(store).build() {
        Err(Error::Config(e)) => {
            assert_eq!(e.field, "mailbox_capacity");
            assert!(e.reason.contains(&bob.short().to_string()), "{}", e.reason);
        }
        other => panic!("expected a configuration error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_message_to_a_detached_agent_survives_shutdown_and_restart() {
    let store = MemoryStorage::new();
    let (bob, ch) = {
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let alice = rt.bind_named("alice", |_, _| {}).unwrap();
        let bob = rt.bind_named("bob", |_, _| {}).unwrap();
        let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
        rt.shutdown();
        (bob.id(), ch)
    };
    {
        // Bob is not attached: the message waits in his mailbox, and shutdown drops it
        // from memory only.
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let alice = rt.attach_named("alice", |_, _| {}).unwrap();
        assert_eq!(alice.send(ch, b"while detached").unwrap().step, 0);
        rt.shutdown();
    }
    assert_eq!(pending_steps(&store), vec![0]);
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    let inbox = Inbox::new();
    rt.attach(&bob, inbox.handler()).unwrap();
    let got = inbox.wait_for(1);
    assert_eq!(
        (got[0].channel, got[0].step, &got[0].payload[..], got[0].redelivered),
        (ch, 0, &b"while detached"[..], true)
    );
    assert!(rt.wait_idle(Duration::from_secs(10)));
    rt.shutdown();
    assert_eq!(pending_steps(&store), Vec::<u64>::new());
}
