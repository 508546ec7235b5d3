//! Project automation for mfp.
//!
//! ```text
//! cargo xtask ci               fmt, vectors, clippy, tests, doc tests, docs, bench smoke — fail fast
//! cargo xtask vectors [FILE]   check the implementation against a vectors file
//! cargo xtask bench [--quick] [--vs-pymfp] [--runs N] [--scale-max N]
//!                              end-to-end benchmarks; report in target/bench/
//! ```
#![forbid(unsafe_code)]

mod bench;
mod ci;
mod smoke;
mod trace;
mod trace_cross;
mod vectors;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: cargo xtask <ci | vectors [FILE] | bench [--quick] [--vs-pymfp] [--runs N] [--scale-max N]>");
    ExitCode::from(2)
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The vectors computed by pymfp 1.0.0, kept in the repository (see `tests/vectors/README.md`).
pub(crate) fn repository_vectors() -> PathBuf {
    workspace_root().join("tests/vectors/pymfp-1.0.0.json")
}

/// The default vectors file: the repository's own, or `$MFP_VECTORS` when set.
pub(crate) fn default_vectors() -> PathBuf {
    match std::env::var_os("MFP_VECTORS") {
        Some(p) => PathBuf::from(p),
        None => repository_vectors(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("bench") => bench::run_bench(args.get(1..).unwrap_or_default()),
        Some("vectors") => {
            let path = args.get(1).map(PathBuf::from).unwrap_or_else(default_vectors);
            match vectors::run_file(&path) {
                Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("vectors: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
