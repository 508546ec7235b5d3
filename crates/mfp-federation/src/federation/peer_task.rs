//! One peer's task: its link's events, inbound messages ingested (together, with storage),
//! acknowledgements, and the resets, channel requests and rotations it asks for or answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mfp_core::ChannelId;
use mfp_runtime::Error as RuntimeError;
use mfp_runtime::remote::{Chains, Ingested, PendingIngest, RemoteEnd};
use tokio::sync::mpsc;

use super::accept::{accept_request, confirmed};
use super::resync::{draw_secret, maybe_rotate, on_report, resync};
use super::transport::send_report;
use super::{ChanTx, FederationError, Peer, Shared};
use crate::control::ResetRefusal;
use crate::net::NetEvent;
use crate::recovery::{ANSWER_REQUESTED, RESEND_REQUEST, Recovery};
use crate::session::Event;

pub(super) async fn peer_task(shared: Arc<Shared>, peer: Arc<Peer>, mut rx: mpsc::Receiver<NetEvent>) {
    // With storage, inbound messages are ingested together (their commits share
    // transactions); a channel's own messages are opened one after the other, in order,
    // and acknowledged in step order.
    // Every other event waits until the ingests in flight are done, so it sees what they
    // committed, as when everything ran in turn.
    let mut ingests = Ingests::new(shared.runtime.persisting());
    loop {
        tokio::select! {
            ev = rx.recv(), if ingests.has_room() => match ev {
                Some(NetEvent::Session { event: Event::Data { wire, .. }, .. }) if ingests.concurrent => {
                    if sent_before_resync(&peer, &wire) {
                        tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
                    } else {
                        ingests.push(&shared, &peer, wire);
                    }
                }
                Some(ev) => {
                    ingests.finish_all(&shared, &peer).await;
                    match ev {
                        NetEvent::Up { .. } => {
                            on_up(&shared, &peer);
                            remember_handshake(&shared, &peer).await;
                        }
                        NetEvent::Session { event, .. } => on_event(&shared, &peer, event).await,
                        NetEvent::Down { reason, .. } => {
                            tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), reason, "link down");
                        }
                    }
                    peer.event_done();
                }
                None => {
                    ingests.finish_all(&shared, &peer).await;
                    return;
                }
            },
            step = std::future::poll_fn(|cx| ingests.poll_done(cx)), if !ingests.is_idle() => {
                ingests.done(&shared, &peer, step);
            }
            () = peer.resync_wake.notified() => {
                let channels: Vec<ChannelId> = peer.resyncs.lock().drain().collect();
                for channel in channels {
                    resync(&shared, &peer, channel, None).await;
                }
            }
        }
    }
}

/// What an ingest in flight finished: opening its message (the channel's next may be
/// opened then), or the whole ingest (its outcome).
enum IngestStep {
    Opened(ChannelId, Result<PendingIngest, RuntimeError>, Vec<u8>),
    Done(ChannelId, Result<Ingested, RuntimeError>, Vec<u8>),
}
type IngestFuture = std::pin::Pin<Box<dyn std::future::Future<Output = IngestStep> + Send>>;

/// Ingests of one peer's messages in flight (with storage). A channel's messages are opened
/// one after the other, in the order they came; each message's commit is awaited while the
/// channel's next ones are opened, so they share transactions. The runtime settles a
/// channel's messages in step order, and finished ingests are taken oldest first, so a
/// channel's acknowledgements go out in step order.
struct Ingests {
    concurrent: bool,
    /// Oldest first.
    running: Vec<IngestFuture>,
    /// Per channel with a message being opened: its messages that arrived since, in order.
    waiting: HashMap<ChannelId, std::collections::VecDeque<Vec<u8>>>,
    queued: usize,
}

/// Ingests in flight, and messages queued behind a channel's opening one, at most (beyond,
/// the peer's event queue fills and the link stops reading: backpressure toward the
/// socket).
const MAX_INGESTING: usize = 64;
const MAX_QUEUED_INGESTS: usize = 1024;

impl Ingests {
    fn new(concurrent: bool) -> Self {
        Self { concurrent, running: Vec::new(), waiting: HashMap::new(), queued: 0 }
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    fn has_room(&self) -> bool {
        self.running.len() < MAX_INGESTING && self.queued < MAX_QUEUED_INGESTS
    }

    /// Starts opening `wire`, or queues it behind its channel's message being opened.
    fn push(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, wire: Vec<u8>) {
        let channel = wire
            .get(16..32)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map_or(ChannelId::from_bytes([0; 16]), ChannelId::from_bytes);
        if let Some(q) = self.waiting.get_mut(&channel) {
            q.push_back(wire);
            self.queued += 1;
            return;
        }
        self.waiting.insert(channel, std::collections::VecDeque::new());
        self.open(shared, peer, channel, wire);
    }

    fn open(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, channel: ChannelId, wire: Vec<u8>) {
        let (shared, peer) = (Arc::clone(shared), Arc::clone(peer));
        self.running.push(Box::pin(async move {
            let r = shared.runtime.open_ingest_async(&peer.runtime, &wire).await;
            IngestStep::Opened(channel, r, wire)
        }));
    }

    /// The oldest finished step.
    fn poll_done(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<IngestStep> {
        for i in 0..self.running.len() {
            if let Some(f) = self.running.get_mut(i)
                && let std::task::Poll::Ready(out) = f.as_mut().poll(cx)
            {
                drop(self.running.remove(i));
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    }

    /// After a step: an opened message's commit is awaited and the channel's next message
    /// opened; a finished ingest is acknowledged (or a resend asked for).
    fn done(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>, step: IngestStep) {
        let (channel, refused) = match step {
            IngestStep::Opened(channel, Ok(pending), wire) => {
                self.running.push(Box::pin(async move { IngestStep::Done(channel, pending.finish().await, wire) }));
                (channel, false)
            }
            IngestStep::Opened(channel, Err(e), wire) => (channel, ingested(shared, peer, Err(e), &wire)),
            IngestStep::Done(channel, result, wire) => {
                if ingested(shared, peer, result, &wire) {
                    // Not taken: the peer sends again from where this side stands; what
                    // is queued behind comes again.
                    if let Some(q) = self.waiting.get_mut(&channel) {
                        self.queued -= q.len();
                        q.clear();
                    }
                }
                return;
            }
        };
        let next = match self.waiting.get_mut(&channel) {
            // After a refusal the peer sends again from where this side stands: what queued
            // behind it comes again.
            Some(q) if refused => {
                self.queued -= q.len();
                q.clear();
                None
            }
            Some(q) => q.pop_front(),
            None => None,
        };
        match next {
            Some(wire) => {
                self.queued -= 1;
                self.open(shared, peer, channel, wire);
            }
            None => {
                self.waiting.remove(&channel);
            }
        }
    }

    /// Waits for every ingest in flight and queued.
    async fn finish_all(&mut self, shared: &Arc<Shared>, peer: &Arc<Peer>) {
        while !self.is_idle() {
            let step = std::future::poll_fn(|cx| self.poll_done(cx)).await;
            self.done(shared, peer, step);
        }
    }
}

/// After the ingest of an inbound message: acknowledges it, or (not taken now) asks the
/// peer to send again from where this side stands. Returns whether it was not taken.
pub(super) fn ingested(shared: &Shared, peer: &Peer, result: Result<Ingested, RuntimeError>, wire: &[u8]) -> bool {
    match result {
        Ok(Ingested::Delivered { channel, step } | Ingested::Duplicate { channel, step }) => {
            let _ = peer.handle.with_session(|s| s.ack(channel, step + 1));
            // A message on the channel: the peer has it.
            confirmed(shared, peer, &channel);
            false
        }
        Ok(_) => false,
        Err(e @ RuntimeError::NotTaken { .. }) => {
            // An earlier message of the channel failed to commit; its refusal asked for the
            // resend that brings this one again.
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message not taken");
            true
        }
        Err(e @ (RuntimeError::MailboxFull(_) | RuntimeError::Storage(_) | RuntimeError::WouldBlock { .. })) => {
            // Not taken now: ask the peer to send again from where this side stands.
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message not taken; asking for a resend");
            if let Some(header) = wire.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                let channel = ChannelId::from_bytes(header);
                if let Ok(point) = shared.runtime.recovery_point(&channel) {
                    peer.resuming.lock().insert(channel, (point.rx_next, 0));
                    send_report(shared, peer, channel, RESEND_REQUEST);
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "inbound message refused");
            false
        }
    }
}

/// Stores the greatest handshake timestamp accepted from the peer (when this side answered
/// its message 1), so a recorded message 1 stays refused after a restart.
async fn remember_handshake(shared: &Shared, peer: &Peer) {
    let Some(ts) = shared.timestamps.greatest(&peer.runtime) else { return };
    let row =
        mfp_runtime::storage::PeerRow { runtime: peer.runtime, handshake_secs: ts.secs, handshake_nanos: ts.nanos };
    if let Err(e) = shared.runtime.record_peer_async(row).await {
        tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), error = %e, "the peer's handshake timestamp was not stored");
    }
}

fn on_up(shared: &Shared, peer: &Peer) {
    tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), "link up");
    let closes: Vec<ChannelId> = std::mem::take(&mut *peer.closes.lock());
    let positions = shared.runtime.positions(&peer.runtime).unwrap_or_default();
    let now = shared.clock.now();
    {
        // Until the peer's report arrives, nothing new goes out on these channels: what
        // was in flight when the link broke may have to go first.
        let mut chans = peer.chans.lock();
        for pos in &positions {
            let st = chans.entry(pos.channel).or_default();
            st.stalled = true;
            st.awaiting_position = true;
            st.sent_next = pos.acked;
            // A rotation asked for on the previous session is answered on that one or never.
            st.rotating = None;
            // DETECT: a recovery begins with each session. One that was under way when
            // the link broke ends with it: a runtime killed and restarted (or a link that
            // breaks) in the middle of a resend is not a divergence, and the new session
            // resends from the peer's new report anyway.
            st.recovery = Some(Recovery::begin(now));
        }
    }
    *peer.resuming.lock() = positions.iter().map(|p| (p.channel, (p.rx_next, 0))).collect();
    let _ = peer.handle.with_session(|s| {
        for c in closes {
            s.close_channel(c);
        }
    });
    // A suspended channel stays silent until an operator resumes or resets it.
    for pos in positions.iter().filter(|p| p.status == mfp_runtime::ChannelStatus::Active) {
        send_report(shared, peer, pos.channel, 0);
    }
    peer.ready.notify_waiters();
}

async fn on_event(shared: &Shared, peer: &Peer, ev: Event) {
    let rt = &shared.runtime;
    match ev {
        Event::Data { wire, .. } if sent_before_resync(peer, &wire) => {
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), "message sent before the peer resynchronised; dropped (it comes again)");
        }
        Event::Data { wire, .. } => {
            let result = rt.ingest_async(&peer.runtime, &wire).await;
            ingested(shared, peer, result, &wire);
        }
        Event::Acked { channel, next } => on_acked(shared, peer, channel, next),
        Event::Position { channel, .. } => {
            // Bare positions (no state hashes) are not how this federation recovers.
            tracing::debug!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), "bare position ignored; recovery reports carry positions");
        }
        Event::Recovery(report) => on_report(shared, peer, report).await,
        Event::ResetRequested { channel, secret } => {
            // Only a channel this runtime shares with the peer and has open can be reset; a
            // suspended or an active one is (active: the peer may have reset before, its
            // answer lost with the link, and asks again — both end on the newer secret).
            if !rt.positions(&peer.runtime).unwrap_or_default().iter().any(|p| p.channel == channel) {
                let reason = match rt.recovery_point(&channel) {
                    Err(RuntimeError::ChannelClosed(_)) => ResetRefusal::Closed,
                    _ => ResetRefusal::UnknownChannel,
                };
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), reason = %reason, "reset refused");
                let _ = peer.handle.with_session(|s| s.refuse_reset(channel, reason));
                return;
            }
            // Both sides asked at once, each request crossing the other on the link: the
            // request of the runtime with the smaller id wins on both sides, so that both
            // end on one secret. This side's stands: refuse the peer's (it accepts ours).
            if shared.local < peer.runtime && shared.resets.lock().contains_key(&channel) {
                let _ = peer.handle.with_session(|s| s.refuse_reset(channel, ResetRefusal::Crossed));
                return;
            }
            // The peer derives as the opener of the reset: its chains are (peer → here, here → peer).
            let (from_peer, to_peer) = crate::channel_chains(&secret, &channel, &peer.runtime, &shared.local);
            let reset = crate::reset_id(&secret, &channel);
            match rt.reset_chains_async(&channel, to_peer, from_peer, reset).await {
                Ok(outcome) => {
                    after_reset(shared, peer, channel, outcome);
                    // The peer reports first once it has reset its side too.
                    let _ = peer.handle.with_session(|s| s.accept_reset(channel));
                    // A reset this side (the larger id) asked for meanwhile lost to the
                    // peer's: the channel is reset, which is what its caller asked for (the
                    // peer refuses that request; its refusal then finds nothing waiting).
                    // The smaller id's own request still stands: the peer applies it and
                    // answers, and this side resets once more, onto its own secret.
                    if shared.local > peer.runtime
                        && let Some(mine) = shared.resets.lock().remove(&channel)
                    {
                        let _ = mine.reply.send(Ok(outcome.discarded));
                    }
                }
                Err(e) => {
                    let reason = match e {
                        RuntimeError::ChannelClosed(_) => ResetRefusal::Closed,
                        RuntimeError::UnknownChannel(_) => ResetRefusal::UnknownChannel,
                        _ => ResetRefusal::Failed,
                    };
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "reset asked by the peer failed; refused");
                    let _ = peer.handle.with_session(|s| s.refuse_reset(channel, reason));
                }
            }
        }
        Event::ResetAccepted { channel } => {
            let Some(p) = shared.resets.lock().remove(&channel) else { return };
            let (to_peer, from_peer) = crate::channel_chains(&p.secret, &channel, &shared.local, &peer.runtime);
            let reset = crate::reset_id(&p.secret, &channel);
            let r = match rt.reset_chains_async(&channel, to_peer, from_peer, reset).await {
                Ok(outcome) => {
                    after_reset(shared, peer, channel, outcome);
                    send_report(shared, peer, channel, ANSWER_REQUESTED);
                    Ok(outcome.discarded)
                }
                Err(e) => {
                    tracing::error!(target: "mfp::federation", channel = %channel.short(), error = %e, "the peer reset the channel but this side could not; reset it again");
                    Err(FederationError::from(e))
                }
            };
            let _ = p.reply.send(r);
        }
        Event::ResetRefused { channel, reason } => {
            let Some(p) = shared.resets.lock().remove(&channel) else { return };
            let r = if reason == ResetRefusal::Crossed && shared.local > peer.runtime {
                // The peer's crossing request won, and this side applied it before this
                // refusal came (it came first on the link): the channel is reset, and this
                // call discarded nothing more.
                Ok(0)
            } else {
                Err(FederationError::ResetRefused { peer: peer.runtime.short(), channel: channel.short(), reason })
            };
            let _ = p.reply.send(r);
        }
        Event::ChannelRequested { channel, depth, opener, target, secret } => {
            let reply = accept_request(shared, peer, channel, usize::from(depth), opener, &target, &secret).await;
            let _ = peer.handle.with_session(|s| match reply {
                Ok(acceptor) => s.accept_channel(channel, acceptor),
                Err(reason) => s.refuse_channel(channel, reason),
            });
        }
        Event::ChannelAccepted { channel, acceptor } => {
            let Some(p) = shared.pending.lock().remove(&channel) else { return };
            let (opener_to_acceptor, acceptor_to_opener) =
                crate::channel_chains(&p.secret, &channel, &shared.local, &peer.runtime);
            let chains = Chains::Split { tx: opener_to_acceptor, rx: acceptor_to_opener };
            let r = rt.establish_async(p.local, RemoteEnd::new(peer.runtime, acceptor), channel, p.depth, chains).await;
            if r.is_ok() {
                peer.chans.lock().entry(channel).or_default();
                // Stored: the acceptor may send on it now.
                let _ = peer.handle.with_session(|s| s.confirm_channel(channel));
            } else {
                // The peer opened it; it must not stay open there alone.
                let _ = peer.handle.with_session(|s| s.close_channel(channel));
            }
            let _ = p.reply.send(r.map(|()| channel).map_err(FederationError::from));
        }
        Event::ChannelRefused { channel, reason } => {
            if let Some(p) = shared.pending.lock().remove(&channel) {
                let _ = p.reply.send(Err(FederationError::Refused { peer: peer.runtime.short(), reason }));
            }
        }
        Event::ChannelConfirmed { channel } => confirmed(shared, peer, &channel),
        Event::ChannelClosed { channel } => {
            peer.chans.lock().remove(&channel);
            peer.unconfirmed.lock().remove(&channel);
            match rt.closed_by_peer_async(&channel).await {
                Ok(()) | Err(RuntimeError::UnknownChannel(_) | RuntimeError::ChannelClosed(_)) => {}
                Err(e) => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "closing a channel the peer closed failed");
                }
            }
        }
        Event::RotationRequested { channel, message } => {
            // Only the channel's peer may rotate its chain, and only towards this runtime.
            if message.sender != peer.runtime || message.receiver != shared.local {
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), "rotation request with wrong runtime ids ignored");
                return;
            }
            let secret = match draw_secret(shared) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target: "mfp::federation", error = %e, "no entropy for a rotation");
                    return;
                }
            };
            let Ok(ss) = mfp_core::crypto::x25519_shared(&secret, &message.ephemeral_public) else {
                tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), "rotation request with an invalid key ignored");
                return;
            };
            // Stored before the answer goes out: the peer rotates once it has the answer.
            if let Err(e) = rt.accept_rotation_async(&channel, ss).await {
                tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "rotation not accepted");
                return;
            }
            let answer = mfp_core::bilateral::RekeyMessage {
                sender: shared.local,
                receiver: peer.runtime,
                ephemeral_public: mfp_core::crypto::x25519_public(&secret),
                step: message.step,
            };
            let _ = peer.handle.with_session(|s| s.accept_rotation(channel, answer));
        }
        Event::RotationAccepted { channel, message } => {
            // Only the answer to the one request under way counts; it stays under way until
            // the outbound chain is rotated.
            let mine = peer.chans.lock().get(&channel).and_then(|st| match &st.rotating {
                Some((step, secret)) if *step == message.step => Some(secret.clone()),
                _ => None,
            });
            let Some(secret) = mine else { return };
            if message.sender != peer.runtime || message.receiver != shared.local {
                return;
            }
            let rotated = match mfp_core::crypto::x25519_shared(&secret, &message.ephemeral_public) {
                // Waits (as a future) for the channel's sends in flight to settle first.
                Ok(ss) => Some(shared.runtime.rotate_outbound_async(&channel, &ss).await),
                Err(_) => None,
            };
            let mut chans = peer.chans.lock();
            let st = chans.entry(channel).or_default();
            st.rotating = None;
            match rotated {
                Some(Ok(step)) => {
                    st.rotated_at = (step, std::time::Instant::now());
                    st.last_rotation = Some(step);
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %e, "outbound rotation failed");
                }
                None => {
                    tracing::warn!(target: "mfp::federation", channel = %channel.short(), "rotation answer with an invalid key ignored");
                }
            }
        }
        Event::Closed(reason) => {
            tracing::info!(target: "mfp::federation", peer = %peer.runtime.short(), reason = %reason, "session closed");
        }
    }
}

/// The federation's side of a reset: the discarded messages give their in-flight permits
/// back, and the channel waits for the peer's report (a new recovery) before it sends.
fn after_reset(shared: &Shared, peer: &Peer, channel: ChannelId, outcome: mfp_runtime::remote::ResetOutcome) {
    peer.msgs.add_permits(outcome.discarded);
    peer.bytes.add_permits(outcome.discarded_bytes);
    peer.ready.notify_waiters();
    let now = shared.clock.now();
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        *st = ChanTx {
            sent_next: 0,
            stalled: true,
            rotated_at: (0, std::time::Instant::now()),
            rotating: None,
            last_rotation: None,
            awaiting_position: true,
            recovery: Some(Recovery::begin(now)),
        };
    }
    peer.resuming.lock().insert(channel, (0, 0));
    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), discarded = outcome.discarded, "channel reset: both chains re-seeded at step 0, unacknowledged messages discarded");
}

/// Whether a data message is one the peer sent before it heard the position this side
/// announced for its channel: a step beyond it. The peer sends again from the announced
/// step once it has heard it (its link may have come up, or its sender raced on, before
/// that), so such a message is dropped without counting against the channel; the first
/// message at the announced step ends the wait. Outside that window a step beyond the
/// expected one goes to the runtime, which counts it as a validation failure — as it does
/// once more messages were dropped than a peer can have unacknowledged on a channel
/// ([`MAX_EARLY`]): a peer that never resends is not waited for without end.
pub(super) fn sent_before_resync(peer: &Peer, wire: &[u8]) -> bool {
    let Ok(header) = mfp_core::envelope::EnvelopeHeader::parse(wire) else { return false };
    let mut resuming = peer.resuming.lock();
    let Some((next, dropped)) = resuming.get_mut(&header.channel_id) else { return false };
    if header.step > *next && *dropped < MAX_EARLY {
        *dropped += 1;
        return true;
    }
    if header.step >= *next {
        resuming.remove(&header.channel_id);
    }
    false
}

/// The peer acknowledged every message of `channel` below `next`.
pub(super) fn on_acked(shared: &Shared, peer: &Peer, channel: ChannelId, next: u64) {
    acked(shared, peer, channel, next);
    let done =
        peer.chans.lock().get_mut(&channel).and_then(|st| st.recovery.as_mut()).is_some_and(|r| r.acknowledged(next));
    if done {
        shared.counters.completed.fetch_add(1, Ordering::Relaxed);
    }
    maybe_rotate(shared, peer, channel);
}

/// Messages sent before a resync dropped at most per channel and window: the runtime keeps
/// at most this many unacknowledged messages per channel, and only those can be resent.
const MAX_EARLY: usize = 65_536;

/// The peer holds every message of `channel` below `next`: the runtime trims its log, and
/// the in-flight permits those messages held come back.
pub(super) fn acked(shared: &Shared, peer: &Peer, channel: ChannelId, next: u64) {
    match shared.runtime.acknowledge(&channel, next) {
        Ok(done) => {
            peer.msgs.add_permits(done.messages);
            peer.bytes.add_permits(done.bytes);
            peer.ready.notify_waiters();
        }
        Err(e) => {
            tracing::warn!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), error = %e, "acknowledgement refused");
        }
    }
}
