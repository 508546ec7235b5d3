//! The link session: a sans-IO state machine over one established Noise transport.
//!
//! Bytes from the peer go in through [`Session::handle_input`]; bytes for the peer come
//! out of [`Session::poll_transmit`]; what happened comes out of [`Session::poll_event`];
//! timers are [`Session::poll_timeout`] and [`Session::handle_timeout`]. The caller passes
//! `now` everywhere: no clock, no socket, no async runtime here.
//!
//! What outlives a session (a broken connection, a reconnect) is the [`LinkState`]: the
//! outbound log of unacknowledged data, the count of data messages received, the
//! cross-runtime channels and counters. A session takes it in [`Session::new`] and gives it
//! back in [`Session::into_link_state`].
//!
//! ## Per-direction chains
//!
//! Each session derives two bilateral states, one per direction, from the secret
//! exported by its handshake (see `docs/federation.md`):
//!
//! ```text
//! ss(sender→receiver) = HMAC-SHA256(export, "mfp-federation/1 chain" ‖ sender_id ‖ receiver_id)
//! chain(sender→receiver) = BilateralState::ceremonial(ss(sender→receiver), sender_id, receiver_id)
//! ```
//!
//! Data from A to B is sealed with chain(A→B) only, at its step, which advances by one per
//! data message; B opens it with its copy of chain(A→B). The two directions never share a
//! ratchet state, so both sides sending at once cannot reuse an AES-GCM (key, nonce).
//!
//! ## Positions
//!
//! Data messages get a per-direction sequence number that survives sessions. Each
//! handshake payload carries the sender's count of data messages received; the other side
//! drops what that count covers from its log and sends the rest again, starting at step 0
//! of the new chain. A data message at step `s` of a session has sequence `base + s`,
//! where `base` is the receiver's count at the handshake. Within a session the Noise
//! transport (a counter nonce on an ordered stream) lets nothing through twice; across
//! sessions the count does.

use core::fmt;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use mfp_core::bilateral::BilateralState;
use mfp_core::crypto::hmac_state;
use mfp_core::envelope::{EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId, State, TAG_SIZE};
use zeroize::Zeroizing;

use crate::codec::{self, CodecError, Decoder, FrameKind, MAX_BODY};
use crate::control::{Control, ControlError, DATA_OVERHEAD, RefuseReason};
use crate::handshake::{Established, Role};

/// Label of the per-direction chain secrets.
pub const CHAIN_LABEL: &[u8] = b"mfp-federation/1 chain";
/// Size of the Noise transport tag.
const NOISE_TAG: usize = 16;
/// Largest control message a transport frame carries.
pub const MAX_CONTROL: usize = MAX_BODY - NOISE_TAG;

/// Largest payload a data message of frame depth `depth` can carry in one transport frame.
#[must_use]
pub const fn max_payload(depth: u16) -> usize {
    MAX_CONTROL.saturating_sub(DATA_OVERHEAD + 2 * 16 * depth as usize + TAG_SIZE)
}

/// Timers and limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send a Ping after this long without sending anything.
    pub keepalive: Duration,
    /// Close the session after this long without receiving anything.
    pub idle_timeout: Duration,
    /// Rekey the outgoing transport key after this long (WireGuard: 120 s).
    pub rekey_after_time: Duration,
    /// Refuse incoming messages under a key older than this (WireGuard: 180 s).
    pub reject_after_time: Duration,
    /// Rekey the outgoing transport key after this many messages.
    pub rekey_after_messages: u64,
    /// Refuse incoming messages after this many under one key.
    pub reject_after_messages: u64,
    /// Largest frame depth accepted for channels and data.
    pub max_frame_depth: u16,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 20,
            reject_after_messages: (1 << 20) + (1 << 16),
            max_frame_depth: 32,
        }
    }
}

impl SessionConfig {
    /// Checks that the limits are consistent: the reject limits above the rekey limits
    /// (a rekey must happen before the peer refuses the key), a frame depth the protocol
    /// allows, and non-zero timers.
    pub fn validate(&self) -> Result<(), SessionError> {
        let problem = if self.reject_after_messages <= self.rekey_after_messages.saturating_add(1) {
            Some("reject_after_messages must exceed rekey_after_messages + 1")
        } else if self.reject_after_time <= self.rekey_after_time {
            Some("reject_after_time must exceed rekey_after_time")
        } else if usize::from(self.max_frame_depth) < MIN_FRAME_DEPTH
            || usize::from(self.max_frame_depth) > MAX_FRAME_DEPTH
        {
            Some("max_frame_depth must be between 2 and 256")
        } else if self.keepalive.is_zero() || self.idle_timeout <= self.keepalive {
            Some("idle_timeout must exceed a non-zero keepalive")
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(SessionError::Config(p)))
    }
}

/// Limits of a link, across its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Unacknowledged data messages held at most.
    pub max_unacked_messages: usize,
    /// Unacknowledged payload bytes held at most.
    pub max_unacked_bytes: usize,
    /// Cross-runtime channels at most (pymfp's `max_bilateral_channels`).
    pub max_channels: usize,
}

impl Default for LinkLimits {
    fn default() -> Self {
        Self { max_unacked_messages: 1024, max_unacked_bytes: 16 << 20, max_channels: 1000 }
    }
}

/// Counters of a link (across sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Data messages sealed and sent (including resends).
    pub sent: u64,
    /// Of those, resends after a reconnect.
    pub resent: u64,
    /// Data messages delivered.
    pub delivered: u64,
    /// Data messages with a step already passed (dropped).
    pub duplicates: u64,
    /// Data messages with a step ahead of the chain (dropped).
    pub unexpected_steps: u64,
    /// Data or channel messages for a channel that is not open (dropped).
    pub unexpected_channels: u64,
    /// Transport frames that failed Noise authentication.
    pub tampered: u64,
    /// Frames or control messages that could not be parsed.
    pub malformed: u64,
    /// Data messages whose envelope or MFP frame was rejected.
    pub rejected: u64,
    /// Outgoing transport rekeys.
    pub rekeys: u64,
    /// Sessions started.
    pub sessions: u64,
}

/// Who opened a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opener {
    /// This runtime.
    Local,
    /// The peer.
    Peer,
}

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelState {
    /// Asked for by this side, no answer yet.
    Opening,
    /// Agreed by both sides.
    Open,
}

/// A cross-runtime channel as this side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The agent of this runtime on the channel (the only one that may send on it).
    pub local_agent: AgentId,
    /// The agent of the peer runtime.
    pub remote_agent: AgentId,
    /// Frame depth.
    pub depth: u16,
    /// Who asked for it.
    pub opener: Opener,
    /// Its state.
    pub state: ChannelState,
}

/// Errors of sending or of channel calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The outbound log is full: wait for acknowledgements.
    #[error(
        "link to runtime {peer}: {messages} messages / {bytes} bytes unacknowledged, at the limit; retry when acknowledgements arrive"
    )]
    Backpressure {
        /// The peer.
        peer: String,
        /// Unacknowledged messages.
        messages: usize,
        /// Unacknowledged payload bytes.
        bytes: usize,
    },
    /// The channel is not open on this link.
    #[error("channel {0} is not open on this link")]
    NotOpen(String),
    /// The sender is not the channel's local agent.
    #[error("agent {agent} may not send on channel {channel}: it is not the channel's local agent")]
    NotOwner {
        /// The agent.
        agent: String,
        /// The channel.
        channel: String,
    },
    /// The payload does not fit one data message at the channel's depth.
    #[error("payload of {len} bytes is above the largest a link message carries at this depth ({max})")]
    TooLarge {
        /// The payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The channel id is already in use.
    #[error("channel {0} already exists on this link")]
    Exists(String),
    /// The link's channel limit is reached.
    #[error("link to runtime {0} has reached its channel limit")]
    ChannelLimit(String),
    /// The depth is outside the allowed range.
    #[error("frame depth {0} is outside {MIN_FRAME_DEPTH}..=the configured maximum")]
    BadDepth(u16),
    /// No open request for that channel.
    #[error("no pending request for channel {0}")]
    NoRequest(String),
}

struct LogEntry {
    seq: u64,
    channel: ChannelId,
    depth: u16,
    payload: Zeroizing<Vec<u8>>,
}

/// What outlives sessions on a link to one peer.
pub struct LinkState {
    local: RuntimeId,
    peer: RuntimeId,
    limits: LinkLimits,
    log: VecDeque<LogEntry>,
    log_bytes: usize,
    next_seq: u64,
    acked: u64,
    highest_sent: u64,
    received: u64,
    channels: HashMap<ChannelId, ChannelInfo>,
    closes: Vec<ChannelId>,
    stats: Stats,
    #[cfg(feature = "instrument")]
    sealed: Vec<([u8; 32], [u8; 12])>,
}

impl fmt::Debug for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkState")
            .field("peer", &self.peer.short())
            .field("unacked", &self.log.len())
            .field("next_seq", &self.next_seq)
            .field("received", &self.received)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl LinkState {
    /// A fresh link between `local` and `peer`.
    #[must_use]
    pub fn new(local: RuntimeId, peer: RuntimeId, limits: LinkLimits) -> Self {
        Self {
            local,
            peer,
            limits,
            log: VecDeque::new(),
            log_bytes: 0,
            next_seq: 0,
            acked: 0,
            highest_sent: 0,
            received: 0,
            channels: HashMap::new(),
            closes: Vec::new(),
            stats: Stats::default(),
            #[cfg(feature = "instrument")]
            sealed: Vec::new(),
        }
    }

    /// The peer.
    #[must_use]
    pub const fn peer(&self) -> RuntimeId {
        self.peer
    }

    /// Data messages received from the peer so far.
    #[must_use]
    pub const fn received(&self) -> u64 {
        self.received
    }

    /// Sequence number the next enqueued message gets.
    #[must_use]
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every message below this sequence number is acknowledged.
    #[must_use]
    pub const fn acked(&self) -> u64 {
        self.acked
    }

    /// Unacknowledged messages.
    #[must_use]
    pub fn unacked(&self) -> usize {
        self.log.len()
    }

    /// Counters.
    #[must_use]
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A channel.
    #[must_use]
    pub fn channel(&self, id: &ChannelId) -> Option<&ChannelInfo> {
        self.channels.get(id)
    }

    /// Every channel.
    pub fn channels(&self) -> impl Iterator<Item = (&ChannelId, &ChannelInfo)> {
        self.channels.iter()
    }

    /// Fingerprints `(SHA-256 of the AES key, nonce)` of every data message sealed.
    #[cfg(feature = "instrument")]
    #[must_use]
    pub fn sealed(&self) -> &[([u8; 32], [u8; 12])] {
        &self.sealed
    }

    /// Asks for a channel with `remote_agent` of the peer; sent when a session is up.
    pub fn open_channel(
        &mut self,
        channel: ChannelId,
        local_agent: AgentId,
        remote_agent: AgentId,
        depth: u16,
        max_depth: u16,
    ) -> Result<(), SendError> {
        if usize::from(depth) < MIN_FRAME_DEPTH || depth > max_depth || usize::from(depth) > MAX_FRAME_DEPTH {
            return Err(SendError::BadDepth(depth));
        }
        if self.channels.contains_key(&channel) {
            return Err(SendError::Exists(channel.short()));
        }
        if self.channels.len() >= self.limits.max_channels {
            return Err(SendError::ChannelLimit(self.peer.short()));
        }
        self.channels.insert(
            channel,
            ChannelInfo { local_agent, remote_agent, depth, opener: Opener::Local, state: ChannelState::Opening },
        );
        Ok(())
    }

    /// Closes a channel on this side; the peer is told when a session is up. Returns
    /// whether the channel existed.
    pub fn close_channel(&mut self, channel: &ChannelId) -> bool {
        let existed = self.channels.remove(channel).is_some();
        if existed {
            self.closes.push(*channel);
        }
        existed
    }

    /// Queues `payload` from `from` on `channel`. Returns its sequence number. Fails with
    /// [`SendError::Backpressure`] while the outbound log is at its limits.
    pub fn enqueue(&mut self, from: &AgentId, channel: &ChannelId, payload: &[u8]) -> Result<u64, SendError> {
        let info = self.channels.get(channel).ok_or_else(|| SendError::NotOpen(channel.short()))?;
        if info.state != ChannelState::Open {
            return Err(SendError::NotOpen(channel.short()));
        }
        if info.local_agent != *from {
            return Err(SendError::NotOwner { agent: from.short(), channel: channel.short() });
        }
        let max = max_payload(info.depth);
        if payload.len() > max {
            return Err(SendError::TooLarge { len: payload.len(), max });
        }
        if self.log.len() >= self.limits.max_unacked_messages
            || self.log_bytes.saturating_add(payload.len()) > self.limits.max_unacked_bytes
        {
            return Err(SendError::Backpressure {
                peer: self.peer.short(),
                messages: self.log.len(),
                bytes: self.log_bytes,
            });
        }
        let seq = self.next_seq;
        self.log.push_back(LogEntry {
            seq,
            channel: *channel,
            depth: info.depth,
            payload: Zeroizing::new(payload.to_vec()),
        });
        self.log_bytes += payload.len();
        self.next_seq += 1;
        Ok(seq)
    }

    /// Drops every logged message below `upto` (acknowledged).
    fn acknowledge(&mut self, upto: u64) {
        while let Some(front) = self.log.front() {
            if front.seq >= upto {
                break;
            }
            self.log_bytes = self.log_bytes.saturating_sub(front.payload.len());
            self.log.pop_front();
        }
        self.acked = self.acked.max(upto);
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The byte stream could not be framed.
    #[error("link stream is malformed: {0}")]
    Codec(CodecError),
    /// A handshake frame arrived inside the session.
    #[error("peer sent a handshake frame inside an established session")]
    UnexpectedFrame,
    /// A transport frame failed authentication (tampered, replayed or out of order).
    #[error("a link frame failed authentication (tampered, replayed or reordered bytes)")]
    Tampered,
    /// A control message could not be parsed.
    #[error("peer sent a malformed control message: {0}")]
    Malformed(ControlError),
    /// The peer broke the protocol.
    #[error("peer broke the link protocol: {0}")]
    Protocol(&'static str),
    /// A data message was rejected by the envelope or frame checks.
    #[error("a data message was rejected ({0}); the direction chain cannot continue")]
    DataRejected(&'static str),
    /// The peer did not rekey in time.
    #[error("the peer's transport key expired (no rekey within the limits)")]
    KeyExpired,
    /// Nothing received for the idle timeout.
    #[error("nothing received from the peer within the idle timeout")]
    IdleTimeout,
    /// The peer closed the session.
    #[error("the peer closed the session (code {0})")]
    PeerClosed(u8),
    /// This side closed the session.
    #[error("closed by this side")]
    Local,
    /// The peer's position does not fit ours (lost state on one side): recovery is
    /// needed, which this version does not do on the wire.
    #[error("the peer's position does not fit ours ({0}); the link needs recovery")]
    Position(&'static str),
    /// Sealing failed (a step counter exhausted).
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// Something that happened on a session. `Debug` shows a delivered payload's length,
/// never its bytes.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A data message was delivered on an open channel.
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// Its per-direction sequence number.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// The peer acknowledged every message below `upto`.
    Acknowledged {
        /// Cumulative count.
        upto: u64,
    },
    /// The peer asks for a channel: answer with [`Session::accept_channel`] or
    /// [`Session::refuse_channel`].
    ChannelRequested {
        /// Proposed id.
        channel: ChannelId,
        /// Frame depth.
        depth: u16,
        /// The peer's agent.
        remote_agent: AgentId,
        /// The agent of this runtime asked for.
        local_agent: AgentId,
    },
    /// A channel this side asked for was accepted.
    ChannelOpened(ChannelId),
    /// A channel this side asked for was refused.
    ChannelRefused(ChannelId, RefuseReason),
    /// The peer closed a channel.
    ChannelClosed(ChannelId),
    /// The session ended.
    Closed(CloseReason),
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Delivered { channel, seq, payload } => f
                .debug_struct("Delivered")
                .field("channel", channel)
                .field("seq", seq)
                .field("payload_len", &payload.len())
                .finish(),
            Event::Acknowledged { upto } => f.debug_struct("Acknowledged").field("upto", upto).finish(),
            Event::ChannelRequested { channel, depth, remote_agent, local_agent } => f
                .debug_struct("ChannelRequested")
                .field("channel", channel)
                .field("depth", depth)
                .field("remote_agent", remote_agent)
                .field("local_agent", local_agent)
                .finish(),
            Event::ChannelOpened(c) => f.debug_tuple("ChannelOpened").field(c).finish(),
            Event::ChannelRefused(c, r) => f.debug_tuple("ChannelRefused").field(c).field(r).finish(),
            Event::ChannelClosed(c) => f.debug_tuple("ChannelClosed").field(c).finish(),
            Event::Closed(r) => f.debug_tuple("Closed").field(r).finish(),
        }
    }
}

/// Errors of starting a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The link state belongs to another pair of runtimes.
    #[error("link state is for runtime {expected}, the handshake authenticated {got}")]
    WrongPeer {
        /// The link state's peer.
        expected: String,
        /// The authenticated peer.
        got: String,
    },
    /// The positions do not fit.
    #[error(transparent)]
    Position(CloseReason),
    /// The session configuration is inconsistent.
    #[error("invalid session configuration: {0}")]
    Config(&'static str),
}

/// A session that could not start, with the link state given back.
#[derive(Debug)]
pub struct SessionRefused {
    /// Why.
    pub error: SessionError,
    /// The link state, unchanged.
    pub link: LinkState,
}

/// One established session on a link.
pub struct Session {
    cfg: SessionConfig,
    role: Role,
    noise: snow::TransportState,
    link: LinkState,
    decoder: Decoder,
    tx_chain: BilateralState,
    rx_chain: BilateralState,
    send_base: u64,
    recv_base: u64,
    tx_epoch: u64,
    tx_epoch_start: Instant,
    tx_epoch_msgs: u64,
    rx_epoch: u64,
    rx_epoch_start: Instant,
    rx_epoch_msgs: u64,
    last_rx: Instant,
    last_tx: Instant,
    ack_sent: u64,
    ping: u64,
    ctrl: VecDeque<Control>,
    requests: HashMap<ChannelId, (u16, AgentId, AgentId)>,
    events: VecDeque<Event>,
    closed: Option<CloseReason>,
    send_close: Option<u8>,
    envelope_limits: EnvelopeLimits,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("link", &self.link)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn chain(secret: &State, sender: &RuntimeId, receiver: &RuntimeId) -> BilateralState {
    let ss = hmac_state(secret.expose(), &[CHAIN_LABEL, sender.as_bytes(), receiver.as_bytes()]);
    BilateralState::ceremonial(&ss, sender, receiver)
}

impl Session {
    /// Starts a session on an established handshake, taking the link's state. On error
    /// the link state is given back in [`SessionRefused`].
    pub fn new(
        est: Established,
        mut link: LinkState,
        cfg: SessionConfig,
        now: Instant,
    ) -> Result<Self, Box<SessionRefused>> {
        if let Err(error) = cfg.validate() {
            return Err(Box::new(SessionRefused { error, link }));
        }
        if est.peer != link.peer || est.local != link.local {
            let error = SessionError::WrongPeer { expected: link.peer.short(), got: est.peer.short() };
            return Err(Box::new(SessionRefused { error, link }));
        }
        let peer_received = est.peer_received;
        if peer_received > link.next_seq {
            let error = SessionError::Position(CloseReason::Position("peer claims more messages than were sent"));
            return Err(Box::new(SessionRefused { error, link }));
        }
        if peer_received < link.acked {
            let error = SessionError::Position(CloseReason::Position("peer lost acknowledged messages"));
            return Err(Box::new(SessionRefused { error, link }));
        }
        link.acknowledge(peer_received);
        link.stats.sessions += 1;
        let tx_chain = chain(&est.secret, &est.local, &est.peer);
        let rx_chain = chain(&est.secret, &est.peer, &est.local);
        let mut ctrl = VecDeque::new();
        for ch in core::mem::take(&mut link.closes) {
            ctrl.push_back(Control::ChannelClose(ch));
        }
        for (id, info) in &link.channels {
            if info.opener == Opener::Local && info.state == ChannelState::Opening {
                ctrl.push_back(Control::ChannelOpen {
                    channel: *id,
                    depth: info.depth,
                    opener: info.local_agent,
                    target: info.remote_agent,
                });
            }
        }
        let max_depth = u32::from(cfg.max_frame_depth.min(MAX_FRAME_DEPTH as u16));
        Ok(Self {
            role: est.role,
            noise: est.transport,
            decoder: Decoder::new(MAX_BODY),
            tx_chain,
            rx_chain,
            send_base: peer_received,
            recv_base: link.received,
            tx_epoch: 0,
            tx_epoch_start: now,
            tx_epoch_msgs: 0,
            rx_epoch: 0,
            rx_epoch_start: now,
            rx_epoch_msgs: 0,
            last_rx: now,
            last_tx: now,
            ack_sent: link.received,
            ping: 0,
            ctrl,
            requests: HashMap::new(),
            events: VecDeque::new(),
            closed: None,
            send_close: None,
            envelope_limits: EnvelopeLimits { max_frame_depth: max_depth, max_payload_len: MAX_CONTROL as u32 },
            link,
            cfg,
        })
    }

    /// This side's handshake role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// The link state (positions, channels, counters).
    #[must_use]
    pub const fn link(&self) -> &LinkState {
        &self.link
    }

    /// Whether the session has ended.
    #[must_use]
    pub const fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the session ended, if it did.
    #[must_use]
    pub const fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Ends the session and gives back the link state for the next one.
    #[must_use]
    pub fn into_link_state(self) -> LinkState {
        self.link
    }

    /// Queues a data message (see [`LinkState::enqueue`]).
    pub fn send(&mut self, from: &AgentId, channel: &ChannelId, payload: &[u8]) -> Result<u64, SendError> {
        self.link.enqueue(from, channel, payload)
    }

    /// Asks the peer for a channel.
    pub fn open_channel(
        &mut self,
        channel: ChannelId,
        local_agent: AgentId,
        remote_agent: AgentId,
        depth: u16,
    ) -> Result<(), SendError> {
        if self.requests.contains_key(&channel) {
            return Err(SendError::Exists(channel.short()));
        }
        self.link.open_channel(channel, local_agent, remote_agent, depth, self.cfg.max_frame_depth)?;
        self.ctrl.push_back(Control::ChannelOpen { channel, depth, opener: local_agent, target: remote_agent });
        Ok(())
    }

    /// Accepts a channel the peer asked for.
    pub fn accept_channel(&mut self, channel: &ChannelId) -> Result<(), SendError> {
        let (depth, remote_agent, local_agent) =
            self.requests.remove(channel).ok_or_else(|| SendError::NoRequest(channel.short()))?;
        if self.link.channels.len() >= self.link.limits.max_channels {
            self.ctrl.push_back(Control::ChannelRefuse(*channel, RefuseReason::LimitReached));
            return Err(SendError::ChannelLimit(self.link.peer.short()));
        }
        self.link.channels.insert(
            *channel,
            ChannelInfo { local_agent, remote_agent, depth, opener: Opener::Peer, state: ChannelState::Open },
        );
        self.ctrl.push_back(Control::ChannelAccept(*channel));
        Ok(())
    }

    /// Refuses a channel the peer asked for.
    pub fn refuse_channel(&mut self, channel: &ChannelId, reason: RefuseReason) -> Result<(), SendError> {
        self.requests.remove(channel).ok_or_else(|| SendError::NoRequest(channel.short()))?;
        self.ctrl.push_back(Control::ChannelRefuse(*channel, reason));
        Ok(())
    }

    /// Closes a channel on both sides.
    pub fn close_channel(&mut self, channel: &ChannelId) -> bool {
        let existed = self.link.channels.remove(channel).is_some();
        if existed {
            self.ctrl.push_back(Control::ChannelClose(*channel));
        }
        existed
    }

    /// Closes the session in order: a Close message is sent, then nothing more.
    pub fn close(&mut self) {
        if self.closed.is_none() {
            self.send_close = Some(0);
            self.fail(CloseReason::Local);
        }
    }

    fn fail(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason.clone());
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, now: Instant, mut input: &[u8]) {
        while self.closed.is_none() {
            let frame = match self.decoder.decode(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    self.link.stats.malformed += 1;
                    return self.fail(CloseReason::Codec(e));
                }
            };
            if frame.kind != FrameKind::Transport {
                self.link.stats.malformed += 1;
                return self.fail(CloseReason::UnexpectedFrame);
            }
            if now.saturating_duration_since(self.rx_epoch_start) >= self.cfg.reject_after_time
                || self.rx_epoch_msgs >= self.cfg.reject_after_messages
            {
                return self.fail(CloseReason::KeyExpired);
            }
            let mut plain = Zeroizing::new(vec![0u8; frame.body.len()]);
            let n = match self.noise.read_message(&frame.body, plain.as_mut_slice()) {
                Ok(n) => n,
                Err(_) => {
                    self.link.stats.tampered += 1;
                    return self.fail(CloseReason::Tampered);
                }
            };
            self.rx_epoch_msgs += 1;
            self.last_rx = now;
            match Control::parse(plain.get(..n).unwrap_or_default()) {
                Ok(msg) => self.on_control(now, msg),
                Err(e) => {
                    self.link.stats.malformed += 1;
                    return self.fail(CloseReason::Malformed(e));
                }
            }
        }
    }

    fn on_control(&mut self, now: Instant, msg: Control) {
        match msg {
            Control::Data { channel, step, wire } => self.on_data(channel, step, &wire),
            Control::Ack(n) => {
                let sent_upto = self.send_base + self.tx_chain.step;
                if n > sent_upto {
                    return self.fail(CloseReason::Protocol("acknowledgement of messages not sent"));
                }
                if n > self.link.acked {
                    self.link.acknowledge(n);
                    self.events.push_back(Event::Acknowledged { upto: n });
                }
            }
            Control::ChannelOpen { channel, depth, opener, target } => {
                self.on_channel_open(channel, depth, opener, target);
            }
            Control::ChannelAccept(c) => match self.link.channels.get_mut(&c) {
                Some(info) if info.opener == Opener::Local && info.state == ChannelState::Opening => {
                    info.state = ChannelState::Open;
                    self.events.push_back(Event::ChannelOpened(c));
                }
                Some(info) if info.opener == Opener::Local => {}
                _ => self.link.stats.unexpected_channels += 1,
            },
            Control::ChannelRefuse(c, reason) => match self.link.channels.get(&c) {
                Some(info) if info.opener == Opener::Local && info.state == ChannelState::Opening => {
                    self.link.channels.remove(&c);
                    self.events.push_back(Event::ChannelRefused(c, reason));
                }
                _ => self.link.stats.unexpected_channels += 1,
            },
            Control::ChannelClose(c) => {
                self.requests.remove(&c);
                if self.link.channels.remove(&c).is_some() {
                    self.events.push_back(Event::ChannelClosed(c));
                }
            }
            Control::Ping(n) => self.ctrl.push_back(Control::Pong(n)),
            Control::Pong(_) => {}
            Control::Rekey(epoch) => {
                if Some(epoch) != self.rx_epoch.checked_add(1) {
                    return self.fail(CloseReason::Protocol("rekey out of sequence"));
                }
                self.noise.rekey_incoming();
                self.rx_epoch = epoch;
                self.rx_epoch_start = now;
                self.rx_epoch_msgs = 0;
            }
            Control::Close(code) => self.fail(CloseReason::PeerClosed(code)),
        }
    }

    fn on_channel_open(&mut self, channel: ChannelId, depth: u16, opener: AgentId, target: AgentId) {
        if let Some(info) = self.link.channels.get(&channel) {
            let same = info.opener == Opener::Peer
                && info.remote_agent == opener
                && info.local_agent == target
                && info.depth == depth;
            let reply = if same {
                Control::ChannelAccept(channel)
            } else {
                Control::ChannelRefuse(channel, RefuseReason::Collision)
            };
            self.ctrl.push_back(reply);
            return;
        }
        if usize::from(depth) < MIN_FRAME_DEPTH || depth > self.cfg.max_frame_depth {
            self.ctrl.push_back(Control::ChannelRefuse(channel, RefuseReason::BadDepth));
            return;
        }
        if self.requests.contains_key(&channel) {
            return;
        }
        if self.link.channels.len() + self.requests.len() >= self.link.limits.max_channels {
            self.ctrl.push_back(Control::ChannelRefuse(channel, RefuseReason::LimitReached));
            return;
        }
        self.requests.insert(channel, (depth, opener, target));
        self.events.push_back(Event::ChannelRequested { channel, depth, remote_agent: opener, local_agent: target });
    }

    fn on_data(&mut self, channel: ChannelId, step: u64, wire: &[u8]) {
        let expected = self.rx_chain.step;
        if step < expected {
            self.link.stats.duplicates += 1;
            return;
        }
        if step > expected {
            self.link.stats.unexpected_steps += 1;
            return;
        }
        let opened = parse_wire(wire, &self.envelope_limits).map_err(|_| "envelope").and_then(|(header, body)| {
            if header.channel_id != channel || header.step != step {
                return Err("envelope does not match its data message");
            }
            header.check_sender(&self.link.peer).map_err(|_| "envelope sender")?;
            self.rx_chain.open_inbound(&header, body).map_err(|_| "frame or payload")
        });
        match opened {
            Err(why) => {
                self.link.stats.rejected += 1;
                self.fail(CloseReason::DataRejected(why));
            }
            Ok((payload, next)) => {
                self.rx_chain = next;
                self.link.received += 1;
                let seq = self.recv_base + step;
                // Data on a channel this side asked for means the peer accepted it: its
                // Accept may have been lost with a broken connection, and the peer resends
                // the data of the new session before it sees our repeated request.
                if let Some(info) = self.link.channels.get_mut(&channel)
                    && info.opener == Opener::Local
                    && info.state == ChannelState::Opening
                {
                    info.state = ChannelState::Open;
                    self.events.push_back(Event::ChannelOpened(channel));
                }
                match self.link.channels.get(&channel) {
                    Some(info) if info.state == ChannelState::Open => {
                        self.link.stats.delivered += 1;
                        self.events.push_back(Event::Delivered { channel, seq, payload });
                    }
                    _ => self.link.stats.unexpected_channels += 1,
                }
            }
        }
    }

    fn next_control(&mut self) -> Option<Control> {
        if let Some(c) = self.ctrl.pop_front() {
            return Some(c);
        }
        if self.link.received > self.ack_sent {
            self.ack_sent = self.link.received;
            return Some(Control::Ack(self.link.received));
        }
        let next = self.send_base + self.tx_chain.step;
        let front = self.link.log.front()?.seq;
        let idx = usize::try_from(next.checked_sub(front)?).ok()?;
        let entry = self.link.log.get(idx)?;
        match self.tx_chain.seal_outbound(&self.link.local, &entry.channel, usize::from(entry.depth), &entry.payload) {
            Ok(out) => {
                #[cfg(feature = "instrument")]
                {
                    let key = mfp_core::encoding::encoding_key(&self.tx_chain.ratchet, Default::default());
                    let nonce = mfp_core::encoding::nonce(&key, &entry.channel, self.tx_chain.step);
                    self.link.sealed.push((mfp_core::crypto::sha256(&[key.expose()]), nonce));
                }
                let msg = Control::Data { channel: entry.channel, step: self.tx_chain.step, wire: out.wire };
                self.tx_chain = out.next;
                self.link.stats.sent += 1;
                if next < self.link.highest_sent {
                    self.link.stats.resent += 1;
                }
                self.link.highest_sent = self.link.highest_sent.max(next + 1);
                Some(msg)
            }
            Err(e) => {
                self.fail(CloseReason::Seal(e.to_string()));
                None
            }
        }
    }

    fn seal(&mut self, now: Instant, msg: &Control) -> Option<Vec<u8>> {
        let plain = Zeroizing::new(msg.encode());
        let mut body = vec![0u8; plain.len() + NOISE_TAG];
        let n = match self.noise.write_message(&plain, &mut body) {
            Ok(n) => n,
            Err(e) => {
                self.fail(CloseReason::Seal(e.to_string()));
                return None;
            }
        };
        body.truncate(n);
        self.tx_epoch_msgs += 1;
        self.last_tx = now;
        match codec::encode(FrameKind::Transport, &body) {
            Ok(frame) => Some(frame),
            Err(e) => {
                self.fail(CloseReason::Codec(e));
                None
            }
        }
    }

    /// The next bytes to send to the peer, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.closed.is_some() {
            let code = self.send_close.take()?;
            return self.seal(now, &Control::Close(code));
        }
        let rekey_due = now.saturating_duration_since(self.tx_epoch_start) >= self.cfg.rekey_after_time
            || self.tx_epoch_msgs >= self.cfg.rekey_after_messages;
        if rekey_due {
            let epoch = self.tx_epoch.checked_add(1)?;
            let frame = self.seal(now, &Control::Rekey(epoch))?;
            self.noise.rekey_outgoing();
            self.tx_epoch = epoch;
            self.tx_epoch_start = now;
            self.tx_epoch_msgs = 0;
            self.link.stats.rekeys += 1;
            return Some(frame);
        }
        let msg = self.next_control()?;
        self.seal(now, &msg)
    }

    /// When [`Self::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        [
            self.last_tx + self.cfg.keepalive,
            self.last_rx + self.cfg.idle_timeout,
            self.tx_epoch_start + self.cfg.rekey_after_time,
            self.rx_epoch_start + self.cfg.reject_after_time,
        ]
        .into_iter()
        .min()
    }

    /// Runs the timers due at `now`: idle timeout, key expiry, keepalive (rekeying by time
    /// happens in [`Self::poll_transmit`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if now >= self.last_rx + self.cfg.idle_timeout {
            return self.fail(CloseReason::IdleTimeout);
        }
        if now >= self.rx_epoch_start + self.cfg.reject_after_time {
            return self.fail(CloseReason::KeyExpired);
        }
        if now >= self.last_tx + self.cfg.keepalive && self.ctrl.is_empty() {
            self.ping = self.ping.wrapping_add(1);
            self.ctrl.push_back(Control::Ping(self.ping));
        }
    }
}
