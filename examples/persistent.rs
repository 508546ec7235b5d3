//! A persistent runtime: state survives a restart.
//!
//! Run with `cargo run --example persistent --features sqlite`. The first run creates
//! `target/example-persistent/runtime.db` and a master key next to it; every later run
//! restores the runtime and continues at the step where the last one stopped.

use std::path::Path;

use mfp::sqlite::{MasterKey, StorageConfig, open_runtime};
use mfp::{DeliveredMessage, RuntimeConfig, mfp_send};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings from the runtime and storage (e.g. a key file readable by others) reach
    // the terminal;
    // RUST_LOG overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let dir = Path::new("target/example-persistent");
    std::fs::create_dir_all(dir)?;
    let key_file = dir.join("master.key");
    if !key_file.exists() {
        // 64 hex digits of fresh randomness, mode 0600. In production the key lives elsewhere.
        MasterKey::generate_file(&key_file)?;
    }
    let storage = StorageConfig::new(dir.join("runtime.db"), MasterKey::from_file(&key_file)?);
    let runtime = open_runtime(RuntimeConfig::default(), storage)?;

    let print = |_: &mfp::AgentHandle, msg: DeliveredMessage| {
        println!("Bob received (step {}): {}", msg.step, String::from_utf8_lossy(&msg.payload));
    };
    // A restored runtime has its agents already: attach their handlers by name.
    let (alice, channel) = if runtime.detached_agents().is_empty() {
        let alice = runtime.bind_named("alice", |_, _| {})?;
        let bob = runtime.bind_named("bob", print)?;
        let channel = runtime.establish_channel(&alice.id(), &bob.id())?;
        println!("new runtime {}", runtime.identity().short());
        (alice, channel)
    } else {
        let alice = runtime.attach_named("alice", |_, _| {})?;
        runtime.attach_named("bob", print)?;
        let channel = alice.channels()?.first().map(|c| c.channel_id).ok_or("alice has no channel")?;
        println!("restored runtime {}", runtime.identity().short());
        (alice, channel)
    };

    // Each receipt comes back only after the step advance was committed to disk.
    let receipt = mfp_send(&alice, channel, b"Hello again from Alice!")?;
    // Delivers what is queued; the stored state is kept for the next start.
    runtime.shutdown();
    println!("sent at step {}; run me again to continue from step {}", receipt.step, receipt.step + 1);
    Ok(())
}
