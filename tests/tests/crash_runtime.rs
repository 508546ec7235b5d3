//! Crash safety of a runtime on SQLite: `mfp-crash-child` (a runtime with agents alice and
//! bob and twelve channels, a sender thread on each, sending until killed) is killed with SIGKILL at a random moment,
//! again and again on the same database, and after every kill the store is checked against
//! what the child printed:
//!
//! 1. every receipt alice printed is below the stored step of its channel (an acknowledged
//!    message is never lost), receipts are consecutive from where the run started, and on
//!    each channel at most one message — the one its thread was sending when the kill
//!    came — is committed but unacknowledged;
//! 2. no (channel, step) is delivered twice over all runs, and every delivered step was
//!    committed (below the stored step) and belongs to this run;
//! 3. the stored Sg equals the Merkle root recomputed from the stored channel states, although
//!    the twelve senders' batches race for the storage queue (and the next start, which
//!    refuses a mismatch, succeeds);
//! 4. the next run starts (`READY`) exactly at the stored steps.
//!
//! Check 3 is also made a few times per run while the child is frozen with SIGSTOP, so
//! that many more moments than the kills are examined.
//!
//! Half of the runs use `Durability::Normal`, half `Durability::Sync`. The kill delays come
//! from a seed printed at the start (set `MFP_CRASH_SEED` to replay one).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mfp_core::{ChannelId, MerkleSg};
use mfp_runtime::storage::Snapshot;
use mfp_runtime::{ChannelStatus, Runtime, RuntimeConfig};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig, inspect};

const CHILD: &str = env!("CARGO_BIN_EXE_mfp-crash-child");
const RUNS: usize = 30;
/// Reads of the committed state while the child is frozen (SIGSTOP), per run.
const PROBES: usize = 4;
const CHANNELS: usize = 12;
/// Bounds on every wait for the child (generous: the machine may be busy with other tests).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop (also when a check fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mfp-crash-runtime-{}-{nanos}-{}",
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

/// xorshift64*: the kill delays, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("MFP_CRASH_SEED") {
        Ok(s) => s.parse().expect("MFP_CRASH_SEED must be a u64"),
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
        }
    }
}

/// A running child; killed and reaped on drop if a check fails before the kill.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(db: &Path, key_file: &Path, durability: &str) -> Self {
        let mut child = Command::new(CHILD)
            .arg(db)
            .arg(key_file)
            .arg(durability)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mfp-crash-child");
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
        Self { child, lines, stderr: Some(stderr) }
    }

    /// The child's stderr (after it exited).
    fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }

    /// Waits for the child to exit, bounded.
    fn wait(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the child did not exit in time");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the `READY` line (the first line the child prints).
    fn ready(&mut self) -> String {
        match self.lines.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no READY within {READY_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.child.kill();
                let status = self.wait(Instant::now() + EXIT_TIMEOUT);
                panic!("the child exited before READY ({status}): {}", self.stderr());
            }
        }
    }

    /// Sends `signal` (`STOP` or `CONT`) to the child.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// SIGKILL, then every line printed before it.
    fn kill_and_collect(&mut self) -> Vec<String> {
        self.child.kill().unwrap(); // SIGKILL on Unix
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout not closed {EXIT_TIMEOUT:?} after the kill"),
            }
        }
        let status = self.wait(deadline);
        if status.signal() != Some(9) {
            panic!("the child ended by itself ({status}) instead of by SIGKILL: {}", self.stderr());
        }
        out
    }
}

fn parse_event(line: &str) -> (ChannelId, u64) {
    let mut parts = line.split(' ');
    let (Some(_), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        panic!("malformed line {line:?}");
    };
    (ChannelId::from_str(c).unwrap(), s.parse().unwrap())
}

/// `READY <hex>:<step> …` → channel → first step of this run.
fn parse_ready(line: &str) -> BTreeMap<ChannelId, u64> {
    let rest = line.strip_prefix("READY ").unwrap_or_else(|| panic!("expected READY, got {line:?}"));
    rest.split(' ')
        .map(|p| {
            let (c, s) = p.split_once(':').unwrap();
            (ChannelId::from_str(c).unwrap(), s.parse().unwrap())
        })
        .collect()
}

/// The stored snapshot, read-only, with Sg checked against the channel states (check 3).
fn stored(db: &Path, key: &MasterKey) -> (Snapshot, BTreeMap<ChannelId, u64>) {
    let snapshot = inspect(db, key).expect("the database opens and validates after a kill").snapshot.unwrap();
    assert_eq!(snapshot.channels.len(), CHANNELS);
    assert!(snapshot.channels.iter().all(|c| c.status == ChannelStatus::Active));
    let mut tree = MerkleSg::from_states(snapshot.channels.iter().map(|c| (c.id, &c.state))).unwrap();
    assert!(snapshot.sg.is_some());
    assert_eq!(tree.root(), snapshot.sg, "stored Sg differs from the root of the stored channel states");
    let steps = snapshot.channels.iter().map(|c| (c.id, c.step)).collect();
    (snapshot, steps)
}

#[derive(Default)]
struct Totals {
    receipts: usize,
    deliveries: usize,
    in_flight_commits: usize,
    undelivered: u64,
}

/// Checks one run's output against the store after the kill (checks 1, 2, 4).
fn check_run(
    run: usize,
    ready: &BTreeMap<ChannelId, u64>,
    lines: &[String],
    after: &BTreeMap<ChannelId, u64>,
    delivered: &mut HashSet<(ChannelId, u64)>,
    totals: &mut Totals,
) {
    let order: Vec<ChannelId> = ready.keys().copied().collect();
    assert_eq!(order.len(), CHANNELS, "run {run}: READY names every channel");
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), order, "run {run}: same channels stored");

    let mut next = ready.clone();
    let mut last_delivered: BTreeMap<ChannelId, u64> = BTreeMap::new();
    let mut delivered_now: BTreeMap<ChannelId, u64> = BTreeMap::new();
    for line in lines {
        if line.starts_with("R ") {
            let (c, s) = parse_event(line);
            assert!(ready.contains_key(&c), "run {run}: receipt on unknown channel {c}");
            assert_eq!(s, next[&c], "run {run}: receipts on {c} are consecutive from READY");
            // Check 1: an acknowledged message is committed.
            assert!(
                s < after[&c],
                "run {run}: receipt {c} step {s} acknowledged, but the store has step {}",
                after[&c]
            );
            *next.get_mut(&c).unwrap() += 1;
            totals.receipts += 1;
        } else if line.starts_with("D ") {
            let (c, s) = parse_event(line);
            // Check 2: delivered once, only after its commit, by this run, in order.
            assert!(ready.contains_key(&c), "run {run}: delivery on unknown channel {c}");
            assert!(s >= ready[&c], "run {run}: {c} step {s} delivered again after a restart");
            assert!(s < after[&c], "run {run}: {c} step {s} delivered but not committed (stored {})", after[&c]);
            assert!(delivered.insert((c, s)), "run {run}: {c} step {s} delivered twice");
            if let Some(prev) = last_delivered.insert(c, s) {
                assert!(s > prev, "run {run}: {c} delivered step {s} after step {prev}");
            }
            *delivered_now.entry(c).or_insert(0) += 1;
            totals.deliveries += 1;
        } else {
            panic!("run {run}: unexpected line {line:?}");
        }
    }
    // Check 1: on each channel, at most one committed message without a printed receipt
    // (the one its thread was sending when the kill came).
    let mut unacked = 0;
    for (c, &stored) in after {
        let acked = next[c];
        assert!(stored >= acked, "run {run}: {c} stored step {stored} is below the next unacknowledged step {acked}");
        let extra = stored - acked;
        assert!(extra <= 1, "run {run}: {c} stored step {stored}, but the next unacknowledged step is {acked}");
        unacked += extra;
        totals.undelivered += stored - ready[c] - delivered_now.get(c).copied().unwrap_or(0);
    }
    totals.in_flight_commits += unacked as usize;
}

#[test]
fn runtime_killed_at_random_loses_no_acknowledged_message() {
    let started = Instant::now();
    let dir = TempDir::new();
    let db = dir.0.join("runtime.db");
    let key_file = dir.0.join("master.key");
    let key = MasterKey::generate_file(&key_file).unwrap();
    let seed = seed();
    println!("seed {seed} (MFP_CRASH_SEED)");
    let mut rng = Rng(seed);

    let mut delivered = HashSet::new();
    let mut totals = Totals::default();
    let mut previous: Option<BTreeMap<ChannelId, u64>> = None;
    let mut probes = 0usize;
    for run in 0..RUNS {
        let durability = if run % 2 == 0 { "normal" } else { "sync" };
        let mut child = Running::spawn(&db, &key_file, durability);
        let ready = parse_ready(&child.ready());
        // Check 4: the run continues exactly where the store stopped (3: the restart accepted
        // the stored Sg, or there would be no READY).
        match &previous {
            None => assert!(ready.values().all(|&s| s == 0), "the first run starts at step 0: {ready:?}"),
            Some(prev) => assert_eq!(&ready, prev, "run {run} starts at the stored steps"),
        }
        // Freeze the child a few times at random moments and read what it has committed
        // so far: every committed state, not only the one a kill leaves, must have a
        // consistent Sg (check 3).
        for _ in 0..PROBES {
            std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
            child.signal("STOP");
            stored(&db, &key);
            child.signal("CONT");
            probes += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
        let lines = child.kill_and_collect();
        drop(child);
        let (_, after) = stored(&db, &key);
        check_run(run, &ready, &lines, &after, &mut delivered, &mut totals);
        previous = Some(after);
    }

    // A last, in-process restart: the runtime restores (checking Sg itself), and every
    // channel continues at its stored step.
    let before = previous.unwrap();
    let storage = SqliteStorage::open(StorageConfig::new(&db, key.clone()).durability(Durability::Normal)).unwrap();
    let config = RuntimeConfig {
        deployment_id: b"mfp-crash-test".to_vec(),
        instance_id: b"child".to_vec(),
        ..RuntimeConfig::default()
    };
    let rt = Runtime::builder(config).storage(storage).build().expect("restore after the last kill");
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&inbox);
    let alice = rt.attach_named("alice", |_, _| {}).unwrap();
    rt.attach_named("bob", move |_, m| seen.lock().unwrap().push((m.channel, m.step))).unwrap();
    for (&c, &s) in &before {
        let receipt = alice.send(c, format!("step {s}").as_bytes()).unwrap();
        assert_eq!((receipt.channel, receipt.step), (c, s));
    }
    assert!(rt.wait_idle(EXIT_TIMEOUT));
    rt.shutdown();
    drop(rt);
    let mut got = inbox.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, before.iter().map(|(&c, &s)| (c, s)).collect::<Vec<_>>());
    assert!(got.iter().all(|d| !delivered.contains(d)));
    let (_, last) = stored(&db, &key);
    assert_eq!(last, before.iter().map(|(&c, &s)| (c, s + 1)).collect());

    let committed: u64 = before.values().sum();
    println!(
        "{RUNS} kills and {probes} frozen reads in {:.1} s: {} receipts, {} deliveries, {committed} committed messages \
         ({} committed without a receipt, {} committed but not delivered before a kill)",
        started.elapsed().as_secs_f64(),
        totals.receipts,
        totals.deliveries,
        totals.in_flight_commits,
        totals.undelivered,
    );
    assert!(totals.receipts > 200, "too little traffic to mean anything: {} receipts", totals.receipts);
    assert!(totals.deliveries > 100, "too few deliveries: {}", totals.deliveries);
}
