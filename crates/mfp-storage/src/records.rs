//! Records beyond the runtime's [`StorageOp`]s: federation state, and the write operations.

use core::fmt;

use mfp_core::bilateral::BilateralState;
use mfp_core::{BilateralId, ChannelId, RuntimeId};
use mfp_runtime::storage::StorageOp;

/// Status of a bilateral channel (pymfp's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BilateralStatus {
    /// In use.
    Active,
    /// Recovering from divergence.
    Recovery,
    /// Suspended.
    Suspended,
}

impl BilateralStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            BilateralStatus::Active => "active",
            BilateralStatus::Recovery => "recovery",
            BilateralStatus::Suspended => "suspended",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(BilateralStatus::Active),
            "recovery" => Some(BilateralStatus::Recovery),
            "suspended" => Some(BilateralStatus::Suspended),
            _ => None,
        }
    }
}

/// A persisted bilateral (runtime-to-runtime) channel. `state.ratchet` and
/// `state.prng_seed` are encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilateralRecord {
    /// Bilateral id.
    pub id: BilateralId,
    /// This runtime.
    pub local: RuntimeId,
    /// The peer runtime.
    pub peer: RuntimeId,
    /// Ratchet state, PRNG seed and step.
    pub state: BilateralState,
    /// Status.
    pub status: BilateralStatus,
}

/// A wire message waiting to be sent (or acknowledged). `wire` is encrypted at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    /// Sequence number chosen by the caller (unique, at most `i64::MAX`).
    pub id: u64,
    /// The bilateral channel it travels on.
    pub bilateral: BilateralId,
    /// The cross-runtime channel.
    pub channel: ChannelId,
    /// The bilateral step it was sealed at.
    pub step: u64,
    /// The complete wire message.
    pub wire: Vec<u8>,
}

impl fmt::Debug for OutboundRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundRecord")
            .field("id", &self.id)
            .field("bilateral", &self.bilateral)
            .field("channel", &self.channel)
            .field("step", &self.step)
            .field("wire_len", &self.wire.len())
            .finish()
    }
}

/// Federation state read back from a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederationSnapshot {
    /// Bilateral channels, ordered by id.
    pub bilateral: Vec<BilateralRecord>,
    /// Pending outbound messages, ordered by id.
    pub outbound: Vec<OutboundRecord>,
}

/// One change, as accepted by [`crate::SqliteStorage::apply_ops`]: a runtime
/// [`StorageOp`] or a federation change, so both can share one atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOp {
    /// A runtime change.
    Runtime(StorageOp),
    /// Insert or replace a bilateral channel.
    PutBilateral(BilateralRecord),
    /// Delete a bilateral channel and its pending outbound messages.
    DeleteBilateral(BilateralId),
    /// Insert or replace a pending outbound message (its bilateral channel must exist).
    PutOutbound(OutboundRecord),
    /// Delete a pending outbound message (sent and acknowledged).
    DeleteOutbound(u64),
}

impl From<StorageOp> for WriteOp {
    fn from(op: StorageOp) -> Self {
        WriteOp::Runtime(op)
    }
}
