//! Delivery: how fast the durable outbound queue takes messages in and gets them out — against
//! a release keel that this binary starts itself, with a fake webhook receiver on loopback.
//!
//! `scripts/bench-delivery.sh` builds keel and this bench and runs `delivery --keel PATH --work
//! DIR`. This binary then:
//!
//! 0. starts the receiver on `127.0.0.1:0` (a thread per connection; it answers every request
//!    `200 OK` with a small JSON body, checks `X-Keel-Signature` and records, per idempotency
//!    key, the first arrival's `Instant` and how many times the key came); writes
//!    `DIR/state/keel.json` with the `webhook` channel pointing at it and spawns `keel serve
//!    --port 0 --state-dir DIR/state` (stderr to `DIR/server.log`, its pid in `DIR/keel.pid` so
//!    that the script can kill it should this binary die first); the port is the one of
//!    `listening on 127.0.0.1:PORT`, the token is `DIR/state/gateway.token`, and nothing is
//!    sent before the log says `delivery queue` (the queue opens on a worker at boot).
//! 1. **enqueue**: `--threads` client threads, each with a keep-alive connection, send
//!    `--messages` messages between them as fast as they can (`POST /api/rpc/send`, channel
//!    `webhook`, a key of its own per message). The moment the `200 {"status":"pending"}`
//!    comes back is the moment the message is queued durably: keel wrote its entry with fsync
//!    (temp file, fsync, rename, directory fsync) before it answered.
//! 2. **delivery**: waits (at most `--timeout-s`, 120 s) until every accepted key has reached
//!    the receiver, then until `delivery.list` shows nothing pending or sending, then a short
//!    grace period for late duplicates.
//!
//! then stops keel with SIGTERM (SIGKILL after 15 s) and prints: enqueue throughput and the
//! `send` RPC latency, delivery throughput end to end, enqueue → delivery latency (from the
//! moment the sender had its 200 to the moment the receiver had the request), duplicates
//! and failures.
//!
//! ```text
//! delivery --keel PATH --work DIR [--messages 2000] [--threads 4] [--timeout-s 120]
//! ```
//! Exit status: 0 when it ran correctly (every accepted message delivered once, no failure);
//! 1 when keel behaved wrongly (a refused or failed send, a message lost or delivered twice,
//! a bad signature, an entry left failed or unknown); 2 when the run could not be set up.

use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
// The harness shared with the tests; `support` is the benches' side of it.
#[path = "../testkit/mod.rs"]
mod testkit;
use support::*;

/// keel must log `listening on` (and then `delivery queue`) within this.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Each `send` / `delivery.list` exchange.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole enqueue phase.
const SEND_PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// After everything arrived, until `delivery.list` shows nothing pending or sending.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// After that, how long late duplicates may still come.
const DUPLICATE_GRACE: Duration = Duration::from_millis(500);
/// SIGTERM, then SIGKILL after this.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const SECRET: &str = "bench-secret";
/// Error messages printed as they happen; the rest are only counted.
const MAX_LOGGED: usize = 20;

struct Opts {
    keel: PathBuf,
    work: PathBuf,
    messages: usize,
    threads: usize,
    timeout: Duration,
}

fn usage() -> &'static str {
    "usage: delivery --keel PATH --work DIR [--messages N (2000)] [--threads N (4)] [--timeout-s S (120)]"
}

fn parse_opts() -> Result<Opts, String> {
    let (mut keel, mut work) = (None, None);
    let (mut messages, mut threads, mut timeout_s) = (2000u64, 4u64, 120u64);
    for (name, value) in flags(
        &["--keel", "--work", "--messages", "--threads", "--timeout-s"],
        &[],
    )? {
        match name.as_str() {
            "--keel" => keel = Some(PathBuf::from(value)),
            "--work" => work = Some(PathBuf::from(value)),
            "--messages" => messages = number(&name, &value)?,
            "--threads" => threads = number(&name, &value)?,
            _ => timeout_s = number(&name, &value)?,
        }
    }
    if !(1..=100_000).contains(&messages) {
        return Err("--messages must be within 1..=100000".into());
    }
    if !(1..=64).contains(&threads) {
        return Err("--threads must be within 1..=64".into());
    }
    if !(1..=600).contains(&timeout_s) {
        return Err("--timeout-s must be within 1..=600".into());
    }
    Ok(Opts {
        keel: keel.ok_or("--keel is required")?,
        work: work.ok_or("--work is required")?,
        messages: messages as usize,
        threads: threads as usize,
        timeout: Duration::from_secs(timeout_s),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wrong behaviour of keel (exit 1), the first few printed as they happen.
#[derive(Default)]
struct Wrong(Mutex<Vec<String>>);

impl Wrong {
    fn push(&self, msg: String) {
        let mut v = lock(&self.0);
        if v.len() < MAX_LOGGED {
            eprintln!("delivery bench: {msg}");
        }
        v.push(msg);
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

// ---------------------------------------------------------------------------------------------
// The run.

/// One accepted send: its key, when the request went out and when the 200 came back.
struct Accepted {
    key: String,
    started: Instant,
    acked: Instant,
}

fn send_all(o: &Opts, keel: &Keel, wrong: &Wrong) -> Vec<Accepted> {
    let next = AtomicUsize::new(0);
    let deadline = Instant::now() + SEND_PHASE_TIMEOUT;
    let mut all = Vec::with_capacity(o.messages);
    thread::scope(|sc| {
        let handles: Vec<_> = (0..o.threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut http = Http::new(keel.addr);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= o.messages {
                            break;
                        }
                        if Instant::now() >= deadline {
                            wrong.push(format!(
                                "send {i}: not sent, the enqueue phase ran out of its {} s",
                                SEND_PHASE_TIMEOUT.as_secs()
                            ));
                            continue;
                        }
                        let key = format!("bench-{i:06}");
                        let params = json!({"channel": "webhook", "to": "anyone",
                            "message": format!("delivery bench message {i}"), "idempotencyKey": key});
                        let started = Instant::now();
                        let r = rpc(&mut http, &keel.token, RPC_TIMEOUT, "send", &params);
                        let acked = Instant::now();
                        match r {
                            Ok(v)
                                if v["ok"] == true
                                    && v["payload"]["status"] == "pending"
                                    && v["payload"]["id"].is_string() =>
                            {
                                mine.push(Accepted {
                                    key,
                                    started,
                                    acked,
                                });
                            }
                            Ok(v) => wrong.push(format!(
                                "send {key}: unexpected answer {}",
                                body_snippet(v.to_string().as_bytes())
                            )),
                            Err(e) => wrong.push(format!("send {key}: {e}")),
                        }
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            if let Ok(mine) = h.join() {
                all.extend(mine);
            }
        }
    });
    all
}

fn run(o: &Opts) -> Result<i32, String> {
    let receiver = Receiver::start(SECRET)?;
    let config = json!({
        "gateway": {"drainTimeoutMs": 5000, "drainGraceMs": 1000},
        "channels": {"webhook": {"url": receiver.url(), "secret": SECRET}},
    });
    let mut keel = start_keel(&Launch {
        exe: &o.keel,
        work: &o.work,
        config: &config,
        also_unset: &["KEEL_TEST_DELIVERY_FULL_DISK"],
        // The queue opens on a worker at boot: sends are refused until then.
        ready: "delivery queue",
        ready_required: true,
        timeout: START_TIMEOUT,
    })?;
    println!(
        "delivery bench: {} messages, {} client threads, keel at {}, webhook receiver at {}",
        o.messages,
        o.threads,
        keel.addr,
        receiver.url()
    );
    let wrong = Wrong::default();

    // 1. Enqueue.
    let t0 = Instant::now();
    let accepted = send_all(o, &keel, &wrong);
    let send_end = Instant::now();
    let send_failures = o.messages - accepted.len();

    // 2. Delivery: every accepted key at the receiver.
    let wait_deadline = send_end + o.timeout;
    let all_arrived = loop {
        let arrived = {
            let g = receiver.snapshot();
            accepted.iter().all(|a| g.by_key.contains_key(&a.key))
        };
        if arrived {
            break true;
        }
        if Instant::now() >= wait_deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let waited_until = Instant::now();
    // Then the queue must settle: nothing pending or sending.
    let mut http = Http::new(keel.addr);
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let counts = loop {
        let c = rpc(
            &mut http,
            &keel.token,
            RPC_TIMEOUT,
            "delivery.list",
            &json!({"limit": 0}),
        )
        .map(|v| v["payload"]["counts"].clone());
        let busy = |c: &Value, s: &str| c[s].as_u64().unwrap_or(0);
        match c {
            Ok(c) if busy(&c, "pending") + busy(&c, "sending") == 0 => break Some(c),
            Ok(c) if Instant::now() >= settle_deadline => {
                wrong.push(format!(
                    "the queue did not settle within {} s: {c}",
                    SETTLE_TIMEOUT.as_secs()
                ));
                break Some(c);
            }
            Err(e) if Instant::now() >= settle_deadline => {
                wrong.push(format!("delivery.list: {e}"));
                break None;
            }
            _ => thread::sleep(Duration::from_millis(20)),
        }
    };
    thread::sleep(DUPLICATE_GRACE);
    let metrics = http
        .request("GET", "/metrics", Some(&keel.token), b"", RPC_TIMEOUT)
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
    drop(http);
    let (stopped, stop_took, _) = stop_keel(&mut keel, STOP_TIMEOUT);

    // Figures.
    let g = receiver.snapshot();
    let mut lost = Vec::new();
    let mut e2e = Vec::with_capacity(accepted.len());
    let mut early = 0usize;
    let mut last_arrival = t0;
    for a in &accepted {
        match g.by_key.get(&a.key) {
            Some((at, _)) => {
                // The dispatcher may post before the sender has read its 200.
                if *at < a.acked {
                    early += 1;
                }
                e2e.push(at.saturating_duration_since(a.acked));
                last_arrival = last_arrival.max(*at);
            }
            None => lost.push(a.key.clone()),
        }
    }
    let duplicates: u64 = g.by_key.values().map(|(_, n)| u64::from(*n - 1)).sum();
    let dup_keys = g.by_key.values().filter(|(_, n)| *n > 1).count();
    let sent_keys: HashSet<&str> = accepted.iter().map(|a| a.key.as_str()).collect();
    let unexpected = g
        .by_key
        .keys()
        .filter(|k| !sent_keys.contains(k.as_str()))
        .count();
    let first_arrival = g.by_key.values().map(|(at, _)| *at).min();
    let rpc_lat = sorted(
        &accepted
            .iter()
            .map(|a| a.acked - a.started)
            .collect::<Vec<_>>(),
    );
    let e2e = sorted(&e2e);
    let last_ack = accepted.iter().map(|a| a.acked).max().unwrap_or(t0);
    let enqueue_window = last_ack.saturating_duration_since(t0);
    let delivered = accepted.len() - lost.len();

    if !lost.is_empty() {
        wrong.push(format!(
            "{} accepted message(s) not delivered within {} s, e.g. {:?}",
            lost.len(),
            o.timeout.as_secs(),
            &lost[..lost.len().min(5)]
        ));
    }
    if duplicates > 0 {
        wrong.push(format!(
            "{duplicates} duplicate delivery(ies) over {dup_keys} key(s)"
        ));
    }
    if unexpected > 0 {
        wrong.push(format!(
            "{unexpected} key(s) delivered that were never sent"
        ));
    }
    if g.malformed > 0 {
        wrong.push(format!("{} malformed webhook request(s)", g.malformed));
    }
    if g.bad_signature > 0 {
        wrong.push(format!(
            "{} webhook request(s) with a missing or wrong X-Keel-Signature",
            g.bad_signature
        ));
    }
    if let Some(c) = &counts {
        for s in ["failed", "unknown_after_send"] {
            if c[s].as_u64().unwrap_or(0) > 0 {
                wrong.push(format!("{} entr(ies) {s} after the run: {c}", c[s]));
            }
        }
    }
    if stopped.is_none() {
        wrong.push(format!(
            "keel did not stop within {} s of SIGTERM (killed)",
            STOP_TIMEOUT.as_secs()
        ));
    }

    let p = |v: &[Duration], q: f64| ms(percentile(v, q));
    println!();
    println!(
        "== enqueue (POST /api/rpc/send, {} threads, keep-alive) ==",
        o.threads
    );
    println!(
        "  each accepted send was durable when its 200 came back: the entry is written with fsync\n  \
         (temp file, fsync, rename, directory fsync) at enqueue, and again at each state change\n  \
         (pending -> sending -> sent, then the file is removed with a directory fsync)"
    );
    println!(
        "  accepted {}/{} in {:.3} s: {:.0} sends/s",
        accepted.len(),
        o.messages,
        enqueue_window.as_secs_f64(),
        per_second(accepted.len() as u64, enqueue_window)
    );
    println!(
        "  send RPC latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p(&rpc_lat, 50.0),
        p(&rpc_lat, 99.0),
        p(&rpc_lat, 100.0)
    );
    println!();
    println!("== delivery (keel -> webhook receiver on loopback) ==");
    let e2e_window = last_arrival.saturating_duration_since(t0);
    println!(
        "  delivered {delivered}/{} in {:.3} s from the first send: {:.0} messages/s end to end",
        accepted.len(),
        e2e_window.as_secs_f64(),
        per_second(delivered as u64, e2e_window)
    );
    if let Some(first) = first_arrival {
        let w = last_arrival.saturating_duration_since(first);
        println!(
            "  first to last arrival {:.3} s: {:.0} messages/s; the queue emptied {:.3} s after the last send was acknowledged",
            w.as_secs_f64(),
            per_second(delivered.saturating_sub(1) as u64, w),
            last_arrival
                .saturating_duration_since(last_ack)
                .as_secs_f64()
        );
    }
    println!(
        "  enqueue -> delivery latency (200 at the sender -> request at the receiver): median {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
        p(&e2e, 50.0),
        p(&e2e, 99.0),
        p(&e2e, 100.0),
        if early > 0 {
            format!(" ({early} arrived before the sender read its 200, counted as 0)")
        } else {
            String::new()
        }
    );
    println!(
        "  receiver: {} requests, {} distinct keys, duplicates {duplicates}, malformed {}, bad signatures {}",
        g.requests,
        g.by_key.len(),
        g.malformed,
        g.bad_signature
    );
    println!(
        "  failures: {send_failures} send(s) refused or failed, {} lost, {unexpected} unexpected",
        lost.len()
    );
    if let Some(c) = &counts {
        println!("  queue after the run (delivery.list counts): {c}");
    }
    let attempts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("keel_delivery_attempts_total{"))
        .collect();
    if !attempts.is_empty() {
        println!("  {}", attempts.join(", "));
    }
    if !all_arrived {
        println!(
            "  (gave up waiting {:.1} s after the last send)",
            waited_until
                .saturating_duration_since(send_end)
                .as_secs_f64()
        );
    }
    println!(
        "  keel stopped after SIGTERM in {:.3} s: {}",
        stop_took.as_secs_f64(),
        stopped.map_or("killed (SIGKILL)".to_string(), |s| s.to_string())
    );
    drop(g);
    drop(receiver);
    let n = wrong.len();
    println!();
    if n == 0 {
        println!("OK: every accepted message delivered exactly once");
        Ok(0)
    } else {
        println!("WRONG: {n} problem(s), see above and stderr");
        Ok(1)
    }
}

fn main() {
    bench_main("delivery", parse_opts, usage, run);
}
