//! Agent handles and pymfp-style free functions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mfp_core::{AgentId, ChannelId};
use tokio::sync::oneshot;

use crate::agent::{AgentRecord, Outcome};
use crate::block::Place;
use crate::error::{Error, Result};
use crate::hooks::SendContext;
use crate::pipeline::Submitted;
use crate::runtime::{Inner, Route, Runtime, WeakInner};
use crate::types::{AgentState, AgentStatus, ChannelInfo, DeliveredMessage, Receipt, SendOptions};

/// An agent's view of the runtime: send, list channels, read status (the three MFP
/// tools). Cheap to clone; holds no strong reference to the runtime.
#[derive(Clone)]
pub struct AgentHandle {
    inner: WeakInner,
    record: Arc<AgentRecord>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").field("agent_id", &self.record.id).field("name", &self.record.name).finish()
    }
}

/// Who is sending: a blocking call parks its own thread anyway; an async one runs on a
/// tokio worker that other tasks share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// A blocking call; `driver`: made (with storage) on the thread that drives a
    /// current-thread runtime running the delivery workers (see `block::Place::Driver`).
    Blocking {
        driver: bool,
    },
    Async,
}

/// How long a sender waiting for delivery allows beyond the agent timeout.
const WAIT_MARGIN: Duration = Duration::from_millis(250);

impl AgentHandle {
    pub(crate) fn new(inner: WeakInner, record: Arc<AgentRecord>) -> Self {
        Self { inner, record }
    }

    fn runtime(&self) -> Result<Arc<Inner>> {
        self.inner.upgrade().ok_or(Error::ShutDown)
    }

    /// The agent's id.
    #[must_use]
    pub fn id(&self) -> AgentId {
        self.record.id
    }

    /// The agent's name, if it was bound with one.
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.record.name.as_deref()
    }

    /// The agent's lifecycle state.
    #[must_use]
    pub fn state(&self) -> AgentState {
        self.record.state()
    }

    /// `mfp_send`: sends `payload` on `channel`. Returns once the message is framed,
    /// encoded, validated and queued for the recipient (not after the recipient's handler
    /// ran; see [`AgentHandle::send_and_wait`]). May wait for mailbox space or the rate
    /// window as configured, at most `pipeline_timeout`.
    pub fn send(&self, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
        self.send_blocking(channel, payload, &SendOptions::default(), None).map(|(r, _)| r)
    }

    /// [`AgentHandle::send`] with options (e.g. an idempotency key).
    pub fn send_with(&self, channel: ChannelId, payload: &[u8], options: &SendOptions) -> Result<Receipt> {
        self.send_blocking(channel, payload, options, None).map(|(r, _)| r)
    }

    /// Sends and waits until the recipient's handler has processed the message (pymfp's
    /// synchronous semantics). Fails with [`Error::Timeout`] or [`Error::HandlerFailed`]
    /// if the handler timed out or panicked — the message was still sent and the channel
    /// advanced. Do not call it for a message to an agent that is itself waiting on you.
    pub fn send_and_wait(&self, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
        let inner = self.runtime()?;
        let place = crate::block::place(inner.exec());
        if place == Place::Driver {
            // The handler can only run once this thread is free again.
            return Err(Error::WouldBlock { operation: "AgentHandle::send_and_wait" });
        }
        let (tx, rx) = oneshot::channel();
        let receipt = self.send_blocking(channel, payload, &SendOptions::default(), Some(tx))?;
        let limit = inner.config.agent_timeout + WAIT_MARGIN;
        let wait = || {
            let _g = inner.exec().enter();
            crate::block::block_on(tokio::time::timeout(limit, rx))
        };
        let outcome = if place == Place::MultiThread { tokio::task::block_in_place(wait) } else { wait() };
        map_outcome(outcome, receipt)
    }

    /// Async `mfp_send`.
    pub async fn send_async(&self, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
        self.send_async_inner(channel, payload, &SendOptions::default(), None).await.map(|(r, _)| r)
    }

    /// Async [`AgentHandle::send_with`].
    pub async fn send_with_async(&self, channel: ChannelId, payload: &[u8], options: &SendOptions) -> Result<Receipt> {
        self.send_async_inner(channel, payload, options, None).await.map(|(r, _)| r)
    }

    /// Async [`AgentHandle::send_and_wait`].
    pub async fn send_and_wait_async(&self, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
        let (tx, rx) = oneshot::channel();
        let receipt = self.send_async_inner(channel, payload, &SendOptions::default(), Some(tx)).await?;
        let limit = self.runtime()?.config.agent_timeout + WAIT_MARGIN;
        map_outcome(tokio::time::timeout(limit, rx).await, receipt)
    }

    /// `mfp_channels`: the agent's channels. Requires state `Active`.
    pub fn channels(&self) -> Result<Vec<ChannelInfo>> {
        match self.record.state() {
            AgentState::Active => Ok(self.runtime()?.channels_of(&self.record)),
            AgentState::Quarantined => Err(Error::AgentQuarantined(self.record.id)),
            AgentState::Terminated => Err(Error::AgentNotBound(self.record.id)),
            state @ AgentState::Bound => Err(Error::AgentState { agent: self.record.id, state }),
        }
    }

    /// This agent's open channel to `peer`, if it has one (`Ok(None)` otherwise, also for
    /// an agent that has no channel at all yet). Several channels may join the same two
    /// agents ([`Runtime::establish_channel`] always opens a new one, as pymfp does); this
    /// returns the first of them in this agent's list — the earliest established in this
    /// process, or after a restart the first restored. [`AgentHandle::channels`] lists
    /// them all.
    pub fn channel_with(&self, peer: &AgentId) -> Result<Option<ChannelId>> {
        match self.record.state() {
            AgentState::Active | AgentState::Bound => {}
            AgentState::Quarantined => return Err(Error::AgentQuarantined(self.record.id)),
            AgentState::Terminated => return Err(Error::AgentNotBound(self.record.id)),
        }
        let inner = self.runtime()?;
        let ids = self.record.admin.lock().channels.clone();
        Ok(ids
            .into_iter()
            .find(|c| inner.channel(c).is_ok_and(|ch| ch.peer_of(&self.record.id).is_some_and(|p| p.id() == *peer))))
    }

    /// `mfp_status`: the agent's status. Requires state `Bound` or `Active`.
    pub fn status(&self) -> Result<AgentStatus> {
        match self.record.state() {
            AgentState::Active | AgentState::Bound => Ok(self.runtime()?.status_of(&self.record)),
            AgentState::Quarantined => Err(Error::AgentQuarantined(self.record.id)),
            AgentState::Terminated => Err(Error::AgentNotBound(self.record.id)),
        }
    }

    fn send_blocking(
        &self,
        channel: ChannelId,
        payload: &[u8],
        options: &SendOptions,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(Receipt, AgentId)> {
        // The async path, driven on this thread: without waiting (the common case) it
        // completes on its first poll; a wait for the rate window or mailbox space parks
        // the thread.
        let inner = self.runtime()?;
        // With storage, where we are matters once the batch is submitted (asked before
        // entering the runtime's context below, which would change the answer).
        let driver = inner.persisting() && crate::block::place(inner.exec()) == Place::Driver;
        let submitted = std::sync::atomic::AtomicBool::new(false);
        let mut send = std::pin::pin!(self.send_inner(
            channel,
            payload,
            options,
            done,
            Caller::Blocking { driver },
            Some(&submitted)
        ));
        {
            let _g = inner.exec().enter();
            if let Some(done) = crate::block::poll_once(send.as_mut()) {
                return done;
            }
        }
        // It has to wait: where are we? (Asked only now, outside the guard above.)
        match crate::block::place(inner.exec()) {
            // A wait for mailbox space or the rate window needs this very thread; the send
            // is dropped before it reached the pipeline, so nothing changed. A submitted send
            // on this thread is the only one queued on its channel (others are refused), so
            // it waits for nothing but its own commit, which the storage completes.
            Place::Driver if !submitted.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(Error::WouldBlock { operation: "AgentHandle::send" })
            }
            Place::MultiThread => tokio::task::block_in_place(|| {
                let _g = inner.exec().enter();
                crate::block::block_on(send)
            }),
            Place::Outside | Place::Driver => {
                let _g = inner.exec().enter();
                crate::block::block_on(send)
            }
        }
    }

    async fn send_async_inner(
        &self,
        channel: ChannelId,
        payload: &[u8],
        options: &SendOptions,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(Receipt, AgentId)> {
        self.send_inner(channel, payload, options, done, Caller::Async, None).await
    }

    async fn send_inner(
        &self,
        channel: ChannelId,
        payload: &[u8],
        options: &SendOptions,
        done: Option<oneshot::Sender<Outcome>>,
        caller: Caller,
        submitted: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(Receipt, AgentId)> {
        let inner = self.runtime()?;
        // Held to the end of the send: a graceful shutdown waits for it.
        let _sending = inner.enter_send()?;
        // For the latency metric (real time).
        let started = Instant::now();
        // Every wait of the send (rate window, mailbox space, the link) ends at one deadline
        // on the runtime's clock (virtual in tests).
        let deadline = inner.clock.now() + inner.config.pipeline_timeout;
        loop {
            let now = inner.clock.now();
            let (ch, recipient) = match inner.precheck(&self.record, &channel, payload.len(), now)? {
                Ok(Route::Local(ch, recipient)) => (ch, recipient),
                Ok(Route::Remote(ch)) => {
                    if done.is_some() {
                        // No handler of this runtime will report the outcome; nothing was sent.
                        return Err(Error::Config(crate::error::ConfigError {
                            field: "send_and_wait",
                            reason: format!(
                                "channel {} leads to another runtime, whose handler cannot be waited for; use send",
                                ch.id.short()
                            ),
                        }));
                    }
                    let driver = matches!(caller, Caller::Blocking { driver: true });
                    let receipt = inner
                        .send_remote(&self.record, &ch, payload, options, deadline, started, submitted, driver)
                        .await?;
                    if matches!(caller, Caller::Async) {
                        // Without storage nothing above had to wait: a task sending in a
                        // loop would keep its worker from the link's task, which writes
                        // these messages out. (Not for a blocking send: it has sent, and
                        // must not then look as if it had to wait.)
                        tokio::task::consume_budget().await;
                    }
                    let peer = ch.remote().map_or(ch.a.id, |l| l.end.agent);
                    return Ok((receipt, peer));
                }
                Err(wait) => {
                    if now + wait > deadline {
                        return Err(Error::RateLimited { retry_after: wait });
                    }
                    // Until a deadline from the instant the window was read, so a clock that
                    // moves meanwhile cannot push the end of the wait.
                    inner.clock.sleep_until(now + wait).await;
                    continue;
                }
            };
            // Bytes first, then the message slot; both bounded by the same deadline.
            let need = recipient.bytes_needed(payload.len());
            let bytes = match inner.try_reserve_bytes(&recipient, need)? {
                Some(b) => b,
                None => match inner.timeout_at(deadline, recipient.mailbox_bytes.acquire_many(need)).await {
                    Some(Ok(b)) => b,
                    Some(Err(_)) => return Err(Error::AgentNotBound(recipient.id)),
                    None => {
                        inner.shared.metrics.mailbox_full.inc();
                        return Err(Error::MailboxFull(recipient.id));
                    }
                },
            };
            if inner.persisting() {
                // Durable: the message waits in the channel's commit queue for its commit,
                // holding an owned mailbox slot meanwhile.
                let permit = match inner.try_reserve_owned(&recipient)? {
                    Some(p) => p,
                    None => match inner.timeout_at(deadline, recipient.tx.clone().reserve_owned()).await {
                        Some(Ok(p)) => p,
                        Some(Err(_)) => return Err(Error::AgentNotBound(recipient.id)),
                        None => {
                            inner.shared.metrics.mailbox_full.inc();
                            return Err(Error::MailboxFull(recipient.id));
                        }
                    },
                };
                let driver = matches!(caller, Caller::Blocking { driver: true });
                let role = match inner.execute_durable(
                    &self.record,
                    &ch,
                    &recipient,
                    payload,
                    options,
                    (permit, bytes),
                    done,
                    driver,
                )? {
                    Submitted::Answered(r) => return Ok((r, recipient.id)),
                    Submitted::Queued(role) => role,
                };
                if let Some(s) = submitted {
                    s.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return match inner.await_commit(&ch, role).await {
                    Ok(receipt) => {
                        let ctx = SendContext { sender: self.record.id, recipient: recipient.id, channel, payload };
                        inner.sent(&self.record, &ctx, &receipt, started, None);
                        Ok((receipt, recipient.id))
                    }
                    Err(e) => {
                        inner.rejected(self.record.id, channel, "storage write failed");
                        Err(e)
                    }
                };
            }
            let permit = match inner.try_reserve(&recipient)? {
                Some(p) => p,
                None => match inner.timeout_at(deadline, recipient.tx.reserve()).await {
                    Some(Ok(p)) => p,
                    Some(Err(_)) => return Err(Error::AgentNotBound(recipient.id)),
                    None => {
                        inner.shared.metrics.mailbox_full.inc();
                        return Err(Error::MailboxFull(recipient.id));
                    }
                },
            };
            let receipt =
                inner.execute(&self.record, &ch, &recipient, payload, options, (permit, bytes), done, started)?;
            return Ok((receipt, recipient.id));
        }
    }
}

fn map_outcome(
    outcome: std::result::Result<std::result::Result<Outcome, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
    (receipt, recipient): (Receipt, AgentId),
) -> Result<Receipt> {
    match outcome {
        Ok(Ok(Outcome::Done)) => Ok(receipt),
        Ok(Ok(Outcome::Panicked)) => Err(Error::HandlerFailed),
        Ok(Ok(Outcome::TimedOut)) | Err(_) => Err(Error::Timeout),
        // The recipient was terminated before handling the message.
        Ok(Err(_)) => Err(Error::AgentNotBound(recipient)),
    }
}

/// `mfp_send(handle, channel_id, payload)` as in pymfp.
pub fn mfp_send(handle: &AgentHandle, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
    handle.send(channel, payload)
}

/// `mfp_send_async` as in pymfp.
pub async fn mfp_send_async(handle: &AgentHandle, channel: ChannelId, payload: &[u8]) -> Result<Receipt> {
    handle.send_async(channel, payload).await
}

/// `mfp_channels(handle)` as in pymfp.
pub fn mfp_channels(handle: &AgentHandle) -> Result<Vec<ChannelInfo>> {
    handle.channels()
}

/// `mfp_status(handle)` as in pymfp.
pub fn mfp_status(handle: &AgentHandle) -> Result<AgentStatus> {
    handle.status()
}

/// `bind(runtime, callable)` as in pymfp: binds an agent with a synchronous handler.
pub fn bind<F>(runtime: &Runtime, handler: F) -> Result<AgentHandle>
where
    F: Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static,
{
    runtime.bind(handler)
}

/// `unbind(handle)` as in pymfp.
pub fn unbind(handle: AgentHandle) -> Result<()> {
    let inner = handle.runtime()?;
    let id = handle.record.id;
    inner.blocking("unbind", |w| inner.remove_agent(&id, false, w))
}
