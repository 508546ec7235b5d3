//! Latency and throughput of the hot path: one `AdvanceChannel` + one `Sg` batch per message.
//!
//! ```text
//! cargo run --release -p mfp-storage --example throughput [N]
//! ```
//!
//! For each durability it runs N (default 2000) batches from a single writer that waits for
//! every ticket (apply + wait latency), then N batches from 8 threads (group commit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfp_core::{AgentId, ChannelId, RuntimeId, State};
use mfp_runtime::storage::{AgentRow, ChannelRow, MetaRow, Storage, StorageOp};
use mfp_runtime::{AgentState, ChannelStatus};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};

const CHANNELS: u8 = 8;

fn state(n: u64) -> State {
    let mut b = [0x5au8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    State::from_bytes(b)
}

fn setup(storage: &SqliteStorage) {
    let mut ops = vec![StorageOp::Meta(MetaRow {
        identity: RuntimeId::derive(b"bench", b"1"),
        deployment_id: b"bench".to_vec(),
        instance_id: b"1".to_vec(),
        agent_counter: 2,
    })];
    for n in 1..=2u8 {
        ops.push(StorageOp::PutAgent(AgentRow {
            id: AgentId::from_bytes([n; 32]),
            name: None,
            state: AgentState::Active,
            quarantine_reason: String::new(),
        }));
    }
    for c in 0..CHANNELS {
        ops.push(StorageOp::PutChannel(ChannelRow {
            id: ChannelId::from_bytes([c; 16]),
            agent_a: AgentId::from_bytes([1; 32]),
            agent_b: AgentId::from_bytes([2; 32]),
            depth: 4,
            status: ChannelStatus::Active,
            step: 0,
            state: state(0),
            validation_failures: 0,
        }));
    }
    storage.apply(ops).wait().unwrap();
}

fn message(channel: u8, step: u64) -> Vec<StorageOp> {
    vec![
        StorageOp::AdvanceChannel { id: ChannelId::from_bytes([channel; 16]), state: state(step), step },
        StorageOp::Sg(Some(state(step ^ 0xffff))),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn open(dir: &Path, name: &str, durability: Durability) -> SqliteStorage {
    let path = dir.join(name);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let storage =
        SqliteStorage::open(StorageConfig::new(&path, MasterKey::generate().unwrap()).durability(durability)).unwrap();
    setup(&storage);
    storage
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mfp-storage-throughput");
    std::fs::create_dir_all(&dir).unwrap();
    println!("{n} batches (AdvanceChannel + Sg) per run; database in {}", dir.display());

    for durability in [Durability::Normal, Durability::Sync] {
        // Single writer: apply + wait per message.
        let storage = open(&dir, &format!("single-{durability:?}.db"), durability);
        let mut lat = Vec::with_capacity(n as usize);
        let t0 = Instant::now();
        for step in 1..=n {
            let t = Instant::now();
            storage.apply(message(0, step)).wait().unwrap();
            lat.push(t.elapsed());
        }
        let total = t0.elapsed();
        lat.sort_unstable();
        let mean = total / u32::try_from(n).unwrap();
        println!(
            "{durability:?} single writer: {:.0} msg/s, apply+wait mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
            n as f64 / total.as_secs_f64(),
            mean,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
        let s = storage.stats();
        println!("  commits {}, batches {}", s.commits, s.batches_committed);
        drop(storage);

        // 8 threads, one channel each, each waiting for its own tickets: group commit.
        let storage = Arc::new(open(&dir, &format!("multi-{durability:?}.db"), durability));
        let per = n / u64::from(CHANNELS);
        let t0 = Instant::now();
        let handles: Vec<_> = (0..CHANNELS)
            .map(|c| {
                let storage = Arc::clone(&storage);
                std::thread::spawn(move || {
                    for step in 1..=per {
                        storage.apply(message(c, step)).wait().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = t0.elapsed();
        let s = storage.stats();
        println!(
            "{durability:?} {CHANNELS} threads: {:.0} msg/s, {} batches in {} commits ({:.1} per commit)",
            (per * u64::from(CHANNELS)) as f64 / total.as_secs_f64(),
            s.batches_committed - 1,
            s.commits - 1,
            (s.batches_committed - 1) as f64 / (s.commits - 1).max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
