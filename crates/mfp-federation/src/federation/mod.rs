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
//!
//! Where each part is:
//!
//! - this file: configuration, errors, the tasks' shared state, the [`Federation`] facade;
//! - `transport.rs`: the runtime's transport (room for a send, sends, DETECT, reports);
//! - `inline.rs`: what a peer's link's task handles itself (without storage);
//! - `peer_task.rs`: one peer's task (its events, ingests in flight, acknowledgements);
//! - `resync.rs`: NEGOTIATE on a peer's report, RESYNC of a channel's log, rotations;
//! - `accept.rs`: a peer's channel request accepted or refused, the opener's confirmation;
//! - `breaker.rs`: the per-peer circuit breaker.
//!
//! [`Transport`]: mfp_runtime::remote::Transport

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mfp_core::{AgentId, ChannelId, EntropySource, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId};
use mfp_runtime::remote::RemoteHandle;
use mfp_runtime::{Error as RuntimeError, Runtime};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, oneshot};
use zeroize::Zeroizing;

use crate::control::{RefuseReason, Target};
use crate::identity::IdentityKey;
use crate::net::{InlineEvents, NetConfig, NetError, Network, PeerConfig, PeerHandle};
use crate::recovery::{Escalation, Recovery, RecoveryLimits};

mod accept;
mod breaker;
mod inline;
mod peer_task;
mod resync;
mod transport;
use breaker::Breaker;
use inline::Inline;
use peer_task::peer_task;
use resync::request_rotation;
use transport::FedTransport;

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
        let (peer, pos) = self.channel_peer(channel)?;
        request_rotation(&self.shared, &peer, *channel, pos.tx_next, pos.acked)
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
