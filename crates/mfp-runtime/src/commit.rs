//! The commit queue of a local channel with storage.
//!
//! A durable local send frames its message from the channel's head (the state after the
//! last message submitted), submits its batch, moves the head on and releases the channel
//! at once; the next send on the channel is framed while this one commits. The message
//! waits in the channel's queue until its batch has committed; queued messages are settled
//! strictly in step order (delivered and answered with a receipt, or failed), so they reach
//! the recipient's mailbox in order whichever sender wakes first.
//!
//! One party at a time, the *drainer*, settles the queue's front: at first the sender of
//! the oldest queued message. It settles every message whose commit is known, its own
//! included, and once its own is settled hands the role to the sender of the new front (a
//! [`Turn::Drain`] message) instead of waiting for commits that are not its own. A sender
//! whose future is dropped (a cancelled async send) leaves its message in the queue; if it
//! was the drainer, or was just given the role, a thread takes over, so the queue never
//! stalls.
//!
//! A failed batch fails its message only. Batches submitted after it were framed on top of
//! the failed message's state and may still commit: the chain stays continuous (each batch
//! stores the absolute state after its message), the failed message was never delivered
//! and its sender got the error. When the queue runs empty with the head beyond the last
//! committed state, the head goes back to it and the corrected Sg goes to storage.

use std::collections::VecDeque;
use std::sync::Arc;

use mfp_core::{ChannelId, State};
use tokio::sync::{mpsc, oneshot};

use crate::agent::{AgentRecord, Delivery};
use crate::channel::{ChannelInner, ChannelRecord};
use crate::error::{Error, Result};
use crate::runtime::Inner;
use crate::storage::{StorageError, Ticket};
use crate::types::{ChannelStatus, Receipt};

/// A channel's queue of submitted, not yet settled messages.
pub(crate) struct Commits {
    queue: VecDeque<Pending>,
    /// The drainer role is taken (by a sender, or a thread that took over).
    draining: bool,
    /// The channel's state and step after the last message whose batch committed. With an
    /// empty queue it equals the head.
    durable: (State, u64),
}

/// What a queued message's commit is known to be.
enum Commit {
    /// Not known yet.
    Ticket(Ticket),
    /// Committed (`Ok`) or failed.
    Known(std::result::Result<(), StorageError>),
    /// The drainer is waiting for it.
    Awaited,
}

/// A message whose batch was submitted.
pub(crate) struct Pending {
    commit: Commit,
    /// The channel's state and step after this message.
    next: (State, u64),
    /// The reserved mailbox slot and the message for it.
    slot: (mpsc::OwnedPermit<Delivery>, Delivery),
    recipient: Arc<AgentRecord>,
    receipt: Receipt,
    idem: Option<([u8; 32], [u8; 32])>,
    /// Removals of handled messages that rode in this batch (put back if it fails).
    acks: Vec<(ChannelId, u64)>,
    /// How to reach the message's sender, unless it is (or was) the drainer.
    turn: Option<oneshot::Sender<Turn>>,
}

impl Pending {
    /// A message whose batch `ticket` was submitted.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ticket: Ticket,
        next: (State, u64),
        slot: (mpsc::OwnedPermit<Delivery>, Delivery),
        recipient: Arc<AgentRecord>,
        receipt: Receipt,
        idem: Option<([u8; 32], [u8; 32])>,
        acks: Vec<(ChannelId, u64)>,
    ) -> Self {
        Self { commit: Commit::Ticket(ticket), next, slot, recipient, receipt, idem, acks, turn: None }
    }
}

/// A message to a queued message's sender.
pub(crate) enum Turn {
    /// The message is settled: its receipt, or why it failed.
    Done(Result<Receipt>),
    /// The sender is the drainer now.
    Drain,
}

/// A sender's part after queueing its message.
pub(crate) enum Role {
    /// It settles the queue's front until its own message is settled.
    Drainer(u64),
    /// It waits to be told.
    Waiting(u64, oneshot::Receiver<Turn>),
}

impl Commits {
    /// An empty queue; `durable` is the channel's head.
    pub(crate) fn new(durable: (State, u64)) -> Self {
        Self { queue: VecDeque::new(), draining: false, durable }
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a message (the caller holds the channel's lock and has moved its head past it).
    pub(crate) fn push(&mut self, mut p: Pending) -> Role {
        let step = p.receipt.step;
        if self.draining {
            let (tx, rx) = oneshot::channel();
            p.turn = Some(tx);
            self.queue.push_back(p);
            Role::Waiting(step, rx)
        } else {
            self.draining = true;
            self.queue.push_back(p);
            Role::Drainer(step)
        }
    }
}

impl Inner {
    /// The second part of a durable local send: waits until its message is settled.
    pub(crate) async fn await_commit(self: &Arc<Self>, channel: &Arc<ChannelRecord>, role: Role) -> Result<Receipt> {
        let step = match role {
            Role::Drainer(step) => step,
            Role::Waiting(step, rx) => {
                let mut waiting = Waiting { inner: self, channel, rx: Some(rx) };
                match waiting.recv().await {
                    Some(Turn::Done(r)) => return r,
                    Some(Turn::Drain) => step,
                    // The queue went away with its channel: cannot happen while we hold it.
                    None => return Err(Error::Inconsistent { channel: channel.id }),
                }
            }
        };
        drain(self, channel, Some(step)).await.unwrap_or(Err(Error::Inconsistent { channel: channel.id }))
    }

    /// Settles a message whose commit is known (under the channel's lock): delivers it and
    /// returns its receipt, or fails it; puts the head back to the last committed state when
    /// nothing is queued on top of a failed batch.
    fn settle_pending(
        &self,
        ch: &mut ChannelInner,
        channel: &ChannelRecord,
        p: Pending,
        outcome: std::result::Result<(), StorageError>,
    ) -> Result<Receipt> {
        let Pending { next, slot: (permit, delivery), recipient, receipt, idem, acks, .. } = p;
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(e) => self.storage_failed(e),
        };
        let out = match outcome {
            Ok(()) => {
                if let Some(c) = ch.commits.as_mut() {
                    c.durable = next;
                }
                // DELIVER (cannot fail: the slot is reserved)
                permit.send(delivery);
                self.remember_idempotent(ch, idem, receipt);
                Ok(receipt)
            }
            Err(e) => {
                self.requeue_acks(acks);
                recipient.mailbox_bytes.add_permits(delivery.token.bytes as usize);
                drop(delivery);
                drop(permit);
                Err(e)
            }
        };
        let revert =
            ch.commits.as_ref().and_then(|c| (c.queue.is_empty() && ch.step != c.durable.1).then(|| c.durable.clone()));
        if let Some((state, step)) = revert
            && ch.status != ChannelStatus::Closed
        {
            ch.state = state;
            ch.step = step;
            let mut sg = self.sg.lock();
            // The channel is in the tree unless it was closed, checked above.
            let _ = sg.tree.update_hinted(&channel.id, &ch.state, &mut ch.leaf_hint);
            self.resubmit_sg(&mut sg);
        }
        out
    }
}

/// Settles the front of `channel`'s queue while this party holds the drainer role; returns
/// the outcome of its own message (`mine`; `None` for a thread that took over). Hands the
/// role on once its own message is settled and the front's commit is not known yet.
async fn drain(inner: &Arc<Inner>, channel: &Arc<ChannelRecord>, mine: Option<u64>) -> Option<Result<Receipt>> {
    let mut result = None;
    loop {
        let ticket = {
            let mut guard = channel.inner.lock();
            let ch = &mut *guard;
            loop {
                let Some(c) = ch.commits.as_mut() else { return result };
                let Some(front) = c.queue.front_mut() else {
                    c.draining = false;
                    return result;
                };
                if let Commit::Ticket(t) = &mut front.commit
                    && let Some(r) = t.try_result()
                {
                    front.commit = Commit::Known(r);
                }
                if matches!(front.commit, Commit::Known(_)) {
                    let Some(mut p) = c.queue.pop_front() else { return result };
                    let outcome = match std::mem::replace(&mut p.commit, Commit::Awaited) {
                        Commit::Known(r) => r,
                        _ => Err(StorageError::Closed),
                    };
                    let step = p.receipt.step;
                    let turn = p.turn.take();
                    let out = inner.settle_pending(ch, channel, p, outcome);
                    if Some(step) == mine {
                        result = Some(out);
                    } else if let Some(tx) = turn {
                        // The sender may be gone (cancelled): its message was still settled.
                        let _ = tx.send(Turn::Done(out));
                    }
                    continue;
                }
                if (mine.is_none() || result.is_some())
                    && let Some(tx) = front.turn.take()
                {
                    if tx.send(Turn::Drain).is_ok() {
                        // The front's sender drains from here on.
                        return result;
                    }
                    if mine.is_some() {
                        // Its sender is gone (cancelled): a thread waits in its place, this
                        // sender has its answer.
                        drop(guard);
                        take_over(inner, channel);
                        return result;
                    }
                }
                // Our own message is still queued, or (a thread taking over) the front's
                // sender is gone: wait for the front's commit here.
                match std::mem::replace(&mut front.commit, Commit::Awaited) {
                    Commit::Ticket(t) => break t,
                    other => {
                        front.commit = other;
                        return Some(Err(Error::Inconsistent { channel: channel.id }));
                    }
                }
            }
        };
        let mut waiting = Awaiting { inner, channel, ticket: Some(ticket) };
        let outcome = waiting.wait().await;
        let mut guard = channel.inner.lock();
        if let Some(front) = guard.commits.as_mut().and_then(|c| c.queue.front_mut()) {
            front.commit = Commit::Known(outcome);
        }
    }
}

/// A drainer waiting (unlocked) for the front's commit. Dropped before the commit is known
/// (a cancelled send): the ticket goes back to the front and a thread takes over.
struct Awaiting<'a> {
    inner: &'a Arc<Inner>,
    channel: &'a Arc<ChannelRecord>,
    ticket: Option<Ticket>,
}

impl Awaiting<'_> {
    async fn wait(&mut self) -> std::result::Result<(), StorageError> {
        let r = match self.ticket.as_mut() {
            Some(t) => t.wait_mut().await,
            None => Err(StorageError::Closed),
        };
        self.ticket = None;
        r
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            if let Some(front) = self.channel.inner.lock().commits.as_mut().and_then(|c| c.queue.front_mut()) {
                front.commit = Commit::Ticket(t);
            }
            take_over(self.inner, self.channel);
        }
    }
}

/// A sender waiting for its turn. Dropped after it was made the drainer but before it
/// noticed (a cancelled send): a thread takes over.
struct Waiting<'a> {
    inner: &'a Arc<Inner>,
    channel: &'a Arc<ChannelRecord>,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl Waiting<'_> {
    async fn recv(&mut self) -> Option<Turn> {
        let r = match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        self.rx = None;
        r
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // After `close` no turn can arrive any more; one that came before is read here.
            rx.close();
            if let Ok(Turn::Drain) = rx.try_recv() {
                take_over(self.inner, self.channel);
            }
        }
    }
}

/// Continues the drainer's work of a cancelled send on a thread of its own.
fn take_over(inner: &Arc<Inner>, channel: &Arc<ChannelRecord>) {
    let (i, c) = (Arc::clone(inner), Arc::clone(channel));
    let spawned = std::thread::Builder::new()
        .name("mfp-commit".into())
        .spawn(move || drop(crate::block::block_on(drain(&i, &c, None))));
    if spawned.is_err() {
        // No thread to be had: settle here (the commits are under way; this waits for them).
        tracing::warn!(target: "mfp::runtime", channel = %channel.id.short(), "no thread for a cancelled send's commit; settling inline");
        drop(crate::block::block_on(drain(inner, channel, None)));
    }
}
