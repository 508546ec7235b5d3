//! Three async agents in a pipeline — planner → researcher → writer → planner — on a
//! persistent runtime that picks the conversation up where it stopped.
//!
//! Run with `cargo run --example pipeline_agents --features sqlite`, then run it again.
//! The first run creates `target/example-pipeline-agents/runtime.db` (and a master key
//! next to it), binds the three agents and opens their channels; each run then plans one
//! more section of a report. A later run restores the agents and channels from the
//! database, attaches the handlers by name, and continues with the next section: the
//! channel steps, stored with every message, say how far the conversation got.
//! Delete the directory to start over. Set `RUST_LOG=info` to see the runtime's logs.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use mfp::sqlite::{MasterKey, StorageConfig, open_runtime};
use mfp::{AgentHandle, AgentId, DeliveredMessage, Runtime, RuntimeConfig};

/// The report's sections, one per run (then it starts over).
const TOPICS: [&str; 4] = ["the problem", "prior work", "the design", "open questions"];

/// The agents' ids, known once all three are bound or restored.
#[derive(Default)]
struct Ids {
    planner: OnceLock<AgentId>,
    writer: OnceLock<AgentId>,
}

/// Sends `text` from `agent` on its channel to `peer`, logging instead of failing.
async fn forward(agent: &AgentHandle, peer: Option<&AgentId>, text: String) {
    let channel = match peer.map(|p| agent.channel_with(p)) {
        Some(Ok(Some(channel))) => channel,
        Some(Ok(None)) | None => {
            tracing::warn!("{:?} has no channel to its next agent", agent.name());
            return;
        }
        Some(Err(e)) => {
            tracing::warn!("{e}");
            return;
        }
    };
    if let Err(e) = agent.send_async(channel, text.as_bytes()).await {
        tracing::warn!("{e}");
    }
}

fn text(msg: &DeliveredMessage) -> String {
    String::from_utf8_lossy(&msg.payload).into_owned()
}

/// Binds (first run) or attaches (later runs) the three agents; returns the planner and
/// whether the runtime was restored.
fn agents(runtime: &Runtime, ids: &Arc<Ids>, done: mpsc::Sender<String>) -> Result<(AgentHandle, bool), mfp::Error> {
    // The researcher picks the section from the step of the planner's message: step n is
    // the n-th task the planner ever sent, across restarts.
    let writer_ids = Arc::clone(ids);
    let researcher = move |agent: AgentHandle, msg: DeliveredMessage| {
        let ids = Arc::clone(&writer_ids);
        async move {
            let topic = TOPICS[usize::try_from(msg.step).unwrap_or(0) % TOPICS.len()];
            println!("  researcher: task {} ({}) — gathering notes on {topic}", msg.step + 1, text(&msg));
            forward(&agent, ids.writer.get(), format!("notes on {topic}")).await;
        }
    };
    let planner_ids = Arc::clone(ids);
    let writer = move |agent: AgentHandle, msg: DeliveredMessage| {
        let ids = Arc::clone(&planner_ids);
        async move {
            println!("  writer: drafting section {} from {}", msg.step + 1, text(&msg));
            forward(&agent, ids.planner.get(), format!("section {} drafted", msg.step + 1)).await;
        }
    };
    let done = Mutex::new(done);
    let planner = move |_agent: AgentHandle, msg: DeliveredMessage| {
        let report = text(&msg);
        if let Ok(done) = done.lock() {
            let _ = done.send(report);
        }
        async {}
    };

    if runtime.detached_agents().is_empty() {
        let p = runtime.bind_async_fn_named("planner", planner)?;
        let r = runtime.bind_async_fn_named("researcher", researcher)?;
        let w = runtime.bind_async_fn_named("writer", writer)?;
        runtime.establish_channel(&p.id(), &r.id())?;
        runtime.establish_channel(&r.id(), &w.id())?;
        runtime.establish_channel(&w.id(), &p.id())?;
        let _ = (ids.planner.set(p.id()), ids.writer.set(w.id()));
        Ok((p, false))
    } else {
        // Restored: the agents exist, with their channels and steps; give them handlers.
        let p = runtime.attach_async_fn_named("planner", planner)?;
        runtime.attach_async_fn_named("researcher", researcher)?;
        let w = runtime.attach_async_fn_named("writer", writer)?;
        let _ = (ids.planner.set(p.id()), ids.writer.set(w.id()));
        Ok((p, true))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings from the runtime (a key file readable by others, messages dropped at
    // shutdown) reach the terminal; RUST_LOG overrides the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let dir = Path::new("target/example-pipeline-agents");
    std::fs::create_dir_all(dir)?;
    let key_file = dir.join("master.key");
    if !key_file.exists() {
        write_key(&key_file, &hex_of(MasterKey::generate()?.expose()))?;
    }
    let storage = StorageConfig::new(dir.join("runtime.db"), MasterKey::from_file(&key_file)?);
    let runtime = open_runtime(RuntimeConfig::default(), storage)?;

    let ids = Arc::new(Ids::default());
    let (done_tx, done_rx) = mpsc::channel();
    let (planner, restored) = agents(&runtime, &ids, done_tx)?;
    let researcher = runtime.agent_by_name("researcher")?.id();
    let to_researcher = planner.channel_with(&researcher)?.ok_or("the planner has no channel to the researcher")?;
    println!("{} runtime {}", if restored { "restored" } else { "new" }, runtime.identity().short());

    // The planner hands out the next task; the receipt says which one it is.
    let receipt = planner.send(to_researcher, b"next section, please")?;
    println!("planner: task {} sent", receipt.step + 1);
    let report = done_rx.recv_timeout(Duration::from_secs(10))?;
    println!("planner: {report}");

    // Delivers anything still queued; the stored state stays for the next run.
    runtime.shutdown();
    println!("run me again to plan section {}", receipt.step + 2);
    Ok(())
}

/// Writes the key file readable by its owner only.
fn write_key(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, text.as_bytes())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
