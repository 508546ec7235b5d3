#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Hooks and audit: a `before_send` hook that refuses moves no state, `after_send` sees
//! every committed receipt, `on_delivery_failure` hears of panics and timeouts, and an
//! audit sink gets the lifecycle and message events — never the payload.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Inbox, WAIT, cfg};
use mfp_runtime::audit::{AuditEvent, AuditEventType, AuditSink};
use mfp_runtime::hooks::{DeliveryFailure, Hooks, SendContext};
use mfp_runtime::{AgentId, ChannelId, Error, MessageId, Receipt, Runtime};

#[derive(Default)]
struct Seen {
    before: Vec<(AgentId, AgentId, ChannelId, Vec<u8>)>,
    after: Vec<Receipt>,
    failures: Vec<(AgentId, MessageId, DeliveryFailure)>,
}

#[derive(Clone, Default)]
struct Guard(Arc<Mutex<Seen>>);

impl Hooks for Guard {
    fn before_send(&self, ctx: &SendContext<'_>) -> Result<(), String> {
        self.0.lock().unwrap().before.push((ctx.sender, ctx.recipient, ctx.channel, ctx.payload.to_vec()));
        if ctx.payload.windows(9).any(|w| w == b"forbidden") { Err("contains a forbidden word".into()) } else { Ok(()) }
    }

    fn after_send(&self, _ctx: &SendContext<'_>, receipt: &Receipt) {
        self.0.lock().unwrap().after.push(*receipt);
    }

    fn on_delivery_failure(&self, agent: AgentId, message_id: MessageId, failure: DeliveryFailure) {
        self.0.lock().unwrap().failures.push((agent, message_id, failure));
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Collect {
    fn record(&self, event: &AuditEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Collect {
    fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn before_send_can_refuse_and_after_send_sees_every_receipt() {
    let guard = Guard::default();
    let rt = Runtime::builder(cfg()).hooks(guard.clone()).build().unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();

    let r0 = a.send(ch, b"hello").unwrap();
    let err = a.send(ch, b"this is forbidden text").unwrap_err();
    assert_eq!(err, Error::HookRejected("contains a forbidden word".into()));
    assert_eq!(err.code(), None);
    assert!(!err.to_string().contains("this is"), "error text must not echo the payload");
    let r1 = b.send(ch, b"reply").unwrap();
    let r2 = a.send(ch, b"hello again").unwrap();
    // The refused send moved no state.
    assert_eq!((r0.step, r1.step, r2.step), (0, 1, 2));
    assert_eq!(a.status().unwrap().messages_sent, 2);
    assert_eq!(rt.metrics().messages_sent.get(), 3);

    let seen = guard.0.lock().unwrap();
    assert_eq!(seen.after, [r0, r1, r2]);
    assert_eq!(seen.before.len(), 4);
    assert_eq!(seen.before[0], (a.id(), b.id(), ch, b"hello".to_vec()));
    assert_eq!(seen.before[2], (b.id(), a.id(), ch, b"reply".to_vec()));
    drop(seen);
    let got = inbox.wait_for(2);
    assert_eq!(got[0].payload, b"hello");
    assert_eq!(got[1].payload, b"hello again");
    assert!(rt.wait_idle(WAIT));
    assert_eq!(inbox.len(), 2);
}

#[test]
fn on_delivery_failure_hears_of_panics_and_timeouts() {
    common::quiet_intentional_panics();
    let guard = Guard::default();
    let config = {
        let mut c = cfg();
        c.agent_timeout = Duration::from_millis(100);
        c
    };
    let rt = Runtime::builder(config).hooks(guard.clone()).build().unwrap();
    let s = rt.bind(|_, _| {}).unwrap();
    let panicky = rt.bind(|_, _| panic!("handler exploded on purpose")).unwrap();
    let slow = rt.bind(|_, _| thread::sleep(Duration::from_millis(250))).unwrap();
    let slow_async = rt.bind_async_fn(|_, _| tokio::time::sleep(Duration::from_millis(300))).unwrap();
    let c1 = rt.establish_channel(&s.id(), &panicky.id()).unwrap();
    let c2 = rt.establish_channel(&s.id(), &slow.id()).unwrap();
    let c3 = rt.establish_channel(&s.id(), &slow_async.id()).unwrap();

    let r1 = s.send(c1, b"x").unwrap();
    let r2 = s.send(c2, b"x").unwrap();
    let r3 = s.send(c3, b"x").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while guard.0.lock().unwrap().failures.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "failures seen: {:?}", guard.0.lock().unwrap().failures);
        thread::sleep(Duration::from_millis(5));
    }
    let mut failures = guard.0.lock().unwrap().failures.clone();
    failures.sort_by_key(|f| f.1);
    let mut expected = vec![
        (panicky.id(), r1.message_id, DeliveryFailure::Panicked),
        (slow.id(), r2.message_id, DeliveryFailure::TimedOut),
        (slow_async.id(), r3.message_id, DeliveryFailure::TimedOut),
    ];
    expected.sort_by_key(|f| f.1);
    assert_eq!(failures, expected);
}

#[test]
fn audit_sink_gets_lifecycle_and_message_events_without_payloads() {
    const SECRET: &str = "TOPSECRET-PAYLOAD-7f3a";
    let sink = Collect::default();
    let rt = Runtime::builder(cfg()).audit_sink(sink.clone()).build().unwrap();
    let a = rt.bind_named("alice", |_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let r0 = a.send(ch, SECRET.as_bytes()).unwrap();
    let r1 = b.send(ch, SECRET.as_bytes()).unwrap();
    rt.quarantine_agent(&a.id(), "audit test").unwrap();
    rt.restore_agent(&a.id()).unwrap();
    rt.quarantine_channel(&ch, "channel check").unwrap();
    rt.restore_channel(&ch).unwrap();
    rt.close_channel(&ch).unwrap();
    rt.unbind_agent(&b.id()).unwrap();
    rt.terminate_agent(&a.id()).unwrap();

    let events = sink.events();
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "agent_bound",
            "agent_bound",
            "channel_established",
            "message_sent",
            "message_sent",
            "quarantine_agent",
            "restore_agent",
            "quarantine_channel",
            "restore_channel",
            "channel_closed",
            "agent_unbound",
            "agent_terminated",
        ]
    );
    assert_eq!(events[0].agent, Some(a.id()));
    assert_eq!(events[1].agent, Some(b.id()));
    let est = &events[2];
    assert_eq!(est.channel, Some(ch));
    let pair = [est.agent.unwrap(), est.peer.unwrap()];
    assert!(pair.contains(&a.id()) && pair.contains(&b.id()));
    for (ev, (r, who)) in events[3..5].iter().zip([(r0, a.id()), (r1, b.id())]) {
        assert_eq!(ev.channel, Some(ch));
        assert_eq!(ev.agent, Some(who));
        assert_eq!(ev.step, Some(r.step));
        assert_eq!(ev.correlation_id, Some(r.correlation_id));
    }
    assert_eq!(events[5].event_type, AuditEventType::QuarantineAgent);
    assert_eq!(events[5].agent, Some(a.id()));
    assert_eq!(events[5].reason.as_deref(), Some("audit test"));
    assert_eq!(events[7].reason.as_deref(), Some("channel check"));
    assert_eq!(events[9].channel, Some(ch));
    assert_eq!(events[10].agent, Some(b.id()));
    assert_eq!(events[11].agent, Some(a.id()));
    assert!(events.iter().all(|e| e.success));

    let hex_secret = SECRET.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for e in &events {
        let text = format!("{e:?}");
        assert!(!text.contains(SECRET), "payload leaked into {text}");
        assert!(!text.contains(&hex_secret[..16]), "payload (hex) leaked into {text}");
    }
}

#[test]
fn audit_records_delivery_failures_and_automatic_quarantines() {
    common::quiet_intentional_panics();
    let sink = Collect::default();
    let config = {
        let mut c = cfg();
        c.agent_timeout = Duration::from_millis(100);
        c.max_message_rate = 2;
        c
    };
    let rt = Runtime::builder(config).audit_sink(sink.clone()).build().unwrap();
    let s = rt.bind(|_, _| {}).unwrap();
    let panicky = rt.bind(|_, _| panic!("handler exploded on purpose")).unwrap();
    let slow = rt.bind(|_, _| thread::sleep(Duration::from_millis(250))).unwrap();
    let c1 = rt.establish_channel(&s.id(), &panicky.id()).unwrap();
    let c2 = rt.establish_channel(&s.id(), &slow.id()).unwrap();
    assert_eq!(s.send_and_wait(c1, b"x"), Err(Error::HandlerFailed));
    assert_eq!(s.send_and_wait(c2, b"x"), Err(Error::Timeout));
    // Third send in a second trips the rate limit (2).
    assert_err!(s.send(c1, b"x"), Error::AgentQuarantined(_));

    let events = sink.events();
    let failed: Vec<&AuditEvent> = events.iter().filter(|e| e.event_type == AuditEventType::DeliveryFailed).collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|e| !e.success));
    assert!(failed.iter().any(|e| e.agent == Some(panicky.id()) && e.reason.as_deref() == Some("handler panicked")));
    assert!(failed.iter().any(|e| e.agent == Some(slow.id()) && e.reason.as_deref() == Some("handler timed out")));
    let quarantines: Vec<(Option<AgentId>, Option<&str>)> = events
        .iter()
        .filter(|e| e.event_type == AuditEventType::QuarantineAgent)
        .map(|e| (e.agent, e.reason.as_deref()))
        .collect();
    assert_eq!(
        quarantines,
        [(Some(slow.id()), Some("Agent callable timeout")), (Some(s.id()), Some("Rate limit exceeded"))]
    );
}
