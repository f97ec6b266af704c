//! The scheduler against the real binary: jobs added over WebSocket, HTTP and the CLI run on
//! time and deliver through the queue to a fake Telegram; receipts survive SIGKILL and
//! restarts without a double run; missed slots are caught up once (or skipped); a job that
//! cannot run shows in /readyz; a drain starts nothing.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use crate::fake_telegram::FakeTelegram;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHAT: i64 = 4242;

fn config(p: &FakeProvider, tg: &FakeTelegram) -> Value {
    let mut c = p.one_provider_config();
    c["channels"] = json!({"telegram": {"botToken": "123:abc", "baseUrl": tg.url(),
                                        "pollTimeoutSeconds": 1}});
    c
}

fn job(name: &str, schedule: Value) -> Value {
    json!({
        "name": name,
        "schedule": schedule,
        "sessionTarget": "isolated",
        "payload": {"kind": "agentTurn", "message": format!("cron tick {name}")},
        "delivery": {"mode": "announce", "channel": "telegram", "to": CHAT},
    })
}

fn every(ms: u64) -> Value {
    json!({"kind": "every", "everyMs": ms})
}

/// Calls a method over HTTP and returns its payload, asserting success.
#[track_caller]
fn call(g: &Gateway, method: &str, params: Value) -> Value {
    let r = g.rpc(method, params.clone());
    let v = r.json();
    assert_eq!(r.status, 200, "{method} {params}: {}", r.text());
    v["payload"].clone()
}

/// Every receipt of a job, oldest first, read from the state directory.
fn receipts(state: &Path, job: &str) -> Vec<Value> {
    let dir = state.join("cron/runs").join(job);
    let mut names: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

fn with_status<'a>(rs: &'a [Value], status: &str) -> Vec<&'a Value> {
    rs.iter().filter(|r| r["status"] == status).collect()
}

/// How many model calls carried `text` as the last user message (the runs it started).
fn runs_of(p: &FakeProvider, text: &str) -> usize {
    p.requests()
        .iter()
        .filter(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                .is_some_and(|m| m["content"].to_string().contains(text))
        })
        .count()
}

#[test]
fn a_job_every_two_seconds_runs_and_delivers_to_its_chat_over_ws_and_http() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let g = Gateway::start(Opts::default().config(config(&p, &tg)));

    // Added over WebSocket, as the dashboard does.
    let mut ws = g.ws();
    let added = ws.call("cron.add", job("pulse", every(2000)));
    assert_eq!(added["ok"], true, "{added}");
    let j = &added["payload"];
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(j["schedule"], json!({"kind": "every", "everyMs": 2000}));
    assert_eq!(j["enabled"], true);
    assert!(j["nextRunAtMs"].as_i64().unwrap() > 0, "{j}");

    // Two runs, each delivered to the chat through the queue.
    eventually(Duration::from_secs(30), || {
        (tg.sent_to(CHAT).iter().filter(|t| t.contains("ok")).count() >= 2).then_some(())
    });
    let rs = eventually(BOUND, || {
        let rs = receipts(&g.state(), &id);
        (with_status(&rs, "ok").len() >= 2).then_some(rs)
    });
    // Every receipt was written with its owner before its run, and slots are distinct, 2 s
    // apart.
    let mut slots: Vec<i64> = rs
        .iter()
        .map(|r| r["scheduledAtMs"].as_i64().unwrap())
        .collect();
    slots.dedup();
    assert_eq!(slots.len(), rs.len(), "no slot ran twice: {rs:#?}");
    for w in slots.windows(2) {
        assert_eq!((w[1] - w[0]) % 2000, 0, "{rs:#?}");
    }
    for r in &rs {
        assert_eq!(r["owner"]["pid"], g.pid(), "{r}");
        assert!(r["owner"]["startTicks"].as_u64().unwrap() > 0, "{r}");
    }

    // Its history over HTTP, OpenClaw's shape.
    let runs = call(&g, "cron.runs", json!({"id": id, "limit": 50}));
    let e = &runs["entries"][0];
    assert!(runs["total"].as_u64().unwrap() >= 2, "{runs}");
    assert_eq!(e["jobId"], id.as_str());
    assert!(
        ["ok", "running"].contains(&e["status"].as_str().unwrap()),
        "{e}"
    );
    assert!(e["runAtMs"].as_u64().is_some(), "{e}");
    let ok = runs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "ok")
        .unwrap()
        .clone();
    assert_eq!(ok["action"], "finished");
    assert_eq!(ok["deliveryStatus"], "delivered");
    assert!(ok["durationMs"].as_u64().is_some(), "{ok}");
    assert!(
        ok["sessionKey"]
            .as_str()
            .unwrap()
            .starts_with(&format!("agent:main:cron:{id}:run:"))
    );

    // The list, over HTTP, with its last run.
    let list = call(
        &g,
        "cron.list",
        json!({"agentId": "main", "includeDisabled": true, "compact": true, "limit": 50,
               "sortBy": "nextRunAtMs", "sortDir": "asc"}),
    );
    assert_eq!(list["total"], 1, "{list}");
    let row = &list["jobs"][0];
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["scheduleKind"], "every");
    assert_eq!(row["effectiveAgentId"], "main");
    assert!(row["lastRunAtMs"].as_i64().is_some(), "{row}");
    assert_eq!(row["lastRunStatus"], "ok");
    let status = call(&g, "cron.status", json!({}));
    assert_eq!(status["enabled"], true);
    assert_eq!(status["jobs"], 1);
    assert_eq!(status["storage"], "files");

    // Disabled over HTTP: no run starts after that.
    let upd = call(
        &g,
        "cron.update",
        json!({"id": id, "patch": {"enabled": false}}),
    );
    assert_eq!(upd["enabled"], false);
    assert_eq!(upd["nextRunAtMs"], Value::Null);
    let removed = call(&g, "cron.remove", json!({"id": id}));
    assert_eq!(removed["removed"], true);
    assert!(!g.state().join(format!("cron/jobs/{id}.json")).exists());
    assert_eq!(call(&g, "cron.list", json!({}))["total"], 0);
}

#[test]
fn bad_jobs_are_refused_naming_the_field_and_a_broken_file_disables_only_its_job() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("cron/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(
        jobs.join("mangled.json"),
        b"{\"id\": \"mangled\", \"name\": \"x\", ",
    )
    .unwrap();
    std::fs::write(
        jobs.join("wrongkind.json"),
        json!({"id": "wrongkind", "name": "bad tz", "createdAtMs": 1,
               "schedule": {"kind": "cron", "expr": "0 9 * * *", "tz": "Mars/Base"},
               "payload": {"kind": "agentTurn", "message": "hi"}})
        .to_string(),
    )
    .unwrap();
    let good = json!({"id": "good", "name": "good", "createdAtMs": 1,
                      "schedule": {"kind": "every", "everyMs": 1000},
                      "payload": {"kind": "agentTurn", "message": "cron tick good"}});
    std::fs::write(jobs.join("good.json"), good.to_string()).unwrap();
    let mut c = config(&p, &tg);
    // Slots missed before this boot are not the point here.
    c["cron"] = json!({"skipMissedJobs": true});
    let g = Gateway::start(Opts {
        state_from: Some(dir.path().to_path_buf()),
        ..Opts::default().config(c)
    });
    let jobs = g.state().join("cron/jobs");

    let list = call(&g, "cron.list", json!({"includeDisabled": true}));
    assert_eq!(list["total"], 3, "{list}");
    let row = |id: &str| {
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap()
    };
    let mangled = row("mangled");
    assert_eq!(mangled["enabled"], false);
    assert_eq!(mangled["broken"], true);
    assert!(
        mangled["disabledReason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{mangled}"
    );
    let tz = row("wrongkind");
    assert!(
        tz["disabledReason"]
            .as_str()
            .unwrap()
            .starts_with("schedule.tz"),
        "{tz}"
    );
    // The good job runs regardless.
    eventually(BOUND, || (runs_of(&p, "cron tick good") >= 1).then_some(()));
    // `keel cron list` shows the broken ones with their reason.
    let out = keel_cli(
        [
            "cron",
            "list",
            "--state-dir",
            g.state().to_str().unwrap(),
            "--port",
            &g.port.to_string(),
        ],
        std::iter::empty::<(&str, &str)>(),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("BROKEN") && text.contains("not valid JSON"),
        "{text}"
    );

    // Refusals, over WebSocket and HTTP alike, name the field.
    let mut ws = g.ws();
    for (params, field) in [
        (
            job("x", json!({"kind": "cron", "expr": "0 25 * * *"})),
            "schedule.expr",
        ),
        (
            job(
                "x",
                json!({"kind": "cron", "expr": "0 9 * * *", "tz": "Nowhere/X"}),
            ),
            "schedule.tz",
        ),
        (
            job("x", json!({"kind": "every", "everyMs": 10})),
            "schedule.everyMs",
        ),
        (
            job("x", json!({"kind": "at", "at": "2001-01-01T00:00:00Z"})),
            "schedule.at",
        ),
        (
            json!({"name": "x", "schedule": every(60000), "payload": {"kind": "command", "command": "rm -rf /"}}),
            "payload.kind",
        ),
        (
            json!({"name": "x", "schedule": every(60000), "payload": {"kind": "agentTurn"}}),
            "payload.message",
        ),
        (
            json!({"name": "x", "schedule": every(60000), "agentId": "nobody", "payload": {"kind": "agentTurn", "message": "m"}}),
            "agentId",
        ),
        (
            json!({"name": "x", "schedule": every(60000), "payload": {"kind": "agentTurn", "message": "m"},
                "delivery": {"mode": "announce", "channel": "telegram", "to": "not a chat id"}}),
            "delivery.to",
        ),
    ] {
        let want = format!("invalid params: {field}");
        let r = ws.call("cron.add", params.clone());
        let msg = r["error"]["message"].as_str().unwrap_or("");
        assert!(
            r["ok"] == false && msg.starts_with(&want),
            "ws {params}: {r}"
        );
        let h = g.rpc("cron.add", params.clone());
        let msg = h.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            h.status == 400 && msg.starts_with(&want),
            "http {params}: {}",
            h.text()
        );
    }
    // Nothing of them was written.
    assert_eq!(files(&jobs).len(), 3);
    let r = g.rpc("cron.run", json!({"id": "mangled"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = g.rpc("cron.runs", json!({"id": "../../etc"}));
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn sigkill_during_a_run_leaves_it_interrupted_and_it_is_not_run_again() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    // The first run hangs in its model call; nothing after that is pushed, so later calls
    // get the default answer.
    p.push(Behavior::StallBeforeHead);
    let g = Gateway::start(Opts::default().config(config(&p, &tg)));
    let now = keel::clock::wall_ms() as i64;
    // One slot soon, the next an hour later.
    let j = call(
        &g,
        "cron.add",
        job(
            "hourly",
            json!({"kind": "every", "everyMs": 3_600_000, "anchorMs": now + 1500}),
        ),
    );
    let id = j["id"].as_str().unwrap().to_string();
    assert!(
        p.wait_requests(1, BOUND),
        "the run did not reach the provider"
    );
    let before = receipts(&g.state(), &id);
    assert_eq!(before.len(), 1, "{before:#?}");
    assert_eq!(before[0]["status"], "running");
    assert_eq!(before[0]["owner"]["pid"], g.pid());
    let slot = before[0]["scheduledAtMs"].as_i64().unwrap();
    assert_eq!(slot, now + 1500);

    g.signal("KILL");
    let g = g.restart(Opts::default().config(config(&p, &tg)));
    g.wait_log("was interrupted by a restart", BOUND)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let after = receipts(&g.state(), &id);
    assert_eq!(after.len(), 1, "no new run for that slot: {after:#?}");
    assert_eq!(after[0]["status"], "interrupted");
    assert_eq!(after[0]["runId"], before[0]["runId"]);
    // The job waits for its next slot, an hour on; nothing runs now.
    let row = call(&g, "cron.get", json!({"id": id}));
    assert_eq!(row["nextRunAtMs"], slot + 3_600_000, "{row}");
    assert_eq!(row["state"]["runningAtMs"], Value::Null);
    assert_eq!(row["lastRunStatus"], "error");
    assert_eq!(row["state"]["lastOutcome"], "interrupted");
    let runs = call(&g, "cron.runs", json!({"id": id}));
    assert_eq!(runs["entries"][0]["outcome"], "interrupted", "{runs}");
    assert_eq!(runs["entries"][0]["status"], "error");
    assert_eq!(runs_of(&p, "cron tick hourly"), 1);
    assert_eq!(
        g.metric("keel_cron_runs_total{outcome=\"interrupted\"}"),
        Some(1.0)
    );
}

#[test]
fn a_restart_across_due_times_catches_up_once_or_skips_when_told() {
    for skip in [false, true] {
        let p = FakeProvider::start("openai-completions");
        let tg = FakeTelegram::start();
        let mut c = config(&p, &tg);
        c["cron"] = json!({"skipMissedJobs": skip});
        let mut g = Gateway::start(Opts::default().config(c.clone()));
        let now = keel::clock::wall_ms() as i64;
        // Slots every 2 s from 60 s on: none passes while this first process runs.
        let j = call(
            &g,
            "cron.add",
            job(
                "tick",
                json!({"kind": "every", "everyMs": 2000, "anchorMs": now + 60_000}),
            ),
        );
        let id = j["id"].as_str().unwrap().to_string();
        g.signal("TERM");
        assert!(g.wait_exit(BOUND).is_some());
        // Keel is down while three slots pass: the job file says they passed (its anchor is
        // moved back, as if the downtime had been longer).
        let path = g.state().join(format!("cron/jobs/{id}.json"));
        let mut def: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let back = now - 5_000;
        def["schedule"]["anchorMs"] = json!(back);
        def["createdAtMs"] = json!(back - 1);
        def["scheduleSinceMs"] = json!(back - 1);
        std::fs::write(&path, def.to_string()).unwrap();
        let g = g.restart(Opts::default().config(c));
        if skip {
            let rs = eventually(BOUND, || {
                let rs = receipts(&g.state(), &id);
                (!rs.is_empty()).then_some(rs)
            });
            assert_eq!(rs[0]["status"], "skipped", "{rs:#?}");
            let reason = rs[0]["reason"].as_str().unwrap();
            assert!(reason.contains("skipMissedJobs"), "{reason}");
            // The next run is a scheduled one, not a catch-up.
            let next = eventually(BOUND, || {
                receipts(&g.state(), &id)
                    .into_iter()
                    .find(|r| r["status"] != "skipped")
            });
            assert_eq!(next["reason"], "scheduled", "{next}");
        } else {
            let first = eventually(BOUND, || receipts(&g.state(), &id).into_iter().next());
            let reason = first["reason"].as_str().unwrap();
            assert!(reason.starts_with("catch-up: "), "{first}");
            assert!(reason.contains("missed while keel was down"), "{reason}");
            // One catch-up, then the schedule goes on.
            let rs = eventually(Duration::from_secs(30), || {
                let rs = receipts(&g.state(), &id);
                (rs.len() >= 3).then_some(rs)
            });
            let catch_ups = rs
                .iter()
                .filter(|r| {
                    r["reason"]
                        .as_str()
                        .unwrap()
                        .contains("while keel was down")
                })
                .count();
            assert_eq!(catch_ups, 1, "{rs:#?}");
        }
    }
}

#[test]
fn a_job_that_cannot_run_shows_in_readyz_status_and_metrics_until_it_runs() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let g = Gateway::start(Opts::default().config(config(&p, &tg)));
    assert_eq!(g.get("/readyz").status, 200);
    let j = call(&g, "cron.add", job("blocked", every(1000)));
    let id = j["id"].as_str().unwrap().to_string();
    // Its receipts cannot be written (a file where their directory goes), so it never starts.
    let runs = g.state().join("cron/runs");
    std::fs::create_dir_all(&runs).unwrap();
    let blocker = runs.join(&id);
    let _ = std::fs::remove_dir_all(&blocker);
    std::fs::write(&blocker, b"not a directory").unwrap();
    let ready = eventually(BOUND, || {
        let r = g.get("/readyz");
        (r.status == 503 && r.text().contains("overdue")).then_some(r)
    });
    assert!(ready.text().contains(&id), "{}", ready.text());
    g.wait_metric("keel_cron_overdue_jobs", 1.0);
    let status = call(&g, "status", json!({}));
    assert!(
        status["cron"]["overdue"][0]
            .as_str()
            .unwrap()
            .contains("overdue"),
        "{status}"
    );
    assert!(g.wait_log("overdue (due", BOUND).is_some());
    let logged = g.log_text().matches(&format!("({id}) is ")).count();
    assert_eq!(logged, 1, "logged once: {}", g.log_text());
    // Fixed: it runs, and the gateway is ready again.
    let ran = runs_of(&p, "cron tick blocked");
    std::fs::remove_file(&blocker).unwrap();
    eventually(BOUND, || {
        (runs_of(&p, "cron tick blocked") > ran).then_some(())
    });
    eventually(BOUND, || (g.get("/readyz").status == 200).then_some(()));
    g.wait_metric("keel_cron_overdue_jobs", 0.0);
}

#[test]
fn a_drain_never_starts_a_run() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    // The first run hangs, so the drain lasts its whole deadline; meanwhile the slots of a
    // second job, whose runs are quick, keep passing.
    p.push(Behavior::StallBeforeHead);
    let mut c = config(&p, &tg);
    c["gateway"] = json!({"drainTimeoutMs": 3000, "drainGraceMs": 1000});
    let mut g = Gateway::start(Opts::default().config(c));
    let now = keel::clock::wall_ms() as i64;
    call(
        &g,
        "cron.add",
        job(
            "hang",
            json!({"kind": "every", "everyMs": 3_600_000, "anchorMs": now + 300}),
        ),
    );
    assert!(p.wait_requests(1, BOUND));
    let quick = call(&g, "cron.add", job("quick", every(1000)));
    let id = quick["id"].as_str().unwrap().to_string();
    // It runs before the drain…
    eventually(BOUND, || {
        (runs_of(&p, "cron tick quick") >= 1).then_some(())
    });
    g.signal("TERM");
    g.wait_log("cron: draining", BOUND)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let seen = keel::clock::wall_ms();
    let calls = runs_of(&p, "cron tick quick");
    // … and not during it, though three of its slots pass before the exit.
    assert!(g.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(
        runs_of(&p, "cron tick quick"),
        calls,
        "no run started while draining"
    );
    for r in receipts(&g.state(), &id) {
        assert!(r["startedAtMs"].as_u64().unwrap() <= seen, "{r}");
    }
    assert!(g.log_text().contains("cron: draining"));
}

#[test]
fn heartbeats_follow_the_config_and_cli_manages_jobs() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let mut c = config(&p, &tg);
    c["agents"]["defaults"]["heartbeat"] = json!({"every": "2s"});
    c["agents"]["list"] = json!([{"id": "main", "default": true},
                                 {"id": "ops", "heartbeat": {"every": "0m"}}]);
    let g = Gateway::start(Opts::default().config(c));
    let list = call(&g, "cron.list", json!({"includeDisabled": true}));
    assert_eq!(
        list["total"], 1,
        "one heartbeat, none for ops, nothing else seeded: {list}"
    );
    let hb = &list["jobs"][0];
    assert_eq!(hb["declarationKey"], "heartbeat:main");
    assert_eq!(hb["schedule"]["everyMs"], 2000);
    eventually(BOUND, || {
        (runs_of(&p, "[OpenClaw heartbeat poll]") >= 1).then_some(())
    });
    // System-owned: not edited or removed through the API.
    let id = hb["id"].as_str().unwrap();
    assert_eq!(g.rpc("cron.remove", json!({"id": id})).status, 400);
    assert_eq!(
        g.rpc(
            "cron.update",
            json!({"id": id, "patch": {"enabled": false}})
        )
        .status,
        400
    );

    let cli = |args: &[&str]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--state-dir".into(),
            g.state().to_string_lossy().into_owned(),
            "--port".into(),
            g.port.to_string(),
        ]);
        keel_cli(a, std::iter::empty::<(&str, &str)>())
    };
    let out = cli(&[
        "cron",
        "add",
        "--name",
        "from-cli",
        "--cron",
        "0 9 * * 1-5",
        "--tz",
        "Europe/Berlin",
        "--message",
        "cron tick cli",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["schedule"]["tz"], "Europe/Berlin");
    let out = cli(&["cron", "run", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("started run"));
    eventually(BOUND, || (runs_of(&p, "cron tick cli") == 1).then_some(()));
    let out = cli(&["cron", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-cli"),
        "{out:?}"
    );
    let out = cli(&["cron", "rm", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&[
        "cron",
        "add",
        "--name",
        "x",
        "--every",
        "soon",
        "--message",
        "m",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--every"),
        "{out:?}"
    );
    // The manual run left the schedule alone: its next run is still a weekday at 9:00.
}
