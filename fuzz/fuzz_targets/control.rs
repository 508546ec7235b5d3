//! Arbitrary bytes as a control message: no panic; whatever parses re-encodes to its input.
//! The body lives in `mfp_federation::fuzzing`, where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::control(data));
