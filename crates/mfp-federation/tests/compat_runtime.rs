//! Live interop of a REAL pymfp 1.0.0 runtime with an mfp runtime (`mfp_runtime::Runtime`)
//! through the compat transport (`compat_net::CompatNetwork`) over 127.0.0.1: the same four
//! scenarios as `compat_pymfp.rs`, with the runtime's agents sending and receiving.
#![cfg(feature = "compat-net")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

mod compat_common;
mod fed_support;

use std::net::SocketAddr;
use std::sync::Mutex;

use compat_common::*;
use mfp_core::{AgentId, ChannelId, RuntimeId};
use mfp_federation::compat::{Bootstrap, CompatChannel, CompatPeer, parse_public_key};
use mfp_federation::compat_net::{CompatNetConfig, CompatNetwork};
use mfp_federation::identity::IdentityKey;
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime, RuntimeConfig};
use tokio::sync::mpsc;

/// The mfp side: a runtime named `RUST_RUNTIME`, one agent whose deliveries go to `inbox`.
struct Rust {
    rt: Runtime,
    agent: AgentHandle,
    inbox: mpsc::UnboundedReceiver<DeliveredMessage>,
}

fn rust_runtime() -> Rust {
    rust_runtime_with(RuntimeConfig::default())
}

fn rust_runtime_with(base: RuntimeConfig) -> Rust {
    let (dep, inst) = RUST_RUNTIME.split_once('/').unwrap();
    let config = {
        let mut c = base;
        c.deployment_id = dep.as_bytes().to_vec();
        c.instance_id = inst.as_bytes().to_vec();
        c
    };
    let rt = Runtime::new(config).unwrap();
    assert_eq!(rt.identity(), rust_id());
    let (tx, inbox) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let agent = rt
        .bind(move |_: &AgentHandle, m: DeliveredMessage| {
            let _ = tx.lock().unwrap().send(m);
        })
        .unwrap();
    Rust { rt, agent, inbox }
}

impl Rust {
    async fn next(&mut self) -> DeliveredMessage {
        tokio::time::timeout(LIMIT, self.inbox.recv()).await.expect("nothing delivered in time").unwrap()
    }

    /// Starts the compat transport for the pymfp peer `py` (listening if `listen`).
    async fn connect(&self, py: &PyPeer, endpoint_port: u16, bootstrap: Bootstrap, listen: bool) -> CompatNetwork {
        let mut peer = CompatPeer::new(PYMFP_RUNTIME, &format!("127.0.0.1:{endpoint_port}"), bootstrap).unwrap();
        peer.add_channel(CompatChannel {
            id: ChannelId::from_bytes(CHANNEL),
            depth: DEPTH,
            local_agent: self.agent.id(),
            remote_agent: py.agent,
        })
        .unwrap();
        let config = CompatNetConfig {
            listen: listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            ..CompatNetConfig::default()
        };
        CompatNetwork::start(&self.rt, vec![peer], config).await.unwrap()
    }
}

fn pymfp_id() -> RuntimeId {
    let (d, i) = PYMFP_RUNTIME.split_once('/').unwrap();
    RuntimeId::derive(d.as_bytes(), i.as_bytes())
}

fn check(d: &DeliveredMessage, py_agent: AgentId, want: &[u8]) {
    assert_eq!(d.payload, want);
    assert_eq!(d.sender, py_agent);
    assert_eq!(d.channel, ChannelId::from_bytes(CHANNEL));
    assert_eq!(d.sender_runtime, Some(pymfp_id()));
}

const N: usize = 200;

/// A port nobody listens on, for a peer we never send to: the outbound task's connection
/// attempts fail and are counted, nothing else happens.
const NOBODY: u16 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymfp_sends_n_messages_to_an_mfp_runtime() {
    let mut rust = rust_runtime();
    let agent_hex = hex::encode(rust.agent.id().as_bytes());
    let mut py = PyPeer::start_with(&agent_hex, None, &["send", "--count", &N.to_string()]).await;
    let net = rust.connect(&py, NOBODY, Bootstrap::Deterministic, true).await;
    py.go(net.local_addr().unwrap().port()).await;
    for i in 0..N {
        let d = rust.next().await;
        assert_eq!(d.step, i as u64);
        check(&d, py.agent, &payload(i));
    }
    let done = py.done().await;
    assert_eq!(done["step"].as_u64(), Some(N as u64));
    let s = net.stats();
    assert_eq!((s.peers, s.delivered, s.refused(), s.stream_errors), (1, N as u64, 0, 0));
    assert_eq!(rust.rt.metrics().remote_received.get(), N as u64);
    assert!(s.prometheus().contains("mfp_compat_peers 1\n"));
    net.shutdown().await;
    rust.rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mfp_runtime_sends_n_messages_to_pymfp_ceremonial() {
    let rust = rust_runtime();
    let ours = IdentityKey::from_secret_bytes(RUST_PRIVATE);
    let our_public = hex::encode(ours.public().as_bytes());
    let agent_hex = hex::encode(rust.agent.id().as_bytes());
    let py =
        PyPeer::start_with(&agent_hex, Some((PY_PRIVATE, &our_public)), &["receive", "--count", &N.to_string()]).await;
    let bootstrap = Bootstrap::Ceremonial {
        local_secret: ours,
        peer_public: parse_public_key(PYMFP_RUNTIME, &python_public()).unwrap(),
    };
    let net = rust.connect(&py, py.port.unwrap(), bootstrap, false).await;
    assert!(tokio::time::timeout(LIMIT, net.wait_up(&pymfp_id())).await.unwrap());
    let ch = ChannelId::from_bytes(CHANNEL);
    for i in 0..N {
        let r = rust.agent.send_async(ch, &payload(i)).await.unwrap();
        assert_eq!(r.step, i as u64);
    }
    // pymfp asserts the N payloads and their order itself.
    let done = py.done().await;
    assert_eq!(done["received"].as_u64(), Some(N as u64));
    assert_eq!(done["step"].as_u64(), Some(N as u64));
    tokio::time::timeout(LIMIT, net.wait_stats(|s| s.sent == N as u64)).await.unwrap();
    let s = net.stats();
    assert_eq!((s.sent, s.lost), (N as u64, 0));
    assert_eq!(rust.rt.metrics().remote_sent.get(), N as u64);
    net.shutdown().await;
    rust.rt.shutdown();
}

const ROUNDS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_request_reply_with_an_mfp_runtime_for_100_rounds() {
    let mut rust = rust_runtime();
    let agent_hex = hex::encode(rust.agent.id().as_bytes());
    let mut py = PyPeer::start_with(&agent_hex, None, &["pingpong", "--rounds", &ROUNDS.to_string()]).await;
    let net = rust.connect(&py, py.port.unwrap(), Bootstrap::Deterministic, true).await;
    py.go(net.local_addr().unwrap().port()).await;
    assert!(tokio::time::timeout(LIMIT, net.wait_up(&pymfp_id())).await.unwrap());
    let ch = ChannelId::from_bytes(CHANNEL);
    for r in 0..ROUNDS {
        let (request, reply) = (format!("request {r}").into_bytes(), format!("reply {r}").into_bytes());
        if r % 2 == 0 {
            rust.agent.send_async(ch, &request).await.unwrap();
            let d = rust.next().await;
            check(&d, py.agent, &reply);
        } else {
            let d = rust.next().await;
            check(&d, py.agent, &request);
            rust.agent.send_async(ch, &reply).await.unwrap();
        }
    }
    let done = py.done().await;
    assert_eq!(done["rounds"].as_u64(), Some(ROUNDS as u64));
    assert_eq!(done["step"].as_u64(), Some(2 * ROUNDS as u64));
    tokio::time::timeout(LIMIT, net.wait_stats(|s| s.sent == ROUNDS as u64)).await.unwrap();
    let s = net.stats();
    assert_eq!((s.sent, s.delivered, s.refused(), s.lost), (ROUNDS as u64, ROUNDS as u64, 0, 0));
    net.shutdown().await;
    rust.rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mfp_runtime_refuses_and_counts_tampered_bytes_from_pymfp() {
    let mut rust = rust_runtime();
    let agent_hex = hex::encode(rust.agent.id().as_bytes());
    let mut py = PyPeer::start_with(&agent_hex, None, &["tamper"]).await;
    let net = rust.connect(&py, NOBODY, Bootstrap::Deterministic, true).await;
    py.go(net.local_addr().unwrap().port()).await;
    let py_agent = py.agent;
    let done = py.done().await;
    let sent = done["sent"].as_array().unwrap();
    let genuine: Vec<Vec<u8>> = sent
        .iter()
        .filter(|s| s["expect"] == "delivered")
        .map(|s| hex::decode(s["payload"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(genuine.len(), 3, "{sent:?}");
    for want in &genuine {
        let d = rust.next().await;
        check(&d, py_agent, want);
    }
    // pymfp closed its connection after the last message: once the transport counted
    // every message, nothing more may have been delivered.
    let counted = tokio::time::timeout(LIMIT, net.wait_stats(|s| s.delivered + s.duplicates + s.refused() >= 9)).await;
    assert!(counted.is_ok(), "counters: {:?}", net.stats());
    let s = net.stats();
    assert_eq!(
        (
            s.delivered,
            s.duplicates,
            s.refused_frame,
            s.refused_decode,
            s.refused_step,
            s.refused_other,
            s.unknown_sender
        ),
        (3, 1, 1, 2, 2, 0, 0),
        "{s:?}"
    );
    assert_eq!((s.peers, s.connections_accepted, s.stream_errors), (1, 1, 0));
    assert!(rust.inbox.try_recv().is_err(), "a refused message was delivered");
    let m = rust.rt.metrics();
    assert_eq!((m.remote_received.get(), m.remote_duplicates.get(), m.remote_rejected.get()), (3, 1, 5));
    // The channel is not quarantined (never 5 failures in a row) but the chains diverged:
    // the runtime expects step 3, pymfp is at 5.
    assert_eq!(done["step"].as_u64(), Some(5));
    net.shutdown().await;
    rust.rt.shutdown();
}

/// Without Python: a send while the peer cannot be reached fails before the shared chain
/// advances; a header over the limits closes the connection; an envelope from a runtime
/// that is no configured peer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peers_garbage_and_strangers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A send waits for the link at most this long.
    let rust = rust_runtime_with({
        let mut c = RuntimeConfig::default();
        c.pipeline_timeout = std::time::Duration::from_millis(200);
        c
    });
    let mut peer = CompatPeer::new(PYMFP_RUNTIME, &format!("127.0.0.1:{NOBODY}"), Bootstrap::Deterministic).unwrap();
    let ch = ChannelId::from_bytes(CHANNEL);
    let py_agent = AgentId::from_bytes([0x77; 32]);
    peer.add_channel(CompatChannel { id: ch, depth: DEPTH, local_agent: rust.agent.id(), remote_agent: py_agent })
        .unwrap();
    let config = CompatNetConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..CompatNetConfig::default() };
    let net = CompatNetwork::start(&rust.rt, vec![peer], config).await.unwrap();
    assert!(!net.is_up(&pymfp_id()));
    let err = rust.agent.send_async(ch, b"nobody listens").await.unwrap_err();
    assert!(matches!(err, mfp_runtime::Error::PeerUnavailable { .. }), "{err}");
    let pos = rust.rt.remote_handle().positions(&pymfp_id()).unwrap();
    assert_eq!((pos.len(), pos[0].tx_next, pos[0].rx_next), (1, 0, 0), "the shared chain did not move");

    let addr = net.local_addr().unwrap();
    // A header announcing a 4 GiB payload: the connection is closed, nothing is buffered.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = mfp_core::envelope::EnvelopeHeader::new(
        mfp_core::envelope::EnvelopeFlags::NONE,
        4,
        u32::MAX,
        ch,
        0,
        &pymfp_id(),
    )
    .to_bytes();
    sock.write_all(&header).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(LIMIT, sock.read(&mut byte)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "the listener kept a connection with a bad header open");
    // A well-formed envelope from a stranger (another sender_runtime).
    let stranger = RuntimeId::derive(b"someone", b"else");
    let state = mfp_core::bilateral::BilateralState::deterministic(&stranger, &rust_id());
    let wire = state.seal_outbound(&stranger, &ch, DEPTH, b"hello").unwrap().wire;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(&wire).await.unwrap();
    tokio::time::timeout(LIMIT, net.wait_stats(|s| s.stream_errors == 1 && s.unknown_sender == 1)).await.unwrap();
    let s = net.stats();
    assert_eq!((s.delivered, s.refused_other, s.connections_accepted), (0, 0, 2));
    assert_eq!(rust.rt.metrics().remote_received.get(), 0);
    net.shutdown().await;
    rust.rt.shutdown();
}

/// One runtime with a pymfp peer (compat transport) and a native peer (the federation) at
/// once: each peer's channel goes through its own transport, and messages flow on both
/// together — pymfp's in, and the native peer's both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_has_a_pymfp_peer_and_a_native_peer_at_once() {
    use mfp_federation::control::Target;
    use mfp_federation::federation::{Federation, FederationConfig};

    let mut rust = rust_runtime();
    let (dep, inst) = RUST_RUNTIME.split_once('/').unwrap();
    let us = fed_support::Node { deployment: dep.as_bytes(), name: inst.as_bytes(), seed: 61 };
    assert_eq!(us.runtime_id(), rust_id());
    let native = fed_support::Node { deployment: dep.as_bytes(), name: b"native-node", seed: 62 };
    let rt_b = Runtime::builder(native.config()).tokio_handle(tokio::runtime::Handle::current()).build().unwrap();
    let (h_bob, mut inbox_b) = fed_support::recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();

    // The pymfp peer sends N messages; the native peer is federated meanwhile.
    let agent_hex = hex::encode(rust.agent.id().as_bytes());
    let mut py = PyPeer::start_with(&agent_hex, None, &["send", "--count", &N.to_string()]).await;
    let compat = rust.connect(&py, NOBODY, Bootstrap::Deterministic, true).await;
    let fed = Federation::start(
        &rust.rt,
        us.key(),
        FederationConfig::new(fed_support::net(63, true), vec![native.peer(None)]),
    )
    .await
    .unwrap();
    let fed_b = Federation::start(
        &rt_b,
        native.key(),
        FederationConfig::new(fed_support::net(64, false), vec![us.peer(fed.local_addr())]),
    )
    .await
    .unwrap();
    fed_b.wait_up(&rust_id()).await.unwrap();
    let ch_b = fed_b.open_channel(bob.id(), rust_id(), Target::Id(rust.agent.id()), DEPTH).await.unwrap();
    py.go(compat.local_addr().unwrap().port()).await;
    let n_native = 50usize;
    for i in 0..n_native {
        bob.send_async(ch_b, format!("from bob {i}").as_bytes()).await.unwrap();
        rust.agent.send_async(ch_b, format!("to bob {i}").as_bytes()).await.unwrap();
    }

    let (mut from_py, mut from_bob) = (Vec::new(), Vec::new());
    while from_py.len() < N || from_bob.len() < n_native {
        let d = rust.next().await;
        if d.sender_runtime == Some(pymfp_id()) {
            from_py.push(d);
        } else {
            assert_eq!(d.sender_runtime, Some(native.runtime_id()));
            from_bob.push(d);
        }
    }
    for (i, d) in from_py.iter().enumerate() {
        assert_eq!(d.step, i as u64);
        check(d, py.agent, &payload(i));
    }
    for (i, d) in from_bob.iter().enumerate() {
        assert_eq!((d.channel, d.step, d.sender), (ch_b, i as u64, bob.id()));
        assert_eq!(d.payload, format!("from bob {i}").as_bytes());
    }
    for (i, d) in fed_support::recv_n(&mut inbox_b, n_native).await.iter().enumerate() {
        assert_eq!(d.payload, format!("to bob {i}").as_bytes());
        assert_eq!(d.sender_runtime, Some(rust_id()));
    }
    let done = py.done().await;
    assert_eq!(done["step"].as_u64(), Some(N as u64));
    // Nothing of the native channel went through the compat transport.
    let s = compat.stats();
    assert_eq!((s.delivered, s.sent, s.refused()), (N as u64, 0, 0));
    assert_eq!(rust.rt.metrics().remote_received.get(), (N + n_native) as u64);

    fed_b.shutdown().await;
    fed.shutdown().await;
    compat.shutdown().await;
    rt_b.shutdown_async().await;
    rust.rt.shutdown_async().await;
}

/// At start, one warning per compat peer, saying it is unauthenticated; no key in the log.
#[test]
fn a_warning_names_every_compat_peer_at_start() {
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let secret = [0x3c; 32];
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let rust = rust_runtime();
            let ceremonial = Bootstrap::Ceremonial {
                local_secret: IdentityKey::from_secret_bytes(secret),
                peer_public: IdentityKey::from_secret_bytes([0x11; 32]).public(),
            };
            let peers = vec![
                CompatPeer::new("site/one", &format!("127.0.0.1:{NOBODY}"), Bootstrap::Deterministic).unwrap(),
                CompatPeer::new("site/two", &format!("127.0.0.1:{NOBODY}"), ceremonial).unwrap(),
            ];
            let net = CompatNetwork::start(&rust.rt, peers, CompatNetConfig::default()).await.unwrap();
            assert_eq!(net.stats().peers, 2);
            net.shutdown().await;
            rust.rt.shutdown();
        });
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN") && l.contains("UNAUTHENTICATED")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(warnings[0].contains("site/one") && warnings[0].contains("deterministic"), "{text}");
    assert!(warnings[1].contains("site/two") && warnings[1].contains("ceremonial"), "{text}");
    assert!(!text.contains(&hex::encode(secret)), "a secret key was logged");
}
