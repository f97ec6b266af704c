//! OpenClaw's Usage page against keel: what it sends (`sessions.usage` with `agentScope`,
//! `limit: 1000`, `groupBy`, `timeZone` and `mode: "specific"`; the session detail's
//! `sessions.usage {key}`, `sessions.usage.timeseries` and `sessions.usage.logs`;
//! `usage.status`) and what it reads of the answers — on the generated fixture, and on small
//! states written here whose figures are known by construction.

use crate::common::*;
use crate::usage::{assert_totals, expected, fresh};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

fn ms(iso: &str) -> i64 {
    // RFC 3339 instants written here are all `YYYY-MM-DDTHH:MM:SSZ`.
    let (date, time) = iso.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + t[0] * 3_600_000 + t[1] * 60_000 + t[2] * 1000
}

/// An assistant message with `tokens` input tokens (and that many in total), costing a
/// millionth of a dollar per token, and one tool call.
fn reply(ts: i64, tokens: u64) -> Value {
    json!({"type": "message", "timestamp": "x", "message": {
        "role": "assistant", "provider": "anthropic", "model": "claude-sonnet-4-5", "timestamp": ts,
        "content": [{"type": "text", "text": format!("reply of {tokens}")}, {"type": "toolCall", "name": "exec"}],
        "usage": {"input": tokens, "totalTokens": tokens,
                  "cost": {"input": tokens as f64 / 1e6, "total": tokens as f64 / 1e6}}}})
}

fn ask(ts: i64) -> Value {
    json!({"type": "message", "timestamp": "x", "message": {"role": "user", "content": "go", "timestamp": ts}})
}

/// A state directory written by a test: stores and transcripts.
struct State {
    dir: tempfile::TempDir,
}

impl State {
    fn new() -> State {
        State {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn sessions(&self, agent: &str) -> PathBuf {
        let d = self.dir.path().join("agents").join(agent).join("sessions");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn store(&self, agent: &str, store: Value) {
        std::fs::write(
            self.sessions(agent).join("sessions.json"),
            store.to_string(),
        )
        .unwrap();
    }

    /// Writes a transcript (`name` under the agent's sessions), last modified at `mtime_ms`.
    fn transcript(&self, agent: &str, name: &str, lines: &[Value], mtime_ms: Option<i64>) {
        let path = self.sessions(agent).join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        if let Some(t) = mtime_ms {
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(UNIX_EPOCH + Duration::from_millis(t as u64))
                .unwrap();
        }
    }

    fn start(&self) -> Gateway {
        Gateway::start(Opts {
            state_from: Some(self.dir.path().to_path_buf()),
            ..Opts::default()
        })
    }
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn ok(g: &Gateway, method: &str, params: Value) -> Value {
    let r = g.rpc(method, params.clone());
    assert_eq!(r.status, 200, "{method} {params}: {}", r.text());
    r.json()["payload"].clone()
}

fn rows(p: &Value) -> &Vec<Value> {
    p["sessions"].as_array().unwrap()
}

fn keys(p: &Value) -> Vec<&str> {
    rows(p).iter().map(|s| s["key"].as_str().unwrap()).collect()
}

/// What the dashboard sends for its overview (`usage-CjeftFQT.js`), for a range and zone.
fn dashboard(start: &str, end: &str, zone: &str, offset: &str, group_by: &str) -> Value {
    json!({"startDate": start, "endDate": end, "agentScope": "all", "mode": "specific",
           "timeZone": zone, "utcOffset": offset, "groupBy": group_by, "limit": 1000,
           "includeContextWeight": false})
}

#[test]
fn sessions_without_an_entry_have_a_key_and_a_detail() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    let params = dashboard(
        e["startDate"].as_str().unwrap(),
        e["endDate"].as_str().unwrap(),
        "UTC",
        "UTC+0",
        "instance",
    );
    let p = fresh(&g, "sessions.usage", params.clone());
    for s in rows(&p) {
        assert!(s["key"].is_string(), "every row has a key: {s}");
    }
    let deleted: Vec<&Value> = rows(&p).iter().filter(|s| s["deleted"] == true).collect();
    assert!(!deleted.is_empty(), "the fixture has deleted sessions");
    for s in deleted {
        let key = format!(
            "agent:{}:{}",
            s["agentId"].as_str().unwrap(),
            s["sessionId"].as_str().unwrap()
        );
        assert_eq!(s["key"], key.as_str());
        // The detail view asks for the row by its key, then for its timeline and messages.
        let one = ok(
            &g,
            "sessions.usage",
            json!({"startDate": params["startDate"], "endDate": params["endDate"],
                   "key": key, "limit": 1, "groupBy": "instance"}),
        );
        assert_eq!(keys(&one), [key.as_str()]);
        assert_eq!(
            one["sessions"][0]["usage"]["totalTokens"],
            s["usage"]["totalTokens"]
        );
        let detail = json!({"key": key, "agentId": s["agentId"], "sessionId": s["sessionId"]});
        let ts = ok(&g, "sessions.usage.timeseries", detail.clone());
        assert_eq!(ts["sessionId"], s["sessionId"]);
        let points = ts["points"].as_array().unwrap();
        let sum: u64 = points
            .iter()
            .map(|p| p["totalTokens"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, s["usage"]["totalTokens"].as_u64().unwrap(), "{ts}");
        let last = points.last().unwrap();
        assert_eq!(last["cumulativeTokens"].as_u64().unwrap(), sum);
        assert!(
            points
                .windows(2)
                .all(|w| w[0]["timestamp"].as_i64() <= w[1]["timestamp"].as_i64())
        );
        let logs = ok(
            &g,
            "sessions.usage.logs",
            with(detail.clone(), json!({"limit": 1000})),
        );
        let logs = logs["logs"].as_array().unwrap();
        // Every message but the failed calls (which have no text) is listed, oldest first.
        let counts = &s["usage"]["messageCounts"];
        assert_eq!(
            logs.len() as u64,
            counts["total"].as_u64().unwrap() - counts["errors"].as_u64().unwrap(),
            "{logs:?}"
        );
        assert!(
            logs.windows(2)
                .all(|w| w[0]["timestamp"].as_i64() <= w[1]["timestamp"].as_i64())
        );
        let tokens: u64 = logs.iter().filter_map(|l| l["tokens"].as_u64()).sum();
        assert_eq!(tokens, sum);
        for l in logs {
            assert!(
                ["user", "assistant", "toolResult", "tool"].contains(&l["role"].as_str().unwrap())
            );
            assert!(!l["content"].as_str().unwrap().is_empty());
        }
        // A limit keeps the last messages.
        let two = ok(&g, "sessions.usage.logs", with(detail, json!({"limit": 2})));
        assert_eq!(two["logs"].as_array().unwrap()[..], logs[logs.len() - 2..]);
    }
    // An unknown key is a clear error.
    for method in ["sessions.usage.timeseries", "sessions.usage.logs"] {
        let r = g.rpc(method, json!({"key": "agent:main:no-such-session"}));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST");
        let r = g.rpc(method, json!({}));
        assert_eq!(r.status, 400, "{}", r.text());
    }
}

#[test]
fn with_a_limit_the_most_recently_updated_sessions_come_first() {
    let st = State::new();
    let t0 = ms("2026-11-02T08:00:00Z");
    // Cost and recency disagree: the oldest session is the most expensive.
    st.store(
        "main",
        json!({
            "agent:main:a": {"sessionId": "sa", "updatedAt": t0 + 9_000},
            "agent:main:b": {"sessionId": "sb", "updatedAt": t0 + 5_000},
            "agent:main:c": {"sessionId": "sc", "updatedAt": t0 + 5_000},
            "agent:main:d": {"sessionId": "sd", "updatedAt": t0 + 1_000},
        }),
    );
    st.transcript("main", "sa.jsonl", &[reply(t0, 10)], Some(t0 + 9_000));
    // b and c were updated at the same time: the one written last comes first.
    st.transcript("main", "sb.jsonl", &[reply(t0, 20)], Some(t0 + 5_000));
    st.transcript("main", "sc.jsonl", &[reply(t0, 30)], Some(t0 + 6_000));
    st.transcript("main", "sd.jsonl", &[reply(t0, 1000)], Some(t0 + 1_000));
    // A deleted session: updated when its archive was last written.
    st.transcript(
        "main",
        "se.jsonl.deleted.2026-11-02T09-00-00.000Z",
        &[reply(t0, 40)],
        Some(t0 + 7_000),
    );
    let g = st.start();
    let range = json!({"startDate": "2026-11-02", "endDate": "2026-11-02", "agentScope": "all"});
    let all = fresh(
        &g,
        "sessions.usage",
        with(range.clone(), json!({"limit": 1000})),
    );
    let order = [
        "agent:main:a",
        "agent:main:se",
        "agent:main:c",
        "agent:main:b",
        "agent:main:d",
    ];
    assert_eq!(keys(&all), order);
    let updated: Vec<i64> = rows(&all)
        .iter()
        .map(|s| s["updatedAt"].as_i64().unwrap())
        .collect();
    assert_eq!(
        updated,
        [t0 + 9_000, t0 + 7_000, t0 + 5_000, t0 + 5_000, t0 + 1_000]
    );
    // A page is a prefix of that order; its aggregates still cover every session.
    let page = ok(
        &g,
        "sessions.usage",
        with(range.clone(), json!({"limit": 2})),
    );
    assert_eq!(keys(&page), order[..2]);
    assert_eq!(page["totals"]["totalTokens"], 1100);
    assert_eq!(page["aggregates"]["sessionCount"], 5);
    let rest = ok(
        &g,
        "sessions.usage",
        with(range, json!({"limit": 10, "cursor": page["nextCursor"]})),
    );
    assert_eq!(keys(&rest), order[2..]);
}

/// Messages on both sides of New York's daylight-saving changes in 2026 (clocks forward at
/// 07:00 UTC on March 8, back at 06:00 UTC on November 1), each with a distinct power of ten
/// of tokens, so a day's total says which messages it holds.
fn dst_state() -> State {
    let st = State::new();
    st.store(
        "main",
        json!({
            "agent:main:spring": {"sessionId": "spring", "updatedAt": ms("2026-03-09T05:00:00Z")},
            "agent:main:fall": {"sessionId": "fall", "updatedAt": ms("2026-11-02T06:00:00Z")},
        }),
    );
    let spring = [
        ("2026-03-08T04:30:00Z", 1),    // Mar 7, 23:30 EST
        ("2026-03-08T05:30:00Z", 10),   // Mar 8, 00:30 EST
        ("2026-03-09T03:30:00Z", 100),  // Mar 8, 23:30 EDT
        ("2026-03-09T04:30:00Z", 1000), // Mar 9, 00:30 EDT (Mar 8 at UTC-5)
    ];
    let fall = [
        ("2026-11-01T03:30:00Z", 10_000),     // Oct 31, 23:30 EDT
        ("2026-11-01T04:30:00Z", 100_000),    // Nov 1, 00:30 EDT (Oct 31 at UTC-5)
        ("2026-11-02T04:30:00Z", 1_000_000),  // Nov 1, 23:30 EST
        ("2026-11-02T05:30:00Z", 10_000_000), // Nov 2, 00:30 EST
    ];
    let lines = |msgs: &[(&str, u64)]| -> Vec<Value> {
        msgs.iter()
            .flat_map(|&(t, n)| [ask(ms(t) - 1000), reply(ms(t), n)])
            .collect()
    };
    st.transcript("main", "spring.jsonl", &lines(&spring), None);
    st.transcript("main", "fall.jsonl", &lines(&fall), None);
    st
}

/// (date, totalTokens) of the days with tokens.
fn by_day(days: &Value) -> Vec<(String, u64)> {
    days.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let t = d.get("totalTokens").unwrap_or(&d["tokens"]);
            (d["date"].as_str().unwrap().to_string(), t.as_u64().unwrap())
        })
        .filter(|(_, t)| *t > 0)
        .collect()
}

fn days(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(d, t)| (d.to_string(), *t)).collect()
}

#[test]
fn time_zones_follow_daylight_saving_changes() {
    let st = dst_state();
    let g = st.start();
    let ny = |start: &str, end: &str| {
        json!({"startDate": start, "endDate": end, "mode": "specific",
               "timeZone": "America/New_York", "utcOffset": "UTC-5"})
    };
    // Day buckets: local days, 23 hours long in March and 25 in November.
    let spring = fresh(&g, "usage.cost", ny("2026-03-07", "2026-03-09"));
    assert_eq!(
        by_day(&spring["daily"]),
        days(&[("2026-03-07", 1), ("2026-03-08", 110), ("2026-03-09", 1000)])
    );
    let fall = ok(&g, "usage.cost", ny("2026-10-31", "2026-11-02"));
    assert_eq!(
        by_day(&fall["daily"]),
        days(&[
            ("2026-10-31", 10_000),
            ("2026-11-01", 1_100_000),
            ("2026-11-02", 10_000_000)
        ])
    );
    assert_eq!(fall["daily"].as_array().unwrap().len(), 3);
    // Range filtering: one local day holds exactly its messages.
    let nov1 = ok(&g, "usage.cost", ny("2026-11-01", "2026-11-01"));
    assert_eq!(nov1["totals"]["totalTokens"], 1_100_000);
    let mar8 = ok(&g, "usage.cost", ny("2026-03-08", "2026-03-08"));
    assert_eq!(mar8["totals"]["totalTokens"], 110);
    // sessions.usage buckets the same way: aggregates, rows, activity dates.
    let p = ok(
        &g,
        "sessions.usage",
        with(
            ny("2026-10-31", "2026-11-02"),
            json!({"agentScope": "all", "limit": 1000}),
        ),
    );
    assert_eq!(
        by_day(&p["aggregates"]["costDaily"]),
        by_day(&fall["daily"])
    );
    assert_totals(
        &p["totals"],
        &fall["totals"],
        "sessions.usage and usage.cost",
    );
    let row = &p["sessions"][0];
    assert_eq!(row["key"], "agent:main:fall");
    assert_eq!(
        by_day(&row["usage"]["dailyBreakdown"]),
        by_day(&fall["daily"])
    );
    assert_eq!(
        row["usage"]["activityDates"],
        json!(["2026-10-31", "2026-11-01", "2026-11-02"])
    );
    // A fixed offset is still honoured without a time zone, and is not the zone's rule.
    let fixed = ok(
        &g,
        "usage.cost",
        json!({"startDate": "2026-10-31", "endDate": "2026-11-02", "mode": "specific", "utcOffset": "UTC-5"}),
    );
    assert_eq!(
        by_day(&fixed["daily"]),
        days(&[
            ("2026-10-31", 110_000),
            ("2026-11-01", 1_000_000),
            ("2026-11-02", 10_000_000)
        ])
    );
    let fixed = ok(
        &g,
        "usage.cost",
        json!({"startDate": "2026-03-07", "endDate": "2026-03-09", "utcOffset": "UTC-5"}),
    );
    assert_eq!(
        by_day(&fixed["daily"]),
        days(&[("2026-03-07", 1), ("2026-03-08", 1110)])
    );
    // A zone keel does not know falls back to the offset sent with it, as OpenClaw does; alone,
    // it is an error.
    let fallback = ok(
        &g,
        "usage.cost",
        json!({"startDate": "2026-10-31", "endDate": "2026-11-02", "mode": "specific",
               "timeZone": "Mars/Olympus_Mons", "utcOffset": "UTC-5"}),
    );
    assert_eq!(fallback["daily"], fixed_fall(&g));
    for bad in [
        json!({"mode": "specific", "timeZone": "Mars/Olympus_Mons"}),
        json!({"mode": "specific", "timeZone": "../../etc/passwd"}),
        json!({"timeZone": 5}),
    ] {
        let r = g.rpc("usage.cost", bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // Hours on the activity chart: each local hour at the UTC quarter-hour of its first
    // message. The hour of Nov 1, 00:00 EDT starts with the question at 04:29:59 UTC (quarter
    // 17), which the page places at 00:15 New York time, in the right hour.
    let hours = row["usage"]["utcQuarterHourTokenUsage"].as_array().unwrap();
    assert_eq!(
        hours[..],
        [
            json!({"date": "2026-11-01", "quarterIndex": 13, "totalTokens": 10_000}),
            json!({"date": "2026-11-01", "quarterIndex": 17, "totalTokens": 100_000}),
            json!({"date": "2026-11-02", "quarterIndex": 17, "totalTokens": 1_000_000}),
            json!({"date": "2026-11-02", "quarterIndex": 21, "totalTokens": 10_000_000}),
        ]
    );
    // Messages go by local hour of day (what the page's error rate by hour reads): 23:xx on
    // Oct 31 and Nov 1, 00:xx on Nov 1 and Nov 2 — two hours, placed at their first messages.
    let msgs = row["usage"]["utcQuarterHourMessageCounts"]
        .as_array()
        .unwrap();
    assert_eq!(
        msgs[..],
        [
            json!({"date": "2026-11-01", "quarterIndex": 13, "total": 4, "errors": 0}),
            json!({"date": "2026-11-01", "quarterIndex": 17, "total": 4, "errors": 0}),
        ]
    );
}

fn fixed_fall(g: &Gateway) -> Value {
    ok(
        g,
        "usage.cost",
        json!({"startDate": "2026-10-31", "endDate": "2026-11-02", "mode": "specific", "utcOffset": "UTC-5"}),
    )["daily"]
        .clone()
}

#[test]
fn grouped_by_family_a_key_counts_the_sessions_its_resets_replaced() {
    let st = State::new();
    let t0 = ms("2026-11-02T08:00:00Z");
    st.store(
        "main",
        json!({
            "agent:main:ops": {"sessionId": "s2", "updatedAt": t0 + 5_000, "label": "Ops",
                               "usageFamilySessionIds": ["s1"]},
            "agent:main:other": {"sessionId": "s9", "updatedAt": t0 + 1_000},
        }),
    );
    st.transcript(
        "main",
        "s1.jsonl.reset.2026-11-02T08-30-00.000Z",
        &[ask(t0), reply(t0 + 1000, 1)],
        None,
    );
    st.transcript(
        "main",
        "s2.jsonl",
        &[ask(t0 + 4000), reply(t0 + 5000, 10)],
        None,
    );
    st.transcript("main", "s9.jsonl", &[reply(t0 + 500, 100)], None);
    let g = st.start();
    let q = |group_by: &str| {
        json!({"startDate": "2026-11-02", "endDate": "2026-11-02", "agentScope": "all",
               "groupBy": group_by, "limit": 1000})
    };
    let instance = fresh(&g, "sessions.usage", q("instance"));
    let tokens = |p: &Value| -> Vec<(String, u64)> {
        rows(p)
            .iter()
            .map(|s| {
                (
                    s["key"].as_str().unwrap().to_string(),
                    s["usage"]["totalTokens"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let mut got = tokens(&instance);
    got.sort();
    assert_eq!(
        got,
        days(&[
            ("agent:main:ops", 10),
            ("agent:main:other", 100),
            ("agent:main:s1", 1)
        ])
    );
    assert!(rows(&instance).iter().all(|s| s["scope"] == "instance"));
    let family = ok(&g, "sessions.usage", q("family"));
    assert_eq!(
        tokens(&family),
        days(&[("agent:main:ops", 11), ("agent:main:other", 100)])
    );
    let ops = &family["sessions"][0];
    assert_eq!(ops["scope"], "family");
    assert_eq!(ops["sessionId"], "s2", "the current session");
    // The page shows how many sessions a family row counts.
    assert_eq!(ops["includedSessionIds"], json!(["s2", "s1"]));
    assert_eq!(ops["label"], "Ops");
    assert_eq!(ops["usage"]["messageCounts"]["total"], 4);
    assert_eq!(family["sessions"][1]["includedSessionIds"], json!(["s9"]));
    assert_eq!(family["totals"], instance["totals"]);
    assert_eq!(family["aggregates"]["sessionCount"], 2);
    // The detail asks for one key in the page's grouping.
    let one = |group_by: &str| {
        ok(
            &g,
            "sessions.usage",
            json!({"startDate": "2026-11-02", "endDate": "2026-11-02", "key": "agent:main:ops",
                   "limit": 1, "groupBy": group_by}),
        )["sessions"][0]["usage"]["totalTokens"]
            .clone()
    };
    assert_eq!((one("family"), one("instance")), (json!(11), json!(10)));
    // `includeHistorical` groups by family too; an unknown grouping is an error.
    let hist = ok(
        &g,
        "sessions.usage",
        with(q("instance"), json!({"includeHistorical": true})),
    );
    assert_eq!(tokens(&hist), tokens(&family));
    let r = g.rpc("sessions.usage", q("galaxy"));
    assert_eq!(r.status, 400, "{}", r.text());
    // The replaced session's own timeline, by the key its instance row carries.
    let ts = ok(
        &g,
        "sessions.usage.timeseries",
        json!({"key": "agent:main:s1"}),
    );
    assert_eq!(ts["points"].as_array().unwrap().len(), 1);
    assert_eq!(ts["points"][0]["totalTokens"], 1);
}

/// The page's totals for a range are the answer's totals when it gets every session (fewer
/// than its limit of 1000), and those must be `usage.cost`'s for the same range and zone —
/// and the rows must add up to them the way the page adds them when it filters.
#[test]
fn the_page_totals_equal_usage_cost_for_the_same_range_and_zone() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    // A day either side of the fixture's UTC days: at +5:30 some messages move a day later.
    let start = "2026-11-12";
    let end = "2026-11-19";
    for (zone, offset) in [("Asia/Kolkata", "UTC+5:30"), ("America/New_York", "UTC-5")] {
        for group_by in ["family", "instance"] {
            let params = dashboard(start, end, zone, offset, group_by);
            let page = fresh(&g, "sessions.usage", params.clone());
            let cost = ok(&g, "usage.cost", params.clone());
            assert_totals(&page["totals"], &cost["totals"], zone);
            assert_totals(&page["totals"], &e["totals"], "the generator's");
            assert!(
                rows(&page).len() < 1000,
                "the page uses the answer's totals"
            );
            // What the page computes from rows when a filter is on: sums of usage, and of
            // each day's full totals.
            let mut sum = json!({});
            let mut daily: std::collections::BTreeMap<String, u64> = Default::default();
            for s in rows(&page) {
                for k in ["input", "output", "cacheRead", "cacheWrite", "totalTokens"] {
                    sum[k] = json!(sum[k].as_u64().unwrap_or(0) + s["usage"][k].as_u64().unwrap());
                }
                for d in s["usage"]["dailyBreakdown"].as_array().unwrap() {
                    for k in [
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
                        "tokens",
                        "cost",
                    ] {
                        assert!(d[k].is_number(), "dailyBreakdown rows carry {k}: {d}");
                    }
                    *daily.entry(d["date"].as_str().unwrap().into()).or_default() +=
                        d["totalTokens"].as_u64().unwrap();
                }
            }
            for k in ["input", "output", "cacheRead", "cacheWrite", "totalTokens"] {
                assert_eq!(sum[k], cost["totals"][k], "{zone} {group_by}: {k}");
            }
            let cost_days: std::collections::BTreeMap<String, u64> =
                by_day(&cost["daily"]).into_iter().collect();
            assert_eq!(daily, cost_days, "{zone} {group_by}");
            // The creators panel: keel's one creator, "unknown", holds everything.
            let a = &page["aggregates"];
            assert_eq!(page["creatorOptions"], json!([{"key": "[\"unknown\"]"}]));
            let c = &a["byCreator"][0];
            assert_eq!(a["byCreator"].as_array().unwrap().len(), 1);
            assert_eq!(c["key"], "[\"unknown\"]");
            assert_totals(&c["totals"], &cost["totals"], "byCreator");
            assert_eq!(c["sessionCount"], a["sessionCount"]);
            let active: u64 = c["sessionActivity"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["sessionCount"].as_u64().unwrap())
                .sum();
            assert_eq!(json!(active), a["sessionCount"]);
            // Tools, messages and tokens per session add up to the aggregates.
            let calls: u64 = rows(&page)
                .iter()
                .filter_map(|s| s["usage"]["toolUsage"]["totalCalls"].as_u64())
                .sum();
            assert_eq!(json!(calls), a["tools"]["totalCalls"]);
            assert_eq!(a["tools"]["totalCalls"], e["messages"]["toolCalls"]);
            // A session active within one local hour has no hour lists: the page places it
            // between its first and last activity, which is then exact.
            let hourly = |field: &str, k: &str, whole: &dyn Fn(&Value) -> u64| -> u64 {
                rows(&page)
                    .iter()
                    .map(|s| match s["usage"][field].as_array() {
                        Some(hours) => hours.iter().map(|h| h[k].as_u64().unwrap()).sum(),
                        None => {
                            let u = &s["usage"];
                            let hour = |k: &str| u[k].as_i64().unwrap() / 3_600_000;
                            assert_eq!(hour("firstActivity"), hour("lastActivity"), "{s}");
                            whole(u)
                        }
                    })
                    .sum()
            };
            let total = |u: &Value| u["messageCounts"]["total"].as_u64().unwrap();
            let errors = |u: &Value| u["messageCounts"]["errors"].as_u64().unwrap();
            let tokens = |u: &Value| u["totalTokens"].as_u64().unwrap();
            assert_eq!(
                json!(hourly("utcQuarterHourMessageCounts", "total", &total)),
                a["messages"]["total"]
            );
            assert_eq!(
                json!(hourly("utcQuarterHourMessageCounts", "errors", &errors)),
                a["messages"]["errors"]
            );
            assert_eq!(
                json!(hourly("utcQuarterHourTokenUsage", "totalTokens", &tokens)),
                page["totals"]["totalTokens"]
            );
        }
    }
    // A creator keel does not know has no sessions.
    let none = ok(
        &g,
        "sessions.usage",
        with(
            dashboard(start, end, "UTC", "UTC+0", "family"),
            json!({"creatorKey": "[\"profile\",\"x\"]"}),
        ),
    );
    assert_eq!(rows(&none).len(), 0);
    assert_eq!(none["totals"]["totalTokens"], 0);
}

/// The dashboard asks the same question on every visit: while nothing it counts changed, the
/// answer kept from last time is given again; any append, or a store change, is seen at once.
#[test]
fn a_repeated_question_reuses_its_rows_until_something_changes() {
    let e = expected();
    let g = Gateway::start(Opts::default().fixture("small"));
    let params = dashboard(
        "2026-11-12",
        "2026-11-19",
        "Europe/Paris",
        "UTC+1",
        "family",
    );
    let first = fresh(&g, "sessions.usage", params.clone());
    let again = ok(&g, "sessions.usage", params.clone());
    let but_time = |p: &Value| {
        let mut p = p.clone();
        p["updatedAt"] = json!(0);
        p
    };
    assert_eq!(but_time(&again), but_time(&first));
    // Every row as kept from the call before, none written again (once pressure is normal:
    // under pressure, as on a loaded machine at start-up, nothing is kept).
    let n = rows(&first).len();
    assert!(n > 1);
    let kept = format!("rows: {n} as kept, 0 computed");
    eventually(BOUND, || {
        let _ = ok(&g, "sessions.usage", params.clone());
        g.log_text().contains(&kept).then_some(())
    });
    // An append to any transcript: counted on the next call.
    let dir = g.state().join("agents/main/sessions");
    let mut live: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    live.sort();
    let ts = e["now"].as_i64().unwrap() - 60_000;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live[0])
        .unwrap();
    use std::io::Write;
    writeln!(f, "{}", reply(ts, 777)).unwrap();
    drop(f);
    let after = ok(&g, "sessions.usage", params.clone());
    assert_eq!(
        after["totals"]["totalTokens"].as_u64().unwrap(),
        first["totals"]["totalTokens"].as_u64().unwrap() + 777
    );
    // Only the grown session's row changed, and by exactly the append; the others are as
    // they were (rows are kept between calls and recomputed only when their inputs change).
    let grown = live[0].file_stem().unwrap().to_str().unwrap();
    let by_id = |p: &Value| -> std::collections::BTreeMap<String, Value> {
        rows(p)
            .iter()
            .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    };
    let (before_rows, after_rows) = (by_id(&first), by_id(&after));
    assert_eq!(before_rows.len(), after_rows.len());
    let mut changed = Vec::new();
    for (id, row) in &after_rows {
        if before_rows[id] != *row {
            changed.push(id.clone());
        }
    }
    assert_eq!(changed, [grown.to_string()], "rows that changed");
    let tokens = |r: &Value| r["usage"]["totalTokens"].as_u64().unwrap();
    assert_eq!(
        tokens(&after_rows[grown]),
        tokens(&before_rows[grown]) + 777
    );
    // Another grouping, then this one again: each answer as computed for its own grouping.
    let instance = ok(
        &g,
        "sessions.usage",
        with(params.clone(), json!({"groupBy": "instance", "limit": 999})),
    );
    assert!(rows(&instance).iter().all(|r| r["scope"] == "instance"));
    let back = ok(
        &g,
        "sessions.usage",
        with(params.clone(), json!({"limit": 998})),
    );
    assert_eq!(by_id(&back), after_rows);
    // A store relabelled by another program: the new label on the next call.
    let store = dir.join("sessions.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let key = v.as_object().unwrap().keys().next().unwrap().clone();
    v[&key]["label"] = json!("Renamed by hand");
    std::fs::write(&store, v.to_string()).unwrap();
    let relabelled = ok(&g, "sessions.usage", params);
    let row = rows(&relabelled)
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap();
    assert_eq!(row["label"], "Renamed by hand");
}

#[test]
fn provider_quotas_are_an_honest_empty_list_and_the_methods_are_announced() {
    let g = Gateway::start(Opts::default());
    let p = ok(&g, "usage.status", json!({}));
    assert_eq!(p["providers"], json!([]));
    assert!(p["updatedAt"].as_u64().unwrap() > 0);
    let mut ws = Ws::open(&g.addr());
    let hello = ws.connect(json!({"token": g.token}), 3, 4);
    let methods = hello["payload"]["features"]["methods"].as_array().unwrap();
    for m in [
        "usage.status",
        "sessions.usage.timeseries",
        "sessions.usage.logs",
    ] {
        assert!(methods.contains(&json!(m)), "{m} in {methods:?}");
    }
}
