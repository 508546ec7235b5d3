//! The raw-SQLite floors for durable sends: the rows one message writes — its channel's new
//! encrypted state and step, its encrypted inbox entry, the removal of an earlier message's
//! entry (its handler returned), and the new Sg — with no runtime around them, on a database
//! the storage layer created, with the storage layer's pragmas, and per transaction only the
//! last state of each channel and one Sg (the rows a committed transaction leaves are the
//! same). Written two ways: by sqlx, in the fastest way it has (one query per transaction
//! with bound values, prepared once, then reused), and by rusqlite on the calling thread
//! (each statement prepared once and cached, bound values) — the way the storage writer's
//! fast path writes.

use std::time::Instant;

use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Arguments, ConnectOptions, Connection, Row};

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

/// Which driver writes a floor's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// sqlx: one multi-statement query per transaction.
    Sqlx,
    /// rusqlite on the calling thread: cached statements, one by one.
    Rusqlite,
}

const ADVANCE: &str = "UPDATE channels SET local_state = ?, step = ?, validation_failure_count = 0, updated_at = ? \
                       WHERE channel_id = ? AND status <> 'closed';";
const INBOX: &str = "INSERT INTO inbox (channel_id, recipient, step, message_id, correlation_id, sender, payload, \
                     created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id, step, message_id) DO UPDATE SET \
                     recipient = excluded.recipient, correlation_id = excluded.correlation_id, sender = \
                     excluded.sender, payload = excluded.payload;";
const REMOVE: &str = "DELETE FROM inbox WHERE id = (SELECT min(id) FROM inbox WHERE channel_id = ? AND step = ?);";
const SG: &str = "INSERT INTO sg_cache (id, sg_value, updated_at) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET \
                  sg_value = excluded.sg_value, updated_at = excluded.updated_at;";

/// Writes `n` messages' rows in transactions of `batch` messages with `driver` and returns
/// rows-per-second (messages per second). `channels` channels take turns, as that many
/// senders would.
pub(crate) fn floor_once(driver: Driver, durability: Durability, n: usize, batch: usize, channels: usize) -> f64 {
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
    if driver == Driver::Rusqlite {
        return rusqlite_floor(&path, durability, n, batch, channels);
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
        let rows = sqlx::query("SELECT channel_id, agent_a, agent_b, local_state FROM channels")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let chans: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> =
            rows.iter().map(|r| (r.get::<Vec<u8>, _>(0), r.get::<Vec<u8>, _>(1), r.get::<Vec<u8>, _>(2))).collect();
        let state_len = rows.first().map(|r| r.get::<Vec<u8>, _>(3).len()).unwrap();
        let sg_len: usize = sqlx::query("SELECT length(sg_value) FROM sg_cache WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .map(|r| r.get::<i64, _>(0) as usize)
            .unwrap();
        assert_eq!(chans.len(), channels);
        // A cell is its plaintext plus a fixed overhead: a 64-byte payload's is as long as a
        // state's with 32 more bytes.
        let mut blob = vec![0u8; state_len];
        let mut sg = vec![0u8; sg_len];
        let mut payload = vec![0u8; state_len + 32];
        let start = Instant::now();
        let mut done = 0usize;
        // Steps start above the setup message's.
        let mut step = 10i64;
        let mut last: Vec<Option<i64>> = vec![None; channels];
        while done < n {
            let k = batch.min(n - done);
            let mut sql = String::from("BEGIN IMMEDIATE;");
            let mut args = SqliteArguments::default();
            let mut touched = vec![None; channels];
            for i in 0..k {
                let c = i % channels;
                let (id, a, b) = &chans[c];
                payload[..8].copy_from_slice(&((done + i) as u64).to_be_bytes());
                // The previous message on this channel has been handled.
                if let Some(prev) = last[c] {
                    sql.push_str(REMOVE);
                    args.add(id.clone()).unwrap();
                    args.add(prev).unwrap();
                }
                sql.push_str(INBOX);
                args.add(id.clone()).unwrap();
                args.add(b.clone()).unwrap();
                args.add(step).unwrap();
                args.add(vec![7u8; 16]).unwrap();
                args.add(vec![7u8; 8]).unwrap();
                args.add(a.clone()).unwrap();
                args.add(payload.clone()).unwrap();
                args.add(step).unwrap();
                last[c] = Some(step);
                touched[c] = Some(step);
                step += 1;
            }
            for (c, s) in touched.iter().enumerate() {
                if let Some(s) = *s {
                    blob[..8].copy_from_slice(&(s as u64).to_be_bytes());
                    sql.push_str(ADVANCE);
                    args.add(blob.clone()).unwrap();
                    args.add(s + 1).unwrap();
                    args.add(s).unwrap();
                    args.add(chans[c].0.clone()).unwrap();
                }
            }
            sg[..8].copy_from_slice(&(step as u64).to_be_bytes());
            sql.push_str(SG);
            args.add(sg.clone()).unwrap();
            args.add(step).unwrap();
            sql.push_str("COMMIT;");
            sqlx::query_with(sqlx::AssertSqlSafe(sql), args).execute(&mut conn).await.unwrap();
            done += k;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        conn.close().await.unwrap();
        rate
    })
}

/// The rusqlite floor: the same rows and transactions as the sqlx one, written the way the
/// storage writer's fast path writes them (the storage layer's per-connection settings,
/// each statement prepared once and cached, values bound, on the calling thread).
fn rusqlite_floor(path: &std::path::Path, durability: Durability, n: usize, batch: usize, channels: usize) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let synchronous = match durability {
        Durability::Sync => "FULL",
        _ => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous).unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    conn.pragma_update(None, "secure_delete", "FAST").unwrap();
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let chans: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = conn
        .prepare("SELECT channel_id, agent_a, agent_b FROM channels")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let state_len: i64 = conn.query_row("SELECT length(local_state) FROM channels LIMIT 1", [], |r| r.get(0)).unwrap();
    let sg_len: i64 = conn.query_row("SELECT length(sg_value) FROM sg_cache WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(chans.len(), channels);
    let mut blob = vec![0u8; state_len as usize];
    let mut sg = vec![0u8; sg_len as usize];
    let mut payload = vec![0u8; state_len as usize + 32];
    let exec = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql).unwrap().execute(params).unwrap();
    };
    let start = Instant::now();
    let mut done = 0usize;
    let mut step = 10i64;
    let mut last: Vec<Option<i64>> = vec![None; channels];
    while done < n {
        let k = batch.min(n - done);
        exec("BEGIN IMMEDIATE", &[]);
        let mut touched = vec![None; channels];
        for i in 0..k {
            let c = i % channels;
            let (id, a, b) = &chans[c];
            payload[..8].copy_from_slice(&((done + i) as u64).to_be_bytes());
            if let Some(prev) = last[c] {
                exec(REMOVE, &[id, &prev]);
            }
            exec(INBOX, &[id, b, &step, &[7u8; 16].as_slice(), &[7u8; 8].as_slice(), a, &payload, &step]);
            last[c] = Some(step);
            touched[c] = Some(step);
            step += 1;
        }
        for (c, s) in touched.iter().enumerate() {
            if let Some(s) = *s {
                blob[..8].copy_from_slice(&(s as u64).to_be_bytes());
                exec(ADVANCE, &[&blob, &(s + 1), &s, &chans[c].0]);
            }
        }
        sg[..8].copy_from_slice(&(step as u64).to_be_bytes());
        exec(SG, &[&sg, &step]);
        exec("COMMIT", &[]);
        done += k;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    conn.close().unwrap();
    rate
}
