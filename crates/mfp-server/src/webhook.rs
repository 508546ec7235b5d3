//! Webhook agents: delivery by HTTP POST (timeout, retries with backoff, bounded response
//! body), and an HTTP endpoint on which they call the agent tools, authenticated by a
//! per-agent bearer token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::adapter::{AgentRef, Incoming};
use crate::agents::Shared;
use crate::config::WebhookSpec;
use crate::rpc::{self, Inbound, RpcError};

/// Largest response body read from a webhook (the rest is not read).
const MAX_RESPONSE: usize = 64 * 1024;

/// `http://host[:port]/path` → the same, validated. Only plain HTTP is supported.
pub(crate) fn parse_url(url: &str) -> Option<axum::http::Uri> {
    let uri: axum::http::Uri = url.parse().ok()?;
    (uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty())).then_some(uri)
}

/// Delivers each queued message by POST; drops it (logged, counted) after the retries.
pub(crate) async fn run_webhook(
    name: String,
    spec: WebhookSpec,
    mut rx: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let Some(uri) = parse_url(&spec.url) else { return };
    let timeout = Duration::from_millis(spec.timeout_ms);
    while let Some(m) = rx.recv().await {
        let body = json!({"jsonrpc": "2.0", "method": "deliver", "params": rpc::deliver_params(&m)}).to_string();
        let mut backoff = Duration::from_millis(200);
        let mut delivered = false;
        let mut stopped = false;
        for attempt in 0..=spec.retries {
            let req = axum::http::Request::post(uri.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.clone())));
            let Ok(req) = req else { break };
            let result = tokio::time::timeout(timeout, async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read at most MAX_RESPONSE bytes of the answer, then let it go.
                let _ = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await;
                Ok::<_, String>(status)
            })
            .await;
            match result {
                Ok(Ok(status)) if status.is_success() => {
                    delivered = true;
                    break;
                }
                Ok(Ok(status)) => {
                    tracing::warn!(agent = %name, attempt, %status, "webhook answered with an error status")
                }
                Ok(Err(e)) => tracing::warn!(agent = %name, attempt, error = %e, "webhook request failed"),
                Err(_) => tracing::warn!(agent = %name, attempt, timeout_ms = spec.timeout_ms, "webhook timed out"),
            }
            shared.counters.webhook_failures.fetch_add(1, Ordering::Relaxed);
            if attempt < spec.retries {
                let mut stop = shared.stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => {
                        stopped = true;
                        break;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        shared.counters.pending.fetch_sub(1, Ordering::AcqRel);
        if delivered {
            shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
        } else if stopped {
            // Not acknowledged: with storage, delivered again at the next start.
            tracing::warn!(agent = %name, "server stopping during webhook retries; the message is not acknowledged");
            continue;
        } else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            // The URL is not logged: it may carry a secret in its query.
            tracing::error!(agent = %name, "message dropped: webhook delivery failed after every retry");
        }
        m.done.ack();
    }
}

/// A webhook agent as the HTTP endpoint sees it.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) agent: AgentRef,
    pub(crate) token: Option<Arc<zeroize::Zeroizing<String>>>,
}

type Callers = Arc<HashMap<String, Caller>>;

/// `POST /agents/{name}`: one JSON-RPC request, `Authorization: Bearer <token>`.
pub(crate) fn router(callers: HashMap<String, Caller>, max_body: usize) -> Router {
    Router::new()
        .route("/agents/{name}", post(handle))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Arc::new(callers))
}

async fn handle(State(callers): State<Callers>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(caller) = callers.get(&name) else {
        return (StatusCode::NOT_FOUND, "no webhook agent of that name\n").into_response();
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (&caller.token, given) {
        (Some(t), Some(g)) => bool::from(t.as_bytes().ct_eq(g.as_bytes())),
        _ => false,
    };
    if !authorized {
        tracing::warn!(agent = %name, "webhook call refused: missing or wrong bearer token");
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "bearer token required\n")
            .into_response();
    }
    let reply = match rpc::classify(&body) {
        Inbound::Request { id, method, params } => {
            let result = rpc::call(&caller.agent, &method, &params).await;
            rpc::response(&id.unwrap_or(Value::Null), result)
        }
        Inbound::Invalid { id, error } => rpc::response(&id, Err(error)),
        Inbound::Response { id, .. } => {
            rpc::response(&id, Err(RpcError::new(rpc::INVALID_REQUEST, "expected a request")))
        }
    };
    axum::Json(reply).into_response()
}
