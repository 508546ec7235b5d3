//! Property tests of the `mfp-core` building blocks: mirror, message assembly, payload
//! encoding, frame validation, envelope, bilateral messages, and "never panics" checks of
//! every parser that sees untrusted bytes.
//!
//! Every property compares against an independent oracle (a hand-written layout, a
//! byte-reversal, a length rule of the wire format) or checks that tampering is rejected, so
//! each can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use mfp_core::bilateral::{BilateralState, RekeyMessage};
use mfp_core::envelope::{self, EnvelopeFlags, EnvelopeHeader, EnvelopeLimits};
use mfp_core::{
    AgentId, BLOCK_SIZE, BilateralId, ChannelId, ENVELOPE_HEADER_SIZE, EnvelopeError, Error, Frame, MAX_FRAME_DEPTH,
    MIN_FRAME_DEPTH, MessageId, PROTOCOL_MAGIC, PROTOCOL_VERSION, RuntimeId, State, TAG_SIZE, encoding, message,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------
// Strategies and helpers
// ---------------------------------------------------------------------------------------

/// A frame of depth in `depths`, with arbitrary bytes.
fn frame_in(depths: core::ops::RangeInclusive<usize>) -> impl Strategy<Value = Frame> {
    depths.prop_flat_map(|k| vec(any::<u8>(), k * BLOCK_SIZE)).prop_map(|b| Frame::from_bytes(b).unwrap())
}

fn state() -> impl Strategy<Value = State> {
    any::<[u8; 32]>().prop_map(State::from_bytes)
}

fn channel() -> impl Strategy<Value = ChannelId> {
    any::<[u8; 16]>().prop_map(ChannelId::from_bytes)
}

fn runtime() -> impl Strategy<Value = RuntimeId> {
    any::<[u8; 32]>().prop_map(RuntimeId::from_bytes)
}

/// Flips bit `bit` (0 = least significant bit of byte 0) of `bytes`.
fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// A channel id guaranteed to differ from `c` (one bit flipped at `bit`).
fn other_channel(c: &ChannelId, bit: usize) -> ChannelId {
    let mut b = *c.as_bytes();
    flip(&mut b, bit % 128);
    ChannelId::from_bytes(b)
}

fn is_palindrome(b: &[u8]) -> bool {
    b.iter().eq(b.iter().rev())
}

/// The 64-byte envelope header (pymfp packs it with `struct ">4sHHII16sQ16s8s"`), written out
/// independently of `EnvelopeHeader::to_bytes`.
fn pack_header(h: &EnvelopeHeader) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&h.magic);
    v.extend_from_slice(&h.version.to_be_bytes());
    v.extend_from_slice(&h.flags.0.to_be_bytes());
    v.extend_from_slice(&h.frame_depth.to_be_bytes());
    v.extend_from_slice(&h.payload_len.to_be_bytes());
    v.extend_from_slice(h.channel_id.as_bytes());
    v.extend_from_slice(&h.step.to_be_bytes());
    v.extend_from_slice(&h.sender_runtime);
    v.extend_from_slice(&h.reserved);
    v
}

/// A header with every field arbitrary (valid or not).
fn any_header() -> impl Strategy<Value = EnvelopeHeader> {
    (
        (any::<[u8; 4]>(), any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (any::<[u8; 16]>(), any::<u64>(), any::<[u8; 16]>(), any::<[u8; 8]>()),
    )
        .prop_map(|((magic, version, flags, frame_depth, payload_len), (ch, step, sender_runtime, reserved))| {
            EnvelopeHeader {
                magic,
                version,
                flags: EnvelopeFlags(flags),
                frame_depth,
                payload_len,
                channel_id: ChannelId::from_bytes(ch),
                step,
                sender_runtime,
                reserved,
            }
        })
}

/// A header that passes the protocol rules (magic, version, reserved) but whose depth and
/// payload length are "near the edges": small, around the limits, or huge. Used to drive
/// parsers past the first checks.
fn edgy_header() -> impl Strategy<Value = EnvelopeHeader> {
    let depth = prop_oneof![0u32..=40, 250u32..=300, Just(u32::MAX), any::<u32>()];
    let plen = prop_oneof![0u32..=64, 1_048_570u32..=1_048_600, Just(u32::MAX), any::<u32>()];
    (depth, plen, any::<u16>(), channel(), any::<u64>(), runtime())
        .prop_map(|(d, p, flags, ch, step, rt)| EnvelopeHeader::new(EnvelopeFlags(flags), d, p, ch, step, &rt))
}

fn tiny_limits() -> EnvelopeLimits {
    EnvelopeLimits { max_frame_depth: 2, max_payload_len: TAG_SIZE as u32 }
}

fn zero_limits() -> EnvelopeLimits {
    EnvelopeLimits { max_frame_depth: 0, max_payload_len: 0 }
}

// ---------------------------------------------------------------------------------------
// Mirror
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// mirror(mirror(f)) == f; the mirror is the byte-reversal of the frame and, block-wise,
    /// `(rev(B_k), …, rev(B_1))`; it equals f exactly when f's bytes are a palindrome.
    #[test]
    fn mirror_is_an_involution(f in frame_in(2..=64)) {
        let m = f.mirror();
        prop_assert_eq!(m.depth(), f.depth());
        prop_assert_eq!(m.mirror(), f.clone());

        let reversed: Vec<u8> = f.as_bytes().iter().rev().copied().collect();
        prop_assert_eq!(m.as_bytes(), &reversed[..]);

        let fb: Vec<_> = f.blocks().collect();
        let mb: Vec<_> = m.blocks().collect();
        let k = fb.len();
        for i in 0..k {
            let mut rev = *fb[k - 1 - i];
            rev.reverse();
            prop_assert_eq!(*mb[i], rev);
        }

        prop_assert_eq!(m == f, is_palindrome(f.as_bytes()));
    }

    /// Palindromic frames (built from an arbitrary half) are their own mirror, and any
    /// single bit flip breaks that (the flipped byte's partner is unchanged, except for the
    /// centre byte of an odd length — frames have even length, so there is none).
    #[test]
    fn palindromic_frames_are_self_mirrors(
        half in (1usize..=32).prop_flat_map(|h| vec(any::<u8>(), h * BLOCK_SIZE)),
        bit in any::<Index>(),
    ) {
        let mut bytes = half.clone();
        bytes.extend(half.iter().rev());
        let f = Frame::from_bytes(bytes.clone()).unwrap();
        prop_assert_eq!(f.mirror(), f.clone());
        let nbits = bytes.len() * 8;
        flip(&mut bytes, bit.index(nbits));
        let g = Frame::from_bytes(bytes).unwrap();
        prop_assert_ne!(g.mirror(), g);
    }
}

// ---------------------------------------------------------------------------------------
// Protocol message assemble / parse
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `M = open ‖ E(P) ‖ close` with the documented length; parse returns the three parts;
    /// close is the mirror; E(P) decodes to P; the frame validates; `assemble_encoded` gives
    /// the same bytes; a wrong depth never validates; a short message is rejected.
    #[test]
    fn assemble_parse_round_trip(
        f in frame_in(2..=32),
        sl in state(),
        ch in channel(),
        step in any::<u64>(),
        payload in vec(any::<u8>(), 0..1024),
    ) {
        let k = f.depth();
        let msg = message::assemble(&f, &sl, &ch, step, &payload).unwrap();
        prop_assert_eq!(msg.len(), 32 * k + payload.len() + TAG_SIZE);
        prop_assert_eq!(Some(msg.len()), message::message_len(k, payload.len()));

        let parts = message::parse(&msg, k).unwrap();
        prop_assert_eq!(parts.frame_open().unwrap(), f.clone());
        prop_assert_eq!(parts.frame_close().unwrap(), f.mirror());
        prop_assert_eq!(parts.frame_open_bytes(), &msg[..16 * k]);
        prop_assert_eq!(parts.frame_close_bytes(), &msg[msg.len() - 16 * k..]);
        prop_assert_eq!(parts.encoded_payload().len(), payload.len() + TAG_SIZE);
        prop_assert_eq!(encoding::decode(&sl, &ch, step, parts.encoded_payload()).unwrap(), payload.clone());
        prop_assert!(Frame::validate(&parts.frame_open().unwrap(), &parts.frame_close().unwrap(), &f).is_ok());

        let encoded = encoding::encode(&sl, &ch, step, &payload).unwrap();
        prop_assert_eq!(parts.encoded_payload(), &encoded[..]);
        prop_assert_eq!(message::assemble_encoded(&f, &encoded), msg.clone());

        // Parsing at another depth may split the bytes, but never into a valid pair for f.
        for wrong in [k - 1, k + 1] {
            if let Ok(p) = message::parse(&msg, wrong) {
                prop_assert!(Frame::validate_bytes(p.frame_open_bytes(), p.frame_close_bytes(), &f).is_err());
            }
        }
        // Shorter than two frames and a tag: rejected with the minimum length.
        let min = 32 * k + TAG_SIZE;
        prop_assert_eq!(
            message::parse(&msg[..min - 1], k).map(|_| ()),
            Err(Error::MessageLength { expected: min, actual: min - 1 })
        );
    }
}

// ---------------------------------------------------------------------------------------
// Payload encoding
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// encode/decode round trip; any single bit flip of `E(P)` is rejected; the wrong step,
    /// channel, state or a truncated input is rejected.
    #[test]
    fn encoding_round_trip_and_tamper(
        sl in state(),
        ch in channel(),
        step in any::<u64>(),
        payload in vec(any::<u8>(), 0..4096),
        bit in any::<Index>(),
        ch_bit in any::<usize>(),
        sl_bit in 0usize..256,
    ) {
        let e = encoding::encode(&sl, &ch, step, &payload).unwrap();
        prop_assert_eq!(e.len(), payload.len() + TAG_SIZE);
        prop_assert_eq!(encoding::decode(&sl, &ch, step, &e).unwrap(), payload.clone());

        // In-place variants agree with the allocating ones.
        let mut buf = payload.clone();
        let tag = encoding::encode_in_place(&sl, &ch, step, &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        prop_assert_eq!(&buf, &e);
        prop_assert_eq!(encoding::decode_in_place(&sl, &ch, step, &mut buf).unwrap(), &payload[..]);

        let mut bad = e.clone();
        flip(&mut bad, bit.index(e.len() * 8));
        prop_assert_eq!(encoding::decode(&sl, &ch, step, &bad), Err(Error::DecodeFailed));

        prop_assert_eq!(encoding::decode(&sl, &ch, step.wrapping_add(1), &e), Err(Error::DecodeFailed));
        prop_assert_eq!(encoding::decode(&sl, &other_channel(&ch, ch_bit), step, &e), Err(Error::DecodeFailed));
        let mut other = *sl.expose();
        flip(&mut other, sl_bit);
        prop_assert_eq!(encoding::decode(&State::from_bytes(other), &ch, step, &e), Err(Error::DecodeFailed));
        prop_assert_eq!(encoding::decode(&sl, &ch, step, &e[..e.len() - 1]), Err(Error::DecodeFailed));
        let mut longer = e.clone();
        longer.push(0);
        prop_assert_eq!(encoding::decode(&sl, &ch, step, &longer), Err(Error::DecodeFailed));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Exhaustive version for short payloads: *every* single bit flip of `E(P)` fails.
    #[test]
    fn encoding_rejects_every_bit_flip(
        sl in state(),
        ch in channel(),
        step in any::<u64>(),
        payload in vec(any::<u8>(), 0..48),
    ) {
        let e = encoding::encode(&sl, &ch, step, &payload).unwrap();
        for bit in 0..e.len() * 8 {
            let mut bad = e.clone();
            flip(&mut bad, bit);
            prop_assert_eq!(encoding::decode(&sl, &ch, step, &bad), Err(Error::DecodeFailed), "bit {}", bit);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frame validation
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The true pair validates; a single bit flip in `open` or `close` never does; nor does
    /// the true pair of another frame, nor a pair of another depth.
    #[test]
    fn validate_accepts_only_the_true_pair(
        f in frame_in(2..=64),
        bit in any::<Index>(),
        g in frame_in(2..=64),
    ) {
        let open = f.as_bytes().to_vec();
        let close = f.mirror().as_bytes().to_vec();
        prop_assert_eq!(Frame::validate(&f, &f.mirror(), &f), Ok(()));
        prop_assert_eq!(Frame::validate_bytes(&open, &close, &f), Ok(()));

        let n = open.len();
        let b = bit.index(2 * n * 8);
        let (mut o, mut c) = (open.clone(), close.clone());
        if b < n * 8 { flip(&mut o, b) } else { flip(&mut c, b - n * 8) }
        prop_assert_eq!(Frame::validate_bytes(&o, &c, &f), Err(Error::FrameValidation));
        let (fo, fc) = (Frame::from_bytes(o).unwrap(), Frame::from_bytes(c).unwrap());
        prop_assert_eq!(Frame::validate(&fo, &fc, &f), Err(Error::FrameValidation));

        if g != f {
            prop_assert_eq!(Frame::validate(&g, &g.mirror(), &f), Err(Error::FrameValidation));
        }
        // Swapped roles: (close, open) is valid only for a self-mirror frame.
        prop_assert_eq!(Frame::validate_bytes(&close, &open, &f).is_ok(), is_palindrome(&open));
        // Truncated inputs.
        prop_assert_eq!(Frame::validate_bytes(&open[..n - 16], &close, &f), Err(Error::FrameValidation));
        prop_assert_eq!(Frame::validate_bytes(&open, &close[..n - 16], &f), Err(Error::FrameValidation));
    }
}

// ---------------------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// to_bytes follows that layout exactly and from_bytes inverts it for every field
    /// value, valid or not; parse of a longer buffer reads only the first 64 bytes.
    #[test]
    fn header_bytes_round_trip(h in any_header(), tail in vec(any::<u8>(), 0..64)) {
        let b = h.to_bytes();
        prop_assert_eq!(&b[..], &pack_header(&h)[..]);
        prop_assert_eq!(EnvelopeHeader::from_bytes(&b), h);
        let mut longer = b.to_vec();
        longer.extend_from_slice(&tail);
        prop_assert_eq!(EnvelopeHeader::parse(&longer), Ok(h));
        prop_assert_eq!(h.body_len(), 32 * u64::from(h.frame_depth) + u64::from(h.payload_len));
    }

    /// And the other way round: any 64 bytes survive from_bytes → to_bytes unchanged.
    #[test]
    fn header_from_bytes_is_lossless(raw in any::<[u8; 64]>()) {
        prop_assert_eq!(EnvelopeHeader::from_bytes(&raw).to_bytes(), raw);
    }

    /// parse_wire(assemble_wire(h, body)) == (h, body) for valid headers and bodies of the
    /// announced length; one byte more or less is BodyLength; assemble_wire refuses a body
    /// of the wrong length.
    #[test]
    fn wire_round_trip(
        depth in 2u32..=32,
        payload_len in 16u32..=1024,
        flags in any::<u16>(),
        ch in channel(),
        step in any::<u64>(),
        rt in runtime(),
        seed in any::<u8>(),
    ) {
        let h = EnvelopeHeader::new(EnvelopeFlags(flags), depth, payload_len, ch, step, &rt);
        prop_assert_eq!(h.validate(&EnvelopeLimits::default()), Ok(()));
        prop_assert_eq!(h.check_sender(&rt), Ok(()));
        prop_assert_eq!(h.magic, PROTOCOL_MAGIC);
        prop_assert_eq!(h.version, PROTOCOL_VERSION);
        let n = usize::try_from(h.body_len()).unwrap();
        let body: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
        let wire = envelope::assemble_wire(&h, &body).unwrap();
        prop_assert_eq!(wire.len(), ENVELOPE_HEADER_SIZE + n);
        let (h2, body2) = envelope::parse_wire(&wire, &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(body2, &body[..]);

        let mut longer = wire.clone();
        longer.push(0);
        prop_assert_eq!(
            envelope::parse_wire(&longer, &EnvelopeLimits::default()).map(|_| ()),
            Err(EnvelopeError::BodyLength { expected: n, actual: n + 1 })
        );
        prop_assert_eq!(
            envelope::parse_wire(&wire[..wire.len() - 1], &EnvelopeLimits::default()).map(|_| ()),
            Err(EnvelopeError::BodyLength { expected: n, actual: n - 1 })
        );
        prop_assert!(envelope::assemble_wire(&h, &body[1..]).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Bilateral messages
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A message sealed by runtime A (from its copy of the shared state) opens at runtime B
    /// (from its own copy): same payload, same next state, header as sent. The state after
    /// the message cannot open it again, and a flipped bit anywhere in the body is rejected.
    #[test]
    fn bilateral_seal_open_round_trip(
        a in runtime(),
        b in runtime(),
        ceremonial in any::<bool>(),
        ss in state(),
        warmup in 0usize..3,
        ch in channel(),
        depth in 2usize..=16,
        payload in vec(any::<u8>(), 0..2048),
        bit in any::<Index>(),
    ) {
        let (mut sa, mut sb) = if ceremonial {
            (BilateralState::ceremonial(&ss, &a, &b), BilateralState::ceremonial(&ss, &b, &a))
        } else {
            (BilateralState::deterministic(&a, &b), BilateralState::deterministic(&b, &a))
        };
        prop_assert_eq!(&sa, &sb);
        // Move both sides a few steps along (alternating directions).
        for i in 0..warmup {
            let (from, rt) = if i % 2 == 0 { (&sa, &a) } else { (&sb, &b) };
            let out = from.seal_outbound(rt, &ch, 4, b"warm-up").unwrap();
            sa = out.next.clone();
            sb = out.next;
        }
        let step = sa.step;

        let out = sa.seal_outbound(&a, &ch, depth, &payload).unwrap();
        prop_assert_eq!(out.next.step, step + 1);
        prop_assert_eq!(out.wire.len(), ENVELOPE_HEADER_SIZE + 32 * depth + payload.len() + TAG_SIZE);
        prop_assert_eq!(&out.frame, &sb.frame(depth).unwrap());

        let (h, body) = envelope::parse_wire(&out.wire, &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(h, out.header);
        prop_assert_eq!(h.step, step);
        prop_assert_eq!(h.frame_depth as usize, depth);
        prop_assert_eq!(h.channel_id, ch);
        prop_assert_eq!(h.check_sender(&a), Ok(()));

        let (got, next_b) = sb.open_inbound(&h, body).unwrap();
        prop_assert_eq!(got, payload);
        prop_assert_eq!(&next_b, &out.next);
        prop_assert_eq!(next_b, sb.advance(&out.frame).unwrap());
        prop_assert!(out.next.open_inbound(&h, body).is_err());

        let mut bad = body.to_vec();
        let nbits = bad.len() * 8;
        flip(&mut bad, bit.index(nbits));
        let r = sb.open_inbound(&h, &bad);
        prop_assert!(matches!(r, Err(Error::FrameValidation | Error::DecodeFailed)), "{:?}", r.map(|_| ()));

        // The header's channel id is bound into the AEAD.
        let mut h_other = h;
        h_other.channel_id = other_channel(&ch, bit.index(128));
        prop_assert_eq!(sb.open_inbound(&h_other, body).map(|_| ()), Err(Error::DecodeFailed));
    }
}

// ---------------------------------------------------------------------------------------
// No panics on untrusted input
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Header parse: Truncated below 64 bytes, otherwise the first 64 bytes as they are.
    #[test]
    fn fuzz_header_parse(bytes in vec(any::<u8>(), 0..2048)) {
        match EnvelopeHeader::parse(&bytes) {
            Ok(h) => prop_assert_eq!(&h.to_bytes()[..], &bytes[..ENVELOPE_HEADER_SIZE]),
            Err(e) => {
                prop_assert!(bytes.len() < ENVELOPE_HEADER_SIZE);
                prop_assert_eq!(e, EnvelopeError::Truncated(bytes.len()));
            }
        }
    }

    /// parse_wire on arbitrary bytes and on arbitrary bodies behind "edgy" headers, with
    /// default, tiny and zero limits: an Ok result always obeys the header and the limits.
    #[test]
    fn fuzz_parse_wire(
        bytes in vec(any::<u8>(), 0..2048),
        h in edgy_header(),
        body in vec(any::<u8>(), 0..2048),
        exact in any::<bool>(),
    ) {
        let mut framed = h.to_bytes().to_vec();
        if exact {
            // Where the announced body is small enough, give exactly that many bytes.
            let n = usize::try_from(h.body_len()).unwrap().min(4096);
            framed.extend((0..n).map(|i| body.get(i % body.len().max(1)).copied().unwrap_or(0)));
        } else {
            framed.extend_from_slice(&body);
        }
        for input in [&bytes[..], &framed[..]] {
            for limits in [EnvelopeLimits::default(), tiny_limits(), zero_limits()] {
                if let Ok((hh, b)) = envelope::parse_wire(input, &limits) {
                    prop_assert_eq!(hh.validate(&limits), Ok(()));
                    prop_assert_eq!(b.len() as u64, hh.body_len());
                    prop_assert!(hh.frame_depth >= MIN_FRAME_DEPTH as u32);
                    prop_assert!(hh.frame_depth <= limits.max_frame_depth);
                    prop_assert!(hh.payload_len >= TAG_SIZE as u32 && hh.payload_len <= limits.max_payload_len);
                    prop_assert_eq!(&input[ENVELOPE_HEADER_SIZE..], b);
                }
            }
        }
        // The zero limits admit nothing at all.
        prop_assert!(envelope::parse_wire(&framed, &zero_limits()).is_err());
    }

    /// message::parse for depths 0..300: Ok only for a valid depth and enough bytes, and
    /// then the parts tile the input.
    #[test]
    fn fuzz_message_parse(bytes in vec(any::<u8>(), 0..2048), depth in 0usize..300) {
        let valid_depth = (MIN_FRAME_DEPTH..=MAX_FRAME_DEPTH).contains(&depth);
        match message::parse(&bytes, depth) {
            Ok(p) => {
                prop_assert!(valid_depth && bytes.len() >= 32 * depth + TAG_SIZE);
                prop_assert_eq!(p.frame_open_bytes().len(), 16 * depth);
                prop_assert_eq!(p.frame_close_bytes().len(), 16 * depth);
                let mut joined = p.frame_open_bytes().to_vec();
                joined.extend_from_slice(p.encoded_payload());
                joined.extend_from_slice(p.frame_close_bytes());
                prop_assert_eq!(&joined, &bytes);
                prop_assert!(p.frame_open().is_ok() && p.frame_close().is_ok());
            }
            Err(_) => prop_assert!(!valid_depth || bytes.len() < 32 * depth + TAG_SIZE),
        }
    }

    /// Frame::from_bytes: Ok exactly for whole blocks and a depth in range.
    #[test]
    fn fuzz_frame_from_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        let n = bytes.len();
        let ok = n % 16 == 0 && (MIN_FRAME_DEPTH..=MAX_FRAME_DEPTH).contains(&(n / 16));
        let r = Frame::from_bytes(bytes.clone());
        prop_assert_eq!(r.is_ok(), ok);
        if let Ok(f) = r {
            prop_assert_eq!(f.depth(), n / 16);
            prop_assert_eq!(f.into_bytes(), bytes);
        }
    }

    /// RekeyMessage::from_bytes: Ok exactly for 104 bytes, and then lossless.
    #[test]
    fn fuzz_rekey_from_bytes(bytes in vec(any::<u8>(), 0..2048), exact in any::<[u8; 104]>()) {
        let r = RekeyMessage::from_bytes(&bytes);
        prop_assert_eq!(r.is_ok(), bytes.len() == RekeyMessage::LEN);
        let m = RekeyMessage::from_bytes(&exact).unwrap();
        prop_assert_eq!(m.to_bytes(), exact);
        prop_assert_eq!(&m.sender.as_bytes()[..], &exact[..32]);
        prop_assert_eq!(&m.receiver.as_bytes()[..], &exact[32..64]);
        prop_assert_eq!(&m.ephemeral_public[..], &exact[64..96]);
        prop_assert_eq!(m.step, u64::from_be_bytes(exact[96..].try_into().unwrap()));
    }

    /// State::from_slice and every id's from_slice: Ok exactly at the right length.
    #[test]
    fn fuzz_from_slice(bytes in vec(any::<u8>(), 0..2048)) {
        let n = bytes.len();
        prop_assert_eq!(State::from_slice(&bytes).is_ok(), n == 32);
        prop_assert_eq!(RuntimeId::from_slice(&bytes).is_ok(), n == RuntimeId::LEN);
        prop_assert_eq!(AgentId::from_slice(&bytes).is_ok(), n == AgentId::LEN);
        prop_assert_eq!(BilateralId::from_slice(&bytes).is_ok(), n == BilateralId::LEN);
        prop_assert_eq!(ChannelId::from_slice(&bytes).is_ok(), n == ChannelId::LEN);
        prop_assert_eq!(MessageId::from_slice(&bytes).is_ok(), n == MessageId::LEN);
        if let Ok(c) = ChannelId::from_slice(&bytes) {
            prop_assert_eq!(&c.as_bytes()[..], &bytes[..]);
        }
    }

    /// Every id's FromStr on arbitrary text and on hex-like text: Ok exactly for 2·LEN hex
    /// digits (either case), and then Display gives the lowercase form back.
    #[test]
    fn fuzz_id_from_str(
        s in prop_oneof![any::<String>(), "[0-9a-fA-F]{0,70}", "[0-9a-f]{32}", "[0-9a-fA-F]{64}", "[0-9a-fé]{30,33}"],
    ) {
        fn check<T>(s: &str, len: usize) -> Result<(), TestCaseError>
        where
            T: core::str::FromStr + core::fmt::Display,
        {
            let valid = s.len() == 2 * len && s.bytes().all(|c| c.is_ascii_hexdigit());
            let r = s.parse::<T>();
            prop_assert_eq!(r.is_ok(), valid, "{:?}", s);
            if let Ok(id) = r {
                prop_assert_eq!(id.to_string(), s.to_ascii_lowercase());
            }
            Ok(())
        }
        check::<RuntimeId>(&s, 32)?;
        check::<AgentId>(&s, 32)?;
        check::<BilateralId>(&s, 32)?;
        check::<ChannelId>(&s, 16)?;
        check::<MessageId>(&s, 16)?;
    }

    /// decode of bytes nobody encoded always fails (and never panics).
    #[test]
    fn fuzz_decode(sl in state(), ch in channel(), step in any::<u64>(), bytes in vec(any::<u8>(), 0..2048)) {
        prop_assert_eq!(encoding::decode(&sl, &ch, step, &bytes), Err(Error::DecodeFailed));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// open_inbound with a header parsed (not validated) from arbitrary bytes, with an edgy
    /// header in front of arbitrary bytes, and with a validated header: always an error,
    /// never a panic.
    #[test]
    fn fuzz_open_inbound(
        bytes in vec(any::<u8>(), 64..2048),
        h in edgy_header(),
        body in vec(any::<u8>(), 0..2048),
        a in runtime(),
        b in runtime(),
    ) {
        let s = BilateralState::deterministic(&a, &b);
        let h1 = EnvelopeHeader::parse(&bytes).unwrap();
        prop_assert!(s.open_inbound(&h1, &bytes[ENVELOPE_HEADER_SIZE..]).is_err());
        prop_assert!(s.open_inbound(&h, &body).is_err());

        // Same header, a body of exactly the announced size (when that is small).
        if let Ok(n) = usize::try_from(h.body_len())
            && n <= 8192
        {
            let exact: Vec<u8> = (0..n).map(|i| body.get(i % body.len().max(1)).copied().unwrap_or(0)).collect();
            prop_assert!(s.open_inbound(&h, &exact).is_err());
            let mut wire = h.to_bytes().to_vec();
            wire.extend_from_slice(&exact);
            if let Ok((hv, bv)) = envelope::parse_wire(&wire, &EnvelopeLimits::default()) {
                prop_assert!(s.open_inbound(&hv, bv).is_err());
            }
        }
    }
}

/// Depth boundaries that the random sizes above do not reach.
#[test]
fn frame_and_message_depth_edges() {
    for k in [0usize, 1, MAX_FRAME_DEPTH + 1, usize::MAX / 16] {
        assert!(message::parse(&[0u8; 64], k).is_err(), "depth {k}");
    }
    assert!(Frame::from_bytes(vec![0; 16 * MAX_FRAME_DEPTH]).is_ok());
    assert!(Frame::from_bytes(vec![0; 16 * (MAX_FRAME_DEPTH + 1)]).is_err());
    let s = BilateralState::deterministic(&RuntimeId::from_bytes([1; 32]), &RuntimeId::from_bytes([2; 32]));
    let ch = ChannelId::from_bytes([3; 16]);
    assert!(s.seal_outbound(&RuntimeId::from_bytes([1; 32]), &ch, 1, b"x").is_err());
    assert!(s.seal_outbound(&RuntimeId::from_bytes([1; 32]), &ch, MAX_FRAME_DEPTH + 1, b"x").is_err());
    let ok = s.seal_outbound(&RuntimeId::from_bytes([1; 32]), &ch, MAX_FRAME_DEPTH, b"x").unwrap();
    // The default limits (depth ≤ 32) refuse it at the header, before any body work…
    let (h, _) = EnvelopeHeader::parse(&ok.wire).map(|h| (h, ())).unwrap();
    assert_eq!(
        h.validate(&EnvelopeLimits::default()),
        Err(EnvelopeError::DepthTooLarge { depth: MAX_FRAME_DEPTH as u32, max: 32 })
    );
    // …while a receiver that allows the protocol maximum opens it.
    let limits = EnvelopeLimits { max_frame_depth: MAX_FRAME_DEPTH as u32, max_payload_len: 1 << 20 };
    let (h, body) = envelope::parse_wire(&ok.wire, &limits).unwrap();
    assert_eq!(s.open_inbound(&h, body).unwrap().0, b"x");
    // A limit above the protocol cap is clamped to it.
    let mut big = h;
    big.frame_depth = MAX_FRAME_DEPTH as u32 + 1;
    let limits = EnvelopeLimits { max_frame_depth: u32::MAX, max_payload_len: u32::MAX };
    assert_eq!(
        big.validate(&limits),
        Err(EnvelopeError::DepthTooLarge { depth: MAX_FRAME_DEPTH as u32 + 1, max: MAX_FRAME_DEPTH as u32 })
    );
}
