//! Control messages: the plaintext of every Noise transport message.
//!
//! One type byte, then a fixed layout per type (integers big-endian). A message must have
//! exactly its layout's length (Data: at least its fixed part); anything else is rejected.
//!
//! | type | name | layout after the type byte | length |
//! |---|---|---|---|
//! | `0x01` | Data | channel id (16) ‖ step u64 ‖ MFP1 envelope (64) ‖ body | ≥ 89 |
//! | `0x02` | Ack | received u64 (cumulative count of data messages received) | 9 |
//! | `0x03` | ChannelOpen | channel id (16) ‖ depth u16 ‖ opener agent (32) ‖ target agent (32) | 83 |
//! | `0x04` | ChannelAccept | channel id (16) | 17 |
//! | `0x05` | ChannelRefuse | channel id (16) ‖ reason u8 | 18 |
//! | `0x06` | ChannelClose | channel id (16) | 17 |
//! | `0x07` | Ping | nonce u64 | 9 |
//! | `0x08` | Pong | nonce u64 | 9 |
//! | `0x09` | Rekey | epoch u64 (the sender's new outgoing key epoch) | 9 |
//! | `0x0a` | Close | reason u8 | 2 |
//!
//! Reserved: `0x10`–`0x1f` for recovery (DETECT / NEGOTIATE / RESYNC), `0x20`–`0x2f` for
//! MFP bilateral state rotation; both are refused today.

use mfp_core::{AgentId, ChannelId, ENVELOPE_HEADER_SIZE};

/// Type bytes.
pub mod kind {
    /// Data.
    pub const DATA: u8 = 0x01;
    /// Cumulative acknowledgement.
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
    /// First type reserved for recovery.
    pub const RESERVED_RECOVERY: core::ops::RangeInclusive<u8> = 0x10..=0x1f;
    /// Types reserved for MFP state rotation.
    pub const RESERVED_ROTATION: core::ops::RangeInclusive<u8> = 0x20..=0x2f;
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

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A data message sealed with the sender's direction chain.
    Data {
        /// The cross-runtime channel.
        channel: ChannelId,
        /// The sender's chain step for this message.
        step: u64,
        /// The MFP1 envelope and protocol message, as mfp-core builds them.
        wire: Vec<u8>,
    },
    /// Cumulative count of data messages received from the other side.
    Ack(u64),
    /// A request to open a channel.
    ChannelOpen {
        /// Channel id proposed by the opener.
        channel: ChannelId,
        /// Frame depth.
        depth: u16,
        /// The opener's local agent.
        opener: AgentId,
        /// The agent asked for, on the receiving runtime.
        target: AgentId,
    },
    /// The channel is accepted.
    ChannelAccept(ChannelId),
    /// The channel is refused.
    ChannelRefuse(ChannelId, RefuseReason),
    /// The channel is closed.
    ChannelClose(ChannelId),
    /// Keepalive probe.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// The sender switched its outgoing key to the next epoch after this message.
    Rekey(u64),
    /// The sender closes the session.
    Close(u8),
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
}

/// Size of Data's fixed part: type, channel, step, envelope header.
pub const DATA_OVERHEAD: usize = 1 + 16 + 8 + ENVELOPE_HEADER_SIZE;

fn channel_at(b: &[u8], at: usize) -> Option<ChannelId> {
    b.get(at..at + 16).and_then(|s| ChannelId::from_slice(s).ok())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)
}

impl Control {
    /// Encodes into `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Control::Data { channel, step, wire } => {
                out.reserve(25 + wire.len());
                out.push(kind::DATA);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&step.to_be_bytes());
                out.extend_from_slice(wire);
            }
            Control::Ack(n) => {
                out.push(kind::ACK);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::ChannelOpen { channel, depth, opener, target } => {
                out.push(kind::CHANNEL_OPEN);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(&depth.to_be_bytes());
                out.extend_from_slice(opener.as_bytes());
                out.extend_from_slice(target.as_bytes());
            }
            Control::ChannelAccept(c) => {
                out.push(kind::CHANNEL_ACCEPT);
                out.extend_from_slice(c.as_bytes());
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
        }
    }

    /// Encodes into a new buffer.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
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
                Control::Data {
                    channel: channel_at(b, 1).ok_or(bad)?,
                    step: u64_at(b, 17).ok_or(bad)?,
                    wire: b.get(25..).ok_or(bad)?.to_vec(),
                }
            }
            kind::ACK | kind::PING | kind::PONG | kind::REKEY => {
                exact(9)?;
                let n = u64_at(b, 1).ok_or(bad)?;
                match t {
                    kind::ACK => Control::Ack(n),
                    kind::PING => Control::Ping(n),
                    kind::PONG => Control::Pong(n),
                    _ => Control::Rekey(n),
                }
            }
            kind::CHANNEL_OPEN => {
                exact(83)?;
                let depth = b.get(17..19).and_then(|s| s.try_into().ok()).map(u16::from_be_bytes).ok_or(bad)?;
                Control::ChannelOpen {
                    channel: channel_at(b, 1).ok_or(bad)?,
                    depth,
                    opener: b.get(19..51).and_then(|s| AgentId::from_slice(s).ok()).ok_or(bad)?,
                    target: b.get(51..83).and_then(|s| AgentId::from_slice(s).ok()).ok_or(bad)?,
                }
            }
            kind::CHANNEL_ACCEPT | kind::CHANNEL_CLOSE => {
                exact(17)?;
                let c = channel_at(b, 1).ok_or(bad)?;
                if t == kind::CHANNEL_ACCEPT { Control::ChannelAccept(c) } else { Control::ChannelClose(c) }
            }
            kind::CHANNEL_REFUSE => {
                exact(18)?;
                Control::ChannelRefuse(channel_at(b, 1).ok_or(bad)?, RefuseReason::from_byte(*b.get(17).ok_or(bad)?))
            }
            kind::CLOSE => {
                exact(2)?;
                Control::Close(*b.get(1).ok_or(bad)?)
            }
            other => return Err(ControlError::UnknownType(other)),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(b: u8) -> ChannelId {
        ChannelId::from_bytes([b; 16])
    }

    #[test]
    fn layouts_have_documented_lengths() {
        let a = AgentId::from_bytes([1; 32]);
        let cases: Vec<(Control, usize)> = vec![
            (Control::Data { channel: ch(1), step: 2, wire: vec![0; 64] }, 89),
            (Control::Ack(5), 9),
            (Control::ChannelOpen { channel: ch(2), depth: 4, opener: a, target: a }, 83),
            (Control::ChannelAccept(ch(3)), 17),
            (Control::ChannelRefuse(ch(3), RefuseReason::LimitReached), 18),
            (Control::ChannelClose(ch(3)), 17),
            (Control::Ping(1), 9),
            (Control::Pong(1), 9),
            (Control::Rekey(1), 9),
            (Control::Close(0), 2),
        ];
        for (msg, len) in cases {
            let bytes = msg.encode();
            assert_eq!(bytes.len(), len, "{msg:?}");
            assert_eq!(Control::parse(&bytes).unwrap(), msg);
            // One byte more or less is refused (Data accepts any longer body).
            assert!(Control::parse(&bytes[..len - 1]).is_err(), "{msg:?}");
        }
        assert_eq!(Control::parse(&[0x10, 0]), Err(ControlError::UnknownType(0x10)));
        assert_eq!(Control::parse(&[0x21]), Err(ControlError::UnknownType(0x21)));
        assert_eq!(Control::parse(&[]), Err(ControlError::Empty));
        assert_eq!(Control::parse(&[kind::ACK; 10]), Err(ControlError::Length { kind: kind::ACK, len: 10 }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzzing::control(&bytes);
        }

        #[test]
        fn typed_prefixes_round_trip(t in 0u8..12, rest in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut bytes = vec![t];
            bytes.extend(rest);
            crate::fuzzing::control(&bytes);
        }
    }
}
