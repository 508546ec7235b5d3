//! Identifiers: fixed-size byte strings with lowercase-hex text form.
//!
//! | type | size | derivation |
//! |---|---|---|
//! | [`RuntimeId`] | 32 | `SHA256(deployment_id ‖ instance_id)` |
//! | [`AgentId`] | 32 | `SHA256(runtime_id ‖ u64be(counter) ‖ suffix8)` |
//! | [`ChannelId`] | 16 | random |
//! | [`MessageId`] | 16 | random |
//! | [`BilateralId`] | 32 | `SHA256(min(a, b) ‖ max(a, b))` over runtime ids |
//!
//! Identifiers are public values (they appear in envelopes and logs), so `Debug` and
//! `Display` print them; [`RuntimeId::short`] and friends give the 8-hex-digit prefix used
//! in logs.

use core::fmt;
use core::str::FromStr;

use crate::Error;
use crate::crypto::sha256;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Size in bytes.
            pub const LEN: usize = $len;

            /// Wraps bytes of the right size.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Builds the identifier from a slice, which must have exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| Error::InvalidLength {
                    what: $what,
                    expected: $len,
                    actual: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            /// The raw bytes.
            #[must_use]
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The first 8 hex digits, as used in log lines.
            #[must_use]
            pub fn short(&self) -> String {
                let mut s = hex::encode(&self.0[..4]);
                s.truncate(8);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; $len * 2];
                // Cannot fail: the buffer is exactly twice the input length.
                if hex::encode_to_slice(&self.0, &mut buf).is_err() {
                    return Err(fmt::Error);
                }
                f.write_str(core::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                if s.len() != $len * 2 {
                    return Err(Error::InvalidHexLength { what: $what, expected: $len * 2, actual: s.len() });
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidHex { what: $what })?;
                Ok(Self(out))
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

id_type!(
    /// A runtime's 32-byte identity.
    RuntimeId, 32, "runtime id"
);
id_type!(
    /// An agent's 32-byte identifier.
    AgentId, 32, "agent id"
);
id_type!(
    /// A channel's 16-byte identifier.
    ChannelId, 16, "channel id"
);
id_type!(
    /// A message's 16-byte identifier.
    MessageId, 16, "message id"
);
id_type!(
    /// The 32-byte identifier of the bilateral channel between two runtimes.
    BilateralId, 32, "bilateral id"
);

impl RuntimeId {
    /// `SHA256(deployment_id ‖ instance_id)`, exactly as pymfp derives it.
    ///
    /// The two inputs are concatenated without a separator (so `("ab", "c")` and
    /// `("a", "bc")` give the same identity — a pymfp property kept for compatibility).
    #[must_use]
    pub fn derive(deployment_id: &[u8], instance_id: &[u8]) -> Self {
        Self(sha256(&[deployment_id, instance_id]))
    }

    /// The 16-byte `sender_runtime` field of an envelope: the identity's first 16 bytes.
    #[must_use]
    pub fn sender_field(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.0[..16]);
        out
    }
}

impl AgentId {
    /// `SHA256(runtime_id ‖ u64be(counter) ‖ suffix)`, exactly as pymfp derives it.
    ///
    /// `counter` is the runtime's agent counter after incrementing (the first agent
    /// uses 1); `suffix` is 8 bytes of fresh entropy supplied by the caller.
    #[must_use]
    pub fn derive(runtime: &RuntimeId, counter: u64, suffix: &[u8; 8]) -> Self {
        Self(sha256(&[runtime.as_bytes(), &counter.to_be_bytes(), suffix]))
    }
}

impl BilateralId {
    /// `SHA256(lo ‖ hi)` with the two runtime identities in lexicographic order; symmetric.
    #[must_use]
    pub fn derive(a: &RuntimeId, b: &RuntimeId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Self(sha256(&[lo.as_bytes(), hi.as_bytes()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = ChannelId::from_bytes([0xa4; 16]);
        let s = id.to_string();
        assert_eq!(s, "a4".repeat(16));
        assert_eq!(s.parse::<ChannelId>().unwrap(), id);
        assert_eq!("A4".repeat(16).parse::<ChannelId>().unwrap(), id);
        assert!("a4".repeat(15).parse::<ChannelId>().is_err());
        assert!("zz".repeat(16).parse::<ChannelId>().is_err());
        assert_eq!(id.short(), "a4a4a4a4");
        assert_eq!(format!("{id:?}"), format!("ChannelId({s})"));
    }

    #[test]
    fn from_slice_enforces_size() {
        assert!(AgentId::from_slice(&[0; 31]).is_err());
        assert!(AgentId::from_slice(&[0; 32]).is_ok());
        assert!(MessageId::from_slice(&[0; 17]).is_err());
    }

    #[test]
    fn bilateral_id_is_symmetric() {
        let a = RuntimeId::derive(b"dep", b"a");
        let b = RuntimeId::derive(b"dep", b"b");
        assert_eq!(BilateralId::derive(&a, &b), BilateralId::derive(&b, &a));
        assert_ne!(BilateralId::derive(&a, &b), BilateralId::derive(&a, &a));
    }
}
