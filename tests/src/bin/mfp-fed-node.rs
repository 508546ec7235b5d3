//! `mfp-fed-node a|b DB KEY-FILE PORT`: a node of `tests/crash_federation.rs`.
//!
//! One runtime on [`SqliteStorage`] at `DB` (master key read from `KEY-FILE`, durability
//! `normal`) with one agent named `agent`, federated with the other node: `b` listens on
//! 127.0.0.1:`PORT` (0: any free port), `a` dials 127.0.0.1:`PORT`. The identity keys come
//! from fixed seeds and each node pins the other's. On its first start, `a` asks `b` for a
//! channel between the two agents; later starts of either node find the channel restored.
//!
//! Both nodes send on the channel from one thread until a `stop` line on standard input, each
//! payload naming the step it is sent at (read from the channel's `tx_next` just before the
//! send; the receipt must carry that step). `b` starts sending only once it has received a
//! message on the channel: until then the channel may be one that `a` never committed (`a`
//! killed between `b`'s acceptance and its own commit), which the next reconnect closes.
//! A send refused because the link is down is tried again; any other error is fatal.
//!
//! Standard output, one line per event, each written with one write on the locked stdout
//! and flushed at once (so a kill loses whole lines only):
//!
//! ```text
//! LISTEN <port>                      b: the port it listens on
//! OPENED <channel-hex>               a: the channel it opened (first start)
//! RESTORED <channel-hex>             a: the channel found in storage (later starts)
//! R <channel-hex> <step>             a send returned this receipt
//! D <channel-hex> <step> <0|1>       the handler got this message (last field: redelivered)
//! DUPS <n>                           resent messages dropped as duplicates so far, this run
//! IDLE                               `stop` read: the sender stopped
//! ```
//!
//! The process ends when its standard input ends (the test is gone).
//!
//! Any error prints `ERR <message>` on standard error and exits with status 1 — including a
//! receipt whose step is not the one read before the send, and a delivery whose payload
//! names another step than the message's.

use std::convert::Infallible;
use std::fmt::Display;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_federation::IdentityKey;
use mfp_federation::control::Target;
use mfp_federation::federation::{FederatedPeer, Federation, FederationConfig, FederationError};
use mfp_federation::net::{NetConfig, PeerConfig};
use mfp_federation::session::SessionConfig;
use mfp_runtime::remote::RemoteHandle;
use mfp_runtime::{AgentHandle, ChannelId, DeliveredMessage, Error as RuntimeError, Runtime, RuntimeConfig};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};

const DEPLOYMENT: &[u8] = b"mfp-fed-crash-test";
const AGENT: &str = "agent";
const DEPTH: usize = 4;

/// Writes one whole line to stdout and flushes it.
fn emit(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}

/// Reports a fatal error and exits (also used from the handler and sender threads).
fn die(message: impl Display) -> ! {
    eprintln!("ERR {message}");
    std::process::exit(1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    A,
    B,
}

impl Role {
    fn name(self) -> &'static [u8] {
        match self {
            Role::A => b"a",
            Role::B => b"b",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::A => Role::B,
            Role::B => Role::A,
        }
    }

    fn runtime_id(self) -> RuntimeId {
        RuntimeId::derive(DEPLOYMENT, self.name())
    }

    /// A fixed identity key per role (a test's keys, never an operator's).
    fn key(self) -> IdentityKey {
        IdentityKey::from_secret_bytes(match self {
            Role::A => [0xa1; 32],
            Role::B => [0xb2; 32],
        })
    }
}

fn runtime_config(role: Role) -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.deployment_id = DEPLOYMENT.to_vec();
    c.instance_id = role.name().to_vec();
    // Sends as fast as it can: no rate limit (the default would quarantine the agent).
    c.max_message_rate = 0;
    c
}

/// Short timers, so that a killed peer is noticed and redialled quickly.
fn net_config(role: Role, port: u16) -> NetConfig {
    let mut net = NetConfig::default();
    if role == Role::B {
        net.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    net.session = SessionConfig {
        keepalive: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(1),
        ..SessionConfig::default()
    };
    net.dial_backoff_initial = Duration::from_millis(20);
    net.dial_backoff_max = Duration::from_millis(200);
    net
}

/// The handler: checks that the payload names the message's step and reports it; wakes
/// the sender (once) for `b`, which waits for a first message.
fn handler(wake: mpsc::Sender<()>) -> impl Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static {
    let first = AtomicBool::new(true);
    move |_, msg| {
        if msg.payload != msg.step.to_string().as_bytes() {
            die(format!("channel {} step {}: the payload names another step", msg.channel, msg.step));
        }
        let flag = u8::from(msg.redelivered);
        if let Err(e) = emit(&format!("D {} {} {flag}\n", msg.channel, msg.step)) {
            die(e);
        }
        if first.swap(false, Ordering::Relaxed) {
            let _ = wake.send(());
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("ERR {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Infallible, String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, role, db, key_file, port] = args.as_slice() else {
        return Err("usage: mfp-fed-node a|b DB KEY-FILE PORT".into());
    };
    let role = match role.as_str() {
        "a" => Role::A,
        "b" => Role::B,
        other => return Err(format!("unknown role '{other}' (a or b)")),
    };
    let port: u16 = port.parse().map_err(|e| format!("port '{port}': {e}"))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    let key = MasterKey::from_file(key_file).map_err(|e| format!("master key: {e}"))?;
    let storage = SqliteStorage::open(StorageConfig::new(db, key).durability(Durability::Normal))
        .map_err(|e| format!("open {db}: {e}"))?;
    let rt = Runtime::builder(runtime_config(role))
        .tokio_handle(tokio.handle().clone())
        .storage(storage)
        .build()
        .map_err(|e| format!("build: {e}"))?;
    let (wake, woken) = mpsc::channel();
    // A restored agent gets what its stored inbox holds first (flagged as redeliveries).
    let agent = if rt.agent_count() == 0 {
        rt.bind_named(AGENT, handler(wake.clone())).map_err(|e| format!("bind {AGENT}: {e}"))?
    } else {
        rt.attach_named(AGENT, handler(wake.clone())).map_err(|e| format!("attach {AGENT}: {e}"))?
    };
    let peer = role.other().runtime_id();

    // The federation lives as long as the process.
    let (_fed, channel) = tokio.block_on(async {
        let endpoint = (role == Role::A).then(|| format!("127.0.0.1:{port}"));
        let other = FederatedPeer::new(PeerConfig { runtime: peer, endpoint, key: role.other().key().public() });
        let mut cfg = FederationConfig::new(net_config(role, port), vec![other]);
        cfg.open_timeout = Duration::from_secs(2);
        let fed = Federation::start(&rt, role.key(), cfg).await.map_err(|e| format!("federation: {e}"))?;
        let channel = match role {
            Role::A => Some(channel_of_a(&fed, &agent, &rt.remote_handle(), peer).await?),
            Role::B => {
                let port = fed.local_addr().ok_or("b has no listener")?.port();
                emit(&format!("LISTEN {port}\n"))?;
                None
            }
        };
        Ok::<_, String>((fed, channel))
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // A `stop` line on standard input stops the sender; its end (the test is gone)
            // ends the process.
            let mut line = String::new();
            loop {
                line.clear();
                match std::io::stdin().read_line(&mut line) {
                    Ok(0) | Err(_) => std::process::exit(0),
                    Ok(_) if line.trim() == "stop" => {
                        stop.store(true, Ordering::SeqCst);
                        let _ = wake.send(());
                    }
                    Ok(_) => {}
                }
            }
        });
    }
    let remote = rt.remote_handle();
    std::thread::spawn(move || match send_until_stopped(&agent, &remote, peer, channel, &woken, &stop) {
        Ok(()) => {
            if let Err(e) = emit("IDLE\n") {
                die(e);
            }
        }
        Err(e) => die(e),
    });

    tokio.block_on(async {
        // Until killed: report the duplicates the runtime dropped (resends after reconnects).
        let mut reported = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let dups = rt.metrics().remote_duplicates.get();
            if dups != reported {
                emit(&format!("DUPS {dups}\n"))?;
                reported = dups;
            }
        }
    })
}

/// `a`'s channel: the stored one, or a new one with `b`'s agent (asked again until the
/// link stays up long enough for the answer).
async fn channel_of_a(
    fed: &Federation,
    agent: &AgentHandle,
    remote: &RemoteHandle,
    peer: RuntimeId,
) -> Result<ChannelId, String> {
    let stored = remote.positions(&peer).map_err(|e| format!("positions: {e}"))?;
    if let Some(p) = stored.first() {
        emit(&format!("RESTORED {}\n", p.channel))?;
        return Ok(p.channel);
    }
    loop {
        fed.wait_up(&peer).await.map_err(|e| format!("link: {e}"))?;
        match fed.open_channel(agent.id(), peer, Target::Name(AGENT.into()), DEPTH).await {
            Ok(channel) => {
                emit(&format!("OPENED {channel}\n"))?;
                return Ok(channel);
            }
            Err(FederationError::PeerDown(_) | FederationError::Timeout(_)) => {}
            Err(e) => return Err(format!("open a channel with b: {e}")),
        }
    }
}

/// The channel `b` sends on: the one it has received a message on (now or before a
/// restart). `None` if told to stop first.
fn first_received(
    remote: &RemoteHandle,
    peer: RuntimeId,
    woken: &mpsc::Receiver<()>,
    stop: &AtomicBool,
) -> Result<Option<ChannelId>, String> {
    loop {
        let positions = remote.positions(&peer).map_err(|e| format!("positions: {e}"))?;
        if let Some(p) = positions.iter().find(|p| p.rx_next > 0) {
            return Ok(Some(p.channel));
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        woken.recv().map_err(|_| "the handler and the input reader are gone".to_string())?;
    }
}

/// Sends on the channel, each payload naming its step, until `stop`.
fn send_until_stopped(
    agent: &AgentHandle,
    remote: &RemoteHandle,
    peer: RuntimeId,
    channel: Option<ChannelId>,
    woken: &mpsc::Receiver<()>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let channel = match channel {
        Some(c) => c,
        None => match first_received(remote, peer, woken, stop)? {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    while !stop.load(Ordering::SeqCst) {
        let positions = remote.positions(&peer).map_err(|e| format!("positions: {e}"))?;
        let step = positions
            .iter()
            .find(|p| p.channel == channel)
            .ok_or_else(|| format!("channel {channel} is gone"))?
            .tx_next;
        match agent.send(channel, step.to_string().as_bytes()) {
            Ok(receipt) if receipt.channel == channel && receipt.step == step => {
                emit(&format!("R {channel} {step}\n"))?;
            }
            Ok(receipt) => {
                return Err(format!(
                    "sent on {channel} at step {step}, the receipt says {} step {}",
                    receipt.channel, receipt.step
                ));
            }
            // The link is down or full: the chain did not move; try again.
            Err(RuntimeError::PeerUnavailable { .. }) => {}
            Err(e) => return Err(format!("send on {channel} at step {step}: {e}")),
        }
    }
    Ok(())
}
