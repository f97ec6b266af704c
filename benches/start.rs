//! Start-up time: from spawning `keel serve` to the first `GET /readyz` answered 200, on an
//! empty state directory and, with `--state DIR`, on that state (e.g. the 9 × 184 × 200 state
//! `scripts/bench-usage.sh --keep` leaves), with the config `--config FILE` if given (the
//! generated state's own names an api keel does not run, which keeps `/readyz` at 503).
//! `scripts/bench-start.sh` builds and runs it.
//!
//! Each start takes a free loopback port (bound and released), spawns
//! `keel serve --port P --state-dir D` without the caller's KEEL_* settings, its log to
//! `<work>/server.log` (empty states are `<work>/state/empty-N`), and connects every 0.1 ms until keel accepts; a 503 (still starting)
//! is asked again while its reasons say `starting`; any other 503 ends the bench, quoting
//! them. The time runs from just before the spawn to the 200's head. keel is then
//! stopped with SIGTERM and waited for, so that each start begins with no keel running. The
//! empty state is a new directory each time (the first start of a fresh install: token
//! generated, queue created); the given state is the same directory each time (a restart).
//!
//! ```text
//! start --keel PATH --work DIR [--state DIR [--config FILE]] [--runs N (11)] [--warmup N (1)]
//! ```
//! Target: median <= 10 ms on each state. Exit status: 0 measured (targets met or not), 2 could
//! not measure (keel did not start, answered something else, or would not stop).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;

const TARGET_MS: f64 = 10.0;
/// One start must answer 200 within this.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Between connection attempts, and between a 503 and the next ask.
const POLL: Duration = Duration::from_micros(100);
/// A stop (SIGTERM) must end keel within this; then it is killed and the run fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

struct Opts {
    keel: PathBuf,
    work: PathBuf,
    state: Option<PathBuf>,
    config: Option<PathBuf>,
    runs: usize,
    warmup: usize,
}

fn usage() -> &'static str {
    "usage: start --keel PATH --work DIR [--state DIR [--config FILE]] [--runs N (11)] [--warmup N (1)]"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut keel, mut work, mut state, mut config) = (None, None, None, None);
    let (mut runs, mut warmup) = (11usize, 1usize);
    for (name, value) in flags(
        &[
            "--keel", "--work", "--state", "--config", "--runs", "--warmup",
        ],
        &[],
    )? {
        match name.as_str() {
            "--keel" => keel = Some(PathBuf::from(value)),
            "--work" => work = Some(PathBuf::from(value)),
            "--state" => state = Some(PathBuf::from(value)),
            "--config" => config = Some(PathBuf::from(value)),
            "--runs" => runs = number(&name, &value)? as usize,
            _ => warmup = number(&name, &value)? as usize,
        }
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Opts {
        keel: keel.ok_or("--keel is required")?,
        work: work.ok_or("--work is required")?,
        state,
        config,
        runs,
        warmup,
    })
}

/// A port nobody listens on now (bound and released: another process could take it before
/// keel does, which a loopback bench on this machine does not expect).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `GET /readyz`: its status and body, or None if keel does not accept connections yet.
fn ask_readyz(addr: SocketAddr) -> Result<Option<(u16, String)>, String> {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(format!("connect {addr}: {e}")),
    };
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(START_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    // keel closes the connection after the answer.
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(Some((status, body.to_string())))
}

/// One start on `state` (with `config`, if given): the time from spawn to the first 200 of
/// /readyz.
fn one_start(o: &Opts, state: &Path, config: Option<&Path>) -> Result<Duration, String> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = fs::File::create(o.work.join("server.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&o.keel);
    cmd.arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(state);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    for k in testkit::serve::CALLER_SETTINGS {
        cmd.env_remove(k);
    }
    if std::env::var_os("KEEL_LOG").is_none() {
        cmd.env("KEEL_LOG", "info");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.keel.display()))?;
    let pid_file = o.work.join("keel.pid");
    let mut keel = Keel {
        child,
        log: testkit::log::Log::File {
            path: o.work.join("server.log"),
            poll: Duration::from_millis(5),
        },
        pid_file,
        addr,
        token: String::new(),
    };
    let took = loop {
        match ask_readyz(addr)? {
            Some((200, _)) => break t0.elapsed(),
            None => {}
            Some((503, body)) if body.contains("\"starting\"") => {}
            Some((status, body)) => {
                return Err(format!(
                    "/readyz answered {status}: {body} (a config keel flags keeps it from \
                     200: give --config)"
                ));
            }
        }
        if t0.elapsed() > START_TIMEOUT {
            return Err(format!(
                "no 200 from /readyz within {} s; keel's log:\n{}",
                START_TIMEOUT.as_secs(),
                log_tail(&keel.log.text())
            ));
        }
        if let Ok(Some(status)) = keel.child.try_wait() {
            return Err(format!(
                "keel exited ({status}); its log:\n{}",
                log_tail(&keel.log.text())
            ));
        }
        thread::sleep(POLL);
    };
    // The scripts' cleanup kills this pid should the bench die and leave keel behind.
    let _ = fs::write(&keel.pid_file, format!("{}\n", keel.child.id()));
    let (status, _, killed) = stop_keel(&mut keel, STOP_TIMEOUT);
    if killed || !status.is_some_and(|s| s.success()) {
        return Err(format!(
            "keel did not stop cleanly after SIGTERM ({status:?}); its log:\n{}",
            log_tail(&keel.log.text())
        ));
    }
    Ok(took)
}

/// `runs` timed starts after `warmup` untimed ones; `state` gives each start's directory.
fn series(
    o: &Opts,
    config: Option<&Path>,
    state: impl Fn(usize) -> PathBuf,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(o.runs);
    for i in 0..o.warmup + o.runs {
        let t = one_start(o, &state(i), config)?;
        if i >= o.warmup {
            times.push(t);
        }
    }
    Ok(sorted(&times))
}

fn report(name: &str, times: &[Duration]) -> bool {
    let median = ms(percentile(times, 50.0));
    let ok = median <= TARGET_MS;
    println!(
        "{name:<28} median {median:6.2} ms  min {:6.2}  max {:6.2}  ({} starts)  target <= {TARGET_MS:.0} ms  {}",
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len(),
        verdict(ok)
    );
    ok
}

fn run(o: &Opts) -> Result<i32, String> {
    fs::create_dir_all(&o.work).map_err(|e| e.to_string())?;
    println!("start to /readyz 200 ({})", o.keel.display());
    let empty = series(o, None, |i| o.work.join("state").join(format!("empty-{i}")))?;
    report("empty state", &empty);
    if let Some(state) = &o.state {
        let given = series(o, o.config.as_deref(), |_| state.clone())?;
        report("the given state", &given);
    }
    Ok(0)
}

fn main() {
    bench_main("start", parse_opts, usage, run);
}
