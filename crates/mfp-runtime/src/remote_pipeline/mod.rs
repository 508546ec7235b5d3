//! The two halves of the pipeline for cross-runtime channels (see `remote.rs`): outbound
//! (ACCEPT → FRAME → ENCODE → commit → transport) and inbound (VALIDATE → DECODE → commit →
//! DELIVER), and the outbound log's upkeep.
//!
//! - `outbound.rs`: the outbound half (`send_remote`) and a channel's queue of durable sends
//!   in flight (`OutQueue`);
//! - `inbound.rs`: the inbound half (`ingest`) and a channel's queue of durable ingests in
//!   flight (`InQueue`);
//! - `chains.rs`: rotation of the chains and recovery (recovery point, reset, confirmation);
//! - `log.rs`: the outbound log (acknowledgements, what to resend, positions);
//! - this file: `peer_unavailable`, and `finish_elsewhere`, which both halves' hand-overs use
//!   when their waiter is cancelled.

mod chains;
mod inbound;
mod log;
mod outbound;

use std::sync::Arc;

use mfp_core::{ChannelId, RuntimeId};

pub(crate) use inbound::{InQueue, Opened};
pub(crate) use outbound::OutQueue;

use crate::error::Error;
use crate::runtime::Inner;
use crate::storage::{StorageError, Ticket};

impl Inner {
    fn peer_unavailable(peer: &RuntimeId, reason: impl std::fmt::Display) -> Error {
        Error::PeerUnavailable { peer: peer.short(), reason: reason.to_string() }
    }
}

/// Waits for a cancelled waiter's `ticket` on a thread of its own (`mfp-commit`) and hands
/// the outcome to `known`, so its channel's queue never stalls; inline (this waits for a
/// commit already under way) when no thread can be had. `what` names the operation.
fn finish_elsewhere(
    ticket: Ticket,
    channel: ChannelId,
    what: &'static str,
    known: impl FnOnce(std::result::Result<(), StorageError>) + Send + 'static,
) {
    let work = Arc::new(parking_lot::Mutex::new(Some((ticket, known))));
    let finish = {
        let work = Arc::clone(&work);
        move || {
            if let Some((ticket, known)) = work.lock().take() {
                known(ticket.wait());
            }
        }
    };
    let spawned = std::thread::Builder::new().name("mfp-commit".into()).spawn(finish);
    if spawned.is_err()
        && let Some((ticket, known)) = work.lock().take()
    {
        tracing::warn!(target: "mfp::runtime", channel = %channel.short(), operation = what, "no thread for a cancelled commit wait; settling inline");
        known(ticket.wait());
    }
}
