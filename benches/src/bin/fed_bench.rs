//! The `federation` section: two runtimes in separate processes over 127.0.0.1 (this
//! program and `mfp-bench-fed-node`), with storage off and on; the cross-runtime crypto
//! floor in one thread; pymfp 1.0.0's federation rate for comparison.
//!
//! - one-way: the near runtime's agent sends N messages on a cross-runtime channel with
//!   many sends in flight ([`SENDER_TASKS`] tasks; and at 1 KiB also from one task, as
//!   pymfp's sender is one loop); the far side times its deliveries from the first to the
//!   N-th (its rate is the one reported);
//! - ping-pong: 1 KiB to the far side's `echo` agent and back, one message in flight;
//! - handshake: a fresh `net::Network` dials the far side, timed until its link is up
//!   (TCP connect, Noise IK, installation), median of [`HANDSHAKES`];
//! - floor: `BilateralState::seal_outbound` and a Noise transport seal, then the Noise open
//!   and `open_inbound`, in one thread, no I/O;
//! - pymfp: `agents/pymfp_federation.py` in `target/pymfp-venv` (skipped if missing).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfp_benches::Scale;
use mfp_benches::fed_common::{self, DEPTH, FAR, NEAR};
use mfp_core::bilateral::BilateralState;
use mfp_core::envelope::EnvelopeHeader;
use mfp_core::{ChannelId, ENVELOPE_HEADER_SIZE};
use mfp_federation::control::Target;
use mfp_federation::federation::Federation;
use mfp_federation::net::{NetConfig, Network};
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime};
use serde_json::{Value, json};

use crate::persist_floor::Scratch;
use crate::{median, percentile};

/// Sender tasks of the one-way measurement (each has one send in flight at a time).
const SENDER_TASKS: usize = 64;
/// Channels of the many-channel one-way row.
const CHANNELS: usize = 16;
/// `NetConfig::busy_poll` of the busy-polling round-trip rows.
const BUSY_POLL: Duration = Duration::from_micros(500);
/// Handshakes timed.
const HANDSHAKES: usize = 21;
/// Time between the starts of two timed handshakes, at least.
const HANDSHAKE_SPACING: Duration = Duration::from_millis(150);

/// The payload sizes of the one-way rows: 64 B, 1 KiB, and 64 KiB — or the largest payload
/// one link frame carries at the benchmark's depth, if that is less.
fn sizes() -> [usize; 3] {
    let depth = u16::try_from(DEPTH).unwrap_or(4);
    [64, 1024, mfp_federation::session::max_payload(depth).min(65_536)]
}

/// Messages of one one-way run: about a second each (durable ones are slower).
fn messages_for(size: usize, storage: bool, scale: Scale) -> usize {
    let n = match (size <= 1024, storage) {
        (true, false) => 40_000,
        (false, false) => 4_000,
        (true, true) => 5_000,
        (false, true) => 1_000,
    };
    scale.pick(n, n / 5)
}

// ---- the cross-runtime floor ------------------------------------------------------------

fn noise_pair() -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = "Noise_IK_25519_AESGCM_SHA256".parse().unwrap();
    let builder = snow::Builder::new(params.clone());
    let (ik, rk) = (builder.generate_keypair().unwrap(), builder.generate_keypair().unwrap());
    let mut init = snow::Builder::new(params.clone())
        .local_private_key(&ik.private)
        .unwrap()
        .remote_public_key(&rk.public)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut resp = snow::Builder::new(params).local_private_key(&rk.private).unwrap().build_responder().unwrap();
    let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
    let n = init.write_message(&[], &mut m).unwrap();
    resp.read_message(&m[..n], &mut p).unwrap();
    let n = resp.write_message(&[], &mut m).unwrap();
    init.read_message(&m[..n], &mut p).unwrap();
    (init.into_transport_mode().unwrap(), resp.into_transport_mode().unwrap())
}

/// One message across runtimes with nothing around it: frame + encode (`seal_outbound`)
/// and a Noise seal on one side, a Noise open and validate + decode (`open_inbound`) on the
/// other. Returns (msgs/s, µs per message).
fn floor_once(size: usize, n: usize) -> (f64, f64) {
    let (a, b) = (fed_common::runtime_id(NEAR), fed_common::runtime_id(FAR));
    let channel = ChannelId::from_bytes([9; 16]);
    let (mut tx, mut rx) = (BilateralState::deterministic(&a, &b), BilateralState::deterministic(&a, &b));
    let (mut noise_tx, mut noise_rx) = noise_pair();
    let payload = vec![0x5au8; size];
    let mut sealed = vec![0u8; 65_535];
    let mut opened = vec![0u8; 65_535];
    let start = Instant::now();
    for _ in 0..n {
        let out = tx.seal_outbound(&a, &channel, DEPTH, &payload).unwrap();
        let len = noise_tx.write_message(&out.wire, &mut sealed).unwrap();
        tx = out.next;
        let len = noise_rx.read_message(&sealed[..len], &mut opened).unwrap();
        let wire = &opened[..len];
        let header = EnvelopeHeader::from_bytes(wire[..ENVELOPE_HEADER_SIZE].try_into().unwrap());
        let (got, next) = rx.open_inbound(&header, &wire[ENVELOPE_HEADER_SIZE..]).unwrap();
        assert_eq!(got.len(), size);
        rx = next;
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, secs * 1e6 / n as f64)
}

// ---- two processes ----------------------------------------------------------------------

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name(name);
    if p.exists() { Ok(p) } else { Err(format!("{} is not built (cargo build --release -p mfp-benches)", p.display())) }
}

struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Node {
    fn spawn(db: Option<&Path>, busy_poll: Duration) -> Result<Node, String> {
        let mut cmd = Command::new(sibling("mfp-bench-fed-node")?);
        cmd.env(fed_common::BUSY_POLL_ENV, busy_poll.as_micros().to_string());
        if let Some(db) = db {
            cmd.arg(db);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start mfp-bench-fed-node: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let addr = line.trim().strip_prefix("listen ").ok_or_else(|| format!("unexpected {line:?}"))?.to_string();
        Ok(Node { child, stdin, stdout, addr })
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("the far side's output: {e}"))?;
        Ok(line.trim().to_string())
    }

    fn arm(&mut self, n: usize) -> Result<(), String> {
        writeln!(self.stdin, "count {n}").and_then(|()| self.stdin.flush()).map_err(|e| e.to_string())?;
        match self.line()?.as_str() {
            "armed" => Ok(()),
            other => Err(format!("the far side answered {other:?} to a count")),
        }
    }

    /// The far side's rate over the last armed count.
    fn far_rate(&mut self) -> Result<f64, String> {
        let line = self.line()?;
        let mut w = line.split_whitespace();
        let parsed = match (
            w.next(),
            w.next().and_then(|v| v.parse::<f64>().ok()),
            w.next().and_then(|v| v.parse::<f64>().ok()),
        ) {
            (Some("done"), Some(n), Some(secs)) if n > 1.0 && secs > 0.0 => Some((n - 1.0) / secs),
            _ => None,
        };
        parsed.ok_or_else(|| format!("the far side did not count its deliveries: {line:?}"))
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One storage mode: a far node, the near runtime federated with it, every measurement.
/// The rows of one configuration: storage off or on; `busy_poll` (non-zero: both links
/// busy-poll that long, and only the round trips are measured).
fn two_processes(storage: bool, scale: Scale, runs: usize, busy_poll: Duration) -> Result<Value, String> {
    let scratch = Scratch::new(if storage { "fed-storage" } else { "fed-memory" });
    let far_db = storage.then(|| scratch.0.join("far.db"));
    let mut node = Node::spawn(far_db.as_deref(), busy_poll)?;
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut builder = Runtime::builder(fed_common::runtime_config(NEAR)).tokio_handle(tokio_rt.handle().clone());
    if storage {
        let s = mfp_storage::SqliteStorage::open(
            mfp_storage::StorageConfig::new(scratch.0.join("near.db"), mfp_storage::MasterKey::generate().unwrap())
                .durability(mfp_storage::Durability::Normal),
        )
        .map_err(|e| e.to_string())?;
        builder = builder.storage(s);
    }
    let rt = builder.build().map_err(|e| e.to_string())?;
    let (reply_tx, mut replies) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let me = rt
        .bind_named("near", move |_: &AgentHandle, m: DeliveredMessage| {
            let _ = reply_tx.send(m.payload.len());
        })
        .map_err(|e| e.to_string())?;
    // The agent of the handler-to-handler ping-pong: each answer's handler sends the next
    // ping (see `Pinger`).
    let pinger_state = Arc::new(std::sync::Mutex::new(Pinger::default()));
    let pinger = {
        let state = Arc::clone(&pinger_state);
        rt.bind_async_fn_named("pinger", move |me: AgentHandle, m: DeliveredMessage| {
            let state = Arc::clone(&state);
            async move {
                let next = state.lock().map(|mut s| s.answered()).unwrap_or(false);
                if next && let Err(e) = me.send_async(m.channel, &m.payload).await {
                    eprintln!("pinger: cannot send the next ping: {e}");
                }
            }
        })
        .map_err(|e| e.to_string())?
    };
    let far = fed_common::runtime_id(FAR);
    let (fed, sinks, echo, pinger_echo) = tokio_rt.block_on(async {
        let mut cfg = fed_common::federation_config(NEAR, false, Some(node.addr.clone())).map_err(|e| e.to_string())?;
        cfg.net.busy_poll = busy_poll;
        let key = fed_common::key(NEAR).map_err(|e| e.to_string())?;
        let fed = Federation::start(&rt, key, cfg).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), fed.wait_up(&far))
            .await
            .map_err(|_| "the link did not come up within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        let mut sinks = Vec::new();
        for _ in 0..CHANNELS {
            sinks.push(
                fed.open_channel(me.id(), far, Target::Name("sink".into()), DEPTH).await.map_err(|e| e.to_string())?,
            );
        }
        let echo =
            fed.open_channel(me.id(), far, Target::Name("echo".into()), DEPTH).await.map_err(|e| e.to_string())?;
        let pinger_echo =
            fed.open_channel(pinger.id(), far, Target::Name("echo".into()), DEPTH).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((fed, sinks, echo, pinger_echo))
    })?;

    // `n` messages of `size` bytes from `senders` tasks, on the first `channels` sink
    // channels (task t on channel t mod `channels`).
    let send_from = |n: usize, size: usize, channels: usize, senders: usize| -> Result<f64, String> {
        tokio_rt.block_on(async {
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let per = n.div_ceil(senders);
            for t in 0..senders {
                let me = me.clone();
                let sink = sinks[t % channels];
                let count = per.min(n.saturating_sub(t * per));
                tasks.spawn(async move {
                    let payload = vec![0x42u8; size];
                    for _ in 0..count {
                        me.send_async(sink, &payload).await.map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.map_err(|e| e.to_string())??;
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        })
    };
    let send_many = |n: usize, size: usize, channels: usize| send_from(n, size, channels, SENDER_TASKS);
    let (mut one_way, mut many, mut one_task) = (serde_json::Map::new(), Value::Null, Value::Null);
    if busy_poll.is_zero() {
        // Warm-up: connections, allocator, SQLite pages.
        let warm_up = scale.pick(2_000, 2_000);
        node.arm(warm_up)?;
        send_many(warm_up, 1024, CHANNELS)?;
        node.far_rate()?;

        for size in sizes() {
            let n = messages_for(size, storage, scale);
            let mut far_rates = Vec::new();
            let mut near_rates = Vec::new();
            for _ in 0..runs {
                node.arm(n)?;
                near_rates.push(send_many(n, size, 1)?);
                far_rates.push(node.far_rate()?);
            }
            one_way.insert(
                size.to_string(),
                json!({"msgs_per_s": median(far_rates), "sender_msgs_per_s": median(near_rates), "messages": n}),
            );
        }
        // The same 1 KiB messages spread over CHANNELS channels.
        let n = messages_for(1024, storage, scale) * 2;
        let (mut far_rates, mut near_rates) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            node.arm(n)?;
            near_rates.push(send_many(n, 1024, CHANNELS)?);
            far_rates.push(node.far_rate()?);
        }
        many = json!({"channels": CHANNELS, "msgs_per_s": median(far_rates), "sender_msgs_per_s": median(near_rates), "messages": n});
        // The same 1 KiB messages from one task on one channel (as pymfp's sender: one loop).
        // Without storage a send does not wait, so one task has as many messages in flight as
        // the link takes; with storage each send waits for its commit.
        let n = messages_for(1024, storage, scale);
        let (mut far_rates, mut near_rates) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            node.arm(n)?;
            near_rates.push(send_from(n, 1024, 1, 1)?);
            far_rates.push(node.far_rate()?);
        }
        one_task = json!({"msgs_per_s": median(far_rates), "sender_msgs_per_s": median(near_rates), "messages": n});
    }
    let rounds = scale.pick(if storage { 1_000 } else { 3_000 }, 500);
    let rtts = tokio_rt.block_on(async {
        let payload = vec![0x17u8; 1024];
        let mut rtts = Vec::with_capacity(rounds);
        for i in 0..rounds + 200 {
            let start = Instant::now();
            me.send_async(echo, &payload).await.map_err(|e| e.to_string())?;
            let got = tokio::time::timeout(Duration::from_secs(10), replies.recv()).await;
            if !matches!(got, Ok(Some(1024))) {
                return Err("the far side's echo did not come back within 10 s".to_string());
            }
            if i >= 200 {
                rtts.push(start.elapsed().as_nanos() as u64);
            }
        }
        rtts.sort_unstable();
        Ok(rtts)
    })?;
    let ping_pong = json!({"p50_us": percentile(&rtts, 0.5), "p99_us": percentile(&rtts, 0.99), "rounds": rounds});

    // Handler to handler: the pinger's handler sends the next ping as soon as the answer
    // reaches it, so what is timed is agent to agent, with no task outside the runtime.
    let rtts = tokio_rt.block_on(async {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if let Ok(mut s) = pinger_state.lock() {
            *s = Pinger { left: rounds + 200, warm_up: 200, done: Some(done_tx), ..Pinger::default() };
            s.sent = Some(Instant::now());
        }
        pinger.send_async(pinger_echo, &[0x17u8; 1024]).await.map_err(|e| e.to_string())?;
        let limit = Duration::from_secs(10) + Duration::from_millis(10) * u32::try_from(rounds).unwrap_or(u32::MAX);
        match tokio::time::timeout(limit, done_rx).await {
            Ok(Ok(mut rtts)) => {
                rtts.sort_unstable();
                Ok(rtts)
            }
            _ => Err("the handler-to-handler ping-pong did not finish".to_string()),
        }
    })?;
    let handler_ping_pong =
        json!({"p50_us": percentile(&rtts, 0.5), "p99_us": percentile(&rtts, 0.99), "rounds": rtts.len()});

    // Handshakes: the near runtime's federation steps aside; fresh networks with its
    // identity dial the far side, each timed until its link is up.
    let handshake_ms = if busy_poll.is_zero() {
        tokio_rt.block_on(async {
            fed.shutdown().await;
            let mut times = Vec::new();
            for _ in 0..if scale == Scale::Smoke { 3 } else { HANDSHAKES } {
                // The far side's listener admits 10 handshakes per second per source address
                // (NetConfig::handshakes_per_second_per_source): keep under it, or the dialer's
                // backoff is what gets measured.
                let paced = tokio::time::sleep(HANDSHAKE_SPACING);
                let mut cfg = NetConfig::default();
                cfg.shutdown_timeout = Duration::from_millis(200);
                let peers = vec![fed_common::peer_config(FAR, Some(node.addr.clone())).map_err(|e| e.to_string())?];
                let key = fed_common::key(NEAR).map_err(|e| e.to_string())?;
                let start = Instant::now();
                let (net, mut events) =
                    Network::start(key, fed_common::runtime_id(NEAR), peers, cfg).await.map_err(|e| e.to_string())?;
                let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
                let peer = net.peer(&far).ok_or("no peer")?;
                tokio::time::timeout(Duration::from_secs(10), peer.up())
                    .await
                    .map_err(|_| "a handshake did not complete within 10 s".to_string())?
                    .map_err(|e| e.to_string())?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
                net.shutdown().await;
                drain.abort();
                paced.await;
            }
            Ok::<_, String>(median(times))
        })?
    } else {
        f64::NAN
    };
    tokio_rt.block_on(rt.shutdown_async());
    drop(tokio_rt);
    node.quit();
    Ok(json!({
        "one_way": Value::Object(one_way),
        "one_way_1024_many_channels": many,
        "one_way_1024_one_task": one_task,
        "ping_pong_1024": ping_pong,
        "handler_ping_pong_1024": handler_ping_pong,
        "handshake_ms_median": handshake_ms,
    }))
}

/// The state of the handler-to-handler ping-pong: rounds left, when the ping in flight was
/// sent, the round trips timed so far (in ns), and where they go once done.
#[derive(Default)]
struct Pinger {
    left: usize,
    warm_up: usize,
    sent: Option<Instant>,
    rtts: Vec<u64>,
    done: Option<tokio::sync::oneshot::Sender<Vec<u64>>>,
}

impl Pinger {
    /// An answer arrived: times its round trip; whether to send the next ping.
    fn answered(&mut self) -> bool {
        let now = Instant::now();
        if let Some(sent) = self.sent.take() {
            if self.warm_up > 0 {
                self.warm_up -= 1;
            } else {
                self.rtts.push(u64::try_from(now.duration_since(sent).as_nanos()).unwrap_or(u64::MAX));
            }
        }
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            if let Some(done) = self.done.take() {
                let _ = done.send(std::mem::take(&mut self.rtts));
            }
            return false;
        }
        self.sent = Some(Instant::now());
        true
    }
}

/// Round trips of 1 KiB over loopback TCP between this process and a child that echoes
/// with blocking sockets and nothing else: the kernel's share of a ping-pong. Returns
/// (p50, p99) in µs.
fn tcp_round_trip(rounds: usize) -> Result<(f64, f64), String> {
    use std::io::Read;
    let mut child = Command::new(sibling("mfp-bench-fed-node")?)
        .arg("--tcp-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start mfp-bench-fed-node: {e}"))?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr = line.trim().strip_prefix("listen ").ok_or_else(|| format!("unexpected {line:?}"))?.to_string();
    let mut s = std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (out, mut back) = (vec![0x17u8; 1024], vec![0u8; 1024]);
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds + 200 {
        let start = Instant::now();
        s.write_all(&out).map_err(|e| e.to_string())?;
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        if i >= 200 {
            rtts.push(start.elapsed().as_nanos() as u64);
        }
    }
    drop(s);
    let _ = child.wait();
    rtts.sort_unstable();
    Ok((percentile(&rtts, 0.5), percentile(&rtts, 0.99)))
}

// ---- pymfp ------------------------------------------------------------------------------

fn pymfp_python() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/mfp-bench → target/pymfp-venv
    let python = exe.parent()?.parent()?.join("pymfp-venv/bin/python");
    python.exists().then_some(python)
}

fn pymfp(scale: Scale) -> Result<Value, String> {
    let python = pymfp_python().ok_or(
        "target/pymfp-venv is missing (python3 -m venv target/pymfp-venv && target/pymfp-venv/bin/pip install pymfp==1.0.0)",
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/pymfp_federation.py");
    let (n, rounds) = (scale.pick(10_000, 3_000).to_string(), scale.pick(2_000, 300).to_string());
    let out = Command::new(python)
        .arg(script)
        .args(["--messages", &n, "--size", "1024", "--rounds", &rounds])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the pymfp script: {e}"))?;
    if !out.status.success() {
        return Err(format!("the pymfp script failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the pymfp script's output: {e}"))
}

// ---- the section --------------------------------------------------------------------------

/// Runs the section, prints its table, returns its JSON.
pub(crate) fn run(scale: Scale, runs: usize) -> Value {
    let mut report = serde_json::Map::new();
    let mut floor = serde_json::Map::new();
    for size in sizes() {
        let n = if size <= 1024 { 100_000 } else { 5_000 };
        let n = scale.pick(n, n / 5);
        let rs: Vec<(f64, f64)> = (0..runs).map(|_| floor_once(size, n)).collect();
        let (rate, us) = (median(rs.iter().map(|r| r.0).collect()), median(rs.iter().map(|r| r.1).collect()));
        println!(
            "federation floor (seal_outbound + Noise seal, Noise open + open_inbound) {size:>6} B  {rate:>10.0} msg/s  {us:>7.2} µs/msg"
        );
        floor.insert(size.to_string(), json!({"msgs_per_s": rate, "us_per_msg": us}));
    }
    report.insert("floor".into(), Value::Object(floor.clone()));

    let py = match pymfp(scale) {
        Ok(v) => {
            println!(
                "federation pymfp 1.0.0 one-way {:>6} B  {:>10.0} msg/s   ping-pong p50 {:>8.1} µs  p99 {:>8.1} µs",
                v["size"].as_u64().unwrap_or(1024),
                v["one_way_msgs_per_s"].as_f64().unwrap_or(f64::NAN),
                v["ping_pong_p50_us"].as_f64().unwrap_or(f64::NAN),
                v["ping_pong_p99_us"].as_f64().unwrap_or(f64::NAN),
            );
            Some(v)
        }
        Err(e) => {
            println!("federation pymfp: skipped: {e}");
            None
        }
    };
    if let Some(v) = &py {
        report.insert("pymfp".into(), v.clone());
    }
    let py_rate = py.as_ref().and_then(|v| v["one_way_msgs_per_s"].as_f64());
    let py_p50 = py.as_ref().and_then(|v| v["ping_pong_p50_us"].as_f64());

    match tcp_round_trip(scale.pick(5_000, 1_000)) {
        Ok((p50, p99)) => {
            println!(
                "federation loopback TCP round trip, 1024 B, blocking sockets, no MFP   p50 {p50:>8.1} µs  p99 {p99:>8.1} µs"
            );
            report.insert("tcp_round_trip_1024".into(), json!({"p50_us": p50, "p99_us": p99}));
        }
        Err(e) => println!("federation loopback TCP round trip: failed: {e}"),
    }

    for (label, storage) in [("memory", false), ("sqlite_normal", true)] {
        match two_processes(storage, scale, runs, Duration::ZERO) {
            Ok(v) => {
                for size in sizes() {
                    let row = &v["one_way"][size.to_string()];
                    let rate = row["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
                    let of_floor = rate / floor[&size.to_string()]["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
                    let vs_py = match (size, py_rate) {
                        (1024, Some(p)) => format!("  {:>6.1}× pymfp", rate / p),
                        _ => String::new(),
                    };
                    println!(
                        "federation {label:<13} one-way {size:>6} B  {rate:>10.0} msg/s (sender {:>8.0})  {:>5.1}% of floor{vs_py}",
                        row["sender_msgs_per_s"].as_f64().unwrap_or(f64::NAN),
                        of_floor * 100.0
                    );
                }
                let many = &v["one_way_1024_many_channels"];
                let rate = many["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "federation {label:<13} one-way   1024 B over {CHANNELS} channels  {rate:>10.0} msg/s (sender {:>8.0})  {:>5.1}% of floor",
                    many["sender_msgs_per_s"].as_f64().unwrap_or(f64::NAN),
                    rate / floor["1024"]["msgs_per_s"].as_f64().unwrap_or(f64::NAN) * 100.0
                );
                let one = &v["one_way_1024_one_task"];
                let rate = one["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
                let vs_py = py_rate.map(|p| format!("  {:>6.1}× pymfp", rate / p)).unwrap_or_default();
                println!(
                    "federation {label:<13} one-way   1024 B from one sender task  {rate:>10.0} msg/s (sender {:>8.0})  {:>5.1}% of floor{vs_py}",
                    one["sender_msgs_per_s"].as_f64().unwrap_or(f64::NAN),
                    rate / floor["1024"]["msgs_per_s"].as_f64().unwrap_or(f64::NAN) * 100.0
                );
                let pp = &v["ping_pong_1024"];
                let p50 = pp["p50_us"].as_f64().unwrap_or(f64::NAN);
                let vs_py = py_p50.map(|p| format!("  (pymfp p50 {p:.1} µs)")).unwrap_or_default();
                println!(
                    "federation {label:<13} ping-pong 1024 B  p50 {p50:>8.1} µs  p99 {:>8.1} µs{vs_py}",
                    pp["p99_us"].as_f64().unwrap_or(f64::NAN)
                );
                let hp = &v["handler_ping_pong_1024"];
                println!(
                    "federation {label:<13} ping-pong 1024 B, handler to handler  p50 {:>8.1} µs  p99 {:>8.1} µs",
                    hp["p50_us"].as_f64().unwrap_or(f64::NAN),
                    hp["p99_us"].as_f64().unwrap_or(f64::NAN)
                );
                println!(
                    "federation {label:<13} handshake (TCP connect + Noise IK, link up)  median {:>7.2} ms",
                    v["handshake_ms_median"].as_f64().unwrap_or(f64::NAN)
                );
                report.insert(label.into(), v);
            }
            Err(e) => println!("federation {label}: failed: {e}"),
        }
    }
    // Round trips with both links busy-polling (NetConfig::busy_poll): latency for a core.
    match two_processes(false, scale, runs, BUSY_POLL) {
        Ok(v) => {
            let label = format!("memory, busy_poll {} µs", BUSY_POLL.as_micros());
            for (key, what) in [("ping_pong_1024", ""), ("handler_ping_pong_1024", ", handler to handler")] {
                println!(
                    "federation {label}  ping-pong 1024 B{what}  p50 {:>8.1} µs  p99 {:>8.1} µs",
                    v[key]["p50_us"].as_f64().unwrap_or(f64::NAN),
                    v[key]["p99_us"].as_f64().unwrap_or(f64::NAN)
                );
            }
            report.insert(
                "memory_busy_poll".into(),
                json!({"busy_poll_us": BUSY_POLL.as_micros(), "ping_pong_1024": v["ping_pong_1024"], "handler_ping_pong_1024": v["handler_ping_pong_1024"]}),
            );
        }
        Err(e) => println!("federation memory, busy poll: failed: {e}"),
    }
    report.insert("targets".into(), targets(&report, py_rate));
    Value::Object(report)
}

/// The targets, each met or not, for the in-memory rows (the storage rows are
/// reported beside them).
fn targets(report: &serde_json::Map<String, Value>, py_rate: Option<f64>) -> Value {
    let mut out = serde_json::Map::new();
    let floor_1k = report.get("floor").and_then(|f| f["1024"]["msgs_per_s"].as_f64());
    for label in ["memory", "sqlite_normal", "memory_busy_poll"] {
        let Some(v) = report.get(label) else { continue };
        let rate = v["one_way"]["1024"]["msgs_per_s"].as_f64();
        let one_task = v["one_way_1024_one_task"]["msgs_per_s"].as_f64();
        let one_task_vs_py = one_task.zip(py_rate).map(|(r, p)| r / p);
        let p50 = v["ping_pong_1024"]["p50_us"].as_f64();
        let handler_p50 = v["handler_ping_pong_1024"]["p50_us"].as_f64();
        let vs_py = rate.zip(py_rate).map(|(r, p)| r / p);
        let of_floor = rate.zip(floor_1k).map(|(r, f)| r / f);
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let rows = [
            ("one-way 1 KiB >= 20x pymfp", vs_py.map(|x| format!("{x:.1}x")), vs_py.map(|x| x >= 20.0)),
            (
                "one-way 1 KiB >= 20x pymfp, one sender task",
                one_task_vs_py.map(|x| format!("{x:.1}x")),
                one_task_vs_py.map(|x| x >= 20.0),
            ),
            (
                "one-way 1 KiB >= 60% of the floor",
                of_floor.map(|x| format!("{:.1}%", x * 100.0)),
                of_floor.map(|x| x >= 0.6),
            ),
            ("ping-pong 1 KiB p50 < 50 us", p50.map(|x| format!("{x:.1} us")), p50.map(|x| x < 50.0)),
            (
                "ping-pong 1 KiB p50 < 50 us, handler to handler",
                handler_p50.map(|x| format!("{x:.1} us")),
                handler_p50.map(|x| x < 50.0),
            ),
        ];
        let mut m = serde_json::Map::new();
        for (name, value, met) in rows {
            if label == "memory_busy_poll" && value.is_none() {
                continue; // only the round trips are measured with busy polling
            }
            println!(
                "federation target ({label:<13}) {name:<46} {:>10}  {}",
                value.clone().unwrap_or_else(|| "-".into()),
                verdict(met)
            );
            m.insert(name.into(), json!({"value": value, "met": met}));
        }
        out.insert(label.into(), Value::Object(m));
    }
    Value::Object(out)
}
