//! Connections: the accept loop with its limits, the responder's and the initiator's
//! handshakes under a timeout, and the dialer of each peer with its backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::limits::{Backoff, RateLimited};
use super::link::{self, Completed, InstallError, Installed, PeerSlot};
use super::stats::NetStats;
use super::{HANDSHAKE_MAX_BODY, Shared, glue};
use crate::codec::{CodecError, Decoder, FrameKind, LinkFrame};
use crate::handshake::{HandshakeError, Timestamp};

/// Why a connection ended before it carried a session (for the operator's log).
#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Io(std::io::Error),
    Eof,
    Codec(CodecError),
    NotHandshake(FrameKind),
    RateLimited(RateLimited),
    Handshake(HandshakeError),
    Install(InstallError),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "connection failed during the handshake: {e}"),
            Failure::Eof => f.write_str("the other side closed the connection during the handshake"),
            Failure::Codec(e) => write!(f, "{e}"),
            Failure::NotHandshake(k) => write!(f, "first frame is {k:?}, not a handshake message"),
            Failure::RateLimited(RateLimited::PerSource) => f.write_str("handshake rate limit of the source reached"),
            Failure::RateLimited(RateLimited::Overall) => f.write_str("overall handshake rate limit reached"),
            Failure::RateLimited(RateLimited::TooManySources) => f.write_str("too many sources handshaking at once"),
            Failure::Handshake(e) => write!(f, "{e}"),
            Failure::Install(e) => write!(f, "{e}"),
        }
    }
}

type Ready = (TcpStream, Arc<PeerSlot>, Installed, Vec<u8>);

/// Reads one handshake frame (bounded body, header checked first). Returns it and the
/// bytes read after it.
async fn read_frame(shared: &Shared, stream: &mut TcpStream) -> Result<(LinkFrame, Vec<u8>), Failure> {
    let mut decoder = Decoder::new(HANDSHAKE_MAX_BODY.min(shared.cfg.max_frame_body));
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(Failure::Io)?;
        if n == 0 {
            return Err(Failure::Eof);
        }
        NetStats::add(&shared.stats.bytes_in, n as u64);
        let mut input = buf.get(..n).unwrap_or_default();
        match decoder.decode(&mut input) {
            Ok(Some(frame)) => return Ok((frame, input.to_vec())),
            Ok(None) => {}
            Err(e) => {
                NetStats::inc(&shared.stats.frames_refused);
                return Err(Failure::Codec(e));
            }
        }
    }
}

/// Installs a completed handshake, counting and reporting the outcome.
async fn install(
    shared: &Shared,
    slot: &PeerSlot,
    completed: Completed,
    initiator_is_lower: bool,
) -> Result<Installed, Failure> {
    match slot.install(shared, completed, initiator_is_lower, Instant::now()) {
        Ok(installed) => {
            NetStats::inc(&shared.stats.handshakes_ok);
            Ok(installed)
        }
        Err((e, events)) => {
            for ev in events {
                shared.emit(ev).await;
            }
            match &e {
                InstallError::Duplicate => NetStats::inc(&shared.stats.duplicate_links_refused),
                InstallError::Session(why) => {
                    // Not the peer's fault alone (lost state on one side): the operator
                    // must know, the dialer will keep trying.
                    tracing::warn!(peer = %slot.runtime.short(), reason = %why, "federation session refused");
                    NetStats::inc(&shared.stats.handshakes_failed);
                }
                _ => NetStats::inc(&shared.stats.handshakes_failed),
            }
            Err(Failure::Install(e))
        }
    }
}

/// The responder's handshake on an accepted connection.
async fn respond(
    shared: &Shared,
    stream: &mut TcpStream,
    source: SocketAddr,
) -> Result<(Arc<PeerSlot>, Installed, Vec<u8>), Failure> {
    let (frame, leftover) = read_frame(shared, stream).await?;
    if frame.kind != FrameKind::HandshakeInit {
        NetStats::inc(&shared.stats.handshakes_failed);
        return Err(Failure::NotHandshake(frame.kind));
    }
    // Rate limits before any Diffie-Hellman.
    let limited = shared.limiter.lock().check(source.ip(), Instant::now());
    if let Err(why) = limited {
        NetStats::inc(&shared.stats.handshakes_rate_limited);
        return Err(Failure::RateLimited(why));
    }
    let accepted = {
        let mut table = shared.table.lock();
        shared.cfg.entropy.with(|e| glue::accept(&shared.identity, &mut table, &frame, e))
    };
    let accepted = accepted.map_err(|e| {
        NetStats::inc(&shared.stats.handshakes_failed);
        Failure::Handshake(e)
    })?;
    let peer = accepted.peer();
    let Some(slot) = shared.peers.get(&peer).cloned() else {
        // The table and the slots hold the same peers; unreachable in practice.
        NetStats::inc(&shared.stats.handshakes_failed);
        return Err(Failure::Handshake(HandshakeError::UnknownPeer(peer.short())));
    };
    let installed = install(shared, &slot, Completed::Responder(Box::new(accepted)), peer < shared.local()).await?;
    Ok((slot, installed, leftover))
}

/// One inbound connection: handshake under its timeout, then the link.
async fn inbound(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    source: SocketAddr,
    _connection: OwnedSemaphorePermit,
    pending: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.clone();
    let outcome = tokio::select! {
        r = tokio::time::timeout(shared.cfg.handshake_timeout, respond(&shared, &mut stream, source)) => r,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    drop(pending);
    // Counted before the connection is dropped (at the end of this function).
    match outcome {
        Err(_) => {
            NetStats::inc(&shared.stats.handshakes_timed_out);
            tracing::debug!(%source, "federation handshake timed out");
        }
        Ok(Err(failure)) => tracing::debug!(%source, reason = %failure, "federation connection refused"),
        Ok(Ok((slot, installed, leftover))) => {
            tracing::debug!(%source, peer = %slot.runtime.short(), "federation link up (accepted)");
            link::run(&shared, &slot, stream, installed, leftover).await;
        }
    }
}

/// Accepts connections until shutdown, within the connection and pending-handshake
/// limits; then waits for its connections to end.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let pending = Arc::new(Semaphore::new(shared.cfg.max_pending_handshakes));
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, source) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: let the system breathe.
                tracing::warn!(error = %e, "federation listener: accept failed");
                tokio::select! {
                    () = tokio::time::sleep(core::time::Duration::from_millis(50)) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                continue;
            }
        };
        let Ok(connection) = connections.clone().try_acquire_owned() else {
            NetStats::inc(&shared.stats.connections_refused);
            continue;
        };
        let Ok(handshake) = pending.clone().try_acquire_owned() else {
            NetStats::inc(&shared.stats.connections_refused);
            continue;
        };
        NetStats::inc(&shared.stats.connections_accepted);
        tasks.spawn(inbound(shared.clone(), stream, source, connection, handshake));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// The initiator's handshake with `slot`'s peer.
async fn dial(shared: &Shared, slot: &Arc<PeerSlot>, endpoint: &str) -> Result<Ready, Failure> {
    let mut stream = TcpStream::connect(endpoint).await.map_err(Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (ts, received) = slot.next_dial(Timestamp::from_unix(wall));
    let (initiator, hs1) = shared
        .cfg
        .entropy
        .with(|e| glue::start(&shared.identity, slot.runtime, slot.key, received, ts, e))
        .map_err(Failure::Handshake)?;
    stream.write_all(&hs1).await.map_err(Failure::Io)?;
    NetStats::add(&shared.stats.bytes_out, hs1.len() as u64);
    let (frame, leftover) = read_frame(shared, &mut stream).await?;
    let est = glue::complete(initiator, &frame).map_err(|e| {
        NetStats::inc(&shared.stats.handshakes_failed);
        Failure::Handshake(e)
    })?;
    let lower = shared.local() < slot.runtime;
    let installed = install(shared, slot, Completed::Initiator { est: Box::new(est), received }, lower).await?;
    Ok((stream, slot.clone(), installed, leftover))
}

/// Dials `slot`'s peer whenever the pair has no session: at once the first time, then
/// with backoff (reset once a session was established).
pub(super) async fn dialer(shared: Arc<Shared>, slot: Arc<PeerSlot>) {
    let Some(endpoint) = slot.endpoint.clone() else { return };
    let mut backoff = Backoff::new(shared.cfg.dial_backoff_initial, shared.cfg.dial_backoff_max);
    let mut shutdown = shared.shutdown.clone();
    let mut up = slot.up.subscribe();
    let mut first = true;
    loop {
        tokio::select! {
            r = up.wait_for(|u| !*u) => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !first {
            let delay = shared.cfg.entropy.with(|e| backoff.next_delay(e));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if *up.borrow() {
                continue;
            }
        }
        first = false;
        let attempt = tokio::select! {
            r = tokio::time::timeout(shared.cfg.handshake_timeout, dial(&shared, &slot, &endpoint)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match attempt {
            Err(_) => {
                NetStats::inc(&shared.stats.handshakes_timed_out);
                tracing::debug!(peer = %slot.runtime.short(), %endpoint, "federation dial timed out");
            }
            Ok(Err(failure)) => {
                tracing::debug!(peer = %slot.runtime.short(), %endpoint, reason = %failure, "federation dial failed");
            }
            Ok(Ok((stream, slot, installed, leftover))) => {
                tracing::debug!(peer = %slot.runtime.short(), %endpoint, "federation link up (dialled)");
                backoff.reset();
                link::run(&shared, &slot, stream, installed, leftover).await;
            }
        }
    }
}
