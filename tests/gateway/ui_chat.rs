//! The dashboard's Chat page against keel: a client that makes the calls OpenClaw's Control UI
//! makes on that page, with the params it sends (read from its bundle), against a fake
//! provider — the page opens a fresh session, watches it, sends a message, renders the
//! streamed reply, reads the history back, stops a slow reply — and the refusals a page (or
//! anyone) gets for keys and params keel will not take.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MAIN: &str = "agent:main:main";

/// One provider `a` (model `a/m1`, named and with a context window) for agents `main` and
/// `ops`.
fn config(a: &FakeProvider) -> Value {
    let mut c = a.one_provider_config();
    c["models"]["providers"]["a"]["models"] =
        json!([{"id": "m1", "name": "Model One", "contextWindow": 128000}]);
    c
}

/// The payload of a successful call; fails naming the method otherwise.
#[track_caller]
fn ok(ws: &mut Ws, method: &str, params: Value) -> Value {
    let r = ws.call(method, params.clone());
    assert_eq!(r["ok"], true, "{method} {params}: {r}");
    r["payload"].clone()
}

/// A refused call's error message (INVALID_REQUEST).
#[track_caller]
fn refused(ws: &mut Ws, method: &str, params: Value) -> String {
    let r = ws.call(method, params.clone());
    assert_eq!(r["ok"], false, "{method} {params}: {r}");
    assert_eq!(
        r["error"]["code"], "INVALID_REQUEST",
        "{method} {params}: {r}"
    );
    r["error"]["message"].as_str().unwrap().to_string()
}

/// `chat.send` as the page sends it (`deliver: false`, its own run id as the idempotency key,
/// `agentId` with the key); returns keel's run id.
#[track_caller]
fn send(ws: &mut Ws, text: &str, client_run_id: &str) -> String {
    let p = ok(
        ws,
        "chat.send",
        json!({"sessionKey": MAIN, "agentId": "main", "message": text, "deliver": false,
               "idempotencyKey": client_run_id, "queueMode": "steer"}),
    );
    assert_eq!(p["status"], "started", "{p}");
    p["runId"].as_str().unwrap().to_string()
}

/// The text of a message's first content block.
fn text(m: &Value) -> &str {
    m["content"][0]["text"].as_str().unwrap_or("")
}

#[test]
fn the_chat_page_opens_a_fresh_session_sends_and_renders_the_streamed_reply() {
    let a = FakeProvider::start("openai-completions");
    a.push(Behavior::Stream {
        text: vec!["Hel".into(), "lo ".into(), "there".into()],
        tool_call: None,
        usage: (30, 3),
        delay_between: Duration::from_millis(200),
    });
    let g = Gateway::start(Opts::default().config(config(&a)));
    let mut ui = g.ws();

    // The page opens the main session, which does not exist yet: an empty conversation.
    let s = ok(
        &mut ui,
        "chat.startup",
        json!({"sessionKey": MAIN, "limit": 80, "maxBytes": 262144}),
    );
    assert_eq!(s["sessionKey"], MAIN);
    assert_eq!(s["messages"], json!([]));
    assert_eq!(s["pendingInputs"], json!({"items": [], "total": 0}));
    assert_eq!(
        (&s["hasMore"], &s["totalMessages"]),
        (&json!(false), &json!(0))
    );
    let d = &s["defaults"];
    assert_eq!(
        (&d["modelProvider"], &d["model"]),
        (&json!("a"), &json!("m1"))
    );
    assert_eq!(d["contextTokens"], 128000);
    assert_eq!(d["modelSelectionTarget"], "session");
    assert!(d["agentRuntime"]["id"].is_string(), "{d}");
    let info = &s["sessionInfo"];
    assert_eq!(info["key"], MAIN);
    assert_eq!(
        (&info["kind"], &info["classification"]),
        (&json!("direct"), &json!("main"))
    );
    assert_eq!(
        (&info["agentId"], &info["isMain"]),
        (&json!("main"), &json!(true))
    );
    assert_eq!(info["updatedAt"], Value::Null);
    for (k, v) in [("archived", false), ("pinned", false), ("unread", false)] {
        assert_eq!(info[k], v, "{k}");
    }
    assert_eq!(
        (&info["hasActiveRun"], &info["activeRunIds"]),
        (&json!(false), &json!([]))
    );
    assert_eq!(
        (&info["modelProvider"], &info["model"]),
        (&json!("a"), &json!("m1"))
    );
    assert_eq!(
        ok(&mut ui, "sessions.describe", json!({"key": MAIN})),
        json!({"session": null})
    );

    // The page reads the defaults from its sessions list too (it throws without them).
    let list = ok(
        &mut ui,
        "sessions.list",
        json!({"includeGlobal": true, "includeUnknown": true, "configuredAgentsOnly": true,
               "limit": 200, "includeDerivedTitles": true, "includeLastMessage": true}),
    );
    assert_eq!(list["defaults"], s["defaults"]);
    assert_eq!(list["sessions"], json!([]));

    // What else the page asks for on open.
    let models = ok(
        &mut ui,
        "models.list",
        json!({"view": "configured", "sessionKey": MAIN, "agentId": "main"}),
    );
    let m = &models["models"][0];
    assert_eq!(
        (&m["id"], &m["provider"], &m["name"], &m["contextWindow"]),
        (
            &json!("m1"),
            &json!("a"),
            &json!("Model One"),
            &json!(128000)
        )
    );
    assert_eq!(models["models"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(models["accountSelection"]["kind"], "automatic");
    let meta = ok(
        &mut ui,
        "chat.metadata",
        json!({"agentId": "main", "sessionKey": MAIN}),
    );
    assert_eq!(meta["models"], models["models"]);
    assert_eq!(meta["commands"], json!([]));
    assert_eq!(meta["accountSelection"], models["accountSelection"]);
    assert!(meta["runtimeSelectionLocked"].is_boolean());
    assert_eq!(
        ok(&mut ui, "progressCard.get", json!({"sessionKey": MAIN})),
        json!({"card": null})
    );
    let sub = ok(
        &mut ui,
        "sessions.messages.subscribe",
        json!({"key": MAIN, "includeApprovals": true}),
    );
    assert_eq!(
        (&sub["subscribed"], &sub["key"]),
        (&json!(true), &json!(MAIN))
    );
    assert_eq!(sub["approvalReplay"]["approvals"], json!([]));
    assert_eq!(sub["approvalReplay"]["sessionKey"], MAIN);
    // A second tab on the same session, which sends nothing itself.
    let mut tab = g.ws();
    ok(
        &mut tab,
        "sessions.messages.subscribe",
        json!({"key": MAIN}),
    );

    // The page sends a message; the reply streams back as `chat` deltas, then a final.
    let run = send(&mut ui, "hi", "ui-run-1");
    let events = ui.run_events(&run);
    let chats: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "chat")
        .map(|e| &e["payload"])
        .collect();
    let deltas: Vec<&&Value> = chats.iter().filter(|c| c["state"] == "delta").collect();
    assert!(deltas.len() >= 2, "the reply streams: {chats:#?}");
    let fin = chats.last().unwrap();
    assert_eq!(fin["state"], "final", "{fin}");
    assert_eq!(fin["message"]["role"], "assistant");
    assert_eq!(fin["message"]["content"][0]["type"], "text");
    assert_eq!(text(&fin["message"]), "Hello there");
    let mut streamed = String::new();
    for c in &chats {
        assert_eq!(
            (&c["runId"], &c["sessionKey"]),
            (&json!(run), &json!(MAIN)),
            "{c}"
        );
        assert_eq!(c["agentId"], "main");
        assert!(
            c["seq"].is_u64() && c["message"]["timestamp"].is_u64(),
            "{c}"
        );
        if c["state"] == "delta" {
            // Each delta carries the whole text so far and what it added.
            assert_ne!(c["replace"], true, "{c}");
            streamed.push_str(c["deltaText"].as_str().unwrap());
            assert_eq!(text(&c["message"]), streamed, "{c}");
        }
    }
    assert!("Hello there".starts_with(&streamed), "{streamed}");
    let seqs: Vec<u64> = chats.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    // The messages written, as `session.message`: the page's own message carries its key.
    let written: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "session.message")
        .map(|e| &e["payload"])
        .collect();
    assert_eq!(written.len(), 2, "{events:#?}");
    let (user, reply) = (&written[0]["message"], &written[1]["message"]);
    assert_eq!((&user["role"], text(user)), (&json!("user"), "hi"));
    assert_eq!(user["__openclaw"]["idempotencyKey"], "ui-run-1");
    assert_eq!(
        (&user["__openclaw"]["seq"], &reply["__openclaw"]["seq"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(
        (&reply["role"], text(reply)),
        (&json!("assistant"), "Hello there")
    );
    assert_eq!(written[1]["sessionKey"], MAIN);
    assert_eq!(written[1]["messageSeq"], 2);
    assert!(
        written[1]["session"]["sessionId"].is_string(),
        "{}",
        written[1]
    );

    // The other tab saw the same run without having sent it.
    let seen = tab.run_events(&run);
    let last = seen.last().unwrap();
    assert_eq!(
        (&last["payload"]["state"], text(&last["payload"]["message"])),
        (&json!("final"), "Hello there")
    );

    // Read back, the conversation is the exchange, in the page's shape.
    let h = ok(
        &mut ui,
        "chat.history",
        json!({"sessionKey": MAIN, "limit": 20, "maxBytes": 65536}),
    );
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{h}");
    assert_eq!((&msgs[0]["role"], text(&msgs[0])), (&json!("user"), "hi"));
    assert_eq!(
        (&msgs[1]["role"], text(&msgs[1])),
        (&json!("assistant"), "Hello there")
    );
    assert_eq!(msgs[1]["model"], "m1");
    for (i, m) in msgs.iter().enumerate() {
        let o = &m["__openclaw"];
        assert_eq!(o["seq"], i + 1, "{m}");
        assert!(
            o["id"].is_string() && o["recordTimestampMs"].is_i64(),
            "{m}"
        );
        assert_eq!(o["id"], written[i]["message"]["__openclaw"]["id"], "{m}");
    }
    assert_eq!(msgs[0]["__openclaw"]["idempotencyKey"], "ui-run-1");
    assert_eq!(
        (&h["totalMessages"], &h["hasMore"]),
        (&json!(2), &json!(false))
    );
    let sid = h["sessionId"].as_str().unwrap();
    let info = &h["sessionInfo"];
    assert_eq!(info["sessionId"], sid);
    assert_eq!(
        (&info["hasActiveRun"], &info["status"]),
        (&json!(false), &json!("done"))
    );
    assert_eq!(info["lastRunId"], run);
    assert!(info["updatedAt"].is_i64(), "{info}");
    let s = ok(
        &mut ui,
        "chat.startup",
        json!({"sessionKey": MAIN, "limit": 80, "maxBytes": 262144}),
    );
    assert_eq!(s["messages"], h["messages"]);
    assert_eq!(s["sessionId"], sid);
    let d = ok(&mut ui, "sessions.describe", json!({"key": MAIN}));
    assert_eq!(
        (&d["session"]["key"], &d["session"]["sessionId"]),
        (&json!(MAIN), &json!(sid))
    );

    // The page leaves the session: no more of its events.
    let off = ok(
        &mut tab,
        "sessions.messages.unsubscribe",
        json!({"key": MAIN}),
    );
    assert_eq!(off["subscribed"], false);
    a.push(Behavior::text(&["again"]));
    let run2 = send(&mut ui, "again", "ui-run-2");
    ui.run_events(&run2);
    // Whatever the tab was sent meanwhile came before the answer to this: nothing of run2.
    let mut tab_frames = Vec::new();
    let id = tab.send_req("progressCard.get", json!({"sessionKey": MAIN}));
    tab.until(BOUND, |f| {
        tab_frames.push(f.clone());
        f["id"] == id
    });
    assert!(
        tab_frames.iter().all(|f| f["payload"]["runId"] != run2),
        "{tab_frames:#?}"
    );
}

#[test]
fn a_stop_from_the_page_ends_a_slow_reply_at_once() {
    let a = FakeProvider::start("openai-completions");
    let slow = || Behavior::Stream {
        text: vec!["x".to_string(); 400],
        tool_call: None,
        usage: (5, 5),
        delay_between: Duration::from_millis(50),
    };
    a.push(slow());
    a.push(slow());
    let g = Gateway::start(Opts::default().config(config(&a)));
    let mut ui = g.ws();
    ok(&mut ui, "sessions.messages.subscribe", json!({"key": MAIN}));
    let mut tab = g.ws();
    ok(
        &mut tab,
        "sessions.messages.subscribe",
        json!({"key": MAIN}),
    );
    let run = send(&mut ui, "long", "stop-1");
    ui.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["state"] == "delta"
    });
    // While it streams, the page sees the run as the session's active one.
    let info = ok(&mut ui, "chat.startup", json!({"sessionKey": MAIN}))["sessionInfo"].clone();
    assert_eq!(
        (&info["hasActiveRun"], &info["activeRunIds"]),
        (&json!(true), &json!([run]))
    );
    assert_eq!(info["status"], "running");

    // The page's stop button: chat.abort with the session and the run it knows.
    let t0 = Instant::now();
    let stop = ok(
        &mut tab,
        "chat.abort",
        json!({"sessionKey": MAIN, "agentId": "main", "runId": run}),
    );
    assert_eq!(
        (&stop["aborted"], &stop["runIds"]),
        (&json!(true), &json!([run]))
    );
    let end = ui.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["runId"] == run && f["payload"]["state"] != "delta"
    });
    assert_eq!(end["payload"]["state"], "aborted", "{end}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // Stopped as asked: not an error for the page to show.
    assert!(end["payload"].get("errorMessage").is_none(), "{end}");
    let end = tab.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["runId"] == run && f["payload"]["state"] != "delta"
    });
    assert_eq!(
        end["payload"]["state"], "aborted",
        "the other tab sees the stop too"
    );
    let info = ok(&mut ui, "chat.startup", json!({"sessionKey": MAIN}))["sessionInfo"].clone();
    assert_eq!(
        (&info["hasActiveRun"], &info["status"]),
        (&json!(false), &json!("killed"))
    );
    // Stopping again: nothing left to stop.
    let again = ok(
        &mut ui,
        "chat.abort",
        json!({"sessionKey": MAIN, "runId": run}),
    );
    assert_eq!(
        (&again["aborted"], &again["runIds"]),
        (&json!(false), &json!([]))
    );
    let none = ok(&mut ui, "sessions.abort", json!({"key": MAIN}));
    assert_eq!(
        (&none["status"], &none["abortedRunId"]),
        (&json!("no-active-run"), &Value::Null)
    );

    // When the page does not know the run, it stops the session.
    let run2 = send(&mut ui, "long again", "stop-2");
    ui.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["runId"] == run2 && f["payload"]["state"] == "delta"
    });
    let stop = ok(
        &mut tab,
        "sessions.abort",
        json!({"key": MAIN, "agentId": "main"}),
    );
    assert_eq!(
        (&stop["status"], &stop["abortedRunId"]),
        (&json!("aborted"), &json!(run2))
    );
    let end = ui.until(BOUND, |f| {
        f["event"] == "chat" && f["payload"]["runId"] == run2 && f["payload"]["state"] != "delta"
    });
    assert_eq!(end["payload"]["state"], "aborted", "{end}");
}

/// A transcript of `n` messages (`m1`…`mn`, alternating user and assistant) for `key`, as
/// OpenClaw writes it, and its store entry.
fn write_session(state: &std::path::Path, key: &str, n: usize, big: Option<usize>) {
    let dir = state.join("agents/main/sessions");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sessions.json"),
        json!({key: {"sessionId": "s-long", "updatedAt": 1_700_000_000_000_i64, "chatType": "direct",
                     "channel": "telegram", "model": "m1", "modelProvider": "a", "totalTokens": 99}})
        .to_string(),
    )
    .unwrap();
    let mut lines = vec![json!({"type": "session", "version": 3, "id": "s-long"}).to_string()];
    for i in 1..=n {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        let body = match big {
            Some(b) if b == i => "y".repeat(200 << 10),
            _ => format!("m{i}"),
        };
        lines.push(
            json!({"type": "message", "id": format!("e{i}"), "timestamp": "2026-01-02T03:04:05.000Z",
                   "message": {"role": role, "content": [{"type": "text", "text": body}], "timestamp": i}})
            .to_string(),
        );
        if i % 5 == 0 {
            // Lines that are not messages are not shown or counted.
            lines.push(json!({"type": "custom", "id": format!("c{i}")}).to_string());
        }
    }
    std::fs::write(dir.join("s-long.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_history_pages_back_within_its_bounds() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a)));
    let key = "agent:main:telegram:direct:42";
    write_session(&g.state(), key, 30, Some(25));
    let mut ui = g.ws();
    let texts = |h: &Value| -> Vec<(u64, String)> {
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["__openclaw"]["seq"].as_u64().unwrap(),
                    text(m).chars().take(60).collect(),
                )
            })
            .collect()
    };
    // The newest page; the message over the per-message bound is a placeholder.
    let h = ok(
        &mut ui,
        "chat.history",
        json!({"sessionKey": key, "limit": 10}),
    );
    let want: Vec<u64> = (21..=30).collect();
    assert_eq!(texts(&h).iter().map(|t| t.0).collect::<Vec<_>>(), want);
    assert_eq!(texts(&h)[9].1, "m30");
    assert_eq!(texts(&h)[4].1, "[chat.history omitted: message too large]");
    assert_eq!(h["messages"][4]["__openclaw"]["truncated"], true);
    assert_eq!(h["messages"][4]["__openclaw"]["id"], "e25");
    assert_eq!(
        (&h["hasMore"], &h["nextOffset"], &h["totalMessages"]),
        (&json!(true), &json!(10), &json!(30))
    );
    assert_eq!(h["sessionId"], "s-long");
    let info = &h["sessionInfo"];
    assert_eq!(
        (&info["kind"], &info["classification"], &info["isMain"]),
        (&json!("direct"), &json!("direct"), &json!(false))
    );
    assert_eq!(
        (&info["channel"], &info["totalTokens"], &info["updatedAt"]),
        (
            &json!("telegram"),
            &json!(99),
            &json!(1_700_000_000_000_i64)
        )
    );
    // The page further back (the page asks with offset and limit 1000).
    let older = ok(
        &mut ui,
        "chat.history",
        json!({"sessionKey": key, "limit": 1000, "offset": 10}),
    );
    assert_eq!(
        texts(&older).iter().map(|t| t.0).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        (&older["hasMore"], &older["offset"]),
        (&json!(false), &json!(10))
    );
    assert!(older.get("nextOffset").is_none(), "{older}");
    // Bounded in bytes: the newest that fit, and the next page starts where this one stopped.
    let small = ok(
        &mut ui,
        "chat.history",
        json!({"sessionKey": key, "limit": 20, "maxBytes": 1200}),
    );
    let got = texts(&small);
    assert!(!got.is_empty() && got.len() < 10, "{got:?}");
    assert_eq!(got.last().unwrap().0, 30);
    assert!(serde_json::to_string(&small["messages"]).unwrap().len() <= 1200);
    assert_eq!(small["nextOffset"], 31 - got[0].0);
    // chat.startup reads the same page.
    let s = ok(
        &mut ui,
        "chat.startup",
        json!({"sessionKey": key, "limit": 10}),
    );
    assert_eq!(s["messages"], h["messages"]);
    // A delta cursor keel never handed out: read a whole page instead.
    assert_eq!(
        ok(
            &mut ui,
            "chat.history",
            json!({"sessionKey": key, "cursor": "eyJ2IjoxfQ"})
        ),
        json!({"kind": "reset"})
    );
    // keel's own clients' call still answers the newest messages.
    let plain = ok(&mut ui, "chat.history", json!({"sessionKey": key}));
    assert_eq!(plain["messages"].as_array().unwrap().len(), 30);
}

#[test]
fn keys_agents_and_params_the_page_may_not_use_are_refused_clearly() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a)));
    let mut ws = g.ws();
    let hostile = ["agent:%%%:s", "agent::s", "agent:/some/dir", "agent:main:"];
    for key in hostile {
        for (method, params, field) in [
            ("chat.startup", json!({"sessionKey": key}), "sessionKey"),
            ("chat.history", json!({"sessionKey": key}), "sessionKey"),
            ("sessions.describe", json!({"key": key}), "key"),
            ("sessions.messages.subscribe", json!({"key": key}), "key"),
            ("sessions.messages.unsubscribe", json!({"key": key}), "key"),
            ("progressCard.get", json!({"sessionKey": key}), "sessionKey"),
            ("models.list", json!({"sessionKey": key}), "sessionKey"),
            ("chat.metadata", json!({"sessionKey": key}), "sessionKey"),
            ("sessions.abort", json!({"key": key}), "key"),
            ("chat.abort", json!({"sessionKey": key}), "sessionKey"),
        ] {
            let msg = refused(&mut ws, method, params);
            assert!(msg.contains(field), "{method} {key}: {msg}");
        }
    }
    for (method, params, needle) in [
        // Not a string, or missing.
        (
            "chat.startup",
            json!({"sessionKey": 5}),
            "sessionKey must be a string",
        ),
        (
            "chat.startup",
            json!({"limit": 80}),
            "sessionKey is required",
        ),
        (
            "sessions.describe",
            json!({"key": ["x"]}),
            "key must be a string",
        ),
        ("sessions.messages.subscribe", json!({}), "key is required"),
        (
            "chat.history",
            json!({"sessionKey": MAIN, "maxBytes": "big"}),
            "maxBytes",
        ),
        (
            "chat.history",
            json!({"sessionKey": MAIN, "offset": -1}),
            "offset",
        ),
        // An agent this config does not know, or one the key does not belong to.
        (
            "chat.startup",
            json!({"sessionKey": MAIN, "agentId": "nobody"}),
            "unknown agentId",
        ),
        (
            "models.list",
            json!({"agentId": "nobody"}),
            "unknown agentId",
        ),
        (
            "chat.metadata",
            json!({"agentId": "nobody"}),
            "unknown agentId",
        ),
        (
            "sessions.describe",
            json!({"key": MAIN, "agentId": "ops"}),
            "does not match",
        ),
        (
            "sessions.messages.subscribe",
            json!({"key": MAIN, "agentId": "ops"}),
            "does not match",
        ),
        (
            "chat.send",
            json!({"sessionKey": MAIN, "agentId": "ops", "message": "m", "idempotencyKey": "x1"}),
            "does not match",
        ),
        (
            "chat.send",
            json!({"sessionKey": MAIN, "agentId": "nobody", "message": "m", "idempotencyKey": "x2"}),
            "unknown agentId",
        ),
        // What keel cannot do is said, not ignored.
        (
            "chat.send",
            json!({"sessionKey": MAIN, "message": "see this", "idempotencyKey": "x3",
                   "attachments": [{"type": "image", "mimeType": "image/png", "content": "AAAA"}]}),
            "attachments are not supported",
        ),
        (
            "chat.history",
            json!({"sessionKey": MAIN, "messageId": "e1"}),
            "messageId",
        ),
        ("models.list", json!({"provider": "nope"}), "not configured"),
        ("chat.abort", json!({}), "runId"),
    ] {
        let msg = refused(&mut ws, method, params.clone());
        assert!(msg.contains(needle), "{method} {params}: {msg}");
    }
    // A key that names no agent, with the agent it is for, is that agent's key.
    let s = ok(
        &mut ws,
        "chat.startup",
        json!({"sessionKey": "global", "agentId": "ops"}),
    );
    assert_eq!(s["sessionKey"], "agent:ops:global");
    assert_eq!(s["sessionInfo"]["agentId"], "ops");
    // A run of another session is not this session's to stop.
    a.push(Behavior::text(&["ok"]));
    let run = ok(
        &mut ws,
        "chat.send",
        json!({"sessionKey": "agent:ops:main", "message": "m", "idempotencyKey": "x4"}),
    )["runId"]
        .as_str()
        .unwrap()
        .to_string();
    ws.run_events(&run);
    let msg = refused(
        &mut ws,
        "chat.abort",
        json!({"sessionKey": MAIN, "runId": run}),
    );
    assert!(msg.contains("not a run of"), "{msg}");
    // An empty attachment list is no attachment.
    a.push(Behavior::text(&["fine"]));
    let p = ok(
        &mut ws,
        "chat.send",
        json!({"sessionKey": MAIN, "message": "m", "idempotencyKey": "x5", "attachments": []}),
    );
    let events = ws.run_events(p["runId"].as_str().unwrap());
    assert_eq!(events.last().unwrap()["payload"]["state"], "final");
    assert_eq!(
        a.requests().len(),
        2,
        "refused sends never reached the model"
    );
    // Over HTTP there is no connection to send events to.
    let h = g
        .rpc("sessions.messages.subscribe", json!({"key": MAIN}))
        .json();
    assert_eq!(
        h["payload"],
        json!({"subscribed": false, "key": MAIN}),
        "{h}"
    );
    // The pages' reads of a refused key wrote nothing: only the two sessions that ran exist.
    let stores: Vec<String> = std::fs::read_dir(g.state().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut stores = stores;
    stores.sort();
    assert_eq!(stores, ["main", "ops"]);
}
