//! Helpers of the transport tests: identities, short-timer configurations, two networks
//! linked over 127.0.0.1, event waits bounded in time, RSS, a byte-recording proxy.
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_core::testing::SplitMix64;
use mfp_federation::IdentityKey;
use mfp_federation::handshake::{Initiator, LocalIdentity, Timestamp};
use mfp_federation::net::{NetConfig, NetEvent, Network, PeerConfig, PeerHandle, SharedEntropy};
use mfp_federation::session::SessionConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Upper bound of every wait in these tests (a safety net: the tests wait for signals).
pub const BOUND: Duration = Duration::from_secs(10);

pub struct Id {
    pub runtime: RuntimeId,
    pub seed: u64,
}

impl Id {
    pub fn new(name: &[u8], seed: u64) -> Self {
        Self { runtime: RuntimeId::derive(b"net-tests", name), seed }
    }

    pub fn key(&self) -> IdentityKey {
        IdentityKey::generate(&mut SplitMix64(self.seed)).unwrap()
    }

    pub fn local(&self) -> LocalIdentity {
        LocalIdentity { runtime: self.runtime, key: self.key() }
    }

    pub fn peer(&self, endpoint: Option<SocketAddr>) -> PeerConfig {
        PeerConfig { runtime: self.runtime, endpoint: endpoint.map(|a| a.to_string()), key: self.key().public() }
    }
}

/// Two runtimes, `low` with the lower runtime id.
pub fn two_ids() -> (Id, Id) {
    let a = Id::new(b"a", 11);
    let b = Id::new(b"b", 12);
    if a.runtime < b.runtime { (a, b) } else { (b, a) }
}

/// Short timers: keepalive 100 ms, handshake and read timeouts 1 s (2 s for a genuine
/// handshake, which is slow in a debug build on a loaded machine). The idle timeout is
/// 5 s: a link that only has to stay up must not go down because the whole process was
/// descheduled for a moment (two networks and the test share it); a test of the idle
/// timeout itself sets its own.
pub fn cfg(seed: u64) -> NetConfig {
    let mut c = NetConfig::default();
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.session = SessionConfig {
        keepalive: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(5),
        ..SessionConfig::default()
    };
    c.handshake_timeout = Duration::from_secs(2);
    c.read_timeout = Duration::from_secs(1);
    c.write_timeout = Duration::from_secs(2);
    c.dial_backoff_initial = Duration::from_millis(20);
    c.dial_backoff_max = Duration::from_millis(200);
    c.shutdown_timeout = Duration::from_secs(1);
    c.entropy = SharedEntropy::new(SplitMix64(seed));
    c
}

pub async fn start(id: &Id, peers: Vec<PeerConfig>, cfg: NetConfig) -> (Network, mpsc::Receiver<NetEvent>) {
    Network::start(id.key(), id.runtime, peers, cfg).await.unwrap()
}

/// Waits for the first event matching `pred`, returning the events seen before it too.
pub async fn wait_for(
    rx: &mut mpsc::Receiver<NetEvent>,
    what: &str,
    pred: impl Fn(&NetEvent) -> bool,
) -> (NetEvent, Vec<NetEvent>) {
    let mut before = Vec::new();
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let ev = rx.recv().await.expect("event channel closed");
            if pred(&ev) {
                return ev;
            }
            before.push(ev);
        }
    })
    .await;
    match found {
        Ok(ev) => (ev, before),
        Err(_) => panic!("no {what} event within {BOUND:?}; saw {before:?}"),
    }
}

pub fn is_up(ev: &NetEvent) -> bool {
    matches!(ev, NetEvent::Up { .. })
}

pub fn is_down(ev: &NetEvent) -> bool {
    matches!(ev, NetEvent::Down { .. })
}

/// Every event queued now.
pub fn drain(rx: &mut mpsc::Receiver<NetEvent>) -> Vec<NetEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

/// Both ends are up and keep exchanging bytes (keepalives): each side's byte counters
/// grow in both directions.
pub async fn assert_link_alive(x: &PeerHandle, y: &PeerHandle) {
    assert!(x.is_up() && y.is_up(), "link is down: {x:?} {y:?}");
    let (x0, y0) = (x.stats(), y.stats());
    let grown = tokio::time::timeout(BOUND, async {
        loop {
            let (x1, y1) = (x.stats(), y.stats());
            if x1.bytes_in > x0.bytes_in
                && x1.bytes_out > x0.bytes_out
                && y1.bytes_in > y0.bytes_in
                && y1.bytes_out > y0.bytes_out
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(grown.is_ok(), "no traffic on the link within {BOUND:?}");
    assert!(x.is_up() && y.is_up());
    assert!(!x.with_session(|s| s.is_closed()).unwrap());
}

/// The process's resident set size, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Reads until the other side closes; returns how many bytes came. Panics if it stays
/// open beyond the bound.
pub async fn read_until_closed(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the listener kept the connection open beyond {BOUND:?}");
    total
}

/// A well-formed message 1 from `from` to `to` (with `from`'s key and a given time).
pub fn message_one(from: &Id, to: &Id, secs: u64) -> Vec<u8> {
    let ts = Timestamp::from_unix(Duration::from_secs(1_800_000_000 + secs));
    let (_, bytes) = Initiator::start(&from.local(), to.runtime, to.key().public(), ts, &mut SplitMix64(secs)).unwrap();
    bytes
}

/// A TCP proxy in front of `target`: forwards every connection it accepts, and records
/// the first `record` bytes the first client sent.
pub struct Recorder {
    pub addr: SocketAddr,
    pub recorded: Arc<std::sync::Mutex<Vec<u8>>>,
}

pub async fn recording_proxy(target: SocketAddr, record: usize) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = recorded.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else { return };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        {
                            let mut r = rec.lock().unwrap();
                            let room = record.saturating_sub(r.len());
                            r.extend_from_slice(&buf[..n.min(room)]);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Recorder { addr, recorded }
}

/// A genuine pair: `low` listens, `high` dials it (through `via` if given) and listens
/// too (nobody dials it).
pub struct Pair {
    pub low: Id,
    pub high: Id,
    pub ln: Network,
    pub lrx: mpsc::Receiver<NetEvent>,
    pub hn: Network,
    pub hrx: mpsc::Receiver<NetEvent>,
    /// The proxy the dialer went through, if any.
    pub recorder: Option<Recorder>,
}

impl Pair {
    /// `record`: the dialer goes through a [`Recorder`] keeping its first bytes.
    pub async fn up_with(low_cfg: NetConfig, record: bool) -> Self {
        let (low, high) = two_ids();
        let (ln, mut lrx) = start(&low, vec![high.peer(None)], low_cfg).await;
        let mut target = ln.local_addr().unwrap();
        let mut recorder = None;
        if record {
            let r = recording_proxy(target, 4096).await;
            target = r.addr;
            recorder = Some(r);
        }
        let (hn, mut hrx) = start(&high, vec![low.peer(Some(target))], cfg(2)).await;
        wait_for(&mut lrx, "Up (listener)", is_up).await;
        wait_for(&mut hrx, "Up (dialer)", is_up).await;
        Self { low, high, ln, lrx, hn, hrx, recorder }
    }

    pub async fn up(low_cfg: NetConfig) -> Self {
        Self::up_with(low_cfg, false).await
    }

    /// Handles on the link from both ends: (the listener's view, the dialer's view).
    pub fn handles(&self) -> (PeerHandle, PeerHandle) {
        (self.ln.peer(&self.high.runtime).unwrap(), self.hn.peer(&self.low.runtime).unwrap())
    }

    /// The link is still up, carries traffic, and neither side saw it go down.
    pub async fn assert_alive(&mut self) {
        let (l, h) = self.handles();
        assert_link_alive(&l, &h).await;
        let downs: Vec<_> = drain(&mut self.lrx).into_iter().chain(drain(&mut self.hrx)).filter(is_down).collect();
        assert!(downs.is_empty(), "the genuine link went down: {downs:?}");
        assert_eq!(self.ln.stats().snapshot().sessions_established, 1);
        assert_eq!(self.hn.stats().snapshot().sessions_established, 1);
    }
}
