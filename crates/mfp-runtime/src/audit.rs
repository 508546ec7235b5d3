//! Audit events: emitted as `tracing` events (target `mfp::audit`) and to an optional
//! pluggable sink. Events carry identifiers and reasons, never payloads, states or keys.

use mfp_core::{AgentId, ChannelId};

use crate::types::CorrelationId;

/// Kinds of audit event (pymfp's `AuditEventType`, plus delivery outcomes pymfp defines but
/// never emits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditEventType {
    /// An agent was bound.
    AgentBound,
    /// An agent was unbound.
    AgentUnbound,
    /// An agent was forcibly terminated.
    AgentTerminated,
    /// A channel was established.
    ChannelEstablished,
    /// A channel was closed.
    ChannelClosed,
    /// A message was accepted and queued for delivery.
    MessageSent,
    /// A handler finished processing a message.
    MessageDelivered,
    /// A send was refused (validation, decode, hook).
    MessageRejected,
    /// A handler panicked or timed out.
    DeliveryFailed,
    /// An agent was quarantined.
    QuarantineAgent,
    /// A channel was quarantined.
    QuarantineChannel,
    /// An agent was restored.
    RestoreAgent,
    /// A channel was restored.
    RestoreChannel,
    /// A cross-runtime chain was rotated (pymfp's `key_rotation` event).
    KeyRotation,
}

impl AuditEventType {
    /// pymfp's name of the event.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEventType::AgentBound => "agent_bound",
            AuditEventType::AgentUnbound => "agent_unbound",
            AuditEventType::AgentTerminated => "agent_terminated",
            AuditEventType::ChannelEstablished => "channel_established",
            AuditEventType::ChannelClosed => "channel_closed",
            AuditEventType::MessageSent => "message_sent",
            AuditEventType::MessageDelivered => "message_delivered",
            AuditEventType::MessageRejected => "message_rejected",
            AuditEventType::DeliveryFailed => "delivery_failed",
            AuditEventType::QuarantineAgent => "quarantine_agent",
            AuditEventType::QuarantineChannel => "quarantine_channel",
            AuditEventType::RestoreAgent => "restore_agent",
            AuditEventType::RestoreChannel => "restore_channel",
            AuditEventType::KeyRotation => "key_rotation",
        }
    }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub event_type: AuditEventType,
    /// Whether it was a success (`"success"`) or a failure (`"failure"`) in pymfp's terms.
    pub success: bool,
    /// The agent concerned.
    pub agent: Option<AgentId>,
    /// The other agent (channel events).
    pub peer: Option<AgentId>,
    /// The channel concerned.
    pub channel: Option<ChannelId>,
    /// The channel step (message events).
    pub step: Option<u64>,
    /// Correlation id (message events).
    pub correlation_id: Option<CorrelationId>,
    /// Why (quarantine, failures). Operator- or runtime-written text; never payload bytes.
    pub reason: Option<String>,
}

impl AuditEvent {
    pub(crate) fn new(event_type: AuditEventType) -> Self {
        Self {
            event_type,
            success: true,
            agent: None,
            peer: None,
            channel: None,
            step: None,
            correlation_id: None,
            reason: None,
        }
    }
}

/// Receives audit events. Called synchronously on the thread that caused the event: keep
/// it fast (e.g. push to a bounded queue).
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: &AuditEvent);
}

/// Detail keys whose values are always replaced by `[REDACTED]` (pymfp's list).
pub const REDACTED_KEYS: &[&str] = &[
    "payload",
    "plaintext",
    "ratchet_state",
    "local_state",
    "global_state",
    "encoding_key",
    "key",
    "nonce",
    "shared_prng_seed",
    "prng_seed",
    "frame",
    "frame_open",
    "frame_close",
    "frame_data",
    "state_value",
];

/// Renders a byte-valued detail for a log line with pymfp's redaction rules: sensitive keys
/// become `[REDACTED]`, other values longer than 8 bytes are shortened to 8 hex digits
/// followed by `...`.
#[must_use]
pub fn redact(key: &str, value: &[u8]) -> String {
    if REDACTED_KEYS.contains(&key) {
        return "[REDACTED]".to_string();
    }
    if value.len() > 8 {
        let mut s = hex::encode(value.get(..4).unwrap_or_default());
        s.push_str("...");
        s
    } else {
        hex::encode(value)
    }
}

pub(crate) fn emit(sink: Option<&dyn AuditSink>, event: &AuditEvent) {
    tracing::info!(
        target: "mfp::audit",
        event = event.event_type.as_str(),
        status = if event.success { "success" } else { "failure" },
        agent = event.agent.map(|a| a.short()).unwrap_or_default(),
        peer = event.peer.map(|a| a.short()).unwrap_or_default(),
        channel = event.channel.map(|c| c.short()).unwrap_or_default(),
        step = event.step,
        correlation_id = event.correlation_id.map(|c| c.to_string()).unwrap_or_default(),
        reason = event.reason.as_deref().unwrap_or(""),
        "Audit: {}",
        event.event_type.as_str()
    );
    if let Some(s) = sink {
        s.record(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_rules() {
        assert_eq!(redact("local_state", &[1; 32]), "[REDACTED]");
        assert_eq!(redact("payload", b"x"), "[REDACTED]");
        assert_eq!(redact("agent_id", &[0xab; 32]), "abababab...");
        assert_eq!(redact("tag", &[1, 2]), "0102");
    }
}
