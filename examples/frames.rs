//! # A tour of Mirror Frame Protocol frames
//!
//! Read this first. It walks one message through every building block of the sans-IO core
//! (`mfp::core`, the `mfp-core` crate), printing what happens at each step:
//!
//! 1. identities: a runtime, two agents, a channel;
//! 2. the channel's secret seed `Sl` and the runtime's global state `Sg` (a Merkle root);
//! 3. a frame sampled from `Sl`, `Sg`, the step and fresh OS entropy;
//! 4. the protocol message `M = frame_open ‖ E(P) ‖ frame_close`;
//! 5. the 64-byte `MFP1` envelope header and the wire message, parsed back;
//! 6. frame validation and payload decoding on the receiving side;
//! 7. the ratchet step that makes the next frame unpredictable;
//! 8. a cross-runtime message: runtime A seals, runtime B opens, both advance their shared
//!    (bilateral) state.
//!
//! Run it with `cargo run --example frames`.
//!
//! Public values (identifiers, frames, ciphertext) are shown as short hex prefixes. Secret
//! values (states, seeds, keys) are never printed: we show a *fingerprint* instead, the
//! first bytes of `SHA-256(secret)`, which is enough to see whether two secrets are equal.

use std::error::Error;
use std::fs::File;
use std::io::Read;

use mfp::core::bilateral::BilateralState;
use mfp::core::envelope::{self, EnvelopeFlags, EnvelopeHeader, EnvelopeLimits};
use mfp::core::{
    AgentId, ChannelId, DEFAULT_FRAME_DEPTH, EntropySource, Frame, MerkleSg, RuntimeId, State, TAG_SIZE, crypto,
    encoding, message, ratchet, sampling,
};

/// Entropy straight from the operating system's CSPRNG, `/dev/urandom`.
///
/// `mfp-core` never reads an RNG on its own: whoever calls it passes an
/// [`EntropySource`]. A real runtime would use its crypto library's system RNG; this demo
/// keeps to the standard library and therefore only runs where `/dev/urandom` exists.
struct Urandom(File);

impl Urandom {
    fn open() -> Result<Self, Box<dyn Error>> {
        let file = File::open("/dev/urandom")
            .map_err(|e| format!("this example needs /dev/urandom for entropy (Unix-like systems): {e}"))?;
        Ok(Self(file))
    }

    /// `N` fresh random bytes.
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], mfp::core::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out)?;
        Ok(out)
    }
}

impl EntropySource for Urandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), mfp::core::Error> {
        self.0.read_exact(dest).map_err(|_| mfp::core::Error::Entropy)
    }
}

/// The first 8 bytes of a public value as hex, followed by its total size.
fn show(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 8 { "…" } else { "" };
    format!("{hex}{more} ({} bytes)", bytes.len())
}

/// A fingerprint of a secret: the first 4 bytes of its SHA-256. Never the secret itself.
fn fp(secret: &State) -> String {
    let digest = crypto::sha256(&[secret.expose()]);
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("fp:{hex}")
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut rng = Urandom::open()?;

    // ---------------------------------------------------------------------------------
    println!("1. Identities");
    // A runtime's identity is SHA-256(deployment_id ‖ instance_id).
    let runtime = RuntimeId::derive(b"demo-deployment", b"instance-1");
    // An agent id is SHA-256(runtime_id ‖ u64be(counter) ‖ 8 random bytes); the first
    // agent a runtime binds uses counter 1.
    let alice = AgentId::derive(&runtime, 1, &rng.bytes()?);
    let bob = AgentId::derive(&runtime, 2, &rng.bytes()?);
    // A channel id is 16 random bytes.
    let channel = ChannelId::from_bytes(rng.bytes()?);
    println!("   runtime  {}", show(runtime.as_bytes()));
    println!("   alice    {}", show(alice.as_bytes()));
    println!("   bob      {}", show(bob.as_bytes()));
    println!("   channel  {}", show(channel.as_bytes()));

    // ---------------------------------------------------------------------------------
    println!("\n2. Channel seed Sl and global state Sg");
    // Sl0 = HMAC(runtime_id, lo ‖ hi ‖ channel_id), agents in sorted order, so Alice and
    // Bob derive the same seed whoever opened the channel.
    let mut sl = ratchet::channel_seed(&runtime, &alice, &bob, &channel);
    // Sg is a Merkle root over the states of all the runtime's channels (sorted by channel
    // id; leaf = SHA-256(Sl)). Add a second channel so the tree has two leaves.
    let carol = AgentId::derive(&runtime, 3, &rng.bytes()?);
    let other_channel = ChannelId::from_bytes(rng.bytes()?);
    let other_sl = ratchet::channel_seed(&runtime, &alice, &carol, &other_channel);
    let mut tree = MerkleSg::new();
    tree.insert(channel, &sl)?;
    tree.insert(other_channel, &other_sl)?;
    let mut sg = tree.root().ok_or("the tree has leaves, so it has a root")?;
    println!("   Sl (alice-bob)    {} 32 bytes, secret", fp(&sl));
    println!("   Sl (alice-carol)  {} 32 bytes, secret", fp(&other_sl));
    println!("   Sg ({} leaves)     {} 32 bytes, secret", tree.len(), fp(&sg));

    // ---------------------------------------------------------------------------------
    println!("\n3. Sampling a frame (step t = 0)");
    // ds = HMAC(Sl, u64be(t) ‖ Sg) keys a ChaCha20 keystream; each 16-byte block of the
    // frame is the next keystream block XOR 16 bytes of fresh OS entropy ("jitter").
    let mut step = 0u64;
    let depth = DEFAULT_FRAME_DEPTH;
    let frame = sampling::sample_frame(&sl, step, &sg, depth, &mut rng)?;
    println!("   depth k = {depth}, frame_open  {}", show(frame.as_bytes()));
    // The closing frame is the mirror: the byte-reversal of the opening frame.
    println!("   mirror,        frame_close {}", show(frame.mirror().as_bytes()));

    // ---------------------------------------------------------------------------------
    println!("\n4. The protocol message M = frame_open ‖ E(P) ‖ frame_close");
    let payload = b"Hello Bob, this is Alice.";
    // E(P) is AES-256-GCM with key HMAC(Sl, "mfp-encoding-key" ‖ "aes-256-gcm"), a nonce
    // derived from the key, channel and step, and channel ‖ step as associated data.
    let msg = message::assemble(&frame, &sl, &channel, step, payload)?;
    println!("   payload P   {}", show(payload));
    println!("   E(P)        {} bytes = |P| + {TAG_SIZE}-byte tag", payload.len() + TAG_SIZE);
    println!("   M           {} = 2·16·{depth} + {}", show(&msg), payload.len() + TAG_SIZE);

    // ---------------------------------------------------------------------------------
    println!("\n5. Envelope and wire message");
    // Between runtimes every message travels behind a 64-byte header giving the frame
    // depth and |E(P)|, so the receiver can split M. (Inside one runtime pymfp hands M over
    // directly; we wrap it here only to show the format.)
    let header = EnvelopeHeader::new(
        EnvelopeFlags::NONE,
        u32::try_from(depth)?,
        u32::try_from(payload.len() + TAG_SIZE)?,
        channel,
        step,
        &runtime,
    );
    let wire = envelope::assemble_wire(&header, &msg)?;
    println!("   header      {}  (magic \"MFP1\", version 1, …)", show(&header.to_bytes()));
    println!("   wire        {} = 64 + {}", show(&wire), msg.len());
    // The receiver checks the header against its limits *before* trusting the lengths.
    let (received, body) = envelope::parse_wire(&wire, &EnvelopeLimits::default())?;
    println!(
        "   parsed      depth {}, payload_len {}, step {}, channel {}",
        received.frame_depth,
        received.payload_len,
        received.step,
        received.channel_id.short()
    );

    // ---------------------------------------------------------------------------------
    println!("\n6. Receiving: validate the frame, decode the payload");
    let parts = message::parse(body, usize::try_from(received.frame_depth)?)?;
    // frame_close must mirror frame_open, and frame_open must be the frame we expect
    // (constant-time comparisons). Inside one runtime the expected frame is the one just
    // sampled; across runtimes the receiver re-derives it (see step 8).
    Frame::validate(&parts.frame_open()?, &parts.frame_close()?, &frame)?;
    let decoded = encoding::decode(&sl, &received.channel_id, received.step, parts.encoded_payload())?;
    if decoded != payload {
        return Err("decoded payload differs from the original".into());
    }
    println!("   frame valid; decoded {:?}", String::from_utf8_lossy(&decoded));
    // Tampering is detected: flip one bit of the ciphertext and decoding fails.
    let mut tampered = parts.encoded_payload().to_vec();
    if let Some(first) = tampered.first_mut() {
        *first ^= 1;
    }
    let rejected = encoding::decode(&sl, &channel, step, &tampered);
    println!("   one flipped bit → {:?}", rejected.map(|_| ()));

    // ---------------------------------------------------------------------------------
    println!("\n7. Advancing the ratchet");
    // Sl' = HMAC(Sl, frame_open), t' = t + 1. The old state cannot be recomputed from the
    // new one, and the next frame depends on this one. Sg is then recomputed.
    let before = fp(&sl);
    sl = ratchet::advance(&sl, &frame);
    step += 1;
    tree.update(&channel, &sl)?;
    sg = tree.root().ok_or("the tree has leaves, so it has a root")?;
    println!("   Sl {before} → {} at step {step}; new Sg {}", fp(&sl), fp(&sg));
    let next_frame = sampling::sample_frame(&sl, step, &sg, depth, &mut rng)?;
    println!("   next frame  {}", show(next_frame.as_bytes()));

    // ---------------------------------------------------------------------------------
    println!("\n8. Cross-runtime: runtime A seals, runtime B opens");
    let runtime_a = runtime;
    let runtime_b = RuntimeId::derive(b"demo-deployment", b"instance-2");
    // The two runtimes agree on a shared secret with X25519 (public keys exchanged out of
    // band) and derive the same bilateral state: ratchet R, PRNG seed P, step t = 0.
    let private_a = State::from_bytes(rng.bytes()?);
    let private_b = State::from_bytes(rng.bytes()?);
    let public_a = crypto::x25519_public(&private_a);
    let public_b = crypto::x25519_public(&private_b);
    let mut at_a = BilateralState::ceremonial(&crypto::x25519_shared(&private_a, &public_b)?, &runtime_a, &runtime_b);
    let mut at_b = BilateralState::ceremonial(&crypto::x25519_shared(&private_b, &public_a)?, &runtime_b, &runtime_a);
    println!("   A's public key {}", show(&public_a));
    println!("   B's public key {}", show(&public_b));
    println!("   bilateral R at A {}, at B {} (equal)", fp(&at_a.ratchet), fp(&at_b.ratchet));

    // Cross-runtime frames are deterministic (both sides must compute them) and keyed by
    // the shared state, so the receiver re-derives the frame instead of being told it.
    let cross_channel = ChannelId::from_bytes(rng.bytes()?);
    let out = at_a.seal_outbound(&runtime_a, &cross_channel, depth, b"Hello runtime B")?;
    println!("   A sends     {} at step {}", show(&out.wire), out.header.step);
    at_a = out.next; // A commits its new state once the message is handed off.

    // B: check the header, the sender, then re-derive and validate the frame and decode.
    let (header_b, body_b) = envelope::parse_wire(&out.wire, &EnvelopeLimits::default())?;
    header_b.check_sender(&runtime_a)?;
    let (payload_b, next_b) = at_b.open_inbound(&header_b, body_b)?;
    at_b = next_b;
    println!("   B receives  {:?}", String::from_utf8_lossy(&payload_b));

    // One shared state for both directions: B's reply uses step 1.
    let reply = at_b.seal_outbound(&runtime_b, &cross_channel, depth, b"Hello runtime A")?;
    at_b = reply.next;
    let (header_a, body_a) = envelope::parse_wire(&reply.wire, &EnvelopeLimits::default())?;
    header_a.check_sender(&runtime_b)?;
    let (payload_a, next_a) = at_a.open_inbound(&header_a, body_a)?;
    at_a = next_a;
    println!("   A receives  {:?} (step {})", String::from_utf8_lossy(&payload_a), header_a.step);
    if at_a != at_b {
        return Err("the two runtimes' bilateral states diverged".into());
    }
    println!("   both at step {}, R {}", at_a.step, fp(&at_a.ratchet));
    Ok(())
}
