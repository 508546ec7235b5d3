//! The runtime: registries, administration, and the six-stage send pipeline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mfp_core::crypto::sha256;
use mfp_core::{
    AgentId, BLOCK_SIZE, ChannelId, EntropySource, Frame, MIN_FRAME_DEPTH, MerkleSg, MessageId, RuntimeId, State,
    TAG_SIZE, encoding, ratchet, sampling,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::agent::{self, AgentRecord, DRAIN, Delivery, Handler, Outcome, STOP, WorkerCtx};
use crate::audit::{AuditEvent, AuditEventType, AuditSink, emit};
use crate::channel::{ChannelInner, ChannelRecord, Dedup, DedupHit};
use crate::config::{Backpressure, RateLimitAction, RuntimeConfig};
use crate::entropy::SystemEntropy;
use crate::error::{Error, Result};
use crate::handle::AgentHandle;
use crate::hooks::{DeliveryFailure, Hooks, SendContext};
use crate::metrics::Metrics;
use crate::storage::{AgentRow, ChannelRow, MetaRow, Snapshot, Storage, StorageError, StorageOp};
use crate::types::{AgentState, AgentStatus, ChannelInfo, ChannelStatus, CorrelationId, Receipt, SendOptions};

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
}

impl Shared {
    pub(crate) fn in_flight_done(&self) {
        self.in_flight.0.fetch_sub(1, Ordering::AcqRel);
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

/// A send's channel and recipient.
pub(crate) type Route = (Arc<ChannelRecord>, Arc<AgentRecord>);

/// The Merkle tree and the current Sg.
struct SgState {
    tree: MerkleSg,
}

/// Shared runtime state. Lock order: `admin` → maps → agent `admin` / channel `inner` → `sg`;
/// a channel lock and an agent's `admin` lock are never held together.
pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) identity: RuntimeId,
    pub(crate) epoch: Instant,
    entropy: Mutex<Box<dyn EntropySource + Send>>,
    admin: Mutex<AdminState>,
    agents: RwLock<HashMap<AgentId, Arc<AgentRecord>, IdHash>>,
    channels: RwLock<HashMap<ChannelId, Arc<ChannelRecord>, IdHash>>,
    quarantine_causes: Mutex<HashMap<ChannelId, QuarantineCause, IdHash>>,
    sg: Mutex<SgState>,
    pub(crate) shared: Arc<Shared>,
    hooks: Option<Arc<dyn Hooks>>,
    audit: Option<Arc<dyn AuditSink>>,
    storage: Option<Arc<dyn Storage>>,
    /// Mailboxes of restored agents whose handler is not attached yet.
    detached: Mutex<HashMap<AgentId, Detached, IdHash>>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    exec: tokio::runtime::Handle,
    shut_down: AtomicBool,
}

/// A restored agent waiting for its handler.
type Detached = (mpsc::Receiver<Delivery>, tokio::sync::watch::Receiver<u8>);

/// State only administrative operations touch.
struct AdminState {
    agent_counter: u64,
    names: HashMap<String, AgentId>,
}

/// Holds the jitter drawn for one frame and hands it to the sampler.
struct SliceEntropy<'a>(&'a [u8]);

impl EntropySource for SliceEntropy<'_> {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), mfp_core::Error> {
        let (head, rest) = self.0.split_at_checked(dest.len()).ok_or(mfp_core::Error::Entropy)?;
        dest.copy_from_slice(head);
        self.0 = rest;
        Ok(())
    }
}

/// Entropy draws up to this size (depth ≤ 8) stay on the stack: correlation (16),
/// message id (16), jitter (16·k).
const SMALL_DRAW: usize = 32 + BLOCK_SIZE * 8;

impl Inner {
    fn draw(&self, buf: &mut [u8]) -> Result<()> {
        self.entropy.lock().fill(buf).map_err(|_| Error::Entropy)
    }

    /// Applies `ops` to storage and waits for the commit. Without storage, nothing to do.
    /// A failure is an error unless the operator chose to run degraded (`storage_fail_open`).
    fn persist(&self, ops: Vec<StorageOp>) -> Result<()> {
        let Some(st) = &self.storage else { return Ok(()) };
        match st.apply(ops).wait() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.metrics.storage_failures.inc();
                if self.config.storage_fail_open {
                    tracing::error!(target: "mfp::runtime", error = %e, "storage write failed; continuing degraded");
                    Ok(())
                } else {
                    Err(Error::Storage(e))
                }
            }
        }
    }

    fn persisting(&self) -> bool {
        self.storage.is_some()
    }

    fn agent_row(rec: &AgentRecord, state: AgentState, reason: &str) -> AgentRow {
        AgentRow { id: rec.id, name: rec.name.clone(), state, quarantine_reason: reason.to_string() }
    }

    fn meta_row(&self, counter: u64) -> MetaRow {
        MetaRow {
            identity: self.identity,
            deployment_id: self.config.deployment_id.clone(),
            instance_id: self.config.instance_id.clone(),
            agent_counter: counter,
        }
    }

    fn event(&self, event: AuditEvent) {
        emit(self.audit.as_deref(), &event);
    }

    fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Result<Arc<AgentRecord>> {
        self.agents.read().get(id).cloned().ok_or(Error::AgentNotBound)
    }

    fn channel(&self, id: &ChannelId) -> Result<Arc<ChannelRecord>> {
        self.channels.read().get(id).cloned().ok_or(Error::UnknownChannel)
    }

    fn current_sg(&self) -> Option<State> {
        self.sg.lock().tree.root()
    }

    // ---- agents ---------------------------------------------------------------------

    pub(crate) fn bind(self: &Arc<Self>, name: Option<String>, handler: Handler) -> Result<AgentHandle> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let mut admin = self.admin.lock();
        if self.agents.read().len() >= self.config.max_agents {
            return Err(Error::ResourceLimit { what: "max_agents", limit: self.config.max_agents });
        }
        if let Some(n) = &name
            && admin.names.contains_key(n)
        {
            return Err(Error::DuplicateAgentName(n.clone()));
        }
        let counter = admin.agent_counter + 1;
        let mut suffix = [0u8; 8];
        self.draw(&mut suffix)?;
        let id = AgentId::derive(&self.identity, counter, &suffix);
        if self.agents.read().contains_key(&id) {
            return Err(Error::Entropy);
        }
        if self.persisting() {
            self.persist(vec![
                StorageOp::Meta(self.meta_row(counter)),
                StorageOp::PutAgent(AgentRow {
                    id,
                    name: name.clone(),
                    state: AgentState::Bound,
                    quarantine_reason: String::new(),
                }),
            ])?;
        }
        admin.agent_counter = counter;
        let (record, rx, control_rx) = AgentRecord::new(id, name.clone(), self.config.mailbox_capacity);
        self.spawn_worker(&record, handler, rx, control_rx);
        self.agents.write().insert(id, Arc::clone(&record));
        if let Some(n) = name {
            admin.names.insert(n, id);
        }
        drop(admin);
        let mut ev = AuditEvent::new(AuditEventType::AgentBound);
        ev.agent = Some(id);
        self.event(ev);
        Ok(AgentHandle::new(Arc::downgrade(self), record))
    }

    fn transition(rec: &AgentRecord, to: AgentState) -> Result<()> {
        let from = rec.state();
        if from == to {
            return Ok(());
        }
        if !from.can_become(to) {
            return Err(Error::InvalidTransition { from, to });
        }
        rec.set_state(to);
        Ok(())
    }

    fn remove_agent(&self, id: &AgentId, forced: bool) -> Result<()> {
        let mut admin = self.admin.lock();
        let rec = self.agent(id)?;
        match rec.state() {
            AgentState::Quarantined if !forced => return Err(Error::AgentQuarantined),
            AgentState::Terminated => return Err(Error::AgentNotBound),
            _ => {}
        }
        let chans = rec.admin.lock().channels.clone();
        for c in chans {
            self.close_channel_locked(&c)?;
        }
        self.persist(vec![StorageOp::DeleteAgent(*id)])?;
        self.detached.lock().remove(id);
        Self::transition(&rec, AgentState::Terminated)?;
        self.agents.write().remove(id);
        if let Some(n) = &rec.name {
            admin.names.remove(n);
        }
        drop(admin);
        rec.control.send_replace(if forced { STOP } else { DRAIN });
        let mut ev =
            AuditEvent::new(if forced { AuditEventType::AgentTerminated } else { AuditEventType::AgentUnbound });
        ev.agent = Some(*id);
        ev.reason = Some(if forced { "terminated" } else { "unbound" }.to_string());
        self.event(ev);
        Ok(())
    }

    pub(crate) fn unbind(&self, id: &AgentId) -> Result<()> {
        self.remove_agent(id, false)
    }

    pub(crate) fn terminate(&self, id: &AgentId) -> Result<()> {
        self.remove_agent(id, true)
    }

    /// Rebuilds agents, channels and Sg from a snapshot, checking it for consistency.
    fn restore(&self, snap: Snapshot) -> Result<()> {
        let corrupt = |what: String| Error::Storage(StorageError::Corrupt(what));
        let mut admin = self.admin.lock();
        admin.agent_counter = snap.meta.as_ref().map_or(0, |m| m.agent_counter);
        let mut agents = self.agents.write();
        for row in &snap.agents {
            if agents.contains_key(&row.id) {
                return Err(corrupt(format!("agent {} stored twice", row.id.short())));
            }
            let (rec, rx, control_rx) = AgentRecord::new(row.id, row.name.clone(), self.config.mailbox_capacity);
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
                    b: Arc::clone(b),
                    depth: u16::try_from(row.depth).unwrap_or(u16::MAX),
                    inner: parking_lot::Mutex::new(ChannelInner {
                        state: row.state,
                        step: row.step,
                        status: row.status,
                        validation_failures: row.validation_failures,
                        dedup: None,
                        leaf_hint: usize::MAX,
                    }),
                }),
            );
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
            "runtime state restored"
        );
        Ok(())
    }

    /// Starts the delivery worker of an agent.
    fn spawn_worker(
        self: &Arc<Self>,
        record: &Arc<AgentRecord>,
        handler: Handler,
        rx: mpsc::Receiver<Delivery>,
        control_rx: tokio::sync::watch::Receiver<u8>,
    ) {
        let ctx = WorkerCtx {
            inner: Arc::downgrade(self),
            shared: Arc::clone(&self.shared),
            record: Arc::clone(record),
            handler,
            timeout: self.config.agent_timeout,
            epoch: self.epoch,
        };
        let join = self.exec.spawn(agent::run_worker(ctx, rx, control_rx));
        self.workers.lock().push(join);
    }

    /// Starts the worker of a restored agent with `handler`.
    fn attach(self: &Arc<Self>, id: &AgentId, handler: Handler) -> Result<AgentHandle> {
        let record = self.agent(id)?;
        let (rx, control_rx) = self.detached.lock().remove(id).ok_or(Error::AlreadyAttached)?;
        self.spawn_worker(&record, handler, rx, control_rx);
        Ok(AgentHandle::new(Arc::downgrade(self), record))
    }

    // ---- channels -------------------------------------------------------------------

    fn establish(&self, a: &AgentId, b: &AgentId, depth: usize) -> Result<ChannelId> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        if !(MIN_FRAME_DEPTH..=self.config.max_frame_depth).contains(&depth) {
            return Err(Error::InvalidDepth { depth, min: MIN_FRAME_DEPTH, max: self.config.max_frame_depth });
        }
        let _admin = self.admin.lock();
        let ra = self.agent(a)?;
        let rb = self.agent(b)?;
        for r in [&ra, &rb] {
            match r.state() {
                AgentState::Quarantined => return Err(Error::AgentQuarantined),
                AgentState::Terminated => return Err(Error::AgentNotBound),
                AgentState::Bound | AgentState::Active => {}
            }
            if r.admin.lock().channels.len() >= self.config.max_channels_per_agent {
                return Err(Error::ResourceLimit {
                    what: "max_channels_per_agent",
                    limit: self.config.max_channels_per_agent,
                });
            }
        }
        let mut raw = [0u8; 16];
        self.draw(&mut raw)?;
        let id = ChannelId::from_bytes(raw);
        if self.channels.read().contains_key(&id) {
            return Err(Error::Entropy);
        }
        let sl0 = ratchet::channel_seed(&self.identity, a, b, &id);
        let (lo, hi) = if a <= b { (ra, rb) } else { (rb, ra) };
        let sg_after = {
            let mut sg = self.sg.lock();
            sg.tree.insert(id, &sl0).map_err(|e| Error::Core(e.into()))?;
            // Without storage, Sg is folded in lazily at the next send.
            if self.persisting() { sg.tree.root() } else { None }
        };
        if self.persisting() {
            let mut ops = vec![StorageOp::PutChannel(ChannelRow {
                id,
                agent_a: lo.id,
                agent_b: hi.id,
                depth,
                status: ChannelStatus::Active,
                step: 0,
                state: sl0.clone(),
                validation_failures: 0,
            })];
            for r in [&lo, &hi] {
                if r.state() == AgentState::Bound {
                    ops.push(StorageOp::PutAgent(Self::agent_row(r, AgentState::Active, "")));
                }
            }
            ops.push(StorageOp::Sg(sg_after));
            if let Err(e) = self.persist(ops) {
                let _ = self.sg.lock().tree.remove(&id);
                return Err(e);
            }
        }
        let record = Arc::new(ChannelRecord {
            id,
            a: Arc::clone(&lo),
            b: Arc::clone(&hi),
            depth: u16::try_from(depth).unwrap_or(u16::MAX),
            inner: parking_lot::Mutex::new(ChannelInner {
                state: sl0,
                step: 0,
                status: ChannelStatus::Active,
                validation_failures: 0,
                dedup: None,
                leaf_hint: usize::MAX,
            }),
        });
        self.channels.write().insert(id, record);
        // The id is fresh (checked above), so it is not in the lists yet; a self-channel
        // (a == b) is listed once.
        lo.admin.lock().channels.push(id);
        if !Arc::ptr_eq(&lo, &hi) {
            hi.admin.lock().channels.push(id);
        }
        for r in [&lo, &hi] {
            if r.state() == AgentState::Bound {
                Self::transition(r, AgentState::Active)?;
            }
        }
        let mut ev = AuditEvent::new(AuditEventType::ChannelEstablished);
        ev.channel = Some(id);
        ev.agent = Some(lo.id);
        ev.peer = Some(hi.id);
        self.event(ev);
        Ok(id)
    }

    /// Closes a channel; the caller holds the admin lock.
    fn close_channel_locked(&self, id: &ChannelId) -> Result<()> {
        let rec = self.channel(id)?;
        {
            let mut inner = rec.inner.lock();
            let sg_after = {
                let mut sg = self.sg.lock();
                sg.tree.remove(id).map_err(|e| Error::Core(e.into()))?;
                if self.persisting() { sg.tree.root() } else { None }
            };
            if self.persisting() {
                let mut ops = vec![StorageOp::CloseChannel(*id)];
                for r in [&rec.a, &rec.b] {
                    let only_this = r.admin.lock().channels.iter().all(|c| c == id);
                    if only_this && r.state() == AgentState::Active {
                        ops.push(StorageOp::PutAgent(Self::agent_row(r, AgentState::Bound, "")));
                    }
                }
                ops.push(StorageOp::Sg(sg_after));
                if let Err(e) = self.persist(ops) {
                    let _ = self.sg.lock().tree.insert(*id, &inner.state);
                    return Err(e);
                }
            }
            self.channels.write().remove(id);
            inner.status = ChannelStatus::Closed;
            inner.state = State::zero();
            inner.dedup = None;
        }
        self.quarantine_causes.lock().remove(id);
        for r in [&rec.a, &rec.b] {
            let mut adm = r.admin.lock();
            adm.channels.retain(|c| c != id);
            let empty = adm.channels.is_empty();
            drop(adm);
            if empty && r.state() == AgentState::Active {
                Self::transition(r, AgentState::Bound)?;
            }
        }
        let mut ev = AuditEvent::new(AuditEventType::ChannelClosed);
        ev.channel = Some(*id);
        ev.reason = Some("closed".to_string());
        self.event(ev);
        Ok(())
    }

    fn close_channel(&self, id: &ChannelId) -> Result<()> {
        let _admin = self.admin.lock();
        self.close_channel_locked(id)
    }

    // ---- quarantine -----------------------------------------------------------------

    pub(crate) fn quarantine_agent(&self, id: &AgentId, reason: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let rec = self.agent(id)?;
        match rec.state() {
            AgentState::Terminated => return Err(Error::AgentNotBound),
            AgentState::Quarantined => return Ok(()),
            _ => {}
        }
        rec.admin.lock().quarantine_reason = reason.to_string();
        Self::transition(&rec, AgentState::Quarantined)?;
        let chans = rec.admin.lock().channels.clone();
        for c in chans {
            if let Ok(ch) = self.channel(&c) {
                let mut inner = ch.inner.lock();
                if inner.status == ChannelStatus::Active {
                    inner.status = ChannelStatus::Quarantined;
                    self.quarantine_causes.lock().insert(c, QuarantineCause::Agent(*id));
                }
            }
        }
        self.shared.metrics.agent_quarantines.inc();
        tracing::warn!(target: "mfp::runtime", agent = %id.short(), reason, "agent quarantined");
        let mut ev = AuditEvent::new(AuditEventType::QuarantineAgent);
        ev.agent = Some(*id);
        ev.reason = Some(reason.to_string());
        self.event(ev);
        // The quarantine holds in memory whatever storage says; a failed write is
        // reported, and only the restart would forget it.
        if self.persisting() {
            let mut ops = vec![StorageOp::PutAgent(Self::agent_row(&rec, AgentState::Quarantined, reason))];
            ops.extend(self.channel_status_ops(&rec));
            self.persist(ops)?;
        }
        Ok(())
    }

    fn channel_status_ops(&self, rec: &AgentRecord) -> Vec<StorageOp> {
        let chans = rec.admin.lock().channels.clone();
        chans
            .iter()
            .filter_map(|c| self.channel(c).ok())
            .map(|ch| StorageOp::ChannelStatus { id: ch.id, status: ch.inner.lock().status })
            .collect()
    }

    fn quarantine_channel(&self, id: &ChannelId, reason: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let ch = self.channel(id)?;
        let mut inner = ch.inner.lock();
        if inner.status != ChannelStatus::Active {
            return Err(Error::ChannelState(inner.status));
        }
        inner.status = ChannelStatus::Quarantined;
        drop(inner);
        self.quarantine_causes.lock().insert(*id, QuarantineCause::Channel);
        self.channel_quarantined_event(id, reason);
        self.persist(vec![StorageOp::ChannelStatus { id: *id, status: ChannelStatus::Quarantined }])
    }

    /// Audit event for a send refused after ACCEPT.
    fn rejected(&self, sender: AgentId, channel: ChannelId, reason: &str) {
        let mut ev = AuditEvent::new(AuditEventType::MessageRejected);
        ev.success = false;
        ev.agent = Some(sender);
        ev.channel = Some(channel);
        ev.reason = Some(reason.to_string());
        self.event(ev);
    }

    fn channel_quarantined_event(&self, id: &ChannelId, reason: &str) {
        self.shared.metrics.channel_quarantines.inc();
        tracing::warn!(target: "mfp::runtime", channel = %id.short(), reason, "channel quarantined");
        let mut ev = AuditEvent::new(AuditEventType::QuarantineChannel);
        ev.channel = Some(*id);
        ev.reason = Some(reason.to_string());
        self.event(ev);
    }

    fn restore_agent(&self, id: &AgentId) -> Result<()> {
        let _admin = self.admin.lock();
        let rec = self.agent(id)?;
        if rec.state() != AgentState::Quarantined {
            return Err(Error::AgentState(rec.state()));
        }
        let chans = rec.admin.lock().channels.clone();
        for c in &chans {
            let Ok(ch) = self.channel(c) else { continue };
            let mut causes = self.quarantine_causes.lock();
            if causes.get(c) != Some(&QuarantineCause::Agent(*id)) {
                continue;
            }
            let peer = ch.peer_of(id).map(|p| (p.id, p.state()));
            match peer {
                Some((pid, AgentState::Quarantined)) if pid != *id => {
                    causes.insert(*c, QuarantineCause::Agent(pid));
                }
                _ => {
                    causes.remove(c);
                    let mut inner = ch.inner.lock();
                    inner.status = ChannelStatus::Active;
                    inner.validation_failures = 0;
                }
            }
        }
        rec.admin.lock().quarantine_reason.clear();
        let to = if chans.is_empty() { AgentState::Bound } else { AgentState::Active };
        Self::transition(&rec, to)?;
        let mut ev = AuditEvent::new(AuditEventType::RestoreAgent);
        ev.agent = Some(*id);
        self.event(ev);
        if self.persisting() {
            let mut ops = vec![StorageOp::PutAgent(Self::agent_row(&rec, to, ""))];
            ops.extend(self.channel_status_ops(&rec));
            self.persist(ops)?;
        }
        Ok(())
    }

    fn restore_channel(&self, id: &ChannelId) -> Result<()> {
        let _admin = self.admin.lock();
        let ch = self.channel(id)?;
        if ch.a.state() == AgentState::Quarantined || ch.b.state() == AgentState::Quarantined {
            return Err(Error::AgentQuarantined);
        }
        let mut inner = ch.inner.lock();
        if inner.status != ChannelStatus::Quarantined {
            return Err(Error::ChannelState(inner.status));
        }
        inner.status = ChannelStatus::Active;
        inner.validation_failures = 0;
        drop(inner);
        self.quarantine_causes.lock().remove(id);
        let mut ev = AuditEvent::new(AuditEventType::RestoreChannel);
        ev.channel = Some(*id);
        self.event(ev);
        self.persist(vec![StorageOp::ChannelStatus { id: *id, status: ChannelStatus::Active }])
    }

    // ---- delivery failures ----------------------------------------------------------

    pub(crate) fn delivery_failed(&self, rec: &AgentRecord, msg: MessageId, failure: DeliveryFailure) {
        match failure {
            DeliveryFailure::Panicked => self.shared.metrics.handler_panics.inc(),
            DeliveryFailure::TimedOut => {
                self.shared.metrics.handler_timeouts.inc();
                let _ = self.quarantine_agent(&rec.id, "Agent callable timeout");
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
                let peer = ch.peer_of(&rec.id)?.id;
                let status = ch.inner.lock().status;
                Some(ChannelInfo { channel_id: ch.id, peer, status, depth: usize::from(ch.depth) })
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
            AgentState::Quarantined => return Err(Error::AgentQuarantined),
            AgentState::Terminated => return Err(Error::AgentNotBound),
            s @ AgentState::Bound => return Err(Error::AgentState(s)),
        }
        let max_rate = self.config.max_message_rate;
        let limited = if max_rate == 0 { None } else { sender.rate.lock().check(now, max_rate) };
        if let Some(retry_after) = limited {
            self.shared.metrics.rate_limited.inc();
            match self.config.rate_limit_action {
                RateLimitAction::Quarantine => {
                    let _ = self.quarantine_agent(&sender.id, "Rate limit exceeded");
                    return Err(Error::AgentQuarantined);
                }
                RateLimitAction::Reject => return Err(Error::RateLimited { retry_after }),
                RateLimitAction::Wait => return Ok(Err(retry_after)),
            }
        }
        let channel = self.channel(channel_id)?;
        let recipient = Arc::clone(channel.peer_of(&sender.id).ok_or(Error::NotOnChannel)?);
        let max = self.config.max_payload_size;
        if max > 0 && payload_len > max {
            return Err(Error::PayloadTooLarge { len: payload_len, max });
        }
        Ok(Ok((channel, recipient)))
    }

    /// ACCEPT (locked part) → FRAME → ENCODE → VALIDATE → DECODE → DELIVER → commit.
    /// The mailbox slot is already reserved, so delivery cannot fail after encoding and no
    /// (key, nonce) pair is ever used for two different messages.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn execute(
        &self,
        sender: &Arc<AgentRecord>,
        channel: &ChannelRecord,
        recipient: &AgentRecord,
        payload: &[u8],
        opts: &SendOptions,
        permit: mpsc::Permit<'_, Delivery>,
        done: Option<oneshot::Sender<Outcome>>,
        started: Instant,
    ) -> Result<Receipt> {
        let ctx = SendContext { sender: sender.id, recipient: recipient.id, channel: channel.id, payload };
        if let Some(h) = &self.hooks
            && let Err(reason) = h.before_send(&ctx)
        {
            self.rejected(sender.id, channel.id, "rejected by hook");
            return Err(Error::HookRejected(reason));
        }
        let depth = usize::from(channel.depth);
        let idem = opts
            .idempotency_key
            .as_ref()
            .map(|k| (sha256(&[sender.id.as_bytes(), &(k.len() as u64).to_be_bytes(), k]), sha256(&[payload])));

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
        match ch.status {
            ChannelStatus::Active => {}
            ChannelStatus::Quarantined => return Err(Error::ChannelQuarantined),
            ChannelStatus::Closed => return Err(Error::ChannelClosed),
        }
        if recipient.state() == AgentState::Quarantined {
            return Err(Error::ChannelQuarantined);
        }
        if let (Some((key, digest)), Some(d)) = (&idem, ch.dedup.as_mut()) {
            match d.lookup(key, digest, started, self.config.dedup_ttl) {
                DedupHit::Miss => {}
                DedupHit::Same(r) => {
                    self.shared.metrics.duplicates_suppressed.inc();
                    return Ok(r);
                }
                DedupHit::Conflict => return Err(Error::IdempotencyConflict),
            }
        }
        self.draw(draw)?;
        let (ids, jitter) = draw.split_at(32);
        let mut corr = [0u8; 8];
        corr.copy_from_slice(ids.get(..8).unwrap_or(&[0; 8]));
        let message_id = MessageId::from_slice(ids.get(16..32).unwrap_or_default())?;
        let correlation_id = CorrelationId(corr);
        let sg = self.current_sg().ok_or(Error::UnknownChannel)?;
        let step = ch.step;

        // FRAME
        let frame: Frame = sampling::sample_frame(&ch.state, step, &sg, depth, &mut SliceEntropy(jitter))?;
        // ENCODE. The protocol message is frame_open ‖ E(P) ‖ frame_close; inside the
        // runtime it is never serialised, so its three parts stay in their own buffers and
        // E(P) is built where the payload's only copy is (no concatenation, and no shift of
        // the plaintext back to the front after decoding).
        let mut m = Vec::with_capacity(payload.len() + TAG_SIZE);
        m.extend_from_slice(payload);
        let tag = encoding::encode_in_place(&ch.state, &channel.id, step, &mut m)?;
        m.extend_from_slice(&tag);
        let frame_close = frame.mirror();
        // VALIDATE
        if Frame::validate(&frame, &frame_close, &frame).is_err() {
            self.shared.metrics.validation_failures.inc();
            ch.validation_failures += 1;
            if ch.validation_failures >= self.config.validation_failure_threshold {
                ch.status = ChannelStatus::Quarantined;
                drop(ch);
                self.quarantine_causes.lock().insert(channel.id, QuarantineCause::Channel);
                self.channel_quarantined_event(&channel.id, "Validation failure threshold");
                // Best effort: the quarantine holds in memory regardless (pymfp never
                // persists it).
                let _ =
                    self.persist(vec![StorageOp::ChannelStatus { id: channel.id, status: ChannelStatus::Quarantined }]);
            }
            self.rejected(sender.id, channel.id, "frame validation failed");
            return Err(Error::FrameValidation);
        }
        // DECODE (in place)
        let plain_len = match encoding::decode_in_place(&ch.state, &channel.id, step, &mut m) {
            Ok(p) => p.len(),
            Err(_) => {
                self.shared.metrics.decode_failures.inc();
                self.rejected(sender.id, channel.id, "payload decode failed");
                return Err(Error::Decode);
            }
        };
        m.truncate(plain_len);
        let next = ratchet::advance(&ch.state, &frame);
        let next_step = step.checked_add(1).ok_or(Error::Core(mfp_core::Error::Crypto("channel step exhausted")))?;

        // PERSIST: with storage, the advance and the new Sg commit in one transaction
        // before anything is delivered or acknowledged; if that fails, nothing moves.
        if self.persisting() {
            let sg_after = {
                let mut sg = self.sg.lock();
                let inner = &mut *ch;
                sg.tree.update_hinted(&channel.id, &next, &mut inner.leaf_hint).map_err(|e| Error::Core(e.into()))?;
                sg.tree.root()
            };
            let ops = vec![
                StorageOp::AdvanceChannel { id: channel.id, state: next.clone(), step: next_step },
                StorageOp::Sg(sg_after),
            ];
            if let Err(e) = self.persist(ops) {
                {
                    let mut sg = self.sg.lock();
                    let inner = &mut *ch;
                    let _ = sg.tree.update_hinted(&channel.id, &inner.state, &mut inner.leaf_hint);
                }
                self.rejected(sender.id, channel.id, "storage write failed");
                return Err(e);
            }
        }

        // DELIVER (cannot fail: the slot is reserved)
        self.shared.in_flight.0.fetch_add(1, Ordering::AcqRel);
        permit.send(Delivery {
            msg: crate::types::DeliveredMessage {
                payload: m,
                sender: sender.id,
                channel: channel.id,
                message_id,
                correlation_id,
                step,
            },
            done,
        });

        // Commit: state, step, Sg — all before the channel lock is released.
        ch.state = next;
        ch.step = next_step;
        ch.validation_failures = 0;
        let receipt = Receipt { message_id, channel: channel.id, step, correlation_id };
        if let Some((key, digest)) = idem {
            ch.dedup.get_or_insert_with(|| Box::new(Dedup::default())).record(
                key,
                digest,
                receipt,
                started,
                self.config.dedup_window,
            );
        }
        if !self.persisting() {
            let mut sg = self.sg.lock();
            let inner = &mut *ch;
            sg.tree
                .update_hinted(&channel.id, &inner.state, &mut inner.leaf_hint)
                .map_err(|e| Error::Core(e.into()))?;
        }
        drop(ch);

        if self.config.max_message_rate > 0 {
            // The window counts sends from when they went out, not from when the caller
            // started (which may be up to `pipeline_timeout` earlier after a wait).
            sender.rate.lock().record(Instant::now(), self.config.max_message_rate);
        }
        sender.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.messages_sent.inc();
        self.shared.metrics.message_size.observe_size(payload.len());
        self.shared.metrics.send_latency.observe_duration(started.elapsed());
        if let Some(h) = &self.hooks {
            h.after_send(&ctx, &receipt);
        }
        if self.audit.is_some() || tracing::enabled!(target: "mfp::audit", tracing::Level::INFO) {
            let mut ev = AuditEvent::new(AuditEventType::MessageSent);
            ev.channel = Some(channel.id);
            ev.agent = Some(sender.id);
            ev.step = Some(step);
            ev.correlation_id = Some(correlation_id);
            self.event(ev);
        }
        Ok(receipt)
    }

    /// Reserves a mailbox slot without waiting.
    pub(crate) fn try_reserve<'a>(&self, recipient: &'a AgentRecord) -> Result<Option<mpsc::Permit<'a, Delivery>>> {
        match recipient.tx.try_reserve() {
            Ok(p) => Ok(Some(p)),
            Err(mpsc::error::TrySendError::Full(())) => match self.config.backpressure {
                Backpressure::Reject => {
                    self.shared.metrics.mailbox_full.inc();
                    Err(Error::MailboxFull)
                }
                Backpressure::Wait => Ok(None),
            },
            Err(mpsc::error::TrySendError::Closed(())) => Err(Error::ChannelClosed),
        }
    }

    pub(crate) fn exec(&self) -> &tokio::runtime::Handle {
        &self.exec
    }
}

/// Builds a [`Runtime`] with optional collaborators.
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    entropy: Option<Box<dyn EntropySource + Send>>,
    hooks: Option<Arc<dyn Hooks>>,
    audit: Option<Arc<dyn AuditSink>>,
    handle: Option<tokio::runtime::Handle>,
    worker_threads: usize,
    storage: Option<Arc<dyn Storage>>,
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
                    .map_err(|_| Error::ShutDown)?;
                (rt.handle().clone(), Some(rt))
            }
        };
        let inner = Arc::new(Inner {
            config: self.config,
            identity,
            epoch: Instant::now(),
            entropy: Mutex::new(entropy),
            admin: Mutex::new(AdminState { agent_counter: 0, names: HashMap::new() }),
            agents: RwLock::new(HashMap::default()),
            channels: RwLock::new(HashMap::default()),
            quarantine_causes: Mutex::new(HashMap::default()),
            sg: Mutex::new(SgState { tree: MerkleSg::new() }),
            shared: Arc::new(Shared::default()),
            hooks: self.hooks,
            audit: self.audit,
            storage: self.storage,
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

/// A runtime: hosts agents, mediates every message between them.
///
/// Dropping it shuts it down: gracefully (like [`Runtime::shutdown`]) when dropped outside
/// async code; inside async code, where blocking is not allowed, queued messages are
/// dropped — call [`Runtime::shutdown_async`] first to deliver them.
pub struct Runtime {
    inner: Arc<Inner>,
    owned: Option<tokio::runtime::Runtime>,
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
        self.inner.bind(None, Handler::from_sync(handler))
    }

    /// Binds a named agent with a synchronous handler (names are unique per runtime).
    pub fn bind_named<F>(&self, name: &str, handler: F) -> Result<AgentHandle>
    where
        F: Fn(&AgentHandle, crate::types::DeliveredMessage) + Send + Sync + 'static,
    {
        self.inner.bind(Some(name.to_string()), Handler::from_sync(handler))
    }

    /// Binds an agent with an [`crate::AsyncHandler`].
    pub fn bind_async<H: crate::agent::AsyncHandler>(&self, handler: H) -> Result<AgentHandle> {
        self.inner.bind(None, Handler::from_async(handler))
    }

    /// Binds a named agent with an [`crate::AsyncHandler`].
    pub fn bind_async_named<H: crate::agent::AsyncHandler>(&self, name: &str, handler: H) -> Result<AgentHandle> {
        self.inner.bind(Some(name.to_string()), Handler::from_async(handler))
    }

    /// Binds an agent with an async closure `|agent, message| async move { … }`.
    pub fn bind_async_fn<F, Fut>(&self, handler: F) -> Result<AgentHandle>
    where
        F: Fn(AgentHandle, crate::types::DeliveredMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.bind(None, Handler::from_async_fn(handler))
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
        self.inner.unbind(id)
    }

    /// Terminates an agent at once, in any state: closes its channels and drops whatever is
    /// queued for it.
    pub fn terminate_agent(&self, id: &AgentId) -> Result<()> {
        self.inner.terminate(id)
    }

    /// Establishes a channel with the configured default depth.
    pub fn establish_channel(&self, a: &AgentId, b: &AgentId) -> Result<ChannelId> {
        self.inner.establish(a, b, self.inner.config.default_frame_depth)
    }

    /// Establishes a channel with frame depth `depth`.
    pub fn establish_channel_with_depth(&self, a: &AgentId, b: &AgentId, depth: usize) -> Result<ChannelId> {
        self.inner.establish(a, b, depth)
    }

    /// Closes a channel, wiping its state. Messages already queued are still delivered.
    pub fn close_channel(&self, id: &ChannelId) -> Result<()> {
        self.inner.close_channel(id)
    }

    /// Quarantines an agent and its active channels.
    pub fn quarantine_agent(&self, id: &AgentId, reason: &str) -> Result<()> {
        self.inner.quarantine_agent(id, reason)
    }

    /// Quarantines one channel.
    pub fn quarantine_channel(&self, id: &ChannelId, reason: &str) -> Result<()> {
        self.inner.quarantine_channel(id, reason)
    }

    /// Restores a quarantined agent and the channels quarantined because of it; the agent
    /// becomes `Active`, or `Bound` if it has no channel.
    pub fn restore_agent(&self, id: &AgentId) -> Result<()> {
        self.inner.restore_agent(id)
    }

    /// Restores a quarantined channel (both agents must not be quarantined).
    pub fn restore_channel(&self, id: &ChannelId) -> Result<()> {
        self.inner.restore_channel(id)
    }

    /// The agent's lifecycle state.
    pub fn agent_state(&self, id: &AgentId) -> Result<AgentState> {
        Ok(self.inner.agent(id)?.state())
    }

    /// The agent's quarantine reason (empty if not quarantined).
    pub fn quarantine_reason(&self, id: &AgentId) -> Result<String> {
        Ok(self.inner.agent(id)?.admin.lock().quarantine_reason.clone())
    }

    /// Information about one channel, from the point of view of agent `a` of the pair.
    pub fn channel_info(&self, id: &ChannelId) -> Result<ChannelInfo> {
        let ch = self.inner.channel(id)?;
        let status = ch.inner.lock().status;
        Ok(ChannelInfo { channel_id: ch.id, peer: ch.b.id, status, depth: usize::from(ch.depth) })
    }

    /// The two agents of a channel, in canonical order.
    pub fn channel_agents(&self, id: &ChannelId) -> Result<(AgentId, AgentId)> {
        let ch = self.inner.channel(id)?;
        Ok((ch.a.id, ch.b.id))
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

    /// Blocks until every queued message has been handled, or `timeout` passes.
    /// Returns whether the runtime is idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Async form of [`Runtime::wait_idle`].
    pub async fn wait_idle_async(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
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

    fn begin_shutdown(&self) -> Vec<tokio::task::JoinHandle<()>> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        let agents: Vec<Arc<AgentRecord>> = self.inner.agents.read().values().cloned().collect();
        for a in &agents {
            a.control.send_replace(DRAIN);
        }
        std::mem::take(&mut *self.inner.workers.lock())
    }

    fn finish_shutdown(&self) {
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
        tracing::info!(target: "mfp::runtime", runtime = %self.inner.identity.short(), "runtime shut down");
    }

    /// Shuts down: stops accepting sends, lets every agent's worker deliver what is queued
    /// (bounded by `pipeline_timeout`), then wipes every channel's state from memory. With
    /// storage, the stored state is kept: the next start restores it.
    pub fn shutdown(&self) {
        let workers = self.begin_shutdown();
        if !workers.is_empty() {
            let deadline = self.inner.config.pipeline_timeout;
            let _g = self.inner.exec.enter();
            crate::block::block_on(async move {
                let _ = tokio::time::timeout(deadline, async {
                    for w in workers {
                        let _ = w.await;
                    }
                })
                .await;
            });
        }
        self.finish_shutdown();
    }

    /// Async form of [`Runtime::shutdown`].
    pub async fn shutdown_async(&self) {
        let workers = self.begin_shutdown();
        let deadline = self.inner.config.pipeline_timeout;
        let _ = tokio::time::timeout(deadline, async {
            for w in workers {
                let _ = w.await;
            }
        })
        .await;
        self.finish_shutdown();
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
                for w in &workers {
                    w.abort();
                }
                self.finish_shutdown();
            }
        }
        if let Some(rt) = self.owned.take() {
            rt.shutdown_background();
        }
    }
}

/// Weak reference type used by handles.
pub(crate) type WeakInner = Weak<Inner>;
