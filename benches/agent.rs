//! Agent runs (issue "Agent runs"): how fast a run fails over from a failing primary to its
//! fallback, and how fast one run's events fan out to 100 WebSocket listeners while
//! `/healthz` stays fast — against a release keel that this binary starts itself, with two
//! scriptable fake providers (`tests/gateway/fake_provider.rs`) on loopback.
//!
//! `scripts/bench-agent.sh` builds keel and this bench and runs `agent --keel PATH --work DIR`.
//! This binary then:
//!
//! 0. starts two fake `openai-completions` providers, `a` (primary) and `b` (fallback), writes
//!    `DIR/state/keel.json` pointing at them and spawns `keel serve --port 0 --state-dir
//!    DIR/state` (stderr to `DIR/server.log`, its pid in `DIR/keel.pid` so that the script can
//!    kill it should this binary die first); the port is the one of `listening on
//!    127.0.0.1:PORT`, the token is `DIR/state/gateway.token`.
//! 1. **failover**: for each case — the primary stalls before the first byte (`stallMs`
//!    500), answers 404 model-not-found, 429 with `Retry-After: 1`, 500, or resets the
//!    connection — `--runs` runs, one after the other, each `chat.send` on a session of its
//!    own. The fallback answers a short stream at once.
//!
//!    *Isolation from cooldowns*: a failure cools down (provider, model), and a later run
//!    would skip the primary. So every run has an agent of its own in `agents.list` whose
//!    chain is `a/<case>-<i>` then `b/m2`: the same provider and fallback as
//!    `agents.defaults.model` (`a/m1` → `b/m2`), but a primary model no other run uses. All runs
//!    go through one keel, no restart, no cooldown interplay, and each failure still records
//!    its cooldown as in production.
//!
//!    Per run, on one clock (this process's): `t_a`, when fake `a` has the request (the
//!    fakes' request counts are polled every ~0.1 ms); the failure moment `t_fail` = `t_a` for
//!    a status or a reset (the fake answers as it records the request) and `t_a + stallMs`
//!    for the stall (the moment the limit expires: keel's detection lateness counts against
//!    it); `t_b`, when fake `b` has the fallback request; the client's receipt of the `agent`
//!    error event and of the first `agent` assistant delta (the fallback's first token). A
//!    run whose timeline shows the watching thread was late (a request seen only after the
//!    event it caused reached the client: it did not get a core in time) is made again, with
//!    one of 5 spare agents per case.
//!    Printed per case: median and max of failure → fallback's first token (target ≤ 1 s),
//!    of failure → fallback request, of send → first token (end to end), keel's own figure
//!    (`run …: a/… failed after N ms` in its log) and the reason of the error event.
//! 2. **fan-out**: agent `fan` (model `fan/m`, no fallback; provider `fan` is fake `a` with a
//!    generous stall limit) is asked once; its first model answer calls the command tool
//!    `pause` (`sleep 0.5`), the second streams `--chunks` chunks of `--chunk-bytes` bytes as
//!    fast as the fake writes them. Right after the `chat.send` ack, `--clients` other
//!    connections (already handshaken) call `agent.wait {runId, timeoutMs: 120000}`, which
//!    makes each a listener of every event of the run; the tool's pause makes sure all are
//!    listening before the first token. `--threads` threads read them: non-blocking sockets,
//!    a pass over a thread's sockets every `--read-interval-ms` (5) at most, each reading all
//!    there is — prompt enough for keel's 8 MiB per-client buffer, and a few frames per read
//!    instead of one, so that the clients, on the same cores, leave the CPU to keel. Every
//!    client counts the run's events until the terminal `chat` event, checks the run's `seq`
//!    has no gap, and notes its `agent.wait` answer. Events per second: the events of the
//!    streaming phase (a client's first assistant delta to its terminal event) summed over
//!    clients, divided by the wall time from the first client's first delta to the last
//!    client's terminal event. Meanwhile `GET /healthz` is probed at `--rate`/s on an
//!    open-loop schedule; the probes sent during the streaming phase are reported (target
//!    p99 ≤ 2 ms, max ≤ 25 ms). Also printed: the CPU time keel and this process used, keel's
//!    peak RSS, and keel's slow-consumer counter. Before it, the same run with no listener but
//!    its sender gives a baseline (`--no-baseline` skips it).
//!
//! then stops keel with SIGTERM (SIGKILL after 15 s) and prints the figures and a summary.
//!
//! ```text
//! agent --keel PATH --work DIR [--runs 10] [--stall-ms 500] [--clients 100] [--threads 4]
//!       [--chunks 20000] [--chunk-bytes 20] [--rate 200] [--read-interval-ms 5] [--no-baseline]
//! ```
//! Exit status: 0 when it ran correctly (a missed target is printed as MISS, not an error);
//! 1 when keel behaved wrongly (a run that did not fail over as expected, a listener that
//! lost events or missed the end of the run without being closed as a slow consumer, a
//! failed `/healthz` probe); 2 when the run could not be set up or measured.

use serde::Deserialize;
use serde_json::{Value, json};
use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;
use testkit::procfs;
use testkit::ws::Msg;

// Its `tests` module is for the test harness: its imports go unused here.
#[path = "../tests/gateway/fake_provider.rs"]
#[allow(unused_imports)]
mod fake_provider;
use fake_provider::{Behavior, FakeProvider};

const API: &str = "openai-completions";
/// keel must log `listening on` within this.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages a listener reads per pass before the others get their turn.
const READ_BUDGET: usize = 4096;
/// A pass over the listeners that read nothing is followed by this pause (at least).
const IDLE_SLEEP: Duration = Duration::from_micros(100);
/// One failover run must have ended within this.
const FAILOVER_RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// All the failover runs together.
const FAILOVER_PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// One fan-out run must have ended for every listener within this.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(45);
/// Failover runs per case kept in reserve for runs made again (see [`failover_run`]).
const SPARE_RUNS: usize = 5;
/// How often the fakes' request counts are read during a failover run.
const REQUEST_POLL: Duration = Duration::from_micros(50);
/// How often the fan-out run's status is polled.
const RUN_END_POLL: Duration = Duration::from_millis(20);
/// Each `/healthz` probe must be answered within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// SIGTERM, then SIGKILL after this.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause of the fan-out run before it streams (the `pause` tool's `sleep`).
const FANOUT_PAUSE: &str = "0.5";
/// Error messages printed as they happen; the rest are only counted.
const MAX_LOGGED: u64 = 10;

// Targets of the issue "Agent runs".
const TARGET_FAILOVER_MS: f64 = 1000.0;
const TARGET_HEALTH_P99_MS: f64 = 2.0;
const TARGET_HEALTH_MAX_MS: f64 = 25.0;

struct Opts {
    keel: PathBuf,
    work: PathBuf,
    runs: usize,
    stall_ms: u64,
    clients: usize,
    threads: usize,
    chunks: usize,
    chunk_bytes: usize,
    rate: u64,
    read_interval_ms: u64,
    baseline: bool,
}

fn usage() -> &'static str {
    "usage: agent --keel PATH --work DIR [--runs N (10)] [--stall-ms MS (500)] [--clients N (100)] \
     [--threads N (4)] [--chunks N (20000)] [--chunk-bytes N (20)] [--rate N (200)] [--read-interval-ms N (5)] \
     [--no-baseline]"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut keel, mut work) = (None, None);
    let mut o = Opts {
        keel: PathBuf::new(),
        work: PathBuf::new(),
        runs: 10,
        stall_ms: 500,
        clients: 100,
        threads: 4,
        chunks: 20_000,
        chunk_bytes: 20,
        rate: 200,
        read_interval_ms: 5,
        baseline: true,
    };
    for (name, value) in flags(
        &[
            "--keel",
            "--work",
            "--runs",
            "--stall-ms",
            "--clients",
            "--threads",
            "--chunks",
            "--chunk-bytes",
            "--rate",
            "--read-interval-ms",
        ],
        &["--no-baseline"],
    )? {
        match name.as_str() {
            "--keel" => keel = Some(PathBuf::from(value)),
            "--work" => work = Some(PathBuf::from(value)),
            "--runs" => o.runs = number(&name, &value)? as usize,
            "--stall-ms" => o.stall_ms = number(&name, &value)?,
            "--clients" => o.clients = number(&name, &value)? as usize,
            "--threads" => o.threads = number(&name, &value)? as usize,
            "--chunks" => o.chunks = number(&name, &value)? as usize,
            "--chunk-bytes" => o.chunk_bytes = number(&name, &value)? as usize,
            "--rate" => o.rate = number(&name, &value)?,
            "--no-baseline" => o.baseline = false,
            _ => o.read_interval_ms = number(&name, &value)?,
        }
    }
    o.keel = keel.ok_or("--keel is required")?;
    o.work = work.ok_or("--work is required")?;
    if o.runs == 0 || o.runs > 100 {
        return Err("--runs must be within 1..=100".into());
    }
    // keel accepts stall limits of 100 ms and more.
    if !(100..=5000).contains(&o.stall_ms) {
        return Err("--stall-ms must be within 100..=5000".into());
    }
    if o.clients > 1000 {
        return Err("--clients must be at most 1000".into());
    }
    if o.threads == 0 || o.threads > 64 {
        return Err("--threads must be within 1..=64".into());
    }
    if o.chunks == 0 || o.chunks > 1_000_000 {
        return Err("--chunks must be within 1..=1000000".into());
    }
    if !(8..=4096).contains(&o.chunk_bytes) {
        return Err("--chunk-bytes must be within 8..=4096".into());
    }
    if o.rate == 0 || o.rate > 100_000 {
        return Err("--rate must be within 1..=100000".into());
    }
    if o.read_interval_ms > 100 {
        return Err("--read-interval-ms must be at most 100".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn median(samples: &[Duration]) -> Duration {
    percentile(&sorted(samples), 50.0)
}

fn max_of(samples: &[Duration]) -> Duration {
    samples.iter().copied().max().unwrap_or_default()
}

/// Failures that make keel's behaviour wrong (exit 1), as opposed to a run that could not be
/// made (exit 2).
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    fn push(&mut self, msg: String) {
        if self.0.len() < 30 {
            eprintln!("agent bench: {msg}");
        }
        self.0.push(msg);
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

/// Every run shares providers `a` and `b`; see the module comment for the agents.
fn keel_config(o: &Opts, a: &FakeProvider, b: &FakeProvider) -> Value {
    let mut agents = vec![json!({"id": "main", "default": true})];
    for case in CASES {
        for i in 0..o.runs + SPARE_RUNS {
            agents.push(json!({
                "id": format!("fo-{}-{i}", case.key),
                "model": {"primary": format!("a/{}-{i}", case.key), "fallbacks": ["b/m2"]},
            }));
        }
    }
    agents.push(json!({"id": "fan", "model": "fan/m"}));
    let provider = |url: String, key: &str, stall_ms: u64, model: &str| {
        json!({"baseUrl": url, "apiKey": key, "api": API, "stallMs": stall_ms, "timeoutMs": 20000,
               "models": [{"id": model}]})
    };
    json!({
        "gateway": {"drainTimeoutMs": 5000, "drainGraceMs": 1000},
        "models": {"providers": {
            "a": provider(a.base_url(), "bench-a", o.stall_ms, "m1"),
            "b": provider(b.base_url(), "bench-b", o.stall_ms, "m2"),
            // The fan-out's primary: fake `a` again, with a stall limit that a busy machine
            // cannot trip.
            "fan": {"baseUrl": a.base_url(), "apiKey": "bench-fan", "api": API, "stallMs": 20000,
                    "timeoutMs": 60000, "models": [{"id": "m"}]},
        }},
        "agents": {
            "defaults": {"model": {"primary": "a/m1", "fallbacks": ["b/m2"]}},
            "list": agents,
        },
        "tools": {"commands": [{"name": "pause", "description": "waits a moment",
                                "argv": ["sleep", FANOUT_PAUSE]}]},
    })
}

/// CPU time (user + system, all threads) of a process (`"self"` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: state is the first, utime the 12th.
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let (utime, stime): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    // USER_HZ, which is 100 on Linux.
    Some((utime + stime) as f64 / 100.0)
}

/// One series of keel's `/metrics`.
fn metric(keel: &Keel, series: &str) -> Result<f64, String> {
    let mut http = Http::new(keel.addr);
    let reply = http
        .request("GET", "/metrics", Some(&keel.token), b"", WS_TIMEOUT)
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if reply.status != 200 {
        return Err(format!("GET /metrics: HTTP {}", reply.status));
    }
    testkit::metrics::metric(&String::from_utf8_lossy(&reply.body), series)
        .ok_or_else(|| format!("no {series} in /metrics"))
}

// ---------------------------------------------------------------------------------------------
// 1. Failover.

struct Case {
    key: &'static str,
    label: &'static str,
    /// The `reason` keel should report in the `agent` error event.
    reason: &'static str,
    stall: bool,
}

const CASES: [Case; 5] = [
    Case {
        key: "stall",
        label: "stall before the first byte",
        reason: "timeout",
        stall: true,
    },
    Case {
        key: "404",
        label: "404 model not found",
        reason: "model_not_found",
        stall: false,
    },
    Case {
        key: "429",
        label: "429, Retry-After: 1",
        reason: "rate_limit",
        stall: false,
    },
    Case {
        key: "500",
        label: "500 server error",
        reason: "server_error",
        stall: false,
    },
    Case {
        key: "reset",
        label: "connection reset, no answer",
        reason: "server_error",
        stall: false,
    },
];

fn primary_behavior(case: &Case, model: &str) -> Behavior {
    match case.key {
        "stall" => Behavior::StallBeforeHead,
        "404" => Behavior::Status {
            status: 404,
            body: FakeProvider::model_not_found_body(API, model),
            retry_after: None,
        },
        "429" => Behavior::Status {
            status: 429,
            body: FakeProvider::rate_limit_body(API),
            retry_after: Some(1),
        },
        "500" => Behavior::Status {
            status: 500,
            body: r#"{"error":{"message":"the bench's primary is down"}}"#.into(),
            retry_after: None,
        },
        _ => Behavior::Reset,
    }
}

const FALLBACK_TEXT: &str = "the fallback answers";

/// One failover run's timeline and outcome.
struct FailoverRun {
    run_id: String,
    /// Send → first token (the fallback's first assistant delta).
    e2e: Duration,
    /// Failure → first token.
    fail_to_token: Duration,
    /// Failure → fallback request at fake `b`.
    fail_to_fallback: Duration,
    /// Failure → the `agent` error event at the client.
    fail_to_error_event: Duration,
    /// Send → final chat event.
    total: Duration,
    reason: String,
}

/// What the client saw of one run.
#[derive(Default)]
struct RunSeen {
    run_id: String,
    t_error: Option<Instant>,
    t_token: Option<Instant>,
    t_final: Option<Instant>,
    errors: Vec<Value>,
    final_state: String,
    final_text: String,
}

/// Sends `chat.send` and reads the run's events until its terminal `chat` event.
fn drive_run(ws: &mut Ws, key: &str, idem: &str) -> Result<RunSeen, String> {
    let deadline = Instant::now() + FAILOVER_RUN_TIMEOUT;
    let id = ws.send(
        "chat.send",
        &json!({"sessionKey": key, "message": "hello", "idempotencyKey": idem}),
    )?;
    // Events that arrive before the ack are kept and matched once the run id is known.
    let mut early: Vec<(Instant, String)> = Vec::new();
    let res = ws.wait_res(&id, deadline, |at, t| early.push((at, t.to_string())))?;
    if res["ok"] != true {
        return Err(format!("chat.send refused: {res}"));
    }
    let mut seen = RunSeen {
        run_id: res["payload"]["runId"].as_str().unwrap_or("").to_string(),
        ..RunSeen::default()
    };
    if seen.run_id.is_empty() {
        return Err(format!("chat.send answered no runId: {res}"));
    }
    let on_frame = |at: Instant, text: &str, seen: &mut RunSeen| -> Result<bool, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        if v["type"] != "event" || v["payload"]["runId"] != seen.run_id.as_str() {
            return Ok(false);
        }
        let p = &v["payload"];
        match (v["event"].as_str(), p["stream"].as_str()) {
            (Some("agent"), Some("error")) => {
                seen.t_error.get_or_insert(at);
                seen.errors.push(p["data"].clone());
            }
            (Some("agent"), Some("assistant")) => {
                seen.t_token.get_or_insert(at);
            }
            (Some("chat"), _) => {
                let state = p["state"].as_str().unwrap_or("");
                if matches!(state, "final" | "error" | "aborted") {
                    seen.t_final = Some(at);
                    seen.final_state = state.to_string();
                    seen.final_text = p["message"]["content"][0]["text"]
                        .as_str()
                        .or(p["errorMessage"].as_str())
                        .unwrap_or("")
                        .to_string();
                    return Ok(true);
                }
            }
            _ => {}
        }
        Ok(false)
    };
    for (at, text) in early {
        if on_frame(at, &text, &mut seen)? {
            return Ok(seen);
        }
    }
    loop {
        match ws.read(deadline)? {
            Some((at, text)) if on_frame(at, &text, &mut seen)? => return Ok(seen),
            Some(_) => {}
            None if Instant::now() >= deadline => {
                return Err(format!(
                    "run {} did not end within {} s",
                    seen.run_id,
                    FAILOVER_RUN_TIMEOUT.as_secs()
                ));
            }
            None => {}
        }
    }
}

/// Runs one failover case once. `Ok(None)`: the run went well but the thread watching the
/// fakes saw a request only after its consequence had reached the client (it did not get a
/// core in time), so the timeline is not to be trusted and the run is to be made again.
/// `Err` is a run that went wrong in a way that makes the fakes' queues unreliable for the
/// next run.
fn failover_run(
    ws: &mut Ws,
    a: &FakeProvider,
    b: &FakeProvider,
    case: &Case,
    i: usize,
    stall: Duration,
    wrong: &mut Wrong,
) -> Result<Option<FailoverRun>, String> {
    let model = format!("{}-{i}", case.key);
    let (na, nb) = (a.requests().len(), b.requests().len());
    a.push(primary_behavior(case, &model));
    b.push(Behavior::Stream {
        text: vec![FALLBACK_TEXT.to_string()],
        tool_call: None,
        usage: (10, 3),
        delay_between: Duration::ZERO,
    });
    let stop = AtomicBool::new(false);
    let (seen, t_a, t_b, t_send) = thread::scope(|s| {
        // When each fake has the request: its count, read without copying the requests.
        let poller = s.spawn(|| {
            let (mut t_a, mut t_b) = (None, None);
            let end = Instant::now() + FAILOVER_RUN_TIMEOUT;
            loop {
                // One more look after the run has ended: a late look still completes the
                // timeline (and is then caught as late below).
                let stopping = stop.load(Ordering::Acquire) || Instant::now() >= end;
                if t_a.is_none() && a.wait_requests(na + 1, Duration::ZERO) {
                    t_a = Some(Instant::now());
                }
                if t_b.is_none() && b.wait_requests(nb + 1, Duration::ZERO) {
                    t_b = Some(Instant::now());
                }
                if stopping || (t_a.is_some() && t_b.is_some()) {
                    break;
                }
                thread::sleep(REQUEST_POLL);
            }
            (t_a, t_b)
        });
        let t_send = Instant::now();
        let seen = drive_run(
            ws,
            &format!("agent:fo-{}-{i}:main", case.key),
            &format!("bench-{}-{i}", case.key),
        );
        stop.store(true, Ordering::Release);
        let (t_a, t_b) = poller.join().unwrap_or((None, None));
        (seen, t_a, t_b, t_send)
    });
    let seen = seen?;
    let what = format!("{} run {i} ({})", case.key, seen.run_id);
    let (ra, rb) = (a.requests(), b.requests());
    if ra.len() != na + 1 || rb.len() != nb + 1 {
        return Err(format!(
            "{what}: the primary got {} request(s) and the fallback {} (expected 1 each); final {}: {}",
            ra.len() - na,
            rb.len() - nb,
            seen.final_state,
            seen.final_text
        ));
    }
    if ra[na]["model"] != model.as_str() || rb[nb]["model"] != "m2" {
        wrong.push(format!(
            "{what}: requests for models {} then {} (expected {model} then m2)",
            ra[na]["model"], rb[nb]["model"]
        ));
    }
    if seen.final_state != "final" || seen.final_text != FALLBACK_TEXT {
        wrong.push(format!(
            "{what}: ended {:?} with {:?} (expected final with the fallback's text)",
            seen.final_state, seen.final_text
        ));
    }
    let reason = match seen.errors.as_slice() {
        [e] => {
            let r = e["reason"].as_str().unwrap_or("?").to_string();
            if r != case.reason || e["provider"] != "a" {
                wrong.push(format!(
                    "{what}: error event {e} (expected reason {} from provider a)",
                    case.reason
                ));
            }
            r
        }
        other => {
            wrong.push(format!(
                "{what}: {} agent error event(s) (expected 1): {other:?}",
                other.len()
            ));
            other
                .first()
                .and_then(|e| e["reason"].as_str())
                .unwrap_or("?")
                .to_string()
        }
    };
    let (Some(t_a), Some(t_b), Some(t_error), Some(t_token), Some(t_final)) =
        (t_a, t_b, seen.t_error, seen.t_token, seen.t_final)
    else {
        return Err(format!(
            "{what}: incomplete timeline (primary request seen {}, fallback request seen {}, error event {}, first token {}, final {})",
            t_a.is_some(),
            t_b.is_some(),
            seen.t_error.is_some(),
            seen.t_token.is_some(),
            seen.t_final.is_some()
        ));
    };
    // The primary's request precedes its error event; the fallback's, its first token.
    if t_a > t_error || t_b > t_token {
        return Ok(None);
    }
    let t_fail = if case.stall { t_a + stall } else { t_a };
    Ok(Some(FailoverRun {
        run_id: seen.run_id,
        e2e: t_token.saturating_duration_since(t_send),
        fail_to_token: t_token.saturating_duration_since(t_fail),
        fail_to_fallback: t_b.saturating_duration_since(t_fail),
        fail_to_error_event: t_error.saturating_duration_since(t_fail),
        total: t_final.saturating_duration_since(t_send),
        reason,
    }))
}

/// keel's `run <id>: a/<model> failed after N ms: …` lines: run id → N.
fn failed_after(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("] run ")? + 6..];
            let (run, rest) = rest.split_once(": ")?;
            let rest = &rest[rest.find(" failed after ")? + 14..];
            let (n, _) = rest.split_once(" ms")?;
            Some((run.to_string(), n.parse().ok()?))
        })
        .collect()
}

struct CaseResult {
    case: &'static Case,
    runs: Vec<FailoverRun>,
    /// Runs made again because the fakes' watcher was late.
    retried: usize,
}

fn failover_phase(
    o: &Opts,
    keel: &Keel,
    a: &FakeProvider,
    b: &FakeProvider,
    wrong: &mut Wrong,
) -> Result<Vec<CaseResult>, String> {
    let stall = Duration::from_millis(o.stall_ms);
    let phase_end = Instant::now() + FAILOVER_PHASE_TIMEOUT;
    let mut ws = Ws::connect(keel.addr, &keel.token)?;
    let mut out = Vec::new();
    for case in &CASES {
        let mut runs = Vec::new();
        let mut retried = 0;
        // Each attempt has an agent (and a primary model) of its own: see keel_config.
        for i in 0..o.runs + SPARE_RUNS {
            if runs.len() == o.runs {
                break;
            }
            if Instant::now() >= phase_end {
                return Err(format!(
                    "the failover runs took more than {} s",
                    FAILOVER_PHASE_TIMEOUT.as_secs()
                ));
            }
            match failover_run(&mut ws, a, b, case, i, stall, wrong)? {
                Some(run) => runs.push(run),
                None => retried += 1,
            }
        }
        if runs.len() < o.runs {
            return Err(format!(
                "{}: the fakes' watcher was late in {retried} runs; too few trustworthy timelines",
                case.key
            ));
        }
        out.push(CaseResult {
            case,
            runs,
            retried,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 2. Fan-out.

/// The few fields of a frame the readers look at; the rest is skipped without being built.
#[derive(Deserialize)]
struct LiteFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    event: Option<&'a str>,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    payload: Option<LitePayload<'a>>,
}

#[derive(Deserialize)]
struct LitePayload<'a> {
    #[serde(rename = "runId", default, borrow)]
    run_id: Option<&'a str>,
    #[serde(default, borrow)]
    stream: Option<&'a str>,
    #[serde(default, borrow)]
    state: Option<&'a str>,
    #[serde(default, borrow)]
    status: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
}

/// What a frame means to a listener.
enum Seen {
    /// An event of the run: its seq, whether it is an assistant delta or a `chat` delta, and
    /// the terminal chat state if it ends the run.
    RunEvent {
        seq: Option<u64>,
        delta: bool,
        chat_delta: bool,
        terminal: Option<String>,
    },
    /// The `res` to `agent.wait`, with its status.
    WaitRes(String),
    Other,
}

fn classify(text: &str, run_id: &str, wait_id: &str) -> Result<Seen, String> {
    let f: LiteFrame<'_> = match serde_json::from_str(text) {
        Ok(f) => f,
        // A field of another type than expected (not seen so far): the slow path.
        Err(_) => return classify_slow(text, run_id, wait_id),
    };
    let p = f.payload.as_ref();
    if f.kind == "res" && f.id == Some(wait_id) {
        let status = p.and_then(|p| p.status).unwrap_or("error");
        return Ok(Seen::WaitRes(status.to_string()));
    }
    if f.kind != "event" || p.and_then(|p| p.run_id) != Some(run_id) {
        return Ok(Seen::Other);
    }
    let p = p.ok_or("an event without payload")?;
    let event = f.event.unwrap_or("");
    Ok(Seen::RunEvent {
        seq: p.seq,
        delta: event == "agent" && p.stream == Some("assistant"),
        chat_delta: event == "chat" && p.state == Some("delta"),
        terminal: (event == "chat")
            .then_some(p.state)
            .flatten()
            .filter(|s| matches!(*s, "final" | "error" | "aborted"))
            .map(String::from),
    })
}

fn classify_slow(text: &str, run_id: &str, wait_id: &str) -> Result<Seen, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("a frame is not JSON: {e}"))?;
    let p = &v["payload"];
    if v["type"] == "res" && v["id"] == wait_id {
        return Ok(Seen::WaitRes(
            p["status"].as_str().unwrap_or("error").into(),
        ));
    }
    if v["type"] != "event" || p["runId"] != run_id {
        return Ok(Seen::Other);
    }
    let state = p["state"].as_str().unwrap_or("");
    Ok(Seen::RunEvent {
        seq: p["seq"].as_u64(),
        delta: v["event"] == "agent" && p["stream"] == "assistant",
        chat_delta: v["event"] == "chat" && state == "delta",
        terminal: (v["event"] == "chat" && matches!(state, "final" | "error" | "aborted"))
            .then(|| state.to_string()),
    })
}

/// One listener and what it saw.
struct Listener {
    ws: Ws,
    /// The connection that sent `chat.send` (a listener by starting the run), not a waiter.
    sender: bool,
    wait_id: String,
    events: u64,
    /// Events from the first assistant delta on.
    stream_events: u64,
    bytes: u64,
    /// `chat` delta events (each carries the whole text so far) and their bytes.
    chat_deltas: u64,
    chat_delta_bytes: u64,
    first_seq: Option<u64>,
    /// The run's seq of the first assistant delta.
    first_delta_seq: Option<u64>,
    last_seq: Option<u64>,
    gaps: u64,
    first_delta: Option<Instant>,
    end: Option<Instant>,
    terminal: Option<String>,
    wait_status: Option<String>,
    closed: Option<String>,
    slow_consumer: bool,
    error: Option<String>,
    /// Whether tungstenite may hold unread frames (its last read did not end in WouldBlock).
    maybe_buffered: bool,
}

impl Listener {
    fn new(ws: Ws, sender: bool) -> Listener {
        Listener {
            ws,
            sender,
            wait_id: String::new(),
            events: 0,
            stream_events: 0,
            bytes: 0,
            chat_deltas: 0,
            chat_delta_bytes: 0,
            first_seq: None,
            first_delta_seq: None,
            last_seq: None,
            gaps: 0,
            first_delta: None,
            end: None,
            terminal: None,
            wait_status: None,
            closed: None,
            slow_consumer: false,
            error: None,
            maybe_buffered: true,
        }
    }

    fn done(&self) -> bool {
        self.terminal.is_some() || self.closed.is_some() || self.error.is_some()
    }

    fn on_text(&mut self, at: Instant, text: &str, run_id: &str) {
        self.bytes += text.len() as u64;
        match classify(text, run_id, &self.wait_id) {
            Ok(Seen::RunEvent {
                seq,
                delta,
                chat_delta,
                terminal,
            }) => {
                self.events += 1;
                if chat_delta {
                    self.chat_deltas += 1;
                    self.chat_delta_bytes += text.len() as u64;
                }
                if delta && self.first_delta.is_none() {
                    self.first_delta = Some(at);
                    self.first_delta_seq = seq;
                }
                if self.first_delta.is_some() {
                    self.stream_events += 1;
                }
                if let Some(s) = seq {
                    match self.last_seq {
                        Some(last) if s != last + 1 => self.gaps += 1,
                        None => self.first_seq = Some(s),
                        _ => {}
                    }
                    self.last_seq = Some(s);
                }
                if let Some(t) = terminal {
                    self.end = Some(at);
                    self.terminal = Some(t);
                }
            }
            Ok(Seen::WaitRes(s)) => self.wait_status = Some(s),
            Ok(Seen::Other) => {}
            Err(e) => self.error = Some(e),
        }
    }

    /// Reads what is there, up to a budget: (anything read, budget used up).
    fn poll(&mut self, run_id: &str) -> (bool, bool) {
        // Unless tungstenite may hold whole frames already, ask the socket first: a read that
        // finds nothing costs tungstenite a buffer fill.
        if !self.maybe_buffered {
            let mut byte = [0u8; 1];
            if let Err(e) = self.ws.sock.get_ref().peek(&mut byte)
                && e.kind() == ErrorKind::WouldBlock
            {
                return (false, false);
            }
        }
        self.maybe_buffered = true;
        let mut progress = false;
        for _ in 0..READ_BUDGET {
            if self.done() {
                return (progress, false);
            }
            match self.ws.read_msg() {
                Ok(Some(Msg::Text(t))) => {
                    progress = true;
                    self.on_text(Instant::now(), t.as_str(), run_id);
                }
                Ok(Some(Msg::Close(f))) => {
                    progress = true;
                    let code = f.as_ref().map(|f| u16::from(f.code));
                    self.slow_consumer =
                        code == Some(1008) && f.as_ref().is_some_and(|f| f.reason.contains("slow"));
                    self.closed = Some(format!(
                        "closed by keel ({:?})",
                        f.map(|f| (u16::from(f.code), f.reason.to_string()))
                    ));
                }
                Ok(None) => {
                    self.maybe_buffered = false;
                    return (progress, false);
                }
                Err(e) => {
                    self.closed = Some(format!("WebSocket read: {e}"));
                    return (progress, false);
                }
            }
        }
        (progress, true)
    }
}

/// Reads `listeners` until every one has seen the end of the run (or `deadline`); a waiter
/// first calls `agent.wait`. A pass over them starts every `interval` at most, unless one
/// had more to read than its budget.
fn read_listeners(
    mut ls: Vec<Listener>,
    run_id: &str,
    deadline: Instant,
    interval: Duration,
) -> Vec<Listener> {
    for l in ls.iter_mut().filter(|l| !l.sender) {
        match l.ws.send(
            "agent.wait",
            &json!({"runId": run_id, "timeoutMs": 120_000}),
        ) {
            Ok(id) => l.wait_id = id,
            Err(e) => l.error = Some(format!("agent.wait: {e}")),
        }
    }
    for l in ls.iter_mut() {
        if let Err(e) = l.ws.sock.get_ref().set_nonblocking(true) {
            l.error = Some(format!("set_nonblocking: {e}"));
        }
    }
    while Instant::now() < deadline {
        let pass = Instant::now();
        let (mut progress, mut more) = (false, false);
        let mut all_done = true;
        for l in ls.iter_mut() {
            let (p, m) = l.poll(run_id);
            progress |= p;
            more |= m;
            all_done &= l.done();
        }
        if all_done {
            break;
        }
        if more {
            continue;
        }
        let mut wait = (pass + interval).saturating_duration_since(Instant::now());
        if !progress {
            wait = wait.max(IDLE_SLEEP);
        }
        if !wait.is_zero() {
            thread::sleep(wait);
        }
    }
    ls
}

/// `/healthz` probes on an open-loop schedule until `stop`: (sent at, time taken, ok).
fn probe(
    addr: SocketAddr,
    rate: u64,
    stop: &AtomicBool,
    hard_end: Instant,
) -> Vec<(Instant, Duration, bool)> {
    let mut out = Vec::new();
    let mut http = Http::new(addr);
    let mut logged = 0u64;
    let start = Instant::now();
    for i in 0u64.. {
        if wait_due(start, i, rate, stop, hard_end).is_none() {
            break;
        }
        let t0 = Instant::now();
        let res = http.request("GET", "/healthz", None, b"", PROBE_TIMEOUT);
        let took = t0.elapsed();
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
        if let Some(msg) = &failure {
            if logged < MAX_LOGGED {
                eprintln!("healthz probe: {msg} after {:.3} ms", ms(took));
            }
            logged += 1;
        }
        out.push((t0, took, failure.is_none()));
    }
    out
}

/// Polls `agent.wait {runId, timeoutMs: 0}` over HTTP until the run has ended: when that
/// was first seen.
fn run_end(keel: &Keel, run_id: &str, stop: &AtomicBool, deadline: Instant) -> Option<Instant> {
    let mut http = Http::new(keel.addr);
    let body = json!({"runId": run_id, "timeoutMs": 0}).to_string();
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        if let Ok(reply) = http.request(
            "POST",
            "/api/rpc/agent.wait",
            Some(&keel.token),
            body.as_bytes(),
            PROBE_TIMEOUT,
        ) && let Ok(v) = serde_json::from_slice::<Value>(&reply.body)
            && v["ok"] == true
            && v["payload"]["status"] != "timeout"
        {
            return Some(Instant::now());
        }
        thread::sleep(RUN_END_POLL);
    }
    None
}

struct FanOut {
    clients: usize,
    /// The waiters (the sender is apart).
    waiters: Vec<Listener>,
    sender: Listener,
    /// First assistant delta anywhere → last terminal event anywhere.
    window: Option<(Instant, Instant)>,
    probes: Vec<(Instant, Duration, bool)>,
    slow_metric: f64,
    setup: Duration,
    /// When keel's run ended, by `agent.wait {timeoutMs: 0}` over HTTP (answered on the
    /// reactor, not queued behind the run's events).
    run_ended: Option<Instant>,
    /// CPU seconds of keel and of this bench from `chat.send` to the last listener's end,
    /// and that wall time.
    cpu: Option<(f64, f64)>,
    cpu_wall: Duration,
}

impl FanOut {
    fn window_len(&self) -> Duration {
        self.window.map_or(Duration::ZERO, |(a, b)| b - a)
    }

    /// The probes sent during the streaming phase: (p50, p99, max, count, errors).
    fn health(&self) -> (Duration, Duration, Duration, usize, usize) {
        let Some((from, to)) = self.window else {
            return (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0, 0);
        };
        let inside: Vec<&(Instant, Duration, bool)> = self
            .probes
            .iter()
            .filter(|(at, _, _)| *at >= from && *at <= to)
            .collect();
        let times = sorted(&inside.iter().map(|p| p.1).collect::<Vec<_>>());
        (
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            times.last().copied().unwrap_or_default(),
            inside.len(),
            inside.iter().filter(|p| !p.2).count(),
        )
    }
}

fn stream_behavior(o: &Opts) -> Behavior {
    let text = (0..o.chunks)
        .map(|i| {
            let mut c = format!("{i:07} ");
            while c.len() < o.chunk_bytes {
                c.push('x');
            }
            c
        })
        .collect();
    Behavior::Stream {
        text,
        tool_call: None,
        usage: (100, o.chunks as u64),
        delay_between: Duration::ZERO,
    }
}

fn fan_out(
    o: &Opts,
    keel: &Keel,
    a: &FakeProvider,
    clients: usize,
    session: &str,
) -> Result<FanOut, String> {
    let setup_start = Instant::now();
    let slow_before = metric(keel, "keel_slow_consumers_closed_total")?;
    let mut waiters = Vec::with_capacity(clients);
    for i in 0..clients {
        let ws = Ws::connect(keel.addr, &keel.token).map_err(|e| format!("client {i}: {e}"))?;
        waiters.push(Listener::new(ws, false));
    }
    let mut sender = Listener::new(Ws::connect(keel.addr, &keel.token)?, true);
    let setup = setup_start.elapsed();
    a.push(Behavior::tool_call("pause", json!({})));
    a.push(stream_behavior(o));

    // The run starts with the `pause` tool: the listeners join during it.
    let keel_pid = keel.child.id().to_string();
    let cpu_before = cpu_seconds(&keel_pid).zip(cpu_seconds("self"));
    let t_send = Instant::now();
    let deadline = t_send + FANOUT_TIMEOUT;
    let id = sender.ws.send(
        "chat.send",
        &json!({"sessionKey": session, "message": "stream a lot", "idempotencyKey": session}),
    )?;
    let mut early: Vec<(Instant, String)> = Vec::new();
    let res = sender
        .ws
        .wait_res(&id, deadline, |at, t| early.push((at, t.to_string())))?;
    let run_id = res["payload"]["runId"]
        .as_str()
        .ok_or_else(|| format!("chat.send: {res}"))?
        .to_string();
    for (at, t) in early {
        sender.on_text(at, &t, &run_id);
    }
    // Split the listeners over the threads, the sender with the first ones.
    let threads = o.threads.min(clients.max(1));
    let mut groups: Vec<Vec<Listener>> = (0..threads).map(|_| Vec::new()).collect();
    groups[0].push(sender);
    for (i, w) in waiters.into_iter().enumerate() {
        groups[i % threads].push(w);
    }
    let interval = Duration::from_millis(o.read_interval_ms);
    let stop = AtomicBool::new(false);
    let (all, probes, run_ended) = thread::scope(|s| {
        let prober = s.spawn(|| probe(keel.addr, o.rate, &stop, deadline));
        let end_poller = s.spawn(|| run_end(keel, &run_id, &stop, deadline));
        let run_id = run_id.as_str();
        let readers: Vec<_> = groups
            .into_iter()
            .map(|g| s.spawn(move || read_listeners(g, run_id, deadline, interval)))
            .collect();
        let mut all = Vec::new();
        let mut panicked = false;
        for r in readers {
            match r.join() {
                Ok(ls) => all.extend(ls),
                Err(_) => panicked = true,
            }
        }
        stop.store(true, Ordering::Release);
        let probes = prober.join().unwrap_or_default();
        let run_ended = end_poller.join().unwrap_or(None);
        if panicked {
            Err("a reader thread panicked".to_string())
        } else {
            Ok((all, probes, run_ended))
        }
    })?;
    let cpu_wall = t_send.elapsed();
    let cpu = cpu_before
        .zip(cpu_seconds(&keel_pid).zip(cpu_seconds("self")))
        .map(|((k0, b0), (k1, b1))| (k1 - k0, b1 - b0));
    let (senders, waiters): (Vec<Listener>, Vec<Listener>) =
        all.into_iter().partition(|l| l.sender);
    let sender = senders
        .into_iter()
        .next()
        .ok_or("the sender went missing")?;
    let everyone = || waiters.iter().chain(std::iter::once(&sender));
    let from = everyone().filter_map(|l| l.first_delta).min();
    let to = everyone().filter_map(|l| l.end).max();
    let slow_after = metric(keel, "keel_slow_consumers_closed_total")?;
    Ok(FanOut {
        clients,
        window: from.zip(to),
        waiters,
        sender,
        probes,
        slow_metric: slow_after - slow_before,
        setup,
        run_ended,
        cpu,
        cpu_wall,
    })
}

// ---------------------------------------------------------------------------------------------
// The report.

fn print_failover(results: &[CaseResult], keel_ms: &[(String, u64)], o: &Opts) {
    println!(
        "1. failover: primary a fails, fallback b streams; {} runs per case, stallMs {}",
        o.runs, o.stall_ms
    );
    println!(
        "   times in ms, median / max; 'failure' = the fake's answer (status, reset) or request + stallMs (stall)"
    );
    println!(
        "   {:<30} {:>17} {:>17} {:>17} {:>17} {:>17}  reason",
        "case",
        "fail→1st token",
        "fail→fallback req",
        "fail→error event",
        "send→1st token",
        "keel 'failed after'"
    );
    for r in results {
        let col = |f: fn(&FailoverRun) -> Duration| {
            let v: Vec<Duration> = r.runs.iter().map(f).collect();
            format!("{:>7.1} / {:>7.1}", ms(median(&v)), ms(max_of(&v)))
        };
        let keel: Vec<Duration> = r
            .runs
            .iter()
            .filter_map(|run| {
                keel_ms
                    .iter()
                    .find(|(id, _)| *id == run.run_id)
                    .map(|(_, n)| Duration::from_millis(*n))
            })
            .collect();
        let keel_col = if keel.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:>7.0} / {:>7.0}", ms(median(&keel)), ms(max_of(&keel)))
        };
        let mut reasons: Vec<&str> = r.runs.iter().map(|x| x.reason.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        println!(
            "   {:<30} {:>17} {:>17} {:>17} {:>17} {:>17}  {}",
            r.case.label,
            col(|x| x.fail_to_token),
            col(|x| x.fail_to_fallback),
            col(|x| x.fail_to_error_event),
            col(|x| x.e2e),
            keel_col,
            reasons.join(",")
        );
    }
    let retried: usize = results.iter().map(|r| r.retried).sum();
    if retried > 0 {
        println!(
            "   ({retried} run(s) made again: the thread watching the fakes was late to see a request)"
        );
    }
    let totals: Vec<Duration> = results
        .iter()
        .flat_map(|r| r.runs.iter().map(|x| x.total))
        .collect();
    println!(
        "   whole runs (send → final chat event): median {:.1} ms, max {:.1} ms",
        ms(median(&totals)),
        ms(max_of(&totals))
    );
}

/// Prints a fan-out run; returns the wrong things it saw.
fn print_fan_out(title: &str, f: &FanOut, o: &Opts) -> Vec<String> {
    let mut bad = Vec::new();
    println!("{title}");
    let window = f.window_len();
    let all: Vec<&Listener> = f.waiters.iter().chain(std::iter::once(&f.sender)).collect();
    let stream_total: u64 = f.waiters.iter().map(|l| l.stream_events).sum();
    let bytes_total: u64 = all.iter().map(|l| l.bytes).sum();
    println!(
        "   {} chunks of {} bytes; {} waiter(s) + the sender; connecting them took {:.0} ms",
        o.chunks,
        o.chunk_bytes,
        f.clients,
        ms(f.setup)
    );
    println!(
        "   streaming phase (first delta anywhere → last terminal event): {:.0} ms",
        ms(window)
    );
    println!(
        "   sender: {} run events ({} while streaming), {:.1} MB of which {} chat deltas {:.1} MB, {:.0} events/s, seq gaps {}, ended {}",
        f.sender.events,
        f.sender.stream_events,
        f.sender.bytes as f64 / 1e6,
        f.sender.chat_deltas,
        f.sender.chat_delta_bytes as f64 / 1e6,
        per_second(f.sender.stream_events, own_window(&f.sender)),
        f.sender.gaps,
        f.sender.terminal.as_deref().unwrap_or("never")
    );
    if f.clients > 0 {
        let mut counts: Vec<u64> = f.waiters.iter().map(|l| l.events).collect();
        counts.sort_unstable();
        let mut rates: Vec<f64> = f
            .waiters
            .iter()
            .map(|l| per_second(l.stream_events, own_window(l)))
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "   events per waiter: min {} median {} max {}; all listeners received {:.1} MB",
            counts[0],
            counts[counts.len() / 2],
            counts[counts.len() - 1],
            bytes_total as f64 / 1e6
        );
        println!(
            "   delivered: {:.0} events/s in total over the waiters ({} events / {:.0} ms); per waiter min {:.0} median {:.0} events/s",
            per_second(stream_total, window),
            stream_total,
            ms(window),
            rates[0],
            rates[rates.len() / 2]
        );
    }
    // A waiter that joined after the first token (the tool's pause should prevent it).
    let late = f
        .waiters
        .iter()
        .filter(|l| {
            l.first_seq
                .zip(f.sender.first_delta_seq)
                .is_none_or(|(w, s)| w > s)
        })
        .count();
    let saw_final = all
        .iter()
        .filter(|l| l.terminal.as_deref() == Some("final"))
        .count();
    let slow = all.iter().filter(|l| l.slow_consumer).count();
    let gaps: u64 = all.iter().map(|l| l.gaps).sum();
    let wait_ok = f
        .waiters
        .iter()
        .filter(|l| l.wait_status.as_deref() == Some("ok"))
        .count();
    println!(
        "   saw the final chat event: {saw_final}/{}; agent.wait answered ok: {wait_ok}/{}; closed as slow consumers: {slow} (keel's counter +{}); seq gaps: {gaps}; waiters that joined after the first token: {late}",
        all.len(),
        f.clients,
        f.slow_metric
    );
    for l in &all {
        let who = if l.sender { "sender" } else { "a waiter" };
        if let Some(e) = &l.error {
            bad.push(format!("{who}: {e}"));
        } else if l.terminal.as_deref() != Some("final") && !l.slow_consumer {
            bad.push(format!(
                "{who} did not see the run end well: terminal {:?}, {}",
                l.terminal,
                l.closed.as_deref().unwrap_or("still open at the deadline")
            ));
        }
        if l.gaps > 0 && !l.slow_consumer {
            bad.push(format!("{who} saw {} seq gap(s)", l.gaps));
        }
    }
    if f.clients > 0 && wait_ok + slow < f.clients {
        bad.push(format!(
            "only {wait_ok} of {} agent.wait calls answered ok",
            f.clients
        ));
    }
    if let (Some(ended), Some((first, last))) = (f.run_ended, f.window) {
        println!(
            "   keel's run ended (agent.wait polled over HTTP) {:.0} ms after the first delta; the last listener got the end {:.0} ms after that",
            ms(ended.saturating_duration_since(first)),
            ms(last.saturating_duration_since(ended))
        );
    }
    if let Some((k, b)) = f.cpu {
        println!(
            "   CPU from chat.send to the end ({:.1} s wall, {} cpus): keel {k:.1} s, this bench (clients, fakes, probes) {b:.1} s",
            f.cpu_wall.as_secs_f64(),
            thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let (p50, p99, max, n, errors) = f.health();
    println!(
        "   /healthz during the streaming phase ({n} probes at {}/s, {errors} errors): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        o.rate,
        ms(p50),
        ms(p99),
        ms(max)
    );
    if errors > 0 {
        bad.push(format!("{errors} /healthz probe(s) failed"));
    }
    let all_errors = f.probes.iter().filter(|p| !p.2).count();
    if all_errors > errors {
        bad.push(format!(
            "{} /healthz probe(s) failed outside the streaming phase",
            all_errors - errors
        ));
    }
    bad
}

fn own_window(l: &Listener) -> Duration {
    match (l.first_delta, l.end) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    }
}

fn run(o: &Opts) -> Result<i32, String> {
    let a = FakeProvider::start(API);
    let b = FakeProvider::start(API);
    let mut keel = start_keel(&Launch {
        exe: &o.keel,
        work: &o.work,
        config: &keel_config(o, &a, &b),
        also_unset: &[],
        // Boot work (the usage index of the empty state) is over before anything is measured;
        // a keel that never says so is measured anyway.
        ready: "usage index up to date",
        ready_required: false,
        timeout: START_TIMEOUT,
    })?;
    let pid = keel.child.id();
    println!(
        "keel pid {pid} on {}; fakes: a {} (primary), b {} (fallback)",
        keel.addr,
        a.addr(),
        b.addr()
    );
    let mut wrong = Wrong::default();

    eprintln!("== failover ==");
    let failover = failover_phase(o, &keel, &a, &b, &mut wrong)?;
    let keel_ms = failed_after(&keel.log.text());

    let baseline = if o.baseline {
        eprintln!("== fan-out baseline: the sender alone ==");
        Some(fan_out(o, &keel, &a, 0, "agent:fan:baseline")?)
    } else {
        None
    };
    eprintln!("== fan-out: {} listeners ==", o.clients);
    let fan = fan_out(o, &keel, &a, o.clients, "agent:fan:fanout")?;
    let rss = procfs::status(pid, "VmHWM").ok();

    eprintln!("== stopping keel (SIGTERM) ==");
    let (status, took, killed) = stop_keel(&mut keel, STOP_TIMEOUT);
    drop(a);
    drop(b);

    // ---- figures ------------------------------------------------------------------------------
    println!();
    print_failover(&failover, &keel_ms, o);
    println!();
    if let Some(base) = &baseline {
        for w in print_fan_out(
            "2a. fan-out baseline: the same run, only its sender listening",
            base,
            o,
        ) {
            wrong.push(format!("baseline: {w}"));
        }
        println!();
    }
    for w in print_fan_out(
        &format!(
            "2. fan-out: {} clients call agent.wait on one streaming run",
            o.clients
        ),
        &fan,
        o,
    ) {
        wrong.push(w);
    }
    if let Some(kib) = rss {
        println!(
            "   keel's peak RSS (VmHWM) at the end: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    println!();
    println!(
        "gateway: {} {:.1} s after SIGTERM",
        match (status, killed) {
            (_, true) => "did not exit; killed with SIGKILL".to_string(),
            (Some(s), _) => format!("exited with {s}"),
            (None, _) => "state unknown".to_string(),
        },
        took.as_secs_f64()
    );

    // ---- summary ------------------------------------------------------------------------------
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    for r in &failover {
        let v: Vec<Duration> = r.runs.iter().map(|x| x.fail_to_token).collect();
        let worst = ms(max_of(&v));
        rows.push((
            format!(
                "failover {}: failure → fallback's first token, max",
                r.case.key
            ),
            format!("{worst:.1} ms"),
            format!("<= {TARGET_FAILOVER_MS:.0} ms"),
            verdict(worst <= TARGET_FAILOVER_MS),
        ));
    }
    let (_, p99, max, n, errors) = fan.health();
    rows.push((
        format!("/healthz during fan-out: p99 ({n} probes, {errors} errors)"),
        format!("{:.3} ms", ms(p99)),
        format!("<= {TARGET_HEALTH_P99_MS:.0} ms"),
        verdict(n > 0 && ms(p99) <= TARGET_HEALTH_P99_MS && errors == 0),
    ));
    rows.push((
        "/healthz during fan-out: max".into(),
        format!("{:.3} ms", ms(max)),
        format!("<= {TARGET_HEALTH_MAX_MS:.0} ms"),
        verdict(n > 0 && ms(max) <= TARGET_HEALTH_MAX_MS && errors == 0),
    ));
    let total_rate = per_second(
        fan.waiters.iter().map(|l| l.stream_events).sum(),
        fan.window_len(),
    );
    rows.push((
        format!("fan-out: events/s delivered to {} waiters", o.clients),
        format!("{total_rate:.0}"),
        String::new(),
        "",
    ));
    let slow = fan
        .waiters
        .iter()
        .chain(std::iter::once(&fan.sender))
        .filter(|l| l.slow_consumer)
        .count();
    rows.push((
        "fan-out: listeners closed as slow consumers".into(),
        format!("{slow}"),
        "0".into(),
        verdict(slow == 0 && fan.slow_metric == 0.0),
    ));
    let saw_final = fan
        .waiters
        .iter()
        .chain(std::iter::once(&fan.sender))
        .filter(|l| l.terminal.as_deref() == Some("final"))
        .count();
    rows.push((
        "fan-out: listeners that saw the final chat event".into(),
        format!("{saw_final}/{}", o.clients + 1),
        "all".into(),
        verdict(saw_final == o.clients + 1),
    ));
    println!();
    println!("== summary ==");
    for (what, value, target, v) in &rows {
        println!("{what:<68} {value:>12}  {target:<12} {v}");
    }
    let misses = rows.iter().filter(|r| r.3 == "MISS").count();
    println!(
        "{misses} target(s) missed; {} wrong behaviour(s)",
        wrong.0.len()
    );
    Ok(if wrong.0.is_empty() { 0 } else { 1 })
}

fn main() {
    bench_main("agent", parse_opts, usage, run);
}
