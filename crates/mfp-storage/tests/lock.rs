//! One store per database file: a second open is refused until the first is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use mfp_runtime::storage::StorageError;
use mfp_storage::{SqliteStorage, rotate_master_key};

#[test]
fn a_second_open_is_refused_while_the_first_is_open() {
    let dir = TempDir::new("lock");
    let path = dir.file("one.db");
    let k = key(1);
    let first = SqliteStorage::open(config(&path, &k)).unwrap();
    let second = SqliteStorage::open(config(&path, &k));
    assert!(matches!(second, Err(StorageError::InUse)), "{second:?}");
    // Rotating the key of a database in use is refused as well.
    assert!(matches!(rotate_master_key(&path, &k, &key(2)), Err(StorageError::InUse)));
    drop(first);
    let again = SqliteStorage::open(config(&path, &k)).unwrap();
    drop(again);
    assert_eq!(rotate_master_key(&path, &k, &key(2)).map(|_| ()), Ok(()));
}
