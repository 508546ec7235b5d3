//! `mfp-crash-child DB KEY-FILE normal|sync`: the child process of `tests/crash_runtime.rs`.
//!
//! Opens a [`Runtime`] on [`SqliteStorage`] at `DB` (master key read from `KEY-FILE`). On the
//! first start it binds the named agents `alice` and `bob` and establishes [`CHANNELS`]
//! channels between them; on later starts it attaches handlers to the restored agents by
//! name and finds the restored channels. Then alice sends on every channel at once, one
//! thread per channel, a small payload naming the step, until the process is killed.
//!
//! Standard output, one line per event, each written with one write on the locked stdout
//! and flushed at once (so a kill loses whole lines only):
//!
//! ```text
//! READY <channel-hex>:<step> <channel-hex>:<step>   where this run starts (channels sorted)
//! R <channel-hex> <step>                            alice.send returned this receipt
//! B <channel-hex> <step> <0|1>                      bob's handler starts on this message
//! D <channel-hex> <step> <0|1>                      bob's handler is done with it
//! ```
//!
//! The last field of `B` and `D` is the message's redelivery flag. On a restart, bob is
//! attached after `READY` is printed, so the messages stored but not handled before the
//! kill (delivered again, flagged) come after it.
//!
//! Any error prints `ERR <message>` on standard error and exits with status 1 — including a
//! receipt or a delivery whose step differs from the one the payload names.

use std::convert::Infallible;
use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use mfp_runtime::storage::Storage;
use mfp_runtime::{AgentHandle, ChannelId, DeliveredMessage, Runtime, RuntimeConfig};
use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};

/// Channels between alice and bob, each with its own sender thread.
const CHANNELS: usize = 12;

/// Writes one whole line to stdout and flushes it.
fn emit(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}

/// Reports a fatal error and exits (also used from bob's handler thread).
fn die(message: impl Display) -> ! {
    eprintln!("ERR {message}");
    std::process::exit(1)
}

fn payload(step: u64) -> Vec<u8> {
    format!("step {step}").into_bytes()
}

fn runtime_config() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.deployment_id = b"mfp-crash-test".to_vec();
    c.instance_id = b"child".to_vec();
    // Sends as fast as it can: no rate limit (the default would quarantine alice).
    c.max_message_rate = 0;
    c
}

/// Bob's handler: reports its start, checks the payload against the step and reports that
/// it is done.
fn bob_handler(_: &mfp_runtime::AgentHandle, msg: DeliveredMessage) {
    let flag = u8::from(msg.redelivered);
    if let Err(e) = emit(&format!("B {} {} {flag}\n", msg.channel, msg.step)) {
        die(e);
    }
    if msg.payload != payload(msg.step) {
        die(format!("channel {} step {}: delivered payload names another step", msg.channel, msg.step));
    }
    if let Err(e) = emit(&format!("D {} {} {flag}\n", msg.channel, msg.step)) {
        die(e);
    }
}

fn run() -> Result<Infallible, String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, key_file, durability] = args.as_slice() else {
        return Err("usage: mfp-crash-child DB KEY-FILE normal|sync".into());
    };
    let durability = match durability.as_str() {
        "normal" => Durability::Normal,
        "sync" => Durability::Sync,
        other => return Err(format!("unknown durability '{other}' (normal or sync)")),
    };
    let key = MasterKey::from_file(key_file).map_err(|e| format!("master key: {e}"))?;
    let storage = SqliteStorage::open(StorageConfig::new(db, key).durability(durability))
        .map_err(|e| format!("open {db}: {e}"))?;
    // The stored steps: where this run starts. The builder restores the same snapshot.
    let snapshot = storage.load().map_err(|e| format!("load: {e}"))?;
    let rt = Runtime::builder(runtime_config()).storage(storage).build().map_err(|e| format!("build: {e}"))?;

    let restarted = rt.agent_count() != 0;
    let (alice, mut channels) = if !restarted {
        let alice = rt.bind_named("alice", |_, _| {}).map_err(|e| format!("bind alice: {e}"))?;
        let bob = rt.bind_named("bob", bob_handler).map_err(|e| format!("bind bob: {e}"))?;
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            channels.push(rt.establish_channel(&alice.id(), &bob.id()).map_err(|e| format!("establish: {e}"))?);
        }
        (alice, channels.into_iter().map(|c| (c, 0)).collect::<Vec<(ChannelId, u64)>>())
    } else {
        let alice = rt.attach_named("alice", |_, _| {}).map_err(|e| format!("attach alice: {e}"))?;
        let stored = snapshot.map(|s| s.channels).unwrap_or_default();
        let mut channels = Vec::with_capacity(CHANNELS);
        for info in alice.channels().map_err(|e| format!("alice's channels: {e}"))? {
            let row = stored
                .iter()
                .find(|r| r.id == info.channel_id)
                .ok_or_else(|| format!("channel {} restored but not in the snapshot", info.channel_id))?;
            channels.push((info.channel_id, row.step));
        }
        (alice, channels)
    };
    if channels.len() != CHANNELS {
        return Err(format!("expected {CHANNELS} channels, found {}", channels.len()));
    }
    channels.sort_unstable_by_key(|(c, _)| *c);

    let ready: Vec<String> = channels.iter().map(|(c, s)| format!("{c}:{s}")).collect();
    emit(&format!("READY {}\n", ready.join(" ")))?;
    if restarted {
        rt.attach_named("bob", bob_handler).map_err(|e| format!("attach bob: {e}"))?;
    }

    // One sender thread per channel, all sending at once: their batches race for the
    // storage queue, and the stored Sg must still match the stored channel states.
    // A sender that fails reports it and exits the process (see `die`).
    let senders: Vec<_> = channels
        .into_iter()
        .map(|(channel, first)| {
            let alice = alice.clone();
            std::thread::spawn(move || {
                let Err(e) = send_forever(&alice, channel, first);
                die(e);
            })
        })
        .collect();
    for s in senders {
        let _ = s.join();
    }
    Err("the sender threads ended".into())
}

/// Sends on `channel` from step `first` on, printing each receipt, until killed.
fn send_forever(alice: &AgentHandle, channel: ChannelId, first: u64) -> Result<Infallible, String> {
    for step in first.. {
        let receipt = alice.send(channel, &payload(step)).map_err(|e| format!("send on {channel} step {step}: {e}"))?;
        if receipt.channel != channel || receipt.step != step {
            return Err(format!(
                "sent on {channel} step {step}, receipt says {} step {}",
                receipt.channel, receipt.step
            ));
        }
        emit(&format!("R {channel} {step}\n"))?;
    }
    Err("the step counter ran out".into())
}

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("ERR {e}");
            ExitCode::FAILURE
        }
    }
}
