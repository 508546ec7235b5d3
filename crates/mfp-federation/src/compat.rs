//! pymfp compat peers: talking to a pymfp 1.0.0 runtime on its own terms.
//!
//! **Unauthenticated and unsafe; chosen only by explicit configuration.** pymfp 1.0.0 has
//! no handshake, no transport security and one bilateral chain shared by both directions.
//! A compat peer speaks exactly that:
//!
//! - plain TCP carrying raw `MFP1` wire messages back to back, no other framing
//!   ([`EnvelopeStream`] decodes them, checking every header against the receiver's limits
//!   before the body is buffered);
//! - one [`BilateralState`] per runtime pair, bootstrapped deterministically (a seed anyone
//!   who knows the two `deployment/instance` names can compute) or ceremonially (an X25519
//!   secret agreed out of band), advanced by every message in either direction
//!   ([`shared_chain`]);
//! - cross-runtime channels whose 16-byte ids and depths are agreed in configuration,
//!   because pymfp cannot agree on them on the wire ([`CompatChannel`]).
//!
//! What is unsafe about it, and stays so whatever this module does:
//!
//! - **No authentication.** Anyone who can reach the socket can write envelopes; with the
//!   deterministic bootstrap anyone who knows (or guesses) both runtime names can also
//!   decrypt and forge every message, forever.
//! - **(key, nonce) reuse when both sides send at once.** The AES-GCM key and nonce depend
//!   only on the shared chain's state and step; two messages sent from opposite sides at
//!   the same step are encrypted under the same key and nonce, which breaks both
//!   confidentiality and integrity. Only a strict alternation (or a single direction) of
//!   traffic is safe, and nothing on the wire enforces it.
//! - **No recovery.** A message lost, rejected or reordered leaves the two sides at
//!   different steps; every later message then fails on both sides until the states are
//!   repaired out of band.
//!
//! The native federation (the rest of this crate) has none of these problems; use it
//! between mfp runtimes. This module is sans-IO like the rest of the crate: bytes in, bytes
//! out, no sockets.
//!
//! Where [`CompatLink`] is stricter than pymfp (pymfp accepts all of these): it refuses
//! envelopes whose `sender_runtime` is not the configured peer, whose channel is not one of
//! the agreed channels, whose depth differs from the channel's agreed depth, whose header
//! step is not the chain's step, or whose flags are not zero. pymfp itself never sends such
//! envelopes, so a genuine pymfp peer is never refused for them.

use core::fmt;

use mfp_core::bilateral::BilateralState;
use mfp_core::envelope::{EnvelopeHeader, EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId, ENVELOPE_HEADER_SIZE, EnvelopeError, MIN_FRAME_DEPTH, RuntimeId};

use crate::identity::{IdentityKey, PublicKey};

/// Largest frame depth a compat channel may be configured with (pymfp's declared maximum).
pub const MAX_COMPAT_DEPTH: usize = 32;

/// Errors of compat peer configuration and of sending to a compat peer. Messages name the
/// peer or channel and what to do; they never contain keys, states or payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompatError {
    /// The peer's runtime id is not `deployment/instance`.
    #[error(
        "pymfp peer runtime id {0:?} is not \"deployment_id/instance_id\" (both parts non-empty, as in the peer's RuntimeConfig)"
    )]
    RuntimeIdFormat(String),
    /// The endpoint is not `host:port`.
    #[error("pymfp peer {peer}: endpoint {endpoint:?} must be host:port with a port from 1 to 65535")]
    Endpoint {
        /// The peer.
        peer: String,
        /// The endpoint given.
        endpoint: String,
    },
    /// A channel id is not 32 hex digits.
    #[error("pymfp peer {peer}: channel id {value:?} must be 32 hex digits (the 16-byte id agreed with the peer)")]
    ChannelId {
        /// The peer.
        peer: String,
        /// The text given.
        value: String,
    },
    /// An agent id is not 64 hex digits.
    #[error("pymfp peer {peer}: agent id {value:?} must be 64 hex digits")]
    AgentId {
        /// The peer.
        peer: String,
        /// The text given.
        value: String,
    },
    /// A channel depth outside `2..=32`.
    #[error("pymfp peer {peer}: channel {channel} has depth {depth}; it must be from 2 to 32 and equal to the peer's")]
    Depth {
        /// The peer.
        peer: String,
        /// The channel.
        channel: ChannelId,
        /// The depth given.
        depth: usize,
    },
    /// The same channel id configured twice.
    #[error("pymfp peer {peer}: channel {channel} is configured twice")]
    DuplicateChannel {
        /// The peer.
        peer: String,
        /// The channel.
        channel: ChannelId,
    },
    /// A key file that cannot be used.
    #[error("pymfp peer {peer}: key file {path}: {reason}")]
    KeyFile {
        /// The peer.
        peer: String,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong and what to do (never the key).
        reason: String,
    },
    /// A secret key given as text that is not 64 hex digits.
    #[error("pymfp peer {peer}: the X25519 secret key must be 64 hex digits (pymfp's raw private bytes)")]
    SecretKey {
        /// The peer.
        peer: String,
    },
    /// A public key that is neither `mfp-x25519:<hex>` nor 64 hex digits.
    #[error("pymfp peer {peer}: the peer's X25519 public key must be 64 hex digits (optionally prefixed mfp-x25519:)")]
    PublicKey {
        /// The peer.
        peer: String,
    },
    /// The ceremonial keys give a non-contributory X25519 secret (a low-order public key).
    #[error(
        "pymfp peer {peer}: the X25519 agreement with the configured public key gives no shared secret (a low-order key); check the peer's public key"
    )]
    KeyAgreement {
        /// The peer.
        peer: String,
    },
    /// A send on a channel that is not one of the peer's agreed channels.
    #[error("channel {channel} is not an agreed channel of pymfp peer {peer}")]
    UnknownChannel {
        /// The peer.
        peer: String,
        /// The channel.
        channel: ChannelId,
    },
    /// Sealing failed (payload too large for the envelope, or the step space exhausted).
    #[error("could not seal a message for pymfp peer {peer} on channel {channel}: {source}")]
    Seal {
        /// The peer.
        peer: String,
        /// The channel.
        channel: ChannelId,
        /// What failed.
        source: mfp_core::Error,
    },
}

/// How the shared chain with a compat peer is bootstrapped.
pub enum Bootstrap {
    /// pymfp's `bootstrap_bilateral_deterministic`: derived from the two runtime ids only.
    /// **Public**: anyone who knows both `deployment/instance` names has every key.
    Deterministic,
    /// pymfp's `bootstrap_bilateral_ceremonial`: derived from the X25519 secret of our key
    /// and the peer's public key, exchanged out of band.
    Ceremonial {
        /// Our X25519 secret key (an mfp identity key file or 32 raw bytes).
        local_secret: IdentityKey,
        /// The peer's X25519 public key.
        peer_public: PublicKey,
    },
}

impl fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bootstrap::Deterministic => f.write_str("Deterministic"),
            Bootstrap::Ceremonial { local_secret, peer_public } => f
                .debug_struct("Ceremonial")
                .field("local_public", &local_secret.public())
                .field("peer_public", peer_public)
                .finish(),
        }
    }
}

/// Parses a peer's X25519 public key: `mfp-x25519:<64 hex>` or the 64 hex digits pymfp's
/// `generate_dh_keypair` public bytes print as.
pub fn parse_public_key(peer: &str, text: &str) -> Result<PublicKey, CompatError> {
    let t = text.trim();
    let digits = t.strip_prefix(crate::identity::PUBLIC_KEY_PREFIX).unwrap_or(t);
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).map_err(|_| CompatError::PublicKey { peer: peer.to_string() })?;
    Ok(PublicKey::from_bytes(out))
}

/// Reads a peer's X25519 public key from a file (either form [`parse_public_key`] takes,
/// one line; at most 256 bytes are read).
pub fn load_public_key(peer: &str, path: &std::path::Path) -> Result<PublicKey, CompatError> {
    use std::io::Read;
    let err = |reason: String| CompatError::KeyFile { peer: peer.to_string(), path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(257).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    if text.len() > 256 {
        return Err(err("longer than a public key file can be (one line of at most 256 bytes)".into()));
    }
    parse_public_key(peer, &text)
        .map_err(|_| err("expected one line: 64 hex digits, optionally prefixed mfp-x25519:".into()))
}

/// Our X25519 secret key from the 64 hex digits of pymfp's raw private bytes (e.g. from a
/// configuration value). Prefer a key file ([`IdentityKey::load`]: mode `0600`, never
/// printed) over a secret written in a configuration file.
pub fn secret_key_from_hex(peer: &str, text: &str) -> Result<IdentityKey, CompatError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| CompatError::SecretKey { peer: peer.to_string() })?;
    Ok(IdentityKey::from_secret_bytes(*bytes))
}

/// A cross-runtime channel agreed with a compat peer in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompatChannel {
    /// The 16-byte channel id both sides use (on the pymfp side, the id its
    /// `establish_cross_runtime_channel` returned is replaced by this one).
    pub id: ChannelId,
    /// Frame depth; both sides must use the same.
    pub depth: usize,
    /// Our agent on this channel.
    pub local_agent: AgentId,
    /// The pymfp agent on this channel (what pymfp's `remote_agent_id` names on our side).
    pub remote_agent: AgentId,
}

/// A pymfp peer runtime, as configured.
#[derive(Debug)]
pub struct CompatPeer {
    name: String,
    runtime: RuntimeId,
    endpoint: String,
    bootstrap: Bootstrap,
    channels: Vec<CompatChannel>,
}

fn check_endpoint(peer: &str, endpoint: &str) -> Result<(), CompatError> {
    let ok =
        endpoint.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok { Ok(()) } else { Err(CompatError::Endpoint { peer: peer.to_string(), endpoint: endpoint.to_string() }) }
}

impl CompatPeer {
    /// A peer named as pymfp's configuration names it: `"deployment_id/instance_id"`
    /// (split at the first `/`); its identity is `SHA-256(deployment_id ‖ instance_id)`.
    pub fn new(runtime_id: &str, endpoint: &str, bootstrap: Bootstrap) -> Result<Self, CompatError> {
        let (dep, inst) = runtime_id
            .split_once('/')
            .filter(|(d, i)| !d.is_empty() && !i.is_empty())
            .ok_or_else(|| CompatError::RuntimeIdFormat(runtime_id.to_string()))?;
        let runtime = RuntimeId::derive(dep.as_bytes(), inst.as_bytes());
        Self::with_runtime_id(runtime_id.to_string(), runtime, endpoint, bootstrap)
    }

    /// A peer given by its 32-byte identity (`name` is what messages call it).
    pub fn with_runtime_id(
        name: String,
        runtime: RuntimeId,
        endpoint: &str,
        bootstrap: Bootstrap,
    ) -> Result<Self, CompatError> {
        check_endpoint(&name, endpoint)?;
        Ok(Self { name, runtime, endpoint: endpoint.to_string(), bootstrap, channels: Vec::new() })
    }

    /// Adds an agreed channel.
    pub fn add_channel(&mut self, channel: CompatChannel) -> Result<(), CompatError> {
        if !(MIN_FRAME_DEPTH..=MAX_COMPAT_DEPTH).contains(&channel.depth) {
            return Err(CompatError::Depth { peer: self.name.clone(), channel: channel.id, depth: channel.depth });
        }
        if self.channel(&channel.id).is_some() {
            return Err(CompatError::DuplicateChannel { peer: self.name.clone(), channel: channel.id });
        }
        self.channels.push(channel);
        Ok(())
    }

    /// Adds an agreed channel from configuration text: the channel id (32 hex digits), the
    /// depth, our agent's id and the pymfp agent's id (64 hex digits each).
    pub fn add_channel_text(
        &mut self,
        channel_id: &str,
        depth: usize,
        local_agent: &str,
        remote_agent: &str,
    ) -> Result<(), CompatError> {
        let id = channel_id
            .trim()
            .parse::<ChannelId>()
            .map_err(|_| CompatError::ChannelId { peer: self.name.clone(), value: channel_id.to_string() })?;
        let agent = |v: &str| {
            v.trim()
                .parse::<AgentId>()
                .map_err(|_| CompatError::AgentId { peer: self.name.clone(), value: v.to_string() })
        };
        let channel = CompatChannel { id, depth, local_agent: agent(local_agent)?, remote_agent: agent(remote_agent)? };
        self.add_channel(channel)
    }

    /// The name the peer was configured with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's 32-byte identity.
    #[must_use]
    pub const fn runtime(&self) -> &RuntimeId {
        &self.runtime
    }

    /// The peer's `host:port`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How the shared chain is bootstrapped.
    #[must_use]
    pub const fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// The agreed channels.
    #[must_use]
    pub fn channels(&self) -> &[CompatChannel] {
        &self.channels
    }

    /// The agreed channel with this id.
    #[must_use]
    pub fn channel(&self, id: &ChannelId) -> Option<&CompatChannel> {
        self.channels.iter().find(|c| c.id == *id)
    }
}

/// The shared bilateral chain with `peer`, exactly as pymfp derives it on both sides
/// (`bootstrap_bilateral_deterministic` / `bootstrap_bilateral_ceremonial`): step 0, the
/// two identities in lexicographic order, the ceremonial secret the X25519 agreement of
/// our key with the peer's public key.
///
/// Fails only for a ceremonial bootstrap whose agreement is non-contributory.
pub fn shared_chain(local: &RuntimeId, peer: &CompatPeer) -> Result<BilateralState, CompatError> {
    match &peer.bootstrap {
        Bootstrap::Deterministic => Ok(BilateralState::deterministic(local, &peer.runtime)),
        Bootstrap::Ceremonial { local_secret, peer_public } => {
            let secret = mfp_core::State::from_bytes(*local_secret.secret());
            let ss = mfp_core::crypto::x25519_shared(&secret, peer_public.as_bytes())
                .map_err(|_| CompatError::KeyAgreement { peer: peer.name.clone() })?;
            Ok(BilateralState::ceremonial(&ss, local, &peer.runtime))
        }
    }
}

// ---- the byte stream -------------------------------------------------------------------

/// Why an [`EnvelopeStream`] stopped. The stream carries no other framing, so after a bad
/// header it cannot find the next message: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A header broke the protocol's rules or the receiver's limits.
    #[error("envelope header refused, closing the stream (it cannot be resynchronised): {0}")]
    Header(EnvelopeError),
}

/// Decodes raw `MFP1` wire messages sent back to back on a byte stream, as pymfp's
/// transport writes them: 64-byte header, then `2·16·k + payload_len` bytes.
///
/// Each header is checked — magic, version, reserved bytes, minimum depth, and the
/// receiver's [`EnvelopeLimits`] (maximum depth, payload length) — as soon as its 64 bytes
/// are in, before any byte of the body is buffered; the body buffer then grows only with
/// the bytes actually received (a header alone never allocates the announced size). After
/// a refused header every later call returns the same error.
#[derive(Debug)]
pub struct EnvelopeStream {
    limits: EnvelopeLimits,
    header: [u8; ENVELOPE_HEADER_SIZE],
    header_len: usize,
    /// The message being read (header included) and its total length, once its header
    /// was accepted.
    current: Option<(Vec<u8>, usize)>,
    failed: Option<StreamError>,
}

impl EnvelopeStream {
    /// A decoder applying `limits` to every header.
    #[must_use]
    pub fn new(limits: EnvelopeLimits) -> Self {
        Self { limits, header: [0; ENVELOPE_HEADER_SIZE], header_len: 0, current: None, failed: None }
    }

    /// The limits in force.
    #[must_use]
    pub const fn limits(&self) -> &EnvelopeLimits {
        &self.limits
    }

    /// Whether part of a message is buffered (a connection closing now cut it short).
    #[must_use]
    pub fn has_partial(&self) -> bool {
        self.header_len > 0 || self.current.is_some()
    }

    /// The error the stream stopped with, if any.
    #[must_use]
    pub fn error(&self) -> Option<&StreamError> {
        self.failed.as_ref()
    }

    /// Consumes bytes from the front of `input` until one wire message is complete
    /// (returned, header included) or `input` is empty (`None`). Call again while it
    /// returns messages.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            if let Some((msg, total)) = self.current.as_mut() {
                let take = total.saturating_sub(msg.len()).min(input.len());
                let (now, rest) = input.split_at(take);
                msg.extend_from_slice(now);
                *input = rest;
                if msg.len() == *total {
                    let msg = core::mem::take(msg);
                    self.current = None;
                    return Ok(Some(msg));
                }
                return Ok(None);
            }
            if input.is_empty() {
                return Ok(None);
            }
            let want = ENVELOPE_HEADER_SIZE - self.header_len;
            let take = want.min(input.len());
            let (now, rest) = input.split_at(take);
            if let Some(dst) = self.header.get_mut(self.header_len..self.header_len + take) {
                dst.copy_from_slice(now);
            }
            self.header_len += take;
            *input = rest;
            if self.header_len < ENVELOPE_HEADER_SIZE {
                return Ok(None);
            }
            self.header_len = 0;
            let header = EnvelopeHeader::from_bytes(&self.header);
            if let Err(e) = header.validate(&self.limits) {
                let e = StreamError::Header(e);
                self.failed = Some(e.clone());
                return Err(e);
            }
            // Bounded by the limits just checked (at most 2·16·256 + u32::MAX on 64-bit).
            let total = usize::try_from(header.body_len())
                .ok()
                .and_then(|b| b.checked_add(ENVELOPE_HEADER_SIZE))
                .unwrap_or(usize::MAX);
            let mut msg = Vec::with_capacity(ENVELOPE_HEADER_SIZE.min(total));
            msg.extend_from_slice(&self.header);
            self.current = Some((msg, total));
        }
    }

    /// Decodes every whole message in `input`, keeping a trailing partial one buffered.
    pub fn decode_all(&mut self, mut input: &[u8]) -> Result<Vec<Vec<u8>>, StreamError> {
        let mut out = Vec::new();
        while let Some(m) = self.decode(&mut input)? {
            out.push(m);
        }
        Ok(out)
    }
}

// ---- the link ----------------------------------------------------------------------------

/// Why [`CompatLink::open`] refused a wire message. Each is counted; none changes the
/// shared chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The envelope is malformed or over the limits (or its body has the wrong length).
    #[error("malformed envelope: {0}")]
    Envelope(EnvelopeError),
    /// Flags other than zero (pymfp never sets any).
    #[error("envelope flags 0x{0:04x} are not used by pymfp")]
    Flags(u16),
    /// `sender_runtime` is not the configured peer.
    #[error("envelope's sender is not the configured peer")]
    Sender,
    /// The channel is not one of the agreed channels.
    #[error("channel {0} is not an agreed channel")]
    Channel(ChannelId),
    /// The depth differs from the channel's agreed depth.
    #[error("depth {got} differs from the channel's agreed depth {want}")]
    Depth {
        /// Depth in the envelope.
        got: u32,
        /// Agreed depth.
        want: usize,
    },
    /// The header's step is not the shared chain's step (a replay, a lost message, or both
    /// sides sent at once).
    #[error("step {got} differs from the shared chain's step {want}")]
    Step {
        /// Step in the envelope.
        got: u64,
        /// The chain's step.
        want: u64,
    },
    /// The frame does not validate against the chain (tampered frame, or the chains
    /// diverged).
    #[error("frame does not validate at the shared chain's step")]
    Frame,
    /// Authenticated decryption failed (tampered ciphertext or tag).
    #[error("payload does not decrypt")]
    Decode,
    /// Another failure of the message layer (e.g. the step space exhausted).
    #[error("message refused: {0}")]
    Other(mfp_core::Error),
}

impl Rejected {
    /// A short stable name, for metrics labels.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Rejected::Envelope(_) => "envelope",
            Rejected::Flags(_) => "flags",
            Rejected::Sender => "sender",
            Rejected::Channel(_) => "channel",
            Rejected::Depth { .. } => "depth",
            Rejected::Step { .. } => "step",
            Rejected::Frame => "frame",
            Rejected::Decode => "decode",
            Rejected::Other(_) => "other",
        }
    }
}

/// A message a compat peer sent us, validated and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: ChannelId,
    /// Our agent on it (the recipient).
    pub to: AgentId,
    /// The pymfp agent on it (the sender).
    pub from: AgentId,
    /// The chain's step this message used.
    pub step: u64,
    /// The plaintext.
    pub payload: Vec<u8>,
}

/// Counters of a [`CompatLink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompatCounters {
    /// Messages sealed.
    pub sent: u64,
    /// Messages accepted.
    pub delivered: u64,
    /// Messages refused, all reasons.
    pub rejected: u64,
    /// Refused for a frame that did not validate.
    pub rejected_frame: u64,
    /// Refused for a payload that did not decrypt.
    pub rejected_decode: u64,
    /// Refused for a header step other than the chain's.
    pub rejected_step: u64,
    /// Refused for any other reason (envelope, flags, sender, channel, depth).
    pub rejected_other: u64,
}

/// The message layer of one compat peer: the shared chain, the agreed channels and the
/// counters. Sans-IO: [`Self::seal`] gives bytes to write, [`Self::open`] takes one wire
/// message from an [`EnvelopeStream`].
#[derive(Debug)]
pub struct CompatLink {
    local: RuntimeId,
    peer_name: String,
    peer: RuntimeId,
    channels: Vec<CompatChannel>,
    limits: EnvelopeLimits,
    state: BilateralState,
    counters: CompatCounters,
}

impl CompatLink {
    /// The link of `local` with `peer`, at the chain's bootstrap state.
    pub fn new(local: RuntimeId, peer: &CompatPeer, limits: EnvelopeLimits) -> Result<Self, CompatError> {
        let state = shared_chain(&local, peer)?;
        Ok(Self::with_state(local, peer, limits, state))
    }

    /// The link at a given chain state (e.g. one restored from storage).
    #[must_use]
    pub fn with_state(local: RuntimeId, peer: &CompatPeer, limits: EnvelopeLimits, state: BilateralState) -> Self {
        Self {
            local,
            peer_name: peer.name.clone(),
            peer: peer.runtime,
            channels: peer.channels.clone(),
            limits,
            state,
            counters: CompatCounters::default(),
        }
    }

    /// The shared chain's current state.
    #[must_use]
    pub const fn state(&self) -> &BilateralState {
        &self.state
    }

    /// The counters.
    #[must_use]
    pub const fn counters(&self) -> CompatCounters {
        self.counters
    }

    /// The agreed channel with this id.
    #[must_use]
    pub fn channel(&self, id: &ChannelId) -> Option<&CompatChannel> {
        self.channels.iter().find(|c| c.id == *id)
    }

    /// Seals `payload` on `channel` at the chain's step and advances the chain (pymfp's
    /// sender advances at send time, without acknowledgement). Returns the wire message.
    pub fn seal(&mut self, channel: &ChannelId, payload: &[u8]) -> Result<Vec<u8>, CompatError> {
        let depth = self
            .channel(channel)
            .map(|c| c.depth)
            .ok_or_else(|| CompatError::UnknownChannel { peer: self.peer_name.clone(), channel: *channel })?;
        let out = self
            .state
            .seal_outbound(&self.local, channel, depth, payload)
            .map_err(|source| CompatError::Seal { peer: self.peer_name.clone(), channel: *channel, source })?;
        self.state = out.next;
        self.counters.sent += 1;
        Ok(out.wire)
    }

    /// Validates and decrypts one wire message (header included). On success the chain
    /// advances; on refusal nothing changes but the counters.
    pub fn open(&mut self, wire: &[u8]) -> Result<Delivery, Rejected> {
        let result = self.check_and_open(wire);
        match &result {
            Ok(_) => self.counters.delivered += 1,
            Err(r) => {
                self.counters.rejected += 1;
                match r {
                    Rejected::Frame => self.counters.rejected_frame += 1,
                    Rejected::Decode => self.counters.rejected_decode += 1,
                    Rejected::Step { .. } => self.counters.rejected_step += 1,
                    _ => self.counters.rejected_other += 1,
                }
            }
        }
        result
    }

    fn check_and_open(&mut self, wire: &[u8]) -> Result<Delivery, Rejected> {
        let (header, body) = parse_wire(wire, &self.limits).map_err(Rejected::Envelope)?;
        if header.flags.0 != 0 {
            return Err(Rejected::Flags(header.flags.0));
        }
        header.check_sender(&self.peer).map_err(|_| Rejected::Sender)?;
        let channel = *self.channel(&header.channel_id).ok_or(Rejected::Channel(header.channel_id))?;
        if header.frame_depth as usize != channel.depth {
            return Err(Rejected::Depth { got: header.frame_depth, want: channel.depth });
        }
        if header.step != self.state.step {
            return Err(Rejected::Step { got: header.step, want: self.state.step });
        }
        let (payload, next) = self.state.open_inbound(&header, body).map_err(|e| match e {
            mfp_core::Error::FrameValidation => Rejected::Frame,
            mfp_core::Error::DecodeFailed => Rejected::Decode,
            mfp_core::Error::Envelope(e) => Rejected::Envelope(e),
            other => Rejected::Other(other),
        })?;
        let step = self.state.step;
        self.state = next;
        Ok(Delivery { channel: channel.id, to: channel.local_agent, from: channel.remote_agent, step, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/pymfp-1.0.0.json");
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn hexv(v: &serde_json::Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }

    fn check_state(got: &BilateralState, want: &serde_json::Value) {
        assert_eq!(got.ratchet.expose().as_slice(), hexv(&want["ratchet_state"]));
        assert_eq!(got.prng_seed.expose().as_slice(), hexv(&want["shared_prng_seed"]));
        assert_eq!(got.step, want["step"].as_u64().unwrap());
    }

    const A: &str = "mfp-vectors/node-a";
    const B: &str = "mfp-vectors/node-b";

    fn ids() -> (RuntimeId, RuntimeId) {
        (RuntimeId::derive(b"mfp-vectors", b"node-a"), RuntimeId::derive(b"mfp-vectors", b"node-b"))
    }

    #[test]
    fn deterministic_chain_matches_pymfp_bilateral_seed() {
        let v = vectors();
        let (a, b) = ids();
        assert_eq!(a.as_bytes().as_slice(), hexv(&v["bilateral_seed"]["runtime_a"]));
        assert_eq!(b.as_bytes().as_slice(), hexv(&v["bilateral_seed"]["runtime_b"]));
        let on_a = shared_chain(&a, &CompatPeer::new(B, "h:1", Bootstrap::Deterministic).unwrap()).unwrap();
        let on_b = shared_chain(&b, &CompatPeer::new(A, "h:1", Bootstrap::Deterministic).unwrap()).unwrap();
        check_state(&on_a, &v["bilateral_seed"]["state"]);
        check_state(&on_b, &v["bilateral_seed"]["state"]);
    }

    #[test]
    fn ceremonial_chain_matches_pymfp_bilateral_ceremonial() {
        let v = vectors();
        let c = &v["bilateral_ceremonial"];
        let (a, b) = ids();
        assert_eq!(a.as_bytes().as_slice(), hexv(&c["runtime_a"]));
        let key = |k: &str| IdentityKey::from_secret_bytes(hexv(&c[k]).try_into().unwrap());
        let public = |k: &str| parse_public_key("p", c[k].as_str().unwrap()).unwrap();
        let peer_b = CompatPeer::new(
            B,
            "h:1",
            Bootstrap::Ceremonial { local_secret: key("x25519_private_a"), peer_public: public("x25519_public_b") },
        )
        .unwrap();
        let peer_a = CompatPeer::new(
            A,
            "h:1",
            Bootstrap::Ceremonial { local_secret: key("x25519_private_b"), peer_public: public("x25519_public_a") },
        )
        .unwrap();
        check_state(&shared_chain(&a, &peer_b).unwrap(), &c["state"]);
        check_state(&shared_chain(&b, &peer_a).unwrap(), &c["state"]);
        // The printed form of our own keys is accepted too.
        let printed = key("x25519_private_b").public().to_string();
        assert_eq!(parse_public_key("p", &printed).unwrap(), public("x25519_public_b"));
    }

    #[test]
    fn keys_from_files_and_configuration_text() {
        let v = vectors();
        let c = &v["bilateral_ceremonial"];
        let dir = tempfile::tempdir().unwrap();
        // Our secret as pymfp's raw hex (configuration) and as an mfp key file.
        let from_text = secret_key_from_hex(B, c["x25519_private_a"].as_str().unwrap()).unwrap();
        let file = dir.path().join("a.key");
        from_text.save(&file).unwrap();
        let from_file = IdentityKey::load(&file).unwrap();
        assert_eq!(from_file.public().as_bytes().as_slice(), hexv(&c["x25519_public_a"]));
        assert!(matches!(secret_key_from_hex(B, "12"), Err(CompatError::SecretKey { .. })));
        // The peer's public key from a file, bare hex or printed form.
        let public = dir.path().join("b.pub");
        std::fs::write(&public, format!("{}\n", c["x25519_public_b"].as_str().unwrap())).unwrap();
        let peer_public = load_public_key(B, &public).unwrap();
        std::fs::write(&public, format!("{peer_public}\n")).unwrap();
        assert_eq!(load_public_key(B, &public).unwrap(), peer_public);
        let peer = CompatPeer::new(B, "h:1", Bootstrap::Ceremonial { local_secret: from_file, peer_public }).unwrap();
        check_state(&shared_chain(&ids().0, &peer).unwrap(), &c["state"]);
        // Garbage, an oversized file and a missing file are refused, naming the file.
        std::fs::write(&public, "not a key").unwrap();
        assert!(matches!(load_public_key(B, &public), Err(CompatError::KeyFile { .. })));
        std::fs::write(&public, "a".repeat(300)).unwrap();
        let e = load_public_key(B, &public).unwrap_err();
        assert!(e.to_string().contains("b.pub"), "{e}");
        assert!(matches!(load_public_key(B, &dir.path().join("missing")), Err(CompatError::KeyFile { .. })));
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        let (a, _) = ids();
        let peer = CompatPeer::new(
            B,
            "h:1",
            Bootstrap::Ceremonial {
                local_secret: IdentityKey::from_secret_bytes([7; 32]),
                peer_public: PublicKey::from_bytes([0; 32]),
            },
        )
        .unwrap();
        assert_eq!(shared_chain(&a, &peer), Err(CompatError::KeyAgreement { peer: B.into() }));
    }

    #[test]
    fn the_chain_reproduces_pymfp_bilateral_chain() {
        let v = vectors();
        let (a, b) = ids();
        let entries = v["bilateral_chain"].as_array().unwrap();
        let ch = ChannelId::from_slice(&hexv(&entries[0]["channel_id"])).unwrap();
        let agent = AgentId::from_bytes([1; 32]);
        let mut peer_b = CompatPeer::new(B, "h:1", Bootstrap::Deterministic).unwrap();
        peer_b.add_channel(CompatChannel { id: ch, depth: 4, local_agent: agent, remote_agent: agent }).unwrap();
        let mut peer_a = CompatPeer::new(A, "h:1", Bootstrap::Deterministic).unwrap();
        peer_a.add_channel(CompatChannel { id: ch, depth: 4, local_agent: agent, remote_agent: agent }).unwrap();
        let mut on_a = CompatLink::new(a, &peer_b, EnvelopeLimits::default()).unwrap();
        let mut on_b = CompatLink::new(b, &peer_a, EnvelopeLimits::default()).unwrap();
        for e in entries {
            check_state(on_a.state(), &e["pre_state"]);
            let wire = on_a.seal(&ch, &hexv(&e["payload"])).unwrap();
            assert_eq!(wire, hexv(&e["wire_bytes"]));
            let d = on_b.open(&wire).unwrap();
            assert_eq!(d.payload, hexv(&e["payload"]));
            check_state(on_a.state(), &e["post_state"]);
            check_state(on_b.state(), &e["post_state"]);
        }
        assert_eq!(on_b.counters().delivered, 3);
    }

    #[test]
    fn configuration_is_checked() {
        for bad in ["nodash", "/i", "d/", ""] {
            assert_eq!(
                CompatPeer::new(bad, "h:1", Bootstrap::Deterministic).unwrap_err(),
                CompatError::RuntimeIdFormat(bad.into())
            );
        }
        // Split at the first slash, as the server's configuration does.
        let p = CompatPeer::new("d/i/x", "h:1", Bootstrap::Deterministic).unwrap();
        assert_eq!(*p.runtime(), RuntimeId::derive(b"d", b"i/x"));
        for bad in ["h", ":1", "h:0", "h:70000", "h:x"] {
            assert!(matches!(CompatPeer::new("d/i", bad, Bootstrap::Deterministic), Err(CompatError::Endpoint { .. })));
        }
        let mut p = CompatPeer::new("d/i", "127.0.0.1:9876", Bootstrap::Deterministic).unwrap();
        let ag = "11".repeat(32);
        assert!(matches!(p.add_channel_text("zz", 4, &ag, &ag), Err(CompatError::ChannelId { .. })));
        assert!(matches!(p.add_channel_text(&"ab".repeat(16), 4, "11", &ag), Err(CompatError::AgentId { .. })));
        assert!(matches!(p.add_channel_text(&"ab".repeat(16), 1, &ag, &ag), Err(CompatError::Depth { .. })));
        assert!(matches!(p.add_channel_text(&"ab".repeat(16), 33, &ag, &ag), Err(CompatError::Depth { .. })));
        p.add_channel_text(&"ab".repeat(16), 4, &ag, &ag).unwrap();
        assert!(matches!(p.add_channel_text(&"AB".repeat(16), 8, &ag, &ag), Err(CompatError::DuplicateChannel { .. })));
        assert_eq!(p.channels().len(), 1);
        assert!(parse_public_key("p", "mfp-x25519:00").is_err());
        // Debug never shows a secret.
        let secret = [0x5a; 32];
        let b = Bootstrap::Ceremonial {
            local_secret: IdentityKey::from_secret_bytes(secret),
            peer_public: PublicKey::from_bytes([9; 32]),
        };
        assert!(!format!("{b:?}").contains(&hex::encode(secret)));
    }

    fn pair() -> (CompatLink, CompatLink, ChannelId) {
        let (a, b) = ids();
        let ch = ChannelId::from_bytes([0x42; 16]);
        let alice = AgentId::from_bytes([0xa1; 32]);
        let bob = AgentId::from_bytes([0xb0; 32]);
        let mut peer_b = CompatPeer::new(B, "h:1", Bootstrap::Deterministic).unwrap();
        peer_b.add_channel(CompatChannel { id: ch, depth: 4, local_agent: alice, remote_agent: bob }).unwrap();
        let mut peer_a = CompatPeer::new(A, "h:1", Bootstrap::Deterministic).unwrap();
        peer_a.add_channel(CompatChannel { id: ch, depth: 4, local_agent: bob, remote_agent: alice }).unwrap();
        let limits = EnvelopeLimits::default();
        (CompatLink::new(a, &peer_b, limits).unwrap(), CompatLink::new(b, &peer_a, limits).unwrap(), ch)
    }

    #[test]
    fn refusals_are_counted_and_change_nothing() {
        let (mut a, mut b, ch) = pair();
        let genuine = a.seal(&ch, b"hello").unwrap();
        let before = b.state().clone();
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut frame = genuine.clone();
        frame[64 + 3] ^= 0x10;
        cases.push((frame, "frame"));
        let mut cipher = genuine.clone();
        cipher[64 + 64 + 2] ^= 0x01;
        cases.push((cipher, "decode"));
        let mut step = genuine.clone();
        step[39] ^= 0x01;
        cases.push((step, "step"));
        let mut sender = genuine.clone();
        sender[40] ^= 0x01;
        cases.push((sender, "sender"));
        let mut flags = genuine.clone();
        flags[7] = 0x02;
        cases.push((flags, "flags"));
        let mut chan = genuine.clone();
        chan[16] ^= 0x01;
        cases.push((chan, "channel"));
        let mut magic = genuine.clone();
        magic[0] = b'X';
        cases.push((magic, "envelope"));
        cases.push((genuine[..genuine.len() - 1].to_vec(), "envelope"));
        for (bytes, kind) in &cases {
            assert_eq!(b.open(bytes).unwrap_err().kind(), *kind);
            assert_eq!(*b.state(), before);
        }
        let c = b.counters();
        assert_eq!((c.rejected, c.rejected_frame, c.rejected_decode, c.rejected_step), (8, 1, 1, 1));
        assert_eq!(c.rejected_other, 5);
        // The genuine message still goes through, and the chain goes on both ways.
        assert_eq!(b.open(&genuine).unwrap().payload, b"hello");
        // A replay of it is at the wrong step now.
        assert!(matches!(b.open(&genuine), Err(Rejected::Step { got: 0, want: 1 })));
        let reply = b.seal(&ch, b"back").unwrap();
        let d = a.open(&reply).unwrap();
        assert_eq!((d.payload.as_slice(), d.step, d.from), (b"back".as_slice(), 1, AgentId::from_bytes([0xb0; 32])));
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn a_depth_other_than_the_agreed_one_is_refused() {
        let (mut a, mut b, ch) = pair();
        // A genuine message of depth 2 on the same chain (pymfp would accept it).
        let out = a.state().seal_outbound(&a.local, &ch, 2, b"x").unwrap();
        assert!(matches!(b.open(&out.wire), Err(Rejected::Depth { got: 2, want: 4 })));
        let unknown = ChannelId::from_bytes([1; 16]);
        assert!(matches!(a.seal(&unknown, b"x"), Err(CompatError::UnknownChannel { .. })));
        assert_eq!(a.counters().sent, 0);
    }

    fn wires(n: usize) -> Vec<Vec<u8>> {
        let (mut a, _, ch) = pair();
        (0..n).map(|i| a.seal(&ch, &vec![i as u8; i * 7]).unwrap()).collect()
    }

    #[test]
    fn stream_decodes_back_to_back_messages_split_at_every_position() {
        let ws = wires(3);
        let all = ws.concat();
        for cut in 0..=all.len() {
            let mut s = EnvelopeStream::new(EnvelopeLimits::default());
            let mut got = s.decode_all(&all[..cut]).unwrap();
            got.extend(s.decode_all(&all[cut..]).unwrap());
            assert_eq!(got, ws, "cut at {cut}");
            assert!(!s.has_partial());
        }
        // One byte at a time.
        let mut s = EnvelopeStream::new(EnvelopeLimits::default());
        let mut got = Vec::new();
        for b in &all {
            got.extend(s.decode_all(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, ws);
    }

    #[test]
    fn headers_are_refused_before_the_body_and_the_stream_stays_failed() {
        let ws = wires(2);
        let limits = EnvelopeLimits { max_frame_depth: 8, max_payload_len: 1024 };
        // A header claiming a 4 GiB payload: refused with only its 64 bytes in.
        let mut huge = ws[0][..64].to_vec();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut s = EnvelopeStream::new(limits);
        let err = s.decode_all(&huge).unwrap_err();
        assert_eq!(err, StreamError::Header(EnvelopeError::PayloadTooLarge { len: u32::MAX, max: 1024 }));
        // Stays failed, even for genuine bytes.
        assert_eq!(s.decode_all(&ws[1]).unwrap_err(), err);
        assert_eq!(s.error(), Some(&err));
        let mut deep = ws[0].clone();
        deep[8..12].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            EnvelopeStream::new(limits).decode_all(&deep).unwrap_err(),
            StreamError::Header(EnvelopeError::DepthTooLarge { depth: 9, max: 8 })
        );
        let mut bad = ws[0].clone();
        bad[5] = 2;
        assert_eq!(
            EnvelopeStream::new(limits).decode_all(&bad).unwrap_err(),
            StreamError::Header(EnvelopeError::UnsupportedVersion(2))
        );
        // A good message before a bad header is still yielded.
        let mut s = EnvelopeStream::new(limits);
        let input = [ws[0].clone(), bad].concat();
        let mut slice = &input[..];
        assert_eq!(s.decode(&mut slice).unwrap(), Some(ws[0].clone()));
        assert!(s.decode(&mut slice).is_err());
    }

    #[test]
    fn a_partial_message_is_reported() {
        let ws = wires(1);
        let mut s = EnvelopeStream::new(EnvelopeLimits::default());
        assert!(s.decode_all(&ws[0][..70]).unwrap().is_empty());
        assert!(s.has_partial());
    }

    #[test]
    fn fuzz_body_decodes_an_unmasked_genuine_stream() {
        // Odd mode byte, no mask: the genuine stream, which the body asserts is decoded.
        crate::fuzzing::envelope_stream(&[0x21]);
        crate::fuzzing::envelope_stream(&[0x21, 0, 0, 0]);
        // A mask flipping a byte in the second message's header or body.
        let mut d = vec![0u8; 300];
        d[0] = 0x21;
        d[200] = 0x80;
        crate::fuzzing::envelope_stream(&d);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn stream_never_panics_and_chunking_changes_nothing(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            crate::fuzzing::envelope_stream(&data);
        }

        #[test]
        fn genuine_streams_split_anywhere(cuts in proptest::collection::vec(0usize..2000, 0..6)) {
            let ws = wires(4);
            let all = ws.concat();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
            points.sort_unstable();
            let mut s = EnvelopeStream::new(EnvelopeLimits::default());
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([all.len()]) {
                got.extend(s.decode_all(&all[last..p]).unwrap());
                last = p;
            }
            prop_assert_eq!(got, ws);
        }
    }
}
