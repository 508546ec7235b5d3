//! `StorageOp::RemoveDelivery`: a received message taken back leaves the inbox by its
//! message id, and another message of the same step (one stored before a reset of the
//! channel) stays — in SQLite as in `MemoryStorage`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use mfp_runtime::storage::{DeliveryRow, MemoryStorage, Storage, StorageOp};
use mfp_storage::SqliteStorage;

fn row(step: u64, id: u8, payload: &[u8]) -> DeliveryRow {
    DeliveryRow {
        channel: channel_id(10),
        step,
        recipient: agent_id(2),
        sender: agent_id(1),
        message_id: mfp_core::MessageId::from_bytes([id; 16]),
        correlation_id: [id; 8],
        payload: payload.to_vec(),
    }
}

fn check(storage: &dyn Storage) {
    storage.apply(setup_ops()).wait().unwrap();
    storage
        .apply(vec![
            StorageOp::PutDelivery(row(0, 1, b"before the reset")),
            StorageOp::PutDelivery(row(0, 2, b"after the reset")),
            StorageOp::PutDelivery(row(1, 3, b"next")),
        ])
        .wait()
        .unwrap();
    let remove = |step, id| StorageOp::RemoveDelivery {
        channel: channel_id(10),
        step,
        message_id: mfp_core::MessageId::from_bytes([id; 16]),
    };
    storage.apply(vec![remove(0, 2), remove(1, 3)]).wait().unwrap();
    // Removing what is not stored is no error.
    storage.apply(vec![remove(5, 9)]).wait().unwrap();
    let left = storage.load().unwrap().unwrap().deliveries;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].step, &left[0].payload[..]), (0, &b"before the reset"[..]));
}

#[test]
fn a_taken_back_message_leaves_the_inbox_by_its_id_in_sqlite() {
    let dir = TempDir::new("remove-delivery");
    let path = dir.file("r.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    check(&storage);
}

#[test]
fn a_taken_back_message_leaves_the_inbox_by_its_id_in_memory() {
    check(&MemoryStorage::new());
}
