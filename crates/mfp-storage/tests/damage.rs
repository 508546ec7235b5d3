//! Damage that reaches SQLite's internals: a typed error, the same class every time, never a
//! panic and never a hang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{SqliteStorage, inspect};

/// Longest a single open or inspect of a small file may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// A valid, checkpointed database with a few channels.
fn valid_db(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.file(name);
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage.apply(vec![advance(10, 1), advance(11, 1)]).wait().unwrap();
    storage.close().unwrap();
    path
}

/// Runs `f` on its own thread and fails the test if it has not returned within [`HANG`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {HANG:?} (hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// Opens and inspects `path` (bounded); returns both errors (`None` for success).
fn open_and_inspect(path: &Path) -> (Option<StorageError>, Option<StorageError>) {
    let p = path.to_path_buf();
    let opened = bounded(&format!("open {}", path.display()), move || {
        SqliteStorage::open(config(&p, &key(1))).and_then(|s| s.load().map(drop)).err()
    });
    let p = path.to_path_buf();
    let inspected = bounded(&format!("inspect {}", path.display()), move || inspect(&p, &key(1)).err());
    (opened, inspected)
}

#[test]
fn a_non_utf8_byte_in_a_table_definition_is_corrupt_and_never_hangs() {
    let dir = TempDir::new("schema-utf8");
    let valid = valid_db(&dir, "valid.db");
    let full = bytes_of(&valid);
    let at = find(&full, b"CREATE TABLE channels (").expect("the channels table definition is in the file");
    let column = at + find(&full[at..], b"channel_id ").unwrap();
    let decltype = at + find(&full[at..], b"BLOB").unwrap();
    // A byte of the table name, of a column name, and of a column's declared type. The last
    // two made sqlx's worker thread panic, and the open hang in about a third of the runs.
    for (what, pos) in [("table name", at + 17), ("column name", column + 10), ("declared type", decltype + 2)] {
        let mut damaged = full.clone();
        damaged[pos] = 0xff;
        let path = dir.file("damaged.db");
        for round in 0..12 {
            std::fs::write(&path, &damaged).unwrap();
            let (opened, inspected) = open_and_inspect(&path);
            for (call, err) in [("open", opened), ("inspect", inspected)] {
                assert!(matches!(err, Some(StorageError::Corrupt(_))), "{what}, round {round}: {call}: {err:?}");
            }
            assert_eq!(bytes_of(&path), damaged, "a failed open modified the file");
        }
    }
}

/// The class of an outcome, for comparing runs.
fn class(e: Option<&StorageError>) -> &'static str {
    match e {
        None => "ok",
        Some(StorageError::Corrupt(_)) => "corrupt",
        Some(StorageError::WrongKey(_)) => "wrong key",
        Some(StorageError::Backend(_)) => "backend",
        Some(StorageError::Decrypt) => "decrypt",
        Some(_) => "other",
    }
}

/// Random single-bit flips anywhere in the file.
const FLIPS: usize = 1000;

#[test]
fn random_byte_flips_are_classified_the_same_way_every_time() {
    let dir = TempDir::new("flips");
    let valid = valid_db(&dir, "valid.db");
    let full = bytes_of(&valid);
    let mut x = 0x9e37_79b9_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let path = dir.file("flipped.db");
    for flip in 0..FLIPS {
        let pos = next() as usize % full.len();
        let bit = 1u8 << (next() % 8);
        let mut damaged = full.clone();
        damaged[pos] ^= bit;
        let mut classes = Vec::new();
        for _ in 0..2 {
            std::fs::write(&path, &damaged).unwrap();
            let (opened, inspected) = open_and_inspect(&path);
            for e in [&opened, &inspected] {
                assert!(
                    !matches!(e, Some(StorageError::Backend(_) | StorageError::Decrypt)),
                    "flip {flip} (byte {pos}, bit {bit:#04x}): damage reported as {e:?}"
                );
            }
            classes.push((class(opened.as_ref()), class(inspected.as_ref())));
        }
        assert!(classes.windows(2).all(|w| w[0] == w[1]), "flip {flip} (byte {pos}): {classes:?}");
        *seen.entry(classes[0].0).or_default() += 1;
    }
    println!("outcomes of {FLIPS} flips: {seen:?}");
    assert!(seen.get("corrupt").copied().unwrap_or(0) > 10, "{seen:?}");
}
