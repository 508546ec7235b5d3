//! The `runtime_trace_cross` section: two pymfp runtimes, alice on A and bob on B, one
//! deterministic bilateral chain shared by both directions, three messages (A→B, B→A, A→B)
//! and two more written back to back on one TCP connection.
//!
//! Replayed through the pymfp compat layer of `mfp-federation`: each side's chain comes
//! from [`shared_chain`](mfp_federation::compat::shared_chain) (via
//! [`CompatLink`](mfp_federation::compat::CompatLink)), the sender's wire bytes must equal
//! pymfp's byte for byte, the receiver must accept pymfp's recorded bytes and deliver the
//! payload from the right agent, and both sides must end every message in pymfp's state.
//! The TCP check decodes the two concatenated messages with an
//! [`EnvelopeStream`](mfp_federation::compat::EnvelopeStream).

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
    Ok(())
}
