//! Crash safety of two federated runtimes: two `mfp-fed-node` processes (`b` listens on
//! 127.0.0.1, `a` dials it and opens a cross-runtime channel between their agents), each on
//! its own SQLite database, send on the channel in both directions while one of them,
//! chosen at random, is killed with SIGKILL at a random moment and restarted on the same
//! database (`b` on the same port) — again and again. Then both stop sending, run until
//! every receipt is delivered on the other side, and are killed.
//!
//! After every kill, the killed node's output is checked against its store:
//!
//! 1. its receipts are consecutive, continue where the previous run's store stopped, and
//!    were committed (below the stored outbound step); at most one message (the one being
//!    sent at the kill) is committed without a receipt;
//! 2. its deliveries are in step order and committed (below the stored inbound step); a
//!    delivery is flagged as a redelivery exactly when the message was in the stored inbox
//!    at the previous kill (delivered to a handler that had not finished with it), and an
//!    unflagged delivery is the message's first; every committed message is delivered or
//!    still in the stored inbox.
//!
//! At the end, for each direction: every step with a receipt was delivered at least once;
//! the delivered steps are 0..=max without a gap; a step delivered twice was delivered
//! again only with the redelivery flag, after a kill of the recipient (the nodes check that
//! every payload names its step).
//!
//! The kill moments and victims come from a seed printed at the start (set
//! `MFP_CRASH_SEED` to replay one).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use mfp_core::ChannelId;
use mfp_runtime::ChannelStatus;
use mfp_storage::{MasterKey, inspect};

const NODE: &str = env!("CARGO_BIN_EXE_mfp-fed-node");
const KILLS: usize = 24;
/// Bounds on every wait for a node (generous: the machine may be busy with other tests).
const START_TIMEOUT: Duration = Duration::from_secs(15);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Receipts each side must have printed, at least, for the test to mean something.
const MIN_RECEIPTS: usize = 50;
/// Bound on the wait for them after the kills.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(60);

/// One of the two nodes and what its runs established.
struct Side {
    role: &'static str,
    db: PathBuf,
    key_file: PathBuf,
    key: MasterKey,
    proc: Option<Running>,
    runs: usize,
    kills: usize,
    /// Every receipt step printed, in order.
    receipts: Vec<u64>,
    /// The stored outbound step after the last kill: the next run's first receipt.
    tx_stored: Option<u64>,
    /// Deliveries printed per step (all runs).
    delivered: BTreeMap<u64, usize>,
    /// The stored inbox after the last kill (delivered again, flagged, by the next run).
    pending: HashSet<u64>,
    /// The stored inbound step after the last kill.
    rx_stored: u64,
    /// Flagged deliveries of messages delivered before (handled, not yet removed at a kill).
    again: usize,
    /// Flagged deliveries of messages not delivered before (stored, not handled at a kill).
    queued: usize,
    /// Resent messages dropped as duplicates (the last `DUPS` of each run, summed).
    dups: u64,
}

impl Side {
    fn new(role: &'static str, dir: &Path) -> Self {
        let key_file = dir.join(format!("{role}.key"));
        let key = MasterKey::generate_file(&key_file).unwrap();
        Self {
            role,
            db: dir.join(format!("{role}.db")),
            key_file,
            key,
            proc: None,
            runs: 0,
            kills: 0,
            receipts: Vec::new(),
            tx_stored: None,
            delivered: BTreeMap::new(),
            pending: HashSet::new(),
            rx_stored: 0,
            again: 0,
            queued: 0,
            dups: 0,
        }
    }

    /// Starts the node; for `b`, waits for its `LISTEN` line and returns the port.
    fn start(&mut self, port: u16) -> u16 {
        let mut cmd = Command::new(NODE);
        cmd.arg(self.role).arg(&self.db).arg(&self.key_file).arg(port.to_string()).stdin(Stdio::piped());
        let mut p = Running::spawn(format!("node {}", self.role), &mut cmd);
        let port = if self.role == "b" {
            let line = p.wait_for("LISTEN ", START_TIMEOUT);
            let got: u16 = line["LISTEN ".len()..].parse().unwrap();
            if port != 0 {
                assert_eq!(got, port, "b listens on the same port again");
            }
            got
        } else {
            port
        };
        self.proc = Some(p);
        self.runs += 1;
        port
    }

    fn running(&mut self) -> &mut Running {
        self.proc.as_mut().expect("the node is running")
    }
}

/// `R|D <hex> <step> [flag]` → (channel, step, flag).
fn parse_event(line: &str) -> (ChannelId, u64, Option<bool>) {
    let mut parts = line.split(' ');
    let (Some(_), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("malformed line {line:?}");
    };
    let flag = parts.next().map(|f| match f {
        "0" => false,
        "1" => true,
        _ => panic!("malformed redelivery flag in {line:?}"),
    });
    assert!(parts.next().is_none(), "malformed line {line:?}");
    (ChannelId::from_str(c).unwrap(), s.parse().unwrap(), flag)
}

/// The one channel every event must name (learnt from the first that names one).
fn same_channel(channel: &mut Option<ChannelId>, c: ChannelId, line: &str) {
    match channel {
        None => *channel = Some(c),
        Some(known) => assert_eq!(*known, c, "an event on another channel: {line:?}"),
    }
}

/// Checks one run of `side` (all its lines, the node now dead) against its store.
fn check_run(side: &mut Side, lines: &[String], channel: &mut Option<ChannelId>) {
    let run = side.runs;
    let who = side.role;
    let mut receipts = Vec::new();
    let mut deliveries = Vec::new();
    for line in lines {
        let kind = line.split(' ').next().unwrap_or_default();
        match kind {
            "R" | "D" => {
                let (c, s, flag) = parse_event(line);
                same_channel(channel, c, line);
                if kind == "R" {
                    assert!(flag.is_none(), "{who} run {run}: malformed receipt {line:?}");
                    receipts.push(s);
                } else {
                    deliveries.push((s, flag.expect("a delivery has a redelivery flag")));
                }
            }
            "OPENED" | "RESTORED" => {
                let c = ChannelId::from_str(&line[kind.len() + 1..]).unwrap();
                same_channel(channel, c, line);
            }
            "DUPS" => {}
            "LISTEN" | "IDLE" => {}
            _ => panic!("{who} run {run}: unexpected line {line:?}"),
        }
    }
    if let Some(last) = lines.iter().rev().find(|l| l.starts_with("DUPS ")) {
        side.dups += last["DUPS ".len()..].parse::<u64>().unwrap();
    }

    let snapshot = inspect(&side.db, &side.key).expect("the database opens and validates after a kill").snapshot;
    // A node killed before it printed anything about the channel (b, killed between
    // storing the channel or a message and its first line) still has it in its store; the
    // other node's OPENED line may not have been read yet: learn the channel from the store,
    // so what it holds (its inbox) is checked against the next run. Only a channel that
    // carried a message: b may also hold channels a asked for but never learnt were
    // accepted (a was killed, or its request timed out, before the answer came; a then
    // opened another), and nothing is ever sent on those.
    if channel.is_none()
        && let Some([only]) = snapshot
            .as_ref()
            .map(|s| s.remote_channels.iter().filter(|r| r.tx.step > 0 || r.rx.step > 0).collect::<Vec<_>>())
            .as_deref()
    {
        *channel = Some(only.id);
    }
    let row = channel.and_then(|c| snapshot.as_ref()?.remote_channels.iter().find(|r| r.id == c).cloned());
    let Some(row) = row else {
        assert!(
            receipts.is_empty() && deliveries.is_empty(),
            "{who} run {run}: traffic on a channel it has not stored"
        );
        return;
    };
    assert_eq!(row.status, ChannelStatus::Active, "{who} run {run}: the channel is not active");
    let (tx, rx) = (row.tx.step, row.rx.step);
    let inbox: HashSet<u64> =
        snapshot.as_ref().unwrap().deliveries.iter().filter(|d| d.channel == row.id).map(|d| d.step).collect();

    // 1. Receipts: consecutive, from where the store stood, committed; at most one
    // committed message without a receipt.
    if let Some(&first) = receipts.first() {
        let stored = side.tx_stored.unwrap_or(0);
        assert_eq!(first, stored, "{who} run {run}: the first receipt continues at the stored step");
    }
    if let (Some(&first), Some(&prev)) = (receipts.first(), side.receipts.last()) {
        assert!(first > prev, "{who} run {run}: receipt {first} after {prev}");
    }
    for w in receipts.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{who} run {run}: receipts are consecutive");
    }
    if let Some(&last) = receipts.last() {
        assert!(last < tx, "{who} run {run}: receipt {last}, but the store's next outbound step is {tx}");
        assert!(tx - (last + 1) <= 1, "{who} run {run}: stored step {tx}, last receipt {last}");
    }
    side.receipts.extend(&receipts);
    side.tx_stored = Some(tx);

    // 2. Deliveries: in order, committed, flagged exactly when stored in the inbox before.
    let mut prev: Option<u64> = None;
    for &(s, flag) in &deliveries {
        if let Some(p) = prev {
            assert!(s > p, "{who} run {run}: step {s} delivered after step {p}");
        }
        prev = Some(s);
        assert!(s < rx, "{who} run {run}: step {s} delivered, but the store's next inbound step is {rx}");
        let was_pending = side.pending.contains(&s);
        assert_eq!(
            flag, was_pending,
            "{who} run {run}: step {s}: redelivery flag {flag}, stored in the inbox: {was_pending}"
        );
        let before = side.delivered.get(&s).copied().unwrap_or(0);
        if flag {
            if before > 0 {
                side.again += 1;
            } else {
                side.queued += 1;
            }
        } else {
            assert_eq!(before, 0, "{who} run {run}: step {s} delivered twice, the second time unflagged");
            assert!(
                s >= side.rx_stored,
                "{who} run {run}: step {s} was committed before this run, delivered unflagged"
            );
        }
        *side.delivered.entry(s).or_default() += 1;
    }
    for s in 0..rx {
        assert!(
            inbox.contains(&s) || side.delivered.contains_key(&s),
            "{who} run {run}: step {s} committed, but neither delivered nor stored for redelivery"
        );
    }
    assert!(inbox.iter().all(|&s| s < rx), "{who} run {run}: the inbox holds an uncommitted step");
    side.pending = inbox;
    side.rx_stored = rx;
}

/// Kills `side`'s node, checks its run.
fn kill(side: &mut Side, channel: &mut Option<ChannelId>) {
    let lines = side.running().kill_and_collect();
    side.proc = None;
    side.kills += 1;
    check_run(side, &lines, channel);
}

/// The receipts `from` printed (in all its runs) that are not delivered on `to`, counting
/// what the running nodes printed so far.
/// Receipts `side` printed so far (the killed runs' and the running one's).
fn receipts(side: &Side) -> usize {
    let running = side.proc.as_ref().map_or(0, |p| p.seen.iter().filter(|l| l.starts_with("R ")).count());
    side.receipts.len() + running
}

fn undelivered(from: &Side, to: &Side) -> Vec<u64> {
    let running = |side: &Side, kind: &str| -> Vec<u64> {
        let seen = side.proc.as_ref().map(|p| p.seen.as_slice()).unwrap_or_default();
        seen.iter().filter(|l| l.starts_with(kind)).map(|l| parse_event(l).1).collect()
    };
    let delivered: HashSet<u64> = to.delivered.keys().copied().chain(running(to, "D ")).collect();
    from.receipts.iter().copied().chain(running(from, "R ")).filter(|s| !delivered.contains(s)).collect()
}

#[test]
fn federated_runtimes_killed_at_random_lose_and_double_nothing() {
    let started = Instant::now();
    let dir = TempDir::new("mfp-crash-federation");
    let seed = seed();
    println!("seed {seed} (MFP_CRASH_SEED)");
    let mut rng = Rng(seed);
    let mut a = Side::new("a", &dir.0);
    let mut b = Side::new("b", &dir.0);
    let mut channel: Option<ChannelId> = None;

    let port = b.start(0);
    a.start(port);
    for _ in 0..KILLS {
        let wait = Duration::from_millis(rng.range(20, 700));
        // Read both nodes' output meanwhile (and notice one that exits by itself).
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            let left = wait.saturating_sub(t0.elapsed()) / 2;
            for side in [&mut a, &mut b] {
                let alive = side.running().pump(left);
                if !alive {
                    let err = side.running().stderr();
                    panic!("node {} stopped by itself: {err}", side.role);
                }
            }
        }
        let victim = if rng.next().is_multiple_of(2) { &mut a } else { &mut b };
        println!("kill {} after {} ms", victim.role, wait.as_millis());
        kill(victim, &mut channel);
        victim.start(port);
    }

    // On a busy machine the random kills may leave little traffic: both run on (bounded)
    // until each side has enough receipts for the checks below to mean something.
    let deadline = Instant::now() + TRAFFIC_TIMEOUT;
    while receipts(&a) <= MIN_RECEIPTS || receipts(&b) <= MIN_RECEIPTS {
        assert!(
            Instant::now() < deadline,
            "too little traffic within {TRAFFIC_TIMEOUT:?} after the kills: {} and {} receipts",
            receipts(&a),
            receipts(&b)
        );
        for side in [&mut a, &mut b] {
            assert!(side.running().pump(Duration::from_millis(20)), "node {} stopped by itself", side.role);
        }
    }

    // Stop the senders, let every receipt reach the other side, then kill both.
    for side in [&mut a, &mut b] {
        let stdin = side.running().stdin.as_mut().unwrap();
        stdin.write_all(b"stop\n").and_then(|()| stdin.flush()).unwrap();
    }
    for side in [&mut a, &mut b] {
        side.running().wait_for("IDLE", DRAIN_TIMEOUT);
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (ab, ba) = (undelivered(&a, &b), undelivered(&b, &a));
        if ab.is_empty() && ba.is_empty() {
            break;
        }
        let first = |v: &[u64]| v.iter().take(10).map(u64::to_string).collect::<Vec<_>>().join(", ");
        assert!(
            Instant::now() < deadline,
            "receipts not delivered on the other side within {DRAIN_TIMEOUT:?}: a → b {} (first: {}), b → a {} (first: {})",
            ab.len(),
            first(&ab),
            ba.len(),
            first(&ba)
        );
        for side in [&mut a, &mut b] {
            assert!(side.running().pump(Duration::from_millis(20)), "node {} stopped by itself", side.role);
        }
    }
    kill(&mut a, &mut channel);
    kill(&mut b, &mut channel);

    // Each direction: every receipt delivered, deliveries 0..=max without a gap, a second
    // delivery only flagged (checked run by run above).
    for (from, to) in [(&a, &b), (&b, &a)] {
        let dir = format!("{} → {}", from.role, to.role);
        let missing: Vec<u64> = from.receipts.iter().copied().filter(|s| !to.delivered.contains_key(s)).collect();
        assert!(missing.is_empty(), "{dir}: receipts never delivered: {missing:?}");
        let steps: Vec<u64> = to.delivered.keys().copied().collect();
        assert!(steps.iter().copied().eq(0..steps.len() as u64), "{dir}: delivered steps have a gap");
        let redelivered: usize = to.delivered.values().map(|n| n - 1).sum();
        assert_eq!(redelivered, to.again, "{dir}: second deliveries are the flagged ones");
        println!(
            "{dir}: {} receipts, {} messages delivered ({} deliveries; flagged redeliveries: {} delivered before, \
             {} stored but not yet delivered at a kill), {} resends dropped as duplicates",
            from.receipts.len(),
            steps.len(),
            to.delivered.values().sum::<usize>(),
            to.again,
            to.queued,
            to.dups,
        );
    }
    println!(
        "{} kills (a: {}, b: {}), {:.1} s",
        a.kills + b.kills - 2,
        a.kills - 1,
        b.kills - 1,
        started.elapsed().as_secs_f64()
    );
    // The machine may be busy (here 2 cores shared with other builds): some 300 receipts per
    // direction with eight busy loops beside the test, thousands without.
    assert!(
        a.receipts.len() > MIN_RECEIPTS && b.receipts.len() > MIN_RECEIPTS,
        "too little traffic to mean anything: {} and {} receipts",
        a.receipts.len(),
        b.receipts.len()
    );
    assert!(a.kills > 1 && b.kills > 1, "both nodes were killed at random");
}
