#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]
//! Two runtimes federated over 127.0.0.1: channel agreement, messages both ways, and a
//! restart of one side from its storage while the other keeps sending.

use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_federation::control::{RefuseReason, Target};
use mfp_federation::federation::{AcceptPolicy, Federation, FederationConfig, FederationError};
use mfp_runtime::storage::{MemoryStorage, Storage};
use mfp_runtime::{AgentHandle, ChannelId, Runtime};

mod fed_support;

use fed_support::{BOUND, Node, net as net_on, recorder, recv_n};

const A: Node = Node { deployment: b"federation-tests", name: b"a", seed: 21 };
const B: Node = Node { deployment: b"federation-tests", name: b"b", seed: 22 };

/// Every runtime here listens.
fn net(seed: u64) -> mfp_federation::net::NetConfig {
    net_on(seed, true)
}

fn runtime(node: &Node, storage: Option<MemoryStorage>) -> Runtime {
    let mut b = Runtime::builder(node.config()).tokio_handle(tokio::runtime::Handle::current());
    if let Some(s) = storage {
        b = b.storage(s);
    }
    b.build().unwrap()
}

/// Waits until `rt` has every message of `channel` acknowledged by the peer.
async fn all_acked(rt: &Runtime, peer: &RuntimeId, channel: ChannelId) {
    let h = rt.remote_handle();
    tokio::time::timeout(BOUND, async {
        loop {
            let pos = h.positions(peer).unwrap();
            if pos.iter().any(|p| p.channel == channel && p.acked == p.tx_next) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("acknowledgements did not arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_by_name_carries_messages_both_ways_in_order() {
    let rt_a = runtime(&A, None);
    let rt_b = runtime(&B, None);
    let (h_alice, mut inbox_a) = recorder();
    let alice = rt_a.bind_named("alice", h_alice).unwrap();
    let (h_bob, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();

    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(1), vec![B.peer(None)])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(2), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();

    let ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
    // Both ends list it with the peer runtime.
    let info_b = bob.channels().unwrap();
    assert_eq!(info_b[0].channel_id, ch);
    assert_eq!(info_b[0].peer, alice.id());
    assert_eq!(info_b[0].peer_runtime, Some(A.runtime_id()));
    assert_eq!(alice.channels().unwrap()[0].peer_runtime, Some(B.runtime_id()));

    let n = 300usize;
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(bob.send_async(ch, format!("b{i}").as_bytes()).await.unwrap());
    }
    for i in 0..n {
        alice.send_async(ch, format!("a{i}").as_bytes()).await.unwrap();
    }
    let at_a = recv_n(&mut inbox_a, n).await;
    let at_b = recv_n(&mut inbox_b, n).await;
    for (i, (m, r)) in at_a.iter().zip(&receipts).enumerate() {
        assert_eq!(m.payload, format!("b{i}").as_bytes());
        assert_eq!(m.step, i as u64);
        assert_eq!(m.sender, bob.id());
        assert_eq!(m.sender_runtime, Some(B.runtime_id()));
        assert_eq!(m.message_id, r.message_id);
    }
    for (i, m) in at_b.iter().enumerate() {
        assert_eq!(m.payload, format!("a{i}").as_bytes());
    }
    all_acked(&rt_b, &A.runtime_id(), ch).await;
    all_acked(&rt_a, &B.runtime_id(), ch).await;

    // Closing on one side closes on the other.
    rt_b.close_channel_async(&ch).await.unwrap();
    tokio::time::timeout(BOUND, async {
        while rt_a.channel_info(&ch).is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the close did not reach the peer");

    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_reason() {
    let rt_a = runtime(&A, None);
    let rt_b = runtime(&B, None);
    let (h, _inbox) = recorder();
    let _alice = rt_a.bind_named("alice", h).unwrap();
    let (h, _inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h).unwrap();
    let mut peer_b = B.peer(None);
    peer_b.accept = AcceptPolicy::Named(vec!["nobody-here".into()]);
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(3), vec![peer_b])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(4), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let unknown = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("carol".into()), 4).await;
    assert!(matches!(unknown, Err(FederationError::Refused { reason: RefuseReason::UnknownAgent, .. })), "{unknown:?}");
    let denied = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await;
    assert!(matches!(denied, Err(FederationError::Refused { reason: RefuseReason::NotAllowed, .. })), "{denied:?}");
    assert!(bob.channels().is_err() || bob.channels().unwrap().is_empty(), "no channel was opened");
    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_resumes_from_storage_with_nothing_lost_or_doubled() {
    let store_b = MemoryStorage::new();
    let rt_a = runtime(&A, Some(MemoryStorage::new()));
    let (h_alice, mut inbox_a) = recorder();
    let _alice = rt_a.bind_named("alice", h_alice).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(5), vec![B.peer(None)])).await.unwrap();
    let addr_a = fed_a.local_addr();

    let total = 400usize;
    let ch;
    {
        let rt_b = runtime(&B, Some(store_b.clone()));
        let (h_bob, _inbox_b) = recorder();
        let bob = rt_b.bind_named("bob", h_bob).unwrap();
        let fed_b =
            Federation::start(&rt_b, B.key(), FederationConfig::new(net(6), vec![A.peer(addr_a)])).await.unwrap();
        fed_b.wait_up(&A.runtime_id()).await.unwrap();
        ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
        for i in 0..total / 2 {
            bob.send_async(ch, &(i as u32).to_be_bytes()).await.unwrap();
        }
        // Stop abruptly: whatever is in flight and not acknowledged stays in B's log.
        drop(fed_b);
        rt_b.shutdown_async().await;
    }
    {
        let rt_b = runtime(&B, Some(store_b.clone()));
        let (h_bob, _inbox_b) = recorder();
        let bob = rt_b.attach_named("bob", h_bob).unwrap();
        let fed_b =
            Federation::start(&rt_b, B.key(), FederationConfig::new(net(7), vec![A.peer(addr_a)])).await.unwrap();
        // Sends before the link is up wait for it, but only until the peer's circuit breaker
        // opens (five failed attempts): on a loaded machine the handshake can take longer.
        fed_b.wait_up(&A.runtime_id()).await.unwrap();
        for i in total / 2..total {
            bob.send_async(ch, &(i as u32).to_be_bytes()).await.unwrap();
        }
        let got = recv_n(&mut inbox_a, total).await;
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.payload, (i as u32).to_be_bytes(), "message {i} out of order or doubled");
            assert_eq!(m.step, i as u64);
        }
        all_acked(&rt_b, &A.runtime_id(), ch).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(inbox_a.try_recv().is_err(), "nothing is delivered twice");
        fed_b.shutdown().await;
        rt_b.shutdown_async().await;
    }
    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_rotate_by_count_and_on_demand_while_messages_flow() {
    let rt_a = runtime(&A, Some(MemoryStorage::new()));
    let rt_b = runtime(&B, Some(MemoryStorage::new()));
    let (h_alice, mut inbox_a) = recorder();
    let alice = rt_a.bind_named("alice", h_alice).unwrap();
    let (h_bob, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();
    let mut cfg_a = FederationConfig::new(net(8), vec![B.peer(None)]);
    cfg_a.rotate_after_messages = 40;
    let fed_a = Federation::start(&rt_a, A.key(), cfg_a).await.unwrap();
    let mut cfg_b = FederationConfig::new(net(9), vec![A.peer(fed_a.local_addr())]);
    cfg_b.rotate_after_messages = 40;
    let fed_b = Federation::start(&rt_b, B.key(), cfg_b).await.unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
    let n = 400usize;
    for round in 0..4 {
        for i in 0..n / 4 {
            let k = round * n / 4 + i;
            bob.send_async(ch, format!("b{k}").as_bytes()).await.unwrap();
            alice.send_async(ch, format!("a{k}").as_bytes()).await.unwrap();
        }
        // Acknowledgements trigger the count rotation: let them come.
        all_acked(&rt_b, &A.runtime_id(), ch).await;
        all_acked(&rt_a, &B.runtime_id(), ch).await;
    }
    let at_a = recv_n(&mut inbox_a, n).await;
    let at_b = recv_n(&mut inbox_b, n).await;
    for (i, (x, y)) in at_a.iter().zip(&at_b).enumerate() {
        assert_eq!(x.payload, format!("b{i}").as_bytes());
        assert_eq!(y.payload, format!("a{i}").as_bytes());
    }
    // And one on demand, once the peer has acknowledged a message under the last one.
    // (An automatic one may just have happened: then one more message first.)
    let mut extra = 0;
    let before = loop {
        alice.send_async(ch, b"before").await.unwrap();
        extra += 1;
        all_acked(&rt_a, &B.runtime_id(), ch).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = rt_a.metrics().remote_rotations.get();
        match fed_a.rotate(&ch) {
            Ok(()) => break before,
            Err(FederationError::Invalid(_)) if extra < 10 => {}
            Err(e) => panic!("rotate: {e}"),
        }
    };
    // A second request while one is under way is refused.
    assert!(matches!(fed_a.rotate(&ch), Err(FederationError::Invalid(_))));
    for i in 0..20 {
        alice.send_async(ch, format!("after{i}").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let after = recv_n(&mut inbox_b, 20 + extra).await;
    assert_eq!(after[19 + extra].payload, b"after19");
    assert!(rt_a.metrics().remote_rotations.get() > before, "the operator's rotation happened");
    // Each side rotated its outbound chain several times and saw the peer's rotations.
    let (ra, rb) = (rt_a.metrics().remote_rotations.get(), rt_b.metrics().remote_rotations.get());
    assert!(ra >= 4 && rb >= 4, "rotations: a {ra}, b {rb}");
    assert_eq!(rt_a.metrics().remote_rejected.get() + rt_b.metrics().remote_rejected.get(), 0);
    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_opens_its_breaker_and_sends_fail_at_once() {
    // A knows B, B never comes: A's channel to it exists (restored or agreed earlier), the
    // link never comes up.
    let rt_a = runtime(&A, None);
    let (h, _inbox) = recorder();
    let alice = rt_a.bind_named("alice", h).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(10), vec![B.peer(None)])).await.unwrap();
    let ch = ChannelId::from_bytes([4; 16]);
    let (a_id, b_id) = (A.runtime_id(), B.runtime_id());
    let (to_b, from_b) = mfp_federation::channel_chains(&[1; 32], &ch, &a_id, &b_id);
    rt_a.remote_handle()
        .establish_async(alice.id(), mfp_runtime::remote::RemoteEnd::new(b_id, alice.id()), ch, 4, {
            mfp_runtime::remote::Chains::Split { tx: to_b, rx: from_b }
        })
        .await
        .unwrap();
    // The first send keeps trying while the link is down, and the breaker opens under it.
    let first = alice.send_async(ch, b"x").await.unwrap_err();
    assert!(matches!(first, mfp_runtime::Error::PeerUnavailable { .. }), "{first}");
    // The next ones are refused by the open breaker, without waiting for the link.
    for _ in 0..3 {
        match alice.send_async(ch, b"y").await.unwrap_err() {
            mfp_runtime::Error::PeerUnavailable { reason, .. } => {
                assert!(reason.contains("circuit breaker"), "{reason}")
            }
            other => panic!("{other}"),
        }
    }
    // Nothing was sealed: the chain did not move.
    assert_eq!(rt_a.remote_handle().positions(&b_id).unwrap()[0].tx_next, 0);
    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_sending_into_a_full_session_lose_no_message() {
    // A session that queues two messages at most: nearly every send finds it full, its
    // channel waits for a resync pass, and the requests for those passes far outnumber
    // what the peer's work queue holds. Every message must still go out.
    let unlimited = |node: &Node| {
        let cfg = {
            let mut c = node.config();
            c.max_message_rate = 0;
            // 64 senders share two places in the session: one of them may wait for its
            // turn far longer than the usual 5 s on a loaded machine. What is tested is
            // that no message is lost, not how long a send waits.
            c.pipeline_timeout = BOUND;
            c
        };
        Runtime::builder(cfg).tokio_handle(tokio::runtime::Handle::current()).build().unwrap()
    };
    let rt_a = unlimited(&A);
    let rt_b = unlimited(&B);
    let (h_alice, mut inbox_a) = recorder();
    let _alice = rt_a.bind_named("alice", h_alice).unwrap();
    let (h_bob, _inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(8), vec![B.peer(None)])).await.unwrap();
    let mut net_b = net(9);
    net_b.session.max_queued_messages = 2;
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net_b, vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let (channels, senders_per_channel, per_sender) = (32usize, 2usize, 100usize);
    let mut chans = Vec::new();
    for _ in 0..channels {
        chans.push(fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for &ch in &chans {
        for _ in 0..senders_per_channel {
            let bob = bob.clone();
            tasks.spawn(async move {
                for i in 0..per_sender {
                    bob.send_async(ch, &[i as u8; 256]).await.unwrap();
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let per_channel = senders_per_channel * per_sender;
    let got = recv_n(&mut inbox_a, channels * per_channel).await;
    for &ch in &chans {
        let steps: Vec<u64> = got.iter().filter(|m| m.channel == ch).map(|m| m.step).collect();
        assert_eq!(steps, (0..per_channel as u64).collect::<Vec<_>>(), "channel {ch:?}: every step once, in order");
    }
    for &ch in &chans {
        all_acked(&rt_b, &A.runtime_id(), ch).await;
    }
    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_larger_than_a_link_frame_is_refused_before_sealing() {
    // One byte more than a link frame carries at the channel's depth: the send fails at
    // once, nothing is sealed, and the channel goes on carrying messages that fit.
    let reject = |node: &Node| {
        let cfg = {
            let mut c = node.config();
            c.backpressure = mfp_runtime::Backpressure::Reject;
            c.max_payload_size = 1 << 20;
            c
        };
        Runtime::builder(cfg).tokio_handle(tokio::runtime::Handle::current()).build().unwrap()
    };
    let rt_a = reject(&A);
    let rt_b = reject(&B);
    let (h_alice, mut inbox_a) = recorder();
    let _alice = rt_a.bind_named("alice", h_alice).unwrap();
    let (h_bob, _inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(10), vec![B.peer(None)])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(11), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
    let fits = mfp_federation::session::max_payload(4);
    let too_large = bob.send_async(ch, &vec![1u8; fits + 1]).await;
    assert!(matches!(too_large, Err(mfp_runtime::Error::PeerUnavailable { .. })), "{too_large:?}");
    let r = bob.send_async(ch, &vec![2u8; fits]).await.unwrap();
    assert_eq!(r.step, 0, "the refused message used no step of the chain");
    bob.send_async(ch, b"after").await.unwrap();
    let got = recv_n(&mut inbox_a, 2).await;
    assert_eq!(got[0].payload.len(), fits);
    assert_eq!(got[1].payload, b"after");
    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_remembers_handshake_timestamps_across_a_restart() {
    let store_a = MemoryStorage::new();
    let stored = {
        let rt_a = runtime(&A, Some(store_a.clone()));
        let (h, _i) = recorder();
        let _alice = rt_a.bind_named("alice", h).unwrap();
        let fed_a =
            Federation::start(&rt_a, A.key(), FederationConfig::new(net(11), vec![B.peer(None)])).await.unwrap();
        let rt_b = runtime(&B, None);
        let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(12), vec![A.peer(fed_a.local_addr())]))
            .await
            .unwrap();
        fed_a.wait_up(&B.runtime_id()).await.unwrap();
        // A answered B's message 1: the timestamp it accepted goes to A's storage.
        let row = tokio::time::timeout(BOUND, async {
            loop {
                if let Some(r) = rt_a.remote_handle().peers().unwrap().into_iter().find(|r| r.runtime == B.runtime_id())
                {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the timestamp was not stored");
        assert!(row.handshake_secs > 1_700_000_000, "a wall-clock timestamp");
        fed_b.shutdown().await;
        fed_a.shutdown().await;
        rt_b.shutdown_async().await;
        rt_a.shutdown_async().await;
        row
    };
    let snap = mfp_runtime::storage::Storage::load(&store_a).unwrap().unwrap();
    assert_eq!(snap.peers, vec![stored]);
    // Restarted from storage, the listener starts from that timestamp: a recorded message 1
    // (which carries at most it) stays refused.
    let rt_a = runtime(&A, Some(store_a));
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(13), vec![B.peer(None)])).await.unwrap();
    let seeded = fed_a.handshake_timestamps();
    assert_eq!(seeded.len(), 1);
    assert_eq!(seeded[0].0, B.runtime_id());
    assert_eq!((seeded[0].1.secs, seeded[0].1.nanos), (stored.handshake_secs, stored.handshake_nanos));
    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
}

/// A store that, while held, keeps every batch pending (in order) until released; what it
/// lets through goes to a `MemoryStorage`.
#[derive(Clone, Default)]
struct HeldStore(std::sync::Arc<std::sync::Mutex<HeldQueue>>, MemoryStorage);

#[derive(Default)]
struct HeldQueue {
    held: bool,
    pending: Vec<(Vec<mfp_runtime::storage::StorageOp>, mfp_runtime::storage::TicketSender)>,
}

impl HeldStore {
    fn hold(&self) {
        self.0.lock().unwrap().held = true;
    }

    /// Pending batches that advance an inbound chain.
    fn pending_ingests(&self) -> usize {
        let q = self.0.lock().unwrap();
        q.pending
            .iter()
            .filter(|(ops, _)| {
                ops.iter().any(|op| matches!(op, mfp_runtime::storage::StorageOp::AdvanceRemoteRx { .. }))
            })
            .count()
    }

    fn release(&self) {
        let mut q = self.0.lock().unwrap();
        q.held = false;
        for (ops, done) in q.pending.drain(..) {
            done.complete(self.1.apply(ops).wait());
        }
    }
}

impl Storage for HeldStore {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, mfp_runtime::storage::StorageError> {
        self.1.load()
    }

    fn apply(&self, ops: Vec<mfp_runtime::storage::StorageOp>) -> mfp_runtime::storage::Ticket {
        let mut q = self.0.lock().unwrap();
        if q.held {
            let (done, ticket) = mfp_runtime::storage::Ticket::pending();
            q.pending.push((ops, done));
            ticket
        } else {
            self.1.apply(ops)
        }
    }
}

/// With storage, inbound messages of different channels are ingested together: the second
/// channel's message is submitted to storage while the first one's commit is still pending
/// (their commits can share a transaction), and both are delivered once they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_messages_of_different_channels_commit_together() {
    let store_a = HeldStore::default();
    let rt_a = Runtime::builder(A.config())
        .tokio_handle(tokio::runtime::Handle::current())
        .storage(store_a.clone())
        .build()
        .unwrap();
    let rt_b = runtime(&B, Some(MemoryStorage::new()));
    let (h_alice, mut inbox_a) = recorder();
    let _alice = rt_a.bind_named("alice", h_alice).unwrap();
    let bob = rt_b.bind_named("bob", |_: &AgentHandle, _| {}).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(5), vec![B.peer(None)])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(6), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let ch1 = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
    let ch2 = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();

    store_a.hold();
    bob.send_async(ch1, b"one").await.unwrap();
    bob.send_async(ch2, b"two").await.unwrap();
    tokio::time::timeout(BOUND, async {
        while store_a.pending_ingests() < 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the second channel's message waited for the first one's commit");
    assert!(inbox_a.try_recv().is_err(), "nothing is delivered before its commit");
    store_a.release();
    let got = recv_n(&mut inbox_a, 2).await;
    let mut by_channel: Vec<_> = got.iter().map(|m| (m.channel, m.payload.clone())).collect();
    by_channel.sort();
    let mut want = vec![(ch1, b"one".to_vec()), (ch2, b"two".to_vec())];
    want.sort();
    assert_eq!(by_channel, want);
    all_acked(&rt_b, &A.runtime_id(), ch1).await;
    all_acked(&rt_b, &A.runtime_id(), ch2).await;

    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

/// The acceptor of a channel does not send on it before the opener confirmed it stored it:
/// while the opener's commit of the channel is held, the acceptor's send is refused
/// (`backpressure: reject`; with `wait` it would wait), no receipt given; once the opener
/// stored the channel and confirmed, the send goes through and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptor_sends_only_once_the_opener_stored_the_channel() {
    let config_a = {
        let mut c = A.config();
        c.backpressure = mfp_runtime::Backpressure::Reject;
        c
    };
    let rt_a = Runtime::builder(config_a).tokio_handle(tokio::runtime::Handle::current()).build().unwrap();
    let store_b = HeldStore::default();
    let rt_b = Runtime::builder(B.config())
        .tokio_handle(tokio::runtime::Handle::current())
        .storage(store_b.clone())
        .build()
        .unwrap();
    let alice = rt_a.bind_named("alice", |_: &AgentHandle, _| {}).unwrap();
    let (h_bob, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(7), vec![B.peer(None)])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(8), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();

    store_b.hold();
    let fed_b = std::sync::Arc::new(fed_b);
    // The acceptor has the channel as soon as it accepted.
    let (opening, ch) = open_from_b(&fed_b, bob.id(), &alice).await;
    let early = alice.send_async(ch, b"early").await;
    assert!(
        matches!(early, Err(mfp_runtime::Error::PeerUnavailable { .. })),
        "a send before the opener stored the channel: {early:?}"
    );
    assert!(!opening.is_finished());

    store_b.release();
    assert_eq!(opening.await.unwrap().unwrap(), ch);
    tokio::time::timeout(BOUND, async {
        while alice.send_async(ch, b"after").await.is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the acceptor could not send after the confirmation");
    let got = recv_n(&mut inbox_b, 1).await;
    assert_eq!(got[0].payload, b"after");

    fed_a.shutdown().await;
    if let Ok(fed_b) = std::sync::Arc::try_unwrap(fed_b) {
        fed_b.shutdown().await;
    }
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

/// Without storage, the link's task ingests a message itself when it can at once; one that
/// must wait for room in a full mailbox goes to the peer's task, and every message behind
/// it follows it there: none overtakes it (which the runtime would refuse as a step out of
/// order, counting a validation failure against the channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_behind_one_that_waits_for_a_full_mailbox_keep_their_order() {
    let rt_a = Runtime::builder({
        let mut c = A.config();
        c.mailbox_capacity = 2;
        c
    })
    .tokio_handle(tokio::runtime::Handle::current())
    .build()
    .unwrap();
    let rt_b = runtime(&B, None);
    // Alice's handler holds each message until the test lets it go.
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate_rx = std::sync::Mutex::new(gate_rx);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _alice = rt_a
        .bind_named("alice", move |_: &AgentHandle, m: mfp_runtime::DeliveredMessage| {
            let _ = gate_rx.lock().unwrap().recv_timeout(BOUND);
            let _ = seen_tx.send(m);
        })
        .unwrap();
    let bob = rt_b.bind_named("bob", |_: &AgentHandle, _| {}).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(31), vec![B.peer(None)])).await.unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(32), vec![A.peer(fed_a.local_addr())]))
        .await
        .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();

    let n = 40usize;
    for i in 0..n {
        bob.send_async(ch, format!("m{i}").as_bytes()).await.unwrap();
    }
    // The mailbox (2) and the handler (1) hold three; the rest wait on A's side.
    fed_support::until("alice's mailbox to fill", || rt_a.metrics().remote_received.get() >= 3).await;
    assert!(rt_a.metrics().remote_received.get() < n as u64, "the mailbox bound held nothing back");
    for _ in 0..n {
        gate_tx.send(()).unwrap();
    }
    let mut got = Vec::new();
    tokio::time::timeout(BOUND, async {
        while got.len() < n {
            got.push(seen.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("received {} of {n}", got.len()));
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, format!("m{i}").as_bytes());
        assert_eq!(m.step, i as u64);
        assert!(!m.redelivered);
    }
    let m = rt_a.metrics();
    assert_eq!(m.remote_rejected.get(), 0, "a message overtook one waiting for the mailbox");
    assert_eq!(m.validation_failures.get(), 0);
    assert_eq!(m.remote_received.get(), n as u64);
    all_acked(&rt_b, &A.runtime_id(), ch).await;

    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

/// The acceptor's wait for the opener's confirmation survives a restart of the acceptor
/// (from its SQLite file): accepted, then killed before the opener's ChannelConfirm came,
/// the acceptor comes back with the channel still unconfirmed (stored so in the same
/// transaction as the channel), and it is confirmed — in memory and on disk — by the
/// opener's recovery report after the reconnect; then the acceptor's sends go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_restarted_before_the_confirmation_still_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("acceptor.db");
    let key = mfp_storage::MasterKey::from_bytes(&core::array::from_fn::<u8, 32, _>(|i| 0x80 | i as u8)).unwrap();
    let sqlite = || mfp_storage::SqliteStorage::open(mfp_storage::StorageConfig::new(&db, key.clone())).unwrap();
    let config_a = {
        let mut c = A.config();
        c.backpressure = mfp_runtime::Backpressure::Reject;
        c
    };

    // B (the opener) listens; A (the acceptor, on SQLite) dials it, before and after its restart.
    let store_b = HeldStore::default();
    let rt_b = Runtime::builder(B.config())
        .tokio_handle(tokio::runtime::Handle::current())
        .storage(store_b.clone())
        .build()
        .unwrap();
    let (h_bob, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h_bob).unwrap();
    let fed_b = Federation::start(&rt_b, B.key(), FederationConfig::new(net(11), vec![A.peer(None)])).await.unwrap();
    let b_addr = fed_b.local_addr();
    let rt_a = Runtime::builder(config_a.clone())
        .tokio_handle(tokio::runtime::Handle::current())
        .storage(sqlite())
        .build()
        .unwrap();
    let alice = rt_a.bind_named("alice", |_: &AgentHandle, _| {}).unwrap();
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(12), vec![B.peer(b_addr)])).await.unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();

    // B's commit of the channel is held: A accepted, B has not confirmed.
    store_b.hold();
    let fed_b = std::sync::Arc::new(fed_b);
    let (opening, ch) = open_from_b(&fed_b, bob.id(), &alice).await;
    assert!(matches!(alice.send_async(ch, b"early").await, Err(mfp_runtime::Error::PeerUnavailable { .. })));

    // A stops before the confirmation; B then stores the channel (its confirmation finds
    // no link).
    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
    drop((alice, rt_a));
    store_b.release();
    assert_eq!(opening.await.unwrap().unwrap(), ch);
    let stored = mfp_storage::inspect(&db, &key).unwrap().snapshot.unwrap();
    let row = stored.remote_channels.iter().find(|r| r.id == ch).unwrap();
    assert!(row.unconfirmed, "the acceptor's wait for the confirmation is stored with the channel");

    // Restarted, A still waits for the confirmation…
    let rt_a =
        Runtime::builder(config_a).tokio_handle(tokio::runtime::Handle::current()).storage(sqlite()).build().unwrap();
    let alice = rt_a.attach_named("alice", |_: &AgentHandle, _| {}).unwrap();
    let pos = rt_a.remote_handle().positions(&B.runtime_id()).unwrap();
    assert!(pos.iter().any(|p| p.channel == ch && p.unconfirmed), "restored unconfirmed: {pos:?}");
    // …which B's recovery report after the reconnect gives: then A's sends go through.
    let fed_a = Federation::start(&rt_a, A.key(), FederationConfig::new(net(13), vec![B.peer(b_addr)])).await.unwrap();
    tokio::time::timeout(BOUND, async {
        while alice.send_async(ch, b"after").await.is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the acceptor could not send after the confirmation");
    assert_eq!(recv_n(&mut inbox_b, 1).await[0].payload, b"after");
    assert!(!rt_a.remote_handle().positions(&B.runtime_id()).unwrap().iter().any(|p| p.unconfirmed));

    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
    drop((alice, rt_a));
    let stored = mfp_storage::inspect(&db, &key).unwrap().snapshot.unwrap();
    assert!(!stored.remote_channels.iter().any(|r| r.unconfirmed), "the confirmation is stored too");
    if let Ok(fed_b) = std::sync::Arc::try_unwrap(fed_b) {
        fed_b.shutdown().await;
    }
    rt_b.shutdown_async().await;
}

/// B's `bob` opens a channel with A's `alice` in a task of its own; returns that task and
/// the channel's id once the acceptor (A) has it, which is before B has stored it when B's
/// store is held.
async fn open_from_b(
    fed_b: &std::sync::Arc<Federation>,
    bob: mfp_core::AgentId,
    alice: &AgentHandle,
) -> (tokio::task::JoinHandle<Result<ChannelId, mfp_federation::federation::FederationError>>, ChannelId) {
    let opening = {
        let fed_b = std::sync::Arc::clone(fed_b);
        tokio::spawn(async move { fed_b.open_channel(bob, A.runtime_id(), Target::Name("alice".into()), 4).await })
    };
    let ch = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(c) = alice.channels().ok().and_then(|cs| cs.first().map(|c| c.channel_id)) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the acceptor never had the channel");
    (opening, ch)
}
