#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Timeouts on the runtime's clock: a handler's timeout (sync and async handlers), a wait for
//! mailbox space and a shutdown's grace period end when a virtual clock gets there. The
//! timeouts are hours long, so real time cannot be what ends them; the tests only move the
//! clock.

#[macro_use]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Gate, Inbox, cfg, gated_pair};
use mfp_runtime::{AgentState, Backpressure, Error, ManualClock, Runtime};

const HOUR: Duration = Duration::from_secs(3600);

/// Waits (real time, at most 10 s) until `done()` holds, without moving any clock.
fn wait_until(mut done: impl FnMut() -> bool) {
    let watchdog = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < watchdog, "the condition never held");
        thread::yield_now();
    }
}

#[test]
fn a_sync_handler_times_out_when_the_clock_passes_the_agent_timeout() {
    let clock = ManualClock::new();
    let config = {
        let mut c = cfg();
        c.agent_timeout = HOUR;
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"stuck").unwrap();
    gate.wait_entered(1);
    // The watchdog waits on the clock for its next look; one move past the timeout (the
    // watchdog takes a new sleep after each look).
    wait_until(|| clock.sleepers() > 0);
    assert_eq!(rt.metrics().handler_timeouts.get(), 0);
    clock.advance(HOUR + Duration::from_secs(1));
    wait_until(|| b.state() == AgentState::Quarantined);
    assert_eq!(rt.metrics().handler_timeouts.get(), 1);
    assert_eq!(rt.quarantine_reason(&b.id()).unwrap(), "Agent callable timeout");
    gate.open();
    rt.shutdown();
}

#[test]
fn an_async_handler_times_out_when_the_clock_passes_the_agent_timeout() {
    let clock = ManualClock::new();
    let config = {
        let mut c = cfg();
        c.agent_timeout = HOUR;
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind_async_fn(|_, _| std::future::pending::<()>()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, b"never handled").unwrap();
    // The handler runs, its timeout waiting on the clock.
    wait_until(|| clock.sleepers() > 0);
    clock.advance(HOUR - Duration::from_secs(1));
    assert_eq!(rt.metrics().handler_timeouts.get(), 0);
    assert_eq!(b.state(), AgentState::Active);
    clock.advance(Duration::from_secs(2));
    wait_until(|| b.state() == AgentState::Quarantined);
    assert_eq!(rt.metrics().handler_timeouts.get(), 1);
    rt.shutdown();
}

#[test]
fn a_wait_for_mailbox_space_ends_on_the_clock() {
    let clock = ManualClock::new();
    let config = {
        let mut c = cfg();
        c.agent_timeout = 10 * HOUR;
        c.pipeline_timeout = HOUR;
        c.mailbox_capacity = 1;
        c.backpressure = Backpressure::Wait;
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"in the handler").unwrap();
    gate.wait_entered(1);
    a.send(ch, b"in the mailbox").unwrap();
    let before = clock.sleepers();
    let third = {
        let a = a.clone();
        thread::spawn(move || a.send(ch, b"waits"))
    };
    // Moved only once the third send waits on the clock (else the clock could pass the
    // handler's timeout before the send computed its deadline).
    wait_until(|| clock.sleepers() > before);
    clock.advance(HOUR - Duration::from_secs(1));
    assert!(!third.is_finished(), "the wait ended before its deadline on the clock");
    clock.advance(Duration::from_secs(2));
    assert_err!(third.join().unwrap(), Error::MailboxFull(_));
    gate.open();
    assert_eq!(inbox.wait_for(2).len(), 2);
    rt.shutdown();
}

#[test]
fn a_shutdown_waits_for_a_stuck_handler_until_the_clock_ends_its_grace_period() {
    let clock = ManualClock::new();
    let config = {
        let mut c = cfg();
        c.agent_timeout = 10 * HOUR;
        c.pipeline_timeout = HOUR;
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"stuck").unwrap();
    a.send(ch, b"queued").unwrap();
    gate.wait_entered(1);
    let before = clock.sleepers();
    let shutdown = thread::spawn(move || rt.shutdown());
    wait_until(|| clock.sleepers() > before);
    clock.advance(HOUR - Duration::from_secs(1));
    assert!(!shutdown.is_finished(), "the shutdown ended before its grace period on the clock");
    clock.advance(Duration::from_secs(2));
    shutdown.join().unwrap();
    gate.open();
}
