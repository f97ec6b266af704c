//! The benches' side of the harness (`testkit/` is what they share with the tests): a minimal
//! keep-alive HTTP/1.1 client with a deadline on every exchange, the benches' WebSocket
//! handshake, a webhook receiver, percentile helpers, the command line, and starting and
//! stopping a keel of a bench's own.
// Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub use crate::testkit::http::{HttpError, Response};
use crate::testkit::http::{io_error, read_response_ahead, remaining};
use crate::testkit::log;
pub use crate::testkit::log::Log;
use crate::testkit::serve::{self, LogTo};
pub use crate::testkit::ws::Ws;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketConfig;

/// One keep-alive connection, reopened after any error or a `Connection: close`.
pub struct Http {
    pub addr: SocketAddr,
    pub stream: Option<TcpStream>,
    pub buf: Vec<u8>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(64 << 10),
        }
    }

    /// One request, bounded by `timeout` in all (connect included).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let deadline = Instant::now() + timeout;
        match self.exchange(method, path, token, body, deadline) {
            Ok((reply, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(reply)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    pub fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(Response, bool), HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, remaining(deadline)?)
                .map_err(|e| io_error("connect", &e))?;
            s.set_nodelay(true)
                .map_err(|e| io_error("set_nodelay", &e))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(HttpError::Io("no connection".into()));
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if method == "POST" || !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| io_error("set_write_timeout", &e))?;
        stream.write_all(&wire).map_err(|e| io_error("write", &e))?;
        read_response_ahead(stream, &mut self.buf, deadline)
    }
}

/// `POST /api/rpc/<method>`: the answer of a 200, anything else an error naming the method.
pub fn rpc(
    http: &mut Http,
    token: &str,
    timeout: Duration,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    let body = params.to_string();
    let r = http
        .request(
            "POST",
            &format!("/api/rpc/{method}"),
            Some(token),
            body.as_bytes(),
            timeout,
        )
        .map_err(|e| format!("{method}: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "{method}: HTTP {}: {}",
            r.status,
            body_snippet(&r.body)
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "{method}: unreadable answer ({e}): {}",
            body_snippet(&r.body)
        )
    })
}

pub fn body_snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(samples: &[Duration]) -> Vec<Duration> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    s
}

pub fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Open-loop pacing: waits until the `i`th of `rate` events a second from `start` is due and
/// returns when that was; None once `stop` is set or `hard_end` has passed. Sleeps in slices
/// of at most 5 ms so that `stop` is seen.
pub fn wait_due(
    start: Instant,
    i: u64,
    rate: u64,
    stop: &AtomicBool,
    hard_end: Instant,
) -> Option<Instant> {
    let due = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Acquire) || now >= hard_end {
            return None;
        }
        if due <= now {
            return Some(due);
        }
        thread::sleep((due - now).min(Duration::from_millis(5)));
    }
}

/// Waits (bounded) for threads to end; returns what they gave back and how many were left.
pub fn join_bounded<T>(handles: Vec<JoinHandle<T>>, deadline: Instant) -> (Vec<T>, usize) {
    let mut out = Vec::new();
    let mut abandoned = 0;
    for h in handles {
        while !h.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            match h.join() {
                Ok(v) => out.push(v),
                Err(_) => abandoned += 1,
            }
        } else {
            abandoned += 1;
        }
    }
    (out, abandoned)
}

/// A bench's `main`: a bad command line and a run that could not be made both exit 2, with
/// the reason on stderr; otherwise the run's own exit status.
pub fn bench_main<O>(
    name: &str,
    parse_opts: fn() -> Result<O, String>,
    usage: fn() -> &'static str,
    run: fn(&O) -> Result<i32, String>,
) -> ! {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{name} bench: {e}\n{}", usage());
            std::process::exit(2);
        }
    };
    let code = match run(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name} bench: {e}");
            2
        }
    };
    // `exit` does not flush stdout, and the scripts print the bench's figures from it.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// keel's log.

/// The end of keel's log that a bench's error shows.
pub fn log_tail(log: &str) -> String {
    log::tail(log, 15)
}

/// Waits for `listening on 127.0.0.1:PORT` in `log` and returns the port. `exited` says how
/// keel ended (e.g. "keel exited (signal 9)") once it has: then there is no point in waiting
/// on.
pub fn wait_listening(
    log: &Log,
    timeout: Duration,
    exited: impl FnMut() -> Option<String>,
) -> Result<u16, String> {
    serve::wait_listening(log, timeout, exited)
        .map_err(|e| format!("{e}; its log:\n{}", log_tail(&log.text())))
}

// ---------------------------------------------------------------------------------------------
// A keel of the bench's own.

/// keel, killed (SIGKILL) when dropped if it still runs: an error path never leaves it behind.
pub struct Keel {
    pub child: Child,
    /// `server.log`, where the scripts look.
    pub log: Log,
    pub pid_file: PathBuf,
    pub addr: SocketAddr,
    pub token: String,
}

impl Drop for Keel {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.pid_file);
    }
}

/// What differs between the benches that start their own keel.
pub struct Launch<'a> {
    pub exe: &'a Path,
    /// Gets `state/` (with `keel.json`), `server.log` and `keel.pid`, where the scripts look.
    pub work: &'a Path,
    pub config: &'a Value,
    /// Settings of the bench's own feature that must not leak in from the caller either.
    pub also_unset: &'a [&'a str],
    /// The log line that says keel's boot work is over: nothing is measured before it.
    pub ready: &'a str,
    /// Whether a keel that never logs `ready` (within `timeout`) is an error or merely run.
    pub ready_required: bool,
    pub timeout: Duration,
}

/// Starts `keel serve --port 0` on `work/state` with `config`, and waits until it listens, its
/// token is on disk and it logged `ready`. A warning or error at start is an error: the
/// bench's config is then not what keel runs.
pub fn start_keel(l: &Launch) -> Result<Keel, String> {
    let state = l.work.join("state");
    serve::write_config(&state, l.config)?;
    let mut cmd = serve::serve_command(Command::new(l.exe), &state);
    for k in l.also_unset {
        cmd.env_remove(k);
    }
    if std::env::var_os("KEEL_LOG").is_none() {
        cmd.env("KEEL_LOG", "info");
    }
    let (child, log) = serve::spawn(
        &mut cmd,
        LogTo::File {
            path: &l.work.join("server.log"),
            poll: Duration::from_millis(5),
        },
    )?;
    // The scripts' cleanup kills this pid should the bench die and leave keel behind.
    let pid_file = l.work.join("keel.pid");
    let mut keel = Keel {
        child,
        log,
        pid_file,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: String::new(),
    };
    fs::write(&keel.pid_file, format!("{}\n", keel.child.id()))
        .map_err(|e| format!("cannot write the pid file: {e}"))?;

    let deadline = Instant::now() + l.timeout;
    let port = wait_listening(&keel.log, l.timeout, || match keel.child.try_wait() {
        Ok(Some(status)) => Some(format!("keel exited ({status})")),
        _ => None,
    })?;
    keel.addr = SocketAddr::from(([127, 0, 0, 1], port));
    keel.token = serve::read_token(&state);
    if keel.token.is_empty() {
        return Err(format!(
            "no token in {}",
            state.join("gateway.token").display()
        ));
    }
    if keel.log.wait_any(&[l.ready], deadline, || false).is_none() && l.ready_required {
        return Err(format!(
            "keel did not log '{}' within {} s; its log:\n{}",
            l.ready,
            l.timeout.as_secs(),
            log_tail(&keel.log.text())
        ));
    }
    let issues: Vec<String> = keel
        .log
        .text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(String::from)
        .collect();
    if !issues.is_empty() {
        return Err(format!(
            "keel complained at start (the bench's config?):\n{}",
            issues.join("\n")
        ));
    }
    Ok(keel)
}

/// SIGTERM, then SIGKILL after `timeout`: the exit status (None if it had to be killed), how
/// long it took, and whether SIGKILL was needed.
pub fn stop_keel(keel: &mut Keel, timeout: Duration) -> (Option<ExitStatus>, Duration, bool) {
    let t0 = Instant::now();
    if let Ok(Some(s)) = keel.child.try_wait() {
        return (Some(s), Duration::ZERO, false);
    }
    let pid = rustix::process::Pid::from_child(&keel.child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    while t0.elapsed() < timeout {
        if let Ok(Some(s)) = keel.child.try_wait() {
            return (Some(s), t0.elapsed(), false);
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = keel.child.kill();
    let _ = keel.child.wait();
    (None, t0.elapsed(), true)
}

/// The `--name value` / `--name=value` pairs of the command line whose names are in `known`,
/// in order, and the `switches` given (with an empty value). Anything else is skipped:
/// `cargo bench` passes `--bench`.
pub fn flags(known: &[&str], switches: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if switches.contains(&arg.as_str()) {
            out.push((arg, String::new()));
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if !known.contains(&name.as_str()) {
            continue;
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{name} needs a value"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// A flag's value as a number, or an error naming the flag.
pub fn number(name: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("{name}: expected a number, got {value:?}"))
}

// ---------------------------------------------------------------------------------------------
// The benches' WebSocket client: blocking with short read slices, or polled (non-blocking) for
// fan-out.

/// Every WebSocket handshake, request write and `res` wait.
pub const WS_TIMEOUT: Duration = Duration::from_secs(10);
/// A blocking read waits this long before the caller's deadline is checked again.
pub const READ_SLICE: Duration = Duration::from_millis(20);
/// Each client's read buffer (see [`Ws::connect`]).
pub const READ_BUFFER: usize = 16 << 10;

impl Ws {
    /// Opens a connection and passes the `connect` handshake as client `bench`; every read
    /// then waits [`READ_SLICE`] at most.
    pub fn connect(addr: SocketAddr, token: &str) -> Result<Ws, String> {
        let deadline = Instant::now() + WS_TIMEOUT;
        let stream = TcpStream::connect_timeout(&addr, WS_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(WS_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(WS_TIMEOUT))
            .map_err(|e| e.to_string())?;
        // tungstenite zero-fills up to `read_buffer_size` before every read (one that finds
        // nothing too): the default 128 KiB made this client's memset the busiest thing on
        // the machine during fan-out.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let mut ws = Ws::upgrade(stream, &addr.to_string(), &[], Some(config), deadline)?;
        ws.sock
            .get_ref()
            .set_read_timeout(Some(READ_SLICE))
            .map_err(|e| e.to_string())?;
        if ws.challenge["event"] != "connect.challenge" {
            return Err(format!("expected connect.challenge, got {}", ws.challenge));
        }
        let params = json!({
            "minProtocol": 3, "maxProtocol": 4,
            "client": {"id": "bench", "version": "0", "platform": "linux", "mode": "cli"},
            "auth": {"token": token},
        });
        let res = ws.hello(&params, deadline)?;
        if res["ok"] != true {
            return Err(format!("connect refused: {res}"));
        }
        Ok(ws)
    }
}

// ---------------------------------------------------------------------------------------------
// A webhook receiver on loopback: a thread per connection; it answers every request `200 OK`
// with a small JSON body, checks `X-Keel-Signature` against its secret and records, per
// idempotency key, the first arrival's `Instant` and how many times the key came.

#[derive(Default)]
pub struct Received {
    /// Per idempotency key: the first arrival and how many requests carried it.
    pub by_key: HashMap<String, (Instant, u32)>,
    pub requests: u64,
    /// Requests without a readable body or key, or with a bad signature.
    pub malformed: u64,
    pub bad_signature: u64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(secret: &str) -> Result<Receiver, String> {
        let secret: Arc<str> = Arc::from(secret);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let got = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let accept = thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(s) = conn else { continue };
                    let g = g.clone();
                    let secret = secret.clone();
                    let _ = thread::Builder::new()
                        .name("receiver-conn".into())
                        .spawn(move || serve_conn(s, &g, &secret));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Receiver {
            addr,
            got,
            stop,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn snapshot(&self) -> MutexGuard<'_, Received> {
        lock_ignoring_poison(&self.got)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop up.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Serves requests on one connection until it closes (keel sends `Connection: close`, but
/// keep-alive works too).
fn serve_conn(s: TcpStream, got: &Mutex<Received>, secret: &str) {
    let _ = s.set_read_timeout(Some(RECEIVER_TIMEOUT));
    let _ = s.set_write_timeout(Some(RECEIVER_TIMEOUT));
    let _ = s.set_nodelay(true);
    let Ok(w) = s.try_clone() else { return };
    let mut w = w;
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (mut len, mut close) = (0usize, false);
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h.is_empty() {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_string());
                if n == "content-length" {
                    len = v.parse().unwrap_or(0);
                } else if n == "connection" {
                    close = v.eq_ignore_ascii_case("close");
                }
                headers.insert(n, v);
            }
        }
        if len > 1 << 20 {
            return;
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let now = Instant::now();
        let key = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["idempotencyKey"].as_str().map(String::from));
        let sig_ok = match (
            headers.get("x-keel-timestamp"),
            headers.get("x-keel-signature"),
        ) {
            (Some(ts), Some(sig)) => {
                *sig == keel::delivery::channels::webhook_signature(secret, ts, &body)
            }
            _ => false,
        };
        {
            let mut g = lock_ignoring_poison(got);
            g.requests += 1;
            if !sig_ok {
                g.bad_signature += 1;
            }
            match key {
                Some(k) if line.starts_with("POST /hook ") => {
                    g.by_key
                        .entry(k)
                        .and_modify(|(_, n)| *n += 1)
                        .or_insert((now, 1));
                }
                _ => g.malformed += 1,
            }
        }
        let reply = r#"{"ok":true}"#;
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{reply}",
            reply.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let _ = w.flush();
        if close {
            return;
        }
    }
}

/// The receiver's read and write timeout on a connection.
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
