//! Sessions and usage against the generated fixture, whose exact figures the generator wrote
//! (`fixtures/small/expected.json`, computed independently of keel).

use crate::common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

const TOTAL_KEYS: [&str; 11] = [
    "input",
    "output",
    "cacheRead",
    "cacheWrite",
    "totalTokens",
    "totalCost",
    "inputCost",
    "outputCost",
    "cacheReadCost",
    "cacheWriteCost",
    "missingCostEntries",
];

pub fn expected() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/small/expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Tokens and counts exactly, money to the cent.
#[track_caller]
pub fn assert_totals(got: &Value, want: &Value, what: &str) {
    for k in TOTAL_KEYS {
        let (g, w) = (&got[k], &want[k]);
        if k.ends_with("Cost") {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() < 0.005, "{what}: {k} = {g}, expected {w}");
        } else {
            assert_eq!(g.as_u64(), w.as_u64(), "{what}: {k}");
        }
    }
}

/// The range the fixture covers.
pub fn range(e: &Value) -> Value {
    json!({"startDate": e["startDate"], "endDate": e["endDate"]})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// Calls a usage method until the index is complete.
pub fn fresh(g: &Gateway, method: &str, params: Value) -> Value {
    eventually(BOUND, || {
        let r = g.rpc(method, params.clone());
        assert_eq!(r.status, 200, "{}", r.text());
        let p = r.json()["payload"].clone();
        (p["cacheStatus"]["status"] == "fresh").then_some(p)
    })
}

#[test]
fn usage_cost_matches_the_generator_exactly() {
    let e = expected();
    assert!(
        e["totals"]["missingCostEntries"].as_u64().unwrap() > 0,
        "the fixture has unpriced usage"
    );
    let g = Gateway::start(Opts::default().fixture("small"));
    let p = fresh(&g, "usage.cost", range(&e));
    assert_totals(&p["totals"], &e["totals"], "totals");
    let days = p["daily"].as_array().unwrap();
    assert_eq!(days.len() as u64, p["days"].as_u64().unwrap());
    for want in e["daily"].as_array().unwrap() {
        let got = days
            .iter()
            .find(|d| d["date"] == want["date"])
            .unwrap_or_else(|| panic!("no day {}", want["date"]));
        assert_totals(got, want, want["date"].as_str().unwrap());
    }
    // Unpriced usage is counted as missing; it never becomes $0 of cost.
    assert_eq!(
        p["totals"]["missingCostEntries"],
        e["totals"]["missingCostEntries"]
    );
}

#[test]
fn sessions_usage_aggregates_match_the_generator_exactly() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    let p = fresh(
        &g,
        "sessions.usage",
        with(range(&e), json!({"agentScope": "all", "limit": 1000})),
    );
    assert_totals(&p["totals"], &e["totals"], "totals");
    let a = &p["aggregates"];
    assert_eq!(a["messages"], e["messages"]);
    for want in e["byModel"].as_array().unwrap() {
        let got = a["byModel"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["provider"] == want["provider"] && m["model"] == want["model"])
            .expect("model row");
        assert_totals(&got["totals"], want, want["model"].as_str().unwrap());
    }
    for want in e["byAgent"].as_array().unwrap() {
        let got = a["byAgent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["agentId"] == want["agentId"])
            .expect("agent row");
        assert_totals(&got["totals"], want, want["agentId"].as_str().unwrap());
    }
    for want in e["byChannel"].as_array().unwrap() {
        let got = a["byChannel"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["channel"] == want["channel"])
            .expect("channel row");
        assert_totals(&got["totals"], want, want["channel"].as_str().unwrap());
    }
    let sessions = p["sessions"].as_array().unwrap();
    let want_sessions = e["bySession"].as_array().unwrap();
    assert_eq!(a["sessionCount"].as_u64().unwrap() as usize, sessions.len());
    for want in want_sessions {
        let got = sessions
            .iter()
            .find(|s| s["sessionId"] == want["sessionId"])
            .expect("session row");
        assert_eq!(got["agentId"], want["agentId"]);
        assert_totals(&got["usage"], want, want["sessionId"].as_str().unwrap());
        if want["key"].is_null() {
            // A deleted session: counted from its archive, marked as such, and named as
            // OpenClaw names a session without an entry (the Usage page needs a key).
            assert_eq!(got["deleted"], true);
            let key = format!(
                "agent:{}:{}",
                want["agentId"].as_str().unwrap(),
                want["sessionId"].as_str().unwrap()
            );
            assert_eq!(got["key"], key.as_str());
        } else {
            assert_eq!(got["key"], want["key"]);
        }
    }
    assert!(
        want_sessions.iter().any(|s| s["key"].is_null()),
        "the fixture has a deleted session"
    );
    // The same answer over WebSocket.
    let mut ws = g.ws();
    let res = ws.call(
        "sessions.usage",
        with(range(&e), json!({"agentScope": "all", "limit": 1000})),
    );
    assert_totals(&res["payload"]["totals"], &e["totals"], "over WebSocket");
}

#[test]
fn pages_offsets_and_filters() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    let first = fresh(
        &g,
        "sessions.usage",
        with(range(&e), json!({"agentScope": "all", "limit": 5})),
    );
    let count = first["aggregates"]["sessionCount"].as_u64().unwrap() as usize;
    assert_eq!(first["sessions"].as_array().unwrap().len(), 5);
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let rest = g
        .rpc(
            "sessions.usage",
            with(
                range(&e),
                json!({"agentScope": "all", "limit": 100, "cursor": cursor}),
            ),
        )
        .json()["payload"]
        .clone();
    assert!(rest.get("nextCursor").is_none());
    let mut ids: Vec<Value> = first["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["sessions"].as_array().unwrap())
        .map(|s| s["sessionId"].clone())
        .collect();
    ids.sort_by_key(|v| v.to_string());
    ids.dedup();
    assert_eq!(ids.len(), count);
    // A wider range at another offset still holds everything.
    let wide = json!({"mode": "specific", "utcOffset": "UTC+5:30", "startDate": "2026-11-01", "endDate": "2026-11-30"});
    let p = g.rpc("usage.cost", wide).json()["payload"].clone();
    assert_totals(&p["totals"], &e["totals"], "UTC+5:30");
    // One agent.
    let p = g
        .rpc(
            "sessions.usage",
            with(range(&e), json!({"agentId": "agent-2", "limit": 100})),
        )
        .json()["payload"]
        .clone();
    let want = e["byAgent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentId"] == "agent-2")
        .unwrap()
        .clone();
    assert_totals(&p["totals"], &want, "agent-2");
    // Bad params are clear errors.
    for bad in [
        json!({"startDate": "2026-13-01"}),
        json!({"mode": "specific"}),
        json!({"agentScope": "all", "agentId": "main"}),
        json!({"cursor": "x"}),
        // Four bytes cut inside a character: the parser used to panic (an INTERNAL error).
        json!({"mode": "specific", "utcOffset": "+a\u{e9}1"}),
    ] {
        let r = g.rpc("sessions.usage", bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST");
    }
    // sessions.list and its filters.
    let list = g.rpc("sessions.list", json!({"limit": 3})).json()["payload"].clone();
    assert_eq!(list["count"], 3);
    assert_eq!(list["totalCount"], e["sessions"]);
    let one = g.rpc("sessions.list", json!({"agentId": "main"})).json()["payload"].clone();
    assert!(
        one["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["agentId"] == "main")
    );
    let label = one["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["label"].as_str())
        .expect("a labelled session")
        .to_string();
    let all =
        g.rpc("sessions.list", json!({"limit": 100_000})).json()["payload"]["sessions"].clone();
    let all = all.as_array().unwrap();
    assert_eq!(all.len() as u64, e["sessions"].as_u64().unwrap());
    let labelled: Vec<&Value> = all
        .iter()
        .filter(|s| s["label"] == label.as_str())
        .collect();
    let by_label = g.rpc("sessions.list", json!({"label": label})).json()["payload"].clone();
    let rows = by_label["sessions"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|s| s["label"] == label.as_str()),
        "{by_label}"
    );
    assert_eq!(rows.len(), labelled.len(), "{by_label}");
    assert_eq!(by_label["count"], rows.len());
    assert_eq!(by_label["totalCount"], rows.len());
    assert!(
        rows.len() < all.len(),
        "the filter narrows: {} of {}",
        rows.len(),
        all.len()
    );
    // Search: a key that is not the first row and that no other session's searched fields
    // contain, so exactly that session must come back.
    let fields = |s: &Value| {
        ["key", "label", "displayName", "sessionId"]
            .map(|k| s[k].as_str().unwrap_or("").to_lowercase())
    };
    let key = all
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, s)| (i, s["key"].as_str().unwrap().to_string()))
        .find(|(i, k)| {
            let k = k.to_lowercase();
            all.iter()
                .enumerate()
                .all(|(j, o)| j == *i || !fields(o).iter().any(|f| f.contains(&k)))
        })
        .map(|(_, k)| k)
        .expect("a key no other session matches");
    assert_ne!(all[0]["key"], key.as_str());
    let found = g
        .rpc("sessions.list", json!({"search": key.to_uppercase()}))
        .json()["payload"]
        .clone();
    let hits = found["sessions"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["key"], key.as_str(), "{found}");
    assert_eq!(found["totalCount"], 1, "{found}");
}

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    fresh(&g, "usage.cost", range(&e));
    let status = g.rpc("status", json!({})).json()["payload"].clone();
    assert_eq!(
        status["usage"]["index"]["malformedLines"],
        e["malformedLines"]
    );
    assert_eq!(
        g.metric("keel_usage_malformed_lines_total"),
        e["malformedLines"].as_f64()
    );
}

/// The first transcript of the `main` agent.
fn a_transcript(g: &Gateway) -> std::path::PathBuf {
    let dir = g.state().join("agents/main/sessions");
    let mut files: Vec<_> = files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files.remove(0)
}

#[test]
fn an_append_is_reflected_on_the_next_call() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    let before = fresh(&g, "usage.cost", range(&e));
    let ts = e["now"].as_i64().unwrap() - 1000;
    let line = json!({"type": "message", "id": "appended", "timestamp": "x", "message": {
        "role": "assistant", "provider": "anthropic", "model": "claude-sonnet-4-5", "timestamp": ts,
        "content": [{"type": "text", "text": "late"}],
        "usage": {"input": 1234, "output": 56, "totalTokens": 1290, "cost": {"input": 0.5, "output": 0.25, "total": 0.75}}}});
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a_transcript(&g))
        .unwrap();
    writeln!(f, "{line}").unwrap();
    drop(f);
    let after = g.rpc("usage.cost", range(&e)).json()["payload"].clone();
    assert_eq!(after["cacheStatus"]["status"], "fresh");
    let d = |k: &str| after["totals"][k].as_f64().unwrap() - before["totals"][k].as_f64().unwrap();
    assert_eq!(d("input"), 1234.0);
    assert_eq!(d("totalTokens"), 1290.0);
    assert!((d("totalCost") - 0.75).abs() < 1e-9);
    // A line still being written is not read until it is whole.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a_transcript(&g))
        .unwrap();
    write!(f, "{}", &line.to_string()[..40]).unwrap();
    drop(f);
    let partial = g.rpc("usage.cost", range(&e)).json()["payload"].clone();
    assert_eq!(partial["totals"]["input"], after["totals"]["input"]);
}

#[test]
fn a_query_during_a_cold_build_answers_partial_within_its_deadline() {
    let e = expected();
    let g = Gateway::start(
        Opts::hooks()
            .fixture("small")
            .env("KEEL_TEST_INDEX_DELAY_MS", "300"),
    );
    let t0 = Instant::now();
    let r = g.rpc("usage.cost", range(&e));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let cache = r.json()["payload"]["cacheStatus"].clone();
    assert_eq!(cache["status"], "partial", "{cache}");
    assert!(
        cache["filesIndexed"].as_u64().unwrap() < e["transcriptFiles"].as_u64().unwrap(),
        "{cache}"
    );
    // And complete, exact, once the build is done.
    let p = fresh(&g, "usage.cost", range(&e));
    assert_totals(&p["totals"], &e["totals"], "after the build");
    assert_eq!(p["cacheStatus"]["filesIndexed"], e["transcriptFiles"]);
}

#[test]
fn a_drain_cancels_an_index_build_promptly() {
    let mut g = Gateway::start(
        Opts::hooks()
            .fixture("small")
            .env("KEEL_TEST_INDEX_DELAY_MS", "5000"),
    );
    assert!(g.wait_log("building from the transcripts", BOUND).is_some());
    let t0 = Instant::now();
    g.signal("TERM");
    let status = g.wait_exit(BOUND).expect("exits");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "cancelling maintenance is a clean drain:\n{}",
        g.log_text()
    );
    assert!(
        g.log_text().contains("usage index build cancelled"),
        "{}",
        g.log_text()
    );
}

#[test]
fn a_malformed_store_keeps_the_last_good_snapshot() {
    let g = Gateway::start(Opts::default().fixture("small"));
    let before = g.rpc("sessions.list", json!({"agentId": "main"})).json()["payload"].clone();
    assert!(before["count"].as_u64().unwrap() > 0);
    std::fs::write(
        g.state().join("agents/main/sessions/sessions.json"),
        "{ written by a crashing program",
    )
    .unwrap();
    let after = g.rpc("sessions.list", json!({"agentId": "main"})).json()["payload"].clone();
    assert_eq!(after["sessions"], before["sessions"]);
    let status = g.rpc("status", json!({})).json()["payload"].clone();
    let errors = status["usage"]["storeErrors"].as_array().unwrap();
    assert_eq!(errors[0]["agentId"], "main");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_eq!(g.metric("keel_session_store_errors"), Some(1.0));
    assert!(
        g.wait_log("keeping the last good snapshot", BOUND)
            .is_some(),
        "{}",
        g.log_text()
    );
}

#[test]
fn the_index_is_saved_and_reloaded_at_boot() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    fresh(&g, "usage.cost", range(&e));
    let saved = g.state().join("usage-index.bin");
    eventually(BOUND, || saved.exists().then_some(()));
    g.signal("TERM");
    let g = g.restart(Opts::default());
    assert!(
        g.wait_log("usage index loaded: 14 files", BOUND).is_some(),
        "{}",
        g.log_text()
    );
    let p = fresh(&g, "usage.cost", range(&e));
    assert_totals(&p["totals"], &e["totals"], "after a restart");
}

#[test]
fn identical_concurrent_calls_share_one_computation() {
    let e = expected();
    let g = Gateway::start(
        Opts::hooks()
            .fixture("small")
            .env("KEEL_TEST_QUERY_DELAY_MS", "400"),
    );
    fresh(&g, "usage.cost", range(&e));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            g.spawn_rpc(
                "sessions.usage",
                with(range(&e), json!({"agentScope": "all"})),
            )
        })
        .collect();
    let answers: Vec<Value> = calls
        .into_iter()
        .map(|c| c.join().unwrap().json()["payload"].clone())
        .collect();
    assert!(answers.iter().all(|a| a["totals"] == answers[0]["totals"]));
    let m = g.get_auth("/metrics").text();
    assert!(
        metric(&m, "keel_usage_queries_shared_total").unwrap() >= 1.0,
        "{m}"
    );
}

#[test]
fn keel_usage_prints_a_spend_table_without_a_server() {
    let e = expected();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/small/state"),
        dir.path(),
    );
    let args = ["usage", "--days", "3650", "--state-dir"].map(std::ffi::OsStr::new);
    // Settings only `serve` uses do not matter to `usage`, however wrong.
    let out = keel_cli(
        args.into_iter().chain([dir.path().as_os_str()]),
        [("KEEL_PORT", "not-a-port"), ("KEEL_BIND", "moon")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = e["totals"]["totalTokens"].as_u64().unwrap();
    let grouped: String = total
        .to_string()
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    let cost = format!("${:.2}", e["totals"]["totalCost"].as_f64().unwrap());
    let line = text
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&grouped) && line.contains(&cost),
        "{line} vs {grouped} {cost}"
    );
    assert!(text.contains("local/llama-3-70b"), "{text}");
    assert!(text.contains("no configured price"), "{text}");
    for day in e["daily"].as_array().unwrap() {
        assert!(text.contains(day["date"].as_str().unwrap()), "{text}");
    }
    assert!(
        !dir.path().join("usage-index.bin").exists(),
        "the CLI only reads"
    );
}
