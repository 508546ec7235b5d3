//! The writer: one OS thread owning a current-thread tokio runtime and the only read-write
//! connection, fed by an unbounded channel.
//!
//! Each round takes every `Apply` request queued at that moment (up to
//! `max_batches_per_commit`), applies them in submission order in ONE transaction, commits,
//! and then completes the tickets in order. The transaction is first tried as one SQL text
//! (one round trip; see `Writer::try_fast`); if a batch violates a constraint it is redone
//! with bound parameters and a savepoint per batch, so that batch is rolled back alone.
//! A failure of the transaction itself (begin, I/O, commit) rolls everything back and fails
//! every ticket of the round; such failures feed the circuit breaker.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::Instant;

use mfp_core::MerkleSg;
use mfp_runtime::storage::{Snapshot, StorageError, TicketSender};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::breaker::Breaker;
use crate::cell::CellCipher;
use crate::config::StorageConfig;
use crate::db::{self, ApplyError, get_fixed, sql_error, unix_now};
use crate::key::MasterKey;
use crate::records::{FederationSnapshot, WriteOp};
use crate::{schema, watch};

/// A request to the writer.
pub(crate) enum Request {
    /// Apply one batch atomically.
    Apply { ops: Vec<WriteOp>, done: TicketSender },
    /// Read the runtime snapshot.
    Load { reply: SyncSender<Result<Option<Snapshot>, StorageError>> },
    /// Read the federation state.
    LoadFederation { reply: SyncSender<Result<FederationSnapshot, StorageError>> },
    /// Re-encrypt everything under a new master key.
    Rotate { new_key: Box<MasterKey>, reply: SyncSender<Result<u64, StorageError>> },
    /// Stop after everything queued before; report the outcome of closing the connection.
    Close { reply: SyncSender<Result<(), StorageError>> },
}

/// What the caller learns once the database is open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenInfo {
    pub(crate) key_id: [u8; 8],
    pub(crate) created: bool,
}

/// Starts the writer thread and opens the database on it. Returns once the database is open
/// (or failed to open), at the latest after `config.writer_timeout`.
///
/// If SQLite's worker thread dies (see [`crate::watch`]) while the file is being opened,
/// the open fails with `Corrupt`; if it dies later, the writer fails every request from then
/// on with `Backend`.
pub(crate) fn spawn(
    config: StorageConfig,
    breaker: Arc<Breaker>,
) -> Result<(UnboundedSender<Request>, JoinHandle<()>, OpenInfo), StorageError> {
    let (tx, mut rx) = unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let timeout = config.writer_timeout;
    let path = config.path.clone();
    let handle = std::thread::Builder::new()
        .name("mfp-storage-writer".into())
        .spawn(move || {
            let token = watch::enter();
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StorageError::Backend(format!("cannot start the writer runtime: {e}"))));
                    return;
                }
            };
            let opened = rt.block_on(async {
                tokio::select! {
                    r = schema::open_database(&config) => r,
                    () = watch::crashed(token) => Err(crate::storage::worker_crashed_reading(&config.path)),
                }
            });
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    watch::leave(token);
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let info = OpenInfo { key_id: opened.cipher.key_id(), created: opened.created };
            let writer = Writer {
                conn: opened.conn,
                cipher: opened.cipher,
                breaker,
                max_batches: config.max_batches_per_commit.max(1),
            };
            if ready_tx.send(Ok(info)).is_err() {
                // The caller gave up waiting.
                rt.block_on(async {
                    tokio::select! {
                        _ = writer.conn.close() => {},
                        () = watch::crashed(token) => {},
                    }
                });
                watch::leave(token);
                return;
            }
            let crashed = rt.block_on(async {
                tokio::select! {
                    () = writer.run(&mut rx) => false,
                    () = watch::crashed(token) => true,
                }
            });
            watch::leave(token);
            if crashed {
                let e = StorageError::Backend(format!(
                    "{}: SQLite's worker thread crashed; the store is unusable (restart the process, and run \
                     `mfp-storage check` on the file)",
                    config.path.display()
                ));
                tracing::error!(path = %config.path.display(), "SQLite's worker thread crashed");
                while let Some(req) = rx.blocking_recv() {
                    let close = matches!(req, Request::Close { .. });
                    fail_request(req, &e);
                    if close {
                        break;
                    }
                }
            }
        })
        .map_err(|e| StorageError::Backend(format!("cannot start the writer thread: {e}")))?;
    match ready_rx.recv_timeout(timeout) {
        Ok(Ok(info)) => Ok((tx, handle, info)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(StorageError::Backend(format!(
            "{}: opening the database took longer than {timeout:?} (writer_timeout); giving up",
            path.display()
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let _ = handle.join();
            Err(StorageError::Backend("the writer thread stopped while opening the database".into()))
        }
    }
}

/// Largest SQL text of one fast-path transaction; bigger groups take the slow path.
const FAST_PATH_MAX_SQL: usize = 1 << 20;

/// Outcome of the fast path.
enum Fast {
    /// Everything committed.
    Committed,
    /// Nothing applied; use the slow path.
    NotTaken,
    /// The transaction failed; nothing applied.
    Failed(StorageError),
}

struct Pending {
    ops: Vec<WriteOp>,
    done: TicketSender,
}

struct Writer {
    conn: SqliteConnection,
    cipher: CellCipher,
    breaker: Arc<Breaker>,
    max_batches: usize,
}

impl Writer {
    async fn run(mut self, rx: &mut UnboundedReceiver<Request>) {
        let mut carry: Option<Request> = None;
        let mut close_reply = None;
        loop {
            let req = match carry.take() {
                Some(r) => r,
                None => match rx.recv().await {
                    Some(r) => r,
                    None => break,
                },
            };
            match req {
                Request::Apply { ops, done } => {
                    let mut group = vec![Pending { ops, done }];
                    while group.len() < self.max_batches {
                        match rx.try_recv() {
                            Ok(Request::Apply { ops, done }) => group.push(Pending { ops, done }),
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group).await;
                }
                Request::Load { reply } => {
                    let _ = reply.send(self.load().await);
                }
                Request::LoadFederation { reply } => {
                    let _ = reply.send(self.load_federation().await);
                }
                Request::Rotate { new_key, reply } => {
                    let _ = reply.send(self.rotate(&new_key).await);
                }
                Request::Close { reply } => {
                    close_reply = Some(reply);
                    break;
                }
            }
        }
        // Fail whatever was queued behind a close.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            fail_request(req, &StorageError::Closed);
        }
        let closed = self.conn.close().await.map_err(|e| sql_error("close", &e));
        if let Some(reply) = close_reply {
            let _ = reply.send(closed);
        } else if let Err(e) = closed {
            tracing::warn!(error = %e, "closing the storage connection failed");
        }
    }

    async fn commit_group(&mut self, group: Vec<Pending>) {
        if self.breaker.rejects_queued(Instant::now()) {
            self.breaker.count_rejected(group.len() as u64);
            for p in group {
                p.done.complete(Err(StorageError::CircuitOpen));
            }
            return;
        }
        match self.try_commit(&group).await {
            Ok(results) => {
                self.breaker.record(true, Instant::now());
                let failed = results.iter().filter(|r| r.is_err()).count() as u64;
                self.breaker.count_commit(results.len() as u64 - failed, failed);
                for (p, r) in group.into_iter().zip(results) {
                    p.done.complete(r);
                }
            }
            Err(e) => {
                self.breaker.count_failed_transaction();
                let opened = self.breaker.record(false, Instant::now());
                if opened {
                    tracing::error!(error = %e, "storage circuit breaker opened after repeated commit failures");
                } else {
                    tracing::warn!(error = %e, batches = group.len(), "storage transaction failed");
                }
                for p in group {
                    p.done.complete(Err(e.clone()));
                }
            }
        }
    }

    /// One transaction for the whole group. `Err` means nothing of the group was applied.
    async fn try_commit(&mut self, group: &[Pending]) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        let now = unix_now();
        match self.try_fast(group, now).await {
            Fast::Committed => return Ok(group.iter().map(|_| Ok(())).collect()),
            Fast::Failed(e) => return Err(e),
            Fast::NotTaken => {}
        }
        self.try_slow(group, now).await
    }

    /// The fast path: the whole transaction — `BEGIN IMMEDIATE`, every statement of every
    /// batch with its arguments inlined as generated literals, `COMMIT` — as ONE SQL text, so
    /// one round trip to SQLite's worker thread instead of one per statement. When a batch
    /// cannot be written (a constraint or a value out of range) the transaction is rolled back
    /// and the group goes to the slow path, which isolates that batch.
    async fn try_fast(&mut self, group: &[Pending], now: i64) -> Fast {
        let mut sql = String::with_capacity(64 + group.len() * 640);
        sql.push_str("BEGIN IMMEDIATE;");
        for p in group {
            let Ok(stmts) = db::batch_statements(&self.cipher, &p.ops, now) else {
                return Fast::NotTaken;
            };
            for stmt in &stmts {
                stmt.render(&mut sql);
            }
            if sql.len() > FAST_PATH_MAX_SQL {
                return Fast::NotTaken;
            }
        }
        sql.push_str("COMMIT;");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut self.conn).await {
            Ok(_) => Fast::Committed,
            Err(e) => {
                // A statement before COMMIT failed: the transaction is still open.
                if let Err(r) = sqlx::raw_sql("ROLLBACK").execute(&mut self.conn).await {
                    tracing::debug!(error = %r, "rollback after a failed fast-path transaction");
                }
                if db::is_constraint(&e) { Fast::NotTaken } else { Fast::Failed(sql_error("transaction", &e)) }
            }
        }
    }

    /// The slow path: bound parameters, and a savepoint per batch when there are several.
    async fn try_slow(&mut self, group: &[Pending], now: i64) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| sql_error("begin", &e))?;
        let mut results = Vec::with_capacity(group.len());
        if let [only] = group {
            match db::apply_batch(&mut tx, &self.cipher, &only.ops, now).await {
                Ok(()) => results.push(Ok(())),
                Err(ApplyError::Batch(e)) => {
                    tx.rollback().await.map_err(|e| sql_error("rollback", &e))?;
                    return Ok(vec![Err(e)]);
                }
                Err(ApplyError::Transaction(e)) => return Err(e),
            }
        } else {
            for p in group {
                let mut sp = tx.begin().await.map_err(|e| sql_error("savepoint", &e))?;
                match db::apply_batch(&mut sp, &self.cipher, &p.ops, now).await {
                    Ok(()) => {
                        sp.commit().await.map_err(|e| sql_error("release savepoint", &e))?;
                        results.push(Ok(()));
                    }
                    Err(ApplyError::Batch(e)) => {
                        sp.rollback().await.map_err(|e| sql_error("rollback to savepoint", &e))?;
                        results.push(Err(e));
                    }
                    Err(ApplyError::Transaction(e)) => return Err(e),
                }
            }
        }
        tx.commit().await.map_err(|e| sql_error("commit", &e))?;
        Ok(results)
    }

    async fn load(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let mut tx = self.conn.begin().await.map_err(|e| sql_error("begin read", &e))?;
        let snapshot = db::read_snapshot(&mut tx, &self.cipher).await;
        let _ = tx.rollback().await;
        let snapshot = snapshot?;
        if let Some(s) = &snapshot {
            warn_on_sg_mismatch(s);
        }
        Ok(snapshot)
    }

    async fn load_federation(&mut self) -> Result<FederationSnapshot, StorageError> {
        let mut tx = self.conn.begin().await.map_err(|e| sql_error("begin read", &e))?;
        let fed = db::read_federation(&mut tx, &self.cipher).await;
        let _ = tx.rollback().await;
        fed
    }

    async fn rotate(&mut self, new_key: &MasterKey) -> Result<u64, StorageError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| sql_error("begin", &e))?;
        let row = sqlx::query("SELECT salt FROM mfp_keys WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql_error("read mfp_keys", &e))?;
        let salt: [u8; 32] = get_fixed(&row, "mfp_keys", "salt")?;
        let new_cipher = CellCipher::new(new_key, &salt);
        let count = db::reencrypt_all(&mut tx, &self.cipher, &new_cipher, unix_now()).await?;
        tx.commit().await.map_err(|e| sql_error("commit", &e))?;
        self.cipher = new_cipher;
        tracing::info!(cells = count, "master key rotated");
        Ok(count)
    }
}

fn fail_request(req: Request, e: &StorageError) {
    match req {
        Request::Apply { done, .. } => done.complete(Err(e.clone())),
        Request::Load { reply } => {
            let _ = reply.send(Err(e.clone()));
        }
        Request::LoadFederation { reply } => {
            let _ = reply.send(Err(e.clone()));
        }
        Request::Rotate { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Request::Close { reply } => {
            let _ = reply.send(if *e == StorageError::Closed { Ok(()) } else { Err(e.clone()) });
        }
    }
}

/// Logs (without failing) when the stored Sg is not the Merkle root of the open channels.
fn warn_on_sg_mismatch(s: &Snapshot) {
    match MerkleSg::from_states(s.channels.iter().map(|c| (c.id, &c.state))) {
        Ok(mut tree) => {
            if tree.root() != s.sg {
                tracing::warn!("stored Sg differs from the Merkle root of the stored channel states");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot recompute Sg from the stored channels"),
    }
}
