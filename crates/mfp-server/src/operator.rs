//! The operator endpoints of the admin listener, for the federation's channels:
//!
//! - `GET /federation`: the peers and their links, the native peers' channels with their
//!   positions and status, the recovery counters;
//! - `POST /federation/channels/{channel}/{action}`, `action` one of `suspend`, `resume`,
//!   `reset`, `rotate` (docs/operations.md says when to use each).
//!
//! They answer JSON, and only to `Authorization: Bearer <admin.token>`; without a token in
//! the configuration they are off (403, saying how to turn them on). Errors say what
//! happened to which channel; nothing answered holds a state, a key or a payload.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq as _;

use crate::admin::AdminState;
use crate::federation::{Action, OpError};

fn answer(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

fn refuse(e: OpError) -> Response {
    answer(e.status, json!({"error": e.message}))
}

/// `None` when the request carries the operator token; else the answer to give.
fn unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.operator_token else {
        return Some(refuse(OpError::new(
            403,
            "the operator endpoints are off: set admin.token (or admin.token_env) in the configuration and restart",
        )));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes()))) {
        None
    } else {
        let mut r = refuse(OpError::new(401, "missing or wrong bearer token (Authorization: Bearer <admin.token>)"));
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

fn no_federation() -> Response {
    refuse(OpError::new(404, "this server runs no federation (no federation.peers, or it has not started yet)"))
}

/// `GET /federation`.
pub(crate) async fn status(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let Some(fed) = s.federation.read().clone() else {
        return no_federation();
    };
    let mfp = s.mfp.get().cloned();
    let name = |id: &mfp_core::AgentId| mfp.as_ref().and_then(|m| m.agent_name(id));
    answer(200, fed.status(&name))
}

/// `POST /federation/channels/{channel}/{action}`.
pub(crate) async fn act(
    State(s): State<Arc<AdminState>>,
    Path((channel, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    // Not once the server is stopping (or before it is ready): an action then would hold the
    // federation its stop is closing.
    if !s.ready.load(std::sync::atomic::Ordering::Acquire) {
        return refuse(OpError::new(
            503,
            "the server is not ready (starting or stopping): ask again once /readyz answers 200",
        ));
    }
    let Some(action) = Action::parse(&action) else {
        return refuse(OpError::new(404, format!("unknown action {action:?}: suspend, resume, reset or rotate")));
    };
    let Ok(channel) = channel.parse::<mfp_core::ChannelId>() else {
        return refuse(OpError::new(400, "a channel id is 32 hex digits (as GET /federation lists them)"));
    };
    let Some(fed) = s.federation.read().clone() else {
        return no_federation();
    };
    let Some(mfp) = s.mfp.get().cloned() else {
        return no_federation();
    };
    match fed.act(mfp.runtime(), &channel, action).await {
        Ok(v) => answer(200, v),
        Err(e) => refuse(e),
    }
}
