//! [`SqliteStorage`], read-only inspection and master-key rotation.

use core::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use mfp_runtime::storage::{Snapshot, Storage, StorageError, StorageOp, Ticket};
use tokio::sync::mpsc::UnboundedSender;

use crate::breaker::{Breaker, StorageStats};
use crate::config::StorageConfig;
use crate::key::MasterKey;
use crate::lock::{self, DbLock};
use crate::records::{FederationSnapshot, WriteOp};
use crate::schema::{self, DbKind, FileState};
use crate::watch;
use crate::writer::{self, Request};

/// Durable, encrypted SQLite storage of a runtime (see the [crate documentation](crate)).
///
/// [`Storage::apply`] never blocks: it queues the batch for the writer thread and returns a
/// pending [`Ticket`]. [`Storage::load`] blocks until the writer has read the snapshot (after
/// every batch queued before it). Dropping the storage (or [`SqliteStorage::close`]) lets the
/// writer finish every queued batch, closes the connection and joins the thread.
pub struct SqliteStorage {
    tx: UnboundedSender<Request>,
    breaker: Arc<Breaker>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    key_id: AtomicU64,
    created: bool,
    writer_timeout: std::time::Duration,
    /// Set once a wait for the writer timed out: it is not waited for again.
    stuck: std::sync::atomic::AtomicBool,
    /// The one-store-per-database locks (see `lock.rs`), held while the store is open
    /// (released last).
    _lock: DbLock,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage").field("path", &self.path).field("key_id", &hex::encode(self.key_id())).finish()
    }
}

/// Puts the database's path in front of an error's message unless it names the path already.
pub(crate) fn with_path(path: &Path, e: StorageError) -> StorageError {
    let shown = path.display().to_string();
    let prefix = |m: String| if m.contains(&shown) { m } else { format!("{shown}: {m}") };
    match e {
        StorageError::Corrupt(m) => StorageError::Corrupt(prefix(m)),
        StorageError::Backend(m) => StorageError::Backend(prefix(m)),
        StorageError::WrongKey(m) => StorageError::WrongKey(prefix(m)),
        other => other,
    }
}

/// Removes `path` (and SQLite's side files) if it is still an empty file.
fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
    }
}

impl SqliteStorage {
    /// Opens the database at `config.path`, creating it (schema and keys) if the path does not
    /// exist.
    ///
    /// An existing file is first checked without being modified: it must be a complete SQLite
    /// database (not garbage, not truncated, structurally sound), carry this crate's schema
    /// (not a foreign or newer one), have been written with `config.master_key`, and every
    /// stored row must read back valid. Only then is it opened for writing (WAL mode, foreign
    /// keys on) and migrated.
    ///
    /// # Errors
    ///
    /// * [`StorageError::Corrupt`] — not an SQLite database, truncated, damaged, a foreign or
    ///   newer schema, an invalid row (the message names the table and column), a tampered
    ///   encrypted cell, an empty file with `create_if_missing = false`;
    /// * [`StorageError::WrongKey`] — a different master key (the message names both key ids);
    /// * [`StorageError::InUse`] — another store has the database open (through any name);
    /// * [`StorageError::Backend`] — I/O errors, a read-only database, a missing file with
    ///   `create_if_missing = false`.
    pub fn open(config: StorageConfig) -> Result<Self, StorageError> {
        let path = config.path.clone();
        Self::open_inner(config).map_err(|e| with_path(&path, e))
    }

    fn open_inner(config: StorageConfig) -> Result<Self, StorageError> {
        let path = config.path.clone();
        let writer_timeout = config.writer_timeout;
        if path.is_file() {
            // Before the lock file is created beside it.
            schema::check_writable(&path)?;
        }
        let lock = lock::acquire(&path, config.create_if_missing)?;
        let breaker = Arc::new(Breaker::new(config.breaker));
        let (tx, handle, info) = match writer::spawn(config, Arc::clone(&breaker)) {
            Ok(opened) => opened,
            Err(e) => {
                if lock.created_file() {
                    // Leave nothing behind for a database that was never created.
                    remove_if_empty(lock.canonical());
                }
                return Err(e);
            }
        };
        Ok(Self {
            tx,
            breaker,
            thread: Mutex::new(Some(handle)),
            path,
            key_id: AtomicU64::new(u64::from_be_bytes(info.key_id)),
            created: info.created,
            writer_timeout,
            stuck: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether [`open`](Self::open) created a new database.
    #[must_use]
    pub fn created(&self) -> bool {
        self.created
    }

    /// The id of the master key cells are written with (see [`MasterKey::key_id`]).
    #[must_use]
    pub fn key_id(&self) -> [u8; 8] {
        self.key_id.load(Ordering::Acquire).to_be_bytes()
    }

    /// Counters of the write path since [`open`](Self::open).
    #[must_use]
    pub fn stats(&self) -> StorageStats {
        self.breaker.stats()
    }

    /// Queues a batch of runtime and federation changes; like [`Storage::apply`].
    pub fn apply_ops(&self, ops: Vec<WriteOp>) -> Ticket {
        if !self.breaker.admit(Instant::now()) {
            self.breaker.count_rejected(1);
            return Ticket::ready(Err(StorageError::CircuitOpen));
        }
        let (done, ticket) = Ticket::pending();
        match self.tx.send(Request::Apply { ops, done }) {
            Ok(()) => ticket,
            Err(tokio::sync::mpsc::error::SendError(req)) => {
                if let Request::Apply { done, .. } = req {
                    done.complete(Err(StorageError::Closed));
                }
                ticket
            }
        }
    }

    fn request<T>(
        &self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<Result<T, StorageError>>) -> Request,
    ) -> Result<T, StorageError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| StorageError::Closed)?;
        match rx.recv_timeout(self.writer_timeout) {
            Ok(result) => result.map_err(|e| with_path(&self.path, e)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(StorageError::Closed),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.stuck.store(true, Ordering::Release);
                Err(StorageError::Backend(format!(
                    "{}: the storage writer did not answer within {:?} (writer_timeout)",
                    self.path.display(),
                    self.writer_timeout
                )))
            }
        }
    }

    /// Reads the bilateral channels and pending outbound messages (blocks; after every batch
    /// queued before).
    ///
    /// # Errors
    ///
    /// As [`Storage::load`].
    pub fn load_federation(&self) -> Result<FederationSnapshot, StorageError> {
        self.request(|reply| Request::LoadFederation { reply })
    }

    /// Re-encrypts every encrypted cell under `new_key` in one transaction (after every batch
    /// queued before), then writes with the new key. Returns the number of cells rewritten.
    /// The database can no longer be opened with the old key afterwards.
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] if a cell cannot be decrypted (nothing is changed then),
    /// [`StorageError::Backend`] on I/O errors.
    pub fn rotate_key(&self, new_key: &MasterKey) -> Result<u64, StorageError> {
        let count = self.request(|reply| Request::Rotate { new_key: Box::new(new_key.clone()), reply })?;
        self.key_id.store(u64::from_be_bytes(new_key.key_id()), Ordering::Release);
        Ok(count)
    }

    /// Finishes every queued batch, closes the database and stops the writer thread.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] if closing the connection failed.
    pub fn close(self) -> Result<(), StorageError> {
        let result = self.request(|reply| Request::Close { reply });
        drop(self);
        match result {
            Err(StorageError::Closed) => Ok(()),
            other => other,
        }
    }

    fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(handle) = handle
            && std::thread::current().id() != handle.thread().id()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        if self.stuck.load(Ordering::Acquire) {
            tracing::error!(path = %self.path.display(), "the storage writer is not answering; not waiting for it");
            return;
        }
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Request::Close { reply }).is_ok() && rx.recv_timeout(self.writer_timeout).is_err() {
            // The writer did not answer: leave its thread rather than block for ever.
            tracing::error!(path = %self.path.display(), "the storage writer did not close in time");
            return;
        }
        self.join();
    }
}

impl Storage for SqliteStorage {
    fn load(&self) -> Result<Option<Snapshot>, StorageError> {
        self.request(|reply| Request::Load { reply })
    }

    fn apply(&self, ops: Vec<StorageOp>) -> Ticket {
        self.apply_ops(ops.into_iter().map(WriteOp::Runtime).collect())
    }
}

/// Runs `fut` (a read-only look at the database at `path`) on a fresh current-thread runtime
/// in a separate thread (safe to call from inside an async context) and waits for it. A
/// crash of SQLite's worker thread meanwhile is reported as damage (`Corrupt`).
pub(crate) fn block_on_thread<T, F>(path: &Path, fut: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StorageError>> + Send + 'static,
{
    let crashed = worker_crashed_reading(path);
    let handle = std::thread::Builder::new()
        .name("mfp-storage-io".into())
        .spawn(move || {
            let token = watch::enter();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StorageError::Backend(format!("cannot start a runtime: {e}")))?;
            let result = rt.block_on(async move {
                tokio::select! {
                    r = fut => r,
                    () = watch::crashed(token) => Err(crashed),
                }
            });
            watch::leave(token);
            result
        })
        .map_err(|e| StorageError::Backend(format!("cannot start a thread: {e}")))?;
    handle.join().unwrap_or_else(|_| Err(StorageError::Backend("storage thread panicked".into())))
}

/// The error for a SQLite worker that died while an existing file was being read.
pub(crate) fn worker_crashed_reading(path: &Path) -> StorageError {
    StorageError::Corrupt(format!(
        "{}: SQLite's worker thread crashed while reading the file: it is damaged (restore a backup)",
        path.display()
    ))
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The runtime snapshot (`None` if no runtime metadata is stored).
    pub snapshot: Option<Snapshot>,
    /// Federation state.
    pub federation: FederationSnapshot,
    /// `mfp_schema.version`.
    pub schema_version: i64,
    /// Id of the master key the cells are written with.
    pub key_id: Option<[u8; 8]>,
}

/// Opens the database at `path` read-only, checks it exactly like [`SqliteStorage::open`]
/// does, and returns everything it holds. Never modifies the file.
///
/// # Errors
///
/// As [`SqliteStorage::open`]; a missing or empty file is [`StorageError::Backend`].
pub fn inspect(path: impl AsRef<Path>, key: &MasterKey) -> Result<Inspection, StorageError> {
    let path = path.as_ref();
    inspect_inner(path, key).map_err(|e| with_path(path, e))
}

fn inspect_inner(path: &Path, key: &MasterKey) -> Result<Inspection, StorageError> {
    let path = path.to_path_buf();
    match schema::inspect_file(&path)? {
        FileState::Missing => return Err(StorageError::Backend(format!("{}: no such database", path.display()))),
        FileState::Empty => return Err(StorageError::Backend(format!("{}: empty file", path.display()))),
        FileState::Sqlite => {}
    }
    let key = key.clone();
    block_on_thread(&path.clone(), async move {
        let (kind, v) = schema::validate_read_only(&path, &key).await?;
        if matches!(kind, DbKind::Empty) {
            return Err(StorageError::Backend(format!("{}: empty database", path.display())));
        }
        Ok(Inspection { snapshot: v.snapshot, federation: v.federation, schema_version: v.version, key_id: v.key_id })
    })
}

/// Re-encrypts every encrypted cell of the database at `path` from `old` to `new` in one
/// transaction (see [`SqliteStorage::rotate_key`]). The database must not be open elsewhere.
/// Returns the number of cells rewritten.
///
/// # Errors
///
/// [`StorageError::WrongKey`] if `old` is not the database's key; otherwise as
/// [`SqliteStorage::open`] and [`SqliteStorage::rotate_key`].
pub fn rotate_master_key(path: impl AsRef<Path>, old: &MasterKey, new: &MasterKey) -> Result<u64, StorageError> {
    let mut config = StorageConfig::new(path.as_ref(), old.clone());
    config.create_if_missing = false;
    let storage = SqliteStorage::open(config)?;
    let count = storage.rotate_key(new)?;
    storage.close()?;
    Ok(count)
}
