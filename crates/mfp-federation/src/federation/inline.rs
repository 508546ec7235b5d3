//! What a peer's link's task handles itself (without storage): inbound messages and
//! acknowledgements while the peer's task has nothing of the peer queued.

use std::sync::atomic::Ordering;

use mfp_core::RuntimeId;
use mfp_runtime::Error as RuntimeError;
use parking_lot::Mutex;

use super::peer_task::{ingested, on_acked, sent_before_resync};
use super::{Peer, Shared};
use crate::net::{InlineEvents, NetEvent};
use crate::session::Event;

/// Takes a peer's inbound messages and acknowledgements on its link's task (without
/// storage), while the peer's task has no event of the peer queued or under way: handled
/// there, in the order they came, they cost no hop to another task. Anything else, and
/// everything behind a queued event, goes to the peer's task.
pub(super) struct Inline {
    peer: RuntimeId,
    /// Set once the federation's shared state exists (events before that are queued).
    pub(super) shared: std::sync::OnceLock<std::sync::Weak<Shared>>,
    /// Held while deciding (and handling inline), so that a link being replaced and its
    /// successor cannot overtake each other's queued events.
    order: Mutex<()>,
    /// Events queued for the peer's task and not handled yet.
    pub(super) queued: std::sync::atomic::AtomicUsize,
}

impl Inline {
    pub(super) fn new(peer: RuntimeId) -> Self {
        Self {
            peer,
            shared: std::sync::OnceLock::new(),
            order: Mutex::new(()),
            queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Handles `event` if it can be now; gives it back otherwise.
    fn handle(shared: &Shared, peer: &Peer, event: NetEvent) -> Option<NetEvent> {
        match event {
            NetEvent::Session { event: Event::Data { channel, wire }, peer: from } => {
                if sent_before_resync(peer, &wire) {
                    tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
                    return None;
                }
                match shared.runtime.try_ingest(&peer.runtime, &wire) {
                    // It has to wait (a full mailbox, an ingest of the channel under way):
                    // the peer's task waits for it.
                    Err(RuntimeError::WouldBlock { .. }) => {
                        Some(NetEvent::Session { peer: from, event: Event::Data { channel, wire } })
                    }
                    result => {
                        ingested(shared, peer, result, &wire);
                        None
                    }
                }
            }
            NetEvent::Session { event: Event::Acked { channel, next }, .. } => {
                on_acked(shared, peer, channel, next);
                None
            }
            other => Some(other),
        }
    }
}

impl InlineEvents for Inline {
    fn offer(&self, event: NetEvent) -> Option<NetEvent> {
        let _order = self.order.lock();
        let rest = if self.queued.load(Ordering::Acquire) == 0
            && let Some(shared) = self.shared.get().and_then(std::sync::Weak::upgrade)
            && let Some(peer) = shared.peers.get(&self.peer)
        {
            Self::handle(&shared, peer, event)?
        } else {
            event
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        Some(rest)
    }
}
