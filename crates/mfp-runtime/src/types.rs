//! Public records: receipts, delivered messages, channel and agent views, states.

use core::fmt;

use mfp_core::{AgentId, ChannelId, MessageId};

/// A send's correlation id: 8 random bytes, shown as 16 lowercase hex digits
/// (pymfp's `correlation_id` string).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CorrelationId(pub [u8; 8]);

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({self})")
    }
}

/// What a successful send returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Receipt {
    /// The message's id (the recipient sees the same id).
    pub message_id: MessageId,
    /// The channel it was sent on.
    pub channel: ChannelId,
    /// The channel step used for this message (the value *before* it advanced).
    pub step: u64,
    /// Correlation id for logs and audit events.
    pub correlation_id: CorrelationId,
}

/// What a recipient's handler receives.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveredMessage {
    /// The decrypted payload.
    pub payload: Vec<u8>,
    /// The sending agent.
    pub sender: AgentId,
    /// The channel it arrived on.
    pub channel: ChannelId,
    /// Same as the sender's [`Receipt::message_id`].
    pub message_id: MessageId,
    /// Same as the sender's [`Receipt::correlation_id`].
    pub correlation_id: CorrelationId,
    /// The channel step the message was sent at.
    pub step: u64,
    /// `true` when the message is delivered again after a restart: it was stored with its
    /// channel's advance but its handler had not returned (or its removal had not been
    /// committed) when the previous process stopped. The handler may have seen it already;
    /// de-duplicate by [`DeliveredMessage::message_id`]. Always `false` without storage.
    pub redelivered: bool,
    /// For a message from an agent of a peer runtime, that runtime (`None` for a message
    /// from an agent of this runtime).
    pub sender_runtime: Option<mfp_core::RuntimeId>,
}

impl fmt::Debug for DeliveredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveredMessage")
            .field("payload_len", &self.payload.len())
            .field("sender", &self.sender)
            .field("channel", &self.channel)
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("step", &self.step)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

/// Lifecycle state of an agent (pymfp's `AgentState`, without the two unused states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AgentState {
    /// Bound to the runtime, no channel yet.
    Bound,
    /// Has at least one channel; may send.
    Active,
    /// Isolated by the runtime or an operator; may not send or receive.
    Quarantined,
    /// Unbound or terminated; the agent is gone.
    Terminated,
}

impl AgentState {
    /// pymfp's name of the state.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentState::Bound => "bound",
            AgentState::Active => "active",
            AgentState::Quarantined => "quarantined",
            AgentState::Terminated => "terminated",
        }
    }

    /// Whether the lifecycle allows moving from `self` to `to`.
    ///
    /// | from \ to | Bound | Active | Quarantined | Terminated |
    /// |---|---|---|---|---|
    /// | Bound | – | first channel | yes | yes |
    /// | Active | last channel closed | – | yes | yes |
    /// | Quarantined | restore (no channels) | restore | – | terminate |
    /// | Terminated | no | no | no | – |
    #[must_use]
    pub const fn can_become(self, to: AgentState) -> bool {
        use AgentState::{Active, Bound, Quarantined, Terminated};
        matches!(
            (self, to),
            (Bound, Active)
                | (Bound, Quarantined)
                | (Bound, Terminated)
                | (Active, Bound)
                | (Active, Quarantined)
                | (Active, Terminated)
                | (Quarantined, Bound)
                | (Quarantined, Active)
                | (Quarantined, Terminated)
        )
    }

    pub(crate) const fn to_u8(self) -> u8 {
        match self {
            AgentState::Bound => 0,
            AgentState::Active => 1,
            AgentState::Quarantined => 2,
            AgentState::Terminated => 3,
        }
    }

    pub(crate) const fn from_u8(v: u8) -> Self {
        match v {
            0 => AgentState::Bound,
            1 => AgentState::Active,
            2 => AgentState::Quarantined,
            _ => AgentState::Terminated,
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelStatus {
    /// Open for messages.
    Active,
    /// Frozen: no messages until restored.
    Quarantined,
    /// Closed; its state is wiped.
    Closed,
}

impl ChannelStatus {
    /// pymfp's name of the status.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Active => "active",
            ChannelStatus::Quarantined => "quarantined",
            ChannelStatus::Closed => "closed",
        }
    }
}

impl fmt::Display for ChannelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One channel as seen by one of its agents (pymfp's `ChannelInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelInfo {
    /// The channel.
    pub channel_id: ChannelId,
    /// The other agent.
    pub peer: AgentId,
    /// Its status.
    pub status: ChannelStatus,
    /// Its frame depth.
    pub depth: usize,
    /// For a cross-runtime channel, the peer runtime `peer` belongs to (`None` for a
    /// channel between two agents of this runtime).
    pub peer_runtime: Option<mfp_core::RuntimeId>,
}

/// An agent's status (pymfp's `AgentStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// The agent.
    pub agent_id: AgentId,
    /// Its lifecycle state.
    pub state: AgentState,
    /// Number of channels it is on.
    pub channel_count: usize,
    /// Messages it has sent successfully.
    pub messages_sent: u64,
    /// Messages waiting in its mailbox.
    pub mailbox_len: usize,
}

/// Options of one send.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// An idempotency key: a retry of the same send with the same key on the same channel,
    /// within the deduplication window, returns the original receipt instead of delivering
    /// the message again. A retry with the same key but a different payload is refused
    /// with [`crate::Error::IdempotencyConflict`].
    pub idempotency_key: Option<Vec<u8>>,
}

impl SendOptions {
    /// Options with an idempotency key.
    #[must_use]
    pub fn idempotent(key: impl Into<Vec<u8>>) -> Self {
        Self { idempotency_key: Some(key.into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_table() {
        use AgentState::*;
        let all = [Bound, Active, Quarantined, Terminated];
        let allowed = [
            (Bound, Active),
            (Bound, Quarantined),
            (Bound, Terminated),
            (Active, Bound),
            (Active, Quarantined),
            (Active, Terminated),
            (Quarantined, Bound),
            (Quarantined, Active),
            (Quarantined, Terminated),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
            assert_eq!(AgentState::from_u8(from.to_u8()), from);
        }
    }

    #[test]
    fn correlation_id_is_16_hex() {
        let c = CorrelationId([0x26, 0x75, 0x2a, 0x91, 0x64, 0xd7, 0xd5, 0xc7]);
        assert_eq!(c.to_string(), "26752a9164d7d5c7");
    }

    #[test]
    fn delivered_debug_hides_payload() {
        let m = DeliveredMessage {
            payload: b"secret words".to_vec(),
            sender: AgentId::from_bytes([1; 32]),
            channel: ChannelId::from_bytes([2; 16]),
            message_id: MessageId::from_bytes([3; 16]),
            correlation_id: CorrelationId::default(),
            step: 0,
            redelivered: false,
            sender_runtime: None,
        };
        assert!(!format!("{m:?}").contains("secret"));
    }
}
