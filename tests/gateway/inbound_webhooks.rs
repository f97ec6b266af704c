//! Inbound channels over webhooks on keel's own port: the Slack Events API and Feishu's event
//! subscription, signed (and for Feishu encrypted) as the channels do, against a fake
//! provider and fake Slack / Feishu APIs for the replies.

use crate::common::*;
use crate::delivery::FakeChannel;
use crate::fake_provider::{Behavior, FakeProvider};
use keel::digest::{hex, hmac_sha256, sha256};
use serde_json::{Value, json};

pub const SIGNING_SECRET: &str = "slack-signing-secret-8f2";
const FEISHU_TOKEN: &str = "feishu-verification-token";
const FEISHU_KEY: &str = "feishu-encrypt-key-3b9";
pub const OWNER: &str = "U0OWNER";
const FEISHU_OWNER: &str = "ou_owner0001";
pub const SLACK_OK: &str = r#"{"ok":true,"channel":"D024BE91L","ts":"1700000001.000200"}"#;
const FEISHU_OK: &str = r#"{"code":0,"msg":"success","data":{"message_id":"om_1"}}"#;

fn now_s() -> i64 {
    keel::clock::wall_ms() as i64 / 1000
}

/// The provider's config plus Slack (HTTP mode) and Feishu (webhook mode) accounts whose
/// replies go to the fakes; `slack` / `feishu` are merged over each channel's keys.
pub fn config(p: &FakeProvider, sl: &FakeChannel, fs: &FakeChannel, slack: Value) -> Value {
    let mut c = p.one_provider_config();
    let mut s = json!({"mode": "http", "signingSecret": SIGNING_SECRET, "botToken": "xoxb-1",
        "baseUrl": sl.url(), "botUserId": "U0BOT", "allowFrom": [OWNER]});
    if let (Value::Object(s), Value::Object(extra)) = (&mut s, slack) {
        s.extend(extra);
    }
    c["channels"] = json!({
        "slack": s,
        "feishu": {"connectionMode": "webhook", "verificationToken": FEISHU_TOKEN,
            "encryptKey": FEISHU_KEY, "baseUrl": fs.url(), "tenantAccessToken": "t-feishu",
            "allowFrom": [FEISHU_OWNER]},
    });
    c
}

/// A raw POST with these headers; the answer.
pub fn post(addr: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes)
}

/// Slack's headers for `body` at `ts` (seconds), signed with `secret`.
pub fn slack_signed(secret: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    let ts = ts.to_string();
    let mac = hmac_sha256(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body]);
    vec![
        ("X-Slack-Request-Timestamp".into(), ts),
        ("X-Slack-Signature".into(), format!("v0={}", hex(&mac))),
    ]
}

/// An `event_callback` for a message event.
pub fn slack_event(event_id: &str, event: Value) -> Value {
    json!({
        "token": "legacy", "team_id": "T0001", "api_app_id": "A0001",
        "type": "event_callback", "event_id": event_id, "event_time": now_s(),
        "authorizations": [{"team_id": "T0001", "user_id": "U0BOT", "is_bot": true}],
        "event": event,
    })
}

/// A direct message from `user` in DM channel `channel`, posted at `ts`.
pub fn slack_dm(user: &str, channel: &str, ts: &str, text: &str) -> Value {
    json!({"type": "message", "channel": channel, "channel_type": "im", "user": user,
           "text": text, "ts": ts})
}

/// Posts a signed event to keel's Slack route.
pub fn slack_post(g_addr: &str, body: &Value, extra: &[(&str, &str)]) -> Response {
    let body = body.to_string();
    let mut h = slack_signed(SIGNING_SECRET, now_s(), body.as_bytes());
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    post(g_addr, "/slack/events", &h, body.as_bytes())
}

/// How many model calls had `text` in their last user message: the runs it started.
pub fn runs_of(p: &FakeProvider, text: &str) -> usize {
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

/// The texts `chat.postMessage` got for Slack channel `channel`.
pub fn slack_sent_to(sl: &FakeChannel, channel: &str) -> Vec<Value> {
    sl.received()
        .into_iter()
        .filter(|(path, b)| path == "/chat.postMessage" && b["channel"] == channel)
        .map(|(_, b)| b)
        .collect()
}

#[track_caller]
fn wait_idle(g: &Gateway) -> Value {
    eventually(BOUND, || {
        let l = g.rpc("delivery.list", json!({})).json()["payload"].clone();
        (l["counts"]["pending"] == 0 && l["counts"]["sending"] == 0).then_some(l)
    })
}

fn account(g: &Gateway, channel: &str) -> Value {
    let r = g.rpc("channels.status", json!({}));
    r.json()["payload"]["channelAccounts"][channel][0].clone()
}

#[test]
fn a_signed_slack_dm_runs_once_however_often_it_comes_and_the_reply_goes_to_that_dm() {
    let p = FakeProvider::start("openai-completions");
    let (sl, fs) = (FakeChannel::start(SLACK_OK), FakeChannel::start(FEISHU_OK));
    p.push(Behavior::text(&["hello ", "from slack's agent"]));
    p.push(Behavior::text(&["in the thread"]));
    let g = Gateway::start(Opts::default().config(config(&p, &sl, &fs, json!({}))));
    let addr = g.addr();
    // Slack's URL verification, signed like every request.
    let r = slack_post(
        &addr,
        &json!({"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    // One post, three deliveries: the message event, the app_mention for the same post (its
    // own event id), and Slack's retry of the first.
    let ts = "1700000000.000100";
    let dm = slack_dm(OWNER, "D024BE91L", ts, "<@U0BOT> what is up");
    let r = slack_post(&addr, &slack_event("Ev01", dm.clone()), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut mention = dm.clone();
    mention["type"] = json!("app_mention");
    mention.as_object_mut().unwrap().remove("channel_type");
    let r = slack_post(&addr, &slack_event("Ev02", mention), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = slack_post(
        &addr,
        &slack_event("Ev01", dm),
        &[
            ("X-Slack-Retry-Num", "1"),
            ("X-Slack-Retry-Reason", "http_timeout"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = eventually(BOUND, || {
        let s = slack_sent_to(&sl, "D024BE91L");
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent[0]["text"], "hello from slack's agent", "{sent:?}");
    assert!(sent[0].get("thread_ts").is_none(), "{sent:?}");
    // A message in a thread: the reply goes to that thread.
    let threaded = json!({"type": "message", "channel": "D024BE91L", "channel_type": "im",
        "user": OWNER, "text": "and in a thread?", "ts": "1700000050.000300", "thread_ts": ts});
    let r = slack_post(&addr, &slack_event("Ev03", threaded), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = eventually(BOUND, || {
        let s = slack_sent_to(&sl, "D024BE91L");
        (s.len() >= 2).then_some(s)
    });
    assert_eq!(sent[1]["text"], "in the thread");
    assert_eq!(sent[1]["thread_ts"], ts, "{sent:?}");
    wait_idle(&g);
    assert_eq!(runs_of(&p, "what is up"), 1, "one post, one run");
    assert_eq!(runs_of(&p, "and in a thread?"), 1);
    assert_eq!(
        slack_sent_to(&sl, "D024BE91L").len(),
        2,
        "one reply per run"
    );
    let a = account(&g, "slack");
    assert_eq!(a["mode"], "webhook", "{a}");
    assert_eq!(a["runsStarted"], 2, "{a}");
    assert_eq!(a["duplicates"], 2, "{a}");
    assert_eq!(a["connected"], true, "{a}");
    assert!(fs.received().is_empty(), "{:?}", fs.received());
}

/// A webhook that comes while keel is still opening its inbound queue at boot (a slow disk)
/// waits for it, and is stored and answered 200, rather than refused.
#[test]
fn a_slack_event_that_comes_while_the_queue_opens_waits_for_it() {
    let p = FakeProvider::start("openai-completions");
    let (sl, fs) = (FakeChannel::start(SLACK_OK), FakeChannel::start(FEISHU_OK));
    p.push(Behavior::text(&["made it"]));
    let g = Gateway::start(
        Opts::hooks()
            .config(config(&p, &sl, &fs, json!({})))
            .env("KEEL_TEST_INBOUND_OPEN_DELAY_MS", "800"),
    );
    let dm = slack_dm(OWNER, "D024BE91L", "1700000000.000100", "early bird");
    let r = slack_post(&g.addr(), &slack_event("Ev01", dm), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = eventually(BOUND, || {
        let s = slack_sent_to(&sl, "D024BE91L");
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent[0]["text"], "made it", "{sent:?}");
    assert_eq!(runs_of(&p, "early bird"), 1);
}

#[test]
fn a_bad_stale_or_oversized_slack_request_is_refused_and_nothing_runs() {
    let p = FakeProvider::start("openai-completions");
    let (sl, fs) = (FakeChannel::start(SLACK_OK), FakeChannel::start(FEISHU_OK));
    let g = Gateway::start(Opts::default().config(config(&p, &sl, &fs, json!({}))));
    let addr = g.addr();
    let body = slack_event(
        "Ev10",
        slack_dm(OWNER, "D024BE91L", "1700000000.000100", "forged"),
    )
    .to_string();
    // Signed with another secret.
    let h = slack_signed("not-the-secret", now_s(), body.as_bytes());
    let r = post(&addr, "/slack/events", &h, body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    // Signed right, ten minutes ago (a replay).
    let h = slack_signed(SIGNING_SECRET, now_s() - 600, body.as_bytes());
    let r = post(&addr, "/slack/events", &h, body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    // No signature at all; and the gateway token does not stand in for one.
    let r = post(
        &addr,
        "/slack/events",
        &[("Authorization".into(), format!("Bearer {}", g.token))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // Over 1 MiB: refused from its head, before the body is read (none is sent).
    let r = http_raw(
        &addr,
        format!(
            "POST /slack/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            (1 << 20) + 1
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // A header value far over its bound is not a signature either.
    let mut h = slack_signed(SIGNING_SECRET, now_s(), body.as_bytes());
    h[1].1 = format!("v0={}", "a".repeat(4000));
    let r = post(&addr, "/slack/events", &h, body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    // The route serves POST only.
    assert_eq!(g.get("/slack/events").status, 404);
    // After all that, a good request still works: the refusals held nothing.
    let r = slack_post(
        &addr,
        &json!({"type": "url_verification", "challenge": "c"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(p.requests().is_empty(), "nothing ran: {:?}", p.requests());
    let a = account(&g, "slack");
    assert_eq!(a["refused"], 4, "{a}");
    assert_eq!(a["received"], 0, "{a}");
    assert!(sl.received().is_empty());
}

#[test]
fn an_unknown_slack_sender_gets_a_pairing_code_in_that_dm() {
    let p = FakeProvider::start("openai-completions");
    let (sl, fs) = (FakeChannel::start(SLACK_OK), FakeChannel::start(FEISHU_OK));
    let g = Gateway::start(Opts::default().config(config(&p, &sl, &fs, json!({}))));
    let r = slack_post(
        &g.addr(),
        &slack_event(
            "Ev20",
            slack_dm("U0STRANGER", "D0STRANGE1", "1700000000.000500", "let me in"),
        ),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = eventually(BOUND, || {
        let s = slack_sent_to(&sl, "D0STRANGE1");
        (!s.is_empty()).then_some(s)
    });
    let text = sent[0]["text"].as_str().unwrap();
    assert!(text.contains("U0STRANGER"), "{text}");
    let code = text
        .lines()
        .find_map(|l| l.strip_prefix("Pairing code: "))
        .expect("a code");
    let list = g.rpc("pairing.list", json!({"channel": "slack"})).json();
    assert_eq!(list["payload"]["requests"][0]["code"], code, "{list}");
    assert!(p.requests().is_empty(), "nothing ran");
}

/// Feishu's signature over a callback: hex SHA-256(timestamp + nonce + encryptKey + body).
fn feishu_signed(ts: i64, nonce: &str, body: &[u8]) -> Vec<(String, String)> {
    let ts = ts.to_string();
    let sig = sha256(&[ts.as_bytes(), nonce.as_bytes(), FEISHU_KEY.as_bytes(), body]);
    vec![
        ("X-Lark-Request-Timestamp".into(), ts),
        ("X-Lark-Request-Nonce".into(), nonce.into()),
        ("X-Lark-Signature".into(), hex(&sig)),
    ]
}

/// An `im.message.receive_v1` text message from `sender` in p2p chat `chat`, with `token`.
fn feishu_receive(event_id: &str, token: &str, sender: &str, chat: &str, text: &str) -> Value {
    let now_ms = keel::clock::wall_ms();
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1",
            "create_time": (now_ms - 1000).to_string(), "token": token,
            "app_id": "cli_9f5343c580712544", "tenant_key": "2ca1d211f64f6438"},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": "user"},
            "message": {"message_id": format!("om_{event_id}"), "chat_id": chat,
                "chat_type": "p2p", "message_type": "text",
                "create_time": (now_ms - 1000).to_string(),
                "content": json!({"text": text}).to_string()},
        },
    })
}

/// Posts `event` to keel's Feishu route, encrypted and signed as Feishu does.
fn feishu_post(addr: &str, event: &Value) -> Response {
    let sealed = keel::inbound::feishu::seal(FEISHU_KEY, [9; 16], event.to_string().as_bytes());
    let body = json!({ "encrypt": sealed }).to_string();
    let h = feishu_signed(now_s(), "n0nce-1", body.as_bytes());
    post(addr, "/feishu/events", &h, body.as_bytes())
}

#[test]
fn an_encrypted_feishu_message_runs_once_and_the_reply_goes_to_that_chat() {
    let p = FakeProvider::start("openai-completions");
    let (sl, fs) = (FakeChannel::start(SLACK_OK), FakeChannel::start(FEISHU_OK));
    p.push(Behavior::text(&["你好, from the agent"]));
    let g = Gateway::start(Opts::default().config(config(&p, &sl, &fs, json!({}))));
    let addr = g.addr();
    let chat = "oc_chat0000000001";
    // The URL verification (Feishu encrypts it too, and does not sign it).
    let challenge =
        json!({"challenge": "ajls384kdjx98XX", "token": FEISHU_TOKEN, "type": "url_verification"});
    let sealed = keel::inbound::feishu::seal(FEISHU_KEY, [3; 16], challenge.to_string().as_bytes());
    let r = post(
        &addr,
        "/feishu/events",
        &[],
        json!({ "encrypt": sealed }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["challenge"], "ajls384kdjx98XX");
    // A wrong verification token (encrypted and signed right): refused, nothing runs.
    let r = feishu_post(
        &addr,
        &feishu_receive("evt-wrong", "not-the-token", FEISHU_OWNER, chat, "forged"),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // The message, then Feishu's redelivery of it.
    // (One that comes while the inbound queue is still being opened at boot waits for it.)
    let ev = feishu_receive("evt-1", FEISHU_TOKEN, FEISHU_OWNER, chat, "ni hao agent");
    assert_eq!(feishu_post(&addr, &ev).status, 200);
    assert_eq!(feishu_post(&addr, &ev).status, 200);
    let got = eventually(BOUND, || {
        let r = fs.received();
        r.iter()
            .any(|(path, _)| path.starts_with("/open-apis/im/v1/messages"))
            .then_some(r)
    });
    let (path, body) = got
        .iter()
        .find(|(path, _)| path.starts_with("/open-apis/im/v1/messages"))
        .unwrap();
    assert!(path.contains("receive_id_type=chat_id"), "{path}");
    assert_eq!(body["receive_id"], chat, "{body}");
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .contains("你好, from the agent"),
        "{body}"
    );
    wait_idle(&g);
    assert_eq!(runs_of(&p, "ni hao agent"), 1);
    assert_eq!(runs_of(&p, "forged"), 0);
    assert_eq!(fs.received().len(), 1, "one reply: {:?}", fs.received());
    assert!(sl.received().is_empty());
    let a = account(&g, "feishu");
    assert_eq!(a["runsStarted"], 1, "{a}");
    assert_eq!(a["duplicates"], 1, "{a}");
    assert_eq!(a["refused"], 1, "{a}");
}
