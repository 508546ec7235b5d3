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

impl<E: EntropySource + ?Sized> EntropySource for &mut E {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        (**self).fill(dest)
    }
}
