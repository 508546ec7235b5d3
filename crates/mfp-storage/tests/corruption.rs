//! Damaged, truncated and foreign files: typed errors, no panic, the file left untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{SqliteStorage, StorageConfig, inspect};

/// A valid, checkpointed database with a few channels.
fn valid_db(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.file(name);
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage.apply(vec![advance(10, 1), advance(11, 1)]).wait().unwrap();
    storage.close().unwrap();
    path
}

/// Opening fails with an error (whatever `check` says) and leaves the bytes as they were.
fn assert_refused(path: &Path, check: impl Fn(&StorageError) -> bool) -> StorageError {
    let bytes = bytes_of(path);
    let err = SqliteStorage::open(config(path, &key(1))).unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert_eq!(bytes_of(path), bytes, "the file was modified by a failed open");
    let err2 = inspect(path, &key(1)).unwrap_err();
    assert!(check(&err2), "inspect: {err2:?}");
    assert_eq!(bytes_of(path), bytes);
    err
}

fn is_corrupt(e: &StorageError) -> bool {
    matches!(e, StorageError::Corrupt(_))
}

#[test]
fn garbage_files_are_corrupt_and_untouched() {
    let dir = TempDir::new("garbage");
    let mut x = 0x1234_5678_u32;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    for (name, content) in [
        ("random-4k", random(4096)),
        ("random-short", random(10)),
        ("text", b"this is not a database\n".repeat(50)),
        ("header-only", b"SQLite format 3\0".to_vec()),
        ("bad-page-size", {
            let mut h = b"SQLite format 3\0".to_vec();
            h.extend_from_slice(&[0x03, 0x00]);
            h.resize(4096, 0);
            h
        }),
    ] {
        let path = dir.file(name);
        std::fs::write(&path, &content).unwrap();
        let err = assert_refused(&path, is_corrupt);
        println!("{name}: {err}");
    }
}

#[test]
fn truncated_databases_are_corrupt_and_untouched() {
    let dir = TempDir::new("truncated");
    let valid = valid_db(&dir, "valid.db");
    let full = bytes_of(&valid);
    let page = 4096;
    assert!(full.len() >= 3 * page, "{}", full.len());
    for cut in [50, 100, page - 1, page, full.len() / 2, full.len() - page, full.len() - 1] {
        let path = dir.file(&format!("cut-{cut}.db"));
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = assert_refused(&path, is_corrupt);
        println!("cut at {cut}: {err}");
    }
}

/// The file offset of channel 10's encrypted state.
fn channel_blob_offset(path: &Path) -> (usize, usize) {
    let blob = raw_channel_blob(path, channel_id(10));
    let file = bytes_of(path);
    (find(&file, &blob).expect("the blob is in the file"), blob.len())
}

#[test]
fn corruption_of_an_encrypted_cell_is_detected_and_untouched() {
    let dir = TempDir::new("cellflip");
    let valid = valid_db(&dir, "valid.db");
    let (at, len) = channel_blob_offset(&valid);
    let full = bytes_of(&valid);
    for i in (0..len).step_by(3) {
        let path = dir.file(&format!("flip-{i}.db"));
        let mut damaged = full.clone();
        damaged[at + i] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        assert_refused(&path, is_corrupt);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn random_byte_corruption_in_the_channels_table_never_panics() {
    let dir = TempDir::new("rowflip");
    let valid = valid_db(&dir, "valid.db");
    let (at, len) = channel_blob_offset(&valid);
    let full = bytes_of(&valid);
    // The row: header, id, agents (32 + 32), depth, status, step, then the blob. Flip every
    // byte from 120 bytes before the blob to its end.
    let start = at.saturating_sub(120);
    let (mut refused, mut accepted) = (0, 0);
    for pos in start..at + len {
        let path = dir.file(&format!("row-{pos}.db"));
        let mut damaged = full.clone();
        damaged[pos] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let before = bytes_of(&path);
        match SqliteStorage::open(config(&path, &key(1))) {
            Ok(s) => {
                // Undetectable (e.g. a timestamp); the data must still be readable.
                s.load().unwrap();
                accepted += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e, StorageError::Corrupt(_) | StorageError::Decrypt | StorageError::Backend(_)),
                    "{e:?}"
                );
                assert_eq!(bytes_of(&path), before, "failed open modified the file (byte {pos})");
                refused += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("db-wal"));
        let _ = std::fs::remove_file(path.with_extension("db-shm"));
    }
    println!("channels row corruption: {refused} refused, {accepted} undetectable (timestamps, counters)");
    assert!(refused > accepted);
}

#[test]
fn random_corruption_anywhere_never_panics() {
    let dir = TempDir::new("anyflip");
    let valid = valid_db(&dir, "valid.db");
    let full = bytes_of(&valid);
    let mut x = 0x9e37_79b9_u32;
    for n in 0..150 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let pos = x as usize % full.len();
        let path = dir.file(&format!("any-{n}.db"));
        let mut damaged = full.clone();
        damaged[pos] ^= (x >> 8) as u8 | 1;
        std::fs::write(&path, &damaged).unwrap();
        let before = bytes_of(&path);
        match SqliteStorage::open(config(&path, &key(1))) {
            // Validated on open: loading must work.
            Ok(s) => drop(s.load().unwrap()),
            Err(e) => assert_eq!(bytes_of(&path), before, "byte {pos}: failed open ({e}) modified the file"),
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("db-wal"));
        let _ = std::fs::remove_file(path.with_extension("db-shm"));
    }
}

#[test]
fn foreign_databases_are_refused_and_untouched() {
    let dir = TempDir::new("foreign");
    // Some other application's database.
    let other = dir.file("other.db");
    drop(std::fs::File::create(&other).unwrap());
    raw_exec(
        &other,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');",
    );
    let err = assert_refused(&other, is_corrupt);
    assert!(err.to_string().contains("foreign"), "{err}");
    let tables = with_raw(&other, true, |c| {
        Box::pin(async move {
            use sqlx::Row;
            sqlx::query("SELECT count(*) FROM sqlite_schema").fetch_one(&mut *c).await.unwrap().get::<i64, _>(0)
        })
    });
    assert_eq!(tables, 1, "no table was created in a foreign database");

    // A database that looks like pymfp's.
    let pymfp = dir.file("pymfp.db");
    drop(std::fs::File::create(&pymfp).unwrap());
    raw_exec(
        &pymfp,
        "CREATE TABLE runtime_meta (runtime_id BLOB PRIMARY KEY); CREATE TABLE agents (agent_id BLOB); \
         CREATE TABLE channels (channel_id BLOB); CREATE TABLE bilateral_channels (bilateral_id BLOB); \
         CREATE TABLE global_state_cache (runtime_id BLOB);",
    );
    let err = assert_refused(&pymfp, is_corrupt);
    assert!(err.to_string().contains("pymfp"), "{err}");

    // Our own schema, but from a newer version.
    let newer = valid_db(&dir, "newer.db");
    raw_exec(&newer, "UPDATE mfp_schema SET version = 99");
    let err = assert_refused(&newer, is_corrupt);
    assert!(err.to_string().contains("newer"), "{err}");

    // A migration we do not know.
    let unknown = valid_db(&dir, "unknown.db");
    raw_exec(
        &unknown,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (999, 'future', 1, x'00', 0)",
    );
    assert_refused(&unknown, is_corrupt);
}

#[test]
fn invalid_rows_name_table_and_column() {
    let dir = TempDir::new("rows");
    for (name, sql, column) in [
        (
            "status",
            "PRAGMA ignore_check_constraints = ON; UPDATE channels SET status = 'weird' WHERE channel_id = x'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'",
            Some("channels.status"),
        ),
        (
            "agent",
            "PRAGMA foreign_keys = OFF; PRAGMA ignore_check_constraints = ON; UPDATE agents SET state = 'zombie'",
            Some("agents.state"),
        ),
        ("depth", "PRAGMA ignore_check_constraints = ON; UPDATE channels SET depth = 1000", Some("channels.depth")),
        ("step", "PRAGMA ignore_check_constraints = ON; UPDATE channels SET step = -1", Some("channels.step")),
        ("steptype", "PRAGMA ignore_check_constraints = ON; UPDATE channels SET step = 'abc'", Some("channels.step")),
        (
            "failures",
            "PRAGMA ignore_check_constraints = ON; UPDATE channels SET validation_failure_count = 5000000000",
            Some("channels.validation_failure_count"),
        ),
        (
            "agentid",
            "PRAGMA foreign_keys = OFF; PRAGMA ignore_check_constraints = ON; UPDATE agents SET agent_id = x'01' WHERE name = 'alice'",
            None,
        ),
        ("dangling", "PRAGMA foreign_keys = OFF; DELETE FROM agents WHERE name = 'alice'", Some("channels.agent_a")),
        (
            "nullstate",
            "PRAGMA ignore_check_constraints = ON; UPDATE channels SET local_state = NULL",
            Some("channels.local_state"),
        ),
        (
            "shortstate",
            "PRAGMA ignore_check_constraints = ON; UPDATE channels SET local_state = x'0102'",
            Some("channels.local_state"),
        ),
        ("sg", "UPDATE sg_cache SET sg_value = x'00'", Some("sg_cache.sg_value")),
        (
            "meta",
            "PRAGMA ignore_check_constraints = ON; UPDATE runtime_meta SET identity = x'0102'",
            Some("runtime_meta.identity"),
        ),
        ("keys", "DELETE FROM mfp_keys", Some("mfp_keys")),
        ("table", "DROP TABLE sg_cache", Some("sg_cache")),
    ] {
        let path = valid_db(&dir, &format!("{name}.db"));
        raw_exec(&path, sql);
        let err = assert_refused(&path, |e| matches!(e, StorageError::Corrupt(_)));
        if let Some(column) = column {
            assert!(err.to_string().contains(column), "{name}: {err}");
        }
        println!("{name}: {err}");
    }
}

#[test]
fn new_paths_and_empty_files_become_databases() {
    let dir = TempDir::new("new");
    // Missing path: created.
    let p = dir.file("fresh.db");
    let s = SqliteStorage::open(config(&p, &key(1))).unwrap();
    assert!(s.created());
    drop(s);
    // Empty file and empty SQLite database: initialised.
    let empty = dir.file("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert!(SqliteStorage::open(config(&empty, &key(1))).unwrap().created());
    // Missing path with create_if_missing = false: an error, nothing created.
    let mut c: StorageConfig = config(&dir.file("nope.db"), &key(1));
    c.create_if_missing = false;
    assert!(matches!(SqliteStorage::open(c), Err(StorageError::Backend(_))));
    assert!(!dir.file("nope.db").exists());
    // A directory that does not exist.
    assert!(matches!(SqliteStorage::open(config(&dir.file("no/such/dir.db"), &key(1))), Err(StorageError::Backend(_))));
}
