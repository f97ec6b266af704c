//! Delivery: the durable queue, routing from the requester's origin, channel errors.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the fake answers next: status, body, Retry-After.
type Scripted = (u16, String, Option<u64>);

/// A chat channel's API on loopback: records each whole request and when it arrived, answers
/// from a script (then 200 with `ok_body`), optionally after a delay.
pub(crate) struct FakeChannel {
    port: u16,
    got: Arc<Mutex<Vec<(Instant, String, Value)>>>,
    script: Arc<Mutex<Vec<Scripted>>>,
    /// Delays for the next answers, in order (then the fake's own delay).
    delays: Arc<Mutex<Vec<Duration>>>,
}

impl FakeChannel {
    pub(crate) fn start(ok_body: &'static str) -> FakeChannel {
        FakeChannel::start_delayed(ok_body, Duration::ZERO)
    }

    /// Waits `reply_delay` after recording each request before answering it (a send that
    /// takes a while, so a kill can land in the middle of it).
    pub(crate) fn start_delayed(ok_body: &'static str, reply_delay: Duration) -> FakeChannel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Vec<Scripted>>> = Arc::new(Mutex::new(Vec::new()));
        let delays: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
        let (g, sc, dl) = (got.clone(), script.clone(), delays.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0;
                let mut head_done = false;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.is_empty() {
                        break;
                    }
                    if h == "\r\n" {
                        head_done = true;
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                // A request cut short (its sender was killed mid-write) is not a delivery.
                if !head_done || r.read_exact(&mut body).is_err() {
                    continue;
                }
                g.lock().unwrap().push((
                    Instant::now(),
                    path,
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                ));
                let delay = {
                    let mut d = dl.lock().unwrap();
                    if d.is_empty() {
                        reply_delay
                    } else {
                        d.remove(0)
                    }
                };
                std::thread::sleep(delay);
                let (status, text, retry) = {
                    let mut q = sc.lock().unwrap();
                    if q.is_empty() {
                        (200, ok_body.to_string(), None)
                    } else {
                        q.remove(0)
                    }
                };
                let retry = retry
                    .map(|r| format!("Retry-After: {r}\r\n"))
                    .unwrap_or_default();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        FakeChannel {
            port,
            got,
            script,
            delays,
        }
    }

    /// The next answers wait this long each, in order.
    pub(crate) fn delay_next(&self, delays: &[Duration]) {
        self.delays.lock().unwrap().extend_from_slice(delays);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn received(&self) -> Vec<(String, Value)> {
        let got = self.got.lock().unwrap();
        got.iter().map(|(_, p, b)| (p.clone(), b.clone())).collect()
    }

    /// When each request arrived, in order.
    pub(crate) fn arrivals(&self) -> Vec<Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, _)| *t)
            .collect()
    }

    pub(crate) fn push(&self, status: u16, body: &str, retry_after: Option<u64>) {
        self.script
            .lock()
            .unwrap()
            .push((status, body.to_string(), retry_after));
    }
}

const WX_OK: &str = r#"{"ok":true}"#;
const FEISHU_OK: &str = r#"{"code":0,"msg":"success","data":{"message_id":"om_1"}}"#;

fn channels(wx: &FakeChannel, fs: &FakeChannel) -> Value {
    json!({
        "openclaw-weixin": {"baseUrl": wx.url(), "token": "wx-token"},
        "feishu": {"baseUrl": fs.url(), "tenantAccessToken": "t-feishu"},
    })
}

fn stream(text: &str) -> Behavior {
    Behavior::Stream {
        text: vec![text.to_string()],
        tool_call: None,
        usage: (1, 1),
        delay_between: Duration::ZERO,
    }
}

fn spawn_call(agent: &str, task: &str) -> Behavior {
    Behavior::Stream {
        text: vec![],
        tool_call: Some((
            "sessions_spawn".into(),
            json!({"task": task, "agentId": agent}),
        )),
        usage: (1, 1),
        delay_between: Duration::ZERO,
    }
}

/// Waits until the queue has nothing pending or being sent; returns the `delivery.list` payload.
#[track_caller]
fn wait_idle(g: &Gateway) -> Value {
    eventually(BOUND, || {
        let l = g.rpc("delivery.list", json!({})).json()["payload"].clone();
        (l["counts"]["pending"] == 0 && l["counts"]["sending"] == 0).then_some(l)
    })
}

/// What a boot's delivery recovery line says ("… N pending resumed, N requeued (never sent)
/// (ids), N resent (ids), N unknown after send (ids), N corrupt, …").
#[derive(Debug, Default)]
struct Boot {
    requeued: Vec<String>,
    resent: Vec<String>,
    held: Vec<String>,
    corrupt: u64,
}

#[track_caller]
fn recovery(line: &str) -> Boot {
    let mut at = line.find(": ").unwrap_or_else(|| panic!("{line}"));
    // Each label in order: the number before it, and the ids in parentheses after it.
    let mut next = |label: &str| -> (u64, Vec<String>) {
        let found = line[at..]
            .find(label)
            .unwrap_or_else(|| panic!("{label:?} in {line}"))
            + at;
        let n = line[..found]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {label:?} in {line}"));
        at = found + label.len();
        let mut ids = Vec::new();
        if let Some(rest) = line[at..].strip_prefix(" (") {
            let end = rest.find(')').unwrap_or_else(|| panic!("{line}"));
            ids = rest[..end].split(", ").map(str::to_string).collect();
            at += end + 3;
        }
        assert_eq!(
            ids.len() as u64,
            if ids.is_empty() { 0 } else { n },
            "{line}"
        );
        (n, ids)
    };
    next(" pending resumed");
    Boot {
        requeued: next(" requeued (never sent)").1,
        resent: next(" resent").1,
        held: next(" unknown after send").1,
        corrupt: next(" corrupt,").0,
    }
}

#[test]
fn sub_agent_completions_go_to_the_requesters_channel_not_the_agents_first_binding() {
    // The field case: an agent bound to [feishu, openclaw-weixin], a request from WeChat, a
    // sub-agent and a sub-sub-agent completing.
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let (main, sub, subsub) = (
        FakeProvider::start("openai-completions"),
        FakeProvider::start("openai-completions"),
        FakeProvider::start("openai-completions"),
    );
    main.push(spawn_call("sub", "look into it"));
    main.push(stream("parent done"));
    sub.push(spawn_call("subsub", "dig deeper"));
    sub.push(stream("child done"));
    subsub.push(stream("grandchild done"));
    let provider = |p: &FakeProvider| json!({"baseUrl": p.base_url(), "api": "openai-completions", "models": [{"id": "m"}]});
    let cfg = json!({
        "models": {"providers": {"main": provider(&main), "sub": provider(&sub), "subsub": provider(&subsub)}},
        "agents": {"list": [
            {"id": "main", "default": true, "model": "main/m",
             "bindings": [{"channel": "feishu", "to": "oc_abcdefghij12"}, {"channel": "openclaw-weixin", "to": "bound@im.wechat"}]},
            {"id": "sub", "model": "sub/m"},
            {"id": "subsub", "model": "subsub/m"},
        ]},
        "channels": channels(&wx, &fs),
    });
    let g = Gateway::start(Opts::default().config(cfg));
    let mut ws = g.ws();
    let id = ws.send_req("agent", json!({"message": "research", "idempotencyKey": "field", "channel": "openclaw-weixin", "to": "wxid_42@im.wechat"}));
    ws.res(&id);
    let done = ws.res(&id);
    assert_eq!(done["payload"]["status"], "ok", "{done}");
    let got = eventually(BOUND, || {
        let r = wx.received();
        (r.len() >= 2).then_some(r)
    });
    let texts: Vec<&str> = got.iter().filter_map(|(_, b)| b["text"].as_str()).collect();
    assert!(
        texts.contains(&"child done") && texts.contains(&"grandchild done"),
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|(path, b)| path == "/send" && b["to"] == "wxid_42@im.wechat"),
        "{got:?}"
    );
    // Only once nothing is left to send can "Feishu got nothing" mean anything.
    let list = wait_idle(&g);
    assert!(fs.received().is_empty(), "feishu got {:?}", fs.received());
    assert_eq!(list["counts"]["failed"], 0, "{list}");
}

/// The field case across both halves: the same agent (bound to Feishu and WeChat), but the
/// request is a message someone sent the bot on Telegram. The run spawns a sub-agent, which
/// spawns its own; the agent's reply and both completions land in that Telegram chat, none on
/// the agent's bound channels.
#[test]
fn a_telegram_message_that_spawns_sub_agents_gets_every_reply_in_that_chat() {
    use crate::fake_telegram::FakeTelegram;
    const USER: i64 = 4242;
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let tg = FakeTelegram::start();
    let (main, sub, subsub) = (
        FakeProvider::start("openai-completions"),
        FakeProvider::start("openai-completions"),
        FakeProvider::start("openai-completions"),
    );
    main.push(spawn_call("sub", "look into it"));
    main.push(stream("parent done"));
    sub.push(spawn_call("subsub", "dig deeper"));
    sub.push(stream("child done"));
    subsub.push(stream("grandchild done"));
    let provider = |p: &FakeProvider| json!({"baseUrl": p.base_url(), "api": "openai-completions", "models": [{"id": "m"}]});
    let mut channels = channels(&wx, &fs);
    channels["telegram"] = json!({
        "botToken": "123:abc", "baseUrl": tg.url(), "pollTimeoutSeconds": 1,
        "allowFrom": [USER.to_string()],
    });
    let cfg = json!({
        "models": {"providers": {"main": provider(&main), "sub": provider(&sub), "subsub": provider(&subsub)}},
        "agents": {"list": [
            {"id": "main", "default": true, "model": "main/m",
             "bindings": [{"channel": "feishu", "to": "oc_abcdefghij12"}, {"channel": "openclaw-weixin", "to": "bound@im.wechat"}]},
            {"id": "sub", "model": "sub/m"},
            {"id": "subsub", "model": "subsub/m"},
        ]},
        "channels": channels,
    });
    let g = Gateway::start(Opts::default().config(cfg));
    tg.dm(USER, "research");
    let mut got = eventually(BOUND, || {
        let s = tg.sent_to(USER);
        (s.len() >= 3).then_some(s)
    });
    got.sort();
    assert_eq!(got, ["child done", "grandchild done", "parent done"]);
    // Each model ran once: the message ran once, and so did each sub-agent.
    assert_eq!(
        (
            main.requests().len(),
            sub.requests().len(),
            subsub.requests().len()
        ),
        (2, 2, 1)
    );
    // Only once nothing is left to send can "Feishu and WeChat got nothing" mean anything.
    let list = wait_idle(&g);
    assert!(fs.received().is_empty(), "feishu got {:?}", fs.received());
    assert!(wx.received().is_empty(), "wechat got {:?}", wx.received());
    assert_eq!(list["counts"]["failed"], 0, "{list}");
    assert_eq!(tg.sent_to(USER).len(), 3, "no reply twice");
}

#[test]
fn send_validates_the_address_and_delivers_durably() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let g = Gateway::start(Opts::default().config(json!({"channels": channels(&wx, &fs)})));
    let r = g.rpc(
        "send",
        json!({"channel": "feishu", "to": "o9x@im.wechat", "message": "hi", "idempotencyKey": "a"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("feishu") && msg.contains("o9x@im.wechat"),
        "{msg}"
    );
    let r = g.rpc(
        "send",
        json!({"channel": "telegram", "to": "42", "message": "hi", "idempotencyKey": "b"}),
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{}",
        r.text()
    );
    let r = g.rpc("send", json!({"channel": "feishu", "to": "ou_abcdefghij12", "message": "hello", "idempotencyKey": "c"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let got = eventually(BOUND, || {
        let r = fs.received();
        (!r.is_empty()).then_some(r)
    });
    assert!(
        got[0]
            .0
            .starts_with("/open-apis/im/v1/messages?receive_id_type=open_id"),
        "{got:?}"
    );
    assert_eq!(got[0].1["uuid"], "c", "the idempotency key goes to Feishu");
    assert!(wx.received().is_empty());
}

#[test]
fn a_permanent_error_is_a_dead_letter_at_once_and_can_be_retried_by_hand() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    fs.push(200, r#"{"code":99992360,"msg":"Invalid ids"}"#, None);
    let g = Gateway::start(Opts::default().config(json!({"channels": channels(&wx, &fs)})));
    g.rpc("send", json!({"channel": "feishu", "to": "ou_abcdefghij12", "message": "x", "idempotencyKey": "p"}));
    let dead = eventually(BOUND, || {
        let l = g.rpc("delivery.list", json!({"state": "failed"})).json()["payload"].clone();
        (l["entries"].as_array().unwrap().len() == 1).then_some(l)
    });
    let e = &dead["entries"][0];
    assert_eq!(e["attempts"], 1, "no retries for a permanent error");
    assert!(e["lastError"].as_str().unwrap().contains("99992360"), "{e}");
    assert_eq!(fs.received().len(), 1);
    // By hand: retried, and this time it goes through.
    let id = e["id"].as_str().unwrap();
    assert_eq!(g.rpc("delivery.retry", json!({"id": id})).status, 200);
    eventually(BOUND, || (fs.received().len() == 2).then_some(()));
    assert_eq!(
        g.metric("keel_delivery_attempts_total{result=\"dead_letter\"}"),
        Some(1.0)
    );
}

#[test]
fn a_rate_limit_is_retried_after_its_retry_after() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    wx.push(429, r#"{"error":"slow down"}"#, Some(1));
    let g = Gateway::start(Opts::default().config(json!({"channels": channels(&wx, &fs)})));
    g.rpc("send", json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": "x", "idempotencyKey": "r"}));
    eventually(BOUND, || (wx.received().len() == 2).then_some(()));
    let at = wx.arrivals();
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(900),
        "the retry came {gap:?} after the 429 with Retry-After: 1"
    );
    let l = wait_idle(&g);
    assert_eq!(l["counts"]["failed"], 0, "{l}");
    g.wait_metric("keel_delivery_attempts_total{result=\"sent\"}", 1.0);
    assert_eq!(wx.received().len(), 2, "one retry, then done");
}

#[test]
fn a_full_disk_refuses_the_send_clearly_and_writes_nothing() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let g = Gateway::start(
        Opts::hooks()
            .config(json!({"channels": channels(&wx, &fs)}))
            .env("KEEL_TEST_DELIVERY_FULL_DISK", "1"),
    );
    let r = g.rpc("send", json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": "x", "idempotencyKey": "d"}));
    assert_eq!(r.status, 503, "{}", r.text());
    let e = &r.json()["error"];
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot persist the message"),
        "{e}"
    );
    assert_eq!(e["retryable"], true);
    let left: Vec<_> = files(&g.state().join("delivery"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
    assert!(wx.received().is_empty());
}

/// A channel that reads the request and never answers.
fn stalling_channel() -> (u16, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(0));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            *s2.lock().unwrap() += 1;
            held.push(stream);
        }
    });
    (port, seen)
}

#[test]
fn a_drain_with_a_send_in_flight_exits_on_time_and_the_entry_remains() {
    let (port, seen) = stalling_channel();
    let cfg = json!({
        "channels": {"openclaw-weixin": {"baseUrl": format!("http://127.0.0.1:{port}"), "token": "t"}},
        "gateway": {"drainTimeoutMs": 500, "drainGraceMs": 500},
    });
    let mut g = Gateway::start(Opts::default().config(cfg.clone()));
    assert_eq!(g.rpc("send", json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": "x", "idempotencyKey": "k"})).status, 200);
    eventually(BOUND, || (*seen.lock().unwrap() >= 1).then_some(()));
    let t0 = std::time::Instant::now();
    g.signal("TERM");
    g.wait_exit(BOUND).expect("exits");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    // The entry is still there after a restart: the send may or may not have happened.
    let g = g.restart(Opts::default());
    let l = g.rpc("delivery.list", json!({})).json()["payload"].clone();
    let entries = l["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{l}");
    assert!(
        matches!(
            entries[0]["state"].as_str(),
            Some("unknown_after_send" | "pending")
        ),
        "{l}"
    );
}

/// What one crash run saw.
struct Crashes {
    accepted: usize,
    held: Vec<String>,
    telegram_duplicates: usize,
    telegram_resent: usize,
}

/// ≥ 20 SIGKILLs at random moments while sends stream to a webhook that deduplicates by key
/// and to a Telegram that does not (its `delivery.onUnknown` is `telegram_policy`), and no
/// entry is retried by hand: nothing accepted is lost, the webhook never shows a message
/// twice, and Telegram shows one twice only for an entry that provably reached the wire.
fn crash_run(telegram_policy: &str) -> Crashes {
    const ROUNDS: usize = 20;
    const PER_CHANNEL: usize = 6;
    // Each answer takes a while, so a kill can land in the middle of a send.
    let hook = FakeChannel::start_delayed(r#"{"ok":true}"#, Duration::from_millis(20));
    let tg = FakeChannel::start_delayed(
        r#"{"ok":true,"result":{"message_id":1}}"#,
        Duration::from_millis(20),
    );
    let cfg = json!({"channels": {
        "webhook": {"url": format!("{}/hook", hook.url()), "secret": "s"},
        "telegram": {"baseUrl": tg.url(), "botToken": "123:abc", "receive": false, "delivery": {"onUnknown": telegram_policy}},
    }});
    let mut g = Gateway::start(Opts::default().config(cfg));
    g.wait_log("pending resumed", BOUND)
        .expect("the queue opens");
    let mut boots: Vec<Boot> = Vec::new();
    // Accepted messages: entry id → (channel, text).
    let mut accepted: Vec<(String, &str, String)> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..ROUNDS {
        for i in 0..PER_CHANNEL {
            for (channel, to) in [("webhook", "anyone"), ("telegram", "42")] {
                let text = format!("{channel} {round}-{i}");
                let key = format!("{channel}-{round}-{i}");
                let r = g.rpc(
                    "send",
                    json!({"channel": channel, "to": to, "message": text, "idempotencyKey": key}),
                );
                if r.status == 200 {
                    let id = r.json()["payload"]["messageId"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    accepted.push((id, channel, text));
                }
            }
        }
        // Kill at a random moment while sends are in flight.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 60));
        g.signal("KILL");
        g = g.restart(Opts::default());
        let line = g
            .wait_log("pending resumed", BOUND)
            .unwrap_or_else(|| panic!("no recovery line:\n{}", g.log_text()));
        boots.push(recovery(&line));
    }
    // The kills did land while work was in flight, and mid-request too (else this proves
    // nothing).
    let in_flight = |b: &Boot| b.requeued.len() + b.resent.len() + b.held.len();
    assert!(
        boots.iter().filter(|b| in_flight(b) > 0).count() >= ROUNDS / 2,
        "few boots found work in flight: {boots:?}"
    );
    // Nobody retries anything: the queue empties by itself but for what it holds.
    let l = eventually(Duration::from_secs(60), || {
        let l = g.rpc("delivery.list", json!({"limit": 1000})).json()["payload"].clone();
        let c = &l["counts"];
        (c["pending"] == 0 && c["sending"] == 0).then_some(l)
    });
    let held: Vec<String> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "unknown_after_send")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(l["counts"]["failed"], 0, "no dead letters: {l}");
    let channel_of = |id: &str| accepted.iter().find(|a| a.0 == id).map(|a| a.1);
    assert!(
        held.iter().all(|id| channel_of(id) == Some("telegram")),
        "only Telegram holds: {held:?}"
    );
    let mut held_at_boot: Vec<&String> = boots.iter().flat_map(|b| &b.held).collect();
    held_at_boot.sort();
    let mut held_sorted: Vec<&String> = held.iter().collect();
    held_sorted.sort();
    assert_eq!(
        held_sorted, held_at_boot,
        "held: exactly what the boots held"
    );
    // The webhook's receiver drops copies by key: every copy of a message carries one key.
    let mut keys_by_text: std::collections::HashMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (_, body) in hook.received() {
        keys_by_text
            .entry(body["text"].as_str().unwrap().to_string())
            .or_default()
            .insert(body["idempotencyKey"].as_str().unwrap().to_string());
    }
    let webhook_duplicates: usize = keys_by_text.values().map(|k| k.len() - 1).sum();
    let webhook_copies = hook.received().len() - keys_by_text.len();
    let mut telegram_count: std::collections::HashMap<String, usize> = Default::default();
    for (_, body) in tg.received() {
        *telegram_count
            .entry(body["text"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let telegram_duplicates: usize = telegram_count.values().map(|n| n - 1).sum();
    let telegram_resent = boots
        .iter()
        .flat_map(|b| &b.resent)
        .filter(|id| channel_of(id) == Some("telegram"))
        .count();
    // Lost: accepted, not delivered, and not held in sight of an operator.
    let lost: Vec<&(String, &str, String)> = accepted
        .iter()
        .filter(|(id, channel, text)| match *channel {
            "webhook" => !keys_by_text.contains_key(text),
            _ => !telegram_count.contains_key(text) && !held.contains(id),
        })
        .collect();
    let held_delivered = held
        .iter()
        .filter(|id| {
            accepted
                .iter()
                .any(|(a, _, text)| a == *id && telegram_count.contains_key(text))
        })
        .count();
    let sum = |f: fn(&Boot) -> usize| boots.iter().map(f).sum::<usize>();
    eprintln!(
        "crash test (telegram onUnknown {telegram_policy}): {} kills, {} accepted; at boot {} requeued (never sent), {} resent, {} held; webhook: {} delivered, {} copies dropped by key, {webhook_duplicates} duplicates; telegram: {} delivered, {telegram_duplicates} duplicates, {telegram_resent} resent after reaching the wire; held {} ({held_delivered} of them had reached the fake): {held:?}; lost {}",
        boots.len(),
        accepted.len(),
        sum(|b| b.requeued.len()),
        sum(|b| b.resent.len()),
        sum(|b| b.held.len()),
        keys_by_text.len(),
        webhook_copies,
        telegram_count.len(),
        held.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(webhook_duplicates, 0);
    assert!(
        telegram_duplicates <= telegram_resent,
        "telegram duplicates {telegram_duplicates} > entries resent after reaching the wire {telegram_resent}"
    );
    assert!(accepted.len() >= 200, "{}", accepted.len());
    // No half-written entry was ever found (they would have been moved aside as corrupt).
    let corrupt: Vec<_> = files(&g.state().join("delivery"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".corrupt"))
        .collect();
    assert!(corrupt.is_empty(), "{corrupt:?}");
    assert!(
        boots.iter().all(|b| b.corrupt == 0),
        "a boot found corrupt entries: {boots:?}"
    );
    Crashes {
        accepted: accepted.len(),
        held,
        telegram_duplicates,
        telegram_resent,
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_holds_what_telegram_cannot_deduplicate() {
    let c = crash_run("hold");
    assert_eq!(c.telegram_duplicates, 0, "hold never duplicates");
    assert_eq!(c.telegram_resent, 0);
    assert!(c.accepted >= 200);
    let _ = c.held;
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_resends_when_told() {
    let c = crash_run("resend");
    assert!(c.held.is_empty(), "resend holds nothing: {:?}", c.held);
}

/// A text of `n` sentences grouped in paragraphs, each sentence numbered.
fn long_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            let sep = if i % 5 == 4 { "\n\n" } else { " " };
            format!("Sentence {i:04} says something of moderate length.{sep}")
        })
        .collect()
}

/// The text with its whitespace taken out: parts joined must give the text back, whatever
/// whitespace was at the cuts.
fn squeezed(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn a_long_reply_is_split_at_the_channel_limit_and_arrives_in_order() {
    let tg = FakeChannel::start(r#"{"ok":true,"result":{"message_id":1}}"#);
    let g = Gateway::start(Opts::default().config(json!({"channels": {
        "telegram": {"baseUrl": tg.url(), "botToken": "123:abc", "receive": false},
    }})));
    let text = long_text(400);
    assert!(text.len() > 4096 * 4, "{}", text.len());
    let r = g.rpc(
        "send",
        json!({"channel": "telegram", "to": "42", "message": text, "idempotencyKey": "long"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = r.json()["payload"]["parts"].as_array().cloned().unwrap();
    assert_eq!(
        r.json()["payload"]["messageId"],
        parts[0],
        "the first part names the message"
    );
    eventually(BOUND, || (tg.received().len() == parts.len()).then_some(()));
    wait_idle(&g);
    let got: Vec<String> = tg
        .received()
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        parts.len(),
        5,
        "{:?}",
        got.iter().map(|t| t.len()).collect::<Vec<_>>()
    );
    for t in &got {
        assert!(t.encode_utf16().count() <= 4096, "{}", t.len());
        // Cut at a paragraph: each part ends a paragraph, the last one the text.
        assert!(t.ends_with(".\n\n") || text.ends_with(t.as_str()), "{t:?}");
    }
    assert_eq!(
        squeezed(&got.concat()),
        squeezed(&text),
        "all of it, in order"
    );
}

/// A crash while part 2 of 3 is in flight: after the restart part 1 is not sent again, part 2
/// is resent with the same key (the webhook drops the copy), part 3 follows.
#[test]
fn a_crash_between_parts_resends_only_the_parts_not_yet_delivered() {
    let hook = FakeChannel::start(r#"{"ok":true}"#);
    let cfg = json!({"channels": {"webhook": {"url": format!("{}/hook", hook.url()), "textChunkLimit": 120}}});
    let g = Gateway::start(Opts::default().config(cfg));
    g.wait_log("pending resumed", BOUND)
        .expect("the queue opens");
    // The answer to part 2 takes long enough for the kill to land while it is awaited.
    hook.delay_next(&[Duration::ZERO, Duration::from_secs(3)]);
    let text = long_text(6);
    let r = g.rpc(
        "send",
        json!({"channel": "webhook", "to": "anyone", "message": text, "idempotencyKey": "split"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let parts: Vec<String> = r.json()["payload"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(parts.len(), 3, "{}", r.text());
    eventually(BOUND, || (hook.received().len() == 2).then_some(()));
    g.signal("KILL");
    let g = g.restart(Opts::default());
    let line = g.wait_log("pending resumed", BOUND).expect("recovery line");
    let boot = recovery(&line);
    assert_eq!(boot.resent, [parts[1].clone()], "{line}");
    eventually(BOUND, || (hook.received().len() == 4).then_some(()));
    wait_idle(&g);
    let got = hook.received();
    let keys: Vec<&str> = got
        .iter()
        .map(|(_, b)| b["idempotencyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [&parts[0], &parts[1], &parts[1], &parts[2]]);
    let texts: Vec<&str> = got
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[1], texts[2]);
    assert_eq!(
        squeezed(&[texts[0], texts[1], texts[3]].concat()),
        squeezed(&text)
    );
}

/// Telegram cannot drop a copy: a part in flight at a crash is held, the parts after it wait
/// behind it, and the hold is in plain sight until an operator retries it.
#[test]
fn a_held_part_is_shown_everywhere_and_the_rest_waits_for_it() {
    let tg = FakeChannel::start(r#"{"ok":true,"result":{"message_id":1}}"#);
    let cfg = json!({"channels": {"telegram": {"baseUrl": tg.url(), "botToken": "123:abc", "receive": false, "textChunkLimit": 120}}});
    let g = Gateway::start(Opts::default().config(cfg));
    g.wait_log("pending resumed", BOUND)
        .expect("the queue opens");
    tg.delay_next(&[Duration::ZERO, Duration::from_secs(3)]);
    let r = g.rpc("send", json!({"channel": "telegram", "to": "42", "message": long_text(6), "idempotencyKey": "held"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let parts: Vec<String> = r.json()["payload"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    eventually(BOUND, || (tg.received().len() == 2).then_some(()));
    g.signal("KILL");
    let g = g.restart(Opts::default());
    let boot = recovery(&g.wait_log("pending resumed", BOUND).expect("recovery line"));
    assert_eq!(boot.held, [parts[1].clone()]);
    // Logged once, with what to do.
    let warning = g
        .wait_log("held as unknown_after_send", BOUND)
        .expect("a warning");
    assert!(
        warning.contains(&parts[1]) && warning.contains("delivery.retry"),
        "{warning}"
    );
    // Ready, with a note; counted in /metrics and status.
    let ready = g.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    let notes = ready.json()["notes"].to_string();
    assert!(notes.contains("1 message(s) held"), "{notes}");
    assert_eq!(g.metric("keel_delivery_held"), Some(1.0));
    assert_eq!(
        g.metric("keel_delivery_recovered_total{how=\"held\"}"),
        Some(1.0)
    );
    let status = g.rpc("status", json!({})).json()["payload"].clone();
    assert_eq!(status["delivery"]["held"], 1, "{status}");
    assert_eq!(status["delivery"]["unknownAfterSend"][0], parts[1].as_str());
    // Part 3 waits behind the held part 2, not sent out of order.
    let l = g.rpc("delivery.list", json!({})).json()["payload"].clone();
    assert_eq!(l["counts"]["pending"], 1, "{l}");
    assert_eq!(tg.received().len(), 2);
    // The operator decides to send it again: part 2, then part 3.
    assert_eq!(g.rpc("delivery.retry", json!({"id": parts[1]})).status, 200);
    eventually(BOUND, || (tg.received().len() == 4).then_some(()));
    wait_idle(&g);
    let got: Vec<String> = tg
        .received()
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got[1], got[2]);
    assert!(got[3].contains("Sentence 0005"), "{got:?}");
    assert!(g.get("/readyz").json().get("notes").is_none());
}

#[test]
fn a_hanging_channel_holds_up_only_itself() {
    let (wx, _fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let (hang_port, seen) = stalling_channel();
    let g = Gateway::start(Opts::default().config(json!({"channels": {
        "openclaw-weixin": {"baseUrl": wx.url(), "token": "wx-token"},
        "feishu": {"baseUrl": format!("http://127.0.0.1:{hang_port}"), "tenantAccessToken": "t"},
    }})));
    let r = g.rpc("send", json!({"channel": "feishu", "to": "ou_abcdefghij12", "message": "stuck", "idempotencyKey": "h1"}));
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(BOUND, || (*seen.lock().unwrap() == 1).then_some(()));
    // While feishu's endpoint holds its send, WeChat's messages still go out.
    for i in 0..3 {
        let r = g.rpc("send", json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": format!("m{i}"), "idempotencyKey": format!("w{i}")}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    eventually(BOUND, || (wx.received().len() == 3).then_some(()));
    let texts: Vec<String> = wx.received().iter().map(|(_, b)| b.to_string()).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(t.contains(&format!("m{i}")), "in order: {texts:?}");
    }
    // The fake has WeChat's last message before keel has recorded it as sent: once it has,
    // only feishu's is still in flight.
    let l = eventually(BOUND, || {
        let l = g.rpc("delivery.list", json!({"state": "sending"})).json()["payload"].clone();
        (l["entries"].as_array()?.len() == 1).then_some(l)
    });
    assert_eq!(l["entries"][0]["route"]["channel"], "feishu", "{l}");
}

/// `send` over HTTP: (status, payload or error).
fn send(g: &Gateway, key: &str, message: &str) -> (u16, Value) {
    let r = g.rpc(
        "send",
        json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": message, "idempotencyKey": key}),
    );
    let body = r.json();
    let v = if r.status == 200 {
        body["payload"].clone()
    } else {
        body["error"].clone()
    };
    (r.status, v)
}

#[test]
fn a_repeated_send_gets_its_first_answer_after_delivery_and_after_a_restart() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    let opts = Opts::default().config(json!({"channels": channels(&wx, &fs)}));
    let g = Gateway::start(opts.clone());
    let (status, first) = send(&g, "once", "hello");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "pending", "{first}");
    assert_eq!(first["channel"], "openclaw-weixin");
    // Delivered, and its queue entry gone: only the remembered key can stop a second send.
    eventually(BOUND, || (wx.received().len() == 1).then_some(()));
    wait_idle(&g);
    // The client lost the answer and retries, with another body even: the first answer.
    assert_eq!(send(&g, "once", "hello again"), (200, first.clone()));
    let l = wait_idle(&g);
    assert_eq!(
        l["entries"].as_array().unwrap().len(),
        0,
        "nothing queued: {l}"
    );
    assert_eq!(
        g.metric("keel_idempotency_repeats_total{scope=\"send\"}"),
        Some(1.0)
    );

    // Killed (the key was appended without fsync; a kill keeps it) and started again.
    g.signal("KILL");
    let g = g.restart(opts);
    assert_eq!(send(&g, "once", "hello"), (200, first.clone()));
    let line = g.wait_log("idempotency keys (send)", BOUND).unwrap();
    assert!(line.contains(": 1 loaded"), "{line}");
    // A different key is a new message; it goes out after anything queued before it on the
    // channel, so once it has arrived no second copy of the first can be on its way.
    let (status, other) = send(&g, "twice", "second message");
    assert_eq!(status, 200, "{other}");
    assert_ne!(other["id"], first["id"]);
    eventually(BOUND, || (wx.received().len() == 2).then_some(()));
    let texts: Vec<Value> = wx
        .received()
        .iter()
        .map(|(_, b)| b["text"].clone())
        .collect();
    assert_eq!(texts, [json!("hello"), json!("second message")]);

    // A key longer than 256 characters is refused, naming the field; nothing is queued.
    let (status, err) = send(&g, &"k".repeat(257), "x");
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "INVALID_REQUEST");
    assert!(
        err["message"].as_str().unwrap().contains("idempotencyKey"),
        "{err}"
    );
    let (status, ok) = send(&g, &"k".repeat(256), "x");
    assert_eq!(status, 200, "{ok}");
}

#[test]
fn a_send_key_is_forgotten_when_its_window_ends() {
    let (wx, fs) = (FakeChannel::start(WX_OK), FakeChannel::start(FEISHU_OK));
    const WINDOW: Duration = Duration::from_millis(2000);
    let g = Gateway::start(Opts::default().config(json!({
        "channels": channels(&wx, &fs),
        "gateway": {"idempotency": {"windowMs": WINDOW.as_millis() as u64}},
    })));
    let t0 = Instant::now();
    let (status, first) = send(&g, "short", "one");
    assert_eq!(status, 200, "{first}");
    // Delivered and gone from the queue: only the window can answer a repeat.
    eventually(BOUND, || (wx.received().len() == 1).then_some(()));
    wait_idle(&g);
    let repeat = send(&g, "short", "one");
    // keel stamped the key after t0: a repeat answered before t0 + WINDOW was looked up
    // inside the window (on a machine too loaded for that, this step proves nothing).
    if t0.elapsed() < WINDOW {
        assert_eq!(repeat, (200, first.clone()), "a repeat inside the window");
    }
    // Every repeat gets the first answer until the window ends; then the key is new again.
    let second = eventually(BOUND, || {
        let (status, answer) = send(&g, "short", "two");
        assert_eq!(status, 200, "{answer}");
        (answer != first).then_some(answer)
    });
    assert_ne!(second["id"], first["id"]);
    eventually(BOUND, || (wx.received().len() == 2).then_some(()));
    wait_idle(&g);
    assert_eq!(wx.received().len(), 2, "{:?}", wx.received());
}
