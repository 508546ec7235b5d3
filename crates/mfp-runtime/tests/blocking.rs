#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Blocking calls made from inside a tokio runtime: each one works, or fails at once with
//! `Error::WouldBlock` — none hangs. Both runtime flavours, without storage, with
//! `MemoryStorage`, and with a storage whose tickets complete from another thread. Every
//! test runs under a watchdog.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Inbox, PendingStorage, cfg, within};
use mfp_runtime::storage::{MemoryStorage, Storage};
use mfp_runtime::{AgentState, Backpressure, Error, Runtime, RuntimeConfig};

const WATCHDOG: u64 = 20;

#[derive(Clone, Copy, Debug)]
enum Store {
    None,
    Memory,
    Pending,
}

fn build(store: Store, config: RuntimeConfig) -> Runtime {
    let b = Runtime::builder(config);
    match store {
        Store::None => b.build().unwrap(),
        Store::Memory => b.storage(MemoryStorage::new()).build().unwrap(),
        Store::Pending => b.storage(PendingStorage::new()).build().unwrap(),
    }
}

fn one_slot() -> RuntimeConfig {
    let mut c = cfg();
    c.mailbox_capacity = 1;
    c.backpressure = Backpressure::Wait;
    c.max_message_rate = 0;
    c
}

/// Every blocking administrative call, in order; each must succeed.
fn admin_round(rt: &Runtime) {
    let a = rt.bind_named("a", |_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let c = rt.bind(|_, _| {}).unwrap();
    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let bc = rt.establish_channel_with_depth(&b.id(), &c.id(), 3).unwrap();
    a.send(ab, b"x").unwrap();
    rt.quarantine_agent(&a.id(), "test").unwrap();
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    rt.restore_agent(&a.id()).unwrap();
    rt.quarantine_channel(&bc, "test").unwrap();
    rt.restore_channel(&bc).unwrap();
    rt.close_channel(&bc).unwrap();
    rt.unbind_agent(&c.id()).unwrap();
    rt.terminate_agent(&a.id()).unwrap();
    assert_eq!(rt.agent_count(), 1);
    assert_eq!(rt.channel_count(), 0);
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn blocking_admin_calls_work_inside_a_current_thread_runtime() {
    for store in [Store::None, Store::Memory, Store::Pending] {
        within(WATCHDOG, move || {
            current_thread().block_on(async move {
                let rt = build(store, cfg());
                admin_round(&rt);
                rt.shutdown();
            });
        });
    }
}

#[test]
fn blocking_admin_calls_work_inside_a_multi_threaded_runtime() {
    for store in [Store::None, Store::Memory, Store::Pending] {
        within(WATCHDOG, move || {
            multi_thread().block_on(async move {
                let rt = build(store, cfg());
                admin_round(&rt);
                // From a worker task too (block_in_place underneath).
                let rt = Arc::new(rt);
                let on_worker = Arc::clone(&rt);
                tokio::spawn(async move {
                    let x = on_worker.bind(|_, _| {}).unwrap();
                    let y = on_worker.bind(|_, _| {}).unwrap();
                    let ch = on_worker.establish_channel(&x.id(), &y.id()).unwrap();
                    x.send(ch, b"from a worker").unwrap();
                    on_worker.close_channel(&ch).unwrap();
                })
                .await
                .unwrap();
                rt.shutdown();
            });
        });
    }
}

#[test]
fn blocking_sends_that_would_wait_fail_at_once_on_a_current_thread_runtime() {
    for store in [Store::None, Store::Memory, Store::Pending] {
        within(WATCHDOG, move || {
            current_thread().block_on(async move {
                let rt = build(store, one_slot());
                let inbox = Inbox::new();
                let a = rt.bind(|_, _| {}).unwrap();
                let b = rt.bind(inbox.handler()).unwrap();
                let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
                // The one slot is free: a send that needs no wait works.
                assert_eq!(a.send(ch, b"first").unwrap().step, 0);
                // The slot is taken and only this thread could drain it: no hang.
                let err = a.send(ch, b"second").unwrap_err();
                assert_eq!(err, Error::WouldBlock { operation: "AgentHandle::send" });
                // Waiting for a handler can never work here: refused before sending.
                let err = a.send_and_wait(ch, b"third").unwrap_err();
                assert_eq!(err, Error::WouldBlock { operation: "AgentHandle::send_and_wait" });
                // Nothing moved: the next send (once the worker ran) uses step 1.
                assert!(!rt.wait_idle(Duration::MAX), "nothing can be delivered while this thread waits");
                assert!(rt.wait_idle_async(Duration::from_secs(5)).await);
                assert_eq!(a.send(ch, b"fourth").unwrap().step, 1);
                assert!(rt.wait_idle_async(Duration::from_secs(5)).await);
                assert_eq!(inbox.payloads(), vec![b"first".to_vec(), b"fourth".to_vec()]);
                // A blocking shutdown with a message queued returns too.
                a.send(ch, b"dropped").unwrap();
                rt.shutdown();
            });
        });
    }
}

#[test]
fn blocking_sends_wait_and_work_inside_a_multi_threaded_runtime() {
    for store in [Store::None, Store::Memory, Store::Pending] {
        within(WATCHDOG, move || {
            multi_thread().block_on(async move {
                let rt = build(store, one_slot());
                let inbox = Inbox::new();
                let a = rt.bind(|_, _| {}).unwrap();
                let b = rt.bind(inbox.handler()).unwrap();
                let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
                for i in 0..20u8 {
                    a.send(ch, &[i]).unwrap();
                }
                a.send_and_wait(ch, b"last").unwrap();
                assert_eq!(inbox.len(), 21);
                rt.shutdown();
            });
        });
    }
}

#[test]
fn a_blocking_admin_call_behind_a_pending_async_one_fails_at_once_on_a_current_thread_runtime() {
    within(WATCHDOG, || {
        current_thread().block_on(async {
            let store = PendingStorage::new();
            let rt = Arc::new(Runtime::builder(cfg()).storage(store.clone()).build().unwrap());
            let a = rt.bind(|_, _| {}).unwrap();
            let b = rt.bind(|_, _| {}).unwrap();
            let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
            store.pause();
            let task_rt = Arc::clone(&rt);
            let id = a.id();
            let pending = tokio::spawn(async move { task_rt.quarantine_agent_async(&id, "slow disk").await });
            // Let the task take its turn and submit its batch.
            while store.mem.load().unwrap().unwrap().agents.iter().all(|r| r.state != AgentState::Quarantined) {
                tokio::task::yield_now().await;
            }
            let err = rt.close_channel(&ch).unwrap_err();
            assert_eq!(err, Error::WouldBlock { operation: "Runtime::close_channel" });
            // Not yet committed: the quarantine is not in force in memory.
            assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Active);
            store.resume();
            pending.await.unwrap().unwrap();
            assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
            rt.close_channel(&ch).unwrap();
            rt.shutdown_async().await;
        });
    });
}

/// A quarantine the runtime imposes (rate limit) is in force at once, without the send
/// waiting for the disk: with storage completions held back, the send that trips the
/// limit still returns; the quarantine reaches storage once the disk answers.
#[test]
fn a_rate_limit_quarantine_does_not_wait_for_the_disk() {
    let store = PendingStorage::new();
    let config = {
        let mut c = cfg();
        c.max_message_rate = 3;
        c.rate_limit_action = mfp_runtime::RateLimitAction::Quarantine;
        c
    };
    let rt = Arc::new(Runtime::builder(config).storage(store.clone()).build().unwrap());
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    for _ in 0..3 {
        a.send(ch, b"x").unwrap();
    }
    store.pause();
    let sender = a.clone();
    let err = within(WATCHDOG, move || sender.send(ch, b"4th").unwrap_err());
    assert_eq!(err, Error::AgentQuarantined(a.id()));
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    assert_eq!(rt.channel_info(&ch).unwrap().status, mfp_runtime::ChannelStatus::Quarantined);
    store.resume();
    let id = a.id();
    within(WATCHDOG, move || {
        while !store
            .mem
            .load()
            .unwrap()
            .unwrap()
            .agents
            .iter()
            .any(|r| r.id == id && r.state == AgentState::Quarantined)
        {
            std::thread::yield_now();
        }
    });
    rt.shutdown();
}
