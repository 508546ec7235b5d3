//! Error messages name the file and the key ids involved, and `{:?}` reads like `{}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{SqliteStorage, inspect};

#[test]
fn messages_name_the_file_and_debug_reads_like_display() {
    let dir = TempDir::new("messages");
    let path = dir.file("named.db");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    drop(storage);
    // Damage a cell: the message names the file and the cell.
    raw_exec(&path, "UPDATE channels SET step = 7 WHERE channel_id = x'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'");
    let shown = path.display().to_string();
    let errors = [
        SqliteStorage::open(config(&path, &key(1))).map(drop).unwrap_err(),
        inspect(&path, &key(1)).map(drop).unwrap_err(),
        SqliteStorage::open(config(&path, &key(2))).map(drop).unwrap_err(),
    ];
    for e in &errors {
        let text = e.to_string();
        assert!(text.contains(&shown), "names the file: {text}");
        assert_eq!(format!("{e:?}"), text);
    }
    assert!(errors[0].to_string().contains("channels.local_state"), "{}", errors[0]);
    assert!(matches!(errors[2], StorageError::WrongKey(_)), "{}", errors[2]);
    assert!(errors[2].to_string().contains(&hex::encode(key(1).key_id())), "{}", errors[2]);
    // A `main() -> Result` prints the Debug form.
    assert!(!format!("{:?}", StorageError::Closed).contains("Closed"));
}
