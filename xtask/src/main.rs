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
/// `cargo`, without what `cargo run` told this program about itself (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_*`, `CARGO_CRATE_NAME`, …). Build scripts watch some of these
/// (`ring`'s: `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …), so a build started from here with
/// them set would be redone by the next plain `cargo` command, and the other way round.
pub(crate) fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_about_this_program) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Whether `name` is one of the variables `cargo run` sets for the program it runs.
fn is_about_this_program(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || name.starts_with("CARGO_BIN_")
        || matches!(name, "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR")
}

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

#[cfg(test)]
mod tests {
    use super::is_about_this_program;

    #[test]
    fn only_what_cargo_run_sets_is_removed() {
        for gone in ["CARGO_PKG_NAME", "CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "OUT_DIR"] {
            assert!(is_about_this_program(gone), "{gone}");
        }
        for kept in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL", "RUSTFLAGS", "PATH"] {
            assert!(!is_about_this_program(kept), "{kept}");
        }
    }
}
