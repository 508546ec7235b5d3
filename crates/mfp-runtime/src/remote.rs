//! Remote endpoints: channels whose other end is an agent of a peer runtime.
//!
//! A cross-runtime channel joins a local agent and a [`RemoteEnd`] (a peer runtime and an
//! agent there). Each side runs half of the pipeline:
//!
//! - **Outbound** (the sender's runtime, in [`crate::AgentHandle::send`]): ACCEPT → FRAME →
//!   ENCODE with the channel's outbound chain (`BilateralState::seal_outbound`, pymfp's
//!   cross-runtime message), then, with storage, the chain's advance and the sealed message
//!   (the *outbound log*) commit in one transaction; then the message goes to the
//!   [`Transport`] and the sender gets its receipt.
//! - **Inbound** (the recipient's runtime, in [`RemoteHandle::ingest`]): the transport hands
//!   in the wire bytes; VALIDATE → DECODE with the channel's inbound chain
//!   (`BilateralState::open_inbound`), then the chain's advance and the delivered message
//!   (the durable inbox) commit in one transaction, then DELIVER to the handler. Failures
//!   are counted; consecutive failures up to `validation_failure_threshold` quarantine the
//!   channel.
//!
//! The transport (the `mfp-federation` crate, or a test's in-process loopback) implements
//! [`Transport`], is attached with [`crate::Runtime::attach_transport`] (every peer) or
//! [`crate::Runtime::attach_transport_for`] (some peers: several transports may serve one
//! runtime, one per peer), and drives the runtime through a [`RemoteHandle`]:
//! [`RemoteHandle::ingest`] for inbound messages ([`RemoteHandle::try_ingest`] on an I/O
//! task, when it can finish at once), [`RemoteHandle::acknowledge`] when the peer confirms messages,
//! [`RemoteHandle::unacknowledged`] to send the log again after a reconnect,
//! [`RemoteHandle::positions`] for the position exchange, [`RemoteHandle::establish`] once
//! both runtimes agreed on a channel.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use mfp_core::bilateral::BilateralState;
use mfp_core::crypto::sha256;
use mfp_core::{AgentId, ChannelId, MessageId, RuntimeId};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::runtime::Inner;
use crate::types::{ChannelStatus, CorrelationId};

/// The far end of a cross-runtime channel: a peer runtime and an agent of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RemoteEnd {
    /// The peer runtime.
    pub peer: RuntimeId,
    /// The agent of the peer runtime.
    pub agent: AgentId,
}

impl RemoteEnd {
    /// The agent `agent` of runtime `peer`.
    #[must_use]
    pub const fn new(peer: RuntimeId, agent: AgentId) -> Self {
        Self { peer, agent }
    }
}

/// A bilateral chain several cross-runtime channels share, in both directions (pymfp
/// 1.0.0's way: one state per runtime pair). Only for talking to pymfp: two runtimes that
/// send at the same time on a shared chain reuse an AES-GCM (key, nonce) pair. A shared
/// chain is kept in memory only (it is not written to storage).
#[derive(Clone)]
pub struct SharedChain(pub(crate) Arc<Mutex<BilateralState>>);

impl SharedChain {
    /// A shared chain starting at `state`.
    #[must_use]
    pub fn new(state: BilateralState) -> Self {
        Self(Arc::new(Mutex::new(state)))
    }

    /// The chain's current step.
    #[must_use]
    pub fn step(&self) -> u64 {
        self.0.lock().step
    }
}

impl core::fmt::Debug for SharedChain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedChain").field("step", &self.step()).finish_non_exhaustive()
    }
}

/// The chains of a new cross-runtime channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Chains {
    /// One chain per direction (the native federation): no (key, nonce) pair can repeat
    /// when both sides send at once.
    Split {
        /// What this runtime sends.
        tx: BilateralState,
        /// What this runtime receives.
        rx: BilateralState,
    },
    /// One chain for both directions, possibly shared with other channels (pymfp compat).
    Shared(SharedChain),
}

/// A chain of a channel: its own, or a shared one.
pub(crate) enum ChainCell {
    Own(Mutex<BilateralState>),
    Shared(SharedChain),
}

impl ChainCell {
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, BilateralState> {
        match self {
            ChainCell::Own(m) => m.lock(),
            ChainCell::Shared(s) => s.0.lock(),
        }
    }

    pub(crate) const fn is_shared(&self) -> bool {
        matches!(self, ChainCell::Shared(_))
    }
}

/// A sealed message for a peer runtime. `Debug` omits the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The peer runtime.
    pub peer: RuntimeId,
    /// The channel.
    pub channel: ChannelId,
    /// The outbound chain's step it was sealed at.
    pub step: u64,
    /// The complete MFP1 wire message: the 64-byte envelope header, then frame_open ‖
    /// E(P) ‖ frame_close.
    pub wire: Arc<[u8]>,
}

impl core::fmt::Debug for OutboundMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("peer", &self.peer)
            .field("channel", &self.channel)
            .field("step", &self.step)
            .field("wire_len", &self.wire.len())
            .finish()
    }
}

/// Why a transport cannot take a message now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The link to the peer is up but has no room (messages or bytes in flight at their
    /// limit): wait for [`Transport::ready`].
    #[error("the link is busy (its in-flight limit is reached)")]
    Busy,
    /// There is no link to the peer now (connecting, backing off, or its breaker is open).
    #[error("the link is down: {0}")]
    Down(String),
    /// The transport does not know this peer.
    #[error("not a configured peer")]
    UnknownPeer,
    /// The peer's circuit breaker is open after repeated failures: the send fails at once,
    /// without waiting, until the breaker lets a trial through.
    #[error("the peer's circuit breaker is open after repeated failures")]
    Open,
}

/// What [`Transport::ready`] returns.
pub type ReadyFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Room for one message, reserved before it is sealed: once the runtime has advanced the
/// chain, the message must not be refused (its (key, nonce) pair is spent).
pub trait OutboundSlot: Send {
    /// Hands the sealed message to the transport.
    fn send(self: Box<Self>, message: OutboundMessage);
}

/// What carries messages of cross-runtime channels to peer runtimes.
///
/// The runtime calls [`Transport::reserve`] before it seals a message and
/// [`OutboundSlot::send`] after the message committed (with storage: after the chain's
/// advance and the outbound log row are durable). A transport bounds what it holds per
/// peer and reports [`TransportError::Busy`] or [`TransportError::Down`] instead of buffering
/// without bound; the runtime then waits ([`crate::Backpressure::Wait`], at most
/// `pipeline_timeout`) or fails the send with [`Error::PeerUnavailable`].
pub trait Transport: Send + Sync + 'static {
    /// Reserves room for one message of `len` wire bytes to `peer`.
    fn reserve(&self, peer: &RuntimeId, len: usize) -> std::result::Result<Box<dyn OutboundSlot>, TransportError>;

    /// Whether this side may send on `channel` to `peer` yet. A transport answers
    /// [`TransportError::Busy`] for a channel not usable yet (e.g. one this side accepted,
    /// whose opener has not confirmed it stored it); the runtime then waits as for a full
    /// link (`ready`, at most `pipeline_timeout`) or refuses, as configured. Default: always.
    fn may_send(&self, peer: &RuntimeId, channel: &ChannelId) -> std::result::Result<(), TransportError> {
        let _ = (peer, channel);
        Ok(())
    }

    /// Resolves when `peer` may have room again (the runtime then calls `reserve` again).
    fn ready(&self, peer: &RuntimeId) -> ReadyFuture;

    /// Whether the peer acknowledges messages ([`RemoteHandle::acknowledge`]). If not
    /// (pymfp compat), the runtime keeps no outbound log for it: a receipt then means the
    /// message was handed to the transport, nothing more.
    fn acknowledges(&self, peer: &RuntimeId) -> bool {
        let _ = peer;
        true
    }

    /// A cross-runtime channel was closed on this side: tell the peer.
    fn channel_closed(&self, peer: &RuntimeId, channel: &ChannelId) {
        let _ = (peer, channel);
    }

    /// A suspended (quarantined) cross-runtime channel was restored on this side (an
    /// operator's `Runtime::restore_channel`, or the restore of its agent): the transport
    /// compares positions with the peer again, so that what waits in either log is sent.
    fn channel_restored(&self, peer: &RuntimeId, channel: &ChannelId) {
        let _ = (peer, channel);
    }
}

/// Where both chains of a cross-runtime channel stand, with their recovery state hashes
/// (pymfp's `compute_state_hash`, `SHA-256(R ‖ P)`). `Debug` shows the steps only.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryPoint {
    /// Step of the next message this side sends.
    pub tx_next: u64,
    /// State hash of the outbound chain at `tx_next`.
    pub tx_hash: [u8; 32],
    /// First step of the outbound log: every message from it up to `tx_next` can be sent
    /// again (equal to `tx_next` when the log is empty).
    pub log_from: u64,
    /// Step of the next message this side expects.
    pub rx_next: u64,
    /// State hash of the inbound chain at `rx_next`.
    pub rx_hash: [u8; 32],
    /// State hash of the inbound chain after the rotation the peer asked for and this side
    /// accepted, not seen in a message yet (`rx_hash` when none is pending): the peer may
    /// already have applied it to its outbound chain.
    pub rx_rotated_hash: [u8; 32],
    /// The channel's status.
    pub status: ChannelStatus,
}

impl core::fmt::Debug for RecoveryPoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecoveryPoint")
            .field("tx_next", &self.tx_next)
            .field("log_from", &self.log_from)
            .field("rx_next", &self.rx_next)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What a reset of a cross-runtime channel discarded from its outbound log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ResetOutcome {
    /// Sealed messages that were not acknowledged by the peer: they are lost.
    pub discarded: usize,
    /// Their wire bytes.
    pub discarded_bytes: usize,
}

/// The transports attached to a runtime: one for every peer, or one per peer.
#[derive(Default)]
pub(crate) struct Transports(parking_lot::RwLock<TransportTable>);

#[derive(Default)]
struct TransportTable {
    every: Option<Arc<dyn Transport>>,
    by_peer: std::collections::HashMap<RuntimeId, Arc<dyn Transport>>,
}

impl Transports {
    /// The transport that carries messages to `peer`.
    pub(crate) fn get(&self, peer: &RuntimeId) -> Option<Arc<dyn Transport>> {
        let t = self.0.read();
        t.by_peer.get(peer).or(t.every.as_ref()).cloned()
    }

    /// Attaches `transport` for `peers` (`None`: every peer). `Err` (why) changes nothing.
    pub(crate) fn attach(
        &self,
        peers: Option<&[RuntimeId]>,
        transport: Arc<dyn Transport>,
    ) -> std::result::Result<(), String> {
        let mut t = self.0.write();
        if t.every.is_some() {
            return Err("a transport for every peer runtime is attached to this runtime already".into());
        }
        match peers {
            None if !t.by_peer.is_empty() => {
                Err("a transport is attached to this runtime already (for some peer runtimes)".into())
            }
            None => {
                t.every = Some(transport);
                Ok(())
            }
            Some(peers) => {
                if let Some(p) = peers.iter().find(|p| t.by_peer.contains_key(p)) {
                    return Err(format!("peer runtime {} has a transport already", p.short()));
                }
                for p in peers {
                    t.by_peer.insert(*p, Arc::clone(&transport));
                }
                Ok(())
            }
        }
    }
}

/// What an acknowledgement took out of a channel's outbound log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Acknowledged {
    /// Messages acknowledged by it (none if it acknowledged nothing new).
    pub messages: usize,
    /// Their wire bytes.
    pub bytes: usize,
}

/// An inbound message opened by [`RemoteHandle::open_ingest_async`], whose commit and
/// delivery are still to be awaited. Dropped, its commit is still seen to (the message is
/// delivered if it committed; the transport then learns nothing and the peer's resend is a
/// duplicate).
#[must_use = "the message is acknowledged only after `finish`"]
pub struct PendingIngest(crate::remote_pipeline::Opened);

impl PendingIngest {
    /// Awaits the commit and the settling of every earlier message of the channel: the
    /// message was delivered (then acknowledge it), or not taken (an earlier message of
    /// the channel, or this one, failed to commit: ask the peer to send again).
    pub async fn finish(self) -> Result<Ingested> {
        match self.0 {
            crate::remote_pipeline::Opened::Done(r) => Ok(r),
            crate::remote_pipeline::Opened::Submitted(h) => h.settle().await,
        }
    }
}

impl std::fmt::Debug for PendingIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingIngest").finish_non_exhaustive()
    }
}

/// What [`RemoteHandle::ingest`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingested {
    /// Validated, decoded, committed and queued for the local agent.
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// Its step.
        step: u64,
    },
    /// Already received before (a step below the inbound chain's): dropped, counted.
    Duplicate {
        /// The channel.
        channel: ChannelId,
        /// Its step.
        step: u64,
    },
}

impl Ingested {
    /// The channel.
    #[must_use]
    pub const fn channel(&self) -> ChannelId {
        match self {
            Ingested::Delivered { channel, .. } | Ingested::Duplicate { channel, .. } => *channel,
        }
    }
}

/// Where a cross-runtime channel stands (for the position exchange after a reconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemotePosition {
    /// The channel.
    pub channel: ChannelId,
    /// The local agent.
    pub local_agent: AgentId,
    /// The far end.
    pub remote: RemoteEnd,
    /// Step of the next message this side sends.
    pub tx_next: u64,
    /// Step of the next message this side expects.
    pub rx_next: u64,
    /// Every message this side sent below this step is acknowledged by the peer.
    pub acked: u64,
    /// The channel's status.
    pub status: ChannelStatus,
    /// This runtime accepted the channel and its opener has not confirmed yet that it
    /// stored it (restored from storage at a start; see
    /// [`RemoteHandle::establish_accepted_async`]).
    pub unconfirmed: bool,
}

/// The remote part of a channel record.
pub(crate) struct RemoteLink {
    pub(crate) end: RemoteEnd,
    pub(crate) tx: ChainCell,
    pub(crate) rx: ChainCell,
    /// Sealed messages not acknowledged yet (empty when the transport does not acknowledge).
    pub(crate) log: Mutex<OutboundLog>,
    /// The outbound turn. A durable send holds it while it seals and submits (not across
    /// its commit); a rotation, a reset or a close holds it from before it looks at the
    /// chain to its end, once the sends in flight are settled (`out` empty). So nothing
    /// comes between a send's seal and its settle. Taken before `ingest_turn` and the
    /// channel's lock.
    pub(crate) send_turn: Arc<tokio::sync::Mutex<()>>,
    /// Durable sends submitted and not yet settled (see `remote_pipeline/outbound.rs`).
    /// Its lock comes after the channel's and before the chains'.
    pub(crate) out: Mutex<crate::remote_pipeline::OutQueue>,
    /// Signalled when `out` runs empty.
    pub(crate) drained: tokio::sync::Notify,
    /// The inbound turn: one inbound message of the channel is opened at a time. A
    /// durable ingest holds it while it checks the step, reserves the mailbox, opens the
    /// message at the head and submits (not across its commit); a rotation or a reset
    /// holds it from before it looks at the chain to its end, once the ingests in flight
    /// are settled (`inq` empty).
    pub(crate) ingest_turn: tokio::sync::Mutex<()>,
    /// Durable ingests submitted and not yet settled (see `remote_pipeline/inbound.rs`).
    /// Its lock comes after the channel's and before the chains'.
    pub(crate) inq: Mutex<crate::remote_pipeline::InQueue>,
    /// Signalled when `inq` runs empty.
    pub(crate) in_drained: tokio::sync::Notify,
    /// An accepted rotation of the inbound chain not seen in a committed message yet (its
    /// X25519 secret). Written under `ingest_turn`, or cleared when the message that
    /// rotated the chain is settled.
    pub(crate) rx_rotation: Mutex<Option<mfp_core::State>>,
    /// The id of the channel's latest reset (see [`remote_ids`]). Written by a reset only,
    /// under the channel's lock with the channel set aside, so no send or ingest reads it
    /// meanwhile.
    pub(crate) reset: Mutex<Option<[u8; 16]>>,
    /// Accepted by this runtime and not confirmed by the opener yet (kept for the
    /// transport, which does not send on it until then; persisted with the channel).
    pub(crate) unconfirmed: std::sync::atomic::AtomicBool,
}

/// A held outbound turn of a cross-runtime channel (see `RemoteLink::send_turn`).
pub(crate) type OutboundTurn = tokio::sync::OwnedMutexGuard<()>;

/// The in-memory outbound log of one channel.
#[derive(Default)]
pub(crate) struct OutboundLog {
    pub(crate) entries: VecDeque<OutboundMessage>,
    /// Every step below this one is acknowledged.
    pub(crate) acked: u64,
}

/// Unacknowledged messages a channel holds at most; a send beyond waits or fails like a
/// busy link.
pub(crate) const MAX_UNACKED: usize = 65_536;

impl RemoteLink {
    pub(crate) fn new(end: RemoteEnd, chains: Chains, acked: u64) -> Self {
        let (tx, rx) = match chains {
            Chains::Split { tx, rx } => (ChainCell::Own(Mutex::new(tx)), ChainCell::Own(Mutex::new(rx))),
            Chains::Shared(s) => (ChainCell::Shared(s.clone()), ChainCell::Shared(s)),
        };
        Self {
            end,
            tx,
            rx,
            log: Mutex::new(OutboundLog { entries: VecDeque::new(), acked }),
            send_turn: Arc::new(tokio::sync::Mutex::new(())),
            out: Mutex::new(crate::remote_pipeline::OutQueue::default()),
            drained: tokio::sync::Notify::new(),
            ingest_turn: tokio::sync::Mutex::new(()),
            inq: Mutex::new(crate::remote_pipeline::InQueue::default()),
            in_drained: tokio::sync::Notify::new(),
            rx_rotation: Mutex::new(None),
            reset: Mutex::new(None),
            unconfirmed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The message id and correlation id of the message at `step` of `sender`'s outbound
    /// chain on `channel`, under the channel's latest reset.
    pub(crate) fn ids(&self, channel: &ChannelId, sender: &RuntimeId, step: u64) -> (MessageId, CorrelationId) {
        remote_ids(channel, sender, self.reset.lock().as_ref(), step)
    }
}

impl RemoteLink {
    /// Takes the channel's outbound turn for a send (see `send_turn`).
    pub(crate) async fn seal_turn(&self) -> OutboundTurn {
        Arc::clone(&self.send_turn).lock_owned().await
    }

    /// Takes the channel's outbound turn for something other than a send (a rotation, a
    /// reset, a close), then waits until every send in flight is settled: the chain is
    /// then the one the peer sees, and no send seals until the turn is released. A blocking
    /// call on the thread that drives the runtime (see [`crate::admin::Wait::No`]) fails at
    /// once instead of waiting.
    pub(crate) async fn outbound_turn(&self, wait: crate::admin::Wait) -> Result<OutboundTurn> {
        let turn = match wait {
            crate::admin::Wait::Yes => Arc::clone(&self.send_turn).lock_owned().await,
            crate::admin::Wait::No(operation) => {
                Arc::clone(&self.send_turn).try_lock_owned().map_err(|_| Error::WouldBlock { operation })?
            }
        };
        loop {
            let drained = self.drained.notified();
            let mut drained = std::pin::pin!(drained);
            drained.as_mut().enable();
            if self.out.lock().is_empty() {
                return Ok(turn);
            }
            match wait {
                crate::admin::Wait::Yes => drained.await,
                crate::admin::Wait::No(operation) => return Err(Error::WouldBlock { operation }),
            }
        }
    }

    /// Waits (holding the inbound turn) until every durable ingest in flight is settled:
    /// the inbound chain is then the committed one. A blocking call on the thread that
    /// drives the runtime fails at once instead of waiting.
    pub(crate) async fn inbound_settled(&self, wait: crate::admin::Wait) -> Result<()> {
        loop {
            let drained = self.in_drained.notified();
            let mut drained = std::pin::pin!(drained);
            drained.as_mut().enable();
            if self.inq.lock().is_empty() {
                return Ok(());
            }
            match wait {
                crate::admin::Wait::Yes => drained.await,
                crate::admin::Wait::No(operation) => return Err(Error::WouldBlock { operation }),
            }
        }
    }

    /// Forgets the secrets of a closed channel's own chains and its log (a shared chain
    /// lives on for its other channels).
    pub(crate) fn wipe(&self) {
        for cell in [&self.tx, &self.rx] {
            if let ChainCell::Own(m) = cell {
                let mut st = m.lock();
                st.ratchet = mfp_core::State::zero();
                st.prng_seed = mfp_core::State::zero();
            }
        }
        self.log.lock().entries.clear();
        *self.rx_rotation.lock() = None;
    }
}

/// The message id and correlation id of the message at `step` of `sender`'s outbound chain
/// on `channel`: both runtimes compute the same (the ids are not on the wire), so a
/// receipt and its delivery carry the same message id.
///
/// A reset starts both chains again at step 0; `reset` (the id of the channel's latest
/// reset, which both runtimes derive from the reset's secret) makes the ids after it
/// differ from those before. Without a reset the ids are what they always were
/// (`SHA-256("mfp-remote-message-id" ‖ channel ‖ sender ‖ u64be(step))`), so stored
/// receipts and deliveries keep their ids across an upgrade.
pub(crate) fn remote_ids(
    channel: &ChannelId,
    sender: &RuntimeId,
    reset: Option<&[u8; 16]>,
    step: u64,
) -> (MessageId, CorrelationId) {
    let step_be = step.to_be_bytes();
    let d = match reset {
        None => sha256(&[b"mfp-remote-message-id", channel.as_bytes(), sender.as_bytes(), &step_be]),
        Some(r) => sha256(&[b"mfp-remote-message-id-after-reset", channel.as_bytes(), sender.as_bytes(), r, &step_be]),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    let mut corr = [0u8; 8];
    corr.copy_from_slice(d.get(16..24).unwrap_or(&[0; 8]));
    (MessageId::from_bytes(id), CorrelationId(corr))
}

/// A transport's handle into a runtime. Cheap to clone; holds no strong reference.
#[derive(Clone)]
pub struct RemoteHandle {
    pub(crate) inner: Weak<Inner>,
}

impl core::fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RemoteHandle").finish_non_exhaustive()
    }
}

impl RemoteHandle {
    fn runtime(&self) -> Result<Arc<Inner>> {
        self.inner.upgrade().ok_or(Error::ShutDown)
    }

    /// The runtime's identity.
    pub fn identity(&self) -> Result<RuntimeId> {
        Ok(self.runtime()?.identity)
    }

    /// Whether the runtime has storage (then an ingest waits for its commit, and a
    /// transport may keep ingests of different channels in flight together).
    #[must_use]
    pub fn persisting(&self) -> bool {
        self.runtime().is_ok_and(|r| r.persisting())
    }

    /// Receives a wire message from `peer`: VALIDATE → DECODE → commit → DELIVER. Waits for
    /// room in the recipient's mailbox (at most `pipeline_timeout`) and, with storage, for
    /// the commit. Errors say why the message was refused; a refused message changed
    /// nothing but the channel's failure count.
    pub async fn ingest_async(&self, peer: &RuntimeId, wire: &[u8]) -> Result<Ingested> {
        let inner = self.runtime()?;
        inner.ingest(peer, wire, crate::admin::Wait::Yes).await
    }

    /// The first half of [`RemoteHandle::ingest_async`]: VALIDATE → DECODE of the message
    /// at the head of its channel's inbound chain and, with storage, the submission of its
    /// batch. Once this returns, the channel's next message may be opened while this one
    /// commits; [`PendingIngest::finish`] awaits the commit and delivery. A channel's
    /// messages must be opened one after the other, in the order they came: they are
    /// delivered, and their `finish` answers `Delivered`, in step order.
    pub async fn open_ingest_async(&self, peer: &RuntimeId, wire: &[u8]) -> Result<PendingIngest> {
        let inner = self.runtime()?;
        Ok(PendingIngest(inner.ingest_open(peer, wire, crate::admin::Wait::Yes).await?))
    }

    /// [`RemoteHandle::ingest_async`] when it can finish at once, for a transport that
    /// handles messages on its I/O task: without storage (nothing to wait for on disk), with
    /// room in the recipient's mailbox, and no other ingest of the channel under way.
    /// Otherwise it fails with [`Error::WouldBlock`] and has changed nothing: hand the
    /// message to [`RemoteHandle::ingest_async`] (behind any other message of its peer
    /// that is waiting) to wait for what it needs. Never blocks or waits.
    pub fn try_ingest(&self, peer: &RuntimeId, wire: &[u8]) -> Result<Ingested> {
        const OPERATION: &str = "RemoteHandle::try_ingest";
        let inner = self.runtime()?;
        if inner.persisting() {
            return Err(Error::WouldBlock { operation: OPERATION });
        }
        // Without storage and with `Wait::No`, every step either finishes or fails at once.
        crate::block::poll_once(inner.ingest(peer, wire, crate::admin::Wait::No(OPERATION)))
            .unwrap_or(Err(Error::WouldBlock { operation: OPERATION }))
    }

    /// Blocking [`RemoteHandle::ingest_async`].
    pub fn ingest(&self, peer: &RuntimeId, wire: &[u8]) -> Result<Ingested> {
        let inner = self.runtime()?;
        inner.blocking("RemoteHandle::ingest", |w| inner.ingest(peer, wire, w))
    }

    /// The peer confirmed every message of `channel` below step `next`: they leave the
    /// outbound log (and storage, without waiting for the commit). Says how many left
    /// (none when `next` was acknowledged before).
    pub fn acknowledge(&self, channel: &ChannelId, next: u64) -> Result<Acknowledged> {
        self.runtime()?.acknowledge(channel, next)
    }

    /// The unacknowledged messages of `channel` from step `from` on, in order (to send
    /// again after a reconnect).
    pub fn unacknowledged(&self, channel: &ChannelId, from: u64) -> Result<Vec<OutboundMessage>> {
        self.runtime()?.unacknowledged(channel, from)
    }

    /// The position of one cross-runtime channel (without looking at the others).
    pub fn position(&self, channel: &ChannelId) -> Result<RemotePosition> {
        self.runtime()?.position(channel)
    }

    /// Positions of the open cross-runtime channels with `peer`.
    pub fn positions(&self, peer: &RuntimeId) -> Result<Vec<RemotePosition>> {
        Ok(self.runtime()?.positions(peer))
    }

    /// Opens a cross-runtime channel both runtimes agreed on: `local` (an agent of this
    /// runtime, by id) and `remote`, with the given id, frame depth and chains.
    pub async fn establish_async(
        &self,
        local: AgentId,
        remote: RemoteEnd,
        channel: ChannelId,
        depth: usize,
        chains: Chains,
    ) -> Result<()> {
        let inner = self.runtime()?;
        inner.establish_remote(local, remote, channel, depth, chains, crate::admin::Wait::Yes).await
    }

    /// Blocking [`RemoteHandle::establish_async`].
    pub fn establish(
        &self,
        local: AgentId,
        remote: RemoteEnd,
        channel: ChannelId,
        depth: usize,
        chains: Chains,
    ) -> Result<()> {
        let inner = self.runtime()?;
        inner.blocking("RemoteHandle::establish", |w| inner.establish_remote(local, remote, channel, depth, chains, w))
    }

    /// Opens a cross-runtime channel this runtime accepted at the peer's request, as
    /// [`RemoteHandle::establish_async`] does, but marked *unconfirmed* in the same storage
    /// transaction: the peer (the opener) has not shown yet that it stored the channel, so
    /// the transport must not send on it until [`RemoteHandle::opener_confirmed`]. The mark
    /// is persisted with the channel and comes back in [`RemotePosition::unconfirmed`]
    /// after a restart.
    pub async fn establish_accepted_async(
        &self,
        local: AgentId,
        remote: RemoteEnd,
        channel: ChannelId,
        depth: usize,
        chains: Chains,
    ) -> Result<()> {
        let inner = self.runtime()?;
        inner.establish_remote_marked(local, remote, channel, depth, chains, true, crate::admin::Wait::Yes).await
    }

    /// The opener of `channel` (accepted here with
    /// [`RemoteHandle::establish_accepted_async`]) showed that it stored it: the mark is
    /// cleared, in memory at once and in storage without waiting (should the clearing be
    /// lost in a crash, the channel waits for the opener's next confirmation — a recovery
    /// report after the reconnect). Returns whether the channel was unconfirmed.
    pub fn opener_confirmed(&self, channel: &ChannelId) -> Result<bool> {
        self.runtime()?.confirm_remote(channel)
    }

    /// The peer closed `channel`: close it here without telling the peer back.
    pub async fn closed_by_peer_async(&self, channel: &ChannelId) -> Result<()> {
        let inner = self.runtime()?;
        inner.close_remote_by_peer(channel, crate::admin::Wait::Yes).await
    }

    /// Blocking [`RemoteHandle::closed_by_peer_async`].
    pub fn closed_by_peer(&self, channel: &ChannelId) -> Result<()> {
        let inner = self.runtime()?;
        inner.blocking("RemoteHandle::closed_by_peer", |w| inner.close_remote_by_peer(channel, w))
    }

    /// Where `channel`'s chains stand, with their state hashes (recovery's DETECT).
    pub fn recovery_point(&self, channel: &ChannelId) -> Result<RecoveryPoint> {
        self.runtime()?.recovery_point(channel)
    }

    /// Resumes a suspended channel (`Runtime::restore_channel`): it becomes active, and the
    /// transport is told ([`Transport::channel_restored`]) so that it compares positions
    /// with the peer again.
    pub async fn resume_async(&self, channel: &ChannelId) -> Result<()> {
        let inner = self.runtime()?;
        inner.restore_channel(channel, crate::admin::Wait::Yes).await
    }

    /// Re-seeds both chains of `channel` (the operator's reset, agreed with the peer):
    /// `tx` and `rx` are the new chains (at step 0, derived from a fresh secret), the
    /// outbound log is discarded — its messages are lost, the outcome says how many —,
    /// a pending inbound rotation and the failure count are cleared, and the channel
    /// becomes active; all in one storage transaction. Meanwhile inbound messages on the
    /// channel wait and sends on it are refused as on a suspended channel. A closed channel
    /// is refused.
    ///
    /// `reset` identifies this reset: both runtimes must pass the same value, and a
    /// different one for every reset of the channel (derive it from the reset's secret).
    /// It is mixed into the ids of every message after the reset, so that they do not
    /// repeat the ids of before (the steps start again at 0). The idempotency window
    /// forgets the receipts of the discarded messages: a send retried with the same key
    /// after the reset is sent again, under a new message id.
    pub async fn reset_chains_async(
        &self,
        channel: &ChannelId,
        tx: BilateralState,
        rx: BilateralState,
        reset: [u8; 16],
    ) -> Result<ResetOutcome> {
        let inner = self.runtime()?;
        inner.reset_remote(channel, tx, rx, reset, crate::admin::Wait::Yes).await
    }

    /// Suspends a channel whose positions cannot be reconciled with the peer's (a gap
    /// beyond the outbound log, lost acknowledged messages): it is quarantined, with an
    /// audit event and the channel-quarantine metric; `Runtime::restore_channel` resumes it.
    pub async fn suspend_async(&self, channel: &ChannelId, reason: &str) -> Result<()> {
        let inner = self.runtime()?;
        inner.quarantine_channel(channel, reason, crate::admin::Wait::Yes).await
    }

    /// Accepts a rotation of `channel`'s inbound chain that the peer asked for (pymfp's
    /// derivation, PROTOCOL §4.11: `secret` is the X25519 secret of the two ephemeral keys).
    /// It is written to storage before this returns, so the answer to the peer may go out
    /// only after: the peer then rotates its outbound chain at a step of its choosing, and
    /// the first inbound message that opens under the rotated chain makes it this side's
    /// chain (messages sealed before the peer rotated still open under the old one).
    pub async fn accept_rotation_async(&self, channel: &ChannelId, secret: mfp_core::State) -> Result<()> {
        let inner = self.runtime()?;
        inner.accept_rotation(channel, secret, crate::admin::Wait::Yes).await
    }

    /// Blocking [`RemoteHandle::accept_rotation_async`].
    pub fn accept_rotation(&self, channel: &ChannelId, secret: mfp_core::State) -> Result<()> {
        let inner = self.runtime()?;
        inner.blocking("RemoteHandle::accept_rotation", |w| inner.accept_rotation(channel, secret, w))
    }

    /// Rotates `channel`'s outbound chain now (the peer accepted the rotation with
    /// [`RemoteHandle::accept_rotation_async`] on its side): the next message is sealed under
    /// `chain.rotate(secret)`. Returns the step the rotated chain starts at. A send whose
    /// commit is pending settles first, on the chain it was sealed with; the rotation is
    /// committed before this returns.
    pub async fn rotate_outbound_async(&self, channel: &ChannelId, secret: &mfp_core::State) -> Result<u64> {
        let inner = self.runtime()?;
        inner.rotate_outbound(channel, secret, crate::admin::Wait::Yes).await
    }

    /// Blocking [`RemoteHandle::rotate_outbound_async`].
    pub fn rotate_outbound(&self, channel: &ChannelId, secret: &mfp_core::State) -> Result<u64> {
        let inner = self.runtime()?;
        inner.blocking("RemoteHandle::rotate_outbound", |w| inner.rotate_outbound(channel, secret, w))
    }

    /// The peer runtimes this runtime stored (federation's handshake timestamps, read back
    /// at the next start).
    pub fn peers(&self) -> Result<Vec<crate::storage::PeerRow>> {
        let inner = self.runtime()?;
        let mut out: Vec<_> = inner.peers.lock().values().copied().collect();
        out.sort_unstable_by_key(|p| p.runtime);
        Ok(out)
    }

    /// Stores a peer runtime's row (with storage: committed before this returns; a row
    /// older than the stored one — an earlier timestamp — is ignored).
    pub async fn record_peer_async(&self, row: crate::storage::PeerRow) -> Result<()> {
        let inner = self.runtime()?;
        let newer =
            inner.peers.lock().get(&row.runtime).is_none_or(|old| {
                (old.handshake_secs, old.handshake_nanos) < (row.handshake_secs, row.handshake_nanos)
            });
        if !newer {
            return Ok(());
        }
        inner.settle_async(inner.submit(vec![crate::storage::StorageOp::PutPeer(row)])).await?;
        inner.peers.lock().insert(row.runtime, row);
        Ok(())
    }

    /// Resolves a local agent by name (for a peer's channel request naming one).
    pub fn agent_named(&self, name: &str) -> Result<AgentId> {
        let inner = self.runtime()?;
        inner.admin.lock().names.get(name).copied().ok_or_else(|| Error::UnknownAgentName(name.to_string()))
    }
}
