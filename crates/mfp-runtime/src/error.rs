//! The runtime's error type and pymfp's error codes.

use std::time::Duration;

use thiserror::Error;

use mfp_core::{AgentId, ChannelId};

use crate::types::AgentState;

/// pymfp's `AgentErrorCode` values, for code written against pymfp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `unbound`
    Unbound,
    /// `quarantined`
    Quarantined,
    /// `invalid_channel`
    InvalidChannel,
    /// `channel_closed`
    ChannelClosed,
    /// `channel_quarantined`
    ChannelQuarantined,
    /// `payload_too_large`
    PayloadTooLarge,
    /// `resource_limit_exceeded`
    ResourceLimitExceeded,
    /// `timeout`
    Timeout,
}

impl ErrorCode {
    /// pymfp's string value of the code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unbound => "unbound",
            ErrorCode::Quarantined => "quarantined",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::ChannelClosed => "channel_closed",
            ErrorCode::ChannelQuarantined => "channel_quarantined",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceLimitExceeded => "resource_limit_exceeded",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// A configuration value that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid configuration: {field}: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is invalid.
    pub reason: String,
}

/// Every way a runtime operation can fail. Messages name the agent, channel or setting
/// involved and say what to do; they never contain payloads, states or keys. `Debug`
/// prints the same text as `Display` (so `main() -> Result<(), mfp::Error>` reads well);
/// match on the variants to tell errors apart.
#[derive(Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent is not bound to this runtime.
    #[error(
        "agent {0} is not bound to this runtime (never bound here, or unbound or terminated since); \
         bind a new agent or use a bound one"
    )]
    AgentNotBound(AgentId),
    /// The agent's state does not allow the operation.
    #[error("{}", agent_state_message(agent, *state))]
    AgentState {
        /// The agent.
        agent: AgentId,
        /// Its state.
        state: AgentState,
    },
    /// The agent is quarantined.
    #[error(
        "agent {0} is quarantined; an operator lifts it with Runtime::restore_agent \
         (or removes it with Runtime::terminate_agent)"
    )]
    AgentQuarantined(AgentId),
    /// No such channel.
    #[error("channel {0} does not exist in this runtime; establish a channel first")]
    UnknownChannel(ChannelId),
    /// The sender is not one of the channel's two agents.
    #[error("agent {agent} is not one of the two agents of channel {channel}; send on one of its own channels")]
    NotOnChannel {
        /// The sender.
        agent: AgentId,
        /// The channel.
        channel: ChannelId,
    },
    /// The channel is closed.
    #[error("channel {0} is closed; establish a new channel between the two agents")]
    ChannelClosed(ChannelId),
    /// The channel (or the agent at its other end) is quarantined.
    #[error(
        "channel {0} is quarantined, or the agent at its other end is; an operator lifts it with \
         Runtime::restore_channel or Runtime::restore_agent"
    )]
    ChannelQuarantined(ChannelId),
    /// The payload exceeds `max_payload_size`.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes (RuntimeConfig::max_payload_size)")]
    PayloadTooLarge {
        /// Payload size.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A configured resource limit was reached.
    #[error("resource limit reached: {what} (limit {limit}); raise it in RuntimeConfig or free some first")]
    ResourceLimit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The sender exceeded `max_message_rate` and the configured action is to reject.
    #[error("rate limit exceeded (RuntimeConfig::max_message_rate); retry after {retry_after:?}")]
    RateLimited {
        /// When a send would next be allowed.
        retry_after: Duration,
    },
    /// The recipient's mailbox stayed full for longer than the configured wait.
    #[error(
        "the mailbox of agent {0} is full (its handler is behind); retry later, or raise \
         RuntimeConfig::mailbox_capacity, mailbox_max_bytes or pipeline_timeout"
    )]
    MailboxFull(AgentId),
    /// The recipient's handler did not finish within `agent_timeout` (only reported to
    /// senders that wait for delivery).
    #[error("the recipient's handler did not finish within RuntimeConfig::agent_timeout (the message was sent)")]
    Timeout,
    /// The recipient's handler panicked (only reported to senders that wait for delivery).
    #[error("the recipient's handler panicked on the message (the message was sent)")]
    HandlerFailed,
    /// A `before_send` hook refused the message.
    #[error("rejected by hook: {0}")]
    HookRejected(String),
    /// The idempotency key was used before on this channel with a different payload.
    #[error("idempotency key reused with a different payload on this channel; use a new key")]
    IdempotencyConflict,
    /// A lifecycle transition the state machine forbids.
    #[error("agent cannot go from '{from}' to '{to}'")]
    InvalidTransition {
        /// Current state.
        from: AgentState,
        /// Requested state.
        to: AgentState,
    },
    /// The channel is not quarantined (restore) or not active (quarantine).
    #[error("channel {channel} is '{status}', which does not allow this operation")]
    ChannelState {
        /// The channel.
        channel: ChannelId,
        /// Its status.
        status: crate::types::ChannelStatus,
    },
    /// A frame depth outside the allowed range.
    #[error("frame depth {depth} outside {min}..={max} (RuntimeConfig::max_frame_depth)")]
    InvalidDepth {
        /// Requested depth.
        depth: usize,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// The agent already has a handler.
    #[error("agent {0} already has a handler (attach is only for agents restored from storage)")]
    AlreadyAttached(AgentId),
    /// No agent has that name.
    #[error("no agent named '{0}' is bound to this runtime")]
    UnknownAgentName(String),
    /// An agent with that name already exists.
    #[error("an agent named '{0}' is already bound; names are unique per runtime")]
    DuplicateAgentName(String),
    /// The name belongs to an agent restored from storage that waits for its handler.
    #[error(
        "an agent named '{0}' was restored from storage and waits for its handler: call \
         attach_named(\"{0}\", …) (or attach_async_named) instead of binding it again"
    )]
    RestoredAgentName(String),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The frame did not validate (pymfp's `FrameValidationError`).
    #[error("frame validation failed")]
    FrameValidation,
    /// The payload did not decode (pymfp's `DecodeError`).
    #[error("payload decode failed")]
    Decode,
    /// The entropy source failed (pymfp's `CSPRNGError`).
    #[error("entropy source failed")]
    Entropy,
    /// Durable storage failed; the operation was not applied (fail closed).
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// An inbound message of a cross-runtime channel was not taken because an earlier one
    /// of the channel failed to commit (it was opened on top of it, or sent after it). The
    /// peer sends again from `step`, once asked by the failed message's refusal.
    #[error(
        "an earlier inbound message of channel {} (step {step}) failed to commit; this one was not taken \
         (the peer sends again from that step)",
        channel.short()
    )]
    NotTaken {
        /// The channel.
        channel: ChannelId,
        /// The step of the failed message, where the peer sends again from.
        step: u64,
    },
    /// A freshly drawn agent or channel id is already in use. With a working entropy
    /// source this does not happen (ids are 64 to 128 random bits); it points at an entropy
    /// source that repeats itself.
    #[error(
        "a freshly drawn {what} id is already in use: the entropy source repeats itself; \
         check RuntimeBuilder::entropy (nothing was changed)"
    )]
    IdCollision {
        /// `"agent"` or `"channel"`.
        what: &'static str,
    },
    /// The tokio runtime for the delivery workers could not be started.
    #[error(
        "could not start the tokio runtime for delivery workers: {0}; check the process's \
         thread limits, or pass one with RuntimeBuilder::tokio_handle"
    )]
    ExecutorStart(String),
    /// A channel is open but the global state `Sg` is empty: the runtime's in-memory
    /// state is inconsistent (a bug). Nothing was sent.
    #[error(
        "channel {channel} is open but the global state Sg is empty; the runtime's state is \
         inconsistent — nothing was sent; restart the runtime (from storage, if it has one) \
         and report this"
    )]
    Inconsistent {
        /// The channel of the refused send.
        channel: ChannelId,
    },
    /// A blocking call made on the thread that drives the runtime's own current-thread
    /// tokio runtime would have had to wait for that runtime (a delivery worker, a timer,
    /// or another administrative operation): it would never have returned, so it failed
    /// at once and changed nothing.
    #[error(
        "{operation} would have to wait, and was called on the thread that runs this runtime's \
         current-thread tokio runtime, where the wait could never end; nothing was done — \
         call its async form (…_async) with .await instead"
    )]
    WouldBlock {
        /// The blocking call, e.g. `"Runtime::close_channel"`.
        operation: &'static str,
    },
    /// The link to a peer runtime cannot take the message now (busy or down), and the
    /// wait allowed by the configuration ran out (or `backpressure` is `reject`). Nothing
    /// was sent and the channel did not move.
    #[error(
        "the link to peer runtime {peer} cannot take messages now ({reason}); nothing was sent — \
         retry later, or check the peer's health and the federation settings"
    )]
    PeerUnavailable {
        /// The peer runtime (short form).
        peer: String,
        /// Why.
        reason: String,
    },
    /// A cross-runtime channel has no transport to carry its messages.
    #[error(
        "channel {0} leads to another runtime but this runtime has no transport; attach one with \
         Runtime::attach_transport (nothing was sent)"
    )]
    NoTransport(ChannelId),
    /// A message for a cross-runtime channel came from a runtime that is not the channel's
    /// peer, or for a channel that is not a cross-runtime one. Dropped.
    #[error("a message for channel {channel} came from runtime {from}, which is not its peer; dropped")]
    WrongPeer {
        /// The channel named in the message.
        channel: ChannelId,
        /// The runtime it came from (short form).
        from: String,
    },
    /// An inbound message's step is ahead of the channel's inbound chain (a gap: messages
    /// were lost or the peer's state diverged). Dropped and counted as a validation failure.
    #[error("a message on channel {channel} has step {got}, the channel expects {expected}; dropped")]
    StepMismatch {
        /// The channel.
        channel: ChannelId,
        /// The step the channel expects.
        expected: u64,
        /// The message's step.
        got: u64,
    },
    /// A channel with that id already exists (cross-runtime channels take the id agreed
    /// with the peer).
    #[error("a channel with id {0} already exists in this runtime; nothing was changed")]
    ChannelExists(ChannelId),
    /// The runtime is shutting down or has shut down.
    #[error("the runtime is shut down (or shutting down); start a new one")]
    ShutDown,
    /// A protocol-core error not covered above.
    #[error("protocol error: {0}")]
    Core(mfp_core::Error),
}

fn agent_state_message(agent: &AgentId, state: AgentState) -> String {
    let hint = match state {
        AgentState::Bound => ": it has no channel yet; establish one with Runtime::establish_channel first",
        _ => "",
    };
    format!("agent {agent} is '{state}', which does not allow this operation{hint}")
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// pymfp's error code for this error, where pymfp has one.
    #[must_use]
    pub const fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::AgentNotBound(_) | Error::AgentState { .. } => ErrorCode::Unbound,
            Error::AgentQuarantined(_) => ErrorCode::Quarantined,
            Error::UnknownChannel(_) | Error::NotOnChannel { .. } => ErrorCode::InvalidChannel,
            Error::ChannelClosed(_) => ErrorCode::ChannelClosed,
            Error::ChannelQuarantined(_) => ErrorCode::ChannelQuarantined,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::ResourceLimit { .. } | Error::RateLimited { .. } | Error::MailboxFull(_) => {
                ErrorCode::ResourceLimitExceeded
            }
            Error::Timeout => ErrorCode::Timeout,
            Error::WrongPeer { .. } => ErrorCode::InvalidChannel,
            Error::PeerUnavailable { .. } => ErrorCode::ResourceLimitExceeded,
            _ => return None,
        })
    }
}

impl From<mfp_core::Error> for Error {
    fn from(e: mfp_core::Error) -> Self {
        match e {
            mfp_core::Error::FrameValidation => Error::FrameValidation,
            mfp_core::Error::DecodeFailed => Error::Decode,
            mfp_core::Error::Entropy => Error::Entropy,
            other => Error::Core(other),
        }
    }
}

/// Result alias for the runtime.
pub type Result<T, E = Error> = core::result::Result<T, E>;
