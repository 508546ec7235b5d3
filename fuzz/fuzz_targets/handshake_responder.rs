//! Arbitrary bytes as a link stream to a handshake responder, or as a mask over a genuine message 1: only the unmodified genuine message is accepted.
//! The body lives in `mfp_federation::fuzzing`, where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::handshake_responder(data));
