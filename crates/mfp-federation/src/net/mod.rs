//! The tokio transport around the sans-IO [`Session`]: a listener with limits, one dialer
//! per peer with backoff, one I/O task per connection, one link per pair of runtimes.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mfp_core::RuntimeId;
//! use mfp_federation::IdentityKey;
//! use mfp_federation::net::{NetConfig, NetEvent, Network, PeerConfig};
//!
//! let me = RuntimeId::derive(b"deployment", b"a");
//! let peer = RuntimeId::derive(b"deployment", b"b");
//! let peer_key = "mfp-x25519:…".parse()?; // pinned out of band
//! let mut cfg = NetConfig::default();
//! cfg.listen = Some("0.0.0.0:7420".parse()?);
//! let peers = vec![PeerConfig { runtime: peer, endpoint: Some("b.example:7420".into()), key: peer_key }];
//! let (net, mut events) = Network::start(IdentityKey::load("a.key".as_ref())?, me, peers, cfg).await?;
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         NetEvent::Up { peer } => { /* net.peer(&peer)?.with_session(|s| …) */ }
//!         NetEvent::Session { peer, event } => { /* deliveries, acknowledgements, channels */ }
//!         NetEvent::Down { peer, reason } => { /* the dialer reconnects by itself */ }
//!         _ => {}
//!     }
//! }
//! net.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Callers reach a session only through [`PeerHandle::with_session`], a closure run under
//! the lock the link's I/O task shares; the task is woken afterwards to send what the
//! session has to send. Every [`Event`] of a session is forwarded unchanged as
//! [`NetEvent::Session`]. The event channel is bounded: when it is full the link's task
//! waits, and stops reading its socket meanwhile (backpressure toward the peer).
//!
//! One link per pair of runtimes: when a pair ends up with two connections (both dialled
//! at once), both sides keep the one initiated by the runtime with the lower runtime id
//! (ids compared as 32-byte strings) and close the other. Any other new connection
//! replaces the pair's session (the old one is closed with a Close message): a reconnect
//! wins over a session this side still believes alive.
//!
//! See the "Transport" section of `docs/federation.md` for the limits, their defaults and
//! what a hostile peer can cost.

mod conn;
mod gate;
mod glue;
mod limits;
mod link;
mod stats;

use core::fmt;
use core::time::Duration;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mfp_core::{EntropySource, RuntimeId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use limits::{Backoff, HandshakeLimiter, RateLimited, TokenBucket};
pub use stats::{NetStats, NetStatsSnapshot, PeerStats};

use crate::codec::MAX_BODY;
use crate::handshake::{LocalIdentity, PeerTable, Timestamp};
use crate::identity::{IdentityKey, PublicKey};
use crate::session::{Event, Session, SessionConfig};

/// A shared entropy source for the transport (handshake randomness, dial jitter).
#[derive(Clone)]
pub struct SharedEntropy(Arc<parking_lot::Mutex<Box<dyn EntropySource + Send>>>);

impl SharedEntropy {
    /// Wraps `source`.
    pub fn new(source: impl EntropySource + Send + 'static) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Box::new(source))))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut dyn EntropySource) -> R) -> R {
        let mut guard = self.0.lock();
        f(guard.as_mut())
    }
}

impl Default for SharedEntropy {
    /// The operating system's generator.
    fn default() -> Self {
        Self::new(crate::OsEntropy::new())
    }
}

impl fmt::Debug for SharedEntropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedEntropy")
    }
}

/// Configuration of a [`Network`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetConfig {
    /// Address to listen on; `None`: no listener (this side only dials).
    pub listen: Option<SocketAddr>,
    /// Timers and limits of every session (keepalive, idle timeout, rekeying).
    pub session: SessionConfig,
    /// Inbound connections open at once, authenticated or not (default 256).
    pub max_connections: usize,
    /// Inbound connections still in their handshake at once (default 64).
    pub max_pending_handshakes: usize,
    /// Handshakes per second from one source IP address (boringtun: 10).
    pub handshakes_per_second_per_source: u32,
    /// Handshakes per second overall (boringtun: 100).
    pub handshakes_per_second: u32,
    /// Source addresses the rate limiter tracks at most (default 4096).
    pub max_tracked_sources: usize,
    /// Largest frame body read on a connection, checked from the header before the body
    /// (default and maximum: [`MAX_BODY`], 65,535). Handshake frames are limited to
    /// [`HANDSHAKE_MAX_BODY`] whatever this says.
    pub max_frame_body: usize,
    /// A connection must complete its handshake within this long (default 5 s).
    pub handshake_timeout: Duration,
    /// Once established, a frame must arrive whole within this long of its first byte
    /// (default 10 s). Silence between frames is the session's idle timeout
    /// (`session.idle_timeout`, kept away by keepalives).
    pub read_timeout: Duration,
    /// A write that makes no progress for this long drops the connection (default 10 s).
    pub write_timeout: Duration,
    /// First dial retry delay (pymfp: 0.1 s); it doubles after each failure.
    pub dial_backoff_initial: Duration,
    /// Largest dial retry delay (pymfp: 30 s).
    pub dial_backoff_max: Duration,
    /// Capacity of the event channel (default 1024).
    pub event_capacity: usize,
    /// How long [`Network::shutdown`] lets links send their Close before it stops them
    /// (default 2 s).
    pub shutdown_timeout: Duration,
    /// Greatest handshake timestamps accepted from peers before (persisted from
    /// [`Network::handshake_timestamps`]), restored before the listener opens so a
    /// recorded handshake cannot be replayed across a restart.
    pub handshake_timestamps: Vec<(RuntimeId, Timestamp)>,
    /// Entropy for handshakes and dial jitter (default: the operating system's).
    pub entropy: SharedEntropy,
    /// Latency for a core (default zero: off; at most [`MAX_BUSY_POLL`]). For this long
    /// after a link last read or wrote, its task does not wait for the socket to wake it:
    /// it yields to the other tasks of its worker and polls again, so its thread never
    /// parks. A message that arrives then is taken without the wake-up of a sleeping
    /// thread (on a virtual machine at rest, tens of microseconds per hop), at the price
    /// of a core kept busy while traffic flows and for this long after it stops.
    pub busy_poll: Duration,
}

/// Largest [`NetConfig::busy_poll`]: a link spins at most this long after its last byte.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(100);

/// Largest body of a handshake frame the transport reads (message 1 is 277 bytes).
pub const HANDSHAKE_MAX_BODY: usize = 512;

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: None,
            session: SessionConfig::default(),
            max_connections: 256,
            max_pending_handshakes: 64,
            handshakes_per_second_per_source: 10,
            handshakes_per_second: 100,
            max_tracked_sources: 4096,
            max_frame_body: MAX_BODY,
            handshake_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            dial_backoff_initial: Duration::from_millis(100),
            dial_backoff_max: Duration::from_secs(30),
            event_capacity: 1024,
            shutdown_timeout: Duration::from_secs(2),
            handshake_timestamps: Vec::new(),
            entropy: SharedEntropy::default(),
            busy_poll: Duration::ZERO,
        }
    }
}

impl NetConfig {
    /// Checks the configuration: the session's settings, non-zero limits and timers.
    pub fn validate(&self) -> Result<(), NetError> {
        self.session.validate().map_err(|e| NetError::Config(e.to_string()))?;
        let problem = if self.max_connections == 0 || self.max_pending_handshakes == 0 {
            Some("max_connections and max_pending_handshakes must be at least 1")
        } else if self.handshakes_per_second_per_source == 0 || self.handshakes_per_second == 0 {
            Some("handshake rates must be at least 1 per second")
        } else if self.max_frame_body == 0 || self.max_frame_body > MAX_BODY {
            Some("max_frame_body must be between 1 and 65535")
        } else if self.handshake_timeout.is_zero() || self.read_timeout.is_zero() || self.write_timeout.is_zero() {
            Some("handshake, read and write timeouts must be non-zero")
        } else if self.dial_backoff_initial.is_zero() || self.dial_backoff_max < self.dial_backoff_initial {
            Some("dial_backoff_initial must be non-zero and at most dial_backoff_max")
        } else if self.event_capacity == 0 {
            Some("event_capacity must be at least 1")
        } else if self.busy_poll > MAX_BUSY_POLL {
            Some("busy_poll must be at most 100 ms (it keeps a core busy that long after the last byte)")
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(NetError::Config(p.to_string())))
    }
}

/// A peer runtime this one links with.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its runtime id.
    pub runtime: RuntimeId,
    /// Where to dial it (`host:port`); `None`: wait for it to dial.
    pub endpoint: Option<String>,
    /// Its pinned public key.
    pub key: PublicKey,
}

/// What happened on the network.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NetEvent {
    /// A session with `peer` is established (again, after a reconnect).
    Up {
        /// The peer.
        peer: RuntimeId,
    },
    /// The session with `peer` ended. Its dialer (if this side dials it) reconnects.
    Down {
        /// The peer.
        peer: RuntimeId,
        /// Why, for the operator.
        reason: String,
    },
    /// An event of the session with `peer`, unchanged.
    Session {
        /// The peer.
        peer: RuntimeId,
        /// The session's event.
        event: Event,
    },
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The listener could not be opened.
    #[error("cannot listen on {addr}: {source} (is the address in use, or not local?)")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid federation network configuration: {0}")]
    Config(String),
    /// No session with the peer right now.
    #[error("no session with runtime {0}: the link is down (wait for NetEvent::Up, or PeerHandle::up)")]
    NotConnected(String),
    /// The network was shut down.
    #[error("the federation network was shut down")]
    ShutDown,
}

/// What every task of a network shares.
pub(crate) struct Shared {
    identity: LocalIdentity,
    cfg: NetConfig,
    table: parking_lot::Mutex<PeerTable>,
    limiter: parking_lot::Mutex<HandshakeLimiter>,
    peers: HashMap<RuntimeId, Arc<link::PeerSlot>>,
    events: Events,
    shutdown: watch::Receiver<bool>,
    stats: Arc<NetStats>,
    next_conn: core::sync::atomic::AtomicU64,
}

impl Shared {
    fn local(&self) -> RuntimeId {
        self.identity.runtime
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
    }

    /// Sends an event, waiting while the channel is full unless the network shuts down
    /// (then it is dropped if there is no room).
    async fn emit(&self, ev: NetEvent) {
        let ev = match self.events.inline(&ev) {
            Some(inline) => match inline.offer(ev) {
                Some(ev) => ev,
                None => return,
            },
            None => ev,
        };
        let Some(events) = self.events.sender(&ev) else { return };
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            let _ = events.try_send(ev);
            return;
        }
        tokio::select! {
            _ = events.send(ev) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// Where events go: one channel for all peers, or one per peer (no hop through a
/// dispatcher between a peer's link and whoever handles its events), each possibly offered
/// first to an [`InlineEvents`] on the link's own task.
enum Events {
    One(mpsc::Sender<NetEvent>),
    PerPeer(HashMap<RuntimeId, (mpsc::Sender<NetEvent>, Option<SharedInline>)>),
}

type SharedInline = Arc<dyn InlineEvents>;

impl Events {
    fn sender(&self, ev: &NetEvent) -> Option<&mpsc::Sender<NetEvent>> {
        match self {
            Events::One(tx) => Some(tx),
            Events::PerPeer(map) => map.get(ev.peer()).map(|(tx, _)| tx),
        }
    }

    fn inline(&self, ev: &NetEvent) -> Option<&SharedInline> {
        match self {
            Events::One(_) => None,
            Events::PerPeer(map) => map.get(ev.peer()).and_then(|(_, inline)| inline.as_ref()),
        }
    }
}

/// Handles a peer's events on the task of its link, before they are queued: an event
/// handled there costs no hop to another task (the latency of a round trip between agents
/// of two runtimes is mostly such hops). See [`Network::start_per_peer_inline`].
///
/// [`Self::offer`] runs on the link's I/O task, outside every lock of the network, once
/// per event and in the order the session produced them: it must not block or wait (the
/// link reads and writes nothing meanwhile). It may call [`PeerHandle::with_session`].
pub trait InlineEvents: Send + Sync {
    /// Handles `event` now and returns `None`, or returns it to be queued on the peer's
    /// event channel. An implementation that queues an event must queue every later one
    /// too until its receiver has handled the queued ones, if their order matters to it.
    fn offer(&self, event: NetEvent) -> Option<NetEvent>;
}

impl NetEvent {
    /// The peer the event is about.
    #[must_use]
    pub fn peer(&self) -> &RuntimeId {
        match self {
            NetEvent::Up { peer } | NetEvent::Down { peer, .. } | NetEvent::Session { peer, .. } => peer,
        }
    }
}

/// A running federation network: listener, dialers, links.
pub struct Network {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("local", &self.shared.local().short())
            .field("local_addr", &self.local_addr)
            .field("peers", &self.shared.peers.len())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Opens the listener (if configured), then starts the accept loop and one dialer per
    /// peer that has an endpoint. Returns the network and its event channel.
    pub async fn start(
        identity: IdentityKey,
        local: RuntimeId,
        peers: Vec<PeerConfig>,
        cfg: NetConfig,
    ) -> Result<(Network, mpsc::Receiver<NetEvent>), NetError> {
        let (events, rx) = mpsc::channel(cfg.event_capacity.max(1));
        let net = Self::start_with(identity, local, peers, cfg, Events::One(events)).await?;
        Ok((net, rx))
    }

    /// [`Network::start`] with one event channel per peer (each of capacity
    /// `event_capacity`), so each peer's events can be handled by a task of its own
    /// without a dispatcher in between.
    pub async fn start_per_peer(
        identity: IdentityKey,
        local: RuntimeId,
        peers: Vec<PeerConfig>,
        cfg: NetConfig,
    ) -> Result<(Network, HashMap<RuntimeId, mpsc::Receiver<NetEvent>>), NetError> {
        Self::start_per_peer_inline(identity, local, peers, cfg, HashMap::new()).await
    }

    /// [`Network::start_per_peer`], each peer's events offered first to its entry of
    /// `inline` (if it has one) on the link's own task; only those it returns are queued.
    pub async fn start_per_peer_inline(
        identity: IdentityKey,
        local: RuntimeId,
        peers: Vec<PeerConfig>,
        cfg: NetConfig,
        mut inline: HashMap<RuntimeId, Arc<dyn InlineEvents>>,
    ) -> Result<(Network, HashMap<RuntimeId, mpsc::Receiver<NetEvent>>), NetError> {
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for p in &peers {
            let (tx, rx) = mpsc::channel(cfg.event_capacity.max(1));
            senders.insert(p.runtime, (tx, inline.remove(&p.runtime)));
            receivers.insert(p.runtime, rx);
        }
        let net = Self::start_with(identity, local, peers, cfg, Events::PerPeer(senders)).await?;
        Ok((net, receivers))
    }

    async fn start_with(
        identity: IdentityKey,
        local: RuntimeId,
        peers: Vec<PeerConfig>,
        cfg: NetConfig,
        events: Events,
    ) -> Result<Network, NetError> {
        cfg.validate()?;
        let mut table = PeerTable::new();
        let mut slots = HashMap::new();
        for p in &peers {
            if p.runtime == local {
                return Err(NetError::Config(format!("runtime {} is configured as its own peer", local.short())));
            }
            if slots.contains_key(&p.runtime) {
                return Err(NetError::Config(format!("runtime {} is configured twice", p.runtime.short())));
            }
            table.pin(p.runtime, p.key);
            slots.insert(p.runtime, Arc::new(link::PeerSlot::new(local, p)));
        }
        for (runtime, ts) in &cfg.handshake_timestamps {
            table.set_greatest_timestamp(runtime, *ts);
        }
        let listener = match cfg.listen {
            Some(addr) => {
                Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?)
            }
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let now = std::time::Instant::now();
        let limiter = HandshakeLimiter::new(
            cfg.handshakes_per_second_per_source,
            cfg.handshakes_per_second,
            cfg.max_tracked_sources,
            now,
        );
        let shared = Arc::new(Shared {
            identity: LocalIdentity { runtime: local, key: identity },
            table: parking_lot::Mutex::new(table),
            limiter: parking_lot::Mutex::new(limiter),
            peers: slots,
            events,
            shutdown: shutdown_rx,
            stats: Arc::new(NetStats::default()),
            next_conn: core::sync::atomic::AtomicU64::new(1),
            cfg,
        });
        let mut tasks = JoinSet::new();
        if let Some(listener) = listener {
            tasks.spawn(conn::accept_loop(shared.clone(), listener));
        }
        for slot in shared.peers.values() {
            if slot.endpoint.is_some() {
                tasks.spawn(conn::dialer(shared.clone(), slot.clone()));
            }
        }
        Ok(Network { shared, local_addr, tasks, shutdown })
    }

    /// The listener's address (with the port the system chose for port 0).
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// This runtime's id.
    #[must_use]
    pub fn local_runtime(&self) -> RuntimeId {
        self.shared.local()
    }

    /// A handle on the link with a configured peer.
    #[must_use]
    pub fn peer(&self, runtime: &RuntimeId) -> Option<PeerHandle> {
        let slot = self.shared.peers.get(runtime)?.clone();
        Some(PeerHandle { slot, shutdown: self.shared.shutdown.clone() })
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    /// The greatest handshake timestamp accepted from each peer (persist them and give
    /// them back in [`NetConfig::handshake_timestamps`] to keep replay protection across
    /// restarts).
    #[must_use]
    pub fn handshake_timestamps(&self) -> Vec<(RuntimeId, Timestamp)> {
        let table = self.shared.table.lock();
        let mut out: Vec<_> =
            self.shared.peers.keys().filter_map(|p| table.greatest_timestamp(p).map(|ts| (*p, ts))).collect();
        out.sort();
        out
    }

    /// A cheap handle that reads the greatest handshake timestamps later (for whoever
    /// persists them while the network runs).
    pub(crate) fn timestamps(&self) -> TimestampView {
        TimestampView(Arc::clone(&self.shared))
    }

    /// Raises the greatest handshake timestamp accepted from `runtime` to `ts` (never
    /// lowers it). Returns whether `runtime` is a configured peer.
    pub fn seed_handshake_timestamp(&self, runtime: &RuntimeId, ts: Timestamp) -> bool {
        let mut table = self.shared.table.lock();
        if table.key(runtime).is_none() {
            return false;
        }
        if table.greatest_timestamp(runtime).is_none_or(|g| g < ts) {
            table.set_greatest_timestamp(runtime, ts);
        }
        true
    }

    /// Stops the network: every session is closed with a Close message, the listener and
    /// the dialers stop, every task ends. Bounded by [`NetConfig::shutdown_timeout`]:
    /// tasks still running then are aborted.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let deadline = self.shared.cfg.shutdown_timeout;
        let join = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, join).await.is_err() {
            tracing::debug!("federation network: tasks still running at the shutdown deadline, aborting them");
            self.tasks.shutdown().await;
        }
    }
}

impl Drop for Network {
    /// Dropping a network without [`Network::shutdown`] signals every task to stop and
    /// aborts them (no Close is sent).
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Reads the greatest handshake timestamp accepted from a peer (see
/// [`Network::handshake_timestamps`]).
#[derive(Clone)]
pub(crate) struct TimestampView(Arc<Shared>);

impl TimestampView {
    /// The greatest handshake timestamp accepted from `runtime`, if any.
    pub(crate) fn greatest(&self, runtime: &RuntimeId) -> Option<Timestamp> {
        self.0.table.lock().greatest_timestamp(runtime)
    }
}

/// A handle on the link with one peer; cheap to clone.
#[derive(Clone)]
pub struct PeerHandle {
    slot: Arc<link::PeerSlot>,
    shutdown: watch::Receiver<bool>,
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerHandle").field("peer", &self.slot.runtime.short()).field("up", &self.is_up()).finish()
    }
}

impl PeerHandle {
    /// The peer.
    #[must_use]
    pub fn runtime(&self) -> RuntimeId {
        self.slot.runtime
    }

    /// Whether a session with the peer is established now.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.slot.is_up()
    }

    /// Runs `f` on the session, under the lock the link's I/O task shares, then wakes
    /// the task to send what the session has to send. Fails with
    /// [`NetError::NotConnected`] when no session is up. Keep `f` short (the I/O task
    /// waits for it), and do not call this handle from inside it (the lock is not
    /// reentrant).
    pub fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Result<R, NetError> {
        self.slot.with_session(f).ok_or_else(|| NetError::NotConnected(self.slot.runtime.short()))
    }

    /// Resolves once the bytes the session had to send (up to the last
    /// [`Self::with_session`]) are written to the socket, or the link is down, or the
    /// network shut down. For senders the session told it is full: retry after this.
    pub async fn writable(&self) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let notified = self.slot.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.slot.is_drained_or_down() || *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Resolves once a session with the peer is established (at once if one is);
    /// [`NetError::ShutDown`] if the network shuts down first.
    pub async fn up(&self) -> Result<(), NetError> {
        let mut up = self.slot.up.subscribe();
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return Err(NetError::ShutDown);
        }
        tokio::select! {
            r = up.wait_for(|u| *u) => r.map(|_| ()).map_err(|_| NetError::ShutDown),
            _ = shutdown.wait_for(|s| *s) => Err(NetError::ShutDown),
        }
    }

    /// The link's counters.
    #[must_use]
    pub fn stats(&self) -> PeerStats {
        self.slot.counters.snapshot()
    }
}
