//! Arbitrary bytes to an established session: no panic, nothing delivered.
//! The body lives in `mfp_federation::fuzzing`, where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::session_input(data));
