//! Administrative operations: bind, attach, establish, close, quarantine, restore,
//! unbind, terminate.
//!
//! Every operation is an `async fn` here; the blocking API drives the same future on the
//! calling thread (see [`Inner::blocking`]). Operations are serialised by the async
//! `admin_op` lock, which is held across the commit wait; the short-lived locks (`admin`,
//! the maps, a channel's, `sg`) are never held across an `.await`.
//!
//! Each operation checks, writes its change to storage, waits for the commit
//! (`Ticket::wait_async`), and only then changes memory — so a failed commit leaves the
//! runtime as it was. The one exception is the global state `Sg`: its tree takes the change
//! before the batch is submitted (the batch must carry the new root), and is rolled back
//! when the commit fails.
//!
//! Quarantines the runtime imposes by itself (rate limit, handler timeout) are the other
//! way round: they take effect in memory at once — isolating a misbehaving agent must not
//! wait for a disk — and their rows are written afterwards by a task that takes its turn
//! like any operation and writes the state current at that moment.

use std::sync::Arc;

use mfp_core::{AgentId, ChannelId, MIN_FRAME_DEPTH, State, ratchet};
use tokio::sync::mpsc;

use crate::agent::{self, AgentRecord, DRAIN, Delivery, Handler, STOP, WorkerCtx};
use crate::audit::{AuditEvent, AuditEventType};
use crate::block::Place;
use crate::channel::{ChannelInner, ChannelRecord, Far, PeerRef};
use crate::error::{Error, Result};
use crate::handle::AgentHandle;
use crate::remote::{Chains, RemoteEnd, RemoteLink};
use crate::runtime::{Inner, QuarantineCause};
use crate::storage::{AgentRow, ChannelRow, RemoteChannelRow, StorageOp, Ticket};
use crate::types::{AgentState, ChannelStatus};

/// Whether an operation may wait for its turn behind another administrative operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Yes (async callers, and blocking callers whose wait cannot stall the runtime).
    Yes,
    /// No: a blocking call on the thread that drives the runtime's current-thread tokio
    /// runtime, where the operation holding the turn could never finish. The operation
    /// fails at once with [`Error::WouldBlock`], naming itself.
    No(&'static str),
}

/// The turn of one administrative operation.
pub(crate) type Turn<'a> = tokio::sync::MutexGuard<'a, ()>;

impl Inner {
    /// Runs an administrative operation for a blocking caller: on the calling thread, or
    /// through `block_in_place` on a multi-threaded tokio worker. On the thread that
    /// drives the runtime's own current-thread tokio runtime, the operation may not wait
    /// for its turn (see [`Wait::No`]); a commit wait is still fine there, since storage
    /// completes tickets from its own thread.
    pub(crate) fn blocking<T, F>(&self, operation: &'static str, op: impl FnOnce(Wait) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let place = crate::block::place(&self.exec);
        let wait = if place == Place::Driver { Wait::No(operation) } else { Wait::Yes };
        let run = || {
            let _g = self.exec.enter();
            crate::block::block_on(op(wait))
        };
        if place == Place::MultiThread { tokio::task::block_in_place(run) } else { run() }
    }

    /// Takes the administrative turn.
    pub(crate) async fn turn(&self, wait: Wait) -> Result<Turn<'_>> {
        match wait {
            Wait::Yes => Ok(self.admin_op.lock().await),
            Wait::No(operation) => self.admin_op.try_lock().map_err(|_| Error::WouldBlock { operation }),
        }
    }

    /// Waits for a submitted batch without blocking the thread. A failure is an error
    /// unless the operator chose to run degraded (`storage_fail_open`).
    pub(crate) async fn settle_async(&self, ticket: Option<Ticket>) -> Result<()> {
        let Some(ticket) = ticket else { return Ok(()) };
        match ticket.wait_async().await {
            Ok(()) => Ok(()),
            Err(e) => self.storage_failed(e),
        }
    }

    // ---- agents ---------------------------------------------------------------------

    pub(crate) async fn bind(
        self: &Arc<Self>,
        name: Option<String>,
        handler: Handler,
        wait: Wait,
    ) -> Result<AgentHandle> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let _turn = self.turn(wait).await?;
        let (counter, id) = {
            let admin = self.admin.lock();
            if self.agents.read().len() >= self.config.max_agents {
                return Err(Error::ResourceLimit { what: "max_agents", limit: self.config.max_agents });
            }
            if let Some(n) = &name
                && let Some(existing) = admin.names.get(n)
            {
                // A restored agent keeps its name; it wants its handler attached, not a twin.
                if self.detached.lock().contains_key(existing) {
                    return Err(Error::RestoredAgentName(n.clone()));
                }
                return Err(Error::DuplicateAgentName(n.clone()));
            }
            let counter = admin.agent_counter + 1;
            let mut suffix = [0u8; 8];
            self.draw(&mut suffix)?;
            let id = AgentId::derive(&self.identity, counter, &suffix);
            if self.agents.read().contains_key(&id) {
                return Err(Error::IdCollision { what: "agent" });
            }
            (counter, id)
        };
        if self.persisting() {
            let ops = vec![
                StorageOp::Meta(self.meta_row(counter)),
                StorageOp::PutAgent(AgentRow {
                    id,
                    name: name.clone(),
                    state: AgentState::Bound,
                    quarantine_reason: String::new(),
                }),
            ];
            self.settle_async(self.submit(ops)).await?;
        }
        let mut admin = self.admin.lock();
        admin.agent_counter = counter;
        let (record, rx, control_rx) =
            AgentRecord::new(id, name.clone(), self.config.mailbox_capacity, self.config.mailbox_max_bytes);
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

    pub(crate) fn transition(rec: &AgentRecord, to: AgentState) -> Result<()> {
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

    pub(crate) async fn remove_agent(&self, id: &AgentId, forced: bool, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let rec = self.agent(id)?;
        match rec.state() {
            AgentState::Quarantined if !forced => return Err(Error::AgentQuarantined(*id)),
            AgentState::Terminated => return Err(Error::AgentNotBound(*id)),
            _ => {}
        }
        let chans = rec.admin.lock().channels.clone();
        for c in chans {
            self.close_one(&c, wait).await?;
        }
        if self.persisting() {
            self.settle_async(self.submit(vec![StorageOp::DeleteAgent(*id)])).await?;
        }
        let mut admin = self.admin.lock();
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

    /// Starts the delivery worker of an agent.
    pub(crate) fn spawn_worker(
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
            clock: self.virtual_clock.then(|| Arc::clone(&self.clock)),
        };
        let join = self.exec.spawn(agent::run_worker(ctx, rx, control_rx));
        self.workers.lock().push(join);
    }

    /// Starts the worker of a restored agent with `handler` (no storage write, no wait).
    pub(crate) fn attach(self: &Arc<Self>, id: &AgentId, handler: Handler) -> Result<AgentHandle> {
        let record = self.agent(id)?;
        let (rx, control_rx) = self.detached.lock().remove(id).ok_or(Error::AlreadyAttached(*id))?;
        self.spawn_worker(&record, handler, rx, control_rx);
        Ok(AgentHandle::new(Arc::downgrade(self), record))
    }

    // ---- channels -------------------------------------------------------------------

    pub(crate) async fn establish(&self, a: &AgentId, b: &AgentId, depth: usize, wait: Wait) -> Result<ChannelId> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        if !(MIN_FRAME_DEPTH..=self.config.max_frame_depth).contains(&depth) {
            return Err(Error::InvalidDepth { depth, min: MIN_FRAME_DEPTH, max: self.config.max_frame_depth });
        }
        let _turn = self.turn(wait).await?;
        let ra = self.agent(a)?;
        let rb = self.agent(b)?;
        for r in [&ra, &rb] {
            match r.state() {
                AgentState::Quarantined => return Err(Error::AgentQuarantined(r.id)),
                AgentState::Terminated => return Err(Error::AgentNotBound(r.id)),
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
            return Err(Error::IdCollision { what: "channel" });
        }
        let sl0 = ratchet::channel_seed(&self.identity, a, b, &id);
        let (lo, hi) = if a <= b { (ra, rb) } else { (rb, ra) };
        if !self.persisting() {
            // Without storage, Sg is folded in lazily at the next send.
            self.sg.lock().tree.insert(id, &sl0).map_err(|e| Error::Core(e.into()))?;
        } else {
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
            // The Sg is computed and the batch submitted under one hold of the `sg` lock
            // (see `submit`); the commit is awaited after the lock is released. The new
            // channel is not in the map yet, so no send can reach it meanwhile.
            let ticket = {
                let mut sg = self.sg.lock();
                sg.tree.insert(id, &sl0).map_err(|e| Error::Core(e.into()))?;
                ops.push(StorageOp::Sg(sg.tree.root()));
                self.submit(ops)
            };
            if let Err(e) = self.settle_async(ticket).await {
                let mut sg = self.sg.lock();
                let _ = sg.tree.remove(&id);
                self.resubmit_sg(&mut sg);
                return Err(e);
            }
        }
        let record = Arc::new(ChannelRecord {
            id,
            a: Arc::clone(&lo),
            far: Far::Local(Arc::clone(&hi)),
            depth: u16::try_from(depth).unwrap_or(u16::MAX),
            inner: ChannelInner::new(sl0, 0, ChannelStatus::Active, 0),
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

    pub(crate) async fn close_channel(&self, id: &ChannelId, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        self.close_one(id, wait).await
    }

    /// Closes a channel; the caller holds the turn.
    ///
    /// Without storage the channel leaves Sg and closes under one hold of its lock. With
    /// storage it leaves the Sg tree when the batch is submitted and closes once the batch
    /// committed; a send on it in between fails (its Sg update finds no leaf) before it
    /// changes anything.
    async fn close_one(&self, id: &ChannelId, wait: Wait) -> Result<()> {
        let rec = self.channel(id)?;
        if rec.remote().is_some() {
            return self.close_remote_one(&rec, true, wait).await;
        }
        let mut ops = Vec::new();
        if self.persisting() {
            // Agent rows first, outside the channel's lock (a channel lock and an agent's
            // admin lock are never held together).
            ops.push(StorageOp::CloseChannel(*id));
            for r in rec.locals() {
                let only_this = r.admin.lock().channels.iter().all(|c| c == id);
                if only_this && r.state() == AgentState::Active {
                    ops.push(StorageOp::PutAgent(Self::agent_row(r, AgentState::Bound, "")));
                }
            }
        }
        let ticket = {
            let mut inner = rec.inner.lock();
            // Sg computed and the batch submitted under one hold of the `sg` lock (see
            // `submit`); the commit is awaited outside it.
            let mut sg = self.sg.lock();
            sg.tree.remove(id).map_err(|e| Error::Core(e.into()))?;
            if self.persisting() {
                ops.push(StorageOp::Sg(sg.tree.root()));
                self.submit(ops)
            } else {
                drop(sg);
                self.wipe_channel(id, &mut inner);
                None
            }
        };
        if let Err(e) = self.settle_async(ticket).await {
            let inner = rec.inner.lock();
            let mut sg = self.sg.lock();
            let _ = sg.tree.insert(*id, &inner.state);
            self.resubmit_sg(&mut sg);
            return Err(e);
        }
        if self.persisting() {
            self.wipe_channel(id, &mut rec.inner.lock());
        }
        self.quarantine_causes.lock().remove(id);
        for r in rec.locals() {
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

    /// Closes a cross-runtime channel; the caller holds the turn. `tell_peer`: whether the
    /// transport is told to close it on the peer too (not when the peer closed it). Takes
    /// the channel's outbound turn: a send whose commit is pending is settled first.
    async fn close_remote_one(&self, rec: &Arc<ChannelRecord>, tell_peer: bool, wait: Wait) -> Result<()> {
        let id = rec.id;
        let Some(link) = rec.remote() else { return Err(Error::Inconsistent { channel: id }) };
        let _send = link.outbound_turn(wait).await?;
        if self.persisting() && !link.tx.is_shared() {
            let mut ops = vec![StorageOp::CloseChannel(id)];
            let r = &rec.a;
            let only_this = r.admin.lock().channels.iter().all(|c| *c == id);
            if only_this && r.state() == AgentState::Active {
                ops.push(StorageOp::PutAgent(Self::agent_row(r, AgentState::Bound, "")));
            }
            self.settle_async(self.submit(ops)).await?;
        }
        {
            let mut inner = rec.inner.lock();
            self.wipe_channel(&id, &mut inner);
            link.wipe();
        }
        self.quarantine_causes.lock().remove(&id);
        {
            let r = &rec.a;
            let mut adm = r.admin.lock();
            adm.channels.retain(|c| *c != id);
            let empty = adm.channels.is_empty();
            drop(adm);
            if empty && r.state() == AgentState::Active {
                Self::transition(r, AgentState::Bound)?;
            }
        }
        if tell_peer && let Some(t) = self.transport.get(&link.end.peer) {
            t.channel_closed(&link.end.peer, &id);
        }
        let mut ev = AuditEvent::new(AuditEventType::ChannelClosed);
        ev.channel = Some(id);
        ev.reason = Some(if tell_peer { "closed" } else { "closed by the peer runtime" }.to_string());
        self.event(ev);
        Ok(())
    }

    /// The peer runtime closed a cross-runtime channel.
    pub(crate) async fn close_remote_by_peer(&self, id: &ChannelId, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let rec = self.channel(id)?;
        if rec.remote().is_none() {
            return Err(Error::WrongPeer { channel: *id, from: "a peer runtime".into() });
        }
        self.close_remote_one(&rec, false, wait).await
    }

    /// Opens a cross-runtime channel both runtimes agreed on.
    pub(crate) async fn establish_remote(
        &self,
        local: AgentId,
        remote: RemoteEnd,
        id: ChannelId,
        depth: usize,
        chains: Chains,
        wait: Wait,
    ) -> Result<()> {
        self.establish_remote_marked(local, remote, id, depth, chains, false, wait).await
    }

    /// [`Inner::establish_remote`], the channel stored `unconfirmed` (accepted here, its
    /// opener's confirmation awaited) in the same transaction when so asked.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn establish_remote_marked(
        &self,
        local: AgentId,
        remote: RemoteEnd,
        id: ChannelId,
        depth: usize,
        chains: Chains,
        unconfirmed: bool,
        wait: Wait,
    ) -> Result<()> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        let max = self.config.max_frame_depth;
        if !(MIN_FRAME_DEPTH..=max).contains(&depth) {
            return Err(Error::InvalidDepth { depth, min: MIN_FRAME_DEPTH, max });
        }
        if remote.peer == self.identity {
            return Err(Error::Config(crate::error::ConfigError {
                field: "peer",
                reason: "a cross-runtime channel needs a peer runtime other than this one".to_string(),
            }));
        }
        let _turn = self.turn(wait).await?;
        let rec = self.agent(&local)?;
        match rec.state() {
            AgentState::Quarantined => return Err(Error::AgentQuarantined(rec.id)),
            AgentState::Terminated => return Err(Error::AgentNotBound(rec.id)),
            AgentState::Bound | AgentState::Active => {}
        }
        if rec.admin.lock().channels.len() >= self.config.max_channels_per_agent {
            return Err(Error::ResourceLimit {
                what: "max_channels_per_agent",
                limit: self.config.max_channels_per_agent,
            });
        }
        {
            let channels = self.channels.read();
            if channels.contains_key(&id) || self.closed.lock().contains(&id) {
                return Err(Error::ChannelExists(id));
            }
            let with_peer = channels.values().filter(|c| c.remote().is_some_and(|l| l.end.peer == remote.peer)).count();
            if with_peer >= self.config.max_bilateral_channels {
                return Err(Error::ResourceLimit {
                    what: "max_bilateral_channels",
                    limit: self.config.max_bilateral_channels,
                });
            }
        }
        if self.persisting()
            && let Chains::Split { tx, rx } = &chains
        {
            let mut ops = vec![StorageOp::PutRemoteChannel(RemoteChannelRow {
                id,
                local_agent: local,
                peer: remote.peer,
                remote_agent: remote.agent,
                depth,
                status: ChannelStatus::Active,
                tx: tx.clone(),
                rx: rx.clone(),
                validation_failures: 0,
                rx_rotation: None,
                reset: None,
                unconfirmed,
            })];
            if rec.state() == AgentState::Bound {
                ops.push(StorageOp::PutAgent(Self::agent_row(&rec, AgentState::Active, "")));
            }
            self.settle_async(self.submit(ops)).await?;
        }
        let acked = match &chains {
            Chains::Split { tx, .. } => tx.step,
            Chains::Shared(s) => s.step(),
        };
        let link = RemoteLink::new(remote, chains, acked);
        link.unconfirmed.store(unconfirmed, std::sync::atomic::Ordering::Release);
        let record = Arc::new(ChannelRecord {
            id,
            a: Arc::clone(&rec),
            far: Far::Remote(Box::new(link)),
            depth: u16::try_from(depth).unwrap_or(u16::MAX),
            inner: ChannelInner::new(State::zero(), 0, ChannelStatus::Active, 0),
        });
        self.channels.write().insert(id, record);
        rec.admin.lock().channels.push(id);
        if rec.state() == AgentState::Bound {
            Self::transition(&rec, AgentState::Active)?;
        }
        let mut ev = AuditEvent::new(AuditEventType::ChannelEstablished);
        ev.channel = Some(id);
        ev.agent = Some(local);
        ev.peer = Some(remote.agent);
        ev.reason = Some(format!("cross-runtime, peer runtime {}", remote.peer.short()));
        self.event(ev);
        Ok(())
    }

    /// Removes a closed channel from the map and wipes its state (caller holds its lock).
    fn wipe_channel(&self, id: &ChannelId, inner: &mut ChannelInner) {
        self.closed.lock().insert(*id);
        self.channels.write().remove(id);
        inner.status = ChannelStatus::Closed;
        inner.state = State::zero();
        inner.dedup = None;
    }

    // ---- quarantine -----------------------------------------------------------------

    /// An operator's quarantine: written to storage first, in force once committed.
    pub(crate) async fn quarantine_agent(&self, id: &AgentId, reason: &str, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let rec = self.agent(id)?;
        match rec.state() {
            AgentState::Terminated => return Err(Error::AgentNotBound(*id)),
            AgentState::Quarantined => return Ok(()),
            _ => {}
        }
        if self.persisting() {
            let mut ops = vec![StorageOp::PutAgent(Self::agent_row(&rec, AgentState::Quarantined, reason))];
            let chans = rec.admin.lock().channels.clone();
            for c in chans {
                if let Ok(ch) = self.channel(&c)
                    && ch.inner.lock().status == ChannelStatus::Active
                {
                    ops.push(StorageOp::ChannelStatus { id: c, status: ChannelStatus::Quarantined });
                }
            }
            self.settle_async(self.submit(ops)).await?;
        }
        self.apply_quarantine(&rec, reason)
    }

    /// A quarantine the runtime imposes (rate limit, handler timeout): in force at once;
    /// its rows are written by a task that takes its turn (no caller waits for a disk).
    pub(crate) fn quarantine_now(&self, id: &AgentId, reason: &str) {
        let Ok(rec) = self.agent(id) else { return };
        {
            // Serialises with the apply step of operator operations.
            let _admin = self.admin.lock();
            if matches!(rec.state(), AgentState::Terminated | AgentState::Quarantined) {
                return;
            }
            if self.apply_quarantine(&rec, reason).is_err() {
                return;
            }
        }
        if let Some(me) = self.me.upgrade()
            && self.persisting()
        {
            let id = *id;
            self.exec.spawn(async move {
                let _turn = me.admin_op.lock().await;
                // Gone meanwhile: its removal was written instead.
                let Ok(rec) = me.agent(&id) else { return };
                let reason = rec.admin.lock().quarantine_reason.clone();
                let mut ops = vec![StorageOp::PutAgent(Self::agent_row(&rec, rec.state(), &reason))];
                ops.extend(me.channel_status_ops(&rec));
                if me.settle_async(me.submit(ops)).await.is_err() {
                    tracing::error!(
                        target: "mfp::runtime",
                        agent = %id.short(),
                        "the quarantine of this agent could not be written to storage; it holds until \
                         the process ends (quarantine it again once storage works)"
                    );
                }
            });
        }
    }

    /// Puts an agent and its active channels in quarantine, in memory.
    fn apply_quarantine(&self, rec: &AgentRecord, reason: &str) -> Result<()> {
        rec.admin.lock().quarantine_reason = reason.to_string();
        Self::transition(rec, AgentState::Quarantined)?;
        let chans = rec.admin.lock().channels.clone();
        for c in chans {
            if let Ok(ch) = self.channel(&c) {
                let mut inner = ch.inner.lock();
                if inner.status == ChannelStatus::Active {
                    inner.status = ChannelStatus::Quarantined;
                    drop(inner);
                    self.quarantine_causes.lock().insert(c, QuarantineCause::Agent(rec.id));
                }
            }
        }
        self.shared.metrics.agent_quarantines.inc();
        tracing::warn!(target: "mfp::runtime", agent = %rec.id.short(), reason, "agent quarantined");
        let mut ev = AuditEvent::new(AuditEventType::QuarantineAgent);
        ev.agent = Some(rec.id);
        ev.reason = Some(reason.to_string());
        self.event(ev);
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

    pub(crate) async fn quarantine_channel(&self, id: &ChannelId, reason: &str, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let ch = self.channel(id)?;
        let status = ch.inner.lock().status;
        if status != ChannelStatus::Active {
            return Err(Error::ChannelState { channel: *id, status });
        }
        if self.persisting() {
            let ops = vec![StorageOp::ChannelStatus { id: *id, status: ChannelStatus::Quarantined }];
            self.settle_async(self.submit(ops)).await?;
        }
        ch.inner.lock().status = ChannelStatus::Quarantined;
        self.quarantine_causes.lock().insert(*id, QuarantineCause::Channel);
        self.channel_quarantined_event(id, reason);
        Ok(())
    }

    /// Audit event for a send refused after ACCEPT.
    pub(crate) fn rejected(&self, sender: AgentId, channel: ChannelId, reason: &str) {
        let mut ev = AuditEvent::new(AuditEventType::MessageRejected);
        ev.success = false;
        ev.agent = Some(sender);
        ev.channel = Some(channel);
        ev.reason = Some(reason.to_string());
        self.event(ev);
    }

    /// Counts one more validation failure on channel `id`, whose lock the caller holds
    /// (`ch`); at `validation_failure_threshold` the channel is quarantined. Returns the
    /// storage writes that record it, and whether it was quarantined now: then, once the
    /// lock is released, call [`Inner::failures_quarantined`].
    pub(crate) fn count_validation_failure(
        &self,
        id: ChannelId,
        ch: &mut crate::channel::ChannelInner,
    ) -> (Vec<StorageOp>, bool) {
        ch.validation_failures = ch.validation_failures.saturating_add(1);
        let mut ops = vec![StorageOp::ChannelFailures { id, count: ch.validation_failures }];
        let quarantine = ch.validation_failures >= self.config.validation_failure_threshold;
        if quarantine {
            ch.status = ChannelStatus::Quarantined;
            ops.push(StorageOp::ChannelStatus { id, status: ChannelStatus::Quarantined });
        }
        (ops, quarantine)
    }

    /// Records a quarantine by [`Inner::count_validation_failure`] (its cause, the event).
    pub(crate) fn failures_quarantined(&self, id: &ChannelId, reason: &str) {
        self.quarantine_causes.lock().insert(*id, QuarantineCause::Channel);
        self.channel_quarantined_event(id, reason);
    }

    pub(crate) fn channel_quarantined_event(&self, id: &ChannelId, reason: &str) {
        self.shared.metrics.channel_quarantines.inc();
        tracing::warn!(target: "mfp::runtime", channel = %id.short(), reason, "channel quarantined");
        let mut ev = AuditEvent::new(AuditEventType::QuarantineChannel);
        ev.channel = Some(*id);
        ev.reason = Some(reason.to_string());
        self.event(ev);
    }

    pub(crate) async fn restore_agent(&self, id: &AgentId, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let rec = self.agent(id)?;
        if rec.state() != AgentState::Quarantined {
            return Err(Error::AgentState { agent: *id, state: rec.state() });
        }
        // The plan: for each channel quarantined because of this agent, either it becomes
        // active, or (its other agent is quarantined too) the cause moves to that agent.
        let chans = rec.admin.lock().channels.clone();
        let mut reactivate = Vec::new();
        let mut hand_over = Vec::new();
        // The records first: `quarantine_causes` is a leaf lock (nothing is taken under it).
        let records: Vec<_> = chans.iter().filter_map(|c| self.channel(c).ok().map(|ch| (*c, ch))).collect();
        {
            let causes = self.quarantine_causes.lock();
            for (c, ch) in records {
                let c = &c;
                if causes.get(c) != Some(&QuarantineCause::Agent(*id)) {
                    continue;
                }
                match ch.peer_of(id).as_ref().and_then(PeerRef::local).map(|p| (p.id, p.state())) {
                    Some((pid, AgentState::Quarantined)) if pid != *id => hand_over.push((*c, pid)),
                    _ => reactivate.push(ch),
                }
            }
        }
        let to = if chans.is_empty() { AgentState::Bound } else { AgentState::Active };
        if self.persisting() {
            let mut ops = vec![StorageOp::PutAgent(Self::agent_row(&rec, to, ""))];
            ops.extend(
                reactivate.iter().map(|ch| StorageOp::ChannelStatus { id: ch.id, status: ChannelStatus::Active }),
            );
            self.settle_async(self.submit(ops)).await?;
        }
        {
            let mut causes = self.quarantine_causes.lock();
            for (c, pid) in hand_over {
                causes.insert(c, QuarantineCause::Agent(pid));
            }
            for ch in &reactivate {
                causes.remove(&ch.id);
            }
        }
        for ch in &reactivate {
            let mut inner = ch.inner.lock();
            inner.status = ChannelStatus::Active;
            inner.validation_failures = 0;
        }
        for ch in &reactivate {
            self.remote_restored(ch);
        }
        rec.admin.lock().quarantine_reason.clear();
        Self::transition(&rec, to)?;
        let mut ev = AuditEvent::new(AuditEventType::RestoreAgent);
        ev.agent = Some(*id);
        self.event(ev);
        Ok(())
    }

    pub(crate) async fn restore_channel(&self, id: &ChannelId, wait: Wait) -> Result<()> {
        let _turn = self.turn(wait).await?;
        let ch = self.channel(id)?;
        for r in ch.locals() {
            if r.state() == AgentState::Quarantined {
                return Err(Error::AgentQuarantined(r.id));
            }
        }
        let status = ch.inner.lock().status;
        if status != ChannelStatus::Quarantined {
            return Err(Error::ChannelState { channel: *id, status });
        }
        if self.persisting() {
            let ops = vec![StorageOp::ChannelStatus { id: *id, status: ChannelStatus::Active }];
            self.settle_async(self.submit(ops)).await?;
        }
        {
            let mut inner = ch.inner.lock();
            inner.status = ChannelStatus::Active;
            inner.validation_failures = 0;
        }
        self.quarantine_causes.lock().remove(id);
        let mut ev = AuditEvent::new(AuditEventType::RestoreChannel);
        ev.channel = Some(*id);
        self.event(ev);
        self.remote_restored(&ch);
        Ok(())
    }

    /// Tells the transport that a cross-runtime channel is active again, so that it
    /// compares positions with the peer (what waits in either log then goes).
    fn remote_restored(&self, ch: &ChannelRecord) {
        if let Some(link) = ch.remote()
            && let Some(t) = self.transport.get(&link.end.peer)
        {
            t.channel_restored(&link.end.peer, &ch.id);
        }
    }
}
