//! A runtime's federation: the [`Transport`] that carries its cross-runtime channels over
//! authenticated links ([`crate::net`]), and the channel agreement, acknowledgements and
//! position exchange that keep both runtimes' channels in step.
//!
//! [`Federation::start`] opens the network for a [`Runtime`] and attaches itself as the
//! runtime's transport. From then on:
//!
//! - a send on a cross-runtime channel (sealed by the runtime with the channel's outbound
//!   chain and committed with its outbound-log row) goes out as a Data message;
//! - a Data message from the peer goes to [`RemoteHandle::ingest_async`] (VALIDATE → DECODE
//!   → commit → DELIVER on the runtime), then is acknowledged: the peer's runtime trims its
//!   outbound log only once the message is durable here;
//! - after every (re)connect, both sides announce each shared channel's positions (DETECT);
//!   each answers by resending its log from the peer's `rx_next` (RESYNC), or suspends the
//!   channel when the positions cannot be reconciled (NEGOTIATE): the peer expects a step
//!   this side never sent, or lost messages it had acknowledged;
//! - [`Federation::open_channel`] asks a peer for a channel between a local agent and one
//!   of the peer's (by id or name); the peer accepts or refuses with a reason; both derive
//!   the channel's two chains from a secret the opener drew ([`crate::channel_chains`]).
//!
//! In-flight limits per peer (messages and bytes sent but not acknowledged) bound what a
//! slow or dead peer can hold up; beyond them a send waits or fails with
//! `Error::PeerUnavailable`, as the runtime's `backpressure` says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mfp_core::{AgentId, ChannelId, EntropySource, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId};
use mfp_runtime::remote::{
    Chains, Ingested, OutboundMessage, OutboundSlot, ReadyFuture, RemoteEnd, RemoteHandle, Transport, TransportError,
};
use mfp_runtime::{Error as RuntimeError, Runtime};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use zeroize::Zeroizing;

use crate::control::{RefuseReason, Target};
use crate::identity::IdentityKey;
use crate::net::{NetConfig, NetError, NetEvent, Network, PeerConfig, PeerHandle};
use crate::session::Event;

/// Which local agents a peer may open channels with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcceptPolicy {
    /// Any agent of this runtime.
    Any,
    /// Only these agents (by name).
    Named(Vec<String>),
    /// None: the peer may not open channels (channels this side opens still work).
    Nobody,
}

/// One peer of a federation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FederatedPeer {
    /// Who it is, where to dial it, its pinned key.
    pub peer: PeerConfig,
    /// Messages sent to it and not acknowledged yet, at most.
    pub max_in_flight_messages: usize,
    /// Wire bytes sent to it and not acknowledged yet, at most.
    pub max_in_flight_bytes: usize,
    /// Which local agents it may open channels with.
    pub accept: AcceptPolicy,
}

impl FederatedPeer {
    /// A peer with the default limits (1,024 messages, 16 MiB in flight) that may open
    /// channels with any local agent.
    #[must_use]
    pub fn new(peer: PeerConfig) -> Self {
        Self { peer, max_in_flight_messages: 1024, max_in_flight_bytes: 16 << 20, accept: AcceptPolicy::Any }
    }
}

/// Configuration of a [`Federation`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FederationConfig {
    /// The network (listener, limits, timers).
    pub net: NetConfig,
    /// The peers.
    pub peers: Vec<FederatedPeer>,
    /// How long [`Federation::open_channel`] waits for the peer's answer.
    pub open_timeout: Duration,
}

impl FederationConfig {
    /// A configuration with `net` and `peers`, and a 10 s open timeout.
    #[must_use]
    pub fn new(net: NetConfig, peers: Vec<FederatedPeer>) -> Self {
        Self { net, peers, open_timeout: Duration::from_secs(10) }
    }
}

/// What went wrong in the federation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// The network could not start, or a link failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The runtime refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The runtime is not configured as a peer.
    #[error("runtime {0} is not a configured peer; add it to the federation's peers")]
    UnknownPeer(String),
    /// There is no link to the peer now.
    #[error("no link to peer runtime {0} now; retry once it is connected")]
    PeerDown(String),
    /// The peer refused the channel.
    #[error("peer runtime {peer} refused the channel: {reason:?}")]
    Refused {
        /// The peer.
        peer: String,
        /// Its reason.
        reason: RefuseReason,
    },
    /// The peer did not answer in time.
    #[error("peer runtime {0} did not answer the channel request in time")]
    Timeout(String),
    /// An invalid argument (depth, name).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The federation shut down.
    #[error("the federation has shut down")]
    ShutDown,
}

/// Work for one peer's task (in order). Resync passes are requested apart, through
/// [`Peer::request_resync`].
enum Work {
    Up,
    Event(Event),
}

/// Sending state of one channel.
#[derive(Default)]
struct ChanTx {
    /// The next step to hand to the session.
    sent_next: u64,
    /// Messages are waiting in the runtime's log to be handed over again (the session was
    /// full or down, or the peer asked for a resend): new messages queue behind them.
    stalled: bool,
}

/// A channel request this side made, waiting for the answer.
struct PendingOpen {
    local: AgentId,
    depth: usize,
    secret: Zeroizing<[u8; 32]>,
    reply: oneshot::Sender<Result<ChannelId, FederationError>>,
}

struct Peer {
    runtime: RuntimeId,
    handle: PeerHandle,
    msgs: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    accept: AcceptPolicy,
    ready: tokio::sync::Notify,
    chans: Mutex<HashMap<ChannelId, ChanTx>>,
    closes: Mutex<Vec<ChannelId>>,
    work: mpsc::Sender<Work>,
    /// Channels waiting for a resync pass, at most one entry each (one pass hands over
    /// everything waiting in the channel's log), and the wake-up of the peer's task for
    /// them. Apart from `work` so that a request is never lost when that queue is full.
    resyncs: Mutex<HashSet<ChannelId>>,
    resync_wake: tokio::sync::Notify,
}

impl Peer {
    /// Asks the peer's task for a resync pass of `channel`.
    fn request_resync(&self, channel: ChannelId) {
        if self.resyncs.lock().insert(channel) {
            // A stored permit if the task is busy: it finds the request when it looks next.
            self.resync_wake.notify_one();
        }
    }
}

struct Shared {
    local: RuntimeId,
    runtime: RemoteHandle,
    peers: HashMap<RuntimeId, Arc<Peer>>,
    pending: Mutex<HashMap<ChannelId, PendingOpen>>,
    entropy: Mutex<Box<dyn EntropySource + Send>>,
}

/// A runtime's federation. Dropping it stops its tasks; [`Federation::shutdown`] closes
/// the links cleanly first.
pub struct Federation {
    shared: Arc<Shared>,
    net: Option<Network>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    open_timeout: Duration,
}

impl core::fmt::Debug for Federation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Federation")
            .field("local", &self.shared.local.short())
            .field("peers", &self.shared.peers.len())
            .finish_non_exhaustive()
    }
}

/// Capacity of each peer's work queue: when it is full, the network's reader waits
/// (backpressure toward the socket), nothing is buffered without bound.
const WORK_QUEUE: usize = 256;

impl Federation {
    /// Starts the network for `runtime` with its identity key, and attaches the federation
    /// as the runtime's transport (once per runtime). Must be called inside a tokio runtime.
    pub async fn start(
        runtime: &Runtime,
        identity: IdentityKey,
        cfg: FederationConfig,
    ) -> Result<Federation, FederationError> {
        let local = runtime.identity();
        let peer_cfgs: Vec<PeerConfig> = cfg.peers.iter().map(|p| p.peer.clone()).collect();
        let (net, mut events) = Network::start(identity, local, peer_cfgs, cfg.net).await?;
        let mut peers = HashMap::new();
        let mut queues = Vec::new();
        for p in &cfg.peers {
            let handle =
                net.peer(&p.peer.runtime).ok_or_else(|| FederationError::UnknownPeer(p.peer.runtime.short()))?;
            let (tx, rx) = mpsc::channel(WORK_QUEUE);
            let max_bytes = p.max_in_flight_bytes.clamp(1, Semaphore::MAX_PERMITS);
            let peer = Arc::new(Peer {
                runtime: p.peer.runtime,
                handle,
                msgs: Arc::new(Semaphore::new(p.max_in_flight_messages.clamp(1, Semaphore::MAX_PERMITS))),
                bytes: Arc::new(Semaphore::new(max_bytes)),
                max_bytes,
                accept: p.accept.clone(),
                ready: tokio::sync::Notify::new(),
                chans: Mutex::new(HashMap::new()),
                closes: Mutex::new(Vec::new()),
                work: tx,
                resyncs: Mutex::new(HashSet::new()),
                resync_wake: tokio::sync::Notify::new(),
            });
            queues.push((Arc::clone(&peer), rx));
            peers.insert(p.peer.runtime, peer);
        }
        let shared = Arc::new(Shared {
            local,
            runtime: runtime.remote_handle(),
            peers,
            pending: Mutex::new(HashMap::new()),
            entropy: Mutex::new(Box::new(crate::OsEntropy::new())),
        });
        // Messages restored from storage count against the in-flight limits.
        for peer in shared.peers.values() {
            let mut held = (0usize, 0usize);
            for pos in shared.runtime.positions(&peer.runtime)? {
                let unacked = shared.runtime.unacknowledged(&pos.channel, 0)?;
                held.0 += unacked.len();
                held.1 += unacked.iter().map(|m| m.wire.len()).sum::<usize>();
                peer.chans.lock().insert(pos.channel, ChanTx { sent_next: pos.tx_next, stalled: true });
            }
            forget(&peer.msgs, held.0);
            forget(&peer.bytes, held.1);
        }
        runtime.attach_transport(Arc::new(FedTransport(Arc::clone(&shared))))?;
        let mut tasks = Vec::new();
        for (peer, rx) in queues {
            tasks.push(tokio::spawn(peer_task(Arc::clone(&shared), peer, rx)));
        }
        let dispatch = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let (peer, work) = match ev {
                    NetEvent::Up { peer } => (peer, Work::Up),
                    NetEvent::Session { peer, event } => (peer, Work::Event(event)),
                    NetEvent::Down { peer, reason } => {
                        tracing::info!(target: "mfp::federation", peer = %peer.short(), reason, "link down");
                        continue;
                    }
                };
                if let Some(p) = dispatch.peers.get(&peer)
                    && p.work.send(work).await.is_err()
                {
                    break;
                }
            }
        }));
        Ok(Federation { shared, net: Some(net), tasks, open_timeout: cfg.open_timeout })
    }

    /// The listener's address, if the network listens.
    #[must_use]
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.net.as_ref().and_then(Network::local_addr)
    }

    /// Whether the link with `peer` is up now.
    #[must_use]
    pub fn is_up(&self, peer: &RuntimeId) -> bool {
        self.shared.peers.get(peer).is_some_and(|p| p.handle.is_up())
    }

    /// Waits until the link with `peer` is up.
    pub async fn wait_up(&self, peer: &RuntimeId) -> Result<(), FederationError> {
        let p = self.shared.peers.get(peer).ok_or_else(|| FederationError::UnknownPeer(peer.short()))?;
        p.handle.up().await.map_err(FederationError::from)
    }

    /// The network's counters.
    #[must_use]
    pub fn net_stats(&self) -> Option<crate::net::NetStatsSnapshot> {
        self.net.as_ref().map(|n| n.stats().snapshot())
    }

    /// Asks `peer` for a channel between the local agent `local` and its agent `target`,
    /// with frame depth `depth`. Returns the agreed channel id once both runtimes opened
    /// it.
    pub async fn open_channel(
        &self,
        local: AgentId,
        peer: RuntimeId,
        target: Target,
        depth: usize,
    ) -> Result<ChannelId, FederationError> {
        if !(MIN_FRAME_DEPTH..=MAX_FRAME_DEPTH).contains(&depth) {
            return Err(FederationError::Invalid(format!("frame depth {depth} is outside 2..=256")));
        }
        if !target.is_valid() {
            return Err(FederationError::Invalid("an agent name has 1 to 64 bytes".into()));
        }
        let p = self.shared.peers.get(&peer).ok_or_else(|| FederationError::UnknownPeer(peer.short()))?;
        let mut raw = [0u8; 16];
        let mut secret = Zeroizing::new([0u8; 32]);
        {
            let mut e = self.shared.entropy.lock();
            e.fill(&mut raw).map_err(|_| FederationError::Invalid("entropy source failed".into()))?;
            e.fill(secret.as_mut()).map_err(|_| FederationError::Invalid("entropy source failed".into()))?;
        }
        let channel = ChannelId::from_bytes(raw);
        let (reply, answer) = oneshot::channel();
        let wire_depth = u16::try_from(depth).map_err(|_| FederationError::Invalid("frame depth".into()))?;
        let secret_bytes = *secret;
        self.shared.pending.lock().insert(channel, PendingOpen { local, depth, secret, reply });
        if p.handle.with_session(|s| s.open_channel(channel, wire_depth, local, target, secret_bytes)).is_err() {
            self.shared.pending.lock().remove(&channel);
            return Err(FederationError::PeerDown(peer.short()));
        }
        match tokio::time::timeout(self.open_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(FederationError::ShutDown),
            Err(_) => {
                self.shared.pending.lock().remove(&channel);
                Err(FederationError::Timeout(peer.short()))
            }
        }
    }

    /// Closes the links (a Close message to each peer) and stops the tasks.
    pub async fn shutdown(mut self) {
        if let Some(net) = self.net.take() {
            net.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn forget(sem: &Semaphore, n: usize) {
    let mut left = n;
    while left > 0 {
        let take = u32::try_from(left.min(u32::MAX as usize)).unwrap_or(u32::MAX);
        match sem.try_acquire_many(take) {
            Ok(p) => p.forget(),
            Err(_) => {
                // Fewer left than held: take what there is.
                let avail = u32::try_from(sem.available_permits().min(u32::MAX as usize)).unwrap_or(0);
                if avail == 0 {
                    return;
                }
                if let Ok(p) = sem.try_acquire_many(avail) {
                    p.forget();
                }
                return;
            }
        }
        left -= take as usize;
    }
}

// ---- the runtime's transport --------------------------------------------------------------

struct FedTransport(Arc<Shared>);

struct Slot {
    peer: Arc<Peer>,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl OutboundSlot for Slot {
    fn send(mut self: Box<Self>, message: OutboundMessage) {
        // The message holds its permits until acknowledged.
        if let Some((m, b)) = self.permits.take() {
            m.forget();
            b.forget();
        }
        let peer = &self.peer;
        let mut chans = peer.chans.lock();
        let st = chans.entry(message.channel).or_insert_with(|| ChanTx { sent_next: message.step, stalled: false });
        if st.stalled || st.sent_next != message.step {
            // Behind earlier messages that wait to be handed over again: it goes with them
            // (a resync pass is queued, in case the running one has already looked).
            st.stalled = true;
            drop(chans);
            peer.request_resync(message.channel);
            return;
        }
        let sent = peer.handle.with_session(|s| s.send_data(message.channel, message.wire.to_vec()));
        if matches!(sent, Ok(Ok(()))) {
            st.sent_next = message.step + 1;
        } else {
            st.stalled = true;
            drop(chans);
            peer.request_resync(message.channel);
        }
    }
}

impl Transport for FedTransport {
    fn reserve(&self, peer: &RuntimeId, len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        let p = self.0.peers.get(peer).ok_or(TransportError::UnknownPeer)?;
        if !p.handle.is_up() {
            return Err(TransportError::Down("not connected".into()));
        }
        if len > p.max_bytes {
            return Err(TransportError::Down("the message is larger than the peer's in-flight byte limit".into()));
        }
        if len > crate::session::MAX_WIRE {
            // Refused before sealing: the session would refuse it, and the channel would
            // keep it in its log, first in line, forever.
            return Err(TransportError::Down(format!(
                "a message of {len} wire bytes is larger than one link frame carries ({} bytes); send a smaller payload",
                crate::session::MAX_WIRE
            )));
        }
        let m = Arc::clone(&p.msgs).try_acquire_owned().map_err(|_| TransportError::Busy)?;
        let n = u32::try_from(len).map_err(|_| TransportError::Busy)?;
        let b = Arc::clone(&p.bytes).try_acquire_many_owned(n).map_err(|_| TransportError::Busy)?;
        Ok(Box::new(Slot { peer: Arc::clone(p), permits: Some((m, b)) }))
    }

    fn ready(&self, peer: &RuntimeId) -> ReadyFuture {
        let p = self.0.peers.get(peer).cloned();
        Box::pin(async move {
            if let Some(p) = p {
                // A wake-up may come between the failed reservation and this wait: a short
                // bound keeps that from costing more than a few milliseconds.
                let _ = tokio::time::timeout(Duration::from_millis(20), p.ready.notified()).await;
            }
        })
    }

    fn channel_closed(&self, peer: &RuntimeId, channel: &ChannelId) {
        if let Some(p) = self.0.peers.get(peer) {
            p.chans.lock().remove(channel);
            if p.handle.with_session(|s| s.close_channel(*channel)).is_err() {
                p.closes.lock().push(*channel);
            }
        }
    }
}

// ---- one peer's task --------------------------------------------------------------------

async fn peer_task(shared: Arc<Shared>, peer: Arc<Peer>, mut rx: mpsc::Receiver<Work>) {
    loop {
        tokio::select! {
            work = rx.recv() => match work {
                Some(Work::Up) => on_up(&shared, &peer),
                Some(Work::Event(ev)) => on_event(&shared, &peer, ev).await,
                None => return,
            },
            () = peer.resync_wake.notified() => {
                let channels: Vec<ChannelId> = peer.resyncs.lock().drain().collect();
                for channel in channels {
                    resync(&shared, &peer, channel, None).await;
                }
            }
        }
    }
}

fn on_up(shared: &Shared, peer: &Peer) {
    tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), "link up");
    let closes: Vec<ChannelId> = std::mem::take(&mut *peer.closes.lock());
    let positions = shared.runtime.positions(&peer.runtime).unwrap_or_default();
    {
        // Until the peer's positions arrive, nothing new goes out on these channels: what
        // was in flight when the link broke may have to go first.
        let mut chans = peer.chans.lock();
        for pos in &positions {
            let st = chans.entry(pos.channel).or_default();
            st.stalled = true;
            st.sent_next = pos.tx_next;
        }
    }
    let _ = peer.handle.with_session(|s| {
        for c in closes {
            s.close_channel(c);
        }
        for pos in &positions {
            s.announce_position(pos.channel, pos.rx_next, pos.tx_next);
        }
    });
    peer.ready.notify_waiters();
}

async fn on_event(shared: &Shared, peer: &Peer, ev: Event) {
    let rt = &shared.runtime;
    match ev {
        Event::Data { wire, .. } => match rt.ingest_async(&peer.runtime, &wire).await {
            Ok(Ingested::Delivered { channel, step } | Ingested::Duplicate { channel, step }) => {
                let _ = peer.handle.with_session(|s| s.ack(channel, step + 1));
            }
            Ok(_) => {}
            Err(e @ (RuntimeError::MailboxFull(_) | RuntimeError::Storage(_) | RuntimeError::WouldBlock { .. })) => {
                // Not taken now: ask the peer to send again from where this side stands.
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message not taken; asking for a resend");
                if let Some(header) = wire.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                    let channel = ChannelId::from_bytes(header);
                    if let Some(pos) =
                        rt.positions(&peer.runtime).unwrap_or_default().into_iter().find(|p| p.channel == channel)
                    {
                        let _ = peer.handle.with_session(|s| s.announce_position(channel, pos.rx_next, pos.tx_next));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message refused");
            }
        },
        Event::Acked { channel, next } => acked(shared, peer, channel, next),
        Event::Position { channel, rx_next, tx_next } => {
            let Some(pos) = rt.positions(&peer.runtime).unwrap_or_default().into_iter().find(|p| p.channel == channel)
            else {
                // The peer has a channel this side does not (closed here while the link
                // was down, or never opened): close it there.
                let _ = peer.handle.with_session(|s| s.close_channel(channel));
                return;
            };
            // NEGOTIATE: positions that cannot be reconciled suspend the channel.
            let problem = if rx_next > pos.tx_next {
                Some("the peer expects messages this runtime never sent (was its state restored from an older copy?)")
            } else if rx_next < pos.acked {
                Some("the peer lost messages it had acknowledged")
            } else if tx_next < pos.rx_next {
                Some("the peer lost messages it had sent and this runtime received")
            } else {
                None
            };
            if let Some(reason) = problem {
                tracing::error!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), reason, "channel positions diverged; channel suspended");
                let _ = rt.suspend_async(&channel, &format!("federation: {reason}")).await;
                return;
            }
            // RESYNC: everything from the peer's rx_next goes again.
            acked(shared, peer, channel, rx_next);
            resync(shared, peer, channel, Some(rx_next)).await;
        }
        Event::ChannelRequested { channel, depth, opener, target, secret } => {
            let reply = accept_request(shared, peer, channel, usize::from(depth), opener, &target, &secret).await;
            let _ = peer.handle.with_session(|s| match reply {
                Ok(acceptor) => s.accept_channel(channel, acceptor),
                Err(reason) => s.refuse_channel(channel, reason),
            });
        }
        Event::ChannelAccepted { channel, acceptor } => {
            let Some(p) = shared.pending.lock().remove(&channel) else { return };
            let (opener_to_acceptor, acceptor_to_opener) =
                crate::channel_chains(&p.secret, &channel, &shared.local, &peer.runtime);
            let chains = Chains::Split { tx: opener_to_acceptor, rx: acceptor_to_opener };
            let r = rt.establish_async(p.local, RemoteEnd::new(peer.runtime, acceptor), channel, p.depth, chains).await;
            if r.is_ok() {
                peer.chans.lock().entry(channel).or_default();
            } else {
                // The peer opened it; it must not stay open there alone.
                let _ = peer.handle.with_session(|s| s.close_channel(channel));
            }
            let _ = p.reply.send(r.map(|()| channel).map_err(FederationError::from));
        }
        Event::ChannelRefused { channel, reason } => {
            if let Some(p) = shared.pending.lock().remove(&channel) {
                let _ = p.reply.send(Err(FederationError::Refused { peer: peer.runtime.short(), reason }));
            }
        }
        Event::ChannelClosed { channel } => {
            peer.chans.lock().remove(&channel);
            match rt.closed_by_peer_async(&channel).await {
                Ok(()) | Err(RuntimeError::UnknownChannel(_) | RuntimeError::ChannelClosed(_)) => {}
                Err(e) => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "closing a channel the peer closed failed");
                }
            }
        }
        Event::Closed(reason) => {
            tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), reason = %reason, "session closed");
        }
    }
}

/// The peer holds every message of `channel` below `next`: the runtime trims its log, and
/// the in-flight permits those messages held come back.
fn acked(shared: &Shared, peer: &Peer, channel: ChannelId, next: u64) {
    let rt = &shared.runtime;
    let Ok(unacked) = rt.unacknowledged(&channel, 0) else { return };
    let done: Vec<&OutboundMessage> = unacked.iter().filter(|m| m.step < next).collect();
    match rt.acknowledge(&channel, next) {
        Ok(()) => {
            peer.msgs.add_permits(done.len());
            peer.bytes.add_permits(done.iter().map(|m| m.wire.len()).sum());
            peer.ready.notify_waiters();
        }
        Err(e) => {
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), error = %e, "acknowledgement refused");
        }
    }
}

/// Hands the runtime's log of `channel` to the session again, from `from` (the peer's
/// position) or from where this side stopped, waiting for room as needed; then lets new
/// messages through.
async fn resync(shared: &Shared, peer: &Peer, channel: ChannelId, from: Option<u64>) {
    if let Some(f) = from {
        peer.chans.lock().entry(channel).or_default().sent_next = f;
    }
    loop {
        // Read before taking `chans`: the runtime hands messages over under its channel
        // lock and then takes `chans`, so `chans` is never held while the runtime locks.
        let latest = shared
            .runtime
            .positions(&peer.runtime)
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.channel == channel).map(|p| p.tx_next));
        let Some(latest) = latest else { return };
        let start = peer.chans.lock().entry(channel).or_default().sent_next;
        let Ok(msgs) = shared.runtime.unacknowledged(&channel, start) else { return };
        {
            let mut chans = peer.chans.lock();
            let st = chans.entry(channel).or_default();
            let mut blocked = false;
            for m in &msgs {
                if m.step != st.sent_next {
                    continue;
                }
                match peer.handle.with_session(|s| s.send_data(channel, m.wire.to_vec())) {
                    Ok(Ok(())) => st.sent_next = m.step + 1,
                    Ok(Err(_)) => {
                        blocked = true;
                        break;
                    }
                    // Down: the next Up announces positions and resyncs.
                    Err(_) => return,
                }
            }
            if !blocked && st.sent_next >= latest {
                // Caught up. A message sealed since `latest` was read found the channel
                // stalled and queued another resync, which sends it.
                st.stalled = false;
                return;
            }
        }
        // Full: wait until the link drained, then go on.
        peer.handle.writable().await;
        if !peer.handle.is_up() {
            return;
        }
    }
}

/// A peer's channel request: who it is for, whether the policy allows it, then the
/// runtime opens it. `Ok(acceptor)` or the refusal.
async fn accept_request(
    shared: &Shared,
    peer: &Peer,
    channel: ChannelId,
    depth: usize,
    opener: AgentId,
    target: &Target,
    secret: &[u8; 32],
) -> Result<AgentId, RefuseReason> {
    let rt = &shared.runtime;
    let local = match target {
        Target::Id(id) => *id,
        Target::Name(n) => rt.agent_named(n).map_err(|_| RefuseReason::UnknownAgent)?,
    };
    let allowed = match &peer.accept {
        AcceptPolicy::Any => true,
        AcceptPolicy::Nobody => false,
        AcceptPolicy::Named(names) => names.iter().any(|n| rt.agent_named(n).is_ok_and(|id| id == local)),
    };
    if !allowed {
        return Err(RefuseReason::NotAllowed);
    }
    let (opener_to_acceptor, acceptor_to_opener) =
        crate::channel_chains(secret, &channel, &peer.runtime, &shared.local);
    let chains = Chains::Split { tx: acceptor_to_opener, rx: opener_to_acceptor };
    match rt.establish_async(local, RemoteEnd::new(peer.runtime, opener), channel, depth, chains).await {
        Ok(()) => {
            peer.chans.lock().entry(channel).or_default();
            Ok(local)
        }
        // The same request again (its answer was lost with a broken link): same answer.
        Err(RuntimeError::ChannelExists(_))
            if rt.positions(&peer.runtime).is_ok_and(|ps| {
                ps.iter().any(|p| p.channel == channel && p.local_agent == local && p.remote.agent == opener)
            }) =>
        {
            Ok(local)
        }
        Err(RuntimeError::ChannelExists(_)) => Err(RefuseReason::Collision),
        Err(RuntimeError::ResourceLimit { .. }) => Err(RefuseReason::LimitReached),
        Err(RuntimeError::InvalidDepth { .. }) => Err(RefuseReason::BadDepth),
        Err(RuntimeError::AgentNotBound(_) | RuntimeError::UnknownAgentName(_)) => Err(RefuseReason::UnknownAgent),
        Err(_) => Err(RefuseReason::NotAllowed),
    }
}
