//! `cargo xtask vectors FILE`: checks mfp-core against a test-vector file in the schema
//! of `tests/vectors/pymfp-1.0.0.json` (see `tests/vectors/README.md`). Any file of that schema works, not only ours: every
//! expected value is read from the file and every computed value comes from our code.
//!
//! Prints one line per section with its number of checks, lists sections this
//! implementation does not cover yet, and fails on any mismatch or malformed entry.

use std::fmt::Debug;
use std::path::Path;

use mfp_core::bilateral::{self, BilateralState, RecoveryConfig, RekeyMessage};
use mfp_core::envelope::{EnvelopeFlags, EnvelopeHeader};
use mfp_core::{
    AgentId, BilateralId, ChannelId, EnvelopeError, Frame, MerkleSg, Prng, RuntimeId, State, crypto, encoding, message,
    ratchet, sampling,
};
use serde_json::Value;

/// Totals of one run.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) passed: usize,
    pub(crate) failed: usize,
}

type Check = fn(&Value, &mut Section) -> Result<(), String>;

/// Sections we check, in file order of the reference vectors.
const SECTIONS: &[(&str, Check)] = &[
    ("constants", constants),
    ("runtime_identity", runtime_identity),
    ("agent_id", agent_id),
    ("channel_seed", channel_seed),
    ("ratchet_advance", ratchet_advance),
    ("compose_plain", compose_plain),
    ("compose_ordered", compose_ordered),
    ("merkle_sg", merkle_sg),
    ("distribution_seed", distribution_seed),
    ("chacha20_prng", chacha20_prng),
    ("frame_sampling_intra", frame_sampling_intra),
    ("frame_sampling_cross", frame_sampling_cross),
    ("mirror", mirror),
    ("encoding", encoding_section),
    ("protocol_message", protocol_message),
    ("frame_validation", frame_validation),
    ("bilateral_seed", bilateral_seed),
    ("bilateral_ceremonial", bilateral_ceremonial),
    ("bilateral_chain", bilateral_chain),
    ("envelope_header", envelope_header),
    ("envelope_validation", envelope_validation),
    ("recovery", recovery),
    ("rotation", rotation),
    ("runtime_trace_intra", crate::trace::runtime_trace_intra),
    ("runtime_trace_cross", crate::trace_cross::runtime_trace_cross),
    ("storage_crypto", storage_crypto),
];

/// Sections of the schema that belong to layers not built yet (none left).
const NOT_COVERED: &[&str] = &[];

/// Sections that carry no checkable values.
const INFORMATIONAL: &[&str] = &["meta"];

/// One section's running tally.
pub(crate) struct Section {
    checks: usize,
    failures: Vec<String>,
}

impl Section {
    fn new() -> Self {
        Self { checks: 0, failures: Vec::new() }
    }

    pub(crate) fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        self.checks += 1;
        if got != want {
            self.failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub(crate) fn bytes(&mut self, what: &str, got: &[u8], want: &[u8]) {
        self.checks += 1;
        if got != want {
            self.failures.push(format!("{what}: got {}, want {}", hex::encode(got), hex::encode(want)));
        }
    }
}

// ---- JSON access -------------------------------------------------------------------

pub(crate) fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing field '{key}'"))
}

pub(crate) fn hx(v: &Value, key: &str) -> Result<Vec<u8>, String> {
    let s = field(v, key)?.as_str().ok_or_else(|| format!("field '{key}' is not a string"))?;
    hex::decode(s).map_err(|_| format!("field '{key}' is not hex"))
}

pub(crate) fn num(v: &Value, key: &str) -> Result<u64, String> {
    field(v, key)?.as_u64().ok_or_else(|| format!("field '{key}' is not an unsigned integer"))
}

pub(crate) fn list<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    field(v, key)?.as_array().ok_or_else(|| format!("field '{key}' is not a list"))
}

pub(crate) fn hex_list(v: &Value, key: &str) -> Result<Vec<Vec<u8>>, String> {
    list(v, key)?
        .iter()
        .map(|x| {
            let s = x.as_str().ok_or_else(|| format!("'{key}' holds a non-string"))?;
            hex::decode(s).map_err(|_| format!("'{key}' holds non-hex"))
        })
        .collect()
}

fn entries(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| "section is not a list".to_string())
}

pub(crate) fn state(v: &Value, key: &str) -> Result<State, String> {
    State::from_slice(&hx(v, key)?).map_err(|e| format!("{key}: {e}"))
}

fn runtime(v: &Value, key: &str) -> Result<RuntimeId, String> {
    RuntimeId::from_slice(&hx(v, key)?).map_err(|e| format!("{key}: {e}"))
}

fn channel(v: &Value, key: &str) -> Result<ChannelId, String> {
    ChannelId::from_slice(&hx(v, key)?).map_err(|e| format!("{key}: {e}"))
}

fn frame(v: &Value, key: &str) -> Result<Frame, String> {
    Frame::from_bytes(hex_list(v, key)?.concat()).map_err(|e| format!("{key}: {e}"))
}

fn bilateral_state(v: &Value) -> Result<BilateralState, String> {
    Ok(BilateralState {
        ratchet: state(v, "ratchet_state")?,
        prng_seed: state(v, "shared_prng_seed")?,
        step: num(v, "step")?,
    })
}

pub(crate) fn check_bilateral(s: &mut Section, what: &str, got: &BilateralState, want: &Value) -> Result<(), String> {
    s.bytes(&format!("{what}.ratchet_state"), got.ratchet.expose(), &hx(want, "ratchet_state")?);
    s.bytes(&format!("{what}.shared_prng_seed"), got.prng_seed.expose(), &hx(want, "shared_prng_seed")?);
    s.eq(&format!("{what}.step"), got.step, num(want, "step")?);
    Ok(())
}

fn draws(seed: &State, n: usize) -> Vec<Vec<u8>> {
    let mut p = Prng::new(seed);
    (0..n).map(|_| p.next_block().to_vec()).collect()
}

// ---- sections ----------------------------------------------------------------------

fn constants(v: &Value, s: &mut Section) -> Result<(), String> {
    s.eq("BLOCK_SIZE", num(v, "BLOCK_SIZE")?, mfp_core::BLOCK_SIZE as u64);
    s.eq("STATE_SIZE", num(v, "STATE_SIZE")?, mfp_core::STATE_SIZE as u64);
    s.eq("MIN_FRAME_DEPTH", num(v, "MIN_FRAME_DEPTH")?, mfp_core::MIN_FRAME_DEPTH as u64);
    s.eq("DEFAULT_FRAME_DEPTH", num(v, "DEFAULT_FRAME_DEPTH")?, mfp_core::DEFAULT_FRAME_DEPTH as u64);
    s.bytes("PROTOCOL_MAGIC", &mfp_core::PROTOCOL_MAGIC, &hx(v, "PROTOCOL_MAGIC")?);
    s.eq("PROTOCOL_VERSION", num(v, "PROTOCOL_VERSION")?, u64::from(mfp_core::PROTOCOL_VERSION));
    s.eq("ENVELOPE_HEADER_SIZE", num(v, "ENVELOPE_HEADER_SIZE")?, mfp_core::ENVELOPE_HEADER_SIZE as u64);
    s.bytes("ALGORITHM_AES_256_GCM", encoding::Algorithm::Aes256Gcm.id(), &hx(v, "ALGORITHM_AES_256_GCM")?);
    let flags = field(v, "EnvelopeFlags")?;
    s.eq("EnvelopeFlags.NONE", num(flags, "NONE")?, u64::from(EnvelopeFlags::NONE.0));
    s.eq("EnvelopeFlags.ACK", num(flags, "ACK")?, u64::from(EnvelopeFlags::ACK.0));
    s.eq("EnvelopeFlags.RECOVERY", num(flags, "RECOVERY")?, u64::from(EnvelopeFlags::RECOVERY.0));
    Ok(())
}

fn runtime_identity(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let rt = RuntimeId::derive(&hx(e, "deployment_id")?, &hx(e, "instance_id")?);
        s.bytes(&format!("[{i}] runtime_id"), rt.as_bytes(), &hx(e, "runtime_id")?);
        s.bytes(&format!("[{i}] sender_runtime_field"), &rt.sender_field(), &hx(e, "sender_runtime_field")?);
    }
    Ok(())
}

fn agent_id(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let suffix: [u8; 8] =
            hx(e, "random_suffix")?.try_into().map_err(|_| "random_suffix must be 8 bytes".to_string())?;
        let id = AgentId::derive(&runtime(e, "runtime_identity")?, num(e, "counter")?, &suffix);
        s.bytes(&format!("[{i}] agent_id"), id.as_bytes(), &hx(e, "agent_id")?);
    }
    Ok(())
}

fn channel_seed(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let rt = runtime(e, "runtime_identity")?;
        let a = AgentId::from_slice(&hx(e, "agent_a_arg")?).map_err(|e| e.to_string())?;
        let b = AgentId::from_slice(&hx(e, "agent_b_arg")?).map_err(|e| e.to_string())?;
        let ch = channel(e, "channel_id")?;
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let msg = [lo.as_bytes().as_slice(), hi.as_bytes(), ch.as_bytes()].concat();
        s.bytes(&format!("[{i}] hmac_message"), &msg, &hx(e, "hmac_message")?);
        s.bytes(&format!("[{i}] sl0"), ratchet::channel_seed(&rt, &a, &b, &ch).expose(), &hx(e, "sl0")?);
    }
    Ok(())
}

fn ratchet_advance(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let f = frame(e, "frame_open_blocks")?;
        s.bytes(&format!("[{i}] frame_bytes"), f.as_bytes(), &hx(e, "frame_bytes")?);
        let next = ratchet::advance(&state(e, "state")?, &f);
        s.bytes(&format!("[{i}] new_state"), next.expose(), &hx(e, "new_state")?);
    }
    Ok(())
}

fn compose_plain(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let states = hex_list(e, "states_in_order")?
            .iter()
            .map(|b| State::from_slice(b).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        s.eq(&format!("[{i}] n"), states.len() as u64, num(e, "n")?);
        s.bytes(&format!("[{i}] sg"), ratchet::compose_plain(&states).expose(), &hx(e, "sg")?);
    }
    Ok(())
}

fn pairs(e: &Value) -> Result<Vec<(ChannelId, State)>, String> {
    let ids = hex_list(e, "input_channel_ids")?;
    let states = hex_list(e, "input_states")?;
    if ids.len() != states.len() {
        return Err("input_channel_ids and input_states differ in length".into());
    }
    ids.iter()
        .zip(&states)
        .map(|(c, st)| {
            Ok((
                ChannelId::from_slice(c).map_err(|e| e.to_string())?,
                State::from_slice(st).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

fn check_sorted(s: &mut Section, i: usize, e: &Value, pairs: &[(ChannelId, State)]) -> Result<(), String> {
    let mut ids: Vec<ChannelId> = pairs.iter().map(|p| p.0).collect();
    ids.sort();
    let got: Vec<Vec<u8>> = ids.iter().map(|c| c.as_bytes().to_vec()).collect();
    s.eq(&format!("[{i}] sorted_channel_ids"), got, hex_list(e, "sorted_channel_ids")?);
    Ok(())
}

fn compose_ordered(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let p = pairs(e)?;
        s.eq(&format!("[{i}] n"), p.len() as u64, num(e, "n")?);
        check_sorted(s, i, e, &p)?;
        s.bytes(&format!("[{i}] sg"), ratchet::compose_ordered(&p).expose(), &hx(e, "sg")?);
    }
    Ok(())
}

fn merkle_sg(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let p = pairs(e)?;
        check_sorted(s, i, e, &p)?;
        let mut tree = MerkleSg::new();
        for (c, st) in &p {
            tree.insert(*c, st).map_err(|e| e.to_string())?;
        }
        let levels: Vec<Vec<Vec<u8>>> = tree.levels().iter().map(|l| l.iter().map(|h| h.to_vec()).collect()).collect();
        let want_levels: Vec<Vec<Vec<u8>>> = list(e, "levels_leaves_first")?
            .iter()
            .map(|lv| {
                lv.as_array()
                    .ok_or("level is not a list")?
                    .iter()
                    .map(|h| hex::decode(h.as_str().ok_or("hash is not a string")?).map_err(|_| "hash is not hex"))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(|e: &str| e.to_string())?;
        s.eq(&format!("[{i}] leaf_hashes"), levels.first().cloned().unwrap_or_default(), hex_list(e, "leaf_hashes")?);
        s.eq(&format!("[{i}] levels_leaves_first"), levels, want_levels);
        let root = tree.root().ok_or("empty tree")?;
        s.bytes(&format!("[{i}] root_sg"), root.expose(), &hx(e, "root_sg")?);
        let mut sorted = p.clone();
        sorted.sort_by_key(|p| p.0);
        let plain: Vec<State> = sorted.into_iter().map(|(_, st)| st).collect();
        s.bytes(
            &format!("[{i}] plain_compose_sg_for_comparison"),
            ratchet::compose_plain(&plain).expose(),
            &hx(e, "plain_compose_sg_for_comparison")?,
        );
        let upd = field(e, "after_update")?;
        tree.update(&channel(upd, "channel_id")?, &state(upd, "new_state")?).map_err(|e| e.to_string())?;
        let root = tree.root().ok_or("empty tree")?;
        s.bytes(&format!("[{i}] after_update.root_sg"), root.expose(), &hx(upd, "root_sg")?);
    }
    Ok(())
}

fn distribution_seed(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let step = num(e, "step")?;
        let g = state(e, "global_state")?;
        let msg = [step.to_be_bytes().as_slice(), g.expose()].concat();
        s.bytes(&format!("[{i}] hmac_message"), &msg, &hx(e, "hmac_message")?);
        let ds = ratchet::distribution_seed(&state(e, "local_state")?, step, &g);
        s.bytes(&format!("[{i}] ds"), ds.expose(), &hx(e, "ds")?);
    }
    Ok(())
}

fn chacha20_prng(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let seed = state(e, "seed")?;
        let mut p = Prng::new(&seed);
        let mut b64 = [0u8; 64];
        p.fill(&mut b64);
        s.bytes(&format!("[{i}] first_64"), &b64, &hx(e, "first_64")?);
        let mut p = Prng::new(&seed);
        let mut b160 = [0u8; 160];
        p.fill(&mut b160);
        s.bytes(&format!("[{i}] first_160"), &b160, &hx(e, "first_160")?);
        let want = hex_list(e, "draws_16_x8")?;
        s.eq(&format!("[{i}] draws_16_x8"), draws(&seed, want.len()), want);
    }
    Ok(())
}

fn frame_sampling_intra(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let (sl, g, step) = (state(e, "local_state")?, state(e, "global_state")?, num(e, "step")?);
        let depth = num(e, "depth")? as usize;
        let ds = ratchet::distribution_seed(&sl, step, &g);
        s.bytes(&format!("[{i}] ds"), ds.expose(), &hx(e, "ds")?);
        s.eq(&format!("[{i}] candidates"), draws(&ds, depth), hex_list(e, "candidates")?);
        let mut replay = mfp_core::ReplayEntropy::new(hex_list(e, "jitter_injected")?.concat());
        let f = sampling::sample_frame(&sl, step, &g, depth, &mut replay).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] frame_open_blocks"), f.as_bytes(), &hex_list(e, "frame_open_blocks")?.concat());
    }
    Ok(())
}

fn frame_sampling_cross(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let (sl, step) = (state(e, "local_state")?, num(e, "step")?);
        let (r, p) = (state(e, "bilateral_ratchet_state")?, state(e, "shared_prng_seed")?);
        let depth = num(e, "depth")? as usize;
        let ds = ratchet::distribution_seed(&sl, step, &r);
        s.bytes(&format!("[{i}] ds"), ds.expose(), &hx(e, "ds")?);
        let js = sampling::jitter_seed(&p, step);
        s.bytes(&format!("[{i}] jitter_seed"), js.expose(), &hx(e, "jitter_seed")?);
        if e.get("candidates").is_some() {
            s.eq(&format!("[{i}] candidates"), draws(&ds, depth), hex_list(e, "candidates")?);
        }
        if e.get("jitters").is_some() {
            s.eq(&format!("[{i}] jitters"), draws(&js, depth), hex_list(e, "jitters")?);
        }
        let f = sampling::sample_frame_cross(&sl, step, &r, &p, depth).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] frame_open_blocks"), f.as_bytes(), &hex_list(e, "frame_open_blocks")?.concat());
    }
    Ok(())
}

fn mirror(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let m = frame(e, "frame_open_blocks")?.mirror();
        s.bytes(&format!("[{i}] frame_close_blocks"), m.as_bytes(), &hex_list(e, "frame_close_blocks")?.concat());
        s.bytes(&format!("[{i}] frame_close_bytes"), m.as_bytes(), &hx(e, "frame_close_bytes")?);
    }
    Ok(())
}

fn encoding_section(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let alg = encoding::Algorithm::from_id(&hx(e, "algorithm_id")?).map_err(|e| e.to_string())?;
        let (sl, ch, step) = (state(e, "local_state")?, channel(e, "channel_id")?, num(e, "step")?);
        let key = encoding::encoding_key(&sl, alg);
        s.bytes(&format!("[{i}] encoding_key"), key.expose(), &hx(e, "encoding_key")?);
        s.bytes(&format!("[{i}] nonce"), &encoding::nonce(&key, &ch, step), &hx(e, "nonce")?);
        s.bytes(&format!("[{i}] aad"), &encoding::aad(&ch, step), &hx(e, "aad")?);
        let payload = hx(e, "payload")?;
        let enc = encoding::encode(&sl, &ch, step, &payload).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] encoded_payload"), &enc, &hx(e, "encoded_payload")?);
        s.eq(&format!("[{i}] ciphertext_len"), enc.len() as u64, num(e, "ciphertext_len")?);
        let dec = encoding::decode(&sl, &ch, step, &hx(e, "encoded_payload")?).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] decode"), &dec, &payload);
    }
    Ok(())
}

fn protocol_message(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let f = frame(e, "frame_open_blocks")?;
        s.eq(&format!("[{i}] depth"), f.depth() as u64, num(e, "depth")?);
        let enc = hx(e, "encoded_payload")?;
        let m = message::assemble_encoded(&f, &enc);
        let want = hx(e, "message_bytes")?;
        s.bytes(&format!("[{i}] message_bytes"), &m, &want);
        s.eq(&format!("[{i}] message_len"), m.len() as u64, num(e, "message_len")?);
        let parts = message::parse(&want, f.depth()).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] parse.frame_open"), parts.frame_open_bytes(), f.as_bytes());
        s.bytes(&format!("[{i}] parse.encoded"), parts.encoded_payload(), &enc);
        s.bytes(&format!("[{i}] parse.frame_close"), parts.frame_close_bytes(), f.mirror().as_bytes());
    }
    Ok(())
}

fn frame_validation(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let open = hex_list(e, "frame_open_blocks")?.concat();
        let close = hex_list(e, "frame_close_blocks")?.concat();
        let expected = frame(e, "expected_frame_blocks")?;
        let valid = field(e, "valid")?.as_bool().ok_or("valid is not a bool")?;
        let case = e.get("case").and_then(Value::as_str).unwrap_or("?");
        s.eq(&format!("[{i}] {case}"), Frame::validate_bytes(&open, &close, &expected).is_ok(), valid);
    }
    Ok(())
}

fn bilateral_seed(v: &Value, s: &mut Section) -> Result<(), String> {
    let (a, b) = (runtime(v, "runtime_a")?, runtime(v, "runtime_b")?);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    s.bytes(
        "hmac_message_sorted_ids",
        &[lo.as_bytes().as_slice(), hi.as_bytes()].concat(),
        &hx(v, "hmac_message_sorted_ids")?,
    );
    s.bytes("ratchet_key_string", bilateral::BILATERAL_LABEL, &hx(v, "ratchet_key_string")?);
    s.bytes("prng_key_string", bilateral::BILATERAL_PRNG_LABEL, &hx(v, "prng_key_string")?);
    check_bilateral(s, "state", &BilateralState::deterministic(&a, &b), field(v, "state")?)?;
    check_bilateral(s, "state(b,a)", &BilateralState::deterministic(&b, &a), field(v, "state")?)?;
    s.bytes("bilateral_id", BilateralId::derive(&a, &b).as_bytes(), &hx(v, "bilateral_id")?);
    Ok(())
}

fn bilateral_ceremonial(v: &Value, s: &mut Section) -> Result<(), String> {
    let (a, b) = (runtime(v, "runtime_a")?, runtime(v, "runtime_b")?);
    let (pa, pb) = (state(v, "x25519_private_a")?, state(v, "x25519_private_b")?);
    let pub_a: [u8; 32] = hx(v, "x25519_public_a")?.try_into().map_err(|_| "public key size")?;
    let pub_b: [u8; 32] = hx(v, "x25519_public_b")?.try_into().map_err(|_| "public key size")?;
    s.bytes("x25519_public_a", &crypto::x25519_public(&pa), &pub_a);
    s.bytes("x25519_public_b", &crypto::x25519_public(&pb), &pub_b);
    let ss_a = crypto::x25519_shared(&pa, &pub_b).map_err(|e| e.to_string())?;
    let ss_b = crypto::x25519_shared(&pb, &pub_a).map_err(|e| e.to_string())?;
    s.bytes("shared_secret (a)", ss_a.expose(), &hx(v, "shared_secret")?);
    s.bytes("shared_secret (b)", ss_b.expose(), &hx(v, "shared_secret")?);
    let ss = state(v, "shared_secret")?;
    check_bilateral(s, "state", &BilateralState::ceremonial(&ss, &a, &b), field(v, "state")?)?;
    Ok(())
}

fn bilateral_chain(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let pre = bilateral_state(field(e, "pre_state")?)?;
        let ch = channel(e, "channel_id")?;
        let depth = num(e, "depth")? as usize;
        let payload = hx(e, "payload")?;
        // The envelope carries only the sender's first 16 bytes, which is all that
        // `seal_outbound` uses of the sender id.
        let mut sender = [0u8; 32];
        let field16 = hx(e, "sender_runtime_field")?;
        sender.get_mut(..16).ok_or("size")?.copy_from_slice(field16.get(..16).ok_or("sender_runtime_field size")?);
        let sender = RuntimeId::from_bytes(sender);
        s.bytes(
            &format!("[{i}] ds"),
            ratchet::distribution_seed(&pre.ratchet, pre.step, &pre.ratchet).expose(),
            &hx(e, "ds")?,
        );
        s.bytes(
            &format!("[{i}] jitter_seed"),
            sampling::jitter_seed(&pre.prng_seed, pre.step).expose(),
            &hx(e, "jitter_seed")?,
        );
        let key = encoding::encoding_key(&pre.ratchet, encoding::Algorithm::Aes256Gcm);
        s.bytes(&format!("[{i}] encoding_key"), key.expose(), &hx(e, "encoding_key")?);
        s.bytes(&format!("[{i}] nonce"), &encoding::nonce(&key, &ch, pre.step), &hx(e, "nonce")?);
        s.bytes(&format!("[{i}] aad"), &encoding::aad(&ch, pre.step), &hx(e, "aad")?);
        let enc = encoding::encode(&pre.ratchet, &ch, pre.step, &payload).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] encoded_payload"), &enc, &hx(e, "encoded_payload")?);
        let out = pre.seal_outbound(&sender, &ch, depth, &payload).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] frame_open_blocks"), out.frame.as_bytes(), &hex_list(e, "frame_open_blocks")?.concat());
        s.bytes(&format!("[{i}] header_bytes"), &out.header.to_bytes(), &hx(e, "header_bytes")?);
        s.bytes(&format!("[{i}] wire_bytes"), &out.wire, &hx(e, "wire_bytes")?);
        s.eq(&format!("[{i}] wire_len"), out.wire.len() as u64, num(e, "wire_len")?);
        s.eq(&format!("[{i}] receipt_step"), out.header.step, num(e, "receipt_step")?);
        check_bilateral(s, &format!("[{i}] post_state"), &out.next, field(e, "post_state")?)?;
        // The receiver, holding the same pre-state, accepts the recorded wire bytes.
        let wire = hx(e, "wire_bytes")?;
        let limits = mfp_core::envelope::EnvelopeLimits { max_frame_depth: 256, max_payload_len: u32::MAX };
        let (h, body) = mfp_core::envelope::parse_wire(&wire, &limits).map_err(|e| e.to_string())?;
        let (got, next) = pre.open_inbound(&h, body).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] receiver payload"), &got, &payload);
        check_bilateral(s, &format!("[{i}] receiver post_state"), &next, field(e, "post_state")?)?;
    }
    Ok(())
}

fn envelope_header(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let to_u32 =
            |k: &str| -> Result<u32, String> { u32::try_from(num(e, k)?).map_err(|_| format!("{k} overflows u32")) };
        let sender = EnvelopeHeader::sender_field_from(&hx(e, "sender_runtime_input")?);
        s.bytes(&format!("[{i}] sender_runtime_field"), &sender, &hx(e, "sender_runtime_field")?);
        let reserved: [u8; 8] = hx(e, "reserved")?.try_into().map_err(|_| "reserved must be 8 bytes")?;
        let magic: [u8; 4] = hx(e, "magic")?.try_into().map_err(|_| "magic must be 4 bytes")?;
        let h = EnvelopeHeader {
            magic,
            version: u16::try_from(num(e, "version")?).map_err(|_| "version overflows u16")?,
            flags: EnvelopeFlags(u16::try_from(num(e, "flags")?).map_err(|_| "flags overflow u16")?),
            frame_depth: to_u32("frame_depth")?,
            payload_len: to_u32("payload_len")?,
            channel_id: channel(e, "channel_id")?,
            step: num(e, "step")?,
            sender_runtime: sender,
            reserved,
        };
        let want = hx(e, "header_bytes")?;
        s.bytes(&format!("[{i}] header_bytes"), &h.to_bytes(), &want);
        let parsed = EnvelopeHeader::parse(&want).map_err(|e| e.to_string())?;
        s.eq(&format!("[{i}] decode"), parsed, h);
        s.eq(&format!("[{i}] body_size_for_this_header"), parsed.body_len(), num(e, "body_size_for_this_header")?);
    }
    Ok(())
}

/// Maps pymfp's error strings onto our error kinds.
fn pymfp_error_kind(msg: &str) -> &'static str {
    if msg.starts_with("Invalid magic") {
        "magic"
    } else if msg.starts_with("Unsupported version") {
        "version"
    } else if msg.starts_with("Non-zero reserved") {
        "reserved"
    } else if msg.starts_with("Frame depth") {
        "depth"
    } else if msg.starts_with("Unknown channel") {
        "channel"
    } else if msg.starts_with("Sender runtime") {
        "sender"
    } else {
        "unknown"
    }
}

fn our_error_kind(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::BadMagic => "magic",
        EnvelopeError::UnsupportedVersion(_) => "version",
        EnvelopeError::NonZeroReserved => "reserved",
        EnvelopeError::DepthTooSmall(_) => "depth",
        EnvelopeError::UnknownChannel => "channel",
        EnvelopeError::UnexpectedSender => "sender",
        _ => "other",
    }
}

fn envelope_validation(v: &Value, s: &mut Section) -> Result<(), String> {
    for (i, e) in entries(v)?.iter().enumerate() {
        let h = EnvelopeHeader::parse(&hx(e, "header_bytes")?).map_err(|e| e.to_string())?;
        let want: Vec<&str> = list(e, "errors")?.iter().map(|m| pymfp_error_kind(m.as_str().unwrap_or(""))).collect();
        let got: Vec<&str> = h.protocol_errors().iter().map(our_error_kind).collect();
        let case = e.get("case").and_then(Value::as_str).unwrap_or("?");
        s.eq(&format!("[{i}] {case}"), got, want);
    }
    Ok(())
}

fn recovery(v: &Value, s: &mut Section) -> Result<(), String> {
    let st = bilateral_state(field(v, "state")?)?;
    let hash = st.state_hash();
    s.bytes("state_hash", &hash, &hx(v, "state_hash")?);
    let msg = field(v, "recovery_message_fields")?;
    s.bytes("recovery_message.state_hash", &hash, &hx(msg, "state_hash")?);
    s.eq("recovery_message.step", st.step, num(msg, "step")?);
    let cfg = field(v, "config_defaults")?;
    let ours = RecoveryConfig::default();
    s.eq("config.max_step_gap", ours.max_step_gap, num(cfg, "max_step_gap")?);
    s.eq("config.max_attempts", u64::from(ours.max_attempts), num(cfg, "max_attempts")?);
    s.eq("config.timeout_seconds", ours.timeout_seconds, num(cfg, "timeout_seconds")?);
    let gap = num(cfg, "max_step_gap")?;
    for (i, c) in list(v, "diagnose_cases")?.iter().enumerate() {
        let lh: [u8; 32] = hx(c, "local_hash")?.try_into().map_err(|_| "hash size")?;
        let ph: [u8; 32] = hx(c, "peer_hash")?.try_into().map_err(|_| "hash size")?;
        let d = bilateral::diagnose(num(c, "local_step")?, num(c, "peer_step")?, &lh, &ph, gap);
        let want = field(c, "diagnosis")?.as_str().ok_or("diagnosis is not a string")?;
        s.eq(&format!("diagnose[{i}]"), d.as_str(), want);
    }
    Ok(())
}

fn rotation(v: &Value, s: &mut Section) -> Result<(), String> {
    let cur = bilateral_state(field(v, "current_state")?)?;
    let (a, b) = (runtime(v, "runtime_a")?, runtime(v, "runtime_b")?);
    let (ea, eb) = (state(v, "ephemeral_private_a")?, state(v, "ephemeral_private_b")?);
    let pub_a: [u8; 32] = hx(v, "ephemeral_public_a")?.try_into().map_err(|_| "public key size")?;
    let pub_b: [u8; 32] = hx(v, "ephemeral_public_b")?.try_into().map_err(|_| "public key size")?;
    s.bytes("ephemeral_public_a", &crypto::x25519_public(&ea), &pub_a);
    s.bytes("ephemeral_public_b", &crypto::x25519_public(&eb), &pub_b);
    let req = field(v, "rekey_request")?;
    let m = RekeyMessage { sender: a, receiver: b, ephemeral_public: pub_a, step: num(req, "proposed_step")? };
    s.bytes("rekey_request.bytes", &m.to_bytes(), &hx(req, "bytes")?);
    s.eq("rekey_request.parse", RekeyMessage::from_bytes(&hx(req, "bytes")?).map_err(|e| e.to_string())?, m);
    let acc = field(v, "rekey_accept")?;
    let m = RekeyMessage { sender: b, receiver: a, ephemeral_public: pub_b, step: num(acc, "accepted_step")? };
    s.bytes("rekey_accept.bytes", &m.to_bytes(), &hx(acc, "bytes")?);
    let ss = crypto::x25519_shared(&ea, &pub_b).map_err(|e| e.to_string())?;
    s.bytes("shared_secret (a)", ss.expose(), &hx(v, "shared_secret")?);
    let ss_b = crypto::x25519_shared(&eb, &pub_a).map_err(|e| e.to_string())?;
    s.bytes("shared_secret (b)", ss_b.expose(), &hx(v, "shared_secret")?);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let material = [cur.ratchet.expose().as_slice(), ss.expose(), lo.as_bytes(), hi.as_bytes()].concat();
    s.bytes("rotation_material", &material, &hx(v, "rotation_material")?);
    check_bilateral(s, "rotated_state", &cur.rotate(&ss, &a, &b), field(v, "rotated_state")?)?;
    Ok(())
}

/// pymfp 1.0's at-rest cell encryption (what the pymfp importer reads).
fn storage_crypto(v: &Value, s: &mut Section) -> Result<(), String> {
    use mfp_storage::pymfp;
    let master = hx(v, "master_key")?;
    let rid = hx(v, "runtime_id")?;
    let sk = pymfp::storage_key(&master, &rid);
    s.bytes("storage_key", sk.expose(), &hx(v, "storage_key")?);
    for (i, c) in list(v, "cells")?.iter().enumerate() {
        let table = field(c, "table")?.as_str().ok_or("table is not a string")?;
        let column = field(c, "column")?.as_str().ok_or("column is not a string")?;
        let row = hx(c, "row_id")?;
        let msg = pymfp::cell_key_message(table, column, &row).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] cell_key_message"), &msg, &hx(c, "cell_key_message")?);
        let ck = pymfp::cell_key(&sk, table, column, &row).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] cell_key"), ck.expose(), &hx(c, "cell_key")?);
        s.bytes(&format!("[{i}] aad"), &pymfp::aad(&row, column).map_err(|e| e.to_string())?, &hx(c, "aad")?);
        let nonce: [u8; 12] = hx(c, "nonce_injected")?.try_into().map_err(|_| "nonce must be 12 bytes")?;
        let plain = hx(c, "plaintext")?;
        let blob =
            pymfp::encrypt_cell_with_nonce(&sk, table, column, &row, &nonce, &plain).map_err(|e| e.to_string())?;
        let want = hx(c, "stored_blob")?;
        s.bytes(&format!("[{i}] stored_blob"), &blob, &want);
        let back = pymfp::decrypt_cell(&sk, table, column, &row, &want).map_err(|e| e.to_string())?;
        s.bytes(&format!("[{i}] decrypt"), &back, &plain);
    }
    Ok(())
}

// ---- driver ------------------------------------------------------------------------

/// Runs every known section of `doc`, printing one line per section.
pub(crate) fn run_value(doc: &Value) -> Result<Summary, String> {
    let obj = doc.as_object().ok_or("the vectors file is not a JSON object")?;
    let mut summary = Summary::default();
    for (name, check) in SECTIONS {
        let Some(v) = obj.get(*name) else {
            println!("  absent    {name:<22} (not in this file)");
            continue;
        };
        let mut s = Section::new();
        let res = check(v, &mut s);
        if let Err(e) = res {
            s.checks += 1;
            s.failures.push(format!("malformed entry: {e}"));
        }
        let failed = s.failures.len();
        summary.failed += failed;
        summary.passed += s.checks - failed;
        if failed == 0 {
            println!("  ok        {name:<22} {:>4} checks", s.checks);
        } else {
            println!("  FAIL      {name:<22} {:>4} checks, {failed} failed", s.checks);
            for f in &s.failures {
                println!("              {f}");
            }
        }
    }
    for name in obj.keys() {
        let known = SECTIONS.iter().any(|(n, _)| n == name) || INFORMATIONAL.contains(&name.as_str());
        if NOT_COVERED.contains(&name.as_str()) {
            println!("  uncovered {name:<22} (belongs to a layer not built yet)");
        } else if !known {
            println!("  unknown   {name:<22} (not in the schema this checker knows)");
        }
    }
    println!("vectors: {} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

/// Reads and checks a vectors file.
pub(crate) fn run_file(path: &Path) -> Result<Summary, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    println!("vectors: checking {}", path.display());
    run_value(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's vectors file; a missing or unreadable file fails the test.
    fn reference() -> Value {
        let path = crate::repository_vectors();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }

    #[test]
    fn reference_vectors_pass() {
        let doc = reference();
        let s = run_value(&doc).unwrap();
        assert_eq!(s.failed, 0);
        assert!(s.passed > 200, "{}", s.passed);
    }

    #[test]
    fn a_changed_expected_value_fails() {
        let mut doc = reference();
        // Flip one hex digit of the first wire message.
        let wire = doc["bilateral_chain"][0]["wire_bytes"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", &wire[..wire.len() - 1], if wire.ends_with('0') { '1' } else { '0' });
        doc["bilateral_chain"][0]["wire_bytes"] = Value::String(flipped);
        assert!(run_value(&doc).unwrap().failed >= 1);
    }

    #[test]
    fn a_changed_cross_trace_value_fails() {
        let mut doc = reference();
        // Flip one hex digit of the second (B to A) message's wire bytes: our sender's bytes
        // differ, and the receiver refuses pymfp's (now tampered) bytes.
        let wire = doc["runtime_trace_cross"]["messages"][1]["wire_bytes"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", &wire[..wire.len() - 1], if wire.ends_with('0') { '1' } else { '0' });
        doc["runtime_trace_cross"]["messages"][1]["wire_bytes"] = Value::String(flipped);
        let only = serde_json::json!({ "runtime_trace_cross": doc["runtime_trace_cross"].clone() });
        assert!(run_value(&only).unwrap().failed >= 2);
        // A changed post state fails too.
        let mut doc = reference();
        doc["runtime_trace_cross"]["messages"][2]["post_state_both_sides"]["step"] = serde_json::json!(4);
        let only = serde_json::json!({ "runtime_trace_cross": doc["runtime_trace_cross"].clone() });
        // Both compat links and both runtimes' chains; the recorded state feeds the
        // runtimes' TCP check, whose bytes then differ from the runtime's.
        assert!(run_value(&only).unwrap().failed >= 4);
    }

    #[test]
    fn the_cross_trace_is_covered() {
        let doc = reference();
        let only = serde_json::json!({ "runtime_trace_cross": doc["runtime_trace_cross"].clone() });
        let s = run_value(&only).unwrap();
        assert_eq!(s.failed, 0);
        assert!(s.passed >= 60, "{}", s.passed);
    }

    #[test]
    fn malformed_entries_fail_without_panicking() {
        let doc = serde_json::json!({
            "runtime_identity": [{"deployment_id": "zz", "instance_id": "00"}],
            "merkle_sg": "not a list",
            "agent_id": [{"runtime_identity": "00", "counter": -1, "random_suffix": "00", "agent_id": "00"}],
            "envelope_header": [{}],
        });
        let s = run_value(&doc).unwrap();
        assert_eq!(s.failed, 4);
        assert!(run_value(&serde_json::json!([1, 2])).is_err());
    }

    #[test]
    fn a_correct_small_file_passes() {
        let rt = RuntimeId::derive(b"dep", b"inst");
        let doc = serde_json::json!({
            "runtime_identity": [{
                "deployment_id": hex::encode(b"dep"),
                "instance_id": hex::encode(b"inst"),
                "runtime_id": rt.to_string(),
                "sender_runtime_field": hex::encode(rt.sender_field()),
            }],
        });
        let s = run_value(&doc).unwrap();
        assert_eq!((s.passed, s.failed), (2, 0));
    }
}
