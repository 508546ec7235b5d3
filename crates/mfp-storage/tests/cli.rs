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
    assert!(out.contains(&format!("schema version: {}\n", mfp_storage::SCHEMA_VERSION)), "{out}");
    assert!(out.contains("\npending deliveries: 2 ("), "{out}");
}

#[test]
fn check_counts_cross_runtime_channels_and_compares_the_log_with_them() {
    use mfp_core::bilateral::BilateralState;
    use mfp_core::{AgentId, ChannelId, RuntimeId};
    use mfp_runtime::ChannelStatus;
    use mfp_runtime::storage::{OutboundRow, RemoteChannelRow, StorageOp};

    let dir = TempDir::new("cli-remote");
    let db = dir.file("r.db");
    let key_path = dir.file("k.key");
    let key = MasterKey::generate_file(&key_path).unwrap();
    let peer = RuntimeId::from_bytes([0x71; 32]);
    let chain = |n: u64, step: u64| BilateralState { ratchet: state(n), prng_seed: state(n + 1), step };
    let remote = |n: u8, status| {
        StorageOp::PutRemoteChannel(RemoteChannelRow {
            id: ChannelId::from_bytes([0xc0 | n; 16]),
            local_agent: agent_id(1),
            peer,
            remote_agent: AgentId::from_bytes([0xa0 | n; 32]),
            depth: 4,
            status,
            tx: chain(u64::from(n), 2),
            rx: chain(u64::from(n) + 10, 0),
            validation_failures: 0,
            rx_rotation: None,
            reset: None,
            unconfirmed: false,
        })
    };
    let logged = |n: u8, step: u64, to: RuntimeId| {
        StorageOp::PutOutbound(OutboundRow {
            channel: ChannelId::from_bytes([0xc0 | n; 16]),
            step,
            peer: to,
            wire: vec![7; 30],
        })
    };
    let storage = SqliteStorage::open(config(&db, &key)).unwrap();
    // No local channel: the stored Sg (none) is the root of no states, so only the log decides.
    storage.apply(vec![meta(1), put_agent(1, Some("alice"), mfp_runtime::AgentState::Active)]).wait().unwrap();
    storage
        .apply(vec![
            remote(1, ChannelStatus::Active),
            remote(2, ChannelStatus::Quarantined),
            remote(3, ChannelStatus::Active),
            logged(1, 0, peer),
            logged(1, 1, peer),
            logged(2, 0, peer),
        ])
        .wait()
        .unwrap();
    let check = || run(&["check", "--db", &s(&db), "--key-file", &s(&key_path)]);
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\ncross-runtime channels: 3 (active 2, quarantined 1)\n"), "{out}");
    assert!(out.contains("\noutbound log: 3 messages on 2 channels ("), "{out}");
    assert!(out.ends_with("OK\n"), "{out}");

    // A message at or beyond the chain's step, or addressed to another runtime: MISMATCH.
    storage.apply(vec![logged(3, 2, peer), logged(2, 1, RuntimeId::from_bytes([0x72; 32]))]).wait().unwrap();
    drop(storage);
    let (code, out, _) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("message at step 2 is not below the outbound chain's step 2"), "{out}");
    assert!(out.contains("is addressed to runtime 7272"), "{out}");
    assert!(!out.contains("\nOK"), "{out}");
}
