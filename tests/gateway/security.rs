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

/// Sends raw bytes from the loopback address `127.0.<n / 250>.<n % 250 + 2>` and reads one
/// response: each unauthenticated request gets its own peer address, so the per-IP failure
/// limit (20 a minute) never answers in place of the check under test.
fn http_from(n: u32, addr: &str, raw: &[u8]) -> Response {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let src = std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 2) as u8),
        0,
    );
    let dst: std::net::SocketAddr = addr.parse().unwrap();
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &src).unwrap();
    connect(&fd, &dst).unwrap();
    let mut s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(BOUND)).unwrap();
    std::io::Write::write_all(&mut s, raw).unwrap();
    if raw.starts_with(b"HEAD ") {
        // No body follows whatever Content-Length says; the server closes.
        let mut all = String::new();
        std::io::Read::read_to_string(&mut s, &mut all).unwrap();
        let status = all.split_whitespace().nth(1).unwrap().parse().unwrap();
        return Response {
            status,
            head: all,
            body: Vec::new(),
        };
    }
    read_response(&mut s).expect("a response")
}

/// Every file under `dir` (recursively) with its length.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for p in files(dir) {
        if p.is_dir() {
            out.extend(tree(&p));
        } else {
            out.push((p.clone(), std::fs::metadata(&p).map_or(0, |m| m.len())));
        }
    }
    out.sort();
    out
}

const HOOK_TOKEN: &str = "hook-token-7Qp2";

#[test]
fn every_route_and_method_needs_the_token() {
    let g = Gateway::start(Opts::hooks().config(json!({
        "hooks": {"enabled": true, "token": HOOK_TOKEN, "path": "/hooks"},
    })));
    // The method table as the gateway announces it, plus the hidden test hooks it serves
    // here: a method added later is covered without touching this test.
    let mut ws = Ws::open(&g.addr());
    let hello = ws.connect(json!({"token": g.token}), 3, 4);
    let mut methods: Vec<String> = hello["payload"]["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert!(methods.len() >= 10, "{methods:?}");
    methods.extend(["keel.test.busy".into(), "keel.test.ballast".into()]);
    methods.push("no.such.method".into());
    ws.sock.close(None).ok();

    let before = (
        tree(&g.state()),
        g.metric("keel_jobs_total{outcome=\"ok\"}"),
    );
    let near_miss = format!("{}x", &g.token[..g.token.len() - 1]);
    let presented = [
        String::new(),
        "Authorization: Bearer wrong\r\n".to_string(),
        format!("Authorization: Bearer {near_miss}\r\n"),
        format!("Authorization: Bearer {}\r\n", g.token.to_uppercase()),
        format!("Authorization: Basic {}\r\n", g.token),
        format!("Authorization: Bearer {HOOK_TOKEN}\r\n"),
        format!("x-openclaw-token: {}\r\n", g.token),
    ];
    let mut requests: Vec<String> = Vec::new();
    for m in &methods {
        let body = r#"{"message":"hi","idempotencyKey":"k","sessionKey":"s","mib":64,"ms":10,"channel":"feishu","to":"ou_x","id":"x"}"#;
        for auth in &presented {
            requests.push(format!(
                "POST /api/rpc/{m} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ));
        }
    }
    for method in ["GET", "HEAD"] {
        for auth in &presented {
            requests.push(format!(
                "{method} /metrics HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"
            ));
        }
    }
    for (n, raw) in requests.iter().enumerate() {
        let r = http_from(n as u32, &g.addr(), raw.as_bytes());
        let what = raw.lines().next().unwrap();
        assert_eq!(
            r.status,
            401,
            "{what} ({:?}): {}",
            raw.lines().nth(2),
            r.text()
        );
        assert!(r.header("www-authenticate").is_some(), "{what}");
        if !what.starts_with("HEAD") {
            let e = &r.json()["error"];
            let code = e["details"]["code"].as_str().unwrap();
            assert!(
                matches!(code, "AUTH_REQUIRED" | "AUTH_TOKEN_MISMATCH"),
                "{what}: {e}"
            );
            assert!(
                !r.text().contains(&g.token),
                "the answer never echoes the token"
            );
        }
    }
    // Hooks have their own token: nothing else opens them, the gateway token included.
    let body = r#"{"message":"hi","text":"hi"}"#;
    let hook_auth = [
        String::new(),
        format!("Authorization: Bearer {}\r\n", g.token),
        format!("x-openclaw-token: {}\r\n", g.token),
        "x-openclaw-token: wrong\r\n".to_string(),
    ];
    let base = requests.len() as u32;
    for (i, (route, auth)) in ["/hooks/agent", "/hooks/wake"]
        .iter()
        .flat_map(|r| hook_auth.iter().map(move |a| (r, a)))
        .enumerate()
    {
        let raw = format!(
            "POST {route} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = http_from(base + i as u32, &g.addr(), raw.as_bytes());
        assert_eq!(r.status, 401, "{route} {auth:?}: {}", r.text());
    }
    // Over WebSocket nothing is served before `connect`: any other first request is refused
    // and the socket closed.
    for m in &methods {
        let mut ws = Ws::open(&g.addr());
        let res = ws.call(m, json!({}));
        assert_eq!(res["ok"], false, "{m}: {res}");
        assert_eq!(ws.close_code(), Some(1008), "{m}");
    }

    // Nothing happened: no job ran, nothing was written.
    let after = (
        tree(&g.state()),
        g.metric("keel_jobs_total{outcome=\"ok\"}"),
    );
    assert_eq!(before, after);
    assert!(
        g.metric("keel_auth_failures_total").unwrap() >= requests.len() as f64,
        "every refusal is counted"
    );
    // The probes answer without a token and say nothing secret.
    for path in ["/healthz", "/livez", "/readyz"] {
        let r = g.get(path);
        assert_eq!(r.status, 200, "{path}");
        let text = r.text();
        assert!(
            !text.contains(&g.token) && !text.contains(HOOK_TOKEN),
            "{path}: {text}"
        );
        assert!(
            !text.contains(&g.state().display().to_string()),
            "{path}: {text}"
        );
    }
}
