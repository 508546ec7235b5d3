//! Caller-supplied entropy.

use crate::Error;

/// A source of random bytes passed into the core by its caller.
///
/// The core never reads the operating system's RNG itself. Runtimes pass a CSPRNG;
/// tests and vector checks pass a deterministic or replaying source.
pub trait EntropySource {
    /// Fills `dest` entirely with random bytes, or fails.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error>;
}

/// Adapts a closure into an [`EntropySource`].
///
/// ```
/// use mfp_core::{EntropySource, FnEntropy};
/// let mut e = FnEntropy(|buf: &mut [u8]| { buf.fill(1); Ok(()) });
/// let mut b = [0u8; 4];
/// e.fill(&mut b).unwrap();
/// assert_eq!(b, [1; 4]);
/// ```
pub struct FnEntropy<F>(pub F);

impl<F> EntropySource for FnEntropy<F>
where
    F: FnMut(&mut [u8]) -> Result<(), Error>,
{
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        (self.0)(dest)
    }
}

/// Replays a recorded byte stream as entropy, in order; fails once it runs out (vector
/// checks replay what pymfp drew; the runtime hands a send's jitter to the sampler).
///
/// ```
/// use mfp_core::{EntropySource, ReplayEntropy};
/// let mut e = ReplayEntropy::new([1u8, 2, 3]);
/// let mut b = [0u8; 2];
/// e.fill(&mut b).unwrap();
/// assert_eq!(b, [1, 2]);
/// assert!(e.fill(&mut b).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct ReplayEntropy<B> {
    bytes: B,
    pos: usize,
}

impl<B: AsRef<[u8]>> ReplayEntropy<B> {
    /// Replays `bytes` from the start.
    pub const fn new(bytes: B) -> Self {
        Self { bytes, pos: 0 }
    }
}

impl<B: AsRef<[u8]>> EntropySource for ReplayEntropy<B> {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        let end = self.pos.checked_add(dest.len()).ok_or(Error::Entropy)?;
        let src = self.bytes.as_ref().get(self.pos..end).ok_or(Error::Entropy)?;
        dest.copy_from_slice(src);
        self.pos = end;
        Ok(())
    }
}

impl<E: EntropySource + ?Sized> EntropySource for &mut E {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        (**self).fill(dest)
    }
}
