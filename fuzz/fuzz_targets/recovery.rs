//! Arbitrary bytes as a recovery report (a RECOVERY-flagged envelope), alone and as control
//! message 0x11: no panic; whatever parses re-encodes to its input and obeys the layout.
//! The body lives in `mfp_federation::fuzzing`, where a proptest runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mfp_federation::fuzzing::recovery(data));
