//! Frame headers checked on the byte stream of an established connection, without
//! buffering any body: the transport refuses a frame above its configured limit from the
//! header alone, and knows when a frame is half-received (for the read timeout).

use crate::codec::{CodecError, FrameKind, HEADER_LEN, LINK_VERSION};

/// Tracks frame boundaries of a link stream.
#[derive(Debug)]
pub(super) struct FrameGate {
    max_body: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    remaining: usize,
}

impl FrameGate {
    /// A gate refusing bodies above `max_body` bytes.
    pub(super) fn new(max_body: usize) -> Self {
        Self { max_body, header: [0; HEADER_LEN], have: 0, remaining: 0 }
    }

    /// Follows `input` through the stream's frames. Returns whether a frame boundary was
    /// passed (or `input` began at one): then a frame still incomplete at the end of
    /// `input` started within it. Fails on the first header that is not a link frame
    /// header or that announces a body above the limit.
    pub(super) fn feed(&mut self, mut input: &[u8]) -> Result<bool, CodecError> {
        let mut boundary = !self.mid_frame();
        while !input.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(input.len());
                self.remaining -= k;
                input = input.get(k..).unwrap_or_default();
                boundary |= self.remaining == 0;
                continue;
            }
            let Some((&b, rest)) = input.split_first() else { break };
            input = rest;
            if let Some(slot) = self.header.get_mut(self.have) {
                *slot = b;
            }
            self.have += 1;
            if self.have < HEADER_LEN {
                continue;
            }
            self.have = 0;
            let [version, kind, hi, lo] = self.header;
            if version != LINK_VERSION {
                return Err(CodecError::Version(version));
            }
            if FrameKind::from_byte(kind).is_none() {
                return Err(CodecError::Kind(kind));
            }
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > self.max_body {
                return Err(CodecError::TooLong { len, max: self.max_body });
            }
            self.remaining = len;
            boundary |= len == 0;
        }
        Ok(boundary)
    }

    /// Whether part of a frame has been seen and the rest not yet.
    pub(super) fn mid_frame(&self) -> bool {
        self.have > 0 || self.remaining > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn follows_frames_split_anywhere() {
        let mut wire = Vec::new();
        codec::encode_into(FrameKind::Transport, &[7; 300], &mut wire).unwrap();
        codec::encode_into(FrameKind::Transport, &[], &mut wire).unwrap();
        codec::encode_into(FrameKind::Transport, &[1; 20], &mut wire).unwrap();
        for cut in 0..=wire.len() {
            let mut g = FrameGate::new(300);
            let (a, b) = wire.split_at(cut);
            g.feed(a).unwrap();
            let boundary = [0, 304, 308, wire.len()].contains(&cut);
            assert_eq!(g.mid_frame(), !boundary, "cut at {cut}");
            g.feed(b).unwrap();
            assert!(!g.mid_frame());
        }
    }

    #[test]
    fn refuses_from_the_header() {
        let mut g = FrameGate::new(100);
        assert_eq!(g.feed(&[1, 3, 0, 101]), Err(CodecError::TooLong { len: 101, max: 100 }));
        assert_eq!(FrameGate::new(100).feed(b"MFP1"), Err(CodecError::Version(b'M')));
        assert_eq!(FrameGate::new(100).feed(&[1, 0, 0, 0]), Err(CodecError::Kind(0)));
        let mut g = FrameGate::new(100);
        assert!(g.feed(&[1, 3, 0, 100]).unwrap());
        assert!(g.mid_frame());
    }

    #[test]
    fn says_when_the_incomplete_frame_started() {
        // Frames of 100 bytes read 60 bytes at a time: every read but the first and the
        // last ends inside a frame; a boundary is passed in each read except the third.
        let mut wire = Vec::new();
        for _ in 0..4 {
            codec::encode_into(FrameKind::Transport, &[0; 96], &mut wire).unwrap();
        }
        let mut g = FrameGate::new(100);
        let crossed: Vec<bool> = wire.chunks(60).map(|c| g.feed(c).unwrap()).collect();
        // Chunks end at 60, 120, 180, 240, 300, 360, 400; frames end at 100, 200, 300, 400.
        assert_eq!(crossed, [true, true, false, true, true, true, true]);
        assert!(!g.mid_frame());
        // A read inside one long frame passes no boundary.
        let mut g = FrameGate::new(1000);
        assert!(g.feed(&[1, 3, 0x03, 0xe8, 0, 0]).unwrap());
        assert!(!g.feed(&[0; 10]).unwrap());
        assert!(g.mid_frame());
    }
}
