//! Durable state behind a trait the runtime owns.
//!
//! The runtime describes every change as [`StorageOp`]s and hands a batch to
//! [`Storage::apply`], which must apply the batch atomically (one transaction) and report
//! the commit through the returned [`Ticket`]. A message's state advance travels in the same
//! batch as its Sg update; the runtime returns the receipt only after the ticket reports the
//! commit. Implementations may group batches from several channels into one transaction
//! (group commit) as long as each batch is all-or-nothing and batches commit in submission
//! order.
//!
//! [`MemoryStorage`] keeps everything in memory (the default behaviour, and a reference for
//! tests); the `mfp-storage` crate provides SQLite.

use std::collections::BTreeMap;
use std::sync::Arc;

use mfp_core::bilateral::BilateralState;
use mfp_core::{AgentId, ChannelId, MessageId, RuntimeId, State};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::types::{AgentState, ChannelStatus};

/// Why storage failed. Messages never contain keys, states or payloads.
///
/// `Debug` prints the same text as `Display`, so `main() -> Result<_, StorageError>` and
/// `{:?}` read as well as `{}`.
#[derive(Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed (I/O, SQL, lock timeout).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// Stored data is inconsistent or damaged.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// An encrypted cell failed to decrypt (wrong master key or tampering).
    #[error("stored cell failed to decrypt (wrong master key or damaged data)")]
    Decrypt,
    /// The master key is not the one the data was written with (the message names the key ids).
    #[error("wrong master key: {0}")]
    WrongKey(String),
    /// The master key is missing or malformed.
    #[error("invalid master key: {0}")]
    MasterKey(String),
    /// Another process, or another open store in this process, is using the database (the
    /// message says which).
    #[error("database in use: {0}")]
    InUse(String),
    /// A batch was built on a state storage does not hold (a channel's inbound chain not at
    /// the step the batch advances it from: an earlier batch of the channel failed), so it
    /// was not written. The caller gets the message again later (the peer resends it).
    #[error("storage refused a write built on a state it does not hold: {0}")]
    Conflict(String),
    /// The circuit breaker is open after repeated failures.
    #[error("storage circuit breaker open")]
    CircuitOpen,
    /// The storage has shut down.
    #[error("storage closed")]
    Closed,
}

impl core::fmt::Debug for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

/// A persisted agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// Agent id.
    pub id: AgentId,
    /// Name, if bound with one.
    pub name: Option<String>,
    /// Lifecycle state.
    pub state: AgentState,
    /// Quarantine reason (empty if none).
    pub quarantine_reason: String,
}

/// A persisted channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// Channel id.
    pub id: ChannelId,
    /// First agent (canonical order).
    pub agent_a: AgentId,
    /// Second agent.
    pub agent_b: AgentId,
    /// Frame depth.
    pub depth: usize,
    /// Status.
    pub status: ChannelStatus,
    /// Step.
    pub step: u64,
    /// Local state `Sl` (the backend encrypts it at rest).
    pub state: State,
    /// Consecutive validation failures.
    pub validation_failures: u32,
}

/// Runtime metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRow {
    /// Runtime identity.
    pub identity: RuntimeId,
    /// Deployment id it was derived from (may be empty).
    pub deployment_id: Vec<u8>,
    /// Instance id it was derived from (may be empty).
    pub instance_id: Vec<u8>,
    /// Agents ever bound.
    pub agent_counter: u64,
}

/// A delivered message its recipient's handler has not finished yet (the durable inbox).
///
/// Written in the same batch as the channel advance that produced it, removed
/// ([`StorageOp::AckDelivery`]) once the handler has returned; whatever is still stored when
/// a runtime restarts is delivered again, flagged as a redelivery. `Debug` omits the payload.
#[derive(Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The channel it was sent on.
    pub channel: ChannelId,
    /// The channel step it was sent at (unique per channel, but for a cross-runtime
    /// channel's messages from before and after a reset, which differ by message id).
    pub step: u64,
    /// The receiving agent.
    pub recipient: AgentId,
    /// The sending agent.
    pub sender: AgentId,
    /// The message id (the sender's receipt has the same).
    pub message_id: MessageId,
    /// The correlation id (8 bytes).
    pub correlation_id: [u8; 8],
    /// The decrypted payload (the backend encrypts it at rest).
    pub payload: Vec<u8>,
}

impl core::fmt::Debug for DeliveryRow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeliveryRow")
            .field("channel", &self.channel)
            .field("step", &self.step)
            .field("recipient", &self.recipient)
            .field("sender", &self.sender)
            .field("message_id", &self.message_id)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// A persisted cross-runtime channel: a local agent, and an agent of a peer runtime.
///
/// Its two bilateral chains (`tx` for what this runtime sends, `rx` for what it receives)
/// advance with every message; the backend encrypts their ratchet states and PRNG seeds at
/// rest. `Debug` shows steps, never states.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteChannelRow {
    /// Channel id (agreed with the peer).
    pub id: ChannelId,
    /// The agent of this runtime.
    pub local_agent: AgentId,
    /// The peer runtime.
    pub peer: RuntimeId,
    /// The agent of the peer runtime.
    pub remote_agent: AgentId,
    /// Frame depth.
    pub depth: usize,
    /// Status.
    pub status: ChannelStatus,
    /// The outbound chain (its `step` is the step of the next message sent).
    pub tx: BilateralState,
    /// The inbound chain (its `step` is the step of the next message expected).
    pub rx: BilateralState,
    /// Consecutive inbound validation failures.
    pub validation_failures: u32,
    /// A rotation of the inbound chain that the peer asked for and this runtime accepted,
    /// not yet seen in a message: the X25519 secret of the two ephemeral keys (the backend
    /// encrypts it at rest). The first inbound message sealed under the rotated chain
    /// makes it the chain and clears this.
    pub rx_rotation: Option<State>,
    /// The id of the channel's latest reset with its peer (`None` if it was never reset),
    /// mixed into the id of every message after it, so that message ids do not repeat
    /// when a reset starts the steps again at 0. Not secret.
    pub reset: Option<[u8; 16]>,
    /// This runtime accepted the channel and the peer (its opener) has not shown yet that
    /// it stored it: nothing is sent on it until then.
    pub unconfirmed: bool,
}

impl core::fmt::Debug for RemoteChannelRow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RemoteChannelRow")
            .field("id", &self.id)
            .field("local_agent", &self.local_agent)
            .field("peer", &self.peer)
            .field("remote_agent", &self.remote_agent)
            .field("depth", &self.depth)
            .field("status", &self.status)
            .field("tx_step", &self.tx.step)
            .field("rx_step", &self.rx.step)
            .field("rx_rotation_pending", &self.rx_rotation.is_some())
            .field("reset", &self.reset.is_some())
            .field("unconfirmed", &self.unconfirmed)
            .finish_non_exhaustive()
    }
}

/// A message sent on a cross-runtime channel that the peer has not acknowledged yet (the
/// outbound log). Written in the same batch as the `tx` advance that sealed it, removed by
/// [`StorageOp::AckOutbound`]; after a restart the transport sends it again. `Debug` omits
/// the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundRow {
    /// The channel.
    pub channel: ChannelId,
    /// The `tx` step it was sealed at (unique per channel).
    pub step: u64,
    /// The peer runtime it goes to.
    pub peer: RuntimeId,
    /// The complete MFP1 wire message (envelope header and protocol message; the payload
    /// inside is already encrypted under the channel's chain, the backend encrypts the row
    /// at rest like every other cell).
    pub wire: Vec<u8>,
}

impl core::fmt::Debug for OutboundRow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OutboundRow")
            .field("channel", &self.channel)
            .field("step", &self.step)
            .field("peer", &self.peer)
            .field("wire_len", &self.wire.len())
            .finish()
    }
}

/// A peer runtime, as federation remembers it across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRow {
    /// The peer runtime.
    pub runtime: RuntimeId,
    /// The greatest handshake timestamp accepted from it: seconds since the Unix epoch…
    pub handshake_secs: u64,
    /// …and nanoseconds within the second (below 10⁹).
    pub handshake_nanos: u32,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOp {
    /// Insert or replace the runtime metadata.
    Meta(MetaRow),
    /// Insert or replace an agent.
    PutAgent(AgentRow),
    /// Remove an agent (after its channels were closed).
    DeleteAgent(AgentId),
    /// Insert or replace a channel.
    PutChannel(ChannelRow),
    /// A message advanced a channel: new state and step, failure count reset.
    AdvanceChannel {
        /// Channel.
        id: ChannelId,
        /// New local state.
        state: State,
        /// New step.
        step: u64,
    },
    /// A channel's status changed (quarantine, restore).
    ChannelStatus {
        /// Channel.
        id: ChannelId,
        /// New status.
        status: ChannelStatus,
    },
    /// A channel's count of consecutive frame-validation failures changed.
    ChannelFailures {
        /// Channel.
        id: ChannelId,
        /// New count.
        count: u32,
    },
    /// A channel was closed: its state is wiped.
    CloseChannel(ChannelId),
    /// The Sg cache (`None` when no channel is left).
    Sg(Option<State>),
    /// A message was queued for its recipient (same batch as its channel advance).
    PutDelivery(DeliveryRow),
    /// The recipient's handler returned for the message sent on `channel` at `step`: it
    /// leaves the inbox. Two messages of a cross-runtime channel may share a step (one
    /// from before a reset of the channel, one from after); the one stored first goes
    /// (its recipient handles them in the order they were stored). (Removing a message
    /// that is not stored is not an error.)
    AckDelivery {
        /// Channel.
        channel: ChannelId,
        /// Step the message was sent at.
        step: u64,
    },
    /// The message `message_id` stored for `channel` at `step` leaves the inbox, whatever
    /// else of that step is stored (a received cross-runtime message whose commit is taken
    /// back; removing a message that is not stored is not an error).
    RemoveDelivery {
        /// Channel.
        channel: ChannelId,
        /// Step the message was sent at.
        step: u64,
        /// The message.
        message_id: MessageId,
    },
    /// Insert or replace a cross-runtime channel. [`StorageOp::ChannelStatus`],
    /// [`StorageOp::ChannelFailures`] and [`StorageOp::CloseChannel`] apply to these too
    /// (closing wipes both chains and drops the channel's outbound log).
    PutRemoteChannel(RemoteChannelRow),
    /// A message was sealed on a cross-runtime channel: the new outbound chain (same batch
    /// as its [`StorageOp::PutOutbound`]).
    AdvanceRemoteTx {
        /// Channel.
        id: ChannelId,
        /// The chain after the message.
        tx: BilateralState,
        /// `Some(step)`: only if the stored outbound chain is at `step` (the message's
        /// step); otherwise the whole batch fails with [`StorageError::Conflict`] and
        /// nothing of it is written, so a batch sealed on top of one that failed never
        /// commits past it (no gap in the outbound log). `None`: whatever the stored chain
        /// is (a compensation, a rotation, a reset). On a closed channel a conditional
        /// advance conflicts.
        from: Option<u64>,
    },
    /// A message was received on a cross-runtime channel: the new inbound chain, failure
    /// count reset (same batch as its [`StorageOp::PutDelivery`]).
    AdvanceRemoteRx {
        /// Channel.
        id: ChannelId,
        /// The chain after the message.
        rx: BilateralState,
        /// `Some(step)`: only if the stored inbound chain is at `step` (the message's step);
        /// otherwise the whole batch fails with [`StorageError::Conflict`] and nothing of it
        /// is written. So a batch sealed on top of one that failed never commits past it,
        /// whatever order the two reach storage in. `None`: whatever the stored chain is (a
        /// compensation, a reset). On a closed channel a conditional advance conflicts.
        from: Option<u64>,
    },
    /// The pending rotation of a cross-runtime channel's inbound chain is set (accepted)
    /// or cleared (seen in a message, or abandoned).
    RemoteRotation {
        /// Channel.
        id: ChannelId,
        /// The X25519 secret of the rotation, or `None` to clear it.
        secret: Option<State>,
    },
    /// A sealed message enters the outbound log.
    PutOutbound(OutboundRow),
    /// The peer acknowledged every message of `channel` below step `next`: they leave the
    /// outbound log. (Acknowledging what is not stored is not an error.)
    AckOutbound {
        /// Channel.
        channel: ChannelId,
        /// First step not acknowledged.
        next: u64,
    },
    /// Insert or replace a peer runtime's row.
    PutPeer(PeerRow),
    /// Every message of `channel` from step `from` on leaves the outbound log: the runtime
    /// takes back messages that were never handed to the transport (their batches may
    /// have committed after an earlier one of the channel failed), with the chain's
    /// [`StorageOp::AdvanceRemoteTx`] back to `from` in the same batch. (Removing what is
    /// not stored is not an error.)
    TruncateOutbound {
        /// Channel.
        channel: ChannelId,
        /// First step removed.
        from: u64,
    },
    /// A cross-runtime channel was reset with its peer (same batch as its new chains):
    /// the id of the reset, mixed into the ids of the messages after it.
    RemoteReset {
        /// Channel.
        id: ChannelId,
        /// The reset's id (both runtimes derive the same).
        reset: [u8; 16],
    },
    /// Whether a cross-runtime channel this runtime accepted still waits for its opener's
    /// confirmation that it stored the channel.
    RemoteUnconfirmed {
        /// Channel.
        id: ChannelId,
        /// `false` once confirmed.
        unconfirmed: bool,
    },
}

/// Everything needed to restart a runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Metadata, if any was stored.
    pub meta: Option<MetaRow>,
    /// Agents not terminated.
    pub agents: Vec<AgentRow>,
    /// Channels not closed.
    pub channels: Vec<ChannelRow>,
    /// The Sg cache.
    pub sg: Option<State>,
    /// Messages delivered but not yet handled, in the order they were stored (so per
    /// channel by step, within each reset of a cross-runtime channel).
    pub deliveries: Vec<DeliveryRow>,
    /// Cross-runtime channels not closed.
    pub remote_channels: Vec<RemoteChannelRow>,
    /// The outbound log: unacknowledged messages of open cross-runtime channels, per
    /// channel by step.
    pub outbound: Vec<OutboundRow>,
    /// Peer runtimes, by runtime id.
    pub peers: Vec<PeerRow>,
}

/// Completion of one [`Storage::apply`].
#[derive(Debug)]
pub struct Ticket(TicketInner);

#[derive(Debug)]
enum TicketInner {
    Ready(Result<(), StorageError>),
    Pending(oneshot::Receiver<Result<(), StorageError>>),
}

/// The sending half of a [`Ticket`], for implementations that commit asynchronously.
#[derive(Debug)]
pub struct TicketSender(oneshot::Sender<Result<(), StorageError>>);

impl TicketSender {
    /// Reports the outcome of the batch.
    pub fn complete(self, result: Result<(), StorageError>) {
        let _ = self.0.send(result);
    }
}

impl Ticket {
    /// An already-completed ticket.
    #[must_use]
    pub fn ready(result: Result<(), StorageError>) -> Self {
        Ticket(TicketInner::Ready(result))
    }

    /// A pending ticket and the sender that completes it.
    #[must_use]
    pub fn pending() -> (TicketSender, Self) {
        let (tx, rx) = oneshot::channel();
        (TicketSender(tx), Ticket(TicketInner::Pending(rx)))
    }

    /// Blocks the calling thread until the batch committed or failed.
    pub fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            TicketInner::Ready(r) => r,
            TicketInner::Pending(rx) => crate::block::block_on(rx).unwrap_or(Err(StorageError::Closed)),
        }
    }

    /// The outcome, if the batch already committed or failed (the ticket is spent then).
    pub(crate) fn try_result(&mut self) -> Option<Result<(), StorageError>> {
        match &mut self.0 {
            TicketInner::Ready(r) => Some(std::mem::replace(r, Err(StorageError::Closed))),
            TicketInner::Pending(rx) => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(StorageError::Closed)),
            },
        }
    }

    /// [`Ticket::wait_async`] by reference, so a cancelled wait keeps the ticket (spent
    /// once this returns).
    pub(crate) async fn wait_mut(&mut self) -> Result<(), StorageError> {
        match &mut self.0 {
            TicketInner::Ready(r) => std::mem::replace(r, Err(StorageError::Closed)),
            TicketInner::Pending(rx) => rx.await.unwrap_or(Err(StorageError::Closed)),
        }
    }

    /// Waits asynchronously until the batch committed or failed.
    pub async fn wait_async(self) -> Result<(), StorageError> {
        match self.0 {
            TicketInner::Ready(r) => r,
            TicketInner::Pending(rx) => rx.await.unwrap_or(Err(StorageError::Closed)),
        }
    }
}

/// Durable storage of a runtime's state.
pub trait Storage: Send + Sync + 'static {
    /// Reads the stored state (`None` for an empty store).
    fn load(&self) -> Result<Option<Snapshot>, StorageError>;

    /// Applies `ops` atomically, in order after every earlier batch; the ticket completes
    /// once the batch is durable (per the backend's durability setting) or has failed —
    /// in which case nothing of it was applied.
    ///
    /// The runtime calls `apply` for a batch carrying an Sg while it holds its Sg lock, so
    /// that batches are submitted in the order their Sg values were computed. `apply` must
    /// therefore only enqueue (or apply in memory) and return: the wait belongs in
    /// [`Ticket::wait`], which the runtime calls after releasing the lock. Batches must
    /// commit in the order `apply` was called — otherwise an older Sg could be committed
    /// after a newer one and the stored Sg would no longer be the root of the stored
    /// channel states.
    fn apply(&self, ops: Vec<StorageOp>) -> Ticket;
}

/// A chain with its secrets zeroed (a closed channel's).
fn wiped() -> BilateralState {
    BilateralState { ratchet: State::zero(), prng_seed: State::zero(), step: 0 }
}

/// Storage that keeps the latest state in memory. `apply` takes effect at once.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    meta: Option<MetaRow>,
    agents: BTreeMap<AgentId, AgentRow>,
    channels: BTreeMap<ChannelId, ChannelRow>,
    sg: Option<State>,
    /// Pending deliveries by (channel, step, the order they were stored in): a reset
    /// channel may hold two of one step (see [`StorageOp::AckDelivery`]).
    deliveries: BTreeMap<(ChannelId, u64, u64), DeliveryRow>,
    remote: BTreeMap<ChannelId, RemoteChannelRow>,
    outbound: BTreeMap<(ChannelId, u64), OutboundRow>,
    peers: BTreeMap<RuntimeId, PeerRow>,
    delivery_seq: u64,
    fail_next: usize,
}

impl MemoryStorage {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` batches fail (for testing fail-closed behaviour).
    pub fn fail_next(&self, n: usize) {
        self.inner.lock().fail_next = n;
    }
}

impl Storage for MemoryStorage {
    fn load(&self) -> Result<Option<Snapshot>, StorageError> {
        let s = self.inner.lock();
        if s.meta.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta: s.meta.clone(),
            agents: s.agents.values().filter(|a| a.state != AgentState::Terminated).cloned().collect(),
            channels: s.channels.values().filter(|c| c.status != ChannelStatus::Closed).cloned().collect(),
            sg: s.sg.clone(),
            deliveries: {
                let mut d: Vec<(&(ChannelId, u64, u64), &DeliveryRow)> = s.deliveries.iter().collect();
                d.sort_unstable_by_key(|((_, _, seq), _)| *seq);
                d.into_iter().map(|(_, row)| row.clone()).collect()
            },
            remote_channels: s.remote.values().filter(|c| c.status != ChannelStatus::Closed).cloned().collect(),
            outbound: s
                .outbound
                .values()
                .filter(|o| s.remote.get(&o.channel).is_some_and(|c| c.status != ChannelStatus::Closed))
                .cloned()
                .collect(),
            peers: s.peers.values().copied().collect(),
        }))
    }

    fn apply(&self, ops: Vec<StorageOp>) -> Ticket {
        let mut s = self.inner.lock();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Ticket::ready(Err(StorageError::Backend("injected failure".into())));
        }
        // Conditions first: a batch is written whole or not at all.
        for op in &ops {
            let (id, from, chain, what) = match op {
                StorageOp::AdvanceRemoteRx { id, from: Some(from), .. } => (id, *from, Chain::Rx, "inbound"),
                StorageOp::AdvanceRemoteTx { id, from: Some(from), .. } => (id, *from, Chain::Tx, "outbound"),
                _ => continue,
            };
            let stored = s.remote.get(id).filter(|c| c.status != ChannelStatus::Closed).map(|c| match chain {
                Chain::Rx => c.rx.step,
                Chain::Tx => c.tx.step,
            });
            if stored != Some(from) {
                return Ticket::ready(Err(StorageError::Conflict(format!(
                    "the {what} chain of channel {} is not at step {from} in storage",
                    id.short()
                ))));
            }
        }
        for op in ops {
            match op {
                StorageOp::Meta(m) => s.meta = Some(m),
                StorageOp::PutAgent(a) => {
                    s.agents.insert(a.id, a);
                }
                StorageOp::DeleteAgent(id) => {
                    // As the SQLite store: the agent's closed channels go with it (its open
                    // ones were closed first by the runtime).
                    s.agents.remove(&id);
                    s.deliveries.retain(|_, d| d.recipient != id);
                    s.channels
                        .retain(|_, c| !(c.status == ChannelStatus::Closed && (c.agent_a == id || c.agent_b == id)));
                    s.remote.retain(|_, c| !(c.status == ChannelStatus::Closed && c.local_agent == id));
                }
                StorageOp::PutChannel(c) => {
                    s.channels.insert(c.id, c);
                }
                StorageOp::AdvanceChannel { id, state, step } => {
                    if let Some(c) = s.channels.get_mut(&id) {
                        c.state = state;
                        c.step = step;
                        c.validation_failures = 0;
                    }
                }
                StorageOp::ChannelStatus { id, status } => {
                    if let Some(c) = s.channels.get_mut(&id) {
                        c.status = status;
                    }
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.status = status;
                    }
                }
                StorageOp::ChannelFailures { id, count } => {
                    if let Some(c) = s.channels.get_mut(&id) {
                        c.validation_failures = count;
                    }
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.validation_failures = count;
                    }
                }
                StorageOp::CloseChannel(id) => {
                    if let Some(c) = s.channels.get_mut(&id) {
                        c.status = ChannelStatus::Closed;
                        c.state = State::zero();
                    }
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.status = ChannelStatus::Closed;
                        c.tx = wiped();
                        c.rx = wiped();
                        c.rx_rotation = None;
                    }
                    s.outbound.retain(|(ch, _), _| *ch != id);
                }
                StorageOp::PutRemoteChannel(c) => {
                    s.remote.insert(c.id, c);
                }
                StorageOp::AdvanceRemoteTx { id, tx, .. } => {
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.tx = tx;
                    }
                }
                StorageOp::AdvanceRemoteRx { id, rx, .. } => {
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.rx = rx;
                        c.validation_failures = 0;
                    }
                }
                StorageOp::RemoteRotation { id, secret } => {
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.rx_rotation = secret;
                    }
                }
                StorageOp::PutPeer(p) => {
                    s.peers.insert(p.runtime, p);
                }
                StorageOp::PutOutbound(o) => {
                    s.outbound.insert((o.channel, o.step), o);
                }
                StorageOp::AckOutbound { channel, next } => {
                    s.outbound.retain(|(ch, step), _| *ch != channel || *step >= next);
                }
                StorageOp::TruncateOutbound { channel, from } => {
                    s.outbound.retain(|(ch, step), _| *ch != channel || *step < from);
                }
                StorageOp::Sg(sg) => s.sg = sg,
                StorageOp::PutDelivery(d) => {
                    // The same message again replaces itself; another of the same step (a
                    // reset channel's) is kept beside it.
                    let same = s
                        .deliveries
                        .range((d.channel, d.step, 0)..=(d.channel, d.step, u64::MAX))
                        .find(|(_, old)| old.message_id == d.message_id)
                        .map(|(k, _)| *k);
                    let key = same.unwrap_or_else(|| {
                        let seq = s.delivery_seq;
                        s.delivery_seq += 1;
                        (d.channel, d.step, seq)
                    });
                    s.deliveries.insert(key, d);
                }
                StorageOp::RemoveDelivery { channel, step, message_id } => {
                    s.deliveries.retain(|(ch, st, _), d| *ch != channel || *st != step || d.message_id != message_id);
                }
                StorageOp::AckDelivery { channel, step } => {
                    let oldest =
                        s.deliveries.range((channel, step, 0)..=(channel, step, u64::MAX)).next().map(|(k, _)| *k);
                    if let Some(k) = oldest {
                        s.deliveries.remove(&k);
                    }
                }
                StorageOp::RemoteReset { id, reset } => {
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.reset = Some(reset);
                    }
                }
                StorageOp::RemoteUnconfirmed { id, unconfirmed } => {
                    if let Some(c) = s.remote.get_mut(&id) {
                        c.unconfirmed = unconfirmed;
                    }
                }
            }
        }
        Ticket::ready(Ok(()))
    }
}

/// Which chain of a cross-runtime channel a condition is about.
#[derive(Clone, Copy)]
enum Chain {
    Tx,
    Rx,
}
