//! Arbitrary bytes as an envelope header and as a whole wire message: never a panic, and
//! whatever is accepted obeys the limits and the length rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mfp_core::envelope::{EnvelopeHeader, EnvelopeLimits, parse_wire};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = EnvelopeHeader::parse(data) {
        assert_eq!(EnvelopeHeader::from_bytes(&h.to_bytes()), h);
        let _ = h.errors(&EnvelopeLimits::default());
        let _ = h.body_len();
    }
    for limits in [EnvelopeLimits::default(), EnvelopeLimits { max_frame_depth: 2, max_payload_len: 16 }] {
        if let Ok((h, body)) = parse_wire(data, &limits) {
            assert!(h.frame_depth <= limits.max_frame_depth && h.payload_len <= limits.max_payload_len);
            assert_eq!(body.len() as u64, h.body_len());
        }
    }
});
