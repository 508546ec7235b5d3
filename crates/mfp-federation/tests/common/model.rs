//! A small model of the runtime side of federation, as `mfp-runtime` and the federation
//! glue do it: per channel the two bilateral chains from `channel_chains`, an outbound log
//! of sealed wire messages keyed by step, the acknowledged and received positions, a
//! durable inbox; delivery of in-order data, acknowledgements, position exchange after a
//! (re)connect and resending from the peer's position.
//!
//! The model keeps what a runtime commits ([`DurableChannel`], its SQLite rows) apart from
//! what it holds in memory ([`ModelChannel`], the writer's queue, the handler's mailbox),
//! and commits in the same units as the runtime (`remote_pipeline/`):
//!
//! - a send: the tx chain's advance and the outbound log row, in one batch; the chain
//!   moves in memory, the message may leave and the sender gets its receipt only once that
//!   batch committed (the channel stays locked meanwhile);
//! - a receive: the rx chain's advance and the inbox row, in one batch; the handler gets
//!   the message and the peer its acknowledgement only once that batch committed (the
//!   peer's event task waits meanwhile);
//! - an acknowledgement received: the log is trimmed in memory at once, its row removal
//!   is submitted without waiting;
//! - a handled message: its inbox row removal goes with the next batch, or alone;
//! - channel agreement: committed before the answer goes out.
//!
//! With `deferred` off, every batch commits as it is submitted (tests that drive sessions
//! by hand); with it on, batches wait for [`Model::commit`], so a [`Model::crash`] can land
//! between sealing and committing, between receiving and acknowledging, between handling
//! and removing. A crash keeps the durable part and loses the rest; [`Model::restart`]
//! rebuilds the runtime from it and hands the inbox's rows to the handler again, flagged as
//! redeliveries, as `mfp-runtime` does.
//!
//! Instruments that outlive crashes (they observe, they are not state): every sealing
//! (`attempts`, `sealed`), every committed receive (`ModelChannel::delivered`), every
//! handling (`handled`), every committed inbox removal.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use mfp_core::bilateral::BilateralState;
use mfp_core::encoding::{self, Algorithm};
use mfp_core::envelope::{EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId, RuntimeId};
use mfp_federation::channel_chains;
use mfp_federation::session::{Event, SendError, Session, Target};

/// Fingerprint of a sealing: SHA-256 of the AES key, and the nonce.
pub type Sealed = ([u8; 32], [u8; 12]);

/// What a runtime has committed of one channel.
#[derive(Debug, Clone)]
pub struct DurableChannel {
    pub depth: u16,
    pub local_agent: AgentId,
    pub remote_agent: AgentId,
    pub secret: [u8; 32],
    pub we_opened: bool,
    pub open: bool,
    pub tx: BilateralState,
    pub rx: BilateralState,
    /// Outbound log rows, by step.
    pub log: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged position as last committed (it may lag the one in memory).
    pub acked: u64,
    /// Received messages whose handler has not finished (as far as the store knows).
    pub inbox: BTreeMap<u64, Vec<u8>>,
}

/// A channel as the running runtime holds it.
#[derive(Debug)]
pub struct ModelChannel {
    pub depth: u16,
    pub local_agent: AgentId,
    pub remote_agent: AgentId,
    pub secret: [u8; 32],
    pub we_opened: bool,
    /// Agreed by both sides (the opener saw the acceptance).
    pub open: bool,
    /// State for the next message sent (its step is `tx_next`).
    pub tx: BilateralState,
    /// State for the next message received (its step is `rx_next`).
    pub rx: BilateralState,
    /// Sealed wire messages not yet acknowledged, by step.
    pub log: BTreeMap<u64, Vec<u8>>,
    /// Every step below is durable at the peer.
    pub acked: u64,
    /// Next step to hand to the session in this session; `None` until the peer's
    /// position arrived.
    pub cursor: Option<u64>,
    /// Instrument: payloads whose receive committed, in order (kept across crashes).
    pub delivered: Vec<Vec<u8>>,
}

impl ModelChannel {
    fn from_durable(d: &DurableChannel, delivered: Vec<Vec<u8>>) -> Self {
        Self {
            depth: d.depth,
            local_agent: d.local_agent,
            remote_agent: d.remote_agent,
            secret: d.secret,
            we_opened: d.we_opened,
            open: d.open,
            tx: d.tx.clone(),
            rx: d.rx.clone(),
            log: d.log.clone(),
            acked: d.acked,
            cursor: None,
            delivered,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ModelStats {
    pub sealed: u64,
    pub sent: u64,
    pub resent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub full: u64,
    pub requests: u64,
    /// Crashes of this runtime.
    pub crashes: u64,
    /// Sealed messages whose commit a crash lost (the application sent them again).
    pub lost_sends: u64,
    /// Received messages whose commit a crash lost (the peer sent them again).
    pub lost_receives: u64,
    /// Handled messages whose removal a crash lost (delivered again, flagged).
    pub lost_removals: u64,
    /// Messages handed to the handler again after a restart.
    pub redelivered: u64,
    /// Sealings of a step sealed before, whose commit was lost.
    pub resealed: u64,
}

/// One batch operation of the runtime's writer.
#[derive(Debug, Clone)]
enum Op {
    /// A send: the tx chain's advance with the outbound log row.
    Send { channel: ChannelId, step: u64, next: BilateralState, wire: Vec<u8>, fingerprint: Sealed },
    /// A receive: the rx chain's advance with the inbox row.
    Receive { channel: ChannelId, step: u64, next: BilateralState, payload: Vec<u8> },
    /// The outbound log trimmed below `next`.
    Ack { channel: ChannelId, next: u64 },
    /// A handled message's inbox row removed.
    Remove { channel: ChannelId, step: u64 },
}

/// A message in the handler's mailbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub channel: ChannelId,
    pub step: u64,
    pub payload: Vec<u8>,
    pub redelivered: bool,
}

#[derive(Debug)]
pub struct Model {
    pub local: RuntimeId,
    pub peer: RuntimeId,
    /// In memory.
    pub channels: HashMap<ChannelId, ModelChannel>,
    /// Committed.
    pub durable: HashMap<ChannelId, DurableChannel>,
    /// Batches wait for [`Model::commit`] (else they commit when submitted).
    pub deferred: bool,
    /// Batches submitted and not committed, in order.
    pending: VecDeque<Vec<Op>>,
    /// Handled messages whose removal is not submitted yet.
    removals: Vec<(ChannelId, u64)>,
    /// The handler's mailbox.
    pub mailbox: VecDeque<Delivery>,
    /// Receipts not taken by the application yet: (channel, step).
    receipts: Vec<(ChannelId, u64)>,
    /// Instrument: committed sealings (those that may leave the runtime).
    pub sealed: Vec<Sealed>,
    /// Instrument: every sealing ever made, with a digest of what it sealed.
    pub attempts: HashMap<Sealed, [u8; 32]>,
    /// Instrument: every handling, in order: (channel, step, flagged as a redelivery).
    pub handled: Vec<(ChannelId, u64, bool)>,
    /// Instrument: inbox removals that committed.
    removed: HashSet<(ChannelId, u64)>,
    pub stats: ModelStats,
    /// Largest unacknowledged log per channel before the application waits.
    pub max_log: usize,
    highest_sent: HashMap<ChannelId, u64>,
}

impl Model {
    pub fn new(local: RuntimeId, peer: RuntimeId, max_log: usize) -> Self {
        Self {
            local,
            peer,
            channels: HashMap::new(),
            durable: HashMap::new(),
            deferred: false,
            pending: VecDeque::new(),
            removals: Vec::new(),
            mailbox: VecDeque::new(),
            receipts: Vec::new(),
            sealed: Vec::new(),
            attempts: HashMap::new(),
            handled: Vec::new(),
            removed: HashSet::new(),
            stats: ModelStats::default(),
            max_log,
            highest_sent: HashMap::new(),
        }
    }

    fn insert_channel(&mut self, id: ChannelId, d: DurableChannel) {
        self.channels.insert(id, ModelChannel::from_durable(&d, Vec::new()));
        self.durable.insert(id, d);
    }

    /// Creates a channel this side opens; the request goes out on every connect until
    /// the peer answers. (The application's intent to open it counts as durable: after a
    /// crash it asks again, with the same id and secret.)
    pub fn open(
        &mut self,
        channel: ChannelId,
        depth: u16,
        local_agent: AgentId,
        remote_agent: AgentId,
        secret: [u8; 32],
    ) {
        let (tx, rx) = channel_chains(&secret, &channel, &self.local, &self.peer);
        let d = DurableChannel {
            depth,
            local_agent,
            remote_agent,
            secret,
            we_opened: true,
            open: false,
            tx,
            rx,
            log: BTreeMap::new(),
            acked: 0,
            inbox: BTreeMap::new(),
        };
        self.insert_channel(channel, d);
    }

    /// Sends the request for a channel this side opened.
    pub fn send_request(&self, session: &mut Session, id: ChannelId) {
        Self::request(session, id, &self.channels[&id]);
    }

    fn request(session: &mut Session, id: ChannelId, c: &ModelChannel) {
        session
            .open_channel(id, c.depth, c.local_agent, Target::Id(c.remote_agent), c.secret)
            .expect("channel request is valid");
    }

    /// A new session: repeat unanswered requests, announce positions of shared channels.
    pub fn on_connect(&mut self, session: &mut Session) {
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        ids.sort();
        for id in ids {
            let c = self.channels.get_mut(&id).expect("listed");
            c.cursor = None;
            if c.open {
                session.announce_position(id, c.rx.step, c.tx.step);
            } else {
                Self::request(session, id, c);
            }
        }
    }

    /// The session ended: nothing is handed to the next one before the peer's position.
    pub fn on_disconnect(&mut self) {
        for c in self.channels.values_mut() {
            c.cursor = None;
        }
    }

    fn send_pending(&self, channel: &ChannelId) -> bool {
        self.pending.iter().flatten().any(|op| matches!(op, Op::Send { channel: c, .. } if c == channel))
    }

    /// Whether a received message's commit is awaited (the peer's event task waits).
    pub fn receive_pending(&self) -> bool {
        self.pending.iter().flatten().any(|op| matches!(op, Op::Receive { .. }))
    }

    /// Whether nothing waits: no batch, no removal, no message for the handler, no inbox
    /// row, no receipt.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
            && self.removals.is_empty()
            && self.mailbox.is_empty()
            && self.receipts.is_empty()
            && self.durable.values().all(|d| d.inbox.is_empty())
    }

    /// Whether the application may seal another message on `channel` now: agreed, room in
    /// the log, and no send of the channel waiting for its commit (the channel's lock).
    pub fn can_seal(&self, channel: &ChannelId) -> bool {
        self.channels.get(channel).is_some_and(|c| c.open && c.log.len() < self.max_log) && !self.send_pending(channel)
    }

    /// Seals `payload` on `channel` and submits the advance with the log row. Returns its
    /// step. The message goes out, and the application gets its receipt, at the commit.
    pub fn seal(&mut self, channel: ChannelId, payload: &[u8]) -> u64 {
        assert!(!self.send_pending(&channel), "the channel is locked until the previous send committed");
        let c = self.channels.get_mut(&channel).expect("channel exists");
        assert!(c.open, "sealing on a channel not agreed");
        let key = encoding::encoding_key(&c.tx.ratchet, Algorithm::Aes256Gcm);
        let nonce = encoding::nonce(&key, &channel, c.tx.step);
        let fingerprint = (mfp_core::crypto::sha256(&[key.expose()]), nonce);
        let out = c.tx.seal_outbound(&self.local, &channel, usize::from(c.depth), payload).expect("seal");
        let step = c.tx.step;
        let digest = mfp_core::crypto::sha256(&[&out.wire]);
        match self.attempts.insert(fingerprint, digest) {
            Some(before) if before != digest => {
                panic!("step {step} of channel {channel:?} sealed again with another message: (key, nonce) reuse")
            }
            Some(_) => self.stats.resealed += 1,
            None => {}
        }
        let op = Op::Send { channel, step, next: out.next, wire: out.wire, fingerprint };
        self.submit(op, None);
        step
    }

    /// Submits `op` with the queued inbox removals, as the runtime's pipeline does.
    fn submit(&mut self, op: Op, session: Option<&mut Session>) {
        let mut batch: Vec<Op> = self.removals.drain(..).map(|(channel, step)| Op::Remove { channel, step }).collect();
        batch.push(op);
        self.pending.push_back(batch);
        if !self.deferred {
            self.commit(session);
        }
    }

    /// Submits the queued inbox removals alone (the runtime does when a mailbox drained).
    pub fn flush_removals(&mut self) {
        if self.removals.is_empty() {
            return;
        }
        let batch = self.removals.drain(..).map(|(channel, step)| Op::Remove { channel, step }).collect();
        self.pending.push_back(batch);
        if !self.deferred {
            self.commit(None);
        }
    }

    /// The writer commits every submitted batch, in order; what waited on them goes on.
    pub fn commit(&mut self, mut session: Option<&mut Session>) {
        while let Some(batch) = self.pending.pop_front() {
            for op in batch {
                self.apply(op, session.as_deref_mut());
            }
        }
    }

    fn apply(&mut self, op: Op, session: Option<&mut Session>) {
        match op {
            Op::Send { channel, step, next, wire, fingerprint } => {
                let d = self.durable.get_mut(&channel).expect("durable channel");
                assert_eq!(d.tx.step, step, "a send committed out of order");
                d.tx = next.clone();
                d.log.insert(step, wire.clone());
                let c = self.channels.get_mut(&channel).expect("channel");
                c.tx = next;
                c.log.insert(step, wire);
                self.sealed.push(fingerprint);
                self.stats.sealed += 1;
                self.receipts.push((channel, step));
            }
            Op::Receive { channel, step, next, payload } => {
                let d = self.durable.get_mut(&channel).expect("durable channel");
                assert_eq!(d.rx.step, step, "a receive committed out of order");
                d.rx = next.clone();
                d.open = true;
                d.inbox.insert(step, payload.clone());
                let c = self.channels.get_mut(&channel).expect("channel");
                c.rx = next;
                c.open = true;
                c.delivered.push(payload.clone());
                self.stats.delivered += 1;
                self.mailbox.push_back(Delivery { channel, step, payload, redelivered: false });
                // The acknowledgement follows the commit.
                if let Some(s) = session {
                    s.ack(channel, step + 1);
                }
            }
            Op::Ack { channel, next } => {
                if let Some(d) = self.durable.get_mut(&channel) {
                    d.acked = d.acked.max(next);
                    let acked = d.acked;
                    d.log.retain(|&s, _| s >= acked);
                }
            }
            Op::Remove { channel, step } => {
                if let Some(d) = self.durable.get_mut(&channel) {
                    d.inbox.remove(&step);
                }
                self.removed.insert((channel, step));
            }
        }
    }

    /// A short account of the state, for failure messages (no payloads).
    pub fn summary(&self) -> String {
        let mut ids: Vec<_> = self.durable.keys().copied().collect();
        ids.sort();
        let chans: Vec<String> = ids
            .iter()
            .map(|id| {
                let d = &self.durable[id];
                let live = self.channels.get(id).map(|c| (c.open, c.tx.step, c.rx.step, c.acked, c.log.len(), c.cursor));
                format!(
                    "{:02x}: memory (open, tx, rx, acked, log, cursor) {live:?}, store (tx, rx, acked, log, inbox) {:?}",
                    id.as_bytes()[0],
                    (d.tx.step, d.rx.step, d.acked, d.log.len(), d.inbox.len())
                )
            })
            .collect();
        format!(
            "[{}] batches waiting {}, removals {}, mailbox {}",
            chans.join("; "),
            self.pending.len(),
            self.removals.len(),
            self.mailbox.len()
        )
    }

    /// Receipts the application has not taken yet.
    pub fn take_receipts(&mut self) -> Vec<(ChannelId, u64)> {
        std::mem::take(&mut self.receipts)
    }

    /// The handler takes the next message of its mailbox; its removal is queued. Checks
    /// the runtime's redelivery rule: a message whose removal committed never comes again.
    pub fn handle_one(&mut self) -> Option<Delivery> {
        let d = self.mailbox.pop_front()?;
        assert!(
            !self.removed.contains(&(d.channel, d.step)),
            "step {} of channel {:?} handled again after its handling was committed",
            d.step,
            d.channel
        );
        self.handled.push((d.channel, d.step, d.redelivered));
        self.removals.push((d.channel, d.step));
        Some(d)
    }

    /// The process dies: everything not committed is lost.
    pub fn crash(&mut self) {
        self.stats.crashes += 1;
        for op in self.pending.iter().flatten() {
            match op {
                Op::Send { .. } => self.stats.lost_sends += 1,
                Op::Receive { .. } => self.stats.lost_receives += 1,
                Op::Remove { .. } => self.stats.lost_removals += 1,
                Op::Ack { .. } => {}
            }
        }
        self.stats.lost_removals += self.removals.len() as u64;
        self.pending.clear();
        self.removals.clear();
        self.mailbox.clear();
        // Receipts were handed to the application at the commit; they are its.
        let mut old = std::mem::take(&mut self.channels);
        self.channels = self
            .durable
            .iter()
            .map(|(id, d)| {
                let delivered = old.remove(id).map(|c| c.delivered).unwrap_or_default();
                (*id, ModelChannel::from_durable(d, delivered))
            })
            .collect();
        self.highest_sent.clear();
    }

    /// The runtime starts again from its store: every inbox row goes to the handler again,
    /// flagged, in step order per channel.
    pub fn restart(&mut self) {
        let mut ids: Vec<_> = self.durable.keys().copied().collect();
        ids.sort();
        for id in ids {
            for (&step, payload) in &self.durable[&id].inbox {
                self.mailbox.push_back(Delivery { channel: id, step, payload: payload.clone(), redelivered: true });
                self.stats.redelivered += 1;
            }
        }
    }

    /// Hands logged messages to the session from each channel's cursor, while it accepts
    /// them.
    pub fn pump(&mut self, session: &mut Session) {
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        ids.sort();
        for id in ids {
            let c = self.channels.get_mut(&id).expect("listed");
            let Some(mut cursor) = c.cursor else { continue };
            while cursor < c.tx.step {
                let Some(wire) = c.log.get(&cursor).cloned() else {
                    panic!("step {cursor} of channel {id:?} is not acknowledged and not in the outbound log")
                };
                match session.send_data(id, wire) {
                    Ok(()) => {
                        self.stats.sent += 1;
                        let high = self.highest_sent.entry(id).or_insert(0);
                        if cursor < *high {
                            self.stats.resent += 1;
                        }
                        *high = (*high).max(cursor + 1);
                        cursor += 1;
                    }
                    Err(SendError::Full { .. }) => {
                        self.stats.full += 1;
                        break;
                    }
                    Err(SendError::Closed(_)) => break,
                    Err(e) => panic!("send_data refused a sealed message: {e}"),
                }
            }
            c.cursor = Some(cursor);
        }
    }

    /// The log is trimmed in memory at once; the trim of its rows is submitted, not awaited.
    fn acknowledge(&mut self, channel: ChannelId, next: u64) {
        let c = self.channels.get_mut(&channel).expect("ack only on a known channel");
        assert!(next <= c.tx.step, "acknowledgement of steps never sealed");
        if next <= c.acked {
            return;
        }
        c.acked = next;
        c.log.retain(|&s, _| s >= next);
        self.pending.push_back(vec![Op::Ack { channel, next }]);
        if !self.deferred {
            self.commit(None);
        }
    }

    /// The next step this side expects on `channel`, as committed.
    pub fn rx_next(&self, channel: &ChannelId) -> u64 {
        self.durable.get(channel).map_or(0, |c| c.rx.step)
    }

    /// Handles one event of the session (the runtime's inbound half and the glue's
    /// channel bookkeeping).
    pub fn on_event(&mut self, session: &mut Session, ev: Event) {
        match ev {
            Event::Data { channel, wire } => {
                assert!(!self.receive_pending(), "the event task waits for a receive's commit");
                let c = self.channels.get_mut(&channel).expect("data only on a known channel");
                let (header, body) = parse_wire(&wire, &EnvelopeLimits::default()).expect("the session checked it");
                header.check_sender(&self.peer).expect("sender is the peer");
                if header.step < c.rx.step {
                    self.stats.duplicates += 1;
                    session.ack(channel, header.step + 1);
                    return;
                }
                assert_eq!(header.step, c.rx.step, "a gap: data beyond the next step");
                let (payload, next) = c.rx.open_inbound(&header, body).expect("VALIDATE and DECODE");
                let op = Op::Receive { channel, step: header.step, next, payload };
                self.submit(op, Some(session));
            }
            Event::Acked { channel, next } => self.acknowledge(channel, next),
            Event::Position { channel, rx_next, tx_next } => {
                let Some(c) = self.channels.get_mut(&channel) else { return };
                if !c.open {
                    // The acceptor's acceptance is on its way (again); positions follow it.
                    return;
                }
                assert!(rx_next <= c.tx.step, "peer claims messages never sent: suspend");
                assert!(rx_next >= c.acked, "peer lost acknowledged messages: suspend");
                assert!(tx_next >= c.rx.step, "peer lost messages it sent and we hold: suspend");
                if c.cursor.is_none() {
                    c.cursor = Some(rx_next);
                }
                self.acknowledge(channel, rx_next);
            }
            Event::ChannelRequested { channel, depth, opener, target, secret } => {
                self.stats.requests += 1;
                let Target::Id(local_agent) = target else { panic!("the model asks by id") };
                if let Some(c) = self.channels.get(&channel) {
                    // A repeated request (our acceptance was lost): accept again.
                    assert!(!c.we_opened && c.secret == *secret && c.depth == depth && c.remote_agent == opener);
                    session.accept_channel(channel, local_agent);
                    session.announce_position(channel, c.rx.step, c.tx.step);
                    return;
                }
                let (rx, tx) = channel_chains(&secret, &channel, &self.peer, &self.local);
                // Stored before the acceptance goes out.
                let d = DurableChannel {
                    depth,
                    local_agent,
                    remote_agent: opener,
                    secret: *secret,
                    we_opened: false,
                    open: true,
                    tx,
                    rx,
                    log: BTreeMap::new(),
                    acked: 0,
                    inbox: BTreeMap::new(),
                };
                self.insert_channel(channel, d);
                session.accept_channel(channel, local_agent);
                session.announce_position(channel, 0, 0);
            }
            Event::ChannelAccepted { channel, acceptor } => {
                let c = self.channels.get_mut(&channel).expect("accepted a channel we asked for");
                assert!(c.we_opened && acceptor == c.remote_agent);
                c.open = true;
                // Stored before anything is sent on it.
                self.durable.get_mut(&channel).expect("durable channel").open = true;
                session.announce_position(channel, c.rx.step, c.tx.step);
            }
            Event::ChannelRefused { channel, reason } => panic!("channel {channel:?} refused: {reason:?}"),
            Event::ChannelClosed { channel } => {
                self.channels.remove(&channel);
                self.durable.remove(&channel);
            }
            Event::Closed(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}
