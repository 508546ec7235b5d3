//! One store per database file: a second open is refused until the first is closed, whatever
//! name the file is reached by, and a dead holder never blocks the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{SqliteStorage, rotate_master_key};

fn in_use(r: &Result<SqliteStorage, StorageError>) -> String {
    match r {
        Err(StorageError::InUse(msg)) => msg.clone(),
        other => panic!("expected InUse, got {:?}", other.as_ref().map(|_| ())),
    }
}

#[test]
fn a_second_open_is_refused_while_the_first_is_open() {
    let dir = TempDir::new("lock");
    let path = dir.file("one.db");
    let k = key(1);
    let first = SqliteStorage::open(config(&path, &k)).unwrap();
    let msg = in_use(&SqliteStorage::open(config(&path, &k)));
    assert!(msg.contains("already open in this process"), "{msg}");
    assert!(msg.contains("one.db"), "the message names the file: {msg}");
    // Rotating the key of a database in use is refused as well.
    assert!(matches!(rotate_master_key(&path, &k, &key(2)), Err(StorageError::InUse(_))));
    drop(first);
    let again = SqliteStorage::open(config(&path, &k)).unwrap();
    drop(again);
    assert_eq!(rotate_master_key(&path, &k, &key(2)).map(|_| ()), Ok(()));
}

#[cfg(unix)]
#[test]
fn a_symlink_or_hard_link_to_an_open_database_is_refused() {
    let dir = TempDir::new("lock-links");
    let path = dir.file("real.db");
    let k = key(1);
    let first = SqliteStorage::open(config(&path, &k)).unwrap();
    first.apply(setup_ops()).wait().unwrap();

    let sym = dir.file("sym.db");
    std::os::unix::fs::symlink(&path, &sym).unwrap();
    let hard = dir.file("hard.db");
    std::fs::hard_link(&path, &hard).unwrap();
    // A symlink to the directory: another spelling of the same path.
    let dir_link = dir.file("dirlink");
    std::os::unix::fs::symlink(dir.path(), &dir_link).unwrap();

    for other in [sym.clone(), hard.clone(), dir_link.join("real.db"), dir.path().join(".").join("real.db")] {
        let msg = in_use(&SqliteStorage::open(config(&other, &k)));
        assert!(msg.contains("already open in this process"), "{}: {msg}", other.display());
    }
    drop(first);
    // Closed: each name opens again (one at a time).
    for other in [&sym, &hard, &path] {
        let s = SqliteStorage::open(config(other, &k)).unwrap();
        assert_eq!(s.load().unwrap().unwrap().channels.len(), 2);
        drop(s);
    }
}

const CHILD_DB: &str = "MFP_STORAGE_TEST_LOCK_DB";

/// Starts a child process that opens `path` and waits; returns once the store is open.
fn spawn_holder(path: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_holder_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            // libtest prints "test NAME ... " without a newline before the child's first line.
            Some(Ok(line)) if line.ends_with("OPEN") => break,
            Some(Ok(_)) => {}
            other => panic!("the child did not open the store: {other:?}"),
        }
    }
    child
}

#[cfg(unix)]
#[test]
fn another_process_holding_the_database_is_named_and_its_death_releases_it() {
    let dir = TempDir::new("lock-process");
    let path = dir.file("shared.db");
    let k = key(1);
    drop(SqliteStorage::open(config(&path, &k)).unwrap());
    let hard = dir.file("hard.db");
    std::fs::hard_link(&path, &hard).unwrap();
    let sym = dir.file("sym.db");
    std::os::unix::fs::symlink(&path, &sym).unwrap();

    let mut child = spawn_holder(&path);
    let pid = child.id();
    for other in [&path, &sym, &hard] {
        let msg = in_use(&SqliteStorage::open(config(other, &k)));
        assert!(msg.contains("another process"), "{}: {msg}", other.display());
    }
    let msg = in_use(&SqliteStorage::open(config(&path, &k)));
    assert!(msg.contains(&format!("pid {pid}")), "{msg}");

    // SIGKILL: the kernel drops the locks with the process.
    child.kill().unwrap();
    child.wait().unwrap();
    for other in [&hard, &sym, &path] {
        let s = SqliteStorage::open(config(other, &k)).unwrap();
        drop(s);
    }
}

/// Runs only as the child of the test above: opens the store and waits for its stdin to close.
#[test]
fn lock_holder_child() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let storage = SqliteStorage::open(config(path.as_ref(), &key(1))).unwrap();
    println!("OPEN");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(storage);
}

#[test]
fn a_missing_database_leaves_no_file_behind() {
    let dir = TempDir::new("lock-missing");
    let path = dir.file("missing.db");
    let err = rotate_master_key(&path, &key(1), &key(2)).unwrap_err();
    assert!(matches!(&err, StorageError::Backend(m) if m.contains("does not exist")), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_is_refused_not_created() {
    let dir = TempDir::new("lock-dangling");
    let link = dir.file("link.db");
    std::os::unix::fs::symlink(dir.file("nowhere.db"), &link).unwrap();
    let err = SqliteStorage::open(config(&link, &key(1))).unwrap_err();
    assert!(matches!(&err, StorageError::Backend(m) if m.contains("symlink")), "{err}");
    assert!(!dir.file("nowhere.db").exists());
}
