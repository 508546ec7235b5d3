//! The ChaCha20 keystream PRNG used for frame sampling.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

use crate::{Block, State};

/// ChaCha20 (RFC 8439, 20 rounds) keystream with a 32-byte seed as key, a 12-byte zero
/// nonce and initial block counter 0 — byte-identical to pymfp's `ChaCha20PRNG`.
///
/// Successive calls continue one keystream: four 16-byte draws are the first 64-byte
/// ChaCha block. The cipher state is zeroized on drop.
pub struct Prng {
    cipher: ChaCha20,
}

impl Prng {
    /// A fresh keystream for `seed`.
    #[must_use]
    pub fn new(seed: &State) -> Self {
        let key = chacha20::Key::from(*seed.expose());
        let nonce = chacha20::Nonce::from([0u8; 12]);
        Self { cipher: ChaCha20::new(&key, &nonce) }
    }

    /// Overwrites `out` with the next `out.len()` keystream bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        out.fill(0);
        self.cipher.apply_keystream(out);
    }

    /// XORs the next `buf.len()` keystream bytes into `buf`.
    pub fn xor_into(&mut self, buf: &mut [u8]) {
        self.cipher.apply_keystream(buf);
    }

    /// The next 16 keystream bytes.
    pub fn next_block(&mut self) -> Block {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b
    }
}

impl core::fmt::Debug for Prng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Prng(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8439_zero_key_block0() {
        // RFC 8439 §2.3.2 style check: zero key, zero nonce, counter 0.
        let mut p = Prng::new(&State::zero());
        let first = p.next_block();
        assert_eq!(hex::encode(first), "76b8e0ada0f13d90405d6ae55386bd28");
    }

    #[test]
    fn draws_are_one_stream() {
        let seed = State::from_bytes([3; 32]);
        let mut a = Prng::new(&seed);
        let mut whole = [0u8; 80];
        a.fill(&mut whole);
        let mut b = Prng::new(&seed);
        let mut parts = Vec::new();
        for _ in 0..5 {
            parts.extend_from_slice(&b.next_block());
        }
        assert_eq!(parts, whole.to_vec());
    }
}
