//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, dead_code, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use mfp_core::{AgentId, ChannelId, RuntimeId, State};
use mfp_runtime::storage::{AgentRow, ChannelRow, MetaRow, StorageOp};
use mfp_runtime::{AgentState, ChannelStatus};
use mfp_storage::{Durability, MasterKey, StorageConfig};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

/// A directory under the target's tmp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mfp-storage-tests").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic, non-text master key.
pub fn key(n: u8) -> MasterKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = 0x80 | (n.wrapping_mul(31).wrapping_add(i as u8) & 0x7f);
    }
    MasterKey::from_bytes(&bytes).unwrap()
}

/// A fast configuration (WAL + synchronous=NORMAL).
pub fn config(path: &Path, key: &MasterKey) -> StorageConfig {
    StorageConfig::new(path, key.clone()).durability(Durability::Normal)
}

pub fn state(n: u64) -> State {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8..16].copy_from_slice(&(n ^ 0x5a5a_5a5a_5a5a_5a5a).to_be_bytes());
    b[31] = 0xee;
    State::from_bytes(b)
}

pub fn agent_id(n: u8) -> AgentId {
    AgentId::from_bytes([n; 32])
}

pub fn channel_id(n: u8) -> ChannelId {
    ChannelId::from_bytes([n; 16])
}

pub fn meta(counter: u64) -> StorageOp {
    StorageOp::Meta(MetaRow {
        identity: RuntimeId::derive(b"dep", b"inst"),
        deployment_id: b"dep".to_vec(),
        instance_id: b"inst".to_vec(),
        agent_counter: counter,
    })
}

pub fn put_agent(n: u8, name: Option<&str>, state: AgentState) -> StorageOp {
    StorageOp::PutAgent(AgentRow {
        id: agent_id(n),
        name: name.map(str::to_owned),
        state,
        quarantine_reason: String::new(),
    })
}

pub fn channel_row(n: u8, a: u8, b: u8, step: u64) -> ChannelRow {
    ChannelRow {
        id: channel_id(n),
        agent_a: agent_id(a),
        agent_b: agent_id(b),
        depth: 4,
        status: ChannelStatus::Active,
        step,
        state: state(u64::from(n) * 1000 + step),
        validation_failures: 0,
    }
}

pub fn put_channel(n: u8, a: u8, b: u8) -> StorageOp {
    StorageOp::PutChannel(channel_row(n, a, b, 0))
}

pub fn advance(n: u8, step: u64) -> StorageOp {
    StorageOp::AdvanceChannel { id: channel_id(n), state: state(u64::from(n) * 1000 + step), step }
}

/// A stored, unhandled message on channel `n` at `step`, from agent `sender` to `recipient`.
pub fn delivery(n: u8, step: u64, sender: u8, recipient: u8, payload: &[u8]) -> StorageOp {
    StorageOp::PutDelivery(mfp_runtime::storage::DeliveryRow {
        channel: channel_id(n),
        step,
        recipient: agent_id(recipient),
        sender: agent_id(sender),
        message_id: mfp_core::MessageId::from_bytes([n ^ (step as u8); 16]),
        correlation_id: [step as u8; 8],
        payload: payload.to_vec(),
    })
}

/// A small runtime: meta, agents 1..=3, channels 10 (1-2) and 11 (2-3).
pub fn setup_ops() -> Vec<StorageOp> {
    vec![
        meta(3),
        put_agent(1, Some("alice"), AgentState::Active),
        put_agent(2, Some("bob"), AgentState::Active),
        put_agent(3, None, AgentState::Active),
        put_channel(10, 1, 2),
        put_channel(11, 2, 3),
        StorageOp::Sg(Some(state(99))),
    ]
}

/// A boxed future.
pub type BoxFut<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// Runs `f` with a raw sqlx connection to `path` on a private runtime.
pub fn with_raw<T: Send + 'static>(
    path: &Path,
    read_only: bool,
    f: impl for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFut<'c, T> + Send + 'static,
) -> T {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut conn = SqliteConnectOptions::new().filename(&path).read_only(read_only).connect().await.unwrap();
            let out = f(&mut conn).await;
            conn.close().await.unwrap();
            out
        })
    })
    .join()
    .unwrap()
}

/// The stored `local_state` blob of a channel (read-only connection).
pub fn raw_channel_blob(path: &Path, channel: ChannelId) -> Vec<u8> {
    with_raw(path, true, move |c| {
        Box::pin(async move {
            let row = sqlx::query("SELECT local_state FROM channels WHERE channel_id = ?")
                .bind(channel.as_bytes().to_vec())
                .fetch_one(&mut *c)
                .await
                .unwrap();
            row.get::<Vec<u8>, _>(0)
        })
    })
}

/// Executes statements on a read-write connection.
pub fn raw_exec(path: &Path, sql: &'static str) {
    with_raw(path, false, move |c| {
        Box::pin(async move {
            sqlx::raw_sql(sql).execute(&mut *c).await.unwrap();
        })
    });
}

/// Holds a write lock (`BEGIN IMMEDIATE`) on a database from another connection until dropped.
pub struct WriteLock {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WriteLock {
    pub fn hold(path: &Path) -> Self {
        let path = path.to_path_buf();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut conn = SqliteConnectOptions::new()
                    .filename(&path)
                    .busy_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
                locked_tx.send(()).unwrap();
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            });
        });
        locked_rx.recv().unwrap();
        Self { release: Some(release_tx), thread: Some(thread) }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// A copy of the file's bytes.
pub fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
