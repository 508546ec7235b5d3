#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Shutdown and idleness: a graceful shutdown delivers every message that got a receipt,
//! and `in_flight` returns to zero however the runtime or an agent is stopped.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gate, WAIT, cfg};
use mfp_runtime::{ChannelId, Error, Runtime};

/// Four sender threads on four channels, shut down mid-stream: every message that got a
/// receipt reaches its handler, and nothing stays in flight. Every other round persists
/// (each send then also waits for its commit).
#[test]
fn graceful_shutdown_delivers_every_acknowledged_message() {
    const SENDERS: usize = 4;
    for round in 0..12 {
        let config = {
            let mut c = cfg();
            c.max_message_rate = 0;
            c.pipeline_timeout = WAIT * 4;
            c.deployment_id = b"shutdown".to_vec();
            c.instance_id = b"test".to_vec();
            c
        };
        let mut builder = Runtime::builder(config);
        if round % 2 == 1 {
            builder = builder.storage(mfp_runtime::storage::MemoryStorage::new());
        }
        let rt = Arc::new(builder.build().unwrap());
        let delivered: Arc<Mutex<BTreeMap<ChannelId, u64>>> = Arc::default();
        let total = Arc::new(AtomicU64::new(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let d = Arc::clone(&delivered);
        let t = Arc::clone(&total);
        let bob = rt
            .bind(move |_, m| {
                *d.lock().unwrap().entry(m.channel).or_insert(0) += 1;
                // Signal once enough traffic flows to shut down in the middle of it.
                if t.fetch_add(1, Ordering::Relaxed) == 2000 {
                    let _ = started_tx.lock().unwrap().send(());
                }
            })
            .unwrap();
        let threads: Vec<_> = (0..SENDERS)
            .map(|_| {
                let a = rt.bind(|_, _| {}).unwrap();
                let ch = rt.establish_channel(&a.id(), &bob.id()).unwrap();
                std::thread::spawn(move || {
                    let mut receipts = 0u64;
                    loop {
                        match a.send(ch, b"x") {
                            Ok(_) => receipts += 1,
                            Err(Error::ShutDown) => return (ch, receipts),
                            Err(e) => panic!("send on {ch}: {e}"),
                        }
                    }
                })
            })
            .collect();
        started_rx.recv_timeout(WAIT * 4).expect("traffic started");
        rt.shutdown();
        let receipts: BTreeMap<ChannelId, u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let delivered = delivered.lock().unwrap().clone();
        let lost: Vec<(ChannelId, u64)> = receipts
            .iter()
            .filter_map(|(c, &n)| {
                let got = delivered.get(c).copied().unwrap_or(0);
                (got != n).then(|| (*c, n.saturating_sub(got)))
            })
            .collect();
        assert!(lost.is_empty(), "round {round}: receipts {receipts:?}, deliveries {delivered:?}, lost {lost:?}");
        assert_eq!(rt.in_flight(), 0, "round {round}");
        assert!(rt.wait_idle(Duration::ZERO), "round {round}");
    }
}

/// `wait_idle` accepts any timeout, including "forever".
#[test]
fn wait_idle_takes_an_unbounded_timeout() {
    let rt = Runtime::new(cfg()).unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(move |_, _| g.wait()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, b"held until the gate opens").unwrap();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || gate.open())
    };
    assert!(rt.wait_idle(Duration::MAX));
    opener.join().unwrap();
    let exec = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(exec.block_on(rt.wait_idle_async(Duration::MAX)));
}

/// Terminating an agent whose handler never returns drops its queued message and stops
/// counting the one in the handler: `in_flight` returns to zero, and stays there when the
/// handler finally returns.
#[test]
fn terminate_with_a_handler_blocked_forever_leaves_nothing_in_flight() {
    let rt = Runtime::new(cfg()).unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (left_tx, left_rx) = std::sync::mpsc::channel::<()>();
    let hooks = Mutex::new((entered_tx, release_rx, left_tx));
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt
        .bind(move |_, _| {
            let h = hooks.lock().unwrap();
            let _ = h.0.send(());
            // Blocks until the test drops `release_tx`.
            let _ = h.1.recv();
            let _ = h.2.send(());
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, b"stuck in the handler").unwrap();
    entered_rx.recv_timeout(WAIT).expect("the handler started");
    a.send(ch, b"queued behind it").unwrap();
    assert_eq!(rt.in_flight(), 2);
    rt.terminate_agent(&b.id()).unwrap();
    assert!(rt.wait_idle(WAIT * 2), "in_flight stays at {}", rt.in_flight());
    drop(release_tx);
    left_rx.recv_timeout(WAIT).expect("the handler returned");
    // The handler's late return is not counted a second time.
    assert_eq!(rt.in_flight(), 0);
    assert!(rt.wait_idle(WAIT));
    assert_eq!(rt.in_flight(), 0);
}
