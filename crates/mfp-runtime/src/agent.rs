//! Agent records, handlers and the per-agent delivery worker.
//!
//! Each agent owns a bounded mailbox. A worker task drains it and runs the agent's handler
//! one message at a time, so messages reach a handler in the order they were queued (and
//! per channel, in send order). Sync handlers run on tokio's blocking pool, draining as
//! many queued messages as are available per hand-off; async handlers run on the worker
//! task under `tokio::time::timeout`. A panicking handler is caught and counted; a handler
//! that exceeds `agent_timeout` gets its agent quarantined. Neither stalls other agents.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mfp_core::{AgentId, ChannelId, MessageId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::RateWindow;
use crate::clock::Clock;
use crate::handle::AgentHandle;
use crate::hooks::DeliveryFailure;
use crate::runtime::{InFlight, Inner};
use crate::types::{AgentState, DeliveredMessage};

/// A boxed, sendable future returned by async handlers.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An agent's async handler.
///
/// ```
/// use mfp_runtime::{AgentHandle, AsyncHandler, DeliveredMessage};
///
/// struct Echo;
/// impl AsyncHandler for Echo {
///     async fn handle(&self, agent: AgentHandle, msg: DeliveredMessage) {
///         // Reply on the same channel; replying from a handler never deadlocks.
///         let _ = agent.send_async(msg.channel, &msg.payload).await;
///     }
/// }
/// ```
pub trait AsyncHandler: Send + Sync + 'static {
    /// Handles one delivered message.
    fn handle(&self, agent: AgentHandle, message: DeliveredMessage) -> impl Future<Output = ()> + Send;
}

type SyncFn = dyn Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static;
type AsyncFn = dyn Fn(AgentHandle, DeliveredMessage) -> BoxFuture + Send + Sync + 'static;

/// How an agent processes messages.
#[derive(Clone)]
pub(crate) enum Handler {
    Sync(Arc<SyncFn>),
    Async(Arc<AsyncFn>),
}

impl Handler {
    pub(crate) fn from_sync<F>(f: F) -> Self
    where
        F: Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static,
    {
        Handler::Sync(Arc::new(f))
    }

    pub(crate) fn from_async<H: AsyncHandler>(h: H) -> Self {
        let h = Arc::new(h);
        Handler::Async(Arc::new(move |agent, msg| {
            let h = Arc::clone(&h);
            Box::pin(async move { h.handle(agent, msg).await })
        }))
    }

    pub(crate) fn from_async_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(AgentHandle, DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Handler::Async(Arc::new(move |agent, msg| Box::pin(f(agent, msg))))
    }
}

/// An agent's handler, for [`crate::Runtime::bind_agent_async`] and
/// [`crate::Runtime::attach_agent_async`].
#[derive(Clone)]
pub struct AgentHandler(pub(crate) Handler);

impl std::fmt::Debug for AgentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Handler::Sync(_) => "AgentHandler::Sync",
            Handler::Async(_) => "AgentHandler::Async",
        })
    }
}

impl AgentHandler {
    /// A synchronous handler (run on tokio's blocking pool; see [`crate::Runtime::bind`]).
    pub fn sync<F>(f: F) -> Self
    where
        F: Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static,
    {
        Self(Handler::from_sync(f))
    }

    /// An [`AsyncHandler`].
    pub fn of<H: AsyncHandler>(h: H) -> Self {
        Self(Handler::from_async(h))
    }

    /// An async closure `|agent, message| async move { … }`.
    pub fn async_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(AgentHandle, DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Handler::from_async_fn(f))
    }
}

/// How a delivery ended, for senders that wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    Panicked,
    TimedOut,
}

/// One queued message.
pub(crate) struct Delivery {
    pub(crate) msg: DeliveredMessage,
    pub(crate) done: Option<oneshot::Sender<Outcome>>,
    /// Counts the message in `in_flight` until it is handled or dropped.
    pub(crate) token: InFlight,
    /// Stored in the durable inbox: removed from it once the handler has returned.
    pub(crate) durable: bool,
}

impl Delivery {
    /// What removes the message from the durable inbox once handled (`None` without storage).
    fn ack(&self) -> Option<(ChannelId, u64)> {
        self.durable.then_some((self.msg.channel, self.msg.step))
    }
}

/// How long a sync handler's thread stays parked waiting for the next message before
/// returning to the pool.
const LINGER: Duration = Duration::from_micros(500);

/// How long a sync handler's thread spins for the next message before parking, when
/// messages have been arriving back to back.
const SPIN: Duration = Duration::from_micros(50);

/// How the previous message reached the draining thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Handed over when the batch started, or after parking: no stream in progress.
    Idle,
    /// Already queued, or arrived while spinning: messages are streaming in.
    Streaming,
}

/// Waits for the next message on a blocking-pool thread. While messages stream in, it
/// spins for [`SPIN`] first, so a message arriving then costs its sender no wake-up system
/// call; otherwise (e.g. one message each to many agents) it does not spin, so idle agents
/// burn no CPU. Then it parks for up to [`LINGER`]. `None` when nothing came.
fn wait_next(rx: &mut mpsc::Receiver<Delivery>, last: Arrival) -> Option<(Delivery, Arrival)> {
    if last == Arrival::Streaming {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            match rx.try_recv() {
                Ok(d) => return Some((d, Arrival::Streaming)),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() >= SPIN {
                break;
            }
            if spins.is_multiple_of(8) {
                // Spinning is only free while a core is idle: give way to threads that
                // have work (e.g. senders, when there are more of them than cores).
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    crate::block::block_on_timeout(rx.recv(), LINGER).flatten().map(|d| (d, Arrival::Idle))
}

/// Worker control signal.
pub(crate) const RUN: u8 = 0;
/// Deliver what is queued, then stop.
pub(crate) const DRAIN: u8 = 1;
/// Stop now; drop what is queued.
pub(crate) const STOP: u8 = 2;

/// Mutable bookkeeping of an agent (guarded; never held across a channel lock).
pub(crate) struct AgentAdmin {
    pub(crate) channels: Vec<ChannelId>,
    pub(crate) quarantine_reason: String,
}

/// Everything the runtime knows about one agent.
pub(crate) struct AgentRecord {
    pub(crate) id: AgentId,
    pub(crate) name: Option<String>,
    state: AtomicU8,
    pub(crate) admin: Mutex<AgentAdmin>,
    pub(crate) tx: mpsc::Sender<Delivery>,
    /// Payload bytes the mailbox may still take (`mailbox_max_bytes` minus the bytes of
    /// the messages queued or being handled).
    pub(crate) mailbox_bytes: tokio::sync::Semaphore,
    /// `mailbox_max_bytes`: a single message never needs more than this.
    pub(crate) max_bytes: u32,
    pub(crate) rate: Mutex<RateWindow>,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) control: watch::Sender<u8>,
    /// Microseconds since the runtime's epoch at which the current handler call started
    /// (0 = not in a handler, [`TIMED_OUT_MARK`] = the watchdog reported this call).
    pub(crate) in_handler_since: AtomicU64,
}

impl AgentRecord {
    pub(crate) fn new(
        id: AgentId,
        name: Option<String>,
        capacity: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Delivery>, watch::Receiver<u8>) {
        // The configuration bounds it to u32 (checked in `RuntimeConfig::validate`).
        let max_bytes = u32::try_from(max_bytes).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::channel(capacity);
        let (control, control_rx) = watch::channel(RUN);
        let rec = Arc::new(Self {
            id,
            name,
            state: AtomicU8::new(AgentState::Bound.to_u8()),
            admin: Mutex::new(AgentAdmin { channels: Vec::new(), quarantine_reason: String::new() }),
            tx,
            mailbox_bytes: tokio::sync::Semaphore::new(max_bytes as usize),
            max_bytes,
            rate: Mutex::new(RateWindow::default()),
            messages_sent: AtomicU64::new(0),
            control,
            in_handler_since: AtomicU64::new(0),
        });
        (rec, rx, control_rx)
    }

    /// Current lifecycle state (lock-free read).
    pub(crate) fn state(&self) -> AgentState {
        AgentState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state; callers hold `admin` and have checked the transition.
    pub(crate) fn set_state(&self, s: AgentState) {
        self.state.store(s.to_u8(), Ordering::Release);
        // Wake the worker so it re-reads the state (quarantine pauses, restore resumes).
        self.control.send_modify(|_| {});
    }

    /// How many byte permits a payload of `len` bytes takes: its size, capped at the bound
    /// (so a single message larger than the bound still goes through, alone).
    pub(crate) fn bytes_needed(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).min(self.max_bytes)
    }

    /// Returns the byte permits of a handled (or dropped) message.
    pub(crate) fn release_bytes(&self, n: u32) {
        if n > 0 {
            self.mailbox_bytes.add_permits(n as usize);
        }
    }

    pub(crate) fn mailbox_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Catches a panic raised while polling the inner future.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Result<(), ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// `in_handler_since` of a sync handler call the watchdog has reported as timed out.
const TIMED_OUT_MARK: u64 = u64::MAX;

fn micros_since(clock: Option<&Arc<dyn Clock>>, epoch: Instant) -> u64 {
    let elapsed = match clock {
        Some(c) => c.now().saturating_duration_since(epoch),
        None => epoch.elapsed(),
    };
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The watchdog's tick, on the runtime's clock.
fn tick_sleep(clock: Option<&Arc<dyn Clock>>, tick: Duration) -> crate::clock::Sleep {
    match clock {
        Some(c) => c.sleep_until(c.now() + tick),
        None => Box::pin(tokio::time::sleep(tick)),
    }
}

/// What the worker needs besides its record.
pub(crate) struct WorkerCtx {
    pub(crate) inner: std::sync::Weak<Inner>,
    pub(crate) shared: Arc<crate::runtime::Shared>,
    pub(crate) record: Arc<AgentRecord>,
    pub(crate) handler: Handler,
    pub(crate) timeout: Duration,
    /// The runtime's start on its clock.
    pub(crate) epoch: Instant,
    /// The runtime's clock when it is not the system's (handler timeouts run on it).
    pub(crate) clock: Option<Arc<dyn Clock>>,
}

impl WorkerCtx {
    fn handle(&self) -> AgentHandle {
        AgentHandle::new(self.inner.clone(), Arc::clone(&self.record))
    }
}

/// Bookkeeping after one handler call. Dropping `token` at the end marks the message
/// handled; its mailbox bytes are released first. A durable message's removal from the
/// inbox is queued (see `Inner::queue_ack`), never waited for: a crash before it commits
/// only means the message is delivered again after the restart.
#[allow(clippy::too_many_arguments)]
fn finish(
    inner: &std::sync::Weak<Inner>,
    shared: &crate::runtime::Shared,
    record: &AgentRecord,
    outcome: Outcome,
    started: Instant,
    msg_id: mfp_core::MessageId,
    token: InFlight,
    ack: Option<(ChannelId, u64)>,
) {
    if let Some((channel, step)) = ack
        && let Some(inner) = inner.upgrade()
    {
        inner.queue_ack(channel, step);
    }
    shared.metrics.handler_duration.observe_duration(started.elapsed());
    let failure = match outcome {
        Outcome::Done => {
            shared.metrics.messages_delivered.inc();
            None
        }
        Outcome::Panicked => Some(DeliveryFailure::Panicked),
        Outcome::TimedOut => Some(DeliveryFailure::TimedOut),
    };
    if let Some(f) = failure
        && let Some(inner) = inner.upgrade()
    {
        inner.delivery_failed(record, msg_id, f);
    }
    record.release_bytes(token.bytes);
    drop(token);
}

/// Submits the queued inbox removals (when this worker queued any since the last flush).
fn flush_acks(inner: &std::sync::Weak<Inner>, pending: &mut bool) {
    if std::mem::take(pending)
        && let Some(inner) = inner.upgrade()
    {
        inner.flush_acks();
    }
}

/// Whether the worker should deliver now.
fn may_deliver(rec: &AgentRecord) -> bool {
    matches!(rec.state(), AgentState::Bound | AgentState::Active | AgentState::Terminated)
}

/// The delivery loop of one agent.
pub(crate) async fn run_worker(ctx: WorkerCtx, mut rx: mpsc::Receiver<Delivery>, mut control: watch::Receiver<u8>) {
    // A message taken from the mailbox but not delivered because the agent was paused or
    // stopped meanwhile; it goes first when delivery resumes.
    let mut held: Option<Delivery> = None;
    // Whether an async handler's inbox removal is queued but not flushed.
    let mut acked = false;
    loop {
        let signal = *control.borrow_and_update();
        if signal == STOP {
            break;
        }
        if signal == DRAIN && rx.is_empty() && held.is_none() {
            break;
        }
        if !may_deliver(&ctx.record) {
            // Quarantined: hold queued messages until restored or stopped.
            if control.changed().await.is_err() {
                break;
            }
            continue;
        }
        let first = if let Some(d) = held.take() {
            d
        } else {
            tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() { break; }
                continue;
            }
            m = rx.recv() => match m {
                Some(d) => d,
                None => break,
            },
            }
        };
        match &ctx.handler {
            Handler::Async(f) => {
                acked |= first.durable;
                deliver_async(&ctx, f, first).await;
                if rx.is_empty() {
                    flush_acks(&ctx.inner, &mut acked);
                }
            }
            Handler::Sync(f) => {
                rx = match deliver_sync_batch(&ctx, Arc::clone(f), first, rx).await {
                    Some((rx, unsent)) => {
                        held = unsent;
                        rx
                    }
                    // Stopped while a handler was still running (or the blocking task was
                    // lost): the mailbox was emptied there.
                    None => {
                        flush_acks(&ctx.inner, &mut true);
                        return;
                    }
                };
            }
        }
    }
    flush_acks(&ctx.inner, &mut acked);
    // Whatever is left is dropped (each dropped delivery leaves `in_flight`); waiting
    // senders see their delivery channel close.
    drop(held);
    rx.close();
    while rx.try_recv().is_ok() {}
}

async fn deliver_async(ctx: &WorkerCtx, f: &Arc<AsyncFn>, d: Delivery) {
    let started = Instant::now();
    let ack = d.ack();
    let Delivery { msg, done, token, .. } = d;
    let msg_id = msg.message_id;
    let fut = f(ctx.handle(), msg);
    let run = CatchUnwind(Box::pin(fut));
    let result = match &ctx.clock {
        None => tokio::time::timeout(ctx.timeout, run).await.ok(),
        Some(clock) => {
            let sleep = clock.sleep_until(clock.now() + ctx.timeout);
            tokio::select! {
                biased;
                r = run => Some(r),
                () = sleep => None,
            }
        }
    };
    let outcome = match result {
        Some(Ok(())) => Outcome::Done,
        Some(Err(())) => Outcome::Panicked,
        None => Outcome::TimedOut,
    };
    // Bookkeeping (quarantine on timeout, metrics) first, so a waiting sender that learns
    // the outcome sees its effects.
    finish(&ctx.inner, &ctx.shared, &ctx.record, outcome, started, msg_id, token, ack);
    if let Some(done) = done {
        let _ = done.send(outcome);
    }
}

/// The message a sync handler is running on: its id (for the watchdog's report) and its
/// in-flight token. Whoever takes the token out — the handler's thread when the call
/// returns, or the worker when the agent is stopped meanwhile — accounts for the message.
type Current = Arc<Mutex<Option<(MessageId, InFlight)>>>;

/// Hands the mailbox to a blocking-pool thread that runs the sync handler on `first` and
/// on every further message already queued, while a watchdog here enforces the timeout.
/// Returns the mailbox and any message taken but not delivered, or `None` if the agent
/// was stopped while its handler was still running (the mailbox is then emptied and
/// closed here, and the thread, should the handler ever return, delivers nothing more)
/// or the blocking task was lost.
async fn deliver_sync_batch(
    ctx: &WorkerCtx,
    f: Arc<SyncFn>,
    first: Delivery,
    rx: mpsc::Receiver<Delivery>,
) -> Option<(mpsc::Receiver<Delivery>, Option<Delivery>)> {
    let record = Arc::clone(&ctx.record);
    let handle = ctx.handle();
    let epoch = ctx.epoch;
    let clock = ctx.clock.clone();
    let inner = ctx.inner.clone();
    let shared = Arc::clone(&ctx.shared);
    let control = ctx.record.control.subscribe();
    let mut stop = ctx.record.control.subscribe();
    let current: Current = Arc::default();
    let handling = Arc::clone(&current);
    // The thread locks the mailbox only to take the next message, never while a handler
    // runs, so the worker can empty it if the agent is stopped during a call.
    let mailbox = Arc::new(Mutex::new(rx));
    let thread_mailbox = Arc::clone(&mailbox);
    let mut join = tokio::task::spawn_blocking(move || {
        let _handler_thread = crate::block::HandlerThread::enter();
        let mut next = Some(first);
        let mut arrival = Arrival::Idle;
        // Whether an inbox removal is queued but not flushed.
        let mut acked = false;
        while let Some(d) = next.take() {
            let started = Instant::now();
            let ack = d.ack();
            let Delivery { msg, done, token, .. } = d;
            let msg_id = msg.message_id;
            *handling.lock() = Some((msg_id, token));
            record.in_handler_since.store(micros_since(clock.as_ref(), epoch), Ordering::Release);
            let res = catch_unwind(AssertUnwindSafe(|| f(&handle, msg)));
            let timed_out = record.in_handler_since.swap(0, Ordering::AcqRel) == TIMED_OUT_MARK;
            let Some((_, token)) = handling.lock().take() else {
                // The agent was stopped while the handler ran; the worker accounted for
                // this message and emptied the mailbox.
                return None;
            };
            let outcome = if res.is_ok() { Outcome::Done } else { Outcome::Panicked };
            acked |= ack.is_some();
            finish(&inner, &shared, &record, outcome, started, msg_id, token, ack);
            if let Some(done) = done {
                // The watchdog already quarantined the agent for this call: a waiting
                // sender sees the timeout, even if the handler finished since.
                let _ = done.send(if timed_out { Outcome::TimedOut } else { outcome });
            }
            if *control.borrow() != RUN || !may_deliver(&record) {
                flush_acks(&inner, &mut acked);
                break;
            }
            let mut rx = thread_mailbox.lock();
            next = match rx.try_recv() {
                Ok(d) => {
                    arrival = Arrival::Streaming;
                    Some(d)
                }
                // Linger briefly before giving the thread back: under a steady stream
                // this keeps one thread draining instead of a hand-off per message.
                Err(_) => {
                    flush_acks(&inner, &mut acked);
                    wait_next(&mut rx, arrival).map(|(d, a)| {
                        arrival = a;
                        d
                    })
                }
            };
            drop(rx);
            // The agent may have been paused or stopped while we waited: hand the
            // message back undelivered.
            if next.is_some() && (*control.borrow() != RUN || !may_deliver(&record)) {
                flush_acks(&inner, &mut acked);
                return Some(next);
            }
        }
        Some(None)
    });
    let tick = (ctx.timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    // Stopped (terminate, or the end of a shutdown) while the handler is still running:
    // account for the message in the handler and drop what is queued, without waiting for
    // a handler that may never return.
    let abandon = || {
        drop(current.lock().take());
        let mut rx = mailbox.lock();
        rx.close();
        while rx.try_recv().is_ok() {}
    };
    let mut watching = true;
    loop {
        if *stop.borrow_and_update() == STOP {
            abandon();
            return None;
        }
        tokio::select! {
            res = &mut join => {
                let unsent = res.ok()??;
                let rx = Arc::try_unwrap(mailbox).ok()?.into_inner();
                return Some((rx, unsent));
            }
            changed = stop.changed(), if watching => {
                // Checked at the top of the loop; a closed channel needs no more watching.
                watching = changed.is_ok();
            }
            () = tick_sleep(ctx.clock.as_ref(), tick) => {
                let since = ctx.record.in_handler_since.load(Ordering::Acquire);
                if since == 0 || since == TIMED_OUT_MARK {
                    continue;
                }
                let running = Duration::from_micros(micros_since(ctx.clock.as_ref(), ctx.epoch).saturating_sub(since));
                let msg_id = current.lock().as_ref().map(|(id, _)| *id);
                // Mark the call (only if it is still the one we measured) so it is
                // reported once, and its waiting sender sees the timeout.
                if running > ctx.timeout
                    && let Some(msg_id) = msg_id
                    && ctx
                        .record
                        .in_handler_since
                        .compare_exchange(since, TIMED_OUT_MARK, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    && let Some(inner) = ctx.inner.upgrade()
                {
                    inner.delivery_failed(&ctx.record, msg_id, DeliveryFailure::TimedOut);
                }
            }
        }
    }
}
