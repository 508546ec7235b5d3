//! # mfp-core
//!
//! The sans-IO core of the Mirror Frame Protocol (MFP), byte-compatible with the Python
//! reference implementation pymfp 1.0.0 wherever bytes are shared.
//!
//! Everything here is a pure function or a plain value: no async runtime, no sockets, no
//! clock and no global random number generator. Where the protocol needs fresh entropy
//! (intra-runtime frame jitter, identifiers) the caller passes an [`EntropySource`].
//!
//! What lives here:
//! - identifiers ([`RuntimeId`], [`AgentId`], [`ChannelId`], [`MessageId`], [`BilateralId`]);
//! - secret 32-byte values ([`State`]), zeroized on drop and never printed;
//! - frames of depth `k` ([`Frame`]), their mirror and constant-time validation;
//! - the channel ratchet ([`ratchet`]), the Merkle global state ([`MerkleSg`]), the
//!   ChaCha20 frame PRNG ([`Prng`]) and frame sampling ([`sampling`]);
//! - AES-256-GCM payload encoding ([`encoding`]) and protocol message assembly
//!   ([`message`]);
//! - bilateral (runtime-to-runtime) state ([`bilateral`]);
//! - the 64-byte `MFP1` envelope and wire messages ([`envelope`]).
//!
//! ## Example: one message on a channel, end to end
//!
//! ```
//! use mfp_core::{encoding, message, ratchet, sampling, AgentId, ChannelId, Frame, MerkleSg,
//!                RuntimeId, FnEntropy};
//!
//! # fn main() -> Result<(), mfp_core::Error> {
//! let runtime = RuntimeId::derive(b"deployment", b"instance");
//! let alice = AgentId::derive(&runtime, 1, &[1; 8]);
//! let bob = AgentId::derive(&runtime, 2, &[2; 8]);
//! let channel = ChannelId::from_bytes([7; 16]);
//!
//! // Channel seed and the runtime-wide global state Sg.
//! let sl = ratchet::channel_seed(&runtime, &alice, &bob, &channel);
//! let mut sg_tree = MerkleSg::new();
//! sg_tree.insert(channel, &sl)?;
//! let sg = sg_tree.root().expect("one channel");
//!
//! // Sample a depth-4 frame (jitter from the caller's entropy), encode, assemble.
//! let mut entropy = FnEntropy(|buf: &mut [u8]| { buf.fill(0x5a); Ok(()) });
//! let frame = sampling::sample_frame(&sl, 0, &sg, 4, &mut entropy)?;
//! let msg = message::assemble(&frame, &sl, &channel, 0, b"Hello from Alice!")?;
//!
//! // The receiving side validates the frame and decodes the payload.
//! let parts = message::parse(&msg, 4)?;
//! Frame::validate(&parts.frame_open()?, &parts.frame_close()?, &frame)?;
//! let payload = encoding::decode(&sl, &channel, 0, parts.encoded_payload())?;
//! assert_eq!(payload, b"Hello from Alice!");
//!
//! // Both sides then advance the ratchet with the frame.
//! let next = ratchet::advance(&sl, &frame);
//! assert_ne!(next, sl);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod bilateral;
pub mod crypto;
pub mod encoding;
mod entropy;
pub mod envelope;
mod error;
mod frame;
mod ids;
pub mod merkle;
pub mod message;
mod prng;
pub mod ratchet;
pub mod sampling;
mod secret;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use entropy::{EntropySource, FnEntropy, ReplayEntropy};
pub use error::{EnvelopeError, Error, MerkleError, Result};
pub use frame::{Block, Frame};
pub use ids::{AgentId, BilateralId, ChannelId, MessageId, RuntimeId};
pub use merkle::MerkleSg;
pub use prng::Prng;
pub use secret::State;

/// Size of one frame block in bytes (`b`).
pub const BLOCK_SIZE: usize = 16;
/// Size of states, seeds, keys and the global state in bytes.
pub const STATE_SIZE: usize = 32;
/// Smallest frame depth `k` the protocol allows.
pub const MIN_FRAME_DEPTH: usize = 2;
/// Frame depth used when none is given.
pub const DEFAULT_FRAME_DEPTH: usize = 4;
/// Largest frame depth this implementation accepts anywhere (a frame of this depth is
/// 4 KiB on each side of the payload).
///
/// pymfp declares 32 but enforces no maximum at all; we cap depth so that a header can
/// never make a receiver allocate or hash unbounded frames. Receivers may set a lower
/// limit ([`envelope::EnvelopeLimits`]).
pub const MAX_FRAME_DEPTH: usize = 256;
/// The envelope magic, ASCII `MFP1`.
pub const PROTOCOL_MAGIC: [u8; 4] = *b"MFP1";
/// The protocol version carried in envelopes.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the envelope header in bytes.
pub const ENVELOPE_HEADER_SIZE: usize = 64;
/// Size of the AES-GCM authentication tag appended to every encoded payload.
pub const TAG_SIZE: usize = 16;
/// Size of the AES-GCM nonce.
pub const NONCE_SIZE: usize = 12;
