//! The tokio transport of pymfp compat peers (feature `compat-net`): plain TCP, raw `MFP1`
//! envelopes back to back, one shared chain per peer as both the tx and the rx chain of
//! every agreed channel, attached to an [`mfp_runtime::Runtime`] as the [`Transport`] of
//! those peers (native peers of the same runtime may have the federation's, feature
//! `runtime`).
//!
//! **Unauthenticated and unsafe** (see [`crate::compat`] and `docs/interop.md`): a warning
//! is logged for every compat peer at start (target `mfp::federation::compat`), and
//! [`CompatStats`] counts what the peers sent and what was refused.
//!
//! - **Outbound**: one task per peer keeps one connection to the peer's `start_federation`
//!   listener, reconnecting with backoff (pymfp's 0.1 s doubling to 30 s). The runtime may
//!   seal a message only while that connection is up ([`Transport::reserve`] says
//!   [`TransportError::Down`] otherwise, so a send fails or waits *before* the shared chain
//!   advances). The connection is renewed after `idle_renew` without traffic, before
//!   pymfp's listener drops it (its `read_timeout`, 30 s), and when the peer closes it. A
//!   message whose write fails is lost, the two chains have diverged, and it is counted
//!   (`messages_lost`) and logged: pymfp has no acknowledgement or recovery.
//! - **Inbound**: a listener (optional) takes connections from pymfp runtimes, decodes them
//!   with an [`EnvelopeStream`] (headers checked against the limits before any body byte is
//!   buffered), finds the peer by the envelope's `sender_runtime` (an unauthenticated
//!   claim: anyone can write it) and hands each message to
//!   [`RemoteHandle::ingest_async`], in order. A bad header closes the connection.
//!
//! A runtime has one transport: a runtime with compat peers has no native federation
//! peers in the same process (yet).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mfp_core::envelope::{EnvelopeHeader, EnvelopeLimits};
use mfp_core::{ChannelId, RuntimeId};
use mfp_runtime::Runtime;
use mfp_runtime::remote::{
    Chains, Ingested, OutboundMessage, OutboundSlot, ReadyFuture, RemoteEnd, RemoteHandle, SharedChain, Transport,
    TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::compat::{Bootstrap, CompatError, CompatPeer, EnvelopeStream, shared_chain};

/// Limits and timers of the compat transport.
#[derive(Debug, Clone)]
pub struct CompatNetConfig {
    /// Where to listen for pymfp runtimes' connections (`None`: send only).
    pub listen: Option<SocketAddr>,
    /// Header limits of inbound envelopes (depth, payload length).
    pub limits: EnvelopeLimits,
    /// Inbound connections at once; more are closed at once.
    pub max_connections: usize,
    /// An inbound connection silent this long is closed.
    pub read_timeout: Duration,
    /// Time allowed to connect to a peer.
    pub connect_timeout: Duration,
    /// Time allowed to write one message.
    pub write_timeout: Duration,
    /// An outbound connection idle this long is replaced by a new one (below pymfp's
    /// listener `read_timeout`, 30 s by default).
    pub idle_renew: Duration,
    /// First reconnect delay (doubling).
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Messages queued per peer; a full queue makes the transport busy.
    pub queue: usize,
}

impl Default for CompatNetConfig {
    fn default() -> Self {
        Self {
            listen: None,
            limits: EnvelopeLimits::default(),
            max_connections: 64,
            read_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            idle_renew: Duration::from_secs(20),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            queue: 1024,
        }
    }
}

/// Errors of starting the compat transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompatNetError {
    /// A peer's configuration is unusable.
    #[error(transparent)]
    Config(#[from] CompatError),
    /// Two peers share the 16 bytes an envelope names its sender by.
    #[error(
        "pymfp peers {0} and {1} have runtime ids starting with the same 16 bytes: their envelopes cannot be told apart"
    )]
    Ambiguous(String, String),
    /// The runtime refused (a transport already attached, or a channel could not be opened).
    #[error("runtime: {0}")]
    Runtime(#[from] mfp_runtime::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr} for pymfp peers: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters of the compat transport (Prometheus text with [`CompatStatsSnapshot::prometheus`]).
#[derive(Debug, Default)]
pub struct CompatStats {
    peers: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    stream_errors: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    refused_frame: AtomicU64,
    refused_decode: AtomicU64,
    refused_step: AtomicU64,
    refused_other: AtomicU64,
    unknown_sender: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
}

/// A copy of [`CompatStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompatStatsSnapshot {
    /// Compat (unauthenticated) peers configured.
    pub peers: u64,
    /// Inbound connections accepted.
    pub connections_accepted: u64,
    /// Inbound connections closed at once (over `max_connections`).
    pub connections_refused: u64,
    /// Inbound connections closed for a header over the limits or breaking the protocol.
    pub stream_errors: u64,
    /// Messages from peers delivered.
    pub delivered: u64,
    /// Messages from peers at a step already passed (replays), dropped.
    pub duplicates: u64,
    /// Refused: the frame did not validate.
    pub refused_frame: u64,
    /// Refused: the payload did not decrypt.
    pub refused_decode: u64,
    /// Refused: a step ahead of the chain (a lost message, or both sides sent at once).
    pub refused_step: u64,
    /// Refused for another reason (unknown channel, depth, limits, quarantine, mailbox).
    pub refused_other: u64,
    /// Envelopes naming a sender that is no configured peer.
    pub unknown_sender: u64,
    /// Messages written to peers.
    pub sent: u64,
    /// Sealed messages that could not be written (the chains have diverged).
    pub lost: u64,
    /// Outbound connections made.
    pub connects: u64,
    /// Outbound connection attempts that failed.
    pub connect_failures: u64,
}

impl CompatStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> CompatStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CompatStatsSnapshot {
            peers: g(&self.peers),
            connections_accepted: g(&self.connections_accepted),
            connections_refused: g(&self.connections_refused),
            stream_errors: g(&self.stream_errors),
            delivered: g(&self.delivered),
            duplicates: g(&self.duplicates),
            refused_frame: g(&self.refused_frame),
            refused_decode: g(&self.refused_decode),
            refused_step: g(&self.refused_step),
            refused_other: g(&self.refused_other),
            unknown_sender: g(&self.unknown_sender),
            sent: g(&self.sent),
            lost: g(&self.lost),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
        }
    }
}

impl CompatStatsSnapshot {
    /// Refused messages, all reasons (unknown senders included).
    #[must_use]
    pub const fn refused(&self) -> u64 {
        self.refused_frame + self.refused_decode + self.refused_step + self.refused_other + self.unknown_sender
    }

    /// Prometheus text exposition. `mfp_compat_peers` is non-zero whenever unauthenticated
    /// peers are configured: alert on it if they should not be.
    #[must_use]
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        };
        line("mfp_compat_peers", "gauge", "pymfp compat peers configured (unauthenticated).", self.peers.to_string());
        line("mfp_compat_messages_sent_total", "counter", "Messages written to pymfp peers.", self.sent.to_string());
        line(
            "mfp_compat_messages_lost_total",
            "counter",
            "Sealed messages to pymfp peers that could not be written.",
            self.lost.to_string(),
        );
        line(
            "mfp_compat_messages_delivered_total",
            "counter",
            "Messages from pymfp peers delivered.",
            self.delivered.to_string(),
        );
        line(
            "mfp_compat_messages_duplicate_total",
            "counter",
            "Messages from pymfp peers at a passed step, dropped.",
            self.duplicates.to_string(),
        );
        out.push_str("# HELP mfp_compat_messages_refused_total Messages from pymfp peers refused.\n");
        out.push_str("# TYPE mfp_compat_messages_refused_total counter\n");
        for (reason, v) in [
            ("frame", self.refused_frame),
            ("decode", self.refused_decode),
            ("step", self.refused_step),
            ("other", self.refused_other),
            ("unknown_sender", self.unknown_sender),
        ] {
            out.push_str(&format!("mfp_compat_messages_refused_total{{reason=\"{reason}\"}} {v}\n"));
        }
        let mut line = |name: &str, help: &str, value: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
        };
        line("mfp_compat_stream_errors_total", "Inbound connections closed for a bad header.", self.stream_errors);
        line("mfp_compat_connections_accepted_total", "Inbound connections accepted.", self.connections_accepted);
        line("mfp_compat_connections_refused_total", "Inbound connections over the limit.", self.connections_refused);
        line("mfp_compat_connects_total", "Outbound connections made.", self.connects);
        line("mfp_compat_connect_failures_total", "Outbound connection attempts failed.", self.connect_failures);
        out
    }
}

/// One peer's outbound side.
struct PeerOut {
    runtime: RuntimeId,
    name: String,
    tx: mpsc::Sender<OutboundMessage>,
    up: AtomicBool,
    /// Bumped whenever the peer may have room again (connected, or a message written).
    changed: watch::Sender<u64>,
}

struct Shared {
    peers: Vec<Arc<PeerOut>>,
    stats: Arc<CompatStats>,
    /// Bumped after every counted event (an inbound message's outcome, a stream error, a
    /// message written or lost).
    counted: watch::Sender<u64>,
}

impl Shared {
    fn peer(&self, id: &RuntimeId) -> Option<&Arc<PeerOut>> {
        self.peers.iter().find(|p| p.runtime == *id)
    }

    fn by_sender_field(&self, field: &[u8; 16]) -> Option<&Arc<PeerOut>> {
        self.peers.iter().find(|p| p.runtime.sender_field() == *field)
    }
}

struct CompatTransport(Arc<Shared>);

struct Slot(mpsc::OwnedPermit<OutboundMessage>);

impl OutboundSlot for Slot {
    fn send(self: Box<Self>, message: OutboundMessage) {
        self.0.send(message);
    }
}

impl Transport for CompatTransport {
    fn reserve(&self, peer: &RuntimeId, _len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        let p = self.0.peer(peer).ok_or(TransportError::UnknownPeer)?;
        if !p.up.load(Ordering::Acquire) {
            return Err(TransportError::Down(format!("not connected to pymfp peer {}", p.name)));
        }
        match p.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Box::new(Slot(permit))),
            Err(mpsc::error::TrySendError::Full(_)) => Err(TransportError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(TransportError::Down(format!("the transport to pymfp peer {} stopped", p.name)))
            }
        }
    }

    fn ready(&self, peer: &RuntimeId) -> ReadyFuture {
        let Some(p) = self.0.peer(peer).cloned() else { return Box::pin(std::future::pending()) };
        let mut rx = p.changed.subscribe();
        Box::pin(async move {
            // Subscribed before looking, so a change after the look is not missed.
            if p.up.load(Ordering::Acquire) && p.tx.capacity() > 0 {
                return;
            }
            let _ = rx.changed().await;
        })
    }

    fn acknowledges(&self, _peer: &RuntimeId) -> bool {
        false
    }

    fn channel_closed(&self, peer: &RuntimeId, channel: &ChannelId) {
        // pymfp has no close message: its side of the channel stays open.
        if let Some(p) = self.0.peer(peer) {
            tracing::info!(target: "mfp::federation::compat", peer = %p.name, channel = %channel.short(),
                "channel closed here; pymfp peers are not told (pymfp 1.0.0 has no close message)");
        }
    }
}

/// The running compat transport of a runtime.
pub struct CompatNetwork {
    shared: Arc<Shared>,
    stats: Arc<CompatStats>,
    local_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl core::fmt::Debug for CompatNetwork {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompatNetwork").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl CompatNetwork {
    /// Starts the compat transport of `runtime` for `peers`: derives each peer's shared
    /// chain, opens the agreed channels on it, binds the listener, attaches itself as the
    /// runtime's transport for these peers and starts one outbound task per peer. Must run
    /// inside a tokio runtime. If opening a channel fails, the transport stays attached to
    /// the runtime for these peers (a peer has one) but carries nothing: start again with
    /// a new runtime.
    pub async fn start(
        runtime: &Runtime,
        peers: Vec<CompatPeer>,
        config: CompatNetConfig,
    ) -> Result<Self, CompatNetError> {
        let local = runtime.identity();
        for (i, p) in peers.iter().enumerate() {
            if let Some(q) = peers.iter().skip(i + 1).find(|q| q.runtime().sender_field() == p.runtime().sender_field())
            {
                return Err(CompatNetError::Ambiguous(p.name().to_string(), q.name().to_string()));
            }
        }
        let chains: Vec<SharedChain> =
            peers.iter().map(|p| shared_chain(&local, p).map(SharedChain::new)).collect::<Result<_, _>>()?;
        let listener = match config.listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|source| CompatNetError::Listen { addr, source })?)
            }
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let stats = Arc::new(CompatStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut outs = Vec::with_capacity(peers.len());
        let mut receivers = Vec::with_capacity(peers.len());
        for p in &peers {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            let (changed, _) = watch::channel(0);
            outs.push(Arc::new(PeerOut {
                runtime: *p.runtime(),
                name: p.name().to_string(),
                tx,
                up: AtomicBool::new(false),
                changed,
            }));
            receivers.push(rx);
        }
        let shared = Arc::new(Shared { peers: outs, stats: Arc::clone(&stats), counted: watch::channel(0).0 });
        // For these peers only: native peers may have the federation's transport.
        let ids: Vec<RuntimeId> = shared.peers.iter().map(|p| p.runtime).collect();
        runtime.attach_transport_for(&ids, Arc::new(CompatTransport(Arc::clone(&shared))))?;
        let handle = runtime.remote_handle();
        for (p, chain) in peers.iter().zip(&chains) {
            let bootstrap = match p.bootstrap() {
                Bootstrap::Deterministic => "deterministic (a seed anyone who knows both runtime names can compute)",
                Bootstrap::Ceremonial { .. } => "ceremonial",
            };
            tracing::warn!(target: "mfp::federation::compat", peer = %p.name(), endpoint = %p.endpoint(),
                channels = p.channels().len(), bootstrap,
                "pymfp compat peer: UNAUTHENTICATED (anyone who can reach the sockets can inject messages) and \
                 unsafe when both sides send at once (one chain for both directions reuses AES-GCM keys and nonces); \
                 see docs/interop.md");
            for c in p.channels() {
                handle
                    .establish_async(
                        c.local_agent,
                        RemoteEnd::new(*p.runtime(), c.remote_agent),
                        c.id,
                        c.depth,
                        Chains::Shared(chain.clone()),
                    )
                    .await?;
            }
            CompatStats::inc(&stats.peers);
        }
        let mut tasks = JoinSet::new();
        for ((p, out), rx) in peers.iter().zip(&shared.peers).zip(receivers) {
            tasks.spawn(outbound(
                p.endpoint().to_string(),
                Arc::clone(out),
                shared.counted.clone(),
                rx,
                config.clone(),
                Arc::clone(&stats),
                stop_rx.clone(),
            ));
        }
        if let Some(l) = listener {
            tasks.spawn(listen(l, Arc::clone(&shared), handle, config, stop_rx));
        }
        Ok(Self { shared, stats, local_addr, stop, tasks })
    }

    /// The listener's address (`None` without a listener).
    #[must_use]
    pub const fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CompatStatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits until the counters satisfy `pred` (checked again after every counted event).
    pub async fn wait_stats(&self, pred: impl Fn(&CompatStatsSnapshot) -> bool) {
        let mut rx = self.shared.counted.subscribe();
        while !pred(&self.stats.snapshot()) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the outbound connection to `peer` is up (a send may be sealed now).
    #[must_use]
    pub fn is_up(&self, peer: &RuntimeId) -> bool {
        self.shared.peer(peer).is_some_and(|p| p.up.load(Ordering::Acquire))
    }

    /// Waits until the outbound connection to `peer` is up (`false`: not a compat peer, or
    /// the transport stopped).
    pub async fn wait_up(&self, peer: &RuntimeId) -> bool {
        let Some(p) = self.shared.peer(peer) else { return false };
        let mut rx = p.changed.subscribe();
        loop {
            if p.up.load(Ordering::Acquire) {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Stops every task and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One peer's outbound task: connect (with backoff), write queued messages, renew the
/// connection when idle or closed by the peer.
async fn outbound(
    endpoint: String,
    peer: Arc<PeerOut>,
    counted: watch::Sender<u64>,
    mut rx: mpsc::Receiver<OutboundMessage>,
    cfg: CompatNetConfig,
    stats: Arc<CompatStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = cfg.backoff_base;
    loop {
        let connect = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(endpoint.as_str()));
        let mut sock = tokio::select! {
            r = connect => match r {
                Ok(Ok(s)) => s,
                _ => {
                    CompatStats::inc(&stats.connect_failures);
                    tracing::debug!(target: "mfp::federation::compat", peer = %peer.name, %endpoint, "connect failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(cfg.backoff_max);
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        backoff = cfg.backoff_base;
        CompatStats::inc(&stats.connects);
        peer.up.store(true, Ordering::Release);
        peer.changed.send_modify(|v| *v = v.wrapping_add(1));
        let mut probe = [0u8; 64];
        let mut idle = Box::pin(tokio::time::sleep(cfg.idle_renew));
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    let written = tokio::time::timeout(cfg.write_timeout, sock.write_all(&msg.wire)).await;
                    if matches!(written, Ok(Ok(()))) {
                        CompatStats::inc(&stats.sent);
                        counted.send_modify(|v| *v = v.wrapping_add(1));
                        peer.changed.send_modify(|v| *v = v.wrapping_add(1));
                        idle.as_mut().reset(tokio::time::Instant::now() + cfg.idle_renew);
                    } else {
                        CompatStats::inc(&stats.lost);
                        counted.send_modify(|v| *v = v.wrapping_add(1));
                        tracing::error!(target: "mfp::federation::compat", peer = %peer.name,
                            channel = %msg.channel.short(), step = msg.step,
                            "a sealed message to a pymfp peer could not be written: the shared chains have diverged \
                             and every later message will be refused until both sides are reset (docs/interop.md)");
                        break;
                    }
                }
                // pymfp's listener never writes: a read returns only at EOF or an error.
                r = sock.read(&mut probe) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        break;
                    }
                }
                () = &mut idle => break,
                _ = stop.changed() => return,
            }
        }
        peer.up.store(false, Ordering::Release);
    }
}

/// The listener: one task per inbound connection, at most `max_connections`.
async fn listen(
    listener: TcpListener,
    shared: Arc<Shared>,
    handle: RemoteHandle,
    cfg: CompatNetConfig,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((sock, _)) = r else { continue };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    CompatStats::inc(&shared.stats.connections_refused);
                    drop(sock);
                    continue;
                };
                CompatStats::inc(&shared.stats.connections_accepted);
                let (shared, handle, cfg, stop) = (Arc::clone(&shared), handle.clone(), cfg.clone(), stop.clone());
                conns.spawn(async move {
                    inbound(sock, &shared, &handle, &cfg, stop).await;
                    drop(permit);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    conns.shutdown().await;
}

/// One inbound connection: envelopes decoded and ingested in order.
async fn inbound(
    mut sock: TcpStream,
    shared: &Shared,
    handle: &RemoteHandle,
    cfg: &CompatNetConfig,
    mut stop: watch::Receiver<bool>,
) {
    let stats = &shared.stats;
    let mut stream = EnvelopeStream::new(cfg.limits);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(cfg.read_timeout, sock.read(&mut buf)) => match r {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            },
            _ = stop.changed() => return,
        };
        // Messages before a bad header are still handed over, in order.
        let mut input = buf.get(..n).unwrap_or_default();
        loop {
            match stream.decode(&mut input) {
                Ok(Some(wire)) => {
                    ingest_one(shared, handle, &wire).await;
                    shared.counted.send_modify(|v| *v = v.wrapping_add(1));
                }
                Ok(None) => break,
                Err(e) => {
                    CompatStats::inc(&stats.stream_errors);
                    shared.counted.send_modify(|v| *v = v.wrapping_add(1));
                    tracing::debug!(target: "mfp::federation::compat", error = %e,
                        "closing a pymfp compat connection");
                    return;
                }
            }
        }
    }
}

/// Hands one wire message to the runtime and counts the outcome.
async fn ingest_one(shared: &Shared, handle: &RemoteHandle, wire: &[u8]) {
    let stats = &shared.stats;
    let header = EnvelopeHeader::parse(wire).ok();
    let Some(peer) = header.and_then(|h| shared.by_sender_field(&h.sender_runtime)) else {
        CompatStats::inc(&stats.unknown_sender);
        return;
    };
    match handle.ingest_async(&peer.runtime, wire).await {
        Ok(Ingested::Duplicate { .. }) => CompatStats::inc(&stats.duplicates),
        Ok(_) => CompatStats::inc(&stats.delivered),
        Err(mfp_runtime::Error::ShutDown) => {}
        Err(e) => {
            let counter = match e {
                mfp_runtime::Error::FrameValidation => &stats.refused_frame,
                mfp_runtime::Error::Decode => &stats.refused_decode,
                mfp_runtime::Error::StepMismatch { .. } => &stats.refused_step,
                _ => &stats.refused_other,
            };
            CompatStats::inc(counter);
            // Debug only: anyone can make an unauthenticated peer's messages fail; the
            // counters (and the runtime's audit events) are the signal.
            tracing::debug!(target: "mfp::federation::compat", peer = %peer.name, error = %e,
                "message from a pymfp peer refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_counter_once() {
        let stats = CompatStats::default();
        CompatStats::inc(&stats.peers);
        for _ in 0..3 {
            CompatStats::inc(&stats.refused_decode);
        }
        CompatStats::inc(&stats.unknown_sender);
        CompatStats::inc(&stats.lost);
        let s = stats.snapshot();
        assert_eq!((s.peers, s.refused_decode, s.refused(), s.lost), (1, 3, 4, 1));
        let text = s.prometheus();
        assert!(text.contains("\nmfp_compat_peers 1\n"), "{text}");
        assert!(text.contains("mfp_compat_messages_refused_total{reason=\"decode\"} 3\n"), "{text}");
        assert!(text.contains("mfp_compat_messages_refused_total{reason=\"unknown_sender\"} 1\n"), "{text}");
        assert!(text.contains("\nmfp_compat_messages_lost_total 1\n"), "{text}");
        // Every metric has one TYPE line, and every sample line belongs to a declared metric.
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let names: Vec<&str> = types.iter().filter_map(|t| t.split(' ').next()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names.len(), 11);
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            assert!(names.contains(&name), "{sample}");
        }
    }
}
