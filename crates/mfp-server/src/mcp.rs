//! MCP agents: an MCP host (a desktop assistant, an IDE, an agent framework) acts as an
//! MFP agent through four tools, `mfp_send`, `mfp_receive`, `mfp_channels` and
//! `mfp_status`, served by rmcp over Streamable HTTP (one path and bearer token per agent,
//! see [`router`]) or over stdio (`mfp-server mcp`). See docs/mcp.md.
//!
//! Errors: an unknown tool is a JSON-RPC error (-32602, as the MCP specification's
//! example); everything the model can correct — malformed arguments, a payload over the
//! limit, an unknown peer, a refusal by the runtime — is a tool result with `isError` and a
//! typed `error.code`, so that the model reads it.
//!
//! Notifications: the resource `mfp://inbox` can be subscribed to (`resources/subscribe`,
//! protocol versions up to 2025-11-25, which are the versions served); each arrival then
//! sends `notifications/resources/updated` for it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorCode, Implementation, JsonObject,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceUpdatedNotificationParam,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, Tool, ToolAnnotations, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::adapter::{AgentRef, Incoming, Target, ToolError};
use crate::config::McpSpec;
use crate::inbox::Inbox;

/// The resource whose updates announce new messages.
pub(crate) const INBOX_URI: &str = "mfp://inbox";

/// The protocol versions served: those with sessions (`initialize`), where a subscription
/// to `mfp://inbox` can carry notifications.
fn versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25)
}

/// One mcp agent as MCP sees it. Cheap to clone; [`McpAgent::session`] gives each MCP
/// session its own subscription state.
#[derive(Clone)]
pub(crate) struct McpAgent {
    name: Arc<str>,
    agent: AgentRef,
    inbox: Arc<dyn Inbox>,
    spec: Arc<McpSpec>,
    /// Cancelled when the server stops (ends notification tasks).
    stop: CancellationToken,
    /// This session's subscription to `mfp://inbox`. Dropping the guard — on unsubscribe, or
    /// when the session ends and its handler is dropped — ends its notifications.
    subscription: Arc<parking_lot::Mutex<Option<tokio_util::sync::DropGuard>>>,
}

impl McpAgent {
    pub(crate) fn new(
        name: &str,
        agent: AgentRef,
        inbox: Arc<dyn Inbox>,
        spec: McpSpec,
        stop: CancellationToken,
    ) -> Self {
        Self { name: name.into(), agent, inbox, spec: Arc::new(spec), stop, subscription: Arc::default() }
    }

    /// A handler for a new MCP session of this agent.
    pub(crate) fn session(&self) -> Self {
        Self { subscription: Arc::default(), ..self.clone() }
    }

    fn tools(&self) -> Vec<Tool> {
        let max_wait = self.spec.max_wait_ms as f64 / 1000.0;
        let max_n = self.spec.max_receive;
        let max_payload = self.spec.max_payload;
        // Base64 of `max_payload` bytes.
        let max_b64 = max_payload.div_ceil(3) * 4;
        vec![
            tool(
                "mfp_send",
                "Send",
                format!(
                    "Send a message to another agent over the Mirror Frame Protocol. Address it either with `to` \
                     (the name of a peer agent, as listed by mfp_channels) or with `channel` (a channel id from \
                     mfp_channels), not both. Put the message in `text` (UTF-8), or in `base64` for binary data, \
                     not both; at most {max_payload} bytes. Returns a receipt: message_id, channel and step. \
                     Replies, if any, arrive later through mfp_receive."
                ),
                json!({
                    "type": "object",
                    "properties": {
                        "to": {"type": "string", "minLength": 1, "maxLength": 128,
                               "description": "Name of the peer agent to send to (uses your channel with it)."},
                        "channel": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$",
                                    "description": "Channel id (32 hex digits) from mfp_channels."},
                        "text": {"type": "string", "maxLength": max_payload,
                                 "description": "The message as text."},
                        "base64": {"type": "string", "maxLength": max_b64,
                                   "description": "The message as base64 (for binary data)."},
                        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                                            "description": "Optional: a retried send with the same key is sent once."}
                    },
                    "additionalProperties": false
                }),
                ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false),
            ),
            tool(
                "mfp_receive",
                "Receive",
                format!(
                    "Take the messages waiting for you (oldest first), waiting up to `wait_seconds` (at most \
                     {max_wait}) for the first one to arrive. Returns up to `max_messages` (at most {max_n}) \
                     messages, each with sender_name, sender, channel, step, message_id, redelivered (true: it may have \
                     been returned before a restart of the server) and the payload as `text` (or `base64` when it \
                     is not UTF-8), and `remaining`: how many still wait. Returned messages \
                     are acknowledged and will not be returned again. An empty list means nothing arrived in time."
                ),
                json!({
                    "type": "object",
                    "properties": {
                        "max_messages": {"type": "integer", "minimum": 1, "maximum": max_n, "default": max_n,
                                         "description": "Most messages to return."},
                        "wait_seconds": {"type": "number", "minimum": 0, "maximum": max_wait, "default": 0,
                                         "description": "How long to wait when nothing is waiting yet."}
                    },
                    "additionalProperties": false
                }),
                ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false),
            ),
            tool(
                "mfp_channels",
                "Channels",
                "List your channels: for each, the channel id, the peer agent's name and id, its status \
                 (active, quarantined, closed) and frame depth. Send to a peer with mfp_send and `to` set to its \
                 name."
                    .to_string(),
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
                ToolAnnotations::new().read_only(true).destructive(false).idempotent(true).open_world(false),
            ),
            tool(
                "mfp_status",
                "Status",
                "Your agent's status: name, id, state, number of channels, messages sent, and how many messages \
                 wait in your inbox (take them with mfp_receive)."
                    .to_string(),
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
                ToolAnnotations::new().read_only(true).destructive(false).idempotent(true).open_world(false),
            ),
        ]
    }

    async fn call(&self, name: &str, args: Value, cancel: CancellationToken) -> Result<CallToolResult, McpError> {
        let result = match name {
            "mfp_send" => self.send(args).await,
            "mfp_receive" => self.receive(args, cancel).await,
            "mfp_channels" => no_args(args).and_then(|()| {
                let list = self.agent.channels().map_err(Failure::from)?;
                Ok(json!({ "channels": list }))
            }),
            "mfp_status" => no_args(args).and_then(|()| {
                let s = self.agent.status().map_err(Failure::from)?;
                let mut v = serde_json::to_value(s).map_err(|e| Failure::new("internal", e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("inbox_waiting".into(), self.waiting().into());
                }
                Ok(v)
            }),
            other => {
                tracing::warn!(agent = %self.name, "mcp: unknown tool called");
                return Err(McpError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("unknown tool {other:?}: the tools are mfp_send, mfp_receive, mfp_channels, mfp_status"),
                    Some(json!({"code": "unknown_tool"})),
                ));
            }
        };
        Ok(match result {
            Ok(v) => CallToolResult::structured(v),
            Err(f) => CallToolResult::structured_error(json!({"error": {"code": f.code, "message": f.message}})),
        })
    }

    async fn send(&self, args: Value) -> Result<Value, Failure> {
        let a: SendArgs = parse_args(args)?;
        let target = match (a.to, a.channel) {
            (Some(to), None) => Target::Peer(to),
            (None, Some(ch)) => Target::Channel(ch),
            _ => return Err(Failure::invalid("give either `to` (a peer agent's name) or `channel`, exactly one")),
        };
        let max = self.spec.max_payload;
        let payload = match (a.text, a.base64) {
            (Some(t), None) => {
                if t.len() > max {
                    return Err(too_large(t.len(), max));
                }
                t.into_bytes()
            }
            (None, Some(b)) => {
                // Checked before decoding: base64 of `max` bytes is at most this long.
                if b.len() > max.div_ceil(3) * 4 + 4 {
                    return Err(too_large(b.len() / 4 * 3, max));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|_| Failure::invalid("`base64` is not valid base64 (standard alphabet, with padding)"))?;
                if bytes.len() > max {
                    return Err(too_large(bytes.len(), max));
                }
                bytes
            }
            _ => return Err(Failure::invalid("give the message as either `text` or `base64`, exactly one")),
        };
        if a.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
            return Err(Failure::invalid("`idempotency_key` must be 1 to 256 characters"));
        }
        let r = self.agent.send(target, &payload, a.idempotency_key).await.map_err(Failure::from)?;
        Ok(json!({"message_id": r.message_id, "channel": r.channel, "step": r.step}))
    }

    /// `cancel`: the request was cancelled by the host (stop waiting, take nothing).
    /// Messages waiting for this agent: in its inbox, and queued behind it in the runtime's
    /// mailbox (the runtime hands them over one at a time).
    fn waiting(&self) -> usize {
        self.inbox.waiting() + self.agent.status().map_or(0, |s| s.mailbox_len)
    }

    async fn receive(&self, args: Value, cancel: CancellationToken) -> Result<Value, Failure> {
        let a: ReceiveArgs = parse_args(args)?;
        let max = match a.max_messages {
            None => self.spec.max_receive,
            Some(n) if n >= 1 && n <= self.spec.max_receive as u64 => n as usize,
            Some(_) => {
                return Err(Failure::invalid(format!("`max_messages` must be from 1 to {}", self.spec.max_receive)));
            }
        };
        let max_wait = self.spec.max_wait_ms as f64 / 1000.0;
        let wait = match a.wait_seconds {
            None => Duration::ZERO,
            Some(w) if w.is_finite() && (0.0..=max_wait).contains(&w) => Duration::from_secs_f64(w),
            Some(_) => return Err(Failure::invalid(format!("`wait_seconds` must be from 0 to {max_wait}"))),
        };
        let taken = tokio::select! {
            m = self.inbox.take(max, wait) => m,
            () = self.stop.cancelled() => Vec::new(),
            () = cancel.cancelled() => Vec::new(),
        };
        let messages: Vec<Value> = taken.into_iter().map(message_json).collect();
        Ok(json!({"messages": messages, "remaining": self.waiting()}))
    }

    /// Sends `notifications/resources/updated` for `mfp://inbox` on each arrival until the
    /// session unsubscribes, the peer goes away or the server stops.
    fn notify_arrivals(&self, peer: rmcp::Peer<RoleServer>, stop: CancellationToken) {
        let mut arrivals = self.inbox.arrivals();
        arrivals.mark_unchanged();
        let name = Arc::clone(&self.name);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = arrivals.changed() => if r.is_err() { break },
                    () = stop.cancelled() => break,
                }
                if peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(INBOX_URI)).await.is_err() {
                    tracing::debug!(agent = %name, "mcp: session gone; inbox notifications stop");
                    break;
                }
            }
        });
    }
}

fn tool(name: &'static str, title: &str, description: String, schema: Value, annotations: ToolAnnotations) -> Tool {
    let schema: JsonObject = match schema {
        Value::Object(o) => o,
        _ => JsonObject::new(),
    };
    Tool::new(name, description, Arc::new(schema)).with_title(title).with_annotations(annotations)
}

fn message_json(m: Incoming) -> Value {
    let mut v = json!({
        "sender": m.sender,
        "sender_name": m.sender_name,
        "channel": m.channel,
        "step": m.step,
        "message_id": m.message_id,
        "redelivered": m.redelivered,
    });
    if let Some(o) = v.as_object_mut() {
        match String::from_utf8(m.payload) {
            Ok(text) => o.insert("text".into(), text.into()),
            Err(e) => o.insert("base64".into(), base64::engine::general_purpose::STANDARD.encode(e.as_bytes()).into()),
        };
    }
    v
}

/// `mfp_send`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendArgs {
    to: Option<String>,
    channel: Option<String>,
    text: Option<String>,
    base64: Option<String>,
    idempotency_key: Option<String>,
}

/// `mfp_receive`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveArgs {
    max_messages: Option<u64>,
    wait_seconds: Option<f64>,
}

/// A tool failure the model reads: a stable code and a message.
#[derive(Debug)]
struct Failure {
    code: Cow<'static, str>,
    message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code: Cow::Borrowed(code), message: message.into() }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_arguments", message)
    }
}

impl From<ToolError> for Failure {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::UnknownPeer(_) => Self::new("unknown_peer", e.to_string()),
            ToolError::InvalidParams(m) => Self::invalid(m),
            ToolError::Runtime { code, message } => Self { code: Cow::Borrowed(code), message },
        }
    }
}

fn too_large(len: usize, max: usize) -> Failure {
    Failure::new("payload_too_large", format!("the payload is {len} bytes; this agent may send at most {max}"))
}

fn parse_args<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, Failure> {
    serde_json::from_value(args).map_err(|e| Failure::invalid(format!("malformed arguments: {e}")))
}

fn no_args(args: Value) -> Result<(), Failure> {
    match args {
        Value::Object(o) if o.is_empty() => Ok(()),
        _ => Err(Failure::invalid("this tool takes no arguments")),
    }
}

impl ServerHandler for McpAgent {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_resources().enable_resources_subscribe().build(),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .with_server_info(Implementation::new("mfp-server", env!("CARGO_PKG_VERSION")))
        .with_instructions(format!(
            "You are the agent {:?} of a Mirror Frame Protocol runtime. mfp_channels lists the agents you can \
                 talk to; mfp_send sends to one of them; mfp_receive takes the messages sent to you (it can wait \
                 for them); mfp_status shows your state. You can reach only your own channels.",
            self.name
        ))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(versions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.map_or_else(|| Value::Object(JsonObject::new()), Value::Object);
        self.call(&request.name, args, context.ct).await.map(CallToolResponse::from)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(INBOX_URI, "inbox")
                .with_description(
                    "How many messages wait for you. Subscribe to be notified when one arrives; take them with \
                     mfp_receive.",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != INBOX_URI {
            return Err(unknown_resource());
        }
        let text = json!({"agent": &*self.name, "waiting": self.waiting()}).to_string();
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, INBOX_URI).with_mime_type("application/json")])
            .into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if request.uri != INBOX_URI {
            return Err(unknown_resource());
        }
        let mut sub = self.subscription.lock();
        if sub.is_none() {
            let token = self.stop.child_token();
            self.notify_arrivals(context.peer, token.clone());
            *sub = Some(token.drop_guard());
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if request.uri != INBOX_URI {
            return Err(unknown_resource());
        }
        drop(self.subscription.lock().take());
        Ok(())
    }
}

fn unknown_resource() -> McpError {
    McpError::new(ErrorCode::RESOURCE_NOT_FOUND, format!("unknown resource: the only resource is {INBOX_URI}"), None)
}

/// Serves `handler` over stdin and stdout until the MCP host closes stdin.
pub(crate) async fn serve_stdio(handler: McpAgent) -> Result<(), String> {
    use rmcp::ServiceExt as _;
    let name = Arc::clone(&handler.name);
    let running = handler.serve(rmcp::transport::stdio_pipes()).await.map_err(|e| format!("agent {name}: {e}"))?;
    tracing::info!(agent = %name, "mcp host connected over stdio");
    running.waiting().await.map_err(|e| format!("agent {name}: {e}"))?;
    Ok(())
}

/// An mcp agent reachable over Streamable HTTP.
pub(crate) struct Endpoint {
    pub(crate) name: String,
    pub(crate) handler: McpAgent,
    pub(crate) token: Arc<zeroize::Zeroizing<String>>,
}

/// The loopback names rmcp accepts in `Host` by default (DNS-rebinding protection).
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Room for JSON-RPC framing around the largest payload (base64) in a request body.
const BODY_OVERHEAD: usize = 64 << 10;

/// The MCP listener's routes: each agent at `/mcp/<name>`, behind its bearer token. A
/// request without the right token gets 401 and reaches nothing; other paths get 404.
pub(crate) fn router(endpoints: Vec<Endpoint>, extra_hosts: &[String], stop: &CancellationToken) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

    let hosts: Vec<String> =
        LOOPBACK_HOSTS.iter().map(|h| (*h).to_string()).chain(extra_hosts.iter().cloned()).collect();
    let mut app = axum::Router::new();
    for Endpoint { name, handler, token } in endpoints {
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts.clone())
            .with_cancellation_token(stop.child_token())
            .with_max_request_body_bytes(handler.spec.max_payload.div_ceil(3) * 4 + BODY_OVERHEAD);
        let service =
            StreamableHttpService::new(move || Ok(handler.session()), Arc::new(LocalSessionManager::default()), config);
        let auth = Auth { agent: Arc::from(name.as_str()), token };
        let one = axum::Router::new()
            .nest_service(&format!("/mcp/{name}"), service)
            .route_layer(axum::middleware::from_fn_with_state(auth, authorize));
        app = app.merge(one);
    }
    app
}

#[derive(Clone)]
struct Auth {
    agent: Arc<str>,
    token: Arc<zeroize::Zeroizing<String>>,
}

async fn authorize(
    axum::extract::State(auth): axum::extract::State<Auth>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    use subtle::ConstantTimeEq as _;
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(auth.token.as_bytes()))) {
        return next.run(request).await;
    }
    tracing::warn!(agent = %auth.agent, "mcp request refused: missing or wrong bearer token");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "bearer token required\n").into_response()
}
