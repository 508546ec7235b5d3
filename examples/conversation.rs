//! Agents conversing over several channels: a coordinator asks two workers to compute,
//! each worker replies on the channel the request came from, and the coordinator collects
//! the answers. Shows request/reply from inside handlers, idempotent retries, statuses.
//!
//! Run with `cargo run --example conversation`.

use std::sync::mpsc;
use std::time::Duration;

use mfp::{AgentHandle, DeliveredMessage, Runtime, RuntimeConfig, SendOptions, mfp_channels, mfp_status};

/// A worker squares the number it is sent and replies on the same channel.
fn worker(agent: &AgentHandle, msg: DeliveredMessage) {
    let text = String::from_utf8_lossy(&msg.payload);
    let reply = match text.trim().parse::<i64>() {
        Ok(n) => format!("{}", n.saturating_mul(n)),
        Err(_) => "not a number".to_string(),
    };
    if let Err(e) = agent.send(msg.channel, reply.as_bytes()) {
        eprintln!("worker {} could not reply: {e}", agent.name().unwrap_or("?"));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings from the runtime (e.g. messages dropped at shutdown) reach the terminal;
    // RUST_LOG overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let (answers_tx, answers_rx) = mpsc::channel::<(String, String)>();

    let coordinator = runtime.bind_named("coordinator", move |agent: &AgentHandle, msg: DeliveredMessage| {
        let who = agent.channels().ok().and_then(|chs| chs.into_iter().find(|c| c.channel_id == msg.channel));
        let from = who.map(|c| c.peer.short()).unwrap_or_default();
        let _ = answers_tx.send((from, String::from_utf8_lossy(&msg.payload).into_owned()));
    })?;
    let w1 = runtime.bind_named("worker-1", worker)?;
    let w2 = runtime.bind_named("worker-2", worker)?;
    let c1 = runtime.establish_channel(&coordinator.id(), &w1.id())?;
    let c2 = runtime.establish_channel_with_depth(&coordinator.id(), &w2.id(), 8)?;

    for (i, ch) in [c1, c2, c1, c2].into_iter().enumerate() {
        let question = format!("{}", i + 3);
        // An idempotency key makes a retry safe: sending it twice delivers once.
        let key = format!("question-{i}");
        let first = coordinator.send_with(ch, question.as_bytes(), &SendOptions::idempotent(key.clone()))?;
        let retry = coordinator.send_with(ch, question.as_bytes(), &SendOptions::idempotent(key))?;
        assert_eq!(first, retry);
        println!("asked {question} on channel {} at step {}", ch.short(), first.step);
    }

    for _ in 0..4 {
        let (from, answer) = answers_rx.recv_timeout(Duration::from_secs(5))?;
        println!("answer from {from}: {answer}");
    }

    for info in mfp_channels(&coordinator)? {
        println!(
            "channel {} with {} is {} (depth {})",
            info.channel_id.short(),
            info.peer.short(),
            info.status,
            info.depth
        );
    }
    let status = mfp_status(&coordinator)?;
    println!(
        "coordinator: {} with {} channels, {} messages sent",
        status.state, status.channel_count, status.messages_sent
    );
    println!("duplicates suppressed: {}", runtime.metrics().duplicates_suppressed.get());
    runtime.shutdown();
    Ok(())
}
