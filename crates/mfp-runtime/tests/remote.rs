#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Cross-runtime channels through the remote-endpoint seam: two runtimes in one process,
//! joined by an in-process transport that the test drives by hand, so every inbound byte
//! is under the test's control (replays, bit flips, wrong steps, wrong peers).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Inbox, cfg};
use mfp_core::bilateral::BilateralState;
use mfp_core::{ENVELOPE_HEADER_SIZE, State};
use mfp_runtime::remote::{
    Chains, Ingested, OutboundMessage, OutboundSlot, ReadyFuture, RemoteEnd, Transport, TransportError,
};
use mfp_runtime::storage::{MemoryStorage, Storage};
use mfp_runtime::{AgentHandle, Backpressure, ChannelId, ChannelStatus, Error, Runtime, RuntimeConfig, RuntimeId};

/// Messages a runtime handed to its transport, waiting for the test to carry them.
#[derive(Default)]
struct Wire {
    queue: Mutex<VecDeque<OutboundMessage>>,
    /// Reservations refused while set.
    busy: Mutex<bool>,
    ready: tokio::sync::Notify,
    closed: Mutex<Vec<ChannelId>>,
    acknowledges: bool,
}

#[derive(Clone)]
struct Loopback(Arc<Wire>);

struct Slot(Arc<Wire>);

impl OutboundSlot for Slot {
    fn send(self: Box<Self>, message: OutboundMessage) {
        self.0.queue.lock().unwrap().push_back(message);
    }
}

impl Transport for Loopback {
    fn reserve(&self, _peer: &RuntimeId, _len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        if *self.0.busy.lock().unwrap() {
            return Err(TransportError::Busy);
        }
        Ok(Box::new(Slot(Arc::clone(&self.0))))
    }

    fn ready(&self, _peer: &RuntimeId) -> ReadyFuture {
        let wire = Arc::clone(&self.0);
        Box::pin(async move { wire.ready.notified().await })
    }

    fn acknowledges(&self, _peer: &RuntimeId) -> bool {
        self.0.acknowledges
    }

    fn channel_closed(&self, _peer: &RuntimeId, channel: &ChannelId) {
        self.0.closed.lock().unwrap().push(*channel);
    }
}

impl Loopback {
    fn new() -> Self {
        Self(Arc::new(Wire { acknowledges: true, ..Wire::default() }))
    }

    fn take(&self) -> Vec<OutboundMessage> {
        self.0.queue.lock().unwrap().drain(..).collect()
    }
}

fn config(name: &[u8]) -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"remote-test".to_vec();
    c.instance_id = name.to_vec();
    c
}

fn chain(label: u8, a: &RuntimeId, b: &RuntimeId) -> BilateralState {
    BilateralState::ceremonial(&State::from_bytes([label; 32]), a, b)
}

/// One side: a runtime, its transport, one agent and its inbox.
struct Side {
    rt: Runtime,
    wire: Loopback,
    agent: AgentHandle,
    inbox: Inbox,
}

fn side(name: &[u8], storage: Option<MemoryStorage>) -> Side {
    let mut b = Runtime::builder(config(name));
    if let Some(s) = storage {
        b = b.storage(s);
    }
    let rt = b.build().unwrap();
    let wire = Loopback::new();
    rt.attach_transport(Arc::new(wire.clone())).unwrap();
    let inbox = Inbox::new();
    let agent = rt.bind_named("agent", inbox.handler()).unwrap();
    Side { rt, wire, agent, inbox }
}

const CH: [u8; 16] = [7; 16];

/// Opens the cross-runtime channel `CH` on both sides with per-direction chains.
fn join(a: &Side, b: &Side, depth: usize) -> ChannelId {
    let (ia, ib) = (a.rt.identity(), b.rt.identity());
    let ch = ChannelId::from_bytes(CH);
    let a_to_b = chain(1, &ia, &ib);
    let b_to_a = chain(2, &ib, &ia);
    a.rt.remote_handle()
        .establish(
            a.agent.id(),
            RemoteEnd::new(ib, b.agent.id()),
            ch,
            depth,
            Chains::Split { tx: a_to_b.clone(), rx: b_to_a.clone() },
        )
        .unwrap();
    b.rt.remote_handle()
        .establish(b.agent.id(), RemoteEnd::new(ia, a.agent.id()), ch, depth, Chains::Split { tx: b_to_a, rx: a_to_b })
        .unwrap();
    ch
}

/// Carries everything `from` sent into `to`, returning what `ingest` said for each.
fn carry(from: &Side, to: &Side) -> Vec<Result<Ingested, Error>> {
    let peer = from.rt.identity();
    from.wire.take().iter().map(|m| to.rt.remote_handle().ingest(&peer, &m.wire)).collect()
}

#[test]
fn messages_cross_both_ways_in_order_with_matching_ids() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    let mut receipts = Vec::new();
    for i in 0..20u8 {
        receipts.push(a.agent.send(ch, &[i; 33]).unwrap());
    }
    for r in carry(&a, &b) {
        assert!(matches!(r, Ok(Ingested::Delivered { .. })), "{r:?}");
    }
    let got = b.inbox.wait_for(20);
    for (i, (m, r)) in got.iter().zip(&receipts).enumerate() {
        assert_eq!(m.payload, vec![i as u8; 33]);
        assert_eq!(m.step, i as u64);
        assert_eq!(m.sender, a.agent.id());
        assert_eq!(m.sender_runtime, Some(a.rt.identity()));
        assert_eq!(m.message_id, r.message_id, "both runtimes derive the same message id");
        assert_eq!(m.correlation_id, r.correlation_id);
    }
    // The other way, on the other chain: both start at step 0.
    let back = b.agent.send(ch, b"reply").unwrap();
    assert_eq!(back.step, 0);
    assert!(matches!(carry(&b, &a)[0], Ok(Ingested::Delivered { step: 0, .. })));
    assert_eq!(a.inbox.wait_for(1)[0].payload, b"reply");
    // Both list the channel with the peer runtime.
    let info = a.agent.channels().unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].peer, b.agent.id());
    assert_eq!(info[0].peer_runtime, Some(b.rt.identity()));
    let m = a.rt.metrics();
    assert_eq!(m.remote_sent.get(), 20);
    assert_eq!(m.remote_received.get(), 1);
}

#[test]
fn a_replayed_message_is_dropped_as_a_duplicate() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    a.agent.send(ch, b"once").unwrap();
    let sent = a.wire.take();
    let h = b.rt.remote_handle();
    assert_eq!(h.ingest(&a.rt.identity(), &sent[0].wire).unwrap(), Ingested::Delivered { channel: ch, step: 0 });
    for _ in 0..3 {
        assert_eq!(h.ingest(&a.rt.identity(), &sent[0].wire).unwrap(), Ingested::Duplicate { channel: ch, step: 0 });
    }
    b.inbox.wait_for(1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.inbox.all().len(), 1, "a replay is never delivered twice");
    assert_eq!(b.rt.metrics().remote_duplicates.get(), 3);
    // Duplicates are not failures: the channel stays active.
    assert_eq!(b.rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
}

/// Flips one bit at `at` (an offset into the wire message).
fn flipped(wire: &[u8], at: usize) -> Vec<u8> {
    let mut w = wire.to_vec();
    w[at] ^= 0x10;
    w
}

#[test]
fn corrupted_messages_are_refused_counted_and_quarantine_the_channel_at_the_threshold() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let depth = 4;
    let ch = join(&a, &b, depth);
    let h = b.rt.remote_handle();
    let from = a.rt.identity();
    a.agent.send(ch, b"payload bytes").unwrap();
    let good = a.wire.take().remove(0).wire;
    let frame_open = ENVELOPE_HEADER_SIZE + 3;
    let ciphertext = ENVELOPE_HEADER_SIZE + 16 * depth + 2;
    let frame_close = good.len() - 5;

    // A flipped frame byte fails VALIDATE; a flipped ciphertext byte fails DECODE.
    assert_eq!(h.ingest(&from, &flipped(&good, frame_open)).unwrap_err(), Error::FrameValidation);
    assert_eq!(h.ingest(&from, &flipped(&good, ciphertext)).unwrap_err(), Error::Decode);
    let m = b.rt.metrics();
    assert_eq!(m.validation_failures.get(), 1);
    assert_eq!(m.decode_failures.get(), 1);
    assert_eq!(m.remote_rejected.get(), 2);
    // Nothing moved: the genuine message still goes through, and resets the count.
    assert!(matches!(h.ingest(&from, &good).unwrap(), Ingested::Delivered { step: 0, .. }));
    assert_eq!(b.inbox.wait_for(1)[0].payload, b"payload bytes");

    // The next message, corrupted `threshold` times in a row, quarantines the channel.
    a.agent.send(ch, b"second").unwrap();
    let second = a.wire.take().remove(0).wire;
    let threshold = b.rt.config().validation_failure_threshold;
    for i in 0..threshold {
        let at = if i % 2 == 0 { frame_close - 4 } else { frame_open };
        assert_eq!(h.ingest(&from, &flipped(&second, at)).unwrap_err(), Error::FrameValidation);
    }
    assert_eq!(b.rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);
    assert_eq!(b.rt.metrics().channel_quarantines.get(), 1);
    // A quarantined channel takes nothing, not even the genuine message.
    assert_eq!(h.ingest(&from, &second).unwrap_err(), Error::ChannelQuarantined(ch));
    // The operator lifts it; the genuine message then goes through.
    b.rt.restore_channel(&ch).unwrap();
    assert!(matches!(h.ingest(&from, &second).unwrap(), Ingested::Delivered { step: 1, .. }));
    assert_eq!(b.inbox.wait_for(2)[1].payload, b"second");
}

#[test]
fn a_gap_a_stranger_and_a_malformed_header_are_refused() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let c = side(b"c", None);
    let ch = join(&a, &b, 4);
    let h = b.rt.remote_handle();
    a.agent.send(ch, b"0").unwrap();
    a.agent.send(ch, b"1").unwrap();
    let sent = a.wire.take();
    // Step 1 before step 0: a gap.
    assert_eq!(
        h.ingest(&a.rt.identity(), &sent[1].wire).unwrap_err(),
        Error::StepMismatch { channel: ch, expected: 0, got: 1 }
    );
    // The right bytes from the wrong runtime.
    assert!(matches!(h.ingest(&c.rt.identity(), &sent[0].wire).unwrap_err(), Error::WrongPeer { .. }));
    // A header cut short, and garbage.
    assert!(matches!(h.ingest(&a.rt.identity(), &sent[0].wire[..40]).unwrap_err(), Error::Core(_)));
    assert!(matches!(h.ingest(&a.rt.identity(), &[0xff; 200]).unwrap_err(), Error::Core(_)));
    // A message for a channel this runtime does not have.
    let mut other = sent[0].wire.to_vec();
    other[16..32].copy_from_slice(&[9; 16]);
    assert!(matches!(h.ingest(&a.rt.identity(), &other).unwrap_err(), Error::UnknownChannel(_)));
    // In order, both go through.
    for m in &sent {
        h.ingest(&a.rt.identity(), &m.wire).unwrap();
    }
    assert_eq!(b.inbox.wait_for(2).len(), 2);
    assert_eq!(b.rt.metrics().remote_rejected.get(), 5);
}

#[test]
fn acknowledgements_trim_the_outbound_log() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    for i in 0..5u8 {
        a.agent.send(ch, &[i]).unwrap();
    }
    let sent = a.wire.take();
    let h = a.rt.remote_handle();
    assert_eq!(h.unacknowledged(&ch, 0).unwrap(), sent);
    let done = h.acknowledge(&ch, 3).unwrap();
    assert_eq!(done.messages, 3);
    assert_eq!(done.bytes, sent[..3].iter().map(|m| m.wire.len()).sum::<usize>());
    assert_eq!(h.unacknowledged(&ch, 0).unwrap(), sent[3..].to_vec());
    // Acknowledging less again changes nothing; more than was sent is refused.
    assert_eq!(h.acknowledge(&ch, 1).unwrap().messages, 0);
    assert_eq!(h.unacknowledged(&ch, 0).unwrap().len(), 2);
    assert!(matches!(h.acknowledge(&ch, 6).unwrap_err(), Error::StepMismatch { expected: 5, got: 6, .. }));
    let pos = h.positions(&b.rt.identity()).unwrap();
    assert_eq!(pos.len(), 1);
    assert_eq!((pos[0].tx_next, pos[0].rx_next, pos[0].acked), (5, 0, 3));
    assert_eq!(h.position(&ch).unwrap(), pos[0]);
}

#[test]
fn a_busy_link_refuses_or_delays_the_send_as_configured() {
    // Reject: a typed error at once, and the chain did not move.
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    *a.wire.0.busy.lock().unwrap() = true;
    // (Backpressure::Wait is the default: the send waits until the link has room.)
    let sender = a.agent.clone();
    let t = std::thread::spawn(move || sender.send(ch, b"waited"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(a.wire.take().is_empty());
    *a.wire.0.busy.lock().unwrap() = false;
    a.wire.0.ready.notify_waiters();
    let receipt = t.join().unwrap().unwrap();
    assert_eq!(receipt.step, 0);
    assert_eq!(a.wire.take().len(), 1);
    // Busy until the deadline: PeerUnavailable, nothing sealed.
    *a.wire.0.busy.lock().unwrap() = true;
    assert!(matches!(a.agent.send(ch, b"never").unwrap_err(), Error::PeerUnavailable { .. }));
    *a.wire.0.busy.lock().unwrap() = false;
    assert_eq!(a.agent.send(ch, b"next").unwrap().step, 1, "the refused send used no step");
    drop(b);
}

#[test]
fn reject_backpressure_fails_at_once() {
    let mk = |name: &[u8]| {
        let rt = Runtime::new({
            let mut c = config(name);
            c.backpressure = Backpressure::Reject;
            c
        })
        .unwrap();
        let wire = Loopback::new();
        rt.attach_transport(Arc::new(wire.clone())).unwrap();
        let inbox = Inbox::new();
        let agent = rt.bind_named("agent", inbox.handler()).unwrap();
        Side { rt, wire, agent, inbox }
    };
    let a = mk(b"a");
    let b = mk(b"b");
    let ch = join(&a, &b, 4);
    *a.wire.0.busy.lock().unwrap() = true;
    let started = std::time::Instant::now();
    assert!(matches!(a.agent.send(ch, b"x").unwrap_err(), Error::PeerUnavailable { .. }));
    assert!(started.elapsed() < a.rt.config().pipeline_timeout, "Reject does not wait");
    // A second transport is refused.
    assert!(matches!(a.rt.attach_transport(Arc::new(Loopback::new())).unwrap_err(), Error::Config(_)));
}

#[test]
fn without_a_transport_a_cross_runtime_send_fails_clearly() {
    let rt = Runtime::new(config(b"lonely")).unwrap();
    let agent = rt.bind(|_, _| {}).unwrap();
    let ch = ChannelId::from_bytes(CH);
    let peer = RuntimeId::derive(b"x", b"y");
    rt.remote_handle()
        .establish(
            agent.id(),
            RemoteEnd::new(peer, agent.id()),
            ch,
            4,
            Chains::Split { tx: chain(1, &rt.identity(), &peer), rx: chain(2, &peer, &rt.identity()) },
        )
        .unwrap();
    assert_eq!(agent.send(ch, b"x").unwrap_err(), Error::NoTransport(ch));
    // The same id again, and a channel to itself, are refused.
    let again = rt.remote_handle().establish(
        agent.id(),
        RemoteEnd::new(peer, agent.id()),
        ch,
        4,
        Chains::Split { tx: chain(1, &rt.identity(), &peer), rx: chain(2, &peer, &rt.identity()) },
    );
    assert_eq!(again.unwrap_err(), Error::ChannelExists(ch));
    let own = rt.remote_handle().establish(
        agent.id(),
        RemoteEnd::new(rt.identity(), agent.id()),
        ChannelId::from_bytes([1; 16]),
        4,
        Chains::Split { tx: chain(1, &rt.identity(), &peer), rx: chain(2, &peer, &rt.identity()) },
    );
    assert!(matches!(own.unwrap_err(), Error::Config(_)));
}

#[test]
fn max_bilateral_channels_bounds_the_channels_per_peer() {
    let rt = Runtime::new({
        let mut c = config(b"limited");
        c.max_bilateral_channels = 2;
        c
    })
    .unwrap();
    let agent = rt.bind(|_, _| {}).unwrap();
    let peer = RuntimeId::derive(b"x", b"y");
    let open = |i: u8| {
        rt.remote_handle().establish(agent.id(), RemoteEnd::new(peer, agent.id()), ChannelId::from_bytes([i; 16]), 4, {
            Chains::Split { tx: chain(i, &rt.identity(), &peer), rx: chain(i, &peer, &rt.identity()) }
        })
    };
    open(1).unwrap();
    open(2).unwrap();
    assert!(matches!(open(3).unwrap_err(), Error::ResourceLimit { what: "max_bilateral_channels", .. }));
}

#[test]
fn closing_tells_the_transport_and_the_peer_closes_its_end() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    a.rt.close_channel(&ch).unwrap();
    assert_eq!(*a.wire.0.closed.lock().unwrap(), vec![ch]);
    assert_eq!(a.rt.channel_info(&ch).unwrap_err(), Error::ChannelClosed(ch));
    // Its only channel gone, the agent is back to Bound (as for local channels).
    assert_eq!(a.agent.state(), mfp_runtime::AgentState::Bound);
    b.rt.remote_handle().closed_by_peer(&ch).unwrap();
    assert!(b.wire.0.closed.lock().unwrap().is_empty(), "a close from the peer is not echoed");
    assert_eq!(b.rt.channel_info(&ch).unwrap_err(), Error::ChannelClosed(ch));
    // A late message for the closed channel is refused.
    assert_eq!(b.rt.remote_handle().closed_by_peer(&ch).unwrap_err(), Error::ChannelClosed(ch));
}

#[test]
fn chains_outbound_log_and_undelivered_messages_survive_a_restart() {
    let store_a = MemoryStorage::new();
    let store_b = MemoryStorage::new();
    let ch;
    let unacked;
    {
        let a = side(b"a", Some(store_a.clone()));
        let b = side(b"b", Some(store_b.clone()));
        ch = join(&a, &b, 4);
        for i in 0..6u8 {
            a.agent.send(ch, &[i]).unwrap();
        }
        let sent = a.wire.take();
        // B receives the first four (committed with their deliveries); A hears of three.
        for m in &sent[..4] {
            b.rt.remote_handle().ingest(&a.rt.identity(), &m.wire).unwrap();
        }
        b.inbox.wait_for(4);
        a.rt.remote_handle().acknowledge(&ch, 3).unwrap();
        unacked = sent[3..].to_vec();
        a.rt.shutdown();
        b.rt.shutdown();
    }
    let snap_a = store_a.load().unwrap().unwrap();
    assert_eq!(snap_a.remote_channels.len(), 1);
    assert_eq!(snap_a.remote_channels[0].tx.step, 6);
    assert_eq!(snap_a.outbound.iter().map(|o| o.step).collect::<Vec<_>>(), vec![3, 4, 5]);
    let snap_b = store_b.load().unwrap().unwrap();
    assert_eq!(snap_b.remote_channels[0].rx.step, 4);

    // Restarted, A still holds what B has not acknowledged, byte for byte, and goes on at
    // step 6; B expects step 4: the resend of 3 is a duplicate, 4 and 5 are delivered.
    let rt_a = Runtime::builder(config(b"a")).storage(store_a.clone()).build().unwrap();
    let wire_a = Loopback::new();
    rt_a.attach_transport(Arc::new(wire_a.clone())).unwrap();
    let alice = rt_a.attach_named("agent", |_, _| {}).unwrap();
    let rt_b = Runtime::builder(config(b"b")).storage(store_b.clone()).build().unwrap();
    let inbox_b = Inbox::new();
    rt_b.attach_transport(Arc::new(Loopback::new())).unwrap();
    let _bob = rt_b.attach_named("agent", inbox_b.handler()).unwrap();
    let again = rt_a.remote_handle().unacknowledged(&ch, 0).unwrap();
    assert_eq!(again, unacked);
    let hb = rt_b.remote_handle();
    let results: Vec<Ingested> = again.iter().map(|m| hb.ingest(&rt_a.identity(), &m.wire).unwrap()).collect();
    assert_eq!(
        results,
        vec![
            Ingested::Duplicate { channel: ch, step: 3 },
            Ingested::Delivered { channel: ch, step: 4 },
            Ingested::Delivered { channel: ch, step: 5 },
        ]
    );
    let got = inbox_b.wait_for(2);
    assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), vec![vec![4u8], vec![5u8]]);
    assert_eq!(alice.send(ch, b"later").unwrap().step, 6);
    assert_eq!(wire_a.take().len(), 1);
}

#[test]
fn a_failed_commit_moves_neither_chain() {
    let store_a = MemoryStorage::new();
    let store_b = MemoryStorage::new();
    let a = side(b"a", Some(store_a.clone()));
    let b = side(b"b", Some(store_b.clone()));
    let ch = join(&a, &b, 4);
    store_a.fail_next(1);
    assert!(matches!(a.agent.send(ch, b"lost").unwrap_err(), Error::Storage(_)));
    assert!(a.wire.take().is_empty(), "nothing leaves before its commit");
    let r = a.agent.send(ch, b"kept").unwrap();
    assert_eq!(r.step, 0, "the failed send used no step");
    let sent = a.wire.take();
    store_b.fail_next(1);
    let h = b.rt.remote_handle();
    assert!(matches!(h.ingest(&a.rt.identity(), &sent[0].wire).unwrap_err(), Error::Storage(_)));
    assert!(matches!(h.ingest(&a.rt.identity(), &sent[0].wire).unwrap(), Ingested::Delivered { step: 0, .. }));
    assert_eq!(b.inbox.wait_for(1)[0].payload, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_ingest_and_send_on_a_tokio_runtime() {
    let a = side(b"a", Some(MemoryStorage::new()));
    let b = side(b"b", Some(MemoryStorage::new()));
    let ch = join(&a, &b, 4);
    for i in 0..10u8 {
        a.agent.send_async(ch, &[i]).await.unwrap();
    }
    let h = b.rt.remote_handle();
    for m in a.wire.take() {
        h.ingest_async(&a.rt.identity(), &m.wire).await.unwrap();
    }
    let got = tokio::task::spawn_blocking(move || b.inbox.wait_for(10)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    // send_and_wait cannot wait for a handler of another runtime: refused before sending.
    assert!(matches!(a.agent.send_and_wait_async(ch, b"x").await.unwrap_err(), Error::Config(_)));
    assert!(a.wire.take().is_empty());
}

#[test]
fn the_chains_rotate_at_a_step_the_sender_chooses_and_the_receiver_follows() {
    let store_b = MemoryStorage::new();
    let a = side(b"a", None);
    let b = side(b"b", Some(store_b.clone()));
    let ch = join(&a, &b, 4);
    let secret = State::from_bytes([0x5a; 32]);
    let from_a = a.rt.identity();
    // B accepts the rotation A asked for: it is stored before the answer would go out.
    b.rt.remote_handle().accept_rotation(&ch, secret.clone()).unwrap();
    assert_eq!(store_b.load().unwrap().unwrap().remote_channels[0].rx_rotation, Some(secret.clone()));
    // Messages A sealed before it rotated still open under the old chain.
    a.agent.send(ch, b"old chain").unwrap();
    let old = a.wire.take().remove(0);
    assert_eq!(b.rt.remote_handle().ingest(&from_a, &old.wire).unwrap(), Ingested::Delivered { channel: ch, step: 0 });
    assert_eq!(b.rt.metrics().remote_rotations.get(), 0);
    // A rotates at step 1; the next message opens only under the rotated chain.
    assert_eq!(a.rt.remote_handle().rotate_outbound(&ch, &secret).unwrap(), 1);
    a.agent.send(ch, b"new chain").unwrap();
    let new = a.wire.take().remove(0);
    assert_eq!(b.rt.remote_handle().ingest(&from_a, &new.wire).unwrap(), Ingested::Delivered { channel: ch, step: 1 });
    assert_eq!(b.rt.metrics().remote_rotations.get(), 1);
    assert_eq!(store_b.load().unwrap().unwrap().remote_channels[0].rx_rotation, None, "seen, no longer pending");
    let got = b.inbox.wait_for(2);
    assert_eq!(got[1].payload, b"new chain");
    // The rotated chain is a different chain: the same bytes under the old one would not
    // have opened, and replays stay duplicates.
    assert!(matches!(b.rt.remote_handle().ingest(&from_a, &new.wire).unwrap(), Ingested::Duplicate { .. }));
    a.agent.send(ch, b"after").unwrap();
    let after = a.wire.take().remove(0);
    assert!(matches!(b.rt.remote_handle().ingest(&from_a, &after.wire).unwrap(), Ingested::Delivered { step: 2, .. }));
}

#[test]
fn a_rotation_under_another_secret_fails_validation() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    b.rt.remote_handle().accept_rotation(&ch, State::from_bytes([1; 32])).unwrap();
    a.rt.remote_handle().rotate_outbound(&ch, &State::from_bytes([2; 32])).unwrap();
    a.agent.send(ch, b"x").unwrap();
    let m = a.wire.take().remove(0);
    assert_eq!(b.rt.remote_handle().ingest(&a.rt.identity(), &m.wire).unwrap_err(), Error::FrameValidation);
}

#[test]
fn an_accepted_rotation_survives_a_restart_of_the_receiver() {
    let store_b = MemoryStorage::new();
    let a = side(b"a", None);
    let ch;
    let secret = State::from_bytes([0x33; 32]);
    {
        let b = side(b"b", Some(store_b.clone()));
        ch = join(&a, &b, 4);
        b.rt.remote_handle().accept_rotation(&ch, secret.clone()).unwrap();
        b.rt.shutdown();
    }
    let rt_b = Runtime::builder(config(b"b")).storage(store_b).build().unwrap();
    rt_b.attach_transport(Arc::new(Loopback::new())).unwrap();
    let inbox = Inbox::new();
    let _agent = rt_b.attach_named("agent", inbox.handler()).unwrap();
    a.rt.remote_handle().rotate_outbound(&ch, &secret).unwrap();
    a.agent.send(ch, b"rotated").unwrap();
    let m = a.wire.take().remove(0);
    assert!(matches!(rt_b.remote_handle().ingest(&a.rt.identity(), &m.wire).unwrap(), Ingested::Delivered { .. }));
    assert_eq!(inbox.wait_for(1)[0].payload, b"rotated");
}

/// One runtime, two peers, each reached through its own transport: every message goes
/// to the transport of its channel's peer, closes too; a peer takes one transport only.
#[test]
fn each_peer_runtime_is_reached_through_its_own_transport() {
    let rt = Runtime::new(config(b"hub")).unwrap();
    let (to_b, to_c) = (Loopback::new(), Loopback::new());
    let b = side(b"b", None);
    let c = side(b"c", None);
    rt.attach_transport_for(&[b.rt.identity()], Arc::new(to_b.clone())).unwrap();
    rt.attach_transport_for(&[c.rt.identity()], Arc::new(to_c.clone())).unwrap();
    // A peer has one transport; one for every peer cannot join per-peer ones.
    assert!(matches!(
        rt.attach_transport_for(&[b.rt.identity()], Arc::new(Loopback::new())).unwrap_err(),
        Error::Config(_)
    ));
    assert!(matches!(rt.attach_transport(Arc::new(Loopback::new())).unwrap_err(), Error::Config(_)));

    let inbox = Inbox::new();
    let hub = rt.bind_named("agent", inbox.handler()).unwrap();
    let h = rt.remote_handle();
    let open = |peer: &Side, id: [u8; 16]| {
        let ch = ChannelId::from_bytes(id);
        let (tx, rx) = (chain(3, &rt.identity(), &peer.rt.identity()), chain(4, &peer.rt.identity(), &rt.identity()));
        h.establish(hub.id(), RemoteEnd::new(peer.rt.identity(), peer.agent.id()), ch, 4, Chains::Split { tx, rx })
            .unwrap();
        ch
    };
    let (ch_b, ch_c) = (open(&b, [1; 16]), open(&c, [2; 16]));
    hub.send(ch_b, b"for b").unwrap();
    hub.send(ch_c, b"for c").unwrap();
    hub.send(ch_c, b"for c again").unwrap();
    let (at_b, at_c) = (to_b.take(), to_c.take());
    assert_eq!(at_b.iter().map(|m| (m.peer, m.channel)).collect::<Vec<_>>(), vec![(b.rt.identity(), ch_b)]);
    assert_eq!(at_c.iter().map(|m| (m.peer, m.channel)).collect::<Vec<_>>(), vec![(c.rt.identity(), ch_c); 2]);
    rt.close_channel(&ch_c).unwrap();
    assert!(to_b.0.closed.lock().unwrap().is_empty());
    assert_eq!(*to_c.0.closed.lock().unwrap(), vec![ch_c]);

    // A runtime with one transport for every peer takes no per-peer one.
    assert!(matches!(
        b.rt.attach_transport_for(&[c.rt.identity()], Arc::new(Loopback::new())).unwrap_err(),
        Error::Config(_)
    ));
}

// ---- resets -----------------------------------------------------------------------------

/// Resets `ch` on both sides as two runtimes agreeing on a reset do: new chains at step 0
/// (labels `la`, `lb`), the same reset id on both.
fn reset_both(a: &Side, b: &Side, ch: ChannelId, la: u8, lb: u8, reset: [u8; 16]) -> (usize, usize) {
    let (ia, ib) = (a.rt.identity(), b.rt.identity());
    let (a_to_b, b_to_a) = (chain(la, &ia, &ib), chain(lb, &ib, &ia));
    let (ha, hb) = (a.rt.remote_handle(), b.rt.remote_handle());
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
        let da = ha.reset_chains_async(&ch, a_to_b.clone(), b_to_a.clone(), reset).await.unwrap();
        let db = hb.reset_chains_async(&ch, b_to_a, a_to_b, reset).await.unwrap();
        (da.discarded, db.discarded)
    })
}

#[test]
fn message_ids_do_not_repeat_after_a_reset_and_stay_what_they_were_before_any() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    let before = a.agent.send(ch, b"before").unwrap();
    carry(&a, &b);
    // Before any reset, the ids are those of every earlier version.
    let d = mfp_core::crypto::sha256(&[
        b"mfp-remote-message-id",
        ch.as_bytes(),
        a.rt.identity().as_bytes(),
        &0u64.to_be_bytes(),
    ]);
    assert_eq!(before.message_id.as_bytes()[..], d[..16]);
    assert_eq!(before.correlation_id.0[..], d[16..24]);

    let mut seen = vec![before.message_id];
    for (round, reset) in [[0xa1u8; 16], [0xa2; 16]].into_iter().enumerate() {
        reset_both(&a, &b, ch, 10 + round as u8, 20 + round as u8, reset);
        let after = a.agent.send(ch, b"after").unwrap();
        assert_eq!(after.step, 0, "a reset starts the steps again");
        assert!(!seen.contains(&after.message_id), "round {round}: a message id repeats across resets");
        assert_ne!(after.correlation_id, before.correlation_id);
        seen.push(after.message_id);
        assert!(matches!(carry(&a, &b)[0], Ok(Ingested::Delivered { step: 0, .. })));
        // Both runtimes derive the same id: the receipt's is the delivery's.
        let got = b.inbox.wait_for(round + 2);
        assert_eq!(got[round + 1].message_id, after.message_id);
        assert_eq!(got[round + 1].correlation_id, after.correlation_id);
    }
}

#[test]
fn an_unhandled_message_from_before_a_reset_and_one_of_the_same_step_after_it_are_both_kept() {
    let store_b = MemoryStorage::new();
    let a = side(b"a", None);
    // B's handler holds each message until the test lets it go.
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let inbox = Inbox::new();
    let rt_b = Runtime::builder(config(b"b")).storage(store_b.clone()).build().unwrap();
    let wire_b = Loopback::new();
    rt_b.attach_transport(Arc::new(wire_b.clone())).unwrap();
    let seen = inbox.clone();
    let agent_b = rt_b
        .bind_named("agent", move |_, m| {
            seen.push(m);
            let _ = gate_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
    let b = Side { rt: rt_b, wire: wire_b, agent: agent_b, inbox };
    let ch = join(&a, &b, 4);

    let old = a.agent.send(ch, b"old").unwrap();
    carry(&a, &b);
    // The handler has the old message and has not returned: it is still in the inbox.
    b.inbox.wait_for(1);
    reset_both(&a, &b, ch, 30, 31, [0xb1; 16]);
    let new = a.agent.send(ch, b"new").unwrap();
    assert_eq!((old.step, new.step), (0, 0));
    assert!(matches!(carry(&a, &b)[0], Ok(Ingested::Delivered { step: 0, .. })));

    // Both are stored: the old one was not overwritten by the new one of the same step.
    let stored = store_b.load().unwrap().unwrap().deliveries;
    let stored: Vec<(&[u8], mfp_core::MessageId)> = stored.iter().map(|d| (&d.payload[..], d.message_id)).collect();
    assert_eq!(stored, [(&b"old"[..], old.message_id), (&b"new"[..], new.message_id)]);

    // The handler returns for the old one: its removal takes the old one, not the new one.
    gate_tx.send(()).unwrap();
    let got = b.inbox.wait_for(2);
    assert_eq!((got[1].payload.as_slice(), got[1].message_id), (&b"new"[..], new.message_id));
    gate_tx.send(()).unwrap();
    b.rt.shutdown();
    // Both handled: nothing is left to deliver again.
    assert!(store_b.load().unwrap().unwrap().deliveries.is_empty());
}

#[test]
fn a_retried_send_whose_message_a_reset_discarded_is_sent_again() {
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    let key = |k: &str| mfp_runtime::SendOptions::idempotent(k.as_bytes().to_vec());
    // Delivered and acknowledged: its receipt stays true after the reset.
    let delivered = a.agent.send_with(ch, b"delivered", &key("k1")).unwrap();
    carry(&a, &b);
    a.rt.remote_handle().acknowledge(&ch, 1).unwrap();
    // Never acknowledged: the reset discards it.
    let lost = a.agent.send_with(ch, b"lost", &key("k2")).unwrap();
    assert_eq!(a.wire.take().len(), 1);
    let (discarded, _) = reset_both(&a, &b, ch, 40, 41, [0xc1; 16]);
    assert_eq!(discarded, 1);

    // The retry of the delivered message is answered from the window, nothing is sent.
    assert_eq!(a.agent.send_with(ch, b"delivered", &key("k1")).unwrap(), delivered);
    assert!(a.wire.take().is_empty());
    // The retry of the discarded one is a new message, under the new chains.
    let again = a.agent.send_with(ch, b"lost", &key("k2")).unwrap();
    assert_ne!(again.message_id, lost.message_id);
    assert_eq!(again.step, 0);
    assert!(matches!(carry(&a, &b)[..], [Ok(Ingested::Delivered { step: 0, .. })]));
    let got = b.inbox.wait_for(2);
    assert_eq!((got[1].payload.as_slice(), got[1].message_id), (&b"lost"[..], again.message_id));
}

/// A task sending in a loop on a cross-runtime channel, where nothing makes a send wait
/// (no storage, room in the transport), still gives way to the other tasks of its worker —
/// among them the link's, which writes the messages out. On a one-thread runtime, a task
/// spawned after the sender must run before the sender's last send.
#[test]
fn a_task_sending_in_a_loop_gives_way_to_the_other_tasks_of_its_worker() {
    // Under the default rate limit (1,000 a second), well over a task's coop budget (128).
    const SENDS: usize = 900;
    let a = side(b"a", None);
    let b = side(b"b", None);
    let ch = join(&a, &b, 4);
    let tokio_rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_at = tokio_rt.block_on(async {
        let sender = {
            let (agent, progress) = (a.agent.clone(), Arc::clone(&progress));
            tokio::spawn(async move {
                for i in 0..SENDS {
                    agent.send_async(ch, &i.to_be_bytes()).await.unwrap();
                    progress.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let other = {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move { progress.load(std::sync::atomic::Ordering::Relaxed) })
        };
        let seen_at = other.await.unwrap();
        sender.await.unwrap();
        seen_at
    });
    assert_eq!(a.wire.take().len(), SENDS);
    assert!(seen_at < SENDS, "the other task ran only after all {SENDS} sends");
}

/// A blocking send on the thread that drives a current-thread runtime, made when the task
/// it runs in has spent its coop budget, sends once and says so: it does not report
/// `WouldBlock` for a message it has sent (a caller would send it again).
#[test]
fn a_blocking_send_from_a_task_without_budget_sends_once_and_says_so() {
    let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let on = |name: &[u8]| {
        let rt = Runtime::builder(config(name)).tokio_handle(tokio_rt.handle().clone()).build().unwrap();
        let wire = Loopback::new();
        rt.attach_transport(Arc::new(wire.clone())).unwrap();
        let inbox = Inbox::new();
        let agent = rt.bind_named("agent", inbox.handler()).unwrap();
        Side { rt, wire, agent, inbox }
    };
    let (a, b) = (on(b"a"), on(b"b"));
    let ch = join(&a, &b, 4);
    let sent = tokio_rt.block_on(async {
        while tokio::task::coop::has_budget_remaining() {
            tokio::task::consume_budget().await;
        }
        a.agent.send(ch, b"once")
    });
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(a.wire.take().len(), 1);
    // The runtimes' tasks live on this runtime: they stop while it is driven.
    tokio_rt.block_on(async {
        a.rt.shutdown_async().await;
        b.rt.shutdown_async().await;
    });
}
