//! Encryption at rest: fresh nonces, key ids, rotation, wrong keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use mfp_core::bilateral::BilateralState;
use mfp_core::{BilateralId, RuntimeId};
use mfp_runtime::storage::{Storage, StorageError, StorageOp};
use mfp_storage::{
    BilateralRecord, BilateralStatus, OutboundRecord, SqliteStorage, WriteOp, inspect, rotate_master_key,
};
use sqlx::Row;

/// Every encrypted blob in the database: (table.column, blob).
fn all_blobs(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    with_raw(path, true, |c| {
        Box::pin(async move {
            let mut out = Vec::new();
            for (name, sql) in [
                ("channels.local_state", "SELECT local_state FROM channels WHERE local_state IS NOT NULL"),
                ("sg_cache.sg_value", "SELECT sg_value FROM sg_cache"),
                ("bilateral_channels.ratchet_state", "SELECT ratchet_state FROM bilateral_channels"),
                ("bilateral_channels.shared_prng_seed", "SELECT shared_prng_seed FROM bilateral_channels"),
                ("pending_outbound.wire", "SELECT wire FROM pending_outbound"),
                ("inbox.payload", "SELECT payload FROM inbox ORDER BY id"),
                ("mfp_keys.key_check", "SELECT key_check FROM mfp_keys"),
            ] {
                for row in sqlx::query(sql).fetch_all(&mut *c).await.unwrap() {
                    out.push((name.to_string(), row.get::<Vec<u8>, _>(0)));
                }
            }
            out
        })
    })
}

fn federation_ops() -> Vec<WriteOp> {
    let local = RuntimeId::derive(b"dep", b"a");
    let peer = RuntimeId::derive(b"dep", b"b");
    let id = BilateralId::derive(&local, &peer);
    vec![
        WriteOp::PutBilateral(BilateralRecord {
            id,
            local,
            peer,
            state: BilateralState::deterministic(&local, &peer),
            status: BilateralStatus::Active,
        }),
        WriteOp::PutOutbound(OutboundRecord {
            id: 7,
            bilateral: id,
            channel: channel_id(40),
            step: 0,
            wire: vec![0xab; 300],
        }),
    ]
}

#[test]
fn same_state_written_twice_gives_different_ciphertexts() {
    let dir = TempDir::new("nonce");
    let path = dir.file("n.db");
    let k = key(1);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage.apply(vec![advance(10, 1)]).wait().unwrap();
    let first = raw_channel_blob(&path, channel_id(10));
    storage.apply(vec![advance(10, 1)]).wait().unwrap();
    let second = raw_channel_blob(&path, channel_id(10));
    assert_ne!(first, second, "a fresh nonce per write");
    // Blob format: version 1, key id, 12-byte nonce, 32 + 16 bytes.
    for blob in [&first, &second] {
        assert_eq!(blob.len(), 1 + 8 + 12 + 32 + 16);
        assert_eq!(blob[0], 1);
        assert_eq!(&blob[1..9], &k.key_id());
    }
    assert_ne!(first[9..21], second[9..21], "nonces differ");
    assert_eq!(storage.load().unwrap().unwrap().channels[0].state, state(10 * 1000 + 1));

    // No plaintext state, Sg or outbound wire ends up in the file.
    storage.apply(vec![StorageOp::Sg(Some(state(4242)))]).wait().unwrap();
    storage.apply_ops(federation_ops()).wait().unwrap();
    storage.close().unwrap();
    let file = bytes_of(&path);
    for secret in [state(10 * 1000 + 1), state(11 * 1000), state(4242)] {
        assert!(find(&file, secret.expose()).is_none());
    }
    assert!(find(&file, &[0xab; 64]).is_none());
    assert!(!path.with_extension("db-wal").exists() || bytes_of(&path.with_extension("db-wal")).is_empty());
}

#[test]
fn rotation_changes_the_key_id_and_only_the_new_key_opens() {
    let dir = TempDir::new("rotate");
    let path = dir.file("r.db");
    let (old, new) = (key(1), key(2));
    let storage = SqliteStorage::open(config(&path, &old)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![advance(10, 1), delivery(10, 0, 1, 2, &[0xcd; 48]), StorageOp::Sg(Some(state(5)))])
        .wait()
        .unwrap();
    storage.apply_ops(federation_ops()).wait().unwrap();
    let snapshot = storage.load().unwrap();
    assert_eq!(snapshot.as_ref().unwrap().deliveries.len(), 1);
    let federation = storage.load_federation().unwrap();
    drop(storage);

    let before = all_blobs(&path);
    assert_eq!(before.len(), 2 + 1 + 2 + 1 + 1 + 1);
    assert!(before.iter().all(|(_, b)| b[1..9] == old.key_id()));

    let count = rotate_master_key(&path, &old, &new).unwrap();
    assert_eq!(count, before.len() as u64);
    let after = all_blobs(&path);
    assert_eq!(after.len(), before.len());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(a[0], 1, "{name}");
        assert_eq!(&a[1..9], &new.key_id(), "{name}: key id changed");
        assert_ne!(a, b, "{name}");
    }
    assert_ne!(old.key_id(), new.key_id());

    // Everything loads with the new key, nothing with the old one (and the file is untouched).
    let bytes = bytes_of(&path);
    assert!(is_wrong_key(&SqliteStorage::open(config(&path, &old)).unwrap_err(), &old, &new));
    assert!(is_wrong_key(&inspect(&path, &old).unwrap_err(), &old, &new));
    assert_eq!(bytes_of(&path), bytes);
    let reopened = SqliteStorage::open(config(&path, &new)).unwrap();
    assert_eq!(reopened.key_id(), new.key_id());
    assert_eq!(reopened.load().unwrap(), snapshot);
    assert_eq!(reopened.load_federation().unwrap(), federation);
    // Rotating again with the wrong old key fails and changes nothing.
    drop(reopened);
    assert!(is_wrong_key(&rotate_master_key(&path, &old, &key(3)).unwrap_err(), &old, &new));
    assert_eq!(inspect(&path, &new).unwrap().snapshot, snapshot);
}

#[test]
fn online_rotation_keeps_writing_with_the_new_key() {
    let dir = TempDir::new("online");
    let path = dir.file("o.db");
    let (old, new) = (key(4), key(5));
    let storage = SqliteStorage::open(config(&path, &old)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let queued = storage.apply(vec![advance(10, 1), delivery(10, 0, 1, 2, b"queued before the rotation")]);
    assert_eq!(storage.rotate_key(&new).unwrap(), 5);
    queued.wait().unwrap();
    assert_eq!(storage.key_id(), new.key_id());
    storage.apply(vec![advance(10, 2), delivery(10, 1, 1, 2, b"after"), StorageOp::Sg(Some(state(8)))]).wait().unwrap();
    let blobs = all_blobs(&path);
    assert_eq!(blobs.iter().filter(|(n, _)| n == "inbox.payload").count(), 2);
    assert!(blobs.iter().all(|(_, b)| b[1..9] == new.key_id()));
    let expected = storage.load().unwrap();
    assert_eq!(expected.as_ref().unwrap().deliveries.iter().map(|d| d.step).collect::<Vec<_>>(), vec![0, 1]);
    drop(storage);
    assert_eq!(SqliteStorage::open(config(&path, &new)).unwrap().load().unwrap(), expected);
}

/// `WrongKey`, naming the given key's id and the one the database wants.
fn is_wrong_key(e: &StorageError, given: &mfp_storage::MasterKey, wanted: &mfp_storage::MasterKey) -> bool {
    let text = e.to_string();
    matches!(e, StorageError::WrongKey(_))
        && text.contains(&hex::encode(given.key_id()))
        && text.contains(&hex::encode(wanted.key_id()))
        && format!("{e:?}") == text
}

#[test]
fn wrong_master_key_is_a_wrong_key_error_and_changes_nothing() {
    let dir = TempDir::new("wrongkey");
    let path = dir.file("w.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    let bytes = bytes_of(&path);
    assert!(is_wrong_key(&SqliteStorage::open(config(&path, &key(2))).unwrap_err(), &key(2), &key(1)));
    assert_eq!(bytes_of(&path), bytes);
    // An empty database (no data yet) is also bound to its key.
    let empty = dir.file("e.db");
    drop(SqliteStorage::open(config(&empty, &key(1))).unwrap());
    assert!(is_wrong_key(&SqliteStorage::open(config(&empty, &key(2))).unwrap_err(), &key(2), &key(1)));
}

#[test]
fn a_cell_moved_to_another_row_or_step_is_corrupt() {
    let dir = TempDir::new("moved");
    let path = dir.file("m.db");
    let k = key(6);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    // Copy channel 10's state into channel 11.
    raw_exec(
        &path,
        "UPDATE channels SET local_state = (SELECT local_state FROM channels WHERE channel_id = x'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a') WHERE channel_id = x'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b'",
    );
    let err = SqliteStorage::open(config(&path, &k)).unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt(m) if m.contains("channels.local_state")), "{err}");

    let path = dir.file("m2.db");
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    // Roll the step back without the state.
    raw_exec(&path, "UPDATE channels SET step = 5 WHERE channel_id = x'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'");
    let err = inspect(&path, &k).unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt(m) if m.contains("fails to authenticate")), "{err}");
}
