//! Command tools (`tools.commands`) run by a fake model: a value the model chooses never
//! becomes an option, and nothing a tool starts — its children, their children, the threads
//! that read them — outlives the call, a drain or keel's exit.
//!
//! The tools that leave processes behind carry a marker unique to the test: in the command
//! line of the shell (its `$0`) and, exported, in the environment of everything it starts, so
//! the test finds them all under /proc whoever their parent is by then.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// A shell that starts two long sleeps and waits for them.
const TREE: &str = "export KEEL_TOOL_MARK=\"$0\"; sleep 300 & sleep 300 & wait";
/// A shell that starts a long sleep in the background and exits at once.
const LEAVES: &str = "export KEEL_TOOL_MARK=\"$0\"; sleep 300 & echo started";

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

/// Kills whatever still carries the marker when the test ends, passed or failed, so a failure
/// does not leave sleeps behind on the machine.
pub struct Marked(pub String);

impl Marked {
    pub fn new(what: &str) -> Marked {
        Marked(unique(what))
    }

    /// Live processes (not zombies: their command line and environment read empty) whose
    /// command line or environment holds the marker.
    pub fn pids(&self) -> Vec<u32> {
        let me = std::process::id();
        let mark = self.0.as_bytes();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                ["cmdline", "environ"].iter().any(|f| {
                    std::fs::read(format!("/proc/{pid}/{f}"))
                        .is_ok_and(|b| b.windows(mark.len()).any(|w| w == mark))
                })
            })
            .collect()
    }

    #[track_caller]
    fn wait_none(&self) {
        eventually(BOUND, || self.pids().is_empty().then_some(()));
    }

    /// Waits until the shell and its two sleeps are running.
    #[track_caller]
    fn wait_tree(&self) {
        eventually(BOUND, || (self.pids().len() >= 3).then_some(()));
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        let pids = self.pids();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .status();
        }
    }
}

fn threads(g: &Gateway) -> u64 {
    // `status_kb` reads any figure of /proc/<pid>/status; `Threads` is a plain count.
    status_kb(g.pid(), "Threads")
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
    let events = ws.run_events(&run_id);
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

#[test]
fn a_tool_that_times_out_leaves_no_process_and_no_thread() {
    let a = FakeProvider::start("openai-completions");
    let mark = Marked::new("timeout");
    let tools = json!([{"name": "tree", "argv": ["sh", "-c", TREE, mark.0], "timeoutMs": 300}]);
    let g = Gateway::start(Opts::default().config(config(&a, tools)));
    let mut ws = g.ws();
    let before = threads(&g);
    for _ in 0..5 {
        let (phase, data) = call_tool(&a, &mut ws, "tree", json!({}));
        assert_eq!(phase, "error", "{data}");
        assert!(
            data["error"].as_str().unwrap().contains("(timeout)"),
            "{data}"
        );
        mark.wait_none();
    }
    eventually(BOUND, || (threads(&g) <= before).then_some(()));
}

#[test]
fn an_aborted_tool_leaves_no_process_and_no_thread() {
    let a = FakeProvider::start("openai-completions");
    let mark = Marked::new("abort");
    let tools = json!([{"name": "tree", "argv": ["sh", "-c", TREE, mark.0], "timeoutMs": 600_000}]);
    let g = Gateway::start(Opts::default().config(config(&a, tools)));
    let mut ws = g.ws();
    let mut ctl = g.ws();
    let before = threads(&g);
    for _ in 0..3 {
        // No answer after the tool: the run ends at the abort.
        a.push(Behavior::tool_call("tree", json!({})));
        let run_id = send(&mut ws);
        mark.wait_tree();
        let res = ctl.call("chat.abort", json!({"runId": run_id}));
        assert_eq!(res["payload"]["aborted"], true, "{res}");
        let events = ws.run_events(&run_id);
        assert_eq!(events.last().unwrap()["payload"]["state"], "aborted");
        mark.wait_none();
    }
    eventually(BOUND, || (threads(&g) <= before).then_some(()));
}

#[test]
fn what_a_tool_leaves_in_the_background_ends_with_the_call() {
    let a = FakeProvider::start("openai-completions");
    let mark = Marked::new("leaves");
    let tools = json!([{"name": "leaves", "argv": ["sh", "-c", LEAVES, mark.0]}]);
    let g = Gateway::start(Opts::default().config(config(&a, tools)));
    let mut ws = g.ws();
    let before = threads(&g);
    for _ in 0..3 {
        let (phase, data) = call_tool(&a, &mut ws, "leaves", json!({}));
        assert_eq!(phase, "result", "{data}");
        // The sleep held the output pipe open; the output came back all the same.
        assert_eq!(data["result"], "started\n", "{data}");
        mark.wait_none();
    }
    eventually(BOUND, || (threads(&g) <= before).then_some(()));
}

/// Starts a long tool, sends SIGTERM with a 500 ms drain and `grace_ms` of grace, and returns
/// the log once keel has exited; no marked process may be left.
fn exit_during_a_tool(grace_ms: u64) -> String {
    let a = FakeProvider::start("openai-completions");
    let mark = Marked::new("exit");
    let tools = json!([{"name": "tree", "argv": ["sh", "-c", TREE, mark.0], "timeoutMs": 600_000}]);
    let mut cfg = config(&a, tools);
    cfg["gateway"] = json!({"drainTimeoutMs": 500, "drainGraceMs": grace_ms});
    let mut g = Gateway::start(Opts::default().config(cfg));
    let mut ws = g.ws();
    a.push(Behavior::tool_call("tree", json!({})));
    send(&mut ws);
    mark.wait_tree();
    g.signal("TERM");
    let status = g.wait_exit(BOUND).expect("keel exits");
    assert_eq!(status.code(), Some(1), "a run was aborted");
    mark.wait_none();
    g.log_text()
}

#[test]
fn a_tool_running_at_the_drain_deadline_ends_with_keel() {
    // The deadline cancels the run; its tool's group goes with it.
    exit_during_a_tool(1000);
}

#[test]
fn a_tool_running_at_the_hard_exit_ends_with_keel() {
    // No grace: the watchdog exits at the deadline without cancelling anything, so only the
    // registry of live tools can reach the group.
    let log = exit_during_a_tool(0);
    assert!(
        log.contains("killed the process groups of 1 running tool(s)"),
        "{log}"
    );
}
