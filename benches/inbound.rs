//! Inbound: how fast keel takes messages in from Telegram (long polling and webhook mode) and
//! Slack (the Events API route) with fsync on, how soon a received message's run starts, and whether `/healthz` stays fast while
//! accounts long-poll and messages arrive — against a release keel that this binary starts
//! itself, with a fake Bot API and a fake model provider on loopback.
//!
//! `scripts/bench-inbound.sh` builds keel and this bench and runs `inbound --keel PATH --work
//! DIR`. This binary then:
//!
//! 0. starts the fake Bot API (a thread per connection: `getMe`, `setWebhook`, `getUpdates`
//!    held until an update for that token is due or the long poll's timeout passes, as
//!    Telegram does; it records when each update was first handed out and when keel confirmed
//!    it — a later `getUpdates` whose `offset` is past it, which keel sends only once the batch
//!    is stored — and counts `sendMessage` replies, and Slack's `chat.postMessage` under
//!    `/slack/`) and the fake provider (records when each model request arrived); writes a
//!    config with `--accounts` polling accounts (`p0`…), one webhook-mode account (`hook`,
//!    path `/tg-hook`) and a Slack account in HTTP mode (`/slack/events`), `dmPolicy: "open"`,
//!    `session.dmScope: "per-peer"` (100 senders: 100 sessions that run side by side), and
//!    waits until every account polled and the webhook was set.
//! 1. **polling**: `--messages` updates for `p0` at once: messages/s from the first update
//!    handed out to the confirmation of the last (every one stored with fsync by then). Then
//!    waits until every one's run started and its reply reached the fake.
//! 2. **webhook**: `--messages` updates POSTed to `/tg-hook` from `--conns` keep-alive
//!    connections; each `200` means stored with fsync (`x-openclaw-delivery-accepted:
//!    durable`): messages/s and the POST latency. Then waits for the runs and replies.
//! 3. **Slack**: `--messages` direct-message events POSTed to `/slack/events`, each signed
//!    (HMAC-SHA256 over `v0:timestamp:body`, as Slack does), from `--conns` keep-alive
//!    connections; a `200` comes only once the event is stored with fsync: messages/s and the
//!    POST latency. Then waits for the runs and the replies (`chat.postMessage`).
//! 4. **load**: for `--seconds`, `--rate` messages/s (open loop) spread over the polling
//!    accounts while `/healthz` is probed at `--probe-rate`/s (open loop, one keep-alive
//!    connection): `/healthz` p50/p99/max (target p99 <= 2 ms) and inbound -> run start
//!    (update handed out -> model request at the provider) median/p99.
//! 5. keel's peak RSS (`VmHWM`) and RSS now.
//!
//! Every message must run exactly once and get exactly one reply.
//!
//! ```text
//! inbound --keel PATH --work DIR [--messages 2000] [--conns 4] [--accounts 10] [--rate 50]
//!         [--probe-rate 500] [--seconds 20] [--timeout-s 180]
//! ```
//! Exit status: 0 when it ran correctly (every message stored, run once and answered once); 1
//! when keel behaved wrongly (a refused post, a lost or repeated run, a missing reply); 2 when
//! the run could not be set up.

use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;
use testkit::http::{io_error, read_response_ahead, remaining};
use testkit::procfs;

// Its `tests` module is for the test harness: its imports go unused here.
#[path = "../tests/gateway/fake_provider.rs"]
#[allow(unused_imports)]
mod fake_provider;
use fake_provider::FakeProvider;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const HOOK_SECRET: &str = "bench-hook-secret";
const HOOK_TOKEN: &str = "900:hookbot";
const SLACK_SECRET: &str = "bench-slack-signing-secret";
/// Senders cycle over this many ids: as many sessions (`per-peer`) run side by side.
const SENDERS: i64 = 100;
const POLL_TIMEOUT_S: u64 = 25;
const HEALTHZ_TARGET: Duration = Duration::from_millis(2);
const MAX_LOGGED: usize = 20;

struct Opts {
    keel: PathBuf,
    work: PathBuf,
    messages: usize,
    conns: usize,
    accounts: usize,
    rate: u64,
    probe_rate: u64,
    seconds: u64,
    timeout: Duration,
}

fn usage() -> &'static str {
    "usage: inbound --keel PATH --work DIR [--messages N (2000)] [--conns N (4)] [--accounts N (10)] \
     [--rate N (50)] [--probe-rate N (500)] [--seconds S (20)] [--timeout-s S (180)]"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut keel, mut work) = (None, None);
    let mut n = [2000u64, 4, 10, 50, 500, 20, 180];
    let names = [
        "--messages",
        "--conns",
        "--accounts",
        "--rate",
        "--probe-rate",
        "--seconds",
        "--timeout-s",
    ];
    let mut known = vec!["--keel", "--work"];
    known.extend(names);
    for (name, value) in flags(&known, &[])? {
        match name.as_str() {
            "--keel" => keel = Some(PathBuf::from(value)),
            "--work" => work = Some(PathBuf::from(value)),
            other => {
                if let Some(i) = names.iter().position(|x| *x == other) {
                    n[i] = number(&name, &value)?;
                }
            }
        }
    }
    let ranges = [
        1..=100_000,
        1..=64,
        1..=100,
        1..=2_000,
        1..=20_000,
        1..=600,
        1..=1_800,
    ];
    for ((v, r), name) in n.iter().zip(ranges).zip(names) {
        if !r.contains(v) {
            return Err(format!("{name} must be within {}..={}", r.start(), r.end()));
        }
    }
    Ok(Opts {
        keel: keel.ok_or("--keel is required")?,
        work: work.ok_or("--work is required")?,
        messages: n[0] as usize,
        conns: n[1] as usize,
        accounts: n[2] as usize,
        rate: n[3],
        probe_rate: n[4],
        seconds: n[5],
        timeout: Duration::from_secs(n[6]),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wrong behaviour of keel (exit 1), the first few printed as they happen.
#[derive(Default)]
struct Wrong(Mutex<Vec<String>>);

impl Wrong {
    fn push(&self, msg: String) {
        let mut v = lock(&self.0);
        if v.len() < MAX_LOGGED {
            eprintln!("inbound bench: {msg}");
        }
        v.push(msg);
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

// ---------------------------------------------------------------------------------------------
// The fake Bot API.

#[derive(Default)]
struct TgState {
    /// Per bot token, the updates not yet confirmed, oldest first.
    pending: HashMap<String, VecDeque<(i64, Value)>>,
    next_id: i64,
    /// Update id -> when it was first handed out.
    handed: HashMap<i64, Instant>,
    /// Update id -> when keel confirmed it (an offset past it).
    confirmed: HashMap<i64, Instant>,
    /// `sendMessage` calls.
    replies: u64,
    polls: HashMap<String, u64>,
    webhooks: u64,
}

struct FakeTg {
    addr: SocketAddr,
    state: Arc<(Mutex<TgState>, Condvar)>,
}

fn tg_respond(s: &mut TcpStream, status: u16, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl FakeTg {
    fn start() -> Result<FakeTg, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("fake Bot API: bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state: Arc<(Mutex<TgState>, Condvar)> = Arc::default();
        lock(&state.0).next_id = 1;
        let st = state.clone();
        thread::Builder::new()
            .name("fake-tg".into())
            .spawn(move || {
                for s in listener.incoming() {
                    let Ok(s) = s else { continue };
                    let st = st.clone();
                    let _ = thread::Builder::new()
                        .name("fake-tg-conn".into())
                        .spawn(move || tg_handle(s, &st));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(FakeTg { addr, state })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn st(&self) -> MutexGuard<'_, TgState> {
        lock(&self.state.0)
    }

    /// A direct message from `sender` to the bot `token`, tagged with its update id; the id.
    fn push(&self, token: &str, sender: i64) -> i64 {
        let mut st = self.st();
        let id = st.next_id;
        st.next_id += 1;
        st.pending
            .entry(token.to_string())
            .or_default()
            .push_back((id, update(id, sender)));
        drop(st);
        self.state.1.notify_all();
        id
    }

    /// Takes an id for an update that is not queued here (webhook mode).
    fn take_id(&self) -> i64 {
        let mut st = self.st();
        st.next_id += 1;
        st.next_id - 1
    }
}

fn update(id: i64, sender: i64) -> Value {
    json!({"update_id": id, "message": {"message_id": id, "date": 1_700_000_000,
        "chat": {"id": sender, "type": "private"},
        "from": {"id": sender, "is_bot": false, "first_name": "Bench"},
        "text": format!("bench message m{id}e")}})
}

/// A Slack `event_callback` for a direct message from `sender`, tagged with `id` like the
/// Telegram updates.
fn slack_event(id: i64, sender: i64) -> Value {
    json!({"token": "legacy", "team_id": "T0001", "api_app_id": "A0001",
        "type": "event_callback", "event_id": format!("Ev{id}"),
        "event_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "event": {"type": "message", "channel": format!("D{sender:08}"), "channel_type": "im",
            "user": format!("U{sender:08}"), "text": format!("bench message m{id}e"),
            "ts": format!("1700000000.{id:06}")}})
}

/// Slack's signature headers for `body`, now.
fn slack_headers(body: &[u8]) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let mac = keel::digest::hmac_sha256(
        SLACK_SECRET.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", body],
    );
    format!(
        "X-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: v0={}\r\n",
        keel::digest::hex(&mac)
    )
}

fn tg_handle(mut s: TcpStream, st: &(Mutex<TgState>, Condvar)) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = s.try_clone() else { return };
    let mut r = BufReader::new(clone);
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
    let mut parts = path.trim_start_matches('/').split('/');
    let token = parts
        .next()
        .and_then(|p| p.strip_prefix("bot"))
        .unwrap_or("")
        .to_string();
    let method = parts.next().unwrap_or("");
    let (m, cv) = st;
    match method {
        "getMe" => tg_respond(
            &mut s,
            200,
            r#"{"ok":true,"result":{"id":999,"is_bot":true,"first_name":"Bench","username":"bench_bot"}}"#,
        ),
        // A reply: Telegram's, or Slack's Web API under `/slack/` (the token part is `slack`).
        "sendMessage" | "chat.postMessage" => {
            let n = {
                let mut g = lock(m);
                g.replies += 1;
                g.replies
            };
            let answer = if method == "sendMessage" {
                json!({"ok": true, "result": {"message_id": n}})
            } else {
                json!({"ok": true, "channel": body["channel"], "ts": format!("1700000000.{n:06}")})
            };
            tg_respond(&mut s, 200, &answer.to_string());
        }
        "setWebhook" => {
            lock(m).webhooks += 1;
            tg_respond(&mut s, 200, r#"{"ok":true,"result":true}"#);
        }
        "deleteWebhook" => tg_respond(&mut s, 200, r#"{"ok":true,"result":true}"#),
        "getUpdates" => {
            let offset = body["offset"].as_i64();
            let end = Instant::now() + Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
            let mut g = lock(m);
            *g.polls.entry(token.clone()).or_default() += 1;
            if let Some(o) = offset {
                let now = Instant::now();
                let mut done = Vec::new();
                if let Some(q) = g.pending.get_mut(&token) {
                    while q.front().is_some_and(|(id, _)| *id < o) {
                        if let Some((id, _)) = q.pop_front() {
                            done.push(id);
                        }
                    }
                }
                for id in done {
                    g.confirmed.insert(id, now);
                }
            }
            loop {
                let due: Vec<(i64, Value)> = g
                    .pending
                    .get(&token)
                    .map(|q| q.iter().take(100).cloned().collect())
                    .unwrap_or_default();
                let now = Instant::now();
                if !due.is_empty() || now >= end {
                    for (id, _) in &due {
                        g.handed.entry(*id).or_insert(now);
                    }
                    drop(g);
                    let result: Vec<Value> = due.into_iter().map(|(_, u)| u).collect();
                    return tg_respond(
                        &mut s,
                        200,
                        &json!({"ok": true, "result": result}).to_string(),
                    );
                }
                g = match cv.wait_timeout(g, end - now) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
        }
        _ => tg_respond(&mut s, 404, r#"{"ok":false,"error_code":404}"#),
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// The update id in a model request's last user message (`m<id>e`).
fn tag_of(body: &Value) -> Option<i64> {
    let msgs = body["messages"].as_array()?;
    let last = msgs.iter().rev().find(|m| m["role"] == "user")?;
    let text = last["content"].to_string();
    let at = text.find("bench message m")? + "bench message m".len();
    let rest = &text[at..];
    let end = rest.find('e')?;
    rest[..end].parse().ok()
}

/// Model requests by update id: when the first came, and how many.
fn runs_by_id(p: &FakeProvider) -> HashMap<i64, (Instant, usize)> {
    let mut out: HashMap<i64, (Instant, usize)> = HashMap::new();
    for r in p.received() {
        if let Some(id) = tag_of(&r.body) {
            let e = out.entry(id).or_insert((r.at, 0));
            e.0 = e.0.min(r.at);
            e.1 += 1;
        }
    }
    out
}

/// Waits until every id in `ids` has run and as many replies as runs reached the fake;
/// returns when the last run started, or why not.
fn wait_runs(
    p: &FakeProvider,
    tg: &FakeTg,
    ids: &[i64],
    replies_before: u64,
    deadline: Instant,
) -> Result<Instant, String> {
    loop {
        let runs = runs_by_id(p);
        let missing = ids.iter().filter(|id| !runs.contains_key(id)).count();
        let replies = tg.st().replies - replies_before;
        if missing == 0 && replies >= ids.len() as u64 {
            let last = ids.iter().filter_map(|id| runs.get(id)).map(|r| r.0).max();
            return Ok(last.unwrap_or_else(Instant::now));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{missing} of {} messages never ran; {replies} replies",
                ids.len()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn p(sorted_samples: &[Duration], q: f64) -> f64 {
    ms(percentile(sorted_samples, q))
}

/// `POST /tg-hook` on a keep-alive connection with the secret header.
/// POSTs to one of keel's webhook routes over a keep-alive connection.
struct Poster {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    path: &'static str,
    /// The request's own headers for a body (a secret, a signature), each ending in CRLF.
    headers: fn(&[u8]) -> String,
}

fn tg_hook_headers(_: &[u8]) -> String {
    format!("X-Telegram-Bot-Api-Secret-Token: {HOOK_SECRET}\r\n")
}

impl Poster {
    fn new(addr: SocketAddr, path: &'static str, headers: fn(&[u8]) -> String) -> Poster {
        Poster {
            addr,
            stream: None,
            buf: Vec::new(),
            path,
            headers,
        }
    }

    fn post(&mut self, body: &[u8]) -> Result<(u16, bool), String> {
        let deadline = Instant::now() + RPC_TIMEOUT;
        let r = self.exchange(body, deadline);
        if r.is_err() {
            self.stream = None;
        }
        r.map_err(|e| e.to_string())
    }

    fn exchange(&mut self, body: &[u8], deadline: Instant) -> Result<(u16, bool), HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, remaining(deadline)?)
                .map_err(|e| io_error("connect", &e))?;
            let _ = s.set_nodelay(true);
            self.buf.clear();
            self.stream = Some(s);
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(HttpError::Io("no connection".into()));
        };
        let mut wire = format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{}\
             Content-Length: {}\r\n\r\n",
            self.path,
            (self.headers)(body),
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(body);
        s.set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| io_error("set_write_timeout", &e))?;
        s.write_all(&wire).map_err(|e| io_error("write", &e))?;
        let (resp, close) = read_response_ahead(s, &mut self.buf, deadline)?;
        if close {
            self.stream = None;
        }
        let durable = resp
            .head
            .to_ascii_lowercase()
            .contains("x-openclaw-delivery-accepted: durable");
        Ok((resp.status, durable))
    }
}

/// One webhook phase: `ids` POSTed by [`post_batch`] (problems reported under `label`), then
/// waited for until every run started and every reply came; when the last run started.
fn webhook_phase(
    label: &str,
    ids: &[i64],
    poster: Poster,
    body: fn(i64, usize) -> Value,
    durable: bool,
    (o, provider, tg, wrong, hard_end): (&Opts, &FakeProvider, &FakeTg, &Wrong, Instant),
) -> (Posted, Option<Instant>) {
    let replies_before = tg.st().replies;
    let posted = post_batch(ids, o.conns, poster, body, durable, hard_end);
    for e in &posted.errors {
        wrong.push(format!("{label}: {e}"));
    }
    let runs_end = match wait_runs(provider, tg, ids, replies_before, hard_end) {
        Ok(t) => Some(t),
        Err(e) => {
            wrong.push(format!("{label}: {e}"));
            None
        }
    };
    (posted, runs_end)
}

/// Prints a webhook phase's figures; `what` has one `{}` for the count of POSTs.
fn print_posted(what: &str, posted: &Posted, runs_end: Option<Instant>, conns: usize) {
    let window = posted.end.saturating_duration_since(posted.start);
    println!(
        "  {} over {conns} keep-alive connections in {:.3} s: {:.0} messages/s; POST p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        what.replacen("{}", &posted.lat.len().to_string(), 1),
        window.as_secs_f64(),
        per_second(posted.lat.len() as u64, window),
        p(&posted.lat, 50.0),
        p(&posted.lat, 99.0),
        p(&posted.lat, 100.0)
    );
    if let Some(t) = runs_end {
        let w = t.saturating_duration_since(posted.start);
        println!(
            "    their runs all started {:.3} s after the first POST ({:.0} runs/s)",
            w.as_secs_f64(),
            per_second(posted.lat.len() as u64, w)
        );
    }
}

/// What [`post_batch`] saw: each accepted POST's latency (sorted), problems, when it began and
/// when the last poster finished.
struct Posted {
    lat: Vec<Duration>,
    errors: Vec<String>,
    start: Instant,
    end: Instant,
}

/// POSTs one body per id (`body(id, n)`) from `conns` keep-alive connections, each taking a
/// share of `ids` in order. A POST counts as accepted on `200` (and, with `durable`, only
/// with `x-openclaw-delivery-accepted: durable`).
fn post_batch(
    ids: &[i64],
    conns: usize,
    poster: Poster,
    body: fn(i64, usize) -> Value,
    durable: bool,
    hard_end: Instant,
) -> Posted {
    let chunks: Vec<Vec<i64>> = ids
        .chunks(ids.len().div_ceil(conns.max(1)).max(1))
        .map(<[i64]>::to_vec)
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|ids| {
            let mut poster = Poster::new(poster.addr, poster.path, poster.headers);
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(ids.len());
                let mut errors = Vec::new();
                for (n, id) in ids.iter().enumerate() {
                    let b = body(*id, n).to_string();
                    let t0 = Instant::now();
                    match poster.post(b.as_bytes()) {
                        Ok((200, d)) if d || !durable => lat.push(t0.elapsed()),
                        Ok((status, d)) => {
                            errors.push(format!("message {id}: HTTP {status}, durable {d}"))
                        }
                        Err(e) => errors.push(format!("message {id}: {e}")),
                    }
                }
                (lat, errors, Instant::now())
            })
        })
        .collect();
    let (results, abandoned) = join_bounded(handles, hard_end);
    let mut out = Posted {
        lat: Vec::new(),
        errors: Vec::new(),
        start,
        end: start,
    };
    if abandoned > 0 {
        out.errors
            .push(format!("{abandoned} poster(s) did not finish"));
    }
    for (lat, errors, end) in results {
        out.lat.extend(lat);
        out.end = out.end.max(end);
        out.errors.extend(errors);
    }
    out.lat = sorted(&out.lat);
    out
}

fn metrics_text(keel: &Keel) -> Result<String, String> {
    let mut http = Http::new(keel.addr);
    let r = http
        .request("GET", "/metrics", Some(&keel.token), b"", RPC_TIMEOUT)
        .map_err(|e| format!("/metrics: {e}"))?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

fn token_of(i: usize) -> String {
    format!("{}:pollbot{i}", 100 + i)
}

fn run(o: &Opts) -> Result<i32, String> {
    let wrong = Wrong::default();
    let tg = FakeTg::start()?;
    let provider = FakeProvider::start("openai-completions");
    let mut config = provider.one_provider_config();
    let mut accounts = serde_json::Map::new();
    for i in 0..o.accounts {
        accounts.insert(format!("p{i}"), json!({"botToken": token_of(i)}));
    }
    accounts.insert(
        "hook".into(),
        json!({"botToken": HOOK_TOKEN, "webhookUrl": "https://bench.example/tg-hook",
               "webhookSecret": HOOK_SECRET, "webhookPath": "/tg-hook"}),
    );
    config["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": POLL_TIMEOUT_S,
        "dmPolicy": "open", "allowFrom": ["*"], "accounts": accounts,
    }});
    config["channels"]["slack"] = json!({
        "mode": "http", "signingSecret": SLACK_SECRET, "botToken": "xoxb-bench",
        "baseUrl": format!("{}/slack", tg.url()), "botUserId": "U0BOT",
        "dmPolicy": "open", "allowFrom": ["*"],
    });
    config["session"] = json!({"dmScope": "per-peer"});
    let mut keel = start_keel(&Launch {
        exe: &o.keel,
        work: &o.work,
        config: &config,
        also_unset: &[],
        ready: "listening on",
        ready_required: true,
        timeout: START_TIMEOUT,
    })?;
    let pid = keel.child.id();
    // Every account is polling and the webhook is set.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let st = tg.st();
        let polling = (0..o.accounts)
            .filter(|i| st.polls.get(&token_of(*i)).is_some_and(|n| *n > 0))
            .count();
        if polling == o.accounts && st.webhooks > 0 {
            break;
        }
        drop(st);
        if Instant::now() >= deadline {
            return Err(format!(
                "accounts not all polling (or the webhook not set) within {} s; keel's log:\n{}",
                START_TIMEOUT.as_secs(),
                log_tail(&keel.log.text())
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let hard_end = Instant::now() + o.timeout;
    let sender = |i: usize| 1_000 + (i as i64 % SENDERS);

    // 1. Polling.
    let p0 = token_of(0);
    let poll_ids: Vec<i64> = (0..o.messages).map(|i| tg.push(&p0, sender(i))).collect();
    let last = *poll_ids.last().unwrap_or(&0);
    let confirmed_at = loop {
        if let Some(t) = tg.st().confirmed.get(&last).copied() {
            break t;
        }
        if Instant::now() >= hard_end {
            return Err(format!(
                "the polled messages were not all confirmed within {} s",
                o.timeout.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let first_handed = {
        let st = tg.st();
        poll_ids
            .iter()
            .filter_map(|id| st.handed.get(id))
            .min()
            .copied()
            .unwrap_or(confirmed_at)
    };
    let poll_window = confirmed_at.saturating_duration_since(first_handed);
    let poll_runs_end = match wait_runs(&provider, &tg, &poll_ids, 0, hard_end) {
        Ok(t) => Some(t),
        Err(e) => {
            wrong.push(format!("polling: {e}"));
            None
        }
    };

    // 2. Webhook; 3. Slack's Events API route.
    let hook_ids: Vec<i64> = (0..o.messages).map(|_| tg.take_id()).collect();
    let (hook, hook_runs_end) = webhook_phase(
        "webhook",
        &hook_ids,
        Poster::new(keel.addr, "/tg-hook", tg_hook_headers),
        |id, n| update(id, 1_000 + (n as i64 % SENDERS)),
        true,
        (o, &provider, &tg, &wrong, hard_end),
    );
    let slack_ids: Vec<i64> = (0..o.messages).map(|_| tg.take_id()).collect();
    let (slack, slack_runs_end) = webhook_phase(
        "slack",
        &slack_ids,
        Poster::new(keel.addr, "/slack/events", slack_headers),
        |id, n| slack_event(id, 1_000 + (n as i64 % SENDERS)),
        false,
        (o, &provider, &tg, &wrong, hard_end),
    );

    // 4. Load: messages over every polling account, /healthz probed.
    let replies_before = tg.st().replies;
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now() + Duration::from_millis(50);
    let load_end = load_start + Duration::from_secs(o.seconds);
    let probe_rate = o.probe_rate;
    let addr = keel.addr;
    let prober = thread::spawn(move || {
        let mut http = Http::new(addr);
        let (mut ok, mut errors) = (Vec::new(), 0u64);
        let never = AtomicBool::new(false);
        for i in 0u64.. {
            let Some(due) = wait_due(load_start, i, probe_rate, &never, load_end) else {
                break;
            };
            let _ = due;
            let t0 = Instant::now();
            match http.request("GET", "/healthz", None, b"", RPC_TIMEOUT) {
                Ok(r) if r.status == 200 => ok.push(t0.elapsed()),
                _ => errors += 1,
            }
        }
        (ok, errors)
    });
    let mut load_ids = Vec::new();
    for i in 0u64.. {
        if wait_due(load_start, i, o.rate, &stop, load_end).is_none() {
            break;
        }
        let n = i as usize;
        load_ids.push(tg.push(&token_of(n % o.accounts), sender(n)));
    }
    stop.store(true, Ordering::Release);
    let (probes, probe_errors) = prober
        .join()
        .map_err(|_| "the /healthz prober panicked".to_string())?;
    if probe_errors > 0 {
        wrong.push(format!("{probe_errors} /healthz probe(s) failed"));
    }
    let probes = sorted(&probes);
    if let Err(e) = wait_runs(&provider, &tg, &load_ids, replies_before, hard_end) {
        wrong.push(format!("load: {e}"));
    }
    let runs = runs_by_id(&provider);
    let handed = tg.st().handed.clone();
    let latency = sorted(
        &load_ids
            .iter()
            .filter_map(|id| Some(runs.get(id)?.0.saturating_duration_since(*handed.get(id)?)))
            .collect::<Vec<_>>(),
    );

    // Exactly once.
    let mut repeated = 0;
    for id in poll_ids
        .iter()
        .chain(&hook_ids)
        .chain(&slack_ids)
        .chain(&load_ids)
    {
        if runs.get(id).is_some_and(|r| r.1 > 1) {
            repeated += 1;
        }
    }
    if repeated > 0 {
        wrong.push(format!("{repeated} message(s) ran more than once"));
    }
    let total = (poll_ids.len() + hook_ids.len() + slack_ids.len() + load_ids.len()) as u64;
    // Late duplicates of replies.
    thread::sleep(Duration::from_millis(500));
    let replies = tg.st().replies;
    if replies != total {
        wrong.push(format!("{replies} replies for {total} messages"));
    }
    let metrics = metrics_text(&keel).unwrap_or_default();
    let hwm = procfs::status(pid, "VmHWM").unwrap_or(0);
    let rss = procfs::status(pid, "VmRSS").unwrap_or(0);
    let (stopped, stop_took, _) = stop_keel(&mut keel, STOP_TIMEOUT);

    println!("== inbound: Telegram and Slack -> keel (fsync on) -> runs -> replies ==");
    println!(
        "  {} polling accounts + 1 webhook account (Telegram), 1 Slack account (Events API), long poll {POLL_TIMEOUT_S} s, {SENDERS} senders (per-peer sessions)",
        o.accounts
    );
    println!(
        "  every message is a file written with fsync (temp, fsync, rename, directory fsync) before the offset moves past it / before the webhook's 200"
    );
    println!();
    println!("== (a) messages accepted ==");
    println!(
        "  long polling: {} updates on one account, first handed out -> last confirmed {:.3} s: {:.0} messages/s",
        poll_ids.len(),
        poll_window.as_secs_f64(),
        per_second(poll_ids.len() as u64, poll_window)
    );
    if let Some(t) = poll_runs_end {
        let w = t.saturating_duration_since(first_handed);
        println!(
            "    their runs all started {:.3} s after the first was handed out ({:.0} runs/s)",
            w.as_secs_f64(),
            per_second(poll_ids.len() as u64, w)
        );
    }
    print_posted("webhook: {} POSTs", &hook, hook_runs_end, o.conns);
    print_posted(
        "Slack Events API: {} signed POSTs to /slack/events",
        &slack,
        slack_runs_end,
        o.conns,
    );
    println!();
    println!(
        "== (b), (c) {} s: {} messages/s over {} polling accounts, /healthz at {}/s (open loop) ==",
        o.seconds, o.rate, o.accounts, o.probe_rate
    );
    println!(
        "  inbound -> run start (update handed out -> model request at the provider), {} messages: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.len(),
        p(&latency, 50.0),
        p(&latency, 99.0),
        p(&latency, 100.0)
    );
    let p99 = percentile(&probes, 99.0);
    println!(
        "  /healthz: {} probes, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {probe_errors} failed — target p99 <= {} ms: {}",
        probes.len(),
        p(&probes, 50.0),
        ms(p99),
        p(&probes, 100.0),
        HEALTHZ_TARGET.as_millis(),
        verdict(!probes.is_empty() && p99 <= HEALTHZ_TARGET)
    );
    println!();
    println!("== (d) memory ==");
    println!(
        "  keel RSS: peak (VmHWM) {:.1} MiB, at the end {:.1} MiB",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!();
    let received: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("keel_inbound_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let dups: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("keel_inbound_duplicates_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "  messages {total}, runs {} (repeated {repeated}), replies {replies}; keel counted {received} received, {dups} duplicates",
        runs.len()
    );
    println!(
        "  keel stopped after SIGTERM in {:.3} s: {}",
        stop_took.as_secs_f64(),
        stopped.map_or("killed (SIGKILL)".to_string(), |s| s.to_string())
    );
    drop(provider);
    let n = wrong.len();
    println!();
    if n == 0 {
        println!("OK: every message stored, run once and answered once");
        Ok(0)
    } else {
        println!("WRONG: {n} problem(s), see above and stderr");
        Ok(1)
    }
}

fn main() {
    bench_main("inbound", parse_opts, usage, run);
}
