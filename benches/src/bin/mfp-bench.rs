//! The end-to-end benchmark program behind `cargo xtask bench`.
//!
//! Measures, in one process: the crypto-only floor of one message, `mfp_send` throughput
//! and latency at several payload sizes on 1 and 1,000 channels and with 2 concurrent
//! senders, async sends, Sg update and send cost at growing channel counts, the time to
//! establish channels and the memory per channel. Every figure is the median of several
//! runs. Messages through the standalone server and subprocess agents (`server`). Durable sends are measured beside raw-SQLite floors (the same rows written by sqlx,
//! and by rusqlite, with no runtime around them). Prints a table and writes JSON (`--json PATH`); `--only
//! floor,send,async,persist,fanout,scale,server,federation` runs some sections; `--quick` does
//! less work, `--smoke` a handful of iterations of everything (to show it all still runs); `federation`
//! (two runtimes in separate processes over 127.0.0.1) is described in `fed_bench.rs`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mfp_benches::Scale;
use mfp_core::{ChannelId, EntropySource, Frame, MerkleSg, State, encoding, ratchet, sampling};
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime, RuntimeConfig, SystemEntropy};
use serde_json::{Value, json};

mod fed_bench;
mod persist_floor;
mod server_bench;

/// The allocator matters for a message runtime: every payload is allocated by the sending
/// thread and freed by the receiving one, which glibc's malloc serialises on an arena lock.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 4] = [64, 1024, 65536, 1 << 20];

struct Opts {
    /// Sections to run (`--only a,b`); empty: all of them.
    only: Vec<String>,
    scale: Scale,
    runs: usize,
    json: Option<String>,
    scale_max: usize,
}

impl Opts {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Iterations for a payload size: enough for a stable figure within a time budget.
fn iterations(size: usize, scale: Scale) -> usize {
    let base = match size {
        0..=1024 => 200_000,
        1025..=65536 => 20_000,
        _ => 1_000,
    };
    scale.pick(base, base / 10)
}

fn config() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.max_message_rate = 0;
    c.max_payload_size = 2 << 20;
    c.max_channels_per_agent = 2_000_000;
    c.max_agents = 100_000;
    c.mailbox_capacity = 4096;
    c.pipeline_timeout = Duration::from_secs(60);
    c
}

fn rss_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

// ---- crypto floor --------------------------------------------------------------------

/// The primitives of one intra-runtime message with nothing around them: entropy, ds,
/// frame, encode, mirror and validate, decode, ratchet advance, Sg leaf update — with the
/// same buffer handling as the runtime (E(P) built on the payload's only copy).
fn floor_once(size: usize, n: usize, leaves: usize) -> (f64, f64) {
    let mut entropy = SystemEntropy::new().unwrap();
    let channel = ChannelId::from_bytes([7; 16]);
    let mut sl = State::from_bytes([1; 32]);
    let mut tree = MerkleSg::new();
    tree.insert(channel, &sl).unwrap();
    for i in 1..leaves {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        tree.insert(ChannelId::from_bytes(id), &State::from_bytes([2; 32])).unwrap();
    }
    let payload = vec![0x5au8; size];
    let mut draw = [0u8; 32 + 64];
    let start = Instant::now();
    for step in 0..n as u64 {
        entropy.fill(&mut draw).unwrap();
        let sg = tree.root().unwrap();
        let mut jitter = mfp_core::FnEntropy(|b: &mut [u8]| {
            b.copy_from_slice(&draw[32..32 + b.len()]);
            Ok(())
        });
        // Sl keyed for HMAC once per message, as the runtime does.
        let keyed = mfp_core::crypto::HmacKey::new(sl.expose());
        let frame = sampling::sample_frame_keyed(&keyed, step, &sg, 4, &mut jitter).unwrap();
        let mut m = Vec::with_capacity(payload.len() + 16);
        m.extend_from_slice(&payload);
        let tag = encoding::encode_in_place_keyed(&keyed, &channel, step, &mut m).unwrap();
        m.extend_from_slice(&tag);
        Frame::validate(&frame, &frame.mirror(), &frame).unwrap();
        let len = encoding::decode_in_place_keyed(&keyed, &channel, step, &mut m).unwrap().len();
        m.truncate(len);
        std::hint::black_box(&m);
        sl = ratchet::advance_keyed(&keyed, &frame);
        tree.update(&channel, &sl).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, secs * 1e6 / n as f64)
}

/// Raw AES-256-GCM seal + open of `size` bytes (ring), in bytes per second.
fn aes_floor_once(size: usize, n: usize) -> f64 {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3u8; 32]).unwrap());
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for i in 0..n {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf).unwrap();
        buf.extend_from_slice(tag.as_ref());
        let len = key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf).unwrap().len();
        buf.truncate(len);
    }
    (size * n) as f64 / start.elapsed().as_secs_f64()
}

// ---- runtime sends -------------------------------------------------------------------

struct Setup {
    rt: Runtime,
    senders: Vec<(AgentHandle, Vec<ChannelId>)>,
    delivered: Arc<AtomicU64>,
}

/// `senders` independent sender/receiver pairs, each with `channels` channels.
fn setup(senders: usize, channels: usize) -> Setup {
    let rt = Runtime::new(config()).unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut out = Vec::new();
    for _ in 0..senders {
        let a = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
        let d = Arc::clone(&delivered);
        let b = rt
            .bind(move |_: &AgentHandle, m: DeliveredMessage| {
                std::hint::black_box(&m.payload);
                d.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
        let chans = (0..channels).map(|_| rt.establish_channel(&a.id(), &b.id()).unwrap()).collect();
        out.push((a, chans));
    }
    Setup { rt, senders: out, delivered }
}

/// Returns (msgs/s including delivery, p50 µs, p99 µs).
fn send_once(size: usize, n: usize, senders: usize, channels: usize) -> (f64, f64, f64) {
    let s = setup(senders, channels);
    let payload = vec![0x42u8; size];
    let start = Instant::now();
    let mut lat: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = s
            .senders
            .iter()
            .map(|(agent, chans)| {
                let payload = &payload;
                scope.spawn(move || {
                    let mut lat = Vec::with_capacity(n);
                    for i in 0..n {
                        let ch = chans[i % chans.len()];
                        let t = Instant::now();
                        agent.send(ch, payload).unwrap();
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(s.rt.wait_idle(Duration::from_secs(120)), "delivery did not finish");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(s.delivered.load(Ordering::Relaxed), (n * senders) as u64);
    lat.sort_unstable();
    s.rt.shutdown();
    ((n * senders) as f64 / secs, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Async sends from one tokio task to an async handler.
fn async_send_once(size: usize, n: usize) -> f64 {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    tokio_rt.block_on(async {
        let rt = Runtime::new(config()).unwrap();
        let delivered = Arc::new(AtomicU64::new(0));
        let a = rt.bind_async_fn(|_, _| async {}).unwrap();
        let d = Arc::clone(&delivered);
        let b = rt
            .bind_async_fn(move |_, _m| {
                let d = Arc::clone(&d);
                async move {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap();
        let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
        let payload = vec![0x42u8; size];
        let start = Instant::now();
        for _ in 0..n {
            a.send_async(ch, &payload).await.unwrap();
        }
        assert!(rt.wait_idle_async(Duration::from_secs(60)).await);
        let secs = start.elapsed().as_secs_f64();
        rt.shutdown_async().await;
        n as f64 / secs
    })
}

// ---- scale ---------------------------------------------------------------------------

/// Establishes `n` channels: `n - 1000` spread over 1,000 agents and 1,000 between a
/// sender S and a recipient R; then S sends on random S–R channels, so the send cost
/// reflects the size of Sg and of the channel table rather than waking idle agents
/// (measured separately by [`fanout_once`]). Returns (seconds to establish, bytes per
/// channel, first-Sg seconds, send µs, Sg update µs).
fn scale_once(n: usize, sends: usize) -> (f64, f64, f64, f64, f64) {
    let rt = Runtime::new(config()).unwrap();
    let agents: Vec<AgentHandle> =
        (0..1000).map(|_| rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap()).collect();
    let s_agent = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
    let r_agent = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
    let pair = 1000.min(n);
    let rss1 = rss_kib("VmRSS:").unwrap_or(0);
    let start = Instant::now();
    for i in 0..n - pair {
        let a = &agents[i % 1000];
        let b = &agents[(i / 1000 + i + 1) % 1000];
        let b = if b.id() == a.id() { &agents[(i + 1) % 1000] } else { b };
        rt.establish_channel(&a.id(), &b.id()).unwrap();
    }
    let chans: Vec<ChannelId> =
        (0..pair).map(|_| rt.establish_channel(&s_agent.id(), &r_agent.id()).unwrap()).collect();
    let establish = start.elapsed().as_secs_f64();
    let rss2 = rss_kib("VmRSS:").unwrap_or(0);
    let per_channel = (rss2.saturating_sub(rss1)) as f64 * 1024.0 / n as f64;
    // The first send pays for folding the new channels into Sg.
    let t = Instant::now();
    s_agent.send(chans[0], b"x").unwrap();
    let first = t.elapsed().as_secs_f64();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let payload = [0x42u8; 64];
    let t = Instant::now();
    for _ in 0..sends {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s_agent.send(chans[(x % pair as u64) as usize], &payload).unwrap();
    }
    let send_us = t.elapsed().as_secs_f64() * 1e6 / sends as f64;
    rt.wait_idle(Duration::from_secs(60));
    rt.shutdown();
    drop(rt);
    // Sg update cost alone, on a tree of the same size.
    let mut tree = MerkleSg::new();
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        id[8..].copy_from_slice(&(i as u64).to_be_bytes());
        tree.insert(ChannelId::from_bytes(id), &State::from_bytes([1; 32])).unwrap();
    }
    let _ = tree.root();
    let ids: Vec<ChannelId> = (0..1000u64)
        .map(|i| {
            let i = (i * 7919) % n as u64;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            id[8..].copy_from_slice(&i.to_be_bytes());
            ChannelId::from_bytes(id)
        })
        .collect();
    // As the runtime does it: each channel remembers where its leaf was.
    let mut hints = vec![usize::MAX; ids.len()];
    let reps = 20_000;
    let t = Instant::now();
    for r in 0..reps {
        let st = State::from_bytes([(r % 251) as u8; 32]);
        let k = r % ids.len();
        tree.update_hinted(&ids[k], &st, &mut hints[k]).unwrap();
        std::hint::black_box(tree.root());
    }
    let sg_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    (establish, per_channel, first, send_us, sg_us)
}

/// One sender, 1,000 recipients each on its own channel, sends round-robin (each message
/// wakes an idle agent). Returns msgs/s including delivery.
fn fanout_once(n: usize, async_handlers: bool) -> f64 {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let _g = tokio_rt.enter();
    let rt = Runtime::builder(config()).tokio_handle(tokio_rt.handle().clone()).build().unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let sender = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
    let chans: Vec<ChannelId> = (0..1000)
        .map(|_| {
            let d = Arc::clone(&delivered);
            let r = if async_handlers {
                rt.bind_async_fn(move |_, _| {
                    let d = Arc::clone(&d);
                    async move {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap()
            } else {
                rt.bind(move |_: &AgentHandle, _: DeliveredMessage| {
                    d.fetch_add(1, Ordering::Relaxed);
                })
                .unwrap()
            };
            rt.establish_channel(&sender.id(), &r.id()).unwrap()
        })
        .collect();
    let payload = [0x42u8; 64];
    let start = Instant::now();
    for i in 0..n {
        sender.send(chans[i % chans.len()], &payload).unwrap();
    }
    assert!(rt.wait_idle(Duration::from_secs(120)));
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(delivered.load(Ordering::Relaxed), n as u64);
    rt.shutdown();
    rate
}

/// Sends with persistence on (SQLite, encrypted at rest) from `senders` threads, each on
/// its own channel. Returns msgs/s (every receipt is returned after its commit) and the
/// transactions committed per message.
fn persist_once(durability: mfp_storage::Durability, n: usize, senders: usize) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("mfp-bench-{}-{}", std::process::id(), n));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.db");
    let _ = std::fs::remove_file(&path);
    let storage = Arc::new(
        mfp_storage::SqliteStorage::open(
            mfp_storage::StorageConfig::new(&path, mfp_storage::MasterKey::generate().unwrap()).durability(durability),
        )
        .unwrap(),
    );
    let rt = Runtime::builder(config()).storage_arc(storage.clone()).build().unwrap();
    let pairs: Vec<(AgentHandle, ChannelId)> = (0..senders)
        .map(|_| {
            let a = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
            let b = rt.bind(|_: &AgentHandle, _: DeliveredMessage| {}).unwrap();
            let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
            (a, ch)
        })
        .collect();
    let payload = [0x42u8; 64];
    let before = storage.stats().commits;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (a, ch) in &pairs {
            let payload = &payload;
            scope.spawn(move || {
                for _ in 0..n {
                    a.send(*ch, payload).unwrap();
                }
            });
        }
    });
    let rate = (n * senders) as f64 / start.elapsed().as_secs_f64();
    let per_msg = (storage.stats().commits - before) as f64 / (n * senders) as f64;
    rt.wait_idle(Duration::from_secs(60));
    rt.shutdown();
    drop(rt);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
    (rate, per_msg)
}

/// One agent sending asynchronously with `in_flight` sends outstanding at any time (each a
/// task of its own), persistence on, over `channels` channels (each to an agent of its own;
/// task `i` uses channel `i % channels`). A channel's sends wait for their commit one after
/// the other, so only sends on different channels can share a transaction. Returns msgs/s
/// (every receipt is returned after its commit) and the transactions committed per message.
fn persist_async_once(durability: mfp_storage::Durability, n: usize, in_flight: usize, channels: usize) -> (f64, f64) {
    let scratch = persist_floor::Scratch::new(&format!("async-{in_flight}"));
    let path = scratch.0.join("bench.db");
    let storage = Arc::new(
        mfp_storage::SqliteStorage::open(
            mfp_storage::StorageConfig::new(&path, mfp_storage::MasterKey::generate().unwrap()).durability(durability),
        )
        .unwrap(),
    );
    let stats = storage.clone();
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    tokio_rt.block_on(async move {
        let rt = Runtime::builder(config()).storage_arc(storage).build().unwrap();
        let a = rt.bind_async_fn(|_, _| async {}).unwrap();
        let chans: Vec<ChannelId> = (0..channels)
            .map(|_| {
                let b = rt.bind_async_fn(|_, _| async {}).unwrap();
                rt.establish_channel(&a.id(), &b.id()).unwrap()
            })
            .collect();
        let per_task = n / in_flight;
        let before = stats.stats().commits;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..in_flight {
            let a = a.clone();
            let ch = chans[i % chans.len()];
            tasks.spawn(async move {
                let payload = [0x42u8; 64];
                for _ in 0..per_task {
                    a.send_async(ch, &payload).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let rate = (per_task * in_flight) as f64 / start.elapsed().as_secs_f64();
        let per_msg = (stats.stats().commits - before) as f64 / (per_task * in_flight) as f64;
        rt.wait_idle_async(Duration::from_secs(60)).await;
        rt.shutdown_async().await;
        (rate, per_msg)
    })
}

/// Runs [`scale_once`] in a child process.
fn scale_in_child(n: usize, sends: usize) -> (f64, f64, f64, f64, f64) {
    let exe = std::env::current_exe().unwrap();
    let out =
        std::process::Command::new(exe).args(["--scale-child", &n.to_string(), &sends.to_string()]).output().unwrap();
    assert!(out.status.success(), "scale child failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    (v[0], v[1], v[2], v[3], v[4])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child mode: one scale measurement in a fresh process, so resident memory reflects
    // the channels alone.
    if args.first().map(String::as_str) == Some("--scale-child") {
        let n = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let sends = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let r = scale_once(n, sends);
        println!("{}", json!([r.0, r.1, r.2, r.3, r.4]));
        return;
    }
    let mut opts = Opts { only: Vec::new(), scale: Scale::Full, runs: 3, json: None, scale_max: 1_000_000 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                opts.scale = Scale::Quick;
                opts.runs = 1;
                opts.scale_max = 100_000;
            }
            "--smoke" => {
                opts.scale = Scale::Smoke;
                opts.runs = 1;
                opts.scale_max = 1_000;
            }
            "--runs" => opts.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            "--json" => opts.json = it.next().cloned(),
            "--only" => {
                opts.only = it.next().map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
            }
            "--scale-max" => opts.scale_max = it.next().and_then(|v| v.parse().ok()).unwrap_or(1_000_000),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let runs = opts.runs;
    let mut report = serde_json::Map::new();
    report.insert("runs".into(), json!(runs));
    report.insert("quick".into(), json!(opts.scale != Scale::Full));
    report.insert("scale".into(), json!(opts.scale.name()));

    let mut floor = serde_json::Map::new();
    let mut floor_1000 = serde_json::Map::new();
    if opts.wants("floor") || opts.wants("send") {
        // Floors.
        for size in SIZES {
            let n = iterations(size, opts.scale) / 2;
            let (rate, us) = {
                let rs: Vec<(f64, f64)> = (0..runs)
                    .map(|_| {
                        floor_once(size, n.max(if opts.scale == Scale::Smoke { Scale::SMOKE_MIN } else { 100 }), 1)
                    })
                    .collect();
                (median(rs.iter().map(|r| r.0).collect()), median(rs.iter().map(|r| r.1).collect()))
            };
            let aes = median((0..runs).map(|_| aes_floor_once(size, n.clamp(Scale::SMOKE_MIN, 100_000))).collect());
            println!(
                "floor     {size:>8} B  {rate:>12.0} msg/s  {us:>8.2} µs/msg   raw AES-GCM seal+open {:>8.0} MB/s",
                aes / 1e6
            );
            floor.insert(
                size.to_string(),
                json!({"msgs_per_s": rate, "us_per_msg": us, "aes_gcm_seal_open_bytes_per_s": aes}),
            );
        }
        // The same primitives when Sg has 1,000 leaves (every message updates its Merkle path).
        for size in [64usize, 1024] {
            let n = iterations(size, opts.scale) / 2;
            let rs: Vec<(f64, f64)> = (0..runs)
                .map(|_| floor_once(size, n.max(if opts.scale == Scale::Smoke { Scale::SMOKE_MIN } else { 100 }), 1000))
                .collect();
            let (rate, us) = (median(rs.iter().map(|r| r.0).collect()), median(rs.iter().map(|r| r.1).collect()));
            println!("floor@1000 channels {size:>8} B  {rate:>12.0} msg/s  {us:>8.2} µs/msg");
            floor_1000.insert(size.to_string(), json!({"msgs_per_s": rate, "us_per_msg": us}));
        }
        report.insert("crypto_floor".into(), Value::Object(floor.clone()));
        report.insert("crypto_floor_1000_channels".into(), Value::Object(floor_1000.clone()));
    }

    if opts.wants("send") {
        // Sends.
        let mut sends = serde_json::Map::new();
        for (label, senders, channels, sizes) in [
            ("1_channel", 1usize, 1usize, &SIZES[..]),
            ("1000_channels", 1, 1000, &SIZES[..2]),
            ("2_senders", 2, 1, &SIZES[..2]),
        ] {
            let mut m = serde_json::Map::new();
            for &size in sizes {
                let n = iterations(size, opts.scale) / senders;
                let rs: Vec<(f64, f64, f64)> = (0..runs).map(|_| send_once(size, n, senders, channels)).collect();
                let rate = median(rs.iter().map(|r| r.0).collect());
                let p50 = median(rs.iter().map(|r| r.1).collect());
                let p99 = median(rs.iter().map(|r| r.2).collect());
                let floor_for = if channels >= 1000 { &floor_1000 } else { &floor };
                let floor_rate = floor_for[&size.to_string()]["msgs_per_s"].as_f64().unwrap_or(0.0);
                let aes = floor[&size.to_string()]["aes_gcm_seal_open_bytes_per_s"].as_f64().unwrap_or(0.0);
                let of_floor = rate / floor_rate;
                let of_aes = rate * size as f64 / aes;
                println!(
                    "send {label:<14} {size:>8} B  {rate:>12.0} msg/s  p50 {p50:>8.2} µs  p99 {p99:>8.2} µs  {:>5.1}% of floor  {:>5.1}% of raw AES",
                    of_floor * 100.0,
                    of_aes * 100.0
                );
                m.insert(
                size.to_string(),
                json!({"msgs_per_s": rate, "p50_us": p50, "p99_us": p99, "ratio_to_floor": of_floor, "ratio_to_raw_aes": of_aes}),
            );
            }
            sends.insert(label.into(), Value::Object(m));
        }
        report.insert("send".into(), Value::Object(sends));
    }

    if opts.wants("async") {
        let mut asy = serde_json::Map::new();
        for size in [64usize, 1024] {
            let n = iterations(size, opts.scale);
            let rate = median((0..runs).map(|_| async_send_once(size, n)).collect());
            println!("async send       {size:>8} B  {rate:>12.0} msg/s");
            asy.insert(size.to_string(), json!({"msgs_per_s": rate}));
        }
        report.insert("async_send".into(), Value::Object(asy));
    }

    if opts.wants("persist") {
        // Persistence, each figure beside the raw-SQLite floor it should approach: one blocking
        // sender against single-message transactions, four blocking senders against transactions
        // of four, one async sender with 64 sends in flight against transactions of 64.
        let mut persist = serde_json::Map::new();
        let mem_rate = report.get("send").and_then(|s| s["1_channel"]["64"]["msgs_per_s"].as_f64()).unwrap_or(f64::NAN);
        for (label, durability) in
            [("normal", mfp_storage::Durability::Normal), ("sync", mfp_storage::Durability::Sync)]
        {
            let base = opts.scale.pick(3_000, 600);
            // Two floors: written by sqlx (one query per transaction) and by rusqlite on the
            // calling thread (cached statements), the way the storage writer's fast path writes.
            let mut floors = serde_json::Map::new();
            let mut rusqlite_floors = serde_json::Map::new();
            for batch in [1usize, 4, 64] {
                let n = base * batch.min(8);
                for (driver, map, name) in [
                    (persist_floor::Driver::Sqlx, &mut floors, "sqlx"),
                    (persist_floor::Driver::Rusqlite, &mut rusqlite_floors, "rusqlite"),
                ] {
                    let rate = median(
                        (0..runs)
                            .map(|_| persist_floor::floor_once(driver, durability, n, batch, batch.min(4)))
                            .collect(),
                    );
                    println!(
                        "raw SQLite floor ({label:<6}, {name:<8}), transactions of {batch:>2} messages  {rate:>10.0} msg/s"
                    );
                    map.insert(batch.to_string(), json!({"msgs_per_s": rate}));
                }
            }
            let floor_of = |batch: usize| floors[&batch.to_string()]["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
            let rusqlite_floor_of =
                |batch: usize| rusqlite_floors[&batch.to_string()]["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
            let mut rows: Vec<(String, (f64, f64), usize)> = Vec::new();
            let by_rate = |v: Vec<(f64, f64)>| {
                let mut v = v;
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v[v.len() / 2]
            };
            for senders in [1usize, 4] {
                let n = base / senders;
                let r = by_rate((0..runs).map(|_| persist_once(durability, n, senders)).collect());
                rows.push((format!("{senders}_blocking_senders"), r, senders));
            }
            let n = base * 8;
            // 64 sends in flight need 64 channels: a channel's sends commit one at a time.
            let r = by_rate((0..runs).map(|_| persist_async_once(durability, n, 64, 64)).collect());
            rows.push(("1_async_sender_64_in_flight".to_string(), r, 64));
            let r = by_rate((0..runs).map(|_| persist_async_once(durability, n, 64, 1)).collect());
            rows.push(("1_async_sender_64_in_flight_one_channel".to_string(), r, 64));
            let mut m = serde_json::Map::new();
            for (name, (rate, per_msg), batch) in rows {
                let of_floor = rate / floor_of(batch);
                let of_rusqlite_floor = rate / rusqlite_floor_of(batch);
                println!(
                    "persistent send ({label:<6}), {name:<40} 64 B  {rate:>10.0} msg/s  {:>5.1}% of the batch-{batch} floor ({:>5.1}% of rusqlite's)  {per_msg:.2} transactions/msg",
                    of_floor * 100.0,
                    of_rusqlite_floor * 100.0,
                );
                m.insert(
                    name,
                    json!({"msgs_per_s": rate, "floor_batch": batch, "ratio_to_floor": of_floor, "ratio_to_rusqlite_floor": of_rusqlite_floor, "ratio_to_in_memory": rate / mem_rate, "transactions_per_msg": per_msg}),
                );
            }
            m.insert("raw_sqlite_floor".into(), Value::Object(floors));
            m.insert("raw_sqlite_floor_rusqlite".into(), Value::Object(rusqlite_floors));
            persist.insert(label.into(), Value::Object(m));
        }
        report.insert("persistent_send_64".into(), Value::Object(persist));
    }

    if opts.wants("fanout") {
        // Fan-out.
        let mut fan = serde_json::Map::new();
        for (label, is_async) in [("sync_handlers", false), ("async_handlers", true)] {
            let n = opts.scale.pick(100_000, 20_000);
            let rate = median((0..runs).map(|_| fanout_once(n, is_async)).collect());
            println!("fan-out to 1,000 idle agents, {label:<15} {rate:>10.0} msg/s");
            fan.insert(label.into(), json!({"msgs_per_s": rate}));
        }
        report.insert("fanout_1000_agents".into(), Value::Object(fan));
    }

    if opts.wants("scale") {
        // Scale.
        let mut scale = serde_json::Map::new();
        for n in [1_000usize, 100_000, 1_000_000] {
            if n > opts.scale_max {
                continue;
            }
            let scale_runs = if n >= 1_000_000 { 1.max(runs / 2) } else { runs };
            let sends = opts.scale.pick(20_000, 2_000);
            let rs: Vec<(f64, f64, f64, f64, f64)> = (0..scale_runs).map(|_| scale_in_child(n, sends)).collect();
            let est = median(rs.iter().map(|r| r.0).collect());
            let bpc = median(rs.iter().map(|r| r.1).collect());
            let first = median(rs.iter().map(|r| r.2).collect());
            let send = median(rs.iter().map(|r| r.3).collect());
            let sg = median(rs.iter().map(|r| r.4).collect());
            println!(
                "scale {n:>9} channels: establish {est:>7.3} s ({:>6.2} µs each), {bpc:>6.0} B/channel, first Sg {first:>6.3} s, send {send:>6.2} µs, Sg update {sg:>6.2} µs",
                est * 1e6 / n as f64
            );
            scale.insert(
            n.to_string(),
            json!({"establish_s": est, "bytes_per_channel": bpc, "first_sg_s": first, "send_us": send, "sg_update_us": sg}),
        );
        }
        report.insert("scale".into(), Value::Object(scale));
    }
    if opts.wants("server") {
        // Through the standalone server: JSON-RPC over pipes to subprocess agents.
        let mut server = serde_json::Map::new();
        let mem_rate = report.get("send").and_then(|s| s["1_channel"]["64"]["msgs_per_s"].as_f64()).unwrap_or(f64::NAN);
        for (label, echo) in [("rust_echo", server_bench::Echo::Rust), ("python_echo", server_bench::Echo::Python)] {
            let (rounds, n) = (opts.scale.pick(2_000, 300), opts.scale.pick(20_000, 3_000));
            let rs: Vec<Value> = (0..runs)
                .filter_map(|_| match server_bench::once(echo, rounds, n, 64) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("server benchmark ({label}): {e}");
                        None
                    }
                })
                .collect();
            if rs.is_empty() {
                continue;
            }
            let med = |k: &str| median(rs.iter().filter_map(|r| r[k].as_f64()).collect());
            let (rate, p50, p99) = (med("messages_per_s"), med("round_trip_p50_us"), med("round_trip_p99_us"));
            println!(
                "server, Rust driver <-> {label:<12} 64 B  {rate:>10.0} msg/s ({:.0} round trips/s, 64 in flight)  round trip p50 {p50:>8.1} µs  p99 {p99:>8.1} µs  ({:.1}% of in-process)",
                rate / 2.0,
                rate / mem_rate * 100.0
            );
            server.insert(
                label.into(),
                json!({"msgs_per_s": rate, "round_trip_p50_us": p50, "round_trip_p99_us": p99, "ratio_to_in_process": rate / mem_rate}),
            );
        }
        report.insert("server_subprocess_64".into(), Value::Object(server));
    }
    if opts.wants("federation") {
        report.insert("federation".into(), fed_bench::run(opts.scale, runs));
    }
    report.insert("peak_rss_kib".into(), json!(rss_kib("VmHWM:")));

    let out = Value::Object(report);
    if let Some(path) = opts.json {
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("wrote {path}");
    }
}
