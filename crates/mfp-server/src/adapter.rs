//! Everything that touches the runtime's API, in one place: opening the runtime (with
//! SQLite storage), binding or re-attaching agents, establishing the configured channels,
//! the three agent tools (`send`, `channels`, `status`), metrics and shutdown.
//!
//! The rest of the server sees only the types defined here. When the runtime grows durable
//! delivery and async administration, this module is what changes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mfp_runtime::{AgentHandle, AsyncHandler, ChannelId, DeliveredMessage, Runtime, RuntimeConfig, SendOptions};
use mfp_storage::{MasterKey, StorageConfig};
use parking_lot::RwLock;

use crate::config::{ChannelSpec, pair_key};

/// A message for an agent, as the server hands it on.
pub(crate) struct Incoming {
    pub(crate) payload: Vec<u8>,
    pub(crate) sender: String,
    pub(crate) sender_name: Option<String>,
    pub(crate) channel: String,
    pub(crate) message_id: String,
    pub(crate) step: u64,
    /// Delivered again after a restart (the agent may have seen it before).
    pub(crate) redelivered: bool,
    /// Tells the runtime's handler that the agent is done with the message.
    pub(crate) done: Done,
}

/// The agent is done with a message: [`Done::ack`] lets the runtime's handler return, and
/// with storage, the message leaves the durable inbox. Dropped without `ack` (the agent is
/// not running, the server is stopping), the handler keeps waiting: the message is not
/// acknowledged, and with storage it is delivered again at the next start.
pub(crate) struct Done(Option<tokio::sync::oneshot::Sender<()>>);

impl Done {
    /// A pair: the sender travels with the message, the receiver is what the handler awaits.
    pub(crate) fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Some(tx)), rx)
    }

    /// Nothing to acknowledge (already acknowledged).
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// The agent is done with the message.
    pub(crate) fn ack(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Where the runtime hands an agent's messages (returns once the message is queued for the
/// agent; the runtime's handler then waits for its [`Done`]).
pub(crate) type Sink = Arc<dyn Fn(Incoming) -> mfp_runtime::BoxFuture + Send + Sync>;

/// Why the runtime could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdapterError {
    /// The master key could not be read or created.
    #[error("master key: {0}")]
    Key(String),
    /// The runtime (or its storage) refused.
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: mfp_runtime::Error,
    },
}

fn rt_err(what: impl Into<String>) -> impl FnOnce(mfp_runtime::Error) -> AdapterError {
    let what = what.into();
    move |source| AdapterError::Runtime { what, source }
}

/// Where the master key comes from.
pub(crate) enum KeySource<'a> {
    File(&'a Path),
    Env(&'a str),
    /// Generate one at this path if it does not exist (pymfp files without a key).
    Generated(&'a Path),
}

/// Reads (or creates) the storage master key.
pub(crate) fn master_key(source: KeySource<'_>) -> Result<MasterKey, AdapterError> {
    match source {
        KeySource::File(p) => MasterKey::from_file(p).map_err(|e| AdapterError::Key(format!("{}: {e}", p.display()))),
        KeySource::Env(v) => {
            MasterKey::from_env(v).map_err(|e| AdapterError::Key(format!("environment variable {v}: {e}")))
        }
        KeySource::Generated(p) => {
            if !p.exists() {
                MasterKey::generate_file(p).map_err(|e| AdapterError::Key(format!("{}: {e}", p.display())))?;
                tracing::warn!(file = %p.display(), "generated a storage master key; back it up, the database cannot be read without it");
            }
            MasterKey::from_file(p).map_err(|e| AdapterError::Key(format!("{}: {e}", p.display())))
        }
    }
}

/// The runtime, seen from the server.
pub(crate) struct Mfp {
    runtime: Runtime,
    names: RwLock<HashMap<mfp_runtime::AgentId, String>>,
    restored: bool,
}

/// Numbers for `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) validation_failures: u64,
    pub(crate) quarantines: u64,
    pub(crate) agents: u64,
    pub(crate) channels: u64,
    pub(crate) quarantined_agents: u64,
    pub(crate) in_flight: u64,
    pub(crate) send_latency: mfp_runtime::metrics::HistogramSnapshot,
    pub(crate) message_size: mfp_runtime::metrics::HistogramSnapshot,
    pub(crate) handler_panics: u64,
    pub(crate) storage_failures: u64,
}

/// Counters of cross-runtime channels (the runtime's `remote_*` metrics).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RemoteStats {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) rejected: u64,
    pub(crate) rotations: u64,
}

struct ToSink(Sink, Arc<RwLock<HashMap<mfp_runtime::AgentId, String>>>);

impl Mfp {
    /// Opens the runtime: on SQLite storage when `storage` is given (restoring what was
    /// stored), in memory otherwise. Call from a blocking context inside tokio.
    pub(crate) fn open(config: RuntimeConfig, storage: Option<(&Path, MasterKey)>) -> Result<Self, AdapterError> {
        let runtime = match storage {
            Some((path, key)) => {
                let sc = StorageConfig::new(path, key);
                mfp_storage::open_runtime(config, sc).map_err(rt_err(format!("storage {}", path.display())))?
            }
            None => Runtime::new(config).map_err(rt_err("runtime"))?,
        };
        let detached = runtime.detached_agents();
        let restored = !detached.is_empty();
        let names = detached.into_iter().filter_map(|(id, n)| n.map(|n| (id, n))).collect();
        Ok(Self { runtime, names: RwLock::new(names), restored })
    }

    /// The runtime (for its federation).
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The name of agent `id`, if it has one.
    pub(crate) fn agent_name(&self, id: &mfp_runtime::AgentId) -> Option<String> {
        self.names.read().get(id).cloned()
    }

    /// Counters of cross-runtime channels, for `/metrics`.
    pub(crate) fn remote_stats(&self) -> RemoteStats {
        let m = self.runtime.metrics();
        RemoteStats {
            sent: m.remote_sent.get(),
            received: m.remote_received.get(),
            duplicates: m.remote_duplicates.get(),
            rejected: m.remote_rejected.get(),
            rotations: m.remote_rotations.get(),
        }
    }

    /// Whether the runtime was restored from storage.
    pub(crate) fn restored(&self) -> bool {
        self.restored
    }

    /// The runtime's identity, short form (for logs).
    pub(crate) fn identity_short(&self) -> String {
        self.runtime.identity().short()
    }

    /// Binds `name` (or re-attaches it when it was restored) with a handler that passes
    /// each message to `sink`.
    pub(crate) fn start_agent(&self, name: &str, sink: Sink) -> Result<AgentRef, AdapterError> {
        let names = Arc::new(RwLock::new(self.names.read().clone()));
        let existing = self.runtime.detached_agents().into_iter().find(|(_, n)| n.as_deref() == Some(name));
        let handler = ToSink(sink, Arc::clone(&names));
        let handle = match existing {
            Some((id, _)) => {
                self.runtime.attach_async(&id, handler).map_err(rt_err(format!("agent {name}: attach")))?
            }
            None => self.runtime.bind_async_named(name, handler).map_err(rt_err(format!("agent {name}: bind")))?,
        };
        self.names.write().insert(handle.id(), name.to_string());
        Ok(AgentRef { handle, names })
    }

    /// Refreshes every agent's view of the names (after all agents were started).
    pub(crate) fn share_names(&self, agents: &[AgentRef]) {
        let all = self.names.read().clone();
        for a in agents {
            *a.names.write() = all.clone();
        }
    }

    /// Agents restored from storage that the configuration no longer names.
    pub(crate) fn orphans(&self) -> Vec<String> {
        self.runtime.detached_agents().into_iter().map(|(id, n)| n.unwrap_or_else(|| id.short())).collect()
    }

    /// Establishes the configured channels that do not exist yet (a restored runtime
    /// keeps its channels; pairs are counted, so a pair configured twice gets two).
    pub(crate) fn ensure_channels(
        &self,
        specs: &[ChannelSpec],
        agents: &HashMap<String, AgentRef>,
    ) -> Result<usize, AdapterError> {
        let mut existing: HashMap<(String, String), usize> = HashMap::new();
        let names = self.names.read().clone();
        for (name, a) in agents {
            for c in a.list_channels().map_err(rt_err(format!("agent {name}: channels")))? {
                let Some(peer) = names.get(&c.peer) else { continue };
                // Each channel is seen from both ends; count it from the smaller name only.
                if name.as_str() <= peer.as_str() {
                    *existing.entry(pair_key(name, peer)).or_default() += 1;
                }
            }
        }
        let mut created = 0;
        for s in specs {
            let key = pair_key(&s.a, &s.b);
            if let Some(n) = existing.get_mut(&key)
                && *n > 0
            {
                *n -= 1;
                continue;
            }
            let (Some(a), Some(b)) = (agents.get(&s.a), agents.get(&s.b)) else { continue };
            self.runtime
                .establish_channel_with_depth(&a.handle.id(), &b.handle.id(), s.depth)
                .map_err(rt_err(format!("channel {} <-> {}", s.a, s.b)))?;
            created += 1;
        }
        Ok(created)
    }

    /// Counters and gauges for `/metrics`.
    pub(crate) fn stats(&self) -> Stats {
        let m = self.runtime.metrics();
        Stats {
            sent: m.messages_sent.get(),
            received: m.messages_delivered.get(),
            validation_failures: m.validation_failures.get(),
            quarantines: m.agent_quarantines.get() + m.channel_quarantines.get(),
            agents: self.runtime.agent_count() as u64,
            channels: self.runtime.channel_count() as u64,
            quarantined_agents: self
                .names
                .read()
                .keys()
                .filter(|id| self.runtime.agent_state(id).is_ok_and(|s| s == mfp_runtime::AgentState::Quarantined))
                .count() as u64,
            in_flight: self.runtime.in_flight(),
            send_latency: m.send_latency(),
            message_size: m.message_size(),
            handler_panics: m.handler_panics.get(),
            storage_failures: m.storage_failures.get(),
        }
    }

    /// Messages queued in the runtime or being handed to agents.
    pub(crate) fn in_flight(&self) -> u64 {
        self.runtime.in_flight()
    }

    /// Delivers what is queued (bounded by the runtime's pipeline timeout), then stops.
    /// With storage, the state stays stored for the next start.
    pub(crate) async fn shutdown(&self) {
        self.runtime.shutdown_async().await;
    }
}

impl AsyncHandler for ToSink {
    async fn handle(&self, _agent: AgentHandle, msg: DeliveredMessage) {
        let sender_name = self.1.read().get(&msg.sender).cloned();
        let (done, finished) = Done::new();
        let incoming = Incoming {
            sender: msg.sender.to_string(),
            sender_name,
            channel: msg.channel.to_string(),
            message_id: msg.message_id.to_string(),
            step: msg.step,
            redelivered: msg.redelivered,
            payload: msg.payload,
            done,
        };
        (self.0)(incoming).await;
        // Return only once the agent is done with the message: with storage, the runtime
        // keeps it in its durable inbox until then. A message dropped unacknowledged (the
        // agent is not running, the server is stopping) is never acknowledged here.
        if finished.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// An agent's tools.
#[derive(Clone)]
pub(crate) struct AgentRef {
    handle: AgentHandle,
    names: Arc<RwLock<HashMap<mfp_runtime::AgentId, String>>>,
}

/// Where a send goes.
pub(crate) enum Target {
    /// A channel id in hex.
    Channel(String),
    /// The agent's (first active) channel with the agent of this name.
    Peer(String),
}

/// Why an agent's call failed; mapped to JSON-RPC and HTTP errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToolError {
    /// Bad arguments.
    #[error("{0}")]
    InvalidParams(String),
    /// The agent has no channel with an agent of this name.
    #[error("no channel to an agent named {0:?} (see channels for the agent's peers)")]
    UnknownPeer(String),
    /// The runtime refused; `code` is pymfp's error code when there is one.
    #[error("{message}")]
    Runtime { code: &'static str, message: String },
}

fn tool_err(e: &mfp_runtime::Error) -> ToolError {
    ToolError::Runtime { code: e.code().map_or("error", mfp_runtime::ErrorCode::as_str), message: e.to_string() }
}

/// A send's receipt.
#[derive(Debug, serde::Serialize)]
pub(crate) struct SendResult {
    pub(crate) message_id: String,
    pub(crate) channel: String,
    pub(crate) step: u64,
}

/// One of the agent's channels.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ChannelView {
    pub(crate) channel: String,
    pub(crate) peer: String,
    pub(crate) peer_name: Option<String>,
    pub(crate) status: &'static str,
    pub(crate) depth: usize,
    /// For a cross-runtime channel, the peer runtime's id (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_runtime: Option<String>,
}

/// The agent's status.
#[derive(Debug, serde::Serialize)]
pub(crate) struct StatusView {
    pub(crate) agent_id: String,
    pub(crate) name: Option<String>,
    pub(crate) state: &'static str,
    pub(crate) channel_count: usize,
    pub(crate) messages_sent: u64,
    pub(crate) mailbox_len: usize,
}

impl AgentRef {
    /// The agent's id.
    pub(crate) fn id(&self) -> mfp_runtime::AgentId {
        self.handle.id()
    }

    /// How many of the agent's channels (any status) lead to an agent of `peer`.
    pub(crate) fn channels_with_runtime(&self, peer: &mfp_core::RuntimeId) -> Result<usize, mfp_runtime::Error> {
        Ok(self.list_channels()?.iter().filter(|c| c.peer_runtime.as_ref() == Some(peer)).count())
    }

    /// Whether the agent has the channel `id`.
    pub(crate) fn has_channel(&self, id: &ChannelId) -> Result<bool, mfp_runtime::Error> {
        Ok(self.list_channels()?.iter().any(|c| c.channel_id == *id))
    }

    /// The agent's channels; none (rather than an error) while it is bound without any.
    fn list_channels(&self) -> Result<Vec<mfp_runtime::ChannelInfo>, mfp_runtime::Error> {
        match self.handle.channels() {
            Err(mfp_runtime::Error::AgentState { state: mfp_runtime::AgentState::Bound, .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// `send`: the payload on a channel of this agent.
    pub(crate) async fn send(
        &self,
        target: Target,
        payload: &[u8],
        idempotency_key: Option<String>,
    ) -> Result<SendResult, ToolError> {
        let channel = match target {
            Target::Channel(hex) => hex.parse::<ChannelId>().map_err(|_| {
                ToolError::InvalidParams("channel must be 32 hex digits (a channel id from channels)".into())
            })?,
            Target::Peer(name) => {
                let names = self.names.read().clone();
                let list = self.list_channels().map_err(|e| tool_err(&e))?;
                list.iter()
                    .find(|c| names.get(&c.peer) == Some(&name) && c.status == mfp_runtime::ChannelStatus::Active)
                    .or_else(|| list.iter().find(|c| names.get(&c.peer) == Some(&name)))
                    .map(|c| c.channel_id)
                    .ok_or(ToolError::UnknownPeer(name))?
            }
        };
        let options = match idempotency_key {
            Some(k) => SendOptions::idempotent(k),
            None => SendOptions::default(),
        };
        let r = self.handle.send_with_async(channel, payload, &options).await.map_err(|e| tool_err(&e))?;
        Ok(SendResult { message_id: r.message_id.to_string(), channel: r.channel.to_string(), step: r.step })
    }

    /// `channels`: the agent's channels.
    pub(crate) fn channels(&self) -> Result<Vec<ChannelView>, ToolError> {
        let names = self.names.read().clone();
        Ok(self
            .list_channels()
            .map_err(|e| tool_err(&e))?
            .into_iter()
            .map(|c| ChannelView {
                channel: c.channel_id.to_string(),
                peer: c.peer.to_string(),
                peer_name: names.get(&c.peer).cloned(),
                status: c.status.as_str(),
                depth: c.depth,
                peer_runtime: c.peer_runtime.map(|r| r.to_string()),
            })
            .collect())
    }

    /// `status`: the agent's state and counters.
    pub(crate) fn status(&self) -> Result<StatusView, ToolError> {
        let s = self.handle.status().map_err(|e| tool_err(&e))?;
        Ok(StatusView {
            agent_id: s.agent_id.to_string(),
            name: self.handle.name().map(str::to_string),
            state: s.state.as_str(),
            channel_count: s.channel_count,
            messages_sent: s.messages_sent,
            mailbox_len: s.mailbox_len,
        })
    }
}
