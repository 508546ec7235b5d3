#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The send pipeline end to end: the quickstart flow, receipts versus delivered messages,
//! idempotency keys, operator channel quarantine, and reproducibility with a deterministic
//! entropy source.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Inbox, WAIT, cfg, counter_entropy};
use mfp_core::EntropySource;
use mfp_runtime::{
    AgentId, ChannelId, ChannelStatus, DeliveredMessage, Error, ErrorCode, Receipt, Runtime, RuntimeId, SendOptions,
    mfp_send,
};

#[test]
fn quickstart_flow_delivers_everything_with_matching_ids() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let alice = rt.bind_named("alice", |_, _| {}).unwrap();
    // A slow handler, so messages are still queued when shutdown starts.
    let record = inbox.clone();
    let bob = rt
        .bind_named("bob", move |_, m| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            record.push(m);
        })
        .unwrap();
    let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
    assert_eq!(rt.agent_by_name("bob").unwrap().id(), bob.id());

    let payloads: Vec<Vec<u8>> = (0..3).map(|i| format!("Hello #{i} from Alice").into_bytes()).collect();
    let receipts: Vec<Receipt> = payloads.iter().map(|p| mfp_send(&alice, ch, p).unwrap()).collect();

    assert_eq!(receipts.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(receipts.iter().all(|r| r.channel == ch));
    assert_ne!(receipts[0].message_id, receipts[1].message_id);
    assert_ne!(receipts[1].message_id, receipts[2].message_id);
    assert_ne!(receipts[0].correlation_id, receipts[1].correlation_id);
    assert_eq!(receipts[0].correlation_id.to_string().len(), 16);

    // Shutdown (without waiting first) delivers what is queued.
    assert!(inbox.len() < 3, "the slow handler should not have finished yet");
    rt.shutdown();
    let got = inbox.all();
    assert_eq!(got.len(), 3, "shutdown must deliver every queued message");
    for ((m, r), p) in got.iter().zip(&receipts).zip(&payloads) {
        assert_eq!(&m.payload, p);
        assert_eq!(m.sender, alice.id());
        assert_eq!(m.channel, ch);
        assert_eq!(m.message_id, r.message_id);
        assert_eq!(m.correlation_id, r.correlation_id);
        assert_eq!(m.step, r.step);
    }
    // After shutdown: everything is gone and sends are refused.
    assert_eq!(rt.channel_count(), 0);
    assert_eq!(rt.agent_count(), 0);
    assert_eq!(alice.send(ch, b"late"), Err(Error::ShutDown));
    assert!(rt.bind(|_, _| {}).is_err());
}

#[test]
fn steps_are_per_channel_and_per_direction_shared() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let c = rt.bind(|_, _| {}).unwrap();
    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    assert_ne!(ab, ac);
    assert_eq!(a.send(ab, b"1").unwrap().step, 0);
    assert_eq!(a.send(ab, b"2").unwrap().step, 1);
    // A fresh channel starts at 0.
    assert_eq!(a.send(ac, b"1").unwrap().step, 0);
    // Both directions of one channel share its step counter.
    assert_eq!(b.send(ab, b"3").unwrap().step, 2);
    assert_eq!(a.send(ab, b"4").unwrap().step, 3);
    let status = a.status().unwrap();
    assert_eq!(status.messages_sent, 4);
    assert_eq!(status.channel_count, 2);
    assert_eq!(rt.metrics().messages_sent.get(), 5);
}

#[test]
fn empty_and_binary_payloads_round_trip() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel_with_depth(&a.id(), &b.id(), 2).unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    a.send(ch, b"").unwrap();
    a.send(ch, &binary).unwrap();
    let got = inbox.wait_for(2);
    assert_eq!(got[0].payload, b"");
    assert_eq!(got[1].payload, binary);
    assert_eq!(rt.channel_info(&ch).unwrap().depth, 2);
}

#[test]
fn send_and_wait_returns_after_the_handler_ran() {
    let rt = Runtime::new(cfg()).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt
        .bind(move |_, _| {
            std::thread::sleep(std::time::Duration::from_millis(30));
            flag.store(true, Ordering::SeqCst);
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let r = a.send_and_wait(ch, b"x").unwrap();
    assert!(ran.load(Ordering::SeqCst), "send_and_wait returned before the handler finished");
    assert_eq!(r.step, 0);
    assert_eq!(rt.metrics().messages_delivered.get(), 1);
}

// ---- idempotency -------------------------------------------------------------------

#[test]
fn idempotent_retry_returns_the_same_receipt_and_delivers_once() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let opts = SendOptions::idempotent("order-42");

    let first = a.send_with(ch, b"pay 10", &opts).unwrap();
    let retry = a.send_with(ch, b"pay 10", &opts).unwrap();
    let retry2 = a.send_with(ch, b"pay 10", &opts).unwrap();
    assert_eq!(first, retry);
    assert_eq!(first, retry2);
    assert_eq!(rt.metrics().duplicates_suppressed.get(), 2);

    // The channel moved once: the next send gets step 1.
    let next = a.send(ch, b"other").unwrap();
    assert_eq!(next.step, 1);
    let got = inbox.wait_for(2);
    assert!(rt.wait_idle(WAIT));
    let got_all = inbox.all();
    assert_eq!(got_all.len(), 2, "the retried message must be delivered exactly once");
    assert_eq!(got[0].payload, b"pay 10");
    assert_eq!(got[0].message_id, first.message_id);
    assert_eq!(got[1].payload, b"other");
    assert_eq!(a.status().unwrap().messages_sent, 2);
}

#[test]
fn idempotency_key_with_a_different_payload_conflicts() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let opts = SendOptions::idempotent(b"k1".to_vec());
    let r = a.send_with(ch, b"pay 10", &opts).unwrap();
    assert_eq!(a.send_with(ch, b"pay 99", &opts), Err(Error::IdempotencyConflict));
    // The conflict moved no state.
    assert_eq!(a.send(ch, b"after").unwrap().step, r.step + 1);
    // A different key is a different message.
    let r2 = a.send_with(ch, b"pay 10", &SendOptions::idempotent("k2")).unwrap();
    assert_ne!(r2.message_id, r.message_id);
    assert_eq!(r2.step, 2);
    inbox.wait_for(3);
    assert!(rt.wait_idle(WAIT));
    assert_eq!(inbox.payloads(), [b"pay 10".to_vec(), b"after".to_vec(), b"pay 10".to_vec()]);
}

#[test]
fn without_a_key_a_retry_is_delivered_twice() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let r1 = a.send(ch, b"pay 10").unwrap();
    let r2 = a.send_with(ch, b"pay 10", &SendOptions::default()).unwrap();
    assert_ne!(r1.message_id, r2.message_id);
    assert_eq!((r1.step, r2.step), (0, 1));
    let got = inbox.wait_for(2);
    assert_eq!(got[0].payload, got[1].payload);
    assert_eq!(rt.metrics().duplicates_suppressed.get(), 0);
}

#[test]
fn idempotency_keys_are_scoped_to_sender_and_channel() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox_a = Inbox::new();
    let inbox_b = Inbox::new();
    let inbox_c = Inbox::new();
    let a = rt.bind(inbox_a.handler()).unwrap();
    let b = rt.bind(inbox_b.handler()).unwrap();
    let c = rt.bind(inbox_c.handler()).unwrap();
    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    let opts = SendOptions::idempotent("same-key");
    let r1 = a.send_with(ab, b"x", &opts).unwrap();
    // Same key from the other end of the channel: a new message.
    let r2 = b.send_with(ab, b"x", &opts).unwrap();
    // Same key on another channel: a new message.
    let r3 = a.send_with(ac, b"x", &opts).unwrap();
    assert_ne!(r1.message_id, r2.message_id);
    assert_ne!(r1.message_id, r3.message_id);
    assert_eq!((r1.step, r2.step, r3.step), (0, 1, 0));
    inbox_a.wait_for(1);
    inbox_b.wait_for(1);
    inbox_c.wait_for(1);
    assert_eq!(rt.metrics().duplicates_suppressed.get(), 0);
}

#[test]
fn idempotency_window_forgets_old_keys() {
    let rt = Runtime::new({
        let mut c = cfg();
        c.dedup_window = 2;
        c
    })
    .unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let r1 = a.send_with(ch, b"1", &SendOptions::idempotent("k1")).unwrap();
    a.send_with(ch, b"2", &SendOptions::idempotent("k2")).unwrap();
    // k1 is still remembered.
    assert_eq!(a.send_with(ch, b"1", &SendOptions::idempotent("k1")).unwrap(), r1);
    a.send_with(ch, b"3", &SendOptions::idempotent("k3")).unwrap();
    // The window holds two keys: k1 was evicted, so the retry is a new message.
    let again = a.send_with(ch, b"1", &SendOptions::idempotent("k1")).unwrap();
    assert_ne!(again.message_id, r1.message_id);
    assert_eq!(again.step, 3);
    inbox.wait_for(4);
}

// ---- operator channel quarantine ---------------------------------------------------

#[test]
fn quarantined_channel_refuses_sends_and_resumes_at_the_same_step() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    assert_eq!(a.send(ch, b"0").unwrap().step, 0);
    assert_eq!(a.send(ch, b"1").unwrap().step, 1);

    rt.quarantine_channel(&ch, "operator says so").unwrap();
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);
    let err = a.send(ch, b"blocked").unwrap_err();
    assert!(matches!(err, Error::ChannelQuarantined(_)), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::ChannelQuarantined));
    assert_eq!(err.code().unwrap().as_str(), "channel_quarantined");
    // The other direction is blocked too, but neither agent is quarantined.
    assert_err!(b.send(ch, b"blocked"), Error::ChannelQuarantined(_));
    assert_eq!(a.state(), mfp_runtime::AgentState::Active);
    assert_eq!(b.state(), mfp_runtime::AgentState::Active);
    assert_eq!(a.channels().unwrap()[0].status, ChannelStatus::Quarantined);
    assert_err!(rt.quarantine_channel(&ch, "again"), Error::ChannelState { status: ChannelStatus::Quarantined, .. });
    assert_eq!(rt.metrics().channel_quarantines.get(), 1);

    rt.restore_channel(&ch).unwrap();
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    assert_eq!(a.send(ch, b"2").unwrap().step, 2);
    assert_eq!(b.send(ch, b"back").unwrap().step, 3);
    assert_err!(rt.restore_channel(&ch), Error::ChannelState { status: ChannelStatus::Active, .. });

    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(got[2].payload, b"2");
}

#[test]
fn unknown_channel_operations_fail() {
    let rt = Runtime::new(cfg()).unwrap();
    let bogus = ChannelId::from_bytes([0xee; 16]);
    assert_err!(rt.quarantine_channel(&bogus, "x"), Error::UnknownChannel(_));
    assert_err!(rt.restore_channel(&bogus), Error::UnknownChannel(_));
    assert_err!(rt.close_channel(&bogus), Error::UnknownChannel(_));
    assert!(matches!(rt.channel_info(&bogus), Err(Error::UnknownChannel(_))));
    let ghost = AgentId::from_bytes([0xaa; 32]);
    assert_err!(rt.quarantine_agent(&ghost, "x"), Error::AgentNotBound(_));
    assert!(matches!(rt.agent(&ghost), Err(Error::AgentNotBound(_))));
    assert!(matches!(rt.agent_by_name("nobody"), Err(Error::UnknownAgentName(n)) if n == "nobody"));
}

// ---- determinism -------------------------------------------------------------------

struct Trace {
    identity: RuntimeId,
    agents: (AgentId, AgentId),
    channel: ChannelId,
    receipts: Vec<Receipt>,
    delivered: Vec<DeliveredMessage>,
}

fn traced_run(seed: u64) -> Trace {
    let config = {
        let mut c = cfg();
        c.identity = Some(RuntimeId::from_bytes([0x42; 32]));
        c
    };
    let rt = Runtime::builder(config).entropy(counter_entropy(seed)).build().unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..5u8 {
        receipts.push(a.send(ch, &[i; 40]).unwrap());
        receipts.push(b.send(ch, &[i]).unwrap());
    }
    let delivered = inbox.wait_for(5);
    Trace { identity: rt.identity(), agents: (a.id(), b.id()), channel: ch, receipts, delivered }
}

#[test]
fn deterministic_entropy_reproduces_ids_and_receipts() {
    let one = traced_run(7);
    let two = traced_run(7);
    let other = traced_run(8);

    let configured = RuntimeId::from_bytes([0x42; 32]);
    assert_eq!(one.identity, configured);
    assert_eq!(two.identity, configured);

    assert_eq!(one.agents, two.agents);
    assert_eq!(one.channel, two.channel);
    assert_eq!(one.receipts, two.receipts);
    assert_eq!(one.delivered, two.delivered);
    assert_eq!(one.receipts.iter().map(|r| r.step).collect::<Vec<_>>(), (0..10).collect::<Vec<u64>>());

    // Agent ids follow SHA256(runtime ‖ u64be(counter) ‖ suffix) with the suffix drawn first
    // from the entropy source, and the channel id is the next 16 bytes drawn.
    let mut replay = counter_entropy(7);
    let mut s1 = [0u8; 8];
    let mut s2 = [0u8; 8];
    let mut cid = [0u8; 16];
    replay.fill(&mut s1).unwrap();
    replay.fill(&mut s2).unwrap();
    replay.fill(&mut cid).unwrap();
    assert_eq!(one.agents.0, AgentId::derive(&configured, 1, &s1));
    assert_eq!(one.agents.1, AgentId::derive(&configured, 2, &s2));
    assert_eq!(one.channel, ChannelId::from_bytes(cid));

    // Another seed gives other ids: the source is really used.
    assert_ne!(one.agents, other.agents);
    assert_ne!(one.channel, other.channel);
    assert_ne!(one.receipts[0].message_id, other.receipts[0].message_id);
    assert_ne!(one.receipts[0].correlation_id, other.receipts[0].correlation_id);
}

#[test]
fn identity_comes_from_deployment_and_instance_ids() {
    let config = {
        let mut c = cfg();
        c.deployment_id = b"prod".to_vec();
        c.instance_id = b"node-1".to_vec();
        c
    };
    let rt = Runtime::new(config).unwrap();
    assert_eq!(rt.identity(), RuntimeId::derive(b"prod", b"node-1"));
    assert_eq!(rt.protocol_version(), 1);
    // Without ids, identities are random.
    let r1 = Runtime::new(cfg()).unwrap();
    let r2 = Runtime::new(cfg()).unwrap();
    assert_ne!(r1.identity(), r2.identity());
}

#[test]
fn invalid_configuration_is_refused() {
    let bad = {
        let mut c = cfg();
        c.mailbox_capacity = 0;
        c
    };
    match Runtime::new(bad) {
        Err(Error::Config(e)) => assert_eq!(e.field, "mailbox_capacity"),
        other => panic!("expected a config error, got {other:?}"),
    }
}
