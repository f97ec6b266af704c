//! The OpenClaw gateway protocol (v3/v4) as keel speaks it: frame envelopes, the `connect`
//! handshake, params and replies. The method table is the application's (`api`).
//!
//! Envelopes carry exactly the keys OpenClaw's client accepts — it rejects extra ones:
//! `req {type,id,method,params?}`, `res {type,id,ok,payload?|error}`,
//! `event {type,event,payload?,seq?}`.

pub mod handshake;
pub mod params;
pub mod reply;

use crate::payload::{Outcome, Payload};
use reply::Wire;

use crate::error::RpcError;
use serde_json::{Map, Value, json};

/// A `req` frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub params: Value,
}

/// Why a text frame is not a usable request. `id` is set when the frame had one, so the error
/// can be answered as a `res`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub id: Option<String>,
    pub error: RpcError,
}

/// Parses one text frame as a `req`.
pub fn parse_request(text: &str) -> Result<Request, FrameError> {
    let bad = |id: Option<String>, msg: String| FrameError {
        id,
        error: RpcError::invalid(msg),
    };
    let v: Value = serde_json::from_str(text)
        .map_err(|e| bad(None, format!("invalid frame: not JSON ({e})")))?;
    let Value::Object(mut m) = v else {
        return Err(bad(None, "invalid frame: expected a JSON object".into()));
    };
    let id = match m.remove("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match m.get("type").and_then(Value::as_str) {
        Some("req") => {}
        Some(other) => {
            return Err(bad(
                id,
                format!("invalid frame: expected type \"req\", got {other:?}"),
            ));
        }
        None => return Err(bad(id, "invalid frame: missing \"type\"".into())),
    }
    let Some(id) = id else {
        return Err(bad(
            None,
            "invalid frame: \"id\" must be a non-empty string".into(),
        ));
    };
    let method = match m.remove("method") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => {
            return Err(bad(
                Some(id),
                "invalid frame: \"method\" must be a non-empty string".into(),
            ));
        }
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(bad(Some(id), "invalid params: expected an object".into())),
    };
    Ok(Request { id, method, params })
}

/// `{"type":"res","id":…,"ok":true,"payload":…}`
pub fn res_ok(id: &str, payload: &Value) -> String {
    json!({"type": "res", "id": id, "ok": true, "payload": payload}).to_string()
}

/// `res_ok` for any payload, without re-parsing raw text, and without copying a shared one.
pub fn res_ok_payload(id: &str, payload: &Payload) -> Wire {
    match payload {
        Payload::Json(v) => res_ok(id, v).into(),
        Payload::Raw(_) | Payload::Shared(_) => {
            let id = Value::String(id.to_string()).to_string();
            let mut out = Wire::default();
            out.push(b"{\"type\":\"res\",\"id\":");
            out.push(id.as_bytes());
            out.push(b",\"ok\":true,\"payload\":");
            payload.wire(&mut out);
            out.push(b"}");
            out
        }
    }
}

/// `{"type":"res","id":…,"ok":false,"error":{…}}`
pub fn res_err(id: &str, error: &RpcError) -> String {
    json!({"type": "res", "id": id, "ok": false, "error": error.to_json()}).to_string()
}

/// Every event keel sends. Emitters name events only through this type, so `hello-ok`'s
/// `features.events` ([`Event::ALL`]) lists exactly what a client can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Before `connect`: the nonce a device signs.
    ConnectChallenge,
    /// Keep-alive, every `tickIntervalMs`.
    Tick,
    /// The gateway has begun draining.
    Shutdown,
    /// A run's progress: lifecycle, assistant text, tool calls, errors.
    Agent,
    /// A run's chat view: deltas and the final message.
    Chat,
    /// A session's tool calls, mirrored to its subscribers.
    SessionTool,
    /// A session was created or changed (runs starting and ending), for `sessions.subscribe`.
    SessionsChanged,
    /// A message was written to a session's transcript, for `sessions.messages.subscribe`.
    SessionMessage,
}

impl Event {
    pub const ALL: [Event; 8] = [
        Event::ConnectChallenge,
        Event::Tick,
        Event::Shutdown,
        Event::Agent,
        Event::Chat,
        Event::SessionTool,
        Event::SessionsChanged,
        Event::SessionMessage,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ConnectChallenge => "connect.challenge",
            Event::Tick => "tick",
            Event::Shutdown => "shutdown",
            Event::Agent => "agent",
            Event::Chat => "chat",
            Event::SessionTool => "session.tool",
            Event::SessionsChanged => "sessions.changed",
            Event::SessionMessage => "session.message",
        }
    }
}

/// `{"type":"event","event":…,"payload":…,"seq"?:…}`
pub fn event(name: Event, payload: &Value, seq: Option<u64>) -> String {
    let mut m = Map::new();
    m.insert("type".into(), json!("event"));
    m.insert("event".into(), json!(name.as_str()));
    m.insert("payload".into(), payload.clone());
    if let Some(s) = seq {
        m.insert("seq".into(), json!(s));
    }
    Value::Object(m).to_string()
}

/// The HTTP body for an RPC outcome: `{"ok":true,"payload":…}` or `{"ok":false,"error":…}`.
pub fn http_body(outcome: &Outcome) -> (u16, Option<u64>, Wire) {
    match outcome {
        Ok(p) => {
            let mut out = Wire::default();
            out.push(b"{\"ok\":true,\"payload\":");
            p.wire(&mut out);
            out.push(b"}");
            (200, None, out)
        }
        Err(e) => (
            e.code.http_status(),
            e.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1)),
            json!({"ok": false, "error": e.to_json()})
                .to_string()
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn requests() {
        let r = parse_request(r#"{"type":"req","id":"1:a","method":"health"}"#).unwrap();
        assert_eq!(r.method, "health");
        assert_eq!(r.params, json!({}));
        let e = parse_request(r#"{"type":"req","id":"7","method":"x","params":[1]}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("7"));
        let e = parse_request("not json").unwrap_err();
        assert!(e.id.is_none() && e.error.message.contains("not JSON"));
        let e = parse_request(r#"{"type":"event","id":"3"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("3"));
        assert!(parse_request(r#"{"type":"req","method":"m"}"#).is_err());
        assert!(parse_request("[]").is_err());
    }

    #[test]
    fn envelopes_have_exactly_their_keys() {
        let keys = |s: &str| {
            let v: Value = serde_json::from_str(s).unwrap();
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&res_ok("1", &json!({}))),
            ["id", "ok", "payload", "type"]
        );
        assert_eq!(
            keys(&res_err("1", &RpcError::invalid("x"))),
            ["error", "id", "ok", "type"]
        );
        assert_eq!(
            keys(&event(Event::Tick, &json!({"ts": 1}), None)),
            ["event", "payload", "type"]
        );
        assert_eq!(
            keys(&event(Event::Tick, &json!({}), Some(3))),
            ["event", "payload", "seq", "type"]
        );
    }

    #[test]
    fn http_bodies_carry_status_and_retry_after() {
        let raw = Payload::Raw(r#"{"a":[1]}"#.into());
        assert_eq!(
            res_ok_payload("i\"d", &raw).to_vec(),
            br#"{"type":"res","id":"i\"d","ok":true,"payload":{"a":[1]}}"#
        );
        assert_eq!(
            http_body(&Ok(raw)).2.to_vec(),
            br#"{"ok":true,"payload":{"a":[1]}}"#
        );
        assert_eq!(
            http_body(&Ok(json!({"b": 2}).into())).2.to_vec(),
            br#"{"ok":true,"payload":{"b":2}}"#
        );
        let (status, retry, _) = http_body(&Err(RpcError::unavailable("full", 1500)));
        assert_eq!((status, retry), (503, Some(2)));
        let (status, _, body) = http_body(&Err(RpcError::new(Code::DeadlineExceeded, "late")));
        assert_eq!(status, 504);
        let v: Value = serde_json::from_slice(&body.to_vec()).unwrap();
        assert_eq!(v["error"]["code"], "DEADLINE_EXCEEDED");
    }

    #[test]
    fn a_big_shared_payload_is_referenced_not_copied() {
        let text = std::sync::Arc::new(format!("[{}0]", "0,".repeat(40_000)));
        let p = Payload::Shared(text.clone());
        let w = res_ok_payload("7", &p);
        assert_eq!(
            w.pieces().len(),
            3,
            "envelope, shared payload, closing brace"
        );
        assert!(
            matches!(&w.pieces()[1], reply::Piece::Text(t) if std::sync::Arc::ptr_eq(t, &text))
        );
        let v: Value = serde_json::from_slice(&w.to_vec()).unwrap();
        assert_eq!(v["payload"].as_array().map(Vec::len), Some(40_001));
        let mut tail = vec![0; 5];
        w.copy_at(w.len() - 5, &mut tail);
        assert_eq!(tail, b"0,0]}");
    }
}
