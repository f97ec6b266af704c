//! A scriptable fake model provider for the integration tests: an HTTP server on
//! 127.0.0.1:0 that speaks `openai-completions` or `anthropic-messages` byte for byte as the
//! real services stream them, and that can instead stall, reset, answer an error status or
//! trickle its bytes.
//!
//! Each request takes the next queued [`Behavior`] (first in, first out; an empty queue
//! answers a short successful stream saying "ok"). Every request is recorded for assertions.
//!
//! Invariants: every connection runs on its own thread and ends by itself — when its script
//! is done, when the client closes, when the provider is dropped, or after [`CONN_BOUND`] at
//! the latest — so a test that forgets about a stalled connection cannot hang. The tests at
//! the bottom call `keel::agent::provider::call_streaming` against it, each under a bound.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any one connection is kept open.
pub const CONN_BOUND: Duration = Duration::from_secs(60);
/// How long reading a request may take before the connection is given up.
const REQUEST_BOUND: Duration = Duration::from_secs(10);

/// What the next request gets.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A complete, successful stream: the text in these chunks (one SSE event each), then an
    /// optional tool call (its arguments sent in several fragments), then usage
    /// `(input, output)` tokens, with `delay_between` between events.
    Stream {
        text: Vec<String>,
        tool_call: Option<(String, Value)>,
        usage: (u64, u64),
        delay_between: Duration,
    },
    /// Reads the request, then sends nothing until the client closes or the fake is dropped.
    StallBeforeHead,
    /// Sends the head, the events that open a text stream and its first `after_chunks` text
    /// chunks (`part0 `, `part1 `, ...), then nothing.
    StallMidStream { after_chunks: usize },
    /// A non-streamed answer with this status and body (JSON content type).
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Reads the request, then closes the connection without a byte of answer.
    Reset,
    /// A complete stream of `text` whose bytes go out one at a time, `byte_delay` apart.
    Trickle { text: String, byte_delay: Duration },
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::text(&["ok"])
    }
}

impl Behavior {
    /// A successful stream of these text chunks.
    pub fn text(chunks: &[&str]) -> Behavior {
        Behavior::Stream {
            text: chunks.iter().map(|c| c.to_string()).collect(),
            tool_call: None,
            usage: (10, 2),
            delay_between: Duration::ZERO,
        }
    }

    /// A successful stream that only calls `name` with `args`.
    pub fn tool_call(name: &str, args: Value) -> Behavior {
        Behavior::Stream {
            text: Vec::new(),
            tool_call: Some((name.to_string(), args)),
            usage: (10, 2),
            delay_between: Duration::ZERO,
        }
    }

    pub fn status(status: u16, body: &str) -> Behavior {
        Behavior::Status {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// What each API answers for a model that does not exist.
    pub fn model_not_found(api: &str, model: &str) -> Behavior {
        Behavior::status(404, &FakeProvider::model_not_found_body(api, model))
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// When the whole request had arrived (the benches' latencies end here).
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn parse(api: &str) -> Api {
        match api {
            "openai-completions" => Api::OpenAi,
            "anthropic-messages" => Api::Anthropic,
            other => panic!("fake provider: unknown api {other:?}"),
        }
    }
}

struct Shared {
    api: Api,
    queue: Mutex<VecDeque<Behavior>>,
    received: Mutex<Vec<Received>>,
    stop: AtomicBool,
    /// A handle on every open connection, to shut them all when the fake is dropped.
    conns: Mutex<Vec<(u64, TcpStream)>>,
    next_conn: AtomicU64,
    /// Numbers the ids of generated messages and calls.
    serial: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeProvider {
    /// Starts a fake for `api` (`"openai-completions"` or `"anthropic-messages"`).
    pub fn start(api: &str) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        // Polled, so that dropping the fake stops the acceptor without a wake-up connection.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            api: Api::parse(api),
            queue: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            serial: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("fake-provider".into())
            .spawn(move || accept_loop(listener, s))
            .expect("spawn fake provider");
        FakeProvider {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The base URL as an OpenClaw config would give it: with `/v1` for OpenAI, without for
    /// Anthropic.
    pub fn base_url(&self) -> String {
        match self.shared.api {
            Api::OpenAi => format!("http://{}/v1", self.addr),
            Api::Anthropic => format!("http://{}", self.addr),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A config whose one provider `a` is this fake (model `a/m1`), with agents `main` (the
    /// default) and `ops`; a test adds its own sections.
    pub fn one_provider_config(&self) -> Value {
        json!({
            "models": {"providers": {
                "a": {"baseUrl": self.base_url(), "apiKey": "ka", "api": "openai-completions",
                      "timeoutMs": 20000, "models": [{"id": "m1"}]},
            }},
            "agents": {"defaults": {"model": {"primary": "a/m1"}},
                       "list": [{"id": "main", "default": true}, {"id": "ops"}]},
        })
    }

    /// Queues what the next request not yet answered gets.
    pub fn push(&self, b: Behavior) {
        lock(&self.shared.queue).push_back(b);
    }

    /// The JSON bodies received so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.received)
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// Everything received so far: method, path, headers and body.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    pub fn paths(&self) -> Vec<String> {
        lock(&self.shared.received)
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }

    /// Waits until `n` requests have arrived; false if they have not within `limit`.
    pub fn wait_requests(&self, n: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if lock(&self.shared.received).len() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        lock(&self.shared.received).len() >= n
    }

    /// The body each API sends with a 404 for a model that does not exist.
    pub fn model_not_found_body(api: &str, model: &str) -> String {
        match Api::parse(api) {
            Api::OpenAi => json!({"error": {
                "message": format!("The model `{model}` does not exist or you do not have access to it."),
                "type": "invalid_request_error",
                "param": null,
                "code": "model_not_found",
            }})
            .to_string(),
            Api::Anthropic => json!({
                "type": "error",
                "error": {"type": "not_found_error", "message": format!("model: {model}")},
                "request_id": "req_fake_404",
            })
            .to_string(),
        }
    }

    /// The body each API sends with a 400 for a conversation too long for the model.
    pub fn context_overflow_body(api: &str) -> String {
        match Api::parse(api) {
            Api::OpenAi => json!({"error": {
                "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }})
            .to_string(),
            Api::Anthropic => json!({
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "prompt is too long: 208310 tokens > 200000 maximum"},
            })
            .to_string(),
        }
    }

    /// The body each API sends with a 429.
    pub fn rate_limit_body(api: &str) -> String {
        match Api::parse(api) {
            Api::OpenAi => json!({"error": {
                "message": "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
                "type": "requests",
                "param": null,
                "code": "rate_limit_exceeded",
            }})
            .to_string(),
            Api::Anthropic => json!({
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your per-minute rate limit"},
            })
            .to_string(),
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (_, c) in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let sh = shared.clone();
                let _ = thread::Builder::new()
                    .name("fake-provider-conn".into())
                    .spawn(move || handle(s, &sh));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn handle(mut s: TcpStream, shared: &Shared) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(c) = s.try_clone() {
        lock(&shared.conns).push((id, c));
    }
    serve(&mut s, shared);
    // The clone kept for Drop would hold the socket open: end the connection explicitly.
    let _ = s.shutdown(Shutdown::Both);
    lock(&shared.conns).retain(|(i, _)| *i != id);
}

fn serve(s: &mut TcpStream, shared: &Shared) {
    let start = Instant::now();
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(Duration::from_millis(50))).is_err()
    {
        return;
    }
    let _ = s.set_nodelay(true);
    let Some(req) = read_request(s, shared) else {
        return;
    };
    let model = req.body["model"]
        .as_str()
        .unwrap_or("fake-model")
        .to_string();
    lock(&shared.received).push(req);
    let behavior = lock(&shared.queue).pop_front().unwrap_or_default();
    let n = shared.serial.fetch_add(1, Ordering::SeqCst) + 1;
    let api = shared.api;
    match behavior {
        Behavior::Stream {
            text,
            tool_call,
            usage,
            delay_between,
        } => {
            let events = stream_events(api, n, &model, &text, tool_call.as_ref(), usage);
            if s.write_all(STREAM_HEAD.as_bytes()).is_err() {
                return;
            }
            for (i, ev) in events.iter().enumerate() {
                if i > 0 && !pause(shared, delay_between) {
                    return;
                }
                if s.write_all(&chunk(ev.as_bytes())).is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        }
        Behavior::StallBeforeHead => hold_open(s, shared, start),
        Behavior::StallMidStream { after_chunks } => {
            let text: Vec<String> = (0..after_chunks + 2).map(|i| format!("part{i} ")).collect();
            let events = stream_events(api, n, &model, &text, None, (10, 2));
            if s.write_all(STREAM_HEAD.as_bytes()).is_err() {
                return;
            }
            // The events before the first text: OpenAI's role chunk; Anthropic's
            // message_start, content_block_start and ping.
            let opening = if api == Api::OpenAi { 1 } else { 3 };
            for ev in events.iter().take(opening + after_chunks) {
                if s.write_all(&chunk(ev.as_bytes())).is_err() {
                    return;
                }
            }
            hold_open(s, shared, start);
        }
        Behavior::Status {
            status,
            body,
            retry_after,
        } => {
            let retry = retry_after
                .map(|r| format!("Retry-After: {r}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
                reason(status),
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body.as_bytes());
        }
        // Closing with nothing sent: the client sees the connection end before any head.
        Behavior::Reset => {}
        Behavior::Trickle { text, byte_delay } => {
            let body = stream_events(api, n, &model, &[text], None, (10, 2)).concat();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            for b in body.as_bytes() {
                if s.write_all(&[*b]).is_err() || !pause(shared, byte_delay) {
                    return;
                }
            }
        }
    }
}

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

/// One HTTP chunk: real providers flush about one SSE event per chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// Sleeps `d` in short slices; false if the fake is being dropped.
fn pause(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

/// Keeps the connection open and silent until the client closes it, the fake is dropped, or
/// the connection has lived [`CONN_BOUND`].
fn hold_open(s: &mut TcpStream, shared: &Shared, start: Instant) {
    let mut buf = [0u8; 256];
    while !shared.stop.load(Ordering::SeqCst) && start.elapsed() < CONN_BOUND {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Reads one request (head and `Content-Length` body); `None` if it does not arrive whole.
fn read_request(s: &mut TcpStream, shared: &Shared) -> Option<Received> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let want = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= len + want {
                return Some(Received {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("").to_string(),
                    body: serde_json::from_slice(&buf[len..len + want]).unwrap_or(Value::Null),
                    headers,
                    at: Instant::now(),
                });
            }
        }
        if shared.stop.load(Ordering::SeqCst) || start.elapsed() > REQUEST_BOUND {
            return None;
        }
        match s.read(&mut tmp) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// Splits a tool call's JSON arguments into a few fragments, as the providers stream them.
fn fragments(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    chars.chunks(7).map(|c| c.iter().collect()).collect()
}

/// The SSE events (each complete with its blank line) of one successful turn.
fn stream_events(
    api: Api,
    n: u64,
    model: &str,
    text: &[String],
    tool_call: Option<&(String, Value)>,
    (input, output): (u64, u64),
) -> Vec<String> {
    let args = tool_call.map(|(_, a)| a.to_string()).unwrap_or_default();
    match api {
        Api::OpenAi => {
            let id = format!("chatcmpl-fake{n}");
            let ev = |delta: Value, finish: Value| {
                let v = json!({
                    "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                    "model": model, "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                });
                format!("data: {v}\n\n")
            };
            let mut out = vec![ev(json!({"role": "assistant", "content": ""}), Value::Null)];
            for t in text {
                out.push(ev(json!({"content": t}), Value::Null));
            }
            if let Some((name, _)) = tool_call {
                out.push(ev(
                    json!({"tool_calls": [{"index": 0, "id": format!("call_fake{n}"), "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                for f in fragments(&args) {
                    out.push(ev(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
                        Value::Null,
                    ));
                }
            }
            let finish = if tool_call.is_some() {
                "tool_calls"
            } else {
                "stop"
            };
            out.push(ev(json!({}), json!(finish)));
            let usage = json!({
                "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                "model": model, "system_fingerprint": "fp_fake", "choices": [],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                          "prompt_tokens_details": {"cached_tokens": 0}},
            });
            out.push(format!("data: {usage}\n\n"));
            out.push("data: [DONE]\n\n".to_string());
            out
        }
        Api::Anthropic => {
            let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
            let mut out = vec![ev(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": format!("msg_fake{n}"), "type": "message", "role": "assistant", "content": [],
                    "model": model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1},
                }}),
            )];
            let mut index = 0;
            if !text.is_empty() {
                out.push(ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                ));
                out.push(ev("ping", json!({"type": "ping"})));
                for t in text {
                    out.push(ev(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}}),
                    ));
                }
                out.push(ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
                index += 1;
            }
            if let Some((name, _)) = tool_call {
                out.push(ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use", "id": format!("toolu_fake{n}"), "name": name, "input": {}}}),
                ));
                for f in fragments(&args) {
                    out.push(ev(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": f}}),
                    ));
                }
                out.push(ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
            }
            let stop = if tool_call.is_some() {
                "tool_use"
            } else {
                "end_turn"
            };
            out.push(ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
            ));
            out.push(ev("message_stop", json!({"type": "message_stop"})));
            out
        }
    }
}

/// Runs `f` on a thread and fails if it has not finished within `bound`; a panic in `f` fails
/// the test with its own message. The gateway tests' harness re-exports it (`common::within`);
/// it lives here because `benches/agent.rs` includes this file, tests and all, without `common`.
#[track_caller]
pub fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    // Either `f` finished or the sender was dropped by a panic.
    match rx.recv_timeout(bound) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => panic!("did not finish within {bound:?}"),
    }
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// `call_streaming` against the fake, as the agent runtime will use it.
mod tests {
    use super::*;
    use keel::agent::provider::{
        self, ChatMessage, FailureKind, ModelEvent, ProviderError, ToolCall, ToolSpec, Turn, Usage,
    };
    use keel::cancel::{CancelReason, CancelToken};
    use keel::net::{Limits, NetError, Url};
    use std::sync::mpsc;

    const APIS: [&str; 2] = ["openai-completions", "anthropic-messages"];

    fn limits(stall: Duration) -> Limits {
        Limits::from_now(Duration::from_secs(10), Duration::from_secs(2), stall)
    }

    struct Outcome {
        result: Result<Vec<ModelEvent>, ProviderError>,
        /// Events as `on_event` saw them, with when.
        seen: Vec<(Instant, ModelEvent)>,
        took: Duration,
    }

    fn call(fake: &FakeProvider, api: &str, limits: &Limits, cancel: &CancelToken) -> Outcome {
        let tools = [ToolSpec {
            name: "get_weather".into(),
            description: "Current weather for a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }];
        let mut seen = Vec::new();
        let start = Instant::now();
        let result = provider::call_streaming(
            &Turn {
                api: provider::Api::parse(api).unwrap(),
                base_url: &Url::parse(&fake.base_url()).unwrap(),
                api_key: Some("sk-fake"),
                model: "fake-model-1",
                system: Some("You are terse."),
                messages: &[ChatMessage::user("hello")],
                tools: &tools,
                max_tokens: 512,
            },
            limits,
            cancel,
            &mut |e| seen.push((Instant::now(), e.clone())),
        );
        Outcome {
            result,
            seen,
            took: start.elapsed(),
        }
    }

    /// For each API: starts a fake, queues `behavior(api)` on it and makes one [`call`] with a
    /// fresh `limits(stall)` and token. The fake is returned so its requests can be checked.
    fn each_api(
        behavior: impl Fn(&str) -> Behavior,
        stall: Duration,
    ) -> Vec<(&'static str, FakeProvider, Outcome)> {
        APIS.into_iter()
            .map(|api| {
                let fake = FakeProvider::start(api);
                fake.push(behavior(api));
                let out = call(&fake, api, &limits(stall), &CancelToken::new());
                (api, fake, out)
            })
            .collect()
    }

    fn text_of(events: &[ModelEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ModelEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn streams_text_as_it_arrives() {
        within(Duration::from_secs(20), || {
            let behavior = |_: &str| Behavior::Stream {
                text: vec!["Hel".into(), "lo, ".into(), "wörld".into()],
                tool_call: None,
                usage: (42, 7),
                delay_between: Duration::from_millis(30),
            };
            for (api, fake, out) in each_api(behavior, Duration::from_secs(2)) {
                let events = out.result.unwrap();
                assert_eq!(text_of(&events), "Hello, wörld", "{api}");
                let stop = if api == APIS[0] { "stop" } else { "end_turn" };
                assert_eq!(
                    events[events.len() - 2..],
                    [
                        ModelEvent::Usage(Usage {
                            input: 42,
                            output: 7,
                            cache_read: 0,
                            cache_write: 0
                        }),
                        ModelEvent::Done {
                            stop_reason: stop.into()
                        },
                    ],
                    "{api}"
                );
                // Delivered as they came, not all at the end.
                let first = out.seen.first().unwrap().0;
                let last = out.seen.last().unwrap().0;
                assert!(last - first >= Duration::from_millis(60), "{api}");

                let got = fake.received();
                assert_eq!(got.len(), 1);
                let want_path = if api == APIS[0] {
                    "/v1/chat/completions"
                } else {
                    "/v1/messages"
                };
                assert_eq!(got[0].path, want_path);
                assert_eq!(got[0].method, "POST");
                assert_eq!(got[0].body["model"], "fake-model-1");
                assert_eq!(got[0].body["stream"], true);
                if api == APIS[0] {
                    assert_eq!(got[0].header("authorization"), Some("Bearer sk-fake"));
                } else {
                    assert_eq!(got[0].header("x-api-key"), Some("sk-fake"));
                    assert_eq!(got[0].body["system"], "You are terse.");
                }
                assert_eq!(fake.requests(), vec![got[0].body.clone()]);
            }
        });
    }

    #[test]
    fn an_empty_queue_answers_ok_and_behaviors_go_in_order() {
        within(Duration::from_secs(20), || {
            for api in APIS {
                let fake = FakeProvider::start(api);
                fake.push(Behavior::text(&["first"]));
                fake.push(Behavior::status(500, "{}"));
                let l = limits(Duration::from_secs(2));
                let t = CancelToken::new();
                assert_eq!(text_of(&call(&fake, api, &l, &t).result.unwrap()), "first");
                let err = call(&fake, api, &l, &t).result.unwrap_err();
                assert_eq!(err.kind(), FailureKind::ServerError, "{api}: {err}");
                assert_eq!(text_of(&call(&fake, api, &l, &t).result.unwrap()), "ok");
                assert!(fake.wait_requests(3, Duration::from_secs(1)));
            }
        });
    }

    #[test]
    fn a_tool_call_arrives_whole() {
        within(Duration::from_secs(20), || {
            let args = json!({"city": "Paris", "units": "metric", "days": [1, 2, 3]});
            let behavior = |_: &str| Behavior::tool_call("get_weather", args.clone());
            for (api, fake, out) in each_api(behavior, Duration::from_secs(2)) {
                let events = out.result.unwrap();
                let calls: Vec<&ToolCall> = events
                    .iter()
                    .filter_map(|e| match e {
                        ModelEvent::ToolCall(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                assert_eq!(calls.len(), 1, "{api}: {events:?}");
                assert_eq!(calls[0].name, "get_weather");
                assert_eq!(calls[0].arguments, args);
                assert!(!calls[0].id.is_empty());
                let stop = if api == APIS[0] {
                    "tool_calls"
                } else {
                    "tool_use"
                };
                assert_eq!(
                    events.last(),
                    Some(&ModelEvent::Done {
                        stop_reason: stop.into()
                    })
                );
                assert!(fake.requests()[0]["tools"].is_array());
            }
        });
    }

    #[test]
    fn error_statuses_are_classified() {
        within(Duration::from_secs(20), || {
            for api in APIS {
                let fake = FakeProvider::start(api);
                let l = limits(Duration::from_secs(2));
                let t = CancelToken::new();
                let kind = |b: Behavior| {
                    fake.push(b);
                    match call(&fake, api, &l, &t).result {
                        Err(ProviderError::Http { kind, .. }) => kind,
                        other => panic!("{api}: expected an http error, got {other:?}"),
                    }
                };
                assert_eq!(
                    kind(Behavior::model_not_found(api, "fake-model-1")),
                    FailureKind::ModelNotFound,
                    "{api}"
                );
                assert_eq!(
                    kind(Behavior::status(404, "404 page not found")),
                    FailureKind::ConfigError,
                    "{api}"
                );
                assert_eq!(
                    kind(Behavior::Status {
                        status: 429,
                        body: FakeProvider::rate_limit_body(api),
                        retry_after: Some(7),
                    }),
                    FailureKind::RateLimit {
                        retry_after: Some(Duration::from_secs(7))
                    },
                    "{api}"
                );
                assert_eq!(
                    kind(Behavior::status(500, r#"{"error":{"message":"boom"}}"#)),
                    FailureKind::ServerError,
                    "{api}"
                );
                assert_eq!(
                    kind(Behavior::status(
                        400,
                        &FakeProvider::context_overflow_body(api)
                    )),
                    FailureKind::ContextOverflow,
                    "{api}"
                );
                fake.push(Behavior::model_not_found(api, "nope-7"));
                let err = call(&fake, api, &l, &t).result.unwrap_err();
                assert!(err.to_string().contains("nope-7"), "{api}: {err}");
            }
        });
    }

    #[test]
    fn a_reset_is_a_transport_failure() {
        within(Duration::from_secs(20), || {
            for (api, _fake, out) in each_api(|_| Behavior::Reset, Duration::from_secs(2)) {
                let err = out.result.unwrap_err();
                assert_eq!(err, ProviderError::Net(NetError::Reset), "{api}");
                assert_eq!(err.kind(), FailureKind::ServerError);
            }
        });
    }

    #[test]
    fn a_stall_before_the_head_times_out_within_a_second() {
        within(Duration::from_secs(20), || {
            let stall = Duration::from_millis(300);
            for (api, _fake, out) in each_api(|_| Behavior::StallBeforeHead, stall) {
                let err = out.result.unwrap_err();
                assert_eq!(err, ProviderError::Net(NetError::Stalled), "{api}");
                assert_eq!(err.kind(), FailureKind::Timeout);
                assert!(out.took < Duration::from_secs(1), "{api}: {:?}", out.took);
            }
        });
    }

    #[test]
    fn a_stall_mid_stream_times_out_within_a_second() {
        within(Duration::from_secs(20), || {
            let behavior = |_: &str| Behavior::StallMidStream { after_chunks: 3 };
            for (api, _fake, out) in each_api(behavior, Duration::from_millis(300)) {
                let err = out.result.unwrap_err();
                assert_eq!(err, ProviderError::Net(NetError::Stalled), "{api}");
                assert_eq!(err.kind(), FailureKind::Timeout);
                assert!(
                    matches!(out.seen.first(), Some((_, ModelEvent::Text(t))) if t == "part0 "),
                    "{api}: {:?}",
                    out.seen
                );
                assert!(out.took < Duration::from_secs(1), "{api}: {:?}", out.took);
            }
        });
    }

    #[test]
    fn a_cancel_mid_stream_returns_within_200_ms() {
        within(Duration::from_secs(20), || {
            for api in APIS {
                let fake = FakeProvider::start(api);
                fake.push(Behavior::StallMidStream { after_chunks: 3 });
                let token = CancelToken::new();
                let (first_text, rx) = mpsc::channel::<()>();
                let t2 = token.clone();
                let canceller = thread::spawn(move || {
                    rx.recv_timeout(Duration::from_secs(5)).ok()?;
                    thread::sleep(Duration::from_millis(100));
                    let at = Instant::now();
                    t2.cancel(CancelReason::Client);
                    Some(at)
                });
                let result = provider::call_streaming(
                    &Turn {
                        api: provider::Api::parse(api).unwrap(),
                        base_url: &Url::parse(&fake.base_url()).unwrap(),
                        api_key: None,
                        model: "fake-model-1",
                        system: None,
                        messages: &[ChatMessage::user("hello")],
                        tools: &[],
                        max_tokens: 0,
                    },
                    &limits(Duration::from_secs(5)),
                    &token,
                    &mut |e| {
                        if matches!(e, ModelEvent::Text(_)) {
                            let _ = first_text.send(());
                        }
                    },
                );
                let returned = Instant::now();
                let cancelled_at = canceller.join().unwrap().expect("the stream produced text");
                assert_eq!(
                    result.unwrap_err(),
                    ProviderError::Net(NetError::Cancelled),
                    "{api}"
                );
                let late = returned - cancelled_at;
                assert!(late < Duration::from_millis(200), "{api}: {late:?}");
            }
        });
    }

    #[test]
    fn a_trickled_stream_is_reassembled() {
        within(Duration::from_secs(20), || {
            let behavior = |_: &str| Behavior::Trickle {
                text: "slow but steady".into(),
                byte_delay: Duration::from_micros(300),
            };
            for (api, _fake, out) in each_api(behavior, Duration::from_millis(300)) {
                assert_eq!(text_of(&out.result.unwrap()), "slow but steady", "{api}");
            }
        });
    }

    #[test]
    fn dropping_the_fake_ends_a_stalled_call() {
        within(Duration::from_secs(20), || {
            let fake = FakeProvider::start(APIS[0]);
            fake.push(Behavior::StallBeforeHead);
            let base = fake.base_url();
            let caller = thread::spawn(move || {
                provider::call_streaming(
                    &Turn {
                        api: provider::Api::OpenAiCompletions,
                        base_url: &Url::parse(&base).unwrap(),
                        api_key: None,
                        model: "m",
                        system: None,
                        messages: &[ChatMessage::user("hi")],
                        tools: &[],
                        max_tokens: 0,
                    },
                    &limits(Duration::from_secs(10)),
                    &CancelToken::new(),
                    &mut |_| {},
                )
            });
            assert!(fake.wait_requests(1, Duration::from_secs(5)));
            let t = Instant::now();
            drop(fake);
            let err = caller.join().unwrap().unwrap_err();
            assert_eq!(err, ProviderError::Net(NetError::Reset));
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        });
    }
}
