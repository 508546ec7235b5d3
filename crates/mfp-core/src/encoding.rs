//! Payload encoding: AES-256-GCM keyed from the channel's local state.
//!
//! ```text
//! key   = HMAC(Sl, "mfp-encoding-key" ‖ "aes-256-gcm")
//! nonce = HMAC(key, channel_id ‖ u64be(t))[0..12]
//! aad   = channel_id ‖ u64be(t)
//! E(P)  = AES-256-GCM(key, nonce, P, aad) = ciphertext ‖ tag16
//! ```
//! `Sl` and `t` are the values *before* the message advances the ratchet. Failures are a
//! bare [`Error::DecodeFailed`]: nothing about why is revealed.

use crate::crypto::{HmacKey, hmac_sha256};
use crate::{ChannelId, Error, NONCE_SIZE, State, TAG_SIZE};

/// Label mixed into the encoding key derivation.
pub const ENCODING_KEY_LABEL: &[u8] = b"mfp-encoding-key";

/// Largest plaintext [`encode`] accepts: what fits the envelope's 32-bit length field
/// together with the tag.
pub const MAX_ENCODABLE_PAYLOAD: usize = u32::MAX as usize - TAG_SIZE;

/// A payload encoding algorithm. pymfp 1.0.0 knows exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// AES-256-GCM, id `aes-256-gcm`.
    #[default]
    Aes256Gcm,
}

impl Algorithm {
    /// The algorithm's identifier bytes, as mixed into the key derivation.
    #[must_use]
    pub const fn id(self) -> &'static [u8] {
        match self {
            Algorithm::Aes256Gcm => b"aes-256-gcm",
        }
    }

    /// Looks an algorithm up by identifier.
    pub fn from_id(id: &[u8]) -> Result<Self, Error> {
        if id == Algorithm::Aes256Gcm.id() { Ok(Algorithm::Aes256Gcm) } else { Err(Error::UnsupportedAlgorithm) }
    }
}

/// `HMAC(Sl, "mfp-encoding-key" ‖ algorithm_id)`.
#[must_use]
pub fn encoding_key(local: &State, algorithm: Algorithm) -> State {
    encoding_key_keyed(&HmacKey::new(local.expose()), algorithm)
}

/// [`encoding_key`] with `Sl` keyed already.
fn encoding_key_keyed(local: &HmacKey, algorithm: Algorithm) -> State {
    local.mac_state(&[ENCODING_KEY_LABEL, algorithm.id()])
}

/// The 24-byte associated data `channel_id ‖ u64be(t)`.
#[must_use]
pub fn aad(channel: &ChannelId, step: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    let (c, s) = out.split_at_mut(16);
    c.copy_from_slice(channel.as_bytes());
    s.copy_from_slice(&step.to_be_bytes());
    out
}

/// The 12-byte nonce `HMAC(key, channel_id ‖ u64be(t))[0..12]`.
#[must_use]
pub fn nonce(key: &State, channel: &ChannelId, step: u64) -> [u8; NONCE_SIZE] {
    let full = hmac_sha256(key.expose(), &[&aad(channel, step)]);
    let mut out = [0u8; NONCE_SIZE];
    out.copy_from_slice(&full[..NONCE_SIZE]);
    out
}

/// The AEAD context of one message: key, nonce and AAD derived once.
struct MessageCipher {
    key: crate::crypto::Aes256GcmKey,
    nonce: [u8; NONCE_SIZE],
    aad: [u8; 24],
}

impl MessageCipher {
    fn new(local: &HmacKey, channel: &ChannelId, step: u64) -> Result<Self, Error> {
        let key = encoding_key_keyed(local, Algorithm::Aes256Gcm);
        let nonce = nonce(&key, channel, step);
        Ok(Self { key: crate::crypto::Aes256GcmKey::new(key.expose())?, nonce, aad: aad(channel, step) })
    }

    fn seal(&self, buf: &mut [u8]) -> Result<[u8; TAG_SIZE], Error> {
        if buf.len() > MAX_ENCODABLE_PAYLOAD {
            return Err(Error::PayloadTooLarge { len: buf.len(), max: MAX_ENCODABLE_PAYLOAD });
        }
        self.key.seal_separate_tag(self.nonce, &self.aad, buf)
    }

    fn open<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        self.key.open_in_place(&self.nonce, &self.aad, buf)
    }
}

/// Encodes `payload`: returns `ciphertext ‖ tag` (`payload.len() + 16` bytes).
pub fn encode(local: &State, channel: &ChannelId, step: u64, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(payload.len() + TAG_SIZE);
    out.extend_from_slice(payload);
    let tag = encode_in_place(local, channel, step, &mut out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Encrypts `buf` in place and returns the 16-byte tag the caller appends.
pub fn encode_in_place(local: &State, channel: &ChannelId, step: u64, buf: &mut [u8]) -> Result<[u8; TAG_SIZE], Error> {
    encode_in_place_keyed(&HmacKey::new(local.expose()), channel, step, buf)
}

/// [`encode_in_place`] with `Sl` keyed already ([`HmacKey::new`] of its bytes): a caller
/// that computes other MACs under `Sl` for the same message keys it once.
pub fn encode_in_place_keyed(
    local: &HmacKey,
    channel: &ChannelId,
    step: u64,
    buf: &mut [u8],
) -> Result<[u8; TAG_SIZE], Error> {
    MessageCipher::new(local, channel, step)?.seal(buf)
}

/// Decodes `ciphertext ‖ tag` into a new buffer.
pub fn decode(local: &State, channel: &ChannelId, step: u64, encoded: &[u8]) -> Result<Vec<u8>, Error> {
    decode_keyed(&HmacKey::new(local.expose()), channel, step, encoded)
}

/// [`decode`] with `Sl` keyed already.
pub(crate) fn decode_keyed(local: &HmacKey, channel: &ChannelId, step: u64, encoded: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = encoded.to_vec();
    let n = decode_in_place_keyed(local, channel, step, &mut buf)?.len();
    buf.truncate(n);
    Ok(buf)
}

/// Decodes `ciphertext ‖ tag` in place; returns the plaintext prefix of `buf`.
pub fn decode_in_place<'a>(
    local: &State,
    channel: &ChannelId,
    step: u64,
    buf: &'a mut [u8],
) -> Result<&'a mut [u8], Error> {
    decode_in_place_keyed(&HmacKey::new(local.expose()), channel, step, buf)
}

/// [`decode_in_place`] with `Sl` keyed already (see [`encode_in_place_keyed`]).
pub fn decode_in_place_keyed<'a>(
    local: &HmacKey,
    channel: &ChannelId,
    step: u64,
    buf: &'a mut [u8],
) -> Result<&'a mut [u8], Error> {
    if buf.len() < TAG_SIZE {
        return Err(Error::DecodeFailed);
    }
    MessageCipher::new(local, channel, step)?.open(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let sl = State::from_bytes([8; 32]);
        let ch = ChannelId::from_bytes([1; 16]);
        let e = encode(&sl, &ch, 3, b"hello").unwrap();
        assert_eq!(e.len(), 5 + TAG_SIZE);
        assert_eq!(decode(&sl, &ch, 3, &e).unwrap(), b"hello");
        assert_eq!(decode(&sl, &ch, 4, &e), Err(Error::DecodeFailed));
        assert_eq!(decode(&sl, &ChannelId::from_bytes([2; 16]), 3, &e), Err(Error::DecodeFailed));
        assert_eq!(decode(&State::zero(), &ch, 3, &e), Err(Error::DecodeFailed));
        assert_eq!(decode(&sl, &ch, 3, &e[..10]), Err(Error::DecodeFailed));
        let empty = encode(&sl, &ch, 0, b"").unwrap();
        assert_eq!(empty.len(), TAG_SIZE);
        assert_eq!(decode(&sl, &ch, 0, &empty).unwrap(), b"");
    }

    #[test]
    fn algorithm_ids() {
        assert_eq!(Algorithm::from_id(b"aes-256-gcm"), Ok(Algorithm::Aes256Gcm));
        assert_eq!(Algorithm::from_id(b"chacha20-poly1305"), Err(Error::UnsupportedAlgorithm));
    }
}
