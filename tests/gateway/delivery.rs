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
struct FakeChannel {
    port: u16,
    got: Arc<Mutex<Vec<(Instant, String, Value)>>>,
    script: Arc<Mutex<Vec<Scripted>>>,
}

impl FakeChannel {
    fn start(ok_body: &'static str) -> FakeChannel {
        FakeChannel::start_delayed(ok_body, Duration::ZERO)
    }

    /// Waits `reply_delay` after recording each request before answering it (a send that
    /// takes a while, so a kill can land in the middle of it).
    fn start_delayed(ok_body: &'static str, reply_delay: Duration) -> FakeChannel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Vec<Scripted>>> = Arc::new(Mutex::new(Vec::new()));
        let (g, sc) = (got.clone(), script.clone());
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
                std::thread::sleep(reply_delay);
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
        FakeChannel { port, got, script }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<(String, Value)> {
        let got = self.got.lock().unwrap();
        got.iter().map(|(_, p, b)| (p.clone(), b.clone())).collect()
    }

    /// When each request arrived, in order.
    fn arrivals(&self) -> Vec<Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, _)| *t)
            .collect()
    }

    fn push(&self, status: u16, body: &str, retry_after: Option<u64>) {
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

/// The counts in a boot's delivery recovery line ("… N pending resumed, N unknown after
/// send…, N corrupt, …"): (resumed, unknown after send, corrupt).
#[track_caller]
fn recovery_counts(line: &str) -> (u64, u64, u64) {
    let tail = line.rsplit_once(": ").unwrap_or_else(|| panic!("{line}")).1;
    let count = |label: &str| -> u64 {
        let end = tail
            .find(label)
            .unwrap_or_else(|| panic!("{label:?} in {line}"));
        tail[..end]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {label:?} in {line}"))
    };
    (
        count(" pending resumed"),
        count(" unknown after send"),
        count(" corrupt,"),
    )
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

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    // A webhook receiver that deduplicates by idempotency key and counts duplicates.
    // Each answer takes a while, so a kill can land in the middle of a send.
    let hook = FakeChannel::start_delayed(r#"{"ok":true}"#, Duration::from_millis(20));
    let cfg =
        json!({"channels": {"webhook": {"url": format!("{}/hook", hook.url()), "secret": "s"}}});
    let mut g = Gateway::start(Opts::default().config(cfg.clone()));
    // Each boot's recovery line: (pending resumed, unknown after send, corrupt).
    let mut boots: Vec<(u64, u64, u64)> = Vec::new();
    let mut accepted: Vec<String> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..20 {
        for i in 0..10 {
            let key = format!("k{round}-{i}");
            let r = g.rpc("send", json!({"channel": "webhook", "to": "anyone", "message": format!("m {key}"), "idempotencyKey": key}));
            if r.status == 200 {
                accepted.push(key);
            }
        }
        // Kill at a random moment while sends are in flight.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 40));
        g.signal("KILL");
        g = g.restart(Opts::default());
        let line = g
            .wait_log("pending resumed", BOUND)
            .unwrap_or_else(|| panic!("no recovery line:\n{}", g.log_text()));
        boots.push(recovery_counts(&line));
    }
    // The kills did land while work was in flight (else this test proves nothing).
    assert!(
        boots
            .iter()
            .any(|&(resumed, unknown, _)| resumed > 0 || unknown > 0),
        "no boot found work in flight: {boots:?}"
    );
    // Anything found mid-send was surfaced, not replayed: retry those by hand, then let the
    // queue empty.
    let unknown: Vec<String> = g
        .rpc(
            "delivery.list",
            json!({"state": "unknown_after_send", "limit": 1000}),
        )
        .json()["payload"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for id in &unknown {
        assert_eq!(g.rpc("delivery.retry", json!({"id": id})).status, 200);
    }
    eventually(Duration::from_secs(60), || {
        let c = g.rpc("delivery.list", json!({"limit": 0})).json()["payload"]["counts"].clone();
        (c["pending"] == 0 && c["sending"] == 0 && c["unknown_after_send"] == 0).then_some(())
    });
    let got = hook.received();
    let mut counts = std::collections::HashMap::new();
    for (_, body) in &got {
        *counts
            .entry(body["idempotencyKey"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    let dead = g
        .rpc("delivery.list", json!({"state": "failed", "limit": 1000}))
        .json()["payload"]["entries"]
        .as_array()
        .unwrap()
        .len();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} accepted, {} delivered, {} duplicates, {} unknown_after_send ({unknown:?}), {dead} dead letters; recovery per boot {boots:?}",
        accepted.len(),
        counts.len(),
        duplicates,
        unknown.len()
    );
    assert!(
        duplicates <= unknown.len(),
        "duplicates {duplicates} > unknown_after_send {}",
        unknown.len()
    );
    assert_eq!(dead, 0);
    // No half-written entry was ever found (they would have been moved aside as corrupt).
    let corrupt: Vec<_> = files(&g.state().join("delivery"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".corrupt"))
        .collect();
    assert!(corrupt.is_empty(), "{corrupt:?}");
    assert!(
        boots.iter().all(|&(_, _, corrupt)| corrupt == 0),
        "a boot found corrupt entries: {boots:?}"
    );
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
