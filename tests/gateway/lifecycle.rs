//! Signals, the drain, the diagnostic dump, reload and systemd notifications.

use crate::common::*;
use serde_json::{Value, json};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Starts `keel.test.busy` (on the cpu pool) over HTTP on a thread and waits until it runs.
fn start_busy(g: &Gateway, params: Value) -> std::thread::JoinHandle<Response> {
    let h = g.spawn_rpc("keel.test.busy", params);
    g.wait_metric("keel_jobs_in_flight{pool=\"cpu\"}", 1.0);
    h
}

/// SIGTERM to a gateway configured with `drainTimeoutMs` and `drainGraceMs` of 1000: it must
/// exit by drain + grace + 1 s. Returns its exit status and how long that took.
#[track_caller]
fn sigterm_with_drain_and_grace_of_1s(g: &mut Gateway) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    g.signal("TERM");
    let status = g.wait_exit(BOUND).expect("exits");
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_millis(3000),
        "exit took {took:?} (drain 1 s + grace 1 s + 1 s)"
    );
    (status, took)
}

#[test]
fn sigterm_lets_an_in_flight_job_finish_and_exits_zero() {
    let mut g = Gateway::start(Opts::hooks());
    let mut ws = g.ws();
    let job = start_busy(&g, json!({"ms": 1500, "sleep": true}));
    g.signal("TERM");
    // The WebSocket client is told, readiness drops, liveness stays.
    let shutdown = loop {
        match ws.next() {
            Got::Frame(f) if f["event"] == "shutdown" => break f,
            Got::Frame(_) => {}
            Got::Closed(c) => panic!("closed {c:?} before the shutdown event"),
        }
    };
    assert!(shutdown["payload"]["reason"].as_str().is_some());
    let r = g.get("/readyz");
    assert_eq!(r.status, 503);
    assert!(r.json()["failing"].to_string().contains("draining"));
    assert_eq!(g.get("/healthz").status, 200);
    // New work is refused with DRAINING.
    let refused = g.rpc("status", json!({}));
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "DRAINING");
    // The in-flight job's reply arrives.
    let r = job.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ws.close_code(), Some(1012));
    let status = g.wait_exit(BOUND).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", g.log_text());
    assert!(g.log_text().contains("SIGTERM: draining"));
}

#[test]
fn sigterm_with_a_job_that_ignores_cancel_exits_by_deadline_plus_grace() {
    let mut g = Gateway::start(
        Opts::hooks().config(json!({"gateway": {"drainTimeoutMs": 1000, "drainGraceMs": 1000}})),
    );
    let job = start_busy(
        &g,
        json!({"ms": 60_000, "ignoreCancel": true, "sleep": true}),
    );
    let (status, took) = sigterm_with_drain_and_grace_of_1s(&mut g);
    assert!(
        took >= Duration::from_millis(1900),
        "exit came early: {took:?}"
    );
    assert_ne!(status.code(), Some(0));
    let log = g.log_text();
    assert!(log.contains("aborting job"), "{log}");
    assert!(log.contains("drain grace expired"), "{log}");
    // The client was told its job was cancelled at the drain deadline.
    let r = job.join().unwrap();
    assert_eq!(r.json()["error"]["code"], "CANCELLED");
}

#[test]
fn a_second_sigterm_cancels_at_once() {
    let mut g =
        Gateway::start(Opts::hooks().config(json!({"gateway": {"drainTimeoutMs": 60_000}})));
    let job = start_busy(&g, json!({"ms": 60_000}));
    g.signal("TERM");
    assert!(g.wait_log("SIGTERM: draining", BOUND).is_some());
    let t0 = Instant::now();
    g.signal("TERM");
    let status = g.wait_exit(BOUND).expect("exits");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(1));
    assert!(g.log_text().contains("second SIGTERM"));
    let r = job.join().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "CANCELLED");
}

#[test]
fn sigusr1_writes_a_dump_listing_the_in_flight_job() {
    let g = Gateway::start(Opts::hooks());
    let job = start_busy(&g, json!({"ms": 2000, "sleep": true, "lane": "background"}));
    g.signal("USR1");
    let dir = g.state().join("diagnostics");
    let path = eventually(BOUND, || {
        files(&dir)
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
    });
    let dump: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let jobs = dump["jobs"].as_array().unwrap();
    let busy = jobs
        .iter()
        .find(|j| j["kind"] == "keel.test.busy")
        .unwrap_or_else(|| panic!("{dump:#}"));
    assert_eq!(busy["state"], "running");
    assert_eq!(busy["lane"], "background");
    for k in ["ageMs", "queueWaitMs", "deadlineInMs", "lastProgressMsAgo"] {
        assert!(busy[k].is_number(), "{k} in {busy}");
    }
    for k in ["pools", "pressure", "reactor", "rssBytes", "connections"] {
        assert!(!dump[k].is_null(), "dump lacks {k}");
    }
    assert!(dump["reactor"]["lagHistogram"]["counts"].is_array());
    assert!(g.wait_log("diagnostic dump written to", BOUND).is_some());
    assert_eq!(job.join().unwrap().status, 200);
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let g =
        Gateway::start(Opts::default().config(json!({"gateway": {"auth": {"token": "first"}}})));
    let cfg = g.state().join("keel.json");
    std::fs::write(&cfg, "{ this is not json").unwrap();
    g.signal("HUP");
    assert!(
        g.wait_log("refused; keeping the running config", BOUND)
            .is_some(),
        "{}",
        g.log_text()
    );
    assert_eq!(
        rpc_with(&g.addr(), "first", "health", &json!({})).status,
        200
    );
    // A valid file is taken.
    std::fs::write(
        &cfg,
        json!({"gateway": {"auth": {"token": "second"}}}).to_string(),
    )
    .unwrap();
    g.signal("HUP");
    assert!(g.wait_log("SIGHUP: reloaded", BOUND).is_some());
    assert_eq!(
        rpc_with(&g.addr(), "second", "health", &json!({})).status,
        200
    );
    assert_eq!(
        rpc_with(&g.addr(), "first", "health", &json!({})).status,
        401
    );
}

#[test]
fn systemd_notifications_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(BOUND)).unwrap();
    let mut g = Gateway::start(
        Opts::default()
            .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
            .env("WATCHDOG_USEC", "400000"),
    );
    let mut seen: Vec<String> = Vec::new();
    let mut recv = |until: &str| loop {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        if msg.contains(until) {
            return;
        }
    };
    recv("READY=1");
    recv("WATCHDOG=1");
    g.signal("TERM");
    recv("STOPPING=1");
    g.wait_exit(BOUND).expect("exits");
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let dog = seen.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
    let stopping = seen.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < dog && dog < stopping, "{seen:?}");
    assert!(seen[ready].contains("STATUS=serving on"), "{seen:?}");
    assert!(seen[stopping].contains("EXTEND_TIMEOUT_USEC="), "{seen:?}");
}

/// The delivery queue's writes stall for 10 s (a failing disk, as a test hook): the worker
/// holding the queue must not hold up the reactor or the watchdog. `/metrics` and `/healthz`
/// keep answering, and SIGTERM still exits by drain + grace (+1 s).
#[test]
fn a_stalled_delivery_store_holds_up_neither_the_reactor_nor_the_drain() {
    let mut g = Gateway::start(
        Opts::hooks()
            .env("KEEL_TEST_DELIVERY_WRITE_STALL_MS", "10000")
            .config(json!({
                "gateway": {"drainTimeoutMs": 1000, "drainGraceMs": 1000},
                "channels": {"openclaw-weixin": {"baseUrl": "http://127.0.0.1:9", "token": "t"}},
            })),
    );
    let send = g.spawn_rpc(
        "send",
        json!({"channel": "openclaw-weixin", "to": "a@im.wechat", "message": "m", "idempotencyKey": "k"}),
    );
    // The send is writing its entry, holding the queue, for 10 s from here.
    g.wait_metric("keel_jobs_in_flight{pool=\"io\"}", 1.0);
    let mut took = Vec::new();
    for _ in 0..10 {
        for probe in ["/metrics", "/healthz"] {
            let t0 = Instant::now();
            let r = g.get_auth(probe);
            took.push(t0.elapsed());
            assert_eq!(r.status, 200, "{probe}: {}", r.text());
        }
    }
    took.sort();
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("probes during the stall: median {median:?}, max {max:?}");
    // Far below the 10 s stall: neither waited on the queue (50 ms leaves room for a loaded
    // machine; the bench measures the real figures).
    assert!(max < Duration::from_secs(1), "max {max:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    let (status, _) = sigterm_with_drain_and_grace_of_1s(&mut g);
    assert_ne!(status.code(), Some(0), "the stalled send was aborted");
    let r = send.join().unwrap();
    assert_ne!(r.status, 200, "{}", r.text());
}
