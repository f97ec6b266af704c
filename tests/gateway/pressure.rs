//! Memory pressure against the real binary: a test-only ballast (`keel.test.ballast`) raises
//! keel's resident memory across thresholds set relative to its own baseline.

use crate::common::*;
use serde_json::{Value, json};

/// VmRSS of a process, in bytes.
fn vm_rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS") << 10
}

/// Calls `keel.test.ballast` and returns its payload.
#[track_caller]
fn ballast(g: &Gateway, params: Value) -> Value {
    let r = g.rpc("keel.test.ballast", params);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["payload"].clone()
}

/// A gateway (`opts`, plus test hooks) whose RSS thresholds are its own baseline plus
/// `warn_mib` and `crit_mib`, with a 300 ms hold: started, measured, then reconfigured by
/// SIGHUP (the rest of its config file kept). Lag and queue age are given bounds a loaded
/// test machine cannot reach, so memory alone moves the level.
fn start_with_rss_thresholds(opts: Opts, warn_mib: u64, crit_mib: u64) -> Gateway {
    let g = Gateway::start(Opts {
        test_hooks: true,
        ..opts
    });
    let base = vm_rss(g.pid()) >> 20;
    let path = g.state().join("keel.json");
    let mut cfg: Value = std::fs::read(&path)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_else(|_| json!({}));
    cfg["gateway"]["pressure"] = json!({
        "rssWarnMb": base + warn_mib, "rssCriticalMb": base + crit_mib, "holdMs": 300,
        "lagWarnMs": 60_000, "lagCriticalMs": 60_000,
        "queueAgeWarnMs": 60_000, "queueAgeCriticalMs": 60_000,
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    g.signal("HUP");
    assert!(
        g.wait_log("SIGHUP: reloaded", BOUND).is_some(),
        "{}",
        g.log_text()
    );
    g
}

fn level(g: &Gateway) -> Option<f64> {
    g.metric("keel_pressure_level")
}

/// A background job (no public method runs in that lane; the test hook can).
fn background_job(g: &Gateway) -> Response {
    g.rpc("keel.test.busy", json!({"ms": 10, "lane": "background"}))
}

#[test]
fn rss_raises_pressure_which_sheds_work_and_recovers_when_memory_goes() {
    let g = start_with_rss_thresholds(Opts::default(), 64, 160);
    assert_eq!(level(&g), Some(0.0));
    let base = vm_rss(g.pid());

    // Past the warning threshold: elevated. Background work waits; the rest runs.
    ballast(&g, json!({"mib": 100}));
    assert!(
        vm_rss(g.pid()) >= base + (100 << 20),
        "the ballast is resident"
    );
    g.wait_metric("keel_pressure_level", 1.0);
    let r = g.get("/readyz");
    assert_eq!(r.status, 200, "elevated is still ready: {}", r.text());
    assert_eq!(r.json()["pressure"]["level"], "elevated");
    assert!(r.json()["pressure"]["reasons"].to_string().contains("rss"));
    let status = g.rpc("status", json!({})).json();
    assert_eq!(status["payload"]["pressure"]["level"], "elevated");
    let deferred = g.spawn_rpc("keel.test.busy", json!({"ms": 10, "lane": "background"}));
    g.wait_metric("keel_queue_depth{pool=\"cpu\",lane=\"background\"}", 1.0);
    assert_eq!(g.rpc("keel.test.busy", json!({"ms": 10})).status, 200);

    // Past the critical threshold: critical. New background work and new runs are refused
    // with a retryable error; /readyz says why; /healthz stays 200.
    ballast(&g, json!({"mib": 200}));
    g.wait_metric("keel_pressure_level", 2.0);
    let r = g.get("/readyz");
    assert_eq!(r.status, 503);
    let failing = r.json()["failing"].to_string();
    assert!(
        failing.contains("pressure critical") && failing.contains("rss"),
        "{failing}"
    );
    assert_eq!(g.get("/healthz").status, 200);
    assert_eq!(g.get("/healthz").json()["pressure"], "critical");
    let shed = background_job(&g);
    assert_eq!(shed.status, 503, "{}", shed.text());
    assert_eq!(shed.header("retry-after").as_deref(), Some("5"));
    let e = &shed.json()["error"];
    assert_eq!(e["code"], "UNAVAILABLE");
    assert_eq!(e["retryable"], true);
    assert_eq!(e["retryAfterMs"], 5000);
    assert!(e["message"].as_str().unwrap().contains("shed"), "{e}");
    let run = g.rpc("agent", json!({"message": "hi", "idempotencyKey": "m1"}));
    assert_eq!(run.status, 503, "{}", run.text());
    let e = &run.json()["error"];
    assert_eq!(
        (e["code"].as_str(), e["retryable"].as_bool()),
        (Some("UNAVAILABLE"), Some(true))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("memory is critical"),
        "{e}"
    );
    let mut ws = g.ws();
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "s", "message": "hi", "idempotencyKey": "m2"}),
    );
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert_eq!(res["error"]["retryAfterMs"], 5000, "{res}");
    // Everything else still answers.
    assert_eq!(g.rpc("keel.test.busy", json!({"ms": 10})).status, 200);
    assert_eq!(
        ws.call("health", json!({}))["payload"]["pressure"]["level"],
        "critical"
    );

    // The ballast goes: the memory really is returned, and pressure steps back to normal
    // after its hold; the deferred job runs and new work is accepted again.
    ballast(&g, json!({"mib": 0}));
    assert!(
        vm_rss(g.pid()) < base + (64 << 20),
        "RSS {} MiB after the release (base {} MiB)",
        vm_rss(g.pid()) >> 20,
        base >> 20
    );
    g.wait_metric("keel_pressure_level", 0.0);
    assert_eq!(g.get("/readyz").status, 200);
    assert_eq!(deferred.join().unwrap().status, 200, "deferred, then run");
    assert_eq!(background_job(&g).status, 200);
    let run = g.rpc("agent", json!({"message": "hi", "idempotencyKey": "m3"}));
    assert_eq!(run.status, 200, "{}", run.text());
    let log = g.log_text();
    for needle in [
        "pressure normal -> elevated: rss",
        "pressure elevated -> critical: rss",
        "-> normal",
    ] {
        assert!(log.contains(needle), "missing {needle:?} in\n{log}");
    }
    assert!(
        g.metric("keel_jobs_rejected_total{reason=\"pressure\"}")
            .unwrap()
            >= 3.0
    );
}

#[test]
fn a_memory_spike_shorter_than_the_sample_streak_changes_nothing() {
    // STREAK (5) consecutive samples above a threshold raise a level. A spike is sampled
    // fewer times than that; the ballast hook counts the watchdog's samples around it, and
    // an attempt the machine made too slow (a longer span) is repeated.
    const STREAK: u64 = 5;
    let g = start_with_rss_thresholds(Opts::default(), 64, 160);
    let raised = |g: &Gateway| g.log_text().matches("pressure normal ->").count();
    let (seen, before) = eventually(BOUND, || {
        // An attempt the machine made too slow is sampled for a whole streak and rightly
        // raises the level: the next one starts once it is back to normal, and only what
        // happens from there is judged.
        if level(&g) != Some(0.0) {
            return None;
        }
        let before = raised(&g);
        // Over the warning threshold (64 MiB above the baseline) and no taller than that needs,
        // so that a loaded machine fills it within a streak.
        let p = ballast(&g, json!({"mib": 100, "spikeMs": 150}));
        let (held, span) = (p["ticksHeld"].as_u64()?, p["ticksSpan"].as_u64()?);
        (held >= 1 && span < STREAK).then_some((held, before))
    });
    assert!(seen >= 1, "the spike was sampled");
    // Two more samples after the spike: any streak it started has been judged.
    let t = g.metric("keel_watchdog_ticks_total").unwrap();
    eventually(BOUND, || {
        (g.metric("keel_watchdog_ticks_total")? >= t + 2.0).then_some(())
    });
    assert_eq!(level(&g), Some(0.0));
    assert_eq!(raised(&g), before, "{}", g.log_text());
    // The same memory held for longer does raise the level: the spike was tall enough.
    ballast(&g, json!({"mib": 100}));
    g.wait_metric("keel_pressure_level", 1.0);
    ballast(&g, json!({"mib": 0}));
}

#[test]
fn elevated_pressure_drops_cached_usage_results_and_usage_still_answers() {
    use crate::usage::{assert_totals, expected, fresh, range};
    let e = expected();
    let g = start_with_rss_thresholds(Opts::default().fixture("small"), 64, 160);
    // A complete answer fills the per-file results for its range.
    let before = fresh(&g, "usage.cost", range(&e));
    ballast(&g, json!({"mib": 100}));
    g.wait_metric("keel_pressure_level", 1.0);
    let line = g
        .wait_log("dropped cached usage results of", BOUND)
        .expect("caches shrink when pressure rises");
    let n: u64 = line
        .split("results of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(n > 0, "the fixture's files had cached results: {line}");
    // Under pressure the same query is computed without the cache, to the same figures.
    let under = g.rpc("usage.cost", range(&e));
    assert_eq!(under.status, 200, "{}", under.text());
    assert_totals(
        &under.json()["payload"]["totals"],
        &before["totals"],
        "under pressure",
    );
    assert_totals(&before["totals"], &e["totals"], "before");
    ballast(&g, json!({"mib": 0}));
}
