//! The 64-byte `MFP1` envelope header and wire messages.
//!
//! ```text
//! offset size field
//!  0      4   magic "MFP1"
//!  4      2   version (u16be, 1)
//!  6      2   flags (u16be; bit0 ACK, bit1 RECOVERY)
//!  8      4   frame_depth k (u32be)
//! 12      4   payload_len = |E(P)| (u32be)
//! 16     16   channel_id
//! 32      8   step (u64be)
//! 40     16   sender_runtime (first 16 bytes of the sender's runtime id)
//! 56      8   reserved, zero
//! ```
//! A wire message is `header ‖ frame_open(16k) ‖ E(P)(payload_len) ‖ frame_close(16k)`.
//!
//! Decoding is split in two, so that a receiver reads 64 bytes, checks them against its
//! [`EnvelopeLimits`], and only then learns (and allocates) the body size:
//! [`EnvelopeHeader::from_bytes`] never fails and keeps every field as received;
//! [`EnvelopeHeader::validate`] applies the protocol rules and the caller's limits.

use crate::{
    BLOCK_SIZE, ChannelId, ENVELOPE_HEADER_SIZE, EnvelopeError, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, PROTOCOL_MAGIC,
    PROTOCOL_VERSION, RuntimeId, TAG_SIZE,
};

/// Envelope flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeFlags(pub u16);

impl EnvelopeFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// Acknowledgement (bit 0).
    pub const ACK: Self = Self(0x0001);
    /// Recovery (bit 1).
    pub const RECOVERY: Self = Self(0x0002);

    /// Whether every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Limits a receiver applies to headers before reading a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Largest frame depth accepted (at most [`MAX_FRAME_DEPTH`]).
    pub max_frame_depth: u32,
    /// Largest `payload_len` (`|E(P)|`, plaintext plus tag) accepted.
    pub max_payload_len: u32,
}

impl Default for EnvelopeLimits {
    /// Depth up to 32 (pymfp's declared maximum) and 1 MiB of plaintext plus the tag
    /// (pymfp's default `max_payload_size`).
    fn default() -> Self {
        Self { max_frame_depth: 32, max_payload_len: (1 << 20) + TAG_SIZE as u32 }
    }
}

/// A decoded envelope header; fields exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Magic bytes (`MFP1` when valid).
    pub magic: [u8; 4],
    /// Protocol version (1 when valid).
    pub version: u16,
    /// Flag bits (unknown bits are accepted, as by pymfp).
    pub flags: EnvelopeFlags,
    /// Frame depth `k`.
    pub frame_depth: u32,
    /// Length of `E(P)`.
    pub payload_len: u32,
    /// Channel id.
    pub channel_id: ChannelId,
    /// Sender's step for this message.
    pub step: u64,
    /// First 16 bytes of the sender's runtime id.
    pub sender_runtime: [u8; 16],
    /// Reserved bytes (zero when valid).
    pub reserved: [u8; 8],
}

impl EnvelopeHeader {
    /// A valid header with magic, version and reserved filled in.
    #[must_use]
    pub fn new(
        flags: EnvelopeFlags,
        frame_depth: u32,
        payload_len: u32,
        channel_id: ChannelId,
        step: u64,
        sender: &RuntimeId,
    ) -> Self {
        Self {
            magic: PROTOCOL_MAGIC,
            version: PROTOCOL_VERSION,
            flags,
            frame_depth,
            payload_len,
            channel_id,
            step,
            sender_runtime: sender.sender_field(),
            reserved: [0; 8],
        }
    }

    /// `sender_runtime` from arbitrary bytes as pymfp fills it: the first 16 bytes,
    /// right-padded with zeros when shorter.
    #[must_use]
    pub fn sender_field_from(bytes: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = *b;
        }
        out
    }

    /// The 64 header bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; ENVELOPE_HEADER_SIZE] {
        let mut out = [0u8; ENVELOPE_HEADER_SIZE];
        let mut w = Writer { buf: &mut out, pos: 0 };
        w.put(&self.magic);
        w.put(&self.version.to_be_bytes());
        w.put(&self.flags.0.to_be_bytes());
        w.put(&self.frame_depth.to_be_bytes());
        w.put(&self.payload_len.to_be_bytes());
        w.put(self.channel_id.as_bytes());
        w.put(&self.step.to_be_bytes());
        w.put(&self.sender_runtime);
        w.put(&self.reserved);
        out
    }

    /// Decodes 64 bytes without judging them (see [`EnvelopeHeader::validate`]).
    #[must_use]
    pub fn from_bytes(b: &[u8; ENVELOPE_HEADER_SIZE]) -> Self {
        let mut r = Reader { buf: b, pos: 0 };
        Self {
            magic: r.take(),
            version: u16::from_be_bytes(r.take()),
            flags: EnvelopeFlags(u16::from_be_bytes(r.take())),
            frame_depth: u32::from_be_bytes(r.take()),
            payload_len: u32::from_be_bytes(r.take()),
            channel_id: ChannelId::from_bytes(r.take()),
            step: u64::from_be_bytes(r.take()),
            sender_runtime: r.take(),
            reserved: r.take(),
        }
    }

    /// Decodes the first 64 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let head: &[u8; ENVELOPE_HEADER_SIZE] = bytes
            .get(..ENVELOPE_HEADER_SIZE)
            .and_then(|h| h.try_into().ok())
            .ok_or(EnvelopeError::Truncated(bytes.len()))?;
        Ok(Self::from_bytes(head))
    }

    /// The rules pymfp's `validate_envelope` applies, in its order: magic, version,
    /// reserved bytes, minimum depth. Empty = pymfp would accept the header.
    #[must_use]
    pub fn protocol_errors(&self) -> Vec<EnvelopeError> {
        let mut errs = Vec::new();
        self.push_protocol_errors(&mut errs);
        errs
    }

    fn push_protocol_errors(&self, errs: &mut Vec<EnvelopeError>) {
        if self.magic != PROTOCOL_MAGIC {
            errs.push(EnvelopeError::BadMagic);
        }
        if self.version != PROTOCOL_VERSION {
            errs.push(EnvelopeError::UnsupportedVersion(self.version));
        }
        if self.reserved != [0; 8] {
            errs.push(EnvelopeError::NonZeroReserved);
        }
        if (self.frame_depth as usize) < MIN_FRAME_DEPTH {
            errs.push(EnvelopeError::DepthTooSmall(self.frame_depth));
        }
    }

    /// Every rule this header breaks: pymfp's ([`EnvelopeHeader::protocol_errors`]),
    /// then the receiver's limits — maximum depth, and a payload length between the tag
    /// size and the limit (pymfp checks neither). Empty = valid.
    #[must_use]
    pub fn errors(&self, limits: &EnvelopeLimits) -> Vec<EnvelopeError> {
        let mut errs = Vec::new();
        self.push_protocol_errors(&mut errs);
        let max_depth = limits.max_frame_depth.min(MAX_FRAME_DEPTH as u32);
        if self.frame_depth > max_depth {
            errs.push(EnvelopeError::DepthTooLarge { depth: self.frame_depth, max: max_depth });
        }
        if (self.payload_len as usize) < TAG_SIZE {
            errs.push(EnvelopeError::PayloadTooShort(self.payload_len));
        } else if self.payload_len > limits.max_payload_len {
            errs.push(EnvelopeError::PayloadTooLarge { len: self.payload_len, max: limits.max_payload_len });
        }
        errs
    }

    /// Checks the header against the protocol rules and `limits`; the first failure.
    pub fn validate(&self, limits: &EnvelopeLimits) -> Result<(), EnvelopeError> {
        match self.errors(limits).into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Checks that `sender_runtime` names `expected` (first 16 bytes).
    pub fn check_sender(&self, expected: &RuntimeId) -> Result<(), EnvelopeError> {
        if crate::crypto::ct_eq(&self.sender_runtime, &expected.sender_field()) {
            Ok(())
        } else {
            Err(EnvelopeError::UnexpectedSender)
        }
    }

    /// Length of the body that follows this header: `2·16·k + payload_len`.
    /// Computed in 64-bit arithmetic, so it cannot overflow for any header.
    #[must_use]
    pub fn body_len(&self) -> u64 {
        2 * BLOCK_SIZE as u64 * u64::from(self.frame_depth) + u64::from(self.payload_len)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8; ENVELOPE_HEADER_SIZE],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

struct Reader<'a> {
    buf: &'a [u8; ENVELOPE_HEADER_SIZE],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
}

/// Builds a wire message `header ‖ message`.
///
/// The header's `frame_depth` and `payload_len` must describe `message`.
pub fn assemble_wire(header: &EnvelopeHeader, message: &[u8]) -> Result<Vec<u8>, crate::Error> {
    let expected = header.body_len();
    if expected != message.len() as u64 {
        return Err(EnvelopeError::BodyLength { expected: expected as usize, actual: message.len() }.into());
    }
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_SIZE + message.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// Parses a complete wire message held in one buffer: validates the header against
/// `limits`, then requires the body to have exactly the announced length.
///
/// Returns the header and the protocol message (`frame_open ‖ E(P) ‖ frame_close`).
pub fn parse_wire<'a>(bytes: &'a [u8], limits: &EnvelopeLimits) -> Result<(EnvelopeHeader, &'a [u8]), EnvelopeError> {
    let header = EnvelopeHeader::parse(bytes)?;
    header.validate(limits)?;
    let body = bytes.get(ENVELOPE_HEADER_SIZE..).unwrap_or_default();
    let expected = header.body_len();
    if body.len() as u64 != expected {
        return Err(EnvelopeError::BodyLength { expected: expected as usize, actual: body.len() });
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnvelopeHeader {
        EnvelopeHeader::new(
            EnvelopeFlags::NONE,
            4,
            18,
            ChannelId::from_bytes([0xa4; 16]),
            7,
            &RuntimeId::from_bytes([0x78; 32]),
        )
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(&b[..4], b"MFP1");
        assert_eq!(EnvelopeHeader::from_bytes(&b), h);
        assert_eq!(h.body_len(), 2 * 64 + 18);
        assert!(h.validate(&EnvelopeLimits::default()).is_ok());
    }

    #[test]
    fn limits_and_rules() {
        let lim = EnvelopeLimits { max_frame_depth: 8, max_payload_len: 100 };
        let mut h = sample();
        h.frame_depth = 9;
        assert_eq!(h.validate(&lim), Err(EnvelopeError::DepthTooLarge { depth: 9, max: 8 }));
        h.frame_depth = 1;
        assert_eq!(h.validate(&lim), Err(EnvelopeError::DepthTooSmall(1)));
        let mut h = sample();
        h.payload_len = 101;
        assert_eq!(h.validate(&lim), Err(EnvelopeError::PayloadTooLarge { len: 101, max: 100 }));
        h.payload_len = 15;
        assert_eq!(h.validate(&lim), Err(EnvelopeError::PayloadTooShort(15)));
        let mut h = sample();
        h.magic = *b"XFP1";
        h.version = 2;
        h.reserved[7] = 1;
        assert_eq!(
            h.errors(&lim),
            vec![EnvelopeError::BadMagic, EnvelopeError::UnsupportedVersion(2), EnvelopeError::NonZeroReserved]
        );
        let mut h = sample();
        h.flags = EnvelopeFlags(0xfffc);
        assert!(h.validate(&lim).is_ok());
    }

    #[test]
    fn wire_length_is_exact() {
        let h = sample();
        let body = vec![0u8; 146];
        let wire = assemble_wire(&h, &body).unwrap();
        assert_eq!(parse_wire(&wire, &EnvelopeLimits::default()).unwrap().1.len(), 146);
        let mut longer = wire.clone();
        longer.push(0);
        assert!(matches!(parse_wire(&longer, &EnvelopeLimits::default()), Err(EnvelopeError::BodyLength { .. })));
        assert!(matches!(parse_wire(&wire[..63], &EnvelopeLimits::default()), Err(EnvelopeError::Truncated(63))));
        assert!(assemble_wire(&h, &body[..10]).is_err());
    }

    #[test]
    fn sender_check() {
        let h = sample();
        assert!(h.check_sender(&RuntimeId::from_bytes([0x78; 32])).is_ok());
        assert_eq!(h.check_sender(&RuntimeId::from_bytes([0x79; 32])), Err(EnvelopeError::UnexpectedSender));
    }
}
