//! The runtime's error type and pymfp's error codes.

use std::time::Duration;

use thiserror::Error;

use crate::types::AgentState;

/// pymfp's `AgentErrorCode` values, for code written against pymfp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is invalid.
    pub reason: String,
}

/// Every way a runtime operation can fail. Messages never contain payloads, states or keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent is not bound to this runtime.
    #[error("agent not bound")]
    AgentNotBound,
    /// The agent's state does not allow the operation.
    #[error("operation not available in agent state '{0}'")]
    AgentState(AgentState),
    /// The agent is quarantined.
    #[error("agent is quarantined")]
    AgentQuarantined,
    /// No such channel.
    #[error("channel not found")]
    UnknownChannel,
    /// The sender is not one of the channel's two agents.
    #[error("sender not on channel")]
    NotOnChannel,
    /// The channel is closed.
    #[error("channel is closed")]
    ChannelClosed,
    /// The channel is quarantined.
    #[error("channel is quarantined")]
    ChannelQuarantined,
    /// The payload exceeds `max_payload_size`.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Payload size.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A configured resource limit was reached.
    #[error("resource limit reached: {what} (limit {limit})")]
    ResourceLimit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The sender exceeded `max_message_rate` and the configured action is to reject.
    #[error("rate limit exceeded; retry after {retry_after:?}")]
    RateLimited {
        /// When a send would next be allowed.
        retry_after: Duration,
    },
    /// The recipient's mailbox stayed full for longer than the configured wait.
    #[error("recipient mailbox full")]
    MailboxFull,
    /// The recipient's handler did not finish within `agent_timeout` (only reported to
    /// senders that wait for delivery).
    #[error("recipient handler timed out")]
    Timeout,
    /// The recipient's handler panicked (only reported to senders that wait for delivery).
    #[error("recipient handler failed")]
    HandlerFailed,
    /// A `before_send` hook refused the message.
    #[error("rejected by hook: {0}")]
    HookRejected(String),
    /// The idempotency key was used before on this channel with a different payload.
    #[error("idempotency key reused with a different payload")]
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
    #[error("channel is '{0}', which does not allow this operation")]
    ChannelState(crate::types::ChannelStatus),
    /// A frame depth outside the allowed range.
    #[error("frame depth {depth} outside {min}..={max}")]
    InvalidDepth {
        /// Requested depth.
        depth: usize,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// The agent already has a handler.
    #[error("agent already has a handler")]
    AlreadyAttached,
    /// No agent has that name.
    #[error("no agent named '{0}'")]
    UnknownAgentName(String),
    /// An agent with that name already exists.
    #[error("an agent named '{0}' already exists")]
    DuplicateAgentName(String),
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
    /// The runtime is shutting down or has shut down.
    #[error("runtime is shut down")]
    ShutDown,
    /// A protocol-core error not covered above.
    #[error("protocol error: {0}")]
    Core(mfp_core::Error),
}

impl Error {
    /// pymfp's error code for this error, where pymfp has one.
    #[must_use]
    pub const fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::AgentNotBound | Error::AgentState(_) => ErrorCode::Unbound,
            Error::AgentQuarantined => ErrorCode::Quarantined,
            Error::UnknownChannel | Error::NotOnChannel => ErrorCode::InvalidChannel,
            Error::ChannelClosed => ErrorCode::ChannelClosed,
            Error::ChannelQuarantined => ErrorCode::ChannelQuarantined,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::ResourceLimit { .. } | Error::RateLimited { .. } | Error::MailboxFull => {
                ErrorCode::ResourceLimitExceeded
            }
            Error::Timeout => ErrorCode::Timeout,
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
