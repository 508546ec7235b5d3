//! Thin wrappers around the primitives MFP uses, so a provider could be swapped.
//!
//! HMAC-SHA-256 and SHA-256 come from `ring`; inputs are passed as a list of parts so
//! callers never build a concatenated copy of secret material.

use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use crate::{Error, State};

/// SHA-256 over the concatenation of `parts`.
#[must_use]
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// HMAC-SHA-256 with `key` over the concatenation of `parts` (key first, as in pymfp).
#[must_use]
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// HMAC-SHA-256 returning a [`State`] (zeroized on drop).
#[must_use]
pub fn hmac_state(key: &[u8], parts: &[&[u8]]) -> State {
    State::from_bytes(hmac_sha256(key, parts))
}

/// An AES-256-GCM key: the one AEAD of MFP (message encoding, and storage cells at rest).
/// Nonces are the caller's: derived per (channel, step) by the encoding, fresh random bytes
/// for storage cells.
pub struct Aes256GcmKey(ring::aead::LessSafeKey);

impl core::fmt::Debug for Aes256GcmKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aes256GcmKey(..)")
    }
}

/// Size of an AES-256-GCM nonce.
pub const AES_GCM_NONCE_SIZE: usize = 12;

impl Aes256GcmKey {
    /// A key from 32 bytes.
    pub fn new(key: &[u8; 32]) -> Result<Self, Error> {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .map_err(|_| Error::Crypto("AES-256-GCM key setup"))?;
        Ok(Self(ring::aead::LessSafeKey::new(unbound)))
    }

    /// Encrypts `buf` in place and returns the 16-byte tag.
    pub fn seal_separate_tag(
        &self,
        nonce: [u8; AES_GCM_NONCE_SIZE],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; crate::TAG_SIZE], Error> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| Error::Crypto("AES-256-GCM seal"))?;
        let mut out = [0u8; crate::TAG_SIZE];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal_append_tag(&self, nonce: [u8; AES_GCM_NONCE_SIZE], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), Error> {
        let tag = self.seal_separate_tag(nonce, aad, buf)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `ciphertext ‖ tag` in place; returns the plaintext part of `buf`.
    /// [`Error::DecodeFailed`] when it does not authenticate (or the nonce is not 12 bytes).
    pub fn open_in_place<'a>(&self, nonce: &[u8], aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::DecodeFailed)?;
        self.0.open_in_place(nonce, ring::aead::Aad::from(aad), buf).map_err(|_| Error::DecodeFailed)
    }
}

/// Constant-time equality of two byte strings (lengths are not secret).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// X25519: the public key of a 32-byte private scalar.
#[must_use]
pub fn x25519_public(private: &State) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*private.expose());
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// X25519 shared secret of our private key and the peer's public key.
///
/// Fails with [`Error::Crypto`] if the result is all zeros (a low-order peer key), which
/// must never seed a bilateral channel.
pub fn x25519_shared(private: &State, peer_public: &[u8; 32]) -> Result<State, Error> {
    let secret = x25519_dalek::StaticSecret::from(*private.expose());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(Error::Crypto("non-contributory X25519 shared secret"));
    }
    Ok(State::from_bytes(*shared.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_equal_concatenation() {
        assert_eq!(sha256(&[b"ab", b"c"]), sha256(&[b"abc"]));
        assert_eq!(hmac_sha256(b"k", &[b"a", b"bc"]), hmac_sha256(b"k", &[b"abc"]));
        assert_ne!(hmac_sha256(b"k", &[b"abc"]), hmac_sha256(b"K", &[b"abc"]));
    }

    #[test]
    fn x25519_agrees_and_rejects_low_order() {
        let a = State::from_bytes([1; 32]);
        let b = State::from_bytes([2; 32]);
        let ab = x25519_shared(&a, &x25519_public(&b)).unwrap();
        let ba = x25519_shared(&b, &x25519_public(&a)).unwrap();
        assert_eq!(ab, ba);
        assert!(x25519_shared(&a, &[0u8; 32]).is_err());
    }
}

#[cfg(test)]
mod aead_tests {
    use super::*;

    #[test]
    fn aes_gcm_round_trips_and_refuses_a_changed_byte() {
        let key = Aes256GcmKey::new(&[7; 32]).unwrap();
        let mut buf = b"attack at dawn".to_vec();
        key.seal_append_tag([1; 12], b"aad", &mut buf).unwrap();
        assert_eq!(buf.len(), 14 + crate::TAG_SIZE);
        let mut copy = buf.clone();
        assert_eq!(key.open_in_place(&[1; 12], b"aad", &mut copy).unwrap(), b"attack at dawn");
        let mut wrong_aad = buf.clone();
        assert!(key.open_in_place(&[1; 12], b"aaD", &mut wrong_aad).is_err());
        let mut flipped = buf.clone();
        flipped[3] ^= 1;
        assert!(key.open_in_place(&[1; 12], b"aad", &mut flipped).is_err());
        assert!(key.open_in_place(&[1; 11], b"aad", &mut buf).is_err(), "a nonce of 11 bytes");
    }
}
