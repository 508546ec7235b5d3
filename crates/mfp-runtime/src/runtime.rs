//! The runtime: its shared state (`Inner`), queries and shutdown, and the public
//! `Runtime` API. The administrative operations are in `admin.rs`, the send pipeline in
//! `pipeline.rs`, construction and restore in `builder.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mfp_core::{AgentId, ChannelId, EntropySource, MerkleSg, MessageId, RuntimeId, State};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::admin::Wait;
use crate::agent::{AgentHandler, AgentRecord, DRAIN, Delivery, Handler, STOP};
use crate::audit::{AuditEvent, AuditEventType, AuditSink, emit};
use crate::builder::RuntimeBuilder;
use crate::channel::{ChannelRecord, Far};
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::handle::AgentHandle;
use crate::hooks::{DeliveryFailure, Hooks};
use crate::metrics::Metrics;
use crate::storage::{AgentRow, MetaRow, Storage, StorageOp};
use crate::types::{AgentState, AgentStatus, ChannelInfo, ChannelStatus};

/// Why a channel is quarantined (restoring an agent only lifts its own quarantines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuarantineCause {
    Agent(AgentId),
    Channel,
}

/// Counters shared by senders and delivery workers; workers hold it strongly, so a
/// delivery never has to upgrade a weak reference to the runtime.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    /// Messages queued or being handled.
    pub(crate) in_flight: Padded<AtomicU64>,
    /// Sends between their shutdown check and their end (see [`Inner::enter_send`]).
    pub(crate) sending: Padded<AtomicU64>,
    /// Woken when the last send ends after shutdown began.
    pub(crate) senders_done: tokio::sync::Notify,
}

impl Shared {
    pub(crate) fn in_flight_done(&self) {
        self.in_flight.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A message counted in `in_flight`: the count drops when the token does — after the
/// handler ran, or when the message is dropped undelivered (terminate, shutdown).
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    /// Byte permits of the recipient's mailbox the message holds (released after its
    /// handler ran; a dropped message's bytes go with its stopped agent).
    pub(crate) bytes: u32,
}

impl InFlight {
    pub(crate) fn new(shared: &Arc<Shared>, bytes: u32) -> Self {
        shared.in_flight.0.fetch_add(1, Ordering::AcqRel);
        Self { shared: Arc::clone(shared), bytes }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight_done();
    }
}

/// A send in progress; shutdown waits for every one of them before it tells the delivery
/// workers to drain, so a message that gets a receipt is always in a mailbox a worker
/// still drains.
pub(crate) struct SendGuard<'a>(&'a Inner);

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        let shared = &self.0.shared;
        if shared.sending.0.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.shut_down.load(Ordering::SeqCst) {
            shared.senders_done.notify_one();
        }
    }
}

/// Hashing for maps keyed by agent and channel ids. Those ids are uniformly random (drawn
/// from the CSPRNG, or SHA-256 outputs), and only the runtime inserts keys, so their first
/// eight bytes are already a good hash; SipHash would only add cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`IdHash`].
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(bytes) {
            *w = *b;
        }
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
    fn write_usize(&mut self, _len: usize) {}
}

/// A value on its own cache line.
#[derive(Default)]
#[repr(align(64))]
pub(crate) struct Padded<T>(pub(crate) T);

/// Where a send goes.
pub(crate) enum Route {
    /// A channel between two agents of this runtime, and the recipient.
    Local(Arc<ChannelRecord>, Arc<AgentRecord>),
    /// A cross-runtime channel.
    Remote(Arc<ChannelRecord>),
}

/// The Merkle tree and the current Sg.
pub(crate) struct SgState {
    pub(crate) tree: MerkleSg,
}

/// Shared runtime state. Lock order: `admin_op` (async) → `admin` → maps → agent `admin` /
/// channel `inner` → a remote channel's chain → its outbound log → `sg`; a channel lock and
/// an agent's `admin` lock are never held together; `quarantine_causes`, `closed` and `acks`
/// are leaf locks. A remote channel's `ingest_turn` (async) comes before its channel lock.
/// (docs/runtime.md, "Inside the runtime: a map".)
pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) identity: RuntimeId,
    pub(crate) epoch: Instant,
    /// The time for rate and idempotency windows (see `clock.rs`).
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
    /// Whether `clock` was passed in (a virtual clock in tests); otherwise it is the
    /// system clock and waits use tokio's timer directly.
    pub(crate) virtual_clock: bool,
    pub(crate) entropy: Mutex<Box<dyn EntropySource + Send>>,
    pub(crate) admin: Mutex<AdminState>,
    /// The turn of administrative operations (see `admin.rs`), held across their commit
    /// wait; taken before every other lock.
    pub(crate) admin_op: tokio::sync::Mutex<()>,
    /// This runtime, for tasks it spawns.
    pub(crate) me: Weak<Inner>,
    pub(crate) agents: RwLock<HashMap<AgentId, Arc<AgentRecord>, IdHash>>,
    pub(crate) channels: RwLock<HashMap<ChannelId, Arc<ChannelRecord>, IdHash>>,
    pub(crate) quarantine_causes: Mutex<HashMap<ChannelId, QuarantineCause, IdHash>>,
    /// Channels closed in this process, remembered so that using one again reports
    /// [`Error::ChannelClosed`] rather than [`Error::UnknownChannel`].
    pub(crate) closed: Mutex<ClosedChannels>,
    pub(crate) sg: Mutex<SgState>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) hooks: Option<Arc<dyn Hooks>>,
    pub(crate) audit: Option<Arc<dyn AuditSink>>,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// What carries messages of cross-runtime channels (attached once, see
    /// [`Runtime::attach_transport`]).
    pub(crate) transport: crate::remote::Transports,
    /// Peer runtimes as stored (federation's handshake timestamps).
    pub(crate) peers: Mutex<HashMap<RuntimeId, crate::storage::PeerRow, IdHash>>,
    /// Handled messages whose removal from the durable inbox is not submitted yet (see
    /// `pipeline.rs`, "Removals").
    pub(crate) acks: Mutex<Vec<(ChannelId, u64)>>,
    /// Mailboxes of restored agents whose handler is not attached yet.
    pub(crate) detached: Mutex<HashMap<AgentId, Detached, IdHash>>,
    pub(crate) workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) exec: tokio::runtime::Handle,
    pub(crate) shut_down: AtomicBool,
}

/// How many closed channel ids a runtime remembers (16 bytes each, plus the set's
/// overhead); the oldest is forgotten first.
pub(crate) const CLOSED_MEMORY: usize = 65_536;

/// The ids of recently closed channels, bounded by [`CLOSED_MEMORY`].
#[derive(Default)]
pub(crate) struct ClosedChannels {
    set: std::collections::HashSet<ChannelId, IdHash>,
    order: std::collections::VecDeque<ChannelId>,
}

impl ClosedChannels {
    pub(crate) fn insert(&mut self, id: ChannelId) {
        if self.set.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > CLOSED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: &ChannelId) -> bool {
        self.set.contains(id)
    }
}

/// A restored agent waiting for its handler.
pub(crate) type Detached = (mpsc::Receiver<Delivery>, tokio::sync::watch::Receiver<u8>);

/// State only administrative operations touch.
pub(crate) struct AdminState {
    pub(crate) agent_counter: u64,
    pub(crate) names: HashMap<String, AgentId>,
}

impl Inner {
    pub(crate) fn draw(&self, buf: &mut [u8]) -> Result<()> {
        self.entropy.lock().fill(buf).map_err(|_| Error::Entropy)
    }

    /// Applies `ops` to storage and waits for the commit. Without storage, nothing to do.
    /// A failure is an error unless the operator chose to run degraded (`storage_fail_open`).
    pub(crate) fn persist(&self, ops: Vec<StorageOp>) -> Result<()> {
        self.settle(self.submit(ops))
    }

    /// Hands `ops` to storage without waiting (storage enqueues; see [`Storage::apply`]).
    /// A batch that carries an Sg is submitted while the `sg` lock is held, so batches
    /// reach storage — which commits them in submission order — in the order their Sg
    /// values were computed: the last committed Sg is always the root of the committed
    /// channel states, whatever moment a crash comes.
    pub(crate) fn submit(&self, ops: Vec<StorageOp>) -> Option<crate::storage::Ticket> {
        self.storage.as_ref().map(|st| st.apply(ops))
    }

    /// After a failed batch whose change was undone in the tree: batches submitted after it
    /// carry an Sg that counted the failed change, and any of them may still commit. The
    /// current root goes to storage right behind them, so the stored Sg is corrected by the
    /// next commit instead of staying wrong until some later write. Not waited for: if it
    /// fails, so will the writes that would have needed it. The caller holds the `sg` lock.
    pub(crate) fn resubmit_sg(&self, sg: &mut SgState) {
        drop(self.submit(vec![StorageOp::Sg(sg.tree.root())]));
    }

    /// Waits for a submitted batch (never under the `sg` lock). A failure is an error
    /// unless the operator chose to run degraded (`storage_fail_open`).
    pub(crate) fn settle(&self, ticket: Option<crate::storage::Ticket>) -> Result<()> {
        let Some(ticket) = ticket else { return Ok(()) };
        match ticket.wait() {
            Ok(()) => Ok(()),
            Err(e) => self.storage_failed(e),
        }
    }

    /// Counts a failed storage write; an error unless running degraded.
    pub(crate) fn storage_failed(&self, e: crate::storage::StorageError) -> Result<()> {
        self.shared.metrics.storage_failures.inc();
        if self.config.storage_fail_open {
            tracing::error!(target: "mfp::runtime", error = %e, "storage write failed; continuing degraded");
            Ok(())
        } else {
            Err(Error::Storage(e))
        }
    }

    pub(crate) fn persisting(&self) -> bool {
        self.storage.is_some()
    }

    pub(crate) fn agent_row(rec: &AgentRecord, state: AgentState, reason: &str) -> AgentRow {
        AgentRow { id: rec.id, name: rec.name.clone(), state, quarantine_reason: reason.to_string() }
    }

    pub(crate) fn meta_row(&self, counter: u64) -> MetaRow {
        MetaRow {
            identity: self.identity,
            deployment_id: self.config.deployment_id.clone(),
            instance_id: self.config.instance_id.clone(),
            agent_counter: counter,
        }
    }

    pub(crate) fn event(&self, event: AuditEvent) {
        emit(self.audit.as_deref(), &event);
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Registers a send, unless shutdown has begun. The counter is raised before the flag
    /// is read and shutdown sets the flag before it reads the counter (both sequentially
    /// consistent), so either the send sees the flag or shutdown sees the send.
    pub(crate) fn enter_send(&self) -> Result<SendGuard<'_>> {
        self.shared.sending.0.fetch_add(1, Ordering::SeqCst);
        let guard = SendGuard(self);
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        Ok(guard)
    }

    /// Runs `fut` until `deadline` on the runtime's clock; `None` if the deadline came first.
    pub(crate) async fn timeout_at<F: std::future::Future>(&self, deadline: Instant, fut: F) -> Option<F::Output> {
        if self.virtual_clock {
            let sleep = self.clock.sleep_until(deadline);
            tokio::select! {
                biased;
                v = fut => Some(v),
                () = sleep => None,
            }
        } else {
            tokio::time::timeout_at(deadline.into(), fut).await.ok()
        }
    }

    /// Waits (at most until `deadline`, on the runtime's clock) for the sends that passed
    /// their shutdown check.
    async fn wait_senders(&self, deadline: Option<Instant>) {
        while self.shared.sending.0.load(Ordering::SeqCst) > 0 {
            let notified = self.shared.senders_done.notified();
            // Re-check after registering: the last sender may have ended meanwhile.
            if self.shared.sending.0.load(Ordering::SeqCst) == 0 {
                break;
            }
            match deadline {
                Some(d) => {
                    if self.timeout_at(d, notified).await.is_none() {
                        break;
                    }
                }
                None => notified.await,
            }
        }
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Result<Arc<AgentRecord>> {
        self.agents.read().get(id).cloned().ok_or(Error::AgentNotBound(*id))
    }

    pub(crate) fn channel(&self, id: &ChannelId) -> Result<Arc<ChannelRecord>> {
        if let Some(ch) = self.channels.read().get(id) {
            return Ok(Arc::clone(ch));
        }
        Err(if self.closed.lock().contains(id) { Error::ChannelClosed(*id) } else { Error::UnknownChannel(*id) })
    }

    pub(crate) fn current_sg(&self) -> Option<State> {
        self.sg.lock().tree.root()
    }

    // ---- delivery failures ----------------------------------------------------------

    pub(crate) fn delivery_failed(&self, rec: &AgentRecord, msg: MessageId, failure: DeliveryFailure) {
        match failure {
            DeliveryFailure::Panicked => self.shared.metrics.handler_panics.inc(),
            DeliveryFailure::TimedOut => {
                self.shared.metrics.handler_timeouts.inc();
                self.quarantine_now(&rec.id, "Agent callable timeout");
            }
        }
        if let Some(h) = &self.hooks {
            h.on_delivery_failure(rec.id, msg, failure);
        }
        let mut ev = AuditEvent::new(AuditEventType::DeliveryFailed);
        ev.success = false;
        ev.agent = Some(rec.id);
        ev.reason = Some(
            match failure {
                DeliveryFailure::Panicked => "handler panicked",
                DeliveryFailure::TimedOut => "handler timed out",
            }
            .to_string(),
        );
        self.event(ev);
    }

    // ---- queries --------------------------------------------------------------------

    pub(crate) fn channels_of(&self, rec: &AgentRecord) -> Vec<ChannelInfo> {
        let ids = rec.admin.lock().channels.clone();
        ids.iter()
            .filter_map(|c| self.channel(c).ok())
            .filter_map(|ch| {
                let peer = ch.peer_of(&rec.id)?.id();
                let status = ch.inner.lock().status;
                Some(ChannelInfo {
                    channel_id: ch.id,
                    peer,
                    status,
                    depth: usize::from(ch.depth),
                    peer_runtime: ch.remote().map(|l| l.end.peer),
                })
            })
            .collect()
    }

    pub(crate) fn status_of(&self, rec: &AgentRecord) -> AgentStatus {
        AgentStatus {
            agent_id: rec.id,
            state: rec.state(),
            channel_count: rec.admin.lock().channels.len(),
            messages_sent: rec.messages_sent.load(Ordering::Relaxed),
            mailbox_len: rec.mailbox_len(),
        }
    }

    pub(crate) fn exec(&self) -> &tokio::runtime::Handle {
        &self.exec
    }
}

/// A runtime: hosts agents, mediates every message between them.
///
/// Dropping it shuts it down: gracefully (like [`Runtime::shutdown`]) when dropped outside
/// async code; inside async code, where blocking is not allowed, queued messages are
/// dropped — call [`Runtime::shutdown_async`] first to deliver them.
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
    pub(crate) owned: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("identity", &self.inner.identity).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts a runtime with the default collaborators.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        Self::builder(config).build()
    }

    /// A builder for a runtime with custom entropy, hooks, audit sink or tokio handle.
    #[must_use]
    pub fn builder(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            entropy: None,
            hooks: None,
            audit: None,
            clock: None,
            handle: None,
            worker_threads: 2,
            storage: None,
        }
    }

    /// The runtime's identity.
    #[must_use]
    pub fn identity(&self) -> RuntimeId {
        self.inner.identity
    }

    /// Attaches the transport that carries messages of cross-runtime channels with every
    /// peer runtime (see [`crate::remote`]). Fails with [`Error::Config`], changing
    /// nothing, when a transport is attached already.
    pub fn attach_transport(&self, transport: Arc<dyn crate::remote::Transport>) -> Result<()> {
        self.inner.transport.attach(None, transport).map_err(Self::transport_taken)
    }

    /// Attaches the transport that carries messages of cross-runtime channels with the
    /// peer runtimes `peers` (e.g. one for native peers, another for pymfp ones). Fails
    /// with [`Error::Config`], changing nothing, when one of them has a transport already
    /// or one is attached for every peer.
    pub fn attach_transport_for(
        &self,
        peers: &[mfp_core::RuntimeId],
        transport: Arc<dyn crate::remote::Transport>,
    ) -> Result<()> {
        self.inner.transport.attach(Some(peers), transport).map_err(Self::transport_taken)
    }

    fn transport_taken(reason: String) -> Error {
        Error::Config(crate::error::ConfigError { field: "transport", reason })
    }

    /// The handle a transport drives this runtime with (inbound messages,
    /// acknowledgements, channel agreement).
    #[must_use]
    pub fn remote_handle(&self) -> crate::remote::RemoteHandle {
        crate::remote::RemoteHandle { inner: Arc::downgrade(&self.inner) }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The protocol version (1).
    #[must_use]
    pub const fn protocol_version(&self) -> u16 {
        mfp_core::PROTOCOL_VERSION
    }

    /// Binds an agent with a synchronous handler. The handler runs on a blocking thread;
    /// it may send (including replies on the same channel) through the handle it is given.
    pub fn bind<F>(&self, handler: F) -> Result<AgentHandle>
    where
        F: Fn(&AgentHandle, crate::types::DeliveredMessage) + Send + Sync + 'static,
    {
        self.inner.blocking("Runtime::bind", |w| self.inner.bind(None, Handler::from_sync(handler), w))
    }

    /// Binds a named agent with a synchronous handler (names are unique per runtime).
    pub fn bind_named<F>(&self, name: &str, handler: F) -> Result<AgentHandle>
    where
        F: Fn(&AgentHandle, crate::types::DeliveredMessage) + Send + Sync + 'static,
    {
        self.inner
            .blocking("Runtime::bind", |w| self.inner.bind(Some(name.to_string()), Handler::from_sync(handler), w))
    }

    /// Binds an agent with an [`crate::AsyncHandler`].
    pub fn bind_async<H: crate::agent::AsyncHandler>(&self, handler: H) -> Result<AgentHandle> {
        self.inner.blocking("Runtime::bind", |w| self.inner.bind(None, Handler::from_async(handler), w))
    }

    /// Binds a named agent with an [`crate::AsyncHandler`].
    pub fn bind_async_named<H: crate::agent::AsyncHandler>(&self, name: &str, handler: H) -> Result<AgentHandle> {
        self.inner
            .blocking("Runtime::bind", |w| self.inner.bind(Some(name.to_string()), Handler::from_async(handler), w))
    }

    /// Binds an agent with an async closure `|agent, message| async move { … }`.
    pub fn bind_async_fn<F, Fut>(&self, handler: F) -> Result<AgentHandle>
    where
        F: Fn(AgentHandle, crate::types::DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.blocking("Runtime::bind", |w| self.inner.bind(None, Handler::from_async_fn(handler), w))
    }

    /// Attaches a synchronous handler to an agent restored from storage and starts its
    /// delivery (messages sent to it meanwhile waited in its mailbox).
    pub fn attach<F>(&self, id: &AgentId, handler: F) -> Result<AgentHandle>
    where
        F: Fn(&AgentHandle, crate::types::DeliveredMessage) + Send + Sync + 'static,
    {
        self.inner.attach(id, Handler::from_sync(handler))
    }

    /// [`Runtime::attach`] by the agent's name.
    pub fn attach_named<F>(&self, name: &str, handler: F) -> Result<AgentHandle>
    where
        F: Fn(&AgentHandle, crate::types::DeliveredMessage) + Send + Sync + 'static,
    {
        let id = self.inner.admin.lock().names.get(name).copied();
        let id = id.ok_or_else(|| Error::UnknownAgentName(name.to_string()))?;
        self.inner.attach(&id, Handler::from_sync(handler))
    }

    /// Attaches an async handler to a restored agent.
    pub fn attach_async<H: crate::agent::AsyncHandler>(&self, id: &AgentId, handler: H) -> Result<AgentHandle> {
        self.inner.attach(id, Handler::from_async(handler))
    }

    /// [`Runtime::attach_async`] by the agent's name.
    pub fn attach_async_named<H: crate::agent::AsyncHandler>(&self, name: &str, handler: H) -> Result<AgentHandle> {
        let id = self.id_by_name(name)?;
        self.inner.attach(&id, Handler::from_async(handler))
    }

    /// Attaches an async closure `|agent, message| async move { … }` to a restored agent
    /// (the restart counterpart of [`Runtime::bind_async_fn`]).
    pub fn attach_async_fn<F, Fut>(&self, id: &AgentId, handler: F) -> Result<AgentHandle>
    where
        F: Fn(AgentHandle, crate::types::DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.attach(id, Handler::from_async_fn(handler))
    }

    /// [`Runtime::attach_async_fn`] by the agent's name.
    pub fn attach_async_fn_named<F, Fut>(&self, name: &str, handler: F) -> Result<AgentHandle>
    where
        F: Fn(AgentHandle, crate::types::DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let id = self.id_by_name(name)?;
        self.inner.attach(&id, Handler::from_async_fn(handler))
    }

    /// Binds a named agent with an async closure (see [`Runtime::bind_async_fn`]).
    pub fn bind_async_fn_named<F, Fut>(&self, name: &str, handler: F) -> Result<AgentHandle>
    where
        F: Fn(AgentHandle, crate::types::DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner
            .blocking("Runtime::bind", |w| self.inner.bind(Some(name.to_string()), Handler::from_async_fn(handler), w))
    }

    fn id_by_name(&self, name: &str) -> Result<AgentId> {
        let id = self.inner.admin.lock().names.get(name).copied();
        id.ok_or_else(|| Error::UnknownAgentName(name.to_string()))
    }

    /// Agents restored from storage that have no handler yet: `(id, name)`.
    #[must_use]
    pub fn detached_agents(&self) -> Vec<(AgentId, Option<String>)> {
        let ids: Vec<AgentId> = self.inner.detached.lock().keys().copied().collect();
        ids.into_iter().filter_map(|id| self.inner.agent(&id).ok().map(|r| (id, r.name.clone()))).collect()
    }

    /// A handle to a bound agent.
    pub fn agent(&self, id: &AgentId) -> Result<AgentHandle> {
        Ok(AgentHandle::new(Arc::downgrade(&self.inner), self.inner.agent(id)?))
    }

    /// A handle to a bound agent by name.
    pub fn agent_by_name(&self, name: &str) -> Result<AgentHandle> {
        let id = self.inner.admin.lock().names.get(name).copied();
        let id = id.ok_or_else(|| Error::UnknownAgentName(name.to_string()))?;
        self.agent(&id)
    }

    /// Unbinds an agent gracefully: closes its channels, delivers what is already in its
    /// mailbox, then stops its worker. A quarantined agent must be terminated instead.
    pub fn unbind_agent(&self, id: &AgentId) -> Result<()> {
        self.inner.blocking("Runtime::unbind_agent", |w| self.inner.remove_agent(id, false, w))
    }

    /// Terminates an agent at once, in any state: closes its channels and drops whatever is
    /// queued for it.
    pub fn terminate_agent(&self, id: &AgentId) -> Result<()> {
        self.inner.blocking("Runtime::terminate_agent", |w| self.inner.remove_agent(id, true, w))
    }

    /// Establishes a channel with the configured default depth.
    pub fn establish_channel(&self, a: &AgentId, b: &AgentId) -> Result<ChannelId> {
        let depth = self.inner.config.default_frame_depth;
        self.inner.blocking("Runtime::establish_channel", |w| self.inner.establish(a, b, depth, w))
    }

    /// Establishes a channel with frame depth `depth`.
    pub fn establish_channel_with_depth(&self, a: &AgentId, b: &AgentId, depth: usize) -> Result<ChannelId> {
        self.inner.blocking("Runtime::establish_channel", |w| self.inner.establish(a, b, depth, w))
    }

    /// Closes a channel, wiping its state. Messages already queued are still delivered.
    pub fn close_channel(&self, id: &ChannelId) -> Result<()> {
        self.inner.blocking("Runtime::close_channel", |w| self.inner.close_channel(id, w))
    }

    /// Quarantines an agent and its active channels.
    pub fn quarantine_agent(&self, id: &AgentId, reason: &str) -> Result<()> {
        self.inner.blocking("Runtime::quarantine_agent", |w| self.inner.quarantine_agent(id, reason, w))
    }

    /// Quarantines one channel.
    pub fn quarantine_channel(&self, id: &ChannelId, reason: &str) -> Result<()> {
        self.inner.blocking("Runtime::quarantine_channel", |w| self.inner.quarantine_channel(id, reason, w))
    }

    /// Restores a quarantined agent and the channels quarantined because of it; the agent
    /// becomes `Active`, or `Bound` if it has no channel.
    pub fn restore_agent(&self, id: &AgentId) -> Result<()> {
        self.inner.blocking("Runtime::restore_agent", |w| self.inner.restore_agent(id, w))
    }

    /// Restores a quarantined channel (both agents must not be quarantined).
    pub fn restore_channel(&self, id: &ChannelId) -> Result<()> {
        self.inner.blocking("Runtime::restore_channel", |w| self.inner.restore_channel(id, w))
    }

    // ---- async administration -------------------------------------------------------
    //
    // The async forms of the administrative calls. With storage, their commit wait is a
    // future (the thread is free meanwhile); they are the ones to use from async code.

    /// Async form of the `bind…` family: binds an agent (named, if `name` is given) with
    /// `handler` — [`AgentHandler::sync`], [`AgentHandler::of`] or
    /// [`AgentHandler::async_fn`].
    pub async fn bind_agent_async(&self, name: Option<&str>, handler: AgentHandler) -> Result<AgentHandle> {
        self.inner.bind(name.map(str::to_string), handler.0, Wait::Yes).await
    }

    /// Async form of the `attach…` family (attaching writes nothing and never waits).
    pub async fn attach_agent_async(&self, id: &AgentId, handler: AgentHandler) -> Result<AgentHandle> {
        self.inner.attach(id, handler.0)
    }

    /// Async [`Runtime::establish_channel`].
    pub async fn establish_channel_async(&self, a: &AgentId, b: &AgentId) -> Result<ChannelId> {
        self.inner.establish(a, b, self.inner.config.default_frame_depth, Wait::Yes).await
    }

    /// Async [`Runtime::establish_channel_with_depth`].
    pub async fn establish_channel_with_depth_async(
        &self,
        a: &AgentId,
        b: &AgentId,
        depth: usize,
    ) -> Result<ChannelId> {
        self.inner.establish(a, b, depth, Wait::Yes).await
    }

    /// Async [`Runtime::close_channel`].
    pub async fn close_channel_async(&self, id: &ChannelId) -> Result<()> {
        self.inner.close_channel(id, Wait::Yes).await
    }

    /// Async [`Runtime::quarantine_agent`].
    pub async fn quarantine_agent_async(&self, id: &AgentId, reason: &str) -> Result<()> {
        self.inner.quarantine_agent(id, reason, Wait::Yes).await
    }

    /// Async [`Runtime::quarantine_channel`].
    pub async fn quarantine_channel_async(&self, id: &ChannelId, reason: &str) -> Result<()> {
        self.inner.quarantine_channel(id, reason, Wait::Yes).await
    }

    /// Async [`Runtime::restore_agent`].
    pub async fn restore_agent_async(&self, id: &AgentId) -> Result<()> {
        self.inner.restore_agent(id, Wait::Yes).await
    }

    /// Async [`Runtime::restore_channel`].
    pub async fn restore_channel_async(&self, id: &ChannelId) -> Result<()> {
        self.inner.restore_channel(id, Wait::Yes).await
    }

    /// Async [`Runtime::unbind_agent`].
    pub async fn unbind_agent_async(&self, id: &AgentId) -> Result<()> {
        self.inner.remove_agent(id, false, Wait::Yes).await
    }

    /// Async [`Runtime::terminate_agent`].
    pub async fn terminate_agent_async(&self, id: &AgentId) -> Result<()> {
        self.inner.remove_agent(id, true, Wait::Yes).await
    }

    /// The agent's lifecycle state.
    pub fn agent_state(&self, id: &AgentId) -> Result<AgentState> {
        Ok(self.inner.agent(id)?.state())
    }

    /// The agent's quarantine reason (empty if not quarantined).
    pub fn quarantine_reason(&self, id: &AgentId) -> Result<String> {
        Ok(self.inner.agent(id)?.admin.lock().quarantine_reason.clone())
    }

    /// Information about one channel, from the point of view of agent `a` of the pair (for
    /// a cross-runtime channel: of its local agent).
    pub fn channel_info(&self, id: &ChannelId) -> Result<ChannelInfo> {
        let ch = self.inner.channel(id)?;
        let status = ch.inner.lock().status;
        let (peer, peer_runtime) = match &ch.far {
            Far::Local(b) => (b.id, None),
            Far::Remote(l) => (l.end.agent, Some(l.end.peer)),
        };
        Ok(ChannelInfo { channel_id: ch.id, peer, status, depth: usize::from(ch.depth), peer_runtime })
    }

    /// The two agents of a channel, in canonical order (for a cross-runtime channel: the
    /// local agent, then the agent of the peer runtime).
    pub fn channel_agents(&self, id: &ChannelId) -> Result<(AgentId, AgentId)> {
        let ch = self.inner.channel(id)?;
        let b = match &ch.far {
            Far::Local(b) => b.id,
            Far::Remote(l) => l.end.agent,
        };
        Ok((ch.a.id, b))
    }

    /// Number of bound agents.
    #[must_use]
    pub fn agent_count(&self) -> usize {
        self.inner.agents.read().len()
    }

    /// Number of open channels.
    #[must_use]
    pub fn channel_count(&self) -> usize {
        self.inner.channels.read().len()
    }

    /// The runtime's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// Messages queued or being handled.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.inner.shared.in_flight.0.load(Ordering::Acquire)
    }

    /// Blocks until every queued message has been handled, or `timeout` passes (a
    /// timeout too large to represent, such as `Duration::MAX`, waits without limit).
    /// Returns whether the runtime is idle.
    ///
    /// Called on the thread that drives the runtime's own current-thread tokio runtime,
    /// where no handler can run while it waits, it does not wait: it returns at once
    /// whether the runtime is idle (use [`Runtime::wait_idle_async`] there).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        if crate::block::place(&self.inner.exec) == crate::block::Place::Driver {
            return self.in_flight() == 0;
        }
        let deadline = Instant::now().checked_add(timeout);
        while self.in_flight() > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Async form of [`Runtime::wait_idle`].
    pub async fn wait_idle_async(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        while self.in_flight() > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        true
    }

    /// The current global state `Sg` (secret; diagnostics and vector checks only).
    #[cfg(feature = "inspect")]
    #[must_use]
    pub fn global_state(&self) -> Option<State> {
        self.inner.current_sg()
    }

    /// A channel's current local state and step (secret; diagnostics and vector checks
    /// only).
    #[cfg(feature = "inspect")]
    pub fn channel_state(&self, id: &ChannelId) -> Result<(State, u64)> {
        let ch = self.inner.channel(id)?;
        let inner = ch.inner.lock();
        Ok((inner.state.clone(), inner.step))
    }

    /// The agent counter (number of agents ever bound).
    #[must_use]
    pub fn agent_counter(&self) -> u64 {
        self.inner.admin.lock().agent_counter
    }

    /// Marks the runtime as shutting down (new sends fail with [`Error::ShutDown`]) and
    /// takes the delivery workers; empty if shutdown had already begun.
    fn begin_shutdown(&self) -> Vec<tokio::task::JoinHandle<()>> {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.inner.workers.lock())
    }

    /// Tells every agent's worker to deliver what is queued, then stop.
    fn drain_workers(&self) {
        let agents: Vec<Arc<AgentRecord>> = self.inner.agents.read().values().cloned().collect();
        for a in &agents {
            a.control.send_replace(DRAIN);
        }
    }

    /// The graceful part of a shutdown: waits for the sends already under way (they may
    /// still get a receipt), then lets every worker deliver what is queued — all within
    /// `pipeline_timeout`.
    async fn drain(&self, workers: Vec<tokio::task::JoinHandle<()>>) {
        let deadline = self.inner.clock.now().checked_add(self.inner.config.pipeline_timeout);
        self.inner.wait_senders(deadline).await;
        self.drain_workers();
        let join_all = async {
            for w in workers {
                let _ = w.await;
            }
        };
        match deadline {
            Some(d) => {
                let _ = self.inner.timeout_at(d, join_all).await;
            }
            None => join_all.await,
        }
    }

    /// Wipes the in-memory state; `undelivered` messages were still queued or being
    /// handled when delivery stopped (they are dropped, and a warning says how many).
    fn finish_shutdown(&self, undelivered: u64) {
        let _admin = self.inner.admin.lock();
        // Wipe every channel's state from memory. Nothing is written to storage: a
        // persistent runtime keeps its channels and comes back where it was.
        let channels: Vec<Arc<ChannelRecord>> = self.inner.channels.write().drain().map(|(_, c)| c).collect();
        for ch in channels {
            let mut inner = ch.inner.lock();
            inner.status = ChannelStatus::Closed;
            inner.state = State::zero();
            inner.dedup = None;
        }
        self.inner.sg.lock().tree = MerkleSg::new();
        self.inner.detached.lock().clear();
        let agents: Vec<Arc<AgentRecord>> = self.inner.agents.write().drain().map(|(_, a)| a).collect();
        for a in agents {
            a.set_state(AgentState::Terminated);
            a.control.send_replace(STOP);
        }
        if undelivered > 0 {
            tracing::warn!(
                target: "mfp::runtime",
                runtime = %self.inner.identity.short(),
                undelivered,
                "runtime shut down with messages not yet handled; they are dropped (shut down \
                 outside async code, or call shutdown_async, to deliver them first)"
            );
        }
        tracing::info!(target: "mfp::runtime", runtime = %self.inner.identity.short(), "runtime shut down");
    }

    /// Shuts down: stops accepting sends, lets every agent's worker deliver what is queued
    /// (bounded by `pipeline_timeout`), then wipes every channel's state from memory. With
    /// storage, the stored state is kept: the next start restores it.
    ///
    /// Called on the thread that drives the runtime's own current-thread tokio runtime,
    /// where no worker can run while it waits, it does not wait: it stops the workers at
    /// once and drops what is queued (a warning says how many) — call
    /// [`Runtime::shutdown_async`] there to deliver them first.
    pub fn shutdown(&self) {
        let workers = self.begin_shutdown();
        let place = crate::block::place(&self.inner.exec);
        if place == crate::block::Place::Driver {
            let undelivered = self.in_flight();
            for w in &workers {
                w.abort();
            }
            self.finish_shutdown(undelivered);
            return;
        }
        if !workers.is_empty() {
            let drain = || {
                let _g = self.inner.exec.enter();
                crate::block::block_on(self.drain(workers));
            };
            if place == crate::block::Place::MultiThread { tokio::task::block_in_place(drain) } else { drain() }
        }
        self.finish_shutdown(self.in_flight());
    }

    /// Async form of [`Runtime::shutdown`].
    pub async fn shutdown_async(&self) {
        let workers = self.begin_shutdown();
        if !workers.is_empty() {
            self.drain(workers).await;
        }
        self.finish_shutdown(self.in_flight());
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.inner.is_shut_down() {
            if tokio::runtime::Handle::try_current().is_err() {
                // Not inside async code: a graceful, bounded shutdown may block here.
                self.shutdown();
            } else {
                // Inside async code we must not block: stop workers at once.
                let workers = self.begin_shutdown();
                let undelivered = self.in_flight();
                for w in &workers {
                    w.abort();
                }
                self.finish_shutdown(undelivered);
            }
        }
        if let Some(rt) = self.owned.take() {
            rt.shutdown_background();
        }
    }
}

/// Weak reference type used by handles.
pub(crate) type WeakInner = Weak<Inner>;
