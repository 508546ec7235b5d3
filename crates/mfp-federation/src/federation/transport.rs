//! The runtime's transport ([`Transport`]: room for a send, the send, closed and restored
//! channels), DETECT on a channel and the recovery reports this side sends.

use std::sync::Arc;
use std::time::Duration;

use mfp_core::{ChannelId, RuntimeId};
use mfp_runtime::remote::{OutboundMessage, OutboundSlot, ReadyFuture, Transport, TransportError};
use tokio::sync::OwnedSemaphorePermit;

use super::{ChanTx, Peer, Shared};
use crate::recovery::{ANSWER_REQUESTED, ChainPoint, Recovery, RecoveryReport};

pub(super) struct FedTransport(pub(super) Arc<Shared>);

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
pub(super) fn send_report(shared: &Shared, peer: &Peer, channel: ChannelId, flags: u8) {
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
