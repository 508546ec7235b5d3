//! The harness of the SIGKILL crash tests (`crash_runtime.rs`, `crash_federation.rs`): a
//! temporary directory, the seeded kill schedule, and a child process whose stdout is read
//! line by line with bounded waits, killed with SIGKILL and reaped.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bound on every wait for a child to exit (generous: the machine may be busy with other
/// tests).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh `<prefix>-<pid>-<nanos>-<n>` under the system temp dir, removed on drop (also
/// when a check fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: the kill delays (and victims), reproducible from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `MFP_CRASH_SEED` if set (to replay a run), else a fresh seed from the clock and the pid.
pub fn seed() -> u64 {
    match std::env::var("MFP_CRASH_SEED") {
        Ok(s) => s.parse().expect("MFP_CRASH_SEED must be a u64"),
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
        }
    }
}

/// A running child; killed and reaped on drop if a check fails before the kill.
pub struct Running {
    /// What it is, for messages (`mfp-crash-child`, `node a`).
    name: String,
    pub child: Child,
    /// Its stdin, if the command was given a piped one.
    pub stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// What it printed so far, read by [`pump`](Self::pump), [`wait_for`](Self::wait_for)
    /// and [`kill_and_collect`](Self::kill_and_collect) (not by
    /// [`next_line`](Self::next_line)).
    pub seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `cmd` with its stdout and stderr piped (its stdin as `cmd` sets it); its stdout
    /// is read line by line, its stderr kept for [`stderr`](Self::stderr).
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let stdin = child.stdin.take();
        Self { name, child, stdin, lines, seen: Vec::new(), stderr: Some(stderr) }
    }

    /// The child's stderr (after it exited).
    pub fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }

    /// Waits for the child to exit, bounded.
    pub fn wait(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit in time", self.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the child after its stdout closed early; panics with its status and stderr.
    fn ended_before(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let status = self.wait(Instant::now() + EXIT_TIMEOUT);
        let err = self.stderr();
        panic!("{} exited before {what} ({status}): {err}", self.name);
    }

    /// The next line the child prints (bounded by `timeout`; `what` names it in the panic
    /// if it does not come). Not kept in [`seen`](Self::seen).
    pub fn next_line(&mut self, timeout: Duration, what: &str) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("{}: no {what} within {timeout:?}", self.name),
            Err(RecvTimeoutError::Disconnected) => self.ended_before(what),
        }
    }

    /// Reads what the child printed until `timeout` passes; `false` if its stdout closed.
    pub fn pump(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Reads lines until one starts with `prefix` (bounded); returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(line) = self.seen[checked..].iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    let last = self.seen.last().cloned().unwrap_or_default();
                    panic!("{}: no {prefix:?} line within {timeout:?} (last line: {last:?})", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => self.ended_before(&format!("{prefix:?}")),
            }
        }
    }

    /// Sends `signal` (`STOP` or `CONT`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// SIGKILL, then every line printed in this run and not read by
    /// [`next_line`](Self::next_line).
    pub fn kill_and_collect(&mut self) -> Vec<String> {
        self.child.kill().unwrap(); // SIGKILL on Unix
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout not closed {EXIT_TIMEOUT:?} after the kill"),
            }
        }
        let status = self.wait(deadline);
        if status.signal() != Some(9) {
            let err = self.stderr();
            panic!("{} ended by itself ({status}) instead of by SIGKILL: {err}", self.name);
        }
        std::mem::take(&mut self.seen)
    }
}
