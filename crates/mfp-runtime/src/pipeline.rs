//! The send pipeline: ACCEPT → FRAME → ENCODE → VALIDATE → DECODE → DELIVER, then the
//! commit, all under the channel's lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mfp_core::crypto::{HmacKey, sha256};
use mfp_core::{BLOCK_SIZE, ChannelId, Frame, MessageId, ReplayEntropy, TAG_SIZE, encoding, ratchet, sampling};
use tokio::sync::{mpsc, oneshot};

use crate::agent::{AgentRecord, Delivery, Outcome};
use crate::audit::{AuditEvent, AuditEventType};
use crate::channel::{ChannelInner, ChannelRecord, Dedup, DedupHit, PeerRef};
use crate::config::{Backpressure, RateLimitAction};
use crate::error::{Error, Result};
use crate::hooks::SendContext;
use crate::runtime::{Inner, Route};
use crate::storage::{DeliveryRow, StorageOp};
use crate::types::{AgentState, ChannelStatus, CorrelationId, Receipt, SendOptions};

/// Entropy draws up to this size (depth ≤ 8) stay on the stack: correlation (16),
/// message id (16), jitter (16·k).
const SMALL_DRAW: usize = 32 + BLOCK_SIZE * 8;

impl Inner {
    // ---- the send pipeline ----------------------------------------------------------

    /// Checks that need no lock: sender state, rate window, channel membership, size.
    /// `Ok(Err(wait))` asks the caller to wait and retry (rate limit with `Wait`).
    pub(crate) fn precheck(
        &self,
        sender: &Arc<AgentRecord>,
        channel_id: &ChannelId,
        payload_len: usize,
        now: Instant,
    ) -> Result<std::result::Result<Route, Duration>> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        match sender.state() {
            AgentState::Active => {}
            AgentState::Quarantined => return Err(Error::AgentQuarantined(sender.id)),
            AgentState::Terminated => return Err(Error::AgentNotBound(sender.id)),
            s @ AgentState::Bound => return Err(Error::AgentState { agent: sender.id, state: s }),
        }
        let max_rate = self.config.max_message_rate;
        let limited = if max_rate == 0 { None } else { sender.rate.lock().check(now, max_rate) };
        if let Some(retry_after) = limited {
            self.shared.metrics.rate_limited.inc();
            match self.config.rate_limit_action {
                RateLimitAction::Quarantine => {
                    self.quarantine_now(&sender.id, "Rate limit exceeded");
                    return Err(Error::AgentQuarantined(sender.id));
                }
                RateLimitAction::Reject => return Err(Error::RateLimited { retry_after }),
                RateLimitAction::Wait => return Ok(Err(retry_after)),
            }
        }
        let channel = self.channel(channel_id)?;
        let max = self.config.max_payload_size;
        if max > 0 && payload_len > max {
            return Err(Error::PayloadTooLarge { len: payload_len, max });
        }
        let route = match channel.peer_of(&sender.id) {
            Some(PeerRef::Local(r)) => {
                let r = Arc::clone(r);
                Route::Local(channel, r)
            }
            Some(PeerRef::Remote(_)) => Route::Remote(channel),
            None => return Err(Error::NotOnChannel { agent: sender.id, channel: *channel_id }),
        };
        Ok(Ok(route))
    }

    /// ACCEPT (locked part) → FRAME → ENCODE → VALIDATE → DECODE of a local send, up to
    /// the point where the message and the channel's next state exist: the channel's lock
    /// is held in the returned [`Prepared`], nothing has changed yet.
    #[inline]
    fn prepare<'c>(
        &self,
        sender: &AgentRecord,
        channel: &'c ChannelRecord,
        recipient: &AgentRecord,
        payload: &[u8],
        opts: &SendOptions,
        durable_queue_must_be_empty: bool,
    ) -> Result<Prepared<'c>> {
        let ctx = SendContext { sender: sender.id, recipient: recipient.id, channel: channel.id, payload };
        if let Some(h) = &self.hooks
            && let Err(reason) = h.before_send(&ctx)
        {
            self.rejected(sender.id, channel.id, "rejected by hook");
            return Err(Error::HookRejected(reason));
        }
        let depth = usize::from(channel.depth);
        let idem = Self::idempotency(sender, opts, payload);

        // Entropy for one send; on the stack for the usual depths (no 4 KiB memset).
        let need = 32 + BLOCK_SIZE * depth;
        let mut small = [0u8; SMALL_DRAW];
        let mut large = Vec::new();
        let draw: &mut [u8] = if need <= SMALL_DRAW {
            small.get_mut(..need).ok_or(Error::Entropy)?
        } else {
            large.resize(need, 0);
            &mut large
        };

        let mut ch = channel.inner.lock();
        // ACCEPT
        if recipient.state() == AgentState::Quarantined && ch.status == ChannelStatus::Active {
            return Err(Error::ChannelQuarantined(channel.id));
        }
        if let Some(r) = self.accept_locked(&mut ch, &channel.id, idem.as_ref())? {
            return Ok(Prepared::Answered(r));
        }
        if durable_queue_must_be_empty && ch.commits.as_ref().is_some_and(|c| !c.is_empty()) {
            // A blocking send on the thread that drives the runtime could only wait behind
            // the commits queued before it, whose owners need this very thread.
            return Err(Error::WouldBlock { operation: "AgentHandle::send" });
        }
        // The outbound half (FRAME → ENCODE), then the inbound half (VALIDATE → DECODE) of
        // the same message, in one go: both ends are local.
        // Sl keyed for HMAC once: the frame's seed, the encoding key (twice) and the next Sl
        // are MACs under it.
        let sl = HmacKey::new(ch.state.expose());
        let mut sealed = self.seal_local(&ch, &sl, channel, payload, draw)?;
        let next = match Self::open_local(&sl, channel, &mut sealed) {
            Ok(next) => next,
            Err(Error::FrameValidation) => {
                self.shared.metrics.validation_failures.inc();
                let (ops, quarantine) = self.count_validation_failure(channel.id, &mut ch);
                drop(ch);
                if quarantine {
                    self.failures_quarantined(&channel.id, "Validation failure threshold");
                }
                // Best effort: the count and the quarantine hold in memory regardless (pymfp
                // persists neither).
                let _ = self.persist(ops);
                self.rejected(sender.id, channel.id, "frame validation failed");
                return Err(Error::FrameValidation);
            }
            Err(e) => {
                self.shared.metrics.decode_failures.inc();
                self.rejected(sender.id, channel.id, "payload decode failed");
                return Err(e);
            }
        };
        let next_step =
            sealed.step.checked_add(1).ok_or(Error::Core(mfp_core::Error::Crypto("channel step exhausted")))?;
        Ok(Prepared::Ready(Ready { ch, sealed, next, next_step, idem }))
    }

    /// A local send without storage: [`Inner::prepare`], then DELIVER and the advance, all
    /// under the channel's lock. The mailbox slot is already reserved, so delivery cannot
    /// fail after encoding and no (key, nonce) pair is ever used for two different
    /// messages.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn execute(
        &self,
        sender: &Arc<AgentRecord>,
        channel: &ChannelRecord,
        recipient: &AgentRecord,
        payload: &[u8],
        opts: &SendOptions,
        (permit, bytes): (mpsc::Permit<'_, Delivery>, tokio::sync::SemaphorePermit<'_>),
        done: Option<oneshot::Sender<Outcome>>,
        started: Instant,
    ) -> Result<Receipt> {
        let ready = match self.prepare(sender, channel, recipient, payload, opts, false)? {
            Prepared::Answered(r) => return Ok(r),
            Prepared::Ready(ready) => ready,
        };
        let Ready { mut ch, sealed, next, next_step, idem } = ready;
        let Sealed { message_id, correlation_id, step, m, .. } = sealed;

        // DELIVER (cannot fail: the slot is reserved)
        let receipt = Receipt { message_id, channel: channel.id, step, correlation_id };
        permit.send(self.local_delivery(sender, &receipt, m, bytes, done, false));

        // Commit: state, step, Sg — all before the channel lock is released.
        ch.state = next;
        ch.step = next_step;
        ch.validation_failures = 0;
        self.remember_idempotent(&mut ch, idem, receipt);
        {
            let mut sg = self.sg.lock();
            let inner = &mut *ch;
            sg.tree
                .update_hinted(&channel.id, &inner.state, &mut inner.leaf_hint)
                .map_err(|e| Error::Core(e.into()))?;
        }
        drop(ch);

        let ctx = SendContext { sender: sender.id, recipient: recipient.id, channel: channel.id, payload };
        self.sent(sender, &ctx, &receipt, started, None);
        Ok(receipt)
    }

    /// A local send with storage, first part: [`Inner::prepare`], then the batch (the
    /// advance, the durable inbox row, the new Sg) is submitted and the channel's head moves
    /// on at once, so the next send on the channel is framed while this one commits. The
    /// message waits in the channel's commit queue; [`Inner::await_commit`] delivers it
    /// once its batch committed (in step order) and returns its receipt.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn execute_durable(
        &self,
        sender: &AgentRecord,
        channel: &ChannelRecord,
        recipient: &Arc<AgentRecord>,
        payload: &[u8],
        opts: &SendOptions,
        (permit, bytes): (mpsc::OwnedPermit<Delivery>, tokio::sync::SemaphorePermit<'_>),
        done: Option<oneshot::Sender<Outcome>>,
        on_driver: bool,
    ) -> Result<Submitted> {
        let ready = match self.prepare(sender, channel, recipient, payload, opts, on_driver)? {
            Prepared::Answered(r) => return Ok(Submitted::Answered(r)),
            Prepared::Ready(ready) => ready,
        };
        let Ready { mut ch, sealed, next, next_step, idem } = ready;
        let Sealed { message_id, correlation_id, step, m, .. } = sealed;

        // PERSIST: the advance and the new Sg commit in one transaction before anything is
        // delivered or acknowledged. The new Sg is computed and the batch submitted (a
        // non-blocking enqueue) under one hold of the `sg` lock, so storage receives
        // batches in Sg order and the committed Sg is always the root of the committed
        // states. Removals of handled messages ride along (see "Removals" below).
        let acks = self.take_acks();
        let mut ops = Vec::with_capacity(3 + acks.len());
        ops.extend(acks.iter().map(|&(channel, step)| StorageOp::AckDelivery { channel, step }));
        ops.push(StorageOp::AdvanceChannel { id: channel.id, state: next.clone(), step: next_step });
        // The durable inbox: the message commits with the advance, so a receipt means the
        // message survives a crash until its handler has returned.
        ops.push(StorageOp::PutDelivery(DeliveryRow {
            channel: channel.id,
            step,
            recipient: recipient.id,
            sender: sender.id,
            message_id,
            correlation_id: correlation_id.0,
            payload: m.clone(),
        }));
        let ticket = {
            let mut sg = self.sg.lock();
            let inner = &mut *ch;
            if let Err(e) = sg.tree.update_hinted(&channel.id, &next, &mut inner.leaf_hint) {
                drop(sg);
                self.requeue_acks(acks);
                return Err(Error::Core(e.into()));
            }
            ops.push(StorageOp::Sg(sg.tree.root()));
            self.submit(ops)
        };
        let Some(ticket) = ticket else { return Err(Error::Inconsistent { channel: channel.id }) };

        // The byte permits travel with the message (the commit queue returns them if the
        // batch fails).
        let receipt = Receipt { message_id, channel: channel.id, step, correlation_id };
        let delivery = self.local_delivery(sender, &receipt, m, bytes, done, true);
        // The head moves on: the next send frames from the state after this message.
        let durable_before = (ch.state.clone(), ch.step);
        ch.state = next.clone();
        ch.step = next_step;
        ch.validation_failures = 0;
        let queue = ch.commits.get_or_insert_with(|| Box::new(crate::commit::Commits::new(durable_before)));
        let pending = crate::commit::Pending::new(
            ticket,
            (next, next_step),
            (permit, delivery),
            Arc::clone(recipient),
            receipt,
            idem,
            acks,
        );
        Ok(Submitted::Queued(queue.push(pending)))
    }

    /// A local message for the recipient's mailbox. The byte permits of the recipient's
    /// mailbox now travel with the message: its handler's end returns them.
    #[inline]
    fn local_delivery(
        &self,
        sender: &AgentRecord,
        receipt: &Receipt,
        payload: Vec<u8>,
        bytes: tokio::sync::SemaphorePermit<'_>,
        done: Option<oneshot::Sender<Outcome>>,
        durable: bool,
    ) -> Delivery {
        let held = bytes.num_permits();
        bytes.forget();
        let token = crate::runtime::InFlight::new(&self.shared, u32::try_from(held).unwrap_or(u32::MAX));
        Delivery {
            msg: crate::types::DeliveredMessage {
                payload,
                sender: sender.id,
                channel: receipt.channel,
                message_id: receipt.message_id,
                correlation_id: receipt.correlation_id,
                step: receipt.step,
                redelivered: false,
                sender_runtime: None,
            },
            done,
            token,
            durable,
        }
    }

    // ---- shared by the local and the cross-runtime send ---------------------------------

    /// The idempotency key's digest and the payload's, when the send has a key.
    #[inline]
    pub(crate) fn idempotency(
        sender: &AgentRecord,
        opts: &SendOptions,
        payload: &[u8],
    ) -> Option<([u8; 32], [u8; 32])> {
        opts.idempotency_key
            .as_ref()
            .map(|k| (sha256(&[sender.id.as_bytes(), &(k.len() as u64).to_be_bytes(), k]), sha256(&[payload])))
    }

    /// ACCEPT under the channel's lock: its status, then the idempotency window.
    /// `Ok(Some(receipt))`: a retry answered from the window.
    #[inline]
    pub(crate) fn accept_locked(
        &self,
        ch: &mut ChannelInner,
        channel: &ChannelId,
        idem: Option<&([u8; 32], [u8; 32])>,
    ) -> Result<Option<Receipt>> {
        match ch.status {
            ChannelStatus::Active => {}
            ChannelStatus::Quarantined => return Err(Error::ChannelQuarantined(*channel)),
            ChannelStatus::Closed => return Err(Error::ChannelClosed(*channel)),
        }
        if let (Some((key, digest)), Some(d)) = (idem, ch.dedup.as_mut()) {
            match d.lookup(key, digest, self.clock.now(), self.config.dedup_ttl) {
                DedupHit::Miss => {}
                DedupHit::Same(r) => {
                    self.shared.metrics.duplicates_suppressed.inc();
                    return Ok(Some(r));
                }
                DedupHit::Conflict => return Err(Error::IdempotencyConflict),
            }
        }
        Ok(None)
    }

    /// Remembers an idempotent send's receipt (under the channel's lock).
    #[inline]
    pub(crate) fn remember_idempotent(
        &self,
        ch: &mut ChannelInner,
        idem: Option<([u8; 32], [u8; 32])>,
        receipt: Receipt,
    ) {
        if let Some((key, digest)) = idem {
            ch.dedup.get_or_insert_with(|| Box::new(Dedup::default())).record(
                key,
                digest,
                receipt,
                self.clock.now(),
                self.config.dedup_window,
            );
        }
    }

    /// After a send: the rate window, counters, the `after_send` hook, the audit event.
    #[inline]
    pub(crate) fn sent(
        &self,
        sender: &AgentRecord,
        ctx: &SendContext<'_>,
        receipt: &Receipt,
        started: Instant,
        peer_agent: Option<mfp_core::AgentId>,
    ) {
        if self.config.max_message_rate > 0 {
            // The window counts sends from when they went out, not from when the caller
            // started (which may be up to `pipeline_timeout` earlier after a wait).
            sender.rate.lock().record(self.clock.now(), self.config.max_message_rate);
        }
        sender.messages_sent.fetch_add(1, Ordering::Relaxed);
        let m = &self.shared.metrics;
        m.messages_sent.inc();
        if peer_agent.is_some() {
            m.remote_sent.inc();
        }
        m.message_size.observe_size(ctx.payload.len());
        m.send_latency.observe_duration(started.elapsed());
        if let Some(h) = &self.hooks {
            h.after_send(ctx, receipt);
        }
        if self.audit.is_some() || tracing::enabled!(target: "mfp::audit", tracing::Level::INFO) {
            let mut ev = AuditEvent::new(AuditEventType::MessageSent);
            ev.channel = Some(receipt.channel);
            ev.agent = Some(sender.id);
            ev.peer = peer_agent;
            ev.step = Some(receipt.step);
            ev.correlation_id = Some(receipt.correlation_id);
            self.event(ev);
        }
    }

    /// The outbound half for a channel between two local agents: FRAME → ENCODE. Draws
    /// the message and correlation ids and the frame's jitter from `draw` (filled here).
    #[inline]
    fn seal_local(
        &self,
        ch: &ChannelInner,
        sl: &HmacKey,
        channel: &ChannelRecord,
        payload: &[u8],
        draw: &mut [u8],
    ) -> Result<Sealed> {
        self.draw(draw)?;
        let (ids, jitter) = draw.split_at(32);
        let mut corr = [0u8; 8];
        corr.copy_from_slice(ids.get(..8).unwrap_or(&[0; 8]));
        let message_id = MessageId::from_slice(ids.get(16..32).unwrap_or_default())?;
        let sg = self.current_sg().ok_or(Error::Inconsistent { channel: channel.id })?;
        let step = ch.step;
        let depth = usize::from(channel.depth);
        // FRAME
        let frame: Frame = sampling::sample_frame_keyed(sl, step, &sg, depth, &mut ReplayEntropy::new(jitter))?;
        // ENCODE. The protocol message is frame_open ‖ E(P) ‖ frame_close; inside the
        // runtime it is never serialised, so its three parts stay in their own buffers and
        // E(P) is built where the payload's only copy is (no concatenation, and no shift of
        // the plaintext back to the front after decoding).
        let mut m = Vec::with_capacity(payload.len() + TAG_SIZE);
        m.extend_from_slice(payload);
        let tag = encoding::encode_in_place_keyed(sl, &channel.id, step, &mut m)?;
        m.extend_from_slice(&tag);
        let frame_close = frame.mirror();
        Ok(Sealed { message_id, correlation_id: CorrelationId(corr), step, frame, frame_close, m })
    }

    /// The inbound half for a channel between two local agents: VALIDATE → DECODE, in
    /// place (`sealed.m` then holds the payload). Returns the state after the message;
    /// [`Error::FrameValidation`] or [`Error::Decode`] otherwise, with nothing changed.
    #[inline]
    fn open_local(sl: &HmacKey, channel: &ChannelRecord, sealed: &mut Sealed) -> Result<mfp_core::State> {
        // VALIDATE: the frame the receiver derives is the sender's (same state, step and
        // Sg), so a mismatch means memory corruption or a bug; it counts like any failure.
        if Frame::validate(&sealed.frame, &sealed.frame_close, &sealed.frame).is_err() {
            return Err(Error::FrameValidation);
        }
        // DECODE (in place)
        let plain_len = encoding::decode_in_place_keyed(sl, &channel.id, sealed.step, &mut sealed.m)
            .map_err(|_| Error::Decode)?
            .len();
        sealed.m.truncate(plain_len);
        Ok(ratchet::advance_keyed(sl, &sealed.frame))
    }

    // ---- Removals from the durable inbox -----------------------------------------------
    //
    // When a handler returns, its message's removal is queued here, not written at once: the
    // next send's batch carries the queued removals into its transaction, and a delivery
    // worker that finds its mailbox empty (or stops) submits what is queued as one batch of
    // its own. Either way nobody waits for the commit. Under load removals cost no extra
    // transaction; when idle, one per drained mailbox. A crash before a removal commits only
    // means that message is delivered again, flagged, after the restart.

    /// Queues the removal of a handled message.
    pub(crate) fn queue_ack(&self, channel: ChannelId, step: u64) {
        self.acks.lock().push((channel, step));
    }

    pub(crate) fn take_acks(&self) -> Vec<(ChannelId, u64)> {
        let mut q = self.acks.lock();
        if q.is_empty() { Vec::new() } else { std::mem::take(&mut *q) }
    }

    /// Puts back removals whose batch failed (they go with a later one).
    pub(crate) fn requeue_acks(&self, acks: Vec<(ChannelId, u64)>) {
        if !acks.is_empty() {
            self.acks.lock().extend(acks);
        }
    }

    /// Submits the queued removals as one batch, without waiting for it.
    pub(crate) fn flush_acks(&self) {
        let acks = self.take_acks();
        if !acks.is_empty() {
            drop(
                self.submit(acks.into_iter().map(|(channel, step)| StorageOp::AckDelivery { channel, step }).collect()),
            );
        }
    }

    /// Reserves `need` bytes of the recipient's mailbox without waiting; `None` asks the
    /// caller to wait (backpressure `Wait`).
    pub(crate) fn try_reserve_bytes<'a>(
        &self,
        recipient: &'a AgentRecord,
        need: u32,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'a>>> {
        match recipient.mailbox_bytes.try_acquire_many(need) {
            Ok(p) => Ok(Some(p)),
            Err(tokio::sync::TryAcquireError::NoPermits) => match self.config.backpressure {
                Backpressure::Reject => {
                    self.shared.metrics.mailbox_full.inc();
                    Err(Error::MailboxFull(recipient.id))
                }
                Backpressure::Wait => Ok(None),
            },
            Err(tokio::sync::TryAcquireError::Closed) => Err(Error::AgentNotBound(recipient.id)),
        }
    }

    /// Reserves an owned mailbox slot without waiting (a durable send holds it while its
    /// message waits for its commit).
    pub(crate) fn try_reserve_owned(&self, recipient: &AgentRecord) -> Result<Option<mpsc::OwnedPermit<Delivery>>> {
        match recipient.tx.clone().try_reserve_owned() {
            Ok(p) => Ok(Some(p)),
            Err(mpsc::error::TrySendError::Full(_)) => match self.config.backpressure {
                Backpressure::Reject => {
                    self.shared.metrics.mailbox_full.inc();
                    Err(Error::MailboxFull(recipient.id))
                }
                Backpressure::Wait => Ok(None),
            },
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::AgentNotBound(recipient.id)),
        }
    }

    /// Reserves a mailbox slot without waiting.
    pub(crate) fn try_reserve<'a>(&self, recipient: &'a AgentRecord) -> Result<Option<mpsc::Permit<'a, Delivery>>> {
        match recipient.tx.try_reserve() {
            Ok(p) => Ok(Some(p)),
            Err(mpsc::error::TrySendError::Full(())) => match self.config.backpressure {
                Backpressure::Reject => {
                    self.shared.metrics.mailbox_full.inc();
                    Err(Error::MailboxFull(recipient.id))
                }
                Backpressure::Wait => Ok(None),
            },
            Err(mpsc::error::TrySendError::Closed(())) => Err(Error::AgentNotBound(recipient.id)),
        }
    }
}

/// What [`Inner::prepare`] leaves: a retry answered from the idempotency window, or a
/// message ready to deliver with the channel's lock held.
#[allow(clippy::large_enum_variant)] // returned by value, never stored; no allocation per send
pub(crate) enum Prepared<'c> {
    Answered(Receipt),
    Ready(Ready<'c>),
}

/// A prepared local message: the channel (locked), the message, the channel's next state.
pub(crate) struct Ready<'c> {
    ch: parking_lot::MutexGuard<'c, ChannelInner>,
    sealed: Sealed,
    next: mfp_core::State,
    next_step: u64,
    idem: Option<([u8; 32], [u8; 32])>,
}

/// What [`Inner::execute_durable`] leaves.
pub(crate) enum Submitted {
    /// A retry answered from the idempotency window: nothing was sent.
    Answered(Receipt),
    /// The batch was submitted; the message waits in its channel's commit queue.
    Queued(crate::commit::Role),
}

/// A message of a local channel between its two halves: the protocol message's parts
/// (frame_open, E(P) — the plaintext after the inbound half —, frame_close) and its ids.
struct Sealed {
    message_id: MessageId,
    correlation_id: CorrelationId,
    step: u64,
    frame: Frame,
    frame_close: Frame,
    m: Vec<u8>,
}
