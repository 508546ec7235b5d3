//! Arbitrary bytes, or a mask over genuine wire messages, to the pymfp compat envelope stream,
//! whole and in chunks: no panic, same messages and error either way, every message within the
//! limits and of exactly its announced length. The body lives in `mfp_federation::fuzzing`,
//! where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::envelope_stream(data));
