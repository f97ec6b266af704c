//! Every method in the method table on arbitrary params, as the reactor dispatches them
//! (`api::call`), over WebSocket or HTTP; a method that becomes a job has its work run
//! here, on the fixture state, as a worker would. Input: a byte choosing the method, a byte
//! choosing the caller, then the params as JSON text (anything else is passed as a string).
//! Nothing may panic; a raw payload must be valid JSON; errors name a code and a message.
//! Ids from outside: a run a call registered lives in one directory directly under `agents/`
//! whatever `agentId` or `sessionKey` it was given, and an `agentId` that normalizes to
//! nothing is never accepted.
#![no_main]

use keel::jobs::{JobCtx, JobInfo};

use keel::api::{self as methods, Call};
use keel::payload::Payload;
use keel::protocol;
use keel::protocol::reply::ReplyTo;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Instant;

fn check(method: &str, outcome: &keel::payload::Outcome) {
    match outcome {
        Ok(Payload::Raw(text)) => {
            if let Err(e) = serde_json::from_str::<Value>(text) {
                panic!("{method}: raw payload is not JSON ({e}): {text}");
            }
        }
        Ok(Payload::Shared(text)) => {
            if let Err(e) = serde_json::from_str::<Value>(text) {
                panic!("{method}: shared payload is not JSON ({e}): {text}");
            }
        }
        Ok(Payload::Json(_)) => {}
        Err(e) => {
            assert!(
                !e.message.is_empty(),
                "{method}: an error without a message"
            );
            let _ = protocol::http_body(outcome);
        }
    }
    let _ = protocol::res_ok_payload("1", &Payload::Json(Value::Null));
}

/// A run the call started (its `runId` in an answer) has a canonical agent: one plain
/// directory under `agents/`.
fn check_run(shared: &keel::runtime::Shared, answer: &Value) {
    let Some(run) = answer
        .get("runId")
        .and_then(Value::as_str)
        .and_then(|id| shared.runs.get(id))
    else {
        return;
    };
    let base = Path::new("agents");
    let dir = keel::ids::join(base, run.request.session.agent.name());
    assert_eq!(dir.parent(), Some(base), "{:?}", run.request.session);
    assert!(matches!(
        dir.components().next_back(),
        Some(Component::Normal(_))
    ));
    let key = keel::ids::SessionKey::parse(&run.request.session.key, &keel::ids::AgentId::main())
        .expect("a run's key reads back");
    assert_eq!(key.agent, run.request.session.agent);
}

/// Whether `params.agentId` is a string no agent id can be made of.
fn unrepresentable_agent(params: &Value) -> bool {
    params
        .get("agentId")
        .and_then(Value::as_str)
        .is_some_and(|a| !a.is_empty() && keel::ids::AgentId::normalize(a).is_err())
}

fuzz_target!(|input: &[u8]| {
    let shared = keel_fuzz::shared();
    let [which, how, rest @ ..] = input else {
        return;
    };
    let mut names = methods::public_names();
    names.extend(["keel.test.busy", "no.such.method", "connect"]);
    let method = names[*which as usize % names.len()];
    let params = match serde_json::from_slice::<Value>(rest) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(rest).into_owned()),
    };
    let caller = if how & 1 == 0 {
        ReplyTo::Ws {
            conn: 0,
            generation: 1,
            id: "1".into(),
        }
    } else {
        ReplyTo::Http {
            conn: 0,
            generation: 1,
        }
    };
    let refuses_agent = unrepresentable_agent(&params)
        && matches!(
            method,
            "agent" | "sessions.list" | "sessions.usage" | "usage.cost"
        );
    match methods::call(shared, method, &params, &caller) {
        Ok(Call::Inline(r)) => {
            if let Ok(v) = &r {
                check_run(shared, v);
                assert!(!refuses_agent, "{method} accepted {params}");
            }
            check(method, &r.map(Payload::Json));
        }
        Ok(Call::Deferred) => {}
        Ok(Call::Job(spec, work)) => {
            let info = Arc::new(JobInfo::new(0, &spec, ReplyTo::Internal, Instant::now()));
            let outcome = work(&JobCtx { info: &info });
            if let Ok(Payload::Json(v)) = &outcome {
                check_run(shared, v);
            }
            assert!(
                !(refuses_agent && outcome.is_ok()),
                "{method} accepted {params}"
            );
            check(method, &outcome);
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            if method == "no.such.method" || method == "keel.test.busy" || method == "connect" {
                assert!(e.message.contains("unknown method"), "{method}: {e}");
            }
        }
    }
    keel_fuzz::drain_completions();
});
