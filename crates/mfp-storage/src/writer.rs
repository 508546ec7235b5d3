//! The writer: one OS thread owning a current-thread tokio runtime and the store's two
//! read-write connections, fed by an unbounded channel.
//!
//! The two connections, both used only from this thread, so never writing at once:
//! - a rusqlite connection, driven on this thread itself, for the fast path (below) — the
//!   transaction of almost every group, with no hand-off to another thread;
//! - an sqlx connection (SQLite behind it runs on a worker thread of sqlx's, watched by
//!   [`crate::watch`]) for everything else: opening, validating and migrating the file, the
//!   slow path with its savepoints, loads, key rotation.
//!
//! Both have the same per-connection settings (see `schema::open_fast`).
//!
//! Each round takes every `Apply` request queued at that moment (up to
//! `max_batches_per_commit`) — everything that arrived while the previous transaction was
//! committing — applies them in submission order in ONE transaction, commits, and then
//! completes the tickets in order. The transaction is first tried as few queries as possible
//! with bound parameters (see `Writer::try_fast`); if a batch violates a constraint it is
//! redone statement by statement with a savepoint per batch, so that batch is rolled back
//! alone. A failure of the transaction itself (begin, I/O, commit) rolls everything back and
//! fails every ticket of the round; such failures feed the circuit breaker.
//!
//! A round made only of inbox removals (`AckDelivery`) is not committed at once: nobody waits
//! for a removal (the runtime submits them without waiting), and one that is lost in a crash
//! only means its message is delivered again, flagged. Such batches wait up to
//! [`REMOVAL_DELAY`] for the next batch and commit in its transaction, in submission order,
//! instead of costing a transaction (and under `Durability::Sync` an fsync) of their own.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mfp_core::MerkleSg;
use mfp_runtime::storage::{Snapshot, StorageError, TicketSender};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::breaker::Breaker;
use crate::cell::CellCipher;
use crate::config::StorageConfig;
use crate::db::{self, ApplyError, Stmt, get_fixed, sql_error, unix_now};
use crate::key::MasterKey;
use crate::records::{FederationSnapshot, WriteOp};
use crate::{schema, watch};
use mfp_runtime::storage::StorageOp;

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
            // The second connection, once the file is validated, migrated and initialised.
            let fast = match schema::open_fast(&config) {
                Ok(fast) => fast,
                Err(e) => {
                    rt.block_on(async {
                        tokio::select! {
                            _ = opened.conn.close() => {},
                            () = watch::crashed(token) => {},
                        }
                    });
                    watch::leave(token);
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let writer = Writer {
                conn: opened.conn,
                fast: Some(fast),
                cipher: opened.cipher,
                breaker,
                max_batches: config.max_batches_per_commit.max(1),
                stmts: Vec::new(),
            };
            if ready_tx.send(Ok(info)).is_err() {
                // The caller gave up waiting.
                drop(writer.fast);
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

/// Longest a round of nothing but inbox removals waits for company (see the module docs).
pub(crate) const REMOVAL_DELAY: Duration = Duration::from_millis(5);

/// How long the writer, its queue empty, keeps polling it before it parks (so that a sender
/// need not wake it for the next batch).
const SPIN: Duration = Duration::from_micros(SPIN_MICROS);
const SPIN_MICROS: u64 = 100;

/// Polls `fut` again at once while it is pending, for up to [`SPIN`], then waits normally.
struct Spin<F> {
    fut: F,
    until: Option<Instant>,
}

impl<F: std::future::Future + Unpin> std::future::Future for Spin<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        if let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut self.fut).poll(cx) {
            return std::task::Poll::Ready(v);
        }
        let now = Instant::now();
        let until = *self.until.get_or_insert(now + SPIN);
        if now < until {
            std::thread::yield_now();
            cx.waker().wake_by_ref();
        }
        std::task::Poll::Pending
    }
}

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

impl Pending {
    /// Whether the batch only removes handled messages from the inbox.
    fn removals_only(&self) -> bool {
        !self.ops.is_empty() && self.ops.iter().all(|op| matches!(op, WriteOp::Runtime(StorageOp::AckDelivery { .. })))
    }
}

struct Writer {
    /// The sqlx connection: the slow path, reads, rotation (see the module docs).
    conn: SqliteConnection,
    /// The fast path's connection; `None` after it panicked (then every group takes the slow
    /// path, see [`Writer::try_fast`]).
    fast: Option<rusqlite::Connection>,
    cipher: CellCipher,
    breaker: Arc<Breaker>,
    max_batches: usize,
    /// The statements of the group being committed (kept for their allocation).
    stmts: Vec<Stmt>,
}

impl Writer {
    async fn run(mut self, rx: &mut UnboundedReceiver<Request>) {
        let mut carry: Option<Request> = None;
        let mut close_reply = None;
        // Removal-only batches waiting for company, and until when they may wait.
        let mut waiting: Vec<Pending> = Vec::new();
        let mut deadline = tokio::time::Instant::now();
        loop {
            let req = match carry.take() {
                Some(r) => r,
                None if waiting.is_empty() => match (Spin { fut: Box::pin(rx.recv()), until: None }).await {
                    Some(r) => r,
                    None => break,
                },
                None => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(_) => {
                        self.commit_group(std::mem::take(&mut waiting)).await;
                        continue;
                    }
                },
            };
            if !matches!(req, Request::Apply { .. }) && !waiting.is_empty() {
                // Everything queued before a read, a rotation or a close commits first.
                self.commit_group(std::mem::take(&mut waiting)).await;
            }
            match req {
                Request::Apply { ops, done } => {
                    let fresh = waiting.is_empty();
                    let mut group = std::mem::take(&mut waiting);
                    group.push(Pending { ops, done });
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
                    if carry.is_none() && group.len() < self.max_batches && group.iter().all(Pending::removals_only) {
                        if fresh {
                            deadline = tokio::time::Instant::now() + REMOVAL_DELAY;
                        }
                        waiting = group;
                        continue;
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
        if !waiting.is_empty() {
            self.commit_group(waiting).await;
        }
        // Fail whatever was queued behind a close.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            fail_request(req, &StorageError::Closed);
        }
        // The fast connection first: the last connection to close checkpoints the log.
        let fast_closed = match self.fast.take().map(rusqlite::Connection::close) {
            Some(Err((_, e))) => Err(db::rusqlite_error("close the fast-path connection", &e)),
            _ => Ok(()),
        };
        let closed = self.conn.close().await.map_err(|e| sql_error("close", &e)).and(fast_closed);
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
        match self.try_fast(group, now) {
            Fast::Committed => return Ok(group.iter().map(|_| Ok(())).collect()),
            Fast::Failed(e) => return Err(e),
            Fast::NotTaken => {}
        }
        self.try_slow(group, now).await
    }

    /// The fast path: the whole transaction — `BEGIN IMMEDIATE`, every statement of every
    /// batch, `COMMIT` — on the rusqlite connection, on this thread, with bound parameters
    /// and statements prepared once (the connection caches every statement text, see
    /// `schema::FAST_STATEMENT_CACHE`). Writes that a later write of the same transaction
    /// replaces are left out (see [`superseded`]): the transaction commits whole or not at
    /// all, so nobody could see them. When a batch cannot be written (a constraint or a
    /// value out of range) the transaction is rolled back and the group goes to the slow
    /// path, which isolates that batch; any other failure fails the group.
    ///
    /// A panic in here (a bug, in rusqlite or ours) is caught: the group fails, the fast
    /// connection is dropped (closing it rolls back a transaction it left open), and every
    /// later group takes the slow path on the sqlx connection.
    fn try_fast(&mut self, group: &[Pending], now: i64) -> Fast {
        let Some(conn) = self.fast.as_ref() else { return Fast::NotTaken };
        let skip = superseded(group);
        let stmts = &mut self.stmts;
        stmts.clear();
        for (b, p) in group.iter().enumerate() {
            for (i, op) in p.ops.iter().enumerate() {
                if !skip.contains(&(b, i)) && db::statements(&self.cipher, op, now, stmts).is_err() {
                    return Fast::NotTaken;
                }
            }
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match write_fast(conn, stmts) {
            Ok(()) => Fast::Committed,
            // A statement before COMMIT, or COMMIT, failed: the transaction may be open.
            Err((what, e)) => match roll_back(conn) {
                Err(r) => Fast::Failed(db::rusqlite_error("transaction: rollback", &r)),
                Ok(()) if db::is_rusqlite_constraint(&e) => Fast::NotTaken,
                Ok(()) => Fast::Failed(db::rusqlite_error(&format!("transaction: {what}"), &e)),
            },
        }));
        stmts.clear();
        match outcome {
            Ok(fast) => fast,
            Err(_) => {
                tracing::error!("the storage writer's fast path panicked; every later transaction takes the slow path");
                self.fast = None;
                Fast::Failed(StorageError::Backend(
                    "the storage writer's fast path failed unexpectedly (a bug; the panic is logged): this group \
                     was not written; later ones are written through the slow path"
                        .into(),
                ))
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

/// The operations of `group` (batch index, op index) that a later operation of the same
/// group replaces entirely, so that a transaction holding the whole group need not write
/// them: every Sg but the last (they all write the one Sg row), and a channel advance
/// followed by another advance of the same channel with no other change to that channel in
/// between (each rewrites the same columns of the same row). Only for a transaction that
/// commits the whole group or nothing.
fn superseded(group: &[Pending]) -> std::collections::HashSet<(usize, usize)> {
    use std::collections::HashMap;
    let mut skip = std::collections::HashSet::new();
    let mut last_sg: Option<(usize, usize)> = None;
    // Per channel: its pending advance, if the channel saw nothing else since.
    let mut advance: HashMap<mfp_core::ChannelId, (usize, usize)> = HashMap::new();
    for (b, p) in group.iter().enumerate() {
        for (i, op) in p.ops.iter().enumerate() {
            match op {
                WriteOp::Runtime(StorageOp::Sg(_)) => {
                    if let Some(prev) = last_sg.replace((b, i)) {
                        skip.insert(prev);
                    }
                }
                WriteOp::Runtime(StorageOp::AdvanceChannel { id, .. }) => {
                    if let Some(prev) = advance.insert(*id, (b, i)) {
                        skip.insert(prev);
                    }
                }
                // Rows of other tables, or no row at all.
                WriteOp::Runtime(
                    StorageOp::PutDelivery(_) | StorageOp::AckDelivery { .. } | StorageOp::RemoveDelivery { .. },
                ) => {}
                // Anything else may touch a channel row (or, for `DeleteAgent`, several).
                _ => advance.clear(),
            }
        }
    }
    skip
}

/// Runs one transaction of `stmts` on the fast connection. On `Err` (what failed, and why) the
/// transaction may still be open: see [`roll_back`].
fn write_fast(conn: &rusqlite::Connection, stmts: &[Stmt]) -> Result<(), (&'static str, rusqlite::Error)> {
    // A transaction left open by an earlier failure whose rollback failed too.
    roll_back(conn).map_err(|e| ("rollback of an earlier transaction", e))?;
    run_cached(conn, "BEGIN IMMEDIATE").map_err(|e| ("begin", e))?;
    for stmt in stmts {
        let changed = conn
            .prepare_cached(stmt.sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(&stmt.args)))
            .map_err(|e| (stmt.what, e))?;
        if changed == 0 && stmt.must_change.is_some() {
            // A condition of its batch does not hold: the slow path isolates that batch
            // (and reports the conflict), as for a constraint.
            return Err((stmt.what, db::constraint_error()));
        }
    }
    #[cfg(test)]
    if tests::PANIC_BEFORE_COMMIT.with(std::cell::Cell::take) {
        panic!("a panic in the fast path, with its transaction open (injected by a test)");
    }
    run_cached(conn, "COMMIT").map_err(|e| ("commit", e))
}

/// Rolls back the fast connection's open transaction, if it has one (SQLite itself rolls
/// back after some errors: a full disk, an I/O error).
fn roll_back(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    if conn.is_autocommit() { Ok(()) } else { run_cached(conn, "ROLLBACK") }
}

fn run_cached(conn: &rusqlite::Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use mfp_core::{ChannelId, State};
    use mfp_runtime::storage::{StorageOp, Ticket};

    use super::{Pending, WriteOp, superseded};

    thread_local! {
        /// Makes the next fast transaction of this thread panic before its COMMIT.
        pub(super) static PANIC_BEFORE_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_panic_in_the_fast_path_fails_its_group_and_later_groups_take_the_slow_path() {
        use std::sync::Arc;

        use mfp_core::RuntimeId;
        use mfp_runtime::storage::{MetaRow, StorageError};

        use crate::breaker::Breaker;
        use crate::{MasterKey, StorageConfig, schema};

        let dir = std::env::temp_dir().join(format!("mfp-storage-fast-panic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = StorageConfig::new(dir.join("p.db"), MasterKey::generate().unwrap());
        let meta = |counter| {
            let row = MetaRow {
                identity: RuntimeId::from_bytes([3; 32]),
                deployment_id: vec![1],
                instance_id: vec![2],
                agent_counter: counter,
            };
            vec![WriteOp::Runtime(StorageOp::Meta(row))]
        };
        async fn commit(writer: &mut super::Writer, ops: Vec<WriteOp>) -> Result<(), StorageError> {
            let (done, ticket) = Ticket::pending();
            writer.commit_group(vec![Pending { ops, done }]).await;
            ticket.wait()
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let opened = schema::open_database(&config).await.unwrap();
            let mut writer = super::Writer {
                conn: opened.conn,
                fast: Some(schema::open_fast(&config).unwrap()),
                cipher: opened.cipher,
                breaker: Arc::new(Breaker::new(config.breaker)),
                max_batches: 64,
                stmts: Vec::new(),
            };
            PANIC_BEFORE_COMMIT.with(|p| p.set(true));
            let failed = commit(&mut writer, meta(1)).await;
            assert!(matches!(&failed, Err(StorageError::Backend(m)) if m.contains("fast path")), "{failed:?}");
            assert!(writer.fast.is_none(), "the fast connection is dropped");
            assert_eq!(
                writer.load().await.unwrap().and_then(|s| s.meta),
                None,
                "nothing of the failed group was written"
            );
            // The slow path can write: the dropped connection's open transaction is gone.
            commit(&mut writer, meta(7)).await.unwrap();
            assert_eq!(writer.load().await.unwrap().and_then(|s| s.meta).map(|m| m.agent_counter), Some(7));
            sqlx::Connection::close(writer.conn).await.unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn batch(ops: Vec<StorageOp>) -> Pending {
        let (done, _ticket) = Ticket::pending();
        Pending { ops: ops.into_iter().map(WriteOp::Runtime).collect(), done }
    }

    fn advance(c: u8, step: u64) -> StorageOp {
        StorageOp::AdvanceChannel { id: ChannelId::from_bytes([c; 16]), state: State::zero(), step }
    }

    fn ack(c: u8, step: u64) -> StorageOp {
        StorageOp::AckDelivery { channel: ChannelId::from_bytes([c; 16]), step }
    }

    fn sorted(group: &[Pending]) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = superseded(group).into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn only_the_last_sg_and_the_last_advance_of_a_channel_are_written() {
        let group = [
            batch(vec![ack(1, 0), advance(1, 1), StorageOp::Sg(None)]),
            batch(vec![advance(2, 1), StorageOp::Sg(Some(State::zero()))]),
            batch(vec![ack(1, 1), advance(1, 2), StorageOp::Sg(Some(State::zero()))]),
        ];
        assert_eq!(sorted(&group), vec![(0, 1), (0, 2), (1, 1)]);
    }

    #[test]
    fn another_change_to_the_channels_keeps_the_earlier_advance() {
        let id = ChannelId::from_bytes([1; 16]);
        for between in [
            StorageOp::ChannelFailures { id, count: 1 },
            StorageOp::CloseChannel(id),
            StorageOp::ChannelStatus { id, status: mfp_runtime::ChannelStatus::Quarantined },
            StorageOp::DeleteAgent(mfp_core::AgentId::from_bytes([9; 32])),
        ] {
            let group = [batch(vec![advance(1, 1)]), batch(vec![between.clone()]), batch(vec![advance(1, 2)])];
            assert!(sorted(&group).is_empty(), "{between:?}");
        }
    }

    #[test]
    fn a_batch_of_removals_only_is_recognised() {
        assert!(batch(vec![ack(1, 0), ack(2, 3)]).removals_only());
        assert!(!batch(vec![ack(1, 0), advance(1, 1)]).removals_only());
        assert!(!batch(vec![]).removals_only());
    }
}
