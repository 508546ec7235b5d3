//! Quickstart: a runtime, two agents, a channel, one message.
//!
//! Run with `cargo run --example quickstart`.

use mfp::{DeliveredMessage, Runtime, RuntimeConfig, mfp_send};

fn main() -> Result<(), mfp::Error> {
    // Warnings from the runtime (e.g. messages dropped at shutdown) reach the terminal;
    // RUST_LOG overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // A runtime with pymfp's default configuration.
    let runtime = Runtime::new(RuntimeConfig::default())?;

    // Two agents. A handler receives each message delivered to its agent.
    let alice = runtime.bind_named("alice", |_agent, _msg: DeliveredMessage| {})?;
    let bob = runtime.bind_named("bob", |_agent, msg: DeliveredMessage| {
        println!("Bob received: {}", String::from_utf8_lossy(&msg.payload));
    })?;

    // A channel between them (frame depth 4 by default).
    let channel = runtime.establish_channel(&alice.id(), &bob.id())?;

    // Alice sends. The message is framed, encrypted, validated, decrypted and queued for
    // Bob; the receipt comes back as soon as it is queued.
    let receipt = mfp_send(&alice, channel, b"Hello from Alice!")?;

    // A clean shutdown delivers everything queued (Bob prints), then wipes channel state.
    runtime.shutdown();
    println!("Message sent at step {}", receipt.step);
    Ok(())
}
