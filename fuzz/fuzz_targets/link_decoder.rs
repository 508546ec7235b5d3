//! Arbitrary bytes to the link decoder, whole and in chunks: no panic, same frames either way, bodies within the limit.
//! The body lives in `mfp_federation::fuzzing`, where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::link_decoder(data));
