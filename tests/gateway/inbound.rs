//! Inbound channels over Telegram long polling, against a fake Bot API and a fake provider:
//! a message starts one run and its reply reaches that chat; redeliveries, unknown senders
//! (pairing), `409`, a stalled long poll and SIGKILLs.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use crate::fake_telegram::{FakeTelegram, Next};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const OWNER: i64 = 42;

/// The provider's config plus a Telegram account polling `tg` (1 s long polls), with
/// `telegram` merged over the account's keys.
fn config(p: &FakeProvider, tg: &FakeTelegram, telegram: Value) -> Value {
    let mut c = p.one_provider_config();
    let mut t = json!({"botToken": "123:abc", "baseUrl": tg.url(), "pollTimeoutSeconds": 1});
    if let (Value::Object(t), Value::Object(extra)) = (&mut t, telegram) {
        t.extend(extra);
    }
    c["channels"] = json!({"telegram": t});
    c
}

/// How many model calls had `text` as their last user message: the runs it started.
fn runs_of(p: &FakeProvider, text: &str) -> usize {
    p.requests()
        .iter()
        .filter(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                .is_some_and(|m| m["content"].to_string().contains(text))
        })
        .count()
}

fn telegram_account(g: &Gateway) -> Value {
    let r = g.rpc("channels.status", json!({}));
    r.json()["payload"]["channelAccounts"]["telegram"][0].clone()
}

#[test]
fn an_allowed_dm_runs_once_and_its_reply_reaches_that_chat() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    p.push(Behavior::text(&["hello ", "from the agent"]));
    let g = Gateway::start(Opts::default().config(config(
        &p,
        &tg,
        json!({"allowFrom": [OWNER.to_string()]}),
    )));
    tg.dm(OWNER, "first message");
    let sent = eventually(BOUND, || {
        let s = tg.sent_to(OWNER);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent, ["hello from the agent"]);
    assert_eq!(runs_of(&p, "first message"), 1);
    // The same update again (Telegram redelivers what was not confirmed): no second run.
    tg.script(Next::Replay);
    tg.dm(OWNER, "second message");
    eventually(BOUND, || (runs_of(&p, "second message") == 1).then_some(()));
    eventually(BOUND, || (tg.sent_to(OWNER).len() == 2).then_some(()));
    let a = eventually(BOUND, || {
        let a = telegram_account(&g);
        (a["duplicates"].as_u64() >= Some(1)).then_some(a)
    });
    assert_eq!(runs_of(&p, "first message"), 1, "the replay ran nothing");
    assert_eq!(a["connected"], true, "{a}");
    assert_eq!(a["mode"], "polling");
    assert_eq!(a["runsStarted"], 2, "{a}");
    assert!(a["lastInboundAt"].as_u64().is_some(), "{a}");
    // The DM went to the agent's main session, and its origin is that chat.
    let m = g.metric("keel_inbound_runs_total{channel=\"telegram\",account=\"default\"}");
    assert_eq!(m, Some(2.0));
    let store =
        std::fs::read_to_string(g.state().join("agents/main/sessions/sessions.json")).unwrap();
    let store: Value = serde_json::from_str(&store).unwrap();
    assert!(store.get("agent:main:main").is_some(), "{store}");
}

#[test]
fn an_unknown_sender_gets_a_pairing_code_and_runs_once_approved() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let g = Gateway::start(Opts::default().config(config(&p, &tg, json!({}))));
    let stranger = 7001;
    tg.dm(stranger, "let me in");
    let code_msg = eventually(BOUND, || tg.sent_to(stranger).into_iter().next());
    assert!(code_msg.contains("7001"), "{code_msg}");
    let code = code_msg
        .lines()
        .find_map(|l| l.strip_prefix("Pairing code: "))
        .expect("a code")
        .to_string();
    assert_eq!(code.len(), 8);
    // A second message within the hour: no second code, nothing run.
    tg.dm(stranger, "hello?");
    eventually(BOUND, || {
        (telegram_account(&g)["refused"].as_u64() >= Some(2)).then_some(())
    });
    assert_eq!(tg.sent_to(stranger).len(), 1, "one code an hour");
    assert!(p.requests().is_empty(), "nothing ran");
    // The request is listed; a wrong code is refused; the right one approves.
    let list = g.rpc("pairing.list", json!({"channel": "telegram"})).json();
    assert_eq!(
        list["payload"]["requests"][0]["code"],
        code.as_str(),
        "{list}"
    );
    assert_eq!(list["payload"]["requests"][0]["senderId"], "7001");
    let wrong = g.rpc(
        "pairing.approve",
        json!({"channel": "telegram", "code": "AAAAAAAA"}),
    );
    assert_eq!(
        wrong.json()["error"]["code"],
        "NOT_FOUND",
        "{}",
        wrong.text()
    );
    let ok = g.rpc(
        "pairing.approve",
        json!({"channel": "telegram", "code": code}),
    );
    assert_eq!(ok.json()["payload"]["senderId"], "7001", "{}", ok.text());
    tg.dm(stranger, "now may I?");
    eventually(BOUND, || (runs_of(&p, "now may I?") == 1).then_some(()));
    eventually(BOUND, || (tg.sent_to(stranger).len() == 2).then_some(()));
    assert_eq!(
        runs_of(&p, "let me in"),
        0,
        "what came before approval never runs"
    );
}

#[test]
fn a_conflict_shows_in_status_and_polling_recovers() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    for _ in 0..3 {
        tg.script(Next::Conflict);
    }
    let g = Gateway::start(Opts::default().config(config(
        &p,
        &tg,
        json!({"allowFrom": ["*"], "dmPolicy": "open"}),
    )));
    let a = eventually(BOUND, || {
        let a = telegram_account(&g);
        a["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("409"))
            .then_some(a)
    });
    assert_eq!(
        a["connected"], false,
        "a conflicted poller is not connected: {a}"
    );
    let status = g.rpc("channels.status", json!({})).json();
    let issues = status["payload"]["statusIssues"].to_string();
    assert!(issues.contains("409"), "{issues}");
    // It backs off and recovers by itself.
    tg.dm(OWNER, "after the conflict");
    eventually(BOUND, || (tg.sent_to(OWNER).len() == 1).then_some(()));
    assert_eq!(telegram_account(&g)["connected"], true);
}

#[test]
fn a_stalled_long_poll_is_abandoned_and_health_is_unaffected() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    tg.script(Next::Stall);
    let g = Gateway::start(Opts::default().config(config(
        &p,
        &tg,
        json!({"allowFrom": [OWNER.to_string()]}),
    )));
    tg.dm(OWNER, "through the stall");
    // While the poll hangs, /healthz answers at once.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let s = Instant::now();
        assert_eq!(g.get("/healthz").status, 200);
        assert!(s.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The stall limit (timeout + 5 s) ends the call; the next poll gets the message.
    eventually(BOUND, || (tg.sent_to(OWNER).len() == 1).then_some(()));
    assert!(tg.polls() >= 2);
    let a = telegram_account(&g);
    assert_eq!(a["connected"], true, "{a}");
    assert!(
        a["errors"].as_u64() >= Some(1),
        "the stall was counted: {a}"
    );
}

#[test]
fn errors_back_off_and_retry_after_is_honoured() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    tg.script(Next::Status(502));
    tg.script(Next::Malformed);
    tg.script(Next::RetryAfter(1));
    let g = Gateway::start(Opts::default().config(config(
        &p,
        &tg,
        json!({"allowFrom": [OWNER.to_string()]}),
    )));
    tg.dm(OWNER, "after the errors");
    eventually(BOUND, || (tg.sent_to(OWNER).len() == 1).then_some(()));
    let a = telegram_account(&g);
    assert!(a["errors"].as_u64() >= Some(3), "{a}");
    assert_eq!(runs_of(&p, "after the errors"), 1);
}

#[test]
fn sigkill_mid_stream_runs_every_message_exactly_once() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let cfg = config(&p, &tg, json!({"allowFrom": [OWNER.to_string()]}));
    // Each reply takes a while, so messages of the one session queue behind each other and
    // the kills land with entries waiting and runs in flight.
    for _ in 0..64 {
        p.push(Behavior::Stream {
            text: vec!["re".into(), "ply".into()],
            tool_call: None,
            usage: (5, 1),
            delay_between: Duration::from_millis(40),
        });
    }
    let mut g = Gateway::start(Opts::default().config(cfg.clone()));
    let total = 24;
    let kills = 3;
    let mut rng = keel::clock::Rng::from_os();
    let mut sent = 0;
    let mut recovered_logs = String::new();
    for _ in 0..kills {
        for _ in 0..total / (kills + 1) {
            tg.dm(OWNER, &format!("message #{sent}#"));
            sent += 1;
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 40));
        }
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 300));
        g.signal("KILL");
        assert!(g.wait_exit(BOUND).is_some());
        g = g.restart(Opts::default().config(cfg.clone()));
        g.wait_log("inbound", BOUND);
        recovered_logs.push_str(&g.log_text());
    }
    while sent < total {
        tg.dm(OWNER, &format!("message #{sent}#"));
        sent += 1;
    }
    // Every message's run has started once: its user message is in the session exactly once.
    let session_texts = || -> Vec<String> {
        let dir = g.state().join("agents/main/sessions");
        let mut out = Vec::new();
        for f in files(&dir) {
            if f.extension().is_some_and(|e| e == "jsonl") {
                for l in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                    let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                    if v["message"]["role"] == "user" {
                        out.push(v["message"]["content"].to_string());
                    }
                }
            }
        }
        out
    };
    let bound = BOUND * 2;
    eventually(bound, || {
        let t = session_texts();
        (0..total)
            .all(|i| t.iter().any(|x| x.contains(&format!("#{i}#"))))
            .then_some(())
    });
    // Resume marks by the key of the run they resume, and each user message's key.
    let (mut marks, mut keys): (HashMap<String, usize>, HashMap<String, String>) =
        Default::default();
    for f in files(&g.state().join("agents/main/sessions")) {
        for l in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            if v["customType"] == "keel.run.resume" {
                let k = v["data"]["idempotencyKey"].as_str().unwrap_or("");
                *marks.entry(k.to_string()).or_default() += 1;
            } else if let Some(k) = v["message"]["idempotencyKey"].as_str() {
                keys.insert(v["message"]["content"].to_string(), k.to_string());
            }
        }
    }
    let texts = session_texts();
    let mut resumed = 0;
    for i in 0..total {
        let tag = format!("#{i}#");
        let in_session = texts.iter().filter(|x| x.contains(&tag)).count();
        assert_eq!(in_session, 1, "message {i} started {in_session} runs");
        let key = keys
            .iter()
            .find(|(text, _)| text.contains(&tag))
            .map(|(_, k)| k.clone())
            .unwrap_or_default();
        let resumes = marks.get(&key).copied().unwrap_or(0);
        resumed += resumes;
        let calls = runs_of(&p, &tag);
        // A run cut by a kill is resumed: it reaches the model again, once per resume at most.
        assert!(
            (1..=1 + resumes).contains(&calls),
            "message {i} reached the model {calls} times, resumed {resumes} times"
        );
    }
    // One reply per message: those a kill caught mid-send are held for an operator (Telegram
    // cannot drop a copy), which the fake may or may not have received.
    let l = eventually(BOUND, || {
        let l = g.rpc("delivery.list", json!({"limit": 100})).json()["payload"].clone();
        let queued = files(&g.state().join("inbound/queue")).len();
        (queued == 0 && l["counts"]["pending"] == 0 && l["counts"]["sending"] == 0).then_some(l)
    });
    let held = l["counts"]["unknown_after_send"].as_u64().unwrap_or(0) as usize;
    let replies = tg.sent_to(OWNER).len();
    assert!(
        replies <= total && replies + held >= total,
        "{replies} replies, {held} held, for {total} messages"
    );
    let waiting = recovered_logs.matches("waiting from before").count();
    eprintln!(
        "inbound crash test: {total} messages, {kills} kills, {resumed} resumed runs, \
         {replies} replies, {held} held; {waiting} boots found messages waiting"
    );
}

#[test]
fn each_chat_s_reply_comes_from_the_bot_it_wrote_to() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    p.push(Behavior::text(&["reply one"]));
    p.push(Behavior::text(&["reply two"]));
    // No channel-level token: one account by its own botToken, one by a tokenFile.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ops.token");
    std::fs::write(&file, "222:opsbot\n").unwrap();
    let mut c = p.one_provider_config();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1,
        "allowFrom": [OWNER.to_string(), "43"],
        "accounts": {
            "main": {"botToken": "111:mainbot"},
            "ops": {"tokenFile": file.to_str().unwrap()},
        },
    }});
    let _g = Gateway::start(Opts::default().config(c));
    tg.dm_to("111:mainbot", OWNER, "to the main bot");
    eventually(BOUND, || {
        (!tg.sent_with_token(OWNER).is_empty()).then_some(())
    });
    tg.dm_to("222:opsbot", 43, "to the ops bot");
    let ops = eventually(BOUND, || {
        let s = tg.sent_with_token(43);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(
        tg.sent_with_token(OWNER),
        [("111:mainbot".to_string(), "reply one".to_string())]
    );
    assert_eq!(ops, [("222:opsbot".to_string(), "reply two".to_string())]);
}

/// Posts `body` to keel's Telegram webhook route, with `secret` as the secret-token header.
fn post_update(g: &Gateway, secret: Option<&str>, body: &str) -> Response {
    let secret = secret
        .map(|s| format!("X-Telegram-Bot-Api-Secret-Token: {s}\r\n"))
        .unwrap_or_default();
    g.http(&format!(
        "POST /tg-hook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{secret}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn webhook_mode_takes_each_update_once_and_refuses_bad_ones() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    p.push(Behavior::text(&["hooked reply"]));
    let g = Gateway::start(Opts::default().config(config(
        &p,
        &tg,
        json!({"allowFrom": [OWNER.to_string()], "webhookUrl": "https://bot.example/tg-hook",
               "webhookSecret": "hook-secret_1", "webhookPath": "/tg-hook"}),
    )));
    // keel registers the webhook with its URL and secret, and does not poll.
    let hooks = eventually(BOUND, || {
        let h = tg.webhooks();
        (!h.is_empty()).then_some(h)
    });
    assert_eq!(hooks[0].0, "123:abc");
    assert_eq!(hooks[0].1["url"], "https://bot.example/tg-hook");
    assert_eq!(hooks[0].1["secret_token"], "hook-secret_1");
    let mut update = FakeTelegram::dm_update(OWNER, "via the webhook");
    update["update_id"] = json!(5001);
    let body = update.to_string();
    // Wrong or missing secret: 401, nothing runs.
    assert_eq!(post_update(&g, Some("wrong"), &body).status, 401);
    assert_eq!(post_update(&g, None, &body).status, 401);
    // Not JSON: 400.
    assert_eq!(
        post_update(&g, Some("hook-secret_1"), "{\"update_id\": 1,").status,
        400
    );
    assert!(p.requests().is_empty(), "nothing ran for refused requests");
    // The real update: 200 once stored (OpenClaw's durable-acceptance header), one run,
    // and its reply in that chat.
    let r = post_update(&g, Some("hook-secret_1"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-openclaw-delivery-accepted").as_deref(),
        Some("durable")
    );
    let sent = eventually(BOUND, || {
        let s = tg.sent_to(OWNER);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent, ["hooked reply"]);
    // Telegram's retry of the same update_id: 200, no second run.
    let again = post_update(&g, Some("hook-secret_1"), &body);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-openclaw-delivery-accepted"), None);
    let a = eventually(BOUND, || {
        let a = telegram_account(&g);
        (a["duplicates"].as_u64() >= Some(1)).then_some(a)
    });
    assert_eq!(runs_of(&p, "via the webhook"), 1);
    assert_eq!(tg.sent_to(OWNER).len(), 1);
    assert_eq!(a["mode"], "webhook", "{a}");
    assert_eq!(a["connected"], true, "{a}");
    assert!(a["refused"].as_u64() >= Some(3), "{a}");
    assert_eq!(tg.polls(), 0, "an account in webhook mode does not poll");
}

#[test]
fn the_dashboard_lists_approves_and_dismisses_pairing_requests_by_id() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    p.push(Behavior::text(&["welcome in"]));
    let g = Gateway::start(Opts::default().config(config(&p, &tg, json!({}))));
    let mut ws = Ws::open(&g.addr());
    let hello = ws.connect(json!({"token": g.token}), 3, 4);
    let methods = hello["payload"]["features"]["methods"].as_array().unwrap();
    for m in [
        "channels.pairing.list",
        "channels.pairing.approve",
        "channels.pairing.dismiss",
    ] {
        assert!(methods.contains(&json!(m)), "{m} in {methods:?}");
    }
    let (alice, bob) = (7101, 7102);
    tg.dm(alice, "hi, I am Alice");
    tg.dm(bob, "hi, I am Bob");
    eventually(BOUND, || {
        (!tg.sent_to(alice).is_empty() && !tg.sent_to(bob).is_empty()).then_some(())
    });
    let list = g.rpc("channels.pairing.list", json!({})).json();
    let l = &list["payload"];
    assert_eq!(l["accounts"][0]["accountId"], "default", "{list}");
    assert_eq!(l["accounts"][0]["channel"], "telegram");
    assert_eq!(l["limits"]["ttlMs"], 3_600_000);
    let reqs = l["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2, "{list}");
    let id_of = |sender: &str| {
        reqs.iter()
            .find(|r| r["senderId"] == sender)
            .and_then(|r| r["requestId"].as_str())
            .unwrap()
            .to_string()
    };
    let (a_id, b_id) = (id_of("7101"), id_of("7102"));
    assert!(
        reqs[0]["expiresAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    // Dismiss Bob: his request is gone and he is still not let in.
    let d = g.rpc(
        "channels.pairing.dismiss",
        json!({"channel": "telegram", "accountId": "default", "requestId": b_id}),
    );
    assert_eq!(d.json()["payload"]["senderId"], "7102", "{}", d.text());
    // Approve Alice, telling her.
    let a = g.rpc(
        "channels.pairing.approve",
        json!({"channel": "telegram", "accountId": "default", "requestId": a_id,
               "notify": true}),
    );
    let a = a.json();
    assert_eq!(a["payload"]["senderId"], "7101", "{a}");
    assert_eq!(a["payload"]["notification"], "sent", "{a}");
    assert_eq!(a["payload"]["commandOwnerBootstrap"], "not-requested");
    eventually(BOUND, || (tg.sent_to(alice).len() == 2).then_some(()));
    // The same id again: the request no longer exists.
    let again = g.rpc(
        "channels.pairing.approve",
        json!({"channel": "telegram", "accountId": "default", "requestId": a_id}),
    );
    assert_eq!(again.json()["error"]["code"], "INVALID_REQUEST");
    let list = g
        .rpc("channels.pairing.list", json!({"channel": "telegram"}))
        .json();
    assert_eq!(list["payload"]["requests"], json!([]), "{list}");
    // Alice now runs; Bob is still unknown: nothing runs, and his dismissed request is
    // gone, so he is given a new code.
    tg.dm(alice, "now as a friend");
    tg.dm(bob, "and me?");
    eventually(BOUND, || (tg.sent_to(alice).len() == 3).then_some(()));
    assert_eq!(tg.sent_to(alice)[2], "welcome in");
    eventually(BOUND, || (tg.sent_to(bob).len() == 2).then_some(()));
    assert_eq!(runs_of(&p, "and me?"), 0);
    // Hostile params are refused, not run.
    let bad = g.rpc(
        "channels.pairing.approve",
        json!({"channel": "telegram", "accountId": "default"}),
    );
    assert_eq!(bad.json()["error"]["code"], "INVALID_REQUEST");
    let bad = g.rpc("channels.pairing.list", json!({"channel": "slack-x"}));
    assert_eq!(bad.json()["error"]["code"], "INVALID_REQUEST");
}
