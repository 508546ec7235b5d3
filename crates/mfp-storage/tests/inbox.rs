//! The durable inbox (schema version 2): stored with the advance, removed on acknowledgement,
//! encrypted at rest and bound to its row, and databases of schema version 1 migrate to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mfp_runtime::storage::{Storage, StorageError, StorageOp};
use mfp_runtime::{Runtime, RuntimeConfig};
use mfp_storage::{SCHEMA_VERSION, SqliteStorage, inspect};

#[test]
fn deliveries_are_stored_in_order_encrypted_and_removed_by_their_ack() {
    let dir = TempDir::new("inbox-roundtrip");
    let path = dir.file("i.db");
    let k = key(1);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let secret = [0x5au8; 40];
    storage.apply(vec![advance(11, 1), delivery(11, 0, 3, 2, &secret), StorageOp::Sg(Some(state(1)))]).wait().unwrap();
    storage
        .apply(vec![advance(10, 1), delivery(10, 0, 1, 2, b"second"), StorageOp::Sg(Some(state(2)))])
        .wait()
        .unwrap();
    storage.apply(vec![advance(10, 2), delivery(10, 1, 1, 2, b"third"), StorageOp::Sg(Some(state(3)))]).wait().unwrap();
    let d = storage.load().unwrap().unwrap().deliveries;
    // Stored order, not key order: channel 11 first.
    assert_eq!(
        d.iter().map(|r| (r.channel, r.step)).collect::<Vec<_>>(),
        vec![(channel_id(11), 0), (channel_id(10), 0), (channel_id(10), 1)]
    );
    assert_eq!((d[0].recipient, d[0].sender, &d[0].payload[..]), (agent_id(2), agent_id(3), &secret[..]));
    assert_eq!(d[2].correlation_id, [1; 8]);
    storage.apply(vec![StorageOp::AckDelivery { channel: channel_id(10), step: 0 }]).wait().unwrap();
    // Removing what is not stored is no error.
    storage.apply(vec![StorageOp::AckDelivery { channel: channel_id(10), step: 7 }]).wait().unwrap();
    drop(storage);
    assert!(find(&bytes_of(&path), &secret).is_none(), "payload stored in clear");
    let found = inspect(&path, &k).unwrap();
    assert_eq!(found.schema_version, SCHEMA_VERSION);
    let left = found.snapshot.unwrap().deliveries;
    assert_eq!(
        left.iter().map(|r| (r.channel, r.step)).collect::<Vec<_>>(),
        vec![(channel_id(11), 0), (channel_id(10), 1)]
    );

    // A payload moved to another row (or a row's sender changed) no longer opens.
    raw_exec(
        &path,
        "UPDATE inbox SET sender = x'0303030303030303030303030303030303030303030303030303030303030399' WHERE step = 1",
    );
    let e = inspect(&path, &k).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt(ref m) if m.contains("inbox.payload")), "{e}");
}

#[test]
fn a_message_leaves_the_inbox_with_its_recipient_not_with_its_channel() {
    let dir = TempDir::new("inbox-cascade");
    let path = dir.file("c.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![advance(11, 1), delivery(11, 0, 2, 3, b"to three"), StorageOp::Sg(Some(state(1)))])
        .wait()
        .unwrap();
    storage
        .apply(vec![advance(11, 2), delivery(11, 1, 3, 2, b"to two"), StorageOp::Sg(Some(state(2)))])
        .wait()
        .unwrap();
    storage.apply(vec![StorageOp::CloseChannel(channel_id(11))]).wait().unwrap();
    // Closed, the messages still wait for their handlers.
    assert_eq!(storage.load().unwrap().unwrap().deliveries.len(), 2);
    // Agent 3 goes (and with it the closed channel's row): its own message goes, the one it
    // sent to agent 2 stays.
    storage.apply(vec![StorageOp::DeleteAgent(agent_id(3))]).wait().unwrap();
    let left = storage.load().unwrap().unwrap().deliveries;
    assert_eq!(
        left.iter().map(|d| (d.channel, d.step, d.recipient)).collect::<Vec<_>>(),
        vec![(channel_id(11), 1, agent_id(2))]
    );
}

fn runtime_config() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"inbox".to_vec();
    c.max_message_rate = 0;
    c
}

#[test]
fn a_schema_1_database_migrates_and_delivers() {
    let dir = TempDir::new("inbox-v1");
    let path = dir.file("v1.db");
    let k = key(2);
    // A database as the previous schema left it: a runtime with two agents and a channel
    // that carried one message (versions 2 and 3 only add tables).
    let (alice, bob, ch) = {
        let rt = Runtime::builder(runtime_config())
            .storage(SqliteStorage::open(config(&path, &k)).unwrap())
            .build()
            .unwrap();
        let alice = rt.bind_named("alice", |_, _| {}).unwrap();
        let bob = rt.bind_named("bob", |_, _| {}).unwrap();
        let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
        alice.send(ch, b"before").unwrap();
        assert!(rt.wait_idle(Duration::from_secs(10)));
        rt.shutdown();
        (alice.id(), bob.id(), ch)
    };
    raw_exec(
        &path,
        "DROP TABLE inbox; DROP TABLE peers; DROP TABLE remote_outbound; DROP TABLE remote_channels; UPDATE mfp_schema \
         SET version = 1; \
         DELETE FROM _sqlx_migrations WHERE version >= 2",
    );
    let old = inspect(&path, &k).unwrap();
    assert_eq!(old.schema_version, 1);
    assert!(old.snapshot.as_ref().unwrap().deliveries.is_empty());
    assert_eq!(old.snapshot.unwrap().channels[0].step, 1);

    // Opened by this build: migrated, restored, and it delivers (durably) again.
    let rt =
        Runtime::builder(runtime_config()).storage(SqliteStorage::open(config(&path, &k)).unwrap()).build().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    let alice_h = rt.attach(&alice, |_, _| {}).unwrap();
    rt.attach(&bob, move |_, m| seen.lock().unwrap().push((m.step, m.payload, m.redelivered))).unwrap();
    assert_eq!(alice_h.send(ch, b"after").unwrap().step, 1);
    assert!(rt.wait_idle(Duration::from_secs(10)));
    rt.shutdown();
    drop(rt);
    assert_eq!(*got.lock().unwrap(), vec![(1, b"after".to_vec(), false)]);
    let new = inspect(&path, &k).unwrap();
    assert_eq!(new.schema_version, SCHEMA_VERSION);
    let snap = new.snapshot.unwrap();
    assert_eq!(snap.channels[0].step, 2);
    assert!(snap.deliveries.is_empty(), "the handled message left the inbox");
}
