//! The outbound half of the cross-runtime pipeline: ACCEPT → FRAME → ENCODE → commit →
//! transport, and a channel's queue of durable sends in flight ([`OutQueue`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mfp_core::bilateral::BilateralState;
use mfp_core::{BLOCK_SIZE, ChannelId, ENVELOPE_HEADER_SIZE, TAG_SIZE};
use tokio::sync::oneshot;

use super::finish_elsewhere;
use crate::agent::AgentRecord;
use crate::channel::ChannelRecord;
use crate::config::Backpressure;
use crate::error::{Error, Result};
use crate::hooks::SendContext;
use crate::remote::{MAX_UNACKED, OutboundMessage, OutboundSlot, OutboundTurn, RemoteLink, TransportError};
use crate::runtime::Inner;
use crate::storage::{OutboundRow, StorageError, StorageOp, Ticket};
use crate::types::{Receipt, SendOptions};

impl Inner {
    // ---- outbound half --------------------------------------------------------------

    /// Sends on a cross-runtime channel: reserves room in the transport (waiting as
    /// configured, until `deadline`), then seals, commits and hands the message over.
    ///
    /// With storage, the send takes the channel's outbound turn (`RemoteLink::send_turn`)
    /// and its lock while it passes ACCEPT, seals and submits, then releases both and
    /// awaits its commit and its turn to be handed over (in step order, see [`OutQueue`])
    /// as a future; a blocking caller drives this future on its own thread. `submitted` is
    /// set once the batch went to storage (see `AgentHandle::send`); `driver`: a blocking
    /// call on the thread that drives the runtime (see `block::Place::Driver`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_remote(
        self: &Arc<Self>,
        sender: &Arc<AgentRecord>,
        channel: &Arc<ChannelRecord>,
        payload: &[u8],
        opts: &SendOptions,
        deadline: Instant,
        started: Instant,
        submitted: Option<&AtomicBool>,
        driver: bool,
    ) -> Result<Receipt> {
        let link = channel.remote().ok_or(Error::Inconsistent { channel: channel.id })?;
        let peer = link.end.peer;
        let transport = self.transport.get(&peer).ok_or(Error::NoTransport(channel.id))?;
        let depth = usize::from(channel.depth);
        let len = ENVELOPE_HEADER_SIZE + 2 * BLOCK_SIZE * depth + payload.len() + TAG_SIZE;
        let slot = loop {
            match transport.may_send(&peer, &channel.id).and_then(|()| transport.reserve(&peer, len)) {
                Ok(slot) => break slot,
                Err(e @ (TransportError::UnknownPeer | TransportError::Open)) => {
                    return Err(Self::peer_unavailable(&peer, e));
                }
                Err(e) => {
                    if self.config.backpressure == Backpressure::Reject || self.clock.now() >= deadline {
                        return Err(Self::peer_unavailable(&peer, e));
                    }
                    if self.timeout_at(deadline, transport.ready(&peer)).await.is_none() {
                        return Err(Self::peer_unavailable(&peer, e));
                    }
                }
            }
        };
        let keep_log = transport.acknowledges(&peer) && !link.tx.is_shared();
        let ctx = SendContext { sender: sender.id, recipient: link.end.agent, channel: channel.id, payload };
        if let Some(h) = &self.hooks
            && let Err(reason) = h.before_send(&ctx)
        {
            self.rejected(sender.id, channel.id, "rejected by hook");
            return Err(Error::HookRejected(reason));
        }
        // A durable send waits for the turn as a future; a blocking caller on the thread
        // that drives the runtime sees it pending before anything was submitted and is
        // refused (`WouldBlock`), so it never waits behind a task of its own thread.
        let turn = if self.persisting() && !link.tx.is_shared() { Some(link.seal_turn().await) } else { None };
        match self.execute_remote(sender, channel, link, payload, opts, slot, keep_log, turn, driver)? {
            Sealed::Replayed(receipt) => Ok(receipt),
            Sealed::Sent(receipt) => {
                self.sent(sender, &ctx, &receipt, started, Some(link.end.agent));
                Ok(receipt)
            }
            Sealed::Submitted(handover) => {
                if let Some(s) = submitted {
                    s.store(true, Ordering::Relaxed);
                }
                match handover.settle().await {
                    Ok(receipt) => {
                        self.sent(sender, &ctx, &receipt, started, Some(link.end.agent));
                        Ok(receipt)
                    }
                    Err(e) => {
                        self.rejected(sender.id, channel.id, "storage write failed");
                        Err(e)
                    }
                }
            }
        }
    }

    /// ACCEPT → FRAME → ENCODE (pymfp's cross-runtime message on the channel's outbound
    /// chain), under the channel's lock. Without storage (or on a shared chain, kept in
    /// memory only) the chain moves on and the message goes to the transport in the same
    /// hold. With storage (`turn` held), the message is sealed at the channel's head, its
    /// batch (the chain's advance and the outbound log row) submitted and the message
    /// queued (see [`OutQueue`]); the returned [`Handover`] awaits the commit and the
    /// message's settling. `driver`: a blocking call on the thread that drives the
    /// runtime, which may not wait behind queued sends (their tasks need this thread).
    #[allow(clippy::too_many_arguments)]
    fn execute_remote(
        self: &Arc<Self>,
        sender: &Arc<AgentRecord>,
        channel: &Arc<ChannelRecord>,
        link: &RemoteLink,
        payload: &[u8],
        opts: &SendOptions,
        slot: Box<dyn OutboundSlot>,
        keep_log: bool,
        turn: Option<OutboundTurn>,
        driver: bool,
    ) -> Result<Sealed> {
        let idem = Self::idempotency(sender, opts, payload);
        let peer = link.end.peer;
        let mut ch = channel.inner.lock();
        // ACCEPT
        if let Some(r) = self.accept_locked(&mut ch, &channel.id, idem.as_ref())? {
            return Ok(Sealed::Replayed(r));
        }
        if turn.is_some() {
            let mut q = link.out.lock();
            if driver && !q.is_empty() {
                return Err(Error::WouldBlock { operation: "AgentHandle::send" });
            }
            if keep_log && link.log.lock().entries.len() + q.queue.len() >= MAX_UNACKED {
                return Err(Self::peer_unavailable(
                    &peer,
                    format!("{MAX_UNACKED} messages of this channel are not acknowledged yet"),
                ));
            }
            // FRAME → ENCODE at the head (the chain after the last message submitted).
            let depth = usize::from(channel.depth);
            let (step, out) = match &q.head {
                Some(head) => (head.step, head.seal_outbound(&self.identity, &channel.id, depth, payload)?),
                None => {
                    let tx = link.tx.lock();
                    (tx.step, tx.seal_outbound(&self.identity, &channel.id, depth, payload)?)
                }
            };
            let (message_id, correlation_id) = link.ids(&channel.id, &self.identity, step);
            let receipt = Receipt { message_id, channel: channel.id, step, correlation_id };
            // PERSIST: the advance and the sealed message commit together, before the
            // message leaves or the sender hears of it. Submitted under the lock, so a
            // channel's batches reach storage in step order.
            let acks = self.take_acks();
            let mut ops = Vec::with_capacity(2 + acks.len());
            ops.extend(acks.iter().map(|&(channel, step)| StorageOp::AckDelivery { channel, step }));
            // Conditional: if an earlier batch of the channel fails, this one cannot commit
            // past it (no gap in the stored log, even if the runtime stops before its
            // compensation is written).
            ops.push(StorageOp::AdvanceRemoteTx { id: channel.id, tx: out.next.clone(), from: Some(step) });
            let wire: Arc<[u8]> = Arc::from(out.wire);
            if q.repair {
                // A compensation is not known to have committed: this batch repeats it
                // for its own step (the chain's advance is absolute anyway).
                ops.push(StorageOp::TruncateOutbound { channel: channel.id, from: step });
            }
            if keep_log {
                ops.push(StorageOp::PutOutbound(OutboundRow { channel: channel.id, step, peer, wire: wire.to_vec() }));
            }
            let ticket = self.submit(ops);
            let seq = q.next_seq;
            q.next_seq += 1;
            let (done, answer) = oneshot::channel();
            q.head = Some(out.next.clone());
            let repairs = q.repair;
            q.queue.push_back(OutPending {
                seq,
                outcome: None,
                next: out.next,
                msg: OutboundMessage { peer, channel: channel.id, step, wire },
                slot,
                receipt,
                idem,
                acks,
                keep_log,
                repairs,
                done: Some(done),
            });
            return Ok(Sealed::Submitted(Box::new(Handover {
                inner: Arc::clone(self),
                channel: Arc::clone(channel),
                seq,
                ticket,
                answer: Some(answer),
            })));
        }
        // FRAME → ENCODE
        let mut tx = link.tx.lock();
        let step = tx.step;
        let out = tx.seal_outbound(&self.identity, &channel.id, usize::from(channel.depth), payload)?;
        let (message_id, correlation_id) = link.ids(&channel.id, &self.identity, step);
        let receipt = Receipt { message_id, channel: channel.id, step, correlation_id };
        *tx = out.next;
        drop(tx);
        let msg = OutboundMessage { peer, channel: channel.id, step, wire: Arc::from(out.wire) };
        if keep_log {
            link.log.lock().entries.push_back(msg.clone());
        }
        slot.send(msg);
        self.remember_idempotent(&mut ch, idem, receipt);
        drop(ch);
        Ok(Sealed::Sent(receipt))
    }

    /// The commit of the queued message `seq` of `channel` is known: records it and
    /// settles the queue's front (see [`OutQueue`]).
    fn commit_known(&self, channel: &ChannelRecord, seq: u64, outcome: std::result::Result<(), StorageError>) {
        let Some(link) = channel.remote() else { return };
        let mut ch = channel.inner.lock();
        let mut q = link.out.lock();
        super::record(&mut q.queue, seq, outcome);
        while let Some((mut p, outcome)) = super::pop_known(&mut q.queue) {
            let done = p.done.take();
            match outcome.or_else(|e| self.storage_failed(e)) {
                Ok(()) => {
                    // Committed: the chain moves on, the message enters the log and goes
                    // to the transport (in step order), its sender gets the receipt.
                    *link.tx.lock() = p.next;
                    if p.repairs {
                        q.repair = false;
                    }
                    if p.keep_log {
                        link.log.lock().entries.push_back(p.msg.clone());
                    }
                    p.slot.send(p.msg);
                    self.remember_idempotent(&mut ch, p.idem, p.receipt);
                    if let Some(d) = done {
                        // The sender may be gone (cancelled): the message was still sent.
                        let _ = d.send(Ok(p.receipt));
                    }
                }
                Err(e) => {
                    self.requeue_acks(p.acks);
                    if let Some(d) = done {
                        let _ = d.send(Err(e));
                    }
                    // The peer must see contiguous steps: every later message of the
                    // channel fails too (none was handed over), and storage goes back to
                    // the chain before the failed one, behind their batches.
                    let from = p.receipt.step;
                    for later in q.queue.drain(..) {
                        self.requeue_acks(later.acks);
                        if let Some(d) = later.done {
                            let _ = d.send(Err(Error::Storage(StorageError::Backend(format!(
                                "an earlier message of channel {} (step {from}) failed to commit; nothing from it on was sent",
                                channel.id.short()
                            )))));
                        }
                    }
                    q.head = None;
                    let back = link.tx.lock().clone();
                    // Not waited for; until a batch of the channel is known to have
                    // committed after it, every batch repeats the truncation (`repair`),
                    // so a failed compensation is made good by the next send.
                    q.repair = true;
                    drop(self.submit(vec![
                        StorageOp::AdvanceRemoteTx { id: channel.id, tx: back, from: None },
                        StorageOp::TruncateOutbound { channel: channel.id, from },
                    ]));
                }
            }
        }
        if q.queue.is_empty() {
            q.head = None;
            link.drained.notify_waiters();
        }
    }
}

/// What [`Inner::execute_remote`] did.
enum Sealed {
    /// An idempotent retry, answered from the window (nothing sent).
    Replayed(Receipt),
    /// Sent without storage: the chain moved on and the message went to the transport.
    Sent(Receipt),
    /// Sealed, submitted and queued: the commit is still to be awaited.
    Submitted(Box<Handover>),
}

/// The durable sends of a cross-runtime channel that were submitted and not yet settled.
///
/// A durable send seals its message at the *head* (the chain after the last message
/// submitted), submits its batch (the chain's advance with the outbound log row), moves
/// the head on and queues the message, all under the channel's lock and its outbound turn;
/// then it releases both and awaits its commit as a future. The next send of the channel
/// is sealed while this one commits, so a channel's sends share transactions.
///
/// Queued messages are settled strictly in step order, by whichever party learns of a
/// commit that makes the front's known (the front's sender, or a later sender whose commit
/// came first): committed, the chain (`RemoteLink::tx`, what the peer can have seen) moves
/// on, the message enters the outbound log and is handed to the transport, and its sender
/// gets the receipt. So the transport is handed a channel's steps contiguously and in
/// order.
///
/// A failed batch fails its message and every later queued one: they were sealed on top of
/// it, and the peer must not see a gap. None of them was handed over. The head goes back
/// to the chain (the state before the failed message) and a compensating batch, submitted
/// behind theirs (some may still commit), puts storage back: the chain's state before the
/// failed step and the outbound log without it and what follows. The next send seals at
/// the failed step again; its ciphertext never left the process, so no (key, nonce) pair
/// anyone saw is reused.
///
/// A sender whose future is dropped after it submitted (a cancelled async send) leaves a
/// thread to wait for its commit in its place, so the queue never stalls. Whatever else
/// moves the chain (a rotation, a reset, a close) takes the outbound turn and waits until
/// the queue is empty (`RemoteLink::outbound_turn`).
#[derive(Default)]
pub(crate) struct OutQueue {
    /// The chain after the last message submitted; `None` when nothing is queued (the
    /// head is then the chain itself).
    head: Option<BilateralState>,
    queue: VecDeque<OutPending>,
    /// Number of the next message queued (a step can be queued again after a failure).
    next_seq: u64,
    /// A compensation was submitted and no batch after it is known to have committed.
    repair: bool,
}

impl OutQueue {
    /// Whether no send is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A durable cross-runtime message submitted and not yet settled.
struct OutPending {
    seq: u64,
    /// Its commit's outcome, once its sender (or a thread in its place) saw it.
    outcome: Option<std::result::Result<(), StorageError>>,
    /// The outbound chain after the message.
    next: BilateralState,
    msg: OutboundMessage,
    slot: Box<dyn OutboundSlot>,
    receipt: Receipt,
    idem: Option<([u8; 32], [u8; 32])>,
    /// Removals of handled messages that rode in the batch (put back if it fails).
    acks: Vec<(ChannelId, u64)>,
    keep_log: bool,
    /// Its batch repeats a compensation's truncation.
    repairs: bool,
    /// Where its sender waits for the outcome.
    done: Option<oneshot::Sender<Result<Receipt>>>,
}

impl super::Queued for OutPending {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn outcome(&mut self) -> &mut Option<std::result::Result<(), StorageError>> {
        &mut self.outcome
    }
}

/// A queued durable cross-runtime send, waiting for its commit and then for its settling.
/// Dropped before its commit is known (a cancelled async send), a thread waits for the
/// commit in its place: the batch may commit, and then the message must be handed over and
/// the chain moved on, or the queue would stall.
struct Handover {
    inner: Arc<Inner>,
    channel: Arc<ChannelRecord>,
    seq: u64,
    ticket: Option<Ticket>,
    answer: Option<oneshot::Receiver<Result<Receipt>>>,
}

impl Handover {
    /// Awaits the commit (a future: no thread is blocked), settles what it can, then
    /// awaits this message's outcome.
    async fn settle(mut self: Box<Self>) -> Result<Receipt> {
        let outcome = match self.ticket.as_mut() {
            Some(t) => t.wait_mut().await,
            None => Ok(()),
        };
        self.ticket = None;
        self.inner.commit_known(&self.channel, self.seq, outcome);
        let inconsistent = Error::Inconsistent { channel: self.channel.id };
        match self.answer.take() {
            Some(rx) => rx.await.unwrap_or(Err(inconsistent)),
            None => Err(inconsistent),
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else { return };
        let (inner, channel, seq) = (Arc::clone(&self.inner), Arc::clone(&self.channel), self.seq);
        finish_elsewhere(ticket, self.channel.id, "send", move |outcome| inner.commit_known(&channel, seq, outcome));
    }
}
