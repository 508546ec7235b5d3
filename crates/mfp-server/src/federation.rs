//! The server's federation: native peers over authenticated links
//! ([`mfp_federation::federation::Federation`]) and pymfp compat peers
//! ([`mfp_federation::compat_net::CompatNetwork`]), started after the runtime and its agents.
//!
//! Each kind is the runtime's transport for its own peers, so one server may have both:
//! the native listener is `federation.listen`; the pymfp one is `transport.host:port`
//! (pymfp's) — or `federation.listen` when there are only pymfp peers. The cross-runtime
//! channels of `federation.channels` are opened by a task once each peer's link is up,
//! retried with backoff; a channel the runtime restored from storage is not opened again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_federation::compat::{Bootstrap, CompatChannel, CompatPeer};
use mfp_federation::compat_net::{CompatNetConfig, CompatNetwork};
use mfp_federation::control::Target;
use mfp_federation::federation::{AcceptPolicy, FederatedPeer, Federation, FederationConfig};
use mfp_federation::net::{NetConfig, PeerConfig};
use mfp_federation::{IdentityKey, PublicKey};

use crate::adapter::{AgentRef, Mfp};
use crate::config::{FedChannelSpec, PeerKind, Validated};

/// First delay before opening a configured channel again after a failure.
const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Largest delay between attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the federation could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FedStartError {
    /// The identity key file could not be loaded.
    #[error("federation.identity_key {path}: {reason}")]
    Identity { path: String, reason: String },
    /// The native federation did not start.
    #[error("federation: {0} (check federation.listen and the peers)")]
    Native(String),
    /// The pymfp compat network did not start.
    #[error("federation (pymfp peers): {0}")]
    Compat(String),
}

/// What an operator may do to a cross-runtime channel of a native peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Quarantine it here: sends fail, the peer's messages wait in its log.
    Suspend,
    /// `Federation::resume_channel`.
    Resume,
    /// `Federation::reset_channel`: both chains restart from a new secret.
    Reset,
    /// `Federation::rotate`: this side's outbound chain rotates.
    Rotate,
}

impl Action {
    /// The action named in a request path.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "suspend" => Some(Self::Suspend),
            "resume" => Some(Self::Resume),
            "reset" => Some(Self::Reset),
            "rotate" => Some(Self::Rotate),
            _ => None,
        }
    }

    /// Its name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Reset => "reset",
            Self::Rotate => "rotate",
        }
    }
}

/// Why an operator's action was not done: an HTTP status and what to tell the operator.
#[derive(Debug)]
pub(crate) struct OpError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl OpError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

/// Counters read at each scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct FedStats {
    /// Each configured peer (its `runtime_id` as configured, native or pymfp) and whether
    /// its link is up now.
    pub(crate) links: Vec<(String, &'static str, bool)>,
    pub(crate) peers: u64,
    pub(crate) links_up: u64,
    pub(crate) handshakes: u64,
    pub(crate) handshake_failures: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) channels_opened: u64,
    /// Cross-runtime channels with native peers, and those of them suspended now.
    pub(crate) channels: u64,
    pub(crate) channels_suspended: u64,
    /// Recoveries that resent what the peer lacked, and those that ended in a suspension
    /// (corruption, a gap beyond the log, never sent, attempts or time exhausted).
    pub(crate) resyncs: u64,
    pub(crate) suspensions: u64,
    /// Channel resets completed.
    pub(crate) resets: u64,
}

/// The running federation: native peers, pymfp peers, or both.
pub(crate) struct Running {
    native: Option<Native>,
    compat: Option<Compat>,
}

/// Native peers.
struct Native {
    fed: Arc<Federation>,
    peers: Vec<RuntimeId>,
    /// Each peer's `runtime_id` as the configuration writes it.
    names: HashMap<RuntimeId, String>,
    /// The runtime's positions of cross-runtime channels.
    remote: mfp_runtime::remote::RemoteHandle,
    opener: Option<tokio::task::JoinHandle<()>>,
    opened: Arc<std::sync::atomic::AtomicU64>,
}

/// pymfp compat peers.
struct Compat {
    net: CompatNetwork,
    peers: Vec<RuntimeId>,
    /// Each peer's "deployment/instance".
    names: HashMap<RuntimeId, String>,
}

impl Running {
    /// Where the federation listens, if it does: the native listener when there are native
    /// peers, else the pymfp one.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match (&self.native, &self.compat) {
            (Some(n), _) => n.fed.local_addr(),
            (None, Some(c)) => c.net.local_addr(),
            (None, None) => None,
        }
    }

    /// Where the pymfp listener is when there are native peers too (then it is not
    /// [`Self::local_addr`]).
    pub(crate) fn pymfp_addr(&self) -> Option<SocketAddr> {
        self.native.as_ref().and(self.compat.as_ref()).and_then(|c| c.net.local_addr())
    }

    /// Counters now (both kinds of peers added up).
    pub(crate) fn stats(&self) -> FedStats {
        let mut s = FedStats::default();
        if let Some(Native { fed, peers, names, opened, remote, .. }) = &self.native {
            let n = fed.net_stats().unwrap_or_default();
            s.peers += peers.len() as u64;
            for p in peers {
                let up = fed.is_up(p);
                s.links_up += u64::from(up);
                s.links.push((names.get(p).cloned().unwrap_or_else(|| p.to_string()), "native", up));
            }
            s.handshakes = n.handshakes_ok;
            s.handshake_failures = n.handshakes_failed;
            s.bytes_in = n.bytes_in;
            s.bytes_out = n.bytes_out;
            s.channels_opened = opened.load(std::sync::atomic::Ordering::Relaxed);
            for p in peers.iter().flat_map(|p| remote.positions(p).unwrap_or_default()) {
                s.channels += 1;
                s.channels_suspended += u64::from(p.status == mfp_runtime::ChannelStatus::Quarantined);
            }
            let r = fed.recovery_stats();
            s.resyncs = r.resyncs;
            s.suspensions = r.corruption + r.gap_beyond_log + r.never_sent + r.attempts_exhausted + r.timed_out;
            s.resets = r.resets;
        }
        if let Some(Compat { net, peers, names }) = &self.compat {
            s.peers += peers.len() as u64;
            for p in peers {
                let up = net.is_up(p);
                s.links_up += u64::from(up);
                s.links.push((names.get(p).cloned().unwrap_or_else(|| p.to_string()), "pymfp", up));
            }
        }
        s
    }

    /// The compat network's own Prometheus text (pymfp peers only).
    pub(crate) fn compat_prometheus(&self) -> Option<String> {
        self.compat.as_ref().map(|c| c.net.stats().prometheus())
    }

    /// The peers with their links, and the native peers' channels with their positions,
    /// for the operator (`GET /federation`). Ids and counters only: no state, no key.
    pub(crate) fn status(&self, agent_name: &dyn Fn(&mfp_core::AgentId) -> Option<String>) -> serde_json::Value {
        use serde_json::json;
        let mut peers = Vec::new();
        let mut channels = Vec::new();
        let mut recovery = serde_json::Value::Null;
        let peer = |id: &RuntimeId, name: Option<&String>, kind: &str, up: bool| json!({"runtime_id": id.to_string(), "name": name, "kind": kind, "link_up": up});
        if let Some(n) = &self.native {
            for id in &n.peers {
                peers.push(peer(id, n.names.get(id), "native", n.fed.is_up(id)));
                for p in n.remote.positions(id).unwrap_or_default() {
                    channels.push(json!({
                        "channel": p.channel.to_string(),
                        "peer": id.to_string(),
                        "local_agent": agent_name(&p.local_agent),
                        "local_agent_id": p.local_agent.to_string(),
                        "remote_agent_id": p.remote.agent.to_string(),
                        "status": p.status.as_str(),
                        "tx_next": p.tx_next,
                        "rx_next": p.rx_next,
                        "acked": p.acked,
                        "unacknowledged": p.tx_next.saturating_sub(p.acked),
                        "unconfirmed": p.unconfirmed,
                    }));
                }
            }
            let r = n.fed.recovery_stats();
            recovery = json!({
                "negotiations": r.negotiations, "in_step": r.in_step, "resyncs": r.resyncs,
                "completed": r.completed, "corruption": r.corruption, "gap_beyond_log": r.gap_beyond_log,
                "never_sent": r.never_sent, "attempts_exhausted": r.attempts_exhausted,
                "timed_out": r.timed_out, "resets": r.resets,
            });
        }
        if let Some(c) = &self.compat {
            for id in &c.peers {
                peers.push(peer(id, c.names.get(id), "pymfp", c.net.is_up(id)));
            }
        }
        json!({"peers": peers, "channels": channels, "recovery": recovery})
    }

    /// Carries out an operator's `action` on cross-runtime channel `channel` of a native
    /// peer; answers what it did, or why not with the HTTP status that says so.
    pub(crate) async fn act(
        &self,
        runtime: &mfp_runtime::Runtime,
        channel: &mfp_core::ChannelId,
        action: Action,
    ) -> Result<serde_json::Value, OpError> {
        use mfp_federation::federation::FederationError as F;
        use serde_json::json;
        let Some(n) = &self.native else {
            return Err(OpError::new(
                404,
                "this server has no native federation peer (federation.peers with public_key)",
            ));
        };
        let found = n
            .peers
            .iter()
            .find_map(|id| n.remote.positions(id).ok()?.into_iter().find(|p| p.channel == *channel).map(|p| (*id, p)));
        let Some((peer, pos)) = found else {
            return Err(OpError::new(
                404,
                format!("channel {channel} is not a cross-runtime channel with a native peer of this server"),
            ));
        };
        let outcome = match action {
            Action::Suspend => runtime
                .quarantine_channel_async(channel, "suspended by the operator")
                .await
                .map(|()| json!({"status": "quarantined"}))
                .map_err(F::from),
            Action::Resume => n.fed.resume_channel(channel).await.map(|()| json!({"status": "active"})),
            Action::Reset => {
                n.fed.reset_channel(channel).await.map(|discarded| json!({"status": "active", "discarded": discarded}))
            }
            Action::Rotate => n.fed.rotate(channel).map(|()| json!({"requested": true})),
        };
        let peer_name = n.names.get(&peer).cloned().unwrap_or_else(|| peer.short());
        match outcome {
            Ok(mut v) => {
                tracing::info!(channel = %channel.short(), peer = %peer_name, action = action.as_str(), "operator action on a federation channel");
                if let Some(o) = v.as_object_mut() {
                    o.insert("channel".into(), json!(channel.to_string()));
                    o.insert("action".into(), json!(action.as_str()));
                }
                Ok(v)
            }
            Err(e) => {
                let status = match &e {
                    // Storage failed: not the request's fault.
                    F::Runtime(mfp_runtime::Error::Storage(_)) => 500,
                    F::NotSuspended(_) | F::ResetRefused { .. } | F::Runtime(_) => 409,
                    F::PeerDown(_) | F::ShutDown => 503,
                    F::Timeout(_) | F::ResetUnanswered { .. } => 504,
                    _ => 500,
                };
                let message = match (&e, action) {
                    (F::Runtime(r), Action::Resume) if !matches!(r, mfp_runtime::Error::Storage(_)) => {
                        format!("{e} (a channel is resumed once suspended: its status is {})", pos.status.as_str())
                    }
                    _ => e.to_string(),
                };
                tracing::warn!(channel = %channel.short(), peer = %peer_name, action = action.as_str(), error = %message, "operator action on a federation channel failed");
                Err(OpError::new(status, message))
            }
        }
    }

    /// Closes the links (native: a Close message to each peer) and stops the tasks.
    pub(crate) async fn shutdown(self) {
        if let Some(Native { fed, opener, .. }) = self.native {
            if let Some(t) = opener {
                t.abort();
                let _ = t.await;
            }
            match Arc::try_unwrap(fed) {
                Ok(fed) => fed.shutdown().await,
                Err(_) => tracing::warn!("federation still in use at shutdown; its links are dropped"),
            }
        }
        if let Some(c) = self.compat {
            c.net.shutdown().await;
        }
    }
}

/// Starts the federation of `cfg` on `mfp`'s runtime; `None` when no peer is configured.
pub(crate) async fn start(
    cfg: &Validated,
    mfp: &Mfp,
    agents: &HashMap<String, AgentRef>,
    master_key: Option<&mfp_storage::MasterKey>,
) -> Result<Option<Running>, FedStartError> {
    if cfg.peers.is_empty() {
        return Ok(None);
    }
    let has_native = cfg.peers.iter().any(|p| matches!(p.kind, PeerKind::Native { .. }));
    let has_pymfp = cfg.peers.iter().any(|p| matches!(p.kind, PeerKind::Pymfp { .. }));
    let native = if has_native { Some(start_native(cfg, mfp, agents, master_key).await?) } else { None };
    let compat = if has_pymfp {
        match start_compat(cfg, mfp, agents, master_key, has_native).await {
            Ok(c) => Some(c),
            Err(e) => {
                // The native side stops cleanly before the error is reported.
                if let Some(n) = native {
                    Running { native: Some(n), compat: None }.shutdown().await;
                }
                return Err(e);
            }
        }
    } else {
        None
    };
    Ok(Some(Running { native, compat }))
}

async fn start_native(
    cfg: &Validated,
    mfp: &Mfp,
    agents: &HashMap<String, AgentRef>,
    master_key: Option<&mfp_storage::MasterKey>,
) -> Result<Native, FedStartError> {
    let Some(path) = &cfg.identity_key else {
        return Err(FedStartError::Native("a native peer needs federation.identity_key".into()));
    };
    // Plain or encrypted with the storage master key (told apart by the file's prefix).
    let identity = IdentityKey::load_with_master_key(path, master_key.map(mfp_storage::MasterKey::expose))
        .map_err(|e| FedStartError::Identity { path: path.display().to_string(), reason: e.to_string() })?;
    tracing::info!(public_key = %identity.public(), "federation identity (peers pin this key)");
    let mut net = NetConfig::default();
    net.listen = cfg.federation_listen;
    net.busy_poll = cfg.busy_poll;
    cfg.link.apply(&mut net);
    let mut peers = Vec::new();
    let mut ids = Vec::new();
    let mut names = HashMap::new();
    for p in &cfg.peers {
        let PeerKind::Native { runtime_id, id, public_key, max_in_flight_messages, max_in_flight_bytes, accept } =
            &p.kind
        else {
            continue;
        };
        let mut fp = FederatedPeer::new(PeerConfig {
            runtime: *id,
            endpoint: p.endpoint.clone(),
            key: PublicKey::from_bytes(*public_key),
        });
        fp.max_in_flight_messages = *max_in_flight_messages;
        fp.max_in_flight_bytes = *max_in_flight_bytes;
        fp.accept = match accept {
            None => AcceptPolicy::Any,
            Some(list) if list.is_empty() => AcceptPolicy::Nobody,
            Some(list) => AcceptPolicy::Named(list.clone()),
        };
        tracing::info!(peer = %runtime_id, runtime = %id.short(), endpoint = p.endpoint.as_deref().unwrap_or("(waits for it to dial)"), "federation peer");
        peers.push(fp);
        ids.push(*id);
        names.insert(*id, runtime_id.clone());
    }
    let mut fed_cfg = FederationConfig::new(net, peers);
    fed_cfg.recovery = cfg.recovery;
    cfg.link.apply_federation(&mut fed_cfg);
    let fed =
        Federation::start(mfp.runtime(), identity, fed_cfg).await.map_err(|e| FedStartError::Native(e.to_string()))?;
    if let Some(a) = fed.local_addr() {
        tracing::info!(addr = %a, "federation listener bound");
    }
    let fed = Arc::new(fed);
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The configured channels the runtime does not have yet (restored ones are counted
    // per local agent and peer runtime).
    let mut existing: HashMap<(String, RuntimeId), usize> = HashMap::new();
    let mut wanted: Vec<(FedChannelSpec, mfp_core::AgentId)> = Vec::new();
    for c in &cfg.fed_channels {
        let Some(agent) = agents.get(&c.agent) else { continue };
        let key = (c.agent.clone(), c.peer);
        if !existing.contains_key(&key) {
            let n = agent
                .channels_with_runtime(&c.peer)
                .map_err(|e| FedStartError::Native(format!("agent {}: channels: {e}", c.agent)))?;
            existing.insert(key.clone(), n);
        }
        if let Some(n) = existing.get_mut(&key)
            && *n > 0
        {
            *n -= 1;
            tracing::info!(agent = %c.agent, peer = %c.peer_name, remote_agent = %c.remote_agent, "federation channel restored from storage");
            continue;
        }
        wanted.push((c.clone(), agent.id()));
    }
    let opener =
        (!wanted.is_empty()).then(|| tokio::spawn(open_channels(Arc::clone(&fed), wanted, Arc::clone(&opened))));
    Ok(Native { fed, peers: ids, names, remote: mfp.runtime().remote_handle(), opener, opened })
}

/// Opens each wanted channel once its peer's link is up; a failure is retried with backoff.
async fn open_channels(
    fed: Arc<Federation>,
    wanted: Vec<(FedChannelSpec, mfp_core::AgentId)>,
    opened: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut set = tokio::task::JoinSet::new();
    for (c, local) in wanted {
        let fed = Arc::clone(&fed);
        let opened = Arc::clone(&opened);
        set.spawn(async move {
            let mut delay = RETRY_INITIAL;
            loop {
                if fed.wait_up(&c.peer).await.is_err() {
                    return;
                }
                match fed.open_channel(local, c.peer, Target::Name(c.remote_agent.clone()), c.depth).await {
                    Ok(id) => {
                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(agent = %c.agent, peer = %c.peer_name, remote_agent = %c.remote_agent, channel = %id.short(), depth = c.depth, "federation channel opened");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(agent = %c.agent, peer = %c.peer_name, remote_agent = %c.remote_agent, error = %e, retry_in_ms = delay.as_millis() as u64, "federation channel not opened yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn start_compat(
    cfg: &Validated,
    mfp: &Mfp,
    agents: &HashMap<String, AgentRef>,
    master_key: Option<&mfp_storage::MasterKey>,
    with_native: bool,
) -> Result<Compat, FedStartError> {
    let mut peers = Vec::new();
    let mut ids = Vec::new();
    let mut names = HashMap::new();
    for p in &cfg.peers {
        let PeerKind::Pymfp { deployment_id, instance_id, bootstrap, channels, ceremonial } = &p.kind else {
            continue;
        };
        let name = format!("{deployment_id}/{instance_id}");
        let boot = match (bootstrap.as_str(), ceremonial) {
            ("ceremonial", Some((key_file, peer_public))) => {
                let local_secret = mfp_federation::IdentityKey::load_with_master_key(
                    key_file,
                    master_key.map(mfp_storage::MasterKey::expose),
                )
                .map_err(|e| {
                    FedStartError::Compat(format!("peer {name}: ceremonial_key {}: {e}", key_file.display()))
                })?;
                Bootstrap::Ceremonial { local_secret, peer_public: mfp_federation::PublicKey::from_bytes(*peer_public) }
            }
            ("ceremonial", None) => {
                return Err(FedStartError::Compat(format!(
                    "peer {name}: bootstrap: ceremonial needs this runtime's X25519 key (ceremonial_key: FILE, made with \
                     mfp-server keygen --identity FILE) and the peer's public key (peer_public_key: HEX) in its peer entry"
                )));
            }
            _ => Bootstrap::Deterministic,
        };
        let endpoint = p.endpoint.clone().unwrap_or_default();
        let mut peer = CompatPeer::new(&name, &endpoint, boot).map_err(|e| FedStartError::Compat(e.to_string()))?;
        for c in channels {
            let Some(agent) = agents.get(&c.agent) else { continue };
            // A channel restored from storage is kept as it is.
            if agent.has_channel(&c.id).map_err(|e| FedStartError::Compat(format!("agent {}: {e}", c.agent)))? {
                continue;
            }
            peer.add_channel(CompatChannel {
                id: c.id,
                depth: c.depth,
                local_agent: agent.id(),
                remote_agent: c.remote_agent,
            })
            .map_err(|e| FedStartError::Compat(e.to_string()))?;
        }
        let id = RuntimeId::derive(deployment_id.as_bytes(), instance_id.as_bytes());
        ids.push(id);
        names.insert(id, name);
        peers.push(peer);
    }
    // pymfp listens on transport.host:port whenever peers are configured; federation.listen
    // is the native listener when there are native peers too.
    let listen = match cfg.federation_listen {
        Some(a) if !with_native => a,
        _ => {
            let addr = format!("{}:{}", bracket(&cfg.transport.host), cfg.transport.port.value);
            addr.parse().map_err(|_| {
                FedStartError::Compat(format!(
                    "transport.host {:?} is not an IP address: set it to one (the pymfp peers' listener), or, \
                     with pymfp peers only, federation.listen to ip:port",
                    cfg.transport.host
                ))
            })?
        }
    };
    let mut config = CompatNetConfig { listen: Some(listen), ..CompatNetConfig::default() };
    cfg.link.apply_compat(&mut config);
    let net =
        CompatNetwork::start(mfp.runtime(), peers, config).await.map_err(|e| FedStartError::Compat(e.to_string()))?;
    if let Some(a) = net.local_addr() {
        tracing::warn!(addr = %a, "listening for pymfp peers: UNAUTHENTICATED (see docs/interop.md)");
    }
    Ok(Compat { net, peers: ids, names })
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}
