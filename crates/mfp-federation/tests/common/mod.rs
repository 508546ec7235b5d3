//! Helpers shared by the integration tests: deterministic entropy, identities, a
//! handshake between two in-memory runtimes, and a `Pair`-style simulated network.
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use mfp_core::{ChannelId, RuntimeId};
use mfp_federation::codec::Decoder;
use mfp_federation::handshake::{self, Established, Initiator, LocalIdentity, PeerTable, Timestamp};
use mfp_federation::session::{Event, Session, SessionConfig};
use mfp_federation::{IdentityKey, codec};

pub mod model;
pub use model::Model;

/// SplitMix64 as an entropy source: deterministic, for tests only.
pub use mfp_core::testing::SplitMix64 as TestEntropy;

pub fn identity(name: &[u8], seed: u64) -> LocalIdentity {
    LocalIdentity {
        runtime: RuntimeId::derive(b"federation-tests", name),
        key: IdentityKey::generate(&mut TestEntropy(seed)).unwrap(),
    }
}

pub fn ts(secs: u64) -> Timestamp {
    Timestamp::from_unix(Duration::from_secs(1_800_000_000 + secs))
}

/// Two runtimes, A and B, that pin each other.
pub struct Runtimes {
    pub a: LocalIdentity,
    pub b: LocalIdentity,
    pub a_peers: PeerTable,
    pub b_peers: PeerTable,
}

impl Runtimes {
    pub fn new() -> Self {
        let a = identity(b"a", 1);
        let b = identity(b"b", 2);
        let mut a_peers = PeerTable::new();
        a_peers.pin(b.runtime, b.key.public());
        let mut b_peers = PeerTable::new();
        b_peers.pin(a.runtime, a.key.public());
        Self { a, b, a_peers, b_peers }
    }
}

pub fn one_frame(bytes: &[u8]) -> codec::LinkFrame {
    let mut d = Decoder::new(codec::MAX_BODY);
    let frames = d.decode_all(bytes).unwrap();
    assert_eq!(frames.len(), 1);
    frames.into_iter().next().unwrap()
}

/// Runs a handshake A → B at wall time `secs` and returns both ends' session material.
pub fn handshake(rt: &mut Runtimes, secs: u64, entropy: &mut TestEntropy) -> (Established, Established) {
    let (init, hs1) = Initiator::start(&rt.a, rt.b.runtime, rt.b.key.public(), ts(secs), entropy).unwrap();
    let accepted = handshake::accept(&rt.b, &mut rt.b_peers, &one_frame(&hs1), entropy).unwrap();
    let (est_b, hs2) = accepted.finish(entropy).unwrap();
    let est_a = init.complete(&one_frame(&hs2)).unwrap();
    assert_eq!(est_a.handshake_hash(), est_b.handshake_hash());
    (est_a, est_b)
}

/// Runs a handshake A → B at wall time `secs` and returns both sessions.
pub fn connect_with(
    rt: &mut Runtimes,
    cfg: SessionConfig,
    secs: u64,
    now: Instant,
    entropy: &mut TestEntropy,
) -> (Session, Session) {
    let (est_a, est_b) = handshake(rt, secs, entropy);
    (Session::new(est_a, cfg, now).unwrap(), Session::new(est_b, cfg, now).unwrap())
}

/// [`connect_with`] the default configuration.
pub fn connect(rt: &mut Runtimes, secs: u64, now: Instant, entropy: &mut TestEntropy) -> (Session, Session) {
    connect_with(rt, SessionConfig::default(), secs, now, entropy)
}

/// Moves every pending transmission from `from` to `to`; returns how many frames moved.
pub fn pump(from: &mut Session, to: &mut Session, now: Instant) -> usize {
    let mut n = 0;
    while let Some(bytes) = from.poll_transmit(now) {
        to.handle_input(now, &bytes);
        n += 1;
    }
    n
}

/// Pumps both ways until nothing moves.
pub fn settle(a: &mut Session, b: &mut Session, now: Instant) {
    while pump(a, b, now) + pump(b, a, now) > 0 {}
}

pub fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Both sides' models over one pair of sessions: events go to the models, the models'
/// logs to the sessions, until nothing moves.
pub fn settle_models(a: &mut Session, ma: &mut Model, b: &mut Session, mb: &mut Model, now: Instant) {
    loop {
        ma.pump(a);
        mb.pump(b);
        let moved = pump(a, b, now) + pump(b, a, now);
        let mut evs = 0;
        while let Some(ev) = a.poll_event() {
            ma.on_event(a, ev);
            evs += 1;
        }
        while let Some(ev) = b.poll_event() {
            mb.on_event(b, ev);
            evs += 1;
        }
        if moved + evs == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic simulation
// ---------------------------------------------------------------------------------------

/// Faults the simulated network applies to each transmission, in per-mille, and how slow
/// each runtime's writer and handlers are.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop: u64,
    pub duplicate: u64,
    pub reorder: u64,
    pub max_delay_ms: u64,
    /// Chance (per mille) that a runtime's writer does not commit in a step: what was
    /// submitted waits, and a crash meanwhile loses it.
    pub slow_commit: u64,
    /// Chance (per mille) that a handler does not take its next message in a step.
    pub slow_handler: u64,
}

impl Faults {
    pub const NONE: Faults =
        Faults { drop: 0, duplicate: 0, reorder: 0, max_delay_ms: 0, slow_commit: 0, slow_handler: 0 };
}

#[derive(Debug)]
struct Packet {
    at: Instant,
    conn: u64,
    to_b: bool,
    bytes: Vec<u8>,
}

enum Phase {
    Idle,
    Handshaking(Instant),
    Up,
}

/// One side of the simulation: its runtime model (which outlives sessions; its durable
/// part outlives crashes) and the current session.
pub struct Side {
    pub model: Model,
    pub session: Option<Session>,
    decoder: Decoder,
    /// Crashed: the process restarts then.
    pub down_until: Option<Instant>,
    /// A session came up and the model has not announced its positions on it yet.
    connect_pending: bool,
}

impl Side {
    fn new(mut model: Model) -> Self {
        model.deferred = true;
        Self { model, session: None, decoder: Decoder::new(codec::MAX_BODY), down_until: None, connect_pending: false }
    }

    pub fn is_down(&self) -> bool {
        self.down_until.is_some()
    }

    fn tear_down(&mut self) {
        self.session = None;
        self.decoder = Decoder::new(codec::MAX_BODY);
        self.connect_pending = false;
        // Nothing goes out on the next session before the peer's position came.
        self.model.on_disconnect();
    }
}

/// A `Pair`-style harness: two runtimes, one simulated connection at a time (A dials),
/// a virtual clock, faults on demand.
pub struct Sim {
    pub rt: Runtimes,
    pub a: Side,
    pub b: Side,
    pub start: Instant,
    pub now: Instant,
    pub rng: TestEntropy,
    pub faults: Faults,
    pub partitioned: bool,
    queue: Vec<Packet>,
    conn: u64,
    phase: Phase,
    initiator: Option<Initiator>,
    redial_at: Instant,
    pub connects: u64,
    pub handshake_failures: u64,
    pub crashes: u64,
    pub tampered: u64,
    pub cfg: SessionConfig,
    last_in_order: HashMap<bool, Instant>,
}

impl Sim {
    pub fn new(seed: u64, cfg: SessionConfig, max_log: usize) -> Self {
        let rt = Runtimes::new();
        let ma = Model::new(rt.a.runtime, rt.b.runtime, max_log);
        let mb = Model::new(rt.b.runtime, rt.a.runtime, max_log);
        let start = Instant::now();
        Self {
            rt,
            a: Side::new(ma),
            b: Side::new(mb),
            start,
            now: start,
            rng: TestEntropy(seed),
            faults: Faults::NONE,
            partitioned: false,
            queue: Vec::new(),
            conn: 0,
            phase: Phase::Idle,
            initiator: None,
            redial_at: start,
            connects: 0,
            handshake_failures: 0,
            crashes: 0,
            tampered: 0,
            cfg,
            last_in_order: HashMap::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
    }

    /// Kills one runtime's process: the connection dies with it, its model keeps what it
    /// committed and loses the rest; it starts again after `down` (virtual time).
    pub fn crash(&mut self, is_a: bool, down: Duration) {
        self.disconnect();
        let until = self.now + down;
        let side = self.side(is_a);
        side.model.crash();
        side.down_until = Some(until);
        self.crashes += 1;
    }

    fn side(&mut self, is_a: bool) -> &mut Side {
        if is_a { &mut self.a } else { &mut self.b }
    }

    fn send_packet(&mut self, from_a: bool, bytes: Vec<u8>) {
        if self.partitioned || self.rng.below(1000) < self.faults.drop {
            return;
        }
        let copies = if self.rng.below(1000) < self.faults.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let latency = Duration::from_millis(1 + self.rng.below(self.faults.max_delay_ms + 1));
            let mut at = self.now + latency;
            if self.rng.below(1000) >= self.faults.reorder {
                // In order: never before the previous in-order packet of this direction.
                let prev = self.last_in_order.get(&from_a).copied().unwrap_or(self.now);
                at = at.max(prev);
                self.last_in_order.insert(from_a, at);
            }
            self.queue.push(Packet { at, conn: self.conn, to_b: from_a, bytes: bytes.clone() });
        }
    }

    /// Ends the current connection on both sides (as a reset would).
    pub fn disconnect(&mut self) {
        for s in [&self.a, &self.b] {
            if let Some(session) = &s.session {
                self.tampered += session.stats().tampered;
            }
        }
        self.a.tear_down();
        self.b.tear_down();
        self.initiator = None;
        self.queue.clear();
        self.last_in_order.clear();
        self.phase = Phase::Idle;
        self.conn += 1;
        self.redial_at = self.now + Duration::from_millis(200);
    }

    fn wall(&self) -> Timestamp {
        let d = self.now - self.start;
        Timestamp::from_unix(Duration::from_secs(1_800_000_000) + d)
    }

    fn dial(&mut self) {
        let wall = self.wall();
        let (init, hs1) = Initiator::start(&self.rt.a, self.rt.b.runtime, self.rt.b.key.public(), wall, &mut self.rng)
            .expect("initiator starts");
        self.initiator = Some(init);
        self.phase = Phase::Handshaking(self.now);
        self.send_packet(true, hs1);
    }

    fn deliver(&mut self, to_b: bool, bytes: &[u8]) {
        let mut input = bytes;
        // Handshake frames while no session exists on the receiving side.
        if self.side(!to_b).session.is_none() {
            let frame = match self.side(!to_b).decoder.decode(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(_) => return self.fail_handshake(),
            };
            let est = if to_b {
                let accepted = handshake::accept(&self.rt.b, &mut self.rt.b_peers, &frame, &mut self.rng);
                match accepted.and_then(|acc| acc.finish(&mut self.rng)) {
                    Ok((est, hs2)) => {
                        self.send_packet(false, hs2);
                        est
                    }
                    Err(_) => return self.fail_handshake(),
                }
            } else {
                match self.initiator.take().map(|i| i.complete(&frame)) {
                    Some(Ok(est)) => est,
                    _ => return self.fail_handshake(),
                }
            };
            let (cfg, now) = (self.cfg, self.now);
            let side = self.side(!to_b);
            // The model announces its positions from its event task (`drain_events`): after
            // a receive whose commit is pending, as the federation's peer task does.
            side.session = Some(Session::new(est, cfg, now).expect("valid configuration"));
            side.connect_pending = true;
            if !to_b {
                self.phase = Phase::Up;
                self.connects += 1;
            }
        }
        let now = self.now;
        if let Some(s) = self.side(!to_b).session.as_mut() {
            s.handle_input(now, input);
        }
    }

    fn fail_handshake(&mut self) {
        self.handshake_failures += 1;
        self.disconnect();
    }

    /// Hands each side's events to its model, checking that an acknowledgement never
    /// covers more than the receiver holds.
    fn drain_events(&mut self) {
        for is_a in [true, false] {
            let (side, other) = if is_a { (&mut self.a, &self.b) } else { (&mut self.b, &self.a) };
            let Some(s) = side.session.as_mut() else { continue };
            // The event task waits while a received message's commit is pending; then the
            // link's coming up, then the session's events, in order.
            if side.connect_pending && !side.model.receive_pending() {
                side.connect_pending = false;
                // A session the faults already broke ends at the next check.
                if !s.is_closed() {
                    side.model.on_connect(s);
                }
            }
            while !side.model.receive_pending()
                && !side.connect_pending
                && let Some(ev) = s.poll_event()
            {
                if let Event::Acked { channel, next } = &ev {
                    let held = other.model.rx_next(channel);
                    assert!(*next <= held, "acknowledged {next} but the peer holds {held}");
                }
                side.model.on_event(s, ev);
            }
        }
    }

    /// Advances the simulation by one event, at most `max_step` of virtual time.
    pub fn step(&mut self, max_step: Duration) {
        let mut next = self.now + max_step;
        if let Some(p) = self.queue.iter().map(|p| p.at).min() {
            next = next.min(p);
        }
        for s in [&self.a, &self.b] {
            if let Some(t) = s.session.as_ref().and_then(Session::poll_timeout) {
                next = next.min(t);
            }
        }
        if matches!(self.phase, Phase::Idle) && !self.partitioned {
            next = next.min(self.redial_at);
        }
        for s in [&self.a, &self.b] {
            if let Some(t) = s.down_until {
                next = next.min(t);
            }
        }
        // Virtual time always moves forward by at least a millisecond.
        self.now = next.max(self.now + Duration::from_millis(1));
        let now = self.now;

        // Restarts, then each running runtime's writer commits what was submitted in the
        // previous step (unless it is slow this time).
        for is_a in [true, false] {
            let side = self.side(is_a);
            if side.down_until.is_some_and(|t| now >= t) {
                side.down_until = None;
                side.model.restart();
            }
        }
        for is_a in [true, false] {
            let slow = self.rng.below(1000) < self.faults.slow_commit;
            let side = self.side(is_a);
            if !side.is_down() && !slow {
                side.model.commit(side.session.as_mut());
            }
        }

        // Deliver due packets of the current connection, in time order.
        self.queue.sort_by_key(|p| p.at);
        while let Some(pos) = self.queue.iter().position(|p| p.at <= now) {
            let p = self.queue.remove(pos);
            if p.conn == self.conn {
                self.deliver(p.to_b, &p.bytes);
            }
        }
        // Timers.
        for is_a in [true, false] {
            if let Some(s) = self.side(is_a).session.as_mut()
                && s.poll_timeout().is_some_and(|t| t <= now)
            {
                s.handle_timeout(now);
            }
        }
        if let Phase::Handshaking(since) = self.phase
            && now >= since + Duration::from_secs(2)
        {
            self.fail_handshake();
        }
        self.drain_events();
        // A closed session ends the connection.
        if self.a.session.as_ref().is_some_and(Session::is_closed)
            || self.b.session.as_ref().is_some_and(Session::is_closed)
        {
            self.disconnect();
        }
        // Handlers take their messages; their removals go to the writer.
        for is_a in [true, false] {
            if self.side(is_a).is_down() {
                continue;
            }
            while !self.side(is_a).model.mailbox.is_empty() && self.rng.below(1000) >= self.faults.slow_handler {
                self.side(is_a).model.handle_one();
            }
            self.side(is_a).model.flush_removals();
        }
        if matches!(self.phase, Phase::Idle)
            && now >= self.redial_at
            && !self.partitioned
            && !self.a.is_down()
            && !self.b.is_down()
        {
            self.dial();
        }
        // Transmit: the models hand their logs to the sessions, the sessions their bytes
        // to the network.
        for is_a in [true, false] {
            let side = self.side(is_a);
            if let Some(s) = side.session.as_mut() {
                side.model.pump(s);
            }
            while let Some(bytes) = self.side(is_a).session.as_mut().and_then(|s| s.poll_transmit(now)) {
                self.send_packet(is_a, bytes);
            }
        }
        self.drain_events();
    }

    /// Every sealed (key, nonce) fingerprint of both sides is distinct; returns how many.
    pub fn assert_no_key_nonce_reuse(&self) -> usize {
        assert_unique_sealings(&[&self.a.model, &self.b.model])
    }
}

/// Every (key, nonce) fingerprint the models sealed with is distinct; returns how many.
pub fn assert_unique_sealings(models: &[&Model]) -> usize {
    let all: Vec<_> = models.iter().flat_map(|m| m.sealed.iter().copied()).collect();
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a (key, nonce) pair was used twice");
    all.len()
}

/// An application per side: the sends it means to make, in order, and per channel how
/// many got a receipt (message `n` of a channel carries `n`). A send counts once its
/// receipt came (the runtime's commit); one without a receipt when the runtime crashed
/// is the application's to make again, and it does, first.
#[derive(Debug, Default)]
pub struct App {
    pub pending: VecDeque<ChannelId>,
    pub sent: HashMap<ChannelId, u64>,
    /// Sealed, waiting for their receipts (at most one per channel: the channel's lock).
    pub in_flight: Vec<ChannelId>,
}

impl App {
    fn take_receipts(&mut self, model: &mut Model) {
        for (channel, step) in model.take_receipts() {
            let n = self.sent.entry(channel).or_insert(0);
            assert_eq!(step, *n, "message {n} of {channel:?} got the receipt of step {step}");
            *n += 1;
            self.in_flight.retain(|c| *c != channel);
        }
    }

    /// Takes the receipts that came, then seals queued messages while the model takes them.
    pub fn flush(&mut self, model: &mut Model) {
        loop {
            self.take_receipts(model);
            let Some(&channel) = self.pending.front() else { return };
            if self.in_flight.contains(&channel) || !model.can_seal(&channel) {
                return;
            }
            let n = self.sent.get(&channel).copied().unwrap_or(0);
            let mut payload = n.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0x5a; 24]);
            model.seal(channel, &payload);
            self.in_flight.push(channel);
            self.pending.pop_front();
        }
    }

    /// The runtime crashed: what got no receipt is sent again, before anything else.
    pub fn on_crash(&mut self, model: &mut Model) {
        self.take_receipts(model);
        for channel in self.in_flight.drain(..).rev() {
            self.pending.push_front(channel);
        }
    }
}
