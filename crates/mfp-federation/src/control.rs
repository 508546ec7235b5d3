//! Control messages: the plaintext of every Noise transport message.
//!
//! One type byte, then a fixed layout per type (integers big-endian). A message must have
//! exactly its layout's length (Data: at least its fixed part; ChannelOpen: the length its
//! target kind announces); anything else is rejected.
//!
//! | type | name | layout after the type byte | length |
//! |---|---|---|---|
//! | `0x01` | Data | channel id (16) ‖ MFP1 wire message (64-byte envelope ‖ body) | ≥ 81 |
//! | `0x02` | Ack | channel id (16) ‖ next u64 (every step below it is durable at the sender) | 25 |
//! | `0x03` | ChannelOpen | channel id (16) ‖ depth u16 ‖ opener agent (32) ‖ secret (32) ‖ target kind u8 ‖ target | 116, or 86–149 |
//! | `0x04` | ChannelAccept | channel id (16) ‖ acceptor agent (32) | 49 |
//! | `0x05` | ChannelRefuse | channel id (16) ‖ reason u8 | 18 |
//! | `0x06` | ChannelClose | channel id (16) | 17 |
//! | `0x07` | Ping | nonce u64 | 9 |
//! | `0x08` | Pong | nonce u64 | 9 |
//! | `0x09` | Rekey | epoch u64 (the sender's new outgoing key epoch) | 9 |
//! | `0x0a` | Close | reason u8 | 2 |
//! | `0x0b` | ChannelConfirm | channel id (16): the opener stored the channel it was granted | 17 |
//! | `0x10` | Position | channel id (16) ‖ rx_next u64 ‖ tx_next u64 (bare positions) | 33 |
//! | `0x11` | Recovery | a `RECOVERY`-flagged MFP1 envelope and its body ([`crate::recovery`]) | 178 |
//! | `0x12` | ChannelReset | channel id (16) ‖ new secret (32) | 49 |
//! | `0x13` | ChannelResetAccept | channel id (16) | 17 |
//! | `0x14` | ChannelResetRefuse | channel id (16) ‖ reason u8 | 18 |
//! | `0x20` | RotateRequest | channel id (16) ‖ pymfp's 104-byte `RekeyRequest` (sender id, receiver id, ephemeral X25519 public key, proposed step) | 121 |
//! | `0x21` | RotateAccept | channel id (16) ‖ pymfp's 104-byte `RekeyAccept` (same layout, accepted step) | 121 |
//!
//! ChannelOpen's target: kind 1 is an agent id (32 bytes), kind 2 an agent name (length
//! u8 in 1..=64, then that many bytes of UTF-8).
//!
//! Reserved: `0x15`–`0x1f` for recovery, `0x22`–`0x2f` for more of MFP bilateral state
//! rotation; both are refused today.

use core::fmt;

use mfp_core::bilateral::RekeyMessage;

use crate::recovery::{REPORT_LEN, RecoveryReport, ReportError};
use mfp_core::{AgentId, ChannelId, ENVELOPE_HEADER_SIZE};
use zeroize::Zeroizing;

/// Type bytes.
pub mod kind {
    /// Data.
    pub const DATA: u8 = 0x01;
    /// Cumulative acknowledgement of one channel.
    pub const ACK: u8 = 0x02;
    /// Channel open request.
    pub const CHANNEL_OPEN: u8 = 0x03;
    /// Channel accepted.
    pub const CHANNEL_ACCEPT: u8 = 0x04;
    /// Channel refused.
    pub const CHANNEL_REFUSE: u8 = 0x05;
    /// Channel closed.
    pub const CHANNEL_CLOSE: u8 = 0x06;
    /// Keepalive probe.
    pub const PING: u8 = 0x07;
    /// Keepalive answer.
    pub const PONG: u8 = 0x08;
    /// Transport rekey.
    pub const REKEY: u8 = 0x09;
    /// Orderly close of the session.
    pub const CLOSE: u8 = 0x0a;
    /// ChannelConfirm.
    pub const CHANNEL_CONFIRM: u8 = 0x0b;
    /// A channel's bare positions (steps only).
    pub const POSITION: u8 = 0x10;
    /// A channel's recovery report (DETECT): a `RECOVERY`-flagged MFP1 envelope.
    pub const RECOVERY: u8 = 0x11;
    /// A request to reset a suspended channel's chains from a new secret.
    pub const CHANNEL_RESET: u8 = 0x12;
    /// The reset is done (and stored) on the sender's side.
    pub const CHANNEL_RESET_ACCEPT: u8 = 0x13;
    /// The receiver of a ChannelReset refuses it (the channel is unknown or closed there).
    pub const CHANNEL_RESET_REFUSE: u8 = 0x14;
    /// Types reserved for more of recovery.
    pub const RESERVED_RECOVERY: core::ops::RangeInclusive<u8> = 0x15..=0x1f;
    /// A request to rotate the sender's outbound chain of a channel.
    pub const ROTATE_REQUEST: u8 = 0x20;
    /// The rotation is accepted (and stored by the acceptor).
    pub const ROTATE_ACCEPT: u8 = 0x21;
    /// Types reserved for more of MFP state rotation.
    pub const RESERVED_ROTATION: core::ops::RangeInclusive<u8> = 0x22..=0x2f;
}

/// Longest agent name a [`Target::Name`] carries, in bytes.
pub const MAX_TARGET_NAME: usize = 64;
/// Target kind byte of an agent id.
const TARGET_ID: u8 = 1;
/// Target kind byte of an agent name.
const TARGET_NAME: u8 = 2;
/// Size of ChannelOpen up to and including the target kind byte.
const OPEN_FIXED: usize = 1 + 16 + 2 + 32 + 32 + 1;

/// Size of Data's fixed part: type, channel, envelope header.
pub const DATA_OVERHEAD: usize = 1 + 16 + ENVELOPE_HEADER_SIZE;

/// The agent a channel request asks for on the receiving runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An agent by id.
    Id(AgentId),
    /// An agent by name: 1 to [`MAX_TARGET_NAME`] bytes of UTF-8.
    Name(String),
}

impl Target {
    /// Whether the target can travel on the wire (a name of 1..=64 bytes).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        match self {
            Target::Id(_) => true,
            Target::Name(n) => (1..=MAX_TARGET_NAME).contains(&n.len()),
        }
    }
}

/// Why a channel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The target agent is unknown to the peer.
    UnknownAgent,
    /// The peer's channel limit for this link is reached.
    LimitReached,
    /// The peer's configuration does not allow it.
    NotAllowed,
    /// The proposed channel id is already in use with other parameters.
    Collision,
    /// The proposed frame depth is outside the peer's limits.
    BadDepth,
    /// A reason this version does not know.
    Other(u8),
}

impl RefuseReason {
    /// The reason byte.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            RefuseReason::UnknownAgent => 1,
            RefuseReason::LimitReached => 2,
            RefuseReason::NotAllowed => 3,
            RefuseReason::Collision => 4,
            RefuseReason::BadDepth => 5,
            RefuseReason::Other(b) => b,
        }
    }

    /// The reason for a byte.
    #[must_use]
    pub const fn from_byte(b: u8) -> Self {
        match b {
            1 => RefuseReason::UnknownAgent,
            2 => RefuseReason::LimitReached,
            3 => RefuseReason::NotAllowed,
            4 => RefuseReason::Collision,
            5 => RefuseReason::BadDepth,
            b => RefuseReason::Other(b),
        }
    }
}

/// Why a reset was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetRefusal {
    /// The peer has no such channel with this runtime (never had, or removed it).
    UnknownChannel,
    /// The channel is closed on the peer.
    Closed,
    /// The peer could not reset its side (its storage failed, it is shutting down): the
    /// reset may be asked again.
    Failed,
    /// The peer asked to reset the same channel at the same time, and its request wins
    /// (the smaller runtime id's does): this side resets with the peer's secret instead.
    Crossed,
    /// A reason this version does not know.
    Other(u8),
}

impl ResetRefusal {
    /// The reason byte.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            ResetRefusal::UnknownChannel => 1,
            ResetRefusal::Closed => 2,
            ResetRefusal::Failed => 3,
            ResetRefusal::Crossed => 4,
            ResetRefusal::Other(b) => b,
        }
    }

    /// The reason for a byte.
    #[must_use]
    pub const fn from_byte(b: u8) -> Self {
        match b {
            1 => ResetRefusal::UnknownChannel,
            2 => ResetRefusal::Closed,
            3 => ResetRefusal::Failed,
            4 => ResetRefusal::Crossed,
            b => ResetRefusal::Other(b),
        }
    }
}

impl fmt::Display for ResetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetRefusal::UnknownChannel => f.write_str("the peer has no such channel with this runtime"),
            ResetRefusal::Closed => f.write_str("the channel is closed on the peer"),
            ResetRefusal::Failed => f.write_str("the peer could not reset its side"),
            ResetRefusal::Crossed => f.write_str("the peer asked for a reset of the channel at the same time"),
            ResetRefusal::Other(b) => write!(f, "reason {b}"),
        }
    }
}

/// One control message. `Debug` shows a Data message's length, never its bytes, and
/// never a channel secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// A complete MFP1 wire message on a channel, sealed by the sending runtime.
    Data {
        /// The cross-runtime channel.
        channel: ChannelId,
        /// The MFP1 envelope and protocol message, as mfp-core builds them.
        wire: Vec<u8>,
    },
    /// Every data message of `channel` with a step below `next` is durable at the sender
    /// of this acknowledgement.
    Ack {
        /// The channel.
        channel: ChannelId,
        /// Cumulative: the next step expected.
        next: u64,
    },
    /// A request to open a channel.
    ChannelOpen {
        /// Channel id proposed by the opener.
        channel: ChannelId,
        /// Frame depth.
        depth: u16,
        /// The opener's local agent.
        opener: AgentId,
        /// 32 random bytes drawn by the opener: the channel's chains derive from them.
        secret: Zeroizing<[u8; 32]>,
        /// The agent asked for, on the receiving runtime.
        target: Target,
    },
    /// The channel is accepted.
    ChannelAccept {
        /// The channel.
        channel: ChannelId,
        /// The agent of the accepting runtime on the channel.
        acceptor: AgentId,
    },
    /// The channel is refused.
    ChannelRefuse(ChannelId, RefuseReason),
    /// The channel is closed.
    ChannelClose(ChannelId),
    /// The opener of an accepted channel stored it: the acceptor may send on it.
    ChannelConfirm(ChannelId),
    /// Keepalive probe.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// The sender switched its outgoing key to the next epoch after this message.
    Rekey(u64),
    /// The sender closes the session.
    Close(u8),
    /// The sender's positions on a channel (DETECT), sent after a (re)connect.
    Position {
        /// The channel.
        channel: ChannelId,
        /// The next step the sender expects to receive.
        rx_next: u64,
        /// The next step the sender will send.
        tx_next: u64,
    },
    /// The sender's recovery report on a channel (DETECT with state hashes).
    Recovery(RecoveryReport),
    /// The sender asks the receiver to reset the chains of
    /// `channel` from `secret` (the operator's reset; the sender derives as the opener).
    ChannelReset {
        /// The channel.
        channel: ChannelId,
        /// 32 random bytes: both chains derive from them as from a ChannelOpen's secret.
        secret: Zeroizing<[u8; 32]>,
    },
    /// The receiver of a ChannelReset has reset (and stored) its side.
    ChannelResetAccept(ChannelId),
    /// The receiver of a ChannelReset refuses it; nothing changed on its side.
    ChannelResetRefuse(ChannelId, ResetRefusal),
    /// The sender asks to rotate its outbound chain of `channel` (PROTOCOL §4.11).
    RotateRequest {
        /// The channel.
        channel: ChannelId,
        /// pymfp's `RekeyRequest`.
        message: RekeyMessage,
    },
    /// The sender accepted (and stored) the rotation the other side asked for.
    RotateAccept {
        /// The channel.
        channel: ChannelId,
        /// pymfp's `RekeyAccept`.
        message: RekeyMessage,
    },
}

/// Length of RotateRequest and RotateAccept.
const ROTATE_LEN: usize = 1 + 16 + RekeyMessage::LEN;

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Data { channel, wire } => {
                f.debug_struct("Data").field("channel", channel).field("wire_len", &wire.len()).finish()
            }
            Control::Ack { channel, next } => {
                f.debug_struct("Ack").field("channel", channel).field("next", next).finish()
            }
            Control::ChannelOpen { channel, depth, opener, target, secret: _ } => f
                .debug_struct("ChannelOpen")
                .field("channel", channel)
                .field("depth", depth)
                .field("opener", opener)
                .field("target", target)
                .finish_non_exhaustive(),
            Control::ChannelAccept { channel, acceptor } => {
                f.debug_struct("ChannelAccept").field("channel", channel).field("acceptor", acceptor).finish()
            }
            Control::ChannelRefuse(c, r) => f.debug_tuple("ChannelRefuse").field(c).field(r).finish(),
            Control::ChannelClose(c) => f.debug_tuple("ChannelClose").field(c).finish(),
            Control::ChannelConfirm(c) => f.debug_tuple("ChannelConfirm").field(c).finish(),
            Control::Ping(n) => f.debug_tuple("Ping").field(n).finish(),
            Control::Pong(n) => f.debug_tuple("Pong").field(n).finish(),
            Control::Rekey(n) => f.debug_tuple("Rekey").field(n).finish(),
            Control::Close(r) => f.debug_tuple("Close").field(r).finish(),
            Control::Position { channel, rx_next, tx_next } => f
                .debug_struct("Position")
                .field("channel", channel)
                .field("rx_next", rx_next)
                .field("tx_next", tx_next)
                .finish(),
            Control::Recovery(r) => f.debug_tuple("Recovery").field(r).finish(),
            Control::ChannelReset { channel, secret: _ } => {
                f.debug_struct("ChannelReset").field("channel", channel).finish_non_exhaustive()
            }
            Control::ChannelResetAccept(c) => f.debug_tuple("ChannelResetAccept").field(c).finish(),
            Control::ChannelResetRefuse(c, r) => f.debug_tuple("ChannelResetRefuse").field(c).field(r).finish(),
            Control::RotateRequest { channel, message } => {
                f.debug_struct("RotateRequest").field("channel", channel).field("step", &message.step).finish()
            }
            Control::RotateAccept { channel, message } => {
                f.debug_struct("RotateAccept").field("channel", channel).field("step", &message.step).finish()
            }
        }
    }
}

/// Errors of parsing a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The message is empty.
    #[error("empty control message")]
    Empty,
    /// The type byte is unknown or reserved.
    #[error("unknown or reserved control message type {0:#04x}")]
    UnknownType(u8),
    /// The length does not fit the type's layout.
    #[error("control message of type {kind:#04x} has {len} bytes, which its layout does not allow")]
    Length {
        /// The type byte.
        kind: u8,
        /// The length.
        len: usize,
    },
    /// A channel request's target is not an agent id or a name of 1..=64 bytes of UTF-8.
    #[error("channel request with a malformed target (kind {0})")]
    Target(u8),
    /// A recovery report that breaks its layout.
    #[error(transparent)]
    Recovery(#[from] ReportError),
}

fn channel_at(b: &[u8], at: usize) -> Option<ChannelId> {
    b.get(at..at + 16).and_then(|s| ChannelId::from_slice(s).ok())
}

fn agent_at(b: &[u8], at: usize) -> Option<AgentId> {
    b.get(at..at + 32).and_then(|s| AgentId::from_slice(s).ok())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)
}

impl Control {
    /// Encodes into `out` (cleared first). A [`Target::Name`] longer than 64 bytes is
    /// cut to its first 64 bytes (the session refuses such targets before they get here).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Control::Data { channel, wire } => {
                out.reserve(17 + wire.len());
                out.push(kind::DATA);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(wire);
            }
            Control::Ack { channel, next } => {
                out.push(kind::ACK);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&next.to_be_bytes());
            }
            Control::ChannelOpen { channel, depth, opener, secret, target } => {
                out.reserve(OPEN_FIXED + 1 + MAX_TARGET_NAME);
                out.push(kind::CHANNEL_OPEN);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&depth.to_be_bytes());
                out.extend_from_slice(opener.as_bytes());
                out.extend_from_slice(secret.as_ref());
                match target {
                    Target::Id(id) => {
                        out.push(TARGET_ID);
                        out.extend_from_slice(id.as_bytes());
                    }
                    Target::Name(name) => {
                        let bytes = name.as_bytes();
                        let bytes = bytes.get(..MAX_TARGET_NAME).unwrap_or(bytes);
                        out.push(TARGET_NAME);
                        out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                        out.extend_from_slice(bytes);
                    }
                }
            }
            Control::ChannelAccept { channel, acceptor } => {
                out.push(kind::CHANNEL_ACCEPT);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(acceptor.as_bytes());
            }
            Control::ChannelRefuse(c, r) => {
                out.push(kind::CHANNEL_REFUSE);
                out.extend_from_slice(c.as_bytes());
                out.push(r.to_byte());
            }
            Control::ChannelClose(c) => {
                out.push(kind::CHANNEL_CLOSE);
                out.extend_from_slice(c.as_bytes());
            }
            Control::ChannelConfirm(c) => {
                out.push(kind::CHANNEL_CONFIRM);
                out.extend_from_slice(c.as_bytes());
            }
            Control::Ping(n) => {
                out.push(kind::PING);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::Pong(n) => {
                out.push(kind::PONG);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::Rekey(n) => {
                out.push(kind::REKEY);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::Close(r) => {
                out.push(kind::CLOSE);
                out.push(*r);
            }
            Control::Position { channel, rx_next, tx_next } => {
                out.push(kind::POSITION);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&rx_next.to_be_bytes());
                out.extend_from_slice(&tx_next.to_be_bytes());
            }
            Control::Recovery(r) => {
                out.push(kind::RECOVERY);
                out.extend_from_slice(&r.to_bytes());
            }
            Control::ChannelReset { channel, secret } => {
                out.push(kind::CHANNEL_RESET);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(secret.as_ref());
            }
            Control::ChannelResetAccept(c) => {
                out.push(kind::CHANNEL_RESET_ACCEPT);
                out.extend_from_slice(c.as_bytes());
            }
            Control::ChannelResetRefuse(c, r) => {
                out.push(kind::CHANNEL_RESET_REFUSE);
                out.extend_from_slice(c.as_bytes());
                out.push(r.to_byte());
            }
            Control::RotateRequest { channel, message } | Control::RotateAccept { channel, message } => {
                out.push(if matches!(self, Control::RotateRequest { .. }) {
                    kind::ROTATE_REQUEST
                } else {
                    kind::ROTATE_ACCEPT
                });
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&message.to_bytes());
            }
        }
    }

    /// Encodes into a new buffer.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The encoded length, without encoding.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Control::Data { wire, .. } => 17 + wire.len(),
            Control::Ack { .. } => 25,
            Control::ChannelOpen { target: Target::Id(_), .. } => OPEN_FIXED + 32,
            Control::ChannelOpen { target: Target::Name(n), .. } => OPEN_FIXED + 1 + n.len().min(MAX_TARGET_NAME),
            Control::ChannelAccept { .. } => 49,
            Control::ChannelRefuse(..) => 18,
            Control::ChannelClose(_) | Control::ChannelConfirm(_) => 17,
            Control::Ping(_) | Control::Pong(_) | Control::Rekey(_) => 9,
            Control::Close(_) => 2,
            Control::Position { .. } => 33,
            Control::Recovery(_) => 1 + REPORT_LEN,
            Control::ChannelReset { .. } => 49,
            Control::ChannelResetAccept(_) => 17,
            Control::ChannelResetRefuse(..) => 18,
            Control::RotateRequest { .. } | Control::RotateAccept { .. } => ROTATE_LEN,
        }
    }

    /// Parses one control message; the whole input must be exactly one message.
    pub fn parse(b: &[u8]) -> Result<Self, ControlError> {
        let &t = b.first().ok_or(ControlError::Empty)?;
        let len = b.len();
        let exact = |n: usize| if len == n { Ok(()) } else { Err(ControlError::Length { kind: t, len }) };
        let bad = ControlError::Length { kind: t, len };
        let msg = match t {
            kind::DATA => {
                if len < DATA_OVERHEAD {
                    return Err(bad);
                }
                Control::Data { channel: channel_at(b, 1).ok_or(bad)?, wire: b.get(17..).ok_or(bad)?.to_vec() }
            }
            kind::ACK => {
                exact(25)?;
                Control::Ack { channel: channel_at(b, 1).ok_or(bad)?, next: u64_at(b, 17).ok_or(bad)? }
            }
            kind::PING | kind::PONG | kind::REKEY => {
                exact(9)?;
                let n = u64_at(b, 1).ok_or(bad)?;
                match t {
                    kind::PING => Control::Ping(n),
                    kind::PONG => Control::Pong(n),
                    _ => Control::Rekey(n),
                }
            }
            kind::CHANNEL_OPEN => Self::parse_open(b)?,
            kind::CHANNEL_ACCEPT => {
                exact(49)?;
                Control::ChannelAccept { channel: channel_at(b, 1).ok_or(bad)?, acceptor: agent_at(b, 17).ok_or(bad)? }
            }
            kind::CHANNEL_CLOSE => {
                exact(17)?;
                Control::ChannelClose(channel_at(b, 1).ok_or(bad)?)
            }
            kind::CHANNEL_CONFIRM => {
                exact(17)?;
                Control::ChannelConfirm(channel_at(b, 1).ok_or(bad)?)
            }
            kind::CHANNEL_REFUSE => {
                exact(18)?;
                Control::ChannelRefuse(channel_at(b, 1).ok_or(bad)?, RefuseReason::from_byte(*b.get(17).ok_or(bad)?))
            }
            kind::CLOSE => {
                exact(2)?;
                Control::Close(*b.get(1).ok_or(bad)?)
            }
            kind::POSITION => {
                exact(33)?;
                Control::Position {
                    channel: channel_at(b, 1).ok_or(bad)?,
                    rx_next: u64_at(b, 17).ok_or(bad)?,
                    tx_next: u64_at(b, 25).ok_or(bad)?,
                }
            }
            kind::RECOVERY => {
                exact(1 + REPORT_LEN)?;
                Control::Recovery(RecoveryReport::parse(b.get(1..).ok_or(bad)?)?)
            }
            kind::CHANNEL_RESET => {
                exact(49)?;
                let channel = channel_at(b, 1).ok_or(bad)?;
                let mut secret = Zeroizing::new([0u8; 32]);
                secret.copy_from_slice(b.get(17..49).ok_or(bad)?);
                Control::ChannelReset { channel, secret }
            }
            kind::CHANNEL_RESET_ACCEPT => {
                exact(17)?;
                Control::ChannelResetAccept(channel_at(b, 1).ok_or(bad)?)
            }
            kind::CHANNEL_RESET_REFUSE => {
                exact(18)?;
                Control::ChannelResetRefuse(
                    channel_at(b, 1).ok_or(bad)?,
                    ResetRefusal::from_byte(*b.get(17).ok_or(bad)?),
                )
            }
            kind::ROTATE_REQUEST | kind::ROTATE_ACCEPT => {
                exact(ROTATE_LEN)?;
                let channel = channel_at(b, 1).ok_or(bad)?;
                let message = RekeyMessage::from_bytes(b.get(17..).ok_or(bad)?).map_err(|_| bad)?;
                if t == kind::ROTATE_REQUEST {
                    Control::RotateRequest { channel, message }
                } else {
                    Control::RotateAccept { channel, message }
                }
            }
            other => return Err(ControlError::UnknownType(other)),
        };
        Ok(msg)
    }

    fn parse_open(b: &[u8]) -> Result<Self, ControlError> {
        let len = b.len();
        let bad = ControlError::Length { kind: kind::CHANNEL_OPEN, len };
        if len < OPEN_FIXED {
            return Err(bad);
        }
        let channel = channel_at(b, 1).ok_or(bad)?;
        let depth = b.get(17..19).and_then(|s| s.try_into().ok()).map(u16::from_be_bytes).ok_or(bad)?;
        let opener = agent_at(b, 19).ok_or(bad)?;
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(b.get(51..83).ok_or(bad)?);
        let target_kind = *b.get(83).ok_or(bad)?;
        let rest = b.get(OPEN_FIXED..).ok_or(bad)?;
        let target = match target_kind {
            TARGET_ID => {
                if rest.len() != 32 {
                    return Err(bad);
                }
                Target::Id(AgentId::from_slice(rest).map_err(|_| bad)?)
            }
            TARGET_NAME => {
                let (&n, name) = rest.split_first().ok_or(bad)?;
                if !(1..=MAX_TARGET_NAME).contains(&usize::from(n)) {
                    return Err(ControlError::Target(target_kind));
                }
                if name.len() != usize::from(n) {
                    return Err(bad);
                }
                let name = core::str::from_utf8(name).map_err(|_| ControlError::Target(target_kind))?;
                Target::Name(name.to_owned())
            }
            other => return Err(ControlError::Target(other)),
        };
        Ok(Control::ChannelOpen { channel, depth, opener, secret, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(b: u8) -> ChannelId {
        ChannelId::from_bytes([b; 16])
    }

    fn rekey(step: u64) -> RekeyMessage {
        RekeyMessage {
            sender: mfp_core::RuntimeId::from_bytes([1; 32]),
            receiver: mfp_core::RuntimeId::from_bytes([2; 32]),
            ephemeral_public: [3; 32],
            step,
        }
    }

    fn recovery_report() -> RecoveryReport {
        use crate::recovery::ChainPoint;
        RecoveryReport::new(
            ch(4),
            &mfp_core::RuntimeId::from_bytes([1; 32]),
            crate::recovery::ANSWER_REQUESTED,
            ChainPoint { step: 9, hash: [2; 32] },
            3,
            ChainPoint { step: 7, hash: [3; 32] },
            [4; 32],
        )
    }

    #[test]
    fn a_recovery_message_is_its_type_then_a_recovery_flagged_envelope() {
        let r = recovery_report();
        let bytes = Control::Recovery(r).encode();
        assert_eq!(bytes[0], kind::RECOVERY);
        let header = mfp_core::envelope::EnvelopeHeader::parse(&bytes[1..]).unwrap();
        assert_eq!(header.flags, mfp_core::envelope::EnvelopeFlags::RECOVERY);
        assert_eq!((header.channel_id, header.step, header.frame_depth), (ch(4), 9, 0));
        // Every length but 178 is refused before anything is read; a bad field is named.
        for n in 1..bytes.len() {
            assert!(
                matches!(Control::parse(&bytes[..n]), Err(ControlError::Length { kind: kind::RECOVERY, .. })),
                "{n}"
            );
        }
        let mut bad = bytes.clone();
        bad[8] = 3;
        assert_eq!(Control::parse(&bad), Err(ControlError::Recovery(ReportError::Flags(3))));
        let shown = format!("{:?}", Control::ChannelReset { channel: ch(1), secret: Zeroizing::new([0x5e; 32]) });
        assert!(!shown.contains("94") && !shown.contains("5e"), "{shown}");
    }

    #[test]
    fn rotation_messages_carry_pymfps_rekey_layout() {
        let msg = rekey(42);
        let bytes = Control::RotateRequest { channel: ch(9), message: msg }.encode();
        assert_eq!(bytes[0], kind::ROTATE_REQUEST);
        assert_eq!(&bytes[1..17], &[9; 16]);
        assert_eq!(&bytes[17..], &msg.to_bytes()[..], "pymfp's 104 bytes, unchanged");
    }

    fn open(target: Target) -> Control {
        Control::ChannelOpen {
            channel: ch(2),
            depth: 4,
            opener: AgentId::from_bytes([1; 32]),
            secret: Zeroizing::new([0x5e; 32]),
            target,
        }
    }

    #[test]
    fn layouts_have_documented_lengths() {
        let a = AgentId::from_bytes([1; 32]);
        let cases: Vec<(Control, usize)> = vec![
            (Control::Data { channel: ch(1), wire: vec![0; 64] }, 81),
            (Control::Ack { channel: ch(1), next: 5 }, 25),
            (open(Target::Id(a)), 116),
            (open(Target::Name("x".into())), 86),
            (open(Target::Name("n".repeat(64))), 149),
            (Control::ChannelAccept { channel: ch(3), acceptor: a }, 49),
            (Control::ChannelRefuse(ch(3), RefuseReason::LimitReached), 18),
            (Control::ChannelClose(ch(3)), 17),
            (Control::ChannelConfirm(ch(3)), 17),
            (Control::Ping(1), 9),
            (Control::Pong(1), 9),
            (Control::Rekey(1), 9),
            (Control::Close(0), 2),
            (Control::Position { channel: ch(4), rx_next: 7, tx_next: 9 }, 33),
            (Control::Recovery(recovery_report()), 178),
            (Control::ChannelReset { channel: ch(6), secret: Zeroizing::new([0x5e; 32]) }, 49),
            (Control::ChannelResetAccept(ch(6)), 17),
            (Control::ChannelResetRefuse(ch(6), ResetRefusal::Closed), 18),
            (Control::RotateRequest { channel: ch(5), message: rekey(42) }, 121),
            (Control::RotateAccept { channel: ch(5), message: rekey(43) }, 121),
        ];
        for (msg, len) in cases {
            let bytes = msg.encode();
            assert_eq!(bytes.len(), len, "{msg:?}");
            assert_eq!(msg.encoded_len(), len, "{msg:?}");
            assert_eq!(Control::parse(&bytes).unwrap(), msg);
            // One byte less is refused (Data accepts any longer body, a name any length
            // its length byte announces).
            assert!(Control::parse(&bytes[..len - 1]).is_err(), "{msg:?}");
        }
        assert_eq!(Control::parse(&[0x15, 0]), Err(ControlError::UnknownType(0x15)));
        assert_eq!(Control::parse(&[0x1f]), Err(ControlError::UnknownType(0x1f)));
        assert_eq!(Control::parse(&[0x22]), Err(ControlError::UnknownType(0x22)));
        assert!(matches!(Control::parse(&[0x21]), Err(ControlError::Length { .. })));
        assert_eq!(Control::parse(&[]), Err(ControlError::Empty));
        assert_eq!(Control::parse(&[kind::ACK; 26]), Err(ControlError::Length { kind: kind::ACK, len: 26 }));
    }

    #[test]
    fn channel_open_targets_are_checked() {
        let mut id = open(Target::Id(AgentId::from_bytes([9; 32]))).encode();
        id.push(0);
        assert!(matches!(Control::parse(&id), Err(ControlError::Length { .. })), "one byte more");
        let name = open(Target::Name("agent".into())).encode();
        // Length byte 0 and above 64 are refused, and a length that does not match.
        for (n, expect_target_err) in [(0u8, true), (65, true), (6, false), (4, false)] {
            let mut b = name.clone();
            b[84] = n;
            let got = Control::parse(&b);
            assert!(got.is_err(), "length {n}");
            assert_eq!(matches!(got, Err(ControlError::Target(2))), expect_target_err, "length {n}: {got:?}");
        }
        // Invalid UTF-8.
        let mut b = name.clone();
        b[85] = 0xff;
        assert_eq!(Control::parse(&b), Err(ControlError::Target(2)));
        // Unknown target kinds.
        let mut b = name;
        b[83] = 3;
        assert_eq!(Control::parse(&b), Err(ControlError::Target(3)));
        assert!(!Target::Name(String::new()).is_valid());
        assert!(!Target::Name("é".repeat(33)).is_valid());
        assert!(Target::Name("é".repeat(32)).is_valid());
    }

    #[test]
    fn debug_shows_no_secret_and_no_data() {
        let shown = format!("{:?}", open(Target::Name("bob".into())));
        assert!(!shown.contains("94") && !shown.contains("5e"), "{shown}");
        let shown = format!("{:?}", Control::Data { channel: ch(1), wire: vec![0xab; 70] });
        assert!(shown.contains("wire_len: 70") && !shown.contains("171"), "{shown}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzzing::control(&bytes);
        }

        #[test]
        fn typed_prefixes_parse_or_fail_cleanly(t in 0u8..0x23, rest in proptest::collection::vec(any::<u8>(), 0..160)) {
            let mut bytes = vec![t];
            bytes.extend(rest);
            crate::fuzzing::control(&bytes);
        }

        #[test]
        fn channel_opens_round_trip(
            depth in any::<u16>(),
            secret in any::<[u8; 32]>(),
            name in "\\PC{1,16}",
            by_id in any::<bool>(),
        ) {
            let target = if by_id || name.len() > MAX_TARGET_NAME {
                Target::Id(AgentId::from_bytes([3; 32]))
            } else {
                Target::Name(name)
            };
            let msg = Control::ChannelOpen {
                channel: ch(7), depth, opener: AgentId::from_bytes([2; 32]), secret: Zeroizing::new(secret), target,
            };
            let bytes = msg.encode();
            prop_assert_eq!(Control::parse(&bytes).unwrap(), msg);
            crate::fuzzing::control(&bytes);
        }
    }
}
