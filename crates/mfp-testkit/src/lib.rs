//! Test support shared by the workspace's test suites; a dev-dependency only, never
//! published.
//!
//! [`PythonVenv`] makes a Python virtual environment with pinned packages under the
//! workspace's `target/` directory, for the tests that run real Python code against ours
//! (pymfp, the official MCP SDK). The venv is built once and reused while its check passes.
//!
//! Tests run in parallel processes (and threads): each one that finds the venv missing builds
//! its own in a temporary directory next to it (`<name>.tmp-<pid>-<n>`) and renames that into
//! place. The first rename wins and the others remove their copy and use the winner's, so no
//! test ever sees a half-made venv. A broken venv left by an interrupted run is replaced.
//!
//! Every failure panics with what failed: these are helpers for tests, which should fail
//! (never skip) when the Python side cannot be installed.
//!
//! ```no_run
//! use mfp_testkit::PythonVenv;
//!
//! let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
//! let python = PythonVenv::new(target, "pymfp-venv")
//!     .package("pymfp==1.0.0")
//!     .check("import mfp, sys; sys.exit(0 if mfp.__version__ == '1.0.0' else 1)")
//!     .python();
//! let status = std::process::Command::new(python).arg("--version").status().unwrap();
//! assert!(status.success());
//! ```
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A Python venv at `<target>/<name>` with pinned packages, made on first use.
#[derive(Debug, Clone)]
pub struct PythonVenv {
    target: PathBuf,
    name: String,
    packages: Vec<String>,
    check: String,
}

impl PythonVenv {
    /// The venv `name` (a directory name such as `pymfp-venv`) under `target`, the
    /// workspace's target directory. Add packages with [`package`](Self::package) and the
    /// readiness test with [`check`](Self::check).
    pub fn new(target: impl Into<PathBuf>, name: &str) -> Self {
        Self { target: target.into(), name: name.to_string(), packages: Vec::new(), check: "pass".to_string() }
    }

    /// A pip requirement to install, such as `pymfp==1.0.0`.
    #[must_use]
    pub fn package(mut self, requirement: &str) -> Self {
        self.packages.push(requirement.to_string());
        self
    }

    /// Python code (run with `-c`) that exits 0 when the venv has what the tests need; a
    /// venv whose check fails is (re)built.
    #[must_use]
    pub fn check(mut self, code: &str) -> Self {
        self.check = code.to_string();
        self
    }

    /// The venv's directory, `<target>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.target.join(&self.name)
    }

    /// Whether `python` runs and passes the check.
    fn ok(&self, python: &Path) -> bool {
        Command::new(python).args(["-c", &self.check]).status().is_ok_and(|s| s.success())
    }

    /// `<target>/<name>/bin/python`, creating the venv and installing the packages first
    /// if the check does not pass.
    ///
    /// # Panics
    ///
    /// If `python3` cannot make a venv, pip cannot install the packages (network?), or the
    /// check still fails after installation.
    pub fn python(&self) -> PathBuf {
        let venv = self.dir();
        let python = venv.join("bin/python");
        if self.ok(&python) {
            return python;
        }
        let wanted = self.packages.join(" ");
        // One temporary directory per build, also between threads of one process.
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let n = BUILDS.fetch_add(1, Ordering::Relaxed);
        let tmp = self.target.join(format!("{}.tmp-{}-{n}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut venv_cmd = Command::new("python3");
        venv_cmd.args(["-m", "venv"]);
        if self.packages.is_empty() {
            // Nothing to install: no need for pip in the venv.
            venv_cmd.arg("--without-pip");
        }
        let status =
            venv_cmd.arg(&tmp).status().unwrap_or_else(|e| panic!("python3 is needed to make {}: {e}", venv.display()));
        assert!(status.success(), "python3 -m venv {} failed", tmp.display());
        if !self.packages.is_empty() {
            let status = Command::new(tmp.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(&self.packages)
                .status()
                .unwrap_or_else(|e| panic!("cannot run pip in {}: {e}", tmp.display()));
            assert!(status.success(), "pip install {wanted} failed (network? see pip's output above)");
        }
        if !self.ok(&python) {
            // A broken venv from an interrupted run is in the way: replace it.
            let _ = std::fs::remove_dir_all(&venv);
        }
        if std::fs::rename(&tmp, &venv).is_err() {
            // Another process renamed its venv into place first: use that one.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(self.ok(&python), "{wanted} not usable in {} after installation", venv.display());
        python
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_target_dir() {
        let v = PythonVenv::new("/t", "mcp-venv").package("mcp==2.3.0");
        assert_eq!(v.dir(), Path::new("/t/mcp-venv"));
        assert_eq!(v.packages, ["mcp==2.3.0"]);
    }

    /// Builds run at the same time (threads here, processes in the test suites) each get a
    /// working venv, the same one, and leave no temporary directory behind.
    #[test]
    fn concurrent_builds_agree_on_one_venv() {
        let target = std::env::temp_dir().join(format!("mfp-testkit-venv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).unwrap();
        let venv = PythonVenv::new(&target, "plain-venv")
            .check("import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)");
        let pythons: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3).map(|_| s.spawn(|| venv.python())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in &pythons {
            assert_eq!(p, &target.join("plain-venv/bin/python"));
        }
        assert!(venv.ok(&pythons[0]), "the venv's python runs inside the venv");
        let left: Vec<_> = std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("plain-venv")], "temporary directories left behind");
        // Reused: a second call finds it as it is.
        assert_eq!(venv.python(), pythons[0]);
        std::fs::remove_dir_all(&target).unwrap();
    }

    #[test]
    fn a_missing_interpreter_fails_the_check() {
        let v = PythonVenv::new("/nonexistent-target", "none");
        assert!(!v.ok(Path::new("/nonexistent-target/none/bin/python")));
    }
}
