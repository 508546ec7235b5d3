//! The quickstart with async agents inside a tokio application.
//!
//! Run with `cargo run --example quickstart_async`.

use mfp::{AgentHandle, AsyncHandler, DeliveredMessage, Runtime, RuntimeConfig};

/// Bob answers every message on the channel it came from.
struct Bob;

impl AsyncHandler for Bob {
    async fn handle(&self, agent: AgentHandle, msg: DeliveredMessage) {
        println!("Bob received: {}", String::from_utf8_lossy(&msg.payload));
        // Replying from inside a handler, on the same channel, never deadlocks.
        if let Err(e) = agent.send_async(msg.channel, b"Hi Alice, Bob here.").await {
            eprintln!("Bob could not reply: {e}");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), mfp::Error> {
    // Warnings from the runtime (e.g. messages dropped at shutdown) reach the terminal;
    // RUST_LOG overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // Inside a tokio context the runtime uses the current tokio runtime for delivery.
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let alice = runtime.bind_async_fn(|_agent, msg: DeliveredMessage| async move {
        println!("Alice received: {}", String::from_utf8_lossy(&msg.payload));
    })?;
    let bob = runtime.bind_async(Bob)?;
    let channel = runtime.establish_channel(&alice.id(), &bob.id())?;

    // Wait until Bob's handler has run (pymfp's synchronous semantics, on demand).
    let receipt = alice.send_and_wait_async(channel, b"Hello from Alice!").await?;
    println!("Alice's message went out at step {}", receipt.step);

    runtime.wait_idle_async(std::time::Duration::from_secs(5)).await;
    runtime.shutdown_async().await;
    Ok(())
}
