//! The raw-SQLite floor for durable sends: the rows one message writes (its channel's new
//! encrypted state and step, and the new Sg), written by sqlx with no runtime around them,
//! on a database the storage layer created, with the storage layer's pragmas.

use std::time::Instant;

use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mfp-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `n` messages' rows in transactions of `batch` messages and returns rows-per-second
/// (messages per second). `channels` channels take turns, as that many senders would.
pub(crate) fn floor_once(durability: Durability, n: usize, batch: usize, channels: usize) -> f64 {
    let scratch = Scratch::new(&format!("floor-{batch}"));
    let path = scratch.0.join("floor.db");
    // Let the storage layer create the schema and the channels, so the rows are the real ones.
    {
        let storage = SqliteStorage::open(StorageConfig::new(&path, MasterKey::generate().unwrap())).unwrap();
        let rt = Runtime::builder(super::config()).storage(storage).build().unwrap();
        for _ in 0..channels {
            let a = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
            let b = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
            let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
            a.send(ch, b"x").unwrap();
        }
        rt.shutdown();
    }
    let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    tokio_rt.block_on(async move {
        let synchronous = match durability {
            Durability::Sync => SqliteSynchronous::Full,
            _ => SqliteSynchronous::Normal,
        };
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .pragma("secure_delete", "FAST")
            .disable_statement_logging()
            .connect()
            .await
            .unwrap();
        let rows = sqlx::query("SELECT channel_id, local_state FROM channels").fetch_all(&mut conn).await.unwrap();
        let ids: Vec<Vec<u8>> = rows.iter().map(|r| r.get::<Vec<u8>, _>(0)).collect();
        let state_len = rows.first().map(|r| r.get::<Vec<u8>, _>(1).len()).unwrap();
        let sg_len: usize = sqlx::query("SELECT length(sg_value) FROM sg_cache WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .map(|r| r.get::<i64, _>(0) as usize)
            .unwrap();
        assert_eq!(ids.len(), channels);
        let mut blob = vec![0u8; state_len];
        let mut sg = vec![0u8; sg_len];
        // The fastest way sqlx has to write them: one round trip to its worker per
        // transaction, the values inline as blob literals (as the storage layer does).
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let ids: Vec<String> = ids.iter().map(|id| hex(id)).collect();
        let start = Instant::now();
        let mut done = 0usize;
        let mut step = 10i64;
        let mut sql = String::new();
        while done < n {
            sql.clear();
            sql.push_str("BEGIN IMMEDIATE;");
            for i in 0..batch.min(n - done) {
                blob[..8].copy_from_slice(&((done + i) as u64).to_be_bytes());
                sg[..8].copy_from_slice(&((done + i) as u64).to_be_bytes());
                sql.push_str(&format!(
                    "UPDATE channels SET local_state = X'{}', step = {step}, validation_failure_count = 0, \
                     updated_at = {step} WHERE channel_id = X'{}';\
                     INSERT INTO sg_cache (id, sg_value, updated_at) VALUES (1, X'{}', {step}) ON CONFLICT (id) \
                     DO UPDATE SET sg_value = excluded.sg_value, updated_at = excluded.updated_at;",
                    hex(&blob),
                    ids[i % ids.len()],
                    hex(&sg)
                ));
                step += 1;
            }
            sql.push_str("COMMIT;");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut conn).await.unwrap();
            done += batch.min(n - done);
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        conn.close().await.unwrap();
        rate
    })
}
