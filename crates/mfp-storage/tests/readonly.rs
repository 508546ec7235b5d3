//! Read-only databases are refused at open (not after the first failed send) and can still be
//! checked; an empty file is not silently made a new runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mfp_runtime::storage::{Storage, StorageError};
use mfp_storage::{SqliteStorage, inspect};

/// A tmpfs that is remounted read-only; unmounted on drop.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn mount(at: &Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(at).output();
        ok.is_ok_and(|o| o.status.success()).then(|| Self(at.to_path_buf()))
    }

    fn make_read_only(&self) {
        let out = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn write_db(path: &Path) -> mfp_runtime::storage::Snapshot {
    let storage = SqliteStorage::open(config(path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let snapshot = storage.load().unwrap().unwrap();
    storage.close().unwrap();
    snapshot
}

fn assert_read_only_refused(path: &Path) {
    let bytes = bytes_of(path);
    let err = SqliteStorage::open(config(path, &key(1))).map(drop).unwrap_err();
    assert!(matches!(&err, StorageError::Backend(m) if m.contains("read-only")), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "names the file: {err}");
    assert_eq!(bytes_of(path), bytes);
}

/// Whether this process can write a file whatever its mode (root can).
fn writes_ignore_permissions(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).unwrap();
    let writable = std::fs::OpenOptions::new().write(true).open(&probe).is_ok();
    std::fs::remove_file(&probe).unwrap();
    writable
}

#[cfg(unix)]
#[test]
fn a_read_only_database_is_refused_at_open_and_can_be_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("readonly");
    if writes_ignore_permissions(dir.path()) {
        // Root: permissions do not stop it, a read-only filesystem does.
        let Some(mount) = ReadOnlyMount::mount(&dir.file("media")) else {
            eprintln!("SKIPPED: permissions do not apply to this user and a tmpfs cannot be mounted");
            return;
        };
        let path = mount.0.join("backup.db");
        let expected = write_db(&path);
        mount.make_read_only();
        assert_read_only_refused(&path);
        // Checking a backup on read-only media works.
        assert_eq!(inspect(&path, &key(1)).unwrap().snapshot, Some(expected));
    } else {
        // A read-only file in a writable directory.
        let path = dir.file("ro.db");
        let expected = write_db(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_read_only_refused(&path);
        assert_eq!(inspect(&path, &key(1)).unwrap().snapshot, Some(expected.clone()));
        // A read-only directory too.
        let sub = dir.file("media");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("backup.db");
        let expected = write_db(&path);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
        assert_eq!(inspect(&path, &key(1)).unwrap().snapshot, Some(expected));
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn an_empty_file_is_refused_without_create_if_missing() {
    let dir = TempDir::new("empty-file");
    let path = dir.file("rt.db");
    std::fs::write(&path, b"").unwrap();
    let mut cfg = config(&path, &key(1));
    cfg.create_if_missing = false;
    let err = SqliteStorage::open(cfg.clone()).map(drop).unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt(m) if m.contains("empty file") && m.contains("rt.db")), "{err}");
    assert_eq!(bytes_of(&path), b"", "left as it was");
    // An SQLite database without tables likewise.
    with_raw(&path, false, |c| {
        Box::pin(async move {
            sqlx::raw_sql("PRAGMA user_version = 1").execute(&mut *c).await.unwrap();
        })
    });
    assert!(!bytes_of(&path).is_empty());
    let err = SqliteStorage::open(cfg).map(drop).unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt(m) if m.contains("without tables")), "{err}");
    // With create_if_missing (the default) it becomes a new database.
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    assert!(storage.created());
}
