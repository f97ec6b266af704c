//! Agent runs against fake providers on loopback: streaming, failover and its
//! classification, cooldowns, abort, drain, reconnect, fan-out and tools.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A config with providers `a` (primary) and `b` (fallback), both openai-completions fakes.
fn config(a: &FakeProvider, b: &FakeProvider, stall_ms: u64) -> Value {
    json!({
        "models": {"providers": {
            "a": {"baseUrl": a.base_url(), "apiKey": "ka", "api": "openai-completions", "stallMs": stall_ms, "timeoutMs": 20000,
                  "models": [{"id": "m1", "cost": {"input": 1.0, "output": 2.0}}]},
            "b": {"baseUrl": b.base_url(), "apiKey": "kb", "api": "openai-completions", "stallMs": stall_ms, "timeoutMs": 20000,
                  "models": [{"id": "m2", "cost": {"input": 1.0, "output": 2.0}}]},
        }},
        "agents": {"defaults": {"model": {"primary": "a/m1", "fallbacks": ["b/m2"]}}},
    })
}

/// The two fakes [`config`] takes: `a` (primary) and `b` (fallback).
fn providers() -> (FakeProvider, FakeProvider) {
    (
        FakeProvider::start("openai-completions"),
        FakeProvider::start("openai-completions"),
    )
}

fn stream(text: &str) -> Behavior {
    Behavior::Stream {
        text: vec![text.to_string()],
        tool_call: None,
        usage: (100, 10),
        delay_between: Duration::ZERO,
    }
}

/// Sends chat.send and collects events until the run's final (or error/aborted) chat event.
fn chat(ws: &mut Ws, key: &str, message: &str, idem: &str) -> (String, Vec<Value>) {
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": key, "message": message, "idempotencyKey": idem}),
    );
    assert_eq!(res["ok"], true, "{res}");
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    let events = ws.run_events(&run_id);
    (run_id, events)
}

fn final_state(events: &[Value]) -> &Value {
    &events.last().unwrap()["payload"]
}

fn errors(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == "agent" && e["payload"]["stream"] == "error")
        .map(|e| e["payload"]["data"].clone())
        .collect()
}

#[test]
fn a_run_streams_and_its_usage_is_counted() {
    let (a, b) = providers();
    a.push(Behavior::Stream {
        text: vec!["Hello".into(), ", world".into()],
        tool_call: None,
        usage: (1200, 34),
        delay_between: Duration::from_millis(200),
    });
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "hi", "k1");
    let f = final_state(&events);
    assert_eq!(f["state"], "final");
    assert_eq!(f["message"]["content"][0]["text"], "Hello, world");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "chat" && e["payload"]["state"] == "delta"),
        "deltas stream"
    );
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["payload"]["stream"] == "lifecycle")
        .filter_map(|e| e["payload"]["data"]["phase"].as_str())
        .collect();
    assert_eq!(phases, ["start", "end"]);
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "agent")
        .map(|e| e["payload"]["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "per-run seq increases: {seqs:?}"
    );
    // The request the provider got.
    let req = &a.received()[0];
    assert_eq!(req.body["model"], "m1");
    assert_eq!(req.path, "/v1/chat/completions");
    assert!(
        req.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer ka")
    );
    assert_eq!(req.body["stream"], true);
    // The transcript counts in usage (index fresh) and shows in the history.
    let cost = eventually(BOUND, || {
        let p = g.rpc("usage.cost", json!({"days": 1})).json()["payload"].clone();
        (p["totals"]["input"] == 1200).then_some(p)
    });
    assert_eq!(cost["totals"]["output"], 34);
    assert!(
        (cost["totals"]["totalCost"].as_f64().unwrap() - (1200.0 * 1.0 + 34.0 * 2.0) / 1e6).abs()
            < 1e-9
    );
    let h = ws.call("chat.history", json!({"sessionKey": "agent:main:main"}));
    let msgs = h["payload"]["messages"].as_array().unwrap();
    assert_eq!(
        msgs.iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["user", "assistant"]
    );
    // The same idempotency key is the same run.
    let again = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "k1"}),
    );
    assert_eq!(again["payload"]["runId"], events[0]["payload"]["runId"]);
}

/// Runs the primary with `behavior`, expects the fallback to answer and the failure to be
/// classified `reason`. Returns the gateway, the fakes and how long the run took.
fn failover_case(
    behavior: Behavior,
    reason: &str,
    stall_ms: u64,
) -> (Gateway, FakeProvider, FakeProvider, Duration) {
    let (a, b) = providers();
    a.push(behavior);
    b.push(stream("from the fallback"));
    let g = Gateway::start(Opts::default().config(config(&a, &b, stall_ms)));
    let mut ws = g.ws();
    let t0 = Instant::now();
    let (_, events) = chat(&mut ws, "agent:main:main", "hi", "f1");
    let took = t0.elapsed();
    let f = final_state(&events);
    assert_eq!(f["state"], "final", "{events:#?}");
    assert_eq!(f["message"]["content"][0]["text"], "from the fallback");
    let errs = errors(&events);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["reason"], reason, "{errs:?}");
    assert_eq!(errs[0]["provider"], "a");
    (g, a, b, took)
}

/// A second run: does it call the primary again (no cooldown) or skip it?
fn second_run_calls_primary(g: &Gateway, a: &FakeProvider, b: &FakeProvider) -> bool {
    let before = a.requests().len();
    a.push(stream("primary back"));
    b.push(stream("fallback again"));
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "again", "f2");
    assert_eq!(final_state(&events)["state"], "final");
    a.requests().len() > before
}

#[test]
fn model_not_found_fails_over_and_cools_down() {
    let body = FakeProvider::model_not_found_body("openai-completions", "m1");
    let (g, a, b, _) = failover_case(
        Behavior::Status {
            status: 404,
            body,
            retry_after: None,
        },
        "model_not_found",
        5000,
    );
    assert!(
        !second_run_calls_primary(&g, &a, &b),
        "the primary is cooling down"
    );
    assert!(
        g.log_text().contains("cooling down 60 s"),
        "{}",
        g.log_text()
    );
}

#[test]
fn a_bare_404_is_a_config_error_without_cooldown() {
    let (g, a, b, _) = failover_case(
        Behavior::Status {
            status: 404,
            body: "Not Found".into(),
            retry_after: None,
        },
        "config_error",
        5000,
    );
    assert!(
        second_run_calls_primary(&g, &a, &b),
        "no cooldown for a wrong base URL"
    );
}

#[test]
fn rate_limit_honours_retry_after() {
    let (g, _a, _b, _) = failover_case(
        Behavior::Status {
            status: 429,
            body: "{\"error\":{\"message\":\"slow down\"}}".into(),
            retry_after: Some(7),
        },
        "rate_limit",
        5000,
    );
    assert!(
        g.log_text().contains("cooling down 7 s"),
        "{}",
        g.log_text()
    );
}

#[test]
fn server_errors_and_resets_fail_over() {
    failover_case(
        Behavior::Status {
            status: 500,
            body: "boom".into(),
            retry_after: None,
        },
        "server_error",
        5000,
    );
    failover_case(Behavior::Reset, "server_error", 5000);
}

#[test]
fn a_stalled_call_is_aborted_and_fails_over_within_a_second_of_its_stall_limit() {
    let (_, _, _, took) = failover_case(Behavior::StallBeforeHead, "timeout", 300);
    assert!(
        took < Duration::from_millis(2300),
        "stall before the head: {took:?}"
    );
    let (_, _, _, took) =
        failover_case(Behavior::StallMidStream { after_chunks: 1 }, "timeout", 300);
    assert!(
        took < Duration::from_millis(2300),
        "stall mid-stream: {took:?}"
    );
}

#[test]
fn when_every_candidate_fails_the_error_lists_each() {
    let (a, b) = providers();
    a.push(Behavior::Status {
        status: 503,
        body: "overloaded".into(),
        retry_after: None,
    });
    b.push(Behavior::Status {
        status: 401,
        body: "bad key".into(),
        retry_after: None,
    });
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "hi", "x");
    let f = final_state(&events);
    assert_eq!(f["state"], "error");
    let msg = f["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("a/m1: overloaded") && msg.contains("b/m2: auth"),
        "{msg}"
    );
}

#[test]
fn a_context_overflow_does_not_fail_over() {
    let (a, b) = providers();
    a.push(Behavior::Status { status: 400, body: "{\"error\":{\"code\":\"context_length_exceeded\",\"message\":\"This model's maximum context length is 8192 tokens\"}}".into(), retry_after: None });
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "hi", "x");
    assert_eq!(final_state(&events)["state"], "error");
    assert!(
        final_state(&events)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("context_overflow")
    );
    assert!(b.requests().is_empty(), "no failover");
}

#[test]
fn chat_abort_stops_a_streaming_run_at_once() {
    let (a, b) = providers();
    a.push(Behavior::Stream {
        text: vec!["x".to_string(); 400],
        tool_call: None,
        usage: (5, 5),
        delay_between: Duration::from_millis(50),
    });
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "long", "idempotencyKey": "ab"}),
    );
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    // Wait for the stream to be flowing.
    ws.until(BOUND, |f| {
        f["event"] == "agent" && f["payload"]["stream"] == "assistant"
    });
    let t0 = Instant::now();
    let mut ctl = g.ws();
    assert_eq!(
        ctl.call("chat.abort", json!({"runId": run_id}))["payload"]["aborted"],
        true
    );
    let end = ws.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["state"] != "delta"
    });
    assert_eq!(end["payload"]["state"], "aborted");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(
        b.requests().is_empty(),
        "an abort is not a failure to fail over from"
    );
}

#[test]
fn sigterm_during_a_stalled_call_exits_by_the_drain_deadline() {
    let (a, b) = providers();
    a.push(Behavior::StallBeforeHead);
    let mut cfg = config(&a, &b, 120_000);
    cfg["gateway"] = json!({"drainTimeoutMs": 1000, "drainGraceMs": 1000});
    let mut g = Gateway::start(Opts::default().config(cfg));
    let mut ws = g.ws();
    ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "s"}),
    );
    eventually(BOUND, || (!a.requests().is_empty()).then_some(()));
    let t0 = Instant::now();
    g.signal("TERM");
    let status = g.wait_exit(BOUND).expect("exits");
    assert!(
        t0.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(1), "a run was aborted");
}

#[test]
fn a_reconnecting_client_gets_its_runs_final_result() {
    let (a, b) = providers();
    a.push(Behavior::Stream {
        text: vec!["part one ".into(), "part two".into()],
        tool_call: None,
        usage: (5, 5),
        delay_between: Duration::from_millis(500),
    });
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let id = ws.send_req("agent", json!({"message": "hi", "idempotencyKey": "rc"}));
    let accepted = ws.res(&id);
    assert_eq!(accepted["payload"]["status"], "accepted");
    let run_id = accepted["payload"]["runId"].as_str().unwrap().to_string();
    drop(ws);
    let mut again = g.ws();
    let done = again.call("agent.wait", json!({"runId": run_id, "timeoutMs": 10000}));
    assert_eq!(done["payload"]["status"], "ok", "{done}");
    assert_eq!(
        done["payload"]["result"]["payloads"][0]["text"],
        "part one part two"
    );
}

#[test]
fn agent_answers_twice_with_the_same_id() {
    let (a, b) = providers();
    a.push(stream("done"));
    let g = Gateway::start(Opts::default().config(config(&a, &b, 5000)));
    let mut ws = g.ws();
    let id = ws.send_req(
        "agent",
        json!({"message": "hi", "idempotencyKey": "two", "channel": "telegram", "to": "42"}),
    );
    let first = ws.res(&id);
    assert_eq!(first["payload"]["status"], "accepted");
    let second = ws.res(&id);
    assert_eq!(second["payload"]["status"], "ok", "{second}");
    assert_eq!(second["payload"]["runId"], first["payload"]["runId"]);
}

#[test]
fn a_run_without_a_configured_model_says_so() {
    let g = Gateway::start(Opts::default());
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "hi", "none");
    assert_eq!(final_state(&events)["state"], "error");
    assert!(
        final_state(&events)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("agents.defaults.model")
    );
}

#[test]
fn tools_run_and_mirror_to_subscribers() {
    let (a, b) = providers();
    a.push(Behavior::Stream {
        text: vec![],
        tool_call: Some(("echo_it".into(), json!({"word": "pong"}))),
        usage: (5, 5),
        delay_between: Duration::ZERO,
    });
    a.push(stream("the tool said pong"));
    let mut cfg = config(&a, &b, 5000);
    // The output (`out:pong`) differs from the call's arguments (`pong`), so it can be told apart.
    cfg["tools"] = json!({"commands": [{"name": "echo_it", "description": "echo", "argv": ["echo", "out:{{word}}"],
                                        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}]});
    let g = Gateway::start(Opts::default().config(cfg));
    let mut sub = g.ws();
    assert_eq!(
        sub.call(
            "sessions.subscribe",
            json!({"sessionKey": "agent:main:main"})
        )["ok"],
        true
    );
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "use the tool", "t");
    assert_eq!(
        final_state(&events)["message"]["content"][0]["text"],
        "the tool said pong"
    );
    let tool: Vec<&str> = events
        .iter()
        .filter(|e| e["payload"]["stream"] == "tool")
        .filter_map(|e| e["payload"]["data"]["phase"].as_str())
        .collect();
    assert_eq!(tool, ["start", "result"]);
    // The second model call carried the tool's output, as the result of that very call.
    let second = a.requests()[1]["messages"].clone();
    let msgs = second.as_array().unwrap();
    let call_id = msgs
        .iter()
        .find_map(|m| m["tool_calls"][0]["id"].as_str())
        .unwrap_or_else(|| panic!("no assistant tool call: {second}"));
    let results: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results.len(), 1, "{second}");
    assert_eq!(results[0]["tool_call_id"], call_id, "{second}");
    assert!(
        results[0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("out:pong")),
        "{second}"
    );
    let mirrors: Vec<String> = (0..2)
        .map(|_| {
            let f = sub.until(BOUND, |f| f["event"] == "session.tool");
            f["payload"]["phase"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(mirrors, ["start", "result"]);
}

fn hooks_config(a: &FakeProvider, b: &FakeProvider) -> Value {
    let mut cfg = config(a, b, 5000);
    cfg["hooks"] = json!({"enabled": true, "token": "hook-secret", "path": "/hooks"});
    cfg
}

fn post(g: &Gateway, path: &str, headers: &str, body: &str) -> Response {
    g.http(&format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn hooks_start_runs_whose_outcome_can_be_queried() {
    let (a, b) = providers();
    a.push(stream("hooked"));
    let g = Gateway::start(Opts::default().config(hooks_config(&a, &b)));
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        r#"{"message":"from a hook","channel":"telegram","to":"42"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let run_id = r.json()["runId"].as_str().unwrap().to_string();
    let done = eventually(BOUND, || {
        let p = g
            .rpc("agent.wait", json!({"runId": run_id, "timeoutMs": 0}))
            .json()["payload"]
            .clone();
        (p["status"] == "ok").then_some(p)
    });
    assert_eq!(done["result"]["payloads"][0]["text"], "hooked");
    // OpenClaw's header works too; /wake starts a run on the main session.
    let r = post(
        &g,
        "/hooks/wake",
        "x-openclaw-token: hook-secret\r\n",
        r#"{"text":"wake up"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn hooks_refuse_bad_requests_clearly() {
    let (a, b) = providers();
    let mut cfg = hooks_config(&a, &b);
    cfg["gateway"] = json!({"auth": {"rateLimit": {"exemptLoopback": false}}});
    let g = Gateway::start(Opts::default().config(cfg));
    let r = post(
        &g,
        "/hooks/agent?token=hook-secret",
        "",
        r#"{"message":"x"}"#,
    );
    assert_eq!(r.status, 400, "a token in the URL");
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        "[1]",
    );
    assert_eq!(r.status, 400);
    let r = post(
        &g,
        "/hooks/nope",
        "Authorization: Bearer hook-secret\r\n",
        "{}",
    );
    assert_eq!(r.status, 404);
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(300 << 10));
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        &big,
    );
    assert_eq!(r.status, 413);
    // Wrong tokens: 401, and past the hooks bucket's limit 429 (the limiter is exercised in
    // limiter.rs; loopback is exempt by default, so this gateway turns the exemption off).
    for _ in 0..20 {
        assert_eq!(
            post(
                &g,
                "/hooks/agent",
                "Authorization: Bearer wrong\r\n",
                r#"{"message":"x"}"#
            )
            .status,
            401
        );
    }
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer wrong\r\n",
        r#"{"message":"x"}"#,
    );
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert!(a.requests().is_empty(), "nothing ran");
}

#[test]
fn a_bad_hooks_config_leaves_the_gateway_serving() {
    let g = Gateway::start(
        Opts::default().config(json!({"hooks": {"enabled": true, "token": "t", "path": "/"}})),
    );
    assert_eq!(g.get("/healthz").status, 200);
    let r = g.get("/readyz");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["failing"].to_string().contains("hooks.path"),
        "{}",
        r.text()
    );
    assert_eq!(g.rpc("status", json!({})).status, 200);
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer t\r\n",
        r#"{"message":"x"}"#,
    );
    assert_eq!(r.status, 404, "no hooks while they are disabled");
}

#[test]
fn under_elevated_pressure_only_terminal_mirrors_flow() {
    let (a, b) = providers();
    a.push(Behavior::Stream {
        text: vec![],
        tool_call: Some(("echo_it".into(), json!({"word": "w"}))),
        usage: (1, 1),
        delay_between: Duration::ZERO,
    });
    a.push(stream("done"));
    let mut cfg = config(&a, &b, 5000);
    cfg["tools"] = json!({"commands": [{"name": "echo_it", "argv": ["echo", "{{word}}"]}]});
    cfg["gateway"] = json!({"workers": {"cpu": 1}, "pressure": {"queueAgeWarnMs": 100, "queueAgeCriticalMs": 3_600_000, "holdMs": 60_000}});
    let g = Gateway::start(Opts::hooks().config(cfg));
    // Force elevated pressure: the only cpu worker busy, a job waiting behind it.
    let running = g.spawn_rpc("keel.test.busy", json!({"ms": 1500, "sleep": true}));
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 1.0);
    let queued = g.spawn_rpc("keel.test.busy", json!({"ms": 1}));
    eventually(BOUND, || {
        (g.rpc("health", json!({})).json()["payload"]["pressure"]["level"] == "elevated")
            .then_some(())
    });
    let mut sub = g.ws();
    sub.call(
        "sessions.subscribe",
        json!({"sessionKey": "agent:main:main"}),
    );
    let mut ws = g.ws();
    let (_, events) = chat(&mut ws, "agent:main:main", "tool please", "p");
    // Run-scoped events are never dropped...
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["payload"]["stream"] == "tool")
        .filter_map(|e| e["payload"]["data"]["phase"].as_str())
        .collect();
    assert_eq!(phases, ["start", "result"]);
    // ...while the session mirror of the non-terminal start was not sent.
    let first_mirror = sub.until(BOUND, |f| f["event"] == "session.tool");
    assert_eq!(first_mirror["payload"]["phase"], "result");
    assert!(g.metric("keel_events_suppressed_pressure_total").unwrap() >= 1.0);
    running.join().unwrap();
    queued.join().unwrap();
}

#[test]
fn a_listener_that_never_reads_is_closed_without_stalling_others() {
    let (a, b) = providers();
    let chunk = "y".repeat(1024);
    a.push(Behavior::Stream {
        text: vec![chunk; 3000],
        tool_call: None,
        usage: (1, 1),
        delay_between: Duration::ZERO,
    });
    let mut cfg = config(&a, &b, 5000);
    cfg["gateway"] = json!({"limits": {"maxBufferedBytes": 65536}});
    let g = Gateway::start(Opts::default().config(cfg));
    let mut slow = g.ws();
    let res = slow.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "flood", "idempotencyKey": "fl"}),
    );
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    // Meanwhile another client is served promptly.
    let mut other = g.ws();
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(other.call("health", json!({}))["ok"], true);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
    eventually(BOUND, || {
        (g.metric("keel_slow_consumers_closed_total") == Some(1.0)).then_some(())
    });
    assert_eq!(slow.close_code(), Some(1008));
    // The run itself finished (3 MB streamed: on a loaded machine that takes a while, so the
    // wait is repeated, up to a minute in all).
    let mut done = Value::Null;
    for _ in 0..4 {
        done = other.call("agent.wait", json!({"runId": run_id, "timeoutMs": 15000}));
        if done["payload"]["status"] != "timeout" {
            break;
        }
    }
    assert_eq!(done["payload"]["status"], "ok", "{done}");
}

#[test]
fn a_run_waiting_for_its_session_can_be_aborted() {
    let (a, b) = providers();
    a.push(Behavior::StallBeforeHead);
    let g = Gateway::start(Opts::default().config(config(&a, &b, 120_000)));
    let mut ws = g.ws();
    let first = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "stalls", "idempotencyKey": "w1"}),
    );
    assert_eq!(first["ok"], true, "{first}");
    eventually(BOUND, || (!a.requests().is_empty()).then_some(()));
    // The second run of the same session waits for the first (stalled for minutes).
    let second = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "queued", "idempotencyKey": "w2"}),
    );
    let second_id = second["payload"]["runId"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let mut ctl = g.ws();
    assert_eq!(
        ctl.call("chat.abort", json!({"runId": second_id}))["payload"]["aborted"],
        true
    );
    let end = ws.until(BOUND, |f| {
        f["event"] == "chat"
            && f["payload"]["runId"] == second_id.as_str()
            && f["payload"]["state"] != "delta"
    });
    assert_eq!(end["payload"]["state"], "aborted", "{end}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        a.requests().len(),
        1,
        "the aborted run never called the model"
    );
}

#[test]
fn a_finished_runs_key_gets_its_first_answer_after_a_restart_and_nothing_runs_again() {
    let (a, b) = providers();
    for text in ["chat answer", "agent answer", "hook answer"] {
        a.push(stream(text));
    }
    let opts = Opts::default().config(hooks_config(&a, &b));
    let g = Gateway::start(opts.clone());
    let mut ws = g.ws();

    let (chat_run, events) = chat(&mut ws, "agent:main:main", "first", "c1");
    assert_eq!(final_state(&events)["state"], "final");
    let id = ws.send_req(
        "agent",
        json!({"message": "second", "idempotencyKey": "a1"}),
    );
    let accepted = ws.res(&id);
    assert_eq!(accepted["payload"]["status"], "accepted", "{accepted}");
    let agent_final = ws.res(&id)["payload"].clone();
    assert_eq!(agent_final["status"], "ok", "{agent_final}");
    assert_eq!(agent_final["result"]["payloads"][0]["text"], "agent answer");
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        r#"{"message":"third","idempotencyKey":"h1"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let hook_run = r.json()["runId"].as_str().unwrap().to_string();
    let wait = ws.call("agent.wait", json!({"runId": hook_run, "timeoutMs": 10000}));
    assert_eq!(wait["payload"]["status"], "ok", "{wait}");
    assert_eq!(a.requests().len(), 3);

    // A clean stop lets each run's worker finish writing its key.
    drop(ws);
    g.signal("TERM");
    let g = g.restart(opts);
    let mut ws = g.ws();

    let again = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "first", "idempotencyKey": "c1"}),
    );
    assert_eq!(again["payload"]["runId"], chat_run.as_str(), "{again}");
    assert_eq!(again["payload"]["status"], "ok", "{again}");
    // `agent`: accepted, then over WebSocket the first run's final result, as it was sent.
    let id = ws.send_req(
        "agent",
        json!({"message": "second", "idempotencyKey": "a1"}),
    );
    let accepted = ws.res(&id);
    assert_eq!(accepted["payload"]["status"], "accepted", "{accepted}");
    assert_eq!(accepted["payload"]["runId"], agent_final["runId"]);
    assert_eq!(ws.res(&id)["payload"], agent_final);
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        r#"{"message":"third","idempotencyKey":"h1"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["runId"], hook_run.as_str());

    // A new key runs; once its answer is back, no repeat can still be on its way to the
    // provider (a run starts its call before it answers anything).
    a.push(stream("a new run"));
    let (fresh, events) = chat(&mut ws, "agent:main:main", "new", "c2");
    assert_ne!(fresh, chat_run);
    assert_eq!(
        final_state(&events)["message"]["content"][0]["text"],
        "a new run"
    );
    assert_eq!(
        a.requests().len(),
        4,
        "only the new key called the provider"
    );
    assert_eq!(
        g.metric("keel_idempotency_repeats_total{scope=\"runs\"}"),
        Some(3.0)
    );
    let line = g.wait_log("idempotency keys (runs)", BOUND).unwrap();
    assert!(line.contains(": 3 loaded"), "{line}");

    // A key longer than 256 characters is refused, naming the field; nothing runs.
    let long = "k".repeat(257);
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": long}),
    );
    assert_eq!(res["error"]["code"], "INVALID_REQUEST", "{res}");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idempotencyKey"),
        "{res}"
    );
    let res = ws.call("agent", json!({"message": "hi", "idempotencyKey": long}));
    assert_eq!(res["error"]["code"], "INVALID_REQUEST", "{res}");
    let r = post(
        &g,
        "/hooks/agent",
        "Authorization: Bearer hook-secret\r\n",
        &json!({"message": "hi", "idempotencyKey": long}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    assert_eq!(a.requests().len(), 4, "nothing ran");
}

/// Every request that will get a reply holds one `maxInflightPerConnection` slot until its
/// final reply — an `agent` call until its second `res`, when the run ends — so runs still
/// going cannot take a client past the limit, and the slots come back when they end.
#[test]
fn agent_runs_hold_their_in_flight_slot_until_the_final_res() {
    let a = FakeProvider::start("openai-completions");
    for _ in 0..4 {
        a.push(Behavior::StallBeforeHead);
    }
    let mut cfg = a.one_provider_config();
    cfg["gateway"] = json!({"limits": {"maxInflightPerConnection": 2}});
    let g = Gateway::start(Opts::default().config(cfg));
    let mut ws = g.ws();
    // Returns the request's id and the run's. Each run has a session of its own (runs of one
    // session take turns).
    let start = |ws: &mut Ws, key: &str| {
        let session = format!("agent:main:{key}");
        let params = json!({"message": "hi", "idempotencyKey": key, "sessionKey": session});
        let id = ws.send_req("agent", params);
        let accepted = ws.res(&id);
        assert_eq!(accepted["payload"]["status"], "accepted", "{accepted}");
        let run = accepted["payload"]["runId"].as_str().unwrap().to_string();
        (id, run)
    };
    let refused = |ws: &mut Ws, method: &str, params: Value| {
        let res = ws.call(method, params);
        assert_eq!(res["error"]["code"], "UNAVAILABLE", "{method}: {res}");
        let msg = res["error"]["message"].as_str().unwrap();
        assert!(msg.contains("too many requests in flight"), "{msg}");
    };
    let runs = [start(&mut ws, "r1"), start(&mut ws, "r2")];
    assert!(a.wait_requests(2, BOUND), "both runs reach the provider");
    // Both slots are held by runs the provider stalls: nothing more is taken, of any kind.
    refused(&mut ws, "health", json!({}));
    let third = json!({"message": "hi", "idempotencyKey": "r3", "sessionKey": "agent:main:r3"});
    refused(&mut ws, "agent", third);
    // The runs end (aborted over HTTP); each final res gives its slot back.
    for (id, run) in &runs {
        let abort = g.rpc("chat.abort", json!({"runId": run})).json();
        assert_eq!(abort["payload"]["aborted"], true, "{abort}");
        let last = ws.res(id);
        assert_ne!(last["payload"]["status"], "accepted", "{last}");
    }
    // Back to zero: exactly two runs fit again.
    let _more = [start(&mut ws, "r4"), start(&mut ws, "r5")];
    refused(&mut ws, "health", json!({}));
}

/// `agent {agentId, sessionKey}` with a key that names no agent runs in that agent's
/// `agent:<agentId>:<key>`, as `chat.send` takes it (found by the method_params fuzz target:
/// the run's key read back as the default agent's).
#[test]
fn an_agent_call_s_bare_key_belongs_to_its_agent_id() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(a.one_provider_config()));
    let r = g.rpc(
        "agent",
        json!({"message": "hi", "idempotencyKey": "bare", "agentId": "ops", "sessionKey": "notes"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let run = r.json()["payload"]["runId"].as_str().unwrap().to_string();
    eventually(BOUND, || {
        let done = g
            .rpc("agent.wait", json!({"runId": run, "timeoutMs": 0}))
            .json();
        (done["payload"]["status"] == "ok").then_some(())
    });
    let list = g.rpc("sessions.list", json!({"agentId": "ops"})).json();
    let keys: Vec<&str> = list["payload"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"agent:ops:notes"), "{keys:?}");
}
