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
/// response: each unauthenticated request gets its own peer address, so the per-address
/// failure limit (should a test turn the loopback exemption off) never answers in place of the
/// check under test.
fn http_from(n: u32, addr: &str, raw: &[u8]) -> Response {
    let src = std::net::Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 2) as u8);
    let mut s = connect_from(src, addr);
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

    // Boot's own background work (the usage index, its prewarm, the dashboard's files) done
    // first: only what the refused requests might start is compared.
    assert!(
        g.wait_log_any(&["usage index up to date", "usage index built"], BOUND)
            .is_some(),
        "{}",
        g.log_text()
    );
    assert!(
        g.wait_log("control UI:", BOUND).is_some(),
        "{}",
        g.log_text()
    );
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 0.0);
    g.wait_metric("keel_jobs_in_flight{pool=\"io\"}", 0.0);
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
                matches!(code, "AUTH_TOKEN_MISSING" | "AUTH_TOKEN_MISMATCH"),
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
        g.metric("keel_auth_failures_total").unwrap()
            + g.metric("keel_auth_missing_total").unwrap()
            >= requests.len() as f64,
        "every refusal is counted (a wrong secret as a failure, none as missing)"
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

/// An API that answers every request with 500 and the whole request echoed back (path,
/// headers, body): the worst case for a secret in an error message.
fn echoing_api() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(BOUND)).ok();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut req = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                req.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            req.push_str(&String::from_utf8_lossy(&body));
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let text = json!({"ok": false, "code": 500, "msg": format!("bad request: {req}"), "error": {"message": req}}).to_string();
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, seen)
}

/// Every file under `dir` and every directory below it, with its permission bits.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for p in files(dir) {
        let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777;
        out.push((p.clone(), mode));
        if p.is_dir() {
            out.extend(modes(&p));
        }
    }
    out
}

/// Asserts every file is 0600 and every directory 0700 (`skip`: paths the test made itself).
#[track_caller]
fn assert_private(dir: &Path, skip: &[&Path]) {
    let all = modes(dir);
    assert!(all.len() > 3, "{all:?}");
    for (p, mode) in all {
        if skip.contains(&p.as_path()) {
            continue;
        }
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
    }
}

const GW_TOKEN: &str = "SECRET-gw-4f9c2a7e1b";
const API_KEY: &str = "SECRET-api-8d3e6f0a2c";
const TG_TOKEN: &str = "123456789:SECRET-tg-Zq7Wm1";
const FS_SECRET: &str = "SECRET-fs-k3Xw9p";
const WH_SECRET: &str = "SECRET-wh-Lr5t2n";
const WH_PATH: &str = "SECRET-whpath-Hh8Kd";

#[test]
fn secrets_stay_out_of_logs_dumps_status_and_state_files_which_are_private() {
    use crate::fake_provider::{Behavior, FakeProvider};
    let provider = FakeProvider::start("openai-completions");
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {API_KEY}"}}}}"#);
    for _ in 0..4 {
        provider.push(Behavior::status(401, &echo));
    }
    let (api, hits) = echoing_api();
    let config = json!({
        "gateway": {"auth": {"mode": "token", "token": GW_TOKEN}},
        "hooks": {"enabled": true, "token": HOOK_TOKEN, "path": "/hooks"},
        "models": {"providers": {"p": {
            "baseUrl": provider.base_url(), "apiKey": API_KEY, "api": "openai-completions",
            "models": [{"id": "m"}],
        }}},
        "agents": {"defaults": {"model": {"primary": "p/m"}}},
        "channels": {
            "telegram": {"baseUrl": api, "botToken": TG_TOKEN, "receive": false},
            "feishu": {"baseUrl": api, "appId": "cli_a1b2c3", "appSecret": FS_SECRET},
            "webhook": {"baseUrl": format!("{api}/{WH_PATH}"), "secret": WH_SECRET},
        },
    });
    // A mask that would leave everything world-writable: keel must set its own modes.
    let g = Gateway::start(Opts::default().config(config.clone()).umask(0));
    let secrets = [
        GW_TOKEN,
        HOOK_TOKEN,
        API_KEY,
        TG_TOKEN,
        "SECRET-tg",
        FS_SECRET,
        WH_SECRET,
        WH_PATH,
    ];
    let token = GW_TOKEN;

    // Near misses: a token one character off, over HTTP and WebSocket; a wrong hook token.
    let near = format!("{}X", &token[..token.len() - 1]);
    assert_eq!(rpc_with(&g.addr(), &near, "status", &json!({})).status, 401);
    let mut ws = Ws::open(&g.addr());
    ws.connect(json!({"token": near}), 3, 4);
    let wrong_hook = format!(
        "POST /hooks/wake HTTP/1.1\r\nHost: t\r\nx-openclaw-token: {near}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(g.http(&wrong_hook).status, 401);

    // A run whose provider refuses the key and echoes it; sends every channel refuses,
    // echoing the request (URL, headers, body) back.
    let mut ws = Ws::open(&g.addr());
    assert_eq!(ws.connect(json!({"token": token}), 3, 4)["ok"], true);
    let res = ws.call(
        "agent",
        json!({"message": "hi", "idempotencyKey": "r1", "sessionKey": "agent:main:main"}),
    );
    assert_eq!(res["ok"], true, "{res}");
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    let done = eventually(BOUND, || {
        let r = rpc_with(
            &g.addr(),
            token,
            "agent.wait",
            &json!({"runId": run_id, "timeoutMs": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let p = r.json()["payload"].clone();
        (p["status"] != "running" && p["status"] != "timeout").then_some(p)
    });
    assert_eq!(done["status"], "error", "{done}");
    assert!(!provider.requests().is_empty());
    for (channel, to) in [
        ("telegram", "42"),
        ("feishu", "ou_abcdefghij12"),
        ("webhook", "ops"),
    ] {
        let r = rpc_with(
            &g.addr(),
            token,
            "send",
            &json!({"channel": channel, "to": to, "message": "hi", "idempotencyKey": channel}),
        );
        assert_eq!(r.status, 200, "{channel}: {}", r.text());
    }
    eventually(BOUND, || {
        (hits.load(std::sync::atomic::Ordering::SeqCst) >= 3).then_some(())
    });
    let list = eventually(BOUND, || {
        let l = rpc_with(&g.addr(), token, "delivery.list", &json!({})).json()["payload"].clone();
        let errs = l["entries"]
            .as_array()?
            .iter()
            .filter(|e| e["lastError"].is_string())
            .count();
        (errs >= 3).then_some(l)
    });

    // A dump, a reload refused for a bad value (the secrets are in that file too), status.
    g.signal("USR1");
    let dump_line = g.wait_log("diagnostic dump written to", BOUND).unwrap();
    let mut bad = config.clone();
    bad["gateway"]["port"] = json!("not-a-port");
    std::fs::write(g.state().join("keel.json"), bad.to_string()).unwrap();
    g.signal("HUP");
    g.wait_log("refused; keeping the running config", BOUND)
        .unwrap();
    let status = rpc_with(&g.addr(), token, "status", &json!({})).text();
    let health = rpc_with(&g.addr(), token, "health", &json!({})).text();
    let metrics = http_from(0, &g.addr(), format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes()).text();
    std::fs::write(g.state().join("keel.json"), config.to_string()).unwrap();
    let port = g.port.to_string();
    let state = g.state().display().to_string();
    let cli: Vec<String> = [&[][..], &["--json"][..]]
        .iter()
        .map(|extra| {
            let args = [
                &["status", "--port", &port, "--state-dir", &state][..],
                extra,
            ]
            .concat();
            let (code, out) = keel_in(&g.state(), &args, &[]);
            assert_eq!(code, 0, "{out}");
            out
        })
        .collect();

    let mut texts: Vec<(String, String)> = vec![
        ("log".into(), g.log_text()),
        ("status".into(), status),
        ("health".into(), health),
        ("metrics".into(), metrics),
        ("delivery.list".into(), list.to_string()),
        ("keel status".into(), cli.join("\n")),
    ];
    assert!(dump_line.contains("\"pools\""), "{dump_line}");
    let config_path = g.state().join("keel.json");
    for (p, _) in tree(&g.state()) {
        if p != config_path {
            let bytes = std::fs::read(&p).unwrap();
            texts.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    assert!(
        texts.iter().any(|(p, _)| p.contains("diagnostics")),
        "the dump is among the files checked"
    );
    assert!(
        texts.iter().any(|(p, _)| p.ends_with(".jsonl")),
        "a transcript too"
    );
    for (what, text) in &texts {
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
        }
    }
    assert_private(&g.state(), &[&config_path, &g.state()]);
}

#[test]
fn password_mode_keeps_the_password_out_of_logs_and_status() {
    let pw = "SECRET-pw-Vb6Nq0";
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"auth": {"mode": "password", "password": pw}},
    })));
    let mut ws = Ws::open(&g.addr());
    let res = ws.connect(json!({"password": format!("{pw}-")}), 3, 4);
    assert_eq!(res["error"]["details"]["code"], "AUTH_PASSWORD_MISMATCH");
    let mut ws = Ws::open(&g.addr());
    assert_eq!(ws.connect(json!({"password": pw}), 3, 4)["ok"], true);
    let status = ws.call("status", json!({})).to_string();
    g.signal("USR1");
    g.wait_log("diagnostic dump written to", BOUND).unwrap();
    let port = g.port.to_string();
    let state = g.state().display().to_string();
    let (code, out) = keel_in(
        &g.state(),
        &["status", "--port", &port, "--state-dir", &state],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let dumps: String = files(&g.state().join("diagnostics"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(!dumps.is_empty());
    for (what, text) in [
        ("log", g.log_text()),
        ("status", status),
        ("keel status", out),
        ("dump", dumps),
    ] {
        assert!(
            !text.contains(pw),
            "the password leaked into {what}:\n{text}"
        );
    }
}

#[test]
fn a_state_directory_keel_creates_is_private_whatever_the_umask() {
    let g = Gateway::start(Opts::hooks().umask(0));
    // A session transcript, the usage index, a dump: then every path keel made.
    let mut ws = g.ws();
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "u1"}),
    );
    assert_eq!(res["ok"], true, "{res}");
    g.signal("USR1");
    g.wait_log("diagnostic dump written to", BOUND).unwrap();
    g.signal("TERM");
    let mut g = g;
    g.wait_exit(BOUND).expect("exits");
    assert!(g.state().join("gateway.token").exists());
    assert_private(&g.state(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(g.state()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory itself");
}

/// A browser page may open a WebSocket only from keel's own address (where only this machine
/// or its private network reaches) or from an origin listed in
/// `gateway.controlUi.allowedOrigins`: a page of another site is refused before its secret is
/// looked at, so it can neither guess the token nor lock the real dashboard out. Clients that
/// send no `Origin` (the CLI) are not browsers and connect as before.
#[test]
fn a_web_page_of_another_site_cannot_open_the_gateway() {
    let local = std::net::Ipv4Addr::LOCALHOST;
    let g = Gateway::start(Opts::default());
    let addr = g.addr();
    let connect = |origin: Option<&str>, token: &str| {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let mut ws = Ws::open_from(local, &addr, &headers);
        let res = ws.connect(json!({"token": token}), 3, 4);
        (res, ws)
    };
    // The dashboard keel serves: its page's origin is keel's own address.
    let own = format!("http://{addr}");
    let (res, _ws) = connect(Some(&own), &g.token);
    assert_eq!(res["ok"], true, "{res}");
    // A local dev server on another port, from this machine.
    let (res, _ws) = connect(Some("http://localhost:5173"), &g.token);
    assert_eq!(res["ok"], true, "{res}");
    // No Origin: not a browser.
    let (res, _ws) = connect(None, &g.token);
    assert_eq!(res["ok"], true, "{res}");
    // Another site, even with the right token, and with wrong ones many times over.
    let (res, mut ws) = connect(Some("https://evil.example"), &g.token);
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .contains("origin not allowed"),
        "{res}"
    );
    assert_eq!(
        res["error"]["details"]["code"],
        "CONTROL_UI_ORIGIN_NOT_ALLOWED"
    );
    assert_eq!(ws.close_code(), Some(1008));
    for _ in 0..12 {
        let (res, _) = connect(Some("https://evil.example"), "guess");
        assert_eq!(
            res["error"]["details"]["code"],
            "CONTROL_UI_ORIGIN_NOT_ALLOWED"
        );
    }
    assert_eq!(g.metric("keel_ws_origin_refused_total"), Some(13.0));
    assert_eq!(g.metric("keel_auth_failures_total"), Some(0.0));
    // Not locked out: the dashboard still connects.
    let (res, _ws) = connect(Some(&own), &g.token);
    assert_eq!(res["ok"], true, "{res}");
    assert!(
        g.wait_log("with Origin \"https://evil.example\"", BOUND)
            .is_some()
    );

    // Listed, it may connect.
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"controlUi": {"allowedOrigins": ["https://control.example.com"]}},
    })));
    let addr = g.addr();
    let mut ws = Ws::open_from(local, &addr, &[("Origin", "https://control.example.com")]);
    let res = ws.connect(json!({"token": g.token}), 3, 4);
    assert_eq!(res["ok"], true, "{res}");
    let mut ws = Ws::open_from(local, &addr, &[("Origin", "https://other.example.com")]);
    let res = ws.connect(json!({"token": g.token}), 3, 4);
    assert_eq!(res["ok"], false, "{res}");
}
