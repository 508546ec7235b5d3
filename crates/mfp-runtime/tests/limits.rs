#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Limits and refusals: rate limiting under each `RateLimitAction`, mailbox backpressure
//! under each `Backpressure` policy, payload size, frame depth, resource limits and channel
//! membership. Every refused send must leave the channel step where it was.

#[macro_use]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Gate, Inbox, cfg, gated_pair};
use mfp_runtime::{
    AgentHandle, AgentState, Backpressure, ChannelId, ChannelStatus, Error, ErrorCode, ManualClock, RateLimitAction,
    Runtime, RuntimeConfig,
};

fn pair(rt: &Runtime, inbox: &Inbox) -> (AgentHandle, AgentHandle, ChannelId) {
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    (a, b, ch)
}

// ---- rate limiting -----------------------------------------------------------------

fn rate_cfg(action: RateLimitAction) -> RuntimeConfig {
    let mut c = cfg();
    c.max_message_rate = 3;
    c.rate_limit_action = action;
    c
}

#[test]
fn rate_limit_quarantine_quarantines_the_sender_on_the_fourth_send() {
    let rt = Runtime::new(rate_cfg(RateLimitAction::Quarantine)).unwrap();
    let inbox = Inbox::new();
    let (a, b, ch) = pair(&rt, &inbox);
    for i in 0..3u64 {
        assert_eq!(a.send(ch, b"x").unwrap().step, i);
    }
    let err = a.send(ch, b"x").unwrap_err();
    assert!(matches!(err, Error::AgentQuarantined(_)), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Quarantined));
    assert_eq!(a.state(), AgentState::Quarantined);
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "Rate limit exceeded");
    assert_eq!(rt.metrics().rate_limited.get(), 1);
    assert_eq!(rt.metrics().agent_quarantines.get(), 1);
    // Its channels are quarantined with it; the peer is not.
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);
    assert_eq!(b.state(), AgentState::Active);
    assert_err!(b.send(ch, b"reply"), Error::ChannelQuarantined(_));
    assert_err!(a.send(ch, b"x"), Error::AgentQuarantined(_));
    assert_err!(a.status(), Error::AgentQuarantined(_));
    // The three accepted messages were delivered.
    assert_eq!(inbox.wait_for(3).len(), 3);
}

#[test]
fn rate_limit_reject_refuses_but_keeps_the_sender_active() {
    let rt = Runtime::new(rate_cfg(RateLimitAction::Reject)).unwrap();
    let inbox = Inbox::new();
    let (a, b, ch) = pair(&rt, &inbox);
    let c = rt.bind(|_, _| {}).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    for _ in 0..3 {
        a.send(ch, b"x").unwrap();
    }
    match a.send(ch, b"x") {
        Err(e @ Error::RateLimited { retry_after }) => {
            assert!(retry_after <= Duration::from_secs(1));
            assert!(retry_after > Duration::from_millis(500), "{retry_after:?}");
            assert_eq!(e.code(), Some(ErrorCode::ResourceLimitExceeded));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The limit is per sender, across its channels.
    assert!(matches!(a.send(ac, b"x"), Err(Error::RateLimited { .. })));
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "");
    assert_eq!(rt.metrics().agent_quarantines.get(), 0);
    // Other senders are unaffected, and refused sends moved no state.
    assert_eq!(b.send(ch, b"y").unwrap().step, 3);
    assert_eq!(a.status().unwrap().messages_sent, 3);
}

#[test]
fn rate_limit_wait_gives_up_at_once_when_the_wait_exceeds_the_pipeline_timeout() {
    let config = {
        let mut c = rate_cfg(RateLimitAction::Wait);
        c.pipeline_timeout = Duration::from_millis(100);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    for _ in 0..3 {
        a.send(ch, b"x").unwrap();
    }
    let t = Instant::now();
    assert!(matches!(a.send(ch, b"x"), Err(Error::RateLimited { .. })));
    assert!(t.elapsed() < Duration::from_millis(100), "should not wait when the wait cannot succeed");
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(a.send(ch, b"x").map_err(|e| e.code()), Err(Some(ErrorCode::ResourceLimitExceeded)));
}

/// `Wait` delays the fourth send until the window frees, and the delayed send counts in
/// the window from when it was actually sent: at most 3 sends in any rolling second. On a
/// virtual clock: the wait ends when the clock gets there, not after real time.
#[test]
fn rate_limit_wait_delays_until_the_window_frees() {
    let clock = ManualClock::new();
    let config = {
        let mut c = rate_cfg(RateLimitAction::Wait);
        c.pipeline_timeout = Duration::from_millis(900);
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    for _ in 0..3 {
        a.send(ch, b"x").unwrap();
    }
    clock.advance(Duration::from_millis(150));
    let fourth = {
        let a = a.clone();
        thread::spawn(move || a.send(ch, b"4th"))
    };
    // The 4th waits for the oldest send to leave the window, at t = 1000 ms.
    let watchdog = Instant::now() + Duration::from_secs(10);
    while rt.metrics().rate_limited.get() == 0 {
        assert!(Instant::now() < watchdog, "the 4th send never reached the rate window");
        thread::yield_now();
    }
    clock.advance(Duration::from_millis(849));
    clock.advance(Duration::from_millis(1));
    let r = fourth.join().unwrap().unwrap();
    assert_eq!(r.step, 3);
    assert_eq!(clock.elapsed(), Duration::from_millis(1000));
    // Two more fit next to the 4th…
    a.send(ch, b"5th").unwrap();
    a.send(ch, b"6th").unwrap();
    // …but a 7th would make four within one second of the 4th (sent at t = 1000 ms, not
    // when it started waiting), and waiting for it to leave the window takes longer than
    // the pipeline timeout: refused at once.
    let seventh = common::within(10, move || a.send(ch, b"7th"));
    assert!(
        matches!(seventh, Err(Error::RateLimited { retry_after }) if retry_after == Duration::from_secs(1)),
        "{seventh:?}"
    );
    assert!(rt.metrics().rate_limited.get() >= 2);
    assert_eq!(inbox.wait_for(6).len(), 6);
}

#[test]
fn rate_limit_zero_means_unlimited() {
    let config = {
        let mut c = cfg();
        c.max_message_rate = 0;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    for i in 0..200u64 {
        assert_eq!(a.send(ch, b"x").unwrap().step, i);
    }
    assert_eq!(rt.metrics().rate_limited.get(), 0);
}

// ---- backpressure ------------------------------------------------------------------

fn bp_cfg(policy: Backpressure, pipeline_ms: u64) -> RuntimeConfig {
    let mut c = cfg();
    c.mailbox_capacity = 1;
    c.backpressure = policy;
    c.pipeline_timeout = Duration::from_millis(pipeline_ms);
    // Longer than the gate can block, so the slow handler is never quarantined.
    c.agent_timeout = Duration::from_secs(3);
    c
}

#[test]
fn backpressure_reject_fails_at_once_and_moves_no_state() {
    let rt = Runtime::new(bp_cfg(Backpressure::Reject, 300)).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    assert_eq!(a.send(ch, b"m0").unwrap().step, 0);
    gate.wait_entered(1); // the handler holds m0; the mailbox is empty again
    assert_eq!(a.send(ch, b"m1").unwrap().step, 1); // fills the mailbox (capacity 1)
    let t = Instant::now();
    let err = a.send(ch, b"m2").unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(250), "Reject must not wait");
    assert!(matches!(err, Error::MailboxFull(_)), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::ResourceLimitExceeded));
    assert_err!(a.send(ch, b"m2"), Error::MailboxFull(_));
    assert_eq!(rt.metrics().mailbox_full.get(), 2);
    assert_eq!(b.status().unwrap().mailbox_len, 1);
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(b.state(), AgentState::Active);

    gate.open();
    inbox.wait_for(2);
    assert_eq!(a.send(ch, b"m3").unwrap().step, 2, "failed sends must not advance the step");
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(inbox.payloads(), [b"m0".to_vec(), b"m1".to_vec(), b"m3".to_vec()]);
    assert_eq!(a.status().unwrap().messages_sent, 3);
}

#[test]
fn backpressure_wait_times_out_with_mailbox_full() {
    let rt = Runtime::new(bp_cfg(Backpressure::Wait, 100)).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    assert_eq!(a.send(ch, b"m0").unwrap().step, 0);
    gate.wait_entered(1);
    assert_eq!(a.send(ch, b"m1").unwrap().step, 1);
    let t = Instant::now();
    assert_err!(a.send(ch, b"m2"), Error::MailboxFull(_));
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(80), "gave up after {waited:?}");
    assert!(waited < Duration::from_millis(1000), "waited {waited:?}");
    assert_eq!(rt.metrics().mailbox_full.get(), 1);

    gate.open();
    inbox.wait_for(2);
    assert_eq!(a.send(ch, b"m3").unwrap().step, 2);
    assert_eq!(inbox.wait_for(3).iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn backpressure_wait_succeeds_once_space_frees() {
    let rt = Runtime::new(bp_cfg(Backpressure::Wait, 1000)).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"m0").unwrap();
    gate.wait_entered(1);
    a.send(ch, b"m1").unwrap();
    let waiter = {
        let a = a.clone();
        thread::spawn(move || {
            let t = Instant::now();
            (a.send(ch, b"m2"), t.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(60));
    assert!(!waiter.is_finished(), "the send should be waiting for mailbox space");
    gate.open();
    let (res, waited) = waiter.join().unwrap();
    assert_eq!(res.unwrap().step, 2);
    assert!(waited >= Duration::from_millis(50));
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(rt.metrics().mailbox_full.get(), 0);
}

#[test]
fn a_full_mailbox_does_not_block_other_recipients() {
    let rt = Runtime::new(bp_cfg(Backpressure::Reject, 300)).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    let other = Inbox::new();
    let c = rt.bind(other.handler()).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    a.send(ch, b"m0").unwrap();
    gate.wait_entered(1);
    a.send(ch, b"m1").unwrap();
    assert_err!(a.send(ch, b"m2"), Error::MailboxFull(_));
    // (c's mailbox holds one message too: wait for each delivery.)
    for i in 0..5u64 {
        assert_eq!(a.send_and_wait(ac, b"free").unwrap().step, i);
    }
    assert_eq!(other.wait_for(5).len(), 5);
    gate.open();
    inbox.wait_for(2);
}

// ---- sizes, depths, resources, membership -----------------------------------------

#[test]
fn payload_too_large_is_refused_without_quarantine() {
    let config = {
        let mut c = cfg();
        c.max_payload_size = 10;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    assert_eq!(a.send(ch, &[1; 10]).unwrap().step, 0);
    let err = a.send(ch, &[1; 11]).unwrap_err();
    assert_eq!(err, Error::PayloadTooLarge { len: 11, max: 10 });
    assert_eq!(err.code(), Some(ErrorCode::PayloadTooLarge));
    assert_eq!(a.send(ch, &[0; 5000]), Err(Error::PayloadTooLarge { len: 5000, max: 10 }));
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    assert_eq!(rt.metrics().agent_quarantines.get(), 0);
    assert_eq!(a.send(ch, b"ok").unwrap().step, 1);
    assert_eq!(inbox.wait_for(2).len(), 2);
}

#[test]
fn max_payload_size_zero_means_no_configured_limit() {
    let config = {
        let mut c = cfg();
        c.max_payload_size = 0;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    let big = vec![7u8; 2 << 20];
    a.send(ch, &big).unwrap();
    assert_eq!(inbox.wait_for(1)[0].payload.len(), big.len());
}

#[test]
fn frame_depth_must_be_in_range() {
    let config = {
        let mut c = cfg();
        c.max_frame_depth = 8;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    for bad in [0, 1, 9, 300] {
        assert_eq!(
            rt.establish_channel_with_depth(&a.id(), &b.id(), bad),
            Err(Error::InvalidDepth { depth: bad, min: 2, max: 8 })
        );
    }
    assert_eq!(rt.channel_count(), 0);
    assert_eq!(a.state(), AgentState::Bound, "a refused channel must not activate the agent");
    let deep = rt.establish_channel_with_depth(&a.id(), &b.id(), 8).unwrap();
    let shallow = rt.establish_channel_with_depth(&a.id(), &b.id(), 2).unwrap();
    assert_eq!(rt.channel_info(&deep).unwrap().depth, 8);
    a.send(deep, b"deep").unwrap();
    a.send(shallow, b"shallow").unwrap();
    let mut got = inbox.wait_for(2).into_iter().map(|m| m.payload).collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, [b"deep".to_vec(), b"shallow".to_vec()]);

    // The default maximum is 32.
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    assert!(matches!(rt.establish_channel_with_depth(&a.id(), &b.id(), 33), Err(Error::InvalidDepth { .. })));
    assert!(rt.establish_channel_with_depth(&a.id(), &b.id(), 32).is_ok());
}

#[test]
fn max_channels_per_agent_is_enforced() {
    let config = {
        let mut c = cfg();
        c.max_channels_per_agent = 2;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let peers: Vec<AgentHandle> = (0..3).map(|_| rt.bind(|_, _| {}).unwrap()).collect();
    let c0 = rt.establish_channel(&a.id(), &peers[0].id()).unwrap();
    rt.establish_channel(&a.id(), &peers[1].id()).unwrap();
    let err = rt.establish_channel(&a.id(), &peers[2].id()).unwrap_err();
    assert_eq!(err, Error::ResourceLimit { what: "max_channels_per_agent", limit: 2 });
    assert_eq!(err.code(), Some(ErrorCode::ResourceLimitExceeded));
    // Either side hitting the limit refuses the channel.
    assert!(matches!(rt.establish_channel(&peers[2].id(), &a.id()), Err(Error::ResourceLimit { .. })));
    assert_eq!(rt.channel_count(), 2);
    assert_eq!(peers[2].state(), AgentState::Bound);
    // Closing one frees a slot.
    rt.close_channel(&c0).unwrap();
    rt.establish_channel(&a.id(), &peers[2].id()).unwrap();
    assert_eq!(a.status().unwrap().channel_count, 2);
}

#[test]
fn max_agents_is_enforced() {
    let config = {
        let mut c = cfg();
        c.max_agents = 2;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    rt.bind_named("b", |_, _| {}).unwrap();
    let err = rt.bind(|_, _| {}).unwrap_err();
    assert_eq!(err, Error::ResourceLimit { what: "max_agents", limit: 2 });
    assert_eq!(err.code(), Some(ErrorCode::ResourceLimitExceeded));
    assert!(matches!(rt.bind_async_fn(|_, _| async {}), Err(Error::ResourceLimit { .. })));
    assert_eq!(rt.agent_count(), 2);
    rt.unbind_agent(&a.id()).unwrap();
    rt.bind(|_, _| {}).unwrap();
    assert_eq!(rt.agent_count(), 2);
    assert_eq!(rt.agent_counter(), 3);
}

#[test]
fn duplicate_names_are_refused() {
    let rt = Runtime::new(cfg()).unwrap();
    let x = rt.bind_named("x", |_, _| {}).unwrap();
    assert_eq!(x.name(), Some("x"));
    assert!(matches!(rt.bind_named("x", |_, _| {}), Err(Error::DuplicateAgentName(n)) if n == "x"));
    // The name is free again once the agent is gone.
    rt.unbind_agent(&x.id()).unwrap();
    rt.bind_named("x", |_, _| {}).unwrap();
}

#[test]
fn senders_must_be_on_the_channel_and_the_channel_must_exist() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let (a, b, ch) = pair(&rt, &inbox);
    let c = rt.bind(|_, _| {}).unwrap();
    let d = rt.bind(|_, _| {}).unwrap();
    rt.establish_channel(&c.id(), &d.id()).unwrap();
    assert_eq!(a.send(ch, b"0").unwrap().step, 0);

    let err = c.send(ch, b"intruder").unwrap_err();
    assert!(matches!(err, Error::NotOnChannel { .. }), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::InvalidChannel));
    let err = a.send(ChannelId::from_bytes([9; 16]), b"x").unwrap_err();
    assert!(matches!(err, Error::UnknownChannel(_)), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::InvalidChannel));
    // An agent without channels is Bound and may not send.
    let lonely = rt.bind(|_, _| {}).unwrap();
    let err = lonely.send(ch, b"x").unwrap_err();
    assert!(matches!(err, Error::AgentState { state: AgentState::Bound, .. }), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Unbound));
    // Nothing moved.
    assert_eq!(b.send(ch, b"1").unwrap().step, 1);
    assert_eq!(inbox.wait_for(1).len(), 1);
}

// ---- the mailbox byte bound --------------------------------------------------------

fn byte_cfg(policy: Backpressure) -> RuntimeConfig {
    let mut c = cfg();
    c.mailbox_capacity = 1000;
    c.mailbox_max_bytes = 10_000;
    c.backpressure = policy;
    c.pipeline_timeout = Duration::from_millis(300);
    c.agent_timeout = Duration::from_secs(3);
    c
}

#[test]
fn the_mailbox_byte_bound_rejects_like_the_message_bound() {
    let rt = Runtime::new(byte_cfg(Backpressure::Reject)).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    // The handler holds the first 4,000 bytes; 4,000 more are queued: 8,000 of 10,000.
    assert_eq!(a.send(ch, &[0; 4000]).unwrap().step, 0);
    gate.wait_entered(1);
    assert_eq!(a.send(ch, &[1; 4000]).unwrap().step, 1);
    // Far below the message bound, but above the byte bound.
    assert_err!(a.send(ch, &[2; 4000]), Error::MailboxFull(_));
    assert_eq!(rt.metrics().mailbox_full.get(), 1);
    assert_eq!(b.status().unwrap().mailbox_len, 1);
    // What fits still goes.
    assert_eq!(a.send(ch, &[3; 2000]).unwrap().step, 2);

    gate.open();
    inbox.wait_for(3);
    assert!(rt.wait_idle(common::WAIT));
    // Handled messages return their bytes.
    assert_eq!(a.send(ch, &[4; 9000]).unwrap().step, 3);
    let got = inbox.wait_for(4);
    assert_eq!(got.iter().map(|m| m.payload.len()).collect::<Vec<_>>(), [4000, 4000, 2000, 9000]);
}

#[test]
fn the_mailbox_byte_bound_makes_senders_wait_and_lets_one_oversized_message_through() {
    let rt = Runtime::new({
        let mut c = byte_cfg(Backpressure::Wait);
        c.max_payload_size = 50_000;
        c
    })
    .unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    // Larger than the whole bound: accepted when the mailbox is empty (it takes it all).
    assert_eq!(a.send(ch, &[0; 30_000]).unwrap().step, 0);
    gate.wait_entered(1);
    // Nothing else fits while it is being handled: the sender waits out pipeline_timeout.
    assert_err!(a.send(ch, &[1; 10]), Error::MailboxFull(_));
    // A waiting sender goes through once the handler returns the bytes.
    let sender = {
        let a = a.clone();
        thread::spawn(move || a.send(ch, &[2; 10]))
    };
    gate.open();
    assert_eq!(sender.join().unwrap().unwrap().step, 1);
    let got = inbox.wait_for(2);
    assert_eq!(got.iter().map(|m| m.payload.len()).collect::<Vec<_>>(), [30_000, 10]);
}

/// An idempotency key is remembered for `dedup_ttl` on the runtime's clock: a retry just
/// inside it returns the first receipt, one at the limit is a new message.
#[test]
fn idempotency_keys_expire_after_the_ttl_on_a_virtual_clock() {
    let clock = ManualClock::new();
    let config = {
        let mut c = cfg();
        c.dedup_ttl = Duration::from_secs(300);
        c.max_message_rate = 0;
        c
    };
    let rt = Runtime::builder(config).clock(clock.clone()).build().unwrap();
    let inbox = Inbox::new();
    let (a, _b, ch) = pair(&rt, &inbox);
    let key = mfp_runtime::SendOptions::idempotent(b"k".to_vec());
    let first = a.send_with(ch, b"x", &key).unwrap();
    clock.advance(Duration::from_secs(299));
    assert_eq!(a.send_with(ch, b"x", &key).unwrap(), first);
    clock.advance(Duration::from_secs(1));
    let again = a.send_with(ch, b"x", &key).unwrap();
    assert_ne!(again.message_id, first.message_id);
    assert_eq!(again.step, 1);
    assert_eq!(inbox.wait_for(2).len(), 2);
}
