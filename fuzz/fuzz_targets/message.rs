//! Arbitrary bytes as a protocol message of a depth taken from the first byte, as a frame,
//! and as an encoded payload: never a panic; any parse covers the input exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mfp_core::{ChannelId, Frame, State, encoding, message};

fuzz_target!(|data: &[u8]| {
    let Some((&depth, rest)) = data.split_first() else { return };
    if let Ok(p) = message::parse(rest, usize::from(depth)) {
        assert_eq!(
            p.frame_open_bytes().len() + p.encoded_payload().len() + p.frame_close_bytes().len(),
            rest.len()
        );
        let _ = p.frame_open().and_then(|o| p.frame_close().map(|c| Frame::validate(&o, &c, &o)));
    }
    let _ = Frame::from_bytes(rest.to_vec());
    assert!(encoding::decode(&State::from_bytes([7; 32]), &ChannelId::from_bytes([9; 16]), 3, rest).is_err());
});
