//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure: format,
//! pymfp vectors, clippy, the tests, doc tests, docs, and a smoke run of the benchmark
//! programs.

use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::{default_vectors, vectors, workspace_root};

struct Step {
    name: &'static str,
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
}

fn step(name: &'static str, args: &[&'static str]) -> Step {
    Step { name, args: args.to_vec(), env: Vec::new() }
}

fn have_nextest() -> bool {
    crate::cargo().args(["nextest", "--version"]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// What a cold run writes under `target/` (debug builds of every test, three Python
/// venvs, the docs), with some room for the tests' own temporary databases.
const DISK_NEEDED_GIB: u64 = 6;

/// Free space, in KiB, of the file system holding `path`, as `df -Pk` reports it; `None`
/// when `df` is missing or says something else.
fn free_kib(path: &std::path::Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    // POSIX format: a header line, then "fs blocks used available capacity mount".
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

pub(crate) fn run() -> ExitCode {
    let root = workspace_root();
    let started = Instant::now();
    if let Some(kib) = free_kib(&root) {
        let gib = kib as f64 / (1024.0 * 1024.0);
        if kib < DISK_NEEDED_GIB * 1024 * 1024 {
            println!(
                "==> ci: warning: {gib:.1} GiB free on the file system of {}; a cold run writes about \
                 {DISK_NEEDED_GIB} GiB (builds, Python venvs, test databases): tests failing with \
                 \"No space left on device\" mean the disk is full, not that the code is wrong",
                root.display()
            );
        } else {
            println!("==> ci: {gib:.1} GiB free on the file system of {}", root.display());
        }
    }
    let mut timings: Vec<(&'static str, f64)> = Vec::new();
    // Every cargo step selects the same packages and features, so the dependency graph is
    // resolved once and each profile (check for clippy, test for the rest) is built once.
    let mut steps = vec![
        step("fmt", &["fmt", "--all", "--check"]),
        step(
            "clippy",
            &["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"],
        ),
    ];
    if have_nextest() {
        steps.push(step("tests", &["nextest", "run", "--workspace", "--all-features", "--locked", "--no-fail-fast"]));
    } else {
        steps.push(step("tests", &["test", "--workspace", "--all-features", "--locked", "--no-fail-fast"]));
    }
    steps.push(step("doc tests", &["test", "--workspace", "--all-features", "--doc", "--locked"]));
    let mut doc = step("docs", &["doc", "--workspace", "--all-features", "--no-deps", "--locked"]);
    doc.env.push(("RUSTDOCFLAGS", "-D warnings"));
    steps.push(doc);

    // + the vectors and the benchmark programs' smoke run.
    let total = steps.len() + 2;
    let mut passed = 0usize;
    for (i, s) in steps.iter().enumerate() {
        println!("==> ci: {} (cargo {})", s.name, s.args.join(" "));
        let t = Instant::now();
        let status = crate::cargo().args(&s.args).envs(s.env.iter().copied()).current_dir(&root).status();
        match status {
            Ok(st) if st.success() => {
                passed += 1;
                timings.push((s.name, t.elapsed().as_secs_f64()));
                println!("==> ci: {} ok ({:.1} s)", s.name, t.elapsed().as_secs_f64());
            }
            Ok(st) => return fail(s.name, &format!("exit status {st}"), passed, total, &timings),
            Err(e) => return fail(s.name, &format!("could not start cargo: {e}"), passed, total, &timings),
        }
        // The vectors are checked right after formatting: a clone missing its vectors file
        // fails in seconds, before anything is compiled.
        if i == 0 {
            let path = default_vectors();
            println!("==> ci: vectors ({})", path.display());
            let t = Instant::now();
            match vectors::run_file(&path) {
                Ok(summary) if summary.failed == 0 => {
                    passed += 1;
                    timings.push(("vectors", t.elapsed().as_secs_f64()));
                }
                Ok(summary) => {
                    return fail("vectors", &format!("{} checks failed", summary.failed), passed, total, &timings);
                }
                Err(e) => return fail("vectors", &e, passed, total, &timings),
            }
        }
    }
    // Last: the benchmark programs, which no test runs, for a handful of iterations each.
    println!("==> ci: bench smoke (mfp-bench --smoke, debug build)");
    let t = Instant::now();
    match crate::smoke::run_smoke(&root) {
        Ok(()) => {
            passed += 1;
            timings.push(("bench smoke", t.elapsed().as_secs_f64()));
        }
        Err(e) => return fail("bench smoke", &e, passed, total, &timings),
    }
    print_timings(&timings);
    println!("==> ci: all steps passed in {:.1} s", started.elapsed().as_secs_f64());
    println!("ci: {passed} passed, 0 failed");
    ExitCode::SUCCESS
}

fn print_timings(timings: &[(&str, f64)]) {
    println!("==> ci: time per step");
    for (name, secs) in timings {
        println!("    {name:<12} {secs:>7.1} s");
    }
}

fn fail(name: &str, why: &str, passed: usize, total: usize, timings: &[(&str, f64)]) -> ExitCode {
    print_timings(timings);
    eprintln!("==> ci: step '{name}' failed: {why}");
    println!("ci: {passed} passed, 1 failed, {} skipped", total - passed - 1);
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_for_the_workspace_and_not_for_a_missing_path() {
        let kib = free_kib(&workspace_root()).expect("df reports the workspace's file system");
        assert!(kib > 0, "a file system this build is running on has some room");
        assert_eq!(free_kib(std::path::Path::new("/no/such/directory/anywhere")), None);
    }
}
