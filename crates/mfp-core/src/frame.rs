//! Blocks, frames and the mirror.

use crate::crypto;
use core::fmt;

use crate::{BLOCK_SIZE, Error, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH};

/// One 16-byte frame block.
pub type Block = [u8; BLOCK_SIZE];

/// A frame: `k` blocks of 16 bytes, `MIN_FRAME_DEPTH ≤ k ≤ MAX_FRAME_DEPTH`.
///
/// Stored as its `16·k` contiguous bytes, which is what the ratchet hashes and what goes
/// on the wire. `Debug` shows only the depth.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Vec<u8>,
}

/// Checks `MIN_FRAME_DEPTH ≤ depth ≤ max` (and the protocol cap).
pub(crate) fn check_depth(depth: usize) -> Result<(), Error> {
    if depth < MIN_FRAME_DEPTH {
        return Err(Error::FrameDepthTooSmall(depth));
    }
    if depth > MAX_FRAME_DEPTH {
        return Err(Error::FrameDepthTooLarge { depth, max: MAX_FRAME_DEPTH });
    }
    Ok(())
}

impl Frame {
    /// Builds a frame from its bytes; the length must be `16·k` for a valid depth `k`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, Error> {
        if !bytes.len().is_multiple_of(BLOCK_SIZE) {
            return Err(Error::FrameLength(bytes.len()));
        }
        check_depth(bytes.len() / BLOCK_SIZE)?;
        Ok(Self { bytes })
    }

    /// Builds a frame from blocks.
    pub fn from_blocks(blocks: &[Block]) -> Result<Self, Error> {
        check_depth(blocks.len())?;
        Ok(Self { bytes: blocks.concat() })
    }

    /// Frame depth `k` (number of blocks).
    #[must_use]
    pub fn depth(&self) -> usize {
        self.bytes.len() / BLOCK_SIZE
    }

    /// The `16·k` frame bytes `B1 ‖ … ‖ Bk`.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Consumes the frame, returning its bytes.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The blocks in order.
    pub fn blocks(&self) -> impl ExactSizeIterator<Item = &Block> + '_ {
        self.bytes.as_chunks::<BLOCK_SIZE>().0.iter()
    }

    /// The mirror: blocks in reverse order, each block's bytes reversed — equivalently the
    /// byte-reversal of the whole frame.
    #[must_use]
    pub fn mirror(&self) -> Frame {
        let mut bytes = self.bytes.clone();
        bytes.reverse();
        Frame { bytes }
    }

    /// Validates a received `(frame_open, frame_close)` pair against the frame the
    /// receiver expects: `frame_close` must be the mirror of `frame_open` and
    /// `frame_open` must equal `expected`.
    ///
    /// Both comparisons run in constant time and are combined before branching, so the
    /// timing reveals neither which check failed nor where (pymfp compares the mirror with
    /// ordinary equality).
    pub fn validate(open: &Frame, close: &Frame, expected: &Frame) -> Result<(), Error> {
        Self::validate_bytes(open.as_bytes(), close.as_bytes(), expected)
    }

    /// [`Frame::validate`] on raw frame bytes, as found inside a protocol message.
    pub fn validate_bytes(open: &[u8], close: &[u8], expected: &Frame) -> Result<(), Error> {
        let n = expected.bytes.len();
        if open.len() != n || close.len() != n {
            return Err(Error::FrameValidation);
        }
        let mirrored = crypto::xor_or(close.iter().copied().zip(open.iter().rev().copied()));
        let matches = crypto::xor_or(open.iter().copied().zip(expected.as_bytes().iter().copied()));
        if bool::from(crypto::ct_zero(mirrored | matches)) { Ok(()) } else { Err(Error::FrameValidation) }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame(depth={})", self.depth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(depth: usize, seed: u8) -> Frame {
        let bytes = (0..depth * 16).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        Frame::from_bytes(bytes).unwrap()
    }

    #[test]
    fn depth_limits() {
        assert_eq!(Frame::from_bytes(vec![0; 16]), Err(Error::FrameDepthTooSmall(1)));
        assert_eq!(Frame::from_bytes(vec![0; 17]), Err(Error::FrameLength(17)));
        assert!(Frame::from_bytes(vec![0; 32]).is_ok());
        assert!(Frame::from_bytes(vec![0; 16 * MAX_FRAME_DEPTH]).is_ok());
        assert_eq!(
            Frame::from_bytes(vec![0; 16 * (MAX_FRAME_DEPTH + 1)]),
            Err(Error::FrameDepthTooLarge { depth: MAX_FRAME_DEPTH + 1, max: MAX_FRAME_DEPTH })
        );
    }

    #[test]
    fn mirror_reverses_blocks_and_bytes() {
        let f = frame(3, 1);
        let m = f.mirror();
        let fb: Vec<&Block> = f.blocks().collect();
        let mb: Vec<&Block> = m.blocks().collect();
        for i in 0..3 {
            let mut rev = *fb[2 - i];
            rev.reverse();
            assert_eq!(*mb[i], rev);
        }
        assert_eq!(m.mirror(), f);
    }

    #[test]
    fn validation_cases() {
        let f = frame(4, 9);
        let close = f.mirror();
        assert!(Frame::validate(&f, &close, &f).is_ok());
        // Close not a mirror.
        assert!(Frame::validate(&f, &f, &f).is_err());
        // Mirror ok but the wrong frame.
        let g = frame(4, 10);
        assert!(Frame::validate(&g, &g.mirror(), &f).is_err());
        // Depth differs from the expected frame.
        let h = frame(2, 9);
        assert!(Frame::validate(&h, &h.mirror(), &f).is_err());
    }
}
