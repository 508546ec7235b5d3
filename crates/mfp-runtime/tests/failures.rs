#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Handler failures: a panicking handler is contained (its agent and everyone else keep
//! receiving), and a handler that exceeds `agent_timeout` gets its agent quarantined
//! without stalling anyone else; senders that wait for delivery learn what happened.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Gate, Inbox, WAIT, cfg};
use mfp_runtime::{AgentHandle, AgentState, ChannelId, Error, ErrorCode, Runtime, RuntimeConfig};

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

fn timeout_cfg() -> RuntimeConfig {
    let mut c = cfg();
    c.agent_timeout = Duration::from_millis(100);
    c.pipeline_timeout = Duration::from_millis(300);
    c
}

/// A sender `s` with channels to `victim` and to a well-behaved `bystander`.
struct Setup {
    s: AgentHandle,
    victim: AgentHandle,
    to_victim: ChannelId,
    to_bystander: ChannelId,
    bystander_inbox: Inbox,
}

fn setup(rt: &Runtime, victim: AgentHandle) -> Setup {
    let bystander_inbox = Inbox::new();
    let s = rt.bind(|_, _| {}).unwrap();
    let bystander = rt.bind(bystander_inbox.handler()).unwrap();
    let to_victim = rt.establish_channel(&s.id(), &victim.id()).unwrap();
    let to_bystander = rt.establish_channel(&s.id(), &bystander.id()).unwrap();
    Setup { s, victim, to_victim, to_bystander, bystander_inbox }
}

// ---- panics ------------------------------------------------------------------------

#[test]
fn a_panicking_sync_handler_is_contained() {
    common::quiet_intentional_panics();
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let rec = inbox.clone();
    let victim = rt
        .bind(move |_, m| {
            assert!(m.payload != b"boom", "handler exploded on purpose");
            rec.push(m);
        })
        .unwrap();
    let t = setup(&rt, victim);
    t.s.send(t.to_victim, b"boom").unwrap();
    t.s.send(t.to_victim, b"after").unwrap();
    t.s.send(t.to_bystander, b"hi").unwrap();
    assert_eq!(inbox.wait_for(1)[0].payload, b"after", "the panicking agent keeps receiving");
    assert_eq!(t.bystander_inbox.wait_for(1)[0].payload, b"hi");
    assert!(rt.wait_idle(WAIT));
    assert_eq!(rt.metrics().handler_panics.get(), 1);
    assert_eq!(t.victim.state(), AgentState::Active, "a panic does not quarantine");

    let err = t.s.send_and_wait(t.to_victim, b"boom").unwrap_err();
    assert_eq!(err, Error::HandlerFailed);
    assert_eq!(err.code(), None);
    assert_eq!(rt.metrics().handler_panics.get(), 2);
    // The message was still sent: the step moved (boom, after, boom, again).
    assert_eq!(t.s.send_and_wait(t.to_victim, b"again").unwrap().step, 3);
    assert_eq!(inbox.payloads(), [b"after".to_vec(), b"again".to_vec()]);
    assert_eq!(rt.metrics().messages_delivered.get(), 3);
}

#[test]
fn a_panicking_async_handler_is_contained() {
    common::quiet_intentional_panics();
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let rec = inbox.clone();
    let victim = rt
        .bind_async_fn(move |_, m| {
            let rec = rec.clone();
            async move {
                tokio::task::yield_now().await;
                assert!(m.payload != b"boom", "async handler exploded on purpose");
                rec.push(m);
            }
        })
        .unwrap();
    let t = setup(&rt, victim);
    assert_eq!(t.s.send_and_wait(t.to_victim, b"boom"), Err(Error::HandlerFailed));
    assert_eq!(rt.metrics().handler_panics.get(), 1);
    t.s.send_and_wait(t.to_victim, b"after").unwrap();
    t.s.send_and_wait(t.to_bystander, b"hi").unwrap();
    assert_eq!(inbox.payloads(), [b"after".to_vec()]);
    assert_eq!(t.victim.state(), AgentState::Active);
}

// ---- timeouts ----------------------------------------------------------------------

#[test]
fn a_sync_handler_over_the_agent_timeout_quarantines_its_agent() {
    let rt = Runtime::new(timeout_cfg()).unwrap();
    let victim = rt
        .bind(|_, m| {
            if m.payload == b"slow" {
                thread::sleep(Duration::from_millis(500));
            }
        })
        .unwrap();
    let t = setup(&rt, victim);
    let started = Instant::now();
    let err = t.s.send_and_wait(t.to_victim, b"slow").unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, Error::Timeout);
    assert_eq!(err.code(), Some(ErrorCode::Timeout));
    assert!(waited >= Duration::from_millis(100), "gave up after {waited:?}");
    assert!(waited < Duration::from_millis(500), "should not wait for the handler: {waited:?}");

    assert_eq!(t.victim.state(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&t.victim.id()).unwrap(), "Agent callable timeout");
    assert!(rt.metrics().handler_timeouts.get() >= 1);
    assert_eq!(rt.metrics().agent_quarantines.get(), 1);
    // The sender and the bystander are unaffected; the victim's channel is quarantined.
    assert_eq!(t.s.state(), AgentState::Active);
    t.s.send_and_wait(t.to_bystander, b"fine").unwrap();
    assert_err!(t.s.send(t.to_victim, b"more"), Error::ChannelQuarantined(_));
}

#[test]
fn a_slow_sync_handler_stalls_nobody_else() {
    let rt = Runtime::new(timeout_cfg()).unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let victim = rt.bind(move |_, _| g.wait()).unwrap();
    let t = setup(&rt, victim);
    let sent = Instant::now();
    t.s.send(t.to_victim, b"stuck").unwrap();
    gate.wait_entered(1);
    // While the victim's handler is stuck, others exchange messages normally.
    for _ in 0..5 {
        let tick = Instant::now();
        t.s.send_and_wait(t.to_bystander, b"fine").unwrap();
        assert!(tick.elapsed() < Duration::from_millis(250));
    }
    wait_until("the stuck agent to be quarantined", || t.victim.state() == AgentState::Quarantined);
    assert!(sent.elapsed() >= Duration::from_millis(100));
    assert_eq!(rt.quarantine_reason(&t.victim.id()).unwrap(), "Agent callable timeout");
    // An operator can terminate it even while its handler is stuck.
    rt.terminate_agent(&t.victim.id()).unwrap();
    assert_eq!(t.victim.state(), AgentState::Terminated);
    t.s.send_and_wait(t.to_bystander, b"still fine").unwrap();
    gate.open();
    assert_eq!(t.bystander_inbox.wait_for(6).len(), 6);
}

/// A handler that overran `agent_timeout` but finished before the waiting sender gave up:
/// the agent is quarantined for the timeout, so the waiting sender must see `Timeout`
/// too, not success.
#[test]
fn a_sync_handler_that_overran_reports_timeout_to_a_waiting_sender() {
    let rt = Runtime::new(timeout_cfg()).unwrap();
    let victim = rt.bind(|_, _| thread::sleep(Duration::from_millis(250))).unwrap();
    let t = setup(&rt, victim);
    let res = t.s.send_and_wait(t.to_victim, b"slowish");
    assert_eq!(t.victim.state(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&t.victim.id()).unwrap(), "Agent callable timeout");
    assert_eq!(res, Err(Error::Timeout));
}

#[test]
fn a_fast_handler_is_not_flagged() {
    let rt = Runtime::new(timeout_cfg()).unwrap();
    let victim = rt.bind(|_, _| thread::sleep(Duration::from_millis(20))).unwrap();
    let t = setup(&rt, victim);
    for _ in 0..10 {
        t.s.send_and_wait(t.to_victim, b"ok").unwrap();
    }
    assert_eq!(t.victim.state(), AgentState::Active);
    assert_eq!(rt.metrics().handler_timeouts.get(), 0);
}

#[test]
fn an_async_handler_over_the_agent_timeout_is_cancelled_and_quarantined() {
    let rt = Runtime::new(timeout_cfg()).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (st, fin) = (Arc::clone(&started), Arc::clone(&finished));
    let victim = rt
        .bind_async_fn(move |_, _| {
            let (st, fin) = (Arc::clone(&st), Arc::clone(&fin));
            async move {
                st.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                fin.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    let t = setup(&rt, victim);
    let t0 = Instant::now();
    assert_eq!(t.s.send_and_wait(t.to_victim, b"slow"), Err(Error::Timeout));
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(400), "{waited:?}");
    assert!(started.load(Ordering::SeqCst));
    assert_eq!(t.victim.state(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&t.victim.id()).unwrap(), "Agent callable timeout");
    assert_eq!(rt.metrics().handler_timeouts.get(), 1);
    t.s.send_and_wait(t.to_bystander, b"fine").unwrap();
    // Past the point where the handler would have finished: it was cancelled.
    thread::sleep(Duration::from_millis(450));
    assert!(!finished.load(Ordering::SeqCst), "the timed-out handler kept running");
}
