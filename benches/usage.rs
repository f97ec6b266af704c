//! Sessions and usage on an incident-sized state: the cold index build, `/healthz` while it
//! runs, warm `sessions.usage` / `usage.cost` latency, latency right after an append, and peak
//! RSS — against a keel that `scripts/bench-usage.sh` has *just* started on a state generated
//! by `keel-gen-state` with no saved index.
//!
//! The script starts keel (stderr to `--log`) and this binary right after it; this binary waits
//! for `listening on 127.0.0.1:PORT` in the log and at once starts probing:
//!
//! 1. **cold build**: `GET /healthz` (no auth) at `--rate` per second on an open-loop schedule
//!    (probe `i` is due at `start + i/rate`; a late probe is sent at once and timed from its
//!    send; 5 s timeout each) until a `usage.cost {}` answer says `cacheStatus.status ==
//!    "fresh"`. That call is made as soon as keel logs `usage index built: …` (the log is
//!    polled every millisecond), and every 250 ms anyway, as a dashboard would. keel's own
//!    figure is the `T` of its one line `usage index built: N files read (X MB) in T ms`; the
//!    wall time runs from `--started-at` (when the script launched keel) to the fresh answer.
//! 2. **warm**: after one call of its own, `--calls` sequential calls each of `sessions.usage
//!    {"agentScope":"all", "limit":1000}`, `sessions.usage {"agentScope":"all"}` and
//!    `usage.cost {}` over one keep-alive connection. `usage.cost`'s totals must equal the
//!    generator's (`--figures`): tokens and `missingCostEntries` exactly, costs within 0.01.
//!    Then the same for the Usage page's exact request ([`dashboard_body`]: `agentScope: "all"`,
//!    `limit: 1000`, `groupBy: "family"`, `mode: "specific"`, `timeZone: "America/New_York"`
//!    with its `utcOffset`, and `startDate`/`endDate` covering the data with a day to spare):
//!    its size, and its totals, which must equal the generator's. Repeated, it is answered
//!    again from the answer keel kept (nothing changed in between).
//! 3. **after an append**: `--appends` times, one assistant message with usage (input 1000,
//!    output 100, recorded cost 0.0045) is appended to `--append-file` (a live transcript), then
//!    `usage.cost {}` is called at once and timed; its `totals.input` must have grown by exactly
//!    1000 per line appended (and `totalTokens` by 1100, `totalCost` by 0.0045). Then the same
//!    with the Usage page's request: each one is computed anew (the index changed).
//! 4. **`/healthz` while the Usage page's request is called in a loop** for `--loop-secs`
//!    (default 5), one call after another over a WebSocket (as the page calls it), an append
//!    before every other call so that half of them are computed anew: probes at `--rate` per
//!    second as in 1.
//! 5. **peak RSS**: `VmHWM` of `/proc/<--pid>/status` at the end.
//!
//! ```text
//! usage --log FILE --state-dir DIR --figures FILE --pid PID [--started-at EPOCH_SECONDS]
//!       [--page-cache cold|warm] [--append-file FILE] [--rate 500] [--calls 50] [--appends 20]
//!       [--loop-secs 5]
//! ```
//! Exit status: 0 when it ran correctly (a missed latency or memory target is printed as MISS,
//! not an error); 1 when an answer was wrong (totals that do not match, an RPC error, a failed
//! `/healthz` probe); 2 when the run could not be set up or measured (keel not started, no
//! fresh index in time, a saved index loaded instead of a cold build, …).

use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;
use testkit::{procfs, serve, wait};

/// keel must log `listening on` within this.
const PORT_TIMEOUT: Duration = Duration::from_secs(15);
/// The cold build must have produced a fresh answer within this.
const FRESH_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the log is read while waiting (for the port, for the build line).
const LOG_POLL: Duration = Duration::from_millis(1);
/// `usage.cost` is called at least this often while the build runs.
const STATUS_POLL: Duration = Duration::from_millis(250);
/// Each `/healthz` probe must be answered within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Each RPC call must be answered within this (usage queries have a 2 s deadline in keel).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages printed as they happen; the rest are only counted.
const MAX_LOGGED: u64 = 10;

/// The appended line's usage: input, output, total tokens and recorded cost.
const APPEND_INPUT: u64 = 1000;
const APPEND_TOTAL_TOKENS: u64 = 1100;
const APPEND_COST: f64 = 0.0045;

// Targets of the issue "Sessions and usage" (2-core machine).
const TARGET_BUILD_MS: f64 = 1500.0;
const TARGET_HEALTH_P99_MS: f64 = 2.0;
const TARGET_HEALTH_MAX_MS: f64 = 25.0;
const TARGET_QUERY_MS: f64 = 20.0;
const TARGET_RSS_MIB: f64 = 64.0;

const BUILD_LINE: &str = "usage index built: ";

struct Opts {
    log: PathBuf,
    state_dir: PathBuf,
    figures: PathBuf,
    pid: u32,
    started_at: Option<SystemTime>,
    page_cache: String,
    append_file: Option<PathBuf>,
    rate: u64,
    calls: usize,
    appends: usize,
    loop_secs: u64,
}

fn usage() -> &'static str {
    "usage: usage --log FILE --state-dir DIR --figures FILE --pid PID [--started-at EPOCH_SECONDS] \
     [--page-cache cold|warm] [--append-file FILE] [--rate N (500)] [--calls N (50)] [--appends N (20)] \
     [--loop-secs N (5)]"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut log, mut state_dir, mut figures, mut pid) = (None, None, None, None);
    let (mut started_at, mut append_file) = (None, None);
    let mut page_cache = "unknown".to_string();
    let (mut rate, mut calls, mut appends, mut loop_secs) = (500u64, 50usize, 20usize, 5u64);
    for (name, value) in flags(
        &[
            "--log",
            "--state-dir",
            "--figures",
            "--pid",
            "--started-at",
            "--page-cache",
            "--append-file",
            "--rate",
            "--calls",
            "--appends",
            "--loop-secs",
        ],
        &[],
    )? {
        match name.as_str() {
            "--log" => log = Some(PathBuf::from(value)),
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--figures" => figures = Some(PathBuf::from(value)),
            "--pid" => pid = Some(number(&name, &value)? as u32),
            "--started-at" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--started-at: expected epoch seconds, got {value:?}")
                    })?;
                started_at = Some(UNIX_EPOCH + Duration::from_secs_f64(secs));
            }
            "--page-cache" => page_cache = value,
            "--append-file" => append_file = Some(PathBuf::from(value)),
            "--rate" => rate = number(&name, &value)?,
            "--calls" => calls = number(&name, &value)? as usize,
            "--loop-secs" => loop_secs = number(&name, &value)?,
            _ => appends = number(&name, &value)? as usize,
        }
    }
    if rate == 0 || rate > 100_000 {
        return Err("--rate must be within 1..=100000".into());
    }
    if calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    Ok(Opts {
        log: log.ok_or("--log is required")?,
        state_dir: state_dir.ok_or("--state-dir is required")?,
        figures: figures.ok_or("--figures is required")?,
        pid: pid.filter(|&p| p > 0).ok_or("--pid is required")?,
        started_at,
        page_cache,
        append_file,
        rate,
        calls,
        appends,
        loop_secs,
    })
}

/// One authenticated RPC over HTTP: the payload of an `ok` answer, the body size and the time
/// from sending the request to having the whole body (JSON parsing not included).
struct Answer {
    payload: Value,
    bytes: usize,
    took: Duration,
}

fn rpc(http: &mut Http, token: &str, method: &str, body: &str) -> Result<Answer, String> {
    let t0 = Instant::now();
    let reply = http
        .request(
            "POST",
            &format!("/api/rpc/{method}"),
            Some(token),
            body.as_bytes(),
            CALL_TIMEOUT,
        )
        .map_err(|e| format!("{method} {body}: {e} after {:.1} ms", ms(t0.elapsed())))?;
    let took = t0.elapsed();
    if reply.status != 200 {
        return Err(format!(
            "{method} {body}: HTTP {}: {}",
            reply.status,
            body_snippet(&reply.body)
        ));
    }
    let mut v: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("{method} {body}: answer is not JSON: {e}"))?;
    if v["ok"] != true {
        return Err(format!(
            "{method} {body}: not ok: {}",
            body_snippet(&reply.body)
        ));
    }
    Ok(Answer {
        payload: v["payload"].take(),
        bytes: reply.body.len(),
        took,
    })
}

/// One call over a WebSocket, checking only that its `res` says ok (other frames skipped).
fn ws_unparsed(ws: &mut Ws, method: &str, params: &Value) -> Result<(), String> {
    let id = ws.send(method, params)?;
    let ok = format!("{{\"type\":\"res\",\"id\":\"{id}\",\"ok\":true");
    let res = format!("{{\"type\":\"res\",\"id\":\"{id}\"");
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match ws.read(deadline)? {
            Some((_, text)) if text.starts_with(&ok) => return Ok(()),
            Some((_, text)) if text.starts_with(&res) => {
                return Err(format!("{method}: {}", body_snippet(text.as_bytes())));
            }
            Some(_) => {}
            None if Instant::now() >= deadline => {
                return Err(format!("{method}: no answer in time"));
            }
            None => {}
        }
    }
}

fn cache_status(payload: &Value) -> &str {
    payload["cacheStatus"]["status"].as_str().unwrap_or("?")
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// p50, p99 and max of some durations.
fn spread(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort_unstable();
    (
        percentile(&s, 50.0),
        percentile(&s, 99.0),
        s.last().copied().unwrap_or_default(),
    )
}

const TOKEN_KEYS: [&str; 6] = [
    "input",
    "output",
    "cacheRead",
    "cacheWrite",
    "totalTokens",
    "missingCostEntries",
];
const COST_KEYS: [&str; 5] = [
    "totalCost",
    "inputCost",
    "outputCost",
    "cacheReadCost",
    "cacheWriteCost",
];

/// Differences between keel's totals and the generator's: tokens exactly, costs within 0.01.
fn compare_totals(keel: &Value, want: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in TOKEN_KEYS {
        match (keel[k].as_u64(), want[k].as_u64()) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => out.push(format!("{k}: keel {a:?}, generator {b:?}")),
        }
    }
    for k in COST_KEYS {
        match (keel[k].as_f64(), want[k].as_f64()) {
            (Some(a), Some(b)) if (a - b).abs() <= 0.01 => {}
            (a, b) => out.push(format!("{k}: keel {a:?}, generator {b:?}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The gateway process and its log.

/// True while `pid` runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => !matches!(state, "Z" | "X" | "x"),
        None => false,
    }
}

/// keel's log, which the script sends to `--log`.
fn keel_log(o: &Opts) -> Log {
    Log::File {
        path: o.log.clone(),
        poll: LOG_POLL,
    }
}

/// Waits for `listening on 127.0.0.1:PORT` in the log.
fn wait_for_port(o: &Opts) -> Result<u16, String> {
    wait_listening(&keel_log(o), PORT_TIMEOUT, || {
        (!alive(o.pid)).then(|| format!("keel (pid {}) exited", o.pid))
    })
}

/// keel's `usage index built: N files read (X MB) in T ms; …` line.
struct BuildLine {
    files: u64,
    mb: f64,
    ms: u64,
    text: String,
}

fn parse_build_lines(log: &str) -> Vec<BuildLine> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(i) = line.find(BUILD_LINE) else {
            continue;
        };
        let rest = &line[i + BUILD_LINE.len()..];
        let parsed = (|| {
            let (files, rest) = rest.split_once(" files read (")?;
            let (mb, rest) = rest.split_once(" MB) in ")?;
            let (t, _) = rest.split_once(" ms")?;
            Some((files.parse().ok()?, mb.parse().ok()?, t.parse().ok()?))
        })();
        if let Some((files, mb, ms)) = parsed {
            out.push(BuildLine {
                files,
                mb,
                ms,
                text: line[i..].to_string(),
            });
        }
    }
    out
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    Ok((procfs::status(pid, "VmHWM")?, procfs::status(pid, "VmRSS")?))
}

// ---------------------------------------------------------------------------------------------
// /healthz probes during the build.

#[derive(Default)]
struct ProbeReport {
    sent: u64,
    /// Every probe's time, errors included (a timeout counts as its full wait).
    all: Vec<Duration>,
    errors: u64,
    late: u64,
    max_lateness: Duration,
    window: Duration,
}

/// Probes on an open-loop schedule from `start` until `stop` is set (or `hard_end`).
fn probe(
    addr: SocketAddr,
    rate: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    hard_end: Instant,
) -> ProbeReport {
    let mut r = ProbeReport::default();
    let mut http = Http::new(addr);
    let mut logged = 0u64;
    for i in 0u64.. {
        let Some(due) = wait_due(start, i, rate, &stop, hard_end) else {
            break;
        };
        let late = Instant::now().saturating_duration_since(due);
        if late > Duration::from_millis(1) {
            r.late += 1;
        }
        r.max_lateness = r.max_lateness.max(late);
        let t0 = Instant::now();
        let res = http.request("GET", "/healthz", None, b"", PROBE_TIMEOUT);
        let took = t0.elapsed();
        r.sent += 1;
        r.all.push(took);
        let failure = match res {
            Ok(reply) if reply.status == 200 => None,
            Ok(reply) => {
                http.stream = None;
                Some(format!(
                    "HTTP {}: {}",
                    reply.status,
                    body_snippet(&reply.body)
                ))
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(msg) = failure {
            r.errors += 1;
            if logged < MAX_LOGGED {
                eprintln!("healthz probe: {msg} after {:.3} ms", ms(took));
            }
            logged += 1;
        }
    }
    r.window = start.elapsed();
    r
}

// ---------------------------------------------------------------------------------------------
// Appending.

/// `2026-11-21T13:51:33.110Z` from ms since the epoch.
fn iso_from_ms(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn append_line(path: &Path, n: usize) -> Result<(), String> {
    let t = now_ms();
    let line = format!(
        "{{\"type\":\"message\",\"id\":\"bench-{n}\",\"timestamp\":\"{}\",\"message\":{{\"role\":\"assistant\",\"provider\":\"anthropic\",\"model\":\"claude-sonnet-4-5\",\"timestamp\":{t},\"content\":[{{\"type\":\"text\",\"text\":\"bench\"}}],\"usage\":{{\"input\":{APPEND_INPUT},\"output\":100,\"cacheRead\":0,\"cacheWrite\":0,\"totalTokens\":{APPEND_TOTAL_TOKENS},\"cost\":{{\"input\":0.003,\"output\":0.0015,\"cacheRead\":0,\"cacheWrite\":0,\"total\":{APPEND_COST}}}}}}}}}\n",
        iso_from_ms(t)
    );
    if path.extension().is_some_and(|x| x == "sqlite") {
        return append_row(path, line.trim_end());
    }
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {} to append: {e}", path.display()))?;
    f.write_all(line.as_bytes())
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// Appends an event to the first session (by id) of an OpenClaw agent database, as OpenClaw
/// does: one transaction, next `seq` (`scripts/bench-usage.sh --store sqlite`).
fn append_row(db: &Path, line: &str) -> Result<(), String> {
    let c =
        rusqlite::Connection::open(db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    c.execute(
        "INSERT INTO transcript_events (session_id, seq, event_json, created_at) \
         SELECT session_id, max(seq) + 1, ?1, 0 FROM transcript_events \
         WHERE session_id = (SELECT min(session_id) FROM transcript_events)",
        [line],
    )
    .map_err(|e| format!("cannot append to {}: {e}", db.display()))?;
    Ok(())
}

/// The first live transcript (`*.jsonl`) of agent `main`, by name.
fn pick_transcript(state_dir: &Path) -> Result<PathBuf, String> {
    let dir = state_dir.join("agents").join("main").join("sessions");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| format!("no *.jsonl transcript in {}", dir.display()))
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Latency {
    label: &'static str,
    samples: Vec<Duration>,
    bytes: usize,
}

impl Latency {
    fn line(&self) -> String {
        let (p50, p99, max) = spread(&self.samples);
        // Which call was the slowest (1-based): the first ones may overlap keel's index save.
        let slowest = self
            .samples
            .iter()
            .position(|&d| d == max)
            .map_or(0, |i| i + 1);
        format!(
            "{:<44} n={:<3} median {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms (call #{slowest})  response {:>9} bytes",
            self.label,
            self.samples.len(),
            ms(p50),
            ms(p99),
            ms(max),
            self.bytes
        )
    }
}

/// Failures that make the answers wrong (exit 1), as opposed to a run that could not be made.
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    fn push(&mut self, msg: String) {
        if self.0.len() < 50 {
            eprintln!("usage bench: {msg}");
        }
        self.0.push(msg);
    }
}

fn run(o: &Opts) -> Result<i32, String> {
    let figures: Value = serde_json::from_slice(
        &fs::read(&o.figures).map_err(|e| format!("cannot read {}: {e}", o.figures.display()))?,
    )
    .map_err(|e| format!("{} is not JSON: {e}", o.figures.display()))?;
    let want = figures["totals"].clone();
    if !want.is_object() {
        return Err(format!("{} has no totals object", o.figures.display()));
    }
    let mut wrong = Wrong::default();

    // ---- 1. the cold build, and /healthz while it runs --------------------------------------
    let port = wait_for_port(o)?;
    let t_port = Instant::now();
    let port_wall = SystemTime::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let hard_end = t_port + FRESH_TIMEOUT + Duration::from_secs(5);
        let rate = o.rate;
        thread::Builder::new()
            .name("probe".into())
            .spawn(move || probe(addr, rate, t_port, stop, hard_end))
            .map_err(|e| format!("cannot spawn the probe thread: {e}"))?
    };
    // From here on every early return must stop the prober first.
    let fresh = wait_fresh(o, addr, t_port);
    stop.store(true, Ordering::Release);
    let probes = join_bounded(
        vec![prober],
        Instant::now() + PROBE_TIMEOUT + Duration::from_secs(2),
    )
    .0
    .pop();
    let (token, fresh) = fresh?;
    let Some(probes) = probes else {
        return Err("the probe thread did not finish in time (or panicked)".into());
    };

    let log = keel_log(o).text();
    if log.contains("usage index loaded:") {
        return Err(
            "keel loaded a saved usage index: this was not a cold build (delete usage-index.bin)"
                .into(),
        );
    }
    let builds = parse_build_lines(&log);
    let Some(build) = builds.first() else {
        return Err(format!(
            "the index is fresh but keel logged no '{BUILD_LINE}…' line; its log:\n{}",
            log_tail(&log)
        ));
    };

    // ---- 2. warm latency, and the totals ------------------------------------------------------
    let mut http = Http::new(addr);
    let dashboard = dashboard_body(&figures)?;
    let kinds: [(&'static str, &str, &str); 4] = [
        (DASHBOARD_LABEL, "sessions.usage", &dashboard),
        (
            "sessions.usage {agentScope:all, limit:1000}",
            "sessions.usage",
            r#"{"agentScope":"all","limit":1000}"#,
        ),
        (
            "sessions.usage {agentScope:all}",
            "sessions.usage",
            r#"{"agentScope":"all"}"#,
        ),
        ("usage.cost {}", "usage.cost", "{}"),
    ];
    let mut dashboard_diff: Option<Vec<String>> = None;
    let mut warm = Vec::new();
    let mut not_fresh = 0u64;
    let mut cost_totals: Option<Value> = None;
    let mut sessions_returned = Vec::new();
    for (label, method, body) in kinds {
        let mut lat = Latency {
            label,
            samples: Vec::with_capacity(o.calls),
            bytes: 0,
        };
        let mut failed = 0;
        // Warm: one call of its own first (its range's per-file results, and its answer).
        if let Err(e) = rpc(&mut http, &token, method, body) {
            wrong.push(e);
        }
        for _ in 0..o.calls {
            let a = match rpc(&mut http, &token, method, body) {
                Ok(a) => a,
                Err(e) => {
                    wrong.push(e);
                    failed += 1;
                    if failed >= 3 {
                        wrong.push(format!("{label}: giving up after 3 failed calls"));
                        break;
                    }
                    continue;
                }
            };
            lat.samples.push(a.took);
            lat.bytes = a.bytes;
            if cache_status(&a.payload) != "fresh" {
                not_fresh += 1;
            }
            if method == "sessions.usage" {
                let n = a.payload["sessions"].as_array().map_or(0, Vec::len);
                if lat.samples.len() == 1 {
                    sessions_returned.push((label, n));
                }
                if label == DASHBOARD_LABEL && dashboard_diff.is_none() {
                    // Its days cover all the data: its totals are the generator's.
                    dashboard_diff = Some(compare_totals(&a.payload["totals"], &want));
                }
            } else {
                let t = &a.payload["totals"];
                match &cost_totals {
                    None => cost_totals = Some(t.clone()),
                    Some(first) if first != t => {
                        wrong.push(format!("usage.cost totals changed between calls: {t}"))
                    }
                    Some(_) => {}
                }
            }
        }
        warm.push(lat);
    }
    let totals_diff = match &cost_totals {
        Some(t) => compare_totals(t, &want),
        None => vec!["no usage.cost answer".into()],
    };
    for d in &totals_diff {
        wrong.push(format!(
            "usage.cost totals differ from the generator's: {d}"
        ));
    }
    let dashboard_diff = dashboard_diff.unwrap_or_else(|| vec!["no answer".into()]);
    for d in &dashboard_diff {
        wrong.push(format!(
            "the Usage page's totals differ from the generator's: {d}"
        ));
    }

    // ---- 3. after an append -----------------------------------------------------------------
    let transcript = match &o.append_file {
        Some(p) => p.clone(),
        None => pick_transcript(&o.state_dir)?,
    };
    let mut after = Latency {
        label: "usage.cost {} right after an append",
        samples: Vec::with_capacity(o.appends),
        bytes: 0,
    };
    let mut append_bad = 0usize;
    let mut append_not_fresh = 0u64;
    if o.appends > 0 {
        let base = rpc(&mut http, &token, "usage.cost", "{}")?.payload["totals"].clone();
        let (base_in, base_tt, base_cost) = (
            base["input"].as_u64().unwrap_or(0),
            base["totalTokens"].as_u64().unwrap_or(0),
            base["totalCost"].as_f64().unwrap_or(0.0),
        );
        for n in 1..=o.appends {
            append_line(&transcript, n)?;
            let a = match rpc(&mut http, &token, "usage.cost", "{}") {
                Ok(a) => a,
                Err(e) => {
                    append_bad += 1;
                    wrong.push(e);
                    continue;
                }
            };
            after.samples.push(a.took);
            after.bytes = a.bytes;
            if cache_status(&a.payload) != "fresh" {
                append_not_fresh += 1;
            }
            let t = &a.payload["totals"];
            let k = n as u64;
            let (got_in, got_tt, got_cost) = (
                t["input"].as_u64().unwrap_or(0),
                t["totalTokens"].as_u64().unwrap_or(0),
                t["totalCost"].as_f64().unwrap_or(f64::NAN),
            );
            let want_cost = base_cost + APPEND_COST * n as f64;
            if got_in != base_in + APPEND_INPUT * k
                || got_tt != base_tt + APPEND_TOTAL_TOKENS * k
                || (got_cost - want_cost).abs() > 1e-6
            {
                append_bad += 1;
                wrong.push(format!(
                    "after append {n}: totals.input {got_in} (want {}), totalTokens {got_tt} (want {}), totalCost {got_cost} (want {want_cost:.6}); cacheStatus {}",
                    base_in + APPEND_INPUT * k,
                    base_tt + APPEND_TOTAL_TOKENS * k,
                    cache_status(&a.payload)
                ));
            }
        }
    }

    // The Usage page's request after each append: computed anew every time.
    let mut page_after = Latency {
        label: "Usage page's request right after an append",
        samples: Vec::with_capacity(o.appends),
        bytes: 0,
    };
    let mut page_after_bad = 0usize;
    if o.appends > 0 {
        let base =
            rpc(&mut http, &token, "sessions.usage", &dashboard)?.payload["totals"]["totalTokens"]
                .as_u64()
                .unwrap_or(0);
        for n in 1..=o.appends {
            append_line(&transcript, o.appends + n)?;
            match rpc(&mut http, &token, "sessions.usage", &dashboard) {
                Ok(a) => {
                    page_after.samples.push(a.took);
                    page_after.bytes = a.bytes;
                    let got = a.payload["totals"]["totalTokens"].as_u64().unwrap_or(0);
                    if got != base + APPEND_TOTAL_TOKENS * n as u64 {
                        page_after_bad += 1;
                        wrong.push(format!(
                            "Usage page after append {n}: totalTokens {got}, want {}",
                            base + APPEND_TOTAL_TOKENS * n as u64
                        ));
                    }
                }
                Err(e) => {
                    page_after_bad += 1;
                    wrong.push(e);
                }
            }
        }
    }

    // ---- 4. /healthz while the Usage page's request runs in a loop ----------------------------
    let looped = {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let prober = {
            let stop = stop.clone();
            let rate = o.rate;
            let hard_end = start + Duration::from_secs(o.loop_secs) + CALL_TIMEOUT;
            thread::Builder::new()
                .name("probe".into())
                .spawn(move || probe(addr, rate, start, stop, hard_end))
                .map_err(|e| format!("cannot spawn the probe thread: {e}"))?
        };
        let end = start + Duration::from_secs(o.loop_secs);
        let (mut calls, mut failed) = (0u64, 0u64);
        let mut n = 2 * o.appends;
        // Over a WebSocket, as the page calls it.
        let mut ws = Ws::connect(addr, &token)?;
        let params: Value = serde_json::from_str(&dashboard).map_err(|e| e.to_string())?;
        while Instant::now() < end {
            if calls % 2 == 0 {
                n += 1;
                if let Err(e) = append_line(&transcript, n) {
                    wrong.push(e);
                    break;
                }
            }
            // The answer is only checked for success: parsing megabytes of JSON here would
            // take the CPU the gateway's reactor and the prober share on a small machine.
            match ws_unparsed(&mut ws, "sessions.usage", &params) {
                Ok(()) => calls += 1,
                Err(e) => {
                    failed += 1;
                    wrong.push(e);
                    if failed >= 3 {
                        break;
                    }
                }
            }
        }
        stop.store(true, Ordering::Release);
        let report = join_bounded(
            vec![prober],
            Instant::now() + PROBE_TIMEOUT + Duration::from_secs(2),
        )
        .0
        .pop()
        .ok_or("the probe thread did not finish in time (or panicked)")?;
        (report, calls)
    };

    // ---- 5. peak RSS ------------------------------------------------------------------------
    let (hwm_kib, rss_kib) = memory_kib(o.pid)?;
    let log = keel_log(o).text();
    let build_lines = parse_build_lines(&log).len();
    let cancelled = log.matches("usage index build cancelled").count();

    // ---- the report ---------------------------------------------------------------------------
    let (h50, h99, hmax) = spread(&probes.all);
    let wall_ms = o
        .started_at
        .and_then(|s| fresh.at_wall.duration_since(s).ok())
        .map(ms);
    let port_ms = o
        .started_at
        .and_then(|s| port_wall.duration_since(s).ok())
        .map(ms);
    let gen_files = figures["transcriptFiles"].as_u64();
    let gen_mb = figures["bytes"].as_f64().map(|b| b / 1e6);

    println!(
        "keel sessions-and-usage benchmark against {addr} (pid {})",
        o.pid
    );
    println!(
        "state: {} — generator: {} transcript files, {:.1} MB, {} messages, {} sessions",
        o.state_dir.display(),
        gen_files.map_or("?".into(), |n| n.to_string()),
        gen_mb.unwrap_or(f64::NAN),
        figures["messages"]["total"],
        figures["sessions"]
    );
    println!("page cache: {}", o.page_cache);
    println!();
    println!("1. cold index build");
    println!("   keel: {}", build.text);
    println!(
        "   keel's build time: {} ms ({} files, {:.1} MB read{})",
        build.ms,
        build.files,
        build.mb,
        if gen_files == Some(build.files) {
            ", as many files as generated".to_string()
        } else {
            format!(", generator wrote {gen_files:?} files")
        }
    );
    match (port_ms, wall_ms) {
        (Some(p), Some(w)) => println!(
            "   wall: keel launched → listening {p:.0} ms → first fresh usage.cost answer {w:.0} ms"
        ),
        _ => println!("   wall: (no --started-at)"),
    }
    println!(
        "   listening → first fresh answer: {:.0} ms; usage.cost calls during the build: {} ({} partial/refreshing, slowest {:.1} ms)",
        ms(fresh.at - t_port),
        fresh.polls,
        fresh.not_fresh,
        ms(fresh.slowest_poll)
    );
    if build_lines != 1 || cancelled > 0 {
        println!(
            "   note: keel logged {build_lines} '{BUILD_LINE}' line(s) and {cancelled} cancelled build(s) during the run (expected exactly 1 and 0)"
        );
    }
    println!();
    println!(
        "2. /healthz during the cold build ({} /s open loop, {:.0} ms window)",
        o.rate,
        ms(probes.window)
    );
    println!(
        "   probes: {}  errors: {}  p50: {:.3} ms  p99: {:.3} ms  max: {:.3} ms  (sent > 1 ms late: {}, max lateness {:.3} ms)",
        probes.sent,
        probes.errors,
        ms(h50),
        ms(h99),
        ms(hmax),
        probes.late,
        ms(probes.max_lateness)
    );
    println!();
    println!(
        "3. warm latency ({} sequential calls each, one keep-alive connection)",
        o.calls
    );
    for l in &warm {
        println!("   {}", l.line());
    }
    for (label, n) in &sessions_returned {
        println!("   {label}: {n} sessions returned");
    }
    if not_fresh > 0 {
        println!("   note: {not_fresh} warm answer(s) were not marked fresh");
    }
    println!(
        "   usage.cost totals vs the generator's (tokens exact, costs ±0.01): {}",
        if totals_diff.is_empty() {
            "OK"
        } else {
            "MISMATCH"
        }
    );
    if let Some(t) = &cost_totals {
        println!(
            "     keel:      input {} output {} cacheRead {} cacheWrite {} totalTokens {} totalCost {:.4} missingCostEntries {}",
            t["input"],
            t["output"],
            t["cacheRead"],
            t["cacheWrite"],
            t["totalTokens"],
            t["totalCost"].as_f64().unwrap_or(f64::NAN),
            t["missingCostEntries"]
        );
    }
    println!(
        "     generator: input {} output {} cacheRead {} cacheWrite {} totalTokens {} totalCost {:.4} missingCostEntries {}",
        want["input"],
        want["output"],
        want["cacheRead"],
        want["cacheWrite"],
        want["totalTokens"],
        want["totalCost"].as_f64().unwrap_or(f64::NAN),
        want["missingCostEntries"]
    );
    println!();
    println!(
        "4. after an append ({} appends of {APPEND_INPUT} input tokens to {})",
        o.appends,
        transcript.display()
    );
    if o.appends > 0 {
        println!("   {}", after.line());
        println!(
            "   totals grew by exactly the appended usage: {}{}",
            if append_bad == 0 {
                "OK".to_string()
            } else {
                format!("MISMATCH in {append_bad} of {}", o.appends)
            },
            if append_not_fresh > 0 {
                format!(" ({append_not_fresh} answer(s) not marked fresh)")
            } else {
                String::new()
            }
        );
    }
    if o.appends > 0 {
        println!("   {}", page_after.line());
        println!(
            "   totals grew by exactly the appended usage: {}",
            if page_after_bad == 0 {
                "OK".to_string()
            } else {
                format!("MISMATCH in {page_after_bad} of {}", o.appends)
            }
        );
    }
    let (l50, l99, lmax) = spread(&looped.0.all);
    println!();
    println!(
        "5. /healthz while the Usage page's request is called in a loop ({} calls in {} s, half of them after an append; {} /s open loop)",
        looped.1, o.loop_secs, o.rate
    );
    println!(
        "   probes: {}  errors: {}  p50: {:.3} ms  p99: {:.3} ms  max: {:.3} ms  (sent > 1 ms late: {}, max lateness {:.3} ms)",
        looped.0.sent,
        looped.0.errors,
        ms(l50),
        ms(l99),
        ms(lmax),
        looped.0.late,
        ms(looped.0.max_lateness)
    );
    println!();
    println!(
        "6. memory: VmHWM {:.1} MiB (VmRSS now {:.1} MiB)",
        hwm_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0
    );

    // ---- summary ------------------------------------------------------------------------------
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    rows.push((
        format!("cold index build, keel's log (page cache {})", o.page_cache),
        format!("{} ms", build.ms),
        format!("<= {TARGET_BUILD_MS:.0} ms"),
        verdict(build.ms as f64 <= TARGET_BUILD_MS),
    ));
    if let Some(w) = wall_ms {
        rows.push((
            "cold build, wall: launch → first fresh answer".into(),
            format!("{w:.0} ms"),
            format!("<= {TARGET_BUILD_MS:.0} ms"),
            verdict(w <= TARGET_BUILD_MS),
        ));
    }
    rows.push((
        format!(
            "/healthz during build: p99 ({} probes, {} errors)",
            probes.sent, probes.errors
        ),
        format!("{:.3} ms", ms(h99)),
        format!("<= {TARGET_HEALTH_P99_MS:.0} ms"),
        verdict(ms(h99) <= TARGET_HEALTH_P99_MS && probes.errors == 0),
    ));
    rows.push((
        "/healthz during build: max".into(),
        format!("{:.3} ms", ms(hmax)),
        format!("<= {TARGET_HEALTH_MAX_MS:.0} ms"),
        verdict(ms(hmax) <= TARGET_HEALTH_MAX_MS && probes.errors == 0),
    ));
    for l in warm
        .iter()
        .chain((o.appends > 0).then_some(&after))
        .chain((o.appends > 0).then_some(&page_after))
    {
        let (p50, p99, _) = spread(&l.samples);
        rows.push((
            format!("{} p99 (median {:.3} ms)", l.label, ms(p50)),
            format!("{:.3} ms", ms(p99)),
            format!("<= {TARGET_QUERY_MS:.0} ms"),
            verdict(!l.samples.is_empty() && ms(p99) <= TARGET_QUERY_MS),
        ));
    }
    rows.push((
        format!(
            "/healthz during the Usage page loop: p99 ({} probes, {} errors)",
            looped.0.sent, looped.0.errors
        ),
        format!("{:.3} ms", ms(l99)),
        format!("<= {TARGET_HEALTH_P99_MS:.0} ms"),
        verdict(ms(l99) <= TARGET_HEALTH_P99_MS && looped.0.errors == 0),
    ));
    rows.push((
        "peak RSS (VmHWM)".into(),
        format!("{:.1} MiB", hwm_kib as f64 / 1024.0),
        format!("<= {TARGET_RSS_MIB:.0} MiB"),
        verdict(hwm_kib as f64 / 1024.0 <= TARGET_RSS_MIB),
    ));
    rows.push((
        "Usage page's totals = generator's".into(),
        String::new(),
        String::new(),
        if dashboard_diff.is_empty() {
            "OK"
        } else {
            "MISMATCH"
        },
    ));
    rows.push((
        "usage.cost totals = generator's".into(),
        String::new(),
        String::new(),
        if totals_diff.is_empty() {
            "OK"
        } else {
            "MISMATCH"
        },
    ));
    if o.appends > 0 {
        rows.push((
            "totals after each append".into(),
            String::new(),
            String::new(),
            if append_bad == 0 { "OK" } else { "MISMATCH" },
        ));
    }
    println!();
    println!("== summary ==");
    for (what, value, target, v) in &rows {
        println!("{what:<66} {value:>12}  {target:<12} {v}");
    }
    let misses = rows.iter().filter(|r| r.3 == "MISS").count();
    println!(
        "{} target(s) missed; {} wrong answer(s)",
        misses,
        wrong.0.len() + probes.errors as usize
    );
    Ok(
        if wrong.0.is_empty() && probes.errors == 0 && looped.0.errors == 0 {
            0
        } else {
            1
        },
    )
}

const DASHBOARD_LABEL: &str = "Usage page's request (sessions.usage)";

/// Day number of `YYYY-MM-DD` (Howard Hinnant's days_from_civil).
fn day_number(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    Some(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468)
}

/// The request OpenClaw's Usage page sends for its overview (`usage-*.js` in its Control UI):
/// all agents, up to 1000 sessions grouped by family, local days of the browser's zone — here
/// New York — over the generator's days with one to spare each side (New York's days start
/// and end hours after UTC's).
fn dashboard_body(figures: &Value) -> Result<String, String> {
    let day = |k: &str| {
        figures[k]
            .as_str()
            .and_then(day_number)
            .ok_or_else(|| format!("the figures have no {k}"))
    };
    let date = |d: i64| iso_from_ms(d * 86_400_000)[..10].to_string();
    let (start, end) = (date(day("startDate")? - 1), date(day("endDate")? + 1));
    Ok(serde_json::json!({
        "startDate": start, "endDate": end, "agentScope": "all", "mode": "specific",
        "timeZone": "America/New_York", "utcOffset": "UTC-5", "groupBy": "family",
        "limit": 1000, "includeContextWeight": false,
    })
    .to_string())
}

/// The first fresh answer after the cold start.
struct Fresh {
    at: Instant,
    at_wall: SystemTime,
    polls: u64,
    not_fresh: u64,
    slowest_poll: Duration,
}

/// Calls `usage.cost {}` as soon as the build line is logged (and every [`STATUS_POLL`]) until
/// an answer is fresh. Returns the token too.
fn wait_fresh(o: &Opts, addr: SocketAddr, t_port: Instant) -> Result<(String, Fresh), String> {
    let deadline = t_port + FRESH_TIMEOUT;
    let log = keel_log(o);
    // Written before keel listens; a short wait covers a slow write.
    let token = wait::poll(t_port + Duration::from_secs(5), LOG_POLL, || {
        Some(serve::read_token(&o.state_dir)).filter(|t| !t.is_empty())
    })
    .ok_or_else(|| {
        format!(
            "no token in {}",
            o.state_dir.join("gateway.token").display()
        )
    })?;
    let mut http = Http::new(addr);
    let mut polls = 0u64;
    let mut not_fresh = 0u64;
    let mut slowest = Duration::ZERO;
    let mut last_poll: Option<Instant> = None;
    let mut built_seen = false;
    loop {
        if !built_seen {
            let text = log.text();
            built_seen = text.contains(BUILD_LINE);
            if text.contains("usage index build cancelled") {
                return Err(format!(
                    "keel cancelled the usage index build; its log:\n{}",
                    log_tail(&text)
                ));
            }
        }
        if built_seen || last_poll.is_none_or(|t| t.elapsed() >= STATUS_POLL) {
            last_poll = Some(Instant::now());
            let a = rpc(&mut http, &token, "usage.cost", "{}")?;
            polls += 1;
            slowest = slowest.max(a.took);
            if cache_status(&a.payload) == "fresh" {
                return Ok((
                    token,
                    Fresh {
                        at: Instant::now(),
                        at_wall: SystemTime::now(),
                        polls,
                        not_fresh,
                        slowest_poll: slowest,
                    },
                ));
            }
            not_fresh += 1;
        }
        if !alive(o.pid) {
            return Err(format!(
                "keel (pid {}) exited during the build; its log:\n{}",
                o.pid,
                log_tail(&log.text())
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no fresh usage.cost answer within {} s of keel listening",
                FRESH_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(LOG_POLL);
    }
}

fn main() {
    bench_main("usage", parse_opts, usage, run);
}
