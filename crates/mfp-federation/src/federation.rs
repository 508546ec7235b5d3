//! A runtime's federation: the [`Transport`] that carries its cross-runtime channels over
//! authenticated links ([`crate::net`]), and the channel agreement, acknowledgements and
//! position exchange that keep both runtimes' channels in step.
//!
//! [`Federation::start`] opens the network for a [`Runtime`] and attaches itself as the
//! runtime's transport for the configured peers (a `CompatNetwork`, feature `compat-net`,
//! may carry other peers' channels on the same runtime). From then on:
//!
//! - a send on a cross-runtime channel (sealed by the runtime with the channel's outbound
//!   chain and committed with its outbound-log row) goes out as a Data message;
//! - a Data message from the peer goes to [`RemoteHandle::ingest_async`] (VALIDATE → DECODE
//!   → commit → DELIVER on the runtime), then is acknowledged: the peer's runtime trims its
//!   outbound log only once the message is durable here;
//! - after every (re)connect, both sides send a recovery report for each shared active
//!   channel ([`crate::recovery`]: steps and state hashes of both chains, DETECT); each
//!   diagnoses the peer's with pymfp's outcomes (NEGOTIATE) and resends its log from the
//!   peer's `rx_next` (RESYNC), or suspends the channel when the divergence cannot be
//!   repaired (corruption, a gap beyond the log, steps never sent, attempts or time
//!   exhausted); [`Federation::resume_channel`] and [`Federation::reset_channel`] are the
//!   operator's answers;
//! - [`Federation::open_channel`] asks a peer for a channel between a local agent and one
//!   of the peer's (by id or name); the peer accepts or refuses with a reason; both derive
//!   the channel's two chains from a secret the opener drew ([`crate::channel_chains`]).
//!
//! In-flight limits per peer (messages and bytes sent but not acknowledged) bound what a
//! slow or dead peer can hold up; beyond them a send waits or fails with
//! `Error::PeerUnavailable`, as the runtime's `backpressure` says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mfp_core::{AgentId, ChannelId, EntropySource, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId};
use mfp_runtime::remote::{
    Chains, Ingested, OutboundMessage, OutboundSlot, PendingIngest, ReadyFuture, RemoteEnd, RemoteHandle, Transport,
    TransportError,
};
use mfp_runtime::{Error as RuntimeError, Runtime};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use zeroize::Zeroizing;

use crate::control::{RefuseReason, ResetRefusal, Target};
use crate::identity::IdentityKey;
use crate::net::{InlineEvents, NetConfig, NetError, NetEvent, Network, PeerConfig, PeerHandle};
use crate::recovery::{
    ANSWER_REQUESTED, ChainPoint, Escalation, LocalPoint, RESEND_REQUEST, Recovery, RecoveryLimits, RecoveryReport,
};
use crate::session::Event;

mod breaker;
use breaker::Breaker;

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
#[derive(Clone)]
#[non_exhaustive]
pub struct FederationConfig {
    /// The network (listener, limits, timers).
    pub net: NetConfig,
    /// The peers.
    pub peers: Vec<FederatedPeer>,
    /// How long [`Federation::open_channel`] waits for the peer's answer.
    pub open_timeout: Duration,
    /// Rotate a channel's outbound chain after this many messages on it (pymfp's
    /// default: 1,000,000); 0 turns the count trigger off.
    pub rotate_after_messages: u64,
    /// Rotate a channel's outbound chain after this long (pymfp's default: 86,400 s);
    /// zero turns the time trigger off. Counted from the chain's last rotation or from
    /// when this process started, whichever is later.
    pub rotate_after: Duration,
    /// How long a peer's circuit breaker stays open before it lets trials through
    /// (pymfp's default: 30 s). It opens after 5 consecutive sends that found the link
    /// down; 3 trials, 2 of which must find the link up, close it.
    pub breaker_cool_down: Duration,
    /// Limits of a channel's recovery after a reconnect (pymfp's `RecoveryConfig`: 3
    /// attempts, 30 s; see [`crate::recovery`]).
    pub recovery: RecoveryLimits,
    /// The clock recovery times are read from (the system's monotonic clock by default; a
    /// `ManualClock` in tests).
    pub clock: Arc<dyn mfp_runtime::Clock>,
}

impl core::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("net", &self.net)
            .field("peers", &self.peers)
            .field("open_timeout", &self.open_timeout)
            .field("rotate_after_messages", &self.rotate_after_messages)
            .field("rotate_after", &self.rotate_after)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl FederationConfig {
    /// A configuration with `net` and `peers`, and a 10 s open timeout.
    #[must_use]
    pub fn new(net: NetConfig, peers: Vec<FederatedPeer>) -> Self {
        Self {
            net,
            peers,
            open_timeout: Duration::from_secs(10),
            rotate_after_messages: 1_000_000,
            rotate_after: Duration::from_secs(86_400),
            breaker_cool_down: Duration::from_secs(30),
            recovery: RecoveryLimits::default(),
            clock: Arc::new(mfp_runtime::SystemClock),
        }
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
    /// A reset asked for a channel that is not suspended.
    #[error(
        "channel {0} is not suspended; only a suspended channel can be reset (quarantine it first if its chains must be re-seeded)"
    )]
    NotSuspended(String),
    /// The peer did not confirm a reset in time; the channel stays suspended here.
    #[error(
        "peer runtime {peer} did not confirm the reset of channel {channel} in time; the channel stays suspended here: retry the reset"
    )]
    ResetUnanswered {
        /// The peer.
        peer: String,
        /// The channel.
        channel: String,
    },
    /// The peer refused the reset; nothing changed on either side, the channel stays
    /// suspended here.
    #[error(
        "peer runtime {peer} refused the reset of channel {channel}: {reason}; the channel stays suspended here (close it if the peer no longer has it, or retry the reset)"
    )]
    ResetRefused {
        /// The peer.
        peer: String,
        /// The channel.
        channel: String,
        /// Why.
        reason: crate::control::ResetRefusal,
    },
}

/// Counters of the federation's recovery (per outcome). A suspension is also counted by
/// the runtime's channel-quarantine metric and recorded as a `quarantine_channel` audit
/// event whose reason names the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecoveryStats {
    /// Reports from peers negotiated.
    pub negotiations: u64,
    /// Negotiations that found both directions in step (pymfp's `spurious`).
    pub in_step: u64,
    /// Negotiations answered by sending the log again (`local_ahead`).
    pub resyncs: u64,
    /// Resyncs acknowledged up to where this side stood (recovery complete).
    pub completed: u64,
    /// Suspensions: same step, different state hash.
    pub corruption: u64,
    /// Suspensions: a receiver behind what its sender's log holds.
    pub gap_beyond_log: u64,
    /// Suspensions: a receiver ahead of its sender.
    pub never_sent: u64,
    /// Suspensions: attempts exhausted.
    pub attempts_exhausted: u64,
    /// Suspensions: time exhausted.
    pub timed_out: u64,
    /// Channels reset (on either side's request).
    pub resets: u64,
}

#[derive(Default)]
struct RecoveryCounters {
    negotiations: AtomicU64,
    in_step: AtomicU64,
    resyncs: AtomicU64,
    completed: AtomicU64,
    corruption: AtomicU64,
    gap_beyond_log: AtomicU64,
    never_sent: AtomicU64,
    attempts_exhausted: AtomicU64,
    timed_out: AtomicU64,
    resets: AtomicU64,
}

impl RecoveryCounters {
    fn escalated(&self, e: Escalation) {
        let c = match e {
            Escalation::Corruption(_) => &self.corruption,
            Escalation::GapBeyondLog(_) => &self.gap_beyond_log,
            Escalation::NeverSent(_) => &self.never_sent,
            Escalation::AttemptsExhausted => &self.attempts_exhausted,
            _ => &self.timed_out,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RecoveryStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RecoveryStats {
            negotiations: g(&self.negotiations),
            in_step: g(&self.in_step),
            resyncs: g(&self.resyncs),
            completed: g(&self.completed),
            corruption: g(&self.corruption),
            gap_beyond_log: g(&self.gap_beyond_log),
            never_sent: g(&self.never_sent),
            attempts_exhausted: g(&self.attempts_exhausted),
            timed_out: g(&self.timed_out),
            resets: g(&self.resets),
        }
    }
}

/// A reset this side asked for, waiting for the peer's confirmation.
struct PendingReset {
    secret: Zeroizing<[u8; 32]>,
    reply: oneshot::Sender<Result<usize, FederationError>>,
}

/// Sending state of one channel.
struct ChanTx {
    /// The next step to hand to the session.
    sent_next: u64,
    /// Messages are waiting in the runtime's log to be handed over again (the session was
    /// full or down, or the peer asked for a resend): new messages queue behind them.
    stalled: bool,
    /// Step and time of the outbound chain's last rotation (or of this process's start).
    rotated_at: (u64, std::time::Instant),
    /// The proposed step and ephemeral secret of the rotation this side asked for, until
    /// the peer's answer (one at a time).
    rotating: Option<(u64, mfp_core::State)>,
    /// Step of this process's last outbound rotation: the next may be asked for only once
    /// the peer has acknowledged a message sealed under it (so the peer's pending rotation
    /// is never replaced before it was seen).
    last_rotation: Option<u64>,
    /// After a (re)connect, nothing goes out until the peer's position for the channel
    /// says where to resume (what was in flight when the link broke may have to go first).
    awaiting_position: bool,
    /// The channel's recovery under way (begun at DETECT, until the resend is acknowledged).
    recovery: Option<Recovery>,
}

impl Default for ChanTx {
    fn default() -> Self {
        Self {
            sent_next: 0,
            stalled: false,
            rotated_at: (0, std::time::Instant::now()),
            rotating: None,
            last_rotation: None,
            awaiting_position: false,
            recovery: None,
        }
    }
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
    breaker: Breaker,
    handle: PeerHandle,
    msgs: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    accept: AcceptPolicy,
    ready: tokio::sync::Notify,
    chans: Mutex<HashMap<ChannelId, ChanTx>>,
    /// Channels whose position this side announced (after a reconnect, or to ask for a
    /// resend), with the step announced and the messages dropped since, until the peer's
    /// resend from it arrives.
    resuming: Mutex<HashMap<ChannelId, (u64, usize)>>,
    closes: Mutex<Vec<ChannelId>>,
    /// Channels this side accepted whose opener has not shown yet that it stored them
    /// (ChannelConfirm, a report naming them, or a message on them): this side's sends on
    /// them wait, so that no receipt is given for a channel the opener may not have.
    unconfirmed: Mutex<HashSet<ChannelId>>,
    /// Channels waiting for a resync pass, at most one entry each (one pass hands over
    /// everything waiting in the channel's log), and the wake-up of the peer's task for
    /// them. Apart from the peer's event queue so that a request is never lost when that
    /// queue is full.
    resyncs: Mutex<HashSet<ChannelId>>,
    resync_wake: tokio::sync::Notify,
    /// What the link's task handles itself (without storage), and the count of events
    /// queued for this peer's task that it has not handled yet.
    inline: Option<Arc<Inline>>,
}

impl Peer {
    /// The peer's task handled one event taken from its queue.
    fn event_done(&self) {
        if let Some(inline) = &self.inline {
            inline.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

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
    timestamps: crate::net::TimestampView,
    rotate_after_messages: u64,
    rotate_after: Duration,
    runtime: RemoteHandle,
    peers: HashMap<RuntimeId, Arc<Peer>>,
    pending: Mutex<HashMap<ChannelId, PendingOpen>>,
    resets: Mutex<HashMap<ChannelId, PendingReset>>,
    entropy: Mutex<Box<dyn EntropySource + Send>>,
    recovery: RecoveryLimits,
    clock: Arc<dyn mfp_runtime::Clock>,
    counters: RecoveryCounters,
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

impl Federation {
    /// Starts the network for `runtime` with its identity key, and attaches the federation
    /// as the runtime's transport for the configured peers (fails if one of them has a
    /// transport already). Must be called inside a tokio runtime.
    pub async fn start(
        runtime: &Runtime,
        identity: IdentityKey,
        cfg: FederationConfig,
    ) -> Result<Federation, FederationError> {
        let local = runtime.identity();
        let peer_cfgs: Vec<PeerConfig> = cfg.peers.iter().map(|p| p.peer.clone()).collect();
        // Replay protection of handshake message 1 across restarts: the greatest timestamps
        // accepted before, from storage.
        let mut net_cfg = cfg.net;
        for row in runtime.remote_handle().peers()? {
            let ts = crate::handshake::Timestamp { secs: row.handshake_secs, nanos: row.handshake_nanos };
            net_cfg.handshake_timestamps.push((row.runtime, ts));
        }
        // Each peer's link hands its events straight to that peer's task. Without storage
        // the link's own task takes inbound messages and acknowledgements while that task
        // has nothing queued (no hop between tasks); with storage an ingest waits for its
        // commit, which the link's task must not do.
        let inline: HashMap<RuntimeId, Arc<Inline>> = if runtime.remote_handle().persisting() {
            HashMap::new()
        } else {
            cfg.peers.iter().map(|p| (p.peer.runtime, Arc::new(Inline::new(p.peer.runtime)))).collect()
        };
        let hooks = inline.iter().map(|(r, i)| (*r, Arc::clone(i) as Arc<dyn InlineEvents>)).collect();
        let (net, mut events) = Network::start_per_peer_inline(identity, local, peer_cfgs, net_cfg, hooks).await?;
        let timestamps = net.timestamps();
        let mut peers = HashMap::new();
        let mut queues = Vec::new();
        for p in &cfg.peers {
            let handle =
                net.peer(&p.peer.runtime).ok_or_else(|| FederationError::UnknownPeer(p.peer.runtime.short()))?;
            let rx =
                events.remove(&p.peer.runtime).ok_or_else(|| FederationError::UnknownPeer(p.peer.runtime.short()))?;
            let max_bytes = p.max_in_flight_bytes.clamp(1, Semaphore::MAX_PERMITS);
            let peer = Arc::new(Peer {
                runtime: p.peer.runtime,
                breaker: Breaker::new(cfg.breaker_cool_down),
                handle,
                msgs: Arc::new(Semaphore::new(p.max_in_flight_messages.clamp(1, Semaphore::MAX_PERMITS))),
                bytes: Arc::new(Semaphore::new(max_bytes)),
                max_bytes,
                accept: p.accept.clone(),
                ready: tokio::sync::Notify::new(),
                chans: Mutex::new(HashMap::new()),
                resuming: Mutex::new(HashMap::new()),
                closes: Mutex::new(Vec::new()),
                unconfirmed: Mutex::new(HashSet::new()),
                resyncs: Mutex::new(HashSet::new()),
                resync_wake: tokio::sync::Notify::new(),
                inline: inline.get(&p.peer.runtime).cloned(),
            });
            queues.push((Arc::clone(&peer), rx));
            peers.insert(p.peer.runtime, peer);
        }
        let shared = Arc::new(Shared {
            local,
            timestamps,
            rotate_after_messages: cfg.rotate_after_messages,
            rotate_after: cfg.rotate_after,
            runtime: runtime.remote_handle(),
            peers,
            pending: Mutex::new(HashMap::new()),
            resets: Mutex::new(HashMap::new()),
            entropy: Mutex::new(Box::new(crate::OsEntropy::new())),
            recovery: cfg.recovery,
            clock: Arc::clone(&cfg.clock),
            counters: RecoveryCounters::default(),
        });
        // Messages restored from storage count against the in-flight limits.
        for peer in shared.peers.values() {
            let mut held = (0usize, 0usize);
            for pos in shared.runtime.positions(&peer.runtime)? {
                // Accepted before a restart and not confirmed by the opener yet: still wait.
                if pos.unconfirmed {
                    peer.unconfirmed.lock().insert(pos.channel);
                }
                let unacked = shared.runtime.unacknowledged(&pos.channel, 0)?;
                held.0 += unacked.len();
                held.1 += unacked.iter().map(|m| m.wire.len()).sum::<usize>();
                peer.chans.lock().insert(
                    pos.channel,
                    ChanTx {
                        sent_next: pos.acked,
                        stalled: true,
                        rotated_at: (pos.tx_next, std::time::Instant::now()),
                        rotating: None,
                        last_rotation: None,
                        awaiting_position: true,
                        recovery: None,
                    },
                );
            }
            forget(&peer.msgs, held.0);
            forget(&peer.bytes, held.1);
        }
        // For the configured peers only: pymfp peers may have a transport of their own
        // (`CompatNetwork`).
        let ids: Vec<RuntimeId> = shared.peers.keys().copied().collect();
        runtime.attach_transport_for(&ids, Arc::new(FedTransport(Arc::clone(&shared))))?;
        for i in inline.values() {
            let _ = i.shared.set(Arc::downgrade(&shared));
        }
        let mut tasks = Vec::new();
        for (peer, rx) in queues {
            tasks.push(tokio::spawn(peer_task(Arc::clone(&shared), peer, rx)));
        }
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

    /// The greatest handshake timestamp accepted from each peer (seeded from storage at
    /// start, stored again after each handshake this side answered).
    #[must_use]
    pub fn handshake_timestamps(&self) -> Vec<(RuntimeId, crate::handshake::Timestamp)> {
        self.net.as_ref().map(Network::handshake_timestamps).unwrap_or_default()
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

    /// Asks the peer of cross-runtime channel `channel` to rotate this side's outbound
    /// chain now (the operator's trigger; the automatic ones are
    /// [`FederationConfig::rotate_after_messages`] and [`FederationConfig::rotate_after`]).
    /// The rotation takes effect when the peer's answer arrives.
    pub fn rotate(&self, channel: &ChannelId) -> Result<(), FederationError> {
        let pos = self
            .shared
            .peers
            .values()
            .find_map(|p| {
                let ps = self.shared.runtime.positions(&p.runtime).ok()?;
                ps.into_iter().find(|x| x.channel == *channel).map(|x| (Arc::clone(p), x))
            })
            .ok_or_else(|| {
                FederationError::Invalid(format!("channel {} is not a federated channel", channel.short()))
            })?;
        request_rotation(&self.shared, &pos.0, *channel, pos.1.tx_next, pos.1.acked)
    }

    /// The peer and positions of federated channel `channel`.
    fn channel_peer(
        &self,
        channel: &ChannelId,
    ) -> Result<(Arc<Peer>, mfp_runtime::remote::RemotePosition), FederationError> {
        self.shared
            .peers
            .values()
            .find_map(|p| {
                let ps = self.shared.runtime.positions(&p.runtime).ok()?;
                ps.into_iter().find(|x| x.channel == *channel).map(|x| (Arc::clone(p), x))
            })
            .ok_or_else(|| FederationError::Invalid(format!("channel {} is not a federated channel", channel.short())))
    }

    /// Resumes a suspended channel (the runtime's `restore_channel`): it becomes active and
    /// both runtimes compare positions again (a recovery report asking for the peer's), so
    /// that what waits in either log is sent. If the divergence that suspended it is still
    /// there, the new recovery suspends it again.
    pub async fn resume_channel(&self, channel: &ChannelId) -> Result<(), FederationError> {
        self.channel_peer(channel)?;
        self.shared.runtime.resume_async(channel).await?;
        Ok(())
    }

    /// Resets a suspended channel with its peer: both runtimes re-seed both chains from a
    /// new secret this side draws (the derivation of a channel request, this side as the
    /// opener, [`crate::channel_chains`]), both at step 0, each discarding its outbound
    /// log, each in one storage transaction; the channel is active again on both sides.
    /// Returns how many unacknowledged messages this side discarded: **they are lost** (as
    /// are those the peer discarded). Refused when the channel is not suspended here or the
    /// peer is not connected; if the peer does not confirm within the open timeout the
    /// channel stays suspended here and the reset can be asked again.
    pub async fn reset_channel(&self, channel: &ChannelId) -> Result<usize, FederationError> {
        let (peer, pos) = self.channel_peer(channel)?;
        if pos.status != mfp_runtime::ChannelStatus::Quarantined {
            return Err(FederationError::NotSuspended(channel.short()));
        }
        if !peer.handle.is_up() {
            return Err(FederationError::PeerDown(peer.runtime.short()));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        self.shared
            .entropy
            .lock()
            .fill(secret.as_mut())
            .map_err(|_| FederationError::Invalid("entropy source failed".into()))?;
        let (reply, answer) = oneshot::channel();
        let secret_bytes = *secret;
        self.shared.resets.lock().insert(*channel, PendingReset { secret, reply });
        if peer.handle.with_session(|s| s.request_reset(*channel, secret_bytes)).is_err() {
            self.shared.resets.lock().remove(channel);
            return Err(FederationError::PeerDown(peer.runtime.short()));
        }
        match tokio::time::timeout(self.open_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(FederationError::ShutDown),
            Err(_) => {
                self.shared.resets.lock().remove(channel);
                Err(FederationError::ResetUnanswered { peer: peer.runtime.short(), channel: channel.short() })
            }
        }
    }

    /// The recovery counters.
    #[must_use]
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.shared.counters.snapshot()
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
        let st = chans.entry(message.channel).or_insert_with(|| ChanTx {
            sent_next: message.step,
            rotated_at: (message.step, std::time::Instant::now()),
            ..ChanTx::default()
        });
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
    fn may_send(&self, peer: &RuntimeId, channel: &ChannelId) -> Result<(), TransportError> {
        match self.0.peers.get(peer) {
            Some(p) if p.unconfirmed.lock().contains(channel) => Err(TransportError::Busy),
            _ => Ok(()),
        }
    }

    fn reserve(&self, peer: &RuntimeId, len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        let p = self.0.peers.get(peer).ok_or(TransportError::UnknownPeer)?;
        // A healthy breaker (the common case) needs no clock and no lock.
        let now = (!p.breaker.healthy()).then(std::time::Instant::now);
        if let Some(now) = now
            && !p.breaker.admit(now)
        {
            return Err(TransportError::Open);
        }
        if !p.handle.is_up() {
            if p.breaker.record(false, now.unwrap_or_else(std::time::Instant::now)) {
                tracing::warn!(target: "mfp::federation", peer = %p.runtime.short(), "circuit breaker open: sends to this peer fail at once until it lets a trial through");
            }
            return Err(TransportError::Down("not connected".into()));
        }
        if let Some(now) = now {
            p.breaker.record(true, now);
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

    fn channel_restored(&self, peer: &RuntimeId, channel: &ChannelId) {
        if let Some(p) = self.0.peers.get(peer) {
            let now = self.0.clock.now();
            detect(&self.0, p, *channel, Recovery::begin(now), ANSWER_REQUESTED);
        }
    }
}

/// DETECT on one channel: nothing new goes out until the peer's report says where to
/// resume; `recovery` is the recovery under way; the report carries `flags`.
fn detect(shared: &Shared, peer: &Peer, channel: ChannelId, recovery: Recovery, flags: u8) {
    let Ok(point) = shared.runtime.recovery_point(&channel) else { return };
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        st.stalled = true;
        st.awaiting_position = true;
        st.sent_next = point.log_from;
        st.rotating = None;
        st.recovery = Some(recovery);
    }
    peer.resuming.lock().insert(channel, (point.rx_next, 0));
    send_report(shared, peer, channel, flags);
}

/// Sends this side's recovery report on `channel`.
fn send_report(shared: &Shared, peer: &Peer, channel: ChannelId, flags: u8) {
    let Ok(p) = shared.runtime.recovery_point(&channel) else { return };
    let report = RecoveryReport::new(
        channel,
        &shared.local,
        flags,
        ChainPoint { step: p.tx_next, hash: p.tx_hash },
        p.log_from,
        ChainPoint { step: p.rx_next, hash: p.rx_hash },
        p.rx_rotated_hash,
    );
    let _ = peer.handle.with_session(|s| s.send_recovery(report));
}

// ---- on the link's task -----------------------------------------------------------------

/// Takes a peer's inbound messages and acknowledgements on its link's task (without
/// storage), while the peer's task has no event of the peer queued or under way: handled
/// there, in the order they came, they cost no hop to another task. Anything else, and
/// everything behind a queued event, goes to the peer's task.
struct Inline {
    peer: RuntimeId,
    /// Set once the federation's shared state exists (events before that are queued).
    shared: std::sync::OnceLock<std::sync::Weak<Shared>>,
    /// Held while deciding (and handling inline), so that a link being replaced and its
    /// successor cannot overtake each other's queued events.
    order: Mutex<()>,
    /// Events queued for the peer's task and not handled yet.
    queued: std::sync::atomic::AtomicUsize,
}

impl Inline {
    fn new(peer: RuntimeId) -> Self {
        Self {
            peer,
            shared: std::sync::OnceLock::new(),
            order: Mutex::new(()),
            queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Handles `event` if it can be now; gives it back otherwise.
    fn handle(shared: &Shared, peer: &Peer, event: NetEvent) -> Option<NetEvent> {
        match event {
            NetEvent::Session { event: Event::Data { channel, wire }, peer: from } => {
                if sent_before_resync(peer, &wire) {
                    tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
                    return None;
                }
                match shared.runtime.try_ingest(&peer.runtime, &wire) {
                    // It has to wait (a full mailbox, an ingest of the channel under way):
                    // the peer's task waits for it.
                    Err(RuntimeError::WouldBlock { .. }) => {
                        Some(NetEvent::Session { peer: from, event: Event::Data { channel, wire } })
                    }
                    result => {
                        ingested(shared, peer, result, &wire);
                        None
                    }
                }
            }
            NetEvent::Session { event: Event::Acked { channel, next }, .. } => {
                on_acked(shared, peer, channel, next);
                None
            }
            other => Some(other),
        }
    }
}

impl InlineEvents for Inline {
    fn offer(&self, event: NetEvent) -> Option<NetEvent> {
        let _order = self.order.lock();
        let rest = if self.queued.load(Ordering::Acquire) == 0
            && let Some(shared) = self.shared.get().and_then(std::sync::Weak::upgrade)
            && let Some(peer) = shared.peers.get(&self.peer)
        {
            Self::handle(&shared, peer, event)?
        } else {
            event
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        Some(rest)
    }
}

// ---- one peer's task --------------------------------------------------------------------

async fn peer_task(shared: Arc<Shared>, peer: Arc<Peer>, mut rx: mpsc::Receiver<NetEvent>) {
    // With storage, inbound messages are ingested together (their commits share
    // transactions); a channel's own messages are opened one after the other, in order,
    // and acknowledged in step order.
    // Every other event waits until the ingests in flight are done, so it sees what they
    // committed, as when everything ran in turn.
    let mut ingests = Ingests::new(shared.runtime.persisting());
    loop {
        tokio::select! {
            ev = rx.recv(), if ingests.has_room() => match ev {
                Some(NetEvent::Session { event: Event::Data { wire, .. }, .. }) if ingests.concurrent => {
                    if sent_before_resync(&peer, &wire) {
                        tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
                    } else {
                        ingests.push(&shared, &peer, wire);
                    }
                }
                Some(ev) => {
                    ingests.finish_all(&shared, &peer).await;
                    match ev {
                        NetEvent::Up { .. } => {
                            on_up(&shared, &peer);
                            remember_handshake(&shared, &peer).await;
                        }
                        NetEvent::Session { event, .. } => on_event(&shared, &peer, event).await,
                        NetEvent::Down { reason, .. } => {
                            tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), reason, "link down");
                        }
                    }
                    peer.event_done();
                }
                None => {
                    ingests.finish_all(&shared, &peer).await;
                    return;
                }
            },
            step = std::future::poll_fn(|cx| ingests.poll_done(cx)), if !ingests.is_idle() => {
                ingests.done(&shared, &peer, step);
            }
            () = peer.resync_wake.notified() => {
                let channels: Vec<ChannelId> = peer.resyncs.lock().drain().collect();
                for channel in channels {
                    resync(&shared, &peer, channel, None).await;
                }
            }
        }
    }
}

/// What an ingest in flight finished: opening its message (the channel's next may be
/// opened then), or the whole ingest (its outcome).
enum IngestStep {
    Opened(ChannelId, Result<PendingIngest, RuntimeError>, Vec<u8>),
    Done(ChannelId, Result<Ingested, RuntimeError>, Vec<u8>),
}
type IngestFuture = std::pin::Pin<Box<dyn std::future::Future<Output = IngestStep> + Send>>;

/// Ingests of one peer's messages in flight (with storage). A channel's messages are opened
/// one after the other, in the order they came; each message's commit is awaited while the
/// channel's next ones are opened, so they share transactions. The runtime settles a
/// channel's messages in step order, and finished ingests are taken oldest first, so a
/// channel's acknowledgements go out in step order.
struct Ingests {
    concurrent: bool,
    /// Oldest first.
    running: Vec<IngestFuture>,
    /// Per channel with a message being opened: its messages that arrived since, in order.
    waiting: HashMap<ChannelId, std::collections::VecDeque<Vec<u8>>>,
    queued: usize,
}

/// Ingests in flight, and messages queued behind a channel's opening one, at most (beyond,
/// the peer's event queue fills and the link stops reading: backpressure toward the
/// socket).
const MAX_INGESTING: usize = 64;
const MAX_QUEUED_INGESTS: usize = 1024;

impl Ingests {
    fn new(concurrent: bool) -> Self {
        Self { concurrent, running: Vec::new(), waiting: HashMap::new(), queued: 0 }
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    fn has_room(&self) -> bool {
        self.running.len() < MAX_INGESTING && self.queued < MAX_QUEUED_INGESTS
    }

    /// Starts opening `wire`, or queues it behind its channel's message being opened.
    fn push(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, wire: Vec<u8>) {
        let channel = wire
            .get(16..32)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map_or(ChannelId::from_bytes([0; 16]), ChannelId::from_bytes);
        if let Some(q) = self.waiting.get_mut(&channel) {
            q.push_back(wire);
            self.queued += 1;
            return;
        }
        self.waiting.insert(channel, std::collections::VecDeque::new());
        self.open(shared, peer, channel, wire);
    }

    fn open(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, channel: ChannelId, wire: Vec<u8>) {
        let (shared, peer) = (Arc::clone(shared), Arc::clone(peer));
        self.running.push(Box::pin(async move {
            let r = shared.runtime.open_ingest_async(&peer.runtime, &wire).await;
            IngestStep::Opened(channel, r, wire)
        }));
    }

    /// The oldest finished step.
    fn poll_done(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<IngestStep> {
        for i in 0..self.running.len() {
            if let Some(f) = self.running.get_mut(i)
                && let std::task::Poll::Ready(out) = f.as_mut().poll(cx)
            {
                drop(self.running.remove(i));
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    }

    /// After a step: an opened message's commit is awaited and the channel's next message
    /// opened; a finished ingest is acknowledged (or a resend asked for).
    fn done(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, step: IngestStep) {
        let (channel, refused) = match step {
            IngestStep::Opened(channel, Ok(pending), wire) => {
                self.running.push(Box::pin(async move { IngestStep::Done(channel, pending.finish().await, wire) }));
                (channel, false)
            }
            IngestStep::Opened(channel, Err(e), wire) => (channel, ingested(shared, peer, Err(e), &wire)),
            IngestStep::Done(channel, result, wire) => {
                if ingested(shared, peer, result, &wire) {
                    // Not taken: the peer sends again from where this side stands; what
                    // is queued behind comes again.
                    if let Some(q) = self.waiting.get_mut(&channel) {
                        self.queued -= q.len();
                        q.clear();
                    }
                }
                return;
            }
        };
        let next = match self.waiting.get_mut(&channel) {
            // After a refusal the peer sends again from where this side stands: what queued
            // behind it comes again.
            Some(q) if refused => {
                self.queued -= q.len();
                q.clear();
                None
            }
            Some(q) => q.pop_front(),
            None => None,
        };
        match next {
            Some(wire) => {
                self.queued -= 1;
                self.open(shared, peer, channel, wire);
            }
            None => {
                self.waiting.remove(&channel);
            }
        }
    }

    /// Waits for every ingest in flight and queued.
    async fn finish_all(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>) {
        while !self.is_idle() {
            let step = std::future::poll_fn(|cx| self.poll_done(cx)).await;
            self.done(shared, peer, step);
        }
    }
}

/// After the ingest of an inbound message: acknowledges it, or (not taken now) asks the
/// peer to send again from where this side stands. Returns whether it was not taken.
fn ingested(shared: &Shared, peer: &Peer, result: Result<Ingested, RuntimeError>, wire: &[u8]) -> bool {
    match result {
        Ok(Ingested::Delivered { channel, step } | Ingested::Duplicate { channel, step }) => {
            let _ = peer.handle.with_session(|s| s.ack(channel, step + 1));
            // A message on the channel: the peer has it.
            confirmed(shared, peer, &channel);
            false
        }
        Ok(_) => false,
        Err(e @ RuntimeError::NotTaken { .. }) => {
            // An earlier message of the channel failed to commit; its refusal asked for the
            // resend that brings this one again.
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message not taken");
            true
        }
        Err(e @ (RuntimeError::MailboxFull(_) | RuntimeError::Storage(_) | RuntimeError::WouldBlock { .. })) => {
            // Not taken now: ask the peer to send again from where this side stands.
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message not taken; asking for a resend");
            if let Some(header) = wire.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                let channel = ChannelId::from_bytes(header);
                if let Ok(point) = shared.runtime.recovery_point(&channel) {
                    peer.resuming.lock().insert(channel, (point.rx_next, 0));
                    send_report(shared, peer, channel, RESEND_REQUEST);
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message refused");
            false
        }
    }
}

/// Stores the greatest handshake timestamp accepted from the peer (when this side answered
/// its message 1), so a recorded message 1 stays refused after a restart.
async fn remember_handshake(shared: &Shared, peer: &Peer) {
    let Some(ts) = shared.timestamps.greatest(&peer.runtime) else { return };
    let row =
        mfp_runtime::storage::PeerRow { runtime: peer.runtime, handshake_secs: ts.secs, handshake_nanos: ts.nanos };
    if let Err(e) = shared.runtime.record_peer_async(row).await {
        tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "the peer's handshake timestamp was not stored");
    }
}

fn on_up(shared: &Shared, peer: &Peer) {
    tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), "link up");
    let closes: Vec<ChannelId> = std::mem::take(&mut *peer.closes.lock());
    let positions = shared.runtime.positions(&peer.runtime).unwrap_or_default();
    let now = shared.clock.now();
    {
        // Until the peer's report arrives, nothing new goes out on these channels: what
        // was in flight when the link broke may have to go first.
        let mut chans = peer.chans.lock();
        for pos in &positions {
            let st = chans.entry(pos.channel).or_default();
            st.stalled = true;
            st.awaiting_position = true;
            st.sent_next = pos.acked;
            // A rotation asked for on the previous session is answered on that one or never.
            st.rotating = None;
            // DETECT: a recovery begins with each session. One that was under way when
            // the link broke ends with it: a runtime killed and restarted (or a link that
            // breaks) in the middle of a resend is not a divergence, and the new session
            // resends from the peer's new report anyway.
            st.recovery = Some(Recovery::begin(now));
        }
    }
    *peer.resuming.lock() = positions.iter().map(|p| (p.channel, (p.rx_next, 0))).collect();
    let _ = peer.handle.with_session(|s| {
        for c in closes {
            s.close_channel(c);
        }
    });
    // A suspended channel stays silent until an operator resumes or resets it.
    for pos in positions.iter().filter(|p| p.status == mfp_runtime::ChannelStatus::Active) {
        send_report(shared, peer, pos.channel, 0);
    }
    peer.ready.notify_waiters();
}

async fn on_event(shared: &Shared, peer: &Peer, ev: Event) {
    let rt = &shared.runtime;
    match ev {
        Event::Data { wire, .. } if sent_before_resync(peer, &wire) => {
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
        }
        Event::Data { wire, .. } => {
            let result = rt.ingest_async(&peer.runtime, &wire).await;
            ingested(shared, peer, result, &wire);
        }
        Event::Acked { channel, next } => on_acked(shared, peer, channel, next),
        Event::Position { channel, .. } => {
            // Bare positions (no state hashes) are not how this federation recovers.
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), "bare position ignored; recovery reports carry positions");
        }
        Event::Recovery(report) => on_report(shared, peer, report).await,
        Event::ResetRequested { channel, secret } => {
            // Only a channel this runtime shares with the peer and has open can be reset; a
            // suspended or an active one is (active: the peer may have reset before, its
            // answer lost with the link, and asks again — both end on the newer secret).
            if !rt.positions(&peer.runtime).unwrap_or_default().iter().any(|p| p.channel == channel) {
                let reason = match rt.recovery_point(&channel) {
                    Err(RuntimeError::ChannelClosed(_)) => ResetRefusal::Closed,
                    _ => ResetRefusal::UnknownChannel,
                };
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), reason = %reason, "reset refused");
                let _ = peer.handle.with_session(|s| s.refuse_reset(channel, reason));
                return;
            }
            // Both sides asked at once, each request crossing the other on the link: the
            // request of the runtime with the smaller id wins on both sides, so that both
            // end on one secret. This side's stands: refuse the peer's (it accepts ours).
            if shared.local < peer.runtime && shared.resets.lock().contains_key(&channel) {
                let _ = peer.handle.with_session(|s| s.refuse_reset(channel, ResetRefusal::Crossed));
                return;
            }
            // The peer derives as the opener of the reset: its chains are (peer → here, here → peer).
            let (from_peer, to_peer) = crate::channel_chains(&secret, &channel, &peer.runtime, &shared.local);
            let reset = crate::reset_id(&secret, &channel);
            match rt.reset_chains_async(&channel, to_peer, from_peer, reset).await {
                Ok(outcome) => {
                    after_reset(shared, peer, channel, outcome);
                    // The peer reports first once it has reset its side too.
                    let _ = peer.handle.with_session(|s| s.accept_reset(channel));
                    // A reset this side (the larger id) asked for meanwhile lost to the
                    // peer's: the channel is reset, which is what its caller asked for (the
                    // peer refuses that request; its refusal then finds nothing waiting).
                    // The smaller id's own request still stands: the peer applies it and
                    // answers, and this side resets once more, onto its own secret.
                    if shared.local > peer.runtime
                        && let Some(mine) = shared.resets.lock().remove(&channel)
                    {
                        let _ = mine.reply.send(Ok(outcome.discarded));
                    }
                }
                Err(e) => {
                    let reason = match e {
                        RuntimeError::ChannelClosed(_) => ResetRefusal::Closed,
                        RuntimeError::UnknownChannel(_) => ResetRefusal::UnknownChannel,
                        _ => ResetRefusal::Failed,
                    };
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "reset asked by the peer failed; refused");
                    let _ = peer.handle.with_session(|s| s.refuse_reset(channel, reason));
                }
            }
        }
        Event::ResetAccepted { channel } => {
            let Some(p) = shared.resets.lock().remove(&channel) else { return };
            let (to_peer, from_peer) = crate::channel_chains(&p.secret, &channel, &shared.local, &peer.runtime);
            let reset = crate::reset_id(&p.secret, &channel);
            let r = match rt.reset_chains_async(&channel, to_peer, from_peer, reset).await {
                Ok(outcome) => {
                    after_reset(shared, peer, channel, outcome);
                    send_report(shared, peer, channel, ANSWER_REQUESTED);
                    Ok(outcome.discarded)
                }
                Err(e) => {
                    tracing::error!(target: "mfp::federation", channel = %channel.short(), error = %e, "the peer reset the channel but this side could not; reset it again");
                    Err(FederationError::from(e))
                }
            };
            let _ = p.reply.send(r);
        }
        Event::ResetRefused { channel, reason } => {
            let Some(p) = shared.resets.lock().remove(&channel) else { return };
            let r = if reason == ResetRefusal::Crossed && shared.local > peer.runtime {
                // The peer's crossing request won, and this side applied it before this
                // refusal came (it came first on the link): the channel is reset, and this
                // call discarded nothing more.
                Ok(0)
            } else {
                Err(FederationError::ResetRefused { peer: peer.runtime.short(), channel: channel.short(), reason })
            };
            let _ = p.reply.send(r);
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
                // Stored: the acceptor may send on it now.
                let _ = peer.handle.with_session(|s| s.confirm_channel(channel));
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
        Event::ChannelConfirmed { channel } => confirmed(shared, peer, &channel),
        Event::ChannelClosed { channel } => {
            peer.chans.lock().remove(&channel);
            peer.unconfirmed.lock().remove(&channel);
            match rt.closed_by_peer_async(&channel).await {
                Ok(()) | Err(RuntimeError::UnknownChannel(_) | RuntimeError::ChannelClosed(_)) => {}
                Err(e) => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "closing a channel the peer closed failed");
                }
            }
        }
        Event::RotationRequested { channel, message } => {
            // Only the channel's peer may rotate its chain, and only towards this runtime.
            if message.sender != peer.runtime || message.receiver != shared.local {
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), "rotation request with wrong runtime ids ignored");
                return;
            }
            let secret = match draw_secret(shared) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target: "mfp::federation", error = %e, "no entropy for a rotation");
                    return;
                }
            };
            let Ok(ss) = mfp_core::crypto::x25519_shared(&secret, &message.ephemeral_public) else {
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), "rotation request with an invalid key ignored");
                return;
            };
            // Stored before the answer goes out: the peer rotates once it has the answer.
            if let Err(e) = rt.accept_rotation_async(&channel, ss).await {
                tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "rotation not accepted");
                return;
            }
            let answer = mfp_core::bilateral::RekeyMessage {
                sender: shared.local,
                receiver: peer.runtime,
                ephemeral_public: mfp_core::crypto::x25519_public(&secret),
                step: message.step,
            };
            let _ = peer.handle.with_session(|s| s.accept_rotation(channel, answer));
        }
        Event::RotationAccepted { channel, message } => {
            // Only the answer to the one request under way counts; it stays under way until
            // the outbound chain is rotated.
            let mine = peer.chans.lock().get(&channel).and_then(|st| match &st.rotating {
                Some((step, secret)) if *step == message.step => Some(secret.clone()),
                _ => None,
            });
            let Some(secret) = mine else { return };
            if message.sender != peer.runtime || message.receiver != shared.local {
                return;
            }
            let rotated = match mfp_core::crypto::x25519_shared(&secret, &message.ephemeral_public) {
                // Waits (as a future) for the channel's sends in flight to settle first.
                Ok(ss) => Some(shared.runtime.rotate_outbound_async(&channel, &ss).await),
                Err(_) => None,
            };
            let mut chans = peer.chans.lock();
            let st = chans.entry(channel).or_default();
            st.rotating = None;
            match rotated {
                Some(Ok(step)) => {
                    st.rotated_at = (step, std::time::Instant::now());
                    st.last_rotation = Some(step);
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "outbound rotation failed");
                }
                None => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), "rotation answer with an invalid key ignored");
                }
            }
        }
        Event::Closed(reason) => {
            tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), reason = %reason, "session closed");
        }
    }
}

/// The federation's side of a reset: the discarded messages give their in-flight permits
/// back, and the channel waits for the peer's report (a new recovery) before it sends.
fn after_reset(shared: &Shared, peer: &Peer, channel: ChannelId, outcome: mfp_runtime::remote::ResetOutcome) {
    peer.msgs.add_permits(outcome.discarded);
    peer.bytes.add_permits(outcome.discarded_bytes);
    peer.ready.notify_waiters();
    let now = shared.clock.now();
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        *st = ChanTx {
            sent_next: 0,
            stalled: true,
            rotated_at: (0, std::time::Instant::now()),
            rotating: None,
            last_rotation: None,
            awaiting_position: true,
            recovery: Some(Recovery::begin(now)),
        };
    }
    peer.resuming.lock().insert(channel, (0, 0));
    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), discarded = outcome.discarded, "channel reset: both chains re-seeded at step 0, unacknowledged messages discarded");
}

/// NEGOTIATE on the peer's report, then RESYNC, or the suspension of the channel.
async fn on_report(shared: &Shared, peer: &Peer, report: RecoveryReport) {
    let rt = &shared.runtime;
    let channel = report.channel;
    let point = match rt.recovery_point(&channel) {
        Ok(p) if rt.positions(&peer.runtime).is_ok_and(|ps| ps.iter().any(|x| x.channel == channel)) => p,
        _ => {
            // The peer has a channel this side does not (closed here while the link was
            // down, or never opened): close it there.
            let _ = peer.handle.with_session(|s| s.close_channel(channel));
            return;
        }
    };
    // The peer reports the channel: it has it stored.
    confirmed(shared, peer, &channel);
    if point.status != mfp_runtime::ChannelStatus::Active {
        tracing::debug!(target: "mfp::federation", channel = %channel.short(), "recovery report on a suspended channel ignored until it is resumed or reset");
        return;
    }
    let local = LocalPoint {
        tx: ChainPoint { step: point.tx_next, hash: point.tx_hash },
        log_from: point.log_from,
        rx: ChainPoint { step: point.rx_next, hash: point.rx_hash },
        rx_rotated_hash: point.rx_rotated_hash,
    };
    let now = shared.clock.now();
    let decided = {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        if !st.recovery.is_some_and(|r| r.is_open()) {
            st.recovery = Some(Recovery::begin(now));
        }
        let recovery = st.recovery.get_or_insert(Recovery::begin(now));
        let d = recovery.negotiate(now, &shared.recovery, &local, &report);
        if d.is_err() {
            st.recovery = None;
        }
        d
    };
    shared.counters.negotiations.fetch_add(1, Ordering::Relaxed);
    let n = match decided {
        Ok(n) => n,
        Err(e) => {
            shared.counters.escalated(e);
            let reason = e.explain();
            tracing::error!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), outcome = e.as_str(), "channel diverged beyond repair; suspended");
            if report.has(ANSWER_REQUESTED) {
                // The peer diagnoses the same divergence from this side's report (a peer
                // that resumed after this side would otherwise never hear of it).
                send_report(shared, peer, channel, 0);
            }
            if let Err(err) = rt.suspend_async(&channel, &reason).await {
                tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %err, "suspending the channel failed");
            }
            return;
        }
    };
    if n.outbound == mfp_core::bilateral::Diagnosis::Spurious {
        shared.counters.in_step.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
    }
    if report.has(ANSWER_REQUESTED) {
        send_report(shared, peer, channel, 0);
    }
    // Everything below the peer's rx_next is durable there (an acknowledgement), then
    // RESYNC: the log goes again from it.
    acked(shared, peer, channel, report.rx.step);
    resync(shared, peer, channel, Some(n.resend_from)).await;
}

/// 32 random bytes as an X25519 secret.
fn draw_secret(shared: &Shared) -> Result<mfp_core::State, mfp_core::Error> {
    let mut b = [0u8; 32];
    shared.entropy.lock().fill(&mut b)?;
    let s = mfp_core::State::from_bytes(b);
    zeroize::Zeroize::zeroize(&mut b);
    Ok(s)
}

/// Starts a rotation of this side's outbound chain of `channel` (at most one at a time).
fn request_rotation(
    shared: &Shared,
    peer: &Peer,
    channel: ChannelId,
    tx_next: u64,
    acked: u64,
) -> Result<(), FederationError> {
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        if st.rotating.is_some() {
            return Err(FederationError::Invalid(format!("a rotation of channel {} is under way", channel.short())));
        }
        if st.last_rotation.is_some_and(|r| acked <= r) {
            return Err(FederationError::Invalid(format!(
                "the peer has not yet acknowledged a message under channel {}'s last rotation; send one first",
                channel.short()
            )));
        }
    }
    let secret = draw_secret(shared).map_err(|_| FederationError::Invalid("entropy source failed".into()))?;
    let message = mfp_core::bilateral::RekeyMessage {
        sender: shared.local,
        receiver: peer.runtime,
        ephemeral_public: mfp_core::crypto::x25519_public(&secret),
        step: tx_next,
    };
    peer.chans.lock().entry(channel).or_default().rotating = Some((tx_next, secret));
    peer.handle
        .with_session(|s| s.request_rotation(channel, message))
        .map_err(|_| FederationError::PeerDown(peer.runtime.short()))
}

/// Rotates `channel`'s outbound chain when its count or age says so (pymfp's triggers).
fn maybe_rotate(shared: &Shared, peer: &Peer, channel: ChannelId) {
    let Some((tx_next, acked)) =
        shared.runtime.position(&channel).ok().filter(|p| p.remote.peer == peer.runtime).map(|p| (p.tx_next, p.acked))
    else {
        return;
    };
    let due = {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        let (at_step, at_time) = st.rotated_at;
        st.rotating.is_none()
            && ((shared.rotate_after_messages > 0 && tx_next.saturating_sub(at_step) >= shared.rotate_after_messages)
                || (!shared.rotate_after.is_zero() && at_time.elapsed() >= shared.rotate_after))
    };
    if due && let Err(e) = request_rotation(shared, peer, channel, tx_next, acked) {
        tracing::debug!(target: "mfp::federation", channel = %channel.short(), error = %e, "rotation not requested");
    }
}

/// Whether a data message is one the peer sent before it heard the position this side
/// announced for its channel: a step beyond it. The peer sends again from the announced
/// step once it has heard it (its link may have come up, or its sender raced on, before
/// that), so such a message is dropped without counting against the channel; the first
/// message at the announced step ends the wait. Outside that window a step beyond the
/// expected one goes to the runtime, which counts it as a validation failure — as it does
/// once more messages were dropped than a peer can have unacknowledged on a channel
/// ([`MAX_EARLY`]): a peer that never resends is not waited for without end.
fn sent_before_resync(peer: &Peer, wire: &[u8]) -> bool {
    let Ok(header) = mfp_core::envelope::EnvelopeHeader::parse(wire) else { return false };
    let mut resuming = peer.resuming.lock();
    let Some((next, dropped)) = resuming.get_mut(&header.channel_id) else { return false };
    if header.step > *next && *dropped < MAX_EARLY {
        *dropped += 1;
        return true;
    }
    if header.step >= *next {
        resuming.remove(&header.channel_id);
    }
    false
}

/// The peer acknowledged every message of `channel` below `next`.
fn on_acked(shared: &Shared, peer: &Peer, channel: ChannelId, next: u64) {
    acked(shared, peer, channel, next);
    let done =
        peer.chans.lock().get_mut(&channel).and_then(|st| st.recovery.as_mut()).is_some_and(|r| r.acknowledged(next));
    if done {
        shared.counters.completed.fetch_add(1, Ordering::Relaxed);
    }
    maybe_rotate(shared, peer, channel);
}

/// Messages sent before a resync dropped at most per channel and window: the runtime keeps
/// at most this many unacknowledged messages per channel, and only those can be resent.
const MAX_EARLY: usize = 65_536;

/// The peer holds every message of `channel` below `next`: the runtime trims its log, and
/// the in-flight permits those messages held come back.
fn acked(shared: &Shared, peer: &Peer, channel: ChannelId, next: u64) {
    match shared.runtime.acknowledge(&channel, next) {
        Ok(done) => {
            peer.msgs.add_permits(done.messages);
            peer.bytes.add_permits(done.bytes);
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
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        match from {
            Some(f) => {
                st.sent_next = f;
                st.awaiting_position = false;
            }
            // Where to resume is the peer's position, which has not come yet.
            None if st.awaiting_position => return,
            None => {}
        }
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
    // Until the opener confirms it stored the channel, this side does not send on it (a
    // receipt for a message on a channel the opener might never store would be a lie).
    let fresh = peer.unconfirmed.lock().insert(channel);
    // Stored unconfirmed in the same transaction as the channel, so that a restart before
    // the confirmation still waits for it.
    match rt.establish_accepted_async(local, RemoteEnd::new(peer.runtime, opener), channel, depth, chains).await {
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
        Err(e) => {
            if fresh {
                peer.unconfirmed.lock().remove(&channel);
            }
            Err(refusal(e))
        }
    }
}

/// Why a channel request is refused, from the runtime's error.
fn refusal(e: RuntimeError) -> RefuseReason {
    match e {
        RuntimeError::ChannelExists(_) => RefuseReason::Collision,
        RuntimeError::ResourceLimit { .. } => RefuseReason::LimitReached,
        RuntimeError::InvalidDepth { .. } => RefuseReason::BadDepth,
        RuntimeError::AgentNotBound(_) | RuntimeError::UnknownAgentName(_) => RefuseReason::UnknownAgent,
        _ => RefuseReason::NotAllowed,
    }
}

/// The opener of `channel` showed that it stored it: this side may send on it (and the
/// stored mark is cleared).
fn confirmed(shared: &Shared, peer: &Peer, channel: &ChannelId) {
    let removed = {
        let mut u = peer.unconfirmed.lock();
        !u.is_empty() && u.remove(channel)
    };
    if removed {
        if let Err(e) = shared.runtime.opener_confirmed(channel) {
            tracing::debug!(target: "mfp::federation", channel = %channel.short(), error = %e, "confirmation of a channel not stored");
        }
        peer.ready.notify_waiters();
    }
}
