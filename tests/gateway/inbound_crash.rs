//! SIGKILLs at random moments while messages arrive over Telegram long polling and the Slack
//! Events route: after recovery every message has exactly one run (one user message carrying
//! its key; a run cut by a kill is resumed, not started again) and exactly one reply at its
//! chat — or its reply is held as `unknown_after_send` by the delivery queue, in sight of an
//! operator, which the fake channel may or may not have received.

use crate::common::*;
use crate::delivery::FakeChannel;
use crate::fake_provider::{Behavior, FakeProvider};
use crate::fake_telegram::FakeTelegram;
use crate::inbound_webhooks::{SIGNING_SECRET, SLACK_OK, slack_event, slack_sent_to, slack_signed};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 20;
/// Messages per channel per round (and once more after the last kill).
const PER_ROUND: usize = 5;

/// One POST to keel's Slack route as Slack makes it; `None` when the connection fails (keel
/// is down or was killed mid-request).
fn try_slack_post(addr: &str, body: &str, retry: usize) -> Option<u16> {
    let now = keel::clock::wall_ms() as i64 / 1000;
    let mut h = slack_signed(SIGNING_SECRET, now, body.as_bytes());
    if retry > 0 {
        h.push(("X-Slack-Retry-Num".into(), retry.to_string()));
    }
    let mut raw = format!(
        "POST /slack/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in &h {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    read_response(&mut s).ok().map(|r| r.status)
}

/// Slack's side: posts each event until it is acknowledged with 200, retrying (with
/// `X-Slack-Retry-Num`) whatever got no 200 — keel down, killed mid-request, or a 5xx.
struct SlackSender {
    queue: Arc<Mutex<Vec<String>>>,
    acked: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: Arc<Mutex<String>>,
}

impl SlackSender {
    fn start(addr: String) -> SlackSender {
        let s = SlackSender {
            queue: Arc::default(),
            acked: Arc::default(),
            retries: Arc::default(),
            stop: Arc::default(),
            addr: Arc::new(Mutex::new(addr)),
        };
        let (q, acked, retries, stop, addr) = (
            s.queue.clone(),
            s.acked.clone(),
            s.retries.clone(),
            s.stop.clone(),
            s.addr.clone(),
        );
        std::thread::spawn(move || {
            let mut attempt = 0;
            while !stop.load(Ordering::Relaxed) {
                let next = q.lock().unwrap().first().cloned();
                let Some(body) = next else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let to = addr.lock().unwrap().clone();
                if try_slack_post(&to, &body, attempt) == Some(200) {
                    q.lock().unwrap().remove(0);
                    acked.fetch_add(1, Ordering::Relaxed);
                    attempt = 0;
                } else {
                    attempt += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
        });
        s
    }

    fn send(&self, body: Value) {
        self.queue.lock().unwrap().push(body.to_string());
    }
}

impl Drop for SlackSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Per message tag: how many user messages carry it in the transcripts, whether an assistant
/// message followed one of them (the run answered), and how many times its run was resumed
/// (the resume marks after it).
fn transcripts(g: &Gateway) -> HashMap<String, (usize, bool, usize, String)> {
    let mut out: HashMap<String, (usize, bool, usize, String)> = HashMap::new();
    for f in files(&g.state().join("agents/main/sessions")) {
        if f.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let mut last_tag: Option<String> = None;
        for l in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            if v["type"] == "custom" && v["customType"] == "keel.run.resume" {
                if let Some(t) = &last_tag {
                    out.entry(t.clone()).or_default().2 += 1;
                }
                continue;
            }
            let role = &v["message"]["role"];
            let content = v["message"]["content"].to_string();
            if role == "user" {
                if let Some(tag) = content.split('#').nth(1) {
                    let e = out.entry(tag.to_string()).or_default();
                    e.0 += 1;
                    e.3 = v["message"]["idempotencyKey"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    last_tag = Some(tag.to_string());
                }
            } else if role == "assistant"
                && let Some(t) = &last_tag
            {
                out.entry(t.clone()).or_default().1 = true;
            }
        }
    }
    out
}

#[test]
fn sigkill_while_telegram_and_slack_messages_arrive_runs_each_exactly_once() {
    let p = FakeProvider::start("openai-completions");
    // Each model call answers its own text, so a reply names the call it came from.
    for i in 0..1000 {
        p.push(Behavior::text(&[&format!("answer {i}")]));
    }
    let tg = FakeTelegram::start();
    let sl = FakeChannel::start(SLACK_OK);
    let mut cfg = p.one_provider_config();
    cfg["session"] = json!({"dmScope": "per-channel-peer"});
    cfg["channels"] = json!({
        "telegram": {"botToken": "123:abc", "baseUrl": tg.url(), "pollTimeoutSeconds": 1,
            "dmPolicy": "open", "allowFrom": ["*"]},
        "slack": {"mode": "http", "signingSecret": SIGNING_SECRET, "botToken": "xoxb-1",
            "baseUrl": sl.url(), "botUserId": "U0BOT", "dmPolicy": "open", "allowFrom": ["*"]},
    });
    let t0 = std::time::Instant::now();
    let mut g = Gateway::start(Opts::default().config(cfg.clone()));
    let slack = SlackSender::start(g.addr());
    // Every message has a chat of its own (a session of its own), so its reply names it.
    let mut tags: Vec<(String, &str, String)> = Vec::new(); // (tag, channel, chat)
    let mut n = 0;
    let mut send_batch = |tags: &mut Vec<(String, &str, String)>| {
        for _ in 0..PER_ROUND {
            let tg_chat = 50_000 + n as i64;
            let tag = format!("tg{n}");
            tg.dm(tg_chat, &format!("message #{tag}#"));
            tags.push((tag, "telegram", tg_chat.to_string()));
            let chat = format!("D0CRASH{n:05}");
            let tag = format!("sl{n}");
            let ev = json!({"type": "message", "channel": chat, "channel_type": "im",
                "user": format!("U0SENDER{n:05}"), "text": format!("message #{tag}#"),
                "ts": format!("1700000000.{n:06}")});
            slack.send(slack_event(&format!("Ev{n:06}"), ev));
            tags.push((tag, "slack", chat));
            n += 1;
        }
    };
    let mut rng = keel::clock::Rng::from_os();
    let mut recovered = String::new();
    for _ in 0..ROUNDS {
        send_batch(&mut tags);
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 250));
        g.signal("KILL");
        assert!(g.wait_exit(BOUND).is_some());
        assert!(g.wait_log_closed(BOUND), "the log of a killed keel ends");
        recovered.push_str(&g.log_text());
        recovered.push_str("\n=== restart\n");
        g = g.restart(Opts::default().config(cfg.clone()));
        *slack.addr.lock().unwrap() = g.addr();
    }
    send_batch(&mut tags);
    let total = tags.len();
    assert!(total >= 200, "{total}");
    // Everything arrives and every message's run starts.
    let deadline = std::time::Instant::now() + BOUND * 3;
    loop {
        let t = transcripts(&g);
        let missing: Vec<&String> = tags
            .iter()
            .filter(|(tag, _, _)| !t.contains_key(tag))
            .map(|(tag, _, _)| tag)
            .collect();
        let acked = slack.acked.load(Ordering::Relaxed);
        if acked == total / 2 && missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slack acknowledged {acked} of {}; no run for {missing:?}; model calls for them: {:?}; queue: {:?}; inbound log: {}\n{}",
            total / 2,
            missing
                .iter()
                .map(|m| crate::inbound_webhooks::runs_of(&p, &format!("#{m}#")))
                .collect::<Vec<_>>(),
            files(&g.state().join("inbound/queue")).len(),
            std::fs::read_to_string(g.state().join("idempotency/inbound.jsonl"))
                .unwrap_or_default()
                .lines()
                .count(),
            g.log_text(),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let l = eventually(BOUND * 3, || {
        let l = g.rpc("delivery.list", json!({"limit": 1000})).json()["payload"].clone();
        (l["counts"]["pending"] == 0 && l["counts"]["sending"] == 0).then_some(l)
    });
    let held_to: Vec<String> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "unknown_after_send")
        .map(|e| {
            e["to"]
                .as_str()
                .or(e["route"]["to"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let t = transcripts(&g);
    recovered.push_str(&g.log_text());
    // Keys of runs that ended without writing an answer, and why.
    let keys_in = |what: &str| -> std::collections::HashSet<String> {
        recovered
            .lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| l.split("the run of key ").nth(1)?.split(' ').next())
            .map(String::from)
            .collect()
    };
    let queued_keys = keys_in("had queued its reply before the restart");
    let given_up_keys = keys_in("without finishing; given up");
    let (mut held, mut replies, mut model_calls, mut resumed) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for (tag, channel, chat) in &tags {
        let (runs, answered, resumes, ref key) = t[tag];
        if runs != 1 {
            problems.push(format!("{tag}: {runs} runs"));
        }
        resumed += resumes;
        // A run has no answer in its transcript only when it was given up (its chat gets a
        // notice), or when the kill came between queueing its reply and writing its answer.
        if !answered && !queued_keys.contains(key) && !given_up_keys.contains(key) {
            problems.push(format!(
                "{tag} ({channel} {chat}): no answer, and no reason"
            ));
        }
        let calls = crate::inbound_webhooks::runs_of(&p, &format!("#{tag}#"));
        model_calls += calls;
        if calls > 1 + resumes {
            problems.push(format!(
                "{tag}: reached the model {calls} times in a run resumed {resumes} times"
            ));
        }
        let got = match *channel {
            "telegram" => tg.sent_to(chat.parse().unwrap()).len(),
            _ => slack_sent_to(&sl, chat).len(),
        };
        replies += got;
        match got {
            1 => {}
            0 if held_to.contains(chat) => held += 1,
            got => problems.push(format!(
                "{tag} ({channel} {chat}): {got} replies, answered: {answered}, resumed \
                 {resumes} times"
            )),
        }
    }
    let waiting = recovered.matches("waiting from before").count();
    let given_up = given_up_keys.len();
    let queued_before = queued_keys.len();
    let answered_before = recovered.matches("had answered before the restart").count();
    eprintln!(
        "inbound crash test: {ROUNDS} kills, {total} messages ({} telegram, {} slack; {} slack \
         retries), {} runs, {resumed} resumed runs ({given_up} given up), {model_calls} model \
         calls, {replies} replies, {held} replies held (unknown after send); boots: {waiting} \
         found messages waiting, {answered_before} runs found answered and {queued_before} \
         with their reply queued; {:.1} s",
        total / 2,
        total / 2,
        slack.retries.load(Ordering::Relaxed),
        t.values().map(|v| v.0).sum::<usize>(),
        t0.elapsed().as_secs_f64(),
    );
    if !problems.is_empty() {
        // For each message in trouble: what every life logged of its run (by its key), the
        // replies its chat got and the model calls that carried it (each answers its index).
        for (tag, channel, chat) in &tags {
            if !problems.iter().any(|p| p.starts_with(&format!("{tag} "))) {
                continue;
            }
            let key = &t[tag].3;
            eprintln!("== {tag} ({channel} {chat}), key {key}");
            for (n, life) in recovered.split("=== restart").enumerate() {
                for l in life.lines().filter(|l| l.contains(key.as_str())) {
                    eprintln!("  life {n}: {l}");
                }
            }
            match *channel {
                "slack" => eprintln!("  replies: {:?}", slack_sent_to(&sl, chat)),
                _ => eprintln!("  replies: {:?}", tg.sent_to(chat.parse().unwrap())),
            }
            let calls: Vec<usize> = p
                .requests()
                .iter()
                .enumerate()
                .filter(|(_, r)| r["messages"].to_string().contains(&format!("#{tag}#")))
                .map(|(i, _)| i)
                .collect();
            eprintln!("  model calls {calls:?}");
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Every message has its one reply, or it is held for an operator.
    assert_eq!(replies + held, total);
}
