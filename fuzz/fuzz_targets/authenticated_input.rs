//! Arbitrary control messages from a session's genuine peer (encrypted with its Noise
//! transport, so they pass authentication): no panic; only checked data and requests
//! reach the runtime. The body lives in `mfp_federation::fuzzing`, where a proptest runs
//! it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mfp_federation::fuzzing::authenticated_input(data);
});
