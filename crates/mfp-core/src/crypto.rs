//! Thin wrappers around the primitives MFP uses, so a provider could be swapped.
//!
//! SHA-256 and HMAC-SHA-256 come from RustCrypto's `sha2` and `hmac` (SHA-NI where the CPU
//! has it), AES-256-GCM from `ring`; inputs are passed as a list of parts so callers never
//! build a concatenated copy of secret material.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{Error, State};

/// SHA-256's block size: HMAC's key is padded (or first hashed) to it.
const SHA256_BLOCK: usize = 64;

/// SHA-256 over the concatenation of `parts`.
#[must_use]
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HMAC-SHA-256 with `key` over the concatenation of `parts` (key first, as in pymfp).
#[must_use]
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    HmacKey::new(key).mac(parts)
}

/// An HMAC-SHA-256 key, keyed once: the two block compressions of the key are done when
/// it is made, not again for each MAC under it (a message computes three MACs under its
/// chain's ratchet state and two under its PRNG seed). Its states are wiped on drop.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    /// Keys HMAC-SHA-256 with `key`. The key is brought to SHA-256's block size as
    /// RFC 2104 says — hashed when longer, zero-padded — so keying cannot fail; the padded
    /// copy is wiped.
    #[must_use]
    pub fn new(key: &[u8]) -> Self {
        let mut block = Zeroizing::new([0u8; SHA256_BLOCK]);
        if let Some(short) = block.get_mut(..key.len()) {
            short.copy_from_slice(key);
        } else if let Some(head) = block.get_mut(..32) {
            head.copy_from_slice(&sha256(&[key]));
        }
        Self(<Hmac<Sha256> as KeyInit>::new(&(*block).into()))
    }

    /// The MAC of the concatenation of `parts`.
    #[must_use]
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// [`Self::mac`] as a [`State`] (zeroized on drop).
    #[must_use]
    pub fn mac_state(&self, parts: &[&[u8]]) -> State {
        State::from_bytes(self.mac(parts))
    }
}

impl core::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HmacKey(..)")
    }
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
    a.len() == b.len() && bool::from(ct_zero(xor_or(a.iter().copied().zip(b.iter().copied()))))
}

/// OR of the XORs of byte pairs: zero exactly when every pair is equal. No branch on the
/// data, so the loop vectorises; the one decision is [`ct_zero`]'s, behind subtle's
/// optimisation barrier (per-byte `Choice`s would put a barrier on every byte: 3.5% of a
/// receiving runtime's time went to them).
pub(crate) fn xor_or(pairs: impl Iterator<Item = (u8, u8)>) -> u8 {
    pairs.fold(0u8, |acc, (x, y)| acc | (x ^ y))
}

/// Whether `diff` is zero, as a [`subtle::Choice`].
pub(crate) fn ct_zero(diff: u8) -> subtle::Choice {
    diff.ct_eq(&0)
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
    fn ct_eq_compares_every_byte_and_the_length() {
        let a = [7u8; 100];
        assert!(ct_eq(&a, &a));
        for i in 0..a.len() {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!ct_eq(&a, &b), "byte {i} bit {bit}");
            }
        }
        assert!(!ct_eq(&a, &a[..99]));
        assert!(ct_eq(&[], &[]));
    }

    #[test]
    fn a_key_made_once_gives_the_macs_of_a_key_made_each_time() {
        for key in [&b""[..], b"k", &[9u8; 32], &[7u8; 64], &[5u8; 65], &[3u8; 200]] {
            let keyed = HmacKey::new(key);
            for data in [&b""[..], b"abc", &[1u8; 100]] {
                assert_eq!(keyed.mac(&[data]), hmac_sha256(key, &[data]));
                let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
                assert_eq!(&keyed.mac(&[data])[..], ring::hmac::sign(&ring_key, data).as_ref());
            }
            // Used again after other MACs: the keyed state is not consumed.
            assert_eq!(keyed.mac_state(&[b"x"]).expose(), &hmac_sha256(key, &[b"x"]));
        }
    }

    #[test]
    fn parts_equal_concatenation() {
        assert_eq!(sha256(&[b"ab", b"c"]), sha256(&[b"abc"]));
        assert_eq!(hmac_sha256(b"k", &[b"a", b"bc"]), hmac_sha256(b"k", &[b"abc"]));
        assert_ne!(hmac_sha256(b"k", &[b"abc"]), hmac_sha256(b"K", &[b"abc"]));
    }

    /// RFC 4231's test cases 1, 2, 4, 6 and 7 (keys of 20, 4, 25 and 131 bytes: shorter
    /// than a block, and longer, which is hashed first).
    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 5] = [
            (vec![0x0b; 20], b"Hi There".to_vec(), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec(), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (
                (1u8..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, want) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &[&data])), want, "key of {} bytes", key.len());
        }
    }

    proptest::proptest! {
        /// Against ring's HMAC and SHA-256 for keys and inputs of any length around the block
        /// size (the provider changed from ring; the bytes must not).
        #[test]
        fn hmac_and_sha256_agree_with_ring(key in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                           a in proptest::collection::vec(proptest::num::u8::ANY, 0..150),
                                           b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
            let mut joined = a.clone();
            joined.extend_from_slice(&b);
            let want = ring::hmac::sign(&ring_key, &joined);
            proptest::prop_assert_eq!(&hmac_sha256(&key, &[&a, &b])[..], want.as_ref());
            let digest = ring::digest::digest(&ring::digest::SHA256, &joined);
            proptest::prop_assert_eq!(&sha256(&[&a, &b])[..], digest.as_ref());
        }
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
