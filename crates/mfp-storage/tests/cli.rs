//! The `mfp-storage` tool: `--help` everywhere, keygen, and what rotate-key leaves behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mfp_runtime::storage::Storage;
use mfp_storage::{MasterKey, SqliteStorage};

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mfp-storage")).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[test]
fn help_works_for_the_tool_and_every_command() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for cmd in ["keygen", "check", "rotate-key", "import-pymfp"] {
        assert!(out.contains(cmd), "{out}");
        let (code, out, err) = run(&[cmd, "--help"]);
        assert_eq!(code, Some(0), "{cmd} --help: {err}");
        assert!(out.contains("Usage: mfp-storage") && out.contains("--"), "{cmd}: {out}");
    }
    let (code, out, _) = run(&["check", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--db") && out.contains("--key-file"), "{out}");
    // Usage errors: status 2.
    assert_eq!(run(&[]).0, Some(2));
    assert_eq!(run(&["check", "--db"]).0, Some(2));
    assert_eq!(run(&["check", "--db", "x", "--key-file", "y", "--bogus", "z"]).0, Some(2));
    assert_eq!(run(&["import-pymfp", "--pymfp-db", "a", "--db", "b", "--key-file", "c"]).0, Some(2));
}

#[test]
fn keygen_creates_a_private_key_file_once() {
    let dir = TempDir::new("cli-keygen");
    let path = dir.file("new.key");
    let (code, out, err) = run(&["keygen", "--out", &s(&path)]);
    assert_eq!(code, Some(0), "{err}");
    let key = MasterKey::from_file(&path).unwrap();
    assert!(out.contains(&hex::encode(key.key_id())), "prints the key id: {out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let before = std::fs::read(&path).unwrap();
    let (code, _, err) = run(&["keygen", "--out", &s(&path)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn rotate_key_on_a_missing_database_leaves_nothing_behind() {
    let dir = TempDir::new("cli-rotate-missing");
    let key = dir.file("k.key");
    MasterKey::generate_file(&key).unwrap();
    let db = dir.file("missing.db");
    let (code, _, err) = run(&["rotate-key", "--db", &s(&db), "--old-key-file", &s(&key), "--new-key-file", &s(&key)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("missing.db") && err.contains("does not exist"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["k.key"], "only the key file is there");
}

#[cfg(unix)]
#[test]
fn the_key_permission_warning_is_printed_once_for_one_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-warn-once");
    let key_path = dir.file("shared.key");
    let key = MasterKey::generate_file(&key_path).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = dir.file("rt.db");
    let storage = SqliteStorage::open(config(&db, &key)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    let (code, out, err) =
        run(&["rotate-key", "--db", &s(&db), "--old-key-file", &s(&key_path), "--new-key-file", &s(&key_path)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(err.matches("readable by group or others").count(), 1, "{err}");
}

#[test]
fn check_reports_the_pending_deliveries() {
    let dir = TempDir::new("cli-pending");
    let db = dir.file("p.db");
    let key_path = dir.file("k.key");
    let key = MasterKey::generate_file(&key_path).unwrap();
    let storage = SqliteStorage::open(config(&db, &key)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![advance(10, 1), delivery(10, 0, 1, 2, b"one"), mfp_runtime::storage::StorageOp::Sg(Some(state(1)))])
        .wait()
        .unwrap();
    storage.apply(vec![advance(10, 2), delivery(10, 1, 1, 2, b"two")]).wait().unwrap();
    drop(storage);
    let (code, out, err) = run(&["check", "--db", &s(&db), "--key-file", &s(&key_path)]);
    // The Sg of these hand-made rows is not the channels' root: check fails, after printing.
    assert_eq!(code, Some(1), "{err}");
    assert!(out.contains("schema version: 2\n"), "{out}");
    assert!(out.contains("\npending deliveries: 2 ("), "{out}");
}
