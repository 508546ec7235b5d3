//! Protocol messages: `M = frame_open ‖ E(P) ‖ frame_close`.
//!
//! A message carries no length field of its own; its frame depth comes from the channel
//! (or, on the wire, from the envelope), so the middle part is `E(P)`.

use crate::ChannelId;
use crate::{BLOCK_SIZE, Error, Frame, State, TAG_SIZE, encoding, frame::check_depth};

/// Length of a protocol message for depth `k` and a plaintext of `payload_len` bytes:
/// `32·k + payload_len + 16`. `None` on overflow.
#[must_use]
pub fn message_len(depth: usize, payload_len: usize) -> Option<usize> {
    depth.checked_mul(2 * BLOCK_SIZE)?.checked_add(payload_len)?.checked_add(TAG_SIZE)
}

/// Builds the complete protocol message for `payload`, encrypting it directly inside the
/// output buffer (one copy of the payload).
pub fn assemble(
    frame: &Frame,
    local: &State,
    channel: &ChannelId,
    step: u64,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    assemble_keyed(frame, &crate::crypto::HmacKey::new(local.expose()), channel, step, payload)
}

/// [`assemble`] with `Sl` keyed already.
pub(crate) fn assemble_keyed(
    frame: &Frame,
    local: &crate::crypto::HmacKey,
    channel: &ChannelId,
    step: u64,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let total = message_len(frame.depth(), payload.len())
        .ok_or(Error::PayloadTooLarge { len: payload.len(), max: encoding::MAX_ENCODABLE_PAYLOAD })?;
    let open = frame.as_bytes();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(open);
    out.extend_from_slice(payload);
    let start = open.len();
    let tag = encoding::encode_in_place_keyed(local, channel, step, out.get_mut(start..).unwrap_or_default())?;
    out.extend_from_slice(&tag);
    push_mirror(&mut out, open);
    Ok(out)
}

/// Builds a protocol message from a frame and an already-encoded payload.
#[must_use]
pub fn assemble_encoded(frame: &Frame, encoded: &[u8]) -> Vec<u8> {
    let open = frame.as_bytes();
    let mut out = Vec::with_capacity(2 * open.len() + encoded.len());
    out.extend_from_slice(open);
    out.extend_from_slice(encoded);
    push_mirror(&mut out, open);
    out
}

fn push_mirror(out: &mut Vec<u8>, open: &[u8]) {
    out.extend(open.iter().rev());
}

/// A parsed protocol message, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct MessageParts<'a> {
    open: &'a [u8],
    encoded: &'a [u8],
    close: &'a [u8],
}

impl<'a> MessageParts<'a> {
    /// The `frame_open` bytes.
    #[must_use]
    pub fn frame_open_bytes(&self) -> &'a [u8] {
        self.open
    }
    /// The `frame_close` bytes.
    #[must_use]
    pub fn frame_close_bytes(&self) -> &'a [u8] {
        self.close
    }
    /// `E(P)`: ciphertext and tag.
    #[must_use]
    pub fn encoded_payload(&self) -> &'a [u8] {
        self.encoded
    }
    /// `frame_open` as a [`Frame`] (copies).
    pub fn frame_open(&self) -> Result<Frame, Error> {
        Frame::from_bytes(self.open.to_vec())
    }
    /// `frame_close` as a [`Frame`] (copies).
    pub fn frame_close(&self) -> Result<Frame, Error> {
        Frame::from_bytes(self.close.to_vec())
    }
}

/// Splits a protocol message of known depth into its three parts.
///
/// Fails if the depth is out of range or the message is shorter than its two frames
/// plus a tag.
pub fn parse(bytes: &[u8], depth: usize) -> Result<MessageParts<'_>, Error> {
    check_depth(depth)?;
    let frame_len = depth * BLOCK_SIZE;
    let min = 2 * frame_len + TAG_SIZE;
    if bytes.len() < min {
        return Err(Error::MessageLength { expected: min, actual: bytes.len() });
    }
    let (open, rest) = bytes.split_at(frame_len);
    let (encoded, close) = rest.split_at(rest.len() - frame_len);
    Ok(MessageParts { open, encoded, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_parse_round_trip() {
        let frame = Frame::from_bytes((0u8..64).collect()).unwrap();
        let sl = State::from_bytes([1; 32]);
        let ch = ChannelId::from_bytes([2; 16]);
        let m = assemble(&frame, &sl, &ch, 9, b"payload").unwrap();
        assert_eq!(m.len(), message_len(4, 7).unwrap());
        let p = parse(&m, 4).unwrap();
        assert_eq!(p.frame_open().unwrap(), frame);
        assert_eq!(p.frame_close().unwrap(), frame.mirror());
        assert_eq!(encoding::decode(&sl, &ch, 9, p.encoded_payload()).unwrap(), b"payload");
        let e = encoding::encode(&sl, &ch, 9, b"payload").unwrap();
        assert_eq!(assemble_encoded(&frame, &e), m);
        assert!(parse(&m[..100], 4).is_err());
        assert!(parse(&m, 1).is_err());
    }
}
