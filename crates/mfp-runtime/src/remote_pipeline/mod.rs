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
//! - this file: `peer_unavailable`; the in-order settling both halves' queues share
//!   (`Queued`, `record`, `pop_known`); and `finish_elsewhere`, which both halves'
//!   hand-overs use when their waiter is cancelled.

mod chains;
mod inbound;
mod log;
mod outbound;

use std::collections::VecDeque;
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

/// A durable send or ingest queued on its channel, settled strictly in the order it was
/// submitted (numbered consecutively by `seq`).
trait Queued {
    fn seq(&self) -> u64;
    /// Its commit's outcome, once known.
    fn outcome(&mut self) -> &mut Option<std::result::Result<(), StorageError>>;
}

/// Records the commit outcome of queued entry `seq`; an entry that is gone was failed
/// already (with an earlier one), and its outcome no longer matters.
fn record<Q: Queued>(queue: &mut VecDeque<Q>, seq: u64, outcome: std::result::Result<(), StorageError>) {
    let index = queue.front().and_then(|f| seq.checked_sub(f.seq())).and_then(|i| usize::try_from(i).ok());
    if let Some(p) = index.and_then(|i| queue.get_mut(i)).filter(|p| p.seq() == seq) {
        *p.outcome() = Some(outcome);
    }
}

/// The front entry, off the queue with its outcome, once that outcome is known.
fn pop_known<Q: Queued>(queue: &mut VecDeque<Q>) -> Option<(Q, std::result::Result<(), StorageError>)> {
    if !queue.front_mut().is_some_and(|p| p.outcome().is_some()) {
        return None;
    }
    let mut p = queue.pop_front()?;
    let outcome = p.outcome().take().unwrap_or(Err(StorageError::Closed));
    Some((p, outcome))
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
