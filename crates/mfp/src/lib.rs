//! # mfp
//!
//! The Mirror Frame Protocol for secure communication between autonomous agents: the
//! facade crate most users depend on. It re-exports the protocol layers; today that is
//! the sans-IO core ([`core`], also available as the `mfp-core` crate).
//!
//! ```
//! use mfp::core::{ChannelId, RuntimeId};
//!
//! let runtime = RuntimeId::derive(b"deployment", b"instance");
//! let channel: ChannelId = "a4aa02efdd355541014e879bde4db568".parse().unwrap();
//! assert_eq!(channel.to_string(), "a4aa02efdd355541014e879bde4db568");
//! assert_eq!(runtime.sender_field().len(), 16);
//! ```
#![forbid(unsafe_code)]

/// The sans-IO protocol core: identifiers, frames, ratchets, Merkle Sg, encoding, envelope.
pub use mfp_core as core;
