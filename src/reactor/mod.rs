//! The reactor: one thread, one `mio::Poll`, owning the listener and every connection.
//!
//! It accepts, reads, parses HTTP heads, upgrades to WebSocket, runs the `connect` handshake
//! and answers from memory (`/healthz`, `/readyz`, `/metrics`, `health`). Everything else is a
//! job; replies come back serialized through one channel and the `mio::Waker`.
//!
//! It never touches the disk and never waits on a worker. Work per wake-up is bounded: events
//! per poll, accepts per wake-up, bytes and frames per connection; a connection that used up
//! its budget is driven again on the next iteration (poll with a zero timeout), so one noisy
//! client cannot starve the rest. Readiness is a hint: every read and write runs to
//! `WouldBlock` or to its budget.
//!
//! The poll timeout is the nearest deadline — a connection's timer (handshake, head, body,
//! idle, write, tick, close linger) or the end of an accept pause — and at most 50 ms.
//! Deadlines are kept in a heap ([`timers`]): every connection reports its next deadline after
//! each handler call, and an iteration runs the timer handler of only the connections whose
//! deadline has come (at most [`TIMER_BUDGET`]); idle connections cost nothing per iteration.
//! What is not a connection's timer runs on its own cadence: the connection gauges (counted as
//! connections change) and pruning the failure limiter every 25 ms, re-reading the descriptor
//! limit every second. The config is read once per iteration and handed to every handler.
//! Each iteration stamps the heartbeat the watchdog reads — hence the 50 ms cap — and records
//! its lag: its busy time, plus — when the poll timed out — how late the thread woke (time
//! spent waiting for a CPU).
//!
//! Connections are capped at `maxConnections` and at what the descriptor limit allows
//! ([`fdlimit`]). At the cap, a new connection takes the place of the oldest one that has not
//! sent a request (or not passed `connect`): a flood of idle sockets cannot lock out a health
//! probe or a real client. When there is none to close, the new connection is refused. When
//! accept itself fails for lack of descriptors, the cap is lowered below the connections open,
//! idle ones are closed to get there, and accepting pauses for [`ACCEPT_BACKOFF`] if none can
//! be — it never spins on a listener that stays readable.

pub mod fdlimit;
pub mod http;
pub mod timers;
pub mod ws;

use crate::auth::{self, Client, Forwarding, Limiters, Presented, Scope};
use crate::clock::Rng;
use crate::config::Config;
use crate::error::RpcError;
use crate::phase::Phase;
use crate::protocol::reply::{Completion, CompletionBody, Outbound};
use crate::runtime::Shared;
use crossbeam_channel::Receiver;
use http::HttpConn;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::{Timer, Timers};
use tungstenite::protocol::frame::coding::CloseCode;
use ws::WsConn;

pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// The longest poll: the heartbeat the watchdog reads is stamped once per iteration.
const POLL_MAX: Duration = Duration::from_millis(50);
/// How often the connection gauges are published, the failure limiter pruned and the
/// descriptor limit considered (it is re-read every [`LIMIT_CHECK`]).
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(25);
/// Connection timers run per iteration; more that are due wait for the next one (polled
/// without waiting).
const TIMER_BUDGET: usize = 1024;
/// A deadline a connection's timer handler left due is looked at again after this, rather
/// than at once and for ever (it would be a bug in the handler; this bounds what it costs).
const TIMER_RETRY: Duration = Duration::from_millis(25);
const ACCEPT_BUDGET: usize = 128;
const COMPLETION_BUDGET: usize = 2048;
/// Time spent handing out replies and events per iteration.
const COMPLETION_TIME: Duration = Duration::from_millis(3);
/// After accept fails for lack of descriptors, wait this long before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept free when accept ran out of them (for files and outbound calls).
const FD_MARGIN: usize = 8;
/// How long the cap stays lowered after accept ran out of descriptors.
const LOWERED_FOR: Duration = Duration::from_secs(30);
/// How often the descriptor limit is re-read.
const LIMIT_CHECK: Duration = Duration::from_secs(1);
/// At stop, how long to flush replies and close frames before exiting.
const STOP_FLUSH: Duration = Duration::from_secs(1);

/// What a connection handler asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    /// Budget used up: drive again next iteration.
    Again,
    Close,
    /// The 101 is written: become a WebSocket.
    Upgrade,
}

/// `WouldBlock` means "not yet" on a non-blocking socket.
pub fn io_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Body limit per route.
pub fn body_limit(method: &str, path: &str, cfg: &Config) -> usize {
    if method != "POST" {
        0
    } else if path.starts_with("/api/rpc/") {
        cfg.limits.rpc_body_bytes
    } else if cfg
        .hooks
        .as_ref()
        .is_some_and(|h| hook_route(path, &h.path).is_some())
    {
        HOOK_BODY_MAX
    } else if cfg.inbound.telegram_webhook(path).is_some()
        || cfg.inbound_webhooks.route(path).is_some()
    {
        crate::inbound::webhook::MAX_BODY
    } else {
        0
    }
}

/// Largest hook body.
pub const HOOK_BODY_MAX: usize = 256 << 10;

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// `<hooks.path>/<name>` → `name`.
pub fn hook_route<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    let path = path.split('?').next().unwrap_or(path);
    path.strip_prefix(base)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty() && !r.contains('/'))
}

/// What a handler may use: the shared state, the connection's identity, the auth limiters.
pub struct Cx<'a> {
    pub shared: &'a Arc<Shared>,
    pub now: Instant,
    pub slot: usize,
    pub generation: u64,
    pub peer: SocketAddr,
    pub rng: &'a mut Rng,
    limiters: &'a mut Limiters,
    config: &'a Arc<Config>,
}

impl<'a> Cx<'a> {
    /// A handler's context; the reactor makes one per call (and so do the fuzz targets).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a Arc<Shared>,
        now: Instant,
        slot: usize,
        generation: u64,
        peer: SocketAddr,
        rng: &'a mut Rng,
        limiters: &'a mut Limiters,
        config: &'a Arc<Config>,
    ) -> Cx<'a> {
        Cx {
            shared,
            now,
            slot,
            generation,
            peer,
            rng,
            limiters,
            config,
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// Who a request with these forwarding headers is from (`auth::client`).
    pub fn client(&self, fwd: &Forwarding) -> Client {
        auth::client(self.peer.ip(), fwd, &self.config.trusted_proxies)
    }

    /// A failed authentication of `client` for `scope`: counts it and says whether to answer
    /// 429 (`Some(retry after)`) instead of 401. `counted` is false for missing credentials.
    pub fn auth_failure(
        &mut self,
        scope: Scope,
        client: &Client,
        counted: bool,
    ) -> Option<Duration> {
        self.shared.metrics.auth_failures.inc();
        if client.untrusted_forwarding && self.limiters.warn_untrusted(self.now) {
            log::warn!(
                "authentication failures from {} carry forwarding headers, but {} is not in \
                 gateway.trustedProxies: they are counted against the proxy, so every client \
                 behind it shares one limit; list the proxy in gateway.trustedProxies",
                client.ip,
                client.ip
            );
        }
        let limited =
            self.limiters
                .failure(scope, client, counted, &self.config.rate_limit, self.now);
        if limited.is_some() {
            self.shared.metrics.auth_rate_limited.inc();
        }
        limited
    }

    /// Checks a presented gateway secret. A correct one always authenticates, whatever failed
    /// before; a wrong one is counted against `client`, and refused as rate-limited once the
    /// client is past its limit.
    pub fn authenticate(
        &mut self,
        client: &Client,
        presented: Presented<'_>,
    ) -> Result<(), RpcError> {
        let Err(f) = auth::verify(&self.config.auth, presented) else {
            return Ok(());
        };
        if !f.guessed() {
            // No secret: nothing was guessed, so nothing is counted, and the answer is always
            // that one is required — never a lockout (a reconnecting browser that lost its
            // token must be able to show its login form, and then log in).
            self.shared.metrics.auth_missing.inc();
            log::debug!(
                "authentication refused from {}: no secret presented",
                client.ip
            );
            return Err(
                RpcError::invalid(f.message()).with_details(json!({"code": f.detail_code()}))
            );
        }
        if let Some(wait) = self.auth_failure(Scope::Gateway, client, true) {
            let ms = wait.as_millis().max(1) as u64;
            log::info!(
                "authentication refused from {} (rate limited): {}",
                client.ip,
                f.detail_code()
            );
            return Err(RpcError {
                retryable: Some(true),
                retry_after_ms: Some(ms),
                ..RpcError::invalid(format!(
                    "unauthorized: too many failed attempts from {}; retry in {} s",
                    client.ip,
                    ms.div_ceil(1000)
                ))
                .with_details(json!({"code": "AUTH_RATE_LIMITED"}))
            });
        }
        log::info!(
            "authentication failed from {}: {}",
            client.ip,
            f.detail_code()
        );
        Err(RpcError::invalid(f.message()).with_details(json!({"code": f.detail_code()})))
    }
}

enum Conn {
    Http(HttpConn),
    Ws(Box<WsConn>),
}

struct Slot {
    generation: u64,
    peer: SocketAddr,
    accepted: Instant,
    conn: Conn,
    /// Its entry in the reactor's deadline heap.
    timer: Timer,
    /// What it is counted as in the connection gauges.
    kind: Kind,
}

/// The connection gauges' kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http = 0,
    WsHandshake = 1,
    Ws = 2,
}

impl Conn {
    fn kind(&self) -> Kind {
        match self {
            Conn::Http(_) => Kind::Http,
            Conn::Ws(w) if w.is_handshaking() => Kind::WsHandshake,
            Conn::Ws(_) => Kind::Ws,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Conn::Http(h) => h.next_deadline(),
            Conn::Ws(w) => w.next_deadline(),
        }
    }
}

impl Slot {
    /// Nothing asked of keel and nothing owed: a connection without a request in progress, or
    /// a WebSocket that has not passed `connect`.
    fn evictable(&self) -> bool {
        match &self.conn {
            Conn::Http(h) => h.is_idle(),
            Conn::Ws(w) => w.is_handshaking(),
        }
    }
}

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    /// The config, read once per iteration (a reload takes effect on the next one) and handed
    /// to every handler of that iteration.
    config: Arc<Config>,
    completions: Receiver<Outbound>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    next_gen: u64,
    again: Vec<usize>,
    rng: Rng,
    limiters: Limiters,
    accept_again: bool,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    last_cap_warning: Option<Instant>,
    /// The soft descriptor limit last read, and how many connections it allows.
    nofile: u64,
    fd_cap: usize,
    last_limit_check: Instant,
    /// The last time accept ran out of descriptors (the cap stays lowered for a while).
    last_emfile: Option<Instant>,
    more_completions: bool,
    /// An event whose fan-out a round's budget cut short.
    carry: Option<crate::protocol::reply::Fanout>,
    /// Connection deadlines (see [`timers`]).
    timers: Timers,
    /// Connections open, by [`Kind`]: kept as they change, published by housekeeping.
    conns: [usize; 3],
    last_housekeeping: Instant,
    announced_drain: bool,
    stop_by: Option<Instant>,
}

enum Why {
    Ready,
    Timer,
}

impl Reactor {
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        shared: Arc<Shared>,
        completions: Receiver<Outbound>,
    ) -> io::Result<Reactor> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let cfg = shared.config();
        let nofile = fdlimit::soft();
        let fd_cap = fdlimit::cap(nofile, fdlimit::reserve(&cfg));
        if cfg.limits.max_connections > fd_cap {
            log::warn!(
                "gateway.limits.maxConnections is {} but the descriptor limit (RLIMIT_NOFILE {nofile}, \
                 less {} kept for files and outbound calls) allows {fd_cap} connections: at most \
                 {fd_cap} are accepted. Raise the limit (LimitNOFILE= in the unit, ulimit -n) or \
                 lower maxConnections",
                cfg.limits.max_connections,
                fdlimit::reserve(&cfg),
            );
        }
        Ok(Reactor {
            poll,
            listener: Some(listener),
            shared,
            config: cfg,
            completions,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 1,
            again: Vec::new(),
            rng: Rng::from_os(),
            limiters: Limiters::default(),
            accept_again: false,
            accept_paused_until: None,
            last_accept_warning: None,
            last_cap_warning: None,
            nofile,
            fd_cap,
            last_limit_check: Instant::now(),
            last_emfile: None,
            more_completions: false,
            carry: None,
            timers: Timers::default(),
            conns: [0; 3],
            last_housekeeping: Instant::now(),
            announced_drain: false,
            stop_by: None,
        })
    }

    /// Runs until the drain has finished and replies are flushed.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = if !self.again.is_empty() || self.accept_again || self.more_completions {
                Duration::ZERO
            } else {
                // The nearest deadline: a connection's timer, the end of an accept pause.
                [self.timers.next(), self.accept_paused_until]
                    .into_iter()
                    .flatten()
                    .fold(now + POLL_MAX, Instant::min)
                    .saturating_duration_since(now)
            };
            self.shared.reactor_idle(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let t0 = Instant::now();
            self.shared.reactor_busy(t0);
            self.config = self.shared.config();
            // A poll that timed out tells how late the thread got the CPU back: scheduling
            // delay (a starved reactor) counts as lag as much as its own work does.
            let late = if events.is_empty() && !timeout.is_zero() {
                // epoll rounds its timeout up to whole milliseconds.
                let ms = timeout.as_nanos().div_ceil(1_000_000) as u64;
                t0.saturating_duration_since(now + Duration::from_millis(ms))
            } else {
                Duration::ZERO
            };
            let again = std::mem::take(&mut self.again);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(t0),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONN, t0, Why::Ready),
                }
            }
            for slot in again {
                self.drive(slot, t0, Why::Ready);
            }
            self.take_completions(t0);
            if self.accept_again || self.accept_paused_until.is_some_and(|u| t0 >= u) {
                self.accept_all(t0);
            }
            self.expire_timers(t0);
            if t0.saturating_duration_since(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
                self.last_housekeeping = t0;
                self.housekeeping(t0);
                self.check_limit(t0, false);
            }
            let done = self.lifecycle(t0);
            self.shared.metrics.lag.record(late + t0.elapsed());
            if done {
                self.shared.reactor_idle(Instant::now());
                return Ok(());
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        self.accept_again = false;
        self.accept_paused_until = None;
        let max = self.config.limits.max_connections;
        let mut cap = max.min(self.fd_cap);
        let mut rechecked = false;
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.shared.metrics.connections_accepted.inc();
                    if self.live >= cap && !rechecked {
                        // Before refusing anyone, make sure the cap is not from a stale limit.
                        rechecked = true;
                        self.check_limit(now, true);
                        cap = max.min(self.fd_cap);
                    }
                    if self.live >= cap && !self.evict_oldest(now, cap) {
                        self.shared.metrics.connections_refused.inc();
                        drop(stream);
                        continue;
                    }
                    if let Err(e) = self.insert(stream, peer, now) {
                        log::warn!("cannot register connection from {peer}: {e}");
                    }
                }
                Err(e) if io_would_block(&e) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory. Keep a margin below what
                    // is open now and make room by closing idle connections; with none to
                    // close, back off instead of spinning on a listener that stays readable.
                    self.last_emfile = Some(now);
                    let lowered = self.live.saturating_sub(FD_MARGIN).max(FD_MARGIN);
                    if lowered < self.fd_cap {
                        self.fd_cap = lowered;
                        log::warn!(
                            "accept failed ({e}) with {} connections open (RLIMIT_NOFILE {}): \
                             holding connections to {lowered}",
                            self.live,
                            self.nofile
                        );
                    }
                    let mut freed = false;
                    while self.live > self.fd_cap && self.evict_oldest(now, self.fd_cap) {
                        freed = true;
                    }
                    if freed {
                        continue;
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    if self
                        .last_accept_warning
                        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10))
                    {
                        self.last_accept_warning = Some(now);
                        log::warn!(
                            "accept failed ({e}); pausing accepts for {} ms ({} connections open)",
                            ACCEPT_BACKOFF.as_millis(),
                            self.live
                        );
                    }
                    return;
                }
            }
        }
        self.accept_again = true;
    }

    /// Closes the oldest connection that has nothing in progress, to make room at `cap`.
    /// False when there is none.
    fn evict_oldest(&mut self, now: Instant, cap: usize) -> bool {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| s.evictable())
                    .map(|s| (s.accepted, i))
            })
            .min();
        let warn = self
            .last_cap_warning
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10));
        if warn {
            self.last_cap_warning = Some(now);
            log::warn!(
                "connection limit reached ({cap} open): {}",
                if oldest.is_some() {
                    "closing the oldest idle connection for each new one"
                } else {
                    "refusing new connections"
                }
            );
        }
        let Some((_, slot)) = oldest else {
            return false;
        };
        self.shared.metrics.connections_evicted.inc();
        self.remove(slot);
        true
    }

    /// Re-reads the descriptor limit (at most every [`LIMIT_CHECK`] unless `force`d); a
    /// changed limit sets the connection cap anew, and so does [`LOWERED_FOR`] without running
    /// out.
    fn check_limit(&mut self, now: Instant, force: bool) {
        if !force && now.saturating_duration_since(self.last_limit_check) < LIMIT_CHECK {
            return;
        }
        self.last_limit_check = now;
        let soft = fdlimit::soft();
        let cfg = &self.config;
        let cap = fdlimit::cap(soft, fdlimit::reserve(cfg));
        let lowered = self
            .last_emfile
            .is_some_and(|t| now.saturating_duration_since(t) < LOWERED_FOR);
        if soft != self.nofile || (self.fd_cap != cap && !lowered) {
            self.nofile = soft;
            self.fd_cap = cap;
            self.last_emfile = None;
            log::warn!(
                "descriptor limit (RLIMIT_NOFILE) {soft}: up to {} connections",
                self.fd_cap.min(cfg.limits.max_connections)
            );
        }
    }

    fn insert(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) -> io::Result<()> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            return Err(e);
        }
        let _ = stream.set_nodelay(true);
        let generation = self.next_gen;
        self.next_gen += 1;
        self.slots[slot] = Some(Slot {
            generation,
            peer,
            accepted: now,
            conn: Conn::Http(HttpConn::new(
                stream,
                now,
                self.config.limits.header_timeout,
            )),
            timer: Timer::default(),
            kind: Kind::Http,
        });
        self.conns[Kind::Http as usize] += 1;
        self.live += 1;
        self.settle(slot);
        Ok(())
    }

    fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Its timer entry, if any, is stale from now on (the slot is empty or reused).
        self.conns[s.kind as usize] -= 1;
        self.shared.runs.forget_conn(slot, s.generation);
        let mut stream = match s.conn {
            Conn::Http(h) => h.into_upgrade(s.peer).0,
            Conn::Ws(w) => {
                if w.inflight.get() > 0 {
                    log::debug!(
                        "WebSocket {} left with {} request(s) in flight; their jobs continue",
                        w.conn_id,
                        w.inflight.get()
                    );
                }
                (*w).into_stream()
            }
        };
        let _ = self.poll.registry().deregister(&mut stream);
        self.free.push(slot);
        self.live -= 1;
    }

    /// Runs one handler on a slot and applies its outcome.
    fn drive(&mut self, slot: usize, now: Instant, why: Why) {
        self.on_slot(slot, None, now, |conn, cx| match (conn, why) {
            (Conn::Http(h), Why::Ready) => h.drive(cx),
            (Conn::Http(h), Why::Timer) => h.on_timer(cx),
            (Conn::Ws(w), Why::Ready) => w.drive(cx),
            (Conn::Ws(w), Why::Timer) => w.on_timer(cx),
        });
    }

    /// Runs `f` on the connection in `slot` (if it is there, and of `generation` when given)
    /// with its [`Cx`], then applies the outcome. A bug in a handler (or a library under it)
    /// must cost one connection, never the reactor: a panic is caught, logged by the hook,
    /// and the connection dropped.
    fn on_slot(
        &mut self,
        slot: usize,
        generation: Option<u64>,
        now: Instant,
        f: impl FnOnce(&mut Conn, &mut Cx<'_>) -> Outcome,
    ) {
        let outcome = {
            let Reactor {
                slots,
                shared,
                config,
                rng,
                limiters,
                ..
            } = self;
            let Some(Some(s)) = slots.get_mut(slot) else {
                return;
            };
            if generation.is_some_and(|g| g != s.generation) {
                return;
            }
            let mut cx = Cx {
                shared,
                now,
                slot,
                generation: s.generation,
                peer: s.peer,
                rng,
                limiters,
                config,
            };
            let conn = &mut s.conn;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, &mut cx)));
            run.unwrap_or_else(|_| {
                shared.metrics.reactor_panics.inc();
                log::error!(
                    "connection from {} dropped after a panic in its handler",
                    s.peer
                );
                Outcome::Close
            })
        };
        self.apply(slot, now, outcome);
    }

    fn apply(&mut self, slot: usize, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Keep => self.settle(slot),
            Outcome::Again => {
                self.again.push(slot);
                self.settle(slot);
            }
            Outcome::Close => self.remove(slot),
            Outcome::Upgrade => self.upgrade(slot, now),
        }
    }

    /// After a handler: counts the connection under its kind now, and arms its timer with
    /// its next deadline.
    fn settle(&mut self, slot: usize) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        let kind = s.conn.kind();
        if kind != s.kind {
            self.conns[s.kind as usize] -= 1;
            self.conns[kind as usize] += 1;
            s.kind = kind;
        }
        let want = s.conn.next_deadline();
        self.timers.arm(&mut s.timer, want, slot, s.generation);
    }

    /// Runs the timers that are due: only the connections whose deadline has come, at most
    /// [`TIMER_BUDGET`] of them. Stale entries (see [`timers`]) are dropped on the way.
    fn expire_timers(&mut self, now: Instant) {
        let mut fired = 0;
        while fired < TIMER_BUDGET {
            let Some(e) = self.timers.pop_due(now) else {
                break;
            };
            let Some(Some(s)) = self.slots.get_mut(e.slot) else {
                continue;
            };
            if s.generation != e.generation || !s.timer.fire(e.at) {
                continue;
            }
            match s.conn.next_deadline() {
                Some(d) if d <= now => {
                    fired += 1;
                    self.drive(e.slot, now, Why::Timer);
                    // The handler acts on every deadline that has come; one it left due would
                    // come out of the heap again at once.
                    if let Some(Some(s)) = self.slots.get_mut(e.slot)
                        && s.generation == e.generation
                        && s.timer.armed().is_some_and(|t| t <= now)
                    {
                        self.timers
                            .rearm(&mut s.timer, now + TIMER_RETRY, e.slot, e.generation);
                    }
                }
                // Moved later since it was armed (or gone): wait for that.
                want => self.timers.arm(&mut s.timer, want, e.slot, e.generation),
            }
        }
        // Entries of closed connections, and superseded ones, wait for their deadline; when
        // they outnumber the connections, drop them all at once.
        if self.timers.len() > 2 * self.live + 64 {
            let slots = &self.slots;
            self.timers.retain(|e| {
                matches!(slots.get(e.slot), Some(Some(s))
                    if s.generation == e.generation && s.timer.armed() == Some(e.at))
            });
        }
    }

    fn upgrade(&mut self, slot: usize, now: Instant) {
        let Some(Slot {
            generation,
            peer,
            accepted,
            conn: Conn::Http(h),
            kind,
            ..
        }) = self.slots.get_mut(slot).and_then(Option::take)
        else {
            return;
        };
        let (stream, up) = h.into_upgrade(peer);
        let mut cx = Cx {
            shared: &self.shared,
            now,
            slot,
            generation,
            peer,
            rng: &mut self.rng,
            limiters: &mut self.limiters,
            config: &self.config,
        };
        let ws = WsConn::start(stream, up.leftover, up.client, up.browser, &mut cx);
        // A fresh timer: the HTTP connection's entry is stale, the handshake deadline is armed.
        self.slots[slot] = Some(Slot {
            generation,
            peer,
            accepted,
            conn: Conn::Ws(Box::new(ws)),
            timer: Timer::default(),
            kind,
        });
        self.settle(slot);
        // The upgrade request may have carried the first frames already.
        self.again.push(slot);
    }

    /// Hands replies and events to their connections: at most [`COMPLETION_BUDGET`] targets
    /// and [`COMPLETION_TIME`] per iteration, so a run streaming to a hundred listeners
    /// cannot keep the reactor from answering `/healthz`.
    fn take_completions(&mut self, now: Instant) {
        self.shared.clear_wake_pending();
        self.more_completions = false;
        let mut work = 0usize;
        // Connections given events this round: written once at the end, not once per event.
        let mut touched: Vec<usize> = Vec::new();
        loop {
            if work >= COMPLETION_BUDGET || (work > 0 && now.elapsed() >= COMPLETION_TIME) {
                self.more_completions = true;
                break;
            }
            // An event cut short by the budget goes on first, to the targets it has left.
            let item = match self.carry.take() {
                Some(f) => Outbound::Event(f),
                None => match self.completions.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            match item {
                Outbound::Reply(c) => {
                    work += 1;
                    self.complete(c, now);
                }
                Outbound::Event(mut f) => {
                    while let Some((slot, generation)) = f.targets.pop() {
                        work += 1;
                        self.on_slot(slot, Some(generation), now, |conn, cx| {
                            if let Conn::Ws(w) = conn {
                                w.push_event(cx, f.name, &f.payload, f.drop_if_slow);
                            }
                            Outcome::Keep
                        });
                        touched.push(slot);
                        if !f.targets.is_empty()
                            && (work >= COMPLETION_BUDGET || now.elapsed() >= COMPLETION_TIME)
                        {
                            self.carry = Some(f);
                            break;
                        }
                    }
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for slot in touched {
            self.on_slot(slot, None, now, |conn, cx| match conn {
                Conn::Ws(w) => w.flushed(cx),
                Conn::Http(_) => Outcome::Keep,
            });
        }
    }

    /// Hands a job's reply to its connection. A reply for a connection that has gone (or
    /// whose slot was reused: the generation differs) is dropped: the job outlived its
    /// socket, as designed.
    fn complete(&mut self, c: Completion, now: Instant) {
        let body = c.body;
        self.on_slot(c.conn, Some(c.generation), now, move |conn, cx| {
            match (conn, body) {
                (
                    Conn::Http(h),
                    CompletionBody::Http {
                        status,
                        retry_after_s,
                        body,
                    },
                ) => {
                    h.complete(cx, status, retry_after_s, body);
                    h.drive(cx)
                }
                (Conn::Http(h), CompletionBody::Answer(answer)) => {
                    h.complete_answer(cx, &answer);
                    h.drive(cx)
                }
                (Conn::Ws(w), CompletionBody::WsText(text)) => {
                    w.complete(cx, text);
                    w.flushed(cx)
                }
                _ => Outcome::Keep,
            }
        });
    }

    /// What runs on its own cadence, not per connection: the connection gauges (kept as
    /// connections change, published here) and the failure limiter's pruning.
    fn housekeeping(&mut self, now: Instant) {
        debug_assert_eq!(self.conns, self.count_conns(), "connection gauges drifted");
        let m = &self.shared.metrics;
        m.conns_http.set(self.conns[Kind::Http as usize] as _);
        m.conns_ws_handshake
            .set(self.conns[Kind::WsHandshake as usize] as _);
        m.conns_ws_open.set(self.conns[Kind::Ws as usize] as _);
        if self.slots.len() > 64 && self.live < self.slots.len() / 4 {
            self.limiters.prune(now, &self.config.rate_limit);
        }
    }

    /// The connections by kind, counted afresh (checks [`Reactor::conns`] in debug builds).
    fn count_conns(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for s in self.slots.iter().flatten() {
            n[s.conn.kind() as usize] += 1;
        }
        n
    }

    /// Drain and stop. Returns true when the loop should exit.
    fn lifecycle(&mut self, now: Instant) -> bool {
        if self.shared.phase() < Phase::Draining {
            return false;
        }
        if !self.announced_drain {
            self.announced_drain = true;
            let drain_ms = self.config.drain_timeout.as_millis() as u64;
            self.each_ws(now, |w, cx| w.announce_shutdown(cx, drain_ms));
        }
        if self.stop_by.is_none() && self.shared.jobs.is_empty() && self.completions.is_empty() {
            // Every job has finished and every reply has been handed to its connection.
            self.stop_by = Some(now + STOP_FLUSH);
            self.shared.set_phase(Phase::Stopped);
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
            self.each_ws(now, |w, cx| {
                w.close(cx, CloseCode::Restart, "service restart")
            });
            for slot in 0..self.slots.len() {
                if let Some(Slot {
                    conn: Conn::Http(h),
                    ..
                }) = self.slots[slot].as_mut()
                {
                    h.close_when_idle();
                    self.drive(slot, now, Why::Ready);
                }
            }
        }
        match self.stop_by {
            Some(by) => self.live == 0 || now >= by,
            None => false,
        }
    }

    fn each_ws(&mut self, now: Instant, mut f: impl FnMut(&mut WsConn, &mut Cx<'_>)) {
        for slot in 0..self.slots.len() {
            self.on_slot(slot, None, now, |conn, cx| match conn {
                Conn::Ws(w) => {
                    f(w, cx);
                    w.flushed(cx)
                }
                Conn::Http(_) => Outcome::Keep,
            });
        }
    }
}
