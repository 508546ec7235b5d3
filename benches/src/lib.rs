//! Criterion benches live in `benches/`; this library holds what the benchmark programs share.
#![forbid(unsafe_code)]

pub mod fed_common;
