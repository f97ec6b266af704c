//! Command tools (`tools.commands`) run by a fake model: a value the model chooses never
//! becomes an option.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

fn config(a: &FakeProvider, tools: Value) -> Value {
    json!({
        "models": {"providers": {
            "a": {"baseUrl": a.base_url(), "apiKey": "ka", "api": "openai-completions",
                  "stallMs": 60_000, "timeoutMs": 60_000, "models": [{"id": "m1"}]},
        }},
        "agents": {"defaults": {"model": "a/m1"}},
        "tools": {"commands": tools},
    })
}

fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "keel-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Sends one chat turn and returns its run id.
fn send(ws: &mut Ws) -> String {
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "use the tool", "idempotencyKey": unique("idem")}),
    );
    assert_eq!(res["ok"], true, "{res}");
    res["payload"]["runId"].as_str().unwrap().to_string()
}

/// The run's events up to its end (`final`, `error` or `aborted`); the end comes last.
fn until_end(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    ws.until(BOUND, |f| {
        if f["type"] != "event" || f["payload"]["runId"] != run_id {
            return false;
        }
        events.push(f.clone());
        f["event"] == "chat"
            && matches!(
                f["payload"]["state"].as_str(),
                Some("final" | "error" | "aborted")
            )
    });
    events
}

/// The tool events' `data.phase` and `data.data`.
fn tool_events(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| e["event"] == "agent" && e["payload"]["stream"] == "tool")
        .map(|e| {
            let d = &e["payload"]["data"];
            (d["phase"].as_str().unwrap().to_string(), d["data"].clone())
        })
        .collect()
}

/// One turn in which the model calls `tool` with `args`, then says "done"; returns the
/// tool's closing event (`result` or `error`) and its data.
fn call_tool(a: &FakeProvider, ws: &mut Ws, tool: &str, args: Value) -> (String, Value) {
    a.push(Behavior::tool_call(tool, args));
    a.push(Behavior::text(&["done"]));
    let run_id = send(ws);
    let events = until_end(ws, &run_id);
    let end = &events.last().unwrap()["payload"];
    assert_eq!(end["state"], "final", "{events:#?}");
    let tools = tool_events(&events);
    assert_eq!(tools.len(), 2, "start and its end: {tools:?}");
    assert_eq!(tools[0].0, "start");
    tools[1].clone()
}

#[test]
fn a_value_starting_with_a_dash_is_refused_unless_the_tool_allows_options() {
    let a = FakeProvider::start("openai-completions");
    let params = json!({"type": "object", "properties": {"file": {"type": "string"}}});
    let tools = json!([
        {"name": "sort_file", "argv": ["sort", "{{file}}"], "parameters": params},
        {"name": "sort_opts", "argv": ["sort", "{{file}}"], "parameters": params, "allowOptionArgs": true},
    ]);
    let g = Gateway::start(Opts::default().config(config(&a, tools)));
    let victim = g.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let mut ws = g.ws();

    let (phase, data) = call_tool(
        &a,
        &mut ws,
        "sort_file",
        json!({"file": format!("-o{}", victim.display())}),
    );
    assert_eq!(phase, "error", "{data}");
    let why = data["error"].as_str().unwrap();
    for needle in [
        "sort_file",
        "\"file\"",
        "starts with \"-\"",
        "nothing was run",
    ] {
        assert!(why.contains(needle), "{needle:?} in {why}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // The model got the same message as the call's result.
    let told = a.requests()[1]["messages"].to_string();
    assert!(told.contains("nothing was run"), "{told}");

    // With allowOptionArgs the value reaches sort as the option it is: `-o` writes sort's
    // (empty) input over the file.
    let (phase, data) = call_tool(
        &a,
        &mut ws,
        "sort_opts",
        json!({"file": format!("-o{}", victim.display())}),
    );
    assert_eq!(phase, "result", "{data}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
}
