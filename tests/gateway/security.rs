//! Security: the token guards every route and method, secrets stay out of everything keel
//! writes or answers, state is private on disk, and keel refuses to listen beyond loopback
//! without a secret someone chose.

use crate::common::*;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::Path;

/// Runs `keel <args>` on the state directory `state`; returns the exit code and all output.
fn keel_in(state: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let env = env
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .chain([("KEEL_STATE_DIR", state.display().to_string())]);
    let out = keel_cli(args, env);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn listening_beyond_loopback_needs_a_configured_secret() {
    // The port keel is asked for is held on every address: had keel tried to bind before
    // refusing, it would exit 1 with "cannot listen" instead of 78 with the reason.
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let serve = ["serve", "--port", port.as_str()];
    let refused = |args: &[&str], config: Option<Value>, env: &[(&str, &str)]| {
        if let Some(c) = config {
            std::fs::create_dir_all(&state).unwrap();
            std::fs::write(state.join("keel.json"), c.to_string()).unwrap();
        }
        let (code, out) = keel_in(&state, args, env);
        assert_eq!(code, 78, "{args:?}: {out}");
        assert!(!out.contains("listening on"), "{out}");
        out
    };
    let out = refused(&[&serve[..], &["--bind", "0.0.0.0"]].concat(), None, &[]);
    for needle in [
        "0.0.0.0",
        "gateway.auth.token",
        "KEEL_GATEWAY_TOKEN",
        "gateway.auth.password",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in: {out}");
    }
    assert!(
        !state.join("gateway.token").exists(),
        "no token is generated for a gateway that does not start"
    );
    refused(&serve, Some(json!({"gateway": {"bind": "lan"}})), &[]);
    let out = refused(
        &serve,
        Some(json!({"gateway": {"bind": "lan", "auth": {"mode": "none"}}})),
        &[],
    );
    assert!(out.contains("gateway.auth.mode"), "{out}");
    // A token keel generated earlier (on loopback) is not a secret anyone chose for this.
    std::fs::write(state.join("gateway.token"), "0123456789abcdef\n").unwrap();
    refused(&serve, Some(json!({"gateway": {"bind": "lan"}})), &[]);
    // `keel check` gives the same verdict.
    let (code, out) = keel_in(&state, &["check"], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("gateway.auth.token"), "{out}");
    drop(held);

    // A configured token, the environment's token or a password is enough.
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"bind": "lan", "auth": {"token": "chosen-by-the-operator"}},
    })));
    assert!(
        g.log_text().contains("listening on 0.0.0.0:"),
        "{}",
        g.log_text()
    );
    assert_eq!(
        rpc_with(&g.addr(), "chosen-by-the-operator", "health", &json!({})).status,
        200
    );
    let g = Gateway::start(Opts {
        args: vec!["--bind".into(), "0.0.0.0".into()],
        ..Opts::default().env("KEEL_GATEWAY_TOKEN", "from-the-environment")
    });
    assert_eq!(
        rpc_with(&g.addr(), "from-the-environment", "health", &json!({})).status,
        200
    );
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"bind": "lan", "auth": {"mode": "password", "password": "a-passphrase"}},
    })));
    assert!(
        g.log_text().contains("listening on 0.0.0.0:"),
        "{}",
        g.log_text()
    );
}
