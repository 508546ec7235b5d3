//! The server's YAML configuration: a superset of pymfp 1.0.0's schema.
//!
//! Every key pymfp's `ServerConfig.from_dict` reads is accepted here with the same default
//! and meaning; ours adds agent kinds and their settings, the admin listener, the agent HTTP
//! listener, limits, logging and native federation peers. Unknown keys and duplicate keys
//! are refused (pymfp ignores unknown keys), always with file, line and column.
//!
//! No `#[serde(flatten)]` and no internally tagged enums are used here: both lose the
//! locations serde-saphyr records.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

mod link;
pub(crate) use link::LinkTuning;

/// Largest configuration file read.
pub(crate) const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A problem found in a configuration file, at a position when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) line: u64,
    pub(crate) column: u64,
    pub(crate) message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration file: {reason}")]
    Read { file: String, reason: String },
    /// The file was read but is not a valid configuration.
    #[error("{}", render(file, problems))]
    Invalid { file: String, problems: Vec<Problem> },
}

fn render(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.line > 0 {
                format!("{file}:{}:{}: {}", p.line, p.column, p.message)
            } else {
                format!("{file}: {}", p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn problem_at<T>(s: &Spanned<T>, message: impl Into<String>) -> Problem {
    Problem { line: s.referenced.line(), column: s.referenced.column(), message: message.into() }
}

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// pymfp: runtime identity and frame depth.
    pub(crate) runtime: RuntimeSection,
    /// pymfp: quarantine policy.
    pub(crate) quarantine: QuarantineSection,
    /// pymfp: storage.
    pub(crate) storage: StorageSection,
    /// pymfp: the federation transport: where pymfp peers connect, and the timeouts of their links.
    pub(crate) transport: TransportSection,
    /// pymfp: recovery settings (the native federation's recovery limits).
    pub(crate) recovery: RecoverySection,
    /// pymfp: agents bound at start.
    pub(crate) agents: Vec<AgentEntry>,
    /// pymfp: channels established at start.
    pub(crate) channels: Vec<ChannelEntry>,
    /// pymfp: federation peers.
    pub(crate) federation: FederationSection,
    /// pymfp: log level (DEBUG, INFO, WARNING, ERROR).
    pub(crate) log_level: Option<Spanned<String>>,
    /// Ours: log format and level.
    pub(crate) logging: LoggingSection,
    /// Ours: the admin HTTP listener (health, metrics).
    pub(crate) admin: AdminSection,
    /// Ours: the HTTP listener webhook agents send through.
    pub(crate) http: HttpSection,
    /// Ours: the MCP (Streamable HTTP) listener of mcp agents.
    pub(crate) mcp: McpSection,
    /// Ours: limits.
    pub(crate) limits: LimitsSection,
    /// Ours: process lifecycle.
    pub(crate) server: ServerSection,
}

/// `runtime:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RuntimeSection {
    pub(crate) deployment_id: String,
    pub(crate) instance_id: String,
    pub(crate) default_frame_depth: Spanned<i64>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self { deployment_id: String::new(), instance_id: String::new(), default_frame_depth: unspanned(4) }
    }
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned { value, referenced: serde_saphyr::Location::UNKNOWN, defined: serde_saphyr::Location::UNKNOWN }
}

/// `quarantine:` (pymfp's YAML defaults: 3, 0 = unlimited, 0 = unlimited).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QuarantineSection {
    pub(crate) validation_failure_threshold: Spanned<i64>,
    pub(crate) max_message_rate: Spanned<i64>,
    pub(crate) max_payload_size: Spanned<i64>,
}

impl Default for QuarantineSection {
    fn default() -> Self {
        Self {
            validation_failure_threshold: unspanned(3),
            max_message_rate: unspanned(0),
            max_payload_size: unspanned(0),
        }
    }
}

/// `storage:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StorageSection {
    /// Database path; empty ⇒ no storage (pymfp's meaning).
    pub(crate) path: String,
    /// pymfp's switch. Ours always encrypts; `false` without a key means "generate one".
    pub(crate) encrypt_at_rest: bool,
    /// File holding the 32-byte master key (32 raw bytes or 64 hex digits).
    pub(crate) master_key_file: Spanned<String>,
    /// Ours: environment variable holding the master key as 64 hex digits.
    pub(crate) master_key_env: Option<Spanned<String>>,
    /// pymfp's switch; our storage always uses WAL.
    pub(crate) wal_mode: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            path: String::new(),
            encrypt_at_rest: false,
            master_key_file: unspanned(String::new()),
            master_key_env: None,
            wal_mode: true,
        }
    }
}

/// `transport:` (pymfp's federation listener and its timeouts, applied to pymfp peers' links).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TransportSection {
    pub(crate) host: String,
    pub(crate) port: Spanned<i64>,
    pub(crate) connect_timeout: Spanned<f64>,
    pub(crate) read_timeout: Spanned<f64>,
    pub(crate) write_timeout: Spanned<f64>,
}

impl Default for TransportSection {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: unspanned(9876),
            connect_timeout: unspanned(30.0),
            read_timeout: unspanned(30.0),
            write_timeout: unspanned(30.0),
        }
    }
}

/// `recovery:` (pymfp; kept for compatibility).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RecoverySection {
    pub(crate) max_step_gap: i64,
    pub(crate) max_attempts: Spanned<i64>,
    pub(crate) timeout_seconds: Spanned<f64>,
}

impl Default for RecoverySection {
    fn default() -> Self {
        Self { max_step_gap: 5, max_attempts: unspanned(3), timeout_seconds: unspanned(30.0) }
    }
}

/// One entry of `agents:`. A flat record: which keys are allowed depends on `type`, and
/// is checked after parsing (so every error keeps its location).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentEntry {
    pub(crate) name: Spanned<String>,
    #[serde(rename = "type", default = "default_agent_type")]
    pub(crate) kind: Spanned<String>,
    /// `builtin`: `echo` or `log`.
    #[serde(default)]
    pub(crate) builtin: Option<Spanned<String>>,
    /// `subprocess`: program and arguments.
    #[serde(default)]
    pub(crate) command: Option<Spanned<Vec<String>>>,
    /// `subprocess`: working directory (relative to the configuration file).
    #[serde(default)]
    pub(crate) cwd: Option<Spanned<String>>,
    /// `subprocess`: extra environment variables.
    #[serde(default)]
    pub(crate) env: Option<Spanned<BTreeMap<String, String>>>,
    /// `subprocess`: restart policy `on-failure` (default), `always` or `never`.
    #[serde(default)]
    pub(crate) restart: Option<Spanned<String>>,
    /// `subprocess`: longest line accepted from the agent, in bytes.
    #[serde(default)]
    pub(crate) max_line_bytes: Option<Spanned<u64>>,
    /// `webhook`: delivery URL (`http://` only).
    #[serde(default)]
    pub(crate) url: Option<Spanned<String>>,
    /// `webhook`: delivery timeout per attempt, seconds.
    #[serde(default)]
    pub(crate) timeout_seconds: Option<Spanned<f64>>,
    /// `webhook`: delivery attempts after the first.
    #[serde(default)]
    pub(crate) retries: Option<Spanned<u32>>,
    /// `webhook`: bearer token for sends through the HTTP listener.
    #[serde(default)]
    pub(crate) token: Option<Spanned<String>>,
    /// `webhook`: environment variable holding that token.
    #[serde(default)]
    pub(crate) token_env: Option<Spanned<String>>,
    /// Any kind but builtin/callback: messages held while the agent is down.
    #[serde(default)]
    pub(crate) queue_capacity: Option<Spanned<u64>>,
    /// `mcp`: most messages one `mfp_receive` returns.
    #[serde(default)]
    pub(crate) max_receive_messages: Option<Spanned<u64>>,
    /// `mcp`: longest wait one `mfp_receive` may ask for, seconds.
    #[serde(default)]
    pub(crate) max_wait_seconds: Option<Spanned<f64>>,
    /// `mcp`: largest payload `mfp_send` accepts, bytes (after base64 decoding).
    #[serde(default)]
    pub(crate) max_payload_bytes: Option<Spanned<u64>>,
}

fn default_agent_type() -> Spanned<String> {
    unspanned("callback".to_string())
}

/// One entry of `channels:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelEntry {
    pub(crate) agents: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_depth")]
    pub(crate) depth: Spanned<i64>,
}

fn default_depth() -> Spanned<i64> {
    unspanned(4)
}

/// `federation:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FederationSection {
    /// Ours: where native peers connect (`host:port`); none: this side only dials.
    pub(crate) listen: Option<Spanned<String>>,
    /// Ours: the runtime's identity key file (`mfp-server keygen --identity`).
    pub(crate) identity_key: Option<Spanned<String>>,
    /// pymfp: the peers.
    pub(crate) peers: Vec<PeerEntry>,
    /// Ours: cross-runtime channels with native peers opened at start.
    pub(crate) channels: Vec<FedChannelEntry>,
    /// Ours: seconds a native link keeps polling its socket after its last byte
    /// (`NetConfig::busy_poll`; 0, the default, is off; at most 0.1).
    pub(crate) busy_poll_seconds: Option<Spanned<f64>>,
    /// Ours: timers of native links (`NetConfig`'s defaults when missing).
    pub(crate) link: link::LinkSection,
    /// Ours: limits of the native listener (`NetConfig`'s defaults when missing).
    pub(crate) listener: link::ListenerSection,
    /// Ours: when native channels' chains rotate (pymfp's `RotationConfig` defaults).
    pub(crate) rotation: link::RotationSection,
}

/// One entry of `federation.peers`: pymfp style (`runtime_id` "deployment/instance",
/// `endpoint`, `bootstrap`) or native (with `public_key`, a pinned X25519 key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerEntry {
    pub(crate) runtime_id: Spanned<String>,
    /// Where to dial the peer; a native peer without one is waited for.
    #[serde(default)]
    pub(crate) endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) bootstrap: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) public_key: Option<Spanned<String>>,
    /// Native: messages in flight (sent, not acknowledged) to this peer at most.
    #[serde(default)]
    pub(crate) max_in_flight_messages: Option<Spanned<u64>>,
    /// Native: wire bytes in flight to this peer at most.
    #[serde(default)]
    pub(crate) max_in_flight_bytes: Option<Spanned<u64>>,
    /// Native: the local agents (by name) this peer may open channels with; absent: any.
    #[serde(default)]
    pub(crate) accept: Option<Spanned<Vec<Spanned<String>>>>,
    /// pymfp: the channels agreed with this peer in configuration.
    #[serde(default)]
    pub(crate) channels: Option<Vec<CompatChannelEntry>>,
    /// pymfp, ceremonial bootstrap: this runtime's X25519 key file (as written by
    /// `mfp-server keygen --identity`).
    #[serde(default)]
    pub(crate) ceremonial_key: Option<Spanned<String>>,
    /// pymfp, ceremonial bootstrap: the peer's X25519 public key (64 hex digits, or
    /// `mfp-x25519:` and 64 hex digits).
    #[serde(default)]
    pub(crate) peer_public_key: Option<Spanned<String>>,
}

/// One channel agreed with a pymfp peer (pymfp cannot agree on channels on the wire).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompatChannelEntry {
    /// The channel id both sides use, 32 hex digits.
    pub(crate) id: Spanned<String>,
    /// The local agent (by name).
    pub(crate) agent: Spanned<String>,
    /// The pymfp agent's id, 64 hex digits.
    pub(crate) remote_agent: Spanned<String>,
    #[serde(default = "default_depth")]
    pub(crate) depth: Spanned<i64>,
}

/// One entry of `federation.channels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FedChannelEntry {
    /// The local agent (by name).
    pub(crate) agent: Spanned<String>,
    /// The native peer's `runtime_id`, as written under `federation.peers`.
    pub(crate) peer: Spanned<String>,
    /// The peer's agent, by name.
    pub(crate) remote_agent: Spanned<String>,
    #[serde(default = "default_depth")]
    pub(crate) depth: Spanned<i64>,
}

/// `logging:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LoggingSection {
    /// `text` (default) or `json`.
    pub(crate) format: Option<Spanned<String>>,
    /// Overrides `log_level`; DEBUG, INFO, WARNING, ERROR (any case), or a tracing filter.
    pub(crate) level: Option<Spanned<String>>,
}

/// `admin:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminSection {
    pub(crate) enabled: bool,
    pub(crate) host: Spanned<String>,
    pub(crate) port: Spanned<i64>,
    /// Ours: the bearer token of the operator endpoints (`/federation`); none: they are off.
    pub(crate) token: Option<Spanned<String>>,
    /// Ours: the environment variable holding that token.
    pub(crate) token_env: Option<Spanned<String>>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { enabled: true, host: unspanned("127.0.0.1".into()), port: unspanned(9877), token: None, token_env: None }
    }
}

/// `http:` — where webhook agents send. Started only when a webhook agent exists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpSection {
    pub(crate) host: Spanned<String>,
    pub(crate) port: Spanned<i64>,
    /// Largest request body accepted, bytes.
    pub(crate) max_body_bytes: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self { host: unspanned("127.0.0.1".into()), port: unspanned(9878), max_body_bytes: 2 << 20 }
    }
}

/// `mcp:` — where MCP hosts reach mcp agents over Streamable HTTP (`/mcp/<agent>`).
/// Started only when an mcp agent with a token exists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct McpSection {
    pub(crate) host: Spanned<String>,
    pub(crate) port: Spanned<i64>,
    /// `Host` header values accepted besides the loopback names (DNS-rebinding protection).
    pub(crate) allowed_hosts: Option<Spanned<Vec<String>>>,
}

impl Default for McpSection {
    fn default() -> Self {
        Self { host: unspanned("127.0.0.1".into()), port: unspanned(9879), allowed_hosts: None }
    }
}

/// `limits:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSection {
    /// Runtime mailbox per agent.
    pub(crate) mailbox_capacity: Spanned<u64>,
    /// Default for agents' `queue_capacity`.
    pub(crate) agent_queue_capacity: Spanned<u64>,
    /// Default for subprocess agents' `max_line_bytes`.
    pub(crate) max_line_bytes: Spanned<u64>,
    /// How long an agent has to acknowledge one delivery, seconds.
    pub(crate) delivery_timeout_seconds: Spanned<f64>,
    /// How long the runtime waits for an agent to be done with one message (including a
    /// subprocess agent's restarts) before it quarantines the agent, seconds.
    pub(crate) handler_timeout_seconds: Spanned<f64>,
    /// Agents bound at most.
    pub(crate) max_agents: Spanned<u64>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            mailbox_capacity: unspanned(1024),
            agent_queue_capacity: unspanned(1024),
            max_line_bytes: unspanned(1 << 20),
            delivery_timeout_seconds: unspanned(10.0),
            handler_timeout_seconds: unspanned(3600.0),
            max_agents: unspanned(10_000),
        }
    }
}

/// `server:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerSection {
    /// On SIGTERM/SIGINT, how long queued deliveries may take, seconds.
    pub(crate) drain_timeout_seconds: Spanned<f64>,
    /// Stop the server once every subprocess agent has exited successfully (demos).
    pub(crate) exit_when_agents_finish: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { drain_timeout_seconds: unspanned(10.0), exit_when_agents_finish: false }
    }
}

/// What an agent is, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentKind {
    /// Echoes every message back on its channel.
    Echo,
    /// Logs each message's metadata (never its payload). pymfp's `callback`.
    Log,
    /// A program speaking JSON-RPC 2.0 on stdin/stdout.
    Subprocess(SubprocessSpec),
    /// HTTP POST delivery; sends through the HTTP listener.
    Webhook(WebhookSpec),
    /// An MCP host (over Streamable HTTP or stdio) takes messages from an inbox.
    Mcp(McpSpec),
}

/// A validated mcp agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct McpSpec {
    /// Bearer token for the HTTP endpoint; `None`: reachable over stdio only.
    pub(crate) token: TokenSource,
    /// Most messages one `mfp_receive` returns.
    pub(crate) max_receive: usize,
    /// Longest wait of one `mfp_receive`, milliseconds.
    pub(crate) max_wait_ms: u64,
    /// Largest payload `mfp_send` accepts, bytes.
    pub(crate) max_payload: usize,
}

/// Default most messages per `mfp_receive`.
pub(crate) const MCP_DEFAULT_MAX_RECEIVE: u64 = 32;
/// Default longest wait of `mfp_receive`, seconds.
pub(crate) const MCP_DEFAULT_MAX_WAIT_SECS: f64 = 30.0;
/// Default largest payload of `mfp_send`, bytes.
pub(crate) const MCP_DEFAULT_MAX_PAYLOAD: u64 = 64 << 10;

/// When a subprocess agent is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    /// After a non-zero exit or a signal.
    OnFailure,
    /// After any exit.
    Always,
    /// Never.
    Never,
}

/// A validated subprocess agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubprocessSpec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) restart: RestartPolicy,
    pub(crate) max_line_bytes: usize,
}

/// A validated webhook agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebhookSpec {
    pub(crate) url: String,
    pub(crate) timeout_ms: u64,
    pub(crate) retries: u32,
    /// Where the token comes from: literal or environment variable name.
    pub(crate) token: TokenSource,
}

/// A webhook agent's bearer token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// None configured: the agent cannot send.
    None,
    /// From the configuration file.
    Literal(String),
    /// From this environment variable.
    Env(String),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            TokenSource::Env(v) => write!(f, "Env({v})"),
        }
    }
}

/// A validated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentSpec {
    pub(crate) name: String,
    pub(crate) kind: AgentKind,
    pub(crate) queue_capacity: usize,
}

/// A validated channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelSpec {
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) depth: usize,
}

/// How a peer is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// pymfp compat: unauthenticated.
    Pymfp {
        deployment_id: String,
        instance_id: String,
        bootstrap: String,
        channels: Vec<CompatChannelSpec>,
        /// Ceremonial bootstrap: this runtime's key file (resolved) and the peer's public
        /// key (checked). pymfp's own YAML has neither: such a peer loads, and the server
        /// refuses to start it until both are given.
        ceremonial: Option<(PathBuf, [u8; 32])>,
    },
    /// Native: a pinned public key.
    Native {
        /// The name the configuration gives it.
        runtime_id: String,
        /// Its identity.
        id: mfp_core::RuntimeId,
        public_key: [u8; 32],
        max_in_flight_messages: usize,
        max_in_flight_bytes: usize,
        /// Local agents it may open channels with; `None`: any.
        accept: Option<Vec<String>>,
    },
}

/// A channel agreed with a pymfp peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompatChannelSpec {
    pub(crate) id: mfp_core::ChannelId,
    pub(crate) agent: String,
    pub(crate) remote_agent: mfp_core::AgentId,
    pub(crate) depth: usize,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSpec {
    /// Where to dial it; `None`: wait for it (native peers only).
    pub(crate) endpoint: Option<String>,
    pub(crate) kind: PeerKind,
}

/// A cross-runtime channel opened at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FedChannelSpec {
    pub(crate) agent: String,
    pub(crate) peer: mfp_core::RuntimeId,
    /// The peer's name in the configuration (for logs).
    pub(crate) peer_name: String,
    pub(crate) remote_agent: String,
    pub(crate) depth: usize,
}

/// Default messages in flight per native peer.
pub(crate) const DEFAULT_IN_FLIGHT_MESSAGES: u64 = 1024;
/// Default wire bytes in flight per native peer.
pub(crate) const DEFAULT_IN_FLIGHT_BYTES: u64 = 16 << 20;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// A configuration checked for meaning, ready to run.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) file: PathBuf,
    pub(crate) runtime: mfp_runtime::RuntimeConfig,
    pub(crate) agents: Vec<AgentSpec>,
    pub(crate) channels: Vec<ChannelSpec>,
    pub(crate) peers: Vec<PeerSpec>,
    /// `federation.listen`, resolved (native peers; pymfp peers fall back to `transport:`).
    pub(crate) federation_listen: Option<std::net::SocketAddr>,
    /// `federation.identity_key`, resolved against the configuration's directory.
    pub(crate) identity_key: Option<PathBuf>,
    /// `federation.channels`.
    pub(crate) fed_channels: Vec<FedChannelSpec>,
    /// `federation.busy_poll_seconds` (zero: off).
    pub(crate) busy_poll: std::time::Duration,
    /// `federation.link`, `federation.listener` and `transport.*`'s timeouts.
    pub(crate) link: LinkTuning,
    pub(crate) storage_path: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) log_format: LogFormat,
    pub(crate) log_filter: String,
    pub(crate) admin_addr: Option<String>,
    /// `admin.token` / `admin.token_env`: the operator endpoints' token (`None`: off).
    pub(crate) admin_token: TokenSource,
    pub(crate) http_addr: String,
    pub(crate) delivery_timeout_ms: u64,
    pub(crate) drain_timeout_ms: u64,
    pub(crate) master_key_env: Option<String>,
    pub(crate) exit_when_agents_finish: bool,
    pub(crate) http_max_body: usize,
    /// The MCP listener's address.
    pub(crate) mcp_addr: String,
    /// Extra `Host` values the MCP listener accepts (besides loopback).
    pub(crate) mcp_allowed_hosts: Vec<String>,
    /// pymfp's `transport:` values (its host and port; the timeouts are in `link`).
    pub(crate) transport: TransportSection,
    /// `recovery.max_attempts` and `recovery.timeout_seconds`: the limits of a native
    /// federation's recovery exchange.
    pub(crate) recovery: mfp_federation::recovery::RecoveryLimits,
    /// Non-fatal findings, to be logged at start and printed by check-config.
    pub(crate) warnings: Vec<String>,
}

/// Reads and validates a configuration file.
pub(crate) fn load(file: &Path) -> Result<Validated, ConfigError> {
    let name = file.display().to_string();
    let read_err = |reason: String| ConfigError::Read { file: name.clone(), reason };
    let meta = std::fs::metadata(file).map_err(|e| read_err(e.to_string()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(read_err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| read_err(e.to_string()))?;
    parse(&text, file)
}

/// Parses and validates configuration text; `file` names it in errors and anchors
/// relative paths.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Validated, ConfigError> {
    let name = file.display().to_string();
    let options = serde_saphyr::options! { with_snippet: false };
    let raw: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Invalid {
                file: name.clone(),
                problems: vec![Problem { line, column, message: plain_message(&e) }],
            }
        })?
    };
    // "demo.yaml" has the parent "": relative paths are then relative to the current directory.
    let base =
        file.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    validate(raw, file, &base).map_err(|problems| ConfigError::Invalid { file: name, problems })
}

/// serde-saphyr's message without its own location suffix (we print `file:line:col:`).
fn plain_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    let first = first.rfind(" at line ").map_or(first, |i| first.get(..i).unwrap_or(first));
    // serde-saphyr's advice is for programmers, not for whoever edits the file.
    let first = first.find(", set DuplicateKeyPolicy").map_or(first, |i| first.get(..i).unwrap_or(first));
    match first {
        "invalid i64" | "invalid u64" | "invalid u32" => "expected an integer".to_string(),
        "invalid f64" => "expected a number".to_string(),
        other => other.to_string(),
    }
}

fn int_in<T>(problems: &mut Vec<Problem>, v: &Spanned<T>, what: &str, lo: i128, hi: i128) -> Option<T>
where
    T: Copy + Into<i128>,
{
    let x: i128 = v.value.into();
    if x < lo || x > hi {
        problems.push(problem_at(v, format!("{what} must be between {lo} and {hi}, not {x}")));
        None
    } else {
        Some(v.value)
    }
}

fn positive_secs(problems: &mut Vec<Problem>, v: &Spanned<f64>, what: &str) -> u64 {
    if v.value.is_finite() && v.value > 0.0 && v.value <= 86_400.0 {
        (v.value * 1000.0).ceil() as u64
    } else {
        problems.push(problem_at(v, format!("{what} must be a number of seconds above 0 and at most 86400")));
        1
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() { path } else { base.join(path) }
}

#[allow(clippy::too_many_lines)]
fn validate(raw: Config, file: &Path, base: &Path) -> Result<Validated, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut runtime = {
        let mut c = mfp_runtime::RuntimeConfig::default();
        c.deployment_id = raw.runtime.deployment_id.as_bytes().to_vec();
        c.instance_id = raw.runtime.instance_id.as_bytes().to_vec();
        c
    };
    if let Some(d) = int_in(&mut problems, &raw.runtime.default_frame_depth, "runtime.default_frame_depth", 2, 32) {
        runtime.default_frame_depth = d as usize;
    }
    let q = &raw.quarantine;
    if let Some(t) = int_in(
        &mut problems,
        &q.validation_failure_threshold,
        "quarantine.validation_failure_threshold",
        3,
        i128::from(u32::MAX),
    ) {
        runtime.validation_failure_threshold = t as u32;
    }
    if let Some(r) = int_in(&mut problems, &q.max_message_rate, "quarantine.max_message_rate", 0, i128::from(u32::MAX))
    {
        runtime.max_message_rate = r as u32;
    }
    if let Some(s) = int_in(&mut problems, &q.max_payload_size, "quarantine.max_payload_size", 0, 1 << 30) {
        runtime.max_payload_size = s as usize;
    }
    if q.max_payload_size.value == 0 {
        // pymfp: 0 = unlimited; ours still bounds what one JSON line may carry.
        runtime.max_payload_size = 0;
    }
    if let Some(m) = int_in(
        &mut problems,
        &raw.limits.mailbox_capacity,
        "limits.mailbox_capacity",
        1,
        mfp_runtime::MAX_QUEUE_LIMIT as i128,
    ) {
        runtime.mailbox_capacity = m as usize;
    }
    if let Some(m) = int_in(&mut problems, &raw.limits.max_agents, "limits.max_agents", 1, 1_000_000) {
        runtime.max_agents = m as usize;
    }
    // Agents send through JSON-RPC and HTTP: a full mailbox is reported, not waited on forever.
    runtime.rate_limit_action = mfp_runtime::RateLimitAction::Reject;
    if runtime.deployment_id.len() > mfp_runtime::MAX_ID_INPUT_LEN
        || runtime.instance_id.len() > mfp_runtime::MAX_ID_INPUT_LEN
    {
        problems.push(Problem {
            line: 0,
            column: 0,
            message: format!(
                "runtime.deployment_id and instance_id are limited to {} bytes",
                mfp_runtime::MAX_ID_INPUT_LEN
            ),
        });
    }

    // Transport and recovery: pymfp's ranges.
    let _ = int_in(&mut problems, &raw.transport.port, "transport.port", 1, 65535);
    let link = link::validate(
        &mut problems,
        &raw.federation.link,
        &raw.federation.listener,
        &raw.federation.rotation,
        &raw.transport,
    );
    let mut recovery = mfp_federation::recovery::RecoveryLimits::default();
    recovery.max_attempts = int_in(&mut problems, &raw.recovery.max_attempts, "recovery.max_attempts", 1, 1_000_000)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(recovery.max_attempts);
    recovery.timeout = std::time::Duration::from_millis(positive_secs(
        &mut problems,
        &raw.recovery.timeout_seconds,
        "recovery.timeout_seconds",
    ));

    // Storage.
    let storage_path = (!raw.storage.path.is_empty()).then(|| resolve(base, &raw.storage.path));
    let key_file =
        (!raw.storage.master_key_file.value.is_empty()).then(|| resolve(base, &raw.storage.master_key_file.value));
    if storage_path.is_none() {
        warnings.push("storage.path is empty: the runtime's state is kept in memory only and lost at exit".into());
    } else {
        if raw.storage.encrypt_at_rest && key_file.is_none() && raw.storage.master_key_env.is_none() {
            problems.push(problem_at(
                &raw.storage.master_key_file,
                "storage.encrypt_at_rest is true but no storage.master_key_file (or master_key_env) is given",
            ));
        }
        if !raw.storage.encrypt_at_rest && key_file.is_none() && raw.storage.master_key_env.is_none() {
            warnings.push("storage: no master key configured; the database is encrypted anyway, with a key generated at first start next to it (<path>.key, mode 0600)".into());
        }
        if !raw.storage.wal_mode {
            warnings.push("storage.wal_mode: false is ignored; the database always uses WAL".into());
        }
    }
    if let Some(k) = &key_file
        && !k.is_file()
    {
        problems.push(problem_at(
            &raw.storage.master_key_file,
            format!("storage.master_key_file {} does not exist or is not a file", k.display()),
        ));
    }

    // Limits used by agents.
    let default_queue =
        int_in(&mut problems, &raw.limits.agent_queue_capacity, "limits.agent_queue_capacity", 1, 1 << 20).unwrap_or(1);
    let default_line =
        int_in(&mut problems, &raw.limits.max_line_bytes, "limits.max_line_bytes", 1024, 256 << 20).unwrap_or(1024);
    let delivery_timeout_ms =
        positive_secs(&mut problems, &raw.limits.delivery_timeout_seconds, "limits.delivery_timeout_seconds");
    let drain_timeout_ms =
        positive_secs(&mut problems, &raw.server.drain_timeout_seconds, "server.drain_timeout_seconds");
    // The runtime's handler for an agent returns only once the agent is done with the
    // message; past this, the runtime quarantines the agent.
    let handler_timeout_ms =
        positive_secs(&mut problems, &raw.limits.handler_timeout_seconds, "limits.handler_timeout_seconds");
    if handler_timeout_ms <= delivery_timeout_ms {
        problems.push(problem_at(
            &raw.limits.handler_timeout_seconds,
            "limits.handler_timeout_seconds must be above limits.delivery_timeout_seconds (an agent that is restarted must not be quarantined)",
        ));
    }
    runtime.agent_timeout = std::time::Duration::from_millis(handler_timeout_ms);

    // Agents.
    let mut agents = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    for entry in &raw.agents {
        if let Some(a) =
            validate_agent(entry, base, default_queue as usize, default_line as usize, &mut problems, &mut warnings)
        {
            if names.insert(a.name.clone(), ()).is_some() {
                problems.push(problem_at(&entry.name, format!("agent name {:?} is used twice", a.name)));
            } else {
                agents.push(a);
            }
        }
    }

    // Channels.
    let mut channels = Vec::new();
    for entry in &raw.channels {
        let list = &entry.agents.value;
        if list.len() != 2 {
            problems.push(problem_at(&entry.agents, format!("a channel names exactly two agents, not {}", list.len())));
            continue;
        }
        let mut ok = true;
        for n in list {
            if !names.contains_key(&n.value) {
                problems.push(problem_at(
                    n,
                    format!("channel names agent {:?}, which is not defined under agents:", n.value),
                ));
                ok = false;
            }
        }
        let depth = int_in(&mut problems, &entry.depth, "channel depth", 2, 32);
        if let (true, Some(depth), [a, b]) = (ok, depth, list.as_slice()) {
            channels.push(ChannelSpec { a: a.value.clone(), b: b.value.clone(), depth: depth as usize });
        }
    }

    // Peers.
    let mut peers = Vec::new();
    let mut peer_names: HashMap<String, mfp_core::RuntimeId> = HashMap::new();
    let mut peer_ids: HashMap<mfp_core::RuntimeId, ()> = HashMap::new();
    let own = mfp_core::RuntimeId::derive(raw.runtime.deployment_id.as_bytes(), raw.runtime.instance_id.as_bytes());
    for p in &raw.federation.peers {
        if let Some(peer) = validate_peer(p, &names, base, &mut problems) {
            let id = match &peer.kind {
                PeerKind::Native { id, .. } => *id,
                PeerKind::Pymfp { deployment_id, instance_id, .. } => {
                    mfp_core::RuntimeId::derive(deployment_id.as_bytes(), instance_id.as_bytes())
                }
            };
            if id == own {
                problems.push(problem_at(&p.runtime_id, "a peer cannot be this runtime itself"));
            } else if peer_ids.insert(id, ()).is_some() {
                problems.push(problem_at(&p.runtime_id, "this peer runtime is configured twice"));
            } else {
                peer_names.insert(p.runtime_id.value.clone(), id);
                peers.push(peer);
            }
        }
    }
    let busy_poll = match &raw.federation.busy_poll_seconds {
        None => std::time::Duration::ZERO,
        Some(v)
            if v.value.is_finite() && (0.0..=mfp_federation::net::MAX_BUSY_POLL.as_secs_f64()).contains(&v.value) =>
        {
            std::time::Duration::from_secs_f64(v.value)
        }
        Some(v) => {
            problems.push(problem_at(
                v,
                "federation.busy_poll_seconds must be between 0 (off) and 0.1: a link keeps a core busy that long after its last byte",
            ));
            std::time::Duration::ZERO
        }
    };
    let federation_listen = match &raw.federation.listen {
        None => None,
        Some(l) => match l.value.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(problem_at(l, "federation.listen must be ip:port (e.g. 0.0.0.0:9880, or 127.0.0.1:0)"));
                None
            }
        },
    };
    if federation_listen.is_none()
        && let Some(p) = raw.federation.peers.iter().find(|p| p.public_key.is_some() && p.endpoint.is_none())
    {
        problems.push(problem_at(
            &p.runtime_id,
            "this native peer has no endpoint and federation.listen is not set: no link could ever come up (give the peer an endpoint, or listen)",
        ));
    }
    if federation_listen.is_some() && raw.federation.peers.is_empty() {
        warnings.push("federation.listen is set but federation.peers is empty: nothing listens (a peer must be configured, with its pinned key, to be accepted)".into());
    }
    let native = raw.federation.peers.iter().find(|p| p.public_key.is_some());
    let identity_key = raw.federation.identity_key.as_ref().map(|k| resolve(base, &k.value));
    if let (Some(k), Some(path)) = (&raw.federation.identity_key, &identity_key)
        && !path.is_file()
    {
        problems.push(problem_at(
            k,
            format!(
                "federation.identity_key {} does not exist or is not a file (create it with mfp-server keygen --identity FILE)",
                path.display()
            ),
        ));
    }
    if let Some(n) = native
        && raw.federation.identity_key.is_none()
    {
        problems.push(problem_at(
            &n.runtime_id,
            "a native peer needs federation.identity_key (create one with mfp-server keygen --identity FILE)",
        ));
    }
    let mut fed_channels = Vec::new();
    for c in &raw.federation.channels {
        let mut ok = true;
        if !names.contains_key(&c.agent.value) {
            problems.push(problem_at(
                &c.agent,
                format!("federation channel names agent {:?}, which is not defined under agents:", c.agent.value),
            ));
            ok = false;
        }
        let peer = match peer_names.get(&c.peer.value) {
            Some(id)
                if raw
                    .federation
                    .peers
                    .iter()
                    .any(|p| p.runtime_id.value == c.peer.value && p.public_key.is_some()) =>
            {
                Some(*id)
            }
            Some(_) => {
                problems.push(problem_at(&c.peer, "federation.channels are for native peers; a pymfp peer's channels are listed under its own channels:"));
                None
            }
            None => {
                problems.push(problem_at(
                    &c.peer,
                    format!("peer {:?} is not a runtime_id under federation.peers", c.peer.value),
                ));
                None
            }
        };
        let remote = &c.remote_agent.value;
        if remote.is_empty() || remote.len() > 64 {
            problems.push(problem_at(&c.remote_agent, "remote_agent is the peer's agent name: 1 to 64 bytes"));
            ok = false;
        }
        let depth = int_in(&mut problems, &c.depth, "federation channel depth", 2, 32);
        if let (true, Some(peer), Some(depth)) = (ok, peer, depth) {
            fed_channels.push(FedChannelSpec {
                agent: c.agent.value.clone(),
                peer,
                peer_name: c.peer.value.clone(),
                remote_agent: remote.clone(),
                depth: depth as usize,
            });
        }
    }
    if !peers.is_empty() && (raw.runtime.deployment_id.is_empty() || raw.runtime.instance_id.is_empty()) {
        problems.push(Problem {
            line: 0,
            column: 0,
            message: "federation.peers needs runtime.deployment_id and runtime.instance_id".into(),
        });
    }

    // Logging.
    let log_format = match raw.logging.format.as_ref().map(|f| f.value.to_ascii_lowercase()) {
        None => LogFormat::Text,
        Some(f) if f == "text" => LogFormat::Text,
        Some(f) if f == "json" => LogFormat::Json,
        Some(_) => {
            if let Some(f) = &raw.logging.format {
                problems.push(problem_at(f, "logging.format must be text or json"));
            }
            LogFormat::Text
        }
    };
    let level = raw.logging.level.as_ref().or(raw.log_level.as_ref());
    let log_filter = match level {
        None => "info".to_string(),
        Some(l) => match level_filter(&l.value) {
            Some(f) => f,
            None => {
                problems.push(problem_at(l, "log level must be DEBUG, INFO, WARNING, ERROR (or TRACE)"));
                "info".into()
            }
        },
    };

    // Listeners.
    let admin_token =
        token_of(&raw.admin.token, &raw.admin.token_env, "admin.", &mut problems).unwrap_or(TokenSource::None);
    if admin_token != TokenSource::None && !raw.admin.enabled {
        warnings.push("admin.token is set but admin.enabled is false: the operator endpoints are not served".into());
    }
    if admin_token != TokenSource::None
        && raw.admin.enabled
        && !["127.0.0.1", "localhost", "::1", "[::1]"].contains(&raw.admin.host.value.as_str())
    {
        warnings.push(format!(
            "admin.host {} is not loopback and admin.token is set: the admin listener speaks plain HTTP, so the token \
             crosses the network in clear (keep it on loopback, or put a TLS proxy in front)",
            raw.admin.host.value
        ));
    }
    let admin_addr = if raw.admin.enabled {
        int_in(&mut problems, &raw.admin.port, "admin.port", 0, 65535)
            .map(|p| format!("{}:{p}", bracket(&raw.admin.host.value)))
    } else {
        None
    };
    let http_port = int_in(&mut problems, &raw.http.port, "http.port", 0, 65535).unwrap_or(0);
    let http_addr = format!("{}:{http_port}", bracket(&raw.http.host.value));
    let mcp_port = int_in(&mut problems, &raw.mcp.port, "mcp.port", 0, 65535).unwrap_or(0);
    let mcp_addr = format!("{}:{mcp_port}", bracket(&raw.mcp.host.value));
    let mcp_allowed_hosts = raw.mcp.allowed_hosts.as_ref().map(|h| h.value.clone()).unwrap_or_default();
    if let Some(h) = &raw.mcp.allowed_hosts
        && h.value.iter().any(|x| x.is_empty() || x.contains(['/', ' ']))
    {
        problems.push(problem_at(h, "mcp.allowed_hosts are host names or host:port, without scheme or path"));
    }
    let loopback = ["127.0.0.1", "localhost", "::1", "[::1]"].contains(&raw.mcp.host.value.as_str());
    if !loopback && mcp_allowed_hosts.is_empty() && agents.iter().any(|a| matches!(a.kind, AgentKind::Mcp(_))) {
        warnings.push(format!(
            "mcp.host is {:?} but mcp.allowed_hosts is empty: requests whose Host header is not a loopback name are refused (DNS-rebinding protection); list the names clients use",
            raw.mcp.host.value
        ));
    }
    // The runtime refuses larger payloads anyway; say so once, here.
    let runtime_max = runtime.max_payload_size;
    for a in &mut agents {
        if let AgentKind::Mcp(m) = &mut a.kind
            && runtime_max > 0
            && m.max_payload > runtime_max
        {
            m.max_payload = runtime_max;
        }
    }
    if let Err(e) = runtime.validate() {
        problems.push(Problem { line: 0, column: 0, message: e.to_string() });
    }

    if problems.is_empty() {
        Ok(Validated {
            file: file.to_path_buf(),
            runtime,
            agents,
            channels,
            peers,
            federation_listen,
            busy_poll,
            link,
            identity_key,
            fed_channels,
            storage_path,
            key_file,
            log_format,
            log_filter,
            admin_addr,
            admin_token,
            http_addr,
            delivery_timeout_ms,
            drain_timeout_ms,
            master_key_env: raw.storage.master_key_env.map(|v| v.value),
            exit_when_agents_finish: raw.server.exit_when_agents_finish,
            http_max_body: usize::try_from(raw.http.max_body_bytes.min(256 << 20)).unwrap_or(256 << 20),
            mcp_addr,
            mcp_allowed_hosts,
            transport: raw.transport,
            recovery,
            warnings,
        })
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(problems)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

/// pymfp level names (and tracing's) to a tracing filter.
pub(crate) fn level_filter(level: &str) -> Option<String> {
    Some(
        match level.to_ascii_uppercase().as_str() {
            "TRACE" => "trace",
            "DEBUG" => "debug",
            "INFO" => "info",
            "WARNING" | "WARN" => "warn",
            "ERROR" | "CRITICAL" => "error",
            _ => return None,
        }
        .to_string(),
    )
}

#[allow(clippy::too_many_lines)]
fn validate_agent(
    e: &AgentEntry,
    base: &Path,
    default_queue: usize,
    default_line: usize,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> Option<AgentSpec> {
    let name = e.name.value.clone();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        problems.push(problem_at(&e.name, "agent name must be 1 to 128 characters without control characters"));
        return None;
    }
    let kind = e.kind.value.as_str();
    // Which optional keys each kind takes.
    let present: Vec<(&str, Option<(u64, u64)>)> = vec![
        ("builtin", e.builtin.as_ref().map(loc)),
        ("command", e.command.as_ref().map(loc)),
        ("cwd", e.cwd.as_ref().map(loc)),
        ("env", e.env.as_ref().map(loc)),
        ("restart", e.restart.as_ref().map(loc)),
        ("max_line_bytes", e.max_line_bytes.as_ref().map(loc)),
        ("url", e.url.as_ref().map(loc)),
        ("timeout_seconds", e.timeout_seconds.as_ref().map(loc)),
        ("retries", e.retries.as_ref().map(loc)),
        ("token", e.token.as_ref().map(loc)),
        ("token_env", e.token_env.as_ref().map(loc)),
        ("queue_capacity", e.queue_capacity.as_ref().map(loc)),
        ("max_receive_messages", e.max_receive_messages.as_ref().map(loc)),
        ("max_wait_seconds", e.max_wait_seconds.as_ref().map(loc)),
        ("max_payload_bytes", e.max_payload_bytes.as_ref().map(loc)),
    ];
    let allowed: &[&str] = match kind {
        "builtin" => &["builtin"],
        "subprocess" => &["command", "cwd", "env", "restart", "max_line_bytes", "queue_capacity"],
        "webhook" => &["url", "timeout_seconds", "retries", "token", "token_env", "queue_capacity"],
        "mcp" => {
            &["token", "token_env", "queue_capacity", "max_receive_messages", "max_wait_seconds", "max_payload_bytes"]
        }
        "callback" | "llm_api" => &[],
        other => {
            problems.push(problem_at(
                &e.kind,
                format!(
                    "unknown agent type {other:?}: expected builtin, subprocess, webhook, mcp (or pymfp's callback)"
                ),
            ));
            return None;
        }
    };
    let before = problems.len();
    for (key, at) in &present {
        if let Some((line, column)) = at
            && !allowed.contains(key)
        {
            problems.push(Problem {
                line: *line,
                column: *column,
                message: format!("key {key:?} does not apply to an agent of type {kind:?}"),
            });
        }
    }
    if problems.len() > before {
        return None;
    }
    let queue_capacity = match &e.queue_capacity {
        Some(q) => int_in(problems, q, "queue_capacity", 1, 1 << 20)? as usize,
        None => default_queue,
    };
    let agent_kind = match kind {
        "builtin" => match e.builtin.as_ref().map(|b| b.value.as_str()) {
            Some("echo") => AgentKind::Echo,
            Some("log") => AgentKind::Log,
            Some(_) | None => {
                let at = e.builtin.as_ref().map_or_else(|| loc(&e.kind), loc);
                problems.push(Problem {
                    line: at.0,
                    column: at.1,
                    message: "a builtin agent needs builtin: echo or builtin: log".into(),
                });
                return None;
            }
        },
        "callback" => AgentKind::Log,
        "llm_api" => {
            warnings.push(format!(
                "agent {name:?}: type llm_api is not implemented (pymfp only logs it too); it runs as a log agent"
            ));
            AgentKind::Log
        }
        "subprocess" => {
            let Some(cmd) = &e.command else {
                warnings.push(format!(
                    "agent {name:?}: subprocess without command (pymfp's placeholder); it runs as a log agent"
                ));
                return Some(AgentSpec { name, kind: AgentKind::Log, queue_capacity });
            };
            let Some((program, args)) = cmd.value.split_first() else {
                problems.push(problem_at(cmd, "command must name a program"));
                return None;
            };
            let restart = match e.restart.as_ref().map(|r| r.value.as_str()) {
                None | Some("on-failure") => RestartPolicy::OnFailure,
                Some("always") => RestartPolicy::Always,
                Some("never") => RestartPolicy::Never,
                Some(_) => {
                    if let Some(r) = &e.restart {
                        problems.push(problem_at(r, "restart must be on-failure, always or never"));
                    }
                    return None;
                }
            };
            let max_line_bytes = match &e.max_line_bytes {
                Some(m) => int_in(problems, m, "max_line_bytes", 1024, 256 << 20)? as usize,
                None => default_line,
            };
            AgentKind::Subprocess(SubprocessSpec {
                program: program.clone(),
                args: args.to_vec(),
                cwd: e.cwd.as_ref().map_or_else(|| base.to_path_buf(), |c| resolve(base, &c.value)),
                env: e.env.as_ref().map(|m| m.value.clone()).unwrap_or_default(),
                restart,
                max_line_bytes,
            })
        }
        "webhook" => {
            let Some(url) = &e.url else {
                warnings
                    .push(format!("agent {name:?}: webhook without url (pymfp's placeholder); it runs as a log agent"));
                return Some(AgentSpec { name, kind: AgentKind::Log, queue_capacity });
            };
            if crate::webhook::parse_url(&url.value).is_none() {
                problems.push(problem_at(
                    url,
                    "url must be http://host[:port]/path (https is not supported yet: put a TLS proxy in front)",
                ));
                return None;
            }
            let timeout_ms =
                e.timeout_seconds.as_ref().map_or(10_000, |t| positive_secs(problems, t, "timeout_seconds"));
            let retries = match &e.retries {
                Some(r) => int_in(problems, r, "retries", 0, 20)?,
                None => 3,
            };
            let token = token_source(e, problems)?;
            AgentKind::Webhook(WebhookSpec { url: url.value.clone(), timeout_ms, retries, token })
        }
        "mcp" => {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                problems.push(problem_at(
                    &e.name,
                    "an mcp agent's name is part of its URL (/mcp/<name>): use letters, digits, '.', '_' and '-' only",
                ));
                return None;
            }
            let token = token_source(e, problems)?;
            if token == TokenSource::None {
                warnings.push(format!(
                    "agent {name:?}: mcp agent without token or token_env: reachable over stdio only (mfp-server mcp), not over HTTP"
                ));
            }
            let max_receive = match &e.max_receive_messages {
                Some(m) => int_in(problems, m, "max_receive_messages", 1, 1000)?,
                None => MCP_DEFAULT_MAX_RECEIVE,
            };
            let max_wait_ms = match &e.max_wait_seconds {
                Some(w) if w.value.is_finite() && w.value >= 0.0 && w.value <= 300.0 => {
                    (w.value * 1000.0).ceil() as u64
                }
                Some(w) => {
                    problems.push(problem_at(w, "max_wait_seconds must be a number of seconds from 0 to 300"));
                    return None;
                }
                None => (MCP_DEFAULT_MAX_WAIT_SECS * 1000.0) as u64,
            };
            let max_payload = match &e.max_payload_bytes {
                Some(m) => int_in(problems, m, "max_payload_bytes", 1, 16 << 20)?,
                None => MCP_DEFAULT_MAX_PAYLOAD,
            };
            AgentKind::Mcp(McpSpec {
                token,
                max_receive: max_receive as usize,
                max_wait_ms,
                max_payload: max_payload as usize,
            })
        }
        _ => return None,
    };
    Some(AgentSpec { name, kind: agent_kind, queue_capacity })
}

/// `token` / `token_env` of a webhook or mcp agent.
fn token_source(e: &AgentEntry, problems: &mut Vec<Problem>) -> Option<TokenSource> {
    token_of(&e.token, &e.token_env, "", problems)
}

/// A bearer token given in the file (`token`, at least 16 characters) or by the name of an
/// environment variable (`token_env`), not both; `prefix` names the section in messages.
fn token_of(
    token: &Option<Spanned<String>>,
    token_env: &Option<Spanned<String>>,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<TokenSource> {
    match (token, token_env) {
        (Some(t), None) if t.value.len() >= 16 => Some(TokenSource::Literal(t.value.clone())),
        (Some(t), None) => {
            problems.push(problem_at(t, format!("{prefix}token must be at least 16 characters")));
            None
        }
        (None, Some(v)) if !v.value.is_empty() => Some(TokenSource::Env(v.value.clone())),
        (None, Some(v)) => {
            problems.push(problem_at(v, format!("{prefix}token_env must name an environment variable")));
            None
        }
        (Some(t), Some(_)) => {
            problems.push(problem_at(t, format!("give {prefix}token or {prefix}token_env, not both")));
            None
        }
        (None, None) => Some(TokenSource::None),
    }
}

fn loc<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line(), s.referenced.column())
}

fn validate_peer(
    p: &PeerEntry,
    agents: &HashMap<String, ()>,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<PeerSpec> {
    let endpoint = match &p.endpoint {
        Some(e) => {
            let ok = e
                .value
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                problems.push(problem_at(e, "endpoint must be host:port"));
                return None;
            }
            Some(e.value.clone())
        }
        None if p.public_key.is_none() => {
            problems.push(problem_at(&p.runtime_id, "a pymfp peer needs endpoint: host:port"));
            return None;
        }
        None => None,
    };
    if let Some(key) = &p.public_key {
        let digits = key.value.trim();
        let digits = digits.strip_prefix("mfp-x25519:").unwrap_or(digits);
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(digits, &mut bytes).is_err() {
            problems.push(problem_at(key, "public_key must be mfp-x25519:<64 hex digits> (what mfp-server identity prints) or the 64 hex digits alone"));
            return None;
        }
        if let Some(b) = &p.bootstrap {
            problems.push(problem_at(b, "bootstrap is for pymfp peers; a peer with public_key is native"));
            return None;
        }
        if let Some(k) = p.ceremonial_key.as_ref().or(p.peer_public_key.as_ref()) {
            problems.push(problem_at(
                k,
                "ceremonial_key and peer_public_key are for pymfp peers; a peer with public_key is native",
            ));
            return None;
        }
        if let Some(c) = p.channels.as_ref().and_then(|c| c.first()) {
            problems.push(problem_at(
                &c.id,
                "a native peer's channels are agreed on the wire: list them under federation.channels",
            ));
            return None;
        }
        let id = match native_runtime_id(&p.runtime_id.value) {
            Some(id) => id,
            None => {
                problems.push(problem_at(
                    &p.runtime_id,
                    "a native peer's runtime_id is \"deployment_id/instance_id\" (its runtime section) or its 64-hex-digit runtime id",
                ));
                return None;
            }
        };
        let max_in_flight_messages = match &p.max_in_flight_messages {
            Some(m) => int_in(problems, m, "max_in_flight_messages", 1, 1 << 20)?,
            None => DEFAULT_IN_FLIGHT_MESSAGES,
        };
        let max_in_flight_bytes = match &p.max_in_flight_bytes {
            Some(m) => int_in(problems, m, "max_in_flight_bytes", 65_536, 1 << 30)?,
            None => DEFAULT_IN_FLIGHT_BYTES,
        };
        let accept = match &p.accept {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for n in &list.value {
                    if !agents.contains_key(&n.value) {
                        problems.push(problem_at(
                            n,
                            format!("accept names agent {:?}, which is not defined under agents:", n.value),
                        ));
                        return None;
                    }
                    out.push(n.value.clone());
                }
                Some(out)
            }
        };
        return Some(PeerSpec {
            endpoint,
            kind: PeerKind::Native {
                runtime_id: p.runtime_id.value.clone(),
                id,
                public_key: bytes,
                max_in_flight_messages: max_in_flight_messages as usize,
                max_in_flight_bytes: max_in_flight_bytes as usize,
                accept,
            },
        });
    }
    for (v, what) in [
        (p.max_in_flight_messages.as_ref().map(loc), "max_in_flight_messages"),
        (p.max_in_flight_bytes.as_ref().map(loc), "max_in_flight_bytes"),
        (p.accept.as_ref().map(loc), "accept"),
    ] {
        if let Some((line, column)) = v {
            problems.push(Problem {
                line,
                column,
                message: format!("{what} is for native peers (with public_key); a pymfp peer has none"),
            });
            return None;
        }
    }
    let Some((deployment_id, instance_id)) =
        p.runtime_id.value.split_once('/').filter(|(d, i)| !d.is_empty() && !i.is_empty())
    else {
        problems.push(problem_at(&p.runtime_id, "a pymfp peer's runtime_id is \"deployment_id/instance_id\""));
        return None;
    };
    let bootstrap = p.bootstrap.as_ref().map_or("deterministic", |b| b.value.as_str());
    if bootstrap != "deterministic" && bootstrap != "ceremonial" {
        if let Some(b) = &p.bootstrap {
            problems.push(problem_at(b, "bootstrap must be deterministic or ceremonial"));
        }
        return None;
    }
    let mut channels = Vec::new();
    for c in p.channels.iter().flatten() {
        let Ok(id) = c.id.value.trim().parse::<mfp_core::ChannelId>() else {
            problems.push(problem_at(&c.id, "a pymfp channel's id is 32 hex digits, the same on both sides"));
            return None;
        };
        if !agents.contains_key(&c.agent.value) {
            problems.push(problem_at(
                &c.agent,
                format!("channel names agent {:?}, which is not defined under agents:", c.agent.value),
            ));
            return None;
        }
        let Ok(remote_agent) = c.remote_agent.value.trim().parse::<mfp_core::AgentId>() else {
            problems.push(problem_at(&c.remote_agent, "remote_agent is the pymfp agent's id: 64 hex digits"));
            return None;
        };
        let depth = int_in(problems, &c.depth, "channel depth", 2, 32)?;
        if channels.iter().any(|x: &CompatChannelSpec| x.id == id) {
            problems.push(problem_at(&c.id, "this channel id is listed twice"));
            return None;
        }
        channels.push(CompatChannelSpec { id, agent: c.agent.value.clone(), remote_agent, depth: depth as usize });
    }
    let ceremonial = match (&p.ceremonial_key, &p.peer_public_key) {
        (None, None) => None,
        (Some(k), Some(pk)) => {
            if bootstrap != "ceremonial" {
                problems.push(problem_at(k, "ceremonial_key and peer_public_key need bootstrap: ceremonial"));
                return None;
            }
            let path = resolve(base, &k.value);
            if !path.is_file() {
                problems.push(problem_at(
                    k,
                    format!(
                        "ceremonial_key {} does not exist or is not a file (create it with mfp-server keygen --identity FILE)",
                        path.display()
                    ),
                ));
                return None;
            }
            let text = pk.value.trim();
            let hex_part = text.strip_prefix("mfp-x25519:").unwrap_or(text);
            let Some(bytes) = hex::decode(hex_part).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
                problems.push(problem_at(pk, "peer_public_key is 64 hex digits (optionally after mfp-x25519:)"));
                return None;
            };
            Some((path, bytes))
        }
        (Some(k), None) | (None, Some(k)) => {
            problems.push(problem_at(k, "a ceremonial bootstrap needs both ceremonial_key and peer_public_key"));
            return None;
        }
    };
    Some(PeerSpec {
        endpoint,
        kind: PeerKind::Pymfp {
            deployment_id: deployment_id.into(),
            instance_id: instance_id.into(),
            bootstrap: bootstrap.into(),
            channels,
            ceremonial,
        },
    })
}

/// A native peer's runtime id: `deployment/instance` (derived as the peer derives its own)
/// or 64 hex digits.
fn native_runtime_id(text: &str) -> Option<mfp_core::RuntimeId> {
    if let Some((d, i)) = text.split_once('/').filter(|(d, i)| !d.is_empty() && !i.is_empty()) {
        return Some(mfp_core::RuntimeId::derive(d.as_bytes(), i.as_bytes()));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(mfp_core::RuntimeId::from_bytes(bytes))
}

/// Names used more than once in a list (for channel pair counting).
pub(crate) fn pair_key(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Validated, ConfigError> {
        parse(text, Path::new("test.yaml"))
    }

    fn errors(text: &str) -> String {
        match p(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_pymfp_defaults() {
        let v = p("").unwrap();
        assert_eq!(v.runtime.validation_failure_threshold, 3);
        assert_eq!(v.runtime.max_message_rate, 0);
        assert_eq!(v.runtime.default_frame_depth, 4);
        assert!(v.storage_path.is_none());
        assert_eq!(v.admin_addr.as_deref(), Some("127.0.0.1:9877"));
    }

    #[test]
    fn recovery_limits_reach_the_federation_config() {
        let d = p("").unwrap().recovery;
        assert_eq!((d.max_attempts, d.timeout), (3, std::time::Duration::from_secs(30)));
        let v = p("recovery:\n  max_attempts: 7\n  timeout_seconds: 2.5\n").unwrap().recovery;
        assert_eq!((v.max_attempts, v.timeout), (7, std::time::Duration::from_millis(2500)));
        assert!(errors("recovery:\n  max_attempts: 0\n").contains("recovery.max_attempts"));
        assert!(errors("recovery:\n  timeout_seconds: -1\n").contains("recovery.timeout_seconds"));
    }

    #[test]
    fn busy_poll_reaches_the_configuration_within_its_bounds() {
        assert_eq!(p("").unwrap().busy_poll, std::time::Duration::ZERO);
        let v = p("federation:\n  busy_poll_seconds: 0.0005\n").unwrap();
        assert_eq!(v.busy_poll, std::time::Duration::from_micros(500));
        let e = errors("federation:\n  busy_poll_seconds: 0.5\n");
        assert!(e.starts_with("test.yaml:2:") && e.contains("federation.busy_poll_seconds"), "{e}");
        assert!(errors("federation:\n  busy_poll_seconds: -1\n").contains("between 0 (off) and 0.1"));
    }

    #[test]
    fn native_link_timers_and_listener_limits_reach_the_transport() {
        use mfp_federation::net::NetConfig;
        use std::time::Duration;
        let defaults = NetConfig::default();
        let mut net = NetConfig::default();
        p("").unwrap().link.apply(&mut net);
        assert_eq!(format!("{net:?}"), format!("{defaults:?}"), "nothing set: the transport's defaults");

        let v = p("federation:\n  link:\n    handshake_timeout_seconds: 2\n    read_timeout_seconds: 3.5\n    \
                   write_timeout_seconds: 4\n    keepalive_seconds: 1\n    idle_timeout_seconds: 2.5\n    \
                   dial_backoff_initial_seconds: 0.25\n    dial_backoff_max_seconds: 5\n  listener:\n    \
                   max_connections: 8\n    max_pending_handshakes: 4\n    handshakes_per_second: 20\n    \
                   handshakes_per_second_per_source: 2\n")
        .unwrap();
        let mut net = NetConfig::default();
        v.link.apply(&mut net);
        assert_eq!(
            (net.handshake_timeout, net.read_timeout, net.write_timeout),
            (Duration::from_secs(2), Duration::from_millis(3500), Duration::from_secs(4))
        );
        assert_eq!(
            (net.session.keepalive, net.session.idle_timeout),
            (Duration::from_secs(1), Duration::from_millis(2500))
        );
        assert_eq!(
            (net.dial_backoff_initial, net.dial_backoff_max),
            (Duration::from_millis(250), Duration::from_secs(5))
        );
        assert_eq!((net.max_connections, net.max_pending_handshakes), (8, 4));
        assert_eq!((net.handshakes_per_second, net.handshakes_per_second_per_source), (20, 2));
        net.validate().unwrap();
    }

    #[test]
    fn bad_link_settings_are_refused_where_they_are_written() {
        // The transport's own rule: the idle timeout must exceed the keepalive.
        let e = errors("federation:\n  link:\n    keepalive_seconds: 30\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("idle_timeout must exceed"), "{e}");
        let e = errors("federation:\n  link:\n    dial_backoff_initial_seconds: 60\n");
        assert!(e.contains("federation.link:") && e.contains("dial_backoff_initial"), "{e}");
        let e = errors("federation:\n  link:\n    read_timeout_seconds: 0\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("federation.link.read_timeout_seconds"), "{e}");
        let e = errors("federation:\n  link:\n    write_timeout_seconds: .nan\n");
        assert!(e.contains("federation.link.write_timeout_seconds"), "{e}");
        let e = errors("federation:\n  listener:\n    max_connections: 0\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("federation.listener.max_connections"), "{e}");
        let e = errors("federation:\n  listener:\n    handshakes_per_second: 5000000000\n");
        assert!(e.contains("federation.listener.handshakes_per_second must be between 1 and 1000000"), "{e}");
        let e = errors("federation:\n  link:\n    idle_seconds: 3\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("idle_seconds"), "{e}");
    }

    #[test]
    fn rotation_triggers_reach_the_federation() {
        use mfp_federation::federation::FederationConfig;
        use std::time::Duration;
        let fresh = || FederationConfig::new(mfp_federation::net::NetConfig::default(), Vec::new());
        let mut f = fresh();
        p("").unwrap().link.apply_federation(&mut f);
        assert_eq!((f.rotate_after_messages, f.rotate_after), (1_000_000, Duration::from_secs(86_400)));
        let mut f = fresh();
        p("federation:\n  rotation:\n    after_messages: 5000\n    after_seconds: 3600\n")
            .unwrap()
            .link
            .apply_federation(&mut f);
        assert_eq!((f.rotate_after_messages, f.rotate_after), (5_000, Duration::from_secs(3_600)));
        let mut f = fresh();
        p("federation:\n  rotation:\n    after_messages: 0\n    after_seconds: 0\n")
            .unwrap()
            .link
            .apply_federation(&mut f);
        assert_eq!((f.rotate_after_messages, f.rotate_after), (0, Duration::ZERO), "0 turns a trigger off");
        let e = errors("federation:\n  rotation:\n    after_messages: 10\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("at least 1000"), "{e}");
        let e = errors("federation:\n  rotation:\n    after_seconds: 5\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("federation.rotation.after_seconds"), "{e}");
        assert!(errors("federation:\n  rotation:\n    after_seconds: -1\n").contains("after_seconds"));
    }

    #[test]
    fn the_operator_token_is_checked_like_an_agent_token() {
        assert_eq!(p("").unwrap().admin_token, TokenSource::None);
        let v = p("admin:\n  token: \"0123456789abcdef\"\n").unwrap();
        assert_eq!(v.admin_token, TokenSource::Literal("0123456789abcdef".into()));
        assert_eq!(p("admin:\n  token_env: MFP_ADMIN\n").unwrap().admin_token, TokenSource::Env("MFP_ADMIN".into()));
        let e = errors("admin:\n  token: short\n");
        assert!(e.starts_with("test.yaml:2:") && e.contains("admin.token must be at least 16 characters"), "{e}");
        let e = errors("admin:\n  token: \"0123456789abcdef\"\n  token_env: X\n");
        assert!(e.contains("give admin.token or admin.token_env, not both"), "{e}");
        let v = p("admin:\n  enabled: false\n  token: \"0123456789abcdef\"\n").unwrap();
        assert!(v.warnings.iter().any(|w| w.contains("admin.enabled is false")), "{:?}", v.warnings);
        let v = p("admin:\n  host: 0.0.0.0\n  token: \"0123456789abcdef\"\n").unwrap();
        assert!(v.warnings.iter().any(|w| w.contains("in clear")), "{:?}", v.warnings);
        let v = p("admin:\n  token: \"0123456789abcdef\"\n").unwrap();
        assert!(!v.warnings.iter().any(|w| w.contains("in clear")), "loopback: {:?}", v.warnings);
    }

    #[test]
    fn pymfp_transport_timeouts_reach_the_pymfp_peers_transport() {
        use mfp_federation::compat_net::CompatNetConfig;
        use std::time::Duration;
        let mut c = CompatNetConfig::default();
        p("").unwrap().link.apply_compat(&mut c);
        // pymfp's defaults: 30 s each; renewed at 20 s, before a pymfp listener drops it.
        assert_eq!(
            (c.connect_timeout, c.read_timeout, c.write_timeout),
            (Duration::from_secs(30), Duration::from_secs(30), Duration::from_secs(30))
        );
        assert_eq!(c.idle_renew, Duration::from_secs(20));
        let v = p("transport:\n  connect_timeout: 2\n  read_timeout: 6\n  write_timeout: 7.5\n").unwrap();
        let mut c = CompatNetConfig::default();
        v.link.apply_compat(&mut c);
        assert_eq!(
            (c.connect_timeout, c.read_timeout, c.write_timeout),
            (Duration::from_secs(2), Duration::from_secs(6), Duration::from_millis(7500))
        );
        assert_eq!(c.idle_renew, Duration::from_secs(4), "two thirds of a read timeout below 30 s");
        let e = errors("transport:\n  read_timeout: -3\n");
        assert!(e.starts_with("test.yaml:2:") && e.contains("transport.read_timeout"), "{e}");
    }

    #[test]
    fn handler_timeout_sets_the_runtime_agent_timeout() {
        assert_eq!(p("").unwrap().runtime.agent_timeout, std::time::Duration::from_secs(3600));
        let v = p("limits:\n  handler_timeout_seconds: 120\n").unwrap();
        assert_eq!(v.runtime.agent_timeout, std::time::Duration::from_secs(120));
        let e = errors("limits:\n  delivery_timeout_seconds: 30\n  handler_timeout_seconds: 20\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("above limits.delivery_timeout_seconds"), "{e}");
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let e = errors("runtime:\n  deployment_id: x\n  instanse_id: y\n");
        assert!(e.starts_with("test.yaml:3:"), "{e}");
        assert!(e.contains("instanse_id"), "{e}");
    }

    #[test]
    fn duplicate_key_refused() {
        let e = errors("log_level: INFO\nlog_level: DEBUG\n");
        assert!(e.starts_with("test.yaml:2:"), "{e}");
    }

    #[test]
    fn wrong_type_has_location() {
        let e = errors("runtime:\n  default_frame_depth: deep\n");
        assert!(e.starts_with("test.yaml:2:"), "{e}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let e = errors(
            "agents:\n  - name: a\n    type: builtin\n    builtin: echo\nchannels:\n  - agents: [a, nobody]\n  - agents: [ghost, a]\n    depth: 1\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("test.yaml:6:") && lines[0].contains("nobody"), "{e}");
        assert!(lines[1].starts_with("test.yaml:7:") && lines[1].contains("ghost"), "{e}");
        assert!(lines[2].starts_with("test.yaml:8:") && lines[2].contains("depth"), "{e}");
    }

    #[test]
    fn key_of_another_kind_is_refused() {
        let e = errors("agents:\n  - name: a\n    type: builtin\n    builtin: echo\n    command: [x]\n");
        assert!(e.starts_with("test.yaml:5:") && e.contains("command"), "{e}");
    }

    #[test]
    fn subprocess_agent_parses() {
        let v = p("agents:\n  - name: a\n    type: subprocess\n    command: [python3, a.py]\n    restart: always\n")
            .unwrap();
        let AgentKind::Subprocess(s) = &v.agents[0].kind else { panic!("not a subprocess") };
        assert_eq!(s.program, "python3");
        assert_eq!(s.args, ["a.py"]);
        assert_eq!(s.restart, RestartPolicy::Always);
    }

    #[test]
    fn bare_file_name_resolves_against_the_current_directory() {
        let text = "storage:\n  path: s.db\nagents:\n  - name: a\n    type: subprocess\n    command: [x]\n";
        let v = parse(text, Path::new("c.yaml")).unwrap();
        let AgentKind::Subprocess(s) = &v.agents[0].kind else { panic!("not a subprocess") };
        assert_eq!(s.cwd, Path::new("."));
        assert_eq!(v.storage_path.as_deref(), Some(Path::new("./s.db")));
        let v = parse(text, Path::new("dir/c.yaml")).unwrap();
        let AgentKind::Subprocess(s) = &v.agents[0].kind else { panic!("not a subprocess") };
        assert_eq!(s.cwd, Path::new("dir"));
    }

    #[test]
    fn federation_listen_without_peers_warns() {
        let v = p("federation:\n  listen: \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(v.federation_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!(v.warnings.iter().any(|w| w.contains("nothing listens")), "{:?}", v.warnings);
        assert!(!p("").unwrap().warnings.iter().any(|w| w.contains("nothing listens")));
    }

    #[test]
    fn a_pymfp_peer_takes_ceremonial_keys() {
        let dir = std::env::temp_dir().join(format!("mfp-server-ceremonial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("x25519.key");
        std::fs::write(&key, "placeholder").unwrap();
        let peer = |extra: &str, boot: &str| {
            format!(
                "runtime:\n  deployment_id: d\n  instance_id: i\nfederation:\n  peers:\n    - runtime_id: prod/b\n      endpoint: h:1\n      bootstrap: {boot}\n{extra}"
            )
        };
        let pk = "mfp-x25519:".to_string() + &"ab".repeat(32);
        let both = format!("      ceremonial_key: {}\n      peer_public_key: \"{pk}\"\n", key.display());
        let v = p(&peer(&both, "ceremonial")).unwrap();
        assert!(
            matches!(&v.peers[0].kind, PeerKind::Pymfp { ceremonial: Some((path, bytes)), .. } if *path == key && *bytes == [0xab; 32])
        );
        // pymfp's own YAML: ceremonial without keys still loads (the server refuses to start it).
        assert!(matches!(&p(&peer("", "ceremonial")).unwrap().peers[0].kind, PeerKind::Pymfp { ceremonial: None, .. }));
        assert!(errors(&peer(&both, "deterministic")).contains("need bootstrap: ceremonial"));
        let only_key = format!("      ceremonial_key: {}\n", key.display());
        assert!(errors(&peer(&only_key, "ceremonial")).contains("needs both ceremonial_key and peer_public_key"));
        let bad = format!("      ceremonial_key: {}\n      peer_public_key: \"zz\"\n", key.display());
        assert!(errors(&peer(&bad, "ceremonial")).contains("64 hex digits"));
        let missing = "      ceremonial_key: /nonexistent/key\n      peer_public_key: \"00\"\n";
        assert!(errors(&peer(missing, "ceremonial")).contains("does not exist"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn peers_pymfp_and_native() {
        let v = p("runtime:\n  deployment_id: d\n  instance_id: i\nfederation:\n  peers:\n    - runtime_id: prod/b\n      endpoint: 10.0.0.2:9876\n").unwrap();
        assert!(
            matches!(&v.peers[0].kind, PeerKind::Pymfp { deployment_id, instance_id, bootstrap, channels, .. } if deployment_id == "prod" && instance_id == "b" && bootstrap == "deterministic" && channels.is_empty())
        );
        let key = std::env::temp_dir().join(format!("mfp-cfg-idkey-{}", std::process::id()));
        std::fs::write(&key, "x").unwrap();
        let text = format!(
            "runtime:\n  deployment_id: d\n  instance_id: i\nfederation:\n  identity_key: {}\n  peers:\n    - runtime_id: prod/other\n      endpoint: h:1\n      public_key: \"mfp-x25519:0000000000000000000000000000000000000000000000000000000000000001\"\n",
            key.display()
        );
        let v = p(&text).unwrap();
        std::fs::remove_file(&key).ok();
        assert!(
            matches!(&v.peers[0].kind, PeerKind::Native { public_key, id, accept: None, max_in_flight_messages: 1024, .. } if public_key[31] == 1 && *id == mfp_core::RuntimeId::derive(b"prod", b"other"))
        );
        let e = errors("federation:\n  peers:\n    - runtime_id: prod/b\n      endpoint: nohost\n");
        assert!(e.contains("test.yaml:4:") && e.contains("host:port"), "{e}");
    }

    fn fixture(name: &str) -> Result<Validated, ConfigError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        load(&path)
    }

    /// pymfp's own example configurations load and mean what they mean to pymfp.
    #[test]
    fn pymfp_quickstart_means_the_same() {
        let v = fixture("pymfp-quickstart.yaml").unwrap();
        assert_eq!(v.runtime.deployment_id, b"prod-cluster-01");
        assert_eq!(v.runtime.instance_id, b"node-alpha");
        assert_eq!(v.runtime.default_frame_depth, 4);
        // pymfp's YAML defaults, not its dataclass defaults.
        assert_eq!(v.runtime.validation_failure_threshold, 3);
        assert_eq!(v.runtime.max_message_rate, 0);
        assert_eq!(v.runtime.max_payload_size, 0);
        assert_eq!(v.storage_path.as_deref(), Some(Path::new("/var/lib/mfp/mfp.db")));
        assert!(v.key_file.is_none());
        let names: Vec<_> = v.agents.iter().map(|a| (a.name.as_str(), &a.kind)).collect();
        assert_eq!(names, [("alice", &AgentKind::Log), ("bob", &AgentKind::Log)]);
        assert_eq!(v.channels, [ChannelSpec { a: "alice".into(), b: "bob".into(), depth: 4 }]);
        assert!(v.peers.is_empty());
        assert_eq!(v.log_filter, "info");
        assert_eq!(v.transport.port.value, 9876);
    }

    #[test]
    fn pymfp_reference_means_the_same() {
        let v = fixture("pymfp-reference.yaml").unwrap();
        assert_eq!(v.runtime.deployment_id, b"my-deployment");
        assert_eq!(v.runtime.validation_failure_threshold, 3);
        assert_eq!(v.runtime.max_message_rate, 100);
        assert_eq!(v.runtime.max_payload_size, 1_048_576);
        assert_eq!(v.storage_path.as_deref(), Some(Path::new("/var/lib/mfp/state.db")));
        assert_eq!(v.transport.host, "0.0.0.0");
        assert!((v.transport.read_timeout.value - 30.0).abs() < f64::EPSILON);
        assert_eq!(v.agents.len(), 2);
        assert_eq!(v.peers.len(), 2);
        assert_eq!(
            v.peers[1],
            PeerSpec {
                endpoint: Some("partner.example.com:9876".into()),
                kind: PeerKind::Pymfp {
                    deployment_id: "partner-org".into(),
                    instance_id: "gateway".into(),
                    bootstrap: "ceremonial".into(),
                    channels: Vec::new(),
                    ceremonial: None,
                }
            }
        );
    }

    #[test]
    fn pymfp_federation_nodes_load() {
        for (file, me, peer) in [("pymfp-node-a.yaml", "node-a", "node-b"), ("pymfp-node-b.yaml", "node-b", "node-a")] {
            let v = fixture(file).unwrap();
            assert_eq!(v.runtime.instance_id, me.as_bytes());
            assert!(
                matches!(&v.peers[0].kind, PeerKind::Pymfp { deployment_id, instance_id, bootstrap, .. } if deployment_id == "prod" && instance_id == peer && bootstrap == "deterministic")
            );
        }
    }

    /// pymfp skips a channel naming an undefined agent; we refuse the file, with locations.
    #[test]
    fn pymfp_channels_snippet_alone_is_refused() {
        let e = fixture("pymfp-channels-snippet.yaml").unwrap_err().to_string();
        assert!(e.contains("pymfp-channels-snippet.yaml:2:") && e.contains("\"alice\""), "{e}");
        assert!(e.contains("pymfp-channels-snippet.yaml:5:") && e.contains("\"charlie\""), "{e}");
    }

    #[test]
    fn messages_are_for_people() {
        assert!(errors("log_level: INFO\nlog_level: DEBUG\n").ends_with("duplicate mapping key: log_level"));
        assert!(errors("runtime:\n  default_frame_depth: deep\n").ends_with("expected an integer"));
    }

    #[test]
    fn mcp_agent_parses_with_limits() {
        let v = p("agents:\n  - name: claude\n    type: mcp\n    token_env: MCP_TOKEN\n    max_receive_messages: 5\n    max_wait_seconds: 2.5\n    max_payload_bytes: 1000\n    queue_capacity: 7\nmcp:\n  port: 0\n").unwrap();
        let AgentKind::Mcp(m) = &v.agents[0].kind else { panic!("not an mcp agent") };
        assert_eq!(m.token, TokenSource::Env("MCP_TOKEN".into()));
        assert_eq!((m.max_receive, m.max_wait_ms, m.max_payload), (5, 2500, 1000));
        assert_eq!(v.agents[0].queue_capacity, 7);
        assert_eq!(v.mcp_addr, "127.0.0.1:0");
        let v = p("agents:\n  - name: c\n    type: mcp\n").unwrap();
        let AgentKind::Mcp(m) = &v.agents[0].kind else { panic!("not an mcp agent") };
        assert_eq!(m.token, TokenSource::None);
        assert_eq!(m.max_receive, 32);
        assert!(v.warnings.iter().any(|w| w.contains("stdio only")), "{:?}", v.warnings);
    }

    #[test]
    fn mcp_agent_errors_have_locations() {
        let e = errors("agents:\n  - name: c\n    type: mcp\n    max_receive_messages: 0\n");
        assert!(e.starts_with("test.yaml:4:") && e.contains("max_receive_messages"), "{e}");
        let e = errors("agents:\n  - name: c\n    type: mcp\n    max_wait_seconds: 301\n");
        assert!(e.starts_with("test.yaml:4:") && e.contains("max_wait_seconds"), "{e}");
        let e = errors("agents:\n  - name: c\n    type: mcp\n    command: [x]\n");
        assert!(e.starts_with("test.yaml:4:") && e.contains("command"), "{e}");
        let e = errors("agents:\n  - name: a b\n    type: mcp\n");
        assert!(e.starts_with("test.yaml:2:") && e.contains("URL"), "{e}");
        let e = errors("agents:\n  - name: c\n    type: mcp\n    token: short\n");
        assert!(e.starts_with("test.yaml:4:") && e.contains("16"), "{e}");
        let e = errors("mcp:\n  port: 1\n  hostz: x\n");
        assert!(e.starts_with("test.yaml:3:") && e.contains("hostz"), "{e}");
    }

    #[test]
    fn mcp_payload_limit_follows_the_runtime() {
        let v = p("quarantine:\n  max_payload_size: 100\nagents:\n  - name: c\n    type: mcp\n").unwrap();
        let AgentKind::Mcp(m) = &v.agents[0].kind else { panic!("not an mcp agent") };
        assert_eq!(m.max_payload, 100);
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let v = p("agents:\n  - name: w\n    type: webhook\n    url: http://127.0.0.1:1/x\n    token: abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert!(!format!("{v:?}").contains("abcdefghijklmnop"));
        let v = p("agents:\n  - name: m\n    type: mcp\n    token: abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert!(!format!("{v:?}").contains("abcdefghijklmnop"));
    }
}
