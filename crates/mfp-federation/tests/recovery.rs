#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]
//! Recovery of cross-runtime channels between two runtimes in one process over 127.0.0.1:
//! a reconnect with unacknowledged messages resynchronises them (each delivered once), a
//! corrupted chain is diagnosed and suspends the channel on both sides, an operator reset
//! re-seeds both chains, and a channel suspended by a transient condition resumes.

use std::sync::Arc;
use std::time::Duration;

use mfp_federation::control::Target;
use mfp_federation::federation::{Federation, FederationConfig, FederationError};
use mfp_runtime::audit::{AuditEvent, AuditEventType, AuditSink};
use mfp_runtime::storage::{MemoryStorage, Storage, StorageOp};
use mfp_runtime::{AgentHandle, ChannelId, ChannelStatus, DeliveredMessage, ManualClock, Runtime};
use parking_lot::Mutex;

mod fed_support;

use fed_support::{BOUND, Inbox, Node, net, recorder, recv_n, until};

const A: Node = Node { deployment: b"recovery-tests", name: b"a", seed: 31 };
const B: Node = Node { deployment: b"recovery-tests", name: b"b", seed: 32 };

/// Audit events, kept.
#[derive(Clone, Default)]
struct Audit(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Audit {
    fn record(&self, event: &AuditEvent) {
        self.0.lock().push(event.clone());
    }
}

impl Audit {
    fn quarantines(&self, channel: ChannelId) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .filter(|e| e.event_type == AuditEventType::QuarantineChannel && e.channel == Some(channel))
            .map(|e| e.reason.clone().unwrap_or_default())
            .collect()
    }
}

fn runtime(node: &Node, storage: Option<MemoryStorage>, audit: &Audit) -> Runtime {
    let mut b =
        Runtime::builder(node.config()).tokio_handle(tokio::runtime::Handle::current()).audit_sink(audit.clone());
    if let Some(s) = storage {
        b = b.storage(s);
    }
    b.build().unwrap()
}

fn position(rt: &Runtime, peer: &Node, ch: ChannelId) -> mfp_runtime::remote::RemotePosition {
    rt.remote_handle().positions(&peer.runtime_id()).unwrap().into_iter().find(|p| p.channel == ch).unwrap()
}

fn all_acked(rt: &Runtime, peer: &Node, ch: ChannelId) -> bool {
    let p = position(rt, peer, ch);
    p.acked == p.tx_next
}

fn inbox_empty(store: &MemoryStorage) -> bool {
    store.load().unwrap().is_some_and(|s| s.deliveries.is_empty())
}

/// The payloads of `got`, as text.
fn texts(got: &[DeliveredMessage]) -> Vec<String> {
    got.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect()
}

/// B listens; A dials it and opens a channel from alice to bob. A keeps its state in
/// `store_a` so it can be restarted.
struct Pair {
    rt_a: Runtime,
    fed_a: Federation,
    alice: AgentHandle,
    inbox_a: Inbox,
    audit_a: Audit,
    rt_b: Runtime,
    fed_b: Federation,
    bob: AgentHandle,
    inbox_b: Inbox,
    audit_b: Audit,
    ch: ChannelId,
}

async fn pair(store_a: &MemoryStorage, store_b: &MemoryStorage) -> Pair {
    let audit_b = Audit::default();
    let rt_b = runtime(&B, Some(store_b.clone()), &audit_b);
    let (h, inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h).unwrap();
    let fed_b =
        Federation::start(&rt_b, B.key(), FederationConfig::new(net(2, true), vec![A.peer(None)])).await.unwrap();
    let audit_a = Audit::default();
    let rt_a = runtime(&A, Some(store_a.clone()), &audit_a);
    let (h, inbox_a) = recorder();
    let alice = rt_a.bind_named("alice", h).unwrap();
    let fed_a =
        Federation::start(&rt_a, A.key(), FederationConfig::new(net(1, false), vec![B.peer(fed_b.local_addr())]))
            .await
            .unwrap();
    fed_a.wait_up(&B.runtime_id()).await.unwrap();
    let ch = fed_a.open_channel(alice.id(), B.runtime_id(), Target::Name("bob".into()), 4).await.unwrap();
    Pair { rt_a, fed_a, alice, inbox_a, audit_a, rt_b, fed_b, bob, inbox_b, audit_b, ch }
}

/// A, restarted from `store_a` with a new federation that dials B again.
async fn restart_a(
    store_a: &MemoryStorage,
    b_addr: Option<std::net::SocketAddr>,
) -> (Runtime, Federation, AgentHandle, Inbox, Audit) {
    let audit = Audit::default();
    let rt = runtime(&A, Some(store_a.clone()), &audit);
    let (h, inbox) = recorder();
    let alice = rt.attach_named("alice", h).unwrap();
    let fed =
        Federation::start(&rt, A.key(), FederationConfig::new(net(3, false), vec![B.peer(b_addr)])).await.unwrap();
    (rt, fed, alice, inbox, audit)
}

/// Messages both ways, all acknowledged, A's inbox written back (so a restart redelivers
/// nothing).
async fn exchange(p: &mut Pair, store_a: &MemoryStorage, tag: &str, n: usize) {
    for i in 0..n {
        p.alice.send_async(p.ch, format!("{tag}-a{i}").as_bytes()).await.unwrap();
        p.bob.send_async(p.ch, format!("{tag}-b{i}").as_bytes()).await.unwrap();
    }
    recv_n(&mut p.inbox_a, n).await;
    recv_n(&mut p.inbox_b, n).await;
    until("acknowledgements", || all_acked(&p.rt_a, &B, p.ch) && all_acked(&p.rt_b, &A, p.ch)).await;
    until("A's inbox written back", || inbox_empty(store_a)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resends_what_was_not_acknowledged_exactly_once() {
    let (store_a, store_b) = (MemoryStorage::new(), MemoryStorage::new());
    let mut p = pair(&store_a, &store_b).await;
    exchange(&mut p, &store_a, "first", 20).await;

    // A can no longer commit anything: bob's next 30 messages are sealed, logged and sent,
    // and none is acknowledged.
    store_a.fail_next(usize::MAX);
    for i in 20..50 {
        p.bob.send_async(p.ch, format!("b{i}").as_bytes()).await.unwrap();
    }
    let at_b = position(&p.rt_b, &A, p.ch);
    assert_eq!((at_b.acked, at_b.tx_next), (20, 50));
    // A goes down with them unacknowledged, and comes back from its storage.
    p.fed_a.shutdown().await;
    p.rt_a.shutdown_async().await;
    store_a.fail_next(0);
    assert_eq!((position(&p.rt_b, &A, p.ch).acked, position(&p.rt_b, &A, p.ch).tx_next), (20, 50));
    let (rt_a, fed_a, _alice, mut inbox_a, _audit) = restart_a(&store_a, p.fed_b.local_addr()).await;

    // DETECT → NEGOTIATE (B is ahead, within its log) → RESYNC from A's step 20.
    let got = recv_n(&mut inbox_a, 30).await;
    assert_eq!(got.iter().map(|m| m.step).collect::<Vec<_>>(), (20..50).collect::<Vec<u64>>());
    assert_eq!(texts(&got), (20..50).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert!(got.iter().all(|m| !m.redelivered), "nothing delivered before the restart came again");
    until("B's log acknowledged", || all_acked(&p.rt_b, &A, p.ch)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(inbox_a.try_recv().is_err(), "nothing is delivered twice");

    let stats = p.fed_b.recovery_stats();
    assert!(stats.negotiations >= 1 && stats.resyncs >= 1 && stats.completed >= 1, "{stats:?}");
    assert_eq!(
        stats.corruption + stats.gap_beyond_log + stats.never_sent + stats.attempts_exhausted + stats.timed_out,
        0
    );
    assert_eq!(rt_a.channel_info(&p.ch).unwrap().status, ChannelStatus::Active);
    assert_eq!(p.rt_b.channel_info(&p.ch).unwrap().status, ChannelStatus::Active);
    assert!(p.audit_a.quarantines(p.ch).is_empty() && p.audit_b.quarantines(p.ch).is_empty());
    // And the channel goes on both ways.
    p.bob.send_async(p.ch, b"after").await.unwrap();
    assert_eq!(recv_n(&mut inbox_a, 1).await[0].step, 50);

    fed_a.shutdown().await;
    rt_a.shutdown_async().await;
    p.fed_b.shutdown().await;
    p.rt_b.shutdown_async().await;
}

/// A pair whose channel A restarts with a corrupted inbound chain (same step, other
/// state), 7 of alice's messages unacknowledged in A's log (B could not commit them).
async fn corrupted(store_a: &MemoryStorage, store_b: &MemoryStorage) -> Pair {
    let mut p = pair(store_a, store_b).await;
    exchange(&mut p, store_a, "first", 5).await;
    store_b.fail_next(usize::MAX);
    for i in 5..12 {
        p.alice.send_async(p.ch, format!("a{i}").as_bytes()).await.unwrap();
    }
    p.fed_a.shutdown().await;
    p.rt_a.shutdown_async().await;
    store_b.fail_next(0);
    // The stored inbound chain of A is altered at the same step.
    let snap = store_a.load().unwrap().unwrap();
    let mut row = snap.remote_channels.into_iter().find(|r| r.id == p.ch).unwrap();
    assert_eq!((row.rx.step, row.tx.step), (5, 12));
    row.rx.ratchet = mfp_core::State::from_bytes([0x42; 32]);
    store_a.apply(vec![StorageOp::PutRemoteChannel(row)]).wait().unwrap();
    assert_eq!(snap.outbound.iter().filter(|o| o.channel == p.ch).count(), 7);

    let (rt_a, fed_a, alice, inbox_a, audit_a) = restart_a(store_a, p.fed_b.local_addr()).await;
    let ch = p.ch;
    // Suspended, and the audit events written (they follow the status change).
    until("both sides suspended", || {
        rt_a.channel_info(&ch).unwrap().status == ChannelStatus::Quarantined
            && p.rt_b.channel_info(&ch).unwrap().status == ChannelStatus::Quarantined
            && !audit_a.quarantines(ch).is_empty()
            && !p.audit_b.quarantines(ch).is_empty()
    })
    .await;
    let Pair { rt_b, fed_b, bob, inbox_b, audit_b, .. } = p;
    Pair { rt_a, fed_a, alice, inbox_a, audit_a, rt_b, fed_b, bob, inbox_b, audit_b, ch }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chain_is_diagnosed_and_suspends_the_channel_on_both_sides() {
    let (store_a, store_b) = (MemoryStorage::new(), MemoryStorage::new());
    let c = corrupted(&store_a, &store_b).await;
    let ch = c.ch;
    // Each side diagnosed corruption: A on what it receives, B on what it sends.
    assert_eq!(c.fed_a.recovery_stats().corruption, 1, "{:?}", c.fed_a.recovery_stats());
    assert_eq!(c.fed_b.recovery_stats().corruption, 1, "{:?}", c.fed_b.recovery_stats());
    for audit in [&c.audit_a, &c.audit_b] {
        let reasons = audit.quarantines(ch);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("(corruption)") && reasons[0].contains("reset"), "{}", reasons[0]);
    }
    assert!(c.audit_a.quarantines(ch)[0].contains("inbound"));
    assert!(c.audit_b.quarantines(ch)[0].contains("outbound"));
    assert_eq!(c.rt_a.metrics().channel_quarantines.get(), 1);
    assert!(c.rt_b.metrics().channel_quarantines.get() >= 1);
    // Nothing goes either way on a suspended channel.
    assert!(c.bob.send_async(ch, b"no").await.is_err());
    assert!(c.alice.send_async(ch, b"no").await.is_err());
    // Resuming does not hide the corruption: the new recovery suspends it again.
    c.fed_a.resume_channel(&ch).await.unwrap();
    c.fed_b.resume_channel(&ch).await.unwrap();
    until("suspended again", || {
        c.rt_a.channel_info(&ch).unwrap().status == ChannelStatus::Quarantined
            && c.rt_b.channel_info(&ch).unwrap().status == ChannelStatus::Quarantined
    })
    .await;
    assert!(c.fed_a.recovery_stats().corruption + c.fed_b.recovery_stats().corruption >= 3);

    c.fed_a.shutdown().await;
    c.rt_a.shutdown_async().await;
    c.fed_b.shutdown().await;
    c.rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reseeds_both_chains_at_step_zero_and_messages_flow_again() {
    let (store_a, store_b) = (MemoryStorage::new(), MemoryStorage::new());
    let mut c = corrupted(&store_a, &store_b).await;
    let ch = c.ch;
    let before = c.rt_a.remote_handle().recovery_point(&ch).unwrap();
    // What arrived before the reset (B may have taken one of A's resends while A was
    // down) is not what this test looks at.
    for (rt, inbox) in [(&c.rt_a, &mut c.inbox_a), (&c.rt_b, &mut c.inbox_b)] {
        assert!(rt.wait_idle_async(BOUND).await);
        while inbox.try_recv().is_ok() {}
    }

    // A reset of an active channel is refused; of this suspended one, it returns the
    // messages A's log discarded.
    let discarded = c.fed_a.reset_channel(&ch).await.unwrap();
    assert_eq!(discarded, 7, "alice's unacknowledged messages are lost");
    for rt in [&c.rt_a, &c.rt_b] {
        assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    }
    let (pa, pb) =
        (c.rt_a.remote_handle().recovery_point(&ch).unwrap(), c.rt_b.remote_handle().recovery_point(&ch).unwrap());
    assert_eq!((pa.tx_next, pa.rx_next, pa.log_from), (0, 0, 0));
    assert_eq!((pb.tx_next, pb.rx_next, pb.log_from), (0, 0, 0));
    assert_eq!(pa.tx_hash, pb.rx_hash, "both ends of A → B agree");
    assert_eq!(pa.rx_hash, pb.tx_hash, "both ends of B → A agree");
    assert_ne!(pa.tx_hash, pa.rx_hash, "one chain per direction");
    assert_ne!(pa.tx_hash, before.tx_hash, "a new secret");
    // Stored in the same state on A (one transaction): chains at 0, log empty, active.
    let snap = store_a.load().unwrap().unwrap();
    let row = snap.remote_channels.iter().find(|r| r.id == ch).unwrap();
    assert_eq!((row.tx.step, row.rx.step, row.status), (0, 0, ChannelStatus::Active));
    assert!(snap.outbound.iter().all(|o| o.channel != ch));
    assert_eq!(c.fed_a.recovery_stats().resets, 1);
    assert_eq!(c.fed_b.recovery_stats().resets, 1);

    // Messages flow again both ways, from step 0.
    for i in 0..3 {
        c.alice.send_async(ch, format!("new-a{i}").as_bytes()).await.unwrap();
        c.bob.send_async(ch, format!("new-b{i}").as_bytes()).await.unwrap();
    }
    let at_b = recv_n(&mut c.inbox_b, 3).await;
    let at_a = recv_n(&mut c.inbox_a, 3).await;
    assert_eq!(at_b.iter().map(|m| m.step).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(texts(&at_b), ["new-a0", "new-a1", "new-a2"]);
    assert_eq!(texts(&at_a), ["new-b0", "new-b1", "new-b2"]);

    // Refusals: not suspended; the peer down.
    assert!(matches!(c.fed_a.reset_channel(&ch).await, Err(FederationError::NotSuspended(_))));
    c.rt_a.quarantine_channel_async(&ch, "test").await.unwrap();
    c.fed_b.shutdown().await;
    until("link down", || !c.fed_a.is_up(&B.runtime_id())).await;
    assert!(matches!(c.fed_a.reset_channel(&ch).await, Err(FederationError::PeerDown(_))));

    c.fed_a.shutdown().await;
    c.rt_a.shutdown_async().await;
    c.rt_b.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_suspended_by_a_transient_condition_resumes_and_flows() {
    // A reads recovery time from a manual clock.
    let clock = ManualClock::new();
    let audit_a = Audit::default();
    let rt_a = runtime(&A, Some(MemoryStorage::new()), &audit_a);
    let (h, mut inbox_a) = recorder();
    let alice = rt_a.bind_named("alice", h).unwrap();
    let mut cfg = FederationConfig::new(net(1, true), vec![B.peer(None)]);
    cfg.clock = Arc::new(clock.clone());
    let fed_a = Federation::start(&rt_a, A.key(), cfg).await.unwrap();
    let rt_b = runtime(&B, Some(MemoryStorage::new()), &Audit::default());
    let (h, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h).unwrap();
    let fed_b =
        Federation::start(&rt_b, B.key(), FederationConfig::new(net(2, false), vec![A.peer(fed_a.local_addr())]))
            .await
            .unwrap();
    fed_b.wait_up(&A.runtime_id()).await.unwrap();
    let ch = fed_b.open_channel(bob.id(), A.runtime_id(), Target::Name("alice".into()), 4).await.unwrap();
    bob.send_async(ch, b"b0").await.unwrap();
    alice.send_async(ch, b"a0").await.unwrap();
    recv_n(&mut inbox_a, 1).await;
    recv_n(&mut inbox_b, 1).await;

    // B's operator suspends the channel for a while (maintenance). A resumes its side
    // meanwhile: its recovery begins and gets no answer from the suspended side.
    rt_b.quarantine_channel_async(&ch, "maintenance").await.unwrap();
    rt_a.quarantine_channel_async(&ch, "maintenance").await.unwrap();
    fed_a.resume_channel(&ch).await.unwrap();
    alice.send_async(ch, b"a1").await.unwrap();
    // 31 s later by A's clock B resumes: its report reaches A past the recovery time.
    clock.advance(Duration::from_secs(31));
    fed_b.resume_channel(&ch).await.unwrap();
    until("A suspends on time", || fed_a.recovery_stats().timed_out == 1).await;
    until("A's side suspended", || rt_a.channel_info(&ch).unwrap().status == ChannelStatus::Quarantined).await;
    let reasons = audit_a.quarantines(ch);
    assert!(reasons.last().is_some_and(|r| r.contains("(timed_out)")), "{reasons:?}");
    assert_eq!(rt_a.metrics().channel_quarantines.get(), 2, "the operator's and the recovery's");

    // The condition is gone: A's operator resumes, both sides compare positions again
    // and what waited in A's log goes, then messages flow both ways.
    fed_a.resume_channel(&ch).await.unwrap();
    let got = recv_n(&mut inbox_b, 1).await;
    assert_eq!((got[0].step, got[0].payload.as_slice()), (1, &b"a1"[..]));
    bob.send_async(ch, b"b1").await.unwrap();
    alice.send_async(ch, b"a2").await.unwrap();
    let at_a = recv_n(&mut inbox_a, 1).await;
    let at_b = recv_n(&mut inbox_b, 1).await;
    assert_eq!((at_a[0].step, at_a[0].payload.as_slice()), (1, &b"b1"[..]));
    assert_eq!((at_b[0].step, at_b[0].payload.as_slice()), (2, &b"a2"[..]));
    for rt in [&rt_a, &rt_b] {
        assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    }
    assert_eq!(fed_a.recovery_stats().timed_out, 1);

    fed_a.shutdown().await;
    fed_b.shutdown().await;
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}

/// A peer refuses a reset of a channel it has closed, or never had, with a reason the
/// requester gets at once (not a timeout); the channel stays suspended on the requester.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_channel_closed_or_unknown_on_the_peer_is_refused_with_the_reason() {
    let (store_a, store_b) = (MemoryStorage::new(), MemoryStorage::new());
    let c = pair(&store_a, &store_b).await;
    let ch = c.ch;
    // B closes its end without telling A; A suspends its end and asks for a reset.
    c.rt_b.remote_handle().closed_by_peer_async(&ch).await.unwrap();
    c.rt_a.quarantine_channel_async(&ch, "test").await.unwrap();
    let refused = c.fed_a.reset_channel(&ch).await;
    assert!(
        matches!(
            refused,
            Err(FederationError::ResetRefused { reason: mfp_federation::control::ResetRefusal::Closed, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(c.rt_a.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);

    // A channel B never had (stored on A only).
    let unknown = ChannelId::from_bytes([0x3c; 16]);
    let (tx, rx) = mfp_federation::channel_chains(&[0x77; 32], &unknown, &A.runtime_id(), &B.runtime_id());
    c.rt_a
        .remote_handle()
        .establish_async(
            c.alice.id(),
            mfp_runtime::remote::RemoteEnd::new(B.runtime_id(), c.bob.id()),
            unknown,
            4,
            mfp_runtime::remote::Chains::Split { tx, rx },
        )
        .await
        .unwrap();
    c.rt_a.quarantine_channel_async(&unknown, "test").await.unwrap();
    let refused = c.fed_a.reset_channel(&unknown).await;
    assert!(
        matches!(
            refused,
            Err(FederationError::ResetRefused { reason: mfp_federation::control::ResetRefusal::UnknownChannel, .. })
        ),
        "{refused:?}"
    );
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("refused the reset") && text.contains("no such channel"), "{text}");
    assert_eq!(c.fed_a.recovery_stats().resets + c.fed_b.recovery_stats().resets, 0);

    c.fed_a.shutdown().await;
    c.fed_b.shutdown().await;
    c.rt_a.shutdown_async().await;
    c.rt_b.shutdown_async().await;
}

/// A store that, while held, keeps every batch pending (in order) until released; what it
/// lets through goes to a `MemoryStorage`.
#[derive(Clone, Default)]
struct HeldStore(Arc<Mutex<Held>>, MemoryStorage);

/// Whether batches are held, and those held (with what completes each).
type Held = (bool, Vec<(Vec<StorageOp>, mfp_runtime::storage::TicketSender)>);

impl HeldStore {
    fn hold(&self) {
        self.0.lock().0 = true;
    }

    /// Pending batches of a reset.
    fn pending_resets(&self) -> usize {
        self.0
            .lock()
            .1
            .iter()
            .filter(|(ops, _)| ops.iter().any(|op| matches!(op, StorageOp::RemoteReset { .. })))
            .count()
    }

    fn release(&self) {
        let mut q = self.0.lock();
        q.0 = false;
        for (ops, done) in q.1.drain(..) {
            done.complete(self.1.apply(ops).wait());
        }
    }
}

impl Storage for HeldStore {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, mfp_runtime::storage::StorageError> {
        self.1.load()
    }

    fn apply(&self, ops: Vec<StorageOp>) -> mfp_runtime::storage::Ticket {
        let mut q = self.0.lock();
        if q.0 {
            let (done, ticket) = mfp_runtime::storage::Ticket::pending();
            q.1.push((ops, done));
            ticket
        } else {
            self.1.apply(ops)
        }
    }
}

/// Waits (at most `BOUND`) until `store` holds `n` batches of a reset.
async fn resets_held(store: &HeldStore, n: usize) {
    tokio::time::timeout(BOUND, async {
        while store.pending_resets() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the reset never reached the store");
}

/// Both operators reset the same channel at once, each request crossing the other on the
/// link (made certain by holding both stores: each side is still suspended, its reset of
/// the peer's request waiting for its commit, when its own request leaves). The request of
/// the runtime with the smaller id wins on both sides: both end on one secret and messages
/// flow again; both calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_resets_end_on_one_secret() {
    // The larger id asks first: the smaller one has applied it when its own request leaves.
    crossed_resets(false).await;
    // The smaller id asks first: the larger one has applied it when its own request leaves,
    // and the smaller one refuses that request as crossed.
    crossed_resets(true).await;
}

async fn crossed_resets(smaller_first: bool) {
    let (store_a, store_b) = (HeldStore::default(), HeldStore::default());
    let build = |node: &Node, store: &HeldStore| {
        Runtime::builder(node.config())
            .tokio_handle(tokio::runtime::Handle::current())
            .storage(store.clone())
            .build()
            .unwrap()
    };
    let (rt_a, rt_b) = (build(&A, &store_a), build(&B, &store_b));
    let (h, mut inbox_a) = recorder();
    let alice = rt_a.bind_named("alice", h).unwrap();
    let (h, mut inbox_b) = recorder();
    let bob = rt_b.bind_named("bob", h).unwrap();
    let fed_b =
        Federation::start(&rt_b, B.key(), FederationConfig::new(net(2, true), vec![A.peer(None)])).await.unwrap();
    let fed_a =
        Federation::start(&rt_a, A.key(), FederationConfig::new(net(1, false), vec![B.peer(fed_b.local_addr())]))
            .await
            .unwrap();
    fed_a.wait_up(&B.runtime_id()).await.unwrap();
    let ch = fed_a.open_channel(alice.id(), B.runtime_id(), Target::Name("bob".into()), 4).await.unwrap();
    rt_a.quarantine_channel_async(&ch, "test").await.unwrap();
    rt_b.quarantine_channel_async(&ch, "test").await.unwrap();

    // One asks; the other asks while it is resetting from that request (its commit held,
    // so still suspended), and the first gets that request while its own is under way.
    let (fed_a, fed_b) = (Arc::new(fed_a), Arc::new(fed_b));
    let a_first = (A.runtime_id() < B.runtime_id()) == smaller_first;
    let (first, second, second_store) = if a_first {
        (Arc::clone(&fed_a), Arc::clone(&fed_b), &store_b)
    } else {
        (Arc::clone(&fed_b), Arc::clone(&fed_a), &store_a)
    };
    store_a.hold();
    store_b.hold();
    let first_call = tokio::spawn(async move { first.reset_channel(&ch).await });
    resets_held(second_store, 1).await;
    // Polled once, the second call checks that the channel is suspended and queues its
    // request on the link before its first wait; only then do the commits go through (so
    // on each side the peer's request arrives before its answer to this side's).
    let mut second_call = Box::pin(async move { second.reset_channel(&ch).await });
    let pending = second_call.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(pending.is_pending(), "the second call returned before any answer: {pending:?}");
    store_a.release();
    store_b.release();
    let (r1, r2) = (first_call.await.unwrap(), second_call.await);
    assert!(r1.is_ok() && r2.is_ok(), "smaller first: {smaller_first}: {r1:?} {r2:?}");

    let (pa, pb) =
        (rt_a.remote_handle().recovery_point(&ch).unwrap(), rt_b.remote_handle().recovery_point(&ch).unwrap());
    assert_eq!(pa.tx_hash, pb.rx_hash, "both ends of A → B agree");
    assert_eq!(pa.rx_hash, pb.tx_hash, "both ends of B → A agree");
    alice.send_async(ch, b"to bob").await.unwrap();
    bob.send_async(ch, b"to alice").await.unwrap();
    assert_eq!(texts(&recv_n(&mut inbox_b, 1).await), ["to bob"]);
    assert_eq!(texts(&recv_n(&mut inbox_a, 1).await), ["to alice"]);

    for fed in [fed_a, fed_b] {
        if let Ok(fed) = Arc::try_unwrap(fed) {
            fed.shutdown().await;
        }
    }
    rt_a.shutdown_async().await;
    rt_b.shutdown_async().await;
}
