//! Configuration: defaults, bad subtrees, `keel check`.

use crate::common::*;
use serde_json::json;

#[test]
fn no_config_generates_a_token_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let g = Gateway::start(Opts::default());
    let path = g.state().join("gateway.token");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(g.state()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(g.token.len(), 64);
    let line = g.wait_log("generated a gateway token in", BOUND).unwrap();
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(
        !g.log_text().contains(&g.token),
        "the token itself is never logged"
    );
}

#[test]
fn a_bad_subtree_disables_its_feature_and_readyz_says_why() {
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"drainTimeoutMs": "later", "someday": 1},
        "hooks": {"enabled": true},
    })));
    assert_eq!(g.get("/healthz").status, 200);
    let r = g.get("/readyz");
    assert_eq!(r.status, 503);
    let failing = r.json()["failing"].to_string();
    assert!(failing.contains("gateway.drainTimeoutMs"), "{failing}");
    assert!(failing.contains("hooks.token"), "{failing}");
    assert!(g.log_text().contains("gateway.someday: unknown key"));
}

#[test]
fn a_config_token_is_used_and_no_token_file_is_made() {
    let g = Gateway::start(
        Opts::default()
            .config(json!({"gateway": {"auth": {"mode": "token", "token": "from-config"}}})),
    );
    assert!(!g.state().join("gateway.token").exists());
    assert_eq!(
        rpc_with(&g.addr(), "from-config", "health", &json!({})).status,
        200
    );
}

#[test]
fn password_auth_over_websocket() {
    let g = Gateway::start(
        Opts::default()
            .config(json!({"gateway": {"auth": {"mode": "password", "password": "hunter2"}}})),
    );
    let mut ws = Ws::open(&g.addr());
    assert_eq!(ws.connect(json!({"password": "hunter2"}), 3, 4)["ok"], true);
    let mut ws = Ws::open(&g.addr());
    let res = ws.connect(json!({"password": "nope"}), 3, 4);
    assert_eq!(res["error"]["details"]["code"], "AUTH_PASSWORD_MISMATCH");
    assert_eq!(ws.close_code(), Some(1008));
}

fn keel(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = keel_cli(args, [("KEEL_STATE_DIR", dir)]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(&f, r#"{"gateway":{"port":"x","bind":"moon","drainGraceMs":-1},"hooks":{"enabled":true},"wat":1}"#).unwrap();
    let (code, out) = keel(&["check", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 78, "{out}");
    for needle in [
        "gateway.port",
        "gateway.bind",
        "gateway.drainGraceMs",
        "hooks",
        "wat: unknown key",
        "4 problem(s)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    std::fs::write(&f, r#"{"hooks":{"enabled":true}}"#).unwrap();
    let (code, out) = keel(&["check", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "a disabled feature is a problem, not fatal: {out}");
    std::fs::write(&f, r#"{"gateway":{"port":18790}}"#).unwrap();
    let (code, out) = keel(&["check", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{out}");
    let (code, out) = keel(&["check", "--config", "/nonexistent/keel.json"], dir.path());
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("cannot read"));
}

#[test]
fn serve_refuses_a_fatal_config_with_ex_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.json");
    std::fs::write(&f, "{ not json").unwrap();
    let (code, out) = keel(
        &["serve", "--port", "0", "--config", f.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("not valid JSON"), "{out}");
}

#[test]
fn version_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = keel(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(out.starts_with("keel "));
    let (code, out) = keel(&["frobnicate"], dir.path());
    assert_eq!(code, 2);
    assert!(out.contains("unknown command"));
}

#[test]
fn status_prints_a_summary_of_the_running_gateway() {
    let g = Gateway::start(Opts::default());
    let port = g.port.to_string();
    let (code, out) = keel(
        &[
            "status",
            "--state-dir",
            g.state().to_str().unwrap(),
            "--port",
            &port,
        ],
        g.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("at 127.0.0.1:{port}")), "{out}");
    assert!(out.contains("serving — ready"), "{out}");
    assert!(out.contains("pressure  normal"), "{out}");
    let (code, out) = keel(
        &[
            "status",
            "--state-dir",
            g.state().to_str().unwrap(),
            "--port",
            "1",
        ],
        g.dir.path(),
    );
    assert_eq!(code, 1);
    assert!(out.contains("cannot reach the gateway"), "{out}");
}

#[test]
fn inbound_webhook_accounts_are_checked_and_their_secrets_never_shown() {
    let channels = json!({
        "slack": {"mode": "http", "botToken": "xoxb-test", "signingSecret": "slack-signing-secret-1",
                  "accounts": {"a": {}, "b": {}}},
        "feishu": {"connectionMode": "webhook", "appId": "cli_x", "appSecret": "feishu-app-secret",
                   "verificationToken": "${KEEL_TEST_FEISHU_VTOK}", "encryptKey": "feishu-encrypt-key-1"},
    });
    let g = Gateway::start(
        Opts::default()
            .env("KEEL_TEST_FEISHU_VTOK", "feishu-vtok-from-env")
            .config(json!({
                "channels": channels,
                // A secret keel resolved is scrubbed wherever it appears.
                "agents": {"list": [{"id": "main", "systemPrompt": "never say feishu-vtok-from-env"}]},
            })),
    );
    // Two Slack accounts on the default /slack/events: both disabled, and /readyz says why.
    let r = g.get("/readyz");
    assert_eq!(r.status, 503);
    let failing = r.json()["failing"].to_string();
    for account in ["a", "b"] {
        assert!(
            failing.contains(&format!("channels.slack.accounts.{account}.webhookPath")),
            "{failing}"
        );
    }
    assert!(failing.contains("/slack/events"), "{failing}");
    assert!(!failing.contains("channels.feishu"), "{failing}");
    let c = g.rpc("config.get", json!({})).json();
    let shown = c.to_string();
    for secret in [
        "slack-signing-secret-1",
        "feishu-encrypt-key-1",
        "feishu-vtok-from-env",
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
        assert!(!g.log_text().contains(secret), "{secret} logged");
    }
    let cfg = &c["payload"]["config"]["channels"];
    assert_eq!(cfg["slack"]["signingSecret"], "__OPENCLAW_REDACTED__");
    assert_eq!(cfg["feishu"]["encryptKey"], "__OPENCLAW_REDACTED__");
    assert_eq!(
        cfg["feishu"]["verificationToken"],
        "${KEEL_TEST_FEISHU_VTOK}"
    );

    // `keel check` names the clash; with distinct paths the file is clean.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("keel.json");
    std::fs::write(&f, json!({"channels": channels}).to_string()).unwrap();
    let (code, out) = keel(&["check", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("give each account its own"), "{out}");
    let mut fixed = channels.clone();
    fixed["slack"]["accounts"] =
        json!({"a": {"webhookPath": "/slack/a"}, "b": {"webhookPath": "/slack/b"}});
    fixed["feishu"]["verificationToken"] = json!("plain-token");
    std::fs::write(&f, json!({"channels": fixed}).to_string()).unwrap();
    let (code, out) = keel(&["check", "--config", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{out}");
}
