//! Committed pages that live only in the write-ahead log: the database is valid, opens, and
//! keeps every acknowledged batch (a full disk leaves it so: a short `rt.db` beside a large
//! `rt.db-wal`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mfp_runtime::AgentState;
use mfp_runtime::storage::{Snapshot, Storage, StorageError, StorageOp};
use mfp_storage::{BreakerConfig, SqliteStorage, inspect};

fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A database of several pages: the small runtime plus many agents.
fn multi_page_db(path: &Path) -> Snapshot {
    let storage = SqliteStorage::open(config(path, &key(1))).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let mut ops = Vec::new();
    for n in 20..120u8 {
        ops.push(put_agent(n, Some(&format!("agent-{n}-{}", "x".repeat(60))), AgentState::Active));
    }
    storage.apply(ops).wait().unwrap();
    storage.apply(vec![advance(10, 1), StorageOp::Sg(Some(state(5)))]).wait().unwrap();
    let snapshot = storage.load().unwrap().unwrap();
    storage.close().unwrap();
    snapshot
}

#[test]
fn a_database_whose_pages_are_only_in_the_wal_opens_with_everything() {
    let dir = TempDir::new("wal-only");
    let src = dir.file("src.db");
    let expected = multi_page_db(&src);
    let pages = bytes_of(&src).len() / 4096;
    assert!(pages >= 4, "the database spans several pages ({pages})");

    // Rewrite every page into the log (VACUUM, no checkpoint), and copy the file and its log
    // while the connection still holds them: a crash at that moment.
    let dst = dir.file("rt.db");
    let (s, d) = (src.clone(), dst.clone());
    with_raw(&src, false, move |c| {
        Box::pin(async move {
            sqlx::raw_sql("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; VACUUM;")
                .execute(&mut *c)
                .await
                .unwrap();
            std::fs::copy(&s, &d).unwrap();
            std::fs::copy(side(&s, "-wal"), side(&d, "-wal")).unwrap();
        })
    });
    // The file keeps only its first page; its header still counts every page.
    let file = bytes_of(&dst);
    std::fs::write(&dst, &file[..4096]).unwrap();
    assert!(std::fs::metadata(side(&dst, "-wal")).unwrap().len() > 4096 * pages as u64);

    let found = inspect(&dst, &key(1)).unwrap();
    assert_eq!(found.snapshot.as_ref(), Some(&expected));
    let storage = SqliteStorage::open(config(&dst, &key(1))).unwrap();
    assert_eq!(storage.load().unwrap().as_ref(), Some(&expected));
    storage.apply(vec![advance(10, 2), StorageOp::Sg(Some(state(6)))]).wait().unwrap();
    drop(storage);
    let after = inspect(&dst, &key(1)).unwrap().snapshot.unwrap();
    assert_eq!(after.channels.iter().find(|c| c.id == channel_id(10)).unwrap().step, 2);
}

#[test]
fn an_empty_file_beside_a_wal_is_not_a_new_database() {
    let dir = TempDir::new("wal-empty");
    let src = dir.file("src.db");
    let expected = multi_page_db(&src);
    let dst = dir.file("rt.db");
    let (s, d) = (src.clone(), dst.clone());
    with_raw(&src, false, move |c| {
        Box::pin(async move {
            sqlx::raw_sql("PRAGMA wal_autocheckpoint=0; VACUUM;").execute(&mut *c).await.unwrap();
            std::fs::copy(side(&s, "-wal"), side(&d, "-wal")).unwrap();
        })
    });
    std::fs::write(&dst, b"").unwrap();
    let wal = bytes_of(&side(&dst, "-wal"));
    // SQLite would take an empty file for a new database and ignore the log: refused, and
    // neither file is touched.
    for err in [
        SqliteStorage::open(config(&dst, &key(1))).map(drop).unwrap_err(),
        inspect(&dst, &key(1)).map(drop).unwrap_err(),
    ] {
        assert!(matches!(&err, StorageError::Corrupt(m) if m.contains("-wal")), "{err}");
    }
    assert_eq!(bytes_of(&dst), b"");
    assert_eq!(bytes_of(&side(&dst, "-wal")), wal);
    drop(expected);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let at = dir.join("tmpfs");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(Self(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file; returns its path.
fn fill(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_leaves_a_database_that_opens_with_every_receipt() {
    let dir = TempDir::new("wal-full");
    let Some(fs) = Tmpfs::mount(dir.path(), "2m") else {
        eprintln!("SKIPPED: cannot mount a 2 MB tmpfs here (needs root); the WAL-only case is tested without it");
        println!("SKIPPED: cannot mount a 2 MB tmpfs here (needs root)");
        return;
    };
    let path = fs.0.join("rt.db");
    // A breaker that never opens: every send tries the disk.
    let breaker = BreakerConfig { failure_threshold: u32::MAX, cool_down: std::time::Duration::ZERO };
    let storage = SqliteStorage::open(config(&path, &key(1)).breaker(breaker)).unwrap();
    storage.apply(setup_ops()).wait().unwrap();
    let mut acked = 0u64;
    let mut failures = 0;
    let mut send = |storage: &SqliteStorage, n: u64| {
        for _ in 0..n {
            let step = acked + 1;
            match storage.apply(vec![advance(10, step), StorageOp::Sg(Some(state(step)))]).wait() {
                Ok(()) => acked = step,
                Err(_) => {
                    failures += 1;
                    if failures % 8 == 0 {
                        return;
                    }
                }
            }
        }
    };
    // Fill the disk, send until writes fail, free space, send more so the log grows and
    // fills it again, then close on a full disk.
    send(&storage, 50);
    let filler = fill(&fs.0, "filler");
    send(&storage, 3000);
    std::fs::remove_file(&filler).unwrap();
    send(&storage, 5000);
    drop(storage);
    println!(
        "acknowledged {acked}, failed {failures}; left: rt.db {} B, rt.db-wal {} B",
        std::fs::metadata(&path).map_or(0, |m| m.len()),
        std::fs::metadata(side(&path, "-wal")).map_or(0, |m| m.len())
    );
    assert!(failures >= 16 && acked > 50, "the disk filled up twice, and sends went through between");

    let found = inspect(&path, &key(1)).unwrap();
    let step = found.snapshot.unwrap().channels.iter().find(|c| c.id == channel_id(10)).unwrap().step;
    assert!(step >= acked, "acknowledged step {acked} lost (stored {step})");
    let storage = SqliteStorage::open(config(&path, &key(1))).unwrap();
    assert_eq!(storage.load().unwrap().unwrap().channels.iter().find(|c| c.id == channel_id(10)).unwrap().step, step);
}
