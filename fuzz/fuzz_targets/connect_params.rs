//! The `connect` handshake's text: a frame parsed as a request, then (for `connect`) its
//! params, protocol negotiation, scopes and the `hello-ok` answer — each step as the reactor
//! takes it on the first frame of a WebSocket.
#![no_main]

use keel::protocol::handshake::{self, Hello, SUPPORTED};
use keel::protocol::{self, parse_request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let req = match parse_request(text) {
        Ok(r) => r,
        Err(fe) => {
            if let Some(id) = &fe.id {
                let res: Value = serde_json::from_str(&protocol::res_err(id, &fe.error)).unwrap();
                assert_eq!(res["id"].as_str(), Some(id.as_str()));
            }
            return;
        }
    };
    assert!(!req.id.is_empty() && !req.method.is_empty() && req.params.is_object());
    let params = match handshake::parse_connect(&req.params) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.message.starts_with("invalid connect params"), "{e}");
            return;
        }
    };
    assert!(params.min_protocol <= params.max_protocol);
    assert!(!params.role.is_empty() && params.role.len() <= 64);
    assert!(params.scopes.len() <= 64);
    let proto = match handshake::negotiate(&params) {
        Ok(v) => v,
        Err(e) => {
            let d = e.details.expect("a mismatch carries details");
            assert_eq!(d["code"], "PROTOCOL_MISMATCH");
            assert!(
                !SUPPORTED
                    .iter()
                    .any(|v| (params.min_protocol..=params.max_protocol).contains(v))
            );
            return;
        }
    };
    assert!(
        SUPPORTED.contains(&proto) && (params.min_protocol..=params.max_protocol).contains(&proto)
    );
    let scopes = handshake::granted_scopes(&params);
    assert!(!scopes.is_empty());
    let hello = handshake::hello_ok(&Hello {
        protocol: proto,
        conn_id: "c",
        methods: keel::api::public_names(),
        health: serde_json::json!({"ok": true}),
        uptime_ms: 1,
        role: &params.role,
        scopes: scopes.clone(),
        max_payload: 1 << 20,
        max_buffered_bytes: 1 << 20,
        tick_interval_ms: 30_000,
        auth_mode: "token",
        session_defaults: handshake::SessionDefaults {
            default_agent_id: "main",
            scope: "per-sender",
        },
        control_ui_build_source: None,
    });
    let res: Value = serde_json::from_str(&protocol::res_ok(&req.id, &hello)).unwrap();
    assert_eq!(res["id"].as_str(), Some(req.id.as_str()));
    assert_eq!(
        res["payload"]["auth"]["role"].as_str(),
        Some(params.role.as_str())
    );
    assert_eq!(res["payload"]["protocol"], proto);
});
