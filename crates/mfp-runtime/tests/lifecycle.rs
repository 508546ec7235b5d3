#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Agent lifecycle: Bound ⇄ Active with channels, quarantine and restore (including which
//! channels a restore lifts), unbind versus terminate, and the permission rules of the
//! three agent tools (send, status, channels).

#[macro_use]
mod common;

use std::thread;
use std::time::Duration;

use common::{Gate, Inbox, WAIT, cfg, gated_pair};
use mfp_runtime::{AgentState, ChannelStatus, Error, Runtime, RuntimeConfig, mfp_channels, mfp_status, unbind};

#[test]
fn bound_becomes_active_with_the_first_channel_and_bound_again_after_the_last() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let c = rt.bind(|_, _| {}).unwrap();
    assert_eq!(a.state(), AgentState::Bound);
    let st = mfp_status(&a).unwrap();
    assert_eq!((st.agent_id, st.state, st.channel_count, st.messages_sent), (a.id(), AgentState::Bound, 0, 0));
    assert_err!(mfp_channels(&a), Error::AgentState { state: AgentState::Bound, .. });
    assert_eq!(a.channels().unwrap_err().code().unwrap().as_str(), "unbound");

    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    assert_eq!((a.state(), b.state(), c.state()), (AgentState::Active, AgentState::Active, AgentState::Bound));
    let chans = a.channels().unwrap();
    assert_eq!(chans.len(), 1);
    assert_eq!(chans[0].channel_id, ab);
    assert_eq!(chans[0].peer, b.id());
    assert_eq!(chans[0].status, ChannelStatus::Active);
    assert_eq!(chans[0].depth, RuntimeConfig::default().default_frame_depth);
    assert_eq!(b.channels().unwrap()[0].peer, a.id());
    let (x, y) = rt.channel_agents(&ab).unwrap();
    assert!(x < y);
    assert!([x, y].contains(&a.id()) && [x, y].contains(&b.id()));

    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    assert_eq!(a.status().unwrap().channel_count, 2);
    assert_eq!(c.state(), AgentState::Active);

    rt.close_channel(&ab).unwrap();
    assert_eq!(a.state(), AgentState::Active, "a still has a channel");
    assert_eq!(b.state(), AgentState::Bound);
    assert_err!(b.send(ab, b"x"), Error::AgentState { state: AgentState::Bound, .. });
    // A closed channel is remembered: using it again says it is closed (pymfp's
    // `channel_closed`), not that it does not exist.
    assert_err!(a.send(ab, b"x"), Error::ChannelClosed(_));
    assert_eq!(a.send(ab, b"x").unwrap_err().code().unwrap().as_str(), "channel_closed");
    assert_err!(rt.close_channel(&ab), Error::ChannelClosed(_));
    assert_err!(rt.quarantine_channel(&ab, "x"), Error::ChannelClosed(_));
    assert_err!(rt.restore_channel(&ab), Error::ChannelClosed(_));
    assert_err!(rt.close_channel(&mfp_runtime::ChannelId::from_bytes([7; 16])), Error::UnknownChannel(_));

    rt.close_channel(&ac).unwrap();
    assert_eq!((a.state(), c.state()), (AgentState::Bound, AgentState::Bound));
    assert_eq!(rt.channel_count(), 0);
    assert_eq!(a.status().unwrap().channel_count, 0);
    // A new channel reactivates.
    let again = rt.establish_channel(&a.id(), &b.id()).unwrap();
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(a.send(again, b"x").unwrap().step, 0);
}

#[test]
fn quarantine_blocks_tools_and_restore_resumes_the_channel_step() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, b"0").unwrap();
    a.send(ch, b"1").unwrap();

    rt.quarantine_agent(&a.id(), "manual review").unwrap();
    assert_eq!(a.state(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "manual review");
    assert_err!(a.status(), Error::AgentQuarantined(_));
    assert_err!(a.channels(), Error::AgentQuarantined(_));
    assert_err!(a.send(ch, b"x"), Error::AgentQuarantined(_));
    assert_err!(b.send(ch, b"x"), Error::ChannelQuarantined(_));
    assert_err!(b.send_and_wait(ch, b"x"), Error::ChannelQuarantined(_));
    assert_eq!(b.channels().unwrap()[0].status, ChannelStatus::Quarantined);
    // Quarantining again is a no-op.
    rt.quarantine_agent(&a.id(), "again").unwrap();
    assert_eq!(rt.metrics().agent_quarantines.get(), 1);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "manual review");
    // A quarantined agent cannot be unbound, nor get new channels.
    assert_err!(rt.unbind_agent(&a.id()), Error::AgentQuarantined(_));
    assert_err!(unbind(a.clone()), Error::AgentQuarantined(_));
    let c = rt.bind(|_, _| {}).unwrap();
    assert_err!(rt.establish_channel(&a.id(), &c.id()), Error::AgentQuarantined(_));
    assert_err!(rt.establish_channel(&c.id(), &a.id()), Error::AgentQuarantined(_));
    assert_eq!(c.state(), AgentState::Bound);
    // A channel of a quarantined agent cannot be restored on its own.
    assert_err!(rt.restore_channel(&ch), Error::AgentQuarantined(_));

    rt.restore_agent(&a.id()).unwrap();
    assert_eq!(a.state(), AgentState::Active);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "");
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    assert_eq!(a.send(ch, b"2").unwrap().step, 2);
    assert_eq!(b.send(ch, b"3").unwrap().step, 3);
    assert_eq!(a.status().unwrap().messages_sent, 3);
    assert_eq!(inbox.wait_for(3).iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);

    // Restoring a non-quarantined agent is refused.
    assert_err!(rt.restore_agent(&a.id()), Error::AgentState { state: AgentState::Active, .. });
    assert_err!(rt.restore_agent(&c.id()), Error::AgentState { state: AgentState::Bound, .. });
}

#[test]
fn restoring_an_agent_without_channels_makes_it_bound() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    rt.quarantine_agent(&a.id(), "precaution").unwrap();
    assert_eq!(a.state(), AgentState::Quarantined);
    assert_err!(a.status(), Error::AgentQuarantined(_));
    rt.restore_agent(&a.id()).unwrap();
    assert_eq!(a.state(), AgentState::Bound);
    assert_eq!(a.status().unwrap().state, AgentState::Bound);
}

#[test]
fn restore_lifts_only_the_quarantines_the_agent_caused() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let c = rt.bind(|_, _| {}).unwrap();
    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();

    // ab quarantined by the operator first, then a (which takes ac with it), then b too.
    rt.quarantine_channel(&ab, "operator").unwrap();
    rt.quarantine_agent(&a.id(), "a").unwrap();
    rt.quarantine_agent(&b.id(), "b").unwrap();
    assert_eq!(rt.channel_info(&ac).unwrap().status, ChannelStatus::Quarantined);

    rt.restore_agent(&a.id()).unwrap();
    // ac was quarantined because of a: lifted. ab was quarantined by the operator: kept.
    assert_eq!(rt.channel_info(&ac).unwrap().status, ChannelStatus::Active);
    assert_eq!(rt.channel_info(&ab).unwrap().status, ChannelStatus::Quarantined);
    assert_eq!(a.send(ac, b"x").unwrap().step, 0);
    assert_err!(a.send(ab, b"x"), Error::ChannelQuarantined(_));
    rt.restore_agent(&b.id()).unwrap();
    assert_eq!(rt.channel_info(&ab).unwrap().status, ChannelStatus::Quarantined);
    rt.restore_channel(&ab).unwrap();
    assert_eq!(b.send(ab, b"x").unwrap().step, 0);
}

#[test]
fn a_channel_between_two_quarantined_agents_reopens_when_both_are_restored() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, b"x").unwrap();
    for first_restored in [0, 1] {
        rt.quarantine_agent(&a.id(), "a").unwrap();
        rt.quarantine_agent(&b.id(), "b").unwrap();
        let (first, second) = if first_restored == 0 { (&a, &b) } else { (&b, &a) };
        rt.restore_agent(&first.id()).unwrap();
        assert_eq!(first.state(), AgentState::Active);
        assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined, "peer still quarantined");
        assert_err!(first.send(ch, b"x"), Error::ChannelQuarantined(_));
        rt.restore_agent(&second.id()).unwrap();
        assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
        first.send(ch, b"x").unwrap();
    }
    assert_eq!(a.send(ch, b"x").unwrap().step, 3);
}

#[test]
fn a_quarantined_agent_must_be_terminated_not_unbound() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    rt.quarantine_agent(&a.id(), "bad").unwrap();
    assert_err!(rt.unbind_agent(&a.id()), Error::AgentQuarantined(_));
    assert_eq!(rt.agent_count(), 2);

    rt.terminate_agent(&a.id()).unwrap();
    assert_eq!(a.state(), AgentState::Terminated);
    assert_eq!(rt.agent_count(), 1);
    assert_eq!(rt.channel_count(), 0);
    assert_eq!(b.state(), AgentState::Bound, "b lost its only channel");
    assert_err!(a.send(ch, b"x"), Error::AgentNotBound(_));
    assert_err!(a.status(), Error::AgentNotBound(_));
    assert_err!(a.channels(), Error::AgentNotBound(_));
    assert_err!(rt.agent_state(&a.id()), Error::AgentNotBound(_));
    assert_err!(rt.terminate_agent(&a.id()), Error::AgentNotBound(_));
    assert_err!(rt.restore_agent(&a.id()), Error::AgentNotBound(_));
    assert_err!(rt.quarantine_agent(&a.id(), "x"), Error::AgentNotBound(_));
}

#[test]
fn sends_after_unbind_fail_and_the_peer_falls_back_to_bound() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind_named("a", |_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    unbind(a.clone()).unwrap();
    assert_eq!(a.state(), AgentState::Terminated);
    assert_err!(a.send(ch, b"x"), Error::AgentNotBound(_));
    assert_eq!(a.send(ch, b"x").unwrap_err().code().unwrap().as_str(), "unbound");
    assert_err!(a.status(), Error::AgentNotBound(_));
    assert_eq!(b.state(), AgentState::Bound);
    assert_err!(b.send(ch, b"x"), Error::AgentState { state: AgentState::Bound, .. });
    assert!(matches!(rt.agent_by_name("a"), Err(Error::UnknownAgentName(_))));
    assert_err!(rt.unbind_agent(&a.id()), Error::AgentNotBound(_));
    assert_err!(rt.establish_channel(&a.id(), &b.id()), Error::AgentNotBound(_));
}

#[test]
fn unbind_delivers_what_is_queued() {
    let rt = Runtime::new({
        let mut c = cfg();
        c.agent_timeout = Duration::from_secs(3);
        c
    })
    .unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    for p in [b"m0", b"m1", b"m2"] {
        a.send(ch, p).unwrap();
    }
    gate.wait_entered(1);
    rt.unbind_agent(&b.id()).unwrap();
    assert_err!(a.send(ch, b"late"), Error::AgentState { state: AgentState::Bound, .. });
    gate.open();
    let got = inbox.wait_for(3);
    assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), [b"m0", b"m1", b"m2"]);
    assert!(rt.wait_idle(WAIT));
    assert_eq!(rt.in_flight(), 0);
}

#[test]
fn terminate_drops_what_is_queued_and_waiting_senders_learn_it() {
    let rt = Runtime::new({
        let mut c = cfg();
        c.agent_timeout = Duration::from_secs(3);
        c
    })
    .unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"m0").unwrap();
    gate.wait_entered(1);
    a.send(ch, b"m1").unwrap();
    let waiter = {
        let a = a.clone();
        thread::spawn(move || a.send_and_wait(ch, b"m2"))
    };
    // Wait until m2 is queued behind m1.
    let deadline = std::time::Instant::now() + WAIT;
    while b.status().unwrap().mailbox_len < 2 {
        assert!(std::time::Instant::now() < deadline, "m2 never queued");
        thread::sleep(Duration::from_millis(2));
    }
    rt.terminate_agent(&b.id()).unwrap();
    gate.open();
    assert_err!(waiter.join().unwrap(), Error::AgentNotBound(_));
    assert!(rt.wait_idle(WAIT));
    // Only the message already being handled got through. (Terminate accounts for a
    // running handler's message without waiting for the handler, so `wait_idle` may return
    // before that handler finished: wait for its one message first.)
    inbox.wait_for(1);
    assert!(rt.wait_idle(WAIT));
    assert_eq!(inbox.payloads(), [b"m0".to_vec()]);
    assert_eq!(rt.in_flight(), 0);
}

#[test]
fn a_quarantined_recipient_holds_its_mail_until_restored() {
    let rt = Runtime::new({
        let mut c = cfg();
        c.agent_timeout = Duration::from_secs(3);
        c
    })
    .unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send(ch, b"m0").unwrap();
    gate.wait_entered(1);
    a.send(ch, b"m1").unwrap();
    rt.quarantine_agent(&b.id(), "hold").unwrap();
    gate.open();
    inbox.wait_for(1);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(inbox.len(), 1, "a quarantined agent must not receive");
    assert_eq!(rt.in_flight(), 1);
    rt.restore_agent(&b.id()).unwrap();
    assert_eq!(inbox.wait_for(2)[1].payload, b"m1");
    assert!(rt.wait_idle(WAIT));
}

#[test]
fn handles_can_be_looked_up() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind_named("alice", |_, _| {}).unwrap();
    let inbox = Inbox::new();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let again = rt.agent_by_name("alice").unwrap();
    assert_eq!(again.id(), a.id());
    assert_eq!(again.name(), Some("alice"));
    assert_eq!(rt.agent(&b.id()).unwrap().name(), None);
    again.send(ch, b"via lookup").unwrap();
    assert_eq!(inbox.wait_for(1)[0].sender, a.id());
    assert!(format!("{again:?}").contains("alice"));
}
