//! Frame sampling: intra-runtime (PRNG ⊕ caller entropy) and cross-runtime (deterministic).

use crate::crypto::HmacKey;
use crate::frame::check_depth;
use crate::ratchet::distribution_seed_keyed;
use crate::{BLOCK_SIZE, EntropySource, Frame, Prng, State};

/// Samples an intra-runtime frame of depth `k`:
/// `B_i = ChaCha20(ds)[16i..16i+16] ⊕ jitter_i` with `ds = HMAC(Sl, u64be(t) ‖ Sg)` and
/// `16·k` jitter bytes drawn from `entropy` (in block order, as pymfp interleaves them).
pub fn sample_frame(
    local: &State,
    step: u64,
    global: &State,
    depth: usize,
    entropy: &mut dyn EntropySource,
) -> Result<Frame, crate::Error> {
    sample_frame_keyed(&HmacKey::new(local.expose()), step, global, depth, entropy)
}

/// [`sample_frame`] with `Sl` keyed already ([`HmacKey::new`] of its bytes): a caller that
/// computes other MACs under `Sl` for the same message (its encoding key, the next `Sl`)
/// keys it once.
pub fn sample_frame_keyed(
    local: &HmacKey,
    step: u64,
    global: &State,
    depth: usize,
    entropy: &mut dyn EntropySource,
) -> Result<Frame, crate::Error> {
    check_depth(depth)?;
    let mut bytes = vec![0u8; depth * BLOCK_SIZE];
    entropy.fill(&mut bytes)?;
    let ds = distribution_seed_keyed(local, step, global);
    Prng::new(&ds).xor_into(&mut bytes);
    Frame::from_bytes(bytes)
}

/// The jitter seed of a cross-runtime frame: `HMAC(P, u64be(t))`.
#[must_use]
pub fn jitter_seed(shared_prng_seed: &State, step: u64) -> State {
    jitter_seed_keyed(&HmacKey::new(shared_prng_seed.expose()), step)
}

/// [`jitter_seed`] with `P` keyed already.
fn jitter_seed_keyed(shared_prng_seed: &HmacKey, step: u64) -> State {
    shared_prng_seed.mac_state(&[&step.to_be_bytes()])
}

/// Samples the deterministic cross-runtime frame both runtimes can compute:
/// `B_i = ChaCha20(HMAC(Sl, u64be(t) ‖ R))[i] ⊕ ChaCha20(HMAC(P, u64be(t)))[i]`.
///
/// pymfp passes the bilateral ratchet state `R` both as `Sl` and as `ratchet`.
pub fn sample_frame_cross(
    local: &State,
    step: u64,
    ratchet: &State,
    shared_prng_seed: &State,
    depth: usize,
) -> Result<Frame, crate::Error> {
    sample_frame_cross_keyed(
        &HmacKey::new(local.expose()),
        step,
        ratchet,
        &HmacKey::new(shared_prng_seed.expose()),
        depth,
    )
}

/// [`sample_frame_cross`] with `Sl` and `P` keyed already.
pub(crate) fn sample_frame_cross_keyed(
    local: &HmacKey,
    step: u64,
    ratchet: &State,
    shared_prng_seed: &HmacKey,
    depth: usize,
) -> Result<Frame, crate::Error> {
    check_depth(depth)?;
    let mut bytes = vec![0u8; depth * BLOCK_SIZE];
    Prng::new(&distribution_seed_keyed(local, step, ratchet)).xor_into(&mut bytes);
    Prng::new(&jitter_seed_keyed(shared_prng_seed, step)).xor_into(&mut bytes);
    Frame::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FnEntropy;
    use crate::ratchet::distribution_seed;

    #[test]
    fn zero_jitter_gives_the_candidates() {
        let sl = State::from_bytes([1; 32]);
        let sg = State::from_bytes([2; 32]);
        let mut zero = FnEntropy(|b: &mut [u8]| {
            b.fill(0);
            Ok(())
        });
        let f = sample_frame(&sl, 5, &sg, 4, &mut zero).unwrap();
        let mut cand = vec![0u8; 64];
        Prng::new(&distribution_seed(&sl, 5, &sg)).fill(&mut cand);
        assert_eq!(f.as_bytes(), &cand[..]);
        let mut ones = FnEntropy(|b: &mut [u8]| {
            b.fill(0xff);
            Ok(())
        });
        let g = sample_frame(&sl, 5, &sg, 4, &mut ones).unwrap();
        assert!(g.as_bytes().iter().zip(&cand).all(|(x, c)| *x == !c));
    }

    #[test]
    fn entropy_failure_propagates() {
        let s = State::zero();
        let mut bad = FnEntropy(|_: &mut [u8]| Err(crate::Error::Entropy));
        assert_eq!(sample_frame(&s, 0, &s, 4, &mut bad), Err(crate::Error::Entropy));
    }

    #[test]
    fn cross_frames_are_deterministic_and_step_bound() {
        let r = State::from_bytes([4; 32]);
        let p = State::from_bytes([5; 32]);
        let a = sample_frame_cross(&r, 1, &r, &p, 4).unwrap();
        assert_eq!(a, sample_frame_cross(&r, 1, &r, &p, 4).unwrap());
        assert_ne!(a, sample_frame_cross(&r, 2, &r, &p, 4).unwrap());
        assert!(sample_frame_cross(&r, 1, &r, &p, 1).is_err());
    }
}
