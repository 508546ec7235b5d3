//! The `runtime_trace_cross` section: two pymfp runtimes, alice on A and bob on B, one
//! deterministic bilateral chain shared by both directions, three messages (A→B, B→A, A→B)
//! and two more written back to back on one TCP connection.
//!
//! Replayed through the pymfp compat layer of `mfp-federation`: each side's chain comes
//! from [`shared_chain`](mfp_federation::compat::shared_chain) (via
//! [`CompatLink`]), the sender's wire bytes must equal
//! pymfp's byte for byte, the receiver must accept pymfp's recorded bytes and deliver the
//! payload from the right agent, and both sides must end every message in pymfp's state.
//! The TCP check decodes the two concatenated messages with an
//! [`EnvelopeStream`].
//!
//! Then the same session runs through two real [`Runtime`]s joined by an in-process
//! transport in compat mode (one [`SharedChain`] per runtime as both the tx and the rx
//! chain of the channel, nothing acknowledged): each message is sent by an agent, the bytes
//! the runtime hands to its transport must be pymfp's, and the other runtime ingests them
//! and delivers them to its agent from the right sender.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mfp_runtime::remote::{
    Chains, Ingested, OutboundMessage, OutboundSlot, ReadyFuture, RemoteEnd, SharedChain, Transport, TransportError,
};
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime, RuntimeConfig};

use mfp_core::envelope::{EnvelopeHeader, EnvelopeLimits};
use mfp_core::{AgentId, BilateralId, ChannelId, RuntimeId};
use mfp_federation::compat::{Bootstrap, CompatChannel, CompatLink, CompatPeer, EnvelopeStream};
use serde_json::Value;

use crate::vectors::{Section, check_bilateral, field, hx, list, num};

fn id32(v: &Value, key: &str) -> Result<[u8; 32], String> {
    hx(v, key)?.try_into().map_err(|_| format!("{key} must be 32 bytes"))
}

fn link(local: RuntimeId, peer: RuntimeId, channel: CompatChannel) -> Result<CompatLink, String> {
    let mut p = CompatPeer::with_runtime_id(peer.short(), peer, "127.0.0.1:9876", Bootstrap::Deterministic)
        .map_err(|e| e.to_string())?;
    p.add_channel(channel).map_err(|e| e.to_string())?;
    let limits = EnvelopeLimits { max_frame_depth: 256, max_payload_len: u32::MAX };
    CompatLink::new(local, &p, limits).map_err(|e| e.to_string())
}

pub(crate) fn runtime_trace_cross(v: &Value, sec: &mut Section) -> Result<(), String> {
    let a = RuntimeId::from_bytes(id32(v, "runtime_a")?);
    let b = RuntimeId::from_bytes(id32(v, "runtime_b")?);
    let alice = AgentId::from_bytes(id32(v, "alice_on_a")?);
    let bob = AgentId::from_bytes(id32(v, "bob_on_b")?);
    let ch = ChannelId::from_slice(&hx(v, "channel_id")?).map_err(|e| e.to_string())?;
    sec.bytes("bilateral_id", BilateralId::derive(&a, &b).as_bytes(), &hx(v, "bilateral_id")?);
    let messages = list(v, "messages")?;
    // The agreed depth: pymfp's channel depth, as its first envelope carries it.
    let first = messages.first().ok_or("no messages")?;
    let depth = EnvelopeHeader::parse(&hx(first, "wire_bytes")?).map_err(|e| e.to_string())?.frame_depth as usize;
    let mut on_a = link(a, b, CompatChannel { id: ch, depth, local_agent: alice, remote_agent: bob })?;
    let mut on_b = link(b, a, CompatChannel { id: ch, depth, local_agent: bob, remote_agent: alice })?;
    check_bilateral(sec, "initial_state (A)", on_a.state(), field(v, "initial_state")?)?;
    check_bilateral(sec, "initial_state (B)", on_b.state(), field(v, "initial_state")?)?;
    for (i, m) in messages.iter().enumerate() {
        let from = hx(m, "from")?;
        let (sender, receiver, receiver_id, sender_agent) = if from == a.sender_field() {
            (&mut on_a, &mut on_b, b, alice)
        } else if from == b.sender_field() {
            (&mut on_b, &mut on_a, a, bob)
        } else {
            return Err(format!("messages[{i}].from names neither runtime"));
        };
        sec.bytes(&format!("[{i}] to_peer_runtime"), receiver_id.as_bytes(), &hx(m, "to_peer_runtime")?);
        check_bilateral(sec, &format!("[{i}] pre_state (sender)"), sender.state(), field(m, "pre_state")?)?;
        check_bilateral(sec, &format!("[{i}] pre_state (receiver)"), receiver.state(), field(m, "pre_state")?)?;
        let payload = hx(m, "payload")?;
        let wire = sender.seal(&ch, &payload).map_err(|e| e.to_string())?;
        let recorded = hx(m, "wire_bytes")?;
        sec.bytes(&format!("[{i}] wire_bytes"), &wire, &recorded);
        let step = EnvelopeHeader::parse(&wire).map_err(|e| e.to_string())?.step;
        sec.eq(&format!("[{i}] receipt_step"), step, num(m, "receipt_step")?);
        match receiver.open(&recorded) {
            Ok(d) => {
                sec.bytes(&format!("[{i}] delivered payload"), &d.payload, &payload);
                sec.bytes(&format!("[{i}] delivered_sender"), d.from.as_bytes(), &hx(m, "delivered_sender")?);
                sec.eq(&format!("[{i}] delivered by the sender's agent"), d.from, sender_agent);
            }
            Err(e) => sec.eq(&format!("[{i}] receiver accepts pymfp's bytes"), Err(e.to_string()), Ok(())),
        }
        let post = field(m, "post_state_both_sides")?;
        check_bilateral(sec, &format!("[{i}] post_state (sender)"), sender.state(), post)?;
        check_bilateral(sec, &format!("[{i}] post_state (receiver)"), receiver.state(), post)?;
    }
    // pymfp's TCP check: alice's side writes two messages back to back on one connection
    // (no other framing) and bob's side receives both, in order.
    let tcp = field(v, "tcp_loopback_check")?;
    let payloads: [&[u8]; 2] = [b"tcp-1", b"tcp-2"];
    let mut bytes = Vec::new();
    for p in payloads {
        bytes.extend(on_a.seal(&ch, p).map_err(|e| e.to_string())?);
    }
    sec.eq("tcp_loopback_check.bytes_sent", bytes.len() as u64, num(tcp, "bytes_sent")?);
    let mut stream = EnvelopeStream::new(EnvelopeLimits::default());
    let got: Vec<Vec<u8>> = stream
        .decode_all(&bytes)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|w| on_b.open(w).map(|d| d.payload).unwrap_or_default())
        .collect();
    let in_order = got.iter().map(Vec::as_slice).eq(payloads);
    let want = field(tcp, "delivered_in_order")?.as_bool().ok_or("delivered_in_order is not a boolean")?;
    sec.eq("tcp_loopback_check.delivered_in_order", in_order, want);
    sec.eq("tcp_loopback_check: the two chains agree", on_a.state() == on_b.state(), true);
    runtime_trace_cross_runtimes(v, sec)
}

// ---- the same session through two real runtimes -------------------------------------------

/// An in-process transport in compat mode: what the runtime hands over is kept for the
/// replay to carry to the other runtime; nothing is acknowledged (pymfp acknowledges
/// nothing), so the runtime keeps no outbound log.
#[derive(Clone, Default)]
struct Carrier(Arc<Mutex<Vec<OutboundMessage>>>);

struct CarrierSlot(Arc<Mutex<Vec<OutboundMessage>>>);

impl OutboundSlot for CarrierSlot {
    fn send(self: Box<Self>, message: OutboundMessage) {
        if let Ok(mut q) = self.0.lock() {
            q.push(message);
        }
    }
}

impl Transport for Carrier {
    fn reserve(&self, _peer: &RuntimeId, _len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        Ok(Box::new(CarrierSlot(Arc::clone(&self.0))))
    }

    fn ready(&self, _peer: &RuntimeId) -> ReadyFuture {
        Box::pin(async {})
    }

    fn acknowledges(&self, _peer: &RuntimeId) -> bool {
        false
    }
}

impl Carrier {
    fn take(&self) -> Vec<OutboundMessage> {
        self.0.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }
}

struct RtSide {
    rt: Runtime,
    carrier: Carrier,
    agent: AgentHandle,
    delivered: mpsc::Receiver<DeliveredMessage>,
    chain: SharedChain,
}

fn rt_side(
    me: RuntimeId,
    peer: RuntimeId,
    remote_agent: AgentId,
    ch: ChannelId,
    depth: usize,
) -> Result<RtSide, String> {
    let config = {
        let mut c = RuntimeConfig::default();
        c.identity = Some(me);
        c
    };
    let rt = Runtime::builder(config).build().map_err(|e| e.to_string())?;
    let carrier = Carrier::default();
    rt.attach_transport(Arc::new(carrier.clone())).map_err(|e| e.to_string())?;
    let (tx, delivered) = mpsc::channel();
    let tx = Mutex::new(tx);
    let agent = rt
        .bind(move |_: &AgentHandle, m: DeliveredMessage| {
            if let Ok(t) = tx.lock() {
                let _ = t.send(m);
            }
        })
        .map_err(|e| e.to_string())?;
    // The compat peer's chain, as `shared_chain` derives it, shared by both directions.
    let peer_cfg = CompatPeer::with_runtime_id(peer.short(), peer, "127.0.0.1:9876", Bootstrap::Deterministic)
        .map_err(|e| e.to_string())?;
    let state = mfp_federation::compat::shared_chain(&me, &peer_cfg).map_err(|e| e.to_string())?;
    let chain = SharedChain::new(state);
    rt.remote_handle()
        .establish(agent.id(), RemoteEnd::new(peer, remote_agent), ch, depth, Chains::Shared(chain.clone()))
        .map_err(|e| e.to_string())?;
    Ok(RtSide { rt, carrier, agent, delivered, chain })
}

/// Replays the section through two runtimes: each message is sent by the sender's agent,
/// taken from its runtime's transport, compared with pymfp's bytes, and ingested by the
/// other runtime, whose agent must receive it from the right sender.
pub(crate) fn runtime_trace_cross_runtimes(v: &Value, sec: &mut Section) -> Result<(), String> {
    let a = RuntimeId::from_bytes(id32(v, "runtime_a")?);
    let b = RuntimeId::from_bytes(id32(v, "runtime_b")?);
    let alice = AgentId::from_bytes(id32(v, "alice_on_a")?);
    let bob = AgentId::from_bytes(id32(v, "bob_on_b")?);
    let ch = ChannelId::from_slice(&hx(v, "channel_id")?).map_err(|e| e.to_string())?;
    let messages = list(v, "messages")?;
    let first = messages.first().ok_or("no messages")?;
    let depth = EnvelopeHeader::parse(&hx(first, "wire_bytes")?).map_err(|e| e.to_string())?.frame_depth as usize;
    let on_a = rt_side(a, b, bob, ch, depth)?;
    let on_b = rt_side(b, a, alice, ch, depth)?;
    let wait = Duration::from_secs(10);
    for (i, m) in messages.iter().enumerate() {
        let from = hx(m, "from")?;
        let (sender, receiver, sender_id, sender_agent) = if from == a.sender_field() {
            (&on_a, &on_b, a, alice)
        } else if from == b.sender_field() {
            (&on_b, &on_a, b, bob)
        } else {
            return Err(format!("messages[{i}].from names neither runtime"));
        };
        let payload = hx(m, "payload")?;
        let receipt = sender.agent.send(ch, &payload).map_err(|e| format!("runtime send [{i}]: {e}"))?;
        sec.eq(&format!("[{i}] runtime receipt step"), receipt.step, num(m, "receipt_step")?);
        let out = sender.carrier.take();
        let [msg] = out.as_slice() else { return Err(format!("[{i}] the runtime handed over {} messages", out.len())) };
        sec.bytes(&format!("[{i}] runtime wire_bytes"), &msg.wire, &hx(m, "wire_bytes")?);
        let ingested = receiver.rt.remote_handle().ingest(&sender_id, &msg.wire).map_err(|e| e.to_string())?;
        sec.eq(&format!("[{i}] runtime ingested"), ingested, Ingested::Delivered { channel: ch, step: receipt.step });
        let d = receiver.delivered.recv_timeout(wait).map_err(|_| format!("[{i}] nothing delivered"))?;
        sec.bytes(&format!("[{i}] runtime delivered payload"), &d.payload, &payload);
        sec.bytes(&format!("[{i}] runtime delivered_sender"), d.sender.as_bytes(), &hx(m, "delivered_sender")?);
        sec.eq(&format!("[{i}] runtime delivered by"), d.sender, sender_agent);
        sec.eq(&format!("[{i}] runtime sender_runtime"), d.sender_runtime, Some(sender_id));
        let post = num(field(m, "post_state_both_sides")?, "step")?;
        sec.eq(&format!("[{i}] runtime post step (sender)"), sender.chain.step(), post);
        sec.eq(&format!("[{i}] runtime post step (receiver)"), receiver.chain.step(), post);
    }
    // The two TCP messages, sealed by A's runtime, must be exactly what the compat layer
    // seals from the recorded post state of the last message (so both runtimes' chains are
    // in pymfp's state, not only at its step).
    let last = messages.last().ok_or("no messages")?;
    let post = field(last, "post_state_both_sides")?;
    let state = mfp_core::bilateral::BilateralState {
        ratchet: crate::vectors::state(post, "ratchet_state")?,
        prng_seed: crate::vectors::state(post, "shared_prng_seed")?,
        step: num(post, "step")?,
    };
    let mut peer_b = CompatPeer::with_runtime_id(b.short(), b, "127.0.0.1:9876", Bootstrap::Deterministic)
        .map_err(|e| e.to_string())?;
    peer_b
        .add_channel(CompatChannel { id: ch, depth, local_agent: alice, remote_agent: bob })
        .map_err(|e| e.to_string())?;
    let mut reference = CompatLink::with_state(a, &peer_b, EnvelopeLimits::default(), state);
    for (k, p) in [b"tcp-1".as_slice(), b"tcp-2"].into_iter().enumerate() {
        on_a.agent.send(ch, p).map_err(|e| e.to_string())?;
        let out = on_a.carrier.take();
        let want = reference.seal(&ch, p).map_err(|e| e.to_string())?;
        let got = out.first().map(|m| m.wire.to_vec()).unwrap_or_default();
        sec.bytes(&format!("tcp[{k}] runtime wire from the recorded post state"), &got, &want);
        let ingested = on_b.rt.remote_handle().ingest(&a, &got).map_err(|e| e.to_string())?;
        sec.eq(&format!("tcp[{k}] runtime ingested"), matches!(ingested, Ingested::Delivered { .. }), true);
        let d = on_b.delivered.recv_timeout(wait).map_err(|_| format!("tcp[{k}] nothing delivered"))?;
        sec.bytes(&format!("tcp[{k}] runtime delivered payload"), &d.payload, p);
    }
    on_a.rt.shutdown();
    on_b.rt.shutdown();
    Ok(())
}
