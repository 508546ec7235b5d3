//! The link handshake: `Noise_IK_25519_AESGCM_SHA256` between two pinned runtimes.
//!
//! The initiator knows the responder's pinned key; the responder knows every peer it
//! accepts (a [`PeerTable`]: runtime id → pinned key). Message 1 travels in a
//! [`FrameKind::HandshakeInit`] frame after the two runtime ids in clear, so the responder
//! can refuse an unknown initiator with a table lookup alone, before any Diffie-Hellman
//! and before any per-peer state exists. Both ids are bound into the Noise prologue, so
//! a rewritten id makes the handshake fail.
//!
//! Message 1's encrypted payload carries a timestamp (seconds and nanoseconds, à la
//! WireGuard's TAI64N); the responder accepts it only if it is greater than the greatest
//! one it accepted from that peer before, so a recorded message 1 replayed to it yields no
//! session. Message 2's payload is the version byte alone: positions are exchanged per
//! channel inside the session ([`crate::control::Control::Position`]), and channel secrets
//! travel inside the Noise transport, so the handshake exports no secret of its own.
//!
//! Only a completed handshake yields an [`Established`] value, and only that value can
//! become a [`crate::session::Session`] that carries messages: there is no way to send
//! data from a handshake state:
//!
//! ```compile_fail
//! # use mfp_federation::handshake::Initiator;
//! // A handshake in progress has no way to carry data.
//! fn send_early(i: &mut Initiator) -> Option<Vec<u8>> { i.poll_transmit(std::time::Instant::now()) }
//! ```
//!
//! A complete run, both sides in one process:
//!
//! ```
//! use std::time::Instant;
//! use mfp_core::{FnEntropy, RuntimeId};
//! use mfp_federation::codec::Decoder;
//! use mfp_federation::handshake::{self, Initiator, LocalIdentity, PeerTable, Timestamp};
//! use mfp_federation::session::{Session, SessionConfig};
//! use mfp_federation::IdentityKey;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = LocalIdentity { runtime: RuntimeId::derive(b"d", b"a"), key: IdentityKey::generate_os()? };
//! let b = LocalIdentity { runtime: RuntimeId::derive(b"d", b"b"), key: IdentityKey::generate_os()? };
//! let mut b_peers = PeerTable::new();
//! b_peers.pin(a.runtime, a.key.public());
//! let mut entropy = mfp_federation::OsEntropy::new();
//! let now = Timestamp::from_unix(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?);
//!
//! let (initiator, hs1) = Initiator::start(&a, b.runtime, b.key.public(), now, &mut entropy)?;
//! let frame1 = Decoder::new(65_535).decode(&mut &hs1[..])?.ok_or("incomplete")?;
//! let (est_b, hs2) = handshake::accept(&b, &mut b_peers, &frame1, &mut entropy)?.finish(&mut entropy)?;
//! let frame2 = Decoder::new(65_535).decode(&mut &hs2[..])?.ok_or("incomplete")?;
//! let est_a = initiator.complete(&frame2)?;
//!
//! let session = Session::new(est_a, SessionConfig::default(), Instant::now())?;
//! assert_eq!(session.peer(), b.runtime);
//! # let _ = est_b; Ok(()) }
//! ```
//!
//! Toward the peer errors are coarse: a responder that refuses sends nothing and the
//! transport closes the connection. The [`HandshakeError`] returned to the operator says
//! why.

use core::fmt;
use std::collections::HashMap;
use std::sync::Mutex;

use mfp_core::crypto::hmac_sha256;
use mfp_core::{EntropySource, RuntimeId};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::codec::{self, CodecError, FrameKind, LinkFrame};
use crate::identity::{IdentityKey, PublicKey};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Version of the link protocol, carried in the prologue and both handshake payloads.
pub const LINK_PROTOCOL_VERSION: u8 = 1;
/// The prologue starts with these bytes, then the version byte and both runtime ids.
pub const PROLOGUE_LABEL: &[u8] = b"mfp-federation Noise_IK_25519_AESGCM_SHA256";

/// Message 1's payload: version, timestamp.
const INIT_PAYLOAD_LEN: usize = 1 + 12;
/// Message 2's payload: version.
const RESP_PAYLOAD_LEN: usize = 1;
const DH_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Noise message 1 of `IK`: `e`, encrypted `s`, encrypted payload.
const NOISE_MSG1_LEN: usize = DH_LEN + DH_LEN + TAG_LEN + INIT_PAYLOAD_LEN + TAG_LEN;
/// Noise message 2 of `IK`: `e`, encrypted payload.
const NOISE_MSG2_LEN: usize = DH_LEN + RESP_PAYLOAD_LEN + TAG_LEN;

/// Which side of the handshake a session was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that dialled and sent message 1.
    Initiator,
    /// The side that accepted and sent message 2.
    Responder,
}

/// A wall-clock time as carried in message 1: seconds and nanoseconds since the Unix
/// epoch. Compared as a pair; passed in by the caller (no clock is read here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: u64,
    /// Nanoseconds within the second (below 10⁹).
    pub nanos: u32,
}

impl Timestamp {
    /// From a duration since the Unix epoch (e.g. `SystemTime::now().duration_since(UNIX_EPOCH)`).
    #[must_use]
    pub const fn from_unix(since_epoch: core::time::Duration) -> Self {
        Self { secs: since_epoch.as_secs(), nanos: since_epoch.subsec_nanos() }
    }

    fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        let (s, n) = out.split_at_mut(8);
        s.copy_from_slice(&self.secs.to_be_bytes());
        n.copy_from_slice(&self.nanos.to_be_bytes());
        out
    }
}

/// Errors of the handshake, for the operator. Nothing of this is sent to the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Message 1 names an initiator that is not in the peer table.
    #[error(
        "handshake refused: runtime {0} is not a configured peer (add it with its pinned key if it should connect)"
    )]
    UnknownPeer(String),
    /// Message 1 is addressed to another runtime.
    #[error(
        "handshake refused: the initiator addressed runtime {0}, not this one (check the peer's configuration of this runtime's id)"
    )]
    WrongResponder(String),
    /// The initiator's static key is not the one pinned for its claimed runtime id.
    #[error(
        "handshake refused: runtime {0} presented a static key that does not match its pinned key (a key change or an impostor: verify the key out of band before re-pinning)"
    )]
    KeyMismatch(String),
    /// Message 1's timestamp is not greater than one already accepted from that peer.
    #[error(
        "handshake refused: message 1 from runtime {0} is not newer than one already accepted (a replay, or the peer's clock went backwards)"
    )]
    Replayed(String),
    /// The Noise handshake failed: a tampered message, or the responder does not hold
    /// the key the initiator pinned.
    #[error(
        "handshake with runtime {0} failed authentication (tampered bytes, or the responder's key is not the pinned one)"
    )]
    Authentication(String),
    /// A message does not have the expected layout.
    #[error("handshake with runtime {peer}: malformed {what}")]
    Malformed {
        /// The peer (or `unknown`).
        peer: String,
        /// What was wrong.
        what: &'static str,
    },
    /// A frame of another kind arrived during the handshake.
    #[error("handshake: expected a {expected:?} frame, got {got:?}")]
    UnexpectedFrame {
        /// Kind expected.
        expected: FrameKind,
        /// Kind received.
        got: FrameKind,
    },
    /// The entropy source failed.
    #[error("handshake: entropy source failed: {0}")]
    Entropy(mfp_core::Error),
    /// The Noise library refused its configuration (a bug, not a peer's fault).
    #[error("handshake: Noise setup failed: {0}")]
    Setup(String),
    /// Framing failed.
    #[error("handshake: {0}")]
    Codec(#[from] CodecError),
}

/// This runtime's identity as used by handshakes.
#[derive(Debug)]
pub struct LocalIdentity {
    /// This runtime's id.
    pub runtime: RuntimeId,
    /// This runtime's long-term key.
    pub key: IdentityKey,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    key: PublicKey,
    greatest_timestamp: Option<Timestamp>,
}

/// The configured peers a responder accepts: runtime id → pinned key, and the greatest
/// message-1 timestamp accepted from each.
#[derive(Debug, Default, Clone)]
pub struct PeerTable {
    peers: HashMap<RuntimeId, PeerEntry>,
}

impl PeerTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `key` for `runtime` (replacing an earlier pin and forgetting its timestamp).
    pub fn pin(&mut self, runtime: RuntimeId, key: PublicKey) {
        self.peers.insert(runtime, PeerEntry { key, greatest_timestamp: None });
    }

    /// The key pinned for `runtime`.
    #[must_use]
    pub fn key(&self, runtime: &RuntimeId) -> Option<PublicKey> {
        self.peers.get(runtime).map(|p| p.key)
    }

    /// The greatest message-1 timestamp accepted from `runtime` (persist it with the
    /// table to keep replay protection across restarts).
    #[must_use]
    pub fn greatest_timestamp(&self, runtime: &RuntimeId) -> Option<Timestamp> {
        self.peers.get(runtime).and_then(|p| p.greatest_timestamp)
    }

    /// Restores a persisted greatest timestamp.
    pub fn set_greatest_timestamp(&mut self, runtime: &RuntimeId, ts: Timestamp) {
        if let Some(p) = self.peers.get_mut(runtime) {
            p.greatest_timestamp = Some(ts);
        }
    }
}

/// The result of a completed handshake: the only way to a [`crate::session::Session`].
pub struct Established {
    pub(crate) role: Role,
    pub(crate) local: RuntimeId,
    pub(crate) peer: RuntimeId,
    pub(crate) transport: snow::TransportState,
    handshake_hash: [u8; 32],
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("role", &self.role)
            .field("local", &self.local.short())
            .field("peer", &self.peer.short())
            .finish_non_exhaustive()
    }
}

impl Established {
    /// The authenticated peer.
    #[must_use]
    pub const fn peer(&self) -> RuntimeId {
        self.peer
    }

    /// This side's role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// The Noise handshake hash (public: computed from the transcript; usable for channel
    /// binding, not as a secret).
    #[must_use]
    pub const fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }
}

/// A snow resolver that takes the ephemeral key's randomness from the caller's entropy.
struct SeededResolver {
    seed: Mutex<Option<Zeroizing<[u8; 32]>>>,
}

struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
}

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        for chunk in dest.chunks_mut(32) {
            let block = Zeroizing::new(hmac_sha256(self.seed.as_ref(), &[b"rng", &self.counter.to_be_bytes()]));
            self.counter = self.counter.checked_add(1).ok_or(snow::Error::Rng)?;
            let n = chunk.len();
            chunk.copy_from_slice(block.get(..n).ok_or(snow::Error::Rng)?);
        }
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let seed = self.seed.lock().ok()?.take()?;
        Some(Box::new(SeededRng { seed, counter: 0 }))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

fn setup(e: snow::Error) -> HandshakeError {
    HandshakeError::Setup(e.to_string())
}

fn prologue(initiator: &RuntimeId, responder: &RuntimeId) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + 1 + 64);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.push(LINK_PROTOCOL_VERSION);
    p.extend_from_slice(initiator.as_bytes());
    p.extend_from_slice(responder.as_bytes());
    p
}

fn builder_with_entropy<'a>(
    entropy: &mut dyn EntropySource,
    local_key: &'a [u8],
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(setup)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    entropy.fill(seed.as_mut()).map_err(HandshakeError::Entropy)?;
    let resolver = FallbackResolver::new(
        Box::new(SeededResolver { seed: Mutex::new(Some(seed)) }),
        Box::new(FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver))),
    );
    snow::Builder::with_resolver(params, Box::new(resolver))
        .local_private_key(local_key)
        .map_err(setup)?
        .prologue(prologue)
        .map_err(setup)
}

fn hash32(hs: &snow::HandshakeState) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(h) = hs.get_handshake_hash().get(..32) {
        out.copy_from_slice(h);
    }
    out
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

/// The initiator after sending message 1, waiting for message 2.
pub struct Initiator {
    hs: snow::HandshakeState,
    local: RuntimeId,
    peer: RuntimeId,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator").field("peer", &self.peer.short()).finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with `peer`, whose key is pinned as `peer_key`; `now` is the wall
    /// clock. Returns the initiator and the bytes of the first link frame to send.
    pub fn start(
        local: &LocalIdentity,
        peer: RuntimeId,
        peer_key: PublicKey,
        now: Timestamp,
        entropy: &mut dyn EntropySource,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let plog = prologue(&local.runtime, &peer);
        let mut hs = builder_with_entropy(entropy, local.key.secret(), &plog)?
            .remote_public_key(peer_key.as_bytes())
            .map_err(setup)?
            .build_initiator()
            .map_err(setup)?;
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        {
            let (v, ts) = payload.split_at_mut(1);
            v.copy_from_slice(&[LINK_PROTOCOL_VERSION]);
            ts.copy_from_slice(&now.to_bytes());
        }
        let mut body = Vec::with_capacity(64 + NOISE_MSG1_LEN);
        body.extend_from_slice(local.runtime.as_bytes());
        body.extend_from_slice(peer.as_bytes());
        body.resize(64 + NOISE_MSG1_LEN, 0);
        let n = hs.write_message(&payload, body.get_mut(64..).unwrap_or_default()).map_err(setup)?;
        body.truncate(64 + n);
        let frame = codec::encode(FrameKind::HandshakeInit, &body)?;
        Ok((Self { hs, local: local.runtime, peer }, frame))
    }

    /// The peer this handshake is with.
    #[must_use]
    pub const fn peer(&self) -> RuntimeId {
        self.peer
    }

    /// Reads message 2 and completes the handshake.
    pub fn complete(mut self, frame: &LinkFrame) -> Result<Established, HandshakeError> {
        let who = self.peer.short();
        if frame.kind != FrameKind::HandshakeResponse {
            return Err(HandshakeError::UnexpectedFrame { expected: FrameKind::HandshakeResponse, got: frame.kind });
        }
        if frame.body.len() != NOISE_MSG2_LEN {
            return Err(HandshakeError::Malformed { peer: who, what: "message 2 length" });
        }
        let mut payload = Zeroizing::new(vec![0u8; frame.body.len()]);
        let n = self
            .hs
            .read_message(&frame.body, payload.as_mut_slice())
            .map_err(|_| HandshakeError::Authentication(who.clone()))?;
        let p = payload.get(..n).unwrap_or_default();
        if n != RESP_PAYLOAD_LEN || p != [LINK_PROTOCOL_VERSION] {
            return Err(HandshakeError::Malformed { peer: who, what: "message 2 payload" });
        }
        let handshake_hash = hash32(&self.hs);
        let transport = self.hs.into_transport_mode().map_err(setup)?;
        Ok(Established { role: Role::Initiator, local: self.local, peer: self.peer, transport, handshake_hash })
    }
}

/// A responder that has authenticated message 1 and may now answer it.
pub struct Accepted {
    hs: snow::HandshakeState,
    local: RuntimeId,
    peer: RuntimeId,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted").field("peer", &self.peer.short()).finish_non_exhaustive()
    }
}

/// Reads message 1 as the responder. Refuses an unknown initiator by a table lookup before
/// any cryptography, then a static key that is not the pinned one, then a timestamp not
/// newer than the greatest accepted from that peer (which it then records).
pub fn accept(
    local: &LocalIdentity,
    peers: &mut PeerTable,
    frame: &LinkFrame,
    entropy: &mut dyn EntropySource,
) -> Result<Accepted, HandshakeError> {
    if frame.kind != FrameKind::HandshakeInit {
        return Err(HandshakeError::UnexpectedFrame { expected: FrameKind::HandshakeInit, got: frame.kind });
    }
    let malformed = |what| HandshakeError::Malformed { peer: "unknown".into(), what };
    let initiator = frame.body.get(..32).and_then(|b| RuntimeId::from_slice(b).ok()).ok_or(malformed("message 1"))?;
    let responder = frame.body.get(32..64).and_then(|b| RuntimeId::from_slice(b).ok()).ok_or(malformed("message 1"))?;
    let noise = frame.body.get(64..).unwrap_or_default();
    if responder != local.runtime {
        return Err(HandshakeError::WrongResponder(responder.short()));
    }
    let who = initiator.short();
    let pinned = peers.key(&initiator).ok_or_else(|| HandshakeError::UnknownPeer(who.clone()))?;
    if noise.len() != NOISE_MSG1_LEN {
        return Err(HandshakeError::Malformed { peer: who, what: "message 1 length" });
    }
    let plog = prologue(&initiator, &local.runtime);
    let mut hs = builder_with_entropy(entropy, local.key.secret(), &plog)?.build_responder().map_err(setup)?;
    let mut payload = Zeroizing::new(vec![0u8; noise.len()]);
    let n = hs.read_message(noise, payload.as_mut_slice()).map_err(|_| HandshakeError::Authentication(who.clone()))?;
    let static_ok = hs.get_remote_static().is_some_and(|s| pinned.ct_matches(s));
    if !static_ok {
        return Err(HandshakeError::KeyMismatch(who));
    }
    let p = payload.get(..n).unwrap_or_default();
    if n != INIT_PAYLOAD_LEN || p.first() != Some(&LINK_PROTOCOL_VERSION) {
        return Err(HandshakeError::Malformed { peer: who, what: "message 1 payload" });
    }
    let (Some(secs), Some(nanos)) =
        (read_u64(p, 1), p.get(9..13).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes))
    else {
        return Err(HandshakeError::Malformed { peer: who, what: "message 1 payload" });
    };
    let ts = Timestamp { secs, nanos };
    if nanos >= 1_000_000_000 {
        return Err(HandshakeError::Malformed { peer: who, what: "message 1 timestamp" });
    }
    if peers.greatest_timestamp(&initiator).is_some_and(|g| ts <= g) {
        return Err(HandshakeError::Replayed(who));
    }
    peers.set_greatest_timestamp(&initiator, ts);
    Ok(Accepted { hs, local: local.runtime, peer: initiator })
}

impl Accepted {
    /// The authenticated initiator.
    #[must_use]
    pub const fn peer(&self) -> RuntimeId {
        self.peer
    }

    /// Writes message 2 and completes the handshake. Returns the session material and the
    /// bytes of the link frame to send.
    ///
    /// The responder's ephemeral key was drawn from the entropy given to [`accept`], and
    /// message 2 carries no other randomness, so `_entropy` is not read; the parameter is
    /// kept so that transports written against this signature need not change.
    pub fn finish(mut self, _entropy: &mut dyn EntropySource) -> Result<(Established, Vec<u8>), HandshakeError> {
        let payload = [LINK_PROTOCOL_VERSION; RESP_PAYLOAD_LEN];
        let mut msg = vec![0u8; NOISE_MSG2_LEN];
        let n = self.hs.write_message(&payload, &mut msg).map_err(setup)?;
        msg.truncate(n);
        let frame = codec::encode(FrameKind::HandshakeResponse, &msg)?;
        let handshake_hash = hash32(&self.hs);
        let transport = self.hs.into_transport_mode().map_err(setup)?;
        let est = Established { role: Role::Responder, local: self.local, peer: self.peer, transport, handshake_hash };
        Ok((est, frame))
    }
}
