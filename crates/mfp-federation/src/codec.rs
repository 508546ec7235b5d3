//! The link codec: Noise messages framed on a byte stream.
//!
//! Every frame is a 4-byte header and a body:
//!
//! | offset | size | field | value |
//! |---|---|---|---|
//! | 0 | 1 | version | [`LINK_VERSION`] (1) |
//! | 1 | 1 | kind | 1 handshake initiation, 2 handshake response, 3 transport |
//! | 2 | 2 | body length | big-endian, at most the configured limit (≤ 65,535) |
//! | 4 | n | body | a Noise message (kind 1: preceded by two runtime ids) |
//!
//! The length is checked against the limit from the header alone, before any byte of the
//! body is buffered. The decoder holds at most one partial frame.

/// Version byte of every link frame.
pub const LINK_VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 4;
/// Largest body a frame can carry (Noise's maximum message size).
pub const MAX_BODY: usize = 65_535;

/// What a link frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Noise `IK` message 1, preceded by the initiator's and the responder's runtime ids.
    HandshakeInit,
    /// Noise `IK` message 2.
    HandshakeResponse,
    /// A Noise transport message (an encrypted control message).
    Transport,
}

impl FrameKind {
    /// The kind byte.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            FrameKind::HandshakeInit => 1,
            FrameKind::HandshakeResponse => 2,
            FrameKind::Transport => 3,
        }
    }

    /// The kind for a byte, if any.
    #[must_use]
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::HandshakeInit),
            2 => Some(FrameKind::HandshakeResponse),
            3 => Some(FrameKind::Transport),
            _ => None,
        }
    }
}

/// Errors of the link codec. Any of them means the stream can no longer be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The version byte is not [`LINK_VERSION`].
    #[error(
        "link frame has version {0}, expected 1 (peer runs an incompatible mfp-federation, or the stream is not an mfp link)"
    )]
    Version(u8),
    /// The kind byte is unknown.
    #[error("link frame has unknown kind {0}")]
    Kind(u8),
    /// The header announces a body above the limit.
    #[error("link frame announces {len} bytes, above the limit of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A body handed to the encoder is above the limit.
    #[error("link frame body of {len} bytes is above the limit of {max}")]
    BodyTooLong {
        /// Body length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFrame {
    /// What the body is.
    pub kind: FrameKind,
    /// The body.
    pub body: Vec<u8>,
}

/// Appends one frame to `out`.
pub fn encode_into(kind: FrameKind, body: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let len = u16::try_from(body.len()).map_err(|_| CodecError::BodyTooLong { len: body.len(), max: MAX_BODY })?;
    out.reserve(HEADER_LEN + body.len());
    out.push(LINK_VERSION);
    out.push(kind.to_byte());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// One frame as a new buffer.
pub fn encode(kind: FrameKind, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(kind, body, &mut out)?;
    Ok(out)
}

/// A streaming decoder: feed it chunks of any size, take whole frames out.
#[derive(Debug)]
pub struct Decoder {
    max_body: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The frame being read, once its header was accepted.
    current: Option<(FrameKind, Vec<u8>, usize)>,
    failed: Option<CodecError>,
}

impl Decoder {
    /// A decoder accepting bodies of at most `max_body` bytes (clamped to [`MAX_BODY`]).
    #[must_use]
    pub fn new(max_body: usize) -> Self {
        Self { max_body: max_body.min(MAX_BODY), header: [0; HEADER_LEN], header_len: 0, current: None, failed: None }
    }

    /// Whether the decoder holds part of a frame.
    #[must_use]
    pub fn has_partial(&self) -> bool {
        self.header_len > 0 || self.current.is_some()
    }

    /// Consumes bytes from the front of `input` until one frame is complete (returned) or
    /// `input` is empty (`None`). Call again while it returns frames. After an error every
    /// later call returns the same error.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<LinkFrame>, CodecError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        loop {
            if let Some((kind, body, want)) = self.current.as_mut() {
                let take = (*want - body.len()).min(input.len());
                let (now, rest) = input.split_at(take);
                body.extend_from_slice(now);
                *input = rest;
                if body.len() == *want {
                    let kind = *kind;
                    let body = core::mem::take(body);
                    self.current = None;
                    return Ok(Some(LinkFrame { kind, body }));
                }
                return Ok(None);
            }
            let Some((&b, rest)) = input.split_first() else { return Ok(None) };
            if let Some(slot) = self.header.get_mut(self.header_len) {
                *slot = b;
            }
            self.header_len += 1;
            *input = rest;
            if self.header_len < HEADER_LEN {
                continue;
            }
            self.header_len = 0;
            let [version, kind, hi, lo] = self.header;
            let result = if version != LINK_VERSION {
                Err(CodecError::Version(version))
            } else {
                match FrameKind::from_byte(kind) {
                    None => Err(CodecError::Kind(kind)),
                    Some(kind) => {
                        let len = usize::from(u16::from_be_bytes([hi, lo]));
                        if len > self.max_body {
                            Err(CodecError::TooLong { len, max: self.max_body })
                        } else {
                            Ok((kind, len))
                        }
                    }
                }
            };
            match result {
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
                Ok((kind, len)) => self.current = Some((kind, Vec::with_capacity(len), len)),
            }
        }
    }

    /// Decodes every whole frame in `input`, keeping a trailing partial frame buffered.
    pub fn decode_all(&mut self, mut input: &[u8]) -> Result<Vec<LinkFrame>, CodecError> {
        let mut out = Vec::new();
        while let Some(f) = self.decode(&mut input)? {
            out.push(f);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![Just(FrameKind::HandshakeInit), Just(FrameKind::HandshakeResponse), Just(FrameKind::Transport)]
    }

    #[test]
    fn header_length_checked_before_reading_body() {
        let mut d = Decoder::new(100);
        let mut input: &[u8] = &[1, 3, 0xff, 0xff];
        assert_eq!(d.decode(&mut input), Err(CodecError::TooLong { len: 65_535, max: 100 }));
        // Poisoned from then on.
        assert_eq!(d.decode(&mut &[1u8, 3, 0, 0][..]), Err(CodecError::TooLong { len: 65_535, max: 100 }));
        assert_eq!(Decoder::new(10).decode(&mut &[2u8, 3, 0, 0][..]), Err(CodecError::Version(2)));
        assert_eq!(Decoder::new(10).decode(&mut &[1u8, 9, 0, 0][..]), Err(CodecError::Kind(9)));
        assert!(matches!(encode(FrameKind::Transport, &[0; 65_536]), Err(CodecError::BodyTooLong { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000), max in 0usize..70_000) {
            let mut d = Decoder::new(max);
            let mut input = &bytes[..];
            let mut consumed_frames = 0usize;
            while let Ok(Some(f)) = d.decode(&mut input) {
                prop_assert!(f.body.len() <= max.min(MAX_BODY));
                consumed_frames += 1;
                prop_assert!(consumed_frames <= bytes.len() / HEADER_LEN);
            }
        }

        #[test]
        fn encode_decode_identity(frames in proptest::collection::vec((kind(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8)) {
            let mut wire = Vec::new();
            for (k, b) in &frames {
                encode_into(*k, b, &mut wire).unwrap();
            }
            let mut d = Decoder::new(MAX_BODY);
            let got = d.decode_all(&wire).unwrap();
            prop_assert!(!d.has_partial());
            let want: Vec<LinkFrame> = frames.into_iter().map(|(kind, body)| LinkFrame { kind, body }).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn split_at_every_position(frames in proptest::collection::vec((kind(), proptest::collection::vec(any::<u8>(), 0..40)), 1..4)) {
            let mut wire = Vec::new();
            for (k, b) in &frames {
                encode_into(*k, b, &mut wire).unwrap();
            }
            let want: Vec<LinkFrame> = frames.into_iter().map(|(kind, body)| LinkFrame { kind, body }).collect();
            for cut in 0..=wire.len() {
                let mut d = Decoder::new(MAX_BODY);
                let (a, b) = wire.split_at(cut);
                let mut got = d.decode_all(a).unwrap();
                got.extend(d.decode_all(b).unwrap());
                prop_assert_eq!(&got, &want);
                prop_assert!(!d.has_partial());
            }
            // One byte at a time.
            let mut d = Decoder::new(MAX_BODY);
            let mut got = Vec::new();
            for byte in &wire {
                got.extend(d.decode_all(std::slice::from_ref(byte)).unwrap());
            }
            prop_assert_eq!(got, want);
        }
    }
}
