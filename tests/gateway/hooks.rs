//! What a holder of the hooks token may reach: OpenClaw's hook policy with its safe defaults.
//! A request's `sessionKey` is refused unless `hooks.allowRequestSessionKey`; runs get
//! `hooks.defaultSessionKey` or a fresh `hook:<uuid>`; `hooks.allowedSessionKeyPrefixes` and
//! `hooks.allowedAgentIds` narrow the rest.

use crate::common::*;
use crate::fake_provider::FakeProvider;
use serde_json::{Value, json};

fn config(a: &FakeProvider, hooks: Value) -> Value {
    let mut h = json!({"enabled": true, "token": "hook-secret"});
    for (k, v) in hooks.as_object().unwrap() {
        h[k] = v.clone();
    }
    let mut c = a.one_provider_config();
    c["hooks"] = h;
    c
}

fn hook(g: &Gateway, route: &str, body: Value) -> Response {
    let body = body.to_string();
    g.http(&format!(
        "POST /hooks/{route} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer hook-secret\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// The final result of a run, waited for over HTTP polling.
#[track_caller]
fn finished(g: &Gateway, run_id: &str) -> Value {
    eventually(BOUND, || {
        let p = g
            .rpc("agent.wait", json!({"runId": run_id, "timeoutMs": 0}))
            .json()["payload"]
            .clone();
        (p["status"] != "timeout" && p["status"] != "running").then_some(p)
    })
}

#[track_caller]
fn refused(r: &Response, why: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST", "{}", r.text());
    assert!(r.text().contains(why), "{why}: {}", r.text());
}

#[test]
fn by_default_a_hook_cannot_choose_its_session() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a, json!({}))));
    // The operator's own session is out of reach, by /agent and by /wake.
    for (route, body) in [
        (
            "agent",
            json!({"message": "inject", "sessionKey": "agent:main:main"}),
        ),
        (
            "agent",
            json!({"message": "inject", "sessionKey": "hook:x"}),
        ),
        (
            "wake",
            json!({"text": "inject", "sessionKey": "agent:ops:main"}),
        ),
    ] {
        refused(&hook(&g, route, body), "hooks.allowRequestSessionKey");
    }
    assert!(a.requests().is_empty(), "nothing ran");
    assert!(
        !g.state()
            .join("agents/main/sessions/sessions.json")
            .exists()
    );
    // Without a key, each run gets a fresh hook session of its agent.
    let mut keys = Vec::new();
    for _ in 0..2 {
        let r = hook(&g, "agent", json!({"message": "hello"}));
        assert_eq!(r.status, 202, "{}", r.text());
        let done = finished(&g, r.json()["runId"].as_str().unwrap());
        assert_eq!(done["status"], "ok", "{done}");
        let key = done["sessionKey"].as_str().unwrap().to_string();
        assert!(key.starts_with("agent:main:hook:"), "{key}");
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "a fresh key per run");
    let store: Value = serde_json::from_slice(
        &std::fs::read(g.state().join("agents/main/sessions/sessions.json")).unwrap(),
    )
    .unwrap();
    assert!(store.get("agent:main:main").is_none(), "{store}");
}

#[test]
fn allowed_session_keys_must_match_the_prefixes_and_land_with_their_agent() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(
        &a,
        json!({"allowRequestSessionKey": true, "allowedSessionKeyPrefixes": ["hook:"],
               "defaultSessionKey": "hook:ingress"}),
    )));
    refused(
        &hook(
            &g,
            "agent",
            json!({"message": "x", "sessionKey": "agent:main:main"}),
        ),
        "sessionKey must start with one of: hook:",
    );
    refused(
        &hook(&g, "wake", json!({"text": "x", "sessionKey": "main"})),
        "sessionKey must start with one of: hook:",
    );
    let r = hook(
        &g,
        "agent",
        json!({"message": "x", "sessionKey": "HOOK:ci", "agentId": "ops"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let done = finished(&g, r.json()["runId"].as_str().unwrap());
    assert_eq!(
        (done["agentId"].as_str(), done["sessionKey"].as_str()),
        (Some("ops"), Some("agent:ops:HOOK:ci"))
    );
    // No key: the configured default.
    let r = hook(&g, "agent", json!({"message": "y"}));
    assert_eq!(r.status, 202, "{}", r.text());
    let done = finished(&g, r.json()["runId"].as_str().unwrap());
    assert_eq!(done["sessionKey"], "agent:main:hook:ingress");
}

#[test]
fn allowed_agent_ids_narrow_which_agents_a_hook_reaches() {
    let a = FakeProvider::start("openai-completions");
    let g = Gateway::start(Opts::default().config(config(&a, json!({"allowedAgentIds": ["OPS"]}))));
    // The default agent (main) is not in the list: neither /agent nor /wake reaches it.
    refused(
        &hook(&g, "agent", json!({"message": "x"})),
        "hooks.allowedAgentIds",
    );
    refused(
        &hook(&g, "wake", json!({"text": "x"})),
        "hooks.allowedAgentIds",
    );
    refused(
        &hook(&g, "agent", json!({"message": "x", "agentId": "ghost"})),
        "unknown agentId",
    );
    let r = hook(&g, "agent", json!({"message": "x", "agentId": "ops"}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        finished(&g, r.json()["runId"].as_str().unwrap())["agentId"],
        "ops"
    );

    let none = Gateway::start(Opts::default().config(config(&a, json!({"allowedAgentIds": []}))));
    for agent in [None, Some("main"), Some("ops")] {
        let mut body = json!({"message": "x"});
        if let Some(id) = agent {
            body["agentId"] = json!(id);
        }
        refused(&hook(&none, "agent", body), "hooks.allowedAgentIds");
    }
}
