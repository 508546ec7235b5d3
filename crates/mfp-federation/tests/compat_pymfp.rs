//! Live interop with a REAL pymfp 1.0.0 runtime (installed from PyPI into a venv under
//! `target/`) over 127.0.0.1, through the pymfp compat layer: the Rust side here is a plain
//! tokio TCP endpoint holding a [`CompatLink`] (the shared bilateral chain) and decoding the
//! byte stream with an [`EnvelopeStream`]. The Python side is `tests/pymfp/compat_peer.py`.
//!
//! 1. pymfp → mfp: pymfp's runtime sends N messages; the bytes from
//!    `_pending_wire_messages` are written to our listener; we receive all N, in order.
//! 2. mfp → pymfp (ceremonial bootstrap): we write N messages to pymfp's `start_federation`
//!    listener; pymfp's agent callable receives all N, in order.
//! 3. 100 request/reply rounds on one channel, the initiator alternating.
//! 4. Tampered bytes from pymfp (a frame bit, a ciphertext bit, a header step, a replay) are
//!    refused and counted, and the channel goes on; a tampered copy of a message pymfp
//!    already committed leaves the chains diverged, and the next genuine message is refused.
//!
//! Every wait is bounded (`LIMIT`); the child is killed when a test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

mod compat_common;

use compat_common::*;
use mfp_core::envelope::EnvelopeLimits;
use mfp_core::{AgentId, ChannelId};
use mfp_federation::compat::{
    Bootstrap, CompatChannel, CompatLink, CompatPeer, Delivery, EnvelopeStream, parse_public_key,
};
use mfp_federation::identity::IdentityKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Our side: the link with the pymfp peer whose agent is `py_agent`.
fn link(py_agent: AgentId, bootstrap: Bootstrap) -> CompatLink {
    let mut peer = CompatPeer::new(PYMFP_RUNTIME, "127.0.0.1:9876", bootstrap).unwrap();
    peer.add_channel(CompatChannel {
        id: ChannelId::from_bytes(CHANNEL),
        depth: DEPTH,
        local_agent: AgentId::from_bytes(RUST_AGENT),
        remote_agent: py_agent,
    })
    .unwrap();
    CompatLink::new(rust_id(), &peer, EnvelopeLimits::default()).unwrap()
}

/// Reads wire messages from a socket with an [`EnvelopeStream`]. `None` at a clean EOF.
struct Reader {
    sock: TcpStream,
    stream: EnvelopeStream,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl Reader {
    fn new(sock: TcpStream) -> Self {
        Self {
            sock,
            stream: EnvelopeStream::new(EnvelopeLimits::default()),
            buf: vec![0; 16 * 1024],
            pending: Default::default(),
        }
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            let n = tokio::time::timeout(LIMIT, self.sock.read(&mut self.buf)).await.expect("read timed out").unwrap();
            if n == 0 {
                assert!(!self.stream.has_partial(), "the peer closed in the middle of a message");
                return None;
            }
            self.pending.extend(self.stream.decode_all(&self.buf[..n]).expect("stream refused"));
        }
    }
}

async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(LIMIT, listener.accept()).await.expect("pymfp never connected").unwrap().0
}

fn check_delivery(d: &Delivery, py_agent: AgentId, want: &[u8]) {
    assert_eq!(d.payload, want);
    assert_eq!(d.from, py_agent);
    assert_eq!(d.to, AgentId::from_bytes(RUST_AGENT));
    assert_eq!(d.channel, ChannelId::from_bytes(CHANNEL));
}

fn hash_hex(link: &CompatLink) -> String {
    hex::encode(link.state().state_hash())
}

// ---- the scenarios ------------------------------------------------------------------------

const N: usize = 200;

#[tokio::test(flavor = "current_thread")]
async fn pymfp_sends_n_messages_to_mfp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let py = PyPeer::start(None, &["send", "--connect", &port, "--count", &N.to_string()]).await;
    let mut link = link(py.agent, Bootstrap::Deterministic);
    let mut reader = Reader::new(accept(&listener).await);
    let mut got = 0;
    while let Some(wire) = reader.next().await {
        let d = link.open(&wire).unwrap_or_else(|e| panic!("message {got} refused: {e}"));
        assert_eq!(d.step, got as u64);
        check_delivery(&d, py.agent, &payload(got));
        got += 1;
    }
    let done = py.done().await;
    assert_eq!(got, N);
    assert_eq!(link.counters().delivered, N as u64);
    assert_eq!(link.counters().rejected, 0);
    assert_eq!(done["step"].as_u64(), Some(N as u64));
    assert_eq!(done["state_hash"].as_str(), Some(hash_hex(&link).as_str()), "both chains end in the same state");
}

#[tokio::test(flavor = "current_thread")]
async fn mfp_sends_n_messages_to_pymfp_start_federation_ceremonial() {
    let ours = IdentityKey::from_secret_bytes(RUST_PRIVATE);
    let py_public = python_public();
    let our_public = hex::encode(ours.public().as_bytes());
    let py = PyPeer::start(Some((PY_PRIVATE, &our_public)), &["receive", "--count", &N.to_string()]).await;
    let bootstrap =
        Bootstrap::Ceremonial { local_secret: ours, peer_public: parse_public_key(PYMFP_RUNTIME, &py_public).unwrap() };
    let mut link = link(py.agent, bootstrap);
    let mut sock =
        tokio::time::timeout(LIMIT, TcpStream::connect(("127.0.0.1", py.port.unwrap()))).await.unwrap().unwrap();
    for i in 0..N {
        let wire = link.seal(&ChannelId::from_bytes(CHANNEL), &payload(i)).unwrap();
        sock.write_all(&wire).await.unwrap();
    }
    sock.flush().await.unwrap();
    // pymfp asserts the N payloads and their order itself; it reports the count and its chain.
    let done = py.done().await;
    assert_eq!(done["received"].as_u64(), Some(N as u64));
    assert_eq!(done["step"].as_u64(), Some(N as u64));
    assert_eq!(done["state_hash"].as_str(), Some(hash_hex(&link).as_str()));
    assert_eq!(link.counters().sent, N as u64);
}

const ROUNDS: usize = 100;

#[tokio::test(flavor = "current_thread")]
async fn alternating_request_reply_for_100_rounds() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let py = PyPeer::start(None, &["pingpong", "--connect", &port, "--rounds", &ROUNDS.to_string()]).await;
    let mut link = link(py.agent, Bootstrap::Deterministic);
    let mut out =
        tokio::time::timeout(LIMIT, TcpStream::connect(("127.0.0.1", py.port.unwrap()))).await.unwrap().unwrap();
    let mut reader = Reader::new(accept(&listener).await);
    let ch = ChannelId::from_bytes(CHANNEL);
    for r in 0..ROUNDS {
        let (request, reply) = (format!("request {r}").into_bytes(), format!("reply {r}").into_bytes());
        if r % 2 == 0 {
            out.write_all(&link.seal(&ch, &request).unwrap()).await.unwrap();
            let d = link.open(&reader.next().await.expect("pymfp closed early")).unwrap();
            check_delivery(&d, py.agent, &reply);
        } else {
            let d = link.open(&reader.next().await.expect("pymfp closed early")).unwrap();
            check_delivery(&d, py.agent, &request);
            out.write_all(&link.seal(&ch, &reply).unwrap()).await.unwrap();
        }
    }
    let done = py.done().await;
    assert_eq!(done["rounds"].as_u64(), Some(ROUNDS as u64));
    let c = link.counters();
    assert_eq!((c.sent, c.delivered, c.rejected), (ROUNDS as u64, ROUNDS as u64, 0));
    assert_eq!(link.state().step, 2 * ROUNDS as u64);
    assert_eq!(done["step"].as_u64(), Some(2 * ROUNDS as u64));
    assert_eq!(done["state_hash"].as_str(), Some(hash_hex(&link).as_str()));
}

#[tokio::test(flavor = "current_thread")]
async fn tampered_bytes_from_pymfp_are_refused_counted_and_the_channel_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let py = PyPeer::start(None, &["tamper", "--connect", &port]).await;
    let mut link = link(py.agent, Bootstrap::Deterministic);
    let mut reader = Reader::new(accept(&listener).await);
    let mut outcomes = Vec::new();
    while let Some(wire) = reader.next().await {
        outcomes.push(match link.open(&wire) {
            Ok(d) => ("delivered".to_string(), d.payload),
            Err(e) => (e.kind().to_string(), Vec::new()),
        });
    }
    let done = py.done().await;
    let sent = done["sent"].as_array().unwrap();
    let want: Vec<(String, Vec<u8>)> = sent
        .iter()
        .map(|s| {
            let expect = s["expect"].as_str().unwrap().to_string();
            let data =
                if expect == "delivered" { hex::decode(s["payload"].as_str().unwrap()).unwrap() } else { vec![] };
            (expect, data)
        })
        .collect();
    assert_eq!(outcomes, want, "what pymfp sent: {sent:?}");
    // The same, spelled out: three genuine messages got through around the tampered ones.
    let delivered: Vec<&[u8]> = outcomes.iter().filter(|o| o.0 == "delivered").map(|o| o.1.as_slice()).collect();
    assert_eq!(delivered, [b"genuine 0".as_slice(), b"genuine 1", b"genuine 2"]);
    let c = link.counters();
    assert_eq!((c.rejected_frame, c.rejected_decode, c.rejected_step, c.rejected_other), (1, 2, 3, 0));
    assert_eq!((c.delivered, c.rejected), (3, 6));
    // Our chain stopped before the message pymfp committed and we refused; pymfp went on
    // alone and is two steps ahead: the chains have diverged for good.
    assert_eq!(link.state().step, 3);
    assert_eq!(done["step"].as_u64(), Some(5));
}
