//! Hooks: user code called around each send and on delivery failures.

use mfp_core::{AgentId, ChannelId, MessageId};

use crate::types::Receipt;

/// What a hook sees of a send.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SendContext<'a> {
    /// The sending agent.
    pub sender: AgentId,
    /// The receiving agent.
    pub recipient: AgentId,
    /// The channel.
    pub channel: ChannelId,
    /// The plaintext payload (hooks run inside the trust boundary; do not log it).
    pub payload: &'a [u8],
}

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryFailure {
    /// The handler panicked.
    Panicked,
    /// The handler exceeded the agent timeout.
    TimedOut,
}

/// Hooks called by the runtime. All methods have empty defaults. They run synchronously on
/// the sending (or delivering) thread: keep them fast.
pub trait Hooks: Send + Sync + 'static {
    /// Called before a message is framed; returning `Err(reason)` refuses the send with
    /// [`crate::Error::HookRejected`]. No state moves.
    fn before_send(&self, ctx: &SendContext<'_>) -> Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Called after a message was committed and queued.
    fn after_send(&self, ctx: &SendContext<'_>, receipt: &Receipt) {
        let _ = (ctx, receipt);
    }

    /// Called when a handler panicked or timed out on a message.
    fn on_delivery_failure(&self, agent: AgentId, message_id: MessageId, failure: DeliveryFailure) {
        let _ = (agent, message_id, failure);
    }
}
