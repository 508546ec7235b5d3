//! Arbitrary wire bytes delivered to a bilateral receiver: they must be rejected (a forgery
//! that validates would need the bilateral state) and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mfp_core::RuntimeId;
use mfp_core::bilateral::BilateralState;
use mfp_core::envelope::{EnvelopeLimits, parse_wire};

fuzz_target!(|data: &[u8]| {
    let state = BilateralState::deterministic(&RuntimeId::from_bytes([1; 32]), &RuntimeId::from_bytes([2; 32]));
    let limits = EnvelopeLimits { max_frame_depth: 16, max_payload_len: 1 << 16 };
    if let Ok((h, body)) = parse_wire(data, &limits) {
        assert!(state.open_inbound(&h, body).is_err());
    }
});
