//! The failed-authentication limiter: a correct secret always authenticates, the gateway
//! secret and the hooks token have separate buckets, loopback is exempt unless configured
//! otherwise, and `X-Forwarded-For` names the client only when a trusted proxy sent it.

use crate::common::*;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

const HOOK_TOKEN: &str = "hook-secret";

fn config(rate_limit: Value, proxies: Value) -> Value {
    json!({
        "gateway": {"auth": {"rateLimit": rate_limit}, "trustedProxies": proxies},
        "hooks": {"enabled": true, "token": HOOK_TOKEN},
    })
}

/// A request from `from` with `headers` (each ending in CRLF) and an empty JSON body.
fn post(g: &Gateway, from: Ipv4Addr, path: &str, headers: &str) -> Response {
    http_raw_from(
        from,
        &g.addr(),
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
}

fn rpc(g: &Gateway, from: Ipv4Addr, token: &str, extra: &str) -> Response {
    post(
        g,
        from,
        "/api/rpc/health",
        &format!("Authorization: Bearer {token}\r\n{extra}"),
    )
}

fn hook(g: &Gateway, from: Ipv4Addr, token: &str, extra: &str) -> Response {
    http_raw_from(
        from,
        &g.addr(),
        format!(
            "POST /hooks/wake HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{extra}Content-Length: 13\r\nConnection: close\r\n\r\n{{\"text\":\"hi\"}}"
        )
        .as_bytes(),
    )
}

fn metrics(g: &Gateway, from: Ipv4Addr, token: &str) -> Response {
    http_raw_from(
        from,
        &g.addr(),
        format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `connect` over a WebSocket opened from `from` with `headers` on its upgrade request.
fn ws_connect(g: &Gateway, from: Ipv4Addr, token: &str, headers: &[(&str, &str)]) -> Value {
    let mut ws = Ws::open_from(from, &g.addr(), headers);
    ws.connect(json!({"token": token}), 3, 4)
}

#[track_caller]
fn limited(r: &Response) {
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
}

#[test]
fn a_correct_secret_always_authenticates_and_the_buckets_are_separate() {
    let g =
        Gateway::start(Opts::default().config(config(json!({"exemptLoopback": false}), json!([]))));
    let me = Ipv4Addr::new(127, 0, 3, 1);
    // Ten wrong gateway tokens: 401 each, then 429 for the next wrong one.
    for i in 0..10 {
        assert_eq!(rpc(&g, me, "wrong", "").status, 401, "attempt {i}");
    }
    let r = rpc(&g, me, "wrong", "");
    limited(&r);
    assert_eq!(r.json()["error"]["details"]["code"], "AUTH_RATE_LIMITED");
    let c = ws_connect(&g, me, "wrong", &[]);
    assert_eq!(c["error"]["details"]["code"], "AUTH_RATE_LIMITED", "{c}");
    // The right gateway token still works everywhere: RPC, /metrics, WebSocket connect.
    assert_eq!(rpc(&g, me, &g.token, "").status, 200);
    assert_eq!(metrics(&g, me, &g.token).status, 200);
    let c = ws_connect(&g, me, &g.token, &[]);
    assert_eq!(c["ok"], true, "{c}");
    // Hooks have their own bucket: a wrong hook token is a plain 401, the right one passes.
    assert_eq!(hook(&g, me, "wrong", "").status, 401);
    assert_eq!(hook(&g, me, HOOK_TOKEN, "").status, 202);
    // Twenty wrong hook tokens lock the hooks bucket, not the gateway's lockout further.
    for i in 0..19 {
        assert_eq!(hook(&g, me, "wrong", "").status, 401, "hook attempt {i}");
    }
    limited(&hook(&g, me, "wrong", ""));
    assert_eq!(hook(&g, me, HOOK_TOKEN, "").status, 202);
    assert_eq!(rpc(&g, me, &g.token, "").status, 200);
    // Another address is untouched by all of this.
    assert_eq!(
        rpc(&g, Ipv4Addr::new(127, 0, 3, 2), "wrong", "").status,
        401
    );
    assert!(g.metric("keel_auth_rate_limited_total").unwrap() >= 3.0);
}

#[test]
fn loopback_is_exempt_by_default() {
    let g = Gateway::start(Opts::default().config(config(json!({}), json!([]))));
    let me = Ipv4Addr::new(127, 0, 4, 1);
    for i in 0..30 {
        assert_eq!(rpc(&g, me, "wrong", "").status, 401, "attempt {i}");
        assert_eq!(hook(&g, me, "wrong", "").status, 401, "hook attempt {i}");
    }
    // A loopback peer that carries forwarding headers is a proxy, not a local client: its
    // failures count (against the proxy, since it is not trusted).
    let proxied = "X-Forwarded-For: 203.0.113.7\r\n";
    for i in 0..10 {
        assert_eq!(rpc(&g, me, "wrong", proxied).status, 401, "attempt {i}");
    }
    limited(&rpc(&g, me, "wrong", proxied));
    limited(&rpc(&g, me, "wrong", "X-Forwarded-For: 198.51.100.9\r\n"));
    assert_eq!(rpc(&g, me, &g.token, proxied).status, 200);
    // The same address without forwarding headers is local, and exempt.
    assert_eq!(rpc(&g, me, "wrong", "").status, 401);
    assert!(
        g.log_text().contains("gateway.trustedProxies"),
        "the log says how to fix it:\n{}",
        g.log_text()
    );
}

#[test]
fn a_trusted_proxy_gives_each_client_its_own_bucket() {
    let proxy = Ipv4Addr::new(127, 0, 5, 1);
    let g = Gateway::start(Opts::default().config(config(json!({}), json!(["127.0.5.1"]))));
    let alice = "X-Forwarded-For: 203.0.113.5\r\n";
    let bob = "X-Forwarded-For: 203.0.113.6\r\n";
    for i in 0..10 {
        assert_eq!(rpc(&g, proxy, "wrong", alice).status, 401, "attempt {i}");
    }
    limited(&rpc(&g, proxy, "wrong", alice));
    // A client that puts Alice's address first in its own header is still itself.
    limited(&rpc(
        &g,
        proxy,
        "wrong",
        "X-Forwarded-For: 198.51.100.1, 203.0.113.5\r\n",
    ));
    assert_eq!(
        rpc(
            &g,
            proxy,
            "wrong",
            "X-Forwarded-For: 203.0.113.5, 198.51.100.1\r\n"
        )
        .status,
        401
    );
    assert_eq!(
        rpc(&g, proxy, "wrong", bob).status,
        401,
        "Bob has his own bucket"
    );
    assert_eq!(
        rpc(&g, proxy, &g.token, alice).status,
        200,
        "Alice's token works"
    );
    // WebSocket: the upgrade request's X-Forwarded-For names the client of `connect`.
    let c = ws_connect(&g, proxy, "wrong", &[("X-Forwarded-For", "203.0.113.5")]);
    assert_eq!(c["error"]["details"]["code"], "AUTH_RATE_LIMITED", "{c}");
    let c = ws_connect(&g, proxy, "wrong", &[("X-Forwarded-For", "203.0.113.6")]);
    assert_eq!(c["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH", "{c}");
    // An address that is not a trusted proxy cannot choose who it is.
    let stranger = Ipv4Addr::new(127, 0, 5, 2);
    for i in 0..10 {
        let xff = format!("X-Forwarded-For: 192.0.2.{i}\r\n");
        assert_eq!(rpc(&g, stranger, "wrong", &xff).status, 401, "attempt {i}");
    }
    limited(&rpc(
        &g,
        stranger,
        "wrong",
        "X-Forwarded-For: 192.0.2.99\r\n",
    ));
}

#[test]
fn connects_without_a_secret_never_count_toward_a_lockout() {
    let g =
        Gateway::start(Opts::default().config(config(json!({"exemptLoopback": false}), json!([]))));
    let me = Ipv4Addr::new(127, 0, 8, 1);
    // A dashboard that reloaded without its token reconnects again and again: three times
    // the limit, with no secret, a blank one, or no auth block at all.
    for i in 0..30 {
        let mut ws = Ws::open_from(me, &g.addr(), &[]);
        let auth = match i % 3 {
            0 => json!({}),
            1 => json!({"token": "", "password": "  "}),
            _ => Value::Null,
        };
        let res = ws.connect(auth, 3, 4);
        let e = &res["error"];
        assert_eq!(
            e["details"]["code"], "AUTH_TOKEN_MISSING",
            "attempt {i}: {res}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("a gateway token is required"),
            "{res}"
        );
        assert_eq!(ws.close_code(), Some(1008), "attempt {i}");
    }
    // HTTP without a bearer token is the same: 401, never 429.
    for i in 0..15 {
        let r = post(&g, me, "/api/rpc/health", "");
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
    }
    assert!(g.metric("keel_auth_missing_total").unwrap() >= 45.0);
    assert_eq!(g.metric("keel_auth_rate_limited_total"), Some(0.0));
    // None of that counted: the right token works, and a wrong one is a plain mismatch.
    let c = ws_connect(&g, me, &g.token, &[]);
    assert_eq!(c["ok"], true, "{c}");
    // Wrong secrets still count: the tenth locks the address out…
    for i in 0..10 {
        let c = ws_connect(&g, me, "wrong", &[]);
        assert_eq!(
            c["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH",
            "wrong {i}: {c}"
        );
    }
    let c = ws_connect(&g, me, "wrong", &[]);
    assert_eq!(c["error"]["details"]["code"], "AUTH_RATE_LIMITED", "{c}");
    // …while a connect without a secret is still told a token is required (the login form),
    // and the right token still works.
    let c = ws_connect_raw(&g, me, json!({}));
    assert_eq!(c["error"]["details"]["code"], "AUTH_TOKEN_MISSING", "{c}");
    let c = ws_connect(&g, me, &g.token, &[]);
    assert_eq!(c["ok"], true, "{c}");
}

/// `connect` from `from` with this `auth` block.
fn ws_connect_raw(g: &Gateway, from: Ipv4Addr, auth: Value) -> Value {
    let mut ws = Ws::open_from(from, &g.addr(), &[]);
    ws.connect(auth, 3, 4)
}
