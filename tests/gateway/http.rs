//! HTTP on the reactor: probes, limits, auth, RPC, queues.

use crate::common::*;
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn healthz_readyz_and_livez_answer_without_a_token() {
    let g = Gateway::start(Opts::default());
    for path in ["/healthz", "/livez"] {
        let r = g.get(path);
        assert_eq!(r.status, 200, "{path}");
        let v = r.json();
        assert_eq!(v["ok"], true);
        assert_eq!(v["status"], "live");
    }
    let r = g.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ready"], true);
    // HEAD: the GET's headers, no body.
    let mut s = std::net::TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "no body after a HEAD: {raw}");
}

#[test]
fn healthz_answers_while_every_cpu_worker_is_busy() {
    let g = Gateway::start(Opts::hooks().config(json!({"gateway": {"workers": {"cpu": 2}}})));
    let addr = g.addr();
    let token = g.token.clone();
    // Occupy both cpu workers (and queue one more) with CPU-spinning jobs.
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                rpc_with(&addr, &token, "keel.test.busy", &json!({"ms": 3000}))
            })
        })
        .collect();
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 2.0);
    for _ in 0..50 {
        let r = within(Duration::from_secs(2), {
            let addr = addr.clone();
            move || {
                http_raw(
                    &addr,
                    b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                )
            }
        });
        assert_eq!(r.status, 200);
    }
    // The health method is answered on the reactor too.
    let mut ws = g.ws();
    let h = ws.call("health", json!({}));
    assert_eq!(h["ok"], true, "{h}");
    assert_eq!(h["payload"]["queues"]["cpu"]["busy"], 2);
    for b in busy {
        assert_eq!(b.join().unwrap().status, 200);
    }
}

#[test]
fn malformed_unknown_and_oversized_requests_get_clear_4xx() {
    let g = Gateway::start(Opts::default());
    let r = g.http("GARBAGE\x01 / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST");
    let r = g.get("/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nope")
    );
    let r = g.http(
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 << 10)
    );
    assert_eq!(g.http(&big).status, 431);
    let r = g.http(&format!(
        "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        g.token,
        2 << 20
    ));
    assert_eq!(r.status, 413);
    let r = g.http(
        "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 411);
    // The gateway is unharmed.
    assert_eq!(g.get("/healthz").status, 200);
}

#[test]
fn a_head_that_does_not_arrive_in_time_gets_408() {
    let g = Gateway::start(
        Opts::default().config(json!({"gateway": {"limits": {"headerTimeoutMs": 300}}})),
    );
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_ends(&mut s);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let g = Gateway::start(Opts::default());
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    // Pipelined: two requests in one write.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = read_response(&mut s).unwrap();
    let b = read_response(&mut s).unwrap();
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["status"], "live");
    assert_eq!(b.json()["ready"], true);
    s.write_all(format!("POST /api/rpc/status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n", g.token).as_bytes()).unwrap();
    let c = read_response(&mut s).unwrap();
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json()["payload"]["phase"], "serving");
}

#[test]
fn metrics_and_rpc_need_the_token() {
    let g = Gateway::start(Opts::default());
    let r = g.get("/metrics");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = rpc_with(&g.addr(), "wrong", "status", &json!({}));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    let m = g.get_auth("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text();
    for series in [
        "keel_reactor_lag_seconds_count",
        "keel_queue_depth{pool=\"cpu\",lane=\"interactive\"}",
        "keel_queue_oldest_age_seconds{pool=\"io\",lane=\"background\"}",
        "keel_jobs_in_flight{pool=\"io\"}",
        "keel_jobs_deadline_exceeded_total",
        "keel_jobs_cancelled_total",
        "keel_jobs_panicked_total",
        "keel_connections{kind=\"ws\"}",
        "keel_resident_memory_bytes",
        "keel_pressure_level",
        "keel_draining",
    ] {
        assert!(
            metric(&text, series).is_some(),
            "missing {series} in\n{text}"
        );
    }
    assert!(metric(&text, "keel_resident_memory_bytes").unwrap() > 0.0);
}

#[test]
fn repeated_auth_failures_are_refused_per_ip() {
    // Loopback is exempt by default; this test is about the limiter, so it is not.
    let g = Gateway::start(
        Opts::default()
            .config(json!({"gateway": {"auth": {"rateLimit": {"exemptLoopback": false}}}})),
    );
    for _ in 0..10 {
        assert_eq!(rpc_with(&g.addr(), "bad", "health", &json!({})).status, 401);
    }
    // The next wrong token is refused as rate-limited, with a Retry-After.
    let r = rpc_with(&g.addr(), "bad", "health", &json!({}));
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(r.json()["error"]["details"]["code"], "AUTH_RATE_LIMITED");
    // The right token is never refused: the limiter only answers failures.
    assert_eq!(g.rpc("health", json!({})).status, 200);
    // Probes need no token and still answer.
    assert_eq!(g.get("/healthz").status, 200);
}

#[test]
fn rpc_over_http_answers_like_the_websocket() {
    let g = Gateway::start(Opts::default());
    let r = g.rpc("health", json!({}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"]["ok"], true);
    let r = g.rpc("no.such.method", json!({}));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "unknown method: no.such.method"
    );
    // Hidden test methods do not exist without KEEL_TEST_HOOKS.
    let r = g.rpc("keel.test.busy", json!({}));
    assert_eq!(
        r.json()["error"]["message"],
        "unknown method: keel.test.busy"
    );
    let r = g.http(&format!(
        "POST /api/rpc/status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n[1,2]",
        g.token
    ));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object")
    );
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let g = Gateway::start(
        Opts::hooks()
            .config(json!({"gateway": {"workers": {"cpu": 1}, "queues": {"interactive": 1}}})),
    );
    let running = g.spawn_rpc("keel.test.busy", json!({"ms": 2000, "sleep": true}));
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 1.0);
    let queued = g.spawn_rpc("keel.test.busy", json!({"ms": 10, "sleep": true}));
    g.wait_metric("keel_queue_depth{pool=\"cpu\",lane=\"interactive\"}", 1.0);
    let r = within(Duration::from_secs(2), {
        let (addr, token) = (g.addr(), g.token.clone());
        move || rpc_with(&addr, &token, "keel.test.busy", &json!({"ms": 10}))
    });
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "UNAVAILABLE");
    assert_eq!(e["retryable"], true);
    assert!(e["message"].as_str().unwrap().contains("queue is full"));
    // The same over WebSocket.
    let mut ws = g.ws();
    let res = ws.call("keel.test.busy", json!({"ms": 10}));
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert!(res["error"]["retryAfterMs"].as_u64().is_some());
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
}

#[test]
fn a_panicking_job_becomes_an_error_and_the_worker_lives() {
    let g = Gateway::start(Opts::hooks().config(json!({"gateway": {"workers": {"cpu": 1}}})));
    let r = g.rpc("keel.test.busy", json!({"panic": true}));
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], "INTERNAL");
    let r = g.rpc("keel.test.busy", json!({"ms": 5}));
    assert_eq!(r.status, 200, "the only cpu worker still runs jobs");
    let m = g.get_auth("/metrics").text();
    assert_eq!(metric(&m, "keel_jobs_panicked_total"), Some(1.0));
    assert!(g.log_text().contains("panicked"));
}

#[test]
fn a_job_past_its_deadline_is_answered_and_cancelled() {
    let g = Gateway::start(Opts::hooks());
    let r = g.rpc("keel.test.busy", json!({"ms": 10_000, "timeoutMs": 300}));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "DEADLINE_EXCEEDED");
    // A job that stops making progress is aborted by its stall limit.
    let r = g.rpc(
        "keel.test.busy",
        json!({"ms": 10_000, "stallMs": 300, "stall": true}),
    );
    assert_eq!(r.status, 504);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no progress")
    );
    let m = g.get_auth("/metrics").text();
    assert_eq!(metric(&m, "keel_jobs_deadline_exceeded_total"), Some(2.0));
}

#[test]
fn queue_age_raises_pressure_sheds_background_work_and_recovers() {
    let g = Gateway::start(Opts::hooks().config(json!({"gateway": {
        "workers": {"cpu": 1},
        "pressure": {"queueAgeWarnMs": 100, "queueAgeCriticalMs": 200, "holdMs": 300},
    }})));
    let running = g.spawn_rpc("keel.test.busy", json!({"ms": 2500, "sleep": true}));
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 1.0);
    let queued = g.spawn_rpc("keel.test.busy", json!({"ms": 10}));
    // The queued job ages past the critical bound for five watchdog ticks.
    let failing = eventually(BOUND, || {
        let r = g.get("/readyz");
        (r.status == 503).then(|| r.json()["failing"].to_string())
    });
    assert!(
        failing.contains("pressure critical") && failing.contains("interactive queue"),
        "{failing}"
    );
    assert_eq!(g.get("/healthz").status, 200, "liveness is not readiness");
    let shed = g.rpc("keel.test.busy", json!({"ms": 10, "lane": "background"}));
    assert_eq!(shed.status, 503, "{}", shed.text());
    assert!(
        shed.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shed")
    );
    assert_eq!(shed.json()["error"]["retryable"], true);
    let health = g.rpc("health", json!({})).json();
    assert_eq!(health["payload"]["pressure"]["level"], "critical");
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
    // Back to normal once the queue is empty and the hold windows have passed.
    eventually(BOUND, || (g.get("/readyz").status == 200).then_some(()));
    let log = g.log_text();
    assert!(
        log.contains("pressure normal -> critical")
            || log.contains("pressure elevated -> critical"),
        "{log}"
    );
    assert!(g.wait_log("-> normal", BOUND).is_some(), "{log}");
}

#[test]
fn a_hook_body_larger_than_the_rpc_limit_is_read_whole() {
    // Hooks accept up to 256 KiB whatever rpcBodyBytes says; the reactor must buffer that much.
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"limits": {"rpcBodyBytes": 4096}},
        "hooks": {"enabled": true, "token": "hook-secret", "path": "/hooks"},
    })));
    let body = json!({"text": "w".repeat(100 << 10)}).to_string();
    let r = g.http(&format!(
        "POST /hooks/wake HTTP/1.1\r\nHost: t\r\nx-openclaw-token: hook-secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 202, "{}", r.text());
    // The RPC limit still holds for RPC.
    let big = json!({"x": "y".repeat(8192)});
    assert_eq!(g.rpc("health", big).status, 413);
}

/// Reads what keel still sends on `s`: nothing, then EOF (not a reset, not the read timeout).
#[track_caller]
fn assert_ends(s: &mut TcpStream) {
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(s, &mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "more after the last answer: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("the connection did not end with EOF within {BOUND:?}: {e}"),
    }
}

/// Sends `raw` on a new connection and reads the first answer, which must say `Connection:
/// close`; then keel must end the connection.
#[track_caller]
fn closing_answer(addr: &str, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(raw).unwrap();
    let r = read_response(&mut s).expect("an answer");
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "keel closes after this answer, so it must say so:\n{}",
        r.head
    );
    assert_ends(&mut s);
    r
}

/// Every answer after which keel closes the connection says `Connection: close`, so that a
/// client pooling connections does not send its next request into a closing socket: bodies
/// refused from their head (unread), heads keel cannot read, refused upgrades.
#[test]
fn answers_after_which_keel_closes_say_connection_close() {
    // Loopback is exempt from the failure limit by default; the 429 below needs it counted.
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"auth": {"rateLimit": {"exemptLoopback": false}}},
        "hooks": {"enabled": true, "token": "hook-secret", "path": "/hooks"},
    })));
    let token = &g.token;
    let cases: Vec<(u16, String)> = vec![
        // A body where no route takes one, announced and not sent.
        (
            404,
            "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n".into(),
        ),
        (
            413,
            format!(
                "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
                2 << 20
            ),
        ),
        // Refused at body admission (the body is not read).
        (
            401,
            "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nContent-Length: 10\r\n\r\n".into(),
        ),
        (
            401,
            "POST /hooks/wake HTTP/1.1\r\nHost: t\r\nx-openclaw-token: wrong\r\nContent-Length: 10\r\n\r\n".into(),
        ),
        (
            400,
            "POST /hooks/wake?token=hook-secret HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n".into(),
        ),
        (
            411,
            "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            431,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "a".repeat(17 << 10)
            ),
        ),
        (400, "GARBAGE\x01 / HTTP/1.1\r\n\r\n".into()),
        (
            417,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\n\r\n".into(),
        ),
        (
            426,
            "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n".into(),
        ),
    ];
    for (status, raw) in &cases {
        let r = closing_answer(&g.addr(), raw.as_bytes());
        assert_eq!(r.status, *status, "{raw:.80?}: {}", r.text());
    }
    // Until the per-address limit trips, wrong tokens refused at admission get 401; then 429
    // with a Retry-After. Both close.
    let refused = "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nContent-Length: 10\r\n\r\n";
    let mut limited = None;
    for _ in 0..30 {
        let r = closing_answer(&g.addr(), refused.as_bytes());
        assert!(matches!(r.status, 401 | 429), "{}", r.status);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the failure limit never tripped");
    assert!(limited.header("retry-after").is_some());
    // An answer that says keep-alive keeps the connection: the next request on it is served.
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
}

/// A WebSocket upgrade refused because keel is draining says `Connection: close` too.
#[test]
fn an_upgrade_while_draining_gets_503_and_connection_close() {
    let g = Gateway::start(Opts::hooks());
    // A job that holds the drain open for the length of the test.
    let _job = g.spawn_rpc("keel.test.busy", json!({"ms": 60_000, "sleep": true}));
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 1.0);
    g.signal("TERM");
    eventually(BOUND, || (g.get("/readyz").status == 503).then_some(()));
    let r = closing_answer(
        &g.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "DRAINING");
}

/// `Content-Length` is digits only (RFC 9110 §8.6): a sign, a space inside, hex, trailing
/// letters, an overflow or a list are refused with 400 and the connection closed — never
/// read as some length a proxy in front may read differently.
#[test]
fn a_content_length_that_is_not_plain_digits_gets_400_and_close() {
    let g = Gateway::start(Opts::default());
    for value in [
        "+2",
        "-0",
        " 2 2",
        "0x2",
        "2a",
        "18446744073709551616",
        "2, 2",
    ] {
        let raw = format!(
            "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {value}\r\n\r\n{{}}",
            g.token
        );
        let r = closing_answer(&g.addr(), raw.as_bytes());
        assert_eq!(r.status, 400, "Content-Length: {value:?}: {}", r.text());
        assert!(r.text().contains("Content-Length"), "{}", r.text());
    }
    let r = g.http(&format!(
        "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 02\r\nConnection: close\r\n\r\n{{}}",
        g.token
    ));
    assert_eq!(r.status, 200, "leading zeros are digits: {}", r.text());
}

/// `Expect: 100-continue`: a client that holds its body back hears `100 Continue` once its
/// head is admitted, and a refusal at once instead (no 100 before it); any other expectation
/// gets 417. HTTP/1.0 requests have no expectations (RFC 9110 §10.1.1).
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let g = Gateway::start(Opts::default());
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    // Twice on one connection: each request gets its own 100.
    for _ in 0..2 {
        s.write_all(
            format!(
                "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
                g.token
            )
            .as_bytes(),
        )
        .unwrap();
        let interim = read_response(&mut s).expect("100 Continue before the body is sent");
        assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"{}").unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["payload"]["ok"], true);
    }
    // Refused from the head: the refusal comes first, and closes.
    let r = closing_answer(
        &g.addr(),
        b"POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.head);
    let r = closing_answer(
        &g.addr(),
        format!(
            "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            g.token,
            2 << 20
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.head);
    let r = closing_answer(
        &g.addr(),
        format!(
            "POST /api/rpc/health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nExpect: something-else\r\nContent-Length: 2\r\n\r\n",
            g.token
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 417, "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST");
    // HTTP/1.0 ignores Expect, whatever it says.
    let r = g.http("GET /healthz HTTP/1.0\r\nExpect: something-else\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
}
