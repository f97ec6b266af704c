//! A received message whose run is cut by a SIGKILL is resumed at the next boot: one run (one
//! user message in the transcript), one reply in the chat, the model called again from the
//! transcript as written; a tool call the kill interrupted gets an error result and is not
//! run again; a run interrupted by too many restarts is given up with a notice to the chat.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use crate::fake_telegram::FakeTelegram;
use crate::tools::Marked;
use serde_json::{Value, json};

const OWNER: i64 = 42;

fn config(p: &FakeProvider, tg: &FakeTelegram, tools: Value) -> Value {
    let mut c = p.one_provider_config();
    c["channels"] = json!({"telegram": {"botToken": "123:abc", "baseUrl": tg.url(),
        "pollTimeoutSeconds": 1, "allowFrom": [OWNER.to_string()]}});
    if !tools.is_null() {
        c["tools"] = json!({"commands": tools});
    }
    c
}

/// Every message of every transcript of agent `main`, in file order.
fn messages(g: &Gateway) -> Vec<Value> {
    let mut out = Vec::new();
    for f in files(&g.state().join("agents/main/sessions")) {
        if f.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for l in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            if v["type"] == "message" {
                out.push(v["message"].clone());
            }
        }
    }
    out
}

fn user_messages(g: &Gateway, tag: &str) -> usize {
    messages(g)
        .iter()
        .filter(|m| m["role"] == "user" && m["content"].to_string().contains(tag))
        .count()
}

/// Waits until the inbound queue is empty (every run ended) and nothing is left to send.
fn settle(g: &Gateway) {
    eventually(BOUND, || {
        let queued = files(&g.state().join("inbound/queue")).len();
        let l = g.rpc("delivery.list", json!({"limit": 100})).json()["payload"].clone();
        (queued == 0 && l["counts"]["pending"] == 0 && l["counts"]["sending"] == 0).then_some(())
    });
}

fn kill(mut g: Gateway, cfg: &Value) -> Gateway {
    g.signal("KILL");
    assert!(g.wait_exit(BOUND).is_some());
    g.restart(Opts::default().config(cfg.clone()))
}

#[test]
fn a_run_killed_mid_model_call_is_resumed_and_answers_once() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let cfg = config(&p, &tg, Value::Null);
    p.push(Behavior::StallBeforeHead);
    p.push(Behavior::text(&["resumed ", "answer"]));
    let g = Gateway::start(Opts::default().config(cfg.clone()));
    tg.dm(OWNER, "question #one#");
    // The run has written its user message and is waiting on the model.
    assert!(p.wait_requests(1, BOUND), "the run reached the model");
    let g = kill(g, &cfg);
    let sent = eventually(BOUND, || {
        let s = tg.sent_to(OWNER);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent, ["resumed answer"]);
    settle(&g);
    assert_eq!(tg.sent_to(OWNER).len(), 1, "one reply");
    assert_eq!(user_messages(&g, "#one#"), 1, "one run: one user message");
    let answers: Vec<String> = messages(&g)
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(answers, ["resumed answer"]);
    // The model was asked again, with the user message once.
    let reqs = p.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let users: Vec<&Value> = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(users.len(), 1, "{users:?}");
    assert!(users[0]["content"].to_string().contains("#one#"));
    let log = g.log_text();
    assert!(log.contains("resume 1 of at most 3"), "{log}");
}

#[test]
fn a_tool_call_cut_by_a_kill_is_closed_with_an_error_and_not_run_again() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let mark = Marked::new("resume");
    let tools = json!([{"name": "slow", "timeoutMs": 600_000,
        "argv": ["sh", "-c", "export KEEL_TOOL_MARK=\"$0\"; sleep 300", mark.0]}]);
    let cfg = config(&p, &tg, tools);
    p.push(Behavior::tool_call("slow", json!({})));
    p.push(Behavior::text(&["done without the tool"]));
    let g = Gateway::start(Opts::default().config(cfg.clone()));
    tg.dm(OWNER, "use the tool #two#");
    // The assistant turn with the call is written and the tool is running.
    eventually(BOUND, || (!mark.pids().is_empty()).then_some(()));
    let pid = g.pid();
    let g = kill(g, &cfg);
    // A SIGKILL leaves the tool's process group behind; it is ended here, so any process
    // with the mark from now on would be the tool run again.
    eventually(BOUND, || {
        let left: Vec<String> = mark.pids().iter().map(u32::to_string).collect();
        if left.is_empty() {
            return Some(());
        }
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&left)
            .status();
        None
    });
    let sent = eventually(BOUND, || {
        let s = tg.sent_to(OWNER);
        (!s.is_empty()).then_some(s)
    });
    assert_ne!(g.pid(), pid);
    assert_eq!(sent, ["done without the tool"]);
    settle(&g);
    assert_eq!(tg.sent_to(OWNER).len(), 1, "one reply");
    let left: Vec<String> = mark
        .pids()
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "the tool was not run again: {left:?}");
    assert_eq!(user_messages(&g, "#two#"), 1);
    let results: Vec<Value> = messages(&g)
        .into_iter()
        .filter(|m| m["role"] == "toolResult")
        .collect();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["isError"], true);
    assert!(
        results[0]["content"].to_string().contains("interrupted"),
        "{results:?}"
    );
    // The model saw its call and the call's (error) result.
    let reqs = p.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let msgs = reqs[1]["messages"].as_array().unwrap();
    let call = msgs
        .iter()
        .find(|m| m["role"] == "assistant" && m["tool_calls"].is_array())
        .expect("the assistant turn with its call");
    let id = call["tool_calls"][0]["id"].as_str().unwrap();
    let result = msgs
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("its result");
    assert_eq!(result["tool_call_id"], id);
    assert!(result["content"].as_str().unwrap().contains("interrupted"));
    assert_eq!(
        msgs.iter().filter(|m| m["role"] == "user").count(),
        1,
        "{msgs:#?}"
    );
}

#[test]
fn a_run_interrupted_by_restarts_again_and_again_is_given_up_with_one_notice() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let cfg = config(&p, &tg, Value::Null);
    // The first call and three resumes each stall and are killed.
    for _ in 0..4 {
        p.push(Behavior::StallBeforeHead);
    }
    let mut g = Gateway::start(Opts::default().config(cfg.clone()));
    tg.dm(OWNER, "doomed #three#");
    let mut log = String::new();
    for n in 1..=4 {
        assert!(p.wait_requests(n, BOUND), "call {n}:\n{}", g.log_text());
        log.push_str(&g.log_text());
        g = kill(g, &cfg);
    }
    let sent = eventually(BOUND, || {
        let s = tg.sent_to(OWNER);
        (!s.is_empty()).then_some(s)
    });
    settle(&g);
    assert_eq!(tg.sent_to(OWNER).len(), 1, "one notice: {sent:?}");
    assert!(sent[0].contains("given up"), "{sent:?}");
    assert_eq!(p.requests().len(), 4, "no call after giving up");
    assert_eq!(user_messages(&g, "#three#"), 1);
    log.push_str(&g.log_text());
    for n in 1..=3 {
        assert!(
            log.contains(&format!("resume {n} of at most 3")),
            "resume {n}: {log}"
        );
    }
    assert!(
        log.contains("interrupted by a restart 4 times without finishing; given up"),
        "{log}"
    );
}
