//! Cross-runtime channels and their outbound log (schema versions 3 and 4): the same results
//! as `MemoryStorage` for the same operations, encrypted at rest and bound to their rows,
//! covered by key rotation, validated on load, and databases of schema versions 2 and 3
//! migrate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use mfp_core::bilateral::BilateralState;
use mfp_core::{AgentId, ChannelId, MessageId, RuntimeId, State};
use mfp_runtime::ChannelStatus;
use mfp_runtime::storage::{
    DeliveryRow, MemoryStorage, OutboundRow, RemoteChannelRow, Snapshot, Storage, StorageError, StorageOp,
};
use mfp_storage::{SCHEMA_VERSION, SqliteStorage, inspect, rotate_master_key};
use proptest::prelude::*;
use sqlx::Row;

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

fn peer(n: u8) -> RuntimeId {
    RuntimeId::from_bytes([0x70 | n; 32])
}

fn remote_agent(n: u8) -> AgentId {
    AgentId::from_bytes([0xa0 | n; 32])
}

fn remote_id(n: u8) -> ChannelId {
    ChannelId::from_bytes([0xc0 | n; 16])
}

/// A recognisable 32-byte secret: `tag` and `n` spread over every byte.
fn secret(tag: u8, n: u64) -> State {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = tag ^ (n.rotate_left(i as u32 * 7) as u8) ^ (i as u8).wrapping_mul(37);
    }
    State::from_bytes(b)
}

fn chain(tag: u8, n: u64, step: u64) -> BilateralState {
    BilateralState { ratchet: secret(tag, n), prng_seed: secret(tag ^ 0x55, n), step }
}

fn remote_row(n: u8, local: u8, status: ChannelStatus) -> RemoteChannelRow {
    RemoteChannelRow {
        id: remote_id(n),
        local_agent: agent_id(local),
        peer: peer(n % 2),
        remote_agent: remote_agent(n),
        depth: 4,
        status,
        tx: chain(0x11, u64::from(n), 0),
        rx: chain(0x22, u64::from(n), 0),
        validation_failures: 0,
        rx_rotation: None,
        reset: None,
        unconfirmed: false,
    }
}

/// Wire bytes of a message: recognisable, `len` long.
fn wire(n: u8, step: u64, len: usize) -> Vec<u8> {
    let mut w = b"MFP1-wire".to_vec();
    w.extend((0..len).map(|i| (i as u8).wrapping_mul(13) ^ n ^ (step as u8)));
    w
}

fn outbound(n: u8, step: u64) -> StorageOp {
    StorageOp::PutOutbound(OutboundRow { channel: remote_id(n), step, peer: peer(n % 2), wire: wire(n, step, 40) })
}

fn tx(n: u8, step: u64) -> StorageOp {
    StorageOp::AdvanceRemoteTx { id: remote_id(n), tx: chain(0x11, u64::from(n) * 1000 + step, step), from: None }
}

fn rx(n: u8, step: u64) -> StorageOp {
    StorageOp::AdvanceRemoteRx { id: remote_id(n), rx: chain(0x22, u64::from(n) * 1000 + step, step), from: None }
}

/// A message received on remote channel `n`: its sender is an agent of the peer runtime.
fn remote_delivery(n: u8, step: u64, recipient: u8, payload: &[u8]) -> StorageOp {
    StorageOp::PutDelivery(DeliveryRow {
        channel: remote_id(n),
        step,
        recipient: agent_id(recipient),
        sender: remote_agent(n),
        message_id: MessageId::from_bytes([n ^ 0x33 ^ (step as u8); 16]),
        correlation_id: [n; 8],
        payload: payload.to_vec(),
    })
}

/// Executes statements (built at run time) on a read-write connection.
fn raw_sql(path: &Path, sql: String) {
    with_raw(path, false, move |c| {
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await.unwrap();
        })
    });
}

/// One integer from a query.
fn raw_count(path: &Path, sql: &'static str) -> i64 {
    with_raw(path, true, move |c| Box::pin(async move { sqlx::query(sql).fetch_one(&mut *c).await.unwrap().get(0) }))
}

/// Every byte of the database: the file and its write-ahead log, if any.
fn all_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = bytes_of(path);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(w) = std::fs::read(std::path::PathBuf::from(wal)) {
        bytes.extend(w);
    }
    bytes
}

/// A database with setup_ops, remote channels 1 (agent 1, two chains advanced, three
/// messages in the log) and 2 (agent 2, one message).
fn remote_db(path: &Path, k: &mfp_storage::MasterKey) -> SqliteStorage {
    let storage = SqliteStorage::open(config(path, k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![
            StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active)),
            StorageOp::PutRemoteChannel(remote_row(2, 2, ChannelStatus::Active)),
        ])
        .wait()
        .unwrap();
    for step in 0..3 {
        storage.apply(vec![tx(1, step + 1), outbound(1, step)]).wait().unwrap();
    }
    storage.apply(vec![tx(2, 1), outbound(2, 0)]).wait().unwrap();
    storage.apply(vec![rx(1, 1), remote_delivery(1, 0, 1, b"from afar")]).wait().unwrap();
    storage
}

// ---------------------------------------------------------------------------------------------
// Same operations, same snapshot as MemoryStorage
// ---------------------------------------------------------------------------------------------

/// A generated operation, on small id spaces so that operations meet.
#[derive(Debug, Clone)]
enum Gen {
    Put { ch: u8, local: u8, status: u8, depth: usize, seed: u64, tx_step: u64, rx_step: u64, failures: u32 },
    Tx { ch: u8, seed: u64, step: u64 },
    Rx { ch: u8, seed: u64, step: u64 },
    Out { ch: u8, step: u64, peer: u8, len: usize },
    Ack { ch: u8, next: u64 },
    Truncate { ch: u8, from: u64 },
    Status { ch: u8, quarantined: bool },
    Failures { ch: u8, count: u32 },
    Close { ch: u8 },
    Deliver { ch: u8, step: u64, recipient: u8, len: usize },
    AckDelivery { ch: u8, step: u64 },
    Sg { seed: u64 },
    Rotation { ch: u8, seed: Option<u64> },
}

fn gen_op() -> impl Strategy<Value = Gen> {
    let ch = 0u8..3;
    let step = 0u64..12;
    prop_oneof![
        2 => (ch.clone(), 1u8..4, 0u8..3, 2usize..=256, any::<u64>(), step.clone(), step.clone(), 0u32..5).prop_map(
            |(ch, local, status, depth, seed, tx_step, rx_step, failures)| Gen::Put {
                ch, local, status, depth, seed, tx_step, rx_step, failures
            }
        ),
        3 => (ch.clone(), any::<u64>(), step.clone()).prop_map(|(ch, seed, step)| Gen::Tx { ch, seed, step }),
        2 => (ch.clone(), any::<u64>(), step.clone()).prop_map(|(ch, seed, step)| Gen::Rx { ch, seed, step }),
        6 => (ch.clone(), step.clone(), 0u8..2, 0usize..300).prop_map(|(ch, step, peer, len)| Gen::Out { ch, step, peer, len }),
        3 => (ch.clone(), prop_oneof![4 => 0u64..14, 1 => Just(u64::MAX), 1 => Just(1u64 << 63)]).prop_map(|(ch, next)| Gen::Ack { ch, next }),
        1 => (ch.clone(), prop_oneof![4 => 0u64..14, 1 => Just(u64::MAX)]).prop_map(|(ch, from)| Gen::Truncate { ch, from }),
        1 => (ch.clone(), any::<bool>()).prop_map(|(ch, quarantined)| Gen::Status { ch, quarantined }),
        1 => (ch.clone(), any::<u32>()).prop_map(|(ch, count)| Gen::Failures { ch, count }),
        1 => ch.clone().prop_map(|ch| Gen::Close { ch }),
        2 => (ch.clone(), step.clone(), 1u8..4, 0usize..100).prop_map(|(ch, step, recipient, len)| Gen::Deliver { ch, step, recipient, len }),
        1 => (ch.clone(), step).prop_map(|(ch, step)| Gen::AckDelivery { ch, step }),
        1 => any::<u64>().prop_map(|seed| Gen::Sg { seed }),
        2 => (ch.clone(), proptest::option::of(any::<u64>())).prop_map(|(ch, seed)| Gen::Rotation { ch, seed }),
    ]
}

/// Remote channels 0 and 1 are open before the generated operations (channel 2 is not
/// stored), so that most operations meet a channel.
const OPEN_AT_START: u8 = 2;

fn opened_at_start() -> Vec<StorageOp> {
    (0..OPEN_AT_START).map(|ch| StorageOp::PutRemoteChannel(remote_row(ch, ch + 1, ChannelStatus::Active))).collect()
}

/// What the model knows about a remote channel while turning generated operations into a
/// valid sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    Open,
    Closed,
}

/// Turns generated batches into operations, leaving out the ones whose effect the SQLite
/// backend documents as different from `MemoryStorage` (all sequences the runtime never
/// sends): a status change of a closed channel (MemoryStorage revives it with wiped chains),
/// a message logged on a closed or unknown channel (SQLite ignores it, or refuses the batch),
/// a delivery stored again while the first is still stored (SQLite keeps its place in the
/// storage order).
fn build(batches: &[Vec<Gen>]) -> Vec<Vec<StorageOp>> {
    let mut remote: BTreeMap<u8, Known> = (0..OPEN_AT_START).map(|ch| (ch, Known::Open)).collect();
    let mut stored_deliveries: BTreeSet<(u8, u64)> = BTreeSet::new();
    let mut out = Vec::new();
    for batch in batches {
        let mut ops = Vec::new();
        for g in batch {
            let state_of = |ch: &u8| remote.get(ch).copied();
            match *g {
                Gen::Rotation { ch, seed } => {
                    // On a closed channel SQLite keeps nothing (the documented difference).
                    if state_of(&ch) == Some(Known::Open) {
                        ops.push(StorageOp::RemoteRotation {
                            id: remote_id(ch),
                            secret: seed.map(|n| secret(0x44, n)),
                        });
                    }
                }
                Gen::Put { ch, local, status, depth, seed, tx_step, rx_step, failures } => {
                    let status = match status {
                        0 => ChannelStatus::Active,
                        1 => ChannelStatus::Quarantined,
                        _ => ChannelStatus::Closed,
                    };
                    remote.insert(ch, if status == ChannelStatus::Closed { Known::Closed } else { Known::Open });
                    ops.push(StorageOp::PutRemoteChannel(RemoteChannelRow {
                        id: remote_id(ch),
                        local_agent: agent_id(local),
                        peer: peer(ch % 2),
                        remote_agent: remote_agent(ch),
                        depth,
                        status,
                        tx: chain(0x11, seed, tx_step),
                        rx: chain(0x22, seed, rx_step),
                        validation_failures: failures,
                        rx_rotation: (seed % 3 == 0 && status != ChannelStatus::Closed).then(|| secret(0x66, seed)),
                        reset: (seed % 2 == 0).then_some([seed as u8; 16]),
                        unconfirmed: seed % 5 == 0,
                    }));
                }
                Gen::Tx { ch, seed, step } => {
                    ops.push(StorageOp::AdvanceRemoteTx { id: remote_id(ch), tx: chain(0x11, seed, step), from: None });
                }
                Gen::Rx { ch, seed, step } => {
                    ops.push(StorageOp::AdvanceRemoteRx { id: remote_id(ch), rx: chain(0x22, seed, step), from: None });
                }
                Gen::Out { ch, step, peer: p, len } => {
                    if state_of(&ch) == Some(Known::Open) {
                        ops.push(StorageOp::PutOutbound(OutboundRow {
                            channel: remote_id(ch),
                            step,
                            peer: peer(p),
                            wire: wire(ch, step, len),
                        }));
                    }
                }
                Gen::Ack { ch, next } => ops.push(StorageOp::AckOutbound { channel: remote_id(ch), next }),
                Gen::Truncate { ch, from } => {
                    ops.push(StorageOp::TruncateOutbound { channel: remote_id(ch), from });
                }
                Gen::Status { ch, quarantined } => {
                    if state_of(&ch) != Some(Known::Closed) {
                        let status = if quarantined { ChannelStatus::Quarantined } else { ChannelStatus::Active };
                        ops.push(StorageOp::ChannelStatus { id: remote_id(ch), status });
                    }
                }
                Gen::Failures { ch, count } => ops.push(StorageOp::ChannelFailures { id: remote_id(ch), count }),
                Gen::Close { ch } => {
                    if remote.contains_key(&ch) {
                        remote.insert(ch, Known::Closed);
                    }
                    ops.push(StorageOp::CloseChannel(remote_id(ch)));
                }
                Gen::Deliver { ch, step, recipient, len } => {
                    if stored_deliveries.insert((ch, step)) {
                        ops.push(remote_delivery(ch, step, recipient, &wire(ch, step, len)));
                    }
                }
                Gen::AckDelivery { ch, step } => {
                    stored_deliveries.remove(&(ch, step));
                    ops.push(StorageOp::AckDelivery { channel: remote_id(ch), step });
                }
                Gen::Sg { seed } => ops.push(StorageOp::Sg(Some(secret(0x33, seed)))),
            }
        }
        out.push(ops);
    }
    out
}

/// MemoryStorage's snapshot as the SQLite backend reports it: the outbound log of open
/// channels only (MemoryStorage's `outbound` also lists the messages of channels it marked
/// closed with `ChannelStatus`, which this sequence never sends).
fn normalised(mut s: Snapshot) -> Snapshot {
    let open: BTreeSet<ChannelId> = s.remote_channels.iter().map(|c| c.id).collect();
    s.outbound.retain(|o| open.contains(&o.channel));
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_match_memory_storage(
        batches in prop::collection::vec(prop::collection::vec(gen_op(), 1..6), 1..14)
    ) {
        let dir = TempDir::new("remote-prop");
        let path = dir.file("p.db");
        let k = key(7);
        let sqlite = SqliteStorage::open(config(&path, &k)).unwrap();
        let memory = MemoryStorage::new();
        for s in [&sqlite as &dyn Storage, &memory] {
            s.apply(setup_ops()).wait().unwrap();
            s.apply(opened_at_start()).wait().unwrap();
        }
        for (i, ops) in build(&batches).into_iter().enumerate() {
            memory.apply(ops.clone()).wait().unwrap();
            sqlite.apply(ops).wait().unwrap();
            let want = normalised(memory.load().unwrap().unwrap());
            prop_assert_eq!(sqlite.load().unwrap().unwrap(), want, "after batch {}", i);
        }
        sqlite.close().unwrap();
        // Read back from the file (a restart), and by the read-only inspection.
        let want = normalised(memory.load().unwrap().unwrap());
        prop_assert_eq!(inspect(&path, &k).unwrap().snapshot.unwrap(), want.clone());
        let reopened = SqliteStorage::open(config(&path, &k)).unwrap();
        prop_assert_eq!(reopened.load().unwrap().unwrap(), want);
    }
}

#[test]
fn the_generated_sequences_exercise_every_operation() {
    // The sanitiser must not filter the interesting operations away: a fixed sequence of
    // generated operations keeps each kind.
    let gens = vec![vec![
        Gen::Put { ch: 1, local: 1, status: 0, depth: 4, seed: 1, tx_step: 0, rx_step: 0, failures: 0 },
        Gen::Tx { ch: 1, seed: 2, step: 1 },
        Gen::Rx { ch: 1, seed: 3, step: 1 },
        Gen::Out { ch: 1, step: 0, peer: 1, len: 5 },
        Gen::Ack { ch: 1, next: 1 },
        Gen::Status { ch: 1, quarantined: true },
        Gen::Failures { ch: 1, count: 3 },
        Gen::Deliver { ch: 1, step: 0, recipient: 2, len: 3 },
        Gen::AckDelivery { ch: 1, step: 0 },
        Gen::Close { ch: 1 },
        Gen::Out { ch: 1, step: 1, peer: 1, len: 5 },
        Gen::Status { ch: 1, quarantined: false },
    ]];
    let names: Vec<&str> = build(&gens)[0]
        .iter()
        .map(|op| match op {
            StorageOp::PutRemoteChannel(_) => "put",
            StorageOp::AdvanceRemoteTx { .. } => "tx",
            StorageOp::AdvanceRemoteRx { .. } => "rx",
            StorageOp::PutOutbound(_) => "out",
            StorageOp::AckOutbound { .. } => "ack",
            StorageOp::ChannelStatus { .. } => "status",
            StorageOp::ChannelFailures { .. } => "failures",
            StorageOp::PutDelivery(_) => "deliver",
            StorageOp::AckDelivery { .. } => "ackdelivery",
            StorageOp::CloseChannel(_) => "close",
            _ => "other",
        })
        .collect();
    // After the close: the message and the status change are left out.
    assert_eq!(names, ["put", "tx", "rx", "out", "ack", "status", "failures", "deliver", "ackdelivery", "close"]);
}

// ---------------------------------------------------------------------------------------------
// Semantics
// ---------------------------------------------------------------------------------------------

fn log_of(s: &Snapshot) -> Vec<(ChannelId, u64)> {
    s.outbound.iter().map(|o| (o.channel, o.step)).collect()
}

#[test]
fn round_trip_of_every_operation() {
    let dir = TempDir::new("remote-roundtrip");
    let path = dir.file("r.db");
    let k = key(1);
    let storage = remote_db(&path, &k);
    storage.apply(vec![StorageOp::ChannelFailures { id: remote_id(2), count: 4 }]).wait().unwrap();
    storage
        .apply(vec![StorageOp::ChannelStatus { id: remote_id(2), status: ChannelStatus::Quarantined }])
        .wait()
        .unwrap();
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.remote_channels.len(), 2);
    let one = &s.remote_channels[0];
    assert_eq!(one.id, remote_id(1));
    assert_eq!((one.local_agent, one.peer, one.remote_agent, one.depth), (agent_id(1), peer(1), remote_agent(1), 4));
    assert_eq!(one.tx, chain(0x11, 1003, 3));
    assert_eq!(one.rx, chain(0x22, 1001, 1));
    let two = &s.remote_channels[1];
    assert_eq!((two.status, two.validation_failures, two.tx.step), (ChannelStatus::Quarantined, 4, 1));
    assert_eq!(log_of(&s), vec![(remote_id(1), 0), (remote_id(1), 1), (remote_id(1), 2), (remote_id(2), 0)]);
    assert_eq!(s.outbound[1].wire, wire(1, 1, 40));
    assert_eq!(s.outbound[3].peer, peer(0));
    // The delivery's sender is an agent of the peer runtime, unknown here.
    assert_eq!(s.deliveries.len(), 1);
    assert_eq!((s.deliveries[0].sender, &s.deliveries[0].payload[..]), (remote_agent(1), &b"from afar"[..]));

    // An inbound advance resets the failure count.
    storage.apply(vec![rx(2, 1)]).wait().unwrap();
    let s = storage.load().unwrap().unwrap();
    assert_eq!((s.remote_channels[1].validation_failures, s.remote_channels[1].rx.step), (0, 1));
    // Replacing a channel keeps its outbound log.
    let mut replaced = remote_row(1, 1, ChannelStatus::Active);
    replaced.depth = 8;
    storage.apply(vec![StorageOp::PutRemoteChannel(replaced.clone())]).wait().unwrap();
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.remote_channels[0], replaced);
    assert_eq!(log_of(&s).len(), 4);
    storage.close().unwrap();
    let again = inspect(&path, &k).unwrap();
    assert_eq!(again.schema_version, SCHEMA_VERSION);
    assert_eq!(again.snapshot.unwrap(), s);
}

#[test]
fn peers_round_trip_and_a_later_row_replaces_the_earlier() {
    let dir = TempDir::new("remote-peers");
    let path = dir.file("p.db");
    let k = key(3);
    let storage = remote_db(&path, &k);
    let row = |n: u8, secs: u64, nanos: u32| mfp_runtime::storage::PeerRow {
        runtime: peer(n),
        handshake_secs: secs,
        handshake_nanos: nanos,
    };
    storage.apply(vec![StorageOp::PutPeer(row(1, 1_800_000_000, 5)), StorageOp::PutPeer(row(0, 7, 0))]).wait().unwrap();
    storage.apply(vec![StorageOp::PutPeer(row(1, 1_800_000_001, 999_999_999))]).wait().unwrap();
    let s = storage.load().unwrap().unwrap();
    let mut want = vec![row(0, 7, 0), row(1, 1_800_000_001, 999_999_999)];
    want.sort_unstable_by_key(|r| r.runtime);
    assert_eq!(s.peers, want);
    // An out-of-range timestamp is refused as a value the store cannot hold, not stored.
    assert!(storage.apply(vec![StorageOp::PutPeer(row(2, u64::MAX, 0))]).wait().is_err());
    storage.close().unwrap();
    assert_eq!(inspect(&path, &k).unwrap().snapshot.unwrap().peers, want);
}

/// Two active remote channels, 1 with steps 0..6 in its outbound log and 2 with 0..3.
fn two_logged_channels(storage: &SqliteStorage) {
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![
            StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active)),
            StorageOp::PutRemoteChannel(remote_row(2, 2, ChannelStatus::Active)),
        ])
        .wait()
        .unwrap();
    let mut ops: Vec<StorageOp> = (0..6).map(|s| outbound(1, s)).collect();
    ops.extend((0..3).map(|s| outbound(2, s)));
    storage.apply(ops).wait().unwrap();
}

/// The steps of remote channel `ch`'s outbound log, as loaded.
fn logged_steps(storage: &SqliteStorage, ch: u8) -> Vec<u64> {
    storage.load().unwrap().unwrap().outbound.iter().filter(|o| o.channel == remote_id(ch)).map(|o| o.step).collect()
}

#[test]
fn ack_outbound_removes_everything_below_next_on_that_channel_only() {
    let dir = TempDir::new("remote-ack");
    let path = dir.file("a.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    two_logged_channels(&storage);
    let steps = |ch: u8| logged_steps(&storage, ch);
    let ack = |ch: u8, next: u64| storage.apply(vec![StorageOp::AckOutbound { channel: remote_id(ch), next }]).wait();
    ack(1, 3).unwrap();
    assert_eq!(steps(1), [3, 4, 5]);
    assert_eq!(steps(2), [0, 1, 2], "another channel's log is untouched");
    ack(1, 0).unwrap();
    ack(1, 2).unwrap();
    assert_eq!(steps(1), [3, 4, 5], "acknowledging what is gone changes nothing");
    ack(1, 5).unwrap();
    assert_eq!(steps(1), [5]);
    // Acknowledging a channel that is not stored is no error.
    ack(3, 10).unwrap();
    // Beyond every storable step: all of it.
    ack(2, u64::MAX).unwrap();
    assert!(steps(2).is_empty());
    ack(1, 1 << 63).unwrap();
    assert!(steps(1).is_empty());
    assert_eq!(raw_count(&path, "SELECT count(*) FROM remote_outbound"), 0);
}

#[test]
fn truncate_outbound_removes_from_a_step_on_on_that_channel_only() {
    let dir = TempDir::new("remote-truncate");
    let path = dir.file("t.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    two_logged_channels(&storage);
    let steps = |ch: u8| logged_steps(&storage, ch);
    let truncate =
        |ch: u8, from: u64| storage.apply(vec![StorageOp::TruncateOutbound { channel: remote_id(ch), from }]).wait();
    truncate(1, 4).unwrap();
    assert_eq!(steps(1), [0, 1, 2, 3]);
    assert_eq!(steps(2), [0, 1, 2], "another channel's log is untouched");
    truncate(1, 9).unwrap();
    truncate(1, u64::MAX).unwrap();
    assert_eq!(steps(1), [0, 1, 2, 3], "removing what is not stored changes nothing");
    // Taken back and written again in one batch, as the runtime does after a failure.
    storage.apply(vec![StorageOp::TruncateOutbound { channel: remote_id(1), from: 2 }, outbound(1, 2)]).wait().unwrap();
    assert_eq!(steps(1), [0, 1, 2]);
    truncate(3, 0).unwrap();
    truncate(2, 0).unwrap();
    assert!(steps(2).is_empty());
}

#[test]
fn close_wipes_both_chains_and_drops_the_log() {
    let dir = TempDir::new("remote-close");
    let path = dir.file("c.db");
    let k = key(1);
    let storage = remote_db(&path, &k);
    storage.apply(vec![StorageOp::CloseChannel(remote_id(1))]).wait().unwrap();
    // `ChannelStatus { Closed }` closes the same way.
    storage.apply(vec![StorageOp::ChannelStatus { id: remote_id(2), status: ChannelStatus::Closed }]).wait().unwrap();
    let s = storage.load().unwrap().unwrap();
    assert!(s.remote_channels.is_empty());
    assert!(s.outbound.is_empty());
    // The delivered message still waits for its handler.
    assert_eq!(s.deliveries.len(), 1);
    // A closed channel neither advances nor logs, and its status stays closed.
    storage
        .apply(vec![
            tx(1, 9),
            rx(1, 9),
            outbound(1, 9),
            StorageOp::ChannelStatus { id: remote_id(1), status: ChannelStatus::Active },
        ])
        .wait()
        .unwrap();
    storage.close().unwrap();
    assert_eq!(
        raw_count(
            &path,
            "SELECT count(*) FROM remote_channels WHERE status = 'closed' AND tx_ratchet IS NULL AND tx_prng_seed IS \
             NULL AND rx_ratchet IS NULL AND rx_prng_seed IS NULL"
        ),
        2
    );
    assert_eq!(raw_count(&path, "SELECT count(*) FROM remote_outbound"), 0);
    let bytes = all_bytes(&path);
    for n in [1u64, 1001, 1003, 2, 2001] {
        for s in [secret(0x11, n), secret(0x44, n), secret(0x22, n), secret(0x77, n)] {
            assert!(find(&bytes, s.expose()).is_none(), "a wiped secret is in the file");
        }
    }

    // A local agent goes: its closed cross-runtime channels go with it.
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(vec![StorageOp::DeleteAgent(agent_id(1))]).wait().unwrap_err(); // channel 10 is open
    storage.apply(vec![StorageOp::CloseChannel(channel_id(10)), StorageOp::DeleteAgent(agent_id(1))]).wait().unwrap();
    storage.close().unwrap();
    assert_eq!(raw_count(&path, "SELECT count(*) FROM remote_channels"), 1);
}

#[test]
fn references_are_enforced_and_a_failed_batch_changes_nothing() {
    let dir = TempDir::new("remote-refs");
    let path = dir.file("f.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    // The local agent must be stored.
    let e = storage.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 9, ChannelStatus::Active))]).wait();
    assert!(matches!(e, Err(StorageError::Backend(_))), "{e:?}");
    storage.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
    // A message for a channel that is not stored fails its whole batch.
    let e = storage.apply(vec![tx(1, 1), outbound(1, 0), outbound(3, 0)]).wait();
    assert!(matches!(e, Err(StorageError::Backend(_))), "{e:?}");
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.remote_channels[0].tx.step, 0);
    assert!(s.outbound.is_empty());
    // An agent with an open cross-runtime channel cannot be deleted.
    storage.apply(vec![StorageOp::CloseChannel(channel_id(10))]).wait().unwrap();
    assert!(storage.apply(vec![StorageOp::DeleteAgent(agent_id(1))]).wait().is_err());
    // Values SQLite cannot store fail their batch.
    let mut big = remote_row(2, 2, ChannelStatus::Active);
    big.tx.step = u64::MAX;
    assert!(storage.apply(vec![StorageOp::PutRemoteChannel(big)]).wait().is_err());
    assert!(storage.apply(vec![outbound(1, 1 << 63)]).wait().is_err());
    let mut deep = remote_row(2, 2, ChannelStatus::Active);
    deep.depth = 1;
    assert!(storage.apply(vec![StorageOp::PutRemoteChannel(deep)]).wait().is_err());
    assert_eq!(storage.load().unwrap().unwrap().remote_channels.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Encryption at rest, rotation
// ---------------------------------------------------------------------------------------------

/// The secrets and wire bytes of `remote_db`.
fn plaintexts() -> Vec<Vec<u8>> {
    let mut p = Vec::new();
    for (tag, n) in [(0x11, 1003), (0x22, 1001), (0x11, 2001), (0x22, 2)] {
        let c = chain(tag, n, 0);
        p.push(c.ratchet.expose().to_vec());
        p.push(c.prng_seed.expose().to_vec());
    }
    for (n, step) in [(1, 0), (1, 1), (1, 2), (2, 0)] {
        p.push(wire(n, step, 40));
    }
    p
}

#[test]
fn secrets_and_wire_bytes_are_not_in_the_file_in_clear() {
    let dir = TempDir::new("remote-clear");
    let path = dir.file("e.db");
    let k = key(1);
    let storage = remote_db(&path, &k);
    // While open (the write-ahead log holds the commits) and after closing.
    let bytes = all_bytes(&path);
    for p in plaintexts() {
        assert!(find(&bytes, &p).is_none(), "stored in clear (open)");
    }
    // The test can see them at all: they are what the snapshot returns.
    let s = storage.load().unwrap().unwrap();
    assert_eq!(s.remote_channels[0].tx.ratchet.expose()[..], plaintexts()[0][..]);
    assert_eq!(s.outbound[0].wire, plaintexts()[8]);
    storage.close().unwrap();
    let bytes = all_bytes(&path);
    for p in plaintexts() {
        assert!(find(&bytes, &p).is_none(), "stored in clear (closed)");
    }
    // The cells are AES-GCM blobs of the documented size.
    assert_eq!(raw_count(&path, "SELECT min(length(tx_ratchet)) FROM remote_channels"), 69);
    assert_eq!(raw_count(&path, "SELECT max(length(rx_prng_seed)) FROM remote_channels"), 69);
    assert_eq!(raw_count(&path, "SELECT min(length(wire)) FROM remote_outbound"), 49 + 37);
}

#[test]
fn rotation_re_encrypts_the_chains_and_the_log() {
    let dir = TempDir::new("remote-rotate");
    let path = dir.file("r.db");
    let (old, new) = (key(1), key(2));
    let storage = remote_db(&path, &old);
    let before = storage.load().unwrap().unwrap();
    storage.close().unwrap();
    let prefix = |k: &mfp_storage::MasterKey| {
        let mut p = vec![1u8];
        p.extend_from_slice(&k.key_id());
        hex::encode(p)
    };
    let with_prefix = |k: &mfp_storage::MasterKey| -> i64 {
        let p = prefix(k);
        let sql = format!(
            "SELECT (SELECT count(*) FROM remote_channels WHERE hex(substr(tx_ratchet, 1, 9)) = upper('{p}') AND \
             hex(substr(tx_prng_seed, 1, 9)) = upper('{p}') AND hex(substr(rx_ratchet, 1, 9)) = upper('{p}') AND \
             hex(substr(rx_prng_seed, 1, 9)) = upper('{p}')) + (SELECT count(*) FROM remote_outbound WHERE \
             hex(substr(wire, 1, 9)) = upper('{p}'))"
        );
        with_raw(&path, true, move |c| {
            Box::pin(async move { sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *c).await.unwrap().get(0) })
        })
    };
    assert_eq!((with_prefix(&old), with_prefix(&new)), (6, 0));
    // setup_ops: 2 channel states and Sg; one inbox payload; 2 x 4 chain secrets; 4 log
    // messages; the key check.
    assert_eq!(rotate_master_key(&path, &old, &new).unwrap(), 3 + 1 + 8 + 4 + 1);
    assert_eq!((with_prefix(&old), with_prefix(&new)), (0, 6));
    assert_eq!(inspect(&path, &new).unwrap().snapshot.unwrap(), before);
    assert!(matches!(inspect(&path, &old), Err(StorageError::WrongKey(_))));
}

// ---------------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------------

#[test]
fn damaged_remote_rows_are_corrupt_naming_table_column_and_row() {
    let dir = TempDir::new("remote-damage");
    let k = key(1);
    let ch1 = "x'c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1'";
    let relaxed = "PRAGMA foreign_keys = OFF; PRAGMA ignore_check_constraints = ON;";
    for (name, sql, column) in [
        (
            "txstep",
            format!("UPDATE remote_channels SET tx_step = 7 WHERE channel_id = {ch1}"),
            "remote_channels.tx_ratchet",
        ),
        (
            "rxstep",
            format!("UPDATE remote_channels SET rx_step = 0 WHERE channel_id = {ch1}"),
            "remote_channels.rx_ratchet",
        ),
        (
            "swapped",
            format!("UPDATE remote_channels SET tx_prng_seed = rx_prng_seed WHERE channel_id = {ch1}"),
            "remote_channels.tx_prng_seed",
        ),
        (
            "moved",
            "UPDATE remote_channels SET rx_ratchet = (SELECT rx_ratchet FROM remote_channels WHERE channel_id = \
             x'c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2'), rx_step = 0 WHERE channel_id = x'c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1'"
                .into(),
            "remote_channels.rx_ratchet",
        ),
        ("short", format!("{relaxed} UPDATE remote_channels SET rx_ratchet = x'01'"), "remote_channels.rx_ratchet"),
        (
            "nullsecret",
            format!("{relaxed} UPDATE remote_channels SET tx_prng_seed = NULL"),
            "remote_channels.tx_prng_seed",
        ),
        (
            "textsecret",
            format!("{relaxed} UPDATE remote_channels SET tx_ratchet = 'abc'"),
            "remote_channels.tx_ratchet",
        ),
        ("status", format!("{relaxed} UPDATE remote_channels SET status = 'weird'"), "remote_channels.status"),
        ("depth", format!("{relaxed} UPDATE remote_channels SET depth = 1000"), "remote_channels.depth"),
        ("negstep", format!("{relaxed} UPDATE remote_channels SET rx_step = -1"), "remote_channels.rx_step"),
        (
            "peer",
            format!("{relaxed} UPDATE remote_channels SET peer_runtime = x'0102'"),
            "remote_channels.peer_runtime",
        ),
        ("ragent", format!("{relaxed} UPDATE remote_channels SET remote_agent = 5"), "remote_channels.remote_agent"),
        (
            "failures",
            format!("{relaxed} UPDATE remote_channels SET validation_failure_count = 5000000000"),
            "remote_channels.validation_failure_count",
        ),
        (
            "dangling",
            format!("{relaxed} UPDATE remote_channels SET local_agent = x'{}'", "09".repeat(32)),
            "remote_channels.local_agent",
        ),
        ("wirebit", "UPDATE remote_outbound SET wire = wire || x'00' WHERE step = 1".into(), "remote_outbound.wire"),
        (
            "wirestep",
            format!("UPDATE remote_outbound SET step = 7 WHERE step = 2 AND channel_id = {ch1}"),
            "remote_outbound.wire",
        ),
        (
            "wirepeer",
            format!(
                "UPDATE remote_outbound SET peer_runtime = x'{}' WHERE step = 1",
                "71".repeat(32).replacen("71", "70", 1)
            ),
            "remote_outbound.wire",
        ),
        ("wireshort", "UPDATE remote_outbound SET wire = x'0102'".into(), "remote_outbound.wire"),
        ("wiretype", format!("{relaxed} UPDATE remote_outbound SET wire = 42"), "remote_outbound.wire"),
        (
            "wirenegative",
            format!("{relaxed} UPDATE remote_outbound SET step = -3 WHERE step = 0"),
            "remote_outbound.step",
        ),
        ("table", "DROP TABLE remote_outbound".into(), "remote_outbound"),
    ] {
        let path = dir.file(&format!("{name}.db"));
        remote_db(&path, &k).close().unwrap();
        raw_sql(&path, sql);
        let bytes = bytes_of(&path);
        let opened = SqliteStorage::open(config(&path, &k)).and_then(|s| s.load().map(drop)).unwrap_err();
        let inspected = inspect(&path, &k).unwrap_err();
        assert_eq!(bytes_of(&path), bytes, "{name}: a refused file was modified");
        for e in [&opened, &inspected] {
            assert!(matches!(e, StorageError::Corrupt(m) if m.contains(column)), "{name}: {e}");
        }
        let m = inspected.to_string();
        if column.contains('.') {
            assert!(m.contains("channel c1c1") || m.contains("channel c2c2"), "{name}: the row is named: {m}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Migration from schema version 2
// ---------------------------------------------------------------------------------------------

/// `type, name, sql` of every schema object except sqlx's bookkeeping, by name.
fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
    with_raw(path, true, |c| {
        Box::pin(async move {
            sqlx::query(
                "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY name",
            )
            .fetch_all(&mut *c)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
        })
    })
}

/// A database of schema version 2 made by the migrations of that version (copies of the
/// first two migration files, run by sqlx's migrator): the schema only, no keys or data.
fn schema_2_reference(dir: &TempDir) -> std::path::PathBuf {
    schema_reference(dir, 2)
}

/// A database made by the first `version` embedded migrations only (no rows, no keys).
fn schema_reference(dir: &TempDir, version: usize) -> std::path::PathBuf {
    let files: [(&str, &str); 3] = [
        ("0001_initial.sql", include_str!("../migrations/0001_initial.sql")),
        ("0002_inbox.sql", include_str!("../migrations/0002_inbox.sql")),
        ("0003_remote_channels.sql", include_str!("../migrations/0003_remote_channels.sql")),
    ];
    let migrations = dir.file(&format!("migrations-v{version}"));
    std::fs::create_dir_all(&migrations).unwrap();
    for (name, text) in files.iter().take(version) {
        std::fs::write(migrations.join(name), text).unwrap();
    }
    let path = dir.file(&format!("reference-v{version}.db"));
    let p = path.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            use sqlx::ConnectOptions;
            let mut conn =
                sqlx::sqlite::SqliteConnectOptions::new().filename(&p).create_if_missing(true).connect().await.unwrap();
            let migrator = sqlx::migrate::Migrator::new(migrations.as_path()).await.unwrap();
            assert_eq!(migrator.iter().count(), version);
            migrator.run(&mut conn).await.unwrap();
            sqlx::Connection::close(conn).await.unwrap();
        });
    })
    .join()
    .unwrap();
    path
}

/// Statements that give the inbox back its shape of versions 2 and 3 (one message per
/// channel and step), keeping its rows and ids.
fn inbox_before_version_4() -> String {
    let v2 = include_str!("../migrations/0002_inbox.sql");
    // The CREATE TABLE and CREATE INDEX of version 2, without its version update.
    let create = &v2[v2.find("CREATE TABLE inbox").unwrap()..v2.find("UPDATE mfp_schema").unwrap()];
    format!(
        "DROP INDEX inbox_recipient; ALTER TABLE inbox RENAME TO inbox_v4; {create} INSERT INTO inbox (id, channel_id, \
         recipient, step, message_id, correlation_id, sender, payload, created_at) SELECT id, channel_id, recipient, \
         step, message_id, correlation_id, sender, payload, created_at FROM inbox_v4; DROP TABLE inbox_v4;"
    )
}

#[test]
fn a_schema_2_database_migrates_keeping_its_rows() {
    let dir = TempDir::new("remote-v2");
    let k = key(3);

    // An empty schema-2 database, made by the version-2 migrations, opens and migrates.
    let reference = schema_2_reference(&dir);
    let v2_schema = schema_of(&reference);
    assert!(
        v2_schema.iter().any(|(_, n, _)| n == "inbox") && !v2_schema.iter().any(|(_, n, _)| n.starts_with("remote"))
    );
    let fresh = SqliteStorage::open(config(&reference, &k)).unwrap();
    fresh.apply(setup_ops()).wait().unwrap();
    fresh.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
    fresh.close().unwrap();
    assert_eq!(inspect(&reference, &k).unwrap().schema_version, SCHEMA_VERSION);

    // A schema-2 database with rows: what this build writes, with versions 3 and 4 taken out
    // again. Its schema is exactly the one the version-2 migrations make.
    let path = dir.file("v2.db");
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage.apply(vec![advance(10, 1), delivery(10, 0, 1, 2, b"kept"), StorageOp::Sg(Some(state(5)))]).wait().unwrap();
    storage.close().unwrap();
    raw_sql(
        &path,
        format!(
            "{} DROP TABLE peers; DROP TABLE remote_outbound; DROP TABLE remote_channels; UPDATE mfp_schema SET \
             version = 2; DELETE FROM _sqlx_migrations WHERE version >= 3",
            inbox_before_version_4()
        ),
    );
    assert_eq!(schema_of(&path), v2_schema);
    let old = inspect(&path, &k).unwrap();
    assert_eq!(old.schema_version, 2);
    let old = old.snapshot.unwrap();
    assert!(old.remote_channels.is_empty() && old.outbound.is_empty());
    assert_eq!(old.deliveries.len(), 1);

    // Opened by this build: migrated, every row kept, the new operations work (with a
    // delivery from an agent of a peer runtime, which the inbox takes as it is).
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    assert_eq!(storage.load().unwrap().unwrap(), old);
    storage.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
    storage.apply(vec![tx(1, 1), outbound(1, 0)]).wait().unwrap();
    storage.apply(vec![rx(1, 1), remote_delivery(1, 0, 1, b"from afar")]).wait().unwrap();
    storage.close().unwrap();
    let new = inspect(&path, &k).unwrap();
    assert_eq!(new.schema_version, SCHEMA_VERSION);
    let new = new.snapshot.unwrap();
    assert_eq!((&new.agents, &new.channels, &new.sg), (&old.agents, &old.channels, &old.sg));
    assert_eq!(new.deliveries.len(), 2);
    assert_eq!(new.deliveries[0], old.deliveries[0]);
    assert_eq!(new.deliveries[1].sender, remote_agent(1));
    assert_eq!(log_of(&new), vec![(remote_id(1), 0)]);
    assert_eq!(new.remote_channels[0].tx.step, 1);
}

#[test]
fn a_schema_3_database_migrates_keeping_its_rows_never_reset_and_confirmed() {
    let dir = TempDir::new("remote-v3");
    let k = key(4);
    let reference = schema_reference(&dir, 3);
    let v3_schema = schema_of(&reference);

    // A schema-3 database with rows: what this build writes, with version 4 taken out again.
    let path = dir.file("v3.db");
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    storage.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
    storage.apply(vec![tx(1, 1), outbound(1, 0)]).wait().unwrap();
    storage.apply(vec![rx(1, 1), remote_delivery(1, 0, 1, b"before the upgrade")]).wait().unwrap();
    storage.close().unwrap();
    raw_sql(
        &path,
        format!(
            "{} ALTER TABLE remote_channels DROP COLUMN unconfirmed; ALTER TABLE remote_channels DROP COLUMN \
             reset_id; UPDATE mfp_schema SET version = 3; DELETE FROM _sqlx_migrations WHERE version = 4",
            inbox_before_version_4()
        ),
    );
    assert_eq!(schema_of(&path), v3_schema, "exactly the schema of the version-3 migrations");
    let old = inspect(&path, &k).unwrap();
    assert_eq!(old.schema_version, 3);
    let old = old.snapshot.unwrap();
    assert_eq!((old.remote_channels[0].reset, old.remote_channels[0].unconfirmed), (None, false));

    // Opened by this build: migrated, every row kept; a channel of version 3 was never
    // reset and counts as confirmed.
    let storage = SqliteStorage::open(config(&path, &k)).unwrap();
    assert_eq!(storage.load().unwrap().unwrap(), old);
    // The new columns and the inbox's new key work.
    let reset = [0x5a; 16];
    storage.apply(vec![StorageOp::RemoteReset { id: remote_id(1), reset }]).wait().unwrap();
    storage.apply(vec![StorageOp::RemoteUnconfirmed { id: remote_id(1), unconfirmed: true }]).wait().unwrap();
    let after_reset = StorageOp::PutDelivery(DeliveryRow {
        message_id: MessageId::from_bytes([0x77; 16]),
        payload: b"after the reset".to_vec(),
        ..match remote_delivery(1, 0, 1, b"") {
            StorageOp::PutDelivery(d) => d,
            _ => unreachable!(),
        }
    });
    storage.apply(vec![after_reset]).wait().unwrap();
    storage.close().unwrap();
    let new = inspect(&path, &k).unwrap();
    assert_eq!(new.schema_version, SCHEMA_VERSION);
    let new = new.snapshot.unwrap();
    assert_eq!((&new.agents, &new.channels, &new.outbound), (&old.agents, &old.channels, &old.outbound));
    assert_eq!((new.remote_channels[0].reset, new.remote_channels[0].unconfirmed), (Some(reset), true));
    let payloads: Vec<&[u8]> = new.deliveries.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(payloads, [&b"before the upgrade"[..], &b"after the reset"[..]]);
}

/// A reset channel's step 0 from before the reset, not handled yet, and its step 0 from
/// after: both stay in the inbox, the same message stored again replaces itself, and a
/// removal takes the one stored first (the one its recipient handles first).
#[test]
fn the_inbox_keeps_two_messages_of_one_step_and_removes_the_older_first() {
    let dir = TempDir::new("remote-inbox-reset");
    let k = key(5);
    let sqlite = SqliteStorage::open(config(&dir.file("i.db"), &k)).unwrap();
    let memory = MemoryStorage::new();
    let with_id = |id: u8, payload: &[u8]| {
        let StorageOp::PutDelivery(d) = remote_delivery(1, 0, 1, payload) else { unreachable!() };
        StorageOp::PutDelivery(DeliveryRow { message_id: MessageId::from_bytes([id; 16]), ..d })
    };
    let payloads = |store: &dyn Storage| -> Vec<Vec<u8>> {
        store.load().unwrap().unwrap().deliveries.iter().map(|d| d.payload.clone()).collect()
    };
    let stores: [&dyn Storage; 2] = [&sqlite, &memory];
    for store in stores {
        store.apply(setup_ops()).wait().unwrap();
        store.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
        store.apply(vec![with_id(1, b"old")]).wait().unwrap();
        store.apply(vec![with_id(2, b"new")]).wait().unwrap();
        // The same message again (same id) stays one message.
        store.apply(vec![with_id(2, b"new")]).wait().unwrap();
        assert_eq!(payloads(store), [b"old".to_vec(), b"new".to_vec()]);
        store.apply(vec![StorageOp::AckDelivery { channel: remote_id(1), step: 0 }]).wait().unwrap();
        assert_eq!(payloads(store), [b"new".to_vec()], "the one stored first leaves first");
        store.apply(vec![StorageOp::AckDelivery { channel: remote_id(1), step: 0 }]).wait().unwrap();
        assert!(payloads(store).is_empty());
    }
    sqlite.close().unwrap();
}

#[test]
fn a_schema_3_database_without_its_tables_is_corrupt() {
    let dir = TempDir::new("remote-missing");
    let path = dir.file("m.db");
    let k = key(1);
    remote_db(&path, &k).close().unwrap();
    raw_exec(&path, "DROP TABLE remote_outbound; DROP TABLE remote_channels");
    for e in [SqliteStorage::open(config(&path, &k)).unwrap_err(), inspect(&path, &k).unwrap_err()] {
        assert!(matches!(e, StorageError::Corrupt(ref m) if m.contains("remote_channels is missing")), "{e}");
    }
}

#[test]
fn agents_of_a_peer_runtime_are_not_stored_as_agents() {
    // The schema has no reference from a remote agent to `agents`.
    let dir = TempDir::new("remote-agents");
    let path = dir.file("g.db");
    remote_db(&path, &key(1)).close().unwrap();
    assert_eq!(raw_count(&path, "SELECT count(*) FROM agents"), 3);
    assert_eq!(raw_count(&path, "SELECT count(*) FROM pragma_foreign_key_list('remote_channels')"), 1);
    assert_eq!(raw_count(&path, "SELECT count(*) FROM pragma_foreign_key_list('inbox') WHERE \"from\" = 'sender'"), 0);
}

/// A conditional advance of an inbound chain (`from: Some(step)`) commits only if storage
/// holds the chain at `step`; otherwise its whole batch fails with `Conflict` and writes
/// nothing — alone, in a group with other batches, and on a closed channel — in SQLite
/// (both of the writer's paths) and in `MemoryStorage` alike.
#[test]
fn a_conditional_inbound_advance_commits_only_from_the_stored_step() {
    let dir = TempDir::new("remote-conditional");
    let sqlite = SqliteStorage::open(config(&dir.file("c.db"), &key(1))).unwrap();
    let memory = MemoryStorage::new();
    let stores: [&dyn Storage; 2] = [&sqlite, &memory];
    for storage in stores {
        storage.apply(setup_ops()).wait().unwrap();
        storage
            .apply(vec![
                StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active)),
                StorageOp::PutRemoteChannel(remote_row(3, 1, ChannelStatus::Closed)),
            ])
            .wait()
            .unwrap();
        let advance = |ch: u8, from: u64| StorageOp::AdvanceRemoteRx {
            id: remote_id(ch),
            rx: chain(0x22, 7 + from, from + 1),
            from: Some(from),
        };
        let state = || {
            let s = storage.load().unwrap().unwrap();
            let rx = s.remote_channels.iter().find(|c| c.id == remote_id(1)).map(|c| c.rx.step);
            let inbox: Vec<u64> = s.deliveries.iter().filter(|d| d.channel == remote_id(1)).map(|d| d.step).collect();
            (rx, inbox)
        };
        // Built on step 1 while storage holds step 0 (step 0's batch failed): refused whole.
        let e = storage.apply(vec![advance(1, 1), remote_delivery(1, 1, 1, b"one")]).wait().unwrap_err();
        assert!(matches!(e, StorageError::Conflict(_)), "{e}");
        assert_eq!(state(), (Some(0), vec![]));
        // From the stored step: written.
        storage.apply(vec![advance(1, 0), remote_delivery(1, 0, 1, b"zero")]).wait().unwrap();
        assert_eq!(state(), (Some(1), vec![0]));
        // Two batches submitted together (one transaction when the writer groups them): the
        // one built on a step storage does not hold fails alone.
        let bad = storage.apply(vec![advance(1, 5), remote_delivery(1, 5, 1, b"five")]);
        let good = storage.apply(vec![advance(1, 1), remote_delivery(1, 1, 1, b"one")]);
        assert!(matches!(bad.wait().unwrap_err(), StorageError::Conflict(_)));
        good.wait().unwrap();
        assert_eq!(state(), (Some(2), vec![0, 1]));
        // A closed channel takes no conditional advance.
        let e = storage.apply(vec![advance(3, 0)]).wait().unwrap_err();
        assert!(matches!(e, StorageError::Conflict(_)), "{e}");
        // Unconditional advances are as before.
        storage.apply(vec![rx(1, 9)]).wait().unwrap();
        assert_eq!(state().0, Some(9));
    }
}

/// The outbound side's conditional advance (`AdvanceRemoteTx { from: Some(step) }`): a
/// sealed message's batch built on a step storage does not hold writes neither the chain
/// nor the log row, so the stored log never has a gap — in SQLite and `MemoryStorage`.
#[test]
fn a_conditional_outbound_advance_leaves_no_gap_in_the_log() {
    let dir = TempDir::new("remote-conditional-tx");
    let sqlite = SqliteStorage::open(config(&dir.file("t.db"), &key(1))).unwrap();
    let memory = MemoryStorage::new();
    let stores: [&dyn Storage; 2] = [&sqlite, &memory];
    for storage in stores {
        storage.apply(setup_ops()).wait().unwrap();
        storage.apply(vec![StorageOp::PutRemoteChannel(remote_row(1, 1, ChannelStatus::Active))]).wait().unwrap();
        let sealed = |from: u64| {
            vec![
                StorageOp::AdvanceRemoteTx { id: remote_id(1), tx: chain(0x11, 5 + from, from + 1), from: Some(from) },
                outbound(1, from),
            ]
        };
        let state = || {
            let s = storage.load().unwrap().unwrap();
            let tx = s.remote_channels.iter().find(|c| c.id == remote_id(1)).map(|c| c.tx.step);
            (tx, log_of(&s).into_iter().map(|(_, step)| step).collect::<Vec<_>>())
        };
        storage.apply(sealed(0)).wait().unwrap();
        // Step 1's batch failed (not applied): step 2's, sealed on top of it, is refused.
        let e = storage.apply(sealed(2)).wait().unwrap_err();
        assert!(matches!(e, StorageError::Conflict(_)), "{e}");
        assert_eq!(state(), (Some(1), vec![0]));
        storage.apply(sealed(1)).wait().unwrap();
        storage.apply(sealed(2)).wait().unwrap();
        assert_eq!(state(), (Some(3), vec![0, 1, 2]));
    }
}
