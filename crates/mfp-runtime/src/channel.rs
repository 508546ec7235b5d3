//! Channel records, the idempotency window and the per-sender rate window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfp_core::{AgentId, ChannelId, State};
use parking_lot::Mutex;

use crate::agent::AgentRecord;
use crate::remote::RemoteLink;
use crate::types::{ChannelStatus, Receipt};

/// A channel. Between two local agents, `a` and the local `far` end are in canonical
/// (sorted id) order; a cross-runtime channel has its local agent in `a`.
pub(crate) struct ChannelRecord {
    pub(crate) id: ChannelId,
    pub(crate) a: Arc<AgentRecord>,
    pub(crate) far: Far,
    pub(crate) depth: u16,
    pub(crate) inner: Mutex<ChannelInner>,
}

/// The other end of a channel.
pub(crate) enum Far {
    /// A local agent.
    Local(Arc<AgentRecord>),
    /// An agent of a peer runtime, with the channel's chains and outbound log.
    Remote(Box<RemoteLink>),
}

/// The end of a channel facing a given agent.
pub(crate) enum PeerRef<'a> {
    Local(&'a Arc<AgentRecord>),
    Remote(&'a RemoteLink),
}

impl PeerRef<'_> {
    /// The peer agent's id.
    pub(crate) fn id(&self) -> AgentId {
        match self {
            PeerRef::Local(r) => r.id,
            PeerRef::Remote(l) => l.end.agent,
        }
    }

    /// The peer agent's record, if it is local.
    pub(crate) fn local(&self) -> Option<&Arc<AgentRecord>> {
        match self {
            PeerRef::Local(r) => Some(r),
            PeerRef::Remote(_) => None,
        }
    }
}

/// The mutable part of a channel, guarded by its lock. The lock is held for the whole
/// pipeline of one message up to its commit, which gives per-channel ordering; with storage,
/// the commit is awaited outside it (the commit queue keeps the order).
pub(crate) struct ChannelInner {
    pub(crate) state: State,
    pub(crate) step: u64,
    pub(crate) status: ChannelStatus,
    pub(crate) validation_failures: u32,
    pub(crate) dedup: Option<Box<Dedup>>,
    /// Where this channel's leaf was last seen in the Sg tree (a hint; see
    /// `MerkleSg::update_hinted`).
    pub(crate) leaf_hint: usize,
    /// With storage: messages submitted and not yet settled (see `commit.rs`).
    pub(crate) commits: Option<Box<crate::commit::Commits>>,
}

impl ChannelInner {
    /// A channel's mutable part as it starts or is restored: no idempotency window yet, no
    /// Sg leaf hint. (A cross-runtime channel keeps its chains in its `RemoteLink`; its
    /// `state` stays zero and its `step` unused.)
    pub(crate) fn new(state: State, step: u64, status: ChannelStatus, validation_failures: u32) -> Mutex<Self> {
        Mutex::new(Self { state, step, status, validation_failures, dedup: None, leaf_hint: usize::MAX, commits: None })
    }
}

impl ChannelRecord {
    /// The other end, if `agent` (a local agent) is on this channel.
    pub(crate) fn peer_of(&self, agent: &AgentId) -> Option<PeerRef<'_>> {
        match &self.far {
            Far::Local(b) if self.a.id == *agent => Some(PeerRef::Local(b)),
            Far::Local(b) if b.id == *agent => Some(PeerRef::Local(&self.a)),
            Far::Remote(l) if self.a.id == *agent => Some(PeerRef::Remote(l)),
            _ => None,
        }
    }

    /// The local agents on this channel (one for a cross-runtime channel; a self-channel
    /// yields its agent twice).
    pub(crate) fn locals(&self) -> impl Iterator<Item = &Arc<AgentRecord>> {
        let b = match &self.far {
            Far::Local(b) => Some(b),
            Far::Remote(_) => None,
        };
        std::iter::once(&self.a).chain(b)
    }

    /// The remote part, for a cross-runtime channel.
    pub(crate) fn remote(&self) -> Option<&RemoteLink> {
        match &self.far {
            Far::Remote(l) => Some(l),
            Far::Local(_) => None,
        }
    }
}

/// One remembered idempotent send.
struct DedupEntry {
    receipt: Receipt,
    payload_digest: [u8; 32],
    at: Instant,
}

/// Idempotency keys seen on one channel: bounded in count and age.
#[derive(Default)]
pub(crate) struct Dedup {
    entries: HashMap<[u8; 32], DedupEntry>,
    order: VecDeque<[u8; 32]>,
}

/// Result of looking a key up.
pub(crate) enum DedupHit {
    Miss,
    Same(Receipt),
    Conflict,
}

impl Dedup {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some(k) = self.order.front() {
            let expired = self.entries.get(k).is_none_or(|e| now.duration_since(e.at) >= ttl);
            if !expired {
                break;
            }
            if let Some(k) = self.order.pop_front() {
                self.entries.remove(&k);
            }
        }
    }

    pub(crate) fn lookup(&mut self, key: &[u8; 32], digest: &[u8; 32], now: Instant, ttl: Duration) -> DedupHit {
        self.expire(now, ttl);
        match self.entries.get(key) {
            None => DedupHit::Miss,
            Some(e) if e.payload_digest == *digest => DedupHit::Same(e.receipt),
            Some(_) => DedupHit::Conflict,
        }
    }

    /// Forgets the entries whose receipt `gone` selects.
    pub(crate) fn forget(&mut self, gone: impl Fn(&Receipt) -> bool) {
        self.entries.retain(|_, e| !gone(&e.receipt));
        let entries = &self.entries;
        self.order.retain(|k| entries.contains_key(k));
    }

    pub(crate) fn record(&mut self, key: [u8; 32], digest: [u8; 32], receipt: Receipt, now: Instant, window: usize) {
        while self.order.len() >= window {
            if let Some(k) = self.order.pop_front() {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, DedupEntry { receipt, payload_digest: digest, at: now });
        self.order.push_back(key);
    }
}

/// Sliding one-second window of a sender's successful sends.
#[derive(Default)]
pub(crate) struct RateWindow {
    stamps: VecDeque<Instant>,
}

pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(1);

impl RateWindow {
    /// `None` if a send is allowed now, else how long until it would be.
    pub(crate) fn check(&mut self, now: Instant, max_rate: u32) -> Option<Duration> {
        if max_rate == 0 {
            return None;
        }
        while let Some(front) = self.stamps.front() {
            if now.duration_since(*front) >= RATE_WINDOW {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
        if self.stamps.len() >= max_rate as usize {
            let oldest = self.stamps.front().copied().unwrap_or(now);
            Some(RATE_WINDOW.saturating_sub(now.duration_since(oldest)))
        } else {
            None
        }
    }

    pub(crate) fn record(&mut self, now: Instant, max_rate: u32) {
        if max_rate == 0 {
            return;
        }
        while self.stamps.len() >= max_rate as usize {
            self.stamps.pop_front();
        }
        self.stamps.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CorrelationId;
    use mfp_core::MessageId;

    fn receipt(step: u64) -> Receipt {
        Receipt {
            message_id: MessageId::from_bytes([1; 16]),
            channel: ChannelId::from_bytes([2; 16]),
            step,
            correlation_id: CorrelationId::default(),
        }
    }

    #[test]
    fn dedup_hits_conflicts_and_expires() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(matches!(d.lookup(&[1; 32], &[9; 32], t0, ttl), DedupHit::Miss));
        d.record([1; 32], [9; 32], receipt(4), t0, 2);
        assert!(matches!(d.lookup(&[1; 32], &[9; 32], t0, ttl), DedupHit::Same(r) if r.step == 4));
        assert!(matches!(d.lookup(&[1; 32], &[8; 32], t0, ttl), DedupHit::Conflict));
        assert!(matches!(d.lookup(&[1; 32], &[9; 32], t0 + ttl, ttl), DedupHit::Miss));
        // Window bound.
        d.record([2; 32], [0; 32], receipt(1), t0, 2);
        d.record([3; 32], [0; 32], receipt(2), t0, 2);
        d.record([4; 32], [0; 32], receipt(3), t0, 2);
        assert!(matches!(d.lookup(&[2; 32], &[0; 32], t0, ttl), DedupHit::Miss));
        assert!(matches!(d.lookup(&[4; 32], &[0; 32], t0, ttl), DedupHit::Same(_)));
    }

    #[test]
    fn rate_window_allows_exactly_max_per_second() {
        let mut w = RateWindow::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(w.check(t0 + Duration::from_millis(i), 3).is_none());
            w.record(t0 + Duration::from_millis(i), 3);
        }
        let wait = w.check(t0 + Duration::from_millis(10), 3).unwrap();
        assert_eq!(wait, Duration::from_millis(990));
        assert!(w.check(t0 + Duration::from_millis(1000), 3).is_none());
        assert!(w.check(t0, 0).is_none());
    }
}
