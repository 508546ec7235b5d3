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
