//! The harness of the `mfp-server` tests: the server binary as a child process on a
//! temporary configuration, its log read line by line, signals, a bounded wait for its exit,
//! and minimal HTTP/1.1 requests. Every wait is bounded by [`WAIT`]; a [`Server`] is stopped
//! when dropped, whatever happens.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(60);
/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mfp-server");

/// A fresh, empty `mfp-server-<suite>-<name>-<pid>` under the system temp dir.
pub fn temp_dir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mfp-server-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `mfp-server run --config FILE`; stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    lines: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
    /// Set once the server's stderr reached its end (every line is in `all`).
    eof: Arc<AtomicBool>,
}

impl Server {
    /// Writes `config` to `file` and starts the server on it.
    pub fn start(file: &Path, config: &str) -> Server {
        Self::start_with(file, config, &[], &[])
    }

    /// Writes `config` to `file` and starts the server on it with `extra` arguments and
    /// `env` variables.
    pub fn start_with(file: &Path, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::write(file, config).unwrap();
        Self::run(file, extra, env)
    }

    /// Starts the server on the configuration file `file`, with `extra` arguments and
    /// `env` variables (`MFP_LOG_LEVEL` is removed, so the log is the configured one).
    pub fn run(file: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(file)
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("MFP_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let all2 = Arc::clone(&all);
        let stderr = child.stderr.take().unwrap();
        let eof = Arc::new(AtomicBool::new(false));
        let eof2 = Arc::clone(&eof);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                all2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            eof2.store(true, Ordering::Release);
        });
        Server { child, lines: rx, all, eof }
    }

    /// Waits for a log line containing `needle` after those already waited for; returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needle:?} in {WAIT:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server ended before logging {needle:?}; log:\n{}", self.log())
                }
            }
        }
    }

    /// A log line containing `needle`, already logged or still to come.
    pub fn find_or_wait(&self, needle: &str) -> String {
        let seen = self.all.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
        match seen {
            Some(l) => l,
            None => self.wait_for(needle),
        }
    }

    /// Waits until the log has at least `n` lines containing `needle` (bounded).
    pub fn wait_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().lines().filter(|l| l.contains(needle)).count() < n {
            assert!(Instant::now() < deadline, "fewer than {n} log lines with {needle:?}; log:\n{}", self.log());
            let _ = self.lines.recv_timeout(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }

    /// The address logged as `addr=` on the first line containing `needle`.
    pub fn addr(&self, needle: &str) -> String {
        let line = self.find_or_wait(needle);
        line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    }

    /// The admin listener's address.
    pub fn admin(&self) -> String {
        self.addr("admin listener bound")
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the process to exit and for the rest of its log (bounded).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while !self.eof.load(Ordering::Acquire) {
                    assert!(Instant::now() < deadline, "the server's stderr did not end; log:\n{}", self.log());
                    std::thread::sleep(Duration::from_millis(5));
                }
                return s;
            }
            assert!(Instant::now() < deadline, "server did not exit; log:\n{}", self.log());
            // Polling a child's exit status: std offers no wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// Stops the server the way an operator would, so that it stops its agents too (they
    /// live in their own process groups); kills it if that takes too long.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                // Polling a child's exit status: std offers no wait with a timeout.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request; returns (status, body). The response is read to the end of
/// the connection; a reset after the response (a server refusing a body it did not read)
/// keeps what arrived before it.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // On an error, read_to_end keeps the bytes read before it.
    let read = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}{path} ({read:?}): {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the unlabelled metric `name` in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Scrapes `/metrics` at `admin` until `done` holds (bounded); returns the last body.
pub fn metrics_until(admin: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http(admin, "GET", "/metrics", &[], "");
        assert_eq!(status, 200);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "metrics never reached the expected values:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP request read from a test webhook connection: its head (request line and
/// headers, up to and including the blank line) and its Content-Length body; `None` if the
/// connection ends first.
pub fn read_request(c: &mut TcpStream) -> Option<(String, String)> {
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).ok()? != 1 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))?;
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).to_string()))
}
