#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]
//! A runtime's federation after a reconnect: messages its peer sends before it has heard
//! this side's position (its sender raced the announcement — it happens when the peer's
//! link comes up before its federation has taken in the reconnect, or when the peer
//! restarted and sends what it sealed since) are dropped without counting against the
//! channel, and the resend from the announced position is delivered. Found by the
//! process-level crash test (`tests/tests/crash_federation.rs`): the early messages counted
//! as validation failures and quarantined the channel.
//!
//! The peer here is the test itself, speaking the protocol through a bare `Network`, so
//! the order of events on the wire is exactly the one the race produces.

use std::time::Duration;

use mfp_core::bilateral::BilateralState;
use mfp_core::testing::SplitMix64;
use mfp_core::{AgentId, ChannelId, RuntimeId};
use mfp_federation::control::Target;
use mfp_federation::federation::{FederatedPeer, Federation, FederationConfig};
use mfp_federation::net::{NetEvent, Network, PeerConfig, PeerHandle};
use mfp_federation::session::Event;
use mfp_federation::{IdentityKey, channel_chains};
use mfp_runtime::{AgentHandle, ChannelStatus, DeliveredMessage, Runtime, RuntimeConfig};
use tokio::sync::mpsc;

mod fed_support;

use fed_support::{BOUND, net};
const DEPTH: usize = 4;

fn runtime_id(name: &[u8]) -> RuntimeId {
    RuntimeId::derive(b"federation-resync-tests", name)
}

fn key(seed: u64) -> IdentityKey {
    IdentityKey::generate(&mut SplitMix64(seed)).unwrap()
}

/// The next session event of the test's network that `pick` accepts (others skipped).
async fn next<T>(rx: &mut mpsc::Receiver<NetEvent>, what: &str, mut pick: impl FnMut(&NetEvent) -> Option<T>) -> T {
    tokio::time::timeout(BOUND, async {
        loop {
            let ev = rx.recv().await.expect("network gone");
            if let Some(t) = pick(&ev) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} in time"))
}

/// The test's side of the channel: its outbound chain and what it sealed.
struct Sender {
    me: RuntimeId,
    channel: ChannelId,
    tx: BilateralState,
    sealed: Vec<Vec<u8>>,
}

impl Sender {
    /// Seals the next message (its payload names its step).
    fn seal(&mut self) {
        let step = self.sealed.len();
        let out = self.tx.seal_outbound(&self.me, &self.channel, DEPTH, format!("m{step}").as_bytes()).unwrap();
        self.tx = out.next;
        self.sealed.push(out.wire);
    }

    fn send(&self, link: &PeerHandle, steps: std::ops::RangeInclusive<usize>) {
        link.with_session(|s| {
            for step in steps {
                s.send_data(self.channel, self.sealed[step].clone()).unwrap();
            }
        })
        .unwrap();
    }
}

async fn delivered(rx: &mut mpsc::UnboundedReceiver<DeliveredMessage>, n: usize) -> Vec<DeliveredMessage> {
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, async {
        while out.len() < n {
            out.push(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} messages delivered", out.len()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_before_the_resync_do_not_quarantine_the_channel() {
    let (me, them) = (runtime_id(b"test"), runtime_id(b"runtime"));
    let (my_key, their_public) = (key(41), key(42).public());

    // The runtime under test listens; its agent bob records what it gets.
    let rt = Runtime::builder({
        let mut c = RuntimeConfig::default();
        c.deployment_id = b"federation-resync-tests".to_vec();
        c.instance_id = b"runtime".to_vec();
        c
    })
    .tokio_handle(tokio::runtime::Handle::current())
    .build()
    .unwrap();
    let (tx, mut inbox) = mpsc::unbounded_channel();
    let _bob: AgentHandle = rt.bind_named("bob", move |_, m| drop(tx.send(m))).unwrap();
    let fed = Federation::start(
        &rt,
        key(42),
        FederationConfig::new(
            net(1, true),
            vec![FederatedPeer::new(PeerConfig { runtime: me, endpoint: None, key: my_key.public() })],
        ),
    )
    .await
    .unwrap();

    // The test dials it and asks for a channel with bob.
    let peer = PeerConfig { runtime: them, endpoint: fed.local_addr().map(|a| a.to_string()), key: their_public };
    let (network, mut events) = Network::start(my_key, me, vec![peer], net(2, false)).await.unwrap();
    let link = network.peer(&them).unwrap();
    next(&mut events, "Up", |e| matches!(e, NetEvent::Up { .. }).then_some(())).await;
    let channel = ChannelId::from_bytes([7; 16]);
    let secret = [9u8; 32];
    link.with_session(|s| {
        s.open_channel(channel, DEPTH as u16, AgentId::from_bytes([1; 32]), Target::Name("bob".into()), secret)
    })
    .unwrap()
    .unwrap();
    next(&mut events, "ChannelAccepted", |e| {
        matches!(e, NetEvent::Session { event: Event::ChannelAccepted { .. }, .. }).then_some(())
    })
    .await;
    let (to_them, _) = channel_chains(&secret, &channel, &me, &them);
    let mut sender = Sender { me, channel, tx: to_them, sealed: Vec::new() };
    for _ in 0..=10 {
        sender.seal();
    }

    // Steps 0..=2 arrive; 3..=10 are sealed but lost with the link.
    sender.send(&link, 0..=2);
    assert_eq!(delivered(&mut inbox, 3).await.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
    link.with_session(|s| s.close()).unwrap();
    next(&mut events, "Down", |e| matches!(e, NetEvent::Down { .. }).then_some(())).await;
    next(&mut events, "Up again", |e| matches!(e, NetEvent::Up { .. }).then_some(())).await;

    // Before hearing the runtime's position, the test sends what it sealed last (more
    // messages than the validation failure threshold), as a racing sender does.
    sender.send(&link, 5..=10);
    let rx_next = next(&mut events, "Recovery", |e| match e {
        NetEvent::Session { event: Event::Recovery(r), .. } if r.channel == channel => Some(r.rx.step),
        _ => None,
    })
    .await;
    assert_eq!(rx_next, 3, "the runtime announces where it stands");
    // The resend from the announced position.
    sender.send(&link, 3..=10);
    let got = delivered(&mut inbox, 8).await;
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), (3..=10).collect::<Vec<u64>>());
    for m in &got {
        assert_eq!(m.payload, format!("m{}", m.step).as_bytes());
        assert!(!m.redelivered);
    }
    assert_eq!(rt.channel_info(&channel).unwrap().status, ChannelStatus::Active);
    next(&mut events, "Acked 11", |e| match e {
        NetEvent::Session { event: Event::Acked { channel: c, next: 11 }, .. } if *c == channel => Some(()),
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(inbox.try_recv().is_err(), "nothing is delivered twice");

    network.shutdown().await;
    fed.shutdown().await;
    rt.shutdown_async().await;
}
