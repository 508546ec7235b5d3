//! Counters of a [`super::Network`], as atomics a metrics exporter can read at any time.

use core::sync::atomic::{AtomicU64, Ordering};

/// Counters of a network (listener, dialers and links), updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct NetStats {
    pub(super) connections_accepted: AtomicU64,
    pub(super) connections_refused: AtomicU64,
    pub(super) handshakes_ok: AtomicU64,
    pub(super) handshakes_failed: AtomicU64,
    pub(super) handshakes_rate_limited: AtomicU64,
    pub(super) handshakes_timed_out: AtomicU64,
    pub(super) frames_refused: AtomicU64,
    pub(super) read_timeouts: AtomicU64,
    pub(super) write_timeouts: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) sessions_established: AtomicU64,
    pub(super) sessions_active: AtomicU64,
    pub(super) sessions_replaced: AtomicU64,
    pub(super) duplicate_links_refused: AtomicU64,
    pub(super) busy_polls: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStatsSnapshot {
    /// Inbound connections taken by the listener.
    pub connections_accepted: u64,
    /// Inbound connections closed at once: the connection or pending-handshake limit.
    pub connections_refused: u64,
    /// Handshakes completed (both roles).
    pub handshakes_ok: u64,
    /// Handshakes that failed: unknown runtime, key mismatch, replay, authentication,
    /// malformed message, or a frame of another kind first.
    pub handshakes_failed: u64,
    /// Handshake messages refused by the rate limits, before any Diffie-Hellman.
    pub handshakes_rate_limited: u64,
    /// Connections dropped because the handshake did not complete in time.
    pub handshakes_timed_out: u64,
    /// Connections dropped for a frame header that is not a link frame's or announces a
    /// body above the limit (before or after the handshake).
    pub frames_refused: u64,
    /// Established connections dropped because a frame did not arrive whole in time.
    pub read_timeouts: u64,
    /// Connections dropped because a write made no progress in time.
    pub write_timeouts: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Sessions established.
    pub sessions_established: u64,
    /// Sessions up now.
    pub sessions_active: u64,
    /// Sessions replaced by a newer connection with the same peer.
    pub sessions_replaced: u64,
    /// New connections closed because the pair already had its link (simultaneous dials).
    pub duplicate_links_refused: u64,
    /// Times a link's task went round without parking, polling its socket while
    /// [`super::NetConfig::busy_poll`] lasted after its last read or write.
    pub busy_polls: u64,
}

impl NetStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    pub(super) fn dec(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            handshakes_ok: get(&self.handshakes_ok),
            handshakes_failed: get(&self.handshakes_failed),
            handshakes_rate_limited: get(&self.handshakes_rate_limited),
            handshakes_timed_out: get(&self.handshakes_timed_out),
            frames_refused: get(&self.frames_refused),
            read_timeouts: get(&self.read_timeouts),
            write_timeouts: get(&self.write_timeouts),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            sessions_established: get(&self.sessions_established),
            sessions_active: get(&self.sessions_active),
            sessions_replaced: get(&self.sessions_replaced),
            duplicate_links_refused: get(&self.duplicate_links_refused),
            busy_polls: get(&self.busy_polls),
        }
    }
}

/// Counters of the link with one peer.
#[derive(Debug, Default)]
pub(super) struct PeerCounters {
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) sessions: AtomicU64,
}

/// Counters of the link with one peer, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Bytes read from this peer's connections once authenticated.
    pub bytes_in: u64,
    /// Bytes written to this peer's connections once authenticated.
    pub bytes_out: u64,
    /// Sessions established with this peer.
    pub sessions: u64,
}

impl PeerCounters {
    pub(super) fn snapshot(&self) -> PeerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeerStats { bytes_in: get(&self.bytes_in), bytes_out: get(&self.bytes_out), sessions: get(&self.sessions) }
    }
}
