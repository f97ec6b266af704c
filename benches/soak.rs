//! Soak: a steady mix of everything keel does, for as long as asked, against a release keel
//! that this binary starts itself — to show that memory, descriptors, threads, queues and
//! health latency stay flat over long uptime.
//!
//! `scripts/soak.sh DURATION` builds keel, `keel-gen-state` and this bench and runs `soak --keel
//! PATH --gen PATH --work DIR --duration-s N`. This binary then:
//!
//! 0. writes a synthetic OpenClaw state (`keel-gen-state`: 3 agents × 40 sessions × 100
//!    messages) to `DIR/state`, starts a fake model provider (the tests' fake, answering every
//!    call with a short stream) and a fake webhook receiver on loopback, adds both to the state's
//!    `keel.json` and starts `keel serve --port 0 --state-dir DIR/state`;
//! 1. drives, each from a thread of its own at a fixed rate until the duration is over:
//!    `/healthz` probes (latency recorded), usage queries (`sessions.usage`, `usage.cost`
//!    alternately, over HTTP), deliveries (`send` to the webhook channel, a key each), agent
//!    runs (a WebSocket client connects, `chat.send`s to one of 8 sessions, reads until the
//!    run's final event and leaves — one in four without a close frame), WebSocket clients
//!    that connect, ask `status` and leave (one in four abruptly), and the scheduler's mix: 50
//!    cron jobs every 1–5 s across 10 agents, added over HTTP at the start (kind `cron`);
//! 2. every `--sample-s` seconds samples keel's RSS, open descriptors and threads (`/proc`),
//!    its queue depths, jobs in flight, connections and outbound queue (`/metrics`), and the
//!    `/healthz` p50/p99/max of the probes in that window;
//! 3. at the end waits for every accepted delivery to reach the receiver, stops keel with
//!    SIGTERM, counts the cron jobs' receipts against their schedules (every slot due before
//!    the end must have exactly one receipt), and prints a row per minute, then per series the median, the least-squares slope
//!    per hour and the change that slope makes over the steady window (everything after
//!    `--warmup-s`), with a verdict: flat or growing.
//!
//! ```text
//! soak --keel PATH --gen PATH --work DIR --duration-s N [--sample-s 5] [--warmup-s 120]
//!      [--csv PATH]
//! ```
//! Exit status: 0 when every series was flat and keel answered everything; 1 when a series grew
//! or keel failed a request, lost a delivery or did not stop cleanly; 2 when the run could not
//! be set up.

use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;
use testkit::procfs;

// Its `tests` module is for the test harness: its imports go unused here.
#[path = "../tests/gateway/fake_provider.rs"]
#[allow(unused_imports)]
mod fake_provider;
use fake_provider::FakeProvider;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// One agent run, connect to final event.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// After the drive, until every accepted delivery arrived.
const DELIVERY_GRACE: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
const SECRET: &str = "soak-secret";
/// Sessions the runs take turns on.
const SESSIONS: u64 = 8;
/// Error messages printed as they happen; the rest are only counted.
const MAX_LOGGED: u64 = 20;

/// The drive: operations per second of each kind.
const PROBES_PER_S: f64 = 20.0;
const USAGE_PER_S: f64 = 2.0;
const SENDS_PER_S: f64 = 2.0;
const RUNS_PER_S: f64 = 1.0;
const WS_PER_S: f64 = 2.0;
/// The scheduler's mix: this many jobs, periods 1..=5 s, across this many agents.
const CRON_JOBS: u64 = 50;
const CRON_AGENTS: u64 = 10;

/// What "flat" allows over the steady window (the fitted change, first sample to last).
const FLAT_RSS_FRACTION: f64 = 0.10;
const FLAT_RSS_MIB: f64 = 8.0;
const FLAT_FDS: f64 = 4.0;
const FLAT_THREADS: f64 = 2.0;
const FLAT_QUEUE: f64 = 4.0;
const FLAT_P99_MS: f64 = 1.0;

struct Opts {
    keel: PathBuf,
    gen_state: PathBuf,
    work: PathBuf,
    duration: Duration,
    sample: Duration,
    warmup: Duration,
    csv: Option<PathBuf>,
    /// The kinds of operation driven (all by default; `--only run,ws` to find which one a
    /// growing series comes from).
    kinds: Vec<Kind>,
    /// Every rate multiplied by this (`--scale 0.5` halves the drive).
    scale: f64,
}

fn usage() -> &'static str {
    "usage: soak --keel PATH --gen PATH --work DIR --duration-s N [--sample-s 5] [--warmup-s 120] [--csv PATH] [--only KIND,...] [--scale F]
kinds: healthz, usage, send, run, ws, cron"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut keel, mut gen_state, mut work, mut csv) = (None, None, None, None);
    let (mut duration, mut sample, mut warmup) = (None, 5u64, None);
    let mut kinds = KINDS.to_vec();
    let mut scale = 1.0;
    for (name, value) in flags(
        &[
            "--keel",
            "--gen",
            "--work",
            "--duration-s",
            "--sample-s",
            "--warmup-s",
            "--csv",
            "--only",
            "--scale",
        ],
        &[],
    )? {
        match name.as_str() {
            "--keel" => keel = Some(PathBuf::from(value)),
            "--gen" => gen_state = Some(PathBuf::from(value)),
            "--work" => work = Some(PathBuf::from(value)),
            "--csv" => csv = Some(PathBuf::from(value)),
            "--scale" => {
                scale = value
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (0.01..=100.0).contains(f))
                    .ok_or_else(|| format!("--scale: expected 0.01..=100, got {value:?}"))?;
            }
            "--only" => {
                kinds = value
                    .split(',')
                    .map(|k| {
                        KINDS
                            .into_iter()
                            .find(|kind| kind.name() == k.trim())
                            .ok_or_else(|| format!("--only: unknown kind {k:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--duration-s" => duration = Some(number(&name, &value)?),
            "--sample-s" => sample = number(&name, &value)?,
            _ => warmup = Some(number(&name, &value)?),
        }
    }
    let duration = duration.ok_or("--duration-s is required")?;
    if !(10..=7 * 86_400).contains(&duration) {
        return Err("--duration-s must be within 10..=604800".into());
    }
    if !(1..=300).contains(&sample) || sample * 4 > duration {
        return Err("--sample-s must be within 1..=300 and at most a quarter of the run".into());
    }
    // By default the first tenth, at least the first 2 minutes when the run is long enough:
    // the usage index, the allocator's arenas and the retained runs settle in.
    let warmup = warmup.unwrap_or((duration / 10).max(120.min(duration / 4)));
    if warmup * 2 > duration {
        return Err("--warmup-s must be at most half the run".into());
    }
    Ok(Opts {
        keel: keel.ok_or("--keel is required")?,
        gen_state: gen_state.ok_or("--gen is required")?,
        work: work.ok_or("--work is required")?,
        duration: Duration::from_secs(duration),
        sample: Duration::from_secs(sample),
        warmup: Duration::from_secs(warmup),
        csv,
        kinds,
        scale,
    })
}

// ---------------------------------------------------------------------------------------------
// What the drivers count.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Probe,
    Usage,
    Send,
    Run,
    Ws,
    /// Not paced: the jobs are added once, and the scheduler runs them.
    Cron,
}

const KINDS: [Kind; 6] = [
    Kind::Probe,
    Kind::Usage,
    Kind::Send,
    Kind::Run,
    Kind::Ws,
    Kind::Cron,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Probe => "healthz",
            Kind::Usage => "usage",
            Kind::Send => "send",
            Kind::Run => "run",
            Kind::Ws => "ws",
            Kind::Cron => "cron",
        }
    }

    fn per_second(self) -> f64 {
        match self {
            Kind::Probe => PROBES_PER_S,
            Kind::Usage => USAGE_PER_S,
            Kind::Send => SENDS_PER_S,
            Kind::Run => RUNS_PER_S,
            Kind::Ws => WS_PER_S,
            // Jobs per second of runs: sum of 1/period over the jobs.
            Kind::Cron => (0..CRON_JOBS).map(|i| 1.0 / cron_period_s(i) as f64).sum(),
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 6],
    failed: [AtomicU64; 6],
    /// `/healthz` latencies of the current sample window.
    probes: Mutex<Vec<Duration>>,
    /// Idempotency keys of the accepted sends.
    sent: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self, k: Kind) {
        self.ok[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, k: Kind, msg: String) {
        let n = self.failed[k as usize].fetch_add(1, Ordering::Relaxed);
        if n < MAX_LOGGED {
            eprintln!("soak: {} failed: {msg}", k.name());
        }
    }

    fn count(&self, k: Kind) -> (u64, u64) {
        (
            self.ok[k as usize].load(Ordering::Relaxed),
            self.failed[k as usize].load(Ordering::Relaxed),
        )
    }
}

/// Calls `op(i)` for i = 0, 1, … at `per_second` until `stop`; a late call does not make the
/// next ones come in a burst.
fn paced(stop: &AtomicBool, per_second: f64, mut op: impl FnMut(u64)) {
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        op(i);
        i += 1;
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn drive(
    kind: Kind,
    rate: f64,
    keel_addr: std::net::SocketAddr,
    token: &str,
    t: &Tally,
    stop: &AtomicBool,
) {
    let mut http = Http::new(keel_addr);
    paced(stop, rate, |i| {
        let r = match kind {
            Kind::Probe => probe(&mut http, t),
            Kind::Usage => {
                let method = if i % 2 == 0 {
                    "sessions.usage"
                } else {
                    "usage.cost"
                };
                rpc(&mut http, token, RPC_TIMEOUT, method, &json!({})).map(drop)
            }
            Kind::Send => send(&mut http, token, i, t),
            Kind::Run => agent_run(keel_addr, token, i),
            Kind::Ws => ws_visit(keel_addr, token, i),
            Kind::Cron => Ok(()),
        };
        match r {
            Ok(()) => t.ok(kind),
            Err(e) => t.failed(kind, e),
        }
    });
}

fn probe(http: &mut Http, t: &Tally) -> Result<(), String> {
    let t0 = Instant::now();
    let r = http
        .request("GET", "/healthz", None, b"", PROBE_TIMEOUT)
        .map_err(|e| format!("GET /healthz: {e}"))?;
    let took = t0.elapsed();
    lock_ignoring_poison(&t.probes).push(took);
    if r.status != 200 {
        return Err(format!("GET /healthz: HTTP {}", r.status));
    }
    Ok(())
}

fn send(http: &mut Http, token: &str, i: u64, t: &Tally) -> Result<(), String> {
    let key = format!("soak-{i}");
    let params = json!({"channel": "webhook", "to": "soak", "message": format!("soak message {i}"),
                        "idempotencyKey": key});
    let v = rpc(http, token, RPC_TIMEOUT, "send", &params)?;
    if v["payload"]["status"] != "pending" {
        return Err(format!("send answered {v}"));
    }
    lock_ignoring_poison(&t.sent).push(key);
    Ok(())
}

fn cron_period_s(i: u64) -> u64 {
    1 + i % 5
}

/// A cron job added for the mix: its id, period and first slot's anchor.
struct CronJob {
    id: String,
    every_ms: i64,
    anchor_ms: i64,
}

/// Adds the scheduler's mix: [`CRON_JOBS`] jobs every 1–5 s across [`CRON_AGENTS`] agents.
fn add_cron_jobs(http: &mut Http, token: &str) -> Result<Vec<CronJob>, String> {
    (0..CRON_JOBS)
        .map(|i| {
            let every_ms = cron_period_s(i) * 1000;
            let params = json!({
                "name": format!("soak-{i}"),
                "agentId": format!("agent{}", i % CRON_AGENTS),
                "schedule": {"kind": "every", "everyMs": every_ms},
                "sessionTarget": "main",
                "payload": {"kind": "agentTurn", "message": format!("soak cron {i}")},
            });
            let v = rpc(http, token, RPC_TIMEOUT, "cron.add", &params)?;
            let p = &v["payload"];
            Ok(CronJob {
                id: p["id"].as_str().ok_or("cron.add: no id")?.to_string(),
                every_ms: every_ms as i64,
                anchor_ms: p["createdAtMs"]
                    .as_i64()
                    .ok_or("cron.add: no createdAtMs")?,
            })
        })
        .collect()
}

/// The cron jobs' receipts seen so far. keel keeps the newest 200 per job, so they are read
/// as they come (each file once, at every sample) rather than only at the end.
#[derive(Default)]
struct CronSeen {
    files: std::collections::HashSet<String>,
    /// (job id, scheduled slot) → receipts for it.
    slots: std::collections::HashMap<(String, i64), u64>,
    not_ok: u64,
}

impl CronSeen {
    fn scan(&mut self, state: &Path, jobs: &[CronJob]) {
        for j in jobs {
            let dir = state.join("cron/runs").join(&j.id);
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let Ok(v) = fs::read(e.path())
                    .map_err(drop)
                    .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(drop))
                else {
                    continue;
                };
                // A receipt is final once its run ended; a running one is read again later.
                if v["status"] == "running" || v["manual"] == true {
                    continue;
                }
                if !self.files.insert(format!("{}/{name}", j.id)) {
                    continue;
                }
                if v["status"] != "ok" {
                    self.not_ok += 1;
                }
                let slot = v["scheduledAtMs"].as_i64().unwrap_or(0);
                *self.slots.entry((j.id.clone(), slot)).or_default() += 1;
            }
        }
    }

    /// Slots counted against receipts: (slots due, run exactly once, missing, run twice or
    /// more, receipts not `ok`).
    fn count(&self, jobs: &[CronJob], until_ms: i64) -> (u64, u64, u64, u64, u64) {
        let (mut due, mut once, mut missing, mut twice) = (0, 0, 0, 0);
        for j in jobs {
            let mut slot = j.anchor_ms + j.every_ms;
            while slot <= until_ms {
                due += 1;
                match self.slots.get(&(j.id.clone(), slot)).copied().unwrap_or(0) {
                    0 => missing += 1,
                    1 => once += 1,
                    _ => twice += 1,
                }
                slot += j.every_ms;
            }
        }
        (due, once, missing, twice, self.not_ok)
    }
}

/// Leaves: with a close frame, or (one in four) by dropping the socket.
fn leave(mut ws: Ws, i: u64) {
    if i % 4 != 3 {
        let _ = ws.sock.close(None);
        let _ = ws.sock.flush();
    }
}

fn agent_run(addr: std::net::SocketAddr, token: &str, i: u64) -> Result<(), String> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut ws = Ws::connect(addr, token)?;
    let params = json!({"sessionKey": format!("agent:main:soak-{}", i % SESSIONS),
                        "message": format!("soak run {i}"), "idempotencyKey": format!("soak-run-{i}")});
    let id = ws.send("chat.send", &params)?;
    let mut early = Vec::new();
    let res = ws.wait_res(&id, deadline, |_, text| early.push(text.to_string()))?;
    let run_id = res["payload"]["runId"]
        .as_str()
        .ok_or_else(|| format!("chat.send answered {res}"))?
        .to_string();
    let is_final = |text: &str| -> Option<Result<(), String>> {
        let v: Value = serde_json::from_str(text).ok()?;
        if v["event"] != "chat" || v["payload"]["runId"] != run_id.as_str() {
            return None;
        }
        match v["payload"]["state"].as_str() {
            Some("final") => Some(Ok(())),
            Some(s @ ("error" | "aborted")) => Some(Err(format!("run {run_id} ended {s}: {v}"))),
            _ => None,
        }
    };
    for text in &early {
        if let Some(r) = is_final(text) {
            leave(ws, i);
            return r;
        }
    }
    loop {
        match ws.read(deadline)? {
            Some((_, text)) => {
                if let Some(r) = is_final(&text) {
                    leave(ws, i);
                    return r;
                }
            }
            None if Instant::now() >= deadline => {
                return Err(format!("run {run_id} did not end within {RUN_TIMEOUT:?}"));
            }
            None => {}
        }
    }
}

fn ws_visit(addr: std::net::SocketAddr, token: &str, i: u64) -> Result<(), String> {
    let deadline = Instant::now() + WS_TIMEOUT;
    let mut ws = Ws::connect(addr, token)?;
    let id = ws.send("status", &json!({}))?;
    let res = ws.wait_res(&id, deadline, |_, _| {})?;
    if res["ok"] != true {
        return Err(format!("status answered {res}"));
    }
    leave(ws, i);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Samples.

#[derive(Clone, Copy, Default)]
struct Sample {
    t_s: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
    /// Jobs waiting in every pool and lane.
    queued: f64,
    in_flight: f64,
    connections: f64,
    /// Outbound messages pending or being sent.
    outbound: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    probes: usize,
}

/// The series a verdict is given on: name, unit, how to read it, the allowed change.
type Series = (
    &'static str,
    &'static str,
    fn(&Sample) -> f64,
    fn(f64) -> f64,
);

const SERIES: [Series; 6] = [
    (
        "rss",
        "MiB",
        |s| s.rss_mib,
        |median| (median * FLAT_RSS_FRACTION).max(FLAT_RSS_MIB),
    ),
    ("fds", "", |s| s.fds, |_| FLAT_FDS),
    ("threads", "", |s| s.threads, |_| FLAT_THREADS),
    ("queued jobs", "", |s| s.queued, |_| FLAT_QUEUE),
    ("outbound queue", "", |s| s.outbound, |_| FLAT_QUEUE),
    ("healthz p99", "ms", |s| s.p99_ms, |_| FLAT_P99_MS),
];

/// The sum of every line of `series` (with any labels) in a `/metrics` text.
fn metric_sum(text: &str, series: &str, only: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(series)
                && matches!(l.as_bytes().get(series.len()), Some(b'{' | b' '))
                && only.is_none_or(|o| l.contains(o))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn take_sample(keel: &Keel, http: &mut Http, t: &Tally, t_s: f64) -> Result<Sample, String> {
    let pid = keel.child.id();
    let fds =
        procfs::fd_count(pid).map_err(|e| format!("cannot read keel's descriptors: {e}"))? as f64;
    let reply = http
        .request("GET", "/metrics", Some(&keel.token), b"", RPC_TIMEOUT)
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if reply.status != 200 {
        return Err(format!("GET /metrics: HTTP {}", reply.status));
    }
    let m = String::from_utf8_lossy(&reply.body);
    let probes = sorted(&std::mem::take(&mut *lock_ignoring_poison(&t.probes)));
    Ok(Sample {
        t_s,
        rss_mib: procfs::status(pid, "VmRSS")? as f64 / 1024.0,
        fds,
        threads: procfs::status(pid, "Threads")? as f64,
        queued: metric_sum(&m, "keel_queue_depth", None),
        in_flight: metric_sum(&m, "keel_jobs_in_flight", None),
        connections: metric_sum(&m, "keel_connections", None),
        outbound: metric_sum(&m, "keel_delivery_queue", Some("state=\"pending\""))
            + metric_sum(&m, "keel_delivery_queue", Some("state=\"sending\"")),
        p50_ms: ms(percentile(&probes, 50.0)),
        p99_ms: ms(percentile(&probes, 99.0)),
        max_ms: ms(probes.last().copied().unwrap_or_default()),
        probes: probes.len(),
    })
}

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn median_of(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A sample's columns: name in the CSV, heading in the table, value, decimals.
fn columns(s: &Sample) -> [(&'static str, &'static str, f64, usize); 11] {
    [
        ("t_s", "t s", s.t_s, 0),
        ("rss_mib", "rss MiB", s.rss_mib, 1),
        ("fds", "fds", s.fds, 0),
        ("threads", "threads", s.threads, 0),
        ("queued", "queued", s.queued, 0),
        ("in_flight", "inflight", s.in_flight, 0),
        ("connections", "conns", s.connections, 0),
        ("outbound", "outbound", s.outbound, 0),
        ("p50_ms", "p50 ms", s.p50_ms, 3),
        ("p99_ms", "p99 ms", s.p99_ms, 3),
        ("max_ms", "max ms", s.max_ms, 3),
    ]
}

fn csv(samples: &[Sample]) -> String {
    let head: Vec<&str> = columns(&Sample::default()).iter().map(|c| c.0).collect();
    let mut text = format!("{},probes\n", head.join(","));
    for s in samples {
        let row: Vec<String> = columns(s)
            .iter()
            .map(|&(_, _, v, d)| format!("{v:.d$}"))
            .collect();
        text.push_str(&format!("{},{}\n", row.join(","), s.probes));
    }
    text
}

fn print_rows(samples: &[Sample], o: &Opts) {
    println!(
        "== samples (one a minute; every {} s in the CSV) ==",
        o.sample.as_secs()
    );
    let head: Vec<String> = columns(&Sample::default())
        .iter()
        .map(|c| format!("{:>9}", c.1))
        .collect();
    println!("{}", head.join(""));
    let every = (60 / o.sample.as_secs()).max(1) as usize;
    for (i, s) in samples.iter().enumerate() {
        if i % every == every - 1 || i == samples.len() - 1 {
            let row: Vec<String> = columns(s)
                .iter()
                .map(|&(_, _, v, d)| format!("{v:>9.d$}"))
                .collect();
            println!("{}", row.join(""));
        }
    }
}

/// Prints each series' figures over the steady window; true when all are flat.
fn print_slopes(samples: &[Sample], o: &Opts) -> bool {
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= o.warmup.as_secs_f64())
        .collect();
    let (Some(first), Some(last)) = (steady.first(), steady.last()) else {
        println!("no samples after the warm-up");
        return false;
    };
    let span_h = (last.t_s - first.t_s) / 3600.0;
    println!();
    println!(
        "== slopes over the steady window {:.0} s .. {:.0} s ({} samples; warm-up {} s left out) ==",
        first.t_s,
        last.t_s,
        steady.len(),
        o.warmup.as_secs()
    );
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}  verdict",
        "series", "median", "min", "max", "slope /h", "change", "allowed"
    );
    let mut flat = true;
    for (name, unit, get, allowed) in SERIES {
        let ys: Vec<f64> = steady.iter().map(|s| get(s)).collect();
        let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.t_s / 3600.0, get(s))).collect();
        let per_h = slope(&points);
        let change = per_h * span_h;
        let median = median_of(ys.clone());
        let allow = allowed(median);
        let ok = change <= allow;
        flat &= ok;
        let min = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{:<15} {:>10.2} {:>10.2} {:>10.2} {:>12.3} {:>12.3} {:>10.2}  {} {}",
            name,
            median,
            min,
            max,
            per_h,
            change,
            allow,
            if ok { "flat" } else { "GROWING" },
            unit
        );
    }
    flat
}

// ---------------------------------------------------------------------------------------------
// The run.

/// The generated state's `keel.json` (its prices) with the fake provider and webhook added.
fn keel_config(
    state: &Path,
    provider: &FakeProvider,
    receiver: &Receiver,
) -> Result<Value, String> {
    let path = state.join("keel.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // keel does not speak OpenAI's Responses API, which the generated config names for its
    // prices; these providers are never called, so any API keel speaks keeps their prices.
    if let Some(providers) = config["models"]["providers"].as_object_mut() {
        for p in providers.values_mut() {
            if p["api"] == "openai-responses" {
                p["api"] = json!("openai-completions");
            }
        }
    }
    config["models"]["providers"]["soak"] = json!({
        "baseUrl": provider.base_url(), "apiKey": "soak-key", "api": "openai-completions",
        "models": [{"id": "m", "cost": {"input": 1.0, "output": 2.0}}],
    });
    // `main` (the runs' sessions) stays the default; the cron jobs' agents come beside it.
    let agents: Vec<Value> = std::iter::once(json!({"id": "main", "default": true}))
        .chain((0..CRON_AGENTS).map(|i| json!({"id": format!("agent{i}")})))
        .collect();
    config["agents"] = json!({"defaults": {"model": {"primary": "soak/m"}}, "list": agents});
    config["channels"] = json!({"webhook": {"url": receiver.url(), "secret": SECRET}});
    config["gateway"] = json!({"drainTimeoutMs": 10000, "drainGraceMs": 2000});
    Ok(config)
}

fn generate_state(o: &Opts, state: &Path) -> Result<(), String> {
    let out = Command::new(&o.gen_state)
        .args([
            "--agents",
            "3",
            "--sessions",
            "40",
            "--messages",
            "100",
            "--seed",
            "7",
        ])
        .arg("--out")
        .arg(state)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", o.gen_state.display()))?;
    if !out.status.success() {
        return Err(format!(
            "keel-gen-state failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn run(o: &Opts) -> Result<i32, String> {
    let state = o.work.join("state");
    generate_state(o, &state)?;
    let provider = FakeProvider::start("openai-completions");
    let receiver = Receiver::start(SECRET)?;
    let config = keel_config(&state, &provider, &receiver)?;
    let mut keel = start_keel(&Launch {
        exe: &o.keel,
        work: &o.work,
        config: &config,
        also_unset: &[],
        ready: "usage index built",
        ready_required: true,
        timeout: START_TIMEOUT,
    })?;
    eprintln!(
        "soak: keel {} on {}, driving for {} s",
        keel.child.id(),
        keel.addr,
        o.duration.as_secs()
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cron_jobs = if o.kinds.contains(&Kind::Cron) {
        add_cron_jobs(&mut Http::new(keel.addr), &keel.token)?
    } else {
        Vec::new()
    };
    let drivers: Vec<_> = o
        .kinds
        .iter()
        .filter(|k| **k != Kind::Cron)
        .map(|&kind| {
            let (t, s, addr, token) = (tally.clone(), stop.clone(), keel.addr, keel.token.clone());
            let rate = kind.per_second() * o.scale;
            thread::Builder::new()
                .name(kind.name().into())
                .spawn(move || drive(kind, rate, addr, &token, &t, &s))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut http = Http::new(keel.addr);
    let mut sample_errors = 0u64;
    let mut cron_seen = CronSeen::default();
    let mut next = t0 + o.sample;
    while next <= t0 + o.duration {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        cron_seen.scan(&state, &cron_jobs);
        match take_sample(&keel, &mut http, &tally, t0.elapsed().as_secs_f64()) {
            Ok(s) => samples.push(s),
            Err(e) => {
                sample_errors += 1;
                eprintln!("soak: sample failed: {e}");
            }
        }
        if let Ok(Some(status)) = keel.child.try_wait() {
            return Err(format!("keel exited during the soak ({status})"));
        }
        next += o.sample;
    }
    stop.store(true, Ordering::Release);
    let (_, abandoned) = join_bounded(drivers, Instant::now() + RUN_TIMEOUT + RPC_TIMEOUT);

    // Every accepted send must arrive, once.
    let sent = std::mem::take(&mut *lock_ignoring_poison(&tally.sent));
    let grace = Instant::now() + DELIVERY_GRACE;
    let (lost, duplicated, bad_signature) = loop {
        let got = receiver.snapshot();
        let lost = sent.iter().filter(|k| !got.by_key.contains_key(*k)).count();
        if lost == 0 || Instant::now() >= grace {
            let dup = got.by_key.values().filter(|(_, n)| *n > 1).count();
            break (lost, dup, got.bad_signature);
        }
        drop(got);
        thread::sleep(Duration::from_millis(100));
    };
    // Slots due up to a period before the stop were all decided by now.
    let cron_until = now_ms() - 6_000;
    let (exit, stop_took, killed) = stop_keel(&mut keel, STOP_TIMEOUT);
    cron_seen.scan(&state, &cron_jobs);
    let (slots_due, slots_once, slots_missing, slots_twice, cron_not_ok) =
        cron_seen.count(&cron_jobs, cron_until);

    if let Some(path) = &o.csv {
        let text = csv(&samples);
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    print_rows(&samples, o);
    let flat = print_slopes(&samples, o);
    println!();
    println!("== operations (ok / failed) ==");
    let mut failures = 0;
    for &k in o.kinds.iter().filter(|k| **k != Kind::Cron) {
        let (ok, failed) = tally.count(k);
        failures += failed;
        println!(
            "{:<8} {:>8} / {:<6} ({:.1}/s asked)",
            k.name(),
            ok,
            failed,
            k.per_second() * o.scale
        );
    }
    println!(
        "deliveries: {} accepted, {lost} lost, {duplicated} duplicated, {bad_signature} bad signatures",
        sent.len()
    );
    println!(
        "keel stopped on SIGTERM in {} ms: {}",
        stop_took.as_millis(),
        match (exit, killed) {
            (_, true) => "still running, killed".to_string(),
            (Some(s), _) => s.to_string(),
            (None, _) => "unknown".to_string(),
        }
    );
    if !cron_jobs.is_empty() {
        println!(
            "cron: {} jobs, {slots_due} slots due, {slots_once} ran exactly once, \
             {slots_missing} missing, {slots_twice} ran more than once, {cron_not_ok} receipts \
             not ok",
            cron_jobs.len()
        );
    }
    let stopped_clean = !killed && exit.is_some_and(|s| s.success());
    let correct = failures == 0
        && lost == 0
        && duplicated == 0
        && bad_signature == 0
        && sample_errors == 0
        && abandoned == 0
        && slots_missing == 0
        && slots_twice == 0
        && cron_not_ok == 0
        && stopped_clean;
    println!(
        "verdict: {} and {}",
        if flat { "flat" } else { "GROWING" },
        if correct {
            "every request answered"
        } else {
            "FAILURES (see above)"
        }
    );
    Ok(if flat && correct { 0 } else { 1 })
}

fn main() {
    bench_main("soak", parse_opts, usage, run)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
