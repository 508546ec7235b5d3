//! The runtime's default entropy: a fast-key-erasure ChaCha20 generator seeded from the
//! operating system.
//!
//! pymfp calls `os.urandom` once per frame block, per id and per correlation id. We seed a
//! ChaCha20 keystream with 32 bytes from the OS and serve requests from a buffer; every
//! refill takes the next key from the keystream itself and wipes the old one, so a later
//! compromise of the generator's state reveals nothing about earlier output. The
//! generator reseeds from the OS after every `RESEED_BYTES` of output.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use mfp_core::{EntropySource, Error};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

const BUF: usize = 4096;
const RESEED_BYTES: u64 = 1 << 30;

/// OS-seeded fast-key-erasure CSPRNG.
pub struct SystemEntropy {
    os: SystemRandom,
    buf: Box<[u8; BUF]>,
    pos: usize,
    key: [u8; 32],
    served: u64,
}

impl SystemEntropy {
    /// Seeds a generator from the OS.
    pub fn new() -> Result<Self, Error> {
        let os = SystemRandom::new();
        let mut key = [0u8; 32];
        os.fill(&mut key).map_err(|_| Error::Entropy)?;
        Ok(Self { os, buf: Box::new([0u8; BUF]), pos: BUF, key, served: 0 })
    }

    fn refill(&mut self) -> Result<(), Error> {
        if self.served >= RESEED_BYTES {
            let mut fresh = [0u8; 32];
            self.os.fill(&mut fresh).map_err(|_| Error::Entropy)?;
            for (k, f) in self.key.iter_mut().zip(fresh.iter()) {
                *k ^= *f;
            }
            fresh.zeroize();
            self.served = 0;
        }
        let mut cipher = ChaCha20::new(&chacha20::Key::from(self.key), &chacha20::Nonce::from([0u8; 12]));
        // First 32 keystream bytes become the next key; the rest is output.
        self.key.zeroize();
        cipher.apply_keystream(&mut self.key);
        self.buf.fill(0);
        cipher.apply_keystream(&mut self.buf[..]);
        self.pos = 0;
        Ok(())
    }
}

impl EntropySource for SystemEntropy {
    fn fill(&mut self, mut dest: &mut [u8]) -> Result<(), Error> {
        while !dest.is_empty() {
            if self.pos >= BUF {
                self.refill()?;
            }
            let avail = self.buf.get_mut(self.pos..).unwrap_or_default();
            let n = avail.len().min(dest.len());
            let (head, rest) = dest.split_at_mut(n);
            let (src, _) = avail.split_at_mut(n);
            head.copy_from_slice(src);
            // Output is used once: wipe it from the buffer.
            src.zeroize();
            self.pos += n;
            self.served += n as u64;
            dest = rest;
        }
        Ok(())
    }
}

impl Drop for SystemEntropy {
    fn drop(&mut self) {
        self.key.zeroize();
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_varies_and_spans_refills() {
        let mut e = SystemEntropy::new().unwrap();
        let mut a = vec![0u8; 10_000];
        e.fill(&mut a).unwrap();
        let mut b = vec![0u8; 10_000];
        e.fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        // No 16-byte window of the first draw repeats in the second.
        let firsts: std::collections::HashSet<&[u8]> = a.chunks(16).collect();
        assert!(b.chunks(16).all(|c| c.len() < 16 || !firsts.contains(c)));
        let mut other = SystemEntropy::new().unwrap();
        let mut c = vec![0u8; 64];
        other.fill(&mut c).unwrap();
        assert_ne!(&a[..64], &c[..]);
    }
}
