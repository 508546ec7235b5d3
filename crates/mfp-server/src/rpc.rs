//! JSON-RPC 2.0 as agents speak it: the three agent tools (`send`, `channels`, `status`),
//! the `deliver` call the server makes, and the error codes.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::adapter::{AgentRef, Incoming, Target, ToolError};

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request (or a line over the size limit).
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// The runtime refused the call; `data.code` is pymfp's error code.
pub(crate) const RUNTIME_ERROR: i64 = -32001;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) data: Option<Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let (Some(d), Some(obj)) = (&self.data, e.as_object_mut()) {
            obj.insert("data".into(), d.clone());
        }
        e
    }
}

impl From<ToolError> for RpcError {
    fn from(e: ToolError) -> Self {
        match e {
            e @ ToolError::UnknownPeer(_) => RpcError::new(INVALID_PARAMS, e.to_string()),
            ToolError::InvalidParams(m) => RpcError::new(INVALID_PARAMS, m),
            ToolError::Runtime { code, message } => {
                RpcError { code: RUNTIME_ERROR, message, data: Some(json!({ "code": code })) }
            }
        }
    }
}

/// A response line.
pub(crate) fn response(id: &Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

/// What one line from an agent is.
pub(crate) enum Inbound {
    /// A call to one of our methods; `id` is `None` for a notification.
    Request { id: Option<Value>, method: String, params: Value },
    /// The answer to one of our `deliver` calls.
    Response { id: Value, error: Option<String> },
    /// Not valid: answer with this error (id `null` when unknown).
    Invalid { id: Value, error: RpcError },
}

/// Classifies one line.
pub(crate) fn classify(line: &[u8]) -> Inbound {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Inbound::Invalid {
            id: Value::Null,
            error: RpcError::new(PARSE_ERROR, "parse error: the line is not valid JSON"),
        };
    };
    let Some(obj) = v.as_object() else {
        return Inbound::Invalid {
            id: Value::Null,
            error: RpcError::new(INVALID_REQUEST, "invalid request: expected a JSON object"),
        };
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Inbound::Invalid {
            id: id.unwrap_or(Value::Null),
            error: RpcError::new(INVALID_REQUEST, "invalid request: \"jsonrpc\" must be \"2.0\""),
        };
    }
    if let Some(method) = obj.get("method") {
        let Some(method) = method.as_str() else {
            return Inbound::Invalid {
                id: id.unwrap_or(Value::Null),
                error: RpcError::new(INVALID_REQUEST, "invalid request: method must be a string"),
            };
        };
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        return Inbound::Request { id, method: method.to_string(), params };
    }
    match id {
        Some(id) if obj.contains_key("result") || obj.contains_key("error") => {
            let error = obj
                .get("error")
                .map(|e| e.get("message").and_then(Value::as_str).unwrap_or("error").chars().take(200).collect());
            Inbound::Response { id, error }
        }
        id => Inbound::Invalid {
            id: id.unwrap_or(Value::Null),
            error: RpcError::new(INVALID_REQUEST, "invalid request: no method"),
        },
    }
}

/// Runs one of the agent tools.
pub(crate) async fn call(agent: &AgentRef, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "send" => {
            let p = params.as_object().ok_or_else(|| RpcError::new(INVALID_PARAMS, "send takes an object"))?;
            let target = match (p.get("channel").and_then(Value::as_str), p.get("to").and_then(Value::as_str)) {
                (Some(c), None) => Target::Channel(c.to_string()),
                (None, Some(to)) => Target::Peer(to.to_string()),
                _ => {
                    return Err(RpcError::new(
                        INVALID_PARAMS,
                        "send needs exactly one of \"channel\" (hex id) or \"to\" (agent name)",
                    ));
                }
            };
            let payload = match (p.get("payload"), p.get("payload_base64")) {
                (Some(Value::String(s)), None) => s.clone().into_bytes(),
                (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| RpcError::new(INVALID_PARAMS, "payload_base64 is not valid base64"))?,
                _ => {
                    return Err(RpcError::new(
                        INVALID_PARAMS,
                        "send needs exactly one of \"payload\" (text) or \"payload_base64\"",
                    ));
                }
            };
            let key = match p.get("idempotency_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) if k.len() <= 256 => Some(k.clone()),
                Some(_) => {
                    return Err(RpcError::new(INVALID_PARAMS, "idempotency_key must be a string of at most 256 bytes"));
                }
            };
            let r = agent.send(target, &payload, key).await?;
            Ok(serde_json::to_value(r).unwrap_or(Value::Null))
        }
        "channels" => Ok(serde_json::to_value(agent.channels()?).unwrap_or(Value::Null)),
        "status" => Ok(serde_json::to_value(agent.status()?).unwrap_or(Value::Null)),
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("method not found: {:?} (agents may call send, channels, status)", truncate(other)),
        )),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `deliver`'s parameters for a message.
pub(crate) fn deliver_params(m: &Incoming) -> Value {
    let mut p = json!({
        "channel": m.channel,
        "sender": m.sender,
        "sender_name": m.sender_name,
        "message_id": m.message_id,
        "step": m.step,
        "redelivered": m.redelivered,
    });
    if let Some(obj) = p.as_object_mut() {
        match std::str::from_utf8(&m.payload) {
            Ok(text) => obj.insert("payload".into(), Value::String(text.to_string())),
            Err(_) => obj.insert(
                "payload_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            ),
        };
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(classify(b"hello"), Inbound::Invalid { error, .. } if error.code == PARSE_ERROR));
        assert!(matches!(classify(b"[1]"), Inbound::Invalid { error, .. } if error.code == INVALID_REQUEST));
        assert!(
            matches!(classify(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#), Inbound::Invalid { error, .. } if error.code == INVALID_REQUEST)
        );
    }

    #[test]
    fn requests_and_responses() {
        assert!(
            matches!(classify(br#"{"jsonrpc":"2.0","id":7,"method":"status"}"#), Inbound::Request { id: Some(_), ref method, .. } if method == "status")
        );
        assert!(matches!(classify(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#), Inbound::Response { error: None, .. }));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"no"}}"#),
            Inbound::Response { error: Some(_), .. }
        ));
    }

    #[test]
    fn binary_payloads_go_as_base64() {
        let m = Incoming {
            payload: vec![0xff, 0],
            sender: "s".into(),
            sender_name: None,
            channel: "c".into(),
            message_id: "m".into(),
            step: 1,
            redelivered: true,
            done: crate::adapter::Done::new().0,
        };
        let p = deliver_params(&m);
        assert_eq!(p["payload_base64"], "/wA=");
        assert!(p.get("payload").is_none());
        assert_eq!(p["redelivered"], true);
    }
}
