//! A fake Telegram Bot API on loopback for the inbound tests: `getMe`, `getUpdates` (long
//! polls held until an update at or past the offset arrives or the poll's timeout passes,
//! as Telegram does) and `sendMessage` (recorded). A script makes the next `getUpdates`
//! answer `409`, `429` with `retry_after`, a 5xx, malformed JSON, or stall.
//!
//! Each connection has its own thread and ends by itself (a stall at most [`STALL_BOUND`]),
//! so a test that forgets one cannot hang.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const STALL_BOUND: Duration = Duration::from_secs(30);

/// What the next `getUpdates` gets instead of updates.
#[derive(Debug, Clone)]
pub enum Next {
    Conflict,
    RetryAfter(u64),
    Status(u16),
    Malformed,
    /// Reads the request and answers nothing (until the client gives up).
    Stall,
    /// Answers every update, the offset ignored (a redelivery).
    Replay,
}

#[derive(Default)]
struct Inner {
    /// Updates, each for one bot token or (`None`) for any.
    updates: Vec<(Option<String>, Value)>,
    next_id: i64,
    script: VecDeque<Next>,
    sent: Vec<Value>,
    /// The bot token of each `sendMessage` (from the URL path), in order.
    sent_tokens: Vec<String>,
    /// `setWebhook` bodies received, with the token.
    webhooks: Vec<(String, Value)>,
    /// Tokens whose webhook is set (as Telegram: `getUpdates` is then refused with 409 until
    /// `deleteWebhook`), and the `deleteWebhook` calls received.
    webhook_active: std::collections::HashSet<String>,
    deleted_webhooks: Vec<(String, Value)>,
    polls: usize,
    /// The bot token of each `getUpdates`, in order.
    poll_tokens: Vec<String>,
    offsets: Vec<Option<i64>>,
}

pub struct FakeTelegram {
    port: u16,
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

fn respond(s: &mut std::net::TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        409 => "Conflict",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl FakeTelegram {
    pub fn start() -> FakeTelegram {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner: Arc<(Mutex<Inner>, Condvar)> = Arc::default();
        inner.0.lock().unwrap().next_id = 1000;
        let shared = inner.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { return };
                let shared = shared.clone();
                std::thread::spawn(move || handle(s, &shared));
            }
        });
        FakeTelegram { port, inner }
    }

    /// The API root to configure (`channels.telegram.baseUrl`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues a raw update (its `update_id` is given one if it has none); returns the id.
    pub fn push(&self, u: Value) -> i64 {
        self.push_to(None, u)
    }

    /// Queues a raw update for the bot with `token` only (`None`: for every bot).
    pub fn push_to(&self, token: Option<&str>, mut u: Value) -> i64 {
        let (m, cv) = &*self.inner;
        let mut i = m.lock().unwrap();
        let id = match u["update_id"].as_i64() {
            Some(id) => id,
            None => {
                i.next_id += 1;
                u["update_id"] = json!(i.next_id);
                i.next_id
            }
        };
        i.updates.push((token.map(str::to_string), u));
        cv.notify_all();
        id
    }

    /// A direct message from user `from` (its chat has the same id).
    pub fn dm(&self, from: i64, text: &str) -> i64 {
        self.push(json!({"message": {"message_id": 1, "date": 1_700_000_000,
            "chat": {"id": from, "type": "private"},
            "from": {"id": from, "is_bot": false, "first_name": "User"}, "text": text}}))
    }

    /// A direct message from user `from` to the bot with `token`.
    pub fn dm_to(&self, token: &str, from: i64, text: &str) -> i64 {
        self.push_to(Some(token), Self::dm_update(from, text))
    }

    /// The update of a direct message from `from`, without an `update_id`.
    pub fn dm_update(from: i64, text: &str) -> Value {
        json!({"message": {"message_id": 1, "date": 1_700_000_000,
            "chat": {"id": from, "type": "private"},
            "from": {"id": from, "is_bot": false, "first_name": "User"}, "text": text}})
    }

    /// `(token, text)` of every message sent to `chat`.
    pub fn sent_with_token(&self, chat: i64) -> Vec<(String, String)> {
        let i = self.inner.0.lock().unwrap();
        i.sent
            .iter()
            .zip(&i.sent_tokens)
            .filter(|(b, _)| b["chat_id"] == json!(chat))
            .map(|(b, t)| (t.clone(), b["text"].as_str().unwrap_or("").to_string()))
            .collect()
    }

    /// `setWebhook` calls: `(token, body)`.
    /// `deleteWebhook` calls, with the token and body.
    pub fn deleted_webhooks(&self) -> Vec<(String, Value)> {
        self.inner.0.lock().unwrap().deleted_webhooks.clone()
    }

    pub fn webhooks(&self) -> Vec<(String, Value)> {
        self.inner.0.lock().unwrap().webhooks.clone()
    }

    pub fn script(&self, n: Next) {
        self.inner.0.lock().unwrap().script.push_back(n);
    }

    /// `sendMessage` bodies received.
    pub fn sent(&self) -> Vec<Value> {
        self.inner.0.lock().unwrap().sent.clone()
    }

    /// Texts sent to `chat`.
    pub fn sent_to(&self, chat: i64) -> Vec<String> {
        self.sent()
            .iter()
            .filter(|b| b["chat_id"] == json!(chat))
            .filter_map(|b| b["text"].as_str().map(str::to_string))
            .collect()
    }

    pub fn polls(&self) -> usize {
        self.inner.0.lock().unwrap().polls
    }

    /// `getUpdates` calls made with the bot token `token`.
    pub fn polls_for(&self, token: &str) -> usize {
        let i = self.inner.0.lock().unwrap();
        i.poll_tokens.iter().filter(|t| *t == token).count()
    }
}

fn handle(mut s: std::net::TcpStream, shared: &(Mutex<Inner>, Condvar)) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.is_empty() {
            return;
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = path.rsplit('/').next().unwrap_or("");
    // `/bot<token>/<method>`
    let token = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .and_then(|s| s.strip_prefix("bot"))
        .unwrap_or("")
        .to_string();
    let (m, cv) = shared;
    match method {
        "getMe" => respond(
            &mut s,
            200,
            r#"{"ok":true,"result":{"id":999,"is_bot":true,"first_name":"Keel","username":"keel_test_bot"}}"#,
        ),
        "sendMessage" => {
            let n = {
                let mut i = m.lock().unwrap();
                i.sent.push(body);
                i.sent_tokens.push(token);
                i.sent.len()
            };
            respond(
                &mut s,
                200,
                &json!({"ok": true, "result": {"message_id": n}}).to_string(),
            );
        }
        "deleteWebhook" => {
            let mut i = m.lock().unwrap();
            i.webhook_active.remove(&token);
            i.deleted_webhooks.push((token, body));
            respond(
                &mut s,
                200,
                r#"{"ok":true,"result":true,"description":"Webhook was deleted"}"#,
            );
        }
        "getUpdates" if m.lock().unwrap().webhook_active.contains(&token) => {
            m.lock().unwrap().poll_tokens.push(token.clone());
            respond(
                &mut s,
                409,
                r#"{"ok":false,"error_code":409,"description":"Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"}"#,
            );
        }
        "setWebhook" => {
            let mut i = m.lock().unwrap();
            i.webhook_active.insert(token.clone());
            i.webhooks.push((token, body));
            drop(i);
            respond(
                &mut s,
                200,
                r#"{"ok":true,"result":true,"description":"Webhook was set"}"#,
            );
        }
        "getUpdates" => {
            let offset = body["offset"].as_i64();
            let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
            let next = {
                let mut i = m.lock().unwrap();
                i.polls += 1;
                i.poll_tokens.push(token.clone());
                i.offsets.push(offset);
                i.script.pop_front()
            };
            let replay = match next {
                Some(Next::Conflict) => {
                    return respond(
                        &mut s,
                        409,
                        r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}"#,
                    );
                }
                Some(Next::RetryAfter(n)) => {
                    return respond(
                        &mut s,
                        429,
                        &json!({"ok": false, "error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": n}}).to_string(),
                    );
                }
                Some(Next::Status(code)) => {
                    return respond(
                        &mut s,
                        code,
                        r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#,
                    );
                }
                Some(Next::Malformed) => return respond(&mut s, 200, "{\"ok\":true,\"result\":[{"),
                Some(Next::Stall) => {
                    // Hold the connection open without a byte until the client leaves.
                    let end = Instant::now() + STALL_BOUND;
                    let mut buf = [0u8; 64];
                    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                    while Instant::now() < end {
                        match s.read(&mut buf) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => return,
                        }
                    }
                    return;
                }
                Some(Next::Replay) => true,
                None => false,
            };
            let end = Instant::now() + timeout;
            let mut i = m.lock().unwrap();
            loop {
                let due: Vec<Value> = i
                    .updates
                    .iter()
                    .filter(|(to, _)| to.as_ref().is_none_or(|t| *t == token))
                    .map(|(_, u)| u)
                    .filter(|u| {
                        replay || offset.is_none_or(|o| u["update_id"].as_i64().unwrap_or(0) >= o)
                    })
                    .take(100)
                    .cloned()
                    .collect();
                let now = Instant::now();
                if !due.is_empty() || now >= end {
                    drop(i);
                    return respond(&mut s, 200, &json!({"ok": true, "result": due}).to_string());
                }
                i = cv.wait_timeout(i, end - now).unwrap().0;
            }
        }
        _ => respond(
            &mut s,
            404,
            r#"{"ok":false,"error_code":404,"description":"Not Found"}"#,
        ),
    }
}
