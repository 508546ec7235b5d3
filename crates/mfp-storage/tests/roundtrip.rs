//! apply/load round trips of every op kind, compared with MemoryStorage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use mfp_core::{BilateralId, RuntimeId, bilateral::BilateralState};
use mfp_runtime::storage::{AgentRow, ChannelRow, MemoryStorage, Storage, StorageError, StorageOp};
use mfp_runtime::{AgentState, ChannelStatus};
use mfp_storage::{
    BilateralRecord, BilateralStatus, FederationSnapshot, OutboundRecord, SqliteStorage, WriteOp, inspect,
};

/// Every op kind, in batches a runtime could send.
fn batches() -> Vec<Vec<StorageOp>> {
    vec![
        setup_ops(),
        // Messages: advance + Sg.
        vec![advance(10, 1), StorageOp::Sg(Some(state(100)))],
        vec![advance(10, 2), StorageOp::Sg(Some(state(101)))],
        vec![advance(11, 1), StorageOp::Sg(Some(state(102)))],
        // A failure count persisted, then reset by an advance.
        vec![StorageOp::PutChannel(ChannelRow { validation_failures: 3, ..channel_row(11, 2, 3, 1) })],
        vec![StorageOp::ChannelFailures { id: channel_id(11), count: 4 }],
        // Quarantine and restore (agent with reason, channel status).
        vec![
            StorageOp::PutAgent(AgentRow {
                id: agent_id(3),
                name: None,
                state: AgentState::Quarantined,
                quarantine_reason: "rate limit exceeded".into(),
            }),
            StorageOp::ChannelStatus { id: channel_id(11), status: ChannelStatus::Quarantined },
        ],
        vec![
            put_agent(3, None, AgentState::Active),
            StorageOp::ChannelStatus { id: channel_id(11), status: ChannelStatus::Active },
        ],
        vec![advance(11, 2), StorageOp::Sg(Some(state(103)))],
        // A new agent and channel, with a deeper frame.
        vec![meta(4), put_agent(4, Some("dave"), AgentState::Bound)],
        vec![
            StorageOp::PutChannel(ChannelRow { depth: 8, ..channel_row(12, 1, 4, 0) }),
            put_agent(4, Some("dave"), AgentState::Active),
            StorageOp::Sg(Some(state(104))),
        ],
        // Close a channel, terminate and delete an agent.
        vec![
            StorageOp::CloseChannel(channel_id(12)),
            put_agent(4, Some("dave"), AgentState::Bound),
            StorageOp::Sg(Some(state(105))),
        ],
        vec![put_agent(4, Some("dave"), AgentState::Terminated)],
        vec![StorageOp::DeleteAgent(agent_id(4))],
        // A new agent may reuse the name of a terminated one.
        vec![meta(5), put_agent(5, Some("dave"), AgentState::Bound)],
        vec![put_agent(5, Some("dave"), AgentState::Terminated)],
        vec![meta(6), put_agent(6, Some("dave"), AgentState::Bound)],
        // Close via ChannelStatus, then the last channel: Sg goes away.
        vec![
            StorageOp::ChannelStatus { id: channel_id(11), status: ChannelStatus::Closed },
            StorageOp::Sg(Some(state(106))),
        ],
        vec![StorageOp::CloseChannel(channel_id(10)), StorageOp::Sg(None)],
        // Ops on closed or unknown channels do nothing.
        vec![advance(10, 9), advance(77, 1)],
        vec![StorageOp::ChannelStatus { id: channel_id(77), status: ChannelStatus::Quarantined }],
        vec![StorageOp::DeleteAgent(agent_id(1))],
        vec![StorageOp::DeleteAgent(agent_id(99))],
    ]
}

#[test]
fn every_op_kind_matches_memory_storage() {
    let dir = TempDir::new("roundtrip");
    let path = dir.file("rt.db");
    let k = key(1);
    let memory = MemoryStorage::new();
    let sqlite = SqliteStorage::open(config(&path, &k)).unwrap();
    assert!(sqlite.created());
    assert_eq!(sqlite.load().unwrap(), None);
    assert_eq!(memory.load().unwrap(), None);

    for (i, batch) in batches().into_iter().enumerate() {
        memory.apply(batch.clone()).wait().unwrap();
        sqlite.apply(batch).wait().unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert_eq!(sqlite.load().unwrap(), memory.load().unwrap(), "after batch {i}");
        // Check a few intermediate states explicitly.
        if i == 2 {
            let s = sqlite.load().unwrap().unwrap();
            assert_eq!(s.channels[0].step, 2);
            assert_eq!(s.channels[0].state, state(10 * 1000 + 2));
            assert_eq!(s.sg, Some(state(101)));
        }
    }
    let expected = memory.load().unwrap();
    sqlite.close().unwrap();

    // After a restart.
    let reopened = SqliteStorage::open(config(&path, &k)).unwrap();
    assert!(!reopened.created());
    assert_eq!(reopened.load().unwrap(), expected);
    drop(reopened);
    assert_eq!(inspect(&path, &k).unwrap().snapshot, expected);
}

#[test]
fn a_group_of_every_op_kind_is_read_back_exactly() {
    // Queued without waiting for each other, the batches share transactions: the writer's
    // fast path writes them, leaving out the writes a later one of the same group replaces.
    let dir = TempDir::new("group-roundtrip");
    let path = dir.file("g.db");
    let k = key(7);
    let memory = MemoryStorage::new();
    let sqlite = SqliteStorage::open(config(&path, &k)).unwrap();
    let mut all = batches();
    // Delivered messages, some of them handled, on a channel that stays open.
    let messages = vec![
        vec![advance(11, 3), delivery(11, 3, 2, 3, b"first"), StorageOp::Sg(Some(state(200)))],
        vec![advance(11, 4), delivery(11, 4, 3, 2, &[0u8, 0xff, 7]), StorageOp::Sg(Some(state(201)))],
        vec![StorageOp::AckDelivery { channel: channel_id(11), step: 3 }],
        vec![advance(11, 5), delivery(11, 5, 2, 3, &[0x42; 300]), StorageOp::Sg(Some(state(202)))],
    ];
    all.splice(9..9, messages);
    let count = all.len() as u64;
    let tickets: Vec<_> = all
        .into_iter()
        .map(|batch| {
            memory.apply(batch.clone()).wait().unwrap();
            sqlite.apply(batch)
        })
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        t.wait().unwrap_or_else(|e| panic!("batch {i}: {e}"));
    }
    let stats = sqlite.stats();
    assert_eq!((stats.batches_committed, stats.batches_failed), (count, 0));
    assert!(stats.commits < count, "the batches shared transactions: {stats:?}");
    let expected = memory.load().unwrap();
    let deliveries = &expected.as_ref().unwrap().deliveries;
    assert_eq!(deliveries.iter().map(|d| d.step).collect::<Vec<_>>(), vec![4, 5], "the test's own premise");
    assert_eq!(sqlite.load().unwrap(), expected);
    sqlite.close().unwrap();
    assert_eq!(inspect(&path, &k).unwrap().snapshot, expected);
}

#[test]
fn awkward_text_round_trips() {
    let dir = TempDir::new("text");
    let path = dir.file("t.db");
    let k = key(6);
    let memory = MemoryStorage::new();
    let sqlite = SqliteStorage::open(config(&path, &k)).unwrap();
    let names = ["o'brien?; DROP TABLE agents; --", "x'00'", "ünïcødé 🦀", "", "a\0b"];
    let mut batch = vec![meta(9)];
    for (i, name) in names.iter().enumerate() {
        batch.push(StorageOp::PutAgent(AgentRow {
            id: agent_id(40 + i as u8),
            name: Some((*name).to_owned()),
            state: AgentState::Quarantined,
            quarantine_reason: format!("reason with nul \0 and quote ' and ? #{i}"),
        }));
    }
    // One batch (fast path) and, after a failing batch in the same group, the slow path.
    memory.apply(batch.clone()).wait().unwrap();
    sqlite.apply(batch).wait().unwrap();
    assert_eq!(sqlite.load().unwrap(), memory.load().unwrap());
    let tail = vec![StorageOp::PutAgent(AgentRow {
        id: agent_id(60),
        name: Some("nul\0?'".into()),
        state: AgentState::Bound,
        quarantine_reason: "'?'".into(),
    })];
    let bad = sqlite.apply(vec![put_channel(61, 1, 2)]);
    let good = sqlite.apply(tail.clone());
    assert!(bad.wait().is_err());
    good.wait().unwrap();
    memory.apply(tail).wait().unwrap();
    assert_eq!(sqlite.load().unwrap(), memory.load().unwrap());
    drop(sqlite);
    assert_eq!(inspect(&path, &k).unwrap().snapshot, memory.load().unwrap());
}

#[test]
fn snapshot_fields_survive_restart() {
    let dir = TempDir::new("fields");
    let path = dir.file("f.db");
    let k = key(2);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![StorageOp::PutChannel(ChannelRow {
            status: ChannelStatus::Quarantined,
            validation_failures: u32::MAX,
            depth: 256,
            step: i64::MAX as u64,
            ..channel_row(12, 1, 3, 0)
        })])
        .wait()
        .unwrap();
    drop(storage);
    let s = SqliteStorage::open(config(&path, &k)).unwrap().load().unwrap().unwrap();
    let meta = s.meta.unwrap();
    assert_eq!(meta.identity, RuntimeId::derive(b"dep", b"inst"));
    assert_eq!(
        (meta.deployment_id.as_slice(), meta.instance_id.as_slice(), meta.agent_counter),
        (&b"dep"[..], &b"inst"[..], 3)
    );
    assert_eq!(s.agents.iter().map(|a| a.name.as_deref()).collect::<Vec<_>>(), [Some("alice"), Some("bob"), None]);
    let c = s.channels.iter().find(|c| c.id == channel_id(12)).unwrap();
    assert_eq!(
        (c.status, c.validation_failures, c.depth, c.step),
        (ChannelStatus::Quarantined, u32::MAX, 256, i64::MAX as u64)
    );
    assert_eq!(c.state, channel_row(12, 1, 3, 0).state);
    assert_eq!(s.sg, Some(state(99)));
}

#[test]
fn out_of_range_values_fail_the_batch_and_never_wrap() {
    let dir = TempDir::new("range");
    let path = dir.file("r.db");
    let storage = SqliteStorage::open(config(&path, &key(3))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let before = storage.load().unwrap();
    for bad in [
        vec![advance(10, 1), StorageOp::AdvanceChannel { id: channel_id(11), state: state(1), step: u64::MAX }],
        vec![put_agent(7, None, AgentState::Bound), meta(u64::MAX)],
        vec![StorageOp::PutChannel(ChannelRow { step: 1 << 63, ..channel_row(13, 1, 2, 0) })],
    ] {
        let err = storage.apply(bad).wait().unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(ref m) if m.contains("range")), "{err:?}");
        assert_eq!(storage.load().unwrap(), before);
    }
    // Depth outside 2..=256 is refused by the schema.
    let err = storage.apply(vec![StorageOp::PutChannel(ChannelRow { depth: 1, ..channel_row(13, 1, 2, 0) })]).wait();
    assert!(err.is_err());
    assert_eq!(storage.load().unwrap(), before);
}

#[test]
fn referential_integrity_is_enforced() {
    let dir = TempDir::new("refs");
    let storage = SqliteStorage::open(config(&dir.file("refs.db"), &key(4))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let before = storage.load().unwrap();
    // A channel between unknown agents; deleting an agent with an open channel; a duplicate name.
    for bad in [
        vec![put_agent(8, None, AgentState::Bound), put_channel(20, 1, 9)],
        vec![StorageOp::DeleteAgent(agent_id(1))],
        vec![put_agent(8, Some("alice"), AgentState::Bound)],
    ] {
        assert!(storage.apply(bad).wait().is_err());
        assert_eq!(storage.load().unwrap(), before);
    }
}

#[test]
fn federation_records_round_trip() {
    let dir = TempDir::new("fed");
    let path = dir.file("fed.db");
    let k = key(5);
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    let local = RuntimeId::derive(b"dep", b"a");
    let peer = RuntimeId::derive(b"dep", b"b");
    let record = BilateralRecord {
        id: BilateralId::derive(&local, &peer),
        local,
        peer,
        state: BilateralState::deterministic(&local, &peer),
        status: BilateralStatus::Active,
    };
    let out = |id: u64, step: u64| OutboundRecord {
        id,
        bilateral: record.id,
        channel: channel_id(30),
        step,
        wire: vec![id as u8; 100 + id as usize],
    };
    storage
        .apply_ops(vec![
            WriteOp::PutBilateral(record.clone()),
            WriteOp::PutOutbound(out(1, 0)),
            WriteOp::PutOutbound(out(2, 1)),
        ])
        .wait()
        .unwrap();
    let mut advanced = record.clone();
    advanced.state.step = 2;
    advanced.status = BilateralStatus::Recovery;
    storage.apply_ops(vec![WriteOp::PutBilateral(advanced.clone()), WriteOp::DeleteOutbound(1)]).wait().unwrap();
    let expected = FederationSnapshot { bilateral: vec![advanced.clone()], outbound: vec![out(2, 1)] };
    assert_eq!(storage.load_federation().unwrap(), expected);
    // An outbound message needs its bilateral channel.
    let orphan = OutboundRecord { bilateral: BilateralId::from_bytes([9; 32]), ..out(3, 0) };
    assert!(storage.apply_ops(vec![WriteOp::PutOutbound(orphan)]).wait().is_err());
    drop(storage);
    assert_eq!(inspect(&path, &k).unwrap().federation, expected);
    // Deleting the bilateral channel deletes its messages.
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply_ops(vec![WriteOp::DeleteBilateral(advanced.id)]).wait().unwrap();
    assert_eq!(storage.load_federation().unwrap(), FederationSnapshot::default());
}
