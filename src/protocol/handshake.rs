//! The `connect` handshake: parameters, protocol negotiation, and the `hello-ok` payload.
//!
//! Checks run in this order, each with the answer OpenClaw's clients understand: parameters
//! (`INVALID_REQUEST`, close 1008), protocol (`PROTOCOL_MISMATCH`, close 1002), then the
//! secret (`AUTH_*`, close 1008). The `device` block is accepted and not verified: the gateway
//! token is what protects the port (see the README).

use super::Event;
use crate::error::RpcError;
use serde_json::{Value, json};

/// Protocol versions keel speaks.
pub const SUPPORTED: [u64; 2] = [3, 4];
pub const CURRENT: u64 = 4;
pub const MINIMUM_PROBE: u64 = 3;
/// Pre-auth frames are capped at this size.
pub const PRE_AUTH_MAX_FRAME: usize = 64 << 10;

/// What keel reads from `connect` params.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectParams {
    pub min_protocol: u64,
    pub max_protocol: u64,
    pub token: Option<String>,
    pub password: Option<String>,
    pub role: String,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub client_mode: Option<String>,
}

pub fn parse_connect(params: &Value) -> Result<ConnectParams, RpcError> {
    let bad = |msg: &str| RpcError::invalid(format!("invalid connect params: {msg}"));
    let proto = |key: &str| -> Result<u64, RpcError> {
        params
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(&format!("{key} must be a non-negative integer")))
    };
    let min_protocol = proto("minProtocol")?;
    let max_protocol = proto("maxProtocol")?;
    if min_protocol > max_protocol {
        return Err(bad("minProtocol is above maxProtocol"));
    }
    let client = match params.get("client") {
        None | Some(Value::Null) => None,
        Some(c @ Value::Object(_)) => Some(c),
        Some(_) => return Err(bad("client must be an object")),
    };
    let auth = match params.get("auth") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(_)) => Some(a),
        Some(_) => return Err(bad("auth must be an object")),
    };
    let secret = |key: &str| -> Result<Option<String>, RpcError> {
        match auth.and_then(|a| a.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("auth.{key} must be a string"))),
        }
    };
    let role = match params.get("role") {
        None | Some(Value::Null) => "operator".to_string(),
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 64 => r.clone(),
        Some(_) => return Err(bad("role must be a short string")),
    };
    let scopes = match params.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= 64 => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad("scopes must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("scopes must be an array of strings")),
    };
    if let Some(d) = params.get("device")
        && !d.is_object()
        && !d.is_null()
    {
        return Err(bad("device must be an object"));
    }
    let field = |key: &str| {
        client
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    Ok(ConnectParams {
        min_protocol,
        max_protocol,
        token: secret("token")?,
        password: secret("password")?,
        role,
        scopes,
        client_id: field("id"),
        client_mode: field("mode"),
    })
}

/// The highest protocol both sides speak.
pub fn negotiate(p: &ConnectParams) -> Result<u64, RpcError> {
    SUPPORTED
        .iter()
        .rev()
        .copied()
        .find(|v| (p.min_protocol..=p.max_protocol).contains(v))
        .ok_or_else(|| {
            RpcError::invalid("protocol mismatch").with_details(json!({
                "code": "PROTOCOL_MISMATCH",
                "clientMinProtocol": p.min_protocol,
                "clientMaxProtocol": p.max_protocol,
                "expectedProtocol": CURRENT,
                "minimumProbeProtocol": MINIMUM_PROBE,
            }))
        })
}

/// Scopes granted: what the client asked for, or all operator scopes. A matching gateway
/// secret is full access.
pub fn granted_scopes(p: &ConnectParams) -> Vec<String> {
    if p.scopes.is_empty() {
        ["operator.admin", "operator.read", "operator.write"]
            .map(String::from)
            .to_vec()
    } else {
        p.scopes.clone()
    }
}

/// `snapshot.sessionDefaults`: which agent and session a client opens by default.
pub struct SessionDefaults<'a> {
    pub default_agent_id: &'a str,
    /// OpenClaw's `session.scope`: keel keeps each sender's session apart (`per-sender`).
    pub scope: &'a str,
}

/// The session key every agent's main session has (`agent:<id>:main`).
pub const MAIN_KEY: &str = "main";

/// OpenClaw's `session.scope`: keel keeps every sender's session apart (it has no `global`
/// session that merges them).
pub const SESSION_SCOPE: &str = "per-sender";

/// `server.controlUiBuildSource`: `configured` while keel serves the dashboard from a build on
/// disk (`gateway.controlUi.root`, or one it found), as OpenClaw says for a configured root.
/// The dashboard then skips its version check, which would otherwise reload the page on every
/// reconnect (keel's version is never OpenClaw's).
pub fn control_ui_build_source(serving_ui: bool) -> Option<&'static str> {
    serving_ui.then_some("configured")
}

/// Everything `hello-ok` reports besides the request itself.
pub struct Hello<'a> {
    pub protocol: u64,
    pub conn_id: &'a str,
    pub methods: Vec<&'static str>,
    pub health: Value,
    pub uptime_ms: u64,
    pub role: &'a str,
    pub scopes: Vec<String>,
    pub max_payload: usize,
    pub max_buffered_bytes: usize,
    pub tick_interval_ms: u64,
    /// `token` or `password`: the secret the gateway is configured with. OpenClaw's dashboard
    /// keeps the secret it connected with only when this names one.
    pub auth_mode: &'static str,
    pub session_defaults: SessionDefaults<'a>,
    /// `configured` when keel serves the dashboard from a configured directory: the dashboard
    /// then skips its version check (which would reload the page on every reconnect, as
    /// keel's version is never OpenClaw's).
    pub control_ui_build_source: Option<&'a str>,
}

/// The names of the events keel may send: every [`Event`].
pub fn events() -> Vec<&'static str> {
    Event::ALL.iter().map(|e| e.as_str()).collect()
}

pub fn hello_ok(h: &Hello<'_>) -> Value {
    let mut server = json!({"version": crate::VERSION, "connId": h.conn_id});
    if let Some(source) = h.control_ui_build_source {
        server["controlUiBuildSource"] = json!(source);
    }
    let d = &h.session_defaults;
    json!({
        "type": "hello-ok",
        "protocol": h.protocol,
        "server": server,
        "features": {"methods": h.methods, "events": events()},
        "snapshot": {
            "presence": [],
            "health": h.health,
            "stateVersion": {"presence": 0, "health": 0},
            "uptimeMs": h.uptime_ms,
            "authMode": h.auth_mode,
            "sessionDefaults": {
                "defaultAgentId": d.default_agent_id,
                "mainKey": MAIN_KEY,
                "mainSessionKey": format!("agent:{}:{MAIN_KEY}", d.default_agent_id),
                "scope": d.scope,
            },
        },
        "auth": {"role": h.role, "scopes": h.scopes},
        "policy": {
            "maxPayload": h.max_payload,
            "maxBufferedBytes": h.max_buffered_bytes,
            "tickIntervalMs": h.tick_interval_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli_connect(min: u64, max: u64) -> Value {
        json!({
            "minProtocol": min, "maxProtocol": max,
            "client": {"id": "cli", "version": "2026.9.6", "platform": "linux", "mode": "cli"},
            "caps": [], "auth": {"token": "T"}, "role": "operator", "scopes": ["operator.read"],
            "device": {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
        })
    }

    #[test]
    fn openclaw_cli_connect_parses() {
        let p = parse_connect(&cli_connect(4, 4)).unwrap();
        assert_eq!(p.token.as_deref(), Some("T"));
        assert_eq!(p.scopes, ["operator.read"]);
        assert_eq!(p.client_id.as_deref(), Some("cli"));
        assert_eq!(negotiate(&p).unwrap(), 4);
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(
            negotiate(&parse_connect(&cli_connect(3, 3)).unwrap()).unwrap(),
            3
        );
        assert_eq!(
            negotiate(&parse_connect(&cli_connect(1, 9)).unwrap()).unwrap(),
            4
        );
        let e = negotiate(&parse_connect(&cli_connect(1, 2)).unwrap()).unwrap_err();
        assert_eq!(e.message, "protocol mismatch");
        let d = e.details.unwrap();
        assert_eq!(d["code"], "PROTOCOL_MISMATCH");
        assert_eq!(d["expectedProtocol"], 4);
        assert_eq!(d["clientMaxProtocol"], 2);
    }

    #[test]
    fn bad_params_are_invalid_requests() {
        for bad in [
            json!({}),
            json!({"minProtocol": "3", "maxProtocol": 4}),
            json!({"minProtocol": 4, "maxProtocol": 3}),
            json!({"minProtocol": 3, "maxProtocol": 4, "auth": "T"}),
            json!({"minProtocol": 3, "maxProtocol": 4, "auth": {"token": 5}}),
            json!({"minProtocol": 3, "maxProtocol": 4, "scopes": [1]}),
        ] {
            let e = parse_connect(&bad).unwrap_err();
            assert!(
                e.message.starts_with("invalid connect params"),
                "{bad}: {e}"
            );
        }
    }

    fn hello(control_ui_build_source: Option<&str>) -> Value {
        hello_ok(&Hello {
            protocol: 4,
            conn_id: "c",
            methods: vec!["health"],
            health: json!({"ok": true}),
            uptime_ms: 5,
            role: "operator",
            scopes: vec!["operator.read".into()],
            max_payload: 1,
            max_buffered_bytes: 2,
            tick_interval_ms: 30_000,
            auth_mode: "token",
            session_defaults: SessionDefaults {
                default_agent_id: "ops",
                scope: "per-sender",
            },
            control_ui_build_source,
        })
    }

    #[test]
    fn hello_ok_has_exactly_the_required_keys() {
        let h = hello(None);
        let keys = |v: &Value| {
            let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&h),
            [
                "auth", "features", "policy", "protocol", "server", "snapshot", "type"
            ]
        );
        assert_eq!(
            keys(&h["snapshot"]),
            [
                "authMode",
                "health",
                "presence",
                "sessionDefaults",
                "stateVersion",
                "uptimeMs"
            ]
        );
        assert_eq!(h["snapshot"]["authMode"], "token");
        assert_eq!(
            h["snapshot"]["sessionDefaults"],
            json!({"defaultAgentId": "ops", "mainKey": "main",
                   "mainSessionKey": "agent:ops:main", "scope": "per-sender"})
        );
        assert_eq!(
            h["features"]["events"],
            json!([
                "connect.challenge",
                "tick",
                "shutdown",
                "agent",
                "chat",
                "session.tool",
                "sessions.changed",
                "session.message"
            ])
        );
        assert_eq!(
            keys(&h["policy"]),
            ["maxBufferedBytes", "maxPayload", "tickIntervalMs"]
        );
        assert_eq!(keys(&h["server"]), ["connId", "version"]);
    }

    #[test]
    fn a_served_dashboard_is_announced() {
        let h = hello(Some("configured"));
        assert_eq!(h["server"]["controlUiBuildSource"], "configured");
    }
}
