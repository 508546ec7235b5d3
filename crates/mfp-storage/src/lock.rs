//! One store per database file, whatever name the file is reached by.
//!
//! Three locks, taken in this order while a process-wide registry is held:
//!
//! 1. the registry itself: the identity of every database open in this process (device and
//!    inode on Unix, the canonical path elsewhere), so a second open in the same process is
//!    refused with a message saying so, through a symlink or a hard link too;
//! 2. an advisory exclusive lock (`flock`) on `<canonical path>.mfp-lock`, the database's
//!    path with every symlink resolved, so a symlink leads to the same lock file;
//! 3. on Linux, an advisory exclusive lock (`flock`) on the database file itself, so a hard
//!    link (another name for the same inode) is refused across processes as well. Linux keeps
//!    `flock` locks apart from the POSIX record locks SQLite uses, so the two never interact;
//!    on other systems they may, and this third lock is not taken.
//!
//! The kernel drops `flock` locks when the process dies, so a crashed process never leaves
//! the database locked.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use mfp_runtime::storage::StorageError;

/// The identity of a database file.
type FileKey = (u64, u64);

/// Databases open in this process: identity → the path they were opened by.
static OPEN: Mutex<BTreeMap<FileKey, PathBuf>> = Mutex::new(BTreeMap::new());

/// The locks of one open database; released on drop.
#[derive(Debug)]
pub(crate) struct DbLock {
    key: FileKey,
    /// The database path with symlinks resolved.
    canonical: PathBuf,
    /// Whether acquiring created the (empty) database file.
    created_file: bool,
    _lock_file: File,
    #[cfg(target_os = "linux")]
    _db_file: File,
}

impl DbLock {
    /// Whether [`acquire`] created the database file (empty) because it did not exist.
    pub(crate) fn created_file(&self) -> bool {
        self.created_file
    }

    /// The database path with every symlink resolved.
    pub(crate) fn canonical(&self) -> &Path {
        &self.canonical
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        OPEN.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

fn backend(path: &Path, what: &str, e: &std::io::Error) -> StorageError {
    StorageError::Backend(format!("{}: {what}: {e}", path.display()))
}

#[cfg(unix)]
fn file_key(meta: &std::fs::Metadata, _canonical: &Path) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_key(_meta: &std::fs::Metadata, canonical: &Path) -> FileKey {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    (0, h.finish())
}

/// The database path with symlinks resolved; for a file that does not exist yet, its
/// directory's canonical path joined with its name.
fn canonical_path(db: &Path) -> Result<Option<PathBuf>, StorageError> {
    match std::fs::canonicalize(db) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink is not a missing file: refuse rather than create its target.
            if std::fs::symlink_metadata(db).is_ok() {
                return Err(StorageError::Backend(format!(
                    "{}: a symlink to a file that does not exist; fix the link or give the real path",
                    db.display()
                )));
            }
            Ok(None)
        }
        Err(e) => Err(backend(db, "cannot resolve the path", &e)),
    }
}

fn in_use_here(db: &Path, other: &Path) -> StorageError {
    StorageError::InUse(format!(
        "{} is already open in this process (as {}); drop or close that store (or its runtime) first",
        db.display(),
        other.display()
    ))
}

fn in_use_elsewhere(db: &Path, holder: Option<u32>) -> StorageError {
    let who = holder.map_or_else(|| "another process".to_owned(), |pid| format!("another process (pid {pid})"));
    StorageError::InUse(format!(
        "{} is open in {who}; stop that process first (one process per database)",
        db.display()
    ))
}

/// The pid written into a lock file by its holder, if readable.
fn holder_pid(lock_path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(lock_path).ok()?;
    text.trim().strip_prefix("pid ")?.parse().ok()
}

/// Takes the locks for the database at `db`. When the file does not exist it is created
/// (empty, which [`crate::schema`] treats as a new database) if `create` is true, and
/// refused otherwise — before any file is created.
pub(crate) fn acquire(db: &Path, create: bool) -> Result<DbLock, StorageError> {
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    let mut created_file = false;
    let canonical = match canonical_path(db)? {
        Some(p) => p,
        None if !create => {
            return Err(StorageError::Backend(format!(
                "{}: database does not exist (check the path; create_if_missing is off)",
                db.display()
            )));
        }
        None => {
            match OpenOptions::new().write(true).create_new(true).open(db) {
                Ok(_) => created_file = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(backend(db, "cannot create the database file", &e)),
            }
            std::fs::canonicalize(db).map_err(|e| backend(db, "cannot resolve the path", &e))?
        }
    };
    let result = lock_existing(db, &canonical, created_file, &mut open);
    if result.is_err() && created_file {
        // Leave nothing behind for a database that was never opened.
        let _ = std::fs::remove_file(&canonical);
    }
    result
}

fn lock_existing(
    db: &Path,
    canonical: &Path,
    created_file: bool,
    open: &mut BTreeMap<FileKey, PathBuf>,
) -> Result<DbLock, StorageError> {
    let meta = std::fs::metadata(canonical).map_err(|e| backend(db, "cannot read the file's metadata", &e))?;
    if !meta.is_file() {
        return Err(StorageError::Backend(format!("{}: not a regular file", db.display())));
    }
    let key = file_key(&meta, canonical);
    if let Some(other) = open.get(&key) {
        return Err(in_use_here(db, other));
    }

    let mut lock_path = canonical.as_os_str().to_owned();
    lock_path.push(".mfp-lock");
    let lock_path = PathBuf::from(lock_path);
    let mut lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| backend(&lock_path, "cannot open the lock file", &e))?;
    match lock_file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(in_use_elsewhere(db, holder_pid(&lock_path))),
        Err(TryLockError::Error(e)) => return Err(backend(&lock_path, "cannot lock the lock file", &e)),
    }
    // Best effort: who holds the lock, for the message of the next process that tries.
    let _ = lock_file.set_len(0).and_then(|()| writeln!(lock_file, "pid {}", std::process::id()));

    #[cfg(target_os = "linux")]
    let db_file = {
        let f = File::open(canonical).map_err(|e| backend(db, "cannot open the database file", &e))?;
        match f.try_lock() {
            Ok(()) => f,
            // Through another name (a hard link) in another process.
            Err(TryLockError::WouldBlock) => return Err(in_use_elsewhere(db, None)),
            Err(TryLockError::Error(e)) => return Err(backend(db, "cannot lock the database file", &e)),
        }
    };

    open.insert(key, db.to_path_buf());
    Ok(DbLock {
        key,
        canonical: canonical.to_path_buf(),
        created_file,
        _lock_file: lock_file,
        #[cfg(target_os = "linux")]
        _db_file: db_file,
    })
}
