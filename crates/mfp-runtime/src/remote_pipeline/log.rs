//! The outbound log of a cross-runtime channel: the peer's acknowledgements, the messages
//! not acknowledged yet (to send again), and the channels' positions.

use std::sync::Arc;

use mfp_core::{ChannelId, RuntimeId};

use crate::channel::ChannelRecord;
use crate::error::{Error, Result};
use crate::remote::{Acknowledged, OutboundMessage, RemotePosition};
use crate::runtime::Inner;
use crate::storage::StorageOp;

impl Inner {
    // ---- the outbound log -----------------------------------------------------------

    /// The peer acknowledged every message of `channel` below `next`.
    pub(crate) fn acknowledge(&self, channel: &ChannelId, next: u64) -> Result<Acknowledged> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        let sent = link.tx.lock().step;
        if next > sent {
            return Err(Error::StepMismatch { channel: *channel, expected: sent, got: next });
        }
        let mut trimmed = Acknowledged::default();
        {
            let mut log = link.log.lock();
            if next <= log.acked {
                return Ok(trimmed);
            }
            while log.entries.front().is_some_and(|m| m.step < next) {
                if let Some(m) = log.entries.pop_front() {
                    trimmed.messages += 1;
                    trimmed.bytes += m.wire.len();
                }
            }
            log.acked = next;
        }
        if !link.tx.is_shared() {
            drop(self.submit(vec![StorageOp::AckOutbound { channel: *channel, next }]));
        }
        Ok(trimmed)
    }

    /// Unacknowledged messages of `channel` from step `from` on.
    pub(crate) fn unacknowledged(&self, channel: &ChannelId, from: u64) -> Result<Vec<OutboundMessage>> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        let log = link.log.lock();
        Ok(log.entries.iter().filter(|m| m.step >= from).cloned().collect())
    }

    /// The position of one cross-runtime channel.
    pub(crate) fn position(&self, channel: &ChannelId) -> Result<RemotePosition> {
        let ch = self.channel(channel)?;
        Self::position_of(&ch).ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })
    }

    fn position_of(c: &ChannelRecord) -> Option<RemotePosition> {
        let link = c.remote()?;
        let status = c.inner.lock().status;
        let tx_next = link.tx.lock().step;
        let rx_next = link.rx.lock().step;
        let acked = link.log.lock().acked;
        let unconfirmed = link.unconfirmed.load(std::sync::atomic::Ordering::Acquire);
        Some(RemotePosition {
            channel: c.id,
            local_agent: c.a.id,
            remote: link.end,
            tx_next,
            rx_next,
            acked,
            status,
            unconfirmed,
        })
    }

    /// Positions of the open cross-runtime channels with `peer`.
    pub(crate) fn positions(&self, peer: &RuntimeId) -> Vec<RemotePosition> {
        let channels: Vec<Arc<ChannelRecord>> = self
            .channels
            .read()
            .values()
            .filter(|c| c.remote().is_some_and(|l| l.end.peer == *peer))
            .cloned()
            .collect();
        channels.iter().filter_map(|c| Self::position_of(c)).collect()
    }
}
