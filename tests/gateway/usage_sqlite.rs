//! The generated fixture converted into OpenClaw's per-agent SQLite session store, the way
//! OpenClaw 2026.7+ imports a state (compressed events, both archive encodings, the files
//! moved aside as `*.imported-*`): keel serves it with the generator's exact figures, and the
//! same sessions and history as the files.

use crate::common::*;
use crate::usage::{assert_totals, expected, fresh, range};
use serde_json::{Value, json};
use std::path::Path;

fn sqlite_state() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/small/state");
    copy_dir(&from, d.path());
    let c = keel::sessions::sqlite::fixture::convert_legacy(d.path()).unwrap();
    assert!(c.events > 0 && c.archives > 0, "{c:?}");
    d
}

fn on(dir: &Path) -> Gateway {
    Gateway::start(Opts {
        state_from: Some(dir.to_path_buf()),
        ..Opts::default()
    })
}

fn sessions(g: &Gateway) -> Vec<(String, String, Value)> {
    let all =
        g.rpc("sessions.list", json!({"limit": 100_000})).json()["payload"]["sessions"].clone();
    let mut v: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_string(),
                s["sessionId"].as_str().unwrap_or_default().to_string(),
                s["label"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_sqlite_state_answers_like_its_files() {
    let e = expected();
    let src = sqlite_state();
    let db = on(src.path());
    let files = Gateway::start(Opts::default().fixture("small"));
    // usage.cost: the generator's figures, to the token and the cent.
    let p = fresh(&db, "usage.cost", range(&e));
    assert_totals(&p["totals"], &e["totals"], "usage.cost from SQLite");
    // sessions.list: the same sessions.
    let listed = sessions(&db);
    assert_eq!(listed.len() as u64, e["sessions"].as_u64().unwrap());
    assert_eq!(listed, sessions(&files));
    // sessions.usage, the dashboard's form too: the same totals and sessions as the files.
    for params in [
        range(&e),
        json!({"startDate": e["startDate"], "endDate": e["endDate"], "mode": "utc", "limit": 1000, "includeContextWeight": true}),
    ] {
        let a = fresh(&db, "sessions.usage", params.clone());
        let b = fresh(&files, "sessions.usage", params.clone());
        assert_totals(&a["totals"], &b["totals"], "sessions.usage");
        assert_eq!(
            a["sessions"].as_array().unwrap().len(),
            b["sessions"].as_array().unwrap().len(),
            "{params}"
        );
    }
    // chat.history of the busiest listed session: the same messages.
    let key = &listed[0].0;
    let h = |g: &Gateway| {
        let r = g.rpc("chat.history", json!({"sessionKey": key, "limit": 50}));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["payload"].clone()
    };
    let (a, b) = (h(&db), h(&files));
    assert_eq!(a["sessionId"], b["sessionId"]);
    assert_eq!(a["totalMessages"], b["totalMessages"]);
    assert_eq!(a["messages"], b["messages"]);
    // Nothing refused, nothing skipped but the fixture's malformed lines.
    let ready = db.get("/readyz").json();
    assert!(ready.get("notes").is_none(), "{ready}");
    assert_eq!(db.metric("keel_session_db_refused"), Some(0.0));
    let status = db.rpc("status", json!({})).json()["payload"].clone();
    assert_eq!(status["usage"]["sqlite"]["refused"], json!([]));
    assert_eq!(
        status["usage"]["sqlite"]["skipped"]["not_json"], e["malformedLines"],
        "the fixture's malformed lines, counted as such"
    );
    // `keel usage --state-dir` prints the same table.
    let cli = |dir: &Path| {
        let out = keel_cli(
            ["usage", "--state-dir", dir.to_str().unwrap()],
            [("KEEL_LOG", "off")],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/small/state");
    let (a, b) = (cli(src.path()), cli(&from));
    assert_eq!(
        a.lines().skip(1).collect::<Vec<_>>(),
        b.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn an_agent_database_of_an_unknown_schema_is_refused_and_the_others_served() {
    let src = sqlite_state();
    let agents: Vec<String> = std::fs::read_dir(src.path().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(agents.len() > 1);
    let db = src.path().join("agents/main/agent/openclaw-agent.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("UPDATE schema_meta SET schema_version = 99", [])
        .unwrap();
    drop(c);
    let g = on(src.path());
    let listed = sessions(&g);
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|s| !s.0.starts_with("agent:main:")),
        "{listed:?}"
    );
    let ready = eventually(BOUND, || {
        let r = g.get("/readyz").json();
        r.get("notes").is_some().then_some(r)
    });
    let notes = ready["notes"].to_string();
    assert!(
        notes.contains("agent main") && notes.contains("99"),
        "{notes}"
    );
    assert_eq!(g.metric("keel_session_db_refused"), Some(1.0));
    let status = g.rpc("status", json!({})).json()["payload"].clone();
    assert!(
        status["usage"]["storeErrors"]
            .to_string()
            .contains("schema version 99"),
        "{status}"
    );
    assert!(
        g.log_text().contains("schema version 99"),
        "the reason is in the log"
    );
}
