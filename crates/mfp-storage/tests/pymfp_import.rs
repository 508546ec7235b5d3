//! Import of a REAL pymfp 1.0.0 database (pymfp installed from PyPI into
//! `target/pymfp-venv`), and the `mfp-storage` command-line tool on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mfp_core::{AgentId, BilateralId, ChannelId, MerkleSg, RuntimeId, State};
use mfp_runtime::storage::{Storage, StorageError};
use mfp_runtime::{AgentState, ChannelStatus};
use mfp_storage::pymfp::{self, PymfpEncryption};
use mfp_storage::{BilateralStatus, MasterKey, SqliteStorage, StorageConfig};
use serde_json::Value;

const PYMFP_MASTER: [u8; 32] = [
    0x9f, 0x01, 0x83, 0x44, 0xd2, 0x6e, 0xb7, 0x10, 0x5a, 0xc3, 0x28, 0xee, 0x71, 0x0b, 0x96, 0x3d, 0xa4, 0x5f, 0x12,
    0xc8, 0x67, 0xf0, 0x3b, 0x8e, 0x21, 0xd9, 0x74, 0x06, 0xbb, 0x4c, 0xe5, 0x90,
];

/// `target/pymfp-venv/bin/python`, with pymfp 1.0.0 installed from PyPI if needed.
fn pymfp_python() -> PathBuf {
    mfp_testkit::PythonVenv::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), "pymfp-venv")
        .package("pymfp==1.0.0")
        .check("import mfp, sys; sys.exit(0 if mfp.__version__ == '1.0.0' else 1)")
        .python()
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// Builds a pymfp database at `db` and returns what pymfp printed about it.
fn make_pymfp_db(db: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymfp/make_db.py");
    let out = Command::new(pymfp_python()).arg(script).arg(db).arg(hex::encode(PYMFP_MASTER)).output().unwrap();
    assert!(out.status.success(), "make_db.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn expected_channels(py: &Value) -> Vec<(ChannelId, AgentId, AgentId, State, u64, usize, ChannelStatus)> {
    let mut v: Vec<_> = py["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                ChannelId::from_slice(&hexv(&c["channel_id"])).unwrap(),
                AgentId::from_slice(&hexv(&c["agent_a"])).unwrap(),
                AgentId::from_slice(&hexv(&c["agent_b"])).unwrap(),
                State::from_slice(&hexv(&c["local_state"])).unwrap(),
                c["step"].as_u64().unwrap(),
                c["depth"].as_u64().unwrap() as usize,
                match c["status"].as_str().unwrap() {
                    "active" => ChannelStatus::Active,
                    "quarantined" => ChannelStatus::Quarantined,
                    s => panic!("status {s}"),
                },
            )
        })
        .collect();
    v.sort_by_key(|c| c.0);
    v
}

#[test]
fn import_a_real_pymfp_database() {
    let dir = TempDir::new("pymfp");
    let pydb = dir.file("pymfp.db");
    let py = make_pymfp_db(&pydb);
    let pymfp_bytes = bytes_of(&pydb);
    let runtime_id = RuntimeId::from_slice(&hexv(&py["runtime_id"])).unwrap();
    let sg = State::from_slice(&hexv(&py["sg"])).unwrap();
    let channels = expected_channels(&py);
    assert_eq!(channels.len(), 3);

    // Read it.
    let export = pymfp::read_database(&pydb, PymfpEncryption::Key(&PYMFP_MASTER)).unwrap();
    assert_eq!(export.snapshot.meta.as_ref().unwrap().identity, runtime_id);
    assert_eq!(export.snapshot.meta.as_ref().unwrap().agent_counter, 4);
    assert_eq!(export.snapshot.sg, Some(sg.clone()), "Sg recomputed with the Merkle algorithm equals pymfp's");
    assert_eq!(export.cached_sg, Some(sg.clone()));
    assert!(export.warnings.is_empty(), "{:?}", export.warnings);
    let got: Vec<_> = export
        .snapshot
        .channels
        .iter()
        .map(|c| (c.id, c.agent_a, c.agent_b, c.state.clone(), c.step, c.depth, c.status))
        .collect();
    assert_eq!(got, channels, "every channel's state, step, depth and status");
    let closed = ChannelId::from_slice(&hexv(&py["closed_channel"])).unwrap();
    assert!(export.snapshot.channels.iter().all(|c| c.id != closed));
    let mut agents: Vec<(AgentId, AgentState)> = py["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let state = match a["state"].as_str().unwrap() {
                "bound" => AgentState::Bound,
                "active" => AgentState::Active,
                s => panic!("{s}"),
            };
            (AgentId::from_slice(&hexv(&a["agent_id"])).unwrap(), state)
        })
        .collect();
    agents.sort_by_key(|a| a.0);
    assert_eq!(export.snapshot.agents.iter().map(|a| (a.id, a.state)).collect::<Vec<_>>(), agents);
    let b = &export.bilateral;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, BilateralId::from_slice(&hexv(&py["bilateral"]["bilateral_id"])).unwrap());
    assert_eq!(b[0].local, runtime_id);
    assert_eq!(b[0].peer, RuntimeId::from_slice(&hexv(&py["bilateral"]["peer"])).unwrap());
    assert_eq!(b[0].state.ratchet, State::from_slice(&hexv(&py["bilateral"]["ratchet_state"])).unwrap());
    assert_eq!(b[0].state.prng_seed, State::from_slice(&hexv(&py["bilateral"]["shared_prng_seed"])).unwrap());
    assert_eq!(b[0].state.step, py["bilateral"]["step"].as_u64().unwrap());
    assert_eq!(b[0].status, BilateralStatus::Active);

    // Wrong key, wrong mode: typed errors. Our storage refuses to open it directly.
    assert_eq!(pymfp::read_database(&pydb, PymfpEncryption::Key(&[7u8; 32])).unwrap_err(), StorageError::Decrypt);
    assert!(matches!(pymfp::read_database(&pydb, PymfpEncryption::Plaintext), Err(StorageError::Corrupt(_))));
    let err = SqliteStorage::open(config(&pydb, &key(1))).unwrap_err();
    assert!(err.to_string().contains("pymfp"), "{err}");

    // Import it.
    let target = dir.file("imported.db");
    let k = key(1);
    let report = pymfp::import(&pydb, PymfpEncryption::Key(&PYMFP_MASTER), config(&target, &k)).unwrap();
    assert_eq!((report.runtime_id, report.agents, report.channels, report.bilateral), (runtime_id, 4, 3, 1));
    let storage = SqliteStorage::open(config(&target, &k)).unwrap();
    let loaded = storage.load().unwrap().unwrap();
    assert_eq!(loaded, export.snapshot);
    let got: Vec<_> = loaded
        .channels
        .iter()
        .map(|c| (c.id, c.agent_a, c.agent_b, c.state.clone(), c.step, c.depth, c.status))
        .collect();
    assert_eq!(got, channels);
    assert_eq!(loaded.sg, Some(sg.clone()));
    let mut tree = MerkleSg::from_states(loaded.channels.iter().map(|c| (c.id, &c.state))).unwrap();
    assert_eq!(tree.root(), Some(sg));
    assert_eq!(storage.load_federation().unwrap().bilateral, export.bilateral);
    drop(storage);
    // A second import into the same database is refused.
    assert!(pymfp::import(&pydb, PymfpEncryption::Key(&PYMFP_MASTER), config(&target, &k)).is_err());
    // The pymfp database was never modified.
    assert_eq!(bytes_of(&pydb), pymfp_bytes);

    cli(&dir, &pydb, &loaded);
}

/// The `mfp-storage` binary: import-pymfp, check, rotate-key.
fn cli(dir: &TempDir, pydb: &Path, expected: &mfp_runtime::storage::Snapshot) {
    let bin = env!("CARGO_BIN_EXE_mfp-storage");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let pykey = dir.file("pymfp.key");
    std::fs::write(&pykey, format!("{}\n", hex::encode(PYMFP_MASTER))).unwrap();
    let key1 = dir.file("k1.key");
    std::fs::write(&key1, key(11).expose()).unwrap();
    let key2 = dir.file("k2.key");
    std::fs::write(&key2, hex::encode(key(12).expose())).unwrap();
    let db = dir.file("cli.db");

    let (code, out, err) = run(&[
        "import-pymfp",
        "--pymfp-db",
        &s(pydb),
        "--pymfp-key-file",
        &s(&pykey),
        "--db",
        &s(&db),
        "--key-file",
        &s(&key1),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("4 agents, 3 channels, 1 bilateral channels"), "{out}");

    let (code, out, err) = run(&["check", "--db", &s(&db), "--key-file", &s(&key1)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("channels: 3 (active 2, quarantined 1)") && out.contains("sg: consistent") && out.contains("OK"),
        "{out}"
    );

    let (code, out, err) =
        run(&["rotate-key", "--db", &s(&db), "--old-key-file", &s(&key1), "--new-key-file", &s(&key2)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("rotated 7 encrypted cells"), "{out}");
    let (code, _, err) = run(&["check", "--db", &s(&db), "--key-file", &s(&key1)]);
    assert_eq!(code, Some(1), "the old key no longer works: {err}");
    let (code, out, _) = run(&["check", "--db", &s(&db), "--key-file", &s(&key2)]);
    assert_eq!(code, Some(0), "{out}");
    let k2 = MasterKey::from_file(&key2).unwrap();
    assert_eq!(mfp_storage::inspect(&db, &k2).unwrap().snapshot.as_ref(), Some(expected));

    // Usage errors and bad keys.
    assert_eq!(run(&[]).0, Some(2));
    assert_eq!(run(&["check", "--db"]).0, Some(2));
    assert_eq!(run(&["check", "--db", &s(&db), "--bogus", "x"]).0, Some(2));
    let bad = dir.file("bad.key");
    std::fs::write(&bad, format!("{} \n", hex::encode(key(12).expose()))).unwrap();
    let (code, _, err) = run(&["check", "--db", &s(&db), "--key-file", &s(&bad)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid master key"), "{err}");
    // Sg mismatch is reported.
    let tampered = dir.file("tampered.db");
    let storage = SqliteStorage::open(StorageConfig::new(&tampered, k2.clone())).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    let (code, out, _) = run(&["check", "--db", &s(&tampered), "--key-file", &s(&key2)]);
    assert_eq!(code, Some(1));
    assert!(out.contains("MISMATCH"), "{out}");
}
