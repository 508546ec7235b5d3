//! Rotation of a cross-runtime channel's chains (PROTOCOL §4.11) and recovery: where the
//! chains stand, a reset agreed with the peer, the opener's confirmation.

use mfp_core::ChannelId;

use crate::admin::Wait;
use crate::audit::{AuditEvent, AuditEventType};
use crate::error::{Error, Result};
use crate::remote::{RecoveryPoint, ResetOutcome};
use crate::runtime::Inner;
use crate::storage::StorageOp;
use crate::types::ChannelStatus;

impl Inner {
    // ---- rotation of the chains (PROTOCOL §4.11) ---------------------------------------

    /// Stores an accepted rotation of the inbound chain, then keeps it pending.
    pub(crate) async fn accept_rotation(&self, channel: &ChannelId, secret: mfp_core::State, wait: Wait) -> Result<()> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        if link.rx.is_shared() {
            return Err(Self::no_rotation(channel));
        }
        let _turn = match wait {
            Wait::Yes => link.ingest_turn.lock().await,
            Wait::No(operation) => link.ingest_turn.try_lock().map_err(|_| Error::WouldBlock { operation })?,
        };
        // The ingests in flight settle on the chain they were opened with.
        link.inbound_settled(wait).await?;
        if self.persisting() {
            let ops = vec![StorageOp::RemoteRotation { id: *channel, secret: Some(secret.clone()) }];
            self.settle_async(self.submit(ops)).await?;
        }
        *link.rx_rotation.lock() = Some(secret);
        Ok(())
    }

    fn no_rotation(channel: &ChannelId) -> Error {
        Error::Config(crate::error::ConfigError {
            field: "rotation",
            reason: format!("channel {} shares pymfp's chain, which does not rotate on the wire", channel.short()),
        })
    }

    /// Rotates the outbound chain at its current step. Takes the channel's outbound turn,
    /// so it comes after a send whose commit is pending (that send settles on the chain it
    /// sealed with) and before the next one.
    pub(crate) async fn rotate_outbound(
        &self,
        channel: &ChannelId,
        secret: &mfp_core::State,
        wait: Wait,
    ) -> Result<u64> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        if link.tx.is_shared() {
            return Err(Self::no_rotation(channel));
        }
        let _turn = link.outbound_turn(wait).await?;
        let rotated = {
            let status = ch.inner.lock();
            if status.status == ChannelStatus::Closed {
                return Err(Error::ChannelClosed(*channel));
            }
            link.tx.lock().rotate(secret, &self.identity, &link.end.peer)
        };
        let step = rotated.step;
        if self.persisting() {
            let ticket =
                self.submit(vec![StorageOp::AdvanceRemoteTx { id: *channel, tx: rotated.clone(), from: None }]);
            match wait {
                Wait::Yes => self.settle_async(ticket).await?,
                Wait::No(_) => self.settle(ticket)?,
            }
        }
        {
            let _status = ch.inner.lock();
            *link.tx.lock() = rotated;
        }
        self.shared.metrics.remote_rotations.inc();
        let mut ev = AuditEvent::new(AuditEventType::KeyRotation);
        ev.channel = Some(*channel);
        ev.step = Some(step);
        ev.reason = Some("outbound chain rotated".to_string());
        self.event(ev);
        Ok(step)
    }

    // ---- recovery -------------------------------------------------------------------

    /// Where `channel`'s chains stand, with their state hashes.
    pub(crate) fn recovery_point(&self, channel: &ChannelId) -> Result<RecoveryPoint> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        let status = ch.inner.lock().status;
        let (tx_next, tx_hash) = {
            let tx = link.tx.lock();
            (tx.step, tx.state_hash())
        };
        let pending = link.rx_rotation.lock().clone();
        let (rx_next, rx_hash, rx_rotated_hash) = {
            let rx = link.rx.lock();
            let rotated = pending.map_or_else(
                || rx.state_hash(),
                |secret| rx.rotate(&secret, &self.identity, &link.end.peer).state_hash(),
            );
            (rx.step, rx.state_hash(), rotated)
        };
        let log_from = {
            let log = link.log.lock();
            log.entries.front().map_or(tx_next, |m| m.step).min(tx_next)
        };
        Ok(RecoveryPoint { tx_next, tx_hash, log_from, rx_next, rx_hash, rx_rotated_hash, status })
    }

    /// Re-seeds both chains of a cross-runtime channel, discards its outbound log and makes
    /// it active, in one storage transaction (see `RemoteHandle::reset_chains_async`).
    pub(crate) async fn reset_remote(
        &self,
        channel: &ChannelId,
        tx: mfp_core::bilateral::BilateralState,
        rx: mfp_core::bilateral::BilateralState,
        reset: [u8; 16],
        wait: Wait,
    ) -> Result<ResetOutcome> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let _turn = self.turn(wait).await?;
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        if link.tx.is_shared() {
            return Err(Error::Config(crate::error::ConfigError {
                field: "reset",
                reason: format!("channel {} shares pymfp's chain, which cannot be reset on the wire", channel.short()),
            }));
        }
        // Every send in flight is settled, and none seals until the reset is done.
        let _send = link.outbound_turn(wait).await?;
        // No inbound message is opened meanwhile.
        let _ingest = match wait {
            Wait::Yes => link.ingest_turn.lock().await,
            Wait::No(operation) => link.ingest_turn.try_lock().map_err(|_| Error::WouldBlock { operation })?,
        };
        link.inbound_settled(wait).await?;
        // With the status set aside, sends waiting for the turn are refused after it.
        let before = {
            let mut inner = ch.inner.lock();
            let before = inner.status;
            if before == ChannelStatus::Closed {
                return Err(Error::ChannelClosed(*channel));
            }
            inner.status = ChannelStatus::Quarantined;
            before
        };
        // The ids of the discarded messages: their receipts leave the idempotency window.
        let (outcome, discarded_ids) = {
            let log = link.log.lock();
            let ids: std::collections::HashSet<mfp_core::MessageId> =
                log.entries.iter().map(|m| link.ids(channel, &self.identity, m.step).0).collect();
            let outcome = ResetOutcome {
                discarded: log.entries.len(),
                discarded_bytes: log.entries.iter().map(|m| m.wire.len()).sum(),
            };
            (outcome, ids)
        };
        if self.persisting() {
            let ops = vec![
                StorageOp::AdvanceRemoteTx { id: *channel, tx: tx.clone(), from: None },
                StorageOp::AdvanceRemoteRx { id: *channel, rx: rx.clone(), from: None },
                StorageOp::RemoteRotation { id: *channel, secret: None },
                StorageOp::RemoteReset { id: *channel, reset },
                StorageOp::AckOutbound { channel: *channel, next: u64::MAX },
                StorageOp::ChannelFailures { id: *channel, count: 0 },
                StorageOp::ChannelStatus { id: *channel, status: ChannelStatus::Active },
            ];
            let ticket = self.submit(ops);
            let settled = match wait {
                Wait::Yes => self.settle_async(ticket).await,
                Wait::No(_) => self.settle(ticket),
            };
            if let Err(e) = settled {
                ch.inner.lock().status = before;
                return Err(e);
            }
        }
        {
            let mut inner = ch.inner.lock();
            *link.tx.lock() = tx;
            *link.rx.lock() = rx;
            {
                let mut log = link.log.lock();
                log.entries.clear();
                log.acked = 0;
            }
            *link.rx_rotation.lock() = None;
            // Steps start again at 0: none is waiting for a failed one any more.
            link.inq.lock().rewound = false;
            *link.reset.lock() = Some(reset);
            // A retry of a discarded send must not be answered with the receipt of a
            // message the peer will never get: it is sent again. Receipts of messages the
            // peer acknowledged stay (those messages were delivered).
            if let Some(d) = inner.dedup.as_mut() {
                d.forget(|r| discarded_ids.contains(&r.message_id));
            }
            inner.status = ChannelStatus::Active;
            inner.validation_failures = 0;
        }
        self.quarantine_causes.lock().remove(channel);
        let mut ev = AuditEvent::new(AuditEventType::RestoreChannel);
        ev.channel = Some(*channel);
        ev.step = Some(0);
        ev.reason = Some(format!(
            "reset with the peer runtime: both chains re-seeded at step 0, {} unacknowledged messages discarded",
            outcome.discarded
        ));
        self.event(ev);
        Ok(outcome)
    }

    /// The opener confirmed a channel this side accepted: the mark is cleared (stored
    /// without waiting). Whether it was set.
    pub(crate) fn confirm_remote(&self, channel: &ChannelId) -> Result<bool> {
        let ch = self.channel(channel)?;
        let link = ch.remote().ok_or(Error::WrongPeer { channel: *channel, from: "a peer runtime".into() })?;
        let was = link.unconfirmed.swap(false, std::sync::atomic::Ordering::AcqRel);
        if was && !link.tx.is_shared() {
            drop(self.submit(vec![StorageOp::RemoteUnconfirmed { id: *channel, unconfirmed: false }]));
        }
        Ok(was)
    }
}
