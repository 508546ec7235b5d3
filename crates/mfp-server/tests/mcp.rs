//! MCP agents end to end: rmcp's own client against the `mfp-server` binary, over
//! Streamable HTTP (`run`, 127.0.0.1 port 0) and over stdio (`mfp-server mcp`). Each test
//! initialises, lists the tools, sends to a builtin echo agent and receives the reply
//! through `mfp_receive`; bad input gets typed errors and the server keeps serving.
//! Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

use common::*;

const TOKEN: &str = "claude-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-token-0123456789abcdef";

/// Two mcp agents (`claude`, `other`), an echo agent, a channel claude–echo.
fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "admin:\n  enabled: false\nserver:\n  drain_timeout_seconds: 60\nmcp:\n  port: 0\nagents:\n  - name: claude\n    type: mcp\n    token: {TOKEN}\n    max_payload_bytes: 64\n    max_receive_messages: 10\n    max_wait_seconds: 30\n  - name: other\n    type: mcp\n    token: {OTHER_TOKEN}\n  - name: echo\n    type: builtin\n    builtin: echo\nchannels:\n  - agents: [claude, echo]\n  - agents: [other, echo]\n"
    );
    let file = dir.join("config.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The MCP listener's address, from its log line.
fn mcp_addr(server: &Server) -> String {
    server.addr("mcp listener bound")
}

/// A minimal HTTP/1.1 POST of a JSON-RPC body to an MCP endpoint; returns the status.
fn post_status(addr: &str, path: &str, auth: Option<&str>, body: &str) -> u16 {
    let mut headers = vec![("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http(addr, "POST", path, &headers, body).0
}

/// The client side: counts `notifications/resources/updated`.
#[derive(Clone)]
struct Notified(tokio::sync::mpsc::UnboundedSender<String>);

impl ClientHandler for Notified {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("mfp-test-client", "0.0.1"))
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

type Client = RunningService<RoleClient, Notified>;

async fn call(client: &Client, tool: &str, args: Value) -> Result<CallToolResult, rmcp::ServiceError> {
    let Value::Object(args) = args else { panic!("arguments must be an object") };
    tokio::time::timeout(WAIT, client.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args)))
        .await
        .expect("tool call timed out")
}

/// A successful call's structured result.
async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    let r = call(client, tool, args).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{tool} failed: {r:?}");
    r.structured_content.unwrap()
}

/// A call that fails as a tool result; returns its `error.code`.
async fn tool_error(client: &Client, tool: &str, args: Value) -> String {
    let r = call(client, tool, args).await.unwrap();
    assert_eq!(r.is_error, Some(true), "{tool} should have failed: {r:?}");
    r.structured_content.unwrap()["error"]["code"].as_str().unwrap().to_string()
}

/// The flow every transport must pass.
async fn flow(client: &Client, notes: &mut tokio::sync::mpsc::UnboundedReceiver<String>) {
    // Tools.
    let tools = tokio::time::timeout(WAIT, client.list_all_tools()).await.unwrap().unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["mfp_channels", "mfp_receive", "mfp_send", "mfp_status"]);
    let send = tools.iter().find(|t| t.name == "mfp_send").unwrap();
    assert_eq!(send.input_schema["properties"]["text"]["maxLength"], 64);
    assert!(send.description.as_deref().unwrap().contains("at most 64 bytes"));

    // Channels: the echo agent, by name; nothing of the other mcp agent.
    let ch = ok(client, "mfp_channels", json!({})).await;
    let list = ch["channels"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{ch}");
    assert_eq!(list[0]["peer_name"], "echo");

    // Notifications of arrivals.
    #[allow(deprecated)]
    client.subscribe(rmcp::model::SubscribeRequestParams::new("mfp://inbox")).await.unwrap();

    // Send to echo by name; the echo comes back through mfp_receive.
    let receipt = ok(client, "mfp_send", json!({"to": "echo", "text": "hello, echo"})).await;
    assert_eq!(receipt["message_id"].as_str().unwrap().len(), 32, "{receipt}");
    let uri = tokio::time::timeout(WAIT, notes.recv()).await.expect("no inbox notification").unwrap();
    assert_eq!(uri, "mfp://inbox");
    let got = ok(client, "mfp_receive", json!({"wait_seconds": 30})).await;
    let msgs = got["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{got}");
    assert_eq!(msgs[0]["text"], "hello, echo");
    assert_eq!(msgs[0]["sender_name"], "echo");
    assert_eq!(msgs[0]["channel"], receipt["channel"]);
    assert_eq!(got["remaining"], 0);

    // Binary, by channel id: comes back as base64.
    let channel = receipt["channel"].as_str().unwrap();
    ok(client, "mfp_send", json!({"channel": channel, "base64": "/wABAg=="})).await;
    let got = ok(client, "mfp_receive", json!({"wait_seconds": 30, "max_messages": 1})).await;
    assert_eq!(got["messages"][0]["base64"], "/wABAg==", "{got}");
    assert!(got["messages"][0].get("text").is_none());

    // Nothing waiting: an empty list after a short wait.
    let got = ok(client, "mfp_receive", json!({"wait_seconds": 0.2})).await;
    assert_eq!(got["messages"], json!([]));

    // Bad input: typed errors.
    let e = call(client, "mfp_teleport", json!({})).await.unwrap_err();
    match e {
        rmcp::ServiceError::McpError(e) => {
            assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
            assert!(e.message.contains("unknown tool"), "{e:?}");
        }
        other => panic!("expected an MCP error, got {other:?}"),
    }
    assert_eq!(tool_error(client, "mfp_send", json!({"to": "echo", "text": 5})).await, "invalid_arguments");
    assert_eq!(tool_error(client, "mfp_send", json!({"to": "echo"})).await, "invalid_arguments");
    assert_eq!(
        tool_error(client, "mfp_send", json!({"to": "echo", "channel": channel, "text": "x"})).await,
        "invalid_arguments"
    );
    assert_eq!(
        tool_error(client, "mfp_send", json!({"to": "echo", "text": "x", "extra": 1})).await,
        "invalid_arguments"
    );
    assert_eq!(tool_error(client, "mfp_send", json!({"to": "echo", "base64": "%%%"})).await, "invalid_arguments");
    assert_eq!(
        tool_error(client, "mfp_send", json!({"to": "echo", "text": "x".repeat(65)})).await,
        "payload_too_large"
    );
    assert_eq!(
        tool_error(client, "mfp_send", json!({"to": "echo", "base64": "A".repeat(4000)})).await,
        "payload_too_large"
    );
    assert_eq!(tool_error(client, "mfp_send", json!({"to": "other", "text": "x"})).await, "unknown_peer");
    assert_eq!(tool_error(client, "mfp_receive", json!({"max_messages": 11})).await, "invalid_arguments");
    assert_eq!(tool_error(client, "mfp_receive", json!({"wait_seconds": 31})).await, "invalid_arguments");
    assert_eq!(tool_error(client, "mfp_status", json!({"x": 1})).await, "invalid_arguments");

    // Still serving; nothing was sent by the refused calls.
    let status = ok(client, "mfp_status", json!({})).await;
    assert_eq!(status["name"], "claude");
    assert_eq!(status["messages_sent"], 2, "{status}");
    assert_eq!(status["inbox_waiting"], 0);
    let got = ok(client, "mfp_receive", json!({"wait_seconds": 0.2})).await;
    assert_eq!(got["messages"], json!([]), "a refused send reached the echo agent");
}

fn client_handler() -> (Notified, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Notified(tx), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_over_http() {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let dir = temp_dir("mcp", "http");
    let server = Server::run(&config(&dir), &[], &[]);
    let addr = mcp_addr(&server);
    let url = format!("http://{addr}/mcp/claude");

    // Wrong, missing or another agent's token: 401, nothing reachable.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    assert_eq!(post_status(&addr, "/mcp/claude", None, init), 401);
    assert_eq!(post_status(&addr, "/mcp/claude", Some("Bearer wrong-token-0123456789"), init), 401);
    assert_eq!(post_status(&addr, "/mcp/claude", Some(&format!("Bearer {OTHER_TOKEN}")), init), 401);
    assert_eq!(post_status(&addr, "/mcp/claude", Some(TOKEN), init), 401, "the Bearer scheme is required");
    assert_eq!(post_status(&addr, "/mcp/nobody", Some(&format!("Bearer {TOKEN}")), init), 404);
    // The right token passes authentication.
    assert_eq!(post_status(&addr, "/mcp/claude", Some(&format!("Bearer {TOKEN}")), init), 200);
    // A body over what the largest payload needs (base64 of 64 bytes + 64 KiB): 413.
    let big = format!(r#"{{"jsonrpc":"2.0","id":2,"method":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(post_status(&addr, "/mcp/claude", Some(&format!("Bearer {TOKEN}")), &big), 413);
    assert!(!server.log().contains(TOKEN), "a token was logged");

    // rmcp's client with a wrong token cannot even initialise.
    let (h, _) = client_handler();
    let bad = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header("wrong-token-0123456789"),
    );
    assert!(tokio::time::timeout(WAIT, h.serve(bad)).await.unwrap().is_err());

    let (h, mut notes) = client_handler();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(TOKEN),
    );
    let client = tokio::time::timeout(WAIT, h.serve(transport)).await.unwrap().unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("mfp-server"));
    flow(&client, &mut notes).await;

    // The other agent's channel, learnt from the other agent: claude cannot use it.
    let (other, _) = http_client(&addr, "other", OTHER_TOKEN).await;
    let theirs = ok(&other, "mfp_channels", json!({})).await;
    let their_channel = theirs["channels"][0]["channel"].as_str().unwrap().to_string();
    let code = tool_error(&client, "mfp_send", json!({"channel": their_channel, "text": "x"})).await;
    assert_ne!(code, "invalid_arguments", "refused by the runtime, not by argument checks");
    let got = ok(&other, "mfp_receive", json!({"wait_seconds": 0.2})).await;
    assert_eq!(got["messages"], json!([]));
    let _ = other.cancel().await;

    // A reply that arrives while no host is connected waits in the inbox for the next
    // session.
    ok(&client, "mfp_send", json!({"to": "echo", "text": "while away"})).await;
    tokio::time::timeout(WAIT, notes.recv()).await.expect("no inbox notification").unwrap();
    let _ = client.cancel().await;
    let (client, mut notes) = http_client(&addr, "claude", TOKEN).await;
    let got = ok(&client, "mfp_receive", json!({})).await;
    assert_eq!(got["messages"][0]["text"], "while away", "{got}");

    // A message left in the inbox: the server does not wait for it at shutdown, and says
    // it is lost.
    #[allow(deprecated)]
    client.subscribe(rmcp::model::SubscribeRequestParams::new("mfp://inbox")).await.unwrap();
    ok(&client, "mfp_send", json!({"to": "echo", "text": "left behind"})).await;
    tokio::time::timeout(WAIT, notes.recv()).await.expect("no inbox notification").unwrap();
    let _ = client.cancel().await;
    server.signal(rustix::process::Signal::TERM);
    server.wait_for("stopped");
    let log = server.log();
    assert!(log.contains("messages=1") && log.contains("inboxes are lost"), "{log}");
    assert!(!log.contains("drain deadline passed"), "the drain waited for the inbox:\n{log}");
    assert!(!log.contains(TOKEN), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_over_stdio() {
    use rmcp::transport::TokioChildProcess;

    let dir = temp_dir("mcp", "stdio");
    let file = config(&dir);
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["mcp", "--agent", "claude", "--config"]).arg(&file).env_remove("MFP_LOG_LEVEL");
    let (transport, _stderr) = TokioChildProcess::builder(cmd).stderr(Stdio::null()).spawn().unwrap();
    let (h, mut notes) = client_handler();
    let client = tokio::time::timeout(WAIT, h.serve(transport)).await.unwrap().unwrap();
    flow(&client, &mut notes).await;
    let _ = client.cancel().await;
}

#[test]
fn stdio_refuses_an_agent_that_is_not_mcp() {
    let dir = temp_dir("mcp", "notmcp");
    let file = config(&dir);
    let out = Command::new(BIN)
        .args(["mcp", "--agent", "echo", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no agent of type mcp named \"echo\"") && err.contains("claude, other"), "{err}");
    assert!(out.stdout.is_empty(), "stdout carries only MCP");
}

/// The stdio form runs the runtime itself: with a server on the same database running,
/// the storage lock refuses it, clearly, and the server is unaffected.
#[test]
fn stdio_refuses_a_database_in_use() {
    let dir = temp_dir("mcp", "lock");
    let file = config(&dir);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("storage:\n  path: {}\n{text}", dir.join("mfp.db").display())).unwrap();
    let server = Server::run(&file, &[], &[]);
    server.wait_for("ready");
    let out = Command::new(BIN)
        .args(["mcp", "--agent", "claude", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mfp.db") && err.contains("in use") && err.contains("/mcp/<agent>"), "{err}");
    assert!(out.stdout.is_empty(), "stdout carries only MCP");
    let addr = mcp_addr(&server);
    assert_eq!(post_status(&addr, "/mcp/claude", None, "{}"), 401, "the server stopped serving");
}

/// rmcp's client on `agent`'s Streamable HTTP endpoint at `addr`, initialised with `token`.
async fn http_client(addr: &str, agent: &str, token: &str) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let (h, notes) = client_handler();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp/{agent}")).auth_header(token),
    );
    (tokio::time::timeout(WAIT, h.serve(transport)).await.unwrap().unwrap(), notes)
}

/// With storage, a message no host has taken when the server stops is not lost: after the
/// restart, `mfp_receive` returns it, flagged `redelivered`; once taken, it is not returned
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_taken_survives_a_restart() {
    let dir = temp_dir("mcp", "durable");
    let file = config(&dir);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("storage:\n  path: {}\n{text}", dir.join("mfp.db").display())).unwrap();

    let server = Server::run(&file, &[], &[]);
    let (client, mut notes) = http_client(&mcp_addr(&server), "claude", TOKEN).await;
    #[allow(deprecated)]
    client.subscribe(rmcp::model::SubscribeRequestParams::new("mfp://inbox")).await.unwrap();
    let receipt = ok(&client, "mfp_send", json!({"to": "echo", "text": "keep me"})).await;
    tokio::time::timeout(WAIT, notes.recv()).await.expect("no inbox notification").unwrap();
    let _ = client.cancel().await;
    server.signal(rustix::process::Signal::TERM);
    server.wait_for("stopped");
    assert!(server.log().contains("stay stored"), "{}", server.log());
    drop(server);

    let server = Server::run(&file, &[], &[]);
    let (client, _) = http_client(&mcp_addr(&server), "claude", TOKEN).await;
    let got = ok(&client, "mfp_receive", json!({"wait_seconds": 30})).await;
    let msgs = got["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{got}");
    assert_eq!(msgs[0]["text"], "keep me");
    assert_eq!(msgs[0]["redelivered"], true, "{got}");
    assert_eq!(msgs[0]["channel"], receipt["channel"]);
    let _ = client.cancel().await;
    drop(server);

    // Taken: a third start has nothing for the host.
    let server = Server::run(&file, &[], &[]);
    let (client, _) = http_client(&mcp_addr(&server), "claude", TOKEN).await;
    let got = ok(&client, "mfp_receive", json!({"wait_seconds": 1})).await;
    assert_eq!(got["messages"], json!([]), "returned twice: {got}");
    let _ = client.cancel().await;
}
