//! The inbound half of the cross-runtime pipeline: VALIDATE → DECODE → commit → DELIVER of
//! a wire message from a peer runtime, and a channel's queue of durable ingests in flight
//! ([`InQueue`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mfp_core::bilateral::BilateralState;
use mfp_core::envelope::{EnvelopeHeader, EnvelopeLimits};
use mfp_core::{ChannelId, ENVELOPE_HEADER_SIZE, RuntimeId, TAG_SIZE};
use tokio::sync::oneshot;

use super::finish_elsewhere;
use crate::admin::Wait;
use crate::agent::{AgentRecord, Delivery};
use crate::audit::{AuditEvent, AuditEventType};
use crate::channel::ChannelRecord;
use crate::error::{Error, Result};
use crate::remote::Ingested;
use crate::runtime::Inner;
use crate::storage::{DeliveryRow, StorageError, StorageOp, Ticket};
use crate::types::{ChannelStatus, DeliveredMessage};

impl Inner {
    // ---- inbound half ---------------------------------------------------------------

    /// VALIDATE → DECODE → commit → DELIVER of a wire message from `peer`.
    pub(crate) async fn ingest(self: &Arc<Self>, peer: &RuntimeId, wire: &[u8], wait: Wait) -> Result<Ingested> {
        match self.ingest_open(peer, wire, wait).await? {
            Opened::Done(r) => Ok(r),
            Opened::Submitted(h) => match wait {
                Wait::Yes => h.settle().await,
                Wait::No(_) => (*h).settle_blocking(),
            },
        }
    }

    /// VALIDATE → DECODE of a wire message from `peer`, at the head of its channel's
    /// inbound chain. Without storage (or on a shared chain) the chain moves on and the
    /// message is delivered in the same hold. With storage, its batch (the chain's advance
    /// and the inbox row) is submitted and the message queued (see [`InQueue`]); the
    /// returned [`InHandover`] awaits the commit and the message's settling. The next
    /// message of the channel may be opened as soon as this returns.
    pub(crate) async fn ingest_open(self: &Arc<Self>, peer: &RuntimeId, wire: &[u8], wait: Wait) -> Result<Opened> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let m = &self.shared.metrics;
        let reject = |e: Error| {
            m.remote_rejected.inc();
            e
        };
        let header = EnvelopeHeader::parse(wire).map_err(|e| reject(Error::Core(e.into())))?;
        // Magic, version, reserved bytes: nothing else of a header that breaks them is read.
        if let Some(e) = header.protocol_errors().into_iter().next() {
            return Err(reject(Error::Core(e.into())));
        }
        let channel = self.channel(&header.channel_id).map_err(reject)?;
        let Some(link) = channel.remote().filter(|l| l.end.peer == *peer) else {
            return Err(reject(Error::WrongPeer { channel: channel.id, from: peer.short() }));
        };
        if header.check_sender(peer).is_err() {
            return Err(reject(Error::WrongPeer { channel: channel.id, from: peer.short() }));
        }
        let body = wire.get(ENVELOPE_HEADER_SIZE..).unwrap_or_default();
        // The receiver's own limits and the channel's depth, from the header, before any
        // work on the body.
        let max_payload = match self.config.max_payload_size {
            0 => mfp_core::encoding::MAX_ENCODABLE_PAYLOAD,
            n => n,
        };
        let limits = EnvelopeLimits {
            max_frame_depth: u32::try_from(self.config.max_frame_depth).unwrap_or(u32::MAX),
            max_payload_len: u32::try_from(max_payload.saturating_add(TAG_SIZE)).unwrap_or(u32::MAX),
        };
        if let Err(e) = header.validate(&limits) {
            return Err(self.inbound_failure(&channel, Error::Core(e.into())));
        }
        if header.frame_depth != u32::from(channel.depth) {
            return Err(self.inbound_failure(&channel, Error::FrameValidation));
        }
        let recipient = Arc::clone(&channel.a);
        let durable = self.persisting() && !link.rx.is_shared();
        let _turn = match wait {
            Wait::Yes => link.ingest_turn.lock().await,
            Wait::No(operation) => link.ingest_turn.try_lock().map_err(|_| Error::WouldBlock { operation })?,
        };
        if let Wait::No(operation) = wait
            && durable
            && !link.inq.lock().is_empty()
        {
            // Its settling would wait behind messages whose tasks may need this thread.
            return Err(Error::WouldBlock { operation });
        }
        let (bytes, permit, mut q) = loop {
            loop {
                // Read together (the queue's lock is held while it settles).
                let (committed, expected, rewound) = {
                    let q = link.inq.lock();
                    let committed = link.rx.lock().step;
                    (committed, q.head.as_ref().map_or(committed, |h| h.step), q.rewound)
                };
                if header.step < committed {
                    m.remote_duplicates.inc();
                    return Ok(Opened::Done(Ingested::Duplicate { channel: channel.id, step: header.step }));
                }
                if header.step < expected {
                    // Again while its first copy is still committing: the answer (duplicate,
                    // or not taken) waits for that copy's outcome.
                    link.inbound_settled(wait).await?;
                    continue;
                }
                if header.step > expected {
                    if rewound {
                        // A message sealed after one whose commit failed here: the peer sends
                        // again from the failed step; not the peer's fault, not counted.
                        return Err(reject(Error::NotTaken { channel: channel.id, step: expected }));
                    }
                    let e = Error::StepMismatch { channel: channel.id, expected, got: header.step };
                    return Err(self.inbound_failure(&channel, e));
                }
                break;
            }
            match channel.inner.lock().status {
                ChannelStatus::Active => {}
                ChannelStatus::Quarantined => return Err(reject(Error::ChannelQuarantined(channel.id))),
                ChannelStatus::Closed => return Err(reject(Error::ChannelClosed(channel.id))),
            }
            // Room in the recipient's mailbox first, so that nothing can fail after the commit.
            let plain_len = (header.payload_len as usize).saturating_sub(TAG_SIZE);
            let deadline = self.clock.now() + self.config.pipeline_timeout;
            // Not counted as a refusal when the caller could not wait: it tries again, waiting.
            let (bytes, permit) = self
                .reserve_mailbox(&recipient, plain_len, deadline, wait)
                .await
                .map_err(|e| if matches!(e, Error::WouldBlock { .. }) { e } else { reject(e) })?;
            let q = link.inq.lock();
            if !durable || q.head.as_ref().map_or_else(|| link.rx.lock().step, |h| h.step) == header.step {
                break (bytes, permit, q);
            }
            // The queue moved while the mailbox was reserved (a failed batch sent the head
            // back): the message is looked at again.
            drop(q);
        };
        // VALIDATE → DECODE, at the head's step; with an accepted rotation pending (and not
        // taken by a message queued before), under the rotated chain first (the peer rotates
        // at a step of its choosing).
        let pending = link.rx_rotation.lock().clone();
        let open = |rx: &BilateralState, try_rotated: bool| {
            let rotated = pending.as_ref().filter(|_| try_rotated).and_then(|secret| {
                rx.rotate(secret, &self.identity, peer).open_inbound(&header, body).ok().map(|(p, n)| (p, n, rx.step))
            });
            match rotated {
                Some(v) => Ok((v, true)),
                None => rx.open_inbound(&header, body).map(|(payload, next)| ((payload, next, rx.step), false)),
            }
        };
        let opened = if durable {
            match &q.head {
                Some(head) => open(head, !q.rotated),
                None => open(&link.rx.lock(), true),
            }
        } else {
            open(&link.rx.lock(), true)
        };
        let ((payload, next, step), rotated) = match opened {
            Ok(v) => v,
            Err(e) => {
                drop(q);
                return Err(self.inbound_failure(&channel, e.into()));
            }
        };
        if step != header.step {
            // A shared chain moved meanwhile (pymfp compat: a send on another channel).
            drop(q);
            let e = Error::StepMismatch { channel: channel.id, expected: step, got: header.step };
            return Err(self.inbound_failure(&channel, e));
        }
        let (message_id, correlation_id) = link.ids(&channel.id, peer, step);
        let held = u32::try_from(bytes.num_permits()).unwrap_or(u32::MAX);
        bytes.forget();
        let msg = DeliveredMessage {
            payload,
            sender: link.end.agent,
            channel: channel.id,
            message_id,
            correlation_id,
            step,
            redelivered: false,
            sender_runtime: Some(*peer),
        };
        if durable {
            // PERSIST: the advance and the inbox row commit together, before the message
            // is delivered or acknowledged. Submitted under the queue's lock (and the
            // inbound turn), so a channel's batches reach storage in step order.
            let acks = self.take_acks();
            let mut ops = Vec::with_capacity(3 + acks.len() + q.repair.len());
            ops.extend(acks.iter().map(|&(channel, step)| StorageOp::AckDelivery { channel, step }));
            // A compensation is not known to have committed: this batch repeats it.
            ops.extend(q.repair.iter().cloned());
            // Conditional: if an earlier batch of the channel fails, this one cannot commit
            // past it (storage then holds exactly what was delivered, even if the runtime
            // stops before its compensation is written).
            ops.push(StorageOp::AdvanceRemoteRx { id: channel.id, rx: next.clone(), from: Some(step) });
            if rotated {
                ops.push(StorageOp::RemoteRotation { id: channel.id, secret: None });
            }
            ops.push(StorageOp::PutDelivery(DeliveryRow {
                channel: channel.id,
                step,
                recipient: recipient.id,
                sender: link.end.agent,
                message_id,
                correlation_id: correlation_id.0,
                payload: msg.payload.clone(),
            }));
            let ticket = self.submit(ops);
            let seq = q.next_seq;
            q.next_seq += 1;
            q.head = Some(next.clone());
            q.rotated |= rotated;
            q.rewound = false;
            let repairs = !q.repair.is_empty();
            let (done, answer) = oneshot::channel();
            q.queue.push_back(InPending {
                seq,
                outcome: None,
                next,
                rotated,
                msg,
                permit,
                bytes: held,
                acks,
                repairs,
                done: Some(done),
            });
            return Ok(Opened::Submitted(Box::new(InHandover {
                inner: Arc::clone(self),
                channel: Arc::clone(&channel),
                seq,
                ticket,
                answer: Some(answer),
            })));
        }
        drop(q);
        *link.rx.lock() = next;
        if rotated {
            *link.rx_rotation.lock() = None;
        }
        channel.inner.lock().validation_failures = 0;
        let events = self.delivered(&channel, msg, permit, held, false, rotated);
        for ev in events {
            self.event(ev);
        }
        Ok(Opened::Done(Ingested::Delivered { channel: channel.id, step }))
    }

    /// Hands a received message to its recipient's mailbox (room reserved before), counts
    /// it; the audit events to emit (once no lock is held).
    fn delivered(
        &self,
        channel: &ChannelRecord,
        msg: DeliveredMessage,
        permit: tokio::sync::mpsc::OwnedPermit<Delivery>,
        held: u32,
        durable: bool,
        rotated: bool,
    ) -> Vec<AuditEvent> {
        let m = &self.shared.metrics;
        let mut events = Vec::new();
        let step = msg.step;
        if rotated {
            m.remote_rotations.inc();
            let mut ev = AuditEvent::new(AuditEventType::KeyRotation);
            ev.channel = Some(channel.id);
            ev.step = Some(step);
            ev.reason = Some("inbound chain rotated".to_string());
            events.push(ev);
        }
        let (peer_agent, correlation_id) = (msg.sender, msg.correlation_id);
        let token = crate::runtime::InFlight::new(&self.shared, held);
        permit.send(Delivery { msg, done: None, token, durable });
        m.remote_received.inc();
        if self.audit.is_some() || tracing::enabled!(target: "mfp::audit", tracing::Level::INFO) {
            let mut ev = AuditEvent::new(AuditEventType::MessageDelivered);
            ev.channel = Some(channel.id);
            ev.agent = Some(channel.a.id);
            ev.peer = Some(peer_agent);
            ev.step = Some(step);
            ev.correlation_id = Some(correlation_id);
            events.push(ev);
        }
        events
    }

    /// The commit of the queued inbound message `seq` of `channel` is known: records it and
    /// settles the queue's front (see [`InQueue`]).
    fn ingest_known(&self, channel: &ChannelRecord, seq: u64, outcome: std::result::Result<(), StorageError>) {
        let Some(link) = channel.remote() else { return };
        let mut events = Vec::new();
        {
            let mut ch = channel.inner.lock();
            let mut q = link.inq.lock();
            super::record(&mut q.queue, seq, outcome);
            while let Some((mut p, outcome)) = super::pop_known(&mut q.queue) {
                let done = p.done.take();
                match outcome.or_else(|e| self.storage_failed(e)) {
                    Ok(()) => {
                        // Committed: the chain moves on, the message goes to the mailbox
                        // (in step order) and its ingest answers (then it is acknowledged).
                        if ch.status != ChannelStatus::Closed {
                            // (A closed channel's chains were wiped; they stay so.)
                            *link.rx.lock() = p.next;
                        }
                        if p.rotated {
                            *link.rx_rotation.lock() = None;
                            q.rotated = false;
                        }
                        if p.repairs {
                            q.repair.clear();
                        }
                        ch.validation_failures = 0;
                        let step = p.msg.step;
                        events.extend(self.delivered(channel, p.msg, p.permit, p.bytes, true, p.rotated));
                        if let Some(d) = done {
                            let _ = d.send(Ok(Ingested::Delivered { channel: channel.id, step }));
                        }
                    }
                    Err(e) => {
                        // Neither delivered nor acknowledged: the peer sends again from the
                        // last acknowledged step. Every later queued message fails too (it
                        // was opened on top of this one), and storage goes back to the
                        // committed chain, behind their batches.
                        self.shared.metrics.remote_rejected.inc();
                        let from = p.msg.step;
                        let mut taken_back = vec![(p.msg.step, p.msg.message_id)];
                        let mut rotation = p.rotated;
                        self.requeue_acks(p.acks);
                        channel.a.mailbox_bytes.add_permits(p.bytes as usize);
                        if let Some(d) = done {
                            let _ = d.send(Err(e));
                        }
                        for later in q.queue.drain(..) {
                            self.shared.metrics.remote_rejected.inc();
                            taken_back.push((later.msg.step, later.msg.message_id));
                            rotation |= later.rotated;
                            self.requeue_acks(later.acks);
                            channel.a.mailbox_bytes.add_permits(later.bytes as usize);
                            if let Some(d) = later.done {
                                let _ = d.send(Err(Error::NotTaken { channel: channel.id, step: from }));
                            }
                        }
                        q.head = None;
                        q.rotated = false;
                        q.rewound = true;
                        let back = link.rx.lock().clone();
                        let mut repair: Vec<StorageOp> = taken_back
                            .into_iter()
                            .map(|(step, message_id)| StorageOp::RemoveDelivery {
                                channel: channel.id,
                                step,
                                message_id,
                            })
                            .collect();
                        if rotation {
                            let secret = link.rx_rotation.lock().clone();
                            repair.push(StorageOp::RemoteRotation { id: channel.id, secret });
                        }
                        // Not waited for; until a batch of the channel is known to have
                        // committed after it, every batch repeats it (`repair`).
                        q.repair.extend(repair.iter().cloned());
                        let mut ops = vec![StorageOp::AdvanceRemoteRx { id: channel.id, rx: back, from: None }];
                        ops.extend(repair);
                        drop(self.submit(ops));
                    }
                }
            }
            if q.queue.is_empty() {
                q.head = None;
                q.rotated = false;
                link.in_drained.notify_waiters();
            }
        }
        for ev in events {
            self.event(ev);
        }
    }

    /// Counts a refused inbound message against its channel: consecutive failures up to
    /// `validation_failure_threshold` quarantine the channel (written without waiting).
    fn inbound_failure(&self, channel: &ChannelRecord, e: Error) -> Error {
        let m = &self.shared.metrics;
        m.remote_rejected.inc();
        if matches!(e, Error::Decode) {
            m.decode_failures.inc();
        } else {
            m.validation_failures.inc();
        }
        let mut ch = channel.inner.lock();
        if ch.status != ChannelStatus::Active {
            return e;
        }
        let (ops, quarantine) = self.count_validation_failure(channel.id, &mut ch);
        drop(ch);
        if quarantine {
            self.failures_quarantined(&channel.id, "Validation failure threshold (inbound from a peer runtime)");
        }
        // Best effort, not awaited: the count and the quarantine hold in memory regardless.
        if channel.remote().is_some_and(|l| !l.rx.is_shared()) {
            drop(self.submit(ops));
        }
        let mut ev = AuditEvent::new(AuditEventType::MessageRejected);
        ev.success = false;
        ev.channel = Some(channel.id);
        ev.reason = Some("inbound message from a peer runtime refused".to_string());
        self.event(ev);
        e
    }

    /// Reserves the recipient's mailbox bytes and slot, waiting (until `deadline`) when the
    /// backpressure policy says so and the caller may wait.
    async fn reserve_mailbox<'a>(
        &self,
        recipient: &'a AgentRecord,
        payload_len: usize,
        deadline: Instant,
        wait: Wait,
    ) -> Result<(tokio::sync::SemaphorePermit<'a>, tokio::sync::mpsc::OwnedPermit<Delivery>)> {
        let need = recipient.bytes_needed(payload_len);
        let full = |op: Option<&'static str>| match op {
            Some(operation) => Error::WouldBlock { operation },
            None => {
                self.shared.metrics.mailbox_full.inc();
                Error::MailboxFull(recipient.id)
            }
        };
        let no_wait = match wait {
            Wait::No(op) => Some(op),
            Wait::Yes => None,
        };
        let bytes = match self.try_reserve_bytes(recipient, need)? {
            Some(b) => b,
            None if no_wait.is_some() => return Err(full(no_wait)),
            None => match self.timeout_at(deadline, recipient.mailbox_bytes.acquire_many(need)).await {
                Some(Ok(b)) => b,
                Some(Err(_)) => return Err(Error::AgentNotBound(recipient.id)),
                None => return Err(full(None)),
            },
        };
        let permit = match self.try_reserve_owned(recipient)? {
            Some(p) => p,
            None if no_wait.is_some() => return Err(full(no_wait)),
            None => match self.timeout_at(deadline, recipient.tx.clone().reserve_owned()).await {
                Some(Ok(p)) => p,
                Some(Err(_)) => return Err(Error::AgentNotBound(recipient.id)),
                None => return Err(full(None)),
            },
        };
        Ok((bytes, permit))
    }
}

/// What [`Inner::ingest_open`] did.
pub(crate) enum Opened {
    /// Answered at once: a duplicate, or delivered without storage.
    Done(Ingested),
    /// Opened, submitted and queued: the commit is still to be awaited.
    Submitted(Box<InHandover>),
}

/// The durable ingests of a cross-runtime channel that were submitted and not yet settled:
/// the inbound mirror of [`OutQueue`](super::OutQueue).
///
/// A durable ingest checks the message's step against the *head* (the inbound chain after
/// the last message submitted), reserves room in the recipient's mailbox, opens the message
/// at the head, submits its batch (the chain's advance with the inbox row), moves the head
/// on and queues the message, all under the channel's inbound turn; then it releases the
/// turn and awaits its commit as a future. The next message of the channel is opened while
/// this one commits, so a channel's inbound messages share transactions.
///
/// Queued messages are settled strictly in step order, by whichever party learns of a
/// commit that makes the front's known: committed, the chain (`RemoteLink::rx`, what the
/// peer may be told was received) moves on, the message goes to the mailbox, and its ingest
/// answers `Delivered` (the transport acknowledges it then). So a channel's messages reach
/// the mailbox, and their acknowledgements the peer, in step order.
///
/// A failed batch fails its message and every later queued one: they were opened on top of
/// it. None of them was delivered or acknowledged, their mailbox room is given back, and
/// the peer sends them again from the last acknowledged step. The head goes back to the
/// chain (the committed state before the failed message), and a compensating batch,
/// submitted behind theirs (some may still commit, as a store commits in submission
/// order), puts storage back: the chain's state before the failed step, the inbox without
/// the taken-back messages (removed by message id, so a message of the same step from
/// before a reset of the channel stays), and the pending rotation if one of them had
/// cleared it. Until a batch of the channel is known to have committed after it, every
/// batch repeats the removals (`repair`), so a failed compensation is made good by the next
/// message. Messages that arrive in the meantime with a step beyond the rewound head were
/// sent after the failed one: refused as not taken (not counted against the peer) until the
/// failed step comes again.
///
/// A copy of a message still queued waits for the queue to settle before it is answered;
/// a caller whose future is dropped after it submitted leaves a thread to wait for its
/// commit in its place, so the queue never stalls. A rotation or a reset takes the inbound
/// turn and waits until the queue is empty (`RemoteLink::inbound_settled`).
#[derive(Default)]
pub(crate) struct InQueue {
    /// The chain after the last message submitted; `None` when nothing is queued.
    head: Option<BilateralState>,
    queue: VecDeque<InPending>,
    next_seq: u64,
    /// A queued message was opened under the pending rotation (the head is rotated).
    rotated: bool,
    /// A batch failed and the head went back; no message was opened since.
    pub(super) rewound: bool,
    /// The removals of a compensation not known to have committed.
    repair: Vec<StorageOp>,
}

impl InQueue {
    /// Whether no ingest is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A durable inbound message submitted and not yet settled.
struct InPending {
    seq: u64,
    outcome: Option<std::result::Result<(), StorageError>>,
    /// The inbound chain after the message.
    next: BilateralState,
    /// Opened under the pending rotation.
    rotated: bool,
    msg: DeliveredMessage,
    /// Its reserved mailbox slot, and byte permits (given back if it fails).
    permit: tokio::sync::mpsc::OwnedPermit<Delivery>,
    bytes: u32,
    acks: Vec<(ChannelId, u64)>,
    /// Its batch repeats a compensation's removals.
    repairs: bool,
    done: Option<oneshot::Sender<Result<Ingested>>>,
}

impl super::Queued for InPending {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn outcome(&mut self) -> &mut Option<std::result::Result<(), StorageError>> {
        &mut self.outcome
    }
}

/// A queued durable ingest, waiting for its commit and then for its settling. Dropped
/// before its commit is known, a thread waits for the commit in its place.
pub(crate) struct InHandover {
    inner: Arc<Inner>,
    channel: Arc<ChannelRecord>,
    seq: u64,
    ticket: Option<Ticket>,
    answer: Option<oneshot::Receiver<Result<Ingested>>>,
}

impl InHandover {
    /// Awaits the commit (a future), settles what it can, then awaits this message's
    /// outcome.
    pub(crate) async fn settle(mut self: Box<Self>) -> Result<Ingested> {
        let outcome = match self.ticket.as_mut() {
            Some(t) => t.wait_mut().await,
            None => Ok(()),
        };
        self.ticket = None;
        self.inner.ingest_known(&self.channel, self.seq, outcome);
        let inconsistent = Error::Inconsistent { channel: self.channel.id };
        match self.answer.take() {
            Some(rx) => rx.await.unwrap_or(Err(inconsistent)),
            None => Err(inconsistent),
        }
    }

    /// [`InHandover::settle`] blocking the thread (only when nothing else was queued: the
    /// message is the queue's front, settled by its own commit).
    fn settle_blocking(mut self) -> Result<Ingested> {
        let outcome = self.ticket.take().map_or(Ok(()), Ticket::wait);
        self.inner.ingest_known(&self.channel, self.seq, outcome);
        let inconsistent = Error::Inconsistent { channel: self.channel.id };
        match self.answer.take().map(|mut rx| rx.try_recv()) {
            Some(Ok(r)) => r,
            _ => Err(inconsistent),
        }
    }
}

impl Drop for InHandover {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else { return };
        let (inner, channel, seq) = (Arc::clone(&self.inner), Arc::clone(&self.channel), self.seq);
        finish_elsewhere(ticket, self.channel.id, "ingest", move |outcome| inner.ingest_known(&channel, seq, outcome));
    }
}
