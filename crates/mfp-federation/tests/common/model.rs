//! A small model of the runtime side of federation, as the glue will do it: per channel
//! the two bilateral chains from `channel_chains`, an outbound log of sealed wire messages
//! keyed by step, the acknowledged and received positions; delivery of in-order data,
//! acknowledgements, position exchange after a (re)connect and resending from the peer's
//! position. Everything here counts as durable (a crash would lose nothing of it).

use std::collections::{BTreeMap, HashMap};

use mfp_core::bilateral::BilateralState;
use mfp_core::encoding::{self, Algorithm};
use mfp_core::envelope::{EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId, RuntimeId};
use mfp_federation::channel_chains;
use mfp_federation::session::{Event, SendError, Session, Target};

/// Fingerprint of a sealing: SHA-256 of the AES key, and the nonce.
pub type Sealed = ([u8; 32], [u8; 12]);

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
    /// Payloads delivered, in order.
    pub delivered: Vec<Vec<u8>>,
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
}

#[derive(Debug)]
pub struct Model {
    pub local: RuntimeId,
    pub peer: RuntimeId,
    pub channels: HashMap<ChannelId, ModelChannel>,
    pub sealed: Vec<Sealed>,
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
            sealed: Vec::new(),
            stats: ModelStats::default(),
            max_log,
            highest_sent: HashMap::new(),
        }
    }

    /// Creates a channel this side opens; the request goes out on every connect until
    /// the peer answers.
    pub fn open(
        &mut self,
        channel: ChannelId,
        depth: u16,
        local_agent: AgentId,
        remote_agent: AgentId,
        secret: [u8; 32],
    ) {
        let (tx, rx) = channel_chains(&secret, &channel, &self.local, &self.peer);
        self.channels.insert(
            channel,
            ModelChannel {
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
                cursor: None,
                delivered: Vec::new(),
            },
        );
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

    /// Whether the application may seal another message on `channel` now.
    pub fn can_seal(&self, channel: &ChannelId) -> bool {
        self.channels.get(channel).is_some_and(|c| c.open && c.log.len() < self.max_log)
    }

    /// Seals `payload` on `channel` into the log (the runtime's outbound half). Returns
    /// its step.
    pub fn seal(&mut self, channel: ChannelId, payload: &[u8]) -> u64 {
        let c = self.channels.get_mut(&channel).expect("channel exists");
        assert!(c.open, "sealing on a channel not agreed");
        let key = encoding::encoding_key(&c.tx.ratchet, Algorithm::Aes256Gcm);
        let nonce = encoding::nonce(&key, &channel, c.tx.step);
        self.sealed.push((mfp_core::crypto::sha256(&[key.expose()]), nonce));
        let out = c.tx.seal_outbound(&self.local, &channel, usize::from(c.depth), payload).expect("seal");
        let step = c.tx.step;
        c.log.insert(step, out.wire);
        c.tx = out.next;
        self.stats.sealed += 1;
        step
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
                let wire = c.log.get(&cursor).expect("unacknowledged messages are in the log").clone();
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

    fn acknowledge(c: &mut ModelChannel, next: u64) {
        assert!(next <= c.tx.step, "acknowledgement of steps never sealed");
        c.acked = c.acked.max(next);
        c.log.retain(|&s, _| s >= c.acked);
    }

    /// The next step this side expects on `channel`.
    pub fn rx_next(&self, channel: &ChannelId) -> u64 {
        self.channels.get(channel).map_or(0, |c| c.rx.step)
    }

    /// Handles one event of the session (the runtime's inbound half and the glue's
    /// channel bookkeeping).
    pub fn on_event(&mut self, session: &mut Session, ev: Event) {
        match ev {
            Event::Data { channel, wire } => {
                let c = self.channels.get_mut(&channel).expect("data only on a known channel");
                let (header, body) = parse_wire(&wire, &EnvelopeLimits::default()).expect("the session checked it");
                header.check_sender(&self.peer).expect("sender is the peer");
                if header.step < c.rx.step {
                    self.stats.duplicates += 1;
                    return;
                }
                assert_eq!(header.step, c.rx.step, "a gap: data beyond the next step");
                let (payload, next) = c.rx.open_inbound(&header, body).expect("VALIDATE and DECODE");
                c.rx = next;
                c.delivered.push(payload);
                // Data from the acceptor means it accepted, even if its Accept was lost.
                c.open = true;
                self.stats.delivered += 1;
                session.ack(channel, c.rx.step);
            }
            Event::Acked { channel, next } => {
                let c = self.channels.get_mut(&channel).expect("ack only on a known channel");
                Self::acknowledge(c, next);
            }
            Event::Position { channel, rx_next, tx_next } => {
                let Some(c) = self.channels.get_mut(&channel) else { return };
                if !c.open {
                    // The acceptor's acceptance is on its way (again); positions follow it.
                    return;
                }
                assert!(rx_next <= c.tx.step, "peer claims messages never sent: suspend");
                assert!(rx_next >= c.acked, "peer lost acknowledged messages: suspend");
                assert!(tx_next >= c.rx.step, "peer lost messages it sent and we hold: suspend");
                Self::acknowledge(c, rx_next);
                if c.cursor.is_none() {
                    c.cursor = Some(rx_next);
                }
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
                self.channels.insert(
                    channel,
                    ModelChannel {
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
                        cursor: None,
                        delivered: Vec::new(),
                    },
                );
                session.accept_channel(channel, local_agent);
                session.announce_position(channel, 0, 0);
            }
            Event::ChannelAccepted { channel, acceptor } => {
                let c = self.channels.get_mut(&channel).expect("accepted a channel we asked for");
                assert!(c.we_opened && acceptor == c.remote_agent);
                c.open = true;
                session.announce_position(channel, c.rx.step, c.tx.step);
            }
            Event::ChannelRefused { channel, reason } => panic!("channel {channel:?} refused: {reason:?}"),
            Event::ChannelClosed { channel } => {
                self.channels.remove(&channel);
            }
            Event::Closed(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}
