//! The link session: a sans-IO state machine over one established Noise transport.
//!
//! Bytes from the peer go in through [`Session::handle_input`]; bytes for the peer come
//! out of [`Session::poll_transmit`]; what happened comes out of [`Session::poll_event`];
//! timers are [`Session::poll_timeout`] and [`Session::handle_timeout`]. The caller passes
//! `now` everywhere: no clock, no socket, no async runtime here.
//!
//! ## What the session does, and what the runtime does
//!
//! The session is an authenticated pipe between two runtimes: it carries complete MFP1 wire
//! messages per cross-runtime channel ([`Session::send_data`], [`Event::Data`]), channel
//! agreement (open, accept, refuse, close), per-channel cumulative acknowledgements and
//! per-channel positions after a reconnect (recovery's DETECT). It keeps no channel table,
//! no outbound log and no bilateral state, and it seals and opens nothing of the MFP layer.
//!
//! The runtime owns every cross-runtime channel: its two bilateral chains (derived with
//! [`crate::channel_chains`] from the secret of the channel request), the outbound log
//! keyed by (channel, step), the acknowledged and received positions, and their
//! persistence in the same storage transaction as each advance. It seals with
//! `BilateralState::seal_outbound` and runs VALIDATE and DECODE on the bytes of
//! [`Event::Data`] itself, so failure counts and quarantine see every inbound message.
//! After a reconnect it sends each shared channel's recovery report
//! ([`Session::send_recovery`], [`crate::recovery`]: steps and state hashes of both chains)
//! and, on the peer's [`Event::Recovery`], decides NEGOTIATE and RESYNC: it resends its log
//! from the peer's `rx_next`, or suspends the channel when the divergence cannot be
//! repaired. (Bare positions, [`Session::announce_position`] and [`Event::Position`], carry
//! steps only; the runtime's federation does not use them.)
//!
//! The session checks what it can check without state: a data message parses as an MFP1
//! wire message within the configured limits and names the channel it travels on (on
//! both sides: [`Session::send_data`] refuses such a message, and one from the peer closes
//! the session, since Noise authenticated it: the peer broke the protocol); a channel
//! request has a depth within the limits (else it is refused with
//! [`RefuseReason::BadDepth`] without bothering the runtime) and a valid target.

use core::fmt;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use mfp_core::envelope::{EnvelopeLimits, parse_wire};
use mfp_core::{AgentId, ChannelId, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId, TAG_SIZE};
use zeroize::Zeroizing;

use crate::codec::{self, CodecError, Decoder, FrameKind, MAX_BODY};
use crate::control::{Control, ControlError, DATA_OVERHEAD};
pub use crate::control::{RefuseReason, Target};
use crate::handshake::{Established, Role};

/// Size of the Noise transport tag.
const NOISE_TAG: usize = 16;
/// Largest control message a transport frame carries.
pub const MAX_CONTROL: usize = MAX_BODY - NOISE_TAG;
/// Largest MFP1 wire message (envelope and body) a data message carries.
pub const MAX_WIRE: usize = MAX_CONTROL - (DATA_OVERHEAD - mfp_core::ENVELOPE_HEADER_SIZE);

/// Largest payload a data message of frame depth `depth` can carry in one transport frame.
/// The runtime checks it before sealing: a message that [`Session::send_data`] refuses as
/// too large would have used a step of the channel's chain for nothing.
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
    /// Data messages queued for transmission (not yet taken by [`Session::poll_transmit`])
    /// at most; [`Session::send_data`] answers [`SendError::Full`] above it.
    pub max_queued_messages: usize,
    /// Bytes of data messages queued for transmission at most (at least [`MAX_CONTROL`],
    /// so that any one message fits an empty queue).
    pub max_queued_bytes: usize,
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
            max_queued_messages: 256,
            max_queued_bytes: 4 << 20,
        }
    }
}

impl SessionConfig {
    /// Checks that the limits are consistent: the reject limits above the rekey limits
    /// (a rekey must happen before the peer refuses the key), a frame depth the protocol
    /// allows, non-zero timers, and queue limits that hold at least one message.
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
        } else if self.max_queued_messages == 0 {
            Some("max_queued_messages must be at least 1")
        } else if self.max_queued_bytes < MAX_CONTROL {
            Some("max_queued_bytes must be at least 65,519 (one transport frame)")
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(SessionError::Config(p)))
    }
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Data messages transmitted.
    pub data_sent: u64,
    /// Data messages received and handed to the runtime.
    pub data_received: u64,
    /// Channel requests refused by the session itself (depth outside the limits).
    pub refused_requests: u64,
    /// Transport frames that failed Noise authentication.
    pub tampered: u64,
    /// Frames, control messages or data messages that could not be parsed.
    pub malformed: u64,
    /// Outgoing transport rekeys.
    pub rekeys: u64,
}

/// Errors of [`Session::send_data`] and [`Session::open_channel`]. Nothing is queued when
/// one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The transmission queue is at its limit: try again when [`Session::can_send`] says
    /// so (after the transport took queued bytes with [`Session::poll_transmit`]).
    #[error(
        "link to runtime {peer}: {messages} data messages / {bytes} bytes waiting for transmission, at the limit; channel {channel}'s message stays in the outbound log, send it again when the link drains"
    )]
    Full {
        /// The peer.
        peer: String,
        /// The channel.
        channel: String,
        /// Data messages queued.
        messages: usize,
        /// Bytes queued.
        bytes: usize,
    },
    /// The wire message does not fit one transport frame.
    #[error(
        "channel {channel}: a wire message of {len} bytes is above the {max} bytes a link message carries; the payload must be smaller (see max_payload)"
    )]
    TooLarge {
        /// The channel.
        channel: String,
        /// The wire message's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The wire message is not an MFP1 message for this channel within the limits.
    #[error("channel {channel}: the wire message is refused ({why}); it was not built for this channel and link")]
    BadWire {
        /// The channel.
        channel: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The depth is outside the allowed range.
    #[error("channel {channel}: frame depth {depth} is outside {MIN_FRAME_DEPTH}..=the configured maximum")]
    BadDepth {
        /// The channel.
        channel: String,
        /// The depth asked for.
        depth: u16,
    },
    /// The target agent's name is empty or longer than 64 bytes.
    #[error("channel {0}: the target agent's name must have 1 to 64 bytes")]
    BadTarget(String),
    /// The session has ended.
    #[error("link to runtime {0} is closed; the message stays in the outbound log for the next session")]
    Closed(String),
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
    /// A data message from the peer is not an MFP1 wire message for its channel within
    /// the limits.
    #[error("peer sent a malformed data message ({0})")]
    MalformedData(&'static str),
    /// The peer did not rekey in time.
    #[error("the peer's transport key expired (no rekey within the limits)")]
    KeyExpired,
    /// The peer broke the link protocol.
    #[error("peer broke the link protocol: {0}")]
    Protocol(&'static str),
    /// Nothing received for the idle timeout.
    #[error("nothing received from the peer within the idle timeout")]
    IdleTimeout,
    /// The peer closed the session.
    #[error("the peer closed the session (code {0})")]
    PeerClosed(u8),
    /// This side closed the session.
    #[error("closed by this side")]
    Local,
    /// Sealing a transport message failed.
    #[error("sealing a link message failed: {0}")]
    Seal(String),
}

/// Something that happened on a session. `Debug` shows a data message's length, never its
/// bytes, and never a channel secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete MFP1 wire message from the peer on `channel` (parsed, within the limits,
    /// naming `channel`; not validated against any chain: that is the runtime's).
    Data {
        /// The channel.
        channel: ChannelId,
        /// Envelope and protocol message.
        wire: Vec<u8>,
    },
    /// The peer holds every data message of `channel` with a step below `next` durably.
    Acked {
        /// The channel.
        channel: ChannelId,
        /// Cumulative: the next step the peer expects.
        next: u64,
    },
    /// The peer's positions on `channel` after a (re)connect (DETECT).
    Position {
        /// The channel.
        channel: ChannelId,
        /// The next step the peer expects to receive.
        rx_next: u64,
        /// The next step the peer will send.
        tx_next: u64,
    },
    /// The peer's recovery report on a channel (DETECT with state hashes; its sender field
    /// names the peer).
    Recovery(crate::recovery::RecoveryReport),
    /// The peer asks to reset the chains of `channel` from `secret`: reset them, then answer
    /// with [`Session::accept_reset`].
    ResetRequested {
        /// The channel.
        channel: ChannelId,
        /// The new secret (the peer derives as the channel's opener).
        secret: Zeroizing<[u8; 32]>,
    },
    /// The peer reset (and stored) its side of a channel this side asked to reset.
    ResetAccepted {
        /// The channel.
        channel: ChannelId,
    },
    /// The peer refused to reset a channel this side asked to reset (nothing changed there).
    ResetRefused {
        /// The channel.
        channel: ChannelId,
        /// Why.
        reason: crate::control::ResetRefusal,
    },
    /// The peer asks for a channel: answer with [`Session::accept_channel`] or
    /// [`Session::refuse_channel`].
    ChannelRequested {
        /// Proposed id.
        channel: ChannelId,
        /// Frame depth (within this side's limits).
        depth: u16,
        /// The peer's agent.
        opener: AgentId,
        /// The agent of this runtime asked for.
        target: Target,
        /// The channel secret (see [`crate::channel_chains`]).
        secret: Zeroizing<[u8; 32]>,
    },
    /// The peer accepted a channel this side asked for.
    ChannelAccepted {
        /// The channel.
        channel: ChannelId,
        /// The peer's agent on it.
        acceptor: AgentId,
    },
    /// The peer refused a channel this side asked for.
    ChannelRefused {
        /// The channel.
        channel: ChannelId,
        /// Why.
        reason: RefuseReason,
    },
    /// The peer closed a channel.
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
    },
    /// The peer, which opened a channel this side accepted, stored it.
    ChannelConfirmed {
        /// The channel.
        channel: ChannelId,
    },
    /// The peer asks to rotate its outbound chain of `channel` (this side's inbound one):
    /// store the rotation, then answer with [`Session::accept_rotation`].
    RotationRequested {
        /// The channel.
        channel: ChannelId,
        /// pymfp's `RekeyRequest`: the peer's ephemeral public key and proposed step.
        message: mfp_core::bilateral::RekeyMessage,
    },
    /// The peer accepted (and stored) the rotation this side asked for.
    RotationAccepted {
        /// The channel.
        channel: ChannelId,
        /// pymfp's `RekeyAccept`: the peer's ephemeral public key and accepted step.
        message: mfp_core::bilateral::RekeyMessage,
    },
    /// The session ended.
    Closed(CloseReason),
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Data { channel, wire } => {
                f.debug_struct("Data").field("channel", channel).field("wire_len", &wire.len()).finish()
            }
            Event::Acked { channel, next } => {
                f.debug_struct("Acked").field("channel", channel).field("next", next).finish()
            }
            Event::Position { channel, rx_next, tx_next } => f
                .debug_struct("Position")
                .field("channel", channel)
                .field("rx_next", rx_next)
                .field("tx_next", tx_next)
                .finish(),
            Event::Recovery(r) => f.debug_tuple("Recovery").field(r).finish(),
            Event::ResetRequested { channel, secret: _ } => {
                f.debug_struct("ResetRequested").field("channel", channel).finish_non_exhaustive()
            }
            Event::ResetAccepted { channel } => f.debug_struct("ResetAccepted").field("channel", channel).finish(),
            Event::ResetRefused { channel, reason } => {
                f.debug_struct("ResetRefused").field("channel", channel).field("reason", reason).finish()
            }
            Event::ChannelRequested { channel, depth, opener, target, secret: _ } => f
                .debug_struct("ChannelRequested")
                .field("channel", channel)
                .field("depth", depth)
                .field("opener", opener)
                .field("target", target)
                .finish_non_exhaustive(),
            Event::ChannelAccepted { channel, acceptor } => {
                f.debug_struct("ChannelAccepted").field("channel", channel).field("acceptor", acceptor).finish()
            }
            Event::ChannelRefused { channel, reason } => {
                f.debug_struct("ChannelRefused").field("channel", channel).field("reason", reason).finish()
            }
            Event::ChannelClosed { channel } => f.debug_struct("ChannelClosed").field("channel", channel).finish(),
            Event::ChannelConfirmed { channel } => {
                f.debug_struct("ChannelConfirmed").field("channel", channel).finish()
            }
            Event::RotationRequested { channel, message } => f
                .debug_struct("RotationRequested")
                .field("channel", channel)
                .field("step", &message.step)
                .finish_non_exhaustive(),
            Event::RotationAccepted { channel, message } => f
                .debug_struct("RotationAccepted")
                .field("channel", channel)
                .field("step", &message.step)
                .finish_non_exhaustive(),
            Event::Closed(r) => f.debug_tuple("Closed").field(r).finish(),
        }
    }
}

/// Errors of starting a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session configuration is inconsistent.
    #[error("invalid session configuration: {0}")]
    Config(&'static str),
}

/// One established session on a link.
pub struct Session {
    cfg: SessionConfig,
    role: Role,
    local: RuntimeId,
    peer: RuntimeId,
    noise: snow::TransportState,
    decoder: Decoder,
    tx_epoch: u64,
    tx_epoch_start: Instant,
    tx_epoch_msgs: u64,
    rx_epoch: u64,
    rx_epoch_start: Instant,
    rx_epoch_msgs: u64,
    last_rx: Instant,
    last_tx: Instant,
    ping: u64,
    ping_due: bool,
    pong: Option<u64>,
    /// Latest acknowledgement per channel not yet transmitted, and the order to send them.
    acks: HashMap<ChannelId, u64>,
    ack_order: VecDeque<ChannelId>,
    /// Everything else, in order: data, positions, channel messages.
    queue: VecDeque<Control>,
    queued_data: usize,
    queued_bytes: usize,
    events: VecDeque<Event>,
    closed: Option<CloseReason>,
    send_close: Option<u8>,
    envelope_limits: EnvelopeLimits,
    stats: Stats,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("peer", &self.peer.short())
            .field("queued_data", &self.queued_data)
            .field("queued_bytes", &self.queued_bytes)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The checks of a data message's wire bytes, on both sides.
fn check_wire(channel: &ChannelId, wire: &[u8], limits: &EnvelopeLimits) -> Result<(), &'static str> {
    let (header, _) = parse_wire(wire, limits).map_err(|_| "not an MFP1 wire message within the limits")?;
    if header.channel_id != *channel {
        return Err("the envelope names another channel");
    }
    Ok(())
}

impl Session {
    /// Starts a session on an established handshake.
    pub fn new(est: Established, cfg: SessionConfig, now: Instant) -> Result<Self, SessionError> {
        cfg.validate()?;
        let max_depth = u32::from(cfg.max_frame_depth);
        Ok(Self {
            role: est.role,
            local: est.local,
            peer: est.peer,
            noise: est.transport,
            decoder: Decoder::new(MAX_BODY),
            tx_epoch: 0,
            tx_epoch_start: now,
            tx_epoch_msgs: 0,
            rx_epoch: 0,
            rx_epoch_start: now,
            rx_epoch_msgs: 0,
            last_rx: now,
            last_tx: now,
            ping: 0,
            ping_due: false,
            pong: None,
            acks: HashMap::new(),
            ack_order: VecDeque::new(),
            queue: VecDeque::new(),
            queued_data: 0,
            queued_bytes: 0,
            events: VecDeque::new(),
            closed: None,
            send_close: None,
            envelope_limits: EnvelopeLimits { max_frame_depth: max_depth, max_payload_len: MAX_CONTROL as u32 },
            stats: Stats::default(),
            cfg,
        })
    }

    /// This side's handshake role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// This runtime.
    #[must_use]
    pub const fn local(&self) -> RuntimeId {
        self.local
    }

    /// The authenticated peer.
    #[must_use]
    pub const fn peer(&self) -> RuntimeId {
        self.peer
    }

    /// Counters.
    #[must_use]
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Data messages and their bytes queued for transmission.
    #[must_use]
    pub const fn queued(&self) -> (usize, usize) {
        (self.queued_data, self.queued_bytes)
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

    /// Whether [`Self::send_data`] would queue a wire message of `len` bytes now (the
    /// session is open and the queue has room for it).
    #[must_use]
    pub fn can_send(&self, len: usize) -> bool {
        self.closed.is_none()
            && self.queued_data < self.cfg.max_queued_messages
            && self.queued_bytes.saturating_add(len) <= self.cfg.max_queued_bytes
    }

    /// Queues `wire`, a complete MFP1 wire message (64-byte envelope header and body, as
    /// `BilateralState::seal_outbound` builds it) on `channel`.
    ///
    /// Refused, with nothing queued: a message that does not fit one transport frame
    /// ([`SendError::TooLarge`]), that does not parse within the session's limits or names
    /// another channel ([`SendError::BadWire`]), when the queue is at its limits
    /// ([`SendError::Full`]), or when the session has ended ([`SendError::Closed`]). The
    /// runtime keeps the message in its outbound log in every case and sends it again later.
    pub fn send_data(&mut self, channel: ChannelId, wire: Vec<u8>) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed(self.peer.short()));
        }
        if wire.len() > MAX_WIRE {
            return Err(SendError::TooLarge { channel: channel.short(), len: wire.len(), max: MAX_WIRE });
        }
        check_wire(&channel, &wire, &self.envelope_limits)
            .map_err(|why| SendError::BadWire { channel: channel.short(), why })?;
        if !self.can_send(wire.len()) {
            return Err(SendError::Full {
                peer: self.peer.short(),
                channel: channel.short(),
                messages: self.queued_data,
                bytes: self.queued_bytes,
            });
        }
        self.queued_data += 1;
        self.queued_bytes += wire.len();
        self.queue.push_back(Control::Data { channel, wire });
        Ok(())
    }

    /// Tells the peer that every data message of `channel` with a step below `next` is
    /// durable here. Cumulative; only the latest value per channel is transmitted.
    pub fn ack(&mut self, channel: ChannelId, next: u64) {
        if self.closed.is_some() {
            return;
        }
        if self.acks.insert(channel, next).is_none() {
            self.ack_order.push_back(channel);
        }
    }

    /// Announces this side's positions on `channel` (DETECT): the next step it expects to
    /// receive and the next step it will send. Sent for each channel shared with the peer
    /// after a (re)connect; the peer answers with its own.
    pub fn announce_position(&mut self, channel: ChannelId, rx_next: u64, tx_next: u64) {
        if self.closed.is_none() {
            self.queue.push_back(Control::Position { channel, rx_next, tx_next });
        }
    }

    /// Sends this side's recovery report on a channel (DETECT with state hashes; see
    /// [`crate::recovery`]).
    pub fn send_recovery(&mut self, report: crate::recovery::RecoveryReport) {
        if self.closed.is_none() {
            self.queue.push_back(Control::Recovery(report));
        }
    }

    /// Asks the peer to reset the chains of `channel` from `secret` (32 random bytes the
    /// caller draws; both chains derive from it as from a channel request's secret, this
    /// side as the opener). It travels only inside the Noise transport.
    pub fn request_reset(&mut self, channel: ChannelId, secret: [u8; 32]) {
        let secret = Zeroizing::new(secret);
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelReset { channel, secret });
        }
    }

    /// Tells the peer that its reset of `channel` is done (and stored) on this side.
    pub fn accept_reset(&mut self, channel: ChannelId) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelResetAccept(channel));
        }
    }

    /// Tells the peer that this side refuses its reset of `channel` (nothing changed here).
    pub fn refuse_reset(&mut self, channel: ChannelId, reason: crate::control::ResetRefusal) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelResetRefuse(channel, reason));
        }
    }

    /// Asks the peer for a channel from `opener` (an agent of this runtime) to `target` (an
    /// agent of the peer) at frame depth `depth`. `secret` is 32 bytes the caller draws
    /// from its entropy; the channel's chains derive from it ([`crate::channel_chains`]),
    /// and it travels only inside the Noise transport. The runtime keeps the request and
    /// repeats it on the next session if no answer came.
    pub fn open_channel(
        &mut self,
        channel: ChannelId,
        depth: u16,
        opener: AgentId,
        target: Target,
        secret: [u8; 32],
    ) -> Result<(), SendError> {
        let secret = Zeroizing::new(secret);
        if self.closed.is_some() {
            return Err(SendError::Closed(self.peer.short()));
        }
        if usize::from(depth) < MIN_FRAME_DEPTH || depth > self.cfg.max_frame_depth {
            return Err(SendError::BadDepth { channel: channel.short(), depth });
        }
        if !target.is_valid() {
            return Err(SendError::BadTarget(channel.short()));
        }
        self.queue.push_back(Control::ChannelOpen { channel, depth, opener, secret, target });
        Ok(())
    }

    /// Accepts a channel the peer asked for, with `acceptor` (the agent of this runtime on
    /// it). Does nothing on an ended session (the peer repeats its request next time).
    pub fn accept_channel(&mut self, channel: ChannelId, acceptor: AgentId) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelAccept { channel, acceptor });
        }
    }

    /// Refuses a channel the peer asked for.
    pub fn refuse_channel(&mut self, channel: ChannelId, reason: RefuseReason) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelRefuse(channel, reason));
        }
    }

    /// Asks the peer to accept a rotation of this side's outbound chain of `channel`
    /// (pymfp's `RekeyRequest`, carried inside the Noise transport).
    pub fn request_rotation(&mut self, channel: ChannelId, message: mfp_core::bilateral::RekeyMessage) {
        if self.closed.is_none() {
            self.queue.push_back(Control::RotateRequest { channel, message });
        }
    }

    /// Answers a rotation request (pymfp's `RekeyAccept`): send it only once the rotation
    /// is stored on this side.
    pub fn accept_rotation(&mut self, channel: ChannelId, message: mfp_core::bilateral::RekeyMessage) {
        if self.closed.is_none() {
            self.queue.push_back(Control::RotateAccept { channel, message });
        }
    }

    /// Tells the peer, which accepted a channel this side opened, that this side stored it
    /// (the peer holds its own messages on the channel until then).
    pub fn confirm_channel(&mut self, channel: ChannelId) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelConfirm(channel));
        }
    }

    /// Tells the peer that a channel is closed.
    pub fn close_channel(&mut self, channel: ChannelId) {
        if self.closed.is_none() {
            self.queue.push_back(Control::ChannelClose(channel));
        }
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
            self.queue.clear();
            self.acks.clear();
            self.ack_order.clear();
            self.queued_data = 0;
            self.queued_bytes = 0;
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
                    self.stats.malformed += 1;
                    return self.fail(CloseReason::Codec(e));
                }
            };
            if frame.kind != FrameKind::Transport {
                self.stats.malformed += 1;
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
                    self.stats.tampered += 1;
                    return self.fail(CloseReason::Tampered);
                }
            };
            self.rx_epoch_msgs += 1;
            self.last_rx = now;
            match Control::parse(plain.get(..n).unwrap_or_default()) {
                Ok(msg) => self.on_control(now, msg),
                Err(e) => {
                    self.stats.malformed += 1;
                    return self.fail(CloseReason::Malformed(e));
                }
            }
        }
    }

    fn on_control(&mut self, now: Instant, msg: Control) {
        match msg {
            Control::Data { channel, wire } => {
                if let Err(why) = check_wire(&channel, &wire, &self.envelope_limits) {
                    self.stats.malformed += 1;
                    return self.fail(CloseReason::MalformedData(why));
                }
                self.stats.data_received += 1;
                self.events.push_back(Event::Data { channel, wire });
            }
            Control::Ack { channel, next } => self.events.push_back(Event::Acked { channel, next }),
            Control::Position { channel, rx_next, tx_next } => {
                self.events.push_back(Event::Position { channel, rx_next, tx_next });
            }
            Control::Recovery(report) => {
                if !mfp_core::crypto::ct_eq(&report.sender, &self.peer.sender_field()) {
                    self.stats.malformed += 1;
                    return self.fail(CloseReason::Protocol("recovery report naming another sender"));
                }
                self.events.push_back(Event::Recovery(report));
            }
            Control::ChannelReset { channel, secret } => {
                self.events.push_back(Event::ResetRequested { channel, secret });
            }
            Control::ChannelResetAccept(channel) => self.events.push_back(Event::ResetAccepted { channel }),
            Control::ChannelResetRefuse(channel, reason) => {
                self.events.push_back(Event::ResetRefused { channel, reason });
            }
            Control::ChannelOpen { channel, depth, opener, secret, target } => {
                if usize::from(depth) < MIN_FRAME_DEPTH || depth > self.cfg.max_frame_depth {
                    self.stats.refused_requests += 1;
                    self.queue.push_back(Control::ChannelRefuse(channel, RefuseReason::BadDepth));
                } else {
                    self.events.push_back(Event::ChannelRequested { channel, depth, opener, target, secret });
                }
            }
            Control::ChannelAccept { channel, acceptor } => {
                self.events.push_back(Event::ChannelAccepted { channel, acceptor });
            }
            Control::ChannelRefuse(channel, reason) => self.events.push_back(Event::ChannelRefused { channel, reason }),
            Control::ChannelClose(channel) => self.events.push_back(Event::ChannelClosed { channel }),
            Control::ChannelConfirm(channel) => self.events.push_back(Event::ChannelConfirmed { channel }),
            Control::RotateRequest { channel, message } => {
                self.events.push_back(Event::RotationRequested { channel, message });
            }
            Control::RotateAccept { channel, message } => {
                self.events.push_back(Event::RotationAccepted { channel, message });
            }
            Control::Ping(n) => self.pong = Some(n),
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

    fn next_control(&mut self) -> Option<Control> {
        if let Some(n) = self.pong.take() {
            return Some(Control::Pong(n));
        }
        while let Some(channel) = self.ack_order.pop_front() {
            if let Some(next) = self.acks.remove(&channel) {
                return Some(Control::Ack { channel, next });
            }
        }
        if let Some(msg) = self.queue.pop_front() {
            if let Control::Data { wire, .. } = &msg {
                self.queued_data = self.queued_data.saturating_sub(1);
                self.queued_bytes = self.queued_bytes.saturating_sub(wire.len());
                self.stats.data_sent += 1;
            }
            return Some(msg);
        }
        if core::mem::take(&mut self.ping_due) {
            self.ping = self.ping.wrapping_add(1);
            return Some(Control::Ping(self.ping));
        }
        None
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
            self.stats.rekeys += 1;
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
        if now >= self.last_tx + self.cfg.keepalive && self.queue.is_empty() && self.ack_order.is_empty() {
            self.ping_due = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chains::channel_chains;

    fn pair(now: Instant) -> (Session, Session) {
        let (a, b) = crate::fuzzing::established_pair().expect("handshake");
        (
            Session::new(a, SessionConfig::default(), now).unwrap(),
            Session::new(b, SessionConfig::default(), now).unwrap(),
        )
    }

    fn transmit(from: &mut Session, to: &mut Session, now: Instant) {
        while let Some(bytes) = from.poll_transmit(now) {
            to.handle_input(now, &bytes);
        }
    }

    /// `send_data` refuses such messages; a peer that sends one anyway (bypassing the
    /// checks, as a broken or hostile implementation would) has the session closed.
    #[test]
    fn malformed_data_from_the_peer_closes_the_session() {
        let now = Instant::now();
        let ch = ChannelId::from_bytes([1; 16]);
        let (a0, _) = pair(now);
        let (tx, _) = channel_chains(&[5; 32], &ch, &a0.local(), &a0.peer());
        let good = tx.seal_outbound(&a0.local(), &ch, 4, b"x").unwrap().wire;
        let mut truncated = good.clone();
        truncated.pop();
        let deep = tx.seal_outbound(&a0.local(), &ch, 33, b"x").unwrap().wire;
        let cases = [
            (ChannelId::from_bytes([2; 16]), good.clone(), "the envelope names another channel"),
            (ch, truncated, "not an MFP1 wire message within the limits"),
            (ch, deep, "not an MFP1 wire message within the limits"),
            (ch, vec![0u8; 64], "not an MFP1 wire message within the limits"),
        ];
        for (channel, wire, why) in cases {
            let (mut a, mut b) = pair(now);
            a.queue.push_back(Control::Data { channel, wire });
            transmit(&mut a, &mut b, now);
            let evs: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
            assert_eq!(evs, vec![Event::Closed(CloseReason::MalformedData(why))]);
            assert_eq!((b.stats().malformed, b.stats().data_received), (1, 0));
        }
        // The good one passes.
        let (mut a, mut b) = pair(now);
        a.send_data(ch, good.clone()).unwrap();
        transmit(&mut a, &mut b, now);
        assert_eq!(b.poll_event(), Some(Event::Data { channel: ch, wire: good }));
    }

    #[test]
    fn recovery_reports_and_resets_cross_the_session_and_a_foreign_sender_closes_it() {
        use crate::recovery::{ANSWER_REQUESTED, ChainPoint, RecoveryReport};
        let now = Instant::now();
        let ch = ChannelId::from_bytes([1; 16]);
        let report = |sender: &RuntimeId| {
            let p = ChainPoint { step: 4, hash: [7; 32] };
            RecoveryReport::new(ch, sender, ANSWER_REQUESTED, p, 2, p, [7; 32])
        };
        let (mut a, mut b) = pair(now);
        a.send_recovery(report(&a.local()));
        a.request_reset(ch, [9; 32]);
        b.accept_reset(ch);
        transmit(&mut a, &mut b, now);
        transmit(&mut b, &mut a, now);
        let at_b: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
        assert_eq!(
            at_b,
            vec![
                Event::Recovery(report(&a.local())),
                Event::ResetRequested { channel: ch, secret: Zeroizing::new([9; 32]) }
            ]
        );
        assert_eq!(a.poll_event(), Some(Event::ResetAccepted { channel: ch }));
        b.refuse_reset(ch, crate::control::ResetRefusal::Closed);
        transmit(&mut b, &mut a, now);
        assert_eq!(
            a.poll_event(),
            Some(Event::ResetRefused { channel: ch, reason: crate::control::ResetRefusal::Closed })
        );
        assert!(!format!("{:?}", at_b[1]).contains('9'), "Debug shows no secret");
        // A report that names another runtime as its sender breaks the protocol.
        let (mut a, mut b) = pair(now);
        a.send_recovery(report(&RuntimeId::from_bytes([3; 32])));
        transmit(&mut a, &mut b, now);
        assert_eq!(
            std::iter::from_fn(|| b.poll_event()).collect::<Vec<_>>(),
            vec![Event::Closed(CloseReason::Protocol("recovery report naming another sender"))]
        );
        assert_eq!(b.stats().malformed, 1);
    }

    #[test]
    fn debug_never_shows_secrets_or_payloads() {
        let ev = Event::ChannelRequested {
            channel: ChannelId::from_bytes([1; 16]),
            depth: 4,
            opener: AgentId::from_bytes([2; 32]),
            target: Target::Name("bob".into()),
            secret: Zeroizing::new([0xee; 32]),
        };
        let shown = format!("{ev:?}");
        assert!(shown.contains("bob") && !shown.contains("238") && !shown.contains("ee"), "{shown}");
        let shown = format!("{:?}", Event::Data { channel: ChannelId::from_bytes([1; 16]), wire: vec![0xab; 99] });
        assert!(shown.contains("wire_len: 99") && !shown.contains("171"), "{shown}");
    }

    /// A peer's pings are answered once each, however many arrive before this side
    /// transmits: memory does not grow with them.
    #[test]
    fn pings_are_answered_with_one_pong() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        for n in 1..=50 {
            a.queue.push_back(Control::Ping(n));
        }
        transmit(&mut a, &mut b, now);
        assert!(b.poll_transmit(now).is_some());
        assert!(b.poll_transmit(now).is_none(), "one Pong for fifty Pings");
    }
}
