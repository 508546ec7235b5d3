//! Setup shared by the tests that run two federated runtimes in one process over
//! 127.0.0.1: the runtimes' identities and keys, a network configuration with short
//! timeouts, a recording handler, and bounded waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_core::testing::SplitMix64;
use mfp_federation::IdentityKey;
use mfp_federation::federation::FederatedPeer;
use mfp_federation::net::{NetConfig, PeerConfig, SharedEntropy};
use mfp_federation::session::SessionConfig;
use mfp_runtime::{AgentHandle, DeliveredMessage, RuntimeConfig};
use tokio::sync::mpsc;

/// Upper bound of every wait of these tests.
pub(crate) const BOUND: Duration = Duration::from_secs(15);

/// One test runtime: its identity derives from `deployment` and `name`, its key from `seed`.
pub(crate) struct Node {
    pub deployment: &'static [u8],
    pub name: &'static [u8],
    pub seed: u64,
}

impl Node {
    pub(crate) fn runtime_id(&self) -> RuntimeId {
        RuntimeId::derive(self.deployment, self.name)
    }

    pub(crate) fn key(&self) -> IdentityKey {
        IdentityKey::generate(&mut SplitMix64(self.seed)).unwrap()
    }

    /// The runtime's configuration (its identity; sends wait at most 5 s).
    pub(crate) fn config(&self) -> RuntimeConfig {
        let mut c = RuntimeConfig::default();
        c.deployment_id = self.deployment.to_vec();
        c.instance_id = self.name.to_vec();
        c.pipeline_timeout = Duration::from_secs(5);
        c
    }

    /// This runtime as another's peer, dialled at `endpoint` (or waited for).
    pub(crate) fn peer(&self, endpoint: Option<std::net::SocketAddr>) -> FederatedPeer {
        FederatedPeer::new(PeerConfig {
            runtime: self.runtime_id(),
            endpoint: endpoint.map(|a| a.to_string()),
            key: self.key().public(),
        })
    }
}

/// A network configuration with short keepalive and backoff times, deterministic entropy
/// from `seed`, listening on 127.0.0.1 (port 0) if `listen`. The idle timeout is long
/// (10 s): both runtimes share the test's process, and a stall of it on a loaded machine
/// must not take the link down (the senders would then open the peer's breaker); these
/// tests take links down by shutting a side down.
pub(crate) fn net(seed: u64, listen: bool) -> NetConfig {
    let mut c = NetConfig::default();
    if listen {
        c.listen = Some("127.0.0.1:0".parse().unwrap());
    }
    c.session = SessionConfig {
        keepalive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(10),
        ..SessionConfig::default()
    };
    c.dial_backoff_initial = Duration::from_millis(20);
    c.dial_backoff_max = Duration::from_millis(200);
    c.shutdown_timeout = Duration::from_secs(1);
    c.entropy = SharedEntropy::new(SplitMix64(seed));
    c
}

/// What a recording handler received.
pub(crate) type Inbox = mpsc::UnboundedReceiver<DeliveredMessage>;

/// A handler that records every message it gets.
pub(crate) fn recorder() -> (impl Fn(&AgentHandle, DeliveredMessage) + Send + Sync + 'static, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (move |_: &AgentHandle, m| drop(tx.send(m)), rx)
}

/// The next `n` messages of `rx` (fails after [`BOUND`]).
pub(crate) async fn recv_n(rx: &mut Inbox, n: usize) -> Vec<DeliveredMessage> {
    let mut out = Vec::with_capacity(n);
    tokio::time::timeout(BOUND, async {
        while out.len() < n {
            out.push(rx.recv().await.expect("handler gone"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("received {} of {n} messages", out.len()));
    out
}

/// Waits (at most [`BOUND`]) until `cond` holds, polling.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not in time"));
}
