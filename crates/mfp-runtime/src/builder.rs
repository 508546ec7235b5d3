//! Building a runtime, and restoring one from storage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mfp_core::{AgentId, ChannelId, EntropySource, MIN_FRAME_DEPTH, MerkleSg, RuntimeId};
use parking_lot::{Mutex, RwLock};

use crate::agent::{AgentRecord, Delivery};
use crate::audit::AuditSink;
use crate::channel::{ChannelInner, ChannelRecord, Far};
use crate::config::RuntimeConfig;
use crate::entropy::SystemEntropy;
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::remote::{Chains, OutboundMessage, RemoteEnd, RemoteLink};
use crate::runtime::{AdminState, IdHash, InFlight, Inner, QuarantineCause, Runtime, SgState, Shared};
use crate::storage::{DeliveryRow, OutboundRow, RemoteChannelRow, Snapshot, Storage, StorageError, StorageOp};
use crate::types::{AgentState, ChannelStatus, CorrelationId, DeliveredMessage};

/// Builds a [`Runtime`] with optional collaborators.
pub struct RuntimeBuilder {
    pub(crate) config: RuntimeConfig,
    pub(crate) entropy: Option<Box<dyn EntropySource + Send>>,
    pub(crate) hooks: Option<Arc<dyn Hooks>>,
    pub(crate) audit: Option<Arc<dyn AuditSink>>,
    pub(crate) clock: Option<Arc<dyn crate::clock::Clock>>,
    pub(crate) handle: Option<tokio::runtime::Handle>,
    pub(crate) worker_threads: usize,
    pub(crate) storage: Option<Arc<dyn Storage>>,
}

impl RuntimeBuilder {
    /// Persists the runtime's state in `storage`. If the store already holds a runtime,
    /// [`RuntimeBuilder::build`] restores it: identity, agents (without handlers: attach
    /// them with [`Runtime::attach`] / [`Runtime::attach_named`]), channels with their
    /// states and steps, and Sg — recomputed from the channel states and checked against
    /// the stored copy.
    #[must_use]
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// [`RuntimeBuilder::storage`] with a shared store.
    #[must_use]
    pub fn storage_arc(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Replaces the entropy source (default: an OS-seeded fast-key-erasure ChaCha20
    /// generator). Used to reproduce traces; never pass a predictable source in production.
    #[must_use]
    pub fn entropy(mut self, source: impl EntropySource + Send + 'static) -> Self {
        self.entropy = Some(Box::new(source));
        self
    }

    /// Replaces the clock used for rate windows, the rate-limit wait and idempotency
    /// windows (default: [`crate::SystemClock`], the system's monotonic clock); tests pass a
    /// [`crate::ManualClock`].
    #[must_use]
    pub fn clock(mut self, clock: impl crate::clock::Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Installs hooks.
    #[must_use]
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// Installs an audit sink (audit events also go to `tracing`, target `mfp::audit`).
    #[must_use]
    pub fn audit_sink(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }

    /// Runs delivery workers on an existing tokio runtime (it must have the time driver
    /// enabled). Without this, a runtime inside a tokio context uses that context, and
    /// one outside creates its own multi-threaded tokio runtime.
    #[must_use]
    pub fn tokio_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Worker threads of the tokio runtime created when none is given (default 2).
    #[must_use]
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// Validates the configuration and starts the runtime.
    pub fn build(self) -> Result<Runtime> {
        self.config.validate()?;
        let mut entropy: Box<dyn EntropySource + Send> = match self.entropy {
            Some(e) => e,
            None => Box::new(SystemEntropy::new().map_err(|_| Error::Entropy)?),
        };
        let snapshot = match &self.storage {
            Some(st) => st.load()?,
            None => None,
        };
        let identity = match snapshot.as_ref().and_then(|s| s.meta.as_ref()) {
            Some(meta) => {
                let configured = self.config.identity.or_else(|| {
                    (!self.config.deployment_id.is_empty() && !self.config.instance_id.is_empty())
                        .then(|| RuntimeId::derive(&self.config.deployment_id, &self.config.instance_id))
                });
                if configured.is_some_and(|c| c != meta.identity) {
                    return Err(Error::Config(crate::error::ConfigError {
                        field: "identity",
                        reason: "the configured identity differs from the stored runtime's".into(),
                    }));
                }
                meta.identity
            }
            None => {
                let mut rid = [0u8; 32];
                let needs_random = self.config.identity.is_none()
                    && (self.config.deployment_id.is_empty() || self.config.instance_id.is_empty());
                if needs_random {
                    entropy.fill(&mut rid).map_err(|_| Error::Entropy)?;
                }
                self.config.derive_identity(|| rid)
            }
        };
        let handle = self.handle.or_else(|| tokio::runtime::Handle::try_current().ok());
        let (exec, owned) = match handle {
            Some(h) => (h, None),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.worker_threads)
                    .thread_name("mfp-runtime")
                    .enable_time()
                    .build()
                    .map_err(|e| Error::ExecutorStart(e.to_string()))?;
                (rt.handle().clone(), Some(rt))
            }
        };
        let virtual_clock = self.clock.is_some();
        let clock: Arc<dyn crate::clock::Clock> = self.clock.unwrap_or_else(|| Arc::new(crate::clock::SystemClock));
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            admin_op: tokio::sync::Mutex::new(()),
            config: self.config,
            identity,
            epoch: clock.now(),
            virtual_clock,
            clock,
            entropy: Mutex::new(entropy),
            admin: Mutex::new(AdminState { agent_counter: 0, names: HashMap::new() }),
            agents: RwLock::new(HashMap::default()),
            channels: RwLock::new(HashMap::default()),
            closed: Mutex::default(),
            quarantine_causes: Mutex::new(HashMap::default()),
            sg: Mutex::new(SgState { tree: MerkleSg::new() }),
            shared: Arc::new(Shared::default()),
            hooks: self.hooks,
            audit: self.audit,
            storage: self.storage,
            transport: crate::remote::Transports::default(),
            peers: Mutex::new(HashMap::default()),
            acks: Mutex::new(Vec::new()),
            detached: Mutex::new(HashMap::default()),
            workers: Mutex::new(Vec::new()),
            exec,
            shut_down: AtomicBool::new(false),
        });
        match snapshot {
            Some(snap) => inner.restore(snap)?,
            None => inner.persist(vec![StorageOp::Meta(inner.meta_row(0))])?,
        }
        tracing::info!(target: "mfp::runtime", runtime = %inner.identity.short(), "runtime started");
        Ok(Runtime { inner, owned })
    }
}

/// How many stored messages one agent may have waiting to be delivered again after a
/// restart: `2 × mailbox_capacity + 2`. In operation the inbox holds at most what the mailbox
/// does plus the message being handled and one taken but not yet handed over, so this
/// leaves room for a few crashes in a row; more means the capacity was lowered (or the
/// store was edited), and restore refuses rather than load an unbounded backlog.
pub(crate) fn redelivery_limit(mailbox_capacity: usize) -> usize {
    mailbox_capacity.saturating_mul(2).saturating_add(2)
}

impl Inner {
    /// Rebuilds agents, channels and Sg from a snapshot, checking it for consistency.
    fn restore(&self, mut snap: Snapshot) -> Result<()> {
        let corrupt = |what: String| Error::Storage(StorageError::Corrupt(what));
        let pending = self.pending_by_recipient(std::mem::take(&mut snap.deliveries))?;
        let mut admin = self.admin.lock();
        admin.agent_counter = snap.meta.as_ref().map_or(0, |m| m.agent_counter);
        let mut agents = self.agents.write();
        for row in &snap.agents {
            if agents.contains_key(&row.id) {
                return Err(corrupt(format!("agent {} stored twice", row.id.short())));
            }
            // A mailbox takes at least every message waiting to be delivered again.
            let capacity = self.config.mailbox_capacity.max(pending.get(&row.id).map_or(0, Vec::len));
            let (rec, rx, control_rx) =
                AgentRecord::new(row.id, row.name.clone(), capacity, self.config.mailbox_max_bytes);
            rec.set_state(row.state);
            rec.admin.lock().quarantine_reason = row.quarantine_reason.clone();
            if let Some(n) = &row.name
                && admin.names.insert(n.clone(), row.id).is_some()
            {
                return Err(corrupt(format!("agent name '{n}' stored twice")));
            }
            self.detached.lock().insert(row.id, (rx, control_rx));
            agents.insert(row.id, rec);
        }
        let mut channels = self.channels.write();
        let mut tree_input = Vec::with_capacity(snap.channels.len());
        for row in snap.channels {
            let (Some(a), Some(b)) = (agents.get(&row.agent_a), agents.get(&row.agent_b)) else {
                return Err(corrupt(format!("channel {} names an unknown agent", row.id.short())));
            };
            if !(MIN_FRAME_DEPTH..=mfp_core::MAX_FRAME_DEPTH).contains(&row.depth) || row.agent_a > row.agent_b {
                return Err(corrupt(format!("channel {} has an invalid depth or agent order", row.id.short())));
            }
            if channels.contains_key(&row.id) {
                return Err(corrupt(format!("channel {} stored twice", row.id.short())));
            }
            if row.status == ChannelStatus::Quarantined {
                let cause = [a, b]
                    .into_iter()
                    .find(|r| r.state() == AgentState::Quarantined)
                    .map_or(QuarantineCause::Channel, |r| QuarantineCause::Agent(r.id));
                self.quarantine_causes.lock().insert(row.id, cause);
            }
            a.admin.lock().channels.push(row.id);
            if !Arc::ptr_eq(a, b) {
                b.admin.lock().channels.push(row.id);
            }
            tree_input.push((row.id, row.state.clone()));
            channels.insert(
                row.id,
                Arc::new(ChannelRecord {
                    id: row.id,
                    a: Arc::clone(a),
                    far: Far::Local(Arc::clone(b)),
                    depth: u16::try_from(row.depth).unwrap_or(u16::MAX),
                    inner: ChannelInner::new(row.state, row.step, row.status, row.validation_failures),
                }),
            );
        }
        self.restore_remote(snap.remote_channels, snap.outbound, &agents, &mut channels)?;
        self.peers.lock().extend(snap.peers.into_iter().map(|p| (p.runtime, p)));
        let mut redelivered = 0usize;
        for (id, rows) in pending {
            let Some(rec) = agents.get(&id) else {
                // The recipient is gone (terminated, unbound): nobody to deliver to.
                tracing::warn!(
                    target: "mfp::runtime",
                    agent = %id.short(),
                    count = rows.len(),
                    "pending deliveries to an agent that no longer exists were dropped"
                );
                continue;
            };
            for row in rows {
                let sender_runtime = channels.get(&row.channel).and_then(|c| c.remote().map(|l| l.end.peer));
                self.queue_redelivery(rec, row, sender_runtime)?;
                redelivered += 1;
            }
        }
        let mut sg = self.sg.lock();
        for (id, st) in &tree_input {
            sg.tree.insert(*id, st).map_err(|_| corrupt("duplicate channel in Sg".into()))?;
        }
        let recomputed = sg.tree.root();
        if recomputed != snap.sg {
            if !self.config.storage_fail_open {
                return Err(corrupt("Sg recomputed from the channel states differs from the stored Sg".into()));
            }
            // A runtime that ran degraded may have lost writes; the operator accepted that.
            tracing::warn!(
                target: "mfp::runtime",
                "stored Sg differs from the channel states (writes were lost while running degraded); using the recomputed Sg"
            );
        }
        tracing::info!(
            target: "mfp::runtime",
            agents = agents.len(),
            channels = channels.len(),
            redelivered,
            "runtime state restored"
        );
        Ok(())
    }

    /// Restores the cross-runtime channels and their outbound logs.
    fn restore_remote(
        &self,
        rows: Vec<RemoteChannelRow>,
        outbound: Vec<OutboundRow>,
        agents: &HashMap<AgentId, Arc<AgentRecord>, IdHash>,
        channels: &mut HashMap<ChannelId, Arc<ChannelRecord>, IdHash>,
    ) -> Result<()> {
        let corrupt = |m: String| Error::Storage(StorageError::Corrupt(m));
        let mut logs: HashMap<ChannelId, Vec<OutboundRow>> = HashMap::new();
        for o in outbound {
            logs.entry(o.channel).or_default().push(o);
        }
        for row in rows {
            let Some(a) = agents.get(&row.local_agent) else {
                return Err(corrupt(format!("cross-runtime channel {} names an unknown agent", row.id.short())));
            };
            if !(MIN_FRAME_DEPTH..=mfp_core::MAX_FRAME_DEPTH).contains(&row.depth) {
                return Err(corrupt(format!("cross-runtime channel {} has an invalid depth", row.id.short())));
            }
            if channels.contains_key(&row.id) {
                return Err(corrupt(format!("channel {} stored twice", row.id.short())));
            }
            if row.status == ChannelStatus::Quarantined {
                let cause = if a.state() == AgentState::Quarantined {
                    QuarantineCause::Agent(a.id)
                } else {
                    QuarantineCause::Channel
                };
                self.quarantine_causes.lock().insert(row.id, cause);
            }
            let mut log = logs.remove(&row.id).unwrap_or_default();
            log.sort_unstable_by_key(|o| o.step);
            let tx_next = row.tx.step;
            if log.iter().any(|o| o.step >= tx_next || o.peer != row.peer)
                || log.windows(2).any(|w| matches!(w, [x, y] if x.step == y.step))
            {
                return Err(corrupt(format!(
                    "the outbound log of cross-runtime channel {} does not fit its chain",
                    row.id.short()
                )));
            }
            let acked = log.first().map_or(tx_next, |o| o.step);
            let link = RemoteLink::new(
                RemoteEnd::new(row.peer, row.remote_agent),
                Chains::Split { tx: row.tx, rx: row.rx },
                acked,
            );
            *link.rx_rotation.lock() = row.rx_rotation;
            *link.reset.lock() = row.reset;
            link.unconfirmed.store(row.unconfirmed, std::sync::atomic::Ordering::Release);
            link.log.lock().entries.extend(log.into_iter().map(|o| OutboundMessage {
                peer: o.peer,
                channel: o.channel,
                step: o.step,
                wire: Arc::from(o.wire),
            }));
            a.admin.lock().channels.push(row.id);
            channels.insert(
                row.id,
                Arc::new(ChannelRecord {
                    id: row.id,
                    a: Arc::clone(a),
                    far: Far::Remote(Box::new(link)),
                    depth: u16::try_from(row.depth).unwrap_or(u16::MAX),
                    inner: ChannelInner::new(mfp_core::State::zero(), 0, row.status, row.validation_failures),
                }),
            );
        }
        if let Some(orphan) = logs.keys().next() {
            return Err(corrupt(format!("outbound messages stored for unknown channel {}", orphan.short())));
        }
        Ok(())
    }

    /// Groups the stored inbox by recipient (keeping the stored order, which is per
    /// channel by step), refusing more per agent than [`redelivery_limit`] allows.
    fn pending_by_recipient(&self, rows: Vec<DeliveryRow>) -> Result<HashMap<AgentId, Vec<DeliveryRow>>> {
        let limit = redelivery_limit(self.config.mailbox_capacity);
        let mut pending: HashMap<AgentId, Vec<DeliveryRow>> = HashMap::new();
        for row in rows {
            let queue = pending.entry(row.recipient).or_default();
            if queue.len() >= limit {
                return Err(Error::Config(crate::error::ConfigError {
                    field: "mailbox_capacity",
                    reason: format!(
                        "agent {} has more than {limit} stored messages waiting to be delivered again (the limit is \
                         twice mailbox_capacity plus two; was mailbox_capacity lowered?): raise mailbox_capacity to \
                         at least half the pending count shown by `mfp-storage inspect`",
                        row.recipient.short()
                    ),
                }));
            }
            queue.push(row);
        }
        Ok(pending)
    }

    /// Puts a stored, unhandled message back into its recipient's mailbox, flagged as a
    /// redelivery. The mailbox was made large enough for all of them.
    fn queue_redelivery(&self, rec: &AgentRecord, row: DeliveryRow, sender_runtime: Option<RuntimeId>) -> Result<()> {
        // Byte permits as for a send; past the byte bound (it may have been lowered) the
        // message holds what is left, so the accounting stays balanced.
        let need = rec.bytes_needed(row.payload.len());
        let held = need.min(u32::try_from(rec.mailbox_bytes.available_permits()).unwrap_or(u32::MAX));
        if let Ok(p) = rec.mailbox_bytes.try_acquire_many(held) {
            p.forget();
        }
        let token = InFlight::new(&self.shared, held);
        let delivery = Delivery {
            msg: DeliveredMessage {
                payload: row.payload,
                sender: row.sender,
                channel: row.channel,
                message_id: row.message_id,
                correlation_id: CorrelationId(row.correlation_id),
                step: row.step,
                redelivered: true,
                sender_runtime,
            },
            done: None,
            token,
            durable: true,
        };
        rec.tx.try_send(delivery).map_err(|_| {
            Error::Storage(StorageError::Corrupt(format!(
                "agent {}: more stored messages to deliver again than its mailbox takes",
                rec.id.short()
            )))
        })
    }
}
