//! Bilateral (runtime-to-runtime) state: seeds, advancement, outbound/inbound messages,
//! the recovery state hash and divergence diagnosis, and key rotation.
//!
//! pymfp shares one bilateral state between both directions and all cross-runtime
//! channels of a runtime pair: every message, either way, advances it by one step. The
//! functions here are those byte-exact building blocks; the federation layer decides how
//! to use them safely.

use core::fmt;

use crate::crypto::{HmacKey, hmac_state, sha256};
use crate::envelope::{EnvelopeFlags, EnvelopeHeader};
use crate::{ChannelId, Error, Frame, RuntimeId, State, TAG_SIZE, encoding, message, sampling};

/// HMAC key of the deterministic ratchet seed (and message prefix of the ceremonial one).
pub const BILATERAL_LABEL: &[u8] = b"mfp-bilateral";
/// HMAC key of the deterministic PRNG seed (and message prefix of the ceremonial one).
pub const BILATERAL_PRNG_LABEL: &[u8] = b"mfp-bilateral-prng";
/// HMAC key of the rotated ratchet state.
pub const ROTATION_RATCHET_LABEL: &[u8] = b"mfp-rotation-ratchet";
/// HMAC key of the rotated PRNG seed.
pub const ROTATION_PRNG_LABEL: &[u8] = b"mfp-rotation-prng";

fn sorted<'a>(a: &'a RuntimeId, b: &'a RuntimeId) -> (&'a RuntimeId, &'a RuntimeId) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The shared state of a runtime pair: ratchet `R`, PRNG seed `P`, step `t`.
#[derive(Clone, PartialEq, Eq)]
pub struct BilateralState {
    /// Ratchet state `R` (used as `Sl` and as the `Sg` substitute for cross-runtime frames).
    pub ratchet: State,
    /// Shared PRNG seed `P` (keys the frame jitter).
    pub prng_seed: State,
    /// Step `t`.
    pub step: u64,
}

impl fmt::Debug for BilateralState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BilateralState").field("step", &self.step).finish_non_exhaustive()
    }
}

/// What [`BilateralState::seal_outbound`] produces.
#[derive(Debug)]
pub struct Outbound {
    /// The complete wire message (header and protocol message).
    pub wire: Vec<u8>,
    /// The header inside `wire`.
    pub header: EnvelopeHeader,
    /// The frame used (`frame_open`).
    pub frame: Frame,
    /// The state after this message (the pre-message state stays untouched).
    pub next: BilateralState,
}

impl BilateralState {
    /// Deterministic bootstrap: `R0 = HMAC("mfp-bilateral", lo ‖ hi)`,
    /// `P0 = HMAC("mfp-bilateral-prng", lo ‖ hi)`, `t = 0`.
    ///
    /// **Derived from public runtime ids only**: anyone who knows both identities can
    /// compute every later key. Use only to talk to pymfp; prefer [`Self::ceremonial`].
    #[must_use]
    pub fn deterministic(a: &RuntimeId, b: &RuntimeId) -> Self {
        let (lo, hi) = sorted(a, b);
        Self {
            ratchet: hmac_state(BILATERAL_LABEL, &[lo.as_bytes(), hi.as_bytes()]),
            prng_seed: hmac_state(BILATERAL_PRNG_LABEL, &[lo.as_bytes(), hi.as_bytes()]),
            step: 0,
        }
    }

    /// Ceremonial bootstrap from a shared secret (e.g. an X25519 agreement):
    /// `R0 = HMAC(ss, "mfp-bilateral" ‖ lo ‖ hi)`, `P0 = HMAC(ss, "mfp-bilateral-prng" ‖ lo ‖ hi)`.
    #[must_use]
    pub fn ceremonial(shared_secret: &State, a: &RuntimeId, b: &RuntimeId) -> Self {
        let (lo, hi) = sorted(a, b);
        let k = shared_secret.expose();
        Self {
            ratchet: hmac_state(k, &[BILATERAL_LABEL, lo.as_bytes(), hi.as_bytes()]),
            prng_seed: hmac_state(k, &[BILATERAL_PRNG_LABEL, lo.as_bytes(), hi.as_bytes()]),
            step: 0,
        }
    }

    /// The state after a frame was used: `R' = HMAC(R, frame)`, `P' = HMAC(P, frame)`,
    /// `t' = t + 1`. Fails only if the step would overflow.
    pub fn advance(&self, frame: &Frame) -> Result<Self, Error> {
        self.advance_keyed(&self.keys(), frame)
    }

    /// [`Self::advance`] with `R` and `P` keyed already.
    fn advance_keyed(&self, keys: &Keys, frame: &Frame) -> Result<Self, Error> {
        Ok(Self {
            ratchet: keys.ratchet.mac_state(&[frame.as_bytes()]),
            prng_seed: keys.prng_seed.mac_state(&[frame.as_bytes()]),
            step: self.step.checked_add(1).ok_or(Error::Crypto("bilateral step exhausted"))?,
        })
    }

    /// The deterministic frame of depth `k` for the current step: cross-runtime frame
    /// sampling (see [`crate::sampling`]) with `R` as both `Sl` and `Sg`.
    pub fn frame(&self, depth: usize) -> Result<Frame, Error> {
        self.frame_keyed(&self.keys(), depth)
    }

    /// [`Self::frame`] with `R` and `P` keyed already.
    fn frame_keyed(&self, keys: &Keys, depth: usize) -> Result<Frame, Error> {
        sampling::sample_frame_cross_keyed(&keys.ratchet, self.step, &self.ratchet, &keys.prng_seed, depth)
    }

    /// `R` and `P` keyed for HMAC: a message computes three MACs under `R` (its frame's
    /// distribution seed, its encoding key, the next `R`) and two under `P`.
    fn keys(&self) -> Keys {
        Keys { ratchet: HmacKey::new(self.ratchet.expose()), prng_seed: HmacKey::new(self.prng_seed.expose()) }
    }

    /// Recovery state hash `SHA256(R ‖ P)`.
    #[must_use]
    pub fn state_hash(&self) -> [u8; 32] {
        sha256(&[self.ratchet.expose(), self.prng_seed.expose()])
    }

    /// Key rotation: with `ss` the X25519 secret of the two ephemeral keys and
    /// `material = R ‖ ss ‖ lo ‖ hi`, `R_new = HMAC("mfp-rotation-ratchet", material)`,
    /// `P_new = HMAC("mfp-rotation-prng", material)`; the step is unchanged.
    #[must_use]
    pub fn rotate(&self, dh_secret: &State, a: &RuntimeId, b: &RuntimeId) -> Self {
        let (lo, hi) = sorted(a, b);
        let parts: [&[u8]; 4] = [self.ratchet.expose(), dh_secret.expose(), lo.as_bytes(), hi.as_bytes()];
        Self {
            ratchet: hmac_state(ROTATION_RATCHET_LABEL, &parts),
            prng_seed: hmac_state(ROTATION_PRNG_LABEL, &parts),
            step: self.step,
        }
    }

    /// Builds the wire message pymfp would send for `payload` on a cross-runtime channel,
    /// and the state after it. `self` is not modified: commit `next` once the message is
    /// handed off.
    pub fn seal_outbound(
        &self,
        sender: &RuntimeId,
        channel: &ChannelId,
        depth: usize,
        payload: &[u8],
    ) -> Result<Outbound, Error> {
        let keys = self.keys();
        let frame = self.frame_keyed(&keys, depth)?;
        let encoded_len = payload
            .len()
            .checked_add(TAG_SIZE)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(Error::PayloadTooLarge { len: payload.len(), max: encoding::MAX_ENCODABLE_PAYLOAD })?;
        let depth32 =
            u32::try_from(depth).map_err(|_| Error::FrameDepthTooLarge { depth, max: crate::MAX_FRAME_DEPTH })?;
        let header = EnvelopeHeader::new(EnvelopeFlags::NONE, depth32, encoded_len, *channel, self.step, sender);
        let msg = message::assemble_keyed(&frame, &keys.ratchet, channel, self.step, payload)?;
        let mut wire = Vec::with_capacity(crate::ENVELOPE_HEADER_SIZE + msg.len());
        wire.extend_from_slice(&header.to_bytes());
        wire.extend_from_slice(&msg);
        let next = self.advance_keyed(&keys, &frame)?;
        Ok(Outbound { wire, header, frame, next })
    }

    /// Receives a protocol message as pymfp does: re-derives the frame at the receiver's
    /// own step with the header's depth, validates it, decodes the payload with the
    /// header's channel id. Returns the payload and the state after the message.
    ///
    /// The header is checked against the protocol's rules first (magic, version, reserved
    /// bytes, minimum depth — [`EnvelopeHeader::protocol_errors`]); a header that breaks
    /// one is refused with [`Error::Envelope`] before anything is derived. The receiver's
    /// own limits (maximum depth and payload size) are the caller's to check, with
    /// [`EnvelopeHeader::validate`].
    pub fn open_inbound(&self, header: &EnvelopeHeader, body: &[u8]) -> Result<(Vec<u8>, Self), Error> {
        if let Some(e) = header.protocol_errors().into_iter().next() {
            return Err(Error::Envelope(e));
        }
        let depth = header.frame_depth as usize;
        let keys = self.keys();
        let expected = self.frame_keyed(&keys, depth)?;
        let parts = message::parse(body, depth)?;
        if parts.encoded_payload().len() != header.payload_len as usize {
            return Err(Error::MessageLength { expected: header.body_len() as usize, actual: body.len() });
        }
        Frame::validate_bytes(parts.frame_open_bytes(), parts.frame_close_bytes(), &expected)?;
        let payload = encoding::decode_keyed(&keys.ratchet, &header.channel_id, self.step, parts.encoded_payload())?;
        let next = self.advance_keyed(&keys, &expected)?;
        Ok((payload, next))
    }
}

/// A chain's `R` and `P`, keyed for HMAC once per message.
struct Keys {
    ratchet: HmacKey,
    prng_seed: HmacKey,
}

/// A rotation message (`RekeyRequest` or `RekeyAccept`; pymfp gives them the same 104-byte
/// layout and no type tag): sender id, receiver id, ephemeral X25519 public key, step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyMessage {
    /// Sender runtime identity.
    pub sender: RuntimeId,
    /// Receiver runtime identity.
    pub receiver: RuntimeId,
    /// Ephemeral X25519 public key.
    pub ephemeral_public: [u8; 32],
    /// Proposed (request) or accepted (accept) step.
    pub step: u64,
}

impl RekeyMessage {
    /// Encoded size.
    pub const LEN: usize = 104;

    /// The 104 bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let parts: [&[u8]; 4] =
            [self.sender.as_bytes(), self.receiver.as_bytes(), &self.ephemeral_public, &self.step.to_be_bytes()];
        let mut pos = 0;
        for p in parts {
            if let Some(dst) = out.get_mut(pos..pos + p.len()) {
                dst.copy_from_slice(p);
            }
            pos += p.len();
        }
        out
    }

    /// Parses 104 bytes (all fields, unlike pymfp which ignores the identities).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != Self::LEN {
            return Err(Error::InvalidLength { what: "rekey message", expected: Self::LEN, actual: bytes.len() });
        }
        let field = |a: usize, b: usize| bytes.get(a..b).unwrap_or_default();
        let mut pk = [0u8; 32];
        pk.copy_from_slice(field(64, 96));
        let mut st = [0u8; 8];
        st.copy_from_slice(field(96, 104));
        Ok(Self {
            sender: RuntimeId::from_slice(field(0, 32))?,
            receiver: RuntimeId::from_slice(field(32, 64))?,
            ephemeral_public: pk,
            step: u64::from_be_bytes(st),
        })
    }
}

/// Limits of the recovery procedure (pymfp defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Largest step gap recovered from without escalation.
    pub max_step_gap: u64,
    /// Negotiation attempts before escalation.
    pub max_attempts: u32,
    /// Time allowed for a recovery, in seconds.
    pub timeout_seconds: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self { max_step_gap: 5, max_attempts: 3, timeout_seconds: 30 }
    }
}

/// Outcome of comparing our bilateral position with the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diagnosis {
    /// Same step and same state: nothing is wrong.
    Spurious,
    /// Same step, different state: the states diverged irrecoverably.
    Corruption,
    /// Steps too far apart to resynchronise.
    Escalate,
    /// We are behind the peer.
    LocalBehind,
    /// We are ahead of the peer.
    LocalAhead,
}

impl Diagnosis {
    /// pymfp's name for the diagnosis.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Spurious => "spurious",
            Diagnosis::Corruption => "corruption",
            Diagnosis::Escalate => "escalate",
            Diagnosis::LocalBehind => "local_behind",
            Diagnosis::LocalAhead => "local_ahead",
        }
    }
}

/// Diagnoses a divergence exactly as pymfp's `diagnose_divergence` does.
#[must_use]
pub fn diagnose(
    local_step: u64,
    peer_step: u64,
    local_hash: &[u8; 32],
    peer_hash: &[u8; 32],
    max_step_gap: u64,
) -> Diagnosis {
    if local_step == peer_step {
        if crate::crypto::ct_eq(local_hash, peer_hash) { Diagnosis::Spurious } else { Diagnosis::Corruption }
    } else if local_step.abs_diff(peer_step) > max_step_gap {
        Diagnosis::Escalate
    } else if local_step < peer_step {
        Diagnosis::LocalBehind
    } else {
        Diagnosis::LocalAhead
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EnvelopeLimits, parse_wire};

    fn pair() -> (RuntimeId, RuntimeId) {
        (RuntimeId::derive(b"d", b"a"), RuntimeId::derive(b"d", b"b"))
    }

    #[test]
    fn seeds_are_symmetric() {
        let (a, b) = pair();
        assert_eq!(BilateralState::deterministic(&a, &b), BilateralState::deterministic(&b, &a));
        let ss = State::from_bytes([9; 32]);
        let c = BilateralState::ceremonial(&ss, &a, &b);
        assert_eq!(c, BilateralState::ceremonial(&ss, &b, &a));
        assert_ne!(c, BilateralState::deterministic(&a, &b));
    }

    #[test]
    fn outbound_then_inbound() {
        let (a, b) = pair();
        let s = BilateralState::deterministic(&a, &b);
        let ch = ChannelId::from_bytes([1; 16]);
        let out = s.seal_outbound(&a, &ch, 4, b"hi").unwrap();
        assert_eq!(out.next.step, 1);
        let (h, body) = parse_wire(&out.wire, &EnvelopeLimits::default()).unwrap();
        let (payload, next) = s.open_inbound(&h, body).unwrap();
        assert_eq!(payload, b"hi");
        assert_eq!(next, out.next);
        // At the wrong step the frame does not validate.
        assert!(out.next.open_inbound(&h, body).is_err());
        // A flipped ciphertext byte is rejected.
        let mut bad = body.to_vec();
        bad[70] ^= 1;
        assert!(s.open_inbound(&h, &bad).is_err());
    }

    #[test]
    fn inbound_headers_breaking_the_protocol_rules_are_refused_before_anything_else() {
        use crate::error::EnvelopeError;
        let (a, b) = pair();
        let s = BilateralState::deterministic(&a, &b);
        let ch = ChannelId::from_bytes([1; 16]);
        let out = s.seal_outbound(&a, &ch, 4, b"hi").unwrap();
        let (h, body) = parse_wire(&out.wire, &EnvelopeLimits::default()).unwrap();
        let mut magic = h;
        magic.magic = *b"XFP1";
        let mut version = h;
        version.version = 2;
        let mut reserved = h;
        reserved.reserved[7] = 1;
        for (bad, want) in [
            (magic, EnvelopeError::BadMagic),
            (version, EnvelopeError::UnsupportedVersion(2)),
            (reserved, EnvelopeError::NonZeroReserved),
        ] {
            // The body is the genuine one: only the header's rule can refuse it.
            assert_eq!(s.open_inbound(&bad, body), Err(Error::Envelope(want)));
        }
        assert!(s.open_inbound(&h, body).is_ok());
    }

    #[test]
    fn rekey_bytes_round_trip() {
        let (a, b) = pair();
        let m = RekeyMessage { sender: a, receiver: b, ephemeral_public: [3; 32], step: 42 };
        assert_eq!(RekeyMessage::from_bytes(&m.to_bytes()).unwrap(), m);
        assert!(RekeyMessage::from_bytes(&[0; 103]).is_err());
    }

    #[test]
    fn diagnosis_rules() {
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        assert_eq!(diagnose(3, 3, &h1, &h1, 5), Diagnosis::Spurious);
        assert_eq!(diagnose(3, 3, &h1, &h2, 5), Diagnosis::Corruption);
        assert_eq!(diagnose(2, 3, &h1, &h2, 5), Diagnosis::LocalBehind);
        assert_eq!(diagnose(4, 3, &h1, &h2, 5), Diagnosis::LocalAhead);
        assert_eq!(diagnose(0, 9, &h1, &h2, 5), Diagnosis::Escalate);
    }
}
