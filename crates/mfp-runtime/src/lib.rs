//! # mfp-runtime
//!
//! The Mirror Frame Protocol runtime: it hosts agents and mediates every message between
//! them. Each send runs the six-stage pipeline ACCEPT → FRAME → ENCODE → VALIDATE →
//! DECODE → DELIVER under the channel's lock, and the channel's ratchet state, step and
//! the runtime's global state `Sg` advance only when every stage succeeded.
//!
//! Delivery goes through a bounded mailbox per agent, drained by a worker that runs the
//! agent's handler, so a handler may reply — even on the same channel — without deadlock,
//! and a slow or panicking handler stalls nobody else.
//!
//! ```
//! use mfp_runtime::{Runtime, RuntimeConfig, mfp_send};
//! use std::sync::{Arc, Mutex};
//!
//! # fn main() -> Result<(), mfp_runtime::Error> {
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let inbox = Arc::new(Mutex::new(Vec::new()));
//! let seen = Arc::clone(&inbox);
//! let alice = runtime.bind_named("alice", |_, _| {})?;
//! let bob = runtime.bind_named("bob", move |_, msg| seen.lock().unwrap().push(msg.payload))?;
//! let channel = runtime.establish_channel(&alice.id(), &bob.id())?;
//!
//! let receipt = mfp_send(&alice, channel, b"Hello from Alice!")?;
//! assert_eq!(receipt.step, 0);
//!
//! runtime.shutdown(); // delivers what is queued, then wipes channel state
//! assert_eq!(inbox.lock().unwrap().as_slice(), [b"Hello from Alice!".to_vec()]);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod agent;
pub mod audit;
mod block;
mod builder;
mod channel;
pub mod clock;
mod commit;
mod config;
mod entropy;
mod error;
mod handle;
pub mod hooks;
pub mod metrics;
mod pipeline;
pub mod remote;
mod remote_pipeline;
mod runtime;
pub mod storage;
mod types;

pub use agent::{AgentHandler, AsyncHandler, BoxFuture};
pub use builder::RuntimeBuilder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    Backpressure, DEFAULT_MAILBOX_MAX_BYTES, MAX_ID_INPUT_LEN, MAX_QUEUE_LIMIT, RateLimitAction, RuntimeConfig,
};
pub use entropy::SystemEntropy;
pub use error::{ConfigError, Error, ErrorCode, Result};
pub use handle::{AgentHandle, bind, mfp_channels, mfp_send, mfp_send_async, mfp_status, unbind};
pub use runtime::Runtime;
pub use types::{
    AgentState, AgentStatus, ChannelInfo, ChannelStatus, CorrelationId, DeliveredMessage, Receipt, SendOptions,
};

pub use mfp_core::{AgentId, ChannelId, MessageId, RuntimeId};
