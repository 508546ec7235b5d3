//! Crash safety: a writer process killed (SIGKILL) in the middle of its commits leaves a
//! database that opens, validates, and holds every acknowledged batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mfp_runtime::storage::{Storage, StorageOp};
use mfp_storage::{Durability, SqliteStorage};

const CHILD_DB: &str = "MFP_STORAGE_TEST_CRASH_DB";
const CHILD_DURABILITY: &str = "MFP_STORAGE_TEST_CRASH_DURABILITY";

fn crash_once(durability: &str) {
    let dir = TempDir::new("crash");
    let path = dir.file("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &path)
        .env(CHILD_DURABILITY, durability)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    let start = Instant::now();
    // Let it commit for a while (at least 400 ms, and until it acknowledged more than ten
    // batches: on a loaded machine its start alone may take longer), then kill it without
    // warning.
    while acked <= 10 || start.elapsed() < Duration::from_millis(400) {
        assert!(start.elapsed() < Duration::from_secs(60), "the child acknowledged {acked} batches in 60 s");
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(step) = line.strip_prefix("ACK ") {
                    acked = step.trim().parse().unwrap();
                }
            }
            _ => break,
        }
    }
    child.kill().unwrap();
    // Drain what was printed before the kill.
    for line in lines.map_while(Result::ok) {
        if let Some(step) = line.strip_prefix("ACK ") {
            acked = step.trim().parse().unwrap();
        }
    }
    child.wait().unwrap();
    assert!(acked > 10, "the child made progress ({acked})");

    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    let s = storage.load().unwrap().unwrap();
    let step = s.channels[0].step;
    assert!(step >= acked, "{durability}: acknowledged step {acked} lost (stored {step})");
    assert_eq!(s.channels[0].state, state(10 * 1000 + step), "state and step belong to the same batch");
    assert_eq!(s.sg, Some(state(step)), "Sg from the same batch");
    println!("{durability}: killed after {acked} acknowledged batches, {step} stored");
}

#[test]
fn killed_writer_loses_no_acknowledged_batch_sync() {
    crash_once("sync");
}

#[test]
fn killed_writer_loses_no_acknowledged_batch_normal() {
    crash_once("normal");
}

/// Runs only as the child of the tests above: writes until killed.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let durability = match std::env::var(CHILD_DURABILITY).as_deref() {
        Ok("sync") => Durability::Sync,
        _ => Durability::Normal,
    };
    let storage = SqliteStorage::open(config(path.as_ref(), &key(1)).durability(durability)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let mut out = std::io::stdout().lock();
    for step in 1.. {
        storage.apply(vec![advance(10, step), StorageOp::Sg(Some(state(step)))]).wait().unwrap();
        writeln!(out, "ACK {step}").unwrap();
        out.flush().unwrap();
    }
}
