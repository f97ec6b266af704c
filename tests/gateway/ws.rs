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
        ["health", "presence", "stateVersion", "uptimeMs"]
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
