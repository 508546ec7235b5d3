//! The `runtime_trace_intra` section: replays pymfp's recorded intra-runtime session
//! (binds, establishes, sends, a close) through our runtime with the recorded entropy,
//! and compares every state, id and byte string along the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mfp_core::{ChannelId, Frame, Prng, RuntimeId, State, encoding, message, ratchet};
use mfp_runtime::{AgentHandle, DeliveredMessage, Runtime, RuntimeConfig};
use serde_json::Value;

use crate::vectors::{Section, field, hex_list, hx, list, num};

fn s<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    field(v, key)?.as_str().ok_or_else(|| format!("field '{key}' is not a string"))
}

/// The entropy pymfp drew, in order: agent suffixes, channel ids, per-send draws.
fn recorded_entropy(events: &[Value]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for e in events {
        match s(e, "op")? {
            "bind" => out.extend(hx(e, "random_suffix")?),
            "establish_channel" => out.extend(hx(e, "channel_id")?),
            "send" => {
                for d in list(e, "entropy_draws_in_order")? {
                    out.extend(hx(d, "bytes")?);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

type Inbox = Arc<Mutex<HashMap<String, Vec<DeliveredMessage>>>>;

pub(crate) fn runtime_trace_intra(v: &Value, sec: &mut Section) -> Result<(), String> {
    let runtime_id = RuntimeId::from_slice(&hx(v, "runtime_id")?).map_err(|e| e.to_string())?;
    let events = list(v, "events")?;
    let config = {
        let mut c = RuntimeConfig::default();
        c.identity = Some(runtime_id);
        c.max_frame_depth = 256;
        c
    };
    let rt = Runtime::builder(config)
        .entropy(mfp_core::ReplayEntropy::new(recorded_entropy(events)?))
        .build()
        .map_err(|e| e.to_string())?;
    sec.bytes("runtime_id", rt.identity().as_bytes(), runtime_id.as_bytes());
    let inbox: Inbox = Arc::default();
    let mut handles: HashMap<String, AgentHandle> = HashMap::new();
    let mut channel_of: HashMap<String, ChannelId> = HashMap::new();
    let sg = |rt: &Runtime| rt.global_state().map(|s| s.expose().to_vec()).unwrap_or_default();

    for (i, e) in events.iter().enumerate() {
        let op = s(e, "op")?;
        match op {
            "bind" => {
                let name = s(e, "name")?.to_string();
                let sink = Arc::clone(&inbox);
                let n2 = name.clone();
                let h = rt
                    .bind_named(&name, move |_: &AgentHandle, m: DeliveredMessage| {
                        if let Ok(mut map) = sink.lock() {
                            map.entry(n2.clone()).or_default().push(m);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                sec.bytes(&format!("[{i}] bind {name} agent_id"), h.id().as_bytes(), &hx(e, "agent_id")?);
                sec.eq(&format!("[{i}] bind {name} counter"), rt.agent_counter(), num(e, "counter")?);
                handles.insert(name, h);
            }
            "establish_channel" => {
                let names = list(e, "agents")?;
                let a = names.first().and_then(Value::as_str).ok_or("agents[0]")?;
                let b = names.get(1).and_then(Value::as_str).ok_or("agents[1]")?;
                let ha = handles.get(a).ok_or("unknown agent")?;
                let hb = handles.get(b).ok_or("unknown agent")?;
                let depth = num(e, "depth")? as usize;
                let id = rt.establish_channel_with_depth(&ha.id(), &hb.id(), depth).map_err(|e| e.to_string())?;
                sec.bytes(&format!("[{i}] establish channel_id"), id.as_bytes(), &hx(e, "channel_id")?);
                let (sa, sb) = rt.channel_agents(&id).map_err(|e| e.to_string())?;
                sec.bytes(&format!("[{i}] stored_agent_a"), sa.as_bytes(), &hx(e, "stored_agent_a")?);
                sec.bytes(&format!("[{i}] stored_agent_b"), sb.as_bytes(), &hx(e, "stored_agent_b")?);
                let (sl, step) = rt.channel_state(&id).map_err(|e| e.to_string())?;
                sec.bytes(&format!("[{i}] sl0"), sl.expose(), &hx(e, "sl0")?);
                sec.eq(&format!("[{i}] step"), step, 0);
                sec.bytes(&format!("[{i}] sg_after"), &sg(&rt), &hx(e, "sg_after")?);
                channel_of.insert(format!("{a}/{b}"), id);
                channel_of.insert(format!("{b}/{a}"), id);
            }
            "send" => send_event(&rt, i, e, &handles, &inbox, sec)?,
            "close_channel" => {
                let id = ChannelId::from_slice(&hx(e, "channel_id")?).map_err(|e| e.to_string())?;
                rt.close_channel(&id).map_err(|e| e.to_string())?;
                sec.bytes(&format!("[{i}] close sg_after"), &sg(&rt), &hx(e, "sg_after")?);
            }
            other => return Err(format!("unknown trace op '{other}'")),
        }
    }
    rt.shutdown();
    Ok(())
}

fn send_event(
    rt: &Runtime,
    i: usize,
    e: &Value,
    handles: &HashMap<String, AgentHandle>,
    inbox: &Inbox,
    sec: &mut Section,
) -> Result<(), String> {
    let sender = handles.get(s(e, "sender")?).ok_or("unknown sender")?;
    let recipient = s(e, "recipient")?;
    let ch = ChannelId::from_slice(&hx(e, "channel_id")?).map_err(|e| e.to_string())?;
    let depth = num(e, "depth")? as usize;
    let payload = hx(e, "payload")?;
    let (pre_sl, pre_step) = rt.channel_state(&ch).map_err(|e| e.to_string())?;
    let pre_sg = rt.global_state().ok_or("no global state")?;
    sec.bytes(&format!("[{i}] pre_local_state"), pre_sl.expose(), &hx(e, "pre_local_state")?);
    sec.eq(&format!("[{i}] pre_step"), pre_step, num(e, "pre_step")?);
    sec.bytes(&format!("[{i}] pre_sg"), pre_sg.expose(), &hx(e, "pre_sg")?);

    // What the pipeline must compute, from the recorded inputs.
    let draws: Vec<Vec<u8>> =
        list(e, "entropy_draws_in_order")?.iter().map(|d| hx(d, "bytes")).collect::<Result<_, _>>()?;
    let jitter: Vec<u8> = draws.iter().skip(2).flatten().copied().collect();
    let ds = ratchet::distribution_seed(&pre_sl, pre_step, &pre_sg);
    sec.bytes(&format!("[{i}] ds"), ds.expose(), &hx(e, "ds")?);
    let mut cand = vec![0u8; 16 * depth];
    Prng::new(&ds).fill(&mut cand);
    sec.bytes(&format!("[{i}] candidates"), &cand, &hex_list(e, "candidates")?.concat());
    let frame_bytes: Vec<u8> = cand.iter().zip(&jitter).map(|(c, j)| c ^ j).collect();
    let want_frame = hex_list(e, "frame_open_blocks")?.concat();
    sec.bytes(&format!("[{i}] frame_open_blocks"), &frame_bytes, &want_frame);
    let frame = Frame::from_bytes(want_frame).map_err(|e| e.to_string())?;
    let enc = encoding::encode(&pre_sl, &ch, pre_step, &payload).map_err(|e| e.to_string())?;
    sec.bytes(&format!("[{i}] encoded_payload"), &enc, &hx(e, "encoded_payload")?);
    sec.bytes(
        &format!("[{i}] protocol_message"),
        &message::assemble_encoded(&frame, &enc),
        &hx(e, "protocol_message")?,
    );

    // The runtime's own send.
    let receipt = sender.send(ch, &payload).map_err(|e| format!("send failed: {e}"))?;
    if !rt.wait_idle(Duration::from_secs(5)) {
        return Err("delivery did not complete".into());
    }
    let r = field(e, "receipt")?;
    sec.bytes(&format!("[{i}] receipt.message_id"), receipt.message_id.as_bytes(), &hx(r, "message_id")?);
    sec.bytes(&format!("[{i}] receipt.channel"), receipt.channel.as_bytes(), &hx(r, "channel")?);
    sec.eq(&format!("[{i}] receipt.step"), receipt.step, num(r, "step")?);
    sec.eq(
        &format!("[{i}] receipt.correlation_id"),
        receipt.correlation_id.to_string().as_str(),
        s(r, "correlation_id")?,
    );
    let d = field(e, "delivered")?;
    let got = inbox.lock().map_err(|_| "inbox poisoned")?.get(recipient).and_then(|v| v.last().cloned());
    let got = got.ok_or("nothing delivered")?;
    sec.bytes(&format!("[{i}] delivered.payload"), &got.payload, &hx(d, "payload")?);
    sec.bytes(&format!("[{i}] delivered.sender"), got.sender.as_bytes(), &hx(d, "sender")?);
    sec.bytes(&format!("[{i}] delivered.channel"), got.channel.as_bytes(), &hx(d, "channel")?);
    sec.bytes(&format!("[{i}] delivered.message_id"), got.message_id.as_bytes(), &hx(d, "message_id")?);
    sec.eq(
        &format!("[{i}] delivered.correlation_id"),
        got.correlation_id.to_string().as_str(),
        s(d, "correlation_id")?,
    );

    let (post_sl, post_step) = rt.channel_state(&ch).map_err(|e| e.to_string())?;
    sec.bytes(&format!("[{i}] post_local_state"), post_sl.expose(), &hx(e, "post_local_state")?);
    sec.bytes(
        &format!("[{i}] post_local_state = f(pre, frame)"),
        ratchet::advance(&pre_sl, &frame).expose(),
        post_sl.expose(),
    );
    sec.eq(&format!("[{i}] post_step"), post_step, num(e, "post_step")?);
    let post_sg: State = rt.global_state().ok_or("no global state")?;
    sec.bytes(&format!("[{i}] post_sg"), post_sg.expose(), &hx(e, "post_sg")?);
    Ok(())
}
