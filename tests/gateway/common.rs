//! The tests' side of the harness: starts the real `keel` binary on 127.0.0.1:0 with its own
//! state directory, captures its log, and speaks HTTP and WebSocket to it as a client would.
//! The machinery is the one the benchmarks use too (`testkit/`); this adds what only the tests
//! want: options, fixtures, the CLI runner, and helpers that assert (`#[track_caller]`) instead
//! of returning errors. Every wait is bounded; a test that would hang fails instead.

pub use crate::testkit::http::{Response, read_response};
use crate::testkit::log::Log;
pub use crate::testkit::metrics::metric;
use crate::testkit::ws::Msg;
pub use crate::testkit::ws::Ws;
use crate::testkit::{procfs, serve, wait};
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;

pub const BOUND: Duration = Duration::from_secs(20);

/// The keel binary the tests run: the one cargo built for them, or the one `KEEL_BIN` names
/// (e.g. the static binary of `scripts/build-static.sh`, which `.ci/run` checks this way).
pub fn keel_exe() -> PathBuf {
    match std::env::var_os("KEEL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_keel")),
    }
}

/// Options for one gateway process.
#[derive(Default, Clone)]
pub struct Opts {
    /// Written to `<state>/keel.json` (picked up without `--config`).
    pub config: Option<Value>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub test_hooks: bool,
    /// A directory copied in as the state directory before start (e.g. a fixture).
    pub state_from: Option<PathBuf>,
    /// The file-creation mask keel starts with (through `sh -c 'umask …; exec keel …'`).
    pub umask: Option<u32>,
    /// Start under this descriptor limit (soft and hard, set by `sh -c 'ulimit -n N'`).
    pub nofile: Option<u64>,
}

impl Opts {
    pub fn hooks() -> Opts {
        Opts {
            test_hooks: true,
            ..Opts::default()
        }
    }

    pub fn config(mut self, c: Value) -> Opts {
        self.config = Some(c);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn umask(mut self, mask: u32) -> Opts {
        self.umask = Some(mask);
        self
    }

    pub fn nofile(mut self, n: u64) -> Opts {
        self.nofile = Some(n);
        self
    }

    /// Starts on a copy of `fixtures/<name>/state`.
    pub fn fixture(mut self, name: &str) -> Opts {
        self.state_from = Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(name)
                .join("state"),
        );
        self
    }
}

/// Copies a directory tree, keeping the files' modification times (keel reads them: a
/// session without an entry was last updated when its transcript was last written).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            let modified = e.metadata().unwrap().modified().unwrap();
            let f = std::fs::File::options().write(true).open(&target).unwrap();
            f.set_modified(modified).unwrap();
        }
    }
}

pub struct Gateway {
    child: Child,
    pub port: u16,
    pub token: String,
    pub dir: tempfile::TempDir,
    log: Log,
}

impl Gateway {
    #[track_caller]
    pub fn start(opts: Opts) -> Gateway {
        Gateway::start_in(opts, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts a new process on the state directory of one that has exited.
    #[track_caller]
    pub fn restart(mut self, opts: Opts) -> Gateway {
        assert!(
            self.wait_exit(BOUND).is_some(),
            "the old process must have exited"
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Gateway::start_in(opts, dir)
    }

    #[track_caller]
    fn start_in(opts: Opts, dir: tempfile::TempDir) -> Gateway {
        let state = dir.path().join("state");
        if let Some(from) = &opts.state_from {
            copy_dir(from, &state);
        }
        if let Some(c) = &opts.config {
            serve::write_config(&state, c).unwrap();
        }
        // A shell sets the mask and limit asked for, then execs keel: the pid stays keel's, so
        // signals and `pid()` still reach keel itself.
        let mut prelude = String::new();
        if let Some(mask) = opts.umask {
            prelude.push_str(&format!("umask {mask:03o} && "));
        }
        if let Some(n) = opts.nofile {
            prelude.push_str(&format!("ulimit -n {n} && "));
        }
        let program = if prelude.is_empty() {
            Command::new(keel_exe())
        } else {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{prelude}exec \"$0\" \"$@\""))
                .arg(keel_exe());
            c
        };
        let mut cmd = serve::serve_command(program, &state);
        cmd.args(&opts.args);
        cmd.env("KEEL_LOG", "info");
        if opts.test_hooks {
            cmd.env("KEEL_TEST_HOOKS", "1");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let (mut child, log) = serve::spawn(&mut cmd, serve::LogTo::Pipe).expect("spawn keel");
        let listening = serve::wait_listening(&log, BOUND, || {
            let status = child.try_wait().ok().flatten()?;
            Some(format!("keel exited ({status})"))
        });
        let mut g = Gateway {
            child,
            port: 0,
            token: serve::read_token(&state),
            dir,
            log,
        };
        g.port = match listening {
            Ok(port) => port,
            Err(e) => panic!("keel did not start ({e}):\n{}", g.log_text()),
        };
        // The delivery queue opens on a worker at boot; its log line says it is there.
        g.wait_log("delivery queue", BOUND)
            .unwrap_or_else(|| panic!("no delivery queue line:\n{}", g.log_text()));
        // So are the idempotency keys of runs; new runs wait for them.
        g.wait_log("idempotency keys (runs)", BOUND)
            .unwrap_or_else(|| panic!("no runs keys line:\n{}", g.log_text()));
        if opts.state_from.is_none() {
            // Boot work (loading the usage index) is over before a test counts jobs. A state
            // a previous process left transcripts in (a restart) is built rather than found
            // up to date.
            g.wait_log_any(&["usage index up to date", "usage index built"], BOUND)
                .unwrap_or_else(|| panic!("no index line:\n{}", g.log_text()));
            if !g.token.is_empty() {
                g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 0.0);
            }
        }
        g
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, bound: Duration) -> Option<String> {
        self.wait_log_any(&[needle], bound)
    }

    /// Waits for a log line containing any of `needles`; returns the first such line.
    pub fn wait_log_any(&self, needles: &[&str], bound: Duration) -> Option<String> {
        self.log.wait_any(needles, Instant::now() + bound, || false)
    }

    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Waits until keel's log pipe is closed (it exited, and everything it wrote is read):
    /// the whole log of a process that was killed.
    pub fn wait_log_closed(&self, bound: Duration) -> bool {
        let end = Instant::now() + bound;
        while !self.log.closed() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, within `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn http(&self, raw: &str) -> Response {
        http_raw(&self.addr(), raw.as_bytes())
    }

    pub fn get(&self, path: &str) -> Response {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ))
    }

    pub fn get_auth(&self, path: &str) -> Response {
        self.http(&format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", self.token))
    }

    /// `POST /api/rpc/<method>` with the token.
    pub fn rpc(&self, method: &str, params: Value) -> Response {
        rpc_with(&self.addr(), &self.token, method, &params)
    }

    /// Calls `method` over HTTP on its own thread.
    pub fn spawn_rpc(&self, method: &str, params: Value) -> std::thread::JoinHandle<Response> {
        let (addr, token, method) = (self.addr(), self.token.clone(), method.to_string());
        std::thread::spawn(move || rpc_with(&addr, &token, &method, &params))
    }

    /// The value of the series (`name{labels}`) in `/metrics` now.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.get_auth("/metrics").text(), series)
    }

    /// Waits until the series (`name{labels}`) in `/metrics` reads `value`.
    #[track_caller]
    pub fn wait_metric(&self, series: &str, value: f64) {
        eventually(BOUND, || (self.metric(series) == Some(value)).then_some(()));
    }

    /// A WebSocket that has passed the handshake.
    #[track_caller]
    pub fn ws(&self) -> Ws {
        let mut ws = Ws::open(&self.addr());
        let hello = ws.connect(json!({"token": self.token}), 3, 4);
        assert_eq!(hello["ok"], true, "{hello}");
        ws
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the tests read of a response.
impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A connection from the loopback address `from` (any 127.x.y.z): for tests that need a
/// client address of their own, as the failure limiter counts per address.
#[track_caller]
pub fn connect_from(from: std::net::Ipv4Addr, addr: &str) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let dst: std::net::SocketAddr = addr.parse().unwrap();
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &std::net::SocketAddrV4::new(from, 0)).unwrap();
    connect(&fd, &dst).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(BOUND)).unwrap();
    s
}

/// [`http_raw`] from the loopback address `from`.
pub fn http_raw_from(from: std::net::Ipv4Addr, addr: &str, raw: &[u8]) -> Response {
    let mut s = connect_from(from, addr);
    s.write_all(raw).unwrap();
    read_response(&mut s).expect("a response")
}

/// Sends raw bytes and reads one response (the server is asked to close, or we read by length).
pub fn http_raw(addr: &str, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s).expect("a response")
}

pub fn rpc_with(addr: &str, token: &str, method: &str, params: &Value) -> Response {
    let body = params.to_string();
    let raw = format!(
        "POST /api/rpc/{method} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, raw.as_bytes())
}

/// What a read produced.
#[derive(Debug)]
pub enum Got {
    Frame(Value),
    Closed(Option<u16>),
}

/// The tests' use of the WebSocket client: every read bounded by [`BOUND`], and a failure is a
/// panic at the caller.
impl Ws {
    #[track_caller]
    pub fn open(addr: &str) -> Ws {
        Ws::on(TcpStream::connect(addr).expect("connect"), addr, &[])
    }

    /// A WebSocket from the loopback address `from`, its upgrade request carrying `headers`.
    #[track_caller]
    pub fn open_from(from: std::net::Ipv4Addr, addr: &str, headers: &[(&str, &str)]) -> Ws {
        Ws::on(connect_from(from, addr), addr, headers)
    }

    #[track_caller]
    fn on(stream: TcpStream, addr: &str, headers: &[(&str, &str)]) -> Ws {
        stream.set_read_timeout(Some(BOUND)).unwrap();
        match Ws::upgrade(stream, addr, headers, None, Instant::now() + BOUND) {
            Ok(ws) => ws,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.sock
            .send(Message::text(text.to_string()))
            .expect("send");
    }

    pub fn send_req(&mut self, method: &str, params: Value) -> String {
        self.send(method, &params).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `connect` and returns its `res`.
    pub fn connect(&mut self, auth: Value, min: u64, max: u64) -> Value {
        let params = json!({
            "minProtocol": min, "maxProtocol": max,
            "client": {"id": "test", "version": "1", "platform": "linux", "mode": "cli"},
            "caps": [], "auth": auth, "role": "operator", "scopes": ["operator.read"],
        });
        self.hello(&params, Instant::now() + BOUND)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next frame or the close code.
    #[track_caller]
    pub fn next(&mut self) -> Got {
        match self.try_next() {
            Some(got) => got,
            None => panic!("no frame within {BOUND:?}"),
        }
    }

    /// The next frame or the close code; None when the socket's read timeout passed first.
    fn try_next(&mut self) -> Option<Got> {
        match self.read_msg() {
            Ok(Some(Msg::Text(t))) => Some(Got::Frame(
                serde_json::from_str(t.as_str()).expect("frame is JSON"),
            )),
            Ok(Some(Msg::Close(f))) => Some(Got::Closed(f.map(|f| u16::from(f.code)))),
            Ok(None) => None,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                Some(Got::Closed(None))
            }
            Err(e) => {
                eprintln!("ws error: {e}");
                Some(Got::Closed(Some(u16::MAX)))
            }
        }
    }

    /// The first frame for which `pred` holds, skipping the others (`pred` sees every frame
    /// in order). Fails if the socket closes first or nothing matched within `bound` overall.
    #[track_caller]
    pub fn until(&mut self, bound: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + bound;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.sock.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.try_next() {
                Some(Got::Frame(f)) if pred(&f) => break Some(f),
                Some(Got::Frame(_)) => {}
                Some(Got::Closed(c)) => panic!("closed ({c:?}) before the awaited frame"),
                None => break None,
            }
        };
        self.sock.get_ref().set_read_timeout(Some(BOUND)).unwrap();
        found.unwrap_or_else(|| panic!("no awaited frame within {bound:?}"))
    }

    /// The `res` for `id`, skipping events.
    #[track_caller]
    pub fn res(&mut self, id: &str) -> Value {
        loop {
            match self.next() {
                Got::Frame(f) if f["type"] == "res" && f["id"] == id => return f,
                Got::Frame(_) => {}
                Got::Closed(c) => panic!("closed ({c:?}) before the res for {id}"),
            }
        }
    }

    /// A run's events up to its end — its `chat` event in state `final`, `error` or
    /// `aborted`, which comes last — skipping every other frame.
    #[track_caller]
    pub fn run_events(&mut self, run_id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        self.until(BOUND, |f| {
            if f["type"] != "event" || f["payload"]["runId"] != run_id {
                return false;
            }
            events.push(f.clone());
            f["event"] == "chat"
                && matches!(
                    f["payload"]["state"].as_str(),
                    Some("final" | "error" | "aborted")
                )
        });
        events
    }

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_req(method, params);
        self.res(&id)
    }

    /// The close code, skipping frames.
    #[track_caller]
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Got::Closed(c) = self.next() {
                return c;
            }
        }
    }
}

/// Defined with the fake provider, which `benches/agent.rs` shares.
pub use crate::fake_provider::within;

/// Runs the `keel` binary (not the server) with `args` and `env` (`KEEL_CONFIG` and
/// `KEEL_STATE_DIR` are cleared first), and returns its output. Fails, killing it, if it has
/// not exited within [`BOUND`].
#[track_caller]
pub fn keel_cli<'a>(
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    env: impl IntoIterator<Item = (&'a str, impl AsRef<OsStr>)>,
) -> Output {
    let mut cmd = Command::new(keel_exe());
    cmd.args(args)
        .env_remove("KEEL_CONFIG")
        .env_remove("KEEL_STATE_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    // Drained on their own threads so a full pipe cannot block the child.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "keel did not exit within {BOUND:?}; killed. Output:\n{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Polls `f` until it returns Some, within `bound`.
#[track_caller]
pub fn eventually<T>(bound: Duration, f: impl FnMut() -> Option<T>) -> T {
    match wait::poll(Instant::now() + bound, Duration::from_millis(20), f) {
        Some(v) => v,
        None => panic!("condition not met within {bound:?}"),
    }
}

/// Files in a directory.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Open descriptors of a process.
pub fn fds(pid: u32) -> usize {
    procfs::fd_count(pid).unwrap_or(0)
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`: the peak).
#[track_caller]
pub fn status_kb(pid: u32, key: &str) -> u64 {
    match procfs::status(pid, key) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}
