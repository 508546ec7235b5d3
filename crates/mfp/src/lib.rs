//! # mfp
//!
//! The Mirror Frame Protocol for secure communication between autonomous agents: the
//! facade crate most users depend on. It re-exports the layers:
//!
//! - [`core`] — the sans-IO protocol core (also the `mfp-core` crate);
//! - the runtime (feature `runtime`, on by default; also the `mfp-runtime` crate):
//!   [`Runtime`], [`AgentHandle`], [`mfp_send`], … at the crate root;
//! - durable state in SQLite (feature `sqlite`; also the `mfp-storage` crate): `sqlite`.
//!
//! ```
//! use mfp::{Runtime, RuntimeConfig, mfp_send};
//!
//! # fn main() -> Result<(), mfp::Error> {
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let alice = runtime.bind_named("alice", |_, _| {})?;
//! let bob = runtime.bind_named("bob", |_, msg| println!("Bob received: {}", String::from_utf8_lossy(&msg.payload)))?;
//! let channel = runtime.establish_channel(&alice.id(), &bob.id())?;
//! let receipt = mfp_send(&alice, channel, b"Hello from Alice!")?;
//! runtime.shutdown();
//! assert_eq!(receipt.step, 0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

/// The sans-IO protocol core: identifiers, frames, ratchets, Merkle Sg, encoding, envelope.
pub use mfp_core as core;

#[cfg(feature = "runtime")]
pub use mfp_runtime::*;

/// The runtime crate itself (audit, hooks and metrics modules live there).
#[cfg(feature = "runtime")]
pub use mfp_runtime as runtime;

/// Durable, encrypted runtime state in SQLite (`SqliteStorage`, `StorageConfig`,
/// `MasterKey`, the pymfp importer).
#[cfg(feature = "sqlite")]
pub use mfp_storage as sqlite;

/// Authenticated runtime-to-runtime links: identity keys, the Noise IK handshake with
/// pinned keys, the link codec and sessions (sans-IO), the tokio transport (`net`), and
/// the federation of a runtime — its cross-runtime channels (`federation::Federation`;
/// docs/federation.md, `examples/federation.rs`).
#[cfg(feature = "federation")]
pub use mfp_federation as federation;
