//! Handshake refusals, replay, tampering and session behaviour between two in-memory
//! runtimes; the runtime side (chains, logs, positions) is the test model of `common`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use mfp_core::envelope::{EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId};
use mfp_federation::channel_chains;
use mfp_federation::codec::{self, FrameKind};
use mfp_federation::handshake::{self, HandshakeError, Initiator, PeerTable};
use mfp_federation::session::{CloseReason, Event, RefuseReason, SendError, Session, SessionConfig, Target};

const ALICE: AgentId = AgentId::from_bytes([0xa1; 32]);
const BOB: AgentId = AgentId::from_bytes([0xb1; 32]);

fn models(rt: &Runtimes) -> (Model, Model) {
    (Model::new(rt.a.runtime, rt.b.runtime, 1 << 20), Model::new(rt.b.runtime, rt.a.runtime, 1 << 20))
}

/// Opens `ch` from A (Alice) to B (Bob) through both models and sessions.
fn agree(a: &mut Session, ma: &mut Model, b: &mut Session, mb: &mut Model, ch: ChannelId, now: Instant) {
    ma.open(ch, 4, ALICE, BOB, [ch.as_bytes()[0]; 32]);
    ma.send_request(a, ch);
    settle_models(a, ma, b, mb, now);
    assert!(ma.channels[&ch].open && mb.channels[&ch].open);
}

fn payloads(m: &Model, ch: &ChannelId) -> Vec<u64> {
    m.channels[ch].delivered.iter().map(|p| u64::from_be_bytes(p[..8].try_into().unwrap())).collect()
}

#[test]
fn wire_messages_flow_both_ways_and_are_acknowledged() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(7);
    let (mut a, mut b) = connect(&mut rt, 1, now, &mut e);
    let ch = ChannelId::from_bytes([1; 16]);
    let secret = [0x33; 32];
    a.open_channel(ch, 4, ALICE, Target::Name("bob".into()), secret).unwrap();
    pump(&mut a, &mut b, now);
    let evs = events(&mut b);
    let [Event::ChannelRequested { channel, depth: 4, opener, target, secret: got }] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!((*channel, *opener, target), (ch, ALICE, &Target::Name("bob".into())));
    assert_eq!(**got, secret);
    let shown = format!("{evs:?}");
    assert!(!shown.contains("51") && !shown.contains("33, 33"), "the secret shows: {shown}");
    b.accept_channel(ch, BOB);
    pump(&mut b, &mut a, now);
    assert_eq!(events(&mut a), vec![Event::ChannelAccepted { channel: ch, acceptor: BOB }]);

    // Both derive the same chains; each seals with its own direction.
    let (mut a_tx, a_rx) = channel_chains(&secret, &ch, &rt.a.runtime, &rt.b.runtime);
    let (mut b_rx, mut b_tx) = channel_chains(&secret, &ch, &rt.a.runtime, &rt.b.runtime);
    let to_bob = a_tx.seal_outbound(&rt.a.runtime, &ch, 4, b"to bob").unwrap();
    let to_alice = b_tx.seal_outbound(&rt.b.runtime, &ch, 4, b"to alice").unwrap();
    a.send_data(ch, to_bob.wire.clone()).unwrap();
    b.send_data(ch, to_alice.wire.clone()).unwrap();
    assert_eq!(a.queued(), (1, to_bob.wire.len()));
    (a_tx, b_tx) = (to_bob.next, to_alice.next);
    settle(&mut a, &mut b, now);
    assert_eq!(a.queued(), (0, 0));
    let ev_b = events(&mut b);
    assert_eq!(ev_b, vec![Event::Data { channel: ch, wire: to_bob.wire.clone() }]);
    let shown = format!("{ev_b:?}");
    assert!(shown.contains(&format!("wire_len: {}", to_bob.wire.len())) && !shown.contains("77, 70, 80"), "{shown}");
    let (h, body) = parse_wire(&to_bob.wire, &EnvelopeLimits::default()).unwrap();
    let (payload, next) = b_rx.open_inbound(&h, body).unwrap();
    assert_eq!(payload, b"to bob");
    b_rx = next;
    assert!(b_rx == a_tx);
    let ev_a = events(&mut a);
    assert_eq!(ev_a, vec![Event::Data { channel: ch, wire: to_alice.wire }]);
    assert!(a_rx != b_tx, "A has not opened yet");

    // Acknowledgements and positions pass through per channel.
    b.ack(ch, 1);
    b.announce_position(ch, 1, 1);
    settle(&mut a, &mut b, now);
    assert_eq!(
        events(&mut a),
        vec![Event::Acked { channel: ch, next: 1 }, Event::Position { channel: ch, rx_next: 1, tx_next: 1 }]
    );
    assert_eq!((a.stats().data_sent, b.stats().data_received), (1, 1));

    // Refusal and closing pass through.
    let c2 = ChannelId::from_bytes([2; 16]);
    a.open_channel(c2, 2, ALICE, Target::Id(BOB), [1; 32]).unwrap();
    settle(&mut a, &mut b, now);
    assert!(matches!(&events(&mut b)[..], [Event::ChannelRequested { target: Target::Id(BOB), depth: 2, .. }]));
    b.refuse_channel(c2, RefuseReason::UnknownAgent);
    b.close_channel(ch);
    settle(&mut a, &mut b, now);
    assert_eq!(
        events(&mut a),
        vec![
            Event::ChannelRefused { channel: c2, reason: RefuseReason::UnknownAgent },
            Event::ChannelClosed { channel: ch }
        ]
    );
}

#[test]
fn acknowledgements_are_coalesced_per_channel() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(20);
    let (mut a, mut b) = connect(&mut rt, 1, now, &mut e);
    let (c1, c2) = (ChannelId::from_bytes([1; 16]), ChannelId::from_bytes([2; 16]));
    b.ack(c1, 1);
    b.ack(c1, 2);
    b.ack(c2, 5);
    b.ack(c1, 3);
    assert_eq!(pump(&mut b, &mut a, now), 2, "one acknowledgement per channel");
    assert_eq!(events(&mut a), vec![Event::Acked { channel: c1, next: 3 }, Event::Acked { channel: c2, next: 5 }]);
}

#[test]
fn send_data_checks_the_wire_message_before_queueing() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(21);
    let (mut a, _b) = connect(&mut rt, 1, now, &mut e);
    let ch = ChannelId::from_bytes([1; 16]);
    let (tx, _) = channel_chains(&[9; 32], &ch, &rt.a.runtime, &rt.b.runtime);
    let good = tx.seal_outbound(&rt.a.runtime, &ch, 4, b"x").unwrap().wire;

    // Not a wire message; truncated; one byte more; another channel; too deep.
    let mut longer = good.clone();
    longer.push(0);
    let other = tx.seal_outbound(&rt.a.runtime, &ChannelId::from_bytes([2; 16]), 4, b"x").unwrap().wire;
    let deep = tx.seal_outbound(&rt.a.runtime, &ch, 33, b"x").unwrap().wire;
    for (wire, what) in [
        (vec![0u8; 100], "garbage"),
        (good[..good.len() - 1].to_vec(), "truncated"),
        (longer, "longer"),
        (other, "other channel"),
        (deep, "depth 33"),
    ] {
        let err = a.send_data(ch, wire).unwrap_err();
        assert!(matches!(err, SendError::BadWire { .. }), "{what}: {err}");
        assert!(err.to_string().contains(&ch.short()), "{err}");
    }
    // Too large for one transport frame.
    let big = tx.seal_outbound(&rt.a.runtime, &ch, 4, &vec![0; mfp_federation::session::max_payload(4) + 1]).unwrap();
    assert!(matches!(a.send_data(ch, big.wire), Err(SendError::TooLarge { .. })));
    let fits = tx.seal_outbound(&rt.a.runtime, &ch, 4, &vec![0; mfp_federation::session::max_payload(4)]).unwrap();
    assert_eq!(fits.wire.len(), mfp_federation::session::MAX_WIRE);
    assert_eq!(a.queued(), (0, 0), "a refused message was queued");
    a.send_data(ch, fits.wire).unwrap();
    a.send_data(ch, good).unwrap();
    assert_eq!(a.queued().0, 2);
    // The largest message travels in one frame.
    let frame = a.poll_transmit(now).unwrap();
    assert_eq!(frame.len(), codec::HEADER_LEN + codec::MAX_BODY);
}

#[test]
fn a_full_transmission_queue_refuses_until_drained() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(22);
    let cfg = SessionConfig { max_queued_messages: 3, ..SessionConfig::default() };
    let (mut a, mut b) = connect_with(&mut rt, cfg, 1, now, &mut e);
    let ch = ChannelId::from_bytes([1; 16]);
    let a_id = rt.a.runtime;
    let (mut tx, _) = channel_chains(&[9; 32], &ch, &a_id, &rt.b.runtime);
    let mut seal = |n: u8| {
        let out = tx.seal_outbound(&a_id, &ch, 4, &[n]).unwrap();
        tx = out.next;
        out.wire
    };
    let len = seal(0).len();
    for i in 1..=3 {
        assert!(a.can_send(len));
        a.send_data(ch, seal(i)).unwrap();
    }
    assert!(!a.can_send(len));
    let err = a.send_data(ch, seal(4)).unwrap_err();
    assert!(matches!(err, SendError::Full { messages: 3, .. }), "{err}");
    assert!(err.to_string().contains(&rt.b.runtime.short()) && err.to_string().contains(&ch.short()), "{err}");
    assert_eq!(a.queued(), (3, 3 * len));
    // Transmission frees room.
    b.handle_input(now, &a.poll_transmit(now).unwrap());
    assert!(a.can_send(len));
    a.send_data(ch, seal(5)).unwrap();
    // The byte limit too.
    let cfg = SessionConfig { max_queued_bytes: mfp_federation::session::MAX_CONTROL, ..SessionConfig::default() };
    let (mut a, _b) = connect_with(&mut rt, cfg, 2, now, &mut e);
    let (big_tx, _) = channel_chains(&[8; 32], &ch, &a_id, &rt.b.runtime);
    let big = big_tx.seal_outbound(&a_id, &ch, 4, &vec![0; 40_000]).unwrap().wire;
    a.send_data(ch, big.clone()).unwrap();
    assert!(!a.can_send(big.len()) && a.can_send(100));
    assert!(matches!(a.send_data(ch, big), Err(SendError::Full { messages: 1, .. })));
    // A closed session refuses everything.
    a.close();
    assert!(!a.can_send(1));
    assert!(matches!(a.send_data(ch, seal(6)), Err(SendError::Closed(_))));
}

#[test]
fn channel_requests_are_checked_on_both_sides() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(23);
    let (est_a, est_b) = handshake(&mut rt, 1, &mut e);
    let mut a = Session::new(est_a, SessionConfig { max_frame_depth: 64, ..SessionConfig::default() }, now).unwrap();
    let mut b = Session::new(est_b, SessionConfig::default(), now).unwrap();
    let ch = ChannelId::from_bytes([1; 16]);
    // This side's own limits and target rules.
    assert!(matches!(
        a.open_channel(ch, 1, ALICE, Target::Id(BOB), [0; 32]),
        Err(SendError::BadDepth { depth: 1, .. })
    ));
    assert!(matches!(a.open_channel(ch, 65, ALICE, Target::Id(BOB), [0; 32]), Err(SendError::BadDepth { .. })));
    assert!(matches!(a.open_channel(ch, 4, ALICE, Target::Name(String::new()), [0; 32]), Err(SendError::BadTarget(_))));
    let long = Target::Name("x".repeat(65));
    assert!(matches!(a.open_channel(ch, 4, ALICE, long, [0; 32]), Err(SendError::BadTarget(_))));
    a.open_channel(ch, 4, ALICE, Target::Name("x".repeat(64)), [0; 32]).unwrap();
    settle(&mut a, &mut b, now);
    assert!(matches!(&events(&mut b)[..], [Event::ChannelRequested { .. }]));
    // The peer's limit: depth 40 is refused by B's session without bothering B's runtime.
    let c2 = ChannelId::from_bytes([2; 16]);
    a.open_channel(c2, 40, ALICE, Target::Id(BOB), [0; 32]).unwrap();
    settle(&mut a, &mut b, now);
    assert_eq!(events(&mut b), vec![]);
    assert_eq!(b.stats().refused_requests, 1);
    assert_eq!(events(&mut a), vec![Event::ChannelRefused { channel: c2, reason: RefuseReason::BadDepth }]);
}

#[test]
fn unknown_peer_is_refused_before_any_state() {
    let mut rt = Runtimes::new();
    let stranger = identity(b"stranger", 99);
    let mut e = TestEntropy(1);
    let (_, hs1) = Initiator::start(&stranger, rt.b.runtime, rt.b.key.public(), ts(1), &mut e).unwrap();
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
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, wrong, ts(1), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication(_)), "{err}");
    // The responder pins another key for A's runtime id than the one A holds.
    let mut peers = PeerTable::new();
    peers.pin(rt.a.runtime, wrong);
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(2), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::KeyMismatch(_)), "{err}");
    assert_eq!(peers.greatest_timestamp(&rt.a.runtime), None, "a refused handshake recorded a timestamp");
    // An impostor claiming A's runtime id with its own key.
    let mut impostor = identity(b"impostor", 77);
    impostor.runtime = rt.a.runtime;
    let (_, hs1) = Initiator::start(&impostor, rt.b.runtime, rt.b.key.public(), ts(3), &mut e).unwrap();
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::KeyMismatch(_)), "{err}");
}

#[test]
fn message_one_addressed_elsewhere_or_with_rewritten_ids_is_refused() {
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(3);
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(1), &mut e).unwrap();
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
    let (_, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(10), &mut e).unwrap();
    let frame = one_frame(&hs1);
    assert!(handshake::accept(&rt.b, &mut rt.b_peers, &frame, &mut e).is_ok());
    let err = handshake::accept(&rt.b, &mut rt.b_peers, &frame, &mut e).unwrap_err();
    assert!(matches!(err, HandshakeError::Replayed(_)), "{err}");
    // An older timestamp is refused too; a newer one is accepted.
    let (_, old) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(9), &mut e).unwrap();
    assert!(matches!(
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&old), &mut e),
        Err(HandshakeError::Replayed(_))
    ));
    let (_, new) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(11), &mut e).unwrap();
    assert!(handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&new), &mut e).is_ok());
}

/// A recorded initiator stream (message 1 and transport frames) replayed to the
/// listener: refused at message 1; replayed to a listener that forgot its timestamps,
/// the transport frames fail authentication and nothing reaches the runtime.
#[test]
fn replayed_link_stream_is_refused() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(5);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(1), &mut e).unwrap();
    let mut recorded = hs1.clone();
    let peers_before = rt.b_peers.clone();
    let (est_b, hs2) =
        handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap().finish(&mut e).unwrap();
    let est_a = init.complete(&one_frame(&hs2)).unwrap();
    let mut a = Session::new(est_a, SessionConfig::default(), now).unwrap();
    let mut b = Session::new(est_b, SessionConfig::default(), now).unwrap();
    let ch = ChannelId::from_bytes([2; 16]);
    a.open_channel(ch, 4, ALICE, Target::Id(BOB), [7; 32]).unwrap();
    let (tx, _) = channel_chains(&[7; 32], &ch, &rt.a.runtime, &rt.b.runtime);
    a.send_data(ch, tx.seal_outbound(&rt.a.runtime, &ch, 4, b"once").unwrap().wire).unwrap();
    while let Some(bytes) = a.poll_transmit(now) {
        recorded.extend_from_slice(&bytes);
        b.handle_input(now, &bytes);
    }
    let evs = events(&mut b);
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::Data { .. })).count(), 1, "{evs:?}");

    // The same listener: message 1 is a replay.
    let mut d = codec::Decoder::new(codec::MAX_BODY);
    let mut input = &recorded[..];
    let first = d.decode(&mut input).unwrap().unwrap();
    assert!(matches!(handshake::accept(&rt.b, &mut rt.b_peers, &first, &mut e), Err(HandshakeError::Replayed(_))));

    // A listener that lost its timestamps accepts message 1, but the rest of the stream
    // was encrypted for another ephemeral key: it fails and nothing reaches the runtime.
    let mut forgetful = peers_before;
    let (est, _) = handshake::accept(&rt.b, &mut forgetful, &first, &mut e).unwrap().finish(&mut e).unwrap();
    let mut replayed = Session::new(est, SessionConfig::default(), now).unwrap();
    replayed.handle_input(now, input);
    assert_eq!(events(&mut replayed), vec![Event::Closed(CloseReason::Tampered)]);
    assert_eq!(replayed.stats().tampered, 1);
}

#[test]
fn tampered_bytes_are_rejected_and_counted() {
    // Handshake messages.
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(6);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(1), &mut e).unwrap();
    let mut bad = one_frame(&hs1);
    let last = bad.body.len() - 1;
    bad.body[last] ^= 1;
    assert!(matches!(handshake::accept(&rt.b, &mut rt.b_peers, &bad, &mut e), Err(HandshakeError::Authentication(_))));
    let (_, hs2) = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), &mut e).unwrap().finish(&mut e).unwrap();
    let mut bad2 = one_frame(&hs2);
    bad2.body[20] ^= 0x80;
    assert!(matches!(init.complete(&bad2), Err(HandshakeError::Authentication(_))));

    // Every header byte and every fifth byte of a transport frame carrying data.
    let now = Instant::now();
    let ch = ChannelId::from_bytes([3; 16]);
    let (tx, _) = channel_chains(&[3; 32], &ch, &rt.a.runtime, &rt.b.runtime);
    let wire = tx.seal_outbound(&rt.a.runtime, &ch, 4, b"payload").unwrap().wire;
    let frame_len = codec::HEADER_LEN + 16 + 1 + 16 + wire.len();
    let positions: Vec<usize> =
        (0..codec::HEADER_LEN).chain((codec::HEADER_LEN..frame_len).step_by(5)).chain([frame_len - 1]).collect();
    for (i, &pos) in positions.iter().enumerate() {
        let (mut a2, mut b2) = connect(&mut rt, 100 + i as u64, now, &mut e);
        a2.send_data(ch, wire.clone()).unwrap();
        let mut f = a2.poll_transmit(now).unwrap();
        assert_eq!(f.len(), frame_len);
        f[pos] ^= 0x01;
        b2.handle_input(now, &f);
        let evs = events(&mut b2);
        assert!(!evs.iter().any(|e| matches!(e, Event::Data { .. })), "byte {pos}: {evs:?}");
        let s = b2.stats();
        if pos >= codec::HEADER_LEN {
            // A body byte fails authentication.
            assert_eq!(s.tampered, 1, "byte {pos}");
            assert!(b2.is_closed());
        } else {
            // A header byte is a framing error, or a length that leaves the frame incomplete
            // (then nothing was read), or a longer frame that fails authentication.
            assert!(s.malformed + s.tampered == 1 || !b2.is_closed(), "byte {pos}: {s:?}");
        }
    }
}

#[test]
fn handshake_frames_inside_a_session_close_it() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(8);
    let (_a, mut b) = connect(&mut rt, 1, now, &mut e);
    b.handle_input(now, &codec::encode(FrameKind::HandshakeInit, &[0; 10]).unwrap());
    assert_eq!(b.close_reason(), Some(&CloseReason::UnexpectedFrame));
}

#[test]
fn transport_rekeys_by_time_and_count_and_rejects_stale_keys() {
    let mut rt = Runtimes::new();
    let t0 = Instant::now();
    let mut e = TestEntropy(11);
    let (mut a, mut b) = connect(&mut rt, 1, t0, &mut e);
    let (mut ma, mut mb) = models(&rt);
    let ch = ChannelId::from_bytes([5; 16]);
    agree(&mut a, &mut ma, &mut b, &mut mb, ch, t0);
    // Keep both sides talking every 5 s for 10 minutes: rekeys happen, nothing breaks.
    for i in 0..120u64 {
        let now = t0 + Duration::from_secs(5 * (i + 1));
        for s in [&mut a, &mut b] {
            s.handle_timeout(now);
        }
        ma.seal(ch, &i.to_be_bytes());
        settle_models(&mut a, &mut ma, &mut b, &mut mb, now);
    }
    assert!(!a.is_closed() && !b.is_closed(), "{:?} {:?}", a.close_reason(), b.close_reason());
    assert!(a.stats().rekeys >= 4 && b.stats().rekeys >= 4, "{:?}", a.stats());
    assert_eq!(payloads(&mb, &ch), (0..120).collect::<Vec<_>>());

    // By count: a small limit rekeys every few messages.
    let cfg = SessionConfig { rekey_after_messages: 5, reject_after_messages: 7, ..SessionConfig::default() };
    let (mut a, mut b) = connect_with(&mut rt, cfg, 900, t0, &mut e);
    ma.on_connect(&mut a);
    mb.on_connect(&mut b);
    for i in 120..170u64 {
        ma.seal(ch, &i.to_be_bytes());
        settle_models(&mut a, &mut ma, &mut b, &mut mb, t0);
    }
    assert!(a.stats().rekeys >= 9, "{:?}", a.stats());
    assert_eq!(payloads(&mb, &ch), (0..170).collect::<Vec<_>>());

    // A peer that never rekeys: its messages are refused after reject_after_time.
    let (mut a, mut b) = connect(&mut rt, 2000, t0, &mut e);
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
    let t0 = Instant::now();
    let mut e = TestEntropy(13);
    let (mut a, mut b) = connect(&mut rt, 1, t0, &mut e);
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

/// Both sides seal and send at once on the same channels, many times, over several
/// sessions: no (key, nonce) pair of the MFP layer repeats, and everything arrives once.
#[test]
fn simultaneous_sends_never_reuse_key_and_nonce() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(14);
    let (mut ma, mut mb) = models(&rt);
    let chans: Vec<ChannelId> = (0..4u8).map(|i| ChannelId::from_bytes([i + 10; 16])).collect();
    for round in 0..3u64 {
        let (mut a, mut b) = connect(&mut rt, 10 + round, now, &mut e);
        if round == 0 {
            for c in &chans {
                agree(&mut a, &mut ma, &mut b, &mut mb, *c, now);
            }
        } else {
            ma.on_connect(&mut a);
            mb.on_connect(&mut b);
            settle_models(&mut a, &mut ma, &mut b, &mut mb, now);
        }
        for i in 0..300u64 {
            let c = chans[(i % 4) as usize];
            ma.seal(c, &(round * 300 + i).to_be_bytes());
            mb.seal(c, &(round * 300 + i).to_be_bytes());
            ma.pump(&mut a);
            mb.pump(&mut b);
            // Both transmit before either receives.
            let fa = a.poll_transmit(now).unwrap();
            let fb = b.poll_transmit(now).unwrap();
            b.handle_input(now, &fa);
            a.handle_input(now, &fb);
            settle_models(&mut a, &mut ma, &mut b, &mut mb, now);
        }
    }
    assert_eq!(assert_unique_sealings(&[&ma, &mb]), 2 * 3 * 300);
    for c in &chans {
        let want: Vec<u64> = (0..900u64).filter(|i| (i % 300) % 4 == u64::from(c.as_bytes()[0] - 10)).collect();
        assert_eq!(payloads(&ma, c), want);
        assert_eq!(payloads(&mb, c), want);
        assert!(ma.channels[c].tx == mb.channels[c].rx && ma.channels[c].rx == mb.channels[c].tx);
    }
}

/// Messages that did not arrive before the connection broke are sent again from the
/// receiver's position; those that arrived are not delivered twice.
#[test]
fn reconnect_resends_from_the_peers_position_exactly_once() {
    let mut rt = Runtimes::new();
    let now = Instant::now();
    let mut e = TestEntropy(15);
    let (mut a, mut b) = connect(&mut rt, 1, now, &mut e);
    let (mut ma, mut mb) = models(&rt);
    let ch = ChannelId::from_bytes([6; 16]);
    agree(&mut a, &mut ma, &mut b, &mut mb, ch, now);
    for i in 0..10u64 {
        ma.seal(ch, &i.to_be_bytes());
    }
    ma.pump(&mut a);
    // Six data frames reach B; B's acknowledgements are lost; the connection breaks.
    for _ in 0..6 {
        let f = a.poll_transmit(now).unwrap();
        b.handle_input(now, &f);
    }
    while let Some(ev) = b.poll_event() {
        mb.on_event(&mut b, ev);
    }
    assert_eq!(payloads(&mb, &ch), (0..6).collect::<Vec<_>>());
    assert_eq!((ma.channels[&ch].acked, ma.channels[&ch].log.len()), (0, 10));

    let (mut a, mut b) = connect(&mut rt, 2, now, &mut e);
    ma.on_connect(&mut a);
    mb.on_connect(&mut b);
    settle_models(&mut a, &mut ma, &mut b, &mut mb, now);
    assert_eq!(payloads(&mb, &ch), (0..10).collect::<Vec<_>>());
    assert_eq!(mb.stats.duplicates, 0, "B's position made A skip what B had");
    assert_eq!((ma.channels[&ch].acked, ma.channels[&ch].log.len()), (10, 0));
    // The four handed to the first session but never transmitted went again, nothing else.
    assert_eq!(ma.stats.resent, 4);
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
        SessionConfig { max_queued_messages: 0, ..SessionConfig::default() },
        SessionConfig { max_queued_bytes: 65_518, ..SessionConfig::default() },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(18);
    let (est, _) = handshake(&mut rt, 1, &mut e);
    let err = Session::new(est, bad[0], Instant::now()).unwrap_err();
    assert!(err.to_string().contains("reject_after_messages"), "{err}");
}

/// Message 1 carries the version and a timestamp, message 2 the version alone
/// (docs/federation.md's byte tables).
#[test]
fn handshake_messages_have_documented_sizes() {
    let mut rt = Runtimes::new();
    let mut e = TestEntropy(19);
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(1), &mut e).unwrap();
    let f1 = one_frame(&hs1);
    assert_eq!((f1.kind, f1.body.len()), (FrameKind::HandshakeInit, 173));
    let (_, hs2) = handshake::accept(&rt.b, &mut rt.b_peers, &f1, &mut e).unwrap().finish(&mut e).unwrap();
    let f2 = one_frame(&hs2);
    assert_eq!((f2.kind, f2.body.len()), (FrameKind::HandshakeResponse, 49));
    assert!(init.complete(&f2).is_ok());
}
