//! Secret 32-byte values: ratchet states, seeds, global state, keys.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, STATE_SIZE};

/// A 32-byte secret: a channel's local state `Sl`, the global state `Sg`, a bilateral
/// ratchet state `R` or PRNG seed `P`, a distribution seed, an encoding key.
///
/// Zeroized on drop, compared in constant time, and never printed: `Debug` shows
/// `State(<redacted>)`. Cloning is explicit so copies of secrets stay visible in code.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct State([u8; STATE_SIZE]);

impl State {
    /// Wraps 32 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; STATE_SIZE]) -> Self {
        Self(bytes)
    }

    /// Builds a state from a slice, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: [u8; STATE_SIZE] = bytes.try_into().map_err(|_| Error::InvalidLength {
            what: "state",
            expected: STATE_SIZE,
            actual: bytes.len(),
        })?;
        Ok(Self(arr))
    }

    /// The all-zero state (what pymfp stores for a closed channel).
    #[must_use]
    pub const fn zero() -> Self {
        Self([0u8; STATE_SIZE])
    }

    /// The secret bytes. Handle with care: do not log or persist them unencrypted.
    #[must_use]
    pub fn expose(&self) -> &[u8; STATE_SIZE] {
        &self.0
    }

    /// Constant-time equality.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for State {}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("State(<redacted>)")
    }
}

impl From<[u8; STATE_SIZE]> for State {
    fn from(bytes: [u8; STATE_SIZE]) -> Self {
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = State::from_bytes([0xab; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(State::from_slice(&[0u8; 31]).is_err());
        assert!(State::from_slice(&[0u8; 33]).is_err());
        assert_eq!(State::from_slice(&[7u8; 32]).unwrap(), State::from_bytes([7; 32]));
        assert_ne!(State::from_bytes([1; 32]), State::from_bytes([2; 32]));
    }
}
