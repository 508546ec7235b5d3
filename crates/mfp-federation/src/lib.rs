//! # mfp-federation
//!
//! Links between MFP runtimes on different machines, as a sans-IO library in the style of
//! quinn-proto: bytes in, bytes out, the current time passed in, timers polled. No
//! sockets, no clock, no async runtime here.
//!
//! - [`identity`]: long-term X25519 identity keys, their files and pinnable public keys;
//! - [`codec`]: framing of Noise messages on a byte stream, lengths checked before
//!   allocation;
//! - [`handshake`]: `Noise_IK_25519_AESGCM_SHA256` with pinned peers, replay protection of
//!   message 1, and the typestate that only a completed handshake yields an
//!   [`handshake::Established`] value;
//! - [`control`]: the control messages carried inside the Noise transport;
//! - [`session`]: the session state machine, an authenticated pipe between two runtimes:
//!   opaque MFP1 wire messages per cross-runtime channel, channel agreement, per-channel
//!   acknowledgements and positions, chain rotation, keepalive, rekeying;
//! - [`recovery`]: DETECT → NEGOTIATE → RESYNC after a reconnect: the `RECOVERY`-flagged
//!   report, pymfp's diagnoses bounded by the outbound log, attempt and time limits;
//! - [`chains`]: the two bilateral chains of a cross-runtime channel
//!   ([`channel_chains`]), which the runtime owns, seals and opens with;
//! - `net` (feature `net`, default): the tokio transport — listener with limits, dialer
//!   with backoff, one link per pair of runtimes;
//! - `federation` (feature `runtime`, default): the federation of an mfp-runtime
//!   `Runtime` — its cross-runtime channels over `net`;
//! - [`compat`]: pymfp 1.0.0 compat peers (unauthenticated, one shared chain, raw `MFP1`
//!   envelopes on plain TCP), only ever chosen by explicit configuration; with the
//!   `compat-net` feature, `compat_net` is their tokio transport for an mfp-runtime
//!   `Runtime`.
//!
//! See `docs/federation.md` for the threat model, the wire format and what is not built yet.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod chains;
pub mod codec;
pub mod compat;
#[cfg(feature = "compat-net")]
pub mod compat_net;
pub mod control;
#[cfg(feature = "runtime")]
pub mod federation;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod identity;
#[cfg(feature = "net")]
pub mod net;
pub mod recovery;
pub mod session;

pub use chains::{channel_chains, reset_id};
pub use identity::{IdentityError, IdentityKey, PublicKey};

/// Entropy from the operating system's random number generator.
#[derive(Debug)]
pub struct OsEntropy {
    rng: ring::rand::SystemRandom,
}

impl OsEntropy {
    /// A handle on the OS generator.
    #[must_use]
    pub fn new() -> Self {
        Self { rng: ring::rand::SystemRandom::new() }
    }
}

impl Default for OsEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl mfp_core::EntropySource for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), mfp_core::Error> {
        use ring::rand::SecureRandom;
        self.rng.fill(dest).map_err(|_| mfp_core::Error::Crypto("operating system random number generator failed"))
    }
}
