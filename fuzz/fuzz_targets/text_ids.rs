//! Arbitrary text as identifiers and arbitrary bytes as rekey messages: never a panic, and a
//! parsed id prints back as lowercase hex of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mfp_core::bilateral::RekeyMessage;
use mfp_core::{AgentId, ChannelId};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<ChannelId>() {
            assert_eq!(id.to_string(), text.to_ascii_lowercase());
        }
        let _ = text.parse::<AgentId>();
    }
    if let Ok(m) = RekeyMessage::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }
});
