//! Ids that come from outside never name a path outside the state directory: an agent id or
//! the agent part of a session key that is an absolute path or climbs with `..` — from a
//! client over WebSocket and HTTP, from a hook, from a model calling `sessions_spawn` — is
//! normalized as OpenClaw normalizes agent ids, or refused naming the field.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use keel::ids::AgentId;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn config(a: &FakeProvider) -> Value {
    let mut c = a.one_provider_config();
    c["hooks"] = json!({"enabled": true, "token": "hook-secret"});
    c
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `../` enough times to climb from `from` to `/` (more is harmless), then `to` (absolute)
/// without its root.
fn climb(from: &Path, to: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(from.components().count()),
        to.strip_prefix("/").unwrap().display()
    )
}

/// Waits for a run to end and returns its final result.
#[track_caller]
fn wait_run(ws: &mut Ws, run_id: &str) -> Value {
    let r = ws.call(
        "agent.wait",
        json!({"runId": run_id, "timeoutMs": BOUND.as_millis() as u64}),
    );
    assert_eq!(r["ok"], true, "{r}");
    r["payload"].clone()
}

/// The store a run of `agent` writes, inside the state directory.
fn store_of(g: &Gateway, agent: &str) -> PathBuf {
    let id = AgentId::normalize(agent).expect("a representable id");
    g.state()
        .join("agents")
        .join(id.as_str())
        .join("sessions/sessions.json")
}

#[test]
fn ids_from_clients_hooks_and_models_stay_inside_the_state_directory() {
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().to_path_buf();
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a)));
    let mut ws = g.ws();

    // `agent` with an absolute agentId.
    let x = out.join("x");
    let r = ws.call(
        "agent",
        json!({"agentId": x, "message": "into x", "idempotencyKey": "p1"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let done = wait_run(&mut ws, r["payload"]["runId"].as_str().unwrap());
    assert_eq!(done["status"], "ok", "{done}");
    let canonical = AgentId::normalize(x.to_str().unwrap()).unwrap();
    assert_eq!(done["agentId"], canonical.as_str());
    assert!(store_of(&g, x.to_str().unwrap()).exists());

    // `chat.send` over HTTP with a session key whose agent climbs out with `..`.
    let y = out.join("y");
    let key = format!("agent:{}:s", climb(&g.state().join("agents"), &y));
    let r = g.rpc(
        "chat.send",
        json!({"sessionKey": key, "message": "into y", "idempotencyKey": "p2"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let done = wait_run(&mut ws, r.json()["payload"]["runId"].as_str().unwrap());
    assert_eq!(done["status"], "ok", "{done}");
    let y_agent = done["agentId"].as_str().unwrap().to_string();
    assert_eq!(
        done["sessionKey"],
        format!("agent:{y_agent}:s"),
        "the key is rewritten with the canonical agent id"
    );
    assert!(
        y_agent
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "{y_agent}"
    );

    // A hook, with only the hooks token: an agent that is a path is not one this config knows.
    let z = out.join("z");
    let body = json!({"agentId": z, "message": "into z"}).to_string();
    let r = g.http(&format!(
        "POST /hooks/agent HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer hook-secret\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("unknown agentId"), "{}", r.text());
    // A listed agent in another spelling is that agent.
    let body = json!({"agentId": "OPS", "message": "hooked"}).to_string();
    let r = g.http(&format!(
        "POST /hooks/agent HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer hook-secret\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 202, "{}", r.text());
    let done = wait_run(&mut ws, r.json()["runId"].as_str().unwrap());
    assert_eq!(done["agentId"], "ops", "{done}");

    // A model that calls sessions_spawn with an absolute agentId.
    let w = out.join("w");
    a.push(Behavior::Stream {
        text: vec![],
        tool_call: Some((
            "sessions_spawn".into(),
            json!({"task": "child work", "agentId": w}),
        )),
        usage: (5, 5),
        delay_between: Duration::ZERO,
    });
    let r = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "spawn", "idempotencyKey": "p3"}),
    );
    let done = wait_run(&mut ws, r["payload"]["runId"].as_str().unwrap());
    assert_eq!(done["status"], "ok", "{done}");
    let child_store = store_of(&g, w.to_str().unwrap());
    eventually(BOUND, || child_store.exists().then_some(()));

    // `chat.history` reads through the same checked path: a store planted outside is not read.
    let planted = out.join("h");
    std::fs::create_dir_all(planted.join("sessions")).unwrap();
    let planted_key = format!("agent:{}:x", planted.display());
    std::fs::write(
        planted.join("sessions/sessions.json"),
        json!({planted_key.clone(): {"sessionId": "s1", "updatedAt": 1}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        planted.join("sessions/s1.jsonl"),
        json!({"type": "message", "id": "1", "message": {"role": "user", "content": "secret-outside"}}).to_string() + "\n",
    )
    .unwrap();
    let h = ws.call("chat.history", json!({"sessionKey": planted_key}));
    assert_eq!(h["ok"], true, "{h}");
    assert!(!h.to_string().contains("secret-outside"), "{h}");
    assert_eq!(h["payload"]["messages"], json!([]));

    // Nothing was written outside the state directory: only what the test planted is there.
    let mut left = all_files(&out);
    left.sort();
    assert_eq!(
        left,
        [
            planted.join("sessions/s1.jsonl"),
            planted.join("sessions/sessions.json")
        ],
        "files outside the state directory"
    );
}

#[test]
fn ids_that_normalize_to_nothing_are_refused_naming_the_field() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a)));
    let mut ws = g.ws();
    for (method, params, field) in [
        (
            "agent",
            json!({"agentId": "/../", "message": "m", "idempotencyKey": "r1"}),
            "agentId",
        ),
        (
            "chat.send",
            json!({"sessionKey": "agent:%%%:s", "message": "m", "idempotencyKey": "r2"}),
            "sessionKey",
        ),
        (
            "chat.send",
            json!({"sessionKey": "agent::s", "message": "m", "idempotencyKey": "r3"}),
            "sessionKey",
        ),
        (
            "chat.history",
            json!({"sessionKey": "agent:/some/dir"}),
            "sessionKey",
        ),
        ("sessions.usage", json!({"agentId": "..."}), "agentId"),
    ] {
        let r = ws.call(method, params.clone());
        assert_eq!(r["ok"], false, "{method} {params}: {r}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{method}: {msg}");
        // The same over HTTP.
        let h = g.rpc(method, params);
        assert_eq!(h.status, 400, "{}", h.text());
    }
    assert!(a.requests().is_empty(), "nothing ran");
    assert!(!g.state().join("agents").exists(), "nothing was written");
}
