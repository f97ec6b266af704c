//! The OpenClaw gateway protocol over WebSocket.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn challenge_then_hello_ok_with_exactly_the_required_keys() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    assert_eq!(keys(&ws.challenge), ["event", "payload", "type"]);
    assert_eq!(ws.challenge["event"], "connect.challenge");
    assert!(ws.challenge["payload"]["nonce"].as_str().unwrap().len() >= 16);
    assert!(ws.challenge["payload"]["ts"].as_u64().unwrap() > 1_700_000_000_000);
    let res = ws.connect(json!({"token": g.token}), 4, 4);
    assert_eq!(keys(&res), ["id", "ok", "payload", "type"]);
    let h = &res["payload"];
    assert_eq!(
        keys(h),
        [
            "auth", "features", "policy", "protocol", "server", "snapshot", "type"
        ]
    );
    assert_eq!(h["type"], "hello-ok");
    assert_eq!(h["protocol"], 4);
    assert_eq!(keys(&h["server"]), ["connId", "version"]);
    assert_eq!(keys(&h["features"]), ["events", "methods"]);
    let methods: Vec<&str> = h["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        methods.contains(&"health") && methods.contains(&"status"),
        "{methods:?}"
    );
    assert!(
        !methods.iter().any(|m| m.starts_with("keel.test")),
        "test hooks stay hidden"
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
    assert_eq!(keys(&h["snapshot"]["stateVersion"]), ["health", "presence"]);
    assert_eq!(keys(&h["auth"]), ["role", "scopes"]);
    assert_eq!(h["auth"]["scopes"], json!(["operator.read"]));
    assert_eq!(
        keys(&h["policy"]),
        ["maxBufferedBytes", "maxPayload", "tickIntervalMs"]
    );
    assert_eq!(h["policy"]["tickIntervalMs"], 30_000);

    let health = ws.call("health", json!({}));
    assert_eq!(health["ok"], true);
    let p = &health["payload"];
    for k in [
        "ok",
        "uptimeMs",
        "pressure",
        "eventLoop",
        "queues",
        "rssBytes",
        "draining",
    ] {
        assert!(!p[k].is_null(), "health lacks {k}: {p}");
    }
    let status = ws.call("status", json!({}));
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["payload"]["phase"], "serving");
    let unknown = ws.call("no.such.method", json!({}));
    assert_eq!(unknown["ok"], false);
    assert_eq!(unknown["error"]["code"], "INVALID_REQUEST");
    assert_eq!(
        unknown["error"]["message"],
        "unknown method: no.such.method"
    );
}

#[test]
fn protocol_three_is_negotiated_for_older_clients() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    let device = json!({"id": "dev", "publicKey": "pk", "signature": "sig", "signedAt": 1, "nonce": ws.challenge["payload"]["nonce"]});
    let id = ws.send_req(
        "connect",
        json!({"minProtocol": 3, "maxProtocol": 3, "client": {"id": "webchat", "mode": "ui"}, "auth": {"token": g.token}, "device": device}),
    );
    let res = ws.res(&id);
    assert_eq!(res["payload"]["protocol"], 3, "{res}");
}

#[test]
fn wrong_token_is_refused_with_1008() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    let res = ws.connect(json!({"token": "not-the-token"}), 3, 4);
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert_eq!(res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized")
    );
    assert_eq!(ws.close_code(), Some(1008));
}

#[test]
fn a_first_frame_that_is_not_connect_is_refused_with_1008() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    let id = ws.send_req("health", json!({}));
    let res = ws.res(&id);
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert_eq!(ws.close_code(), Some(1008));
    let mut ws = Ws::open(&g.addr());
    ws.send_text("this is not json");
    assert_eq!(ws.close_code(), Some(1008));
}

#[test]
fn protocol_mismatch_is_refused_with_1002() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    let res = ws.connect(json!({"token": g.token}), 1, 2);
    assert_eq!(res["error"]["message"], "protocol mismatch");
    let d = &res["error"]["details"];
    assert_eq!(d["code"], "PROTOCOL_MISMATCH");
    assert_eq!(d["expectedProtocol"], 4);
    assert_eq!(d["clientMinProtocol"], 1);
    assert_eq!(d["clientMaxProtocol"], 2);
    assert_eq!(ws.close_code(), Some(1002));
}

#[test]
fn an_oversized_pre_auth_frame_is_refused_with_1008() {
    let g = Gateway::start(Opts::default());
    let mut ws = Ws::open(&g.addr());
    let big = json!({"type": "req", "id": "1", "method": "connect", "params": {"pad": "x".repeat(70 << 10)}});
    ws.send_text(&big.to_string());
    assert_eq!(ws.close_code(), Some(1008));
    // After auth, the same size is fine.
    let mut ws = g.ws();
    let res = ws.call("health", json!({"pad": "x".repeat(70 << 10)}));
    assert_eq!(res["ok"], true);
}

#[test]
fn the_handshake_times_out_and_closes_the_socket() {
    let g = Gateway::start(Opts::default().env("KEEL_HANDSHAKE_TIMEOUT_MS", "1000"));
    let t0 = Instant::now();
    let mut ws = Ws::open(&g.addr());
    assert_eq!(ws.close_code(), Some(1008));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_eq!(g.metric("keel_ws_handshake_timeouts_total"), Some(1.0));
}

#[test]
fn an_invalid_handshake_timeout_is_logged_and_ignored() {
    let g = Gateway::start(Opts::default().env("OPENCLAW_HANDSHAKE_TIMEOUT_MS", "soon"));
    assert!(
        g.wait_log("OPENCLAW_HANDSHAKE_TIMEOUT_MS=\"soon\"", BOUND)
            .is_some()
    );
    // The default (15 s) applies: a client that waits a moment can still connect.
    let mut ws = Ws::open(&g.addr());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(ws.connect(json!({"token": g.token}), 3, 4)["ok"], true);
}

#[test]
fn ticks_arrive_with_sequence_numbers() {
    let g = Gateway::start(Opts::default().config(json!({"gateway": {"tickIntervalMs": 1000}})));
    let mut ws = g.ws();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        match ws.next() {
            Got::Frame(f) if f["event"] == "tick" => {
                assert!(f["payload"]["ts"].as_u64().is_some());
                seqs.push(f["seq"].as_u64().unwrap());
            }
            Got::Frame(_) => {}
            Got::Closed(c) => panic!("closed {c:?}"),
        }
    }
    assert_eq!(seqs[1], seqs[0] + 1);
}

#[test]
fn a_run_outlives_the_socket_that_started_it() {
    let g = Gateway::start(Opts::hooks());
    let ok = |g: &Gateway| g.metric("keel_jobs_total{outcome=\"ok\"}").unwrap();
    let before = ok(&g);
    let mut ws = g.ws();
    ws.send_req("keel.test.busy", json!({"ms": 300, "sleep": true}));
    drop(ws);
    // The job finishes and is counted even though nobody is there to read its reply.
    eventually(BOUND, || (ok(&g) == before + 1.0).then_some(()));
}

#[test]
fn requests_after_connect_are_validated() {
    let g = Gateway::start(Opts::default());
    let mut ws = g.ws();
    let again = ws.call("connect", json!({"minProtocol": 3, "maxProtocol": 4}));
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already connected")
    );
    ws.send_text(r#"{"type":"req","id":"x","method":"health","params":"nope"}"#);
    let res = ws.res("x");
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    // Still usable.
    assert_eq!(ws.call("health", json!({}))["ok"], true);
}

#[test]
fn a_reply_larger_than_the_buffer_limit_arrives_whole() {
    let g = Gateway::start(
        Opts::hooks().config(json!({"gateway": {"limits": {"maxBufferedBytes": 65536}}})),
    );
    let mut ws = g.ws();
    let res = ws.call("keel.test.busy", json!({"ms": 1, "replyBytes": 3 << 20}));
    assert_eq!(res["ok"], true);
    assert_eq!(res["payload"]["padding"].as_str().unwrap().len(), 3 << 20);
    // The connection is still in good order.
    assert_eq!(ws.call("health", json!({}))["ok"], true);
}

#[test]
fn a_client_that_never_reads_is_closed_as_a_slow_consumer() {
    let g = Gateway::start(
        Opts::hooks().config(json!({"gateway": {"limits": {"maxBufferedBytes": 65536}}})),
    );
    let mut ws = g.ws();
    // Ask for far more than the socket buffers hold, and read nothing meanwhile.
    for _ in 0..40 {
        ws.send_req("keel.test.busy", json!({"ms": 1, "replyBytes": 1 << 20}));
    }
    eventually(BOUND, || {
        (g.metric("keel_slow_consumers_closed_total") == Some(1.0)).then_some(())
    });
    // What was written before the limit still arrives, then the close.
    assert_eq!(ws.close_code(), Some(1008));
    assert_eq!(g.get("/healthz").status, 200);
}

/// Every method's params are typed: a param of the wrong type is `INVALID_REQUEST` naming the
/// field, over WebSocket and HTTP alike — never silently taken as "not given" or as a default.
/// Each case's other params are valid, so only the wrong type can refuse it.
#[test]
fn a_param_of_the_wrong_type_is_refused_naming_it_over_websocket_and_http() {
    const HOOK_TOKEN: &str = "hook-token-wrong-types";
    let g = Gateway::start(Opts::hooks().config(json!({
        "hooks": {"enabled": true, "token": HOOK_TOKEN, "path": "/hooks"},
    })));
    let send = json!({"channel": "feishu", "to": "ou_x", "message": "hi", "idempotencyKey": "k"});
    let with = |base: &Value, extra: Value| {
        let mut p = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let chat = json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "c1"});
    let agent = json!({"message": "hi", "idempotencyKey": "a1"});
    let mut cases: Vec<(&str, Value, &str)> = vec![
        ("sessions.list", json!({"limit": "5"}), "limit"),
        (
            "sessions.list",
            json!({"activeMinutes": true}),
            "activeMinutes",
        ),
        ("sessions.list", json!({"agentId": 7}), "agentId"),
        ("sessions.list", json!({"search": 5}), "search"),
        ("sessions.list", json!({"label": ["x"]}), "label"),
        ("sessions.usage", json!({"limit": "5"}), "limit"),
        ("sessions.usage", json!({"days": "7"}), "days"),
        ("sessions.usage", json!({"cursor": 10}), "cursor"),
        ("sessions.usage", json!({"key": 1}), "key"),
        ("sessions.usage", json!({"agentScope": true}), "agentScope"),
        (
            "sessions.usage",
            json!({"startDate": 20260101}),
            "startDate",
        ),
        ("sessions.usage", json!({"mode": 1}), "mode"),
        ("usage.cost", json!({"days": "7"}), "days"),
        ("usage.cost", json!({"endDate": {}}), "endDate"),
        ("usage.cost", json!({"utcOffset": 5}), "utcOffset"),
        ("usage.cost", json!({"agentId": false}), "agentId"),
        ("chat.send", with(&chat, json!({"message": 5})), "message"),
        (
            "chat.send",
            with(&chat, json!({"sessionKey": 5})),
            "sessionKey",
        ),
        (
            "chat.send",
            with(&chat, json!({"idempotencyKey": 5})),
            "idempotencyKey",
        ),
        ("chat.send", with(&chat, json!({"to": true})), "to"),
        ("chat.send", with(&chat, json!({"channel": 5})), "channel"),
        ("agent", with(&agent, json!({"deliver": "yes"})), "deliver"),
        ("agent", with(&agent, json!({"agentId": 5})), "agentId"),
        (
            "agent",
            with(&agent, json!({"sessionKey": []})),
            "sessionKey",
        ),
        ("agent", with(&agent, json!({"threadId": {}})), "threadId"),
        (
            "agent",
            with(&agent, json!({"accountId": true})),
            "accountId",
        ),
        (
            "agent.wait",
            json!({"runId": "r", "timeoutMs": "5"}),
            "timeoutMs",
        ),
        (
            "agent.wait",
            json!({"runId": "r", "timeoutMs": -1}),
            "timeoutMs",
        ),
        ("agent.wait", json!({"runId": 5}), "runId"),
        ("chat.abort", json!({"runId": 5}), "runId"),
        (
            "chat.history",
            json!({"sessionKey": "agent:main:main", "limit": "5"}),
            "limit",
        ),
        ("chat.history", json!({"sessionKey": 5}), "sessionKey"),
        ("sessions.subscribe", json!({"sessionKey": 5}), "sessionKey"),
        (
            "sessions.unsubscribe",
            json!({"sessionKey": []}),
            "sessionKey",
        ),
        ("send", with(&send, json!({"to": true})), "to"),
        ("send", with(&send, json!({"channel": 5})), "channel"),
        ("send", with(&send, json!({"accountId": []})), "accountId"),
        ("send", with(&send, json!({"threadId": {}})), "threadId"),
        (
            "send",
            with(&send, json!({"idempotencyKey": 5})),
            "idempotencyKey",
        ),
        ("sessions.usage", json!({"timeZone": 5}), "timeZone"),
        ("sessions.usage", json!({"groupBy": []}), "groupBy"),
        ("sessions.usage", json!({"creatorKey": 5}), "creatorKey"),
        ("sessions.usage.timeseries", json!({"key": 5}), "key"),
        (
            "sessions.usage.logs",
            json!({"key": "agent:main:main", "limit": "5"}),
            "limit",
        ),
        ("delivery.list", json!({"limit": "5"}), "limit"),
        ("delivery.list", json!({"state": 5}), "state"),
        ("delivery.retry", json!({"id": 5}), "id"),
        ("delivery.drop", json!({"id": true}), "id"),
        // The dashboard's Chat page.
        (
            "chat.startup",
            json!({"sessionKey": "agent:main:main", "limit": "80"}),
            "limit",
        ),
        ("chat.startup", json!({"sessionKey": true}), "sessionKey"),
        ("sessions.describe", json!({"key": 5}), "key"),
        ("chat.metadata", json!({"agentId": 5}), "agentId"),
        ("models.list", json!({"sessionKey": []}), "sessionKey"),
        (
            "sessions.messages.subscribe",
            json!({"key": "agent:main:main", "includeApprovals": "yes"}),
            "includeApprovals",
        ),
        ("sessions.messages.unsubscribe", json!({"key": {}}), "key"),
        ("progressCard.get", json!({"sessionKey": 1}), "sessionKey"),
        (
            "sessions.abort",
            json!({"key": "agent:main:main", "runId": 7}),
            "runId",
        ),
        (
            "chat.history",
            json!({"sessionKey": "agent:main:main", "maxBytes": -1}),
            "maxBytes",
        ),
        // The scheduler.
        ("cron.list", json!({"limit": "5"}), "limit"),
        (
            "cron.list",
            json!({"includeDisabled": "yes"}),
            "includeDisabled",
        ),
        ("cron.get", json!({"id": 5}), "id"),
        ("cron.runs", json!({"limit": "5"}), "limit"),
        ("cron.runs", json!({"statuses": "ok"}), "statuses"),
        (
            "cron.add",
            json!({"name": 5, "schedule": {"kind": "every", "everyMs": 60000},
                   "payload": {"kind": "agentTurn", "message": "hi"}}),
            "name",
        ),
        (
            "cron.add",
            json!({"name": "n", "schedule": {"kind": "every", "everyMs": "1m"},
                   "payload": {"kind": "agentTurn", "message": "hi"}}),
            "schedule.everyMs",
        ),
        ("cron.update", json!({"id": "x", "patch": 5}), "patch"),
        ("cron.remove", json!({"id": []}), "id"),
        ("cron.run", json!({"id": "x", "mode": 5}), "mode"),
        // The hidden test methods (served here: the gateway runs with test hooks).
        ("keel.test.busy", json!({"ms": 1, "pool": 5}), "pool"),
        ("keel.test.busy", json!({"ms": "1"}), "ms"),
        ("keel.test.busy", json!({"ms": 1, "sleep": "yes"}), "sleep"),
        ("keel.test.ballast", json!({"mib": "1"}), "mib"),
        (
            "keel.test.ballast",
            json!({"mib": 0, "spikeMs": "x"}),
            "spikeMs",
        ),
        // The dashboard's methods.
        ("agent.identity.get", json!({"agentId": 5}), "agentId"),
        (
            "agent.identity.get",
            json!({"sessionKey": []}),
            "sessionKey",
        ),
        ("models.authStatus", json!({"agentId": true}), "agentId"),
        ("openclaw.setup.detect", json!({"agentId": 5}), "agentId"),
        (
            "sessions.observer.visibility",
            json!({"visible": "yes"}),
            "visible",
        ),
        (
            "sessions.viewers.set",
            json!({"sessionKeys": "k"}),
            "sessionKeys",
        ),
        (
            "sessions.viewers.set",
            json!({"sessionKeys": [5]}),
            "sessionKeys",
        ),
        ("logs.tail", json!({"limit": "5"}), "limit"),
        ("logs.tail", json!({"cursor": -1}), "cursor"),
        ("logs.tail", json!({"maxBytes": 2_000_000}), "maxBytes"),
        ("channels.status", json!({"probe": "yes"}), "probe"),
        ("channels.status", json!({"channel": 5}), "channel"),
        // Inbound channels.
        ("pairing.list", json!({"channel": 5}), "channel"),
        (
            "pairing.approve",
            json!({"channel": "telegram", "code": 5}),
            "code",
        ),
        (
            "pairing.approve",
            json!({"channel": [], "code": "A"}),
            "channel",
        ),
        (
            "pairing.approve",
            json!({"channel": "telegram", "code": "A", "accountId": 5}),
            "accountId",
        ),
        (
            "channels.pairing.list",
            json!({"accountId": 5}),
            "accountId",
        ),
        (
            "channels.pairing.approve",
            json!({"channel": "telegram", "accountId": "default", "requestId": 5}),
            "requestId",
        ),
        (
            "channels.pairing.approve",
            json!({"channel": "telegram", "accountId": "default", "requestId": "r",
                   "notify": "yes"}),
            "notify",
        ),
        (
            "channels.pairing.dismiss",
            json!({"channel": "telegram", "accountId": [], "requestId": "r"}),
            "accountId",
        ),
    ];
    // The dashboard's empty answers read the paging and session params they echo.
    for m in [
        "exec.approval.list",
        "plugin.approval.list",
        "openclaw.approval.list",
        "question.list",
        "node.list",
        "environments.list",
        "plugins.controlUi.list",
        "sessions.groups.list",
        "sessions.groups.defaults",
        "mentions.list",
        "users.prefs.get",
        "sessions.catalog.list",
        "controlUi.sessionPullRequests.subscribe",
        "board.get",
        "projects.list",
        "talk.catalog",
        "taskSuggestions.list",
        "tasks.list",
        "sessions.branches.list",
        "session.discussion.info",
        "sessions.companion.state",
    ] {
        cases.push((m, json!({"limit": "5"}), "limit"));
        cases.push((m, json!({"sessionKey": 5}), "sessionKey"));
    }
    // Methods that read no params.
    let paramless = [
        "health",
        "status",
        "agents.list",
        "config.get",
        "update.status",
        "last-heartbeat",
        "system.info",
        "usage.status",
        "cron.status",
    ];

    // Every announced method with params has a case: a method added later must get one.
    let mut ws = Ws::open(&g.addr());
    let hello = ws.connect(json!({"token": g.token}), 3, 4);
    assert_eq!(hello["ok"], true, "{hello}");
    for m in hello["payload"]["features"]["methods"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        assert!(
            paramless.contains(&m) || cases.iter().any(|(c, ..)| *c == m),
            "no wrong-type case for {m}"
        );
    }

    // All cases run, and every one that is not refused as it should be is listed at the end.
    let mut wrong: Vec<String> = Vec::new();
    for (method, params, field) in &cases {
        let want = format!("invalid params: {field}");
        let r = ws.call(method, params.clone());
        let msg = r["error"]["message"].as_str().unwrap_or("");
        if r["ok"] != false || r["error"]["code"] != "INVALID_REQUEST" || !msg.starts_with(&want) {
            wrong.push(format!("ws {method} {params}: {r}"));
        }
        let h = g.rpc(method, params.clone());
        let e = &h.json()["error"];
        let msg = e["message"].as_str().unwrap_or("");
        if h.status != 400 || e["code"] != "INVALID_REQUEST" || !msg.starts_with(&want) {
            wrong.push(format!("http {method} {params}: {} {}", h.status, h.text()));
        }
    }
    // Hooks read their body the same way.
    for (route, body, field) in [
        (
            "agent",
            json!({"message": "hi", "deliver": "yes"}),
            "deliver",
        ),
        ("agent", json!({"message": "hi", "agentId": 5}), "agentId"),
        ("wake", json!({"text": 5}), "text"),
    ] {
        let body = body.to_string();
        let r = g.http(&format!(
            "POST /hooks/{route} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {HOOK_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let e = &r.json()["error"];
        let msg = e["message"].as_str().unwrap_or("");
        if r.status != 400 || !msg.starts_with(&format!("invalid params: {field}")) {
            wrong.push(format!("hook {route} {body}: {} {}", r.status, r.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} not refused naming the field:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Params a method does not read are ignored, as OpenClaw's clients send some.
    let r = ws.call(
        "sessions.list",
        json!({"limit": 1, "includeGlobal": true, "x": {}}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = g.rpc("delivery.list", json!({"limit": 1.0, "somethingNew": [1]}));
    assert_ne!(r.status, 400, "{}", r.text());
}
