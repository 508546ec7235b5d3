//! Bodies of the fuzz targets in `fuzz/`, shared with this crate's proptests so they are
//! built and run by ordinary `cargo test` as well. Not a stable API.

use std::time::Instant;

use mfp_core::{EntropySource, RuntimeId};

use crate::codec::{Decoder, MAX_BODY};
use crate::control::Control;
use crate::handshake::{self, Established, Initiator, LocalIdentity, PeerTable, Timestamp};
use crate::session::{Event, Session, SessionConfig};
use crate::{IdentityKey, identity};

/// A deterministic entropy source (a counter through HMAC): fuzzing and tests only.
#[derive(Debug)]
pub struct CounterEntropy(pub u64);

impl EntropySource for CounterEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), mfp_core::Error> {
        for chunk in dest.chunks_mut(32) {
            self.0 = self.0.wrapping_add(1);
            let block = mfp_core::crypto::hmac_sha256(b"fuzz-entropy", &[&self.0.to_be_bytes()]);
            for (d, b) in chunk.iter_mut().zip(block) {
                *d = b;
            }
        }
        Ok(())
    }
}

fn runtime(name: &[u8], seed: u64) -> LocalIdentity {
    LocalIdentity {
        runtime: RuntimeId::derive(b"fuzz", name),
        key: IdentityKey::from_secret_bytes(mfp_core::crypto::hmac_sha256(b"fuzz-key", &[&seed.to_be_bytes()])),
    }
}

fn public(id: &LocalIdentity) -> identity::PublicKey {
    id.key.public()
}

/// Link decoder: arbitrary bytes, fed whole and in chunks whose sizes come from the input,
/// never panic, and both ways yield the same frames within the limit.
pub fn link_decoder(data: &[u8]) {
    let max = data.first().map_or(MAX_BODY, |b| usize::from(*b) * 300);
    let mut whole = Decoder::new(max);
    let mut frames = Vec::new();
    let mut input = data;
    let whole_err = loop {
        match whole.decode(&mut input) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut chunked = Decoder::new(max);
    let mut again = Vec::new();
    let mut chunk_err = None;
    let step = data.get(1).map_or(1, |b| usize::from(*b % 17) + 1);
    for chunk in data.chunks(step) {
        let mut c = chunk;
        loop {
            match chunked.decode(&mut c) {
                Ok(Some(f)) => again.push(f),
                Ok(None) => break,
                Err(e) => {
                    chunk_err = Some(e);
                    break;
                }
            }
        }
        if chunk_err.is_some() {
            break;
        }
    }
    assert_eq!(frames, again, "chunking changed the decoded frames");
    assert_eq!(whole_err, chunk_err, "chunking changed the error");
    assert!(frames.iter().all(|f| f.body.len() <= max.min(MAX_BODY)));
}

/// Handshake responder: arbitrary bytes as a link stream, or as an XOR mask over a genuine
/// message 1. Nothing but the unmodified genuine message is ever accepted.
pub fn handshake_responder(data: &[u8]) {
    let initiator = runtime(b"initiator", 1);
    let responder = runtime(b"responder", 2);
    let mut peers = PeerTable::new();
    peers.pin(initiator.runtime, public(&initiator));
    let mut entropy = CounterEntropy(0);
    let Some((&mode, rest)) = data.split_first() else { return };
    let (genuine, stream) = if mode & 1 == 0 {
        (None, rest.to_vec())
    } else {
        let ts = Timestamp { secs: 1_800_000_000, nanos: 0 };
        let Ok((_, hs1)) = Initiator::start(&initiator, responder.runtime, public(&responder), ts, &mut entropy) else {
            return;
        };
        let mut mutated = hs1.clone();
        for (m, x) in mutated.iter_mut().zip(rest) {
            *m ^= x;
        }
        (Some(hs1), mutated)
    };
    let mut decoder = Decoder::new(MAX_BODY);
    let mut input = &stream[..];
    let mut accepted = 0;
    while let Ok(Some(frame)) = decoder.decode(&mut input) {
        if let Ok(acc) = handshake::accept(&responder, &mut peers, &frame, &mut entropy) {
            assert_eq!(acc.peer(), initiator.runtime);
            accepted += 1;
            assert!(acc.finish(&mut entropy).is_ok());
        }
    }
    let unmodified = genuine.as_ref().is_some_and(|g| *g == stream);
    assert_eq!(accepted, usize::from(unmodified), "a forged or modified message 1 was accepted");
}

/// Control-message parser: whatever parses re-encodes to exactly its input.
pub fn control(data: &[u8]) {
    if let Ok(msg) = Control::parse(data) {
        assert_eq!(msg.encode(), data, "control message did not re-encode to its input");
    }
}

/// Recovery report decoder: arbitrary bytes never panic; whatever parses re-encodes to its
/// input, has exactly the report's length, the `RECOVERY` flag alone and a log that does
/// not start beyond its next step; and the same bytes behind the control type parse alike.
pub fn recovery(data: &[u8]) {
    use crate::recovery::{REPORT_LEN, RecoveryReport};
    let parsed = RecoveryReport::parse(data);
    if let Ok(r) = &parsed {
        assert_eq!(data.len(), REPORT_LEN);
        assert_eq!(&r.to_bytes()[..], data, "recovery report did not re-encode to its input");
        assert!(r.log_from <= r.tx.step);
        assert_eq!(data.get(6..8), Some(&[0u8, 2][..]), "only the RECOVERY flag");
    }
    let mut framed = Vec::with_capacity(data.len() + 1);
    framed.push(crate::control::kind::RECOVERY);
    framed.extend_from_slice(data);
    match Control::parse(&framed) {
        Ok(Control::Recovery(r)) => assert_eq!(Ok(r), parsed),
        Ok(other) => panic!("a recovery message parsed as {other:?}"),
        Err(_) => assert!(parsed.is_err()),
    }
}

/// Both ends of a completed handshake between two fixed runtimes, as (initiator,
/// responder); `None` only if the handshake fails, which it does not.
#[must_use]
pub fn established_pair() -> Option<(Established, Established)> {
    let a = runtime(b"a", 3);
    let b = runtime(b"b", 4);
    let mut peers = PeerTable::new();
    peers.pin(a.runtime, public(&a));
    let mut entropy = CounterEntropy(7);
    let ts = Timestamp { secs: 1_800_000_000, nanos: 0 };
    let (init, hs1) = Initiator::start(&a, b.runtime, public(&b), ts, &mut entropy).ok()?;
    let mut d = Decoder::new(MAX_BODY);
    let f1 = d.decode(&mut &hs1[..]).ok()??;
    let (est_b, hs2) = handshake::accept(&b, &mut peers, &f1, &mut entropy).ok()?.finish(&mut entropy).ok()?;
    let f2 = d.decode(&mut &hs2[..]).ok()??;
    let est_a = init.complete(&f2).ok()?;
    Some((est_a, est_b))
}

/// An established session fed arbitrary bytes: no panic, nothing reaches the runtime
/// (no data, acknowledgement, position or channel event), and the session ends unless
/// the bytes were an incomplete frame.
pub fn session_input(data: &[u8]) {
    let Some((_, est_b)) = established_pair() else { return };
    let now = Instant::now();
    let Ok(mut session) = Session::new(est_b, SessionConfig::default(), now) else { return };
    session.handle_input(now, data);
    while let Some(ev) = session.poll_event() {
        assert!(matches!(ev, Event::Closed(_)), "forged input was accepted: {ev:?}");
    }
    assert_eq!(session.stats().data_received, 0);
    if !session.is_closed() {
        assert!(session.poll_transmit(now).is_none(), "forged input made the session answer");
    }
}

/// An established session fed control messages from its genuine peer: `data` is a
/// sequence of `len u8 ‖ bytes` chunks, each encrypted with the peer's Noise transport
/// and framed, so they pass authentication and reach the control-message parser and the
/// session's handling. No panic; whatever reaches the runtime passed the session's
/// checks (data parses as an MFP1 wire message naming its channel, channel requests have
/// a depth within the limits and a valid target); nothing after the session closed.
/// Returns the events that reached the runtime (all but `Closed`) and whether the
/// session closed.
pub fn authenticated_input(data: &[u8]) -> (usize, bool) {
    let Some((mut est_a, est_b)) = established_pair() else { return (0, false) };
    let now = Instant::now();
    let cfg = SessionConfig::default();
    let Ok(mut session) = Session::new(est_b, cfg, now) else { return (0, false) };
    let limits = mfp_core::envelope::EnvelopeLimits {
        max_frame_depth: u32::from(cfg.max_frame_depth),
        max_payload_len: crate::session::MAX_CONTROL as u32,
    };
    let mut rest = data;
    let mut stream = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let mut body = vec![0u8; chunk.len() + 16];
        let Ok(written) = est_a.transport.write_message(chunk, &mut body) else { break };
        body.truncate(written);
        if crate::codec::encode_into(crate::codec::FrameKind::Transport, &body, &mut stream).is_err() {
            break;
        }
        session.handle_input(now, &stream);
    }
    let mut closed = false;
    let mut reached = 0;
    while let Some(ev) = session.poll_event() {
        assert!(!closed, "an event after the session closed: {ev:?}");
        reached += usize::from(!matches!(ev, Event::Closed(_)));
        match ev {
            Event::Data { channel, wire } => {
                let parsed = mfp_core::envelope::parse_wire(&wire, &limits);
                assert!(parsed.is_ok_and(|(h, _)| h.channel_id == channel), "unchecked data reached the runtime");
            }
            Event::ChannelRequested { depth, target, .. } => {
                assert!((2..=cfg.max_frame_depth).contains(&depth) && target.is_valid(), "unchecked request");
            }
            Event::Recovery(r) => {
                assert_eq!(
                    r.sender,
                    session_peer_field(&session),
                    "a report naming another sender reached the runtime"
                );
                assert!(r.log_from <= r.tx.step, "an unchecked report reached the runtime");
            }
            Event::Closed(_) => closed = true,
            _ => {}
        }
    }
    assert_eq!(closed, session.is_closed());
    (reached, closed)
}

fn session_peer_field(session: &Session) -> [u8; 16] {
    session.peer().sender_field()
}

/// pymfp compat byte stream: arbitrary bytes (mode byte even) or an XOR mask over genuine
/// back-to-back wire messages (mode byte odd) to a [`crate::compat::EnvelopeStream`], fed
/// whole and in chunks whose size comes from the input. Never panics; chunking changes
/// neither the messages nor the error; every message obeys the limits and has exactly the
/// length its header announces; an unmodified genuine stream yields its messages.
pub fn envelope_stream(data: &[u8]) {
    use crate::compat::EnvelopeStream;
    use mfp_core::envelope::{EnvelopeLimits, parse_wire};

    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = EnvelopeLimits { max_frame_depth: u32::from(mode >> 3) + 2, max_payload_len: 600 };
    let genuine: Vec<Vec<u8>> = if mode & 1 == 1 {
        let a = RuntimeId::derive(b"fuzz", b"a");
        let mut state = mfp_core::bilateral::BilateralState::deterministic(&a, &RuntimeId::derive(b"fuzz", b"b"));
        let ch = mfp_core::ChannelId::from_bytes([3; 16]);
        let mut out = Vec::new();
        for (i, len) in [0usize, 5, 40].into_iter().enumerate() {
            let Ok(o) = state.seal_outbound(&a, &ch, 2 + i, &vec![0x61; len]) else { return };
            out.push(o.wire);
            state = o.next;
        }
        out
    } else {
        Vec::new()
    };
    let stream: Vec<u8> = if genuine.is_empty() {
        rest.to_vec()
    } else {
        let mut s = genuine.concat();
        for (b, m) in s.iter_mut().zip(rest) {
            *b ^= m;
        }
        s
    };
    let mut whole = EnvelopeStream::new(limits);
    let mut messages = Vec::new();
    let mut input = &stream[..];
    let whole_err = loop {
        match whole.decode(&mut input) {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut chunked = EnvelopeStream::new(limits);
    let mut again = Vec::new();
    let mut chunk_err = None;
    let step = rest.first().map_or(1, |b| usize::from(*b % 23) + 1);
    'outer: for chunk in stream.chunks(step) {
        let mut c = chunk;
        loop {
            match chunked.decode(&mut c) {
                Ok(Some(m)) => again.push(m),
                Ok(None) => break,
                Err(e) => {
                    chunk_err = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(messages, again, "chunking changed the decoded messages");
    assert_eq!(whole_err, chunk_err, "chunking changed the error");
    for m in &messages {
        assert!(parse_wire(m, &limits).is_ok(), "a message broke the limits or its announced length");
    }
    if !genuine.is_empty() && stream == genuine.concat() && genuine.iter().all(|g| parse_wire(g, &limits).is_ok()) {
        assert_eq!(messages, genuine, "a genuine stream was not decoded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn link_decoder_body(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            link_decoder(&data);
        }

        #[test]
        fn handshake_responder_body(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            handshake_responder(&data);
        }

        #[test]
        fn session_input_body(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            session_input(&data);
        }

        #[test]
        fn authenticated_input_body(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = authenticated_input(&data);
        }

        #[test]
        fn authenticated_typed_input_body(
            chunks in proptest::collection::vec((0u8..0x12, proptest::collection::vec(any::<u8>(), 0..150)), 1..6),
        ) {
            // Chunks that start with a known type byte, so most reach a message's layout.
            let mut data = Vec::new();
            for (t, rest) in chunks {
                data.push(u8::try_from(rest.len() + 1).unwrap_or(u8::MAX));
                data.push(t);
                data.extend(rest);
            }
            let _ = authenticated_input(&data);
        }
    }

    #[test]
    fn genuine_message_one_is_accepted_by_the_responder_body() {
        // Mode 1 with an all-zero mask is the genuine message: accepted exactly once.
        handshake_responder(&[1]);
        handshake_responder(&[1, 0, 0, 0]);
        // A mask flipping one byte of the runtime ids or the Noise message is refused.
        for pos in [5usize, 40, 70, 100, 150] {
            let mut d = vec![1u8; pos + 1];
            d[1..].fill(0);
            d[pos] = 0x20;
            handshake_responder(&d);
        }
    }

    #[test]
    fn authenticated_input_reaches_the_session() {
        use crate::control::{Control, Target};
        // A genuine channel request and a data message whose envelope names another
        // channel: the request reaches the runtime, the data closes the session.
        let open = Control::ChannelOpen {
            channel: mfp_core::ChannelId::from_bytes([1; 16]),
            depth: 4,
            opener: mfp_core::AgentId::from_bytes([2; 32]),
            secret: zeroize::Zeroizing::new([3; 32]),
            target: Target::Name("bob".into()),
        }
        .encode();
        let mut data = vec![u8::try_from(open.len()).unwrap_or(0)];
        data.extend(&open);
        let mut bad = vec![0x01];
        bad.extend([1u8; 16]);
        bad.extend([0u8; 64]);
        data.push(u8::try_from(bad.len()).unwrap_or(0));
        data.extend(&bad);
        assert_eq!(authenticated_input(&data), (1, true));
        // The request alone leaves the session open.
        assert_eq!(authenticated_input(&data[..=open.len()]), (1, false));
        // A chunk that is no control message closes it.
        assert_eq!(authenticated_input(&[2, 0x42, 0]), (0, true));
    }

    #[test]
    fn session_input_body_with_framed_garbage() {
        let mut framed = Vec::new();
        crate::codec::encode_into(crate::codec::FrameKind::Transport, &[0x42; 80], &mut framed).unwrap_or(());
        session_input(&framed);
    }
}
