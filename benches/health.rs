//! `/healthz` latency under load, against an already running keel (see
//! `scripts/bench-health.sh`, which starts a release binary with `KEEL_TEST_HOOKS=1` and runs
//! this with the right address and token).
//!
//! While it measures, the gateway is kept as busy as it can be made from outside:
//! - every cpu worker is occupied for the whole run: a few submitter threads keep
//!   `keel.test.busy {"ms":500,"pool":"cpu"}` queued (a 503 means the queue is full: back off
//!   50 ms and go on; those are counted, not errors);
//! - `--clients` WebSocket clients are connected and past the `connect` handshake before the
//!   measured window opens, and held open (ticks read and dropped) until it closes.
//!
//! Then `GET /healthz` is probed at `--rate` per second on an open-loop schedule (probe `i`
//! is due at `start + i/rate`; a late probe is sent at once and timed from its send) over a
//! keep-alive connection, each probe bounded by 5 s. A non-200, a timeout or an I/O error is
//! an error (and the connection is reopened).
//!
//! ```text
//! cargo bench --bench health -- --addr 127.0.0.1:PORT --token T [--seconds 20] [--clients 200] [--rate 200]
//! ```
//! Exit status: 0 when no probe failed, 1 when some did, 2 when the run could not be set up
//! or the load was not established (fewer clients held than asked, no busy job completed),
//! since the figures would then not mean what they claim.

use serde_json::Value;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;

/// Each probe must be answered within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A busy job waits in the queue behind others, then runs 500 ms.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);
const BUSY_BODY: &str = r#"{"ms":500,"pool":"cpu"}"#;
const BUSY_JOB_MS: u64 = 500;
/// Back-off after a 503 (queue full) or any other failed submission.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);
const WS_THREADS: usize = 4;
/// How often each WebSocket thread reads (and drops) what its sockets received.
const WS_POLL: Duration = Duration::from_millis(100);
/// All clients must be connected within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the window, how long threads get to finish what they are doing.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Error messages printed as they happen, per kind of thread; the rest are only counted.
const MAX_LOGGED: u64 = 10;

struct Opts {
    addr: SocketAddr,
    token: String,
    seconds: u64,
    clients: usize,
    rate: u64,
}

fn usage() -> &'static str {
    "usage: health --addr 127.0.0.1:PORT --token TOKEN [--seconds N (20)] [--clients N (200)] [--rate N (200)]"
}

fn parse_opts() -> Result<Opts, String> {
    let mut addr = None;
    let mut token = None;
    let (mut seconds, mut clients, mut rate) = (20u64, 200usize, 200u64);
    for (name, value) in flags(
        &["--addr", "--token", "--seconds", "--clients", "--rate"],
        &[],
    )? {
        match name.as_str() {
            "--addr" => {
                let a: SocketAddr = value
                    .parse()
                    .map_err(|_| format!("--addr: expected IP:PORT, got {value:?}"))?;
                if !a.ip().is_loopback() {
                    return Err(format!(
                        "--addr: {a} is not a loopback address; this benchmark only runs locally"
                    ));
                }
                addr = Some(a);
            }
            "--token" => token = Some(value),
            "--seconds" => seconds = number(&name, &value)?,
            "--clients" => clients = number(&name, &value)? as usize,
            _ => rate = number(&name, &value)?,
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or("--token is required")?;
    if seconds == 0 || rate == 0 {
        return Err("--seconds and --rate must be at least 1".into());
    }
    if rate > 100_000 {
        return Err("--rate above 100000/s is not supported".into());
    }
    Ok(Opts {
        addr,
        token,
        seconds,
        clients,
        rate,
    })
}

// ---------------------------------------------------------------------------------------------
// Load: cpu workers kept busy.

#[derive(Default)]
struct BusyCounters {
    completed: AtomicU64,
    queue_full: AtomicU64,
    other: AtomicU64,
    logged: AtomicU64,
}

impl BusyCounters {
    fn log(&self, msg: String) {
        let n = self.logged.fetch_add(1, Ordering::Relaxed);
        if n < MAX_LOGGED {
            eprintln!("busy submitter: {msg}");
        } else if n == MAX_LOGGED {
            eprintln!("busy submitter: (further errors are only counted)");
        }
    }
}

fn busy_submitter(
    addr: SocketAddr,
    token: String,
    stop: Arc<AtomicBool>,
    counters: Arc<BusyCounters>,
) {
    let mut http = Http::new(addr);
    while !stop.load(Ordering::Relaxed) {
        match http.request(
            "POST",
            "/api/rpc/keel.test.busy",
            Some(&token),
            BUSY_BODY.as_bytes(),
            BUSY_TIMEOUT,
        ) {
            Ok(r) if r.status == 200 => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status == 503 => {
                counters.queue_full.fetch_add(1, Ordering::Relaxed);
                thread::sleep(BUSY_BACKOFF);
            }
            Ok(r) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
                counters.log(format!("HTTP {}: {}", r.status, body_snippet(&r.body)));
                thread::sleep(BUSY_BACKOFF);
            }
            Err(e) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
                counters.log(e.to_string());
                thread::sleep(BUSY_BACKOFF);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load: WebSocket clients held open.

#[derive(Default)]
struct WsReport {
    asked: usize,
    connected: usize,
    failed_attempts: usize,
    /// Connect to `hello-ok`, per client that got there.
    handshakes: Vec<Duration>,
    /// Clients the server closed (or that broke) during the run.
    dropped: usize,
    held_at_end: usize,
    frames_received: u64,
    errors: Vec<String>,
}

/// Connects one client and takes it through the handshake; the socket is left non-blocking.
fn ws_connect(addr: SocketAddr, token: &str) -> Result<(Ws, Duration), String> {
    let t0 = Instant::now();
    let ws = Ws::connect(addr, token)?;
    let elapsed = t0.elapsed();
    ws.sock
        .get_ref()
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    Ok((ws, elapsed))
}

/// Reads and drops what arrived. Err when the client is finished.
fn ws_drain(ws: &mut Ws, frames: &mut u64) -> Result<(), String> {
    loop {
        match ws.sock.read() {
            Ok(Message::Close(frame)) => return Err(format!("server closed: {frame:?}")),
            Ok(_) => *frames += 1,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn ws_holder(
    addr: SocketAddr,
    token: String,
    count: usize,
    setup_deadline: Instant,
    ready: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> WsReport {
    let mut report = WsReport {
        asked: count,
        ..WsReport::default()
    };
    let mut socks: Vec<Ws> = Vec::with_capacity(count);
    let mut logged = 0u64;
    let mut note = |report: &mut WsReport, msg: String| {
        if logged < MAX_LOGGED {
            eprintln!("websocket client: {msg}");
        }
        logged += 1;
        if report.errors.len() < 5 {
            report.errors.push(msg);
        }
    };
    while socks.len() < count && Instant::now() < setup_deadline && !stop.load(Ordering::Relaxed) {
        match ws_connect(addr, &token) {
            Ok((ws, took)) => {
                report.handshakes.push(took);
                socks.push(ws);
            }
            Err(e) => {
                report.failed_attempts += 1;
                note(&mut report, format!("handshake failed: {e}"));
                thread::sleep(Duration::from_millis(100));
            }
        }
        // Keep the ones already open drained while the rest connect.
        if socks.len().is_multiple_of(16) {
            let mut i = 0;
            while i < socks.len() {
                if let Err(e) = ws_drain(&mut socks[i], &mut report.frames_received) {
                    note(&mut report, format!("dropped during setup: {e}"));
                    report.dropped += 1;
                    socks.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }
    report.connected = report.handshakes.len();
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        let mut i = 0;
        while i < socks.len() {
            if let Err(e) = ws_drain(&mut socks[i], &mut report.frames_received) {
                note(&mut report, format!("dropped during the run: {e}"));
                report.dropped += 1;
                socks.swap_remove(i);
            } else {
                i += 1;
            }
        }
        thread::sleep(WS_POLL);
    }
    report.held_at_end = socks.len();
    for mut ws in socks {
        // Best effort: the socket is non-blocking, so this never waits.
        let _ = ws.sock.close(None);
        let _ = ws.sock.flush();
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The measurement.

#[derive(Default)]
struct ProbeReport {
    sent: u64,
    ok: Vec<Duration>,
    /// Every probe's time, errors included (a timeout counts as its full wait).
    all: Vec<Duration>,
    timeouts: u64,
    bad_status: u64,
    io_errors: u64,
    late: u64,
    max_lateness: Duration,
}

impl ProbeReport {
    fn errors(&self) -> u64 {
        self.timeouts + self.bad_status + self.io_errors
    }
}

fn probe(addr: SocketAddr, rate: u64, start: Instant, end: Instant) -> ProbeReport {
    let mut r = ProbeReport::default();
    let mut http = Http::new(addr);
    let mut logged = 0u64;
    let mut note = |msg: String| {
        if logged < MAX_LOGGED {
            eprintln!("healthz probe: {msg}");
        } else if logged == MAX_LOGGED {
            eprintln!("healthz probe: (further errors are only counted)");
        }
        logged += 1;
    };
    for i in 0u64.. {
        let due = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else {
            let late = now - due;
            if late > Duration::from_millis(1) {
                r.late += 1;
            }
            r.max_lateness = r.max_lateness.max(late);
        }
        let t0 = Instant::now();
        let res = http.request("GET", "/healthz", None, b"", PROBE_TIMEOUT);
        let took = t0.elapsed();
        r.sent += 1;
        r.all.push(took);
        match res {
            Ok(reply) if reply.status == 200 => r.ok.push(took),
            Ok(reply) => {
                r.bad_status += 1;
                note(format!(
                    "HTTP {} after {:.3} ms: {}",
                    reply.status,
                    ms(took),
                    body_snippet(&reply.body)
                ));
                // Reopen after any error, as after a failed request.
                http.stream = None;
            }
            Err(HttpError::Timeout) => {
                r.timeouts += 1;
                note(format!("timed out after {:.3} ms", ms(took)));
            }
            Err(e) => {
                r.io_errors += 1;
                note(format!("{e} after {:.3} ms", ms(took)));
            }
        }
    }
    r
}

/// Asks the gateway for its status: the token works and how many cpu workers there are.
fn preflight(addr: SocketAddr, token: &str) -> Result<u64, String> {
    let mut http = Http::new(addr);
    let r = http
        .request("GET", "/healthz", None, b"", PROBE_TIMEOUT)
        .map_err(|e| format!("GET /healthz: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "GET /healthz answered {}: {}",
            r.status,
            body_snippet(&r.body)
        ));
    }
    let r = http
        .request("POST", "/api/rpc/status", Some(token), b"{}", PROBE_TIMEOUT)
        .map_err(|e| format!("POST /api/rpc/status: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "POST /api/rpc/status answered {}: {}",
            r.status,
            body_snippet(&r.body)
        ));
    }
    let v: Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("status is not JSON: {e}"))?;
    v["payload"]["pools"]["cpu"]["workers"]
        .as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format!(
                "status has no payload.pools.cpu.workers: {}",
                body_snippet(&r.body)
            )
        })
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, String> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| format!("cannot spawn thread {name}: {e}"))
}

fn run(o: &Opts) -> Result<i32, String> {
    let t_begin = Instant::now();
    let workers = preflight(o.addr, &o.token)?;
    let stop = Arc::new(AtomicBool::new(false));

    // Enough submitters that the queue never runs dry: one per worker keeps every worker
    // busy, the rest wait in the queue so the next job is there the moment one ends.
    let submitters = (workers * 2 + 2).clamp(4, 64) as usize;
    let busy = Arc::new(BusyCounters::default());
    let mut busy_threads = Vec::new();
    for i in 0..submitters {
        let (addr, token, stop, busy) = (o.addr, o.token.clone(), stop.clone(), busy.clone());
        busy_threads.push(spawn(format!("busy-{i}"), move || {
            busy_submitter(addr, token, stop, busy)
        })?);
    }

    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut ws_threads = Vec::new();
    let ws_thread_count = WS_THREADS.min(o.clients.max(1));
    for i in 0..ws_thread_count {
        let share = o.clients / ws_thread_count + usize::from(i < o.clients % ws_thread_count);
        let (addr, token, stop, ready) = (o.addr, o.token.clone(), stop.clone(), ready_tx.clone());
        ws_threads.push(spawn(format!("ws-{i}"), move || {
            ws_holder(addr, token, share, setup_deadline, ready, stop)
        })?);
    }
    drop(ready_tx);
    for _ in 0..ws_thread_count {
        let left = setup_deadline.saturating_duration_since(Instant::now())
            + Duration::from_secs(WS_TIMEOUT.as_secs() + 1);
        if ready_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    // Let the cpu queue fill before the clock starts (at least one job length).
    let since_begin = t_begin.elapsed();
    let warmup = Duration::from_millis(BUSY_JOB_MS + 100);
    if since_begin < warmup {
        thread::sleep(warmup - since_begin);
    }
    let setup = t_begin.elapsed();

    let busy_before = busy.completed.load(Ordering::Relaxed);
    let start = Instant::now();
    let end = start + Duration::from_secs(o.seconds);
    let (addr, rate) = (o.addr, o.rate);
    let prober = spawn("probe".into(), move || probe(addr, rate, start, end))?;
    let (mut probes, lost) =
        join_bounded(vec![prober], end + PROBE_TIMEOUT + Duration::from_secs(5));
    let measured = start.elapsed();
    let busy_in_window = busy.completed.load(Ordering::Relaxed) - busy_before;
    stop.store(true, Ordering::Relaxed);
    let Some(mut p) = probes.pop().filter(|_| lost == 0) else {
        return Err("the probe thread did not finish in time (or panicked)".into());
    };

    let join_deadline = Instant::now() + JOIN_TIMEOUT;
    let (ws_reports, ws_lost) = join_bounded(ws_threads, join_deadline);
    let (_, busy_lost) = join_bounded(busy_threads, join_deadline);

    // The report.
    p.ok.sort_unstable();
    p.all.sort_unstable();
    let errors = p.errors();
    let (p50, p99, max) = (
        percentile(&p.all, 50.0),
        percentile(&p.all, 99.0),
        p.all.last().copied().unwrap_or_default(),
    );
    let mut ws = WsReport::default();
    for r in ws_reports {
        ws.asked += r.asked;
        ws.connected += r.connected;
        ws.failed_attempts += r.failed_attempts;
        ws.handshakes.extend(r.handshakes);
        ws.dropped += r.dropped;
        ws.held_at_end += r.held_at_end;
        ws.frames_received += r.frames_received;
        ws.errors.extend(r.errors);
    }
    ws.handshakes.sort_unstable();
    let busy_done = busy.completed.load(Ordering::Relaxed);
    let occupancy = (busy_in_window * BUSY_JOB_MS) as f64
        / (workers as f64 * measured.as_secs_f64() * 1000.0)
        * 100.0;

    println!("keel /healthz benchmark against {}", o.addr);
    println!(
        "duration: {:.2} s measured (setup {:.2} s); schedule {} probes/s open loop",
        measured.as_secs_f64(),
        setup.as_secs_f64(),
        o.rate
    );
    println!(
        "healthz probes: {}  errors: {}  p50: {:.3} ms  p99: {:.3} ms  max: {:.3} ms",
        p.sent,
        errors,
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "  errors by kind: {} timeout(s) (> {} s), {} non-200, {} I/O; probes sent > 1 ms late: {} (max lateness {:.3} ms)",
        p.timeouts,
        PROBE_TIMEOUT.as_secs(),
        p.bad_status,
        p.io_errors,
        p.late,
        ms(p.max_lateness)
    );
    if !p.ok.is_empty() && errors > 0 {
        println!(
            "  successful probes only: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(percentile(&p.ok, 50.0)),
            ms(percentile(&p.ok, 99.0)),
            ms(p.ok.last().copied().unwrap_or_default())
        );
    }
    println!(
        "ws clients: {} held to the end of {} asked ({} connected, {} dropped, {} failed handshake attempt(s), {} frame(s) received)",
        ws.held_at_end, o.clients, ws.connected, ws.dropped, ws.failed_attempts, ws.frames_received
    );
    if !ws.handshakes.is_empty() {
        println!(
            "  handshake (connect → hello-ok): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(percentile(&ws.handshakes, 50.0)),
            ms(percentile(&ws.handshakes, 99.0)),
            ms(ws.handshakes.last().copied().unwrap_or_default())
        );
    }
    for e in ws.errors.iter().take(5) {
        println!("  ws error: {e}");
    }
    println!(
        "busy jobs (cpu, {BUSY_JOB_MS} ms, {submitters} submitters, {workers} cpu workers): {busy_done} completed ({busy_in_window} in the window, ≈ {occupancy:.0}% of the cpu workers), 503s (queue full): {}, other errors: {}",
        busy.queue_full.load(Ordering::Relaxed),
        busy.other.load(Ordering::Relaxed)
    );
    if ws_lost + busy_lost > 0 {
        println!(
            "warning: {ws_lost} ws thread(s) and {busy_lost} busy thread(s) did not finish within {} s",
            JOIN_TIMEOUT.as_secs()
        );
    }
    let target = ms(p99) <= 2.0 && ms(max) <= 25.0 && errors == 0;
    println!(
        "target (p99 <= 2 ms, max <= 25 ms, zero errors): {}",
        if target { "met" } else { "NOT met" }
    );

    let load_ok = ws.held_at_end >= o.clients && busy_in_window > 0;
    if !load_ok {
        println!(
            "LOAD NOT ESTABLISHED: the figures above were not measured under the intended load"
        );
        return Ok(2);
    }
    Ok(if errors == 0 { 0 } else { 1 })
}

fn main() {
    bench_main("health", parse_opts, usage, run);
}
