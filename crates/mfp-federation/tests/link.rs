//! Handshake refusals, replay, tampering and session behaviour between two in-memory
//! runtimes.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use mfp_core::{AgentId, ChannelId};
use mfp_federation::codec::{self, FrameKind};
use mfp_federation::control::RefuseReason;
use mfp_federation::handshake::{self, HandshakeError, Initiator, PeerTable};
use mfp_federation::session::{CloseReason, Event, LinkLimits, LinkState, SendError, Session, SessionConfig};

fn agents() -> (AgentId, AgentId) {
    (AgentId::from_bytes([0xa1; 32]), AgentId::from_bytes([0xb1; 32]))
}

#[test]
fn messages_flow_both_ways_and_are_acknowledged() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(7);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([1; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, now);
    assert_eq!(a.send(&alice, &ch, b"to bob").unwrap(), 0);
    assert_eq!(b.send(&bob, &ch, b"to alice").unwrap(), 0);
    settle(&mut a, &mut b, now);
    let ev_b = events(&mut b);
    assert!(ev_b.contains(&Event::Delivered { channel: ch, seq: 0, payload: b"to bob".to_vec() }), "{ev_b:?}");
    let ev_a = events(&mut a);
    assert!(ev_a.contains(&Event::Delivered { channel: ch, seq: 0, payload: b"to alice".to_vec() }), "{ev_a:?}");
    assert!(ev_a.contains(&Event::Acknowledged { upto: 1 }), "{ev_a:?}");
    let shown = format!("{ev_a:?}");
    assert!(shown.contains("payload_len: 8") && !shown.contains("116, 111"), "{shown}");
    assert_eq!((a.link().unacked(), b.link().unacked()), (0, 0));
    // Only the channel's local agent may send on it.
    assert!(matches!(a.send(&bob, &ch, b"x"), Err(SendError::NotOwner { .. })));
    assert!(matches!(a.send(&alice, &ChannelId::from_bytes([9; 16]), b"x"), Err(SendError::NotOpen(_))));
}

#[test]
fn unknown_peer_is_refused_before_any_state() {
    let mut rt = Runtimes::new();
    let stranger = identity(b"stranger", 99);
    let mut e = TestEntropy(1);
    let (_, hs1) = Initiator::start(&stranger, rt.b.runtime, rt.b.key.public(), 0, ts(1), &mut e).unwrap();
    let before = format!("{:?}", rt.b_peers);
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::UnknownPeer(_)), "{err}");
    assert_eq!(format!("{:?}", rt.b_peers), before, "the peer table changed");
    assert!(err.to_string().contains("not a configured peer"), "{err}");
}

#[test]
fn wrong_pinned_keys_are_refused() {
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(2);
    // The initiator pins a key the responder does not hold: the responder cannot read message 1.
    let wrong = identity(b"other", 55).key.public();
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, wrong, 0, ts(1), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication(_)), "{err}");
    // The responder pins another key for A's runtime id than the one A holds.
    let mut peers = PeerTable::new();
    peers.pin(rt.a.runtime, wrong);
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(2), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::KeyMismatch(_)), "{err}");
    assert_eq!(peers.greatest_timestamp(&rt.a.runtime), None, "a refused handshake recorded a timestamp");
    // An impostor claiming A's runtime id with its own key.
    let mut impostor = identity(b"impostor", 77);
    impostor.runtime = rt.a.runtime;
    let (_, hs1) = Initiator::start(&impostor, rt.b.runtime, rt.b.key.public(), 0, ts(3), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::KeyMismatch(_)), "{err}");
}

#[test]
fn message_one_addressed_elsewhere_or_with_rewritten_ids_is_refused() {
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(3);
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(1), &mut e).unwrap();
    // Another runtime receives it.
    let mut c_peers = PeerTable::new();
    c_peers.pin(rt.a.runtime, rt.a.key.public());
    let c = identity(b"c", 3);
    let err = handshake::accept(&c, &mut c_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::WrongResponder(_)), "{err}");
    // The clear initiator id rewritten to another pinned peer: the prologue no longer matches.
    let other = identity(b"other-peer", 4);
    rt.b_peers.pin(other.runtime, rt.a.key.public());
    let mut frame = one_frame(&hs1);
    frame.body[..32].copy_from_slice(other.runtime.as_bytes());
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &frame, &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication(_)), "{err}");
}

#[test]
fn replayed_message_one_yields_no_second_session() {
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(4);
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(10), &mut e).unwrap();
    let frame = one_frame(&hs1);
    assert!(handshake::accept(&rt.b, &mut rt.b_peers, &frame, &mut e).is_ok());
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &frame, &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::Replayed(_)), "{err}");
    // An older timestamp is refused too; a newer one is accepted.
    let (_, old) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(9), &mut e).unwrap();
    assert!(matches!(
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&old), &mut e),
        Err(HandshakeError::Replayed(_))
    ));
    let (_, new) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(11), &mut e).unwrap();
    assert!(handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&new), &mut e).is_ok());
}

/// A recorded initiator stream (message 1 and transport frames) replayed to the
/// listener: refused at message 1; replayed to a listener that forgot its timestamps,
/// the transport frames fail authentication and nothing is delivered.
#[test]
fn replayed_link_stream_is_refused() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(5);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(1), &mut e).unwrap();
    let mut recorded = hs1.clone();
    let peers_before = rt.b_peers.clone();
    let (est_b, hs2) =
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap().finish(0, &mut e).unwrap();
    let est_a = init.complete(&one_frame(&hs2)).unwrap();
    let mut a = Session::new(est_a, la, SessionConfig::default(), now).map_err(|r| r.error).unwrap();
    let mut b = Session::new(est_b, lb, SessionConfig::default(), now).map_err(|r| r.error).unwrap();
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([2; 16]);
    a.open_channel(ch, alice, bob, 4).unwrap();
    while let Some(bytes) = a.poll_transmit(now) {
        recorded.extend_from_slice(&bytes);
        b.handle_input(now, &bytes);
    }
    b.accept_channel(&ch).unwrap();
    settle(&mut a, &mut b, now);
    a.send(&alice, &ch, b"once").unwrap();
    while let Some(bytes) = a.poll_transmit(now) {
        recorded.extend_from_slice(&bytes);
        b.handle_input(now, &bytes);
    }
    let delivered = events(&mut b).into_iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
    assert_eq!(delivered, 1);

    // The same listener: message 1 is a replay.
    let mut d = codec::Decoder::new(codec::MAX_BODY);
    let mut input = &recorded[..];
    let first = d.decode(&mut input).unwrap().unwrap();
    assert!(matches!(handshake::accept(&rt.b, &mut rt.b_peers, &first, &mut e), Err(HandshakeError::Replayed(_))));

    // A listener that lost its timestamps accepts message 1, but the rest of the stream
    // was encrypted for another ephemeral key: it fails and nothing is delivered.
    let mut forgetful = peers_before;
    let (est, _) = handshake::accept(&rt.b, &mut forgetful, &first, &mut e).unwrap().finish(0, &mut e).unwrap();
    let link = LinkState::new(rt.b.runtime, rt.a.runtime, LinkLimits::default());
    let mut replayed = Session::new(est, link, SessionConfig::default(), now).map_err(|r| r.error).unwrap();
    replayed.handle_input(now, input);
    let evs = events(&mut replayed);
    assert!(!evs.iter().any(|e| matches!(e, Event::Delivered { .. } | Event::ChannelRequested { .. })), "{evs:?}");
    assert_eq!(replayed.close_reason(), Some(&CloseReason::Tampered));
    assert_eq!(replayed.link().stats().tampered, 1);
}

#[test]
fn tampered_bytes_are_rejected_and_counted() {
    // Handshake messages.
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(6);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(1), &mut e).unwrap();
    let mut bad = one_frame(&hs1);
    let last = bad.body.len() - 1;
    bad.body[last] ^= 1;
    assert!(matches!(handshake::accept(&rt.b, &mut rt.b_peers, &bad, &mut e), Err(HandshakeError::Authentication(_))));
    let (_, hs2) =
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap().finish(0, &mut e).unwrap();
    let mut bad2 = one_frame(&hs2);
    bad2.body[40] ^= 0x80;
    assert!(matches!(init.complete(&bad2), Err(HandshakeError::Authentication(_))));

    // Every byte position of a transport frame carrying data.
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let (mut a, mut b) = connect(&mut rt, la, lb, 5, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([3; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, now);
    a.send(&alice, &ch, b"payload").unwrap();
    let frame = a.poll_transmit(now).unwrap();
    let positions: Vec<usize> =
        (0..codec::HEADER_LEN).chain((codec::HEADER_LEN..frame.len()).step_by(5)).chain([frame.len() - 1]).collect();
    let mut rejected = 0;
    for (i, &pos) in positions.iter().enumerate() {
        let (la, lb) = new_links(&rt);
        let (mut a2, mut b2) = connect(&mut rt, la, lb, 100 + i as u64, now, &mut e);
        open_channel(&mut a2, &mut b2, ch, alice, bob, now);
        a2.send(&alice, &ch, b"payload").unwrap();
        let mut f = a2.poll_transmit(now).unwrap();
        f[pos] ^= 0x01;
        b2.handle_input(now, &f);
        let evs = events(&mut b2);
        assert!(!evs.iter().any(|e| matches!(e, Event::Delivered { .. })), "byte {pos}: {evs:?}");
        let s = b2.link().stats();
        // A flipped header byte is a framing error or a short read; a body byte fails authentication.
        if pos >= codec::HEADER_LEN {
            assert_eq!(s.tampered, 1, "byte {pos}");
            assert!(b2.is_closed());
        }
        rejected += usize::from(s.tampered + s.malformed > 0 || !b2.is_closed());
    }
    assert_eq!(rejected, positions.len());
}

#[test]
fn handshake_frames_inside_a_session_close_it() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(8);
    let (_a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    b.handle_input(now, &codec::encode(FrameKind::HandshakeInit, &[0; 10]).unwrap());
    assert_eq!(b.close_reason(), Some(&CloseReason::UnexpectedFrame));
}

#[test]
fn channels_are_refused_closed_and_limited() {
    let mut rt = Runtimes::new();
    let la = LinkState::new(rt.a.runtime, rt.b.runtime, LinkLimits::default());
    let lb = LinkState::new(rt.b.runtime, rt.a.runtime, LinkLimits { max_channels: 1, ..LinkLimits::default() });
    let now = Instant::now();
    let mut e = TestEntropy(9);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let c1 = ChannelId::from_bytes([1; 16]);
    let c2 = ChannelId::from_bytes([2; 16]);
    let c3 = ChannelId::from_bytes([3; 16]);
    // Refused by the application.
    a.open_channel(c1, alice, bob, 4).unwrap();
    pump(&mut a, &mut b, now);
    events(&mut b);
    b.refuse_channel(&c1, RefuseReason::UnknownAgent).unwrap();
    settle(&mut a, &mut b, now);
    assert!(events(&mut a).contains(&Event::ChannelRefused(c1, RefuseReason::UnknownAgent)));
    assert!(a.link().channel(&c1).is_none());
    // Accepted, then the limit of one is reached.
    open_channel(&mut a, &mut b, c2, alice, bob, now);
    a.open_channel(c3, alice, bob, 4).unwrap();
    settle(&mut a, &mut b, now);
    assert!(events(&mut a).contains(&Event::ChannelRefused(c3, RefuseReason::LimitReached)));
    // A depth outside the limits.
    a.open_channel(c3, alice, bob, 1).unwrap_err();
    // Closing on one side closes on the other.
    assert!(b.close_channel(&c2));
    settle(&mut a, &mut b, now);
    assert!(events(&mut a).contains(&Event::ChannelClosed(c2)));
    assert!(a.link().channel(&c2).is_none());
    assert!(matches!(a.send(&alice, &c2, b"x"), Err(SendError::NotOpen(_))));
}

#[test]
fn backpressure_is_a_typed_error_and_clears_on_ack() {
    let mut rt = Runtimes::new();
    let limits = LinkLimits { max_unacked_messages: 3, max_unacked_bytes: 1 << 20, max_channels: 10 };
    let la = LinkState::new(rt.a.runtime, rt.b.runtime, limits);
    let lb = LinkState::new(rt.b.runtime, rt.a.runtime, limits);
    let now = Instant::now();
    let mut e = TestEntropy(10);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([4; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, now);
    for i in 0..3u8 {
        a.send(&alice, &ch, &[i]).unwrap();
    }
    assert!(matches!(a.send(&alice, &ch, b"x"), Err(SendError::Backpressure { messages: 3, .. })));
    settle(&mut a, &mut b, now);
    assert_eq!(a.link().unacked(), 0);
    assert_eq!(a.send(&alice, &ch, b"x").unwrap(), 3);
    let too_big = vec![0u8; mfp_federation::session::max_payload(4) + 1];
    assert!(matches!(a.send(&alice, &ch, &too_big), Err(SendError::TooLarge { .. })));
}

#[test]
fn transport_rekeys_by_time_and_count_and_rejects_stale_keys() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let t0 = Instant::now();
    let mut e = TestEntropy(11);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, t0, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([5; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, t0);
    // Keep both sides talking every 5 s for 10 minutes: rekeys happen, nothing breaks.
    for i in 0..120u64 {
        let now = t0 + Duration::from_secs(5 * (i + 1));
        for s in [&mut a, &mut b] {
            s.handle_timeout(now);
        }
        a.send(&alice, &ch, &i.to_be_bytes()).unwrap();
        settle(&mut a, &mut b, now);
    }
    assert!(!a.is_closed() && !b.is_closed(), "{:?} {:?}", a.close_reason(), b.close_reason());
    assert!(a.link().stats().rekeys >= 4 && b.link().stats().rekeys >= 4, "{:?}", a.link().stats());
    assert_eq!(b.link().received(), 120);

    // By count: a small limit rekeys every few messages.
    let (la, lb) = new_links(&rt);
    let cfg = SessionConfig { rekey_after_messages: 5, reject_after_messages: 7, ..SessionConfig::default() };
    let mut e2 = TestEntropy(12);
    let (est_a, est_b) = {
        let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(900), &mut e2).unwrap();
        let (eb, hs2) =
            handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e2).unwrap().finish(0, &mut e2).unwrap();
        (init.complete(&one_frame(&hs2)).unwrap(), eb)
    };
    let mut a = Session::new(est_a, la, cfg, t0).map_err(|r| r.error).unwrap();
    let mut b = Session::new(est_b, lb, cfg, t0).map_err(|r| r.error).unwrap();
    open_channel(&mut a, &mut b, ch, alice, bob, t0);
    for i in 0..50u64 {
        a.send(&alice, &ch, &i.to_be_bytes()).unwrap();
        settle(&mut a, &mut b, t0);
    }
    assert!(a.link().stats().rekeys >= 9, "{:?}", a.link().stats());
    assert_eq!(b.link().received(), 50);

    // A peer that never rekeys: its messages are refused after reject_after_time.
    let (la, lb) = new_links(&rt);
    let (mut a, mut b) = connect(&mut rt, la, lb, 2000, t0, &mut e);
    let later = t0 + Duration::from_secs(181);
    let ping = {
        // A frame sealed under the initial key, delivered late.
        a.handle_timeout(t0 + Duration::from_secs(11));
        a.poll_transmit(t0 + Duration::from_secs(11)).unwrap()
    };
    b.handle_input(later, &ping);
    assert_eq!(b.close_reason(), Some(&CloseReason::KeyExpired));
}

#[test]
fn idle_session_times_out_and_keepalive_prevents_it() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let t0 = Instant::now();
    let mut e = TestEntropy(13);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, t0, &mut e);
    // Driven by timers only, both stay up for five minutes.
    let mut now = t0;
    let end = t0 + Duration::from_secs(300);
    while now < end {
        let next = a.poll_timeout().into_iter().chain(b.poll_timeout()).min().unwrap();
        now = next.min(end);
        a.handle_timeout(now);
        b.handle_timeout(now);
        settle(&mut a, &mut b, now);
    }
    assert!(!a.is_closed() && !b.is_closed(), "{:?} {:?}", a.close_reason(), b.close_reason());
    // Without input, B times out.
    b.handle_timeout(now + Duration::from_secs(31));
    assert_eq!(b.close_reason(), Some(&CloseReason::IdleTimeout));
}

/// Both sides send at once, many times, over several sessions: no (key, nonce) pair of
/// the MFP layer repeats.
#[test]
fn simultaneous_sends_never_reuse_key_and_nonce() {
    let mut rt = Runtimes::new();
    let (mut la, mut lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(14);
    let (alice, bob) = agents();
    let chans: Vec<ChannelId> = (0..4u8).map(|i| ChannelId::from_bytes([i + 10; 16])).collect();
    for round in 0..3u64 {
        let (mut a, mut b) = connect(&mut rt, la, lb, 10 + round, now, &mut e);
        if round == 0 {
            for c in &chans {
                open_channel(&mut a, &mut b, *c, alice, bob, now);
            }
        }
        for i in 0..300u64 {
            let c = chans[(i % 4) as usize];
            a.send(&alice, &c, &i.to_be_bytes()).unwrap();
            b.send(&bob, &c, &i.to_be_bytes()).unwrap();
            // Both transmit before either receives.
            let fa = a.poll_transmit(now).unwrap();
            let fb = b.poll_transmit(now).unwrap();
            b.handle_input(now, &fa);
            a.handle_input(now, &fb);
            settle(&mut a, &mut b, now);
        }
        la = a.into_link_state();
        lb = b.into_link_state();
    }
    let sealed: Vec<_> = la.sealed().iter().chain(lb.sealed()).collect();
    assert_eq!(sealed.len(), 2 * 3 * 300);
    let unique: HashSet<_> = sealed.iter().collect();
    assert_eq!(unique.len(), sealed.len(), "a (key, nonce) pair repeated");
    assert_eq!((la.received(), lb.received()), (900, 900));
}

#[test]
fn reconnect_resends_unacknowledged_messages_exactly_once() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(15);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([6; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, now);
    for i in 0..10u64 {
        a.send(&alice, &ch, &i.to_be_bytes()).unwrap();
    }
    // Six data frames reach B; B's acknowledgement is lost; the connection breaks.
    for _ in 0..6 {
        let f = a.poll_transmit(now).unwrap();
        b.handle_input(now, &f);
    }
    let first: Vec<u64> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered { payload, .. } => Some(u64::from_be_bytes(payload.try_into().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(first, (0..6).collect::<Vec<_>>());
    let (la, lb) = (a.into_link_state(), b.into_link_state());
    assert_eq!((la.unacked(), lb.received()), (10, 6));
    let (mut a, mut b) = connect(&mut rt, la, lb, 2, now, &mut e);
    assert_eq!(a.link().unacked(), 4, "the handshake's count acknowledged six");
    settle(&mut a, &mut b, now);
    let second: Vec<u64> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered { payload, seq, .. } => {
                let n = u64::from_be_bytes(payload.try_into().unwrap());
                assert_eq!(seq, n);
                Some(n)
            }
            _ => None,
        })
        .collect();
    assert_eq!(second, (6..10).collect::<Vec<_>>());
    assert_eq!(a.link().unacked(), 0);
    assert_eq!(a.link().stats().resent, 0, "messages never sent before are not resends");
}

#[test]
fn a_peer_that_lost_acknowledged_messages_is_refused() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(16);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([7; 16]);
    open_channel(&mut a, &mut b, ch, alice, bob, now);
    a.send(&alice, &ch, b"x").unwrap();
    settle(&mut a, &mut b, now);
    let la = a.into_link_state();
    assert_eq!(la.acked(), 1);
    // B restarts without its state.
    let lb = LinkState::new(rt.b.runtime, rt.a.runtime, LinkLimits::default());
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), la.received(), ts(2), &mut e).unwrap();
    let (_, hs2) = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e)
        .unwrap()
        .finish(lb.received(), &mut e)
        .unwrap();
    let est_a = init.complete(&one_frame(&hs2)).unwrap();
    let refused = Session::new(est_a, la, SessionConfig::default(), now).unwrap_err();
    assert!(refused.error.to_string().contains("lost acknowledged"), "{}", refused.error);
    assert_eq!(refused.link.acked(), 1);
}

/// Found by the simulation: the acceptor's Accept and its first data are lost with the
/// connection; in the next session the acceptor resends the data before it sees the
/// opener's repeated request. The data must count as acceptance, not be dropped.
#[test]
fn data_resent_before_a_lost_accept_is_delivered() {
    let mut rt = Runtimes::new();
    let (la, lb) = new_links(&rt);
    let now = Instant::now();
    let mut e = TestEntropy(17);
    let (mut a, mut b) = connect(&mut rt, la, lb, 1, now, &mut e);
    let (alice, bob) = agents();
    let ch = ChannelId::from_bytes([8; 16]);
    a.open_channel(ch, alice, bob, 4).unwrap();
    pump(&mut a, &mut b, now);
    events(&mut b);
    b.accept_channel(&ch).unwrap();
    b.send(&bob, &ch, b"first").unwrap();
    // Accept and data leave B, the connection breaks before they arrive.
    while b.poll_transmit(now).is_some() {}
    let (la, lb) = (a.into_link_state(), b.into_link_state());
    let (mut a, mut b) = connect(&mut rt, la, lb, 2, now, &mut e);
    // B transmits first (its resent data), then both settle.
    pump(&mut b, &mut a, now);
    settle(&mut a, &mut b, now);
    let evs = events(&mut a);
    assert!(evs.contains(&Event::Delivered { channel: ch, seq: 0, payload: b"first".to_vec() }), "{evs:?}");
    assert!(evs.contains(&Event::ChannelOpened(ch)), "{evs:?}");
    assert_eq!(a.link().stats().unexpected_channels, 0);
    assert_eq!(b.link().unacked(), 0);
}

#[test]
fn inconsistent_session_configs_are_refused() {
    assert!(SessionConfig::default().validate().is_ok());
    let bad = [
        SessionConfig { rekey_after_messages: 10, reject_after_messages: 11, ..SessionConfig::default() },
        SessionConfig { reject_after_time: Duration::from_secs(120), ..SessionConfig::default() },
        SessionConfig { max_frame_depth: 1, ..SessionConfig::default() },
        SessionConfig { max_frame_depth: 257, ..SessionConfig::default() },
        SessionConfig { idle_timeout: Duration::from_secs(10), ..SessionConfig::default() },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(18);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), 0, ts(1), &mut e).unwrap();
    let (_, hs2) =
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap().finish(0, &mut e).unwrap();
    let est = init.complete(&one_frame(&hs2)).unwrap();
    let (la, _) = new_links(&rt);
    let refused = Session::new(est, la, bad[0], Instant::now()).unwrap_err();
    assert!(refused.error.to_string().contains("reject_after_messages"), "{}", refused.error);
}
