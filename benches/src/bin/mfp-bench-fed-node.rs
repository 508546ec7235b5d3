//! The far side of the federation benchmark (`mfp-bench --only federation`): a runtime in
//! its own process, federated with the benchmark's, with two agents — `sink` counts what
//! it receives, `echo` sends every message back on its channel.
//!
//! With `--tcp-echo` it is none of that: it accepts one TCP connection on 127.0.0.1 (port
//! printed as `listen ADDRESS`) and echoes 1 KiB blocks with blocking sockets until the
//! connection closes — the benchmark's round-trip floor.
//!
//! Usage: `mfp-bench-fed-node [DATABASE]` (SQLite storage, `normal` durability, at
//! DATABASE; none without it); with `MFP_BENCH_FED_BUSY_POLL_US` set, its link busy-polls
//! that many microseconds (`NetConfig::busy_poll`). Prints `listen ADDRESS` once its federation listens, then
//! reads commands, one a line, on stdin:
//! - `count N`: the next N messages to `sink` are counted; once the N-th arrives it prints
//!   `done N SECONDS`, SECONDS from the first delivery to the N-th;
//! - `quit` (or the end of stdin): shuts down and exits.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use counter::Counter;
use mfp_benches::fed_common::{self, FAR};
use mfp_federation::federation::Federation;
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime};

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A delivery counter: the target, how many arrived, when the first did.
mod counter {
    use std::sync::Mutex;
    use std::sync::mpsc::Sender;
    use std::time::Instant;

    #[derive(Default)]
    struct State {
        target: u64,
        seen: u64,
        first: Option<Instant>,
        done: Option<Sender<(u64, f64)>>,
    }

    /// Counts deliveries toward a target and reports once it is reached.
    #[derive(Default)]
    pub(crate) struct Counter(Mutex<State>);

    impl Counter {
        pub(crate) fn arm(&self, target: u64, done: Sender<(u64, f64)>) {
            let mut s = self.0.lock().unwrap();
            *s = State { target, seen: 0, first: None, done: Some(done) };
        }

        pub(crate) fn hit(&self) {
            let now = Instant::now();
            let mut s = self.0.lock().unwrap();
            s.seen += 1;
            let first = *s.first.get_or_insert(now);
            if s.seen == s.target
                && let Some(done) = s.done.take()
            {
                let _ = done.send((s.seen, now.duration_since(first).as_secs_f64()));
            }
        }
    }
}

/// Echoes 1 KiB blocks on one loopback connection.
fn tcp_echo() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("listen {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 1024];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

fn main() {
    let db = std::env::args().nth(1);
    if db.as_deref() == Some("--tcp-echo") {
        tcp_echo();
        return;
    }
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut builder = Runtime::builder(fed_common::runtime_config(FAR)).tokio_handle(tokio_rt.handle().clone());
    if let Some(path) = &db {
        let _ = std::fs::remove_file(path);
        let storage = mfp_storage::SqliteStorage::open(
            mfp_storage::StorageConfig::new(path, mfp_storage::MasterKey::generate().unwrap())
                .durability(mfp_storage::Durability::Normal),
        )
        .unwrap();
        builder = builder.storage(storage);
    }
    let rt = builder.build().unwrap();
    let counter = Arc::new(Counter::default());
    let sink_counter = Arc::clone(&counter);
    let _sink = rt.bind_named("sink", move |_: &AgentHandle, _m: DeliveredMessage| sink_counter.hit()).unwrap();
    let _echo = rt
        .bind_async_fn_named("echo", |me: AgentHandle, m: DeliveredMessage| async move {
            if let Err(e) = me.send_async(m.channel, &m.payload).await {
                eprintln!("echo: cannot answer: {e}");
            }
        })
        .unwrap();
    let fed = tokio_rt
        .block_on(Federation::start(&rt, fed_common::key(FAR).unwrap(), {
            let mut cfg = fed_common::federation_config(FAR, true, None).unwrap();
            cfg.net.busy_poll = fed_common::busy_poll_from_env();
            cfg
        }))
        .unwrap();
    let addr = fed.local_addr().expect("the federation listens");
    let mut out = std::io::stdout().lock();
    writeln!(out, "listen {addr}").unwrap();
    out.flush().unwrap();

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("count"), Some(n)) if n > 0 => {
                let (tx, rx) = mpsc::channel();
                counter.arm(n, tx);
                writeln!(out, "armed").unwrap();
                out.flush().unwrap();
                match rx.recv_timeout(Duration::from_secs(120)) {
                    Ok((seen, secs)) => writeln!(out, "done {seen} {secs}").unwrap(),
                    Err(_) => writeln!(out, "timeout").unwrap(),
                }
                out.flush().unwrap();
            }
            (Some("quit"), _) => break,
            _ => {
                eprintln!("mfp-bench-fed-node: unknown command {line:?}");
                break;
            }
        }
    }
    tokio_rt.block_on(async {
        fed.shutdown().await;
        rt.shutdown_async().await;
    });
    drop(tokio_rt);
    if let Some(path) = db {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
}
