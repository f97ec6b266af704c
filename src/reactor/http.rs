//! HTTP/1.1 on the reactor: heads parsed with httparse, keep-alive, pipelining one request at
//! a time, bounded buffers, and the inline routes (`/healthz`, `/livez`, `/readyz`,
//! `/metrics`). `POST /api/rpc/<method>` and the WebSocket upgrade are routed from here.
//!
//! Connection lifecycle:
//!
//! ```text
//! idle ──first byte──▶ head (10 s total*) ──admitted──▶ body (30 s) ──▶ handled ──▶ idle
//!   │                     │                  (100 Continue if            │   (keep-alive)
//!   └ 60 s: closed (a     │                   the client expects it)     └ waiting on a job:
//!     new connection:     │                                                no reads are
//!     10 s*)              └ answered and closed: 408 / 431 / 400 (head),   parsed until it
//!                           and a body refused from its head before it is  answers
//!                           read: 401 / 429 / 413 / 404 / 411 / 417
//! ```
//! (*) `gateway.limits.headerTimeoutMs`, default 10 s, measured from the head's first byte
//! (and, for a new connection, from the accept: one that sends nothing is closed silently).
//!
//! An answer says `Connection: close` exactly when keel means to close after it (one flag
//! decides both: `HttpConn::respond`), so a pooled client never reuses a socket keel is
//! closing.
//! `Content-Length` is digits only, given once; `Expect` takes only `100-continue` (HTTP/1.1).
//!
//! A connection closed by keel with input possibly unread (an error answer, `Connection:
//! close`) is closed gracefully: the answer is written, the write side shut, and input read
//! and dropped until the peer closes or [`LINGER`] passes — closing a socket with unread
//! input would send a reset that can destroy the answer in flight.

use super::ws::Socket;
use super::{Cx, Outcome, hook_route, io_would_block};
use crate::api;
use crate::auth::{Client, Forwarding, Scope};
use crate::error::{Code, RpcError};
use crate::protocol;
use crate::protocol::reply::{HttpAnswer, Piece, ReplyTo, Wire};
use mio::net::TcpStream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head.
pub const HEAD_MAX: usize = 16 << 10;
/// A body must arrive within this time of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive connection is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not take its response within this time is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// After its answer, how long a closing connection's input is read and dropped.
pub const LINGER: Duration = Duration::from_secs(2);
/// Bytes read from one connection per wake-up.
const READ_BUDGET: usize = 64 << 10;
/// Bytes written to one connection per wake-up.
const WRITE_BUDGET: usize = 256 << 10;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Body,
    /// Waiting for a job's reply.
    Waiting,
}

/// What the reactor must do to complete a WebSocket upgrade once the 101 is written.
pub struct Upgrade {
    pub leftover: Vec<u8>,
    /// Who the upgrade request came from: the WebSocket's `connect` is counted against it.
    pub client: Client,
    /// A browser's `Origin` and the `Host` it was sent to (see [`crate::origin`]).
    pub browser: Option<Browser>,
}

/// What a browser said about where its page came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browser {
    pub origin: String,
    pub host: Option<String>,
}

/// One HTTP connection: over the reactor's socket, or (in the fuzz target) an in-memory one.
///
/// Whether the connection closes after an answer and what the answer's `Connection` header
/// says come from one flag, `keep_alive`, read by `HttpConn::respond`: every path that
/// closes after answering clears it before the answer is written.
pub struct HttpConn<S: Socket = TcpStream> {
    pub stream: S,
    input: RequestReader,
    /// What is owed to the client, in order.
    out: Output,
    phase: Phase,
    deadline: Instant,
    write_since: Option<Instant>,
    close_after_write: bool,
    upgrade: bool,
    eof: bool,
    /// Answered and write side shut: input is dropped until EOF or the deadline.
    lingering: bool,
    /// Where the body of the request being read ends in `input` (0: no body pending).
    body_end: usize,
    /// Keep-alive of the request being answered.
    keep_alive: bool,
    head_only: bool,
    /// The client of the upgrade request, once a 101 is owed.
    upgrade_client: Option<Client>,
    upgrade_browser: Option<Browser>,
}

/// The parts of a request head keel uses, copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub keep_alive: bool,
    pub content_length: usize,
    pub chunked: bool,
    pub authorization: Option<String>,
    /// OpenClaw's hook token header.
    pub hook_token: Option<String>,
    pub upgrade_ws: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// `X-Forwarded-For` and whether any proxy header is there (`auth::client` decides
    /// whether to believe them).
    pub forwarding: Forwarding,
    pub expect: Expect,
    /// `Accept` and `Accept-Encoding`, for the dashboard's files.
    pub accept: Option<String>,
    pub accept_encoding: Option<String>,
    /// `Origin` and `Host`: a browser's WebSocket connect is checked against them.
    pub origin: Option<String>,
    pub host: Option<String>,
    /// `X-Telegram-Bot-Api-Secret-Token`, for a Telegram webhook route.
    pub telegram_secret: Option<String>,
    /// The headers Slack and Feishu sign their webhook requests with
    /// ([`WEBHOOK_HEADERS`]): the first of each, a value over [`WEBHOOK_HEADER_MAX`] bytes
    /// kept as empty (present, and fails the check).
    pub webhook: Vec<(&'static str, String)>,
}

/// The headers the inbound webhook routes need, as the channels spell them.
pub const WEBHOOK_HEADERS: [&str; 6] = [
    crate::inbound::slack::SIGNATURE_HEADER,
    crate::inbound::slack::TIMESTAMP_HEADER,
    crate::inbound::slack::RETRY_HEADER,
    crate::inbound::feishu::SIGNATURE_HEADER,
    crate::inbound::feishu::TIMESTAMP_HEADER,
    crate::inbound::feishu::NONCE_HEADER,
];
/// The longest value kept of a [`WEBHOOK_HEADERS`] header (a signature is 67 bytes).
pub const WEBHOOK_HEADER_MAX: usize = 256;

/// What the `Expect` header asks for. HTTP/1.0 requests have none: they predate it, and RFC
/// 9110 §10.1.1 has a server ignore it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Nothing,
    /// `100-continue`: the client waits for a 100 before it sends the body.
    Continue,
    /// Anything else: answered 417.
    Unsupported,
}

enum Parsed {
    NeedMore,
    Request(Box<Head>, usize),
    Reject(u16, &'static str),
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // Only the first HEAD_MAX bytes are looked at, so the verdict does not depend on how
    // many bytes past them one read happened to bring.
    let len = match req.parse(&buf[..buf.len().min(HEAD_MAX)]) {
        Ok(httparse::Status::Partial) if buf.len() > HEAD_MAX => {
            return Parsed::Reject(431, "request head larger than 16 KiB");
        }
        Ok(httparse::Status::Partial) => return Parsed::NeedMore,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(431, "too many request headers");
        }
        Err(_) => return Parsed::Reject(400, "malformed HTTP request"),
    };
    let minor = req.version.unwrap_or(1);
    let mut h = Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("/").to_string(),
        keep_alive: minor >= 1,
        content_length: 0,
        chunked: false,
        authorization: None,
        hook_token: None,
        upgrade_ws: false,
        ws_key: None,
        ws_version: None,
        forwarding: Forwarding::default(),
        expect: Expect::Nothing,
        accept: None,
        accept_encoding: None,
        origin: None,
        host: None,
        telegram_secret: None,
        webhook: Vec::new(),
    };
    let mut seen_length = false;
    for hd in req.headers.iter() {
        // Only optional whitespace (SP, HTAB) surrounds a value (RFC 9110 §5.5); `str::trim`
        // would also take Unicode spaces, and "2\u{a0}" would pass for a length of 2.
        let value = match std::str::from_utf8(hd.value) {
            Ok(v) => v.trim_matches([' ', '\t']),
            Err(_) => return Parsed::Reject(400, "header value is not UTF-8"),
        };
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            // One Content-Length, of digits only. RFC 9110 §8.6 lets a recipient accept a
            // repeat of the same value ("2, 2", or two lines); keel refuses every repeat
            // instead: no client it serves sends one, and a proxy in front that reads the
            // field differently is how requests are smuggled.
            match decimal(value) {
                Some(n) if !seen_length => h.content_length = n,
                _ => return Parsed::Reject(400, "invalid Content-Length"),
            }
            seen_length = true;
        } else if name.eq_ignore_ascii_case("expect") {
            // A list (RFC 9110 §10.1.1); empty elements count for nothing.
            let tokens = value.split(',').map(|t| t.trim_matches([' ', '\t']));
            for token in tokens.filter(|t| !t.is_empty()) {
                h.expect = if token.eq_ignore_ascii_case("100-continue")
                    && h.expect != Expect::Unsupported
                {
                    Expect::Continue
                } else {
                    Expect::Unsupported
                };
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    h.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    h.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            h.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("x-openclaw-token") {
            h.hook_token = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            h.upgrade_ws = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            h.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            h.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("accept") {
            list_header(&mut h.accept, value);
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            list_header(&mut h.accept_encoding, value);
        } else if name.eq_ignore_ascii_case("origin") {
            // Browsers send one; a repeat is not a browser's, and is refused as invalid.
            h.origin = Some(match h.origin {
                None => value.to_string(),
                Some(_) => String::new(),
            });
        } else if name.eq_ignore_ascii_case("host") {
            h.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("x-telegram-bot-api-secret-token") {
            h.telegram_secret = Some(value.to_string());
        }
        if let Some(known) = WEBHOOK_HEADERS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
            .filter(|k| !h.webhook.iter().any(|(n, _)| n == *k))
        {
            let kept = if value.len() <= WEBHOOK_HEADER_MAX {
                value.to_string()
            } else {
                String::new()
            };
            h.webhook.push((known, kept));
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let xff = h.forwarding.x_forwarded_for.get_or_insert_with(String::new);
            if !xff.is_empty() {
                xff.push(',');
            }
            xff.push_str(value);
        }
        if name.eq_ignore_ascii_case("forwarded")
            || name.eq_ignore_ascii_case("x-real-ip")
            || name
                .get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case("x-forwarded-"))
        {
            h.forwarding.proxied = true;
        }
    }
    if minor == 0 {
        h.expect = Expect::Nothing;
    }
    Parsed::Request(Box::new(h), len)
}

/// A list header given on several lines is one list (RFC 9110 §5.3).
fn list_header(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(v) => {
            v.push_str(", ");
            v.push_str(value);
        }
        None => *slot = Some(value.to_string()),
    }
}

/// A number as RFC 9110 writes them (`1*DIGIT`): ASCII digits only — no sign, no space, not
/// empty — and no overflow. `usize::from_str` alone takes a leading `+`.
fn decimal(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// What the input buffered so far holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing buffered.
    Empty,
    /// A request has begun and needs more bytes of its head.
    PartialHead,
    /// A complete head whose body needs more bytes: the head, and where the request ends.
    PartialBody(Head, usize),
    /// A complete request, taken out of the buffer.
    Request(Head, Vec<u8>),
    /// The head cannot be read (400 malformed, 431 too large): answer and close.
    Malformed(u16, &'static str),
    /// A complete head whose body keel will not read: answer and close.
    Refused(Head, Refusal),
}

/// Why a parsed head's body is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Transfer-Encoding` (chunked bodies are not supported).
    Chunked,
    /// `Content-Length` over the route's limit.
    TooLarge { limit: usize },
    /// An `Expect` other than `100-continue`.
    Expectation,
}

/// Request framing on one connection, without I/O: bytes go in as they are read (split
/// anywhere), requests come out one at a time. The reactor and the fuzz target both drive it.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
}

impl RequestReader {
    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet taken as a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// What is buffered and unread (after an upgrade: the client's first frames).
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The next request, if complete. `body_limit` gives the largest body a head's route
    /// takes.
    pub fn next(&mut self, body_limit: impl FnOnce(&Head) -> usize) -> Next {
        if self.buf.is_empty() {
            return Next::Empty;
        }
        let (head, head_len) = match parse_head(&self.buf) {
            Parsed::NeedMore => return Next::PartialHead,
            Parsed::Reject(status, msg) => return Next::Malformed(status, msg),
            Parsed::Request(h, len) => (*h, len),
        };
        if head.expect == Expect::Unsupported {
            return Next::Refused(head, Refusal::Expectation);
        }
        if head.chunked {
            return Next::Refused(head, Refusal::Chunked);
        }
        let limit = body_limit(&head);
        if head.content_length > limit {
            return Next::Refused(head, Refusal::TooLarge { limit });
        }
        let total = head_len + head.content_length;
        if self.buf.len() < total {
            return Next::PartialBody(head, total);
        }
        let body = self.buf[head_len..total].to_vec();
        self.buf.drain(..total);
        Next::Request(head, body)
    }
}

/// Bytes owed to a client, in order: owned bytes (heads, small bodies) and bodies shared with
/// a cache, written from where they are — a file of megabytes is neither copied nor written
/// in one go (the write budget per wake-up applies).
/// Bodies up to this size are copied next to their head (one write instead of two).
const COPY_MAX: usize = 16 << 10;

#[derive(Debug, Default)]
struct Output {
    chunks: VecDeque<Piece>,
    /// Bytes of the first chunk already written.
    pos: usize,
}

impl Output {
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some(Piece::Owned(v)) => v.extend_from_slice(bytes),
            _ => self.chunks.push_back(Piece::Owned(bytes.to_vec())),
        }
    }

    /// Queues a body made off the reactor: small pieces are copied next to the head before
    /// them (one write instead of two), big ones are moved or shared, never copied.
    fn push_wire(&mut self, body: Wire) {
        for piece in body.into_pieces() {
            match piece {
                Piece::Owned(v) if v.len() > COPY_MAX => self.chunks.push_back(Piece::Owned(v)),
                Piece::Text(t) if t.len() > COPY_MAX => self.chunks.push_back(Piece::Text(t)),
                Piece::Bytes(b) if b.len() > COPY_MAX => self.chunks.push_back(Piece::Bytes(b)),
                small => self.push(small.bytes()),
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// What to write next.
    fn front(&self) -> Option<&[u8]> {
        self.chunks.front().map(|c| &c.bytes()[self.pos..])
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        if let Some(c) = self.chunks.front()
            && self.pos >= c.bytes().len()
        {
            self.chunks.pop_front();
            self.pos = 0;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A JSON error body in the same shape as RPC errors.
fn error_body(code: Code, message: &str) -> Vec<u8> {
    json!({"ok": false, "error": {"code": code.as_str(), "message": message}})
        .to_string()
        .into_bytes()
}

impl<S: Socket> HttpConn<S> {
    /// A new connection: its first head must arrive within `header_timeout`.
    pub fn new(stream: S, now: Instant, header_timeout: Duration) -> HttpConn<S> {
        HttpConn {
            stream,
            input: RequestReader::default(),
            out: Output::default(),
            phase: Phase::Idle,
            deadline: now + header_timeout,
            write_since: None,
            close_after_write: false,
            upgrade: false,
            eof: false,
            lingering: false,
            body_end: 0,
            keep_alive: true,
            head_only: false,
            upgrade_client: None,
            upgrade_browser: None,
        }
    }

    /// Takes the bytes that arrived after the upgrade request: the client's first frames.
    /// `peer` is the client when no upgrade was owed (the connection is being dropped).
    pub fn into_upgrade(self, peer: std::net::SocketAddr) -> (S, Upgrade) {
        let client = self.upgrade_client.unwrap_or(Client {
            ip: peer.ip(),
            local: false,
            untrusted_forwarding: false,
        });
        (
            self.stream,
            Upgrade {
                leftover: self.input.into_bytes(),
                client,
                browser: self.upgrade_browser,
            },
        )
    }

    /// Asks the connection to close once what it owes is written (shutdown).
    pub fn close_when_idle(&mut self) {
        self.keep_alive = false;
        if self.phase != Phase::Waiting {
            self.close_after_write = true;
        }
    }

    /// No request in progress and nothing owed: closing it loses nothing.
    pub fn is_idle(&self) -> bool {
        self.lingering
            || (matches!(self.phase, Phase::Idle | Phase::Head)
                && !self.has_output()
                && !self.upgrade)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads, handles complete requests, writes. Called on readiness, after a completion, and
    /// again while it reports [`Outcome::Again`].
    pub fn drive(&mut self, cx: &mut Cx<'_>) -> Outcome {
        if self.lingering {
            return self.discard_input();
        }
        let mut again = false;
        if !self.eof {
            match self.read_some(cx) {
                Ok(more) => again |= more,
                Err(()) => return Outcome::Close,
            }
        }
        while self.phase != Phase::Waiting && !self.upgrade && !self.close_after_write {
            if !self.next_request(cx) {
                break;
            }
        }
        match self.write_some(cx.now) {
            Ok(more) => again |= more,
            Err(()) => return Outcome::Close,
        }
        if self.has_output() {
            return if again { Outcome::Again } else { Outcome::Keep };
        }
        if self.upgrade {
            return Outcome::Upgrade;
        }
        if self.eof && self.phase != Phase::Waiting {
            return Outcome::Close;
        }
        if self.close_after_write {
            return self.linger(cx.now);
        }
        if again { Outcome::Again } else { Outcome::Keep }
    }

    /// Everything is written: shut the write side and drop input until the peer closes.
    fn linger(&mut self, now: Instant) -> Outcome {
        if self.eof {
            return Outcome::Close;
        }
        // On a socket the peer has already reset, the read below fails and ends it.
        self.stream.shutdown_write();
        self.lingering = true;
        self.input = RequestReader::default();
        self.deadline = now + LINGER;
        self.discard_input()
    }

    fn discard_input(&mut self) -> Outcome {
        let mut scratch = [0u8; 16 << 10];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match self.stream.read(&mut scratch) {
                Ok(0) => return Outcome::Close,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if io_would_block(&e) => return Outcome::Keep,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Close,
            }
        }
        Outcome::Again
    }

    /// How much input to hold: a head (one byte more than the largest, to tell it is too
    /// large), or the request whose body is being read. A client that pipelines faster than
    /// it is answered is held back by TCP, not buffered here.
    fn read_cap(&self) -> usize {
        self.body_end.max(HEAD_MAX + 1)
    }

    /// Reads up to the budget and [`Self::read_cap`]. Ok(true) if input may remain (budget or
    /// buffer full) and the connection is not waiting on a job — whose reply drives it again
    /// anyway.
    fn read_some(&mut self, _cx: &Cx<'_>) -> Result<bool, ()> {
        let cap = self.read_cap();
        let mut budget = READ_BUDGET;
        let mut chunk = [0u8; 16 << 10];
        while budget > 0 && self.input.buffered() < cap {
            let want = chunk.len().min(budget).min(cap - self.input.buffered());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.input.feed(&chunk[..n]);
                    budget -= n;
                }
                Err(e) if io_would_block(&e) => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        Ok(self.phase != Phase::Waiting)
    }

    fn write_some(&mut self, now: Instant) -> Result<bool, ()> {
        let mut budget = WRITE_BUDGET;
        while budget > 0 {
            let Some(pending) = self.out.front() else {
                break;
            };
            let end = pending.len().min(budget);
            match self.stream.write(&pending[..end]) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.out.advance(n);
                    budget -= n;
                    self.write_since = Some(now);
                }
                Err(e) if io_would_block(&e) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if self.out.is_empty() {
            self.write_since = None;
            return Ok(false);
        }
        self.write_since.get_or_insert(now);
        Ok(budget == 0)
    }

    /// Handles the next complete request in the buffer; false when there is none yet.
    fn next_request(&mut self, cx: &mut Cx<'_>) -> bool {
        let cfg = cx.config();
        let next = self
            .input
            .next(|h| super::body_limit(&h.method, &h.path, &cfg));
        if next == Next::Empty {
            if self.phase != Phase::Idle {
                self.phase = Phase::Idle;
                self.deadline = cx.now + IDLE_TIMEOUT;
            }
            return false;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.deadline = cx.now + cfg.limits.header_timeout;
        }
        let (head, body) = match next {
            Next::Empty | Next::PartialHead => return false,
            Next::PartialBody(head, total) => {
                if self.phase != Phase::Body {
                    // Who may send this body is known from the head: a refused client's body
                    // is never read, so the refusal closes the connection (and says so).
                    // Once the body is read, `keep_alive` is the request's own again.
                    self.keep_alive = false;
                    self.head_only = false;
                    if !self.admit_body(cx, &head) {
                        cx.shared.metrics.http_requests.inc();
                        self.close_after_write = true;
                        return false;
                    }
                    self.phase = Phase::Body;
                    self.deadline = cx.now + BODY_TIMEOUT;
                    self.body_end = total;
                    // The client may be holding the body back until it hears the head is
                    // taken (RFC 9110 §10.1.1); refusals above went out without a 100.
                    if head.expect == Expect::Continue {
                        self.out.push(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                }
                return false;
            }
            Next::Malformed(status, msg) => {
                self.reject(cx, status, msg);
                return false;
            }
            Next::Refused(_, Refusal::Expectation) => {
                cx.shared.metrics.http_requests.inc();
                self.reject(
                    cx,
                    417,
                    "the only expectation supported is Expect: 100-continue",
                );
                return false;
            }
            Next::Refused(_, Refusal::Chunked) => {
                cx.shared.metrics.http_requests.inc();
                self.reject(
                    cx,
                    411,
                    "chunked bodies are not supported; send Content-Length",
                );
                return false;
            }
            Next::Refused(head, Refusal::TooLarge { limit }) => {
                cx.shared.metrics.http_requests.inc();
                let path = head.path.split('?').next().unwrap_or("/");
                let known = matches!(path, "/healthz" | "/livez" | "/readyz" | "/metrics");
                // A body where no route takes one: say there is no such route, not "too large".
                let (status, code, msg) = if limit == 0 && !known {
                    (
                        404,
                        Code::NotFound,
                        format!("no route for {} {path}", head.method),
                    )
                } else {
                    (
                        413,
                        Code::InvalidRequest,
                        format!(
                            "body of {} bytes is over this route's limit of {limit} bytes",
                            head.content_length
                        ),
                    )
                };
                self.reject_with(cx, status, code, &msg);
                return false;
            }
            Next::Request(head, body) => {
                cx.shared.metrics.http_requests.inc();
                self.body_end = 0;
                (head, body)
            }
        };
        self.keep_alive = head.keep_alive;
        self.head_only = head.method == "HEAD";
        self.phase = Phase::Idle;
        self.deadline = cx.now + IDLE_TIMEOUT;
        self.route(cx, head, body);
        true
    }

    /// Answers and closes: the request cannot be read further.
    fn reject(&mut self, cx: &mut Cx<'_>, status: u16, msg: &str) {
        self.reject_with(cx, status, Code::InvalidRequest, msg);
    }

    fn reject_with(&mut self, cx: &mut Cx<'_>, status: u16, code: Code, msg: &str) {
        cx.shared.metrics.http_errors_4xx.inc();
        self.keep_alive = false;
        self.head_only = false;
        self.input.clear();
        self.respond(cx, status, "application/json", &[], &error_body(code, msg));
    }

    fn route(&mut self, cx: &mut Cx<'_>, head: Head, body: Vec<u8>) {
        let path = head.path.split('?').next().unwrap_or("/").to_string();
        let get = head.method == "GET" || head.method == "HEAD";
        if head.upgrade_ws {
            return self.upgrade_ws(cx, &head);
        }
        if head.method == "POST" {
            let cfg = cx.config();
            if let Some(route) = cfg.inbound_webhooks.route(&head.path) {
                let account = crate::inbound::routes::Account::of(route);
                return self.inbound_webhook(cx, account, head, body);
            }
        }
        match path.as_str() {
            "/healthz" | "/livez" if get => {
                let body = cx.shared.liveness_json().to_string();
                self.respond(cx, 200, "application/json", &[], body.as_bytes());
            }
            "/readyz" if get => {
                let failing = cx.shared.not_ready_reasons();
                let p = cx.shared.pressure();
                let uptime = cx.shared.uptime().as_millis() as u64;
                let pressure = json!({"level": p.level.as_str(), "reasons": p.reasons});
                let (status, mut body) = if failing.is_empty() {
                    (
                        200,
                        json!({"ready": true, "uptimeMs": uptime, "pressure": pressure}),
                    )
                } else {
                    (
                        503,
                        json!({
                            "ready": false,
                            "failing": failing,
                            "uptimeMs": uptime,
                            "pressure": pressure,
                            "eventLoop": {
                                "degraded": p.level != crate::pressure::Level::Normal,
                                "reasons": p.reasons,
                                "delayP99Ms": p.lag_p99.map(|d| d.as_secs_f64() * 1000.0),
                                "delayMaxMs": p.lag_max.as_secs_f64() * 1000.0,
                            },
                        }),
                    )
                };
                // Reasons to look, not failures: held deliveries.
                let mut notes = cx.shared.delivery.readiness_notes();
                notes.extend(cx.shared.sessions.readiness_notes());
                if !notes.is_empty() {
                    body["notes"] = json!(notes);
                }
                self.respond(
                    cx,
                    status,
                    "application/json",
                    &[],
                    body.to_string().as_bytes(),
                );
            }
            "/metrics" if get => {
                if self.authorize(cx, &head) {
                    let text = cx.shared.prometheus();
                    self.respond(
                        cx,
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        &[],
                        text.as_bytes(),
                    );
                }
            }
            p if p.starts_with("/api/rpc/") && head.method == "POST" => {
                if self.authorize(cx, &head) {
                    let method = p["/api/rpc/".len()..].to_string();
                    self.rpc(cx, &method, &body);
                }
            }
            p if cx
                .config()
                .hooks
                .as_ref()
                .is_some_and(|h| p == h.path || p.starts_with(&format!("{}/", h.path))) =>
            {
                self.hook(cx, &head, &path, &body);
            }
            p if head.method == "POST" && cx.config().inbound.telegram_webhook(p).is_some() => {
                self.telegram_webhook(cx, &head, p, body);
            }
            "/healthz" | "/livez" | "/readyz" | "/metrics" => {
                self.method_not_allowed(cx, "GET, HEAD");
            }
            p if p.starts_with("/api/rpc/") => self.method_not_allowed(cx, "POST"),
            _ if get && cx.config().control_ui.enabled => self.control_ui(cx, &head),
            _ => self.no_route(cx, &head.method, &path),
        }
    }

    /// `POST <webhookPath>` of a Telegram account in webhook mode: everything past the path
    /// lookup (the secret, parsing, the durable store) is an io job whose answer completes
    /// the request.
    fn telegram_webhook(&mut self, cx: &mut Cx<'_>, head: &Head, path: &str, body: Vec<u8>) {
        let reply = ReplyTo::Http {
            conn: cx.slot,
            generation: cx.generation,
        };
        let secret = head.telegram_secret.clone();
        match api::inbound_telegram::webhook(cx.shared, path, secret, body, &reply) {
            Ok(()) => self.phase = Phase::Waiting,
            Err(e) => self.rpc_answer(cx, &Err(e)),
        }
    }

    /// `POST` to a Slack or Feishu `webhookPath`: verified, read and stored by an io job
    /// (`inbound::routes`), whose answer completes this request. Authenticated by the
    /// channel's signature, not the gateway token.
    fn inbound_webhook(
        &mut self,
        cx: &mut Cx<'_>,
        account: crate::inbound::routes::Account,
        head: Head,
        body: Vec<u8>,
    ) {
        let admitted =
            cx.shared
                .inbound
                .webhook(account, head.webhook, body, cx.slot, cx.generation);
        match admitted {
            Ok(()) => self.phase = Phase::Waiting,
            Err(e) => self.rpc_answer(cx, &Err(e)),
        }
    }

    fn no_route(&mut self, cx: &mut Cx<'_>, method: &str, path: &str) {
        cx.shared.metrics.http_errors_4xx.inc();
        let msg = format!("no route for {method} {path}");
        self.respond(
            cx,
            404,
            "application/json",
            &[],
            &error_body(Code::NotFound, &msg),
        );
    }

    /// The dashboard's routes (`ui`): its files, the document for the UI's own routes, the
    /// bootstrap config behind the token. Decided in memory; a file not in memory is read by
    /// an io job whose answer completes this request.
    fn control_ui(&mut self, cx: &mut Cx<'_>, head: &Head) {
        use crate::ui::{self, Reply, path::Route};
        let cfg = cx.config();
        match ui::path::route(&head.path, &cfg.control_ui.base_path) {
            Route::NotUi => {
                let path = head.path.split('?').next().unwrap_or("/");
                self.no_route(cx, &head.method, path);
            }
            Route::Redirect(location) => {
                self.respond(
                    cx,
                    302,
                    "text/plain; charset=utf-8",
                    &[("Location", location)],
                    b"",
                );
            }
            Route::BootstrapConfig => {
                if self.authorize(cx, head) {
                    self.respond_answer(cx, &ui::bootstrap_answer(&cfg));
                }
            }
            Route::Refused(status, why) => {
                log::debug!("dashboard path refused ({status}, {why})");
                let text = if status == 400 {
                    "Bad Request"
                } else {
                    "Not Found"
                };
                self.respond_answer(cx, &ui::plain(status, text));
            }
            Route::File(rel) => {
                let reply = ReplyTo::Http {
                    conn: cx.slot,
                    generation: cx.generation,
                };
                let got = cx.shared.ui.get(
                    &rel,
                    head.accept.as_deref(),
                    head.accept_encoding.as_deref(),
                    &reply,
                );
                match got {
                    Ok(Reply::Now(answer)) => self.respond_answer(cx, &answer),
                    Ok(Reply::Later) => self.phase = Phase::Waiting,
                    Ok(Reply::Help { why, looked }) => {
                        let answer = self.help_page(cx, head, &why, &looked);
                        self.respond_answer(cx, &answer);
                    }
                    Ok(Reply::NotUi) => {
                        let path = head.path.split('?').next().unwrap_or("/");
                        self.no_route(cx, &head.method, path);
                    }
                    Err(e) => self.rpc_answer(cx, &Err(e)),
                }
            }
        }
    }

    /// The page `/` shows without a dashboard: keel, its health, how to install one. Where
    /// keel looked (paths of this machine) is shown to local clients only.
    fn help_page(
        &mut self,
        cx: &mut Cx<'_>,
        head: &Head,
        why: &str,
        looked: &[std::path::PathBuf],
    ) -> HttpAnswer {
        use crate::ui::html;
        let local = cx.client(&head.forwarding).local;
        let state = &cx.shared.state_dir;
        let install = if !local {
            "scripts/install-dashboard.sh [STATE_DIR]".to_string()
        } else if crate::state::default_state_dir().as_ref() == Some(state) {
            "scripts/install-dashboard.sh".to_string()
        } else {
            format!("scripts/install-dashboard.sh {}", state.display())
        };
        let looked: Vec<String> = if local {
            looked.iter().map(|p| p.display().to_string()).collect()
        } else {
            Vec::new()
        };
        let not_ready = cx.shared.not_ready_reasons();
        let page = html::help_page(&html::Help {
            version: crate::VERSION,
            not_ready: &not_ready,
            why,
            looked: &looked,
            install: &install,
        });
        HttpAnswer {
            status: 200,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".into()),
                ("Cache-Control", "no-store".into()),
                ("Content-Security-Policy", html::HELP_CSP.into()),
                ("X-Frame-Options", "DENY".into()),
                ("X-Content-Type-Options", "nosniff".into()),
                ("Referrer-Policy", "no-referrer".into()),
            ],
            body: Arc::from(page.into_bytes()),
        }
    }

    /// Writes a whole answer (its own headers; the body shared, not copied when large).
    fn respond_answer(&mut self, cx: &mut Cx<'_>, a: &HttpAnswer) {
        if (400..500).contains(&a.status) {
            cx.shared.metrics.http_errors_4xx.inc();
        }
        if !self.keep_alive {
            self.close_after_write = true;
        }
        let mut head = format!("HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
        for (k, v) in &a.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", a.body.len()));
        head.push_str(if self.keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        self.out.push(head.as_bytes());
        if !self.head_only {
            let mut body = Wire::default();
            body.push_bytes(&a.body);
            self.out.push_wire(body);
        }
    }

    /// A job's whole answer has arrived (a dashboard file).
    pub fn complete_answer(&mut self, cx: &mut Cx<'_>, a: &HttpAnswer) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Idle;
        self.deadline = cx.now + IDLE_TIMEOUT;
        self.respond_answer(cx, a);
    }

    /// Checks what can be checked from the head of a request whose body has yet to arrive:
    /// the token of `/api/rpc/` and hook routes. Answers itself and returns false to refuse.
    fn admit_body(&mut self, cx: &mut Cx<'_>, head: &Head) -> bool {
        let path = head.path.split('?').next().unwrap_or("/");
        if path.starts_with("/api/rpc/") {
            self.authorize(cx, head)
        } else if cx
            .config()
            .hooks
            .as_ref()
            .is_some_and(|h| super::hook_route(path, &h.path).is_some())
        {
            self.hook_precheck(cx, head)
        } else {
            true
        }
    }

    /// `POST <hooks.path>/agent` and `/wake`: start a run; `202 {ok, runId}` once admitted.
    fn hook(&mut self, cx: &mut Cx<'_>, head: &Head, path: &str, body: &[u8]) {
        let Some(hooks) = cx.config().hooks.clone() else {
            return;
        };
        if !self.hook_precheck(cx, head) {
            return;
        }
        let fail = |this: &mut Self, cx: &mut Cx<'_>, status: u16, code: Code, msg: &str| {
            cx.shared.metrics.http_errors_4xx.inc();
            this.respond(cx, status, "application/json", &[], &error_body(code, msg));
        };
        let Some(route) = hook_route(path, &hooks.path) else {
            return fail(
                self,
                cx,
                404,
                Code::NotFound,
                "hooks are <path>/agent and <path>/wake",
            );
        };
        let params: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return fail(
                    self,
                    cx,
                    400,
                    Code::InvalidRequest,
                    "the hook body must be a JSON object",
                );
            }
        };
        match crate::api::agent::hook(&cx.shared.runs, route, &params) {
            Ok(v) => {
                let body = json!({"ok": true, "runId": v["runId"]}).to_string();
                self.respond(cx, 202, "application/json", &[], body.as_bytes());
            }
            Err(e) => {
                let (status, retry, body) = protocol::http_body(&Err(e));
                self.respond_status(cx, status, retry, body);
            }
        }
    }

    /// The checks of a hook request that need only its head: no token in the URL, POST, the
    /// token (then, for a wrong one, the hooks bucket of the failure limit). Answers itself and
    /// returns false to refuse.
    fn hook_precheck(&mut self, cx: &mut Cx<'_>, head: &Head) -> bool {
        let Some(hooks) = cx.config().hooks.clone() else {
            return false;
        };
        let fail = |this: &mut Self, cx: &mut Cx<'_>, status: u16, code: Code, msg: &str| {
            cx.shared.metrics.http_errors_4xx.inc();
            this.respond(cx, status, "application/json", &[], &error_body(code, msg));
            false
        };
        let query = head.path.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("token"))
        }) {
            return fail(
                self,
                cx,
                400,
                Code::InvalidRequest,
                "the hook token belongs in a header (Authorization: Bearer or x-openclaw-token), never in the URL",
            );
        }
        if head.method != "POST" {
            self.method_not_allowed(cx, "POST");
            return false;
        }
        let presented = head
            .hook_token
            .as_deref()
            .map(str::trim)
            .or_else(|| head.authorization.as_deref().and_then(super::bearer));
        // The right token always passes; the limiter only ever answers a wrong one.
        if presented
            .is_some_and(|t| crate::auth::constant_time_eq(t.as_bytes(), hooks.token.as_bytes()))
        {
            return true;
        }
        let client = cx.client(&head.forwarding);
        if let Some(wait) = cx.auth_failure(Scope::Hooks, &client, presented.is_some()) {
            let body = error_body(
                Code::Unauthorized,
                "too many failed hook authentications from this address; retry later",
            );
            cx.shared.metrics.http_errors_4xx.inc();
            self.respond(
                cx,
                429,
                "application/json",
                &[("Retry-After", wait.as_secs().max(1).to_string())],
                &body,
            );
            return false;
        }
        fail(
            self,
            cx,
            401,
            Code::Unauthorized,
            "hook token missing or wrong",
        )
    }

    fn method_not_allowed(&mut self, cx: &mut Cx<'_>, allow: &str) {
        cx.shared.metrics.http_errors_4xx.inc();
        let body = error_body(
            Code::InvalidRequest,
            &format!("method not allowed; use {allow}"),
        );
        self.respond(
            cx,
            405,
            "application/json",
            &[("Allow", allow.to_string())],
            &body,
        );
    }

    /// Checks `Authorization: Bearer <token>`; answers 401/429 itself when it fails.
    fn authorize(&mut self, cx: &mut Cx<'_>, head: &Head) -> bool {
        let presented = head.authorization.as_deref().and_then(super::bearer);
        let presented = match presented {
            Some(t) => crate::auth::Presented::Bearer(t),
            None => crate::auth::Presented::Nothing,
        };
        let client = cx.client(&head.forwarding);
        match cx.authenticate(&client, presented) {
            Ok(()) => true,
            Err(e) => {
                cx.shared.metrics.http_errors_4xx.inc();
                let (status, extra) = match e.retry_after_ms {
                    Some(ms) => (429, ("Retry-After", ms.div_ceil(1000).to_string())),
                    None => (
                        401,
                        ("WWW-Authenticate", "Bearer realm=\"keel\"".to_string()),
                    ),
                };
                let body = json!({"ok": false, "error": e.to_json()}).to_string();
                self.respond(cx, status, "application/json", &[extra], body.as_bytes());
                false
            }
        }
    }

    fn rpc(&mut self, cx: &mut Cx<'_>, method: &str, body: &[u8]) {
        let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(Value::Null) => json!({}),
                Ok(_) => {
                    return self.rpc_answer(
                        cx,
                        &Err(RpcError::invalid("invalid params: expected a JSON object")),
                    );
                }
                Err(e) => {
                    return self.rpc_answer(
                        cx,
                        &Err(RpcError::invalid(format!("invalid params: not JSON ({e})"))),
                    );
                }
            }
        };
        let reply = ReplyTo::Http {
            conn: cx.slot,
            generation: cx.generation,
        };
        let outcome = match api::dispatch(cx.shared, method, &params, &reply) {
            api::Dispatched::Now(r) => r,
            api::Dispatched::Accepted(v) => Ok(v),
            api::Dispatched::Later => {
                self.phase = Phase::Waiting;
                return;
            }
        };
        self.rpc_answer(cx, &outcome);
    }

    fn rpc_answer(&mut self, cx: &mut Cx<'_>, outcome: &Result<Value, RpcError>) {
        let outcome = outcome.clone().map(crate::payload::Payload::Json);
        let (status, retry, body) = protocol::http_body(&outcome);
        self.respond_status(cx, status, retry, body);
    }

    fn respond_status(
        &mut self,
        cx: &mut Cx<'_>,
        status: u16,
        retry_after_s: Option<u64>,
        body: Wire,
    ) {
        if (400..500).contains(&status) {
            cx.shared.metrics.http_errors_4xx.inc();
        }
        let retry = retry_after_s.map(|s| ("Retry-After", s.to_string()));
        self.write_head(status, "application/json", retry.as_slice(), body.len());
        if !self.head_only {
            self.out.push_wire(body);
        }
    }

    /// A job's reply has arrived.
    pub fn complete(
        &mut self,
        cx: &mut Cx<'_>,
        status: u16,
        retry_after_s: Option<u64>,
        body: Wire,
    ) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Idle;
        self.deadline = cx.now + IDLE_TIMEOUT;
        self.respond_status(cx, status, retry_after_s, body);
    }

    fn upgrade_ws(&mut self, cx: &mut Cx<'_>, head: &Head) {
        if head.method != "GET" {
            return self.reject(cx, 400, "a WebSocket upgrade must be a GET");
        }
        if head.ws_version.as_deref() != Some("13") {
            cx.shared.metrics.http_errors_4xx.inc();
            let body = error_body(
                Code::InvalidRequest,
                "unsupported WebSocket version; use 13",
            );
            self.keep_alive = false;
            self.respond(
                cx,
                426,
                "application/json",
                &[("Sec-WebSocket-Version", "13".into())],
                &body,
            );
            return;
        }
        let Some(key) = head.ws_key.as_deref().filter(|k| !k.is_empty()) else {
            return self.reject(cx, 400, "missing Sec-WebSocket-Key");
        };
        if cx.shared.phase() >= crate::phase::Phase::Draining {
            let body = json!({"ok": false, "error": RpcError::draining().to_json()}).to_string();
            self.keep_alive = false;
            self.respond(
                cx,
                503,
                "application/json",
                &[("Retry-After", "5".into())],
                body.as_bytes(),
            );
            return;
        }
        self.upgrade_client = Some(cx.client(&head.forwarding));
        self.upgrade_browser = head.origin.as_ref().map(|origin| Browser {
            origin: origin.clone(),
            host: head.host.clone(),
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        self.out.push(head.as_bytes());
        self.upgrade = true;
    }

    /// Writes an answer whose body is at hand.
    fn respond(
        &mut self,
        cx: &mut Cx<'_>,
        status: u16,
        content_type: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) {
        let _ = cx;
        self.write_head(status, content_type, extra, body.len());
        if !self.head_only {
            self.out.push(body);
        }
    }

    /// Queues an answer's head. It says `Connection: close` exactly when the connection
    /// closes after the answer: both follow `keep_alive`, which a path that closes clears
    /// beforehand.
    fn write_head(
        &mut self,
        status: u16,
        content_type: &str,
        extra: &[(&str, String)],
        len: usize,
    ) {
        if !self.keep_alive {
            self.close_after_write = true;
        }
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nCache-Control: no-store\r\n",
            reason(status),
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(if self.keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        self.out.push(head.as_bytes());
    }

    /// When [`Self::on_timer`] next has something to do: the deadline it acts on in the
    /// connection's present state, or `None` (nothing until the connection changes). The
    /// reactor arms the connection's timer with it after every handler call, so it must name
    /// exactly what `on_timer` checks: a deadline it would ignore would come due for nothing.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.lingering {
            return Some(self.deadline);
        }
        let write = self.write_since.map(|since| since + WRITE_TIMEOUT);
        // Head, body and idle timeouts wait while a job's reply or an answer is owed.
        let read = (self.phase != Phase::Waiting && !self.has_output()).then_some(self.deadline);
        match (write, read) {
            (Some(w), Some(r)) => Some(w.min(r)),
            (w, r) => w.or(r),
        }
    }

    /// Timers: idle, head, body and write timeouts.
    pub fn on_timer(&mut self, cx: &mut Cx<'_>) -> Outcome {
        if self.lingering {
            return if cx.now >= self.deadline {
                Outcome::Close
            } else {
                Outcome::Keep
            };
        }
        if let Some(since) = self.write_since
            && cx.now.saturating_duration_since(since) >= WRITE_TIMEOUT
        {
            return Outcome::Close;
        }
        if cx.now < self.deadline || self.phase == Phase::Waiting || self.has_output() {
            return Outcome::Keep;
        }
        match self.phase {
            Phase::Idle => Outcome::Close,
            Phase::Head | Phase::Body => {
                let msg = if self.phase == Phase::Head {
                    format!(
                        "request head not received within {} ms",
                        cx.config().limits.header_timeout.as_millis()
                    )
                } else {
                    format!(
                        "request body not received within {} s",
                        BODY_TIMEOUT.as_secs()
                    )
                };
                self.reject(cx, 408, &msg);
                self.drive(cx)
            }
            Phase::Waiting => Outcome::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_are_collected_for_auth_to_judge() {
        let head = |raw: &str| match parse_head(raw.as_bytes()) {
            Parsed::Request(h, _) => h.forwarding,
            _ => panic!("a complete head: {raw:?}"),
        };
        let f = head(
            "GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1, 10.0.0.2\r\nx-forwarded-for: 203.0.113.5\r\n\r\n",
        );
        assert_eq!(
            f.x_forwarded_for.as_deref(),
            Some("198.51.100.1, 10.0.0.2,203.0.113.5"),
            "repeated headers are one list, in order"
        );
        assert!(f.proxied);
        for proxy_header in [
            "Forwarded: for=1.2.3.4",
            "X-Real-IP: 1.2.3.4",
            "X-Forwarded-Proto: https",
        ] {
            let f = head(&format!("GET / HTTP/1.1\r\n{proxy_header}\r\n\r\n"));
            assert!(f.proxied && f.x_forwarded_for.is_none(), "{proxy_header}");
        }
        assert_eq!(
            head("GET / HTTP/1.1\r\nX-Forwarded: x\r\n\r\n"),
            Forwarding::default()
        );
    }

    #[test]
    fn heads() {
        let raw = b"POST /api/rpc/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nAuthorization: Bearer t\r\n\r\n{}";
        let Parsed::Request(h, len) = parse_head(raw) else {
            panic!("complete head");
        };
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.content_length),
            ("POST", "/api/rpc/status", 2)
        );
        assert_eq!(h.authorization.as_deref(), Some("Bearer t"));
        assert!(h.keep_alive);
        assert_eq!(len + 2, raw.len());
        let Parsed::Request(h, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!()
        };
        assert!(!h.keep_alive, "HTTP/1.0 closes by default");
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost"),
            Parsed::NeedMore
        ));
        assert!(matches!(
            parse_head(b"\x01\x02 / HTTP/1.1\r\n\r\n"),
            Parsed::Reject(400, _)
        ));
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(parse_head(conflicting), Parsed::Reject(400, _)));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(HEAD_MAX + 10, b'a');
        assert!(matches!(parse_head(&big), Parsed::Reject(431, _)));
    }

    #[test]
    fn webhook_signature_headers_are_kept_bounded_and_first_only() {
        let long = "a".repeat(WEBHOOK_HEADER_MAX + 1);
        let raw = format!(
            "POST /slack/events HTTP/1.1\r\nx-slack-signature: v0=ab\r\nX-Slack-Signature: v0=cd\r\n\
             X-Lark-Request-Nonce: {long}\r\nX-Other: 1\r\n\r\n"
        );
        let Parsed::Request(h, _) = parse_head(raw.as_bytes()) else {
            panic!("parsed")
        };
        assert_eq!(
            h.webhook,
            [
                ("X-Slack-Signature", "v0=ab".to_string()),
                ("X-Lark-Request-Nonce", String::new())
            ]
        );
    }

    fn head_with(lines: &str) -> Parsed {
        parse_head(format!("POST /api/rpc/health HTTP/1.1\r\nHost: t\r\n{lines}\r\n").as_bytes())
    }

    /// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. `usize::from_str` alone took `+2`, which a
    /// proxy in front may read as no length at all: a way to smuggle a request behind it.
    #[test]
    fn content_length_is_digits_only_and_given_once() {
        for bad in [
            "Content-Length: +2\r\n",
            "Content-Length: -0\r\n",
            "Content-Length:  2 2\r\n",
            "Content-Length: 0x2\r\n",
            "Content-Length: 2a\r\n",
            "Content-Length: \r\n",
            "Content-Length: 2.0\r\n",
            "Content-Length: 2\u{a0}\r\n",
            "Content-Length: \u{3000}2\r\n",
            "Content-Length: 18446744073709551616\r\n",
            "Content-Length: 99999999999999999999999999\r\n",
            "Content-Length: 2, 2\r\n",
            "Content-Length: 2\r\nContent-Length: 2\r\n",
            "Content-Length: 2\r\nContent-Length: 3\r\n",
        ] {
            assert!(
                matches!(
                    head_with(bad),
                    Parsed::Reject(400, "invalid Content-Length")
                ),
                "{bad:?}"
            );
        }
        for (good, n) in [
            ("Content-Length: 2\r\n", 2),
            ("Content-Length: 0\r\n", 0),
            ("Content-Length: 007\r\n", 7),
            ("Content-Length:\t12 \r\n", 12),
            ("", 0),
        ] {
            let Parsed::Request(h, _) = head_with(good) else {
                panic!("{good:?} is a valid length");
            };
            assert_eq!(h.content_length, n, "{good:?}");
        }
        // Through the reader: refused before any body is awaited.
        let mut r = RequestReader::default();
        r.feed(b"POST /api/rpc/health HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}");
        assert_eq!(
            r.next(|_| 1 << 20),
            Next::Malformed(400, "invalid Content-Length")
        );
        // Both framings at once stays refused.
        let mut r = RequestReader::default();
        r.feed(b"POST /api/rpc/health HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}");
        assert!(matches!(
            r.next(|_| 1 << 20),
            Next::Refused(_, Refusal::Chunked)
        ));
    }

    #[test]
    fn expect_takes_100_continue_only_and_only_in_http_1_1() {
        for (lines, expect) in [
            ("", Expect::Nothing),
            ("Expect: 100-continue\r\n", Expect::Continue),
            ("Expect: 100-Continue\r\n", Expect::Continue),
            ("Expect: \r\n", Expect::Nothing),
            ("Expect: something-else\r\n", Expect::Unsupported),
            ("Expect: 100-continue, x\r\n", Expect::Unsupported),
            ("Expect: x, 100-continue\r\n", Expect::Unsupported),
            ("Expect: 100-continue\r\nExpect: x\r\n", Expect::Unsupported),
            ("Expect: 100-continue=1\r\n", Expect::Unsupported),
        ] {
            let Parsed::Request(h, _) = head_with(lines) else {
                panic!("{lines:?}");
            };
            assert_eq!(h.expect, expect, "{lines:?}");
        }
        for lines in ["Expect: 100-continue\r\n", "Expect: something-else\r\n"] {
            let raw = format!("POST /api/rpc/health HTTP/1.0\r\n{lines}\r\n");
            let Parsed::Request(h, _) = parse_head(raw.as_bytes()) else {
                panic!("{raw:?}");
            };
            assert_eq!(h.expect, Expect::Nothing, "HTTP/1.0 ignores {lines:?}");
        }
        // The reader refuses an unsupported expectation from the head, body or not; a
        // 100-continue head waits for its body like any other.
        let mut r = RequestReader::default();
        r.feed(b"GET /healthz HTTP/1.1\r\nExpect: something-else\r\n\r\n");
        assert!(matches!(
            r.next(|_| 0),
            Next::Refused(_, Refusal::Expectation)
        ));
        let raw =
            b"POST /api/rpc/health HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let mut r = RequestReader::default();
        r.feed(raw);
        let Next::PartialBody(h, total) = r.next(|_| 1 << 20) else {
            panic!("the body is awaited");
        };
        assert_eq!((h.expect, total), (Expect::Continue, raw.len() + 2));
        r.feed(b"{}");
        assert!(matches!(r.next(|_| 1 << 20), Next::Request(_, ref b) if b == b"{}"));
        // Over the limit: refused from the head (no 100 is ever due).
        let mut r = RequestReader::default();
        r.feed(raw);
        assert_eq!(
            r.next(|_| 1),
            Next::Refused(h, Refusal::TooLarge { limit: 1 })
        );
    }

    /// The reader's verdicts for `data` arriving in `pieces` (lengths; the rest last).
    fn verdicts(data: &[u8], pieces: &[usize]) -> Vec<Next> {
        let mut r = RequestReader::default();
        let mut out = Vec::new();
        let mut rest = data;
        let mut feed: Vec<&[u8]> = Vec::new();
        for &n in pieces {
            let (a, b) = rest.split_at(n.min(rest.len()));
            feed.push(a);
            rest = b;
        }
        feed.push(rest);
        for piece in feed {
            r.feed(piece);
            loop {
                match r.next(|_| 1 << 20) {
                    next @ Next::Request(..) => out.push(next),
                    Next::Empty | Next::PartialHead | Next::PartialBody(..) => break,
                    next => {
                        out.push(next);
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Found by the http_request fuzz target: a head with a bad byte past 16 KiB was a 400
    /// when it arrived in one read and a 431 when a read ended between 16 KiB and the bad
    /// byte. The verdict now depends on the bytes only, not on how they were read.
    #[test]
    fn a_bad_head_gets_one_verdict_however_it_is_split() {
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(HEAD_MAX + 20, b'a');
        head.extend_from_slice(b"\x01\r\n\r\n");
        let whole = verdicts(&head, &[]);
        assert_eq!(
            whole,
            [Next::Malformed(431, "request head larger than 16 KiB")]
        );
        for split in [1, 100, HEAD_MAX - 1, HEAD_MAX, HEAD_MAX + 1, HEAD_MAX + 10] {
            assert_eq!(verdicts(&head, &[split]), whole, "split at {split}");
        }
        // A bad byte within the first 16 KiB is a 400 however the head arrives.
        let mut bad = b"GET / HTTP/1.1\r\nX: \x01".to_vec();
        bad.resize(HEAD_MAX + 100, b'a');
        for split in [0, 10, HEAD_MAX + 1] {
            assert_eq!(
                verdicts(&bad, &[split]),
                [Next::Malformed(400, "malformed HTTP request")]
            );
        }
    }
}
