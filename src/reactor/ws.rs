//! WebSocket connections on the reactor: tungstenite over the non-blocking socket, the
//! `connect` handshake, requests, ticks and shutdown.
//!
//! Connection lifecycle:
//!
//! ```text
//! upgraded ──challenge sent──▶ awaiting connect (handshake timeout, frames ≤ 64 KiB)
//!     ├─ valid connect ──▶ open (frames ≤ maxPayload; requests; tick every tickIntervalMs)
//!     ├─ not a connect / bad params / wrong secret ──▶ error res, close 1008
//!     └─ no common protocol ──▶ error res, close 1002
//! open ── silent for a tick interval ──▶ ping; still unanswered at the next tick ──▶ close 1001
//! open ── shutdown ──▶ `shutdown` event … close 1012
//! any ── close sent ──▶ closing (until the peer's close or 2 s) ──▶ dropped
//! ```
//!
//! A client whose write buffer reaches `maxBufferedBytes` is closed as a slow consumer: the
//! buffer hands the message back instead of growing.
//!
//! A peer that vanished without a FIN (a laptop closed, a NAT entry dropped) would otherwise
//! hold its connection until TCP gives up on a tick, which takes many minutes. Every message
//! or control frame from the client counts as a sign of life; a client silent for a tick
//! interval gets a ping with that tick (every WebSocket library answers it by itself), and one
//! that has not answered it by the next tick — silent for two tick intervals at least, 60 s by
//! default — is closed 1001.

use super::http::Browser;
use super::{Cx, Outcome, io_would_block};
use crate::api;
use crate::auth::{Client, Presented};
use crate::error::RpcError;
use crate::protocol::handshake::{self, Hello, PRE_AUTH_MAX_FRAME, SessionDefaults};
use crate::protocol::reply::{ReplyTo, Wire};
use crate::protocol::{self, Event};
use mio::net::TcpStream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

/// Messages handled per connection per wake-up.
const MESSAGE_BUDGET: usize = 32;
/// Bytes one reactor round may queue for a connection on top of `maxBufferedBytes` before
/// they are written (events are batched per round; the limit applies to what stays unread).
const ROUND_ALLOWANCE: usize = 4 << 20;
/// Largest frame written at once; bigger messages are fragmented.
const FRAGMENT: usize = 64 << 10;
/// Bytes of frames handed to the socket per connection per reactor iteration: a reply of
/// megabytes to a fast reader is written in slices, with other connections served between.
const WRITE_BUDGET: usize = 256 << 10;
/// How long to wait for the peer's close frame after sending ours.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Open,
    Closing,
}

/// What a connection (HTTP or WebSocket) runs over: the reactor's socket, or (in the fuzz
/// targets) an in-memory stream that hands out input in arbitrary pieces.
pub trait Socket: Read + Write {
    /// Shuts the write side (after a close frame or a closing answer, so the peer sees EOF).
    fn shutdown_write(&self);
}

impl Socket for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// What waits to be handed to tungstenite.
enum Queued {
    /// A frame as it is: a message of at most [`FRAGMENT`] bytes, a ping.
    Frame(Frame),
    /// A bigger message, cut into frames as the socket drains, each copied from where the
    /// message's bytes are (a shared answer of megabytes is never copied whole). `pos` bytes
    /// have been handed over.
    Big { wire: Wire, pos: usize },
}

pub struct WsConn<S: Socket = TcpStream> {
    ws: WebSocket<S>,
    client: Client,
    /// A browser's `Origin` (and `Host`): checked at `connect`.
    browser: Option<Browser>,
    phase: Phase,
    /// Handshake deadline, then the close linger.
    deadline: Option<Instant>,
    next_tick: Option<Instant>,
    /// When the client last sent a frame (a whole message or a control frame).
    last_heard: Instant,
    /// When a ping went out that nothing has answered since (nothing heard from the client).
    unanswered_ping: Option<Instant>,
    /// Requests that still owe this connection a reply (`maxInflightPerConnection`).
    pub inflight: InFlight,
    seq: u64,
    pub conn_id: String,
    announced_shutdown: bool,
    /// After a framing error tungstenite's reader must not be used again: the close frame is
    /// flushed, the write side shut, and whatever the peer still sends is read raw and
    /// discarded until it closes or the linger ends (closing with unread input would reset
    /// the connection and could destroy the close frame in flight).
    poisoned: bool,
    /// Frames and messages waiting for the socket, oldest first, and their payload bytes.
    out: VecDeque<Queued>,
    out_bytes: usize,
    /// Bytes left queued after the last write: the client has not read them yet.
    backlog: usize,
    /// A close frame to send once `out` has drained.
    pending_close: Option<CloseFrame>,
    close_sent: bool,
    /// The last write stopped at its budget with frames left: the reactor comes back.
    more: bool,
}

pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .write_buffer_size(0)
        // keel's own queue (`WsConn::out`) holds the backlog and enforces maxBufferedBytes;
        // tungstenite only ever holds the frame being written.
        .max_write_buffer_size(4 * FRAGMENT)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

impl<S: Socket> WsConn<S> {
    /// Wraps an upgraded socket and sends `connect.challenge`.
    /// `client` is who the upgrade request came from: `connect`'s failures count against it.
    pub fn start(
        stream: S,
        leftover: Vec<u8>,
        client: Client,
        browser: Option<Browser>,
        cx: &mut Cx<'_>,
    ) -> WsConn<S> {
        let cfg = cx.config();
        let conf = ws_config(PRE_AUTH_MAX_FRAME);
        let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(conf));
        let mut c = WsConn {
            ws,
            client,
            browser,
            phase: Phase::AwaitingConnect,
            deadline: Some(cx.now + cfg.handshake_timeout),
            next_tick: None,
            last_heard: cx.now,
            unanswered_ping: None,
            inflight: InFlight::default(),
            seq: 0,
            conn_id: cx.rng.uuid(),
            announced_shutdown: false,
            poisoned: false,
            out: VecDeque::new(),
            out_bytes: 0,
            backlog: 0,
            pending_close: None,
            close_sent: false,
            more: false,
        };
        let nonce = cx.rng.uuid();
        let challenge = protocol::event(
            Event::ConnectChallenge,
            &json!({"nonce": nonce, "ts": crate::clock::wall_ms()}),
            None,
        );
        c.send(cx, challenge);
        c
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    pub fn is_handshaking(&self) -> bool {
        self.phase == Phase::AwaitingConnect
    }

    pub fn into_stream(self) -> S {
        self.ws.into_inner()
    }

    /// Queues a text message. A message larger than [`FRAGMENT`] is cut into continuation
    /// frames as the socket drains, so one big reply takes no more memory than itself and
    /// never blocks the reactor. A client whose backlog (beyond the message being written)
    /// passes `maxBufferedBytes` is closed as a slow consumer.
    fn send(&mut self, cx: &mut Cx<'_>, text: impl Into<Wire>) {
        self.enqueue(cx, text);
        self.pump();
    }

    /// Queues a message without writing yet (events are written once per connection per
    /// reactor round: one syscall for many frames).
    fn enqueue(&mut self, cx: &mut Cx<'_>, text: impl Into<Wire>) {
        if self.phase == Phase::Closing {
            return;
        }
        // What the client left unread at the last write counts, plus what this reactor round
        // has queued beyond a round's worth (events are written once per round).
        let limit = cx.config().limits.max_buffered_bytes;
        if self.backlog > limit || self.out_bytes > limit + ROUND_ALLOWANCE {
            cx.shared.metrics.slow_consumers_closed.inc();
            log::warn!(
                "closing slow WebSocket client {} ({}): {} bytes waiting to be read",
                self.conn_id,
                cx.peer,
                self.out_bytes
            );
            self.out.clear();
            self.out_bytes = 0;
            self.close(cx, CloseCode::Policy, "slow consumer: too much unread data");
            return;
        }
        let wire: Wire = text.into();
        self.out_bytes += wire.len();
        if wire.len() <= FRAGMENT {
            let frame = Frame::message(wire.to_vec(), OpCode::Data(OpData::Text), true);
            self.out.push_back(Queued::Frame(frame));
        } else {
            self.out.push_back(Queued::Big { wire, pos: 0 });
        }
    }

    /// The next frame to hand over: the front one, or the next fragment of the front message.
    fn next_frame(&mut self) -> Option<Frame> {
        match self.out.pop_front()? {
            Queued::Frame(f) => Some(f),
            Queued::Big { wire, pos } => {
                let n = (wire.len() - pos).min(FRAGMENT);
                let mut bytes = vec![0; n];
                wire.copy_at(pos, &mut bytes);
                let op = if pos == 0 {
                    OpData::Text
                } else {
                    OpData::Continue
                };
                let fin = pos + n == wire.len();
                if !fin {
                    self.out.push_front(Queued::Big { wire, pos: pos + n });
                }
                Some(Frame::message(bytes, OpCode::Data(op), fin))
            }
        }
    }

    /// Hands queued frames to tungstenite one at a time, each only once the previous ones
    /// have reached the socket; then the pending close frame, if any. Stops at `WouldBlock`.
    /// Returns false when the connection is broken.
    fn pump(&mut self) -> bool {
        let ok = self.pump_inner();
        // What the socket did not take: the client has unread data. What the write budget
        // held back is not the client's doing: it is written next iteration.
        self.backlog = if self.more { 0 } else { self.out_bytes };
        ok
    }

    fn pump_inner(&mut self) -> bool {
        self.more = false;
        let mut budget = WRITE_BUDGET;
        loop {
            match self.ws.flush() {
                Ok(()) => {}
                Err(WsError::Io(e)) if io_would_block(&e) => return true,
                Err(WsError::ConnectionClosed) if self.close_sent => return true,
                Err(_) => return false,
            }
            let Some(frame) = self.next_frame() else {
                if let Some(close) = self.pending_close.take() {
                    self.close_sent = true;
                    match self.ws.close(Some(close)) {
                        Ok(()) => continue,
                        Err(WsError::Io(e)) if io_would_block(&e) => return true,
                        Err(_) => return false,
                    }
                }
                return true;
            };
            if budget == 0 {
                // A big reply to a fast reader: other connections go first, then the rest.
                self.out.push_front(Queued::Frame(frame));
                self.more = true;
                return true;
            }
            budget = budget.saturating_sub(frame.payload().len());
            self.out_bytes = self.out_bytes.saturating_sub(frame.payload().len());
            match self.ws.write(Message::Frame(frame)) {
                Ok(()) => {}
                Err(WsError::Io(e)) if io_would_block(&e) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends a close frame (after what is already queued) and lingers for the peer's.
    pub fn close(&mut self, cx: &mut Cx<'_>, code: CloseCode, reason: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.deadline = Some(cx.now + CLOSE_LINGER);
        self.pending_close = Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        });
        self.pump();
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sends an event with this connection's next sequence number.
    pub fn send_event(&mut self, cx: &mut Cx<'_>, name: Event, payload: &Value) {
        if self.is_open() {
            let seq = self.next_seq();
            self.send(cx, protocol::event(name, payload, Some(seq)));
        }
    }

    /// An event from a worker (a run's progress, a session mirror).
    pub fn push_event(&mut self, cx: &mut Cx<'_>, name: Event, payload: &str, drop_if_slow: bool) {
        if !self.is_open() {
            return;
        }
        let seq = self.next_seq();
        if drop_if_slow && self.backlog > 0 {
            // The client has not read what it was sent: skip, and let the seq gap show it.
            cx.shared.metrics.events_dropped_slow.inc();
            return;
        }
        let name = serde_json::Value::String(name.as_str().to_string());
        self.enqueue(
            cx,
            format!(r#"{{"type":"event","event":{name},"payload":{payload},"seq":{seq}}}"#),
        );
    }

    /// A job's reply frame has arrived.
    pub fn complete(&mut self, cx: &mut Cx<'_>, text: Wire) {
        self.inflight.release();
        self.send(cx, text);
    }

    /// The gateway has begun draining: tell the client once.
    pub fn announce_shutdown(&mut self, cx: &mut Cx<'_>, drain_ms: u64) {
        if self.announced_shutdown {
            return;
        }
        self.announced_shutdown = true;
        match self.phase {
            Phase::Open => {
                let payload =
                    json!({"reason": "gateway draining for shutdown", "drainTimeoutMs": drain_ms});
                self.send_event(cx, Event::Shutdown, &payload);
            }
            Phase::AwaitingConnect => self.close(cx, CloseCode::Restart, "gateway shutting down"),
            Phase::Closing => {}
        }
    }

    pub fn drive(&mut self, cx: &mut Cx<'_>) -> Outcome {
        if self.poisoned {
            return self.discard_input(cx);
        }
        for _ in 0..MESSAGE_BUDGET {
            let read = self.ws.read();
            if read.is_ok() {
                self.last_heard = cx.now;
                self.unanswered_ping = None;
            }
            match read {
                Ok(Message::Text(t)) => {
                    if self.phase != Phase::Closing {
                        self.on_text(cx, t.as_str());
                    }
                }
                Ok(Message::Binary(_)) => {
                    self.close(
                        cx,
                        CloseCode::Unsupported,
                        "binary frames are not supported",
                    );
                }
                Ok(_) => {}
                Err(e) => return self.on_error(cx, e),
            }
        }
        // The budget ran out with frames possibly left: come back next iteration.
        match self.flush(cx) {
            Ok(()) => Outcome::Again,
            Err(o) => o,
        }
    }

    fn on_error(&mut self, cx: &mut Cx<'_>, e: WsError) -> Outcome {
        match e {
            WsError::Io(e) if io_would_block(&e) => self.flushed(cx),
            WsError::ConnectionClosed | WsError::AlreadyClosed => Outcome::Close,
            WsError::Capacity(c) => {
                let code = if self.is_open() {
                    CloseCode::Size
                } else {
                    CloseCode::Policy
                };
                log::info!(
                    "WebSocket {} ({}): frame too large: {c}",
                    self.conn_id,
                    cx.peer
                );
                self.fail(cx, code, "frame too large")
            }
            WsError::Utf8(_) => self.fail(cx, CloseCode::Invalid, "invalid UTF-8"),
            WsError::Protocol(p) => {
                log::debug!(
                    "WebSocket {} ({}): protocol error: {p}",
                    self.conn_id,
                    cx.peer
                );
                self.fail(cx, CloseCode::Protocol, "protocol error")
            }
            WsError::WriteBufferFull(_) => {
                cx.shared.metrics.slow_consumers_closed.inc();
                Outcome::Close
            }
            _ => Outcome::Close,
        }
    }

    /// A framing error: send the close frame, then stop using the reader.
    fn fail(&mut self, cx: &mut Cx<'_>, code: CloseCode, reason: &str) -> Outcome {
        self.close(cx, code, reason);
        self.poisoned = true;
        self.discard_input(cx)
    }

    /// Flushes the close frame, shuts the write side, and reads and drops input until EOF.
    fn discard_input(&mut self, cx: &mut Cx<'_>) -> Outcome {
        if let Err(o) = self.flush(cx) {
            return o;
        }
        let sent_all =
            self.out.is_empty() && self.pending_close.is_none() && self.ws.flush().is_ok();
        let stream = self.ws.get_mut();
        if !sent_all {
            // Still writing: read and drop input meanwhile, shut the write side later.
            let mut scratch = [0u8; 8 << 10];
            return match stream.read(&mut scratch) {
                Ok(0) => Outcome::Close,
                Err(e) if !io_would_block(&e) => Outcome::Close,
                _ => Outcome::Keep,
            };
        }
        stream.shutdown_write();
        let mut scratch = [0u8; 8 << 10];
        for _ in 0..16 {
            match stream.read(&mut scratch) {
                Ok(0) => return Outcome::Close,
                Ok(_) => {}
                Err(e) if io_would_block(&e) => return Outcome::Keep,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Close,
            }
        }
        Outcome::Again
    }

    /// Writes what is queued, as far as the socket and the write budget take it: `Again`
    /// when the budget ran out with frames left, `Close` when the connection is finished.
    pub fn flushed(&mut self, cx: &mut Cx<'_>) -> Outcome {
        match self.flush(cx) {
            Ok(()) if self.more => Outcome::Again,
            Ok(()) => Outcome::Keep,
            Err(o) => o,
        }
    }

    /// Writes what is queued, as far as the socket and the write budget take it. `Err` means
    /// the connection is finished.
    pub fn flush(&mut self, _cx: &mut Cx<'_>) -> Result<(), Outcome> {
        if self.pump() {
            Ok(())
        } else {
            Err(Outcome::Close)
        }
    }

    fn on_text(&mut self, cx: &mut Cx<'_>, text: &str) {
        let req = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(fe) => {
                if let Some(id) = &fe.id {
                    self.send(cx, protocol::res_err(id, &fe.error));
                }
                if !self.is_open() || fe.id.is_none() {
                    self.close(cx, CloseCode::Policy, "invalid frame");
                }
                return;
            }
        };
        match self.phase {
            Phase::AwaitingConnect => self.on_connect(cx, &req),
            Phase::Open => self.on_request(cx, req),
            Phase::Closing => {}
        }
    }

    fn fail_handshake(
        &mut self,
        cx: &mut Cx<'_>,
        id: &str,
        err: &RpcError,
        code: CloseCode,
        reason: &str,
    ) {
        self.send(cx, protocol::res_err(id, err));
        self.close(cx, code, reason);
    }

    fn on_connect(&mut self, cx: &mut Cx<'_>, req: &protocol::Request) {
        if req.method != "connect" {
            let err = RpcError::invalid(format!(
                "invalid handshake: first request must be connect, got {}",
                req.method
            ));
            return self.fail_handshake(cx, &req.id, &err, CloseCode::Policy, "connect required");
        }
        let params = match handshake::parse_connect(&req.params) {
            Ok(p) => p,
            Err(e) => {
                return self.fail_handshake(
                    cx,
                    &req.id,
                    &e,
                    CloseCode::Policy,
                    "invalid connect params",
                );
            }
        };
        let protocol = match handshake::negotiate(&params) {
            Ok(v) => v,
            Err(e) => {
                return self.fail_handshake(
                    cx,
                    &req.id,
                    &e,
                    CloseCode::Protocol,
                    "protocol mismatch",
                );
            }
        };
        let presented =
            Presented::from_connect(params.token.as_deref(), params.password.as_deref());
        let client = self.client;
        // A page of another site is refused before its secret is looked at: it neither
        // learns whether a guess was right nor counts against the failure limit.
        if let Some(b) = &self.browser {
            let policy = &cx.config().control_ui.origins;
            if let Err(reason) =
                crate::origin::check(policy, &b.origin, b.host.as_deref(), client.local)
            {
                cx.shared.metrics.origin_refused.inc();
                log::warn!(
                    "refused a WebSocket connect from {} with Origin {:?} (Host {:?}): {reason}; open the dashboard from keel's own address or list the origin in gateway.controlUi.allowedOrigins",
                    cx.peer,
                    b.origin,
                    b.host.as_deref().unwrap_or("")
                );
                let err = RpcError::invalid(
                    "origin not allowed (open the Control UI from the gateway host or allow it in gateway.controlUi.allowedOrigins)",
                )
                .with_details(json!({"code": "CONTROL_UI_ORIGIN_NOT_ALLOWED", "reason": reason}));
                return self.fail_handshake(
                    cx,
                    &req.id,
                    &err,
                    CloseCode::Policy,
                    "origin not allowed",
                );
            }
        }
        if let Err(e) = cx.authenticate(&client, presented) {
            return self.fail_handshake(cx, &req.id, &e, CloseCode::Policy, "unauthorized");
        }
        if cx.shared.phase() >= crate::phase::Phase::Draining {
            return self.fail_handshake(
                cx,
                &req.id,
                &RpcError::draining(),
                CloseCode::Restart,
                "gateway shutting down",
            );
        }
        let cfg = cx.config();
        let scopes = handshake::granted_scopes(&params);
        let default_agent = cfg.agents.default_agent_id();
        let hello = handshake::hello_ok(&Hello {
            protocol,
            conn_id: &self.conn_id,
            methods: api::public_names(),
            health: cx.shared.health_json(),
            uptime_ms: cx.shared.uptime().as_millis() as u64,
            role: &params.role,
            scopes,
            max_payload: cfg.limits.max_payload,
            max_buffered_bytes: cfg.limits.max_buffered_bytes,
            tick_interval_ms: cfg.tick_interval.as_millis() as u64,
            auth_mode: match cfg.auth.mode {
                crate::config::AuthMode::Token => "token",
                crate::config::AuthMode::Password => "password",
            },
            session_defaults: SessionDefaults {
                default_agent_id: default_agent.as_str(),
                scope: handshake::SESSION_SCOPE,
            },
            control_ui_build_source: handshake::control_ui_build_source(cx.shared.ui.serving_ui()),
        });
        let max = cfg.limits.max_payload;
        self.ws.set_config(|c| {
            c.max_message_size = Some(max);
            c.max_frame_size = Some(max);
        });
        self.phase = Phase::Open;
        self.deadline = None;
        self.next_tick = Some(cx.now + cfg.tick_interval);
        self.send(cx, protocol::res_ok(&req.id, &hello));
        log::debug!(
            "WebSocket {} ({}) connected: protocol {protocol}, client {}",
            self.conn_id,
            cx.peer,
            params.client_id.as_deref().unwrap_or("?")
        );
    }

    fn on_request(&mut self, cx: &mut Cx<'_>, req: protocol::Request) {
        cx.shared.metrics.ws_requests.inc();
        if req.method == "connect" {
            let err =
                RpcError::invalid("already connected: connect is only valid as the first request");
            return self.send(cx, protocol::res_err(&req.id, &err));
        }
        let limit = cx.config().limits.max_inflight_per_conn;
        if self.inflight.get() >= limit {
            let err = RpcError::unavailable(
                format!("too many requests in flight on this connection (limit {limit})"),
                1_000,
            );
            return self.send(cx, protocol::res_err(&req.id, &err));
        }
        let reply = ReplyTo::Ws {
            conn: cx.slot,
            generation: cx.generation,
            id: req.id.clone(),
        };
        let dispatched = api::dispatch(cx.shared, &req.method, &req.params, &reply);
        if holds_slot(&dispatched) {
            self.inflight.take();
        }
        let outcome = match dispatched {
            api::Dispatched::Now(r) => r,
            // The final `res` comes later.
            api::Dispatched::Accepted(v) => Ok(v),
            api::Dispatched::Later => return,
        };
        let text = match &outcome {
            Ok(p) => protocol::res_ok(&req.id, p),
            Err(e) => protocol::res_err(&req.id, e),
        };
        self.send(cx, text);
    }

    /// When [`Self::on_timer`] next has something to do: the handshake deadline, then the
    /// next tick once open, then the end of the close linger. The reactor arms the
    /// connection's timer with it after every handler call.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingConnect | Phase::Closing => self.deadline,
            Phase::Open => self.next_tick,
        }
    }

    /// Timers: the handshake timeout, ticks, the close linger.
    pub fn on_timer(&mut self, cx: &mut Cx<'_>) -> Outcome {
        if let Some(d) = self.deadline
            && cx.now >= d
        {
            match self.phase {
                Phase::AwaitingConnect => {
                    cx.shared.metrics.handshake_timeouts.inc();
                    log::info!(
                        "WebSocket {} ({}): no connect within the handshake timeout; closing",
                        self.conn_id,
                        cx.peer
                    );
                    self.close(cx, CloseCode::Policy, "handshake timeout");
                }
                Phase::Closing => return Outcome::Close,
                Phase::Open => {}
            }
        }
        if let Some(t) = self.next_tick
            && cx.now >= t
            && self.is_open()
        {
            let interval = cx.config().tick_interval;
            self.next_tick = Some(cx.now + interval);
            let silent = cx.now.saturating_duration_since(self.last_heard);
            // Closed when the ping of an earlier tick is still unanswered — two intervals of
            // silence at least — rather than on two intervals of silence alone: a tick runs
            // a little after its deadline, so a client that answered a ping just after its
            // tick can be silent for a hair under an interval at the next tick (no ping) and
            // for over two at the one after, and would be closed without a ping to answer.
            if self
                .unanswered_ping
                .is_some_and(|p| cx.now.saturating_duration_since(p) >= interval)
            {
                cx.shared.metrics.ping_timeouts.inc();
                log::info!(
                    "WebSocket {} ({}): nothing received for {} s, not even a pong; closing",
                    self.conn_id,
                    cx.peer,
                    silent.as_secs()
                );
                self.close(cx, CloseCode::Away, "ping timeout");
                return self.flushed(cx);
            }
            let payload = json!({"ts": crate::clock::wall_ms()});
            self.send_event(cx, Event::Tick, &payload);
            if silent >= interval && self.unanswered_ping.is_none() {
                self.unanswered_ping = Some(cx.now);
                self.out.push_back(Queued::Frame(Frame::ping(Vec::new())));
                self.pump();
            }
        }
        self.flushed(cx)
    }
}

/// Requests on one connection that still owe it a reply, counted against
/// `gateway.limits.maxInflightPerConnection`.
///
/// Every request that will get a reply later holds exactly one slot, from the moment it is
/// accepted until its final `res` is handed to the connection ([`WsConn::complete`]): a job,
/// a deferred answer (`agent.wait`), and an `agent` call, whose first `res` ("accepted") is
/// answered inline and whose second, final one comes when the run ends. An `agent` run keeps
/// its slot until that final `res`, because the limit exists to bound what one socket can
/// have keel doing for it at once: a running run holds an io worker, a provider stream and
/// a transcript, and a final answer is owed to the socket — releasing the slot at "accepted"
/// would let one client start runs without bound. Answers given at once hold no slot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InFlight(usize);

impl InFlight {
    /// Requests holding a slot.
    pub fn get(self) -> usize {
        self.0
    }

    /// A request will be answered later: it holds a slot until then.
    fn take(&mut self) {
        self.0 += 1;
    }

    /// A final reply has arrived: its request gives its slot back. Every reply that reaches
    /// a connection was counted when its request was taken, so this never goes below zero.
    fn release(&mut self) {
        debug_assert!(self.0 > 0, "a reply released a slot no request took");
        self.0 = self.0.saturating_sub(1);
    }
}

/// Whether a dispatched request holds an in-flight slot until a later reply: a job's or a
/// deferred answer, and an "accepted" one (`agent`), whose final `res` follows when its run
/// ends — also for a run started before, found by its idempotency key. An answer given now
/// (an error included) is the only one.
fn holds_slot(d: &api::Dispatched) -> bool {
    matches!(d, api::Dispatched::Accepted(_) | api::Dispatched::Later)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `on_request` does with a request's slot: the counting of the limit, without a
    /// gateway.
    fn accept(n: &mut InFlight, d: api::Dispatched) {
        if holds_slot(&d) {
            n.take();
        }
    }

    #[test]
    fn an_agent_call_holds_its_slot_until_the_final_res() {
        use api::Dispatched::*;
        let mut n = InFlight::default();
        // "accepted" now, the final res when the run ends.
        accept(&mut n, Accepted(json!({"status": "accepted"})));
        assert_eq!(n.get(), 1);
        // A job and a deferred wait hold one each; answers given now hold none.
        accept(&mut n, Later);
        accept(&mut n, Later);
        accept(&mut n, Now(Ok(json!({}))));
        accept(&mut n, Now(Ok(json!({"status": "started"}))));
        assert_eq!(n.get(), 3);
        // The run's final res releases the run's slot only: the other two still hold theirs.
        n.release();
        assert_eq!(n.get(), 2);
        n.release();
        n.release();
        assert_eq!(n.get(), 0);
    }

    #[test]
    fn a_refused_agent_call_has_no_second_res_and_holds_no_slot() {
        let mut n = InFlight::default();
        accept(
            &mut n,
            api::Dispatched::Now(Err(RpcError::invalid("missing message"))),
        );
        assert_eq!(n.get(), 0);
    }
}
