//! Crash safety of a runtime on SQLite: `mfp-crash-child` (a runtime with agents alice and
//! bob and twelve channels, a sender thread on each, sending until killed) is killed with SIGKILL at a random moment,
//! again and again on the same database, and after every kill the store is checked against
//! what the child printed:
//!
//! 1. every receipt alice printed is below the stored step of its channel (an acknowledged
//!    message is never lost), receipts are consecutive from where the run started, and on
//!    each channel at most one message — the one its thread was sending when the kill
//!    came — is committed but unacknowledged;
//! 2. handler executions (`B` starts, `D` ends, each with the redelivery flag) are counted:
//!    every committed message is either handled to the end or still in the stored inbox
//!    after the kill; a message whose handler was running at the kill is in the inbox; the
//!    next run handles what the inbox holds first, flagged as redeliveries, and nothing else
//!    twice — so a message is handled twice only if its handler was running at the kill or
//!    had returned without its removal committed yet (both counted, and both flagged the
//!    second time); per channel, messages are handled in step order, and only committed ones;
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

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
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

/// `mfp-crash-child` on `db`, started (not yet `READY`).
fn spawn_child(db: &Path, key_file: &Path, durability: &str) -> Running {
    Running::spawn("mfp-crash-child", Command::new(CHILD).arg(db).arg(key_file).arg(durability).stdin(Stdio::null()))
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
    checked(inspect(db, key).expect("the database opens and validates after a kill"))
}

/// What the frozen child has committed, as [`stored`], or `None` if SQLite gave up
/// starting the read (SQLITE_PROTOCOL, after retrying for about 10 s): a process stopped by
/// SIGSTOP may hold the log's index in a state no new reader gets past until it runs on
/// (in the middle of a commit or checkpoint, say). That is the freeze, not the store; a
/// process that runs or is dead never leaves it so, and the read after a kill must succeed.
fn stored_while_frozen(db: &Path, key: &MasterKey) -> Option<(Snapshot, BTreeMap<ChannelId, u64>)> {
    match inspect(db, key) {
        Ok(inspection) => Some(checked(inspection)),
        // SQLITE_PROTOCOL is 15, SQLITE_BUSY 5 (the message names SQLite's code).
        Err(e) if ["(code: 15)", "(code: 5)"].iter().any(|c| e.to_string().contains(c)) => {
            eprintln!("a read of the frozen child gave up (tried again at another moment): {e}");
            None
        }
        Err(e) => panic!("the database opens and validates while the child is frozen: {e}"),
    }
}

fn checked(inspection: mfp_storage::Inspection) -> (Snapshot, BTreeMap<ChannelId, u64>) {
    let snapshot = inspection.snapshot.unwrap();
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
    /// Handler executions that ran to the end.
    handled: usize,
    /// Redeliveries of a message whose handler was running at the kill.
    again_interrupted: usize,
    /// Redeliveries of a message whose handler had returned but whose removal from the inbox
    /// had not committed at the kill.
    again_unremoved: usize,
    /// Handlers running at a kill.
    interrupted: usize,
    /// Messages stored but not yet handled at a kill, handled (flagged) after the restart.
    queued_at_kill: usize,
    in_flight_commits: usize,
}

/// What the runs so far established about handler executions.
#[derive(Default)]
struct Ledger {
    /// Messages whose handler ran to the end, over all runs.
    handled: HashSet<(ChannelId, u64)>,
    /// The stored inbox after the last kill (delivered again by the next run, flagged).
    pending: HashSet<(ChannelId, u64)>,
    /// Messages whose handler was running at the last kill.
    interrupted: HashSet<(ChannelId, u64)>,
    /// Every receipt printed.
    receipts: HashSet<(ChannelId, u64)>,
}

/// `B|D <hex> <step> <0|1>` → (channel, step, redelivered).
fn parse_handler_event(line: &str) -> (ChannelId, u64, bool) {
    let mut parts = line.split(' ');
    let (Some(_), Some(c), Some(s), Some(f), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("malformed line {line:?}");
    };
    let flag = match f {
        "0" => false,
        "1" => true,
        _ => panic!("malformed redelivery flag in {line:?}"),
    };
    (ChannelId::from_str(c).unwrap(), s.parse().unwrap(), flag)
}

/// Checks one run's output against the store after the kill (checks 1, 2, 4).
fn check_run(
    run: usize,
    ready: &BTreeMap<ChannelId, u64>,
    lines: &[String],
    after: &BTreeMap<ChannelId, u64>,
    inbox: &HashSet<(ChannelId, u64)>,
    ledger: &mut Ledger,
    totals: &mut Totals,
) {
    let order: Vec<ChannelId> = ready.keys().copied().collect();
    assert_eq!(order.len(), CHANNELS, "run {run}: READY names every channel");
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), order, "run {run}: same channels stored");

    let mut next = ready.clone();
    let mut last_started: BTreeMap<ChannelId, u64> = BTreeMap::new();
    let mut running: Option<(ChannelId, u64)> = None;
    let mut done_now: HashSet<(ChannelId, u64)> = HashSet::new();
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
            ledger.receipts.insert((c, s));
            totals.receipts += 1;
        } else if line.starts_with("B ") {
            let (c, s, again) = parse_handler_event(line);
            assert!(ready.contains_key(&c), "run {run}: delivery on unknown channel {c}");
            assert!(running.is_none(), "run {run}: bob's handler started twice at once");
            assert!(s < after[&c], "run {run}: {c} step {s} delivered but not committed (stored {})", after[&c]);
            // Check 2: what the inbox held is delivered again, flagged; nothing else is.
            let was_pending = ledger.pending.contains(&(c, s));
            assert_eq!(
                again, was_pending,
                "run {run}: {c} step {s}: redelivery flag {again}, stored before: {was_pending}"
            );
            if !again {
                assert!(s >= ready[&c], "run {run}: {c} step {s} delivered again after a restart, unflagged");
                assert!(!ledger.handled.contains(&(c, s)), "run {run}: {c} step {s} handled twice");
            } else if ledger.handled.contains(&(c, s)) {
                totals.again_unremoved += 1;
            } else if ledger.interrupted.contains(&(c, s)) {
                totals.again_interrupted += 1;
            } else {
                // Queued but not handled before the kill: its first execution.
                totals.queued_at_kill += 1;
            }
            if let Some(prev) = last_started.insert(c, s) {
                assert!(s > prev, "run {run}: {c} delivered step {s} after step {prev}");
            }
            running = Some((c, s));
        } else if line.starts_with("D ") {
            let (c, s, again) = parse_handler_event(line);
            let started = running.take();
            assert_eq!(started, Some((c, s)), "run {run}: {c} step {s} done without its start");
            assert_eq!(again, ledger.pending.contains(&(c, s)), "run {run}: {c} step {s}: flag changed");
            done_now.insert((c, s));
            ledger.handled.insert((c, s));
            totals.handled += 1;
        } else {
            panic!("run {run}: unexpected line {line:?}");
        }
    }
    // Check 2: a handler running at the kill has its message still stored; every committed
    // message is handled or stored; the inbox holds committed messages only.
    if let Some(m) = running {
        assert!(inbox.contains(&m), "run {run}: {} step {} was being handled at the kill but is not stored", m.0, m.1);
        totals.interrupted += 1;
    }
    ledger.interrupted = running.into_iter().collect();
    for (&c, &stored) in after {
        for s in 0..stored {
            assert!(
                inbox.contains(&(c, s)) || ledger.handled.contains(&(c, s)),
                "run {run}: {c} step {s} committed, but neither handled nor stored for redelivery"
            );
        }
    }
    for &(c, s) in inbox {
        assert!(after.get(&c).is_some_and(|&st| s < st), "run {run}: {c} step {s} stored as pending but not committed");
    }
    ledger.pending = inbox.clone();
    // Check 1: on each channel, at most one committed message without a printed receipt
    // (the one its thread was sending when the kill came).
    let mut unacked = 0;
    for (c, &stored) in after {
        let acked = next[c];
        assert!(stored >= acked, "run {run}: {c} stored step {stored} is below the next unacknowledged step {acked}");
        let extra = stored - acked;
        assert!(extra <= 1, "run {run}: {c} stored step {stored}, but the next unacknowledged step is {acked}");
        unacked += extra;
    }
    totals.in_flight_commits += unacked as usize;
}

#[test]
fn runtime_killed_at_random_loses_no_acknowledged_message() {
    let started = Instant::now();
    let dir = TempDir::new("mfp-crash-runtime");
    let db = dir.0.join("runtime.db");
    let key_file = dir.0.join("master.key");
    let key = MasterKey::generate_file(&key_file).unwrap();
    let seed = seed();
    println!("seed {seed} (MFP_CRASH_SEED)");
    let mut rng = Rng(seed);

    let mut ledger = Ledger::default();
    let mut totals = Totals::default();
    let mut previous: Option<BTreeMap<ChannelId, u64>> = None;
    let mut probes = 0usize;
    // Frozen reads SQLite gave up on (see `stored_while_frozen`).
    let mut blocked = 0usize;
    for run in 0..RUNS {
        let durability = if run % 2 == 0 { "normal" } else { "sync" };
        let mut child = spawn_child(&db, &key_file, durability);
        let ready = parse_ready(&child.next_line(READY_TIMEOUT, "READY"));
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
            let read = stored_while_frozen(&db, &key);
            child.signal("CONT");
            if read.is_some() {
                probes += 1;
            } else {
                blocked += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
        let lines = child.kill_and_collect();
        drop(child);
        let (snapshot, after) = stored(&db, &key);
        let inbox: HashSet<(ChannelId, u64)> = snapshot.deliveries.iter().map(|d| (d.channel, d.step)).collect();
        check_run(run, &ready, &lines, &after, &inbox, &mut ledger, &mut totals);
        previous = Some(after);
    }

    // A last, in-process restart: the runtime restores (checking Sg itself), and every
    // channel continues at its stored step.
    let before = previous.unwrap();
    let storage = SqliteStorage::open(StorageConfig::new(&db, key.clone()).durability(Durability::Normal)).unwrap();
    let config = {
        let mut c = RuntimeConfig::default();
        c.deployment_id = b"mfp-crash-test".to_vec();
        c.instance_id = b"child".to_vec();
        c
    };
    let rt = Runtime::builder(config).storage(storage).build().expect("restore after the last kill");
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    let alice = rt.attach_named("alice", |_, _| {}).unwrap();
    rt.attach_named("bob", move |_, m| seen.lock().unwrap().push((m.channel, m.step, m.redelivered))).unwrap();
    for (&c, &s) in &before {
        let receipt = alice.send(c, format!("step {s}").as_bytes()).unwrap();
        assert_eq!((receipt.channel, receipt.step), (c, s));
    }
    assert!(rt.wait_idle(EXIT_TIMEOUT));
    rt.shutdown();
    drop(rt);
    // What the last kill left stored comes first, flagged; then the new messages.
    let mut got = got.lock().unwrap().clone();
    got.sort_unstable();
    let mut expected: Vec<(ChannelId, u64, bool)> = ledger.pending.iter().map(|&(c, s)| (c, s, true)).collect();
    expected.extend(before.iter().map(|(&c, &s)| (c, s, false)));
    expected.sort_unstable();
    assert_eq!(got, expected);
    ledger.handled.extend(got.iter().map(|&(c, s, _)| (c, s)));
    // Every receipt printed before a kill was handled, in the end.
    let unhandled: Vec<_> = ledger.receipts.difference(&ledger.handled).collect();
    assert!(unhandled.is_empty(), "receipts never handled: {unhandled:?}");
    let (snapshot, last) = stored(&db, &key);
    assert_eq!(last, before.iter().map(|(&c, &s)| (c, s + 1)).collect());
    assert!(snapshot.deliveries.is_empty(), "handled messages left the inbox");

    let committed: u64 = before.values().sum();
    println!(
        "{RUNS} kills and {probes} frozen reads ({blocked} given up) in {:.1} s: {} receipts, {} handled, {committed} committed messages \
         ({} committed without a receipt; {} handlers running at a kill; redelivered: {} queued, {} interrupted, \
         {} handled but not yet removed; {} left for the final restart)",
        started.elapsed().as_secs_f64(),
        totals.receipts,
        totals.handled,
        totals.in_flight_commits,
        totals.interrupted,
        totals.queued_at_kill,
        totals.again_interrupted,
        totals.again_unremoved,
        ledger.pending.len(),
    );
    assert!(totals.receipts > 200, "too little traffic to mean anything: {} receipts", totals.receipts);
    assert!(totals.handled > 100, "too few deliveries: {}", totals.handled);
    assert!(probes >= RUNS * PROBES / 2, "too few frozen reads: {probes}, {blocked} given up");
}
